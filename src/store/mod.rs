//! The pod-intent store: a sled db in state_dir shared by the CNI processes,
//! `headcni pod`, `headcni apply` and the daemon.
//!
//! sled refuses a second opener at once instead of waiting, so every access
//! first takes an exclusive flock on `pods.lock` (waiting up to a timeout),
//! opens the db, does its work in one atomic batch, flushes, and closes again.
//! Only the daemon keeps the db open (and locked) between its operations,
//! and lets go as soon as anyone else asks (see [`kept`]).

mod error;
mod kept;
mod layout;
mod pools;
mod state_dir;

use std::fs::{self, File, TryLockError};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use rustc_hash::FxHashMap;

use crate::model::PodKey;
use crate::spec::{alloc, host_link_name, Intents, PodIntent, Spec};
pub use error::StoreError;
pub use kept::{keep_open, let_go, WANTED_FILE};
use layout::*;
pub use pools::{Pool, Pools};
use state_dir::open_state_file;
pub use state_dir::{check_state_dir, create_state_dir, require_safe_state_dir, StateDirCheck};

const DB_DIR: &str = "pods.db";
const LOCK_FILE: &str = "pods.lock";
/// Rewritten after every committed change; watchers (the daemon) watch this
/// file, because sled touches its own files on every open, reads included.
pub const CHANGED_FILE: &str = "pods.changed";
/// Marks of released links, folded in by the next operation (`release`).
const RELEASED_DIR: &str = "released";
/// The store is tiny; a small page cache keeps short-lived CNI processes lean.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle on the store directory. Cheap: it opens nothing until used.
#[derive(Clone, Debug)]
pub struct PodStore {
    dir: PathBuf,
    pools: Pools,
    lock_timeout: Duration,
    /// Whether changes touch the file the daemon watches (see [`PodStore::quiet`]).
    signal: bool,
}

/// What [`PodStore::change`] did, and the intents after it.
#[derive(Debug)]
pub struct Changed {
    /// One per attachment to add, in order.
    pub added: Vec<Result<Added, StoreError>>,
    /// One per attachment to remove, in order: what was removed, if anything.
    pub removed: Vec<Option<PodIntent>>,
    /// Every intent after the change ([`PodStore::change_and_list`]; else empty).
    pub pods: Vec<PodIntent>,
}

/// A db changed under the store's lock, not yet flushed.
struct OpenDb {
    db: sled::Db,
    path: PathBuf,
    /// Release marks folded in: removed once the fold is on disk.
    marks: Vec<PathBuf>,
    lock: File,
    in_use: kept::InUse,
}

impl OpenDb {
    /// Flushes, removes the folded marks, and closes and unlocks (or, in
    /// the daemon, keeps the db for its next operation: see [`kept`]).
    fn close(self) -> Result<(), StoreError> {
        let OpenDb {
            db,
            path,
            marks,
            lock,
            in_use,
        } = self;
        db.flush().map_err(|error| StoreError::Db { path, error })?;
        // Gone only once what they stand for is on disk.
        for mark in marks {
            let _ = fs::remove_file(mark);
        }
        in_use.put_back(kept::Held { db, lock });
        Ok(())
    }
}

/// A change whose flush is under way on a thread of its own (see
/// [`PodStore::change_and_list_flushing`]). Dropped unawaited, the flush
/// still finishes, but its error is lost and nobody knows when.
#[must_use = "nothing may be answered before `durable()` says the change is on disk"]
pub enum Flushing {
    Running(std::thread::JoinHandle<Result<(), StoreError>>),
    Done(Result<(), StoreError>),
}

impl Flushing {
    fn start(open: OpenDb) -> Flushing {
        type Slot = std::sync::Mutex<Option<OpenDb>>;
        let close = |slot: &Slot| {
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            taken.map_or(Ok(()), OpenDb::close)
        };
        let ours = std::sync::Arc::new(Slot::new(Some(open)));
        let theirs = ours.clone();
        match std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || close(&theirs))
        {
            Ok(thread) => Flushing::Running(thread),
            // No thread to be had: flush here.
            Err(_) => Flushing::Done(close(&ours)),
        }
    }

    fn done() -> Flushing {
        Flushing::Done(Ok(()))
    }

    /// Waits until the change is on disk (or says why it is not).
    pub fn durable(self) -> Result<(), StoreError> {
        match self {
            Flushing::Done(result) => result,
            Flushing::Running(thread) => thread.join().unwrap_or_else(|_| {
                Err(StoreError::Io {
                    path: PathBuf::new(),
                    error: std::io::Error::other("the store's flush thread panicked"),
                })
            }),
        }
    }
}

#[derive(Clone, Copy)]
enum Fold {
    Yes,
    No,
}

#[derive(Clone, Copy)]
enum Listing {
    Skip,
    After,
}

/// How many pods hold an address of each family.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    ipv4: usize,
    ipv6: usize,
}

impl Held {
    fn count(pods: &[PodIntent]) -> Held {
        let mut held = Held::default();
        pods.iter().for_each(|p| held.add(p));
        held
    }

    fn add(&mut self, pod: &PodIntent) {
        self.ipv4 += usize::from(pod.ip.is_some());
        self.ipv6 += usize::from(pod.ip6.is_some());
    }
}

/// What `add` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub intent: PodIntent,
    /// False when the attachment already existed and nothing was allocated.
    pub created: bool,
}

impl PodStore {
    /// The store in `dir`, allocating from (and only ever used with) `pools`.
    pub fn new(dir: impl Into<PathBuf>, pools: Pools) -> Self {
        PodStore {
            dir: dir.into(),
            pools,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            signal: true,
        }
    }

    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Changes made through this handle do not signal the daemon's file
    /// watch: the daemon's own batches, which know what they changed (a
    /// pass per signal would only delay the next batch).
    pub fn quiet(mut self) -> Self {
        self.signal = false;
        self
    }

    /// Signals watchers that the store changed.
    fn signal_change(&self) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self.dir.join(CHANGED_FILE);
        if let Err(e) =
            open_state_file(&path, true).and_then(|mut f| f.write_all(stamp.to_string().as_bytes()))
        {
            tracing::warn!("cannot signal the pod-store change: {e}");
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All pod intents, ordered by (container id, ifname). A store that was
    /// never created reads as empty; one that cannot be looked at, opened,
    /// locked or read is an error, never "no pods".
    pub fn list(&self) -> Result<Vec<PodIntent>, StoreError> {
        self.read().map(|intents| intents.pods)
    }

    /// [`list`](Self::list), saying whether a store stood behind the answer.
    pub fn read(&self) -> Result<Intents, StoreError> {
        if !self.exists()? {
            // Nothing was ever stored: do not create a db just to read it.
            return Ok(Intents {
                pods: Vec::new(),
                missing_store: Some(self.dir.join(DB_DIR)),
            });
        }
        self.with_db(|db, path| {
            let pods = list_in(db, path)?;
            self.check_cidr(db, path, Held::count(&pods))?;
            Ok(pods.into())
        })
    }

    /// Creates the store (empty, recording its CIDR) unless it exists.
    /// Returns whether it had to.
    pub fn init(&self) -> Result<bool, StoreError> {
        let existed = self.exists()?;
        self.with_db(|db, path| {
            let pods = list_in(db, path)?;
            self.check_cidr(db, path, Held::count(&pods))?;
            if pods.is_empty() {
                for pool in self.pools.iter() {
                    db.insert(
                        keys_of(pool.cidr.ip()).cidr,
                        pool.cidr.to_string().as_bytes(),
                    )
                    .map_err(|error| StoreError::Db {
                        path: path.into(),
                        error,
                    })?;
                }
            }
            Ok(!existed)
        })
    }

    /// Whether the store was ever created. Only "not found" means no; a
    /// state_dir under a plain file, out of reach or with too long a name is
    /// an error.
    fn exists(&self) -> Result<bool, StoreError> {
        for (path, is_store) in [(self.dir.clone(), false), (self.dir.join(DB_DIR), true)] {
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    if is_store {
                        return Ok(true);
                    }
                    require_safe_state_dir(&path)?;
                }
                Ok(_) => return Err(StoreError::NotADirectory { path }),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(error) => return Err(StoreError::Io { path, error }),
            }
        }
        Ok(false)
    }

    /// Refuses a store that allocates from another CIDR of a family while
    /// pods hold addresses of it (a family the spec dropped included); a
    /// family no pod holds may take the spec's CIDR (recorded on the next
    /// add).
    fn check_cidr(&self, db: &sled::Db, path: &Path, held: Held) -> Result<(), StoreError> {
        for ((keys, pool), pods) in self
            .pools
            .by_family()
            .into_iter()
            .zip([held.ipv4, held.ipv6])
        {
            if pods == 0 {
                continue;
            }
            let Some(raw) = db.get(keys.cidr).map_err(|error| StoreError::Db {
                path: path.into(),
                error,
            })?
            else {
                continue;
            };
            let stored: IpNetwork = std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(keys.cidr).into_owned(),
                    reason: "not a network".into(),
                })?;
            let spec = pool.map(|p| p.cidr);
            if spec != Some(stored) {
                return Err(StoreError::CidrMismatch {
                    path: path.into(),
                    stored,
                    spec,
                    field: if stored.is_ipv4() { "cidr" } else { "cidr6" },
                    pods,
                });
            }
        }
        Ok(())
    }

    /// Stores an intent for `key`, allocating its address. Idempotent: an
    /// existing attachment is returned as it is, with nothing new allocated.
    pub fn add(&self, key: &PodKey, netns: &Path) -> Result<Added, StoreError> {
        let mut changed = self.change(&[(key.clone(), netns.to_path_buf())], &[])?;
        changed
            .added
            .pop()
            .unwrap_or_else(|| unreachable!("one result per attachment"))
    }

    /// Adds and removes many attachments under one lock and one open (the
    /// daemon's batches), as [`add`](Self::add) and [`remove`](Self::remove)
    /// each would, and reads the intents that result. Each added attachment
    /// gets its own result; an error of the store itself fails them all.
    pub fn change(
        &self,
        add: &[(PodKey, PathBuf)],
        remove: &[PodKey],
    ) -> Result<Changed, StoreError> {
        let (changed, flushing) = self.change_in(add, remove, Listing::Skip)?;
        flushing.durable()?;
        Ok(changed)
    }

    /// [`change`](Self::change), then every intent (`Changed::pods`), under
    /// the same lock: what a pass made from them plans from.
    pub fn change_and_list(
        &self,
        add: &[(PodKey, PathBuf)],
        remove: &[PodKey],
    ) -> Result<Changed, StoreError> {
        let (changed, flushing) = self.change_and_list_flushing(add, remove)?;
        flushing.durable()?;
        Ok(changed)
    }

    /// [`change_and_list`](Self::change_and_list), returning before the
    /// change is on disk: the flush runs on a thread of its own, holding the
    /// store's lock (nobody reads the store before it is durable), while the
    /// caller wires what it stands for; [`Flushing::durable`] waits for it.
    /// Nothing is answered before that: a crash meanwhile leaves links
    /// without intents, which the next pass removes.
    pub fn change_and_list_flushing(
        &self,
        add: &[(PodKey, PathBuf)],
        remove: &[PodKey],
    ) -> Result<(Changed, Flushing), StoreError> {
        self.change_in(add, remove, Listing::After)
    }

    fn change_in(
        &self,
        add: &[(PodKey, PathBuf)],
        remove: &[PodKey],
        listing: Listing,
    ) -> Result<(Changed, Flushing), StoreError> {
        // A state_dir that is a file or out of reach says so, not "File exists".
        if !self.exists()? && add.is_empty() {
            let changed = Changed {
                added: Vec::new(),
                removed: remove.iter().map(|_| None).collect(),
                pods: Vec::new(),
            };
            return Ok((changed, Flushing::done()));
        }
        let fold = if add.is_empty() { Fold::No } else { Fold::Yes };
        let (changed, open) = self.with_db_open(fold, |db, path| {
            let mut taken: Option<FxHashMap<String, PodKey>> = None;
            let mut added = Vec::with_capacity(add.len());
            for (key, netns) in add {
                added.push(self.add_one(db, path, key, netns, &mut taken)?);
            }
            let removed = remove_in(db, path, remove)?;
            if added.iter().any(|r| matches!(r, Ok(a) if a.created))
                || removed.iter().any(Option::is_some)
            {
                self.mark_changed();
            }
            let pods = match listing {
                Listing::After => list_in(db, path)?,
                Listing::Skip => Vec::new(),
            };
            Ok(Changed {
                added,
                removed,
                pods,
            })
        })?;
        Ok((changed, Flushing::start(open)))
    }

    /// One attachment of [`change`](Self::change). `taken`: the host links
    /// of the stored pods, read on the first allocation. Ok(Err): this
    /// attachment is refused; Err: the store failed.
    fn add_one(
        &self,
        db: &sled::Db,
        path: &Path,
        key: &PodKey,
        netns: &Path,
        taken: &mut Option<FxHashMap<String, PodKey>>,
    ) -> Result<Result<Added, StoreError>, StoreError> {
        let db_err = |error| StoreError::Db {
            path: path.into(),
            error,
        };
        let pod_key = pod_db_key(key);
        if let Some(existing) = db.get(&pod_key).map_err(db_err)? {
            return Ok(Ok(Added {
                intent: decode_intent(&pod_key, &existing)?,
                created: false,
            }));
        }
        let taken = match taken {
            Some(taken) => taken,
            None => {
                let mut links = FxHashMap::default();
                let mut held = Held::default();
                for item in db.scan_prefix(POD_PREFIX) {
                    let (k, v) = item.map_err(db_err)?;
                    let other = decode_intent(&k, &v)?;
                    held.add(&other);
                    links.insert(other.host_link, other.key);
                }
                self.check_cidr(db, path, held)?;
                taken.insert(links)
            }
        };
        let host_link = host_link_name(&key.container_id, &key.ifname);
        if let Some(existing) = taken.get(&host_link) {
            return Ok(Err(StoreError::HostLinkCollision {
                name: host_link,
                new: key.clone(),
                existing: existing.clone(),
            }));
        }
        let mut batch = sled::Batch::default();
        let (mut ip, mut ip6) = (None, None);
        for pool in self.pools.iter() {
            let keys = keys_of(pool.cidr.ip());
            let cursor = read_ip(db, keys.cursor, path)?;
            let last_freed = read_ip(db, keys.last_freed, path)?;
            let mut lookup_error = None;
            let found =
                alloc::next_free(pool.cidr, pool.gateway, cursor, last_freed, |ip| {
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
            let Some(found) = found else {
                return Ok(Err(StoreError::Exhausted {
                    cidr: pool.cidr,
                    capacity: alloc::capacity(pool.cidr, pool.gateway),
                }));
            };
            match found {
                IpAddr::V4(v4) => ip = Some(v4),
                IpAddr::V6(v6) => ip6 = Some(v6),
            }
            batch.insert(ip_db_key(found), pod_key_bytes(key));
            batch.insert(keys.cursor, found.to_string().as_bytes());
            batch.insert(keys.cidr, pool.cidr.to_string().as_bytes());
        }
        let intent = PodIntent {
            key: key.clone(),
            netns: netns.to_path_buf(),
            ip,
            ip6,
            host_link,
        };
        let value = serde_json::to_vec(&intent).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(&pod_key).into_owned(),
            reason: e.to_string(),
        })?;
        batch.insert(pod_key, value);
        db.apply_batch(batch).map_err(db_err)?;
        taken.insert(intent.host_link.clone(), key.clone());
        Ok(Ok(Added {
            intent,
            created: true,
        }))
    }

    /// Removes the intent for `key`; its address stays allocated, held by
    /// its host link, until [`release`](Self::release) says the link is
    /// gone. Returns what was removed. Removing never hands out an address,
    /// so it works whatever CIDR the store records: pods of a changed spec
    /// can still be taken down.
    pub fn remove(&self, key: &PodKey) -> Result<Option<PodIntent>, StoreError> {
        let mut changed = self.change(&[], std::slice::from_ref(key))?;
        Ok(changed.removed.pop().flatten())
    }

    /// Frees the addresses held by these host links of removed attachments,
    /// now that the links are gone. Cheap, as a DEL's last step should be:
    /// it leaves a mark per link in state_dir/released, which the next
    /// allocation (or listing of what is held) folds in under the lock; until
    /// then the address stays held, the safe side. Returns how many links
    /// were marked.
    pub fn release(&self, host_links: &[String]) -> Result<usize, StoreError> {
        if host_links.is_empty() || !self.exists()? {
            return Ok(0);
        }
        let dir = self.dir.join(RELEASED_DIR);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| StoreError::Io { path, error }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let mut marked = 0;
        for link in host_links.iter().filter(|l| is_mark_name(l)) {
            let mark = dir.join(link);
            open_state_file(&mark, true).map_err(io(&mark))?;
            marked += 1;
        }
        Ok(marked)
    }

    /// Folds in the marks [`release`](Self::release) left: frees the
    /// addresses their links held. Returns the marks, to be removed once
    /// the db is flushed.
    fn fold_released(&self, db: &sled::Db, path: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.dir.join(RELEASED_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(StoreError::Io { path: dir, error }),
        };
        // In the order they were released: the last one freed is kept back
        // longest by the allocator.
        let mut marks: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .map(|e| {
                let at = e.metadata().and_then(|m| m.modified());
                (at.unwrap_or(std::time::UNIX_EPOCH), e.path())
            })
            .collect();
        marks.sort();
        let mut batch = sled::Batch::default();
        let mut freed = false;
        for (_, mark) in &marks {
            let name = mark
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let key = releasing_db_key(&name);
            if let Some(ips) = read_ips(db, &key, path)? {
                batch.remove(key);
                for ip in ips {
                    batch.remove(ip_db_key(ip));
                    batch.insert(keys_of(ip).last_freed, ip.to_string().as_bytes());
                }
                freed = true;
            }
        }
        if freed {
            db.apply_batch(batch).map_err(|error| StoreError::Db {
                path: path.into(),
                error,
            })?;
        }
        Ok(marks.into_iter().map(|(_, mark)| mark).collect())
    }

    /// Host links of removed attachments that still hold their address.
    pub fn releasing(&self) -> Result<Vec<String>, StoreError> {
        if !self.exists()? {
            return Ok(Vec::new());
        }
        self.with_db_folding(Fold::Yes, |db, path| {
            db.scan_prefix(RELEASING_PREFIX)
                .keys()
                .map(|k| {
                    k.map(|k| String::from_utf8_lossy(&k[RELEASING_PREFIX.len()..]).into_owned())
                        .map_err(|error| StoreError::Db {
                            path: path.into(),
                            error,
                        })
                })
                .collect()
        })
    }

    /// Signals watchers. Best effort: a missed signal costs only the wait
    /// for the daemon's next resync.
    fn mark_changed(&self) {
        if self.signal {
            self.signal_change();
        }
    }

    /// Takes the lock, opens the db, runs `f`, flushes, closes, unlocks.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&sled::Db, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_db_folding(Fold::No, f)
    }

    /// [`with_db`](Self::with_db), first folding in the release marks when
    /// `fold` says so: only where held addresses matter (allocating, and
    /// listing what is held), so that a burst of DELs does not lengthen
    /// every critical section with the others' marks.
    fn with_db_folding<T>(
        &self,
        fold: Fold,
        f: impl FnOnce(&sled::Db, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (result, open) = self.with_db_open(fold, f)?;
        open.close()?;
        Ok(result)
    }

    /// [`with_db_folding`](Self::with_db_folding) up to the flush: the db,
    /// still open and locked, is the caller's to close.
    fn with_db_open<T>(
        &self,
        fold: Fold,
        f: impl FnOnce(&sled::Db, &Path) -> Result<T, StoreError>,
    ) -> Result<(T, OpenDb), StoreError> {
        let started = Instant::now();
        let path = self.dir.join(DB_DIR);
        let in_use = kept::InUse::new(&self.dir);
        let (db, lock) = match kept::take(&self.dir, &self.dir.join(LOCK_FILE), &path) {
            Some(held) => (held.db, held.lock),
            None => {
                let lock = self.lock()?;
                (self.open_db(&path, started)?, lock)
            }
        };
        let marks = match fold {
            Fold::Yes => self.fold_released(&db, &path)?,
            Fold::No => Vec::new(),
        };
        let result = f(&db, &path)?;
        let open = OpenDb {
            db,
            path,
            marks,
            lock,
            in_use,
        };
        Ok((result, open))
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
                // Every operation flushes before it closes the db: no
                // background flusher thread to start (and stop) per open.
                .flush_every_ms(None)
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
        create_state_dir(&self.dir)?;
        let path = self.dir.join(LOCK_FILE);
        let file = open_state_file(&path, false).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(error)) => return Err(StoreError::Io { path, error }),
        }
        // The daemon may be keeping the store open (see `kept`): ask it,
        // and again now and then while waiting, in case it did not hear.
        let ask = || {
            if !kept::keeps(&self.dir) {
                kept::ask(&self.dir);
            }
        };
        ask();
        // Contended (a burst of CNI calls without a daemon): wait in the
        // kernel, which wakes waiters the moment the holder lets go, where
        // polling leaves the lock idle between tries and lets late comers
        // overtake; on a thread, so the wait has a deadline. A lock taken
        // after the deadline is let go at once: the thread's send fails, or
        // the channel drops what it sent, and the file closes with it.
        let started = Instant::now();
        let (taken, waiting) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("store-lock".into())
            .spawn(move || {
                let _ = taken.send(file.lock().map(|()| file));
            })
            .map_err(io(&path))?;
        const ASK_AGAIN: Duration = Duration::from_millis(100);
        loop {
            let left = self.lock_timeout.saturating_sub(started.elapsed());
            match waiting.recv_timeout(left.min(ASK_AGAIN)) {
                Ok(Ok(file)) => return Ok(file),
                Ok(Err(error)) => return Err(StoreError::Io { path, error }),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => ask(),
                Err(_) => {
                    return Err(StoreError::LockTimeout {
                        path,
                        waited: started.elapsed(),
                    })
                }
            }
        }
    }
}

/// A link name that can be a file name (host links are `hc` + hex).
fn is_mark_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::model::IFNAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Spec {
    /// The node's one pod store: in `state_dir`, allocating from the pod CIDR.
    pub fn pod_store(&self) -> PodStore {
        PodStore::new(&self.state_dir, Pools::of(&self.pod_network))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// A store allocating from IPv4 `cidr`, its gateway the first address.
    fn v4_store(dir: &Path, cidr: &str) -> PodStore {
        let cidr: ipnetwork::Ipv4Network = cidr.parse().unwrap();
        let gateway = Ipv4Addr::from(u32::from(cidr.network()) + 1);
        PodStore::new(dir, Pools::ipv4(cidr, gateway))
    }

    fn dual_store(dir: &Path) -> PodStore {
        PodStore::new(
            dir,
            Pools {
                ipv4: Some(Pool {
                    cidr: "10.9.0.0/29".parse().unwrap(),
                    gateway: "10.9.0.1".parse().unwrap(),
                }),
                ipv6: Some(Pool {
                    cidr: "fd00:9::/64".parse().unwrap(),
                    gateway: "fe80::1".parse().unwrap(),
                }),
            },
        )
    }

    /// The daemon's batches: the change is read by nobody (the lock is
    /// held) until its flush is done, and then by everyone.
    #[test]
    fn a_change_flushing_holds_the_store_until_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = v4_store(dir.path(), "10.9.0.0/29");
        let add = [(key("a"), PathBuf::from("/x"))];
        let (changed, flushing) = store.change_and_list_flushing(&add, &[]).unwrap();
        assert_eq!(changed.pods.len(), 1);
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || store.list().unwrap())
        };
        flushing.durable().unwrap();
        assert_eq!(reader.join().unwrap(), changed.pods);
        // Another opener (as another process) sees it on disk.
        let again = v4_store(dir.path(), "10.9.0.0/29").list().unwrap();
        assert_eq!(again, changed.pods);
    }

    /// A DEL answered before its link is gone, an ADD of the same pod
    /// (same link name) meanwhile, then its DEL: both addresses stay held
    /// by the link and both are freed with it.
    #[test]
    fn a_link_removed_twice_before_it_is_gone_frees_both_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let store = v4_store(dir.path(), "10.9.0.0/29");
        let first = store.add(&key("a"), Path::new("/x")).unwrap().intent;
        store.remove(&key("a")).unwrap().unwrap();
        let second = store.add(&key("a"), Path::new("/x")).unwrap().intent;
        assert_ne!(first.ip, second.ip, "the held address is not handed out");
        store.remove(&key("a")).unwrap().unwrap();
        store
            .release(std::slice::from_ref(&first.host_link))
            .unwrap();
        assert!(store.releasing().unwrap().is_empty());
        // The whole pool (.2 to .6) is free again.
        for i in 0..5 {
            store.add(&key(&format!("p{i}")), Path::new("/x")).unwrap();
        }
    }

    #[test]
    fn a_dual_stack_pod_gets_an_address_of_each_family_and_gives_both_back() {
        let dir = tempfile::tempdir().unwrap();
        // An IPv4-only store with a pod, then IPv6 added to the spec.
        let before = v4_store(dir.path(), "10.9.0.0/29")
            .add(&key("old"), Path::new("/x"))
            .unwrap();
        assert_eq!(before.intent.ip6, None);
        let store = dual_store(dir.path());
        let a = store.add(&key("a"), Path::new("/x")).unwrap().intent;
        assert_eq!(a.ip, Some(Ipv4Addr::new(10, 9, 0, 3)));
        assert_eq!(a.ip6, Some("fd00:9::1".parse().unwrap()));
        assert_eq!(a.addresses_text(), "10.9.0.3 fd00:9::1");
        // The pod from before keeps what it had.
        assert_eq!(store.list().unwrap()[1], before.intent);
        // Removed, both stay held until the link is gone; then both are freed.
        store.remove(&key("a")).unwrap().unwrap();
        let b = store.add(&key("b"), Path::new("/x")).unwrap().intent;
        assert_eq!(b.ip6, Some("fd00:9::2".parse().unwrap()));
        store.release(std::slice::from_ref(&a.host_link)).unwrap();
        assert!(store.releasing().unwrap().is_empty());
        // Dropping a family the store holds pods in is refused.
        let e = PodStore::new(
            dir.path(),
            Pools {
                ipv6: None,
                ..dual_store(dir.path()).pools
            },
        )
        .list()
        .unwrap_err();
        assert!(e.to_string().contains("fd00:9::/64"), "{e}");
        assert!(e.to_string().contains("cidr6"), "{e}");
        // Once no pod holds an IPv6 address, the family may go (the pod
        // from before IPv6 stays).
        store.remove(&key("b")).unwrap().unwrap();
        let ipv4_only = PodStore::new(
            dir.path(),
            Pools {
                ipv6: None,
                ..dual_store(dir.path()).pools
            },
        );
        assert_eq!(ipv4_only.list().unwrap(), vec![before.intent]);
    }

    fn key(id: &str) -> PodKey {
        PodKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn add_is_idempotent_and_remove_frees() {
        let dir = tempfile::tempdir().unwrap();
        let store = v4_store(dir.path(), "10.9.0.0/29");
        let a = store.add(&key("a"), Path::new("/run/netns/a")).unwrap();
        assert!(a.created);
        assert_eq!(a.intent.ip, Some(Ipv4Addr::new(10, 9, 0, 2)));
        let again = store.add(&key("a"), Path::new("/run/netns/a")).unwrap();
        assert!(!again.created);
        assert_eq!(again.intent, a.intent);
        let b = store.add(&key("b"), Path::new("/run/netns/b")).unwrap();
        assert_eq!(b.intent.ip, Some(Ipv4Addr::new(10, 9, 0, 3)));
        assert_eq!(store.remove(&key("a")).unwrap().unwrap().ip, a.intent.ip);
        assert_eq!(store.remove(&key("a")).unwrap(), None);
        assert_eq!(store.list().unwrap(), vec![b.intent]);
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_every_counted_address_can_be_had() {
        let dir = tempfile::tempdir().unwrap();
        let store = v4_store(dir.path(), "10.9.0.0/29");
        for i in 0..5 {
            store.add(&key(&format!("p{i}")), Path::new("/x")).unwrap();
        }
        let e = store.add(&key("p5"), Path::new("/x")).unwrap_err();
        assert!(e.to_string().contains("exhausted"), "{e}");
        // A removed attachment's address stays held until its link is gone.
        let removed = store.remove(&key("p2")).unwrap().unwrap();
        let e = store.add(&key("p5"), Path::new("/x")).unwrap_err();
        assert!(e.to_string().contains("exhausted"), "{e}");
        assert_eq!(store.releasing().unwrap(), vec![removed.host_link.clone()]);
        // A link that holds nothing is marked all the same, and folded away.
        assert_eq!(
            store
                .release(&[removed.host_link.clone(), "hcnothing".into()])
                .unwrap(),
            2
        );
        assert!(store.releasing().unwrap().is_empty());
        // The only free address is the one just freed: handed out all the same.
        let freed = removed.ip;
        let next = store.add(&key("p5"), Path::new("/x")).unwrap().intent.ip;
        assert_eq!(next, freed);
        // With two free, the one freed last waits.
        let older = store.remove(&key("p3")).unwrap().unwrap();
        let newer = store.remove(&key("p4")).unwrap().unwrap();
        store
            .release(std::slice::from_ref(&older.host_link))
            .unwrap();
        store
            .release(std::slice::from_ref(&newer.host_link))
            .unwrap();
        let (older, newer) = (older.ip, newer.ip);
        let next = store.add(&key("p6"), Path::new("/x")).unwrap().intent.ip;
        assert_eq!(next, older);
        assert_ne!(next, newer);
    }

    /// The daemon's way (see `kept`), in one test: the keeper is process-wide.
    #[test]
    fn a_kept_store_stays_locked_between_operations_and_is_let_go_when_asked() {
        use kept::testing::*;
        let dir = tempfile::tempdir().unwrap();
        let store = v4_store(dir.path(), "10.9.0.0/29");
        kept::keep_open(dir.path());
        let a = store.add(&key("a"), Path::new("/x")).unwrap().intent;
        assert!(keeps_idle(dir.path()));
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        let lock_is_free = || match other.try_lock() {
            Ok(()) => {
                other.unlock().unwrap();
                true
            }
            Err(TryLockError::WouldBlock) => false,
            Err(e) => panic!("{e}"),
        };
        assert!(!lock_is_free(), "kept between operations, lock and all");
        // The next operation has the same db, what the first wrote included.
        assert_eq!(store.list().unwrap(), vec![a.clone()]);
        assert!(keeps_idle(dir.path()));
        // Asked by someone else: let go at once, and not kept for a while.
        kept::let_go(dir.path());
        assert!(lock_is_free());
        assert_eq!(store.list().unwrap(), vec![a.clone()]);
        assert!(!keeps_idle(dir.path()) && lock_is_free());
        stop_yielding();
        assert_eq!(store.list().unwrap(), vec![a]);
        assert!(keeps_idle(dir.path()));
        // The state_dir made anew (`uninstall --purge`, then pods again):
        // the kept db is the old one, and its lock excludes nobody.
        fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        store.init().unwrap();
        assert_eq!(store.list().unwrap(), vec![], "the new store, not the kept");
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        stop_keeping();
        other.try_lock().unwrap();
    }

    #[test]
    fn lock_timeout_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            v4_store(dir.path(), "10.9.0.0/29").with_lock_timeout(Duration::from_millis(50));
        let held = store.lock().unwrap();
        // A second open file description conflicts with the first, as another process would.
        let e = store.list_forcing_db().unwrap_err();
        assert!(matches!(e, StoreError::LockTimeout { .. }), "{e}");
        drop(held);
        assert!(store.list_forcing_db().is_ok());
    }

    #[test]
    fn a_store_never_created_reads_empty_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = v4_store(&dir.path().join("state"), "10.9.0.0/29");
        let read = store.read().unwrap();
        assert!(read.pods.is_empty());
        assert_eq!(
            read.missing_store,
            Some(dir.path().join("state").join(DB_DIR))
        );
        assert!(
            !dir.path().join("state").exists(),
            "reading creates nothing"
        );
        assert!(store.init().unwrap());
        assert!(!store.init().unwrap());
        assert_eq!(store.read().unwrap(), Intents::default());
    }

    #[test]
    fn a_store_that_cannot_be_looked_at_is_an_error_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, "x").unwrap();
        let long = dir.path().join("a".repeat(300));
        for (state_dir, expect) in [
            (file.join("state"), "Not a directory"),
            (file.clone(), "is not a directory"),
            (long.clone(), "File name too long"),
        ] {
            let store = v4_store(&state_dir, "10.9.0.0/29");
            for e in [
                store.list().unwrap_err(),
                store.remove(&key("a")).map(|_| ()).unwrap_err(),
                store
                    .add(&key("a"), Path::new("/x"))
                    .map(|_| ())
                    .unwrap_err(),
            ] {
                let text = crate::Chain(&e).to_string();
                assert!(text.contains(expect), "{text}");
                assert!(
                    text.contains(&*state_dir.to_string_lossy())
                        || text.contains(&*file.to_string_lossy()),
                    "names the path: {text}"
                );
            }
        }
    }

    #[test]
    fn a_store_holding_pods_refuses_another_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let old = v4_store(dir.path(), "10.9.0.0/29");
        old.add(&key("a"), Path::new("/x")).unwrap();
        let new = v4_store(dir.path(), "10.8.0.0/29");
        let e = new.list().unwrap_err();
        assert!(matches!(e, StoreError::CidrMismatch { pods: 1, .. }), "{e}");
        assert!(
            e.to_string().contains("10.9.0.0/29") && e.to_string().contains("10.8.0.0/29"),
            "{e}"
        );
        assert!(matches!(
            new.add(&key("b"), Path::new("/x")),
            Err(StoreError::CidrMismatch { .. })
        ));
        // Taking pods down still works, and an empty store takes the new CIDR.
        new.remove(&key("a")).unwrap().unwrap();
        assert_eq!(new.list().unwrap(), vec![]);
        let b = new.add(&key("b"), Path::new("/x")).unwrap();
        assert_eq!(b.intent.ip, Some(Ipv4Addr::new(10, 8, 0, 2)));
        assert!(matches!(old.list(), Err(StoreError::CidrMismatch { .. })));
    }

    impl PodStore {
        fn list_forcing_db(&self) -> Result<usize, StoreError> {
            self.with_db(|db, _| Ok(db.len()))
        }
    }
}
