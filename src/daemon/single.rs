//! One daemon per state_dir: an exclusive lock on state_dir/daemon.lock,
//! held for the daemon's life and let go by the kernel however it ends.
//! The file names the holder's pid, so the second daemon can say whom it
//! found.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "daemon.lock";

/// The claim on state_dir; dropping it (or exiting) lets it go.
pub struct Claim {
    _lock: File,
}

/// How long a lock whose named holder is gone may stay held before the
/// claim gives up.
const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(5);

/// The pid the lock file names, if it names one.
fn holder_pid(file: &mut File) -> Option<i32> {
    let mut holder = String::new();
    // Bounded: the file is ours (state_dir is root's), but a pid is short.
    let _ = file.rewind();
    let _ = (&*file).take(64).read_to_string(&mut holder);
    holder.trim().parse().ok().filter(|pid| *pid > 0)
}

/// Whether a process `pid` exists (EPERM: it does, someone else's).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) } == 0;
    sent || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The lock file, made if missing (root-only, never through a symlink).
fn open_lock(state_dir: &Path) -> anyhow::Result<(std::path::PathBuf, File)> {
    let path = state_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((path, file))
}

/// Takes `state_dir` from daemons for a command that must not run beside
/// one (`uninstall --purge`): the lock held until the returned claim is
/// dropped, so none can start meanwhile. Err(pid) when a daemon holds it
/// (0: its pid unknown); None when there is no state_dir (no daemon ever).
pub fn hold(state_dir: &Path) -> anyhow::Result<Result<Option<Claim>, i32>> {
    if !state_dir.exists() {
        return Ok(Ok(None));
    }
    let (path, mut file) = open_lock(state_dir)?;
    match file.try_lock() {
        Ok(()) => Ok(Ok(Some(Claim { _lock: file }))),
        Err(TryLockError::WouldBlock) => Ok(Err(holder_pid(&mut file).unwrap_or(0))),
        Err(TryLockError::Error(e)) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Claims `state_dir` for this daemon, or says which daemon holds it.
pub fn claim(state_dir: &Path) -> anyhow::Result<Claim> {
    let (path, mut file) = open_lock(state_dir)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let holder = holder_pid(&mut file);
                // A daemon that just died can leave its lock held a moment
                // longer (a child it was starting holds the open file until
                // it execs): a restart right after a crash waits for that,
                // a live holder is named at once. A file naming nobody (a
                // holder that has not written its pid yet) is waited for too.
                if holder.is_some_and(alive) || started.elapsed() >= DEAD_HOLDER_GRACE {
                    let who = match holder {
                        Some(pid) => format!("pid {pid}"),
                        None => "another process".to_string(),
                    };
                    anyhow::bail!(
                        "another headcni daemon ({who}) already runs for state_dir {}; stop it first (its lock is {})",
                        state_dir.display(),
                        path.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Claim { _lock: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another open file description of the lock, as a daemon or its child holds it.
    fn hold(dir: &Path, named: &str) -> File {
        let file = File::create(dir.join(LOCK_FILE)).unwrap();
        file.try_lock().unwrap();
        std::fs::write(dir.join(LOCK_FILE), named).unwrap();
        file
    }

    #[test]
    fn a_live_holder_is_named_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let _held = hold(dir.path(), &std::process::id().to_string());
        let started = Instant::now();
        let refused = claim(dir.path()).err().expect("refused");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            refused
                .to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
    }

    #[test]
    fn a_lock_outliving_its_dead_holder_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let held = hold(dir.path(), &dead.to_string());
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let claimed = claim(dir.path());
        released.join().unwrap();
        assert!(claimed.is_ok(), "{:?}", claimed.err());
        let named = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(named, std::process::id().to_string());
    }
}
