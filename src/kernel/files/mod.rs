//! The node-local files headcni keeps (today: the tailnet namespace's
//! resolv.conf under /etc/netns): read for `observe`, written and removed
//! for `apply`; and the files it only reads (the spec, the node's
//! resolv.conf). Nothing here decides anything.

mod spec;

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
    let bytes = read_regular_bytes(path, follow, READ_AT_MOST)?;
    String::from_utf8(bytes).map_err(std::io::Error::other)
}

/// At most `limit` bytes of a regular file, opened without blocking (a
/// FIFO there is refused, not waited on).
fn read_regular_bytes(path: &Path, follow: bool, limit: u64) -> std::io::Result<Vec<u8>> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut content = Vec::new();
    file.take(limit).read_to_end(&mut content)?;
    Ok(content)
}

/// The node's resolv.conf files are the system's, not ours, and may be long
/// (comments, search lists); a resolver list is what matters in them.
const NODE_FILE_AT_MOST: u64 = 1024 * 1024;

/// A node file's lines that are text: one bad byte costs its line (with a
/// warning), not the whole file.
fn read_text_lines(path: &Path) -> std::io::Result<String> {
    let bytes = read_regular_bytes(path, true, NODE_FILE_AT_MOST)?;
    let mut text = String::with_capacity(bytes.len());
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        match std::str::from_utf8(line) {
            Ok(line) => {
                text.push_str(line);
                text.push('\n');
            }
            Err(_) => tracing::warn!(
                "{}:{}: not UTF-8; that line is skipped",
                path.display(),
                number + 1
            ),
        }
    }
    Ok(text)
}

/// The node's resolvers: its /etc/resolv.conf and, when it exists, the
/// file `upstream` names (a loopback stub's upstream servers).
pub fn node_resolvers(upstream: &Path) -> crate::spec::NodeResolvers {
    let resolv_conf = Path::new("/etc/resolv.conf");
    crate::spec::NodeResolvers {
        resolv_conf: read_text_lines(resolv_conf)
            .inspect_err(|e| tracing::warn!("{}: {e}", resolv_conf.display()))
            .unwrap_or_default(),
        upstream: read_text_lines(upstream).ok(),
    }
}

/// Whether `path` can be bound over a namespace's /etc/resolv.conf: it is
/// missing (a placeholder is made there then), or a regular file, never a
/// symlink (its target would be bound), a directory (the bind fails and
/// tailscaled with it) or a FIFO (its readers would block).
pub fn bindable_regular_file(path: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(true),
        Ok(meta) => Err(std::io::Error::other(format!(
            "{} is {}, not a regular file; remove it",
            path.display(),
            describe(meta.file_type())
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "a symlink"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
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
    // Non-blocking: a FIFO there (no reader) is an error, not a wait.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
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

    #[test]
    fn a_bad_byte_costs_its_line_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        let mut bytes = b"# comment\nsearch caf\xe9.example\nnameserver 192.0.2.53\n".to_vec();
        // A nameserver line well past the first 64 KiB is still read.
        bytes.extend(std::iter::repeat_n(b'#', 70 * 1024));
        bytes.extend(b"\nnameserver 192.0.2.54\n");
        std::fs::write(&path, bytes).unwrap();
        let text = read_text_lines(&path).unwrap();
        assert!(!text.contains("search"), "the bad line is skipped");
        assert!(text.contains("nameserver 192.0.2.53\n"));
        assert!(text.contains("nameserver 192.0.2.54\n"));
    }

    #[test]
    fn only_a_regular_file_is_bound_or_written() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let sub = dir.path().join("dir");
        std::fs::create_dir(&sub).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        for (path, what) in [
            (&fifo, "a FIFO"),
            (&sub, "a directory"),
            (&link, "a symlink"),
        ] {
            let e = bindable_regular_file(path).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        assert!(
            write_in_place(&fifo, "x").is_err(),
            "a FIFO is not waited on"
        );
        assert!(!bindable_regular_file(&dir.path().join("absent")).unwrap());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bindable_regular_file(&file).unwrap());
    }
}
