//! Files put in place whole: written beside the target, synced, renamed
//! over it. A reader (kubelet scanning /etc/cni/net.d, a runtime executing
//! /opt/cni/bin/headcni) sees the old file or the new one, never a part.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
    /// The file already held exactly these bytes and mode: left alone.
    Unchanged,
}

/// Puts `bytes` at `path` with `mode`, unless it already holds them.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<Written> {
    let existing = std::fs::symlink_metadata(path).ok();
    if let Some(meta) = &existing {
        let same_mode = meta.permissions().mode() & 0o7777 == mode;
        if meta.is_file() && same_mode && std::fs::read(path)? == bytes {
            return Ok(Written::Unchanged);
        }
    }
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = beside(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // The umask may have narrowed the mode at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| {
        if existing.is_some() {
            Written::Replaced
        } else {
            Written::Created
        }
    })
}

/// A temporary name in the target's directory (a rename never crosses file
/// systems), hidden from kubelet's scan of *.conf/*.conflist.
fn beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.headcni-{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_then_leaves_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/10-headcni.conflist");
        assert_eq!(write(&path, b"one", 0o644).unwrap(), Written::Created);
        assert_eq!(write(&path, b"one", 0o644).unwrap(), Written::Unchanged);
        assert_eq!(write(&path, b"one", 0o600).unwrap(), Written::Replaced);
        assert_eq!(write(&path, b"two", 0o600).unwrap(), Written::Replaced);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
