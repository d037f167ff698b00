//! The daemon keeps the store open between its operations.
//!
//! Opening sled replays its log: 1-2 ms of every CNI batch, a third of a
//! lone pod's ADD. The daemon is the store's only regular user while it
//! runs (the CNI calls go through it), so it keeps the db open, and its
//! lock held, from one operation to the next. Anyone else who finds the
//! lock taken says so by touching [`WANTED_FILE`]; the daemon's file watch
//! hears it and lets go ([`let_go`]) — at once when the db is idle, else
//! when the operation under way ends — and then opens and closes per
//! operation, as everyone else does, until nobody has asked for a while
//! ([`YIELD_FOR`]), so that a waiter is not overtaken twice.
//!
//! Correctness rests on the lock alone, as before: the db is only ever
//! used under the store's flock, whoever holds it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Touched by a process that waits for the lock the daemon keeps.
pub const WANTED_FILE: &str = "pods.wanted";

/// How long after someone else's request the keeper opens and closes per
/// operation: a waiter gets the lock in the kernel's order meanwhile.
const YIELD_FOR: Duration = Duration::from_secs(1);

/// An open db and the lock it is used under.
pub(super) struct Held {
    pub db: sled::Db,
    pub lock: File,
}

#[derive(Default)]
struct Keeper {
    /// The state_dir whose store this process keeps (None: it keeps none).
    dir: Option<PathBuf>,
    /// The db between two operations.
    idle: Option<Held>,
    /// An operation of this process has the db now.
    in_use: bool,
    /// Someone asked for the lock: the db in use is closed after it.
    wanted: bool,
    yield_until: Option<Instant>,
}

static KEEPER: Mutex<Keeper> = Mutex::new(Keeper {
    dir: None,
    idle: None,
    in_use: false,
    wanted: false,
    yield_until: None,
});

fn keeper() -> MutexGuard<'static, Keeper> {
    KEEPER.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process keeps the store in `dir` open between operations. Only for
/// a process that also lets go when asked (the daemon's file watch calls
/// [`let_go`] on every event of [`WANTED_FILE`]): anyone else would wait
/// for the lock until their timeout.
pub fn keep_open(dir: &Path) {
    keeper().dir = Some(dir.to_path_buf());
}

/// Someone else wants the store in `dir`: close it now if idle, else after
/// the operation under way, and do not keep it for a while.
pub fn let_go(dir: &Path) {
    let idle = {
        let mut k = keeper();
        if k.dir.as_deref() != Some(dir) {
            return;
        }
        k.yield_until = Some(Instant::now() + YIELD_FOR);
        k.wanted = k.in_use;
        k.idle.take()
    };
    // Dropped outside the keeper's lock: sled's close may take a moment.
    drop(idle);
}

/// Whether this process keeps the store in `dir` (then it never asks
/// itself by file for the lock).
pub(super) fn keeps(dir: &Path) -> bool {
    keeper().dir.as_deref() == Some(dir)
}

/// The kept db of `dir`, if this process keeps one and it is idle; marks it
/// in use. A db whose files were replaced meanwhile (state_dir removed
/// and made again, as `uninstall --purge` does) is closed, not handed out:
/// its lock would exclude nobody.
pub(super) fn take(dir: &Path, lock_path: &Path, db_path: &Path) -> Option<Held> {
    let mut k = keeper();
    if k.dir.as_deref() != Some(dir) {
        return None;
    }
    if k.in_use {
        // A second operation of this process: it waits for the lock like
        // anyone else, and the first lets go when it ends.
        k.wanted = true;
        return None;
    }
    let held = k.idle.take();
    k.in_use = true;
    drop(k);
    let held = held?;
    if still_ours(&held.lock, lock_path) && db_path.is_dir() {
        Some(held)
    } else {
        drop(held);
        None
    }
}

/// An operation of this process is done with the db (flushed): kept for
/// the next one, unless someone asked for the lock.
pub(super) fn put_back(dir: &Path, held: Held) {
    let mut k = keeper();
    if k.dir.as_deref() != Some(dir) {
        return;
    }
    k.in_use = false;
    let yielding = k.yield_until.is_some_and(|until| Instant::now() < until);
    if std::mem::take(&mut k.wanted) || yielding {
        drop(k);
        drop(held);
    } else {
        k.idle = Some(held);
    }
}

/// An operation of this process ended without a db to give back (it failed,
/// and its db, if any, was closed).
pub(super) fn done(dir: &Path) {
    let mut k = keeper();
    if k.dir.as_deref() == Some(dir) {
        k.in_use = false;
        k.wanted = false;
    }
}

/// Whether the lock file `held` is still the one at `path`.
fn still_ours(held: &File, path: &Path) -> bool {
    match (held.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Asks the keeper of the store in `dir` for its lock. Best effort: a
/// keeper that does not hear it is asked again while we wait.
pub(super) fn ask(dir: &Path) {
    use std::io::Write;
    let path = dir.join(WANTED_FILE);
    // Written, not only opened: the watch ignores opens and closes.
    let asked = super::state_dir::open_state_file(&path, true).and_then(|mut f| f.write_all(b"1"));
    if let Err(e) = asked {
        tracing::debug!("cannot ask for the store lock at {}: {e}", path.display());
    }
}

/// Marks an operation of the keeping process; one that ends without
/// [`InUse::put_back`] (an error, a panic) lets go of the db.
pub(super) struct InUse(Option<PathBuf>);

impl InUse {
    /// For an operation on the store in `dir` (a no-op where this process
    /// keeps none).
    pub fn new(dir: &Path) -> InUse {
        InUse(keeps(dir).then(|| dir.to_path_buf()))
    }

    pub fn put_back(mut self, held: Held) {
        match self.0.take() {
            Some(dir) => put_back(&dir, held),
            None => drop(held),
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            done(&dir);
        }
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// Whether an idle db of `dir` is kept now.
    pub fn keeps_idle(dir: &Path) -> bool {
        let k = keeper();
        k.dir.as_deref() == Some(dir) && k.idle.is_some()
    }

    /// Ends the yield after a request, as time would.
    pub fn stop_yielding() {
        keeper().yield_until = None;
    }

    /// This process keeps no store (and closes the one it kept).
    pub fn stop_keeping() {
        let idle = {
            let mut k = keeper();
            k.dir = None;
            k.idle.take()
        };
        drop(idle);
    }
}
