//! Reading the node spec from disk: the file is the edge, `Spec::parse`
//! the pure part.

use std::path::{Path, PathBuf};

use crate::spec::{Spec, SpecError, DEFAULT_STATE_DIR, MAX_SPEC_BYTES};

/// Reads a spec file: a regular file of bounded size. A FIFO would block
/// the daemon until someone writes to it, `/dev/zero` would fill memory.
fn read_spec_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO without a writer would wait; this only opens.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes; a spec is at most {MAX_SPEC_BYTES}", meta.len()),
        ));
    }
    let mut text = String::new();
    file.take(MAX_SPEC_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("grew past {MAX_SPEC_BYTES} bytes while being read"),
        ));
    }
    Ok(text)
}

impl Spec {
    /// Reads and validates the spec at `path`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = read_spec_file(path).map_err(|error| SpecError::Read {
            file: path.to_path_buf(),
            error,
        })?;
        Spec::parse(&text, path)
    }

    /// Where the state lives, even when the spec is invalid: `headcni status`
    /// must reach a daemon that is reporting exactly that. Reads `state_dir`
    /// leniently, else the default.
    pub fn state_dir_of(path: &Path) -> PathBuf {
        read_spec_file(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("state_dir")
                    .and_then(|v| v.as_str())
                    .map(PathBuf::from)
            })
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}
