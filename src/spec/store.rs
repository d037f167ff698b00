//! The pod-intent store: a sled db in state_dir shared by the CNI processes,
//! `headcni pod`, `headcni apply` and the daemon.
//!
//! sled refuses a second opener at once instead of waiting, so every access
//! first takes an exclusive flock on `pods.lock` (waiting up to a timeout),
//! opens the db, does its work in one atomic batch, flushes, and closes again.
//! Nobody holds the db open between operations.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::alloc;
use super::names::host_link_name;
use crate::model::PodKey;

const DB_DIR: &str = "pods.db";
const LOCK_FILE: &str = "pods.lock";
/// Rewritten after every committed change; watchers (the daemon) watch this
/// file, because sled touches its own files on every open, reads included.
pub const CHANGED_FILE: &str = "pods.changed";
const POD_PREFIX: &[u8] = b"pod\0";
const IP_PREFIX: &[u8] = b"ip\0";
const CURSOR_KEY: &[u8] = b"meta\0cursor";
const LAST_FREED_KEY: &[u8] = b"meta\0last_freed";
/// The store is tiny; a small page cache keeps short-lived CNI processes lean.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// One pod attachment as stored: what `Desired` is compiled from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodIntent {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub host_link: String,
}

impl PodIntent {
    pub fn key(&self) -> PodKey {
        PodKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timed out after {waited:?} waiting for the store lock {}; another headcni process holds it", path.display())]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error("store I/O on {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pod store {}: {error}", path.display())]
    Db { path: PathBuf, error: sled::Error },
    #[error("pod CIDR {cidr} is exhausted: all {capacity} addresses are allocated")]
    Exhausted { cidr: Ipv4Network, capacity: u32 },
    #[error("pod store entry {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("host link name {name} of pod {new} collides with pod {existing}")]
    HostLinkCollision {
        name: String,
        new: PodKey,
        existing: PodKey,
    },
}

/// Handle on the store directory. Cheap: it opens nothing until used.
#[derive(Clone, Debug)]
pub struct PodStore {
    dir: PathBuf,
    lock_timeout: Duration,
}

/// What `add` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub intent: PodIntent,
    /// False when the attachment already existed and nothing was allocated.
    pub created: bool,
}

impl PodStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PodStore {
            dir: dir.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All pod intents, ordered by (container id, ifname).
    pub fn list(&self) -> Result<Vec<PodIntent>, StoreError> {
        if !self.dir.join(DB_DIR).exists() {
            // Nothing was ever stored: do not create a db just to read it.
            return Ok(Vec::new());
        }
        self.with_db(|db, path| {
            db.scan_prefix(POD_PREFIX)
                .map(|item| {
                    let (k, v) = item.map_err(|error| StoreError::Db {
                        path: path.into(),
                        error,
                    })?;
                    decode_intent(&k, &v)
                })
                .collect()
        })
    }

    /// Stores an intent for `key`, allocating its address. Idempotent: an
    /// existing attachment is returned as it is, with nothing new allocated.
    pub fn add(
        &self,
        key: &PodKey,
        netns: &Path,
        cidr: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> Result<Added, StoreError> {
        self.with_db(|db, path| {
            let db_err = |error| StoreError::Db {
                path: path.into(),
                error,
            };
            let pod_key = pod_db_key(key);
            if let Some(existing) = db.get(&pod_key).map_err(db_err)? {
                return Ok(Added {
                    intent: decode_intent(&pod_key, &existing)?,
                    created: false,
                });
            }
            let host_link = host_link_name(&key.container_id, &key.ifname);
            for item in db.scan_prefix(POD_PREFIX) {
                let (k, v) = item.map_err(db_err)?;
                let other = decode_intent(&k, &v)?;
                if other.host_link == host_link {
                    return Err(StoreError::HostLinkCollision {
                        name: host_link,
                        new: key.clone(),
                        existing: other.key(),
                    });
                }
            }
            let cursor = read_ip(db, CURSOR_KEY, path)?;
            let last_freed = read_ip(db, LAST_FREED_KEY, path)?;
            let mut lookup_error = None;
            let ip = alloc::next_free(cidr, gateway, cursor, last_freed, |ip| {
                match db.contains_key(ip_db_key(ip)) {
                    Ok(used) => used,
                    Err(e) => {
                        lookup_error.get_or_insert(e);
                        true
                    }
                }
            });
            if let Some(e) = lookup_error {
                return Err(db_err(e));
            }
            let ip = ip.ok_or(StoreError::Exhausted {
                cidr,
                capacity: alloc::capacity(cidr),
            })?;
            let intent = PodIntent {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                netns: netns.to_path_buf(),
                ip,
                host_link,
            };
            let value = serde_json::to_vec(&intent).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&pod_key).into_owned(),
                reason: e.to_string(),
            })?;
            let mut batch = sled::Batch::default();
            batch.insert(pod_key, value);
            batch.insert(ip_db_key(ip), pod_key_bytes(key));
            batch.insert(CURSOR_KEY, ip.to_string().as_bytes());
            db.apply_batch(batch).map_err(db_err)?;
            self.mark_changed();
            Ok(Added {
                intent,
                created: true,
            })
        })
    }

    /// Removes the intent for `key` and frees its address. Returns what was removed.
    pub fn remove(&self, key: &PodKey) -> Result<Option<PodIntent>, StoreError> {
        if !self.dir.join(DB_DIR).exists() {
            return Ok(None);
        }
        self.with_db(|db, path| {
            let db_err = |error| StoreError::Db {
                path: path.into(),
                error,
            };
            let pod_key = pod_db_key(key);
            let Some(existing) = db.get(&pod_key).map_err(db_err)? else {
                return Ok(None);
            };
            let intent = decode_intent(&pod_key, &existing)?;
            let mut batch = sled::Batch::default();
            batch.remove(pod_key);
            batch.remove(ip_db_key(intent.ip));
            batch.insert(LAST_FREED_KEY, intent.ip.to_string().as_bytes());
            db.apply_batch(batch).map_err(db_err)?;
            self.mark_changed();
            Ok(Some(intent))
        })
    }

    /// Signals watchers. Best effort: a missed signal costs only the wait
    /// for the daemon's next resync.
    fn mark_changed(&self) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        if let Err(e) = fs::write(self.dir.join(CHANGED_FILE), stamp.to_string()) {
            tracing::warn!("cannot signal the pod-store change: {e}");
        }
    }

    /// Takes the lock, opens the db, runs `f`, flushes, closes, unlocks.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&sled::Db, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let _lock = self.lock()?;
        let path = self.dir.join(DB_DIR);
        let db = self.open_db(&path, started)?;
        let result = f(&db, &path)?;
        db.flush().map_err(|error| StoreError::Db {
            path: path.clone(),
            error,
        })?;
        drop(db);
        Ok(result)
    }

    /// Opens sled under our lock. sled's own file lock can outlive a closed
    /// `Db` by a moment (its background threads let go last), even in a
    /// process that has already released our lock; whoever holds it then is
    /// finishing, so waiting briefly is right, failing is not.
    fn open_db(&self, path: &Path, started: Instant) -> Result<sled::Db, StoreError> {
        let mut pause = Duration::from_micros(200);
        loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()
            {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < self.lock_timeout =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err(error) => {
                    return Err(StoreError::Db {
                        path: path.to_path_buf(),
                        error,
                    })
                }
            }
        }
    }

    fn lock(&self) -> Result<File, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| StoreError::Io { path, error }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(error)) => return Err(StoreError::Io { path, error }),
            }
            let waited = started.elapsed();
            if waited >= self.lock_timeout {
                return Err(StoreError::LockTimeout { path, waited });
            }
            std::thread::sleep(pause.min(self.lock_timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

fn pod_key_bytes(key: &PodKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.container_id.len() + key.ifname.len() + 1);
    out.extend_from_slice(key.container_id.as_bytes());
    out.push(0);
    out.extend_from_slice(key.ifname.as_bytes());
    out
}

fn pod_db_key(key: &PodKey) -> Vec<u8> {
    let mut out = POD_PREFIX.to_vec();
    out.extend_from_slice(&pod_key_bytes(key));
    out
}

fn ip_db_key(ip: Ipv4Addr) -> Vec<u8> {
    let mut out = IP_PREFIX.to_vec();
    out.extend_from_slice(&ip.octets());
    out
}

fn decode_intent(key: &[u8], value: &[u8]) -> Result<PodIntent, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn read_ip(db: &sled::Db, key: &[u8], path: &Path) -> Result<Option<Ipv4Addr>, StoreError> {
    let Some(raw) = db.get(key).map_err(|error| StoreError::Db {
        path: path.into(),
        error,
    })?
    else {
        return Ok(None);
    };
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "not an IPv4 address".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> PodKey {
        PodKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn add_is_idempotent_and_remove_frees() {
        let dir = tempfile::tempdir().unwrap();
        let store = PodStore::new(dir.path());
        let cidr: Ipv4Network = "10.9.0.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 9, 0, 1);
        let a = store
            .add(&key("a"), Path::new("/run/netns/a"), cidr, gw)
            .unwrap();
        assert!(a.created);
        assert_eq!(a.intent.ip, Ipv4Addr::new(10, 9, 0, 2));
        let again = store
            .add(&key("a"), Path::new("/run/netns/a"), cidr, gw)
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.intent, a.intent);
        let b = store
            .add(&key("b"), Path::new("/run/netns/b"), cidr, gw)
            .unwrap();
        assert_eq!(b.intent.ip, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(store.remove(&key("a")).unwrap().unwrap().ip, a.intent.ip);
        assert_eq!(store.remove(&key("a")).unwrap(), None);
        assert_eq!(store.list().unwrap(), vec![b.intent]);
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_freed_address_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = PodStore::new(dir.path());
        let cidr: Ipv4Network = "10.9.0.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 9, 0, 1);
        for i in 0..5 {
            store
                .add(&key(&format!("p{i}")), Path::new("/x"), cidr, gw)
                .unwrap();
        }
        let e = store
            .add(&key("p5"), Path::new("/x"), cidr, gw)
            .unwrap_err();
        assert!(e.to_string().contains("exhausted"), "{e}");
        let freed = store.remove(&key("p2")).unwrap().unwrap().ip;
        // The only free address is the one just freed: not reused at once.
        assert!(matches!(
            store.add(&key("p5"), Path::new("/x"), cidr, gw),
            Err(StoreError::Exhausted { .. })
        ));
        store.remove(&key("p3")).unwrap();
        let next = store
            .add(&key("p5"), Path::new("/x"), cidr, gw)
            .unwrap()
            .intent
            .ip;
        assert_eq!(
            next, freed,
            "the older free address is fine once another was freed since"
        );
    }

    #[test]
    fn lock_timeout_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = PodStore::new(dir.path()).with_lock_timeout(Duration::from_millis(50));
        let held = store.lock().unwrap();
        // A second open file description conflicts with the first, as another process would.
        let e = store.list_forcing_db().unwrap_err();
        assert!(matches!(e, StoreError::LockTimeout { .. }), "{e}");
        drop(held);
        assert!(store.list_forcing_db().is_ok());
    }

    impl PodStore {
        fn list_forcing_db(&self) -> Result<usize, StoreError> {
            self.with_db(|db, _| Ok(db.len()))
        }
    }
}
