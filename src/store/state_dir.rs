//! state_dir: private to root, checked on every path that uses it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// What `headcni validate` found at state_dir.
#[derive(Debug, PartialEq, Eq)]
pub enum StateDirCheck {
    /// It exists as a private directory.
    Private,
    /// It exists, and others may read it (older versions made it 0755).
    ReadableByOthers { mode: u32 },
    /// It does not exist yet; its nearest existing parent lets us create it.
    WillBeCreated { parent: PathBuf },
}

/// Checks that `dir` can serve as state_dir: a directory owned by us that no
/// one else can write, or a path we can create. Reads nothing inside it.
pub fn check_state_dir(dir: &Path) -> Result<StateDirCheck, StoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let unsafe_dir = |reason: String| StoreError::Unsafe {
        path: dir.to_path_buf(),
        reason,
    };
    let us = nix::unistd::geteuid().as_raw();
    // A symlink as state_dir is fine when we made it; one of another user's
    // could be pointed elsewhere at any time.
    if let Ok(link) = fs::symlink_metadata(dir) {
        if link.file_type().is_symlink() && link.uid() != us {
            return Err(unsafe_dir(format!(
                "it is a symlink owned by uid {}, not by us",
                link.uid()
            )));
        }
    }
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(StoreError::NotADirectory { path: dir.into() }),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if meta.uid() != us {
                return Err(unsafe_dir(format!(
                    "it is owned by uid {}, not by us",
                    meta.uid()
                )));
            }
            if mode & 0o022 != 0 {
                return Err(unsafe_dir(format!(
                    "others can write it (mode {mode:04o}); chmod 700 it"
                )));
            }
            nix::unistd::access(
                dir,
                nix::unistd::AccessFlags::R_OK
                    | nix::unistd::AccessFlags::W_OK
                    | nix::unistd::AccessFlags::X_OK,
            )
            .map_err(|e| StoreError::Io {
                path: dir.into(),
                error: e.into(),
            })?;
            Ok(if mode & 0o077 != 0 {
                StateDirCheck::ReadableByOthers { mode }
            } else {
                StateDirCheck::Private
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|p| p.exists())
                .unwrap_or(Path::new("/"));
            match fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(StoreError::NotADirectory {
                        path: parent.into(),
                    })
                }
                Err(error) => {
                    return Err(StoreError::Io {
                        path: parent.into(),
                        error,
                    })
                }
            }
            nix::unistd::access(
                parent,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .map_err(|e| {
                unsafe_dir(format!(
                    "it does not exist and {} cannot be written: {e}",
                    parent.display()
                ))
            })?;
            Ok(StateDirCheck::WillBeCreated {
                parent: parent.into(),
            })
        }
        Err(error) => Err(StoreError::Io {
            path: dir.into(),
            error,
        }),
    }
}

/// Creates `state_dir` (and missing parents) readable by root alone: it holds
/// the pod store, the last applied state and the daemon's sockets. One that
/// exists is used only if it is safe ([`require_safe_state_dir`]).
pub fn create_state_dir(dir: &Path) -> Result<(), StoreError> {
    if let StateDirCheck::WillBeCreated { .. } = check_state_dir(dir)? {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| StoreError::Io {
                path: dir.into(),
                error,
            })?;
    }
    require_safe_state_dir(dir)
}

/// Refuses a state_dir that someone else could change under us, with the
/// message `validate` gives: every path that reads or writes state_dir (the
/// plugin, the daemon, apply, plan) calls this first. A state_dir a non-root
/// user made could hold a planted store (pods root would wire) or symlinks
/// (files root would overwrite).
pub fn require_safe_state_dir(dir: &Path) -> Result<(), StoreError> {
    match check_state_dir(dir)? {
        StateDirCheck::Private | StateDirCheck::ReadableByOthers { .. } => Ok(()),
        StateDirCheck::WillBeCreated { .. } => Err(StoreError::Io {
            path: dir.into(),
            error: std::io::ErrorKind::NotFound.into(),
        }),
    }
}

/// Opens a file in state_dir for writing without following a symlink there.
pub(super) fn open_state_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}
