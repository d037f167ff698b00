//! One daemon per state_dir: an exclusive lock on state_dir/daemon.lock,
//! held for the daemon's life and let go by the kernel however it ends.
//! The file names the holder's pid, so the second daemon can say whom it
//! found.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const LOCK_FILE: &str = "daemon.lock";

/// The claim on state_dir; dropping it (or exiting) lets it go.
pub struct Claim {
    _lock: File,
}

/// Claims `state_dir` for this daemon, or says which daemon holds it.
pub fn claim(state_dir: &Path) -> anyhow::Result<Claim> {
    let path = state_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Bounded: the file is ours (state_dir is root's), but a pid is short.
            let _ = (&file).take(64).read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.chars().all(|c| c.is_ascii_digit()) && !holder.is_empty() {
                format!("pid {holder}")
            } else {
                "another process".to_string()
            };
            anyhow::bail!(
                "another headcni daemon ({who}) already runs for state_dir {}; stop it first (its lock is {})",
                state_dir.display(),
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display())
        }
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Claim { _lock: file })
}
