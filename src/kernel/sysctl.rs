//! Sysctl writes, by key (`net/ipv4/ip_forward`), in the calling thread's
//! network namespace (enter a pod's with `netlink::in_netns` first).

use std::path::{Path, PathBuf};

/// Writes `value` to `/proc/sys/KEY`; the error names the file.
pub fn write(key: &str, value: &str) -> Result<(), (PathBuf, std::io::Error)> {
    let path = Path::new("/proc/sys").join(key);
    match std::fs::write(&path, format!("{value}\n")) {
        Ok(()) => Ok(()),
        Err(e) => Err((path, e)),
    }
}
