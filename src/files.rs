//! The node-local files headcni keeps (today: the tailnet namespace's
//! resolv.conf under /etc/netns): read for `observe`, written and removed
//! for `apply`. Nothing here decides anything.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::model::ManagedFile;

/// A resolv.conf is small; anything larger at one of our paths is not ours
/// and is read only this far (enough to see it has no mark).
const READ_AT_MOST: u64 = 64 * 1024;

/// The files at `paths` that exist, as they are. A path that is a symlink,
/// not a regular file, or unreadable reads as a file without headcni's mark
/// (so it is someone else's and is left alone).
pub fn read_existing(paths: &[PathBuf]) -> Vec<ManagedFile> {
    paths
        .iter()
        .filter_map(|path| {
            let content = match read_regular(path, false) {
                Ok(content) => content,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => format!("(unreadable: {e})"),
            };
            Some(ManagedFile {
                path: path.clone(),
                content,
            })
        })
        .collect()
}

/// `follow`: whether a symlink is followed (the node's /etc/resolv.conf
/// usually is one; a file of ours never is).
fn read_regular(path: &Path, follow: bool) -> std::io::Result<String> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut content = String::new();
    file.take(READ_AT_MOST).read_to_string(&mut content)?;
    Ok(content)
}

/// The node's resolvers: its /etc/resolv.conf and, when it exists, the
/// file `upstream` names (a loopback stub's upstream servers).
pub fn node_resolvers(upstream: &Path) -> crate::spec::NodeResolvers {
    crate::spec::NodeResolvers {
        resolv_conf: read_regular(Path::new("/etc/resolv.conf"), true).unwrap_or_default(),
        upstream: read_regular(upstream, true).ok(),
    }
}

/// Writes `content` into the file at `path`, keeping its inode: tailscaled
/// sees the file through a bind mount over its /etc/resolv.conf, and a bind
/// mount keeps showing the inode it was made with (a rename would leave it
/// reading the old one). Creates the parent directory (0755) when missing.
pub fn write_in_place(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // New bytes first, then the length: a reader never sees an empty file.
    file.write_all(content.as_bytes())?;
    file.set_len(content.len() as u64)?;
    file.sync_data()
}

/// Removes the file and, when that leaves it empty, its directory (the
/// /etc/netns/NAME entry headcni made).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_keeps_the_inode_and_shrinks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns/x/resolv.conf");
        write_in_place(
            &path,
            "# Written by headcni\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n",
        )
        .unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_in_place(&path, "# Written by headcni\nnameserver 192.0.2.9\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        let read = read_existing(&[path.clone(), dir.path().join("absent")]);
        assert_eq!(read.len(), 1);
        assert_eq!(
            read[0].content,
            "# Written by headcni\nnameserver 192.0.2.9\n"
        );
        assert!(read[0].is_owned());
        remove(&path).unwrap();
        assert!(!path.parent().unwrap().exists(), "empty directory removed");
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "# Written by headcni\n").unwrap();
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let read = read_existing(std::slice::from_ref(&link));
        assert!(!read[0].is_owned(), "{:?}", read[0]);
        assert!(write_in_place(&link, "x").is_err());
    }
}
