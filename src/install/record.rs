//! What install wrote: each path with the SHA-256 of what was written, so
//! uninstall removes a file only while it still holds exactly that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::InstallError;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Path -> hex SHA-256 of the content install wrote there.
    files: BTreeMap<PathBuf, String>,
}

pub fn digest(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Record {
    /// The record at `path`; none yet is an empty one.
    pub fn load(path: &Path) -> Result<Record, InstallError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| InstallError::Record {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(InstallError::File {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    pub fn wrote(&mut self, path: &Path, bytes: &[u8]) {
        self.files.insert(path.to_path_buf(), digest(bytes));
    }

    pub fn files(&self) -> impl Iterator<Item = (&PathBuf, &String)> {
        self.files.iter()
    }

    pub fn save(&self, path: &Path) -> Result<(), InstallError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| InstallError::Record {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            crate::store::create_state_dir(dir).map_err(|e| InstallError::Record {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        super::atomic::write(path, text.as_bytes(), 0o600)
            .map(|_| ())
            .map_err(|source| InstallError::File {
                path: path.to_path_buf(),
                source,
            })
    }
}
