//! `headcni install` and `uninstall`: the binary into the CNI bin dir, the
//! network configuration into the CNI conf dir, the node spec when there is
//! none, the iproute2 protocol name. Every file goes in whole (atomic.rs)
//! and is written only when its content changes; a record of what was
//! written (with each file's SHA-256) lets `uninstall` remove exactly that,
//! and nothing someone changed since.

pub mod atomic;
pub mod kube;
mod record;
pub mod render;

use std::path::{Path, PathBuf};

pub use atomic::Written;
pub use record::Record;

use crate::model::{RTPROT_HEADCNI, RTPROT_NAME};

/// The CNI version every supported runtime accepts: containerd 1.6's libcni
/// refuses 1.1.0 results, and then never calls DEL. Runtimes that read
/// `cniVersions` pick 1.1.0 from it.
pub const CONFLIST_CNI_VERSION: &str = "1.0.0";
pub const CONFLIST_CNI_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("install record {}: {reason}", path.display())]
    Record { path: PathBuf, reason: String },
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Where everything goes; each has a flag.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The binary to install (the running one, by default).
    pub binary: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub conflist_name: String,
    pub spec: PathBuf,
    pub protocols_dir: PathBuf,
    pub record: PathBuf,
}

impl Paths {
    pub fn conflist(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conflist_name)
    }
}

/// What the node spec becomes.
#[derive(Clone, Debug)]
pub enum SpecContent {
    /// Written only if there is no spec yet (an operator's edits stay).
    IfMissing(String),
    /// Derived (from a template and the cluster): kept equal to this.
    Rendered(String),
}

/// One line of what install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub path: PathBuf,
    pub written: Written,
}

/// The network configuration list for `spec` (portmap chained when the
/// runtime has it: a conflist naming a missing plugin fails every pod).
pub fn conflist(spec: &Path, with_portmap: bool) -> String {
    let mut plugins = vec![serde_json::json!({
        "type": "headcni",
        "spec": spec,
    })];
    if with_portmap {
        plugins.push(serde_json::json!({
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
        }));
    }
    let doc = serde_json::json!({
        "cniVersion": CONFLIST_CNI_VERSION,
        "cniVersions": CONFLIST_CNI_VERSIONS,
        "name": "headcni",
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

pub fn install(paths: &Paths, spec: &SpecContent) -> Result<Vec<Done>, InstallError> {
    let mut record = Record::load(&paths.record)?;
    let mut done = Vec::new();
    let mut put = |path: PathBuf, bytes: &[u8], mode: u32| -> Result<(), InstallError> {
        let written = atomic::write(&path, bytes, mode).map_err(at(&path))?;
        record.wrote(&path, bytes);
        done.push(Done { path, written });
        Ok(())
    };

    let binary = std::fs::read(&paths.binary).map_err(at(&paths.binary))?;
    put(paths.cni_bin_dir.join("headcni"), &binary, 0o755)?;
    let portmap = paths.cni_bin_dir.join("portmap").exists();
    put(
        paths.conflist(),
        conflist(&paths.spec, portmap).as_bytes(),
        0o644,
    )?;
    let protocols = format!("{RTPROT_HEADCNI}\t{RTPROT_NAME}\n");
    put(
        paths.protocols_dir.join("headcni.conf"),
        protocols.as_bytes(),
        0o644,
    )?;
    match spec {
        SpecContent::Rendered(text) => put(paths.spec.clone(), text.as_bytes(), 0o644)?,
        SpecContent::IfMissing(text) => {
            if std::fs::symlink_metadata(&paths.spec).is_err() {
                put(paths.spec.clone(), text.as_bytes(), 0o644)?;
            } else {
                // An operator's spec: kept as it is (and not claimed).
                done.push(Done {
                    path: paths.spec.clone(),
                    written: Written::Unchanged,
                });
            }
        }
    }
    record.save(&paths.record)?;
    Ok(done)
}

/// What uninstall did with one recorded file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    AlreadyGone,
    /// Someone changed it since install wrote it: theirs now, left in place.
    KeptChanged,
}

/// Removes what install wrote (and only while it still holds what install
/// wrote), then the record.
pub fn uninstall(record_path: &Path) -> Result<Vec<(PathBuf, Removal)>, InstallError> {
    let record = Record::load(record_path)?;
    let mut out = Vec::new();
    for (path, digest) in record.files() {
        let removal = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Removal::AlreadyGone,
            Err(e) => return Err(at(path)(e)),
            Ok(bytes) if record::digest(&bytes) != *digest => Removal::KeptChanged,
            Ok(_) => {
                std::fs::remove_file(path).map_err(at(path))?;
                Removal::Removed
            }
        };
        out.push((path.clone(), removal));
    }
    match std::fs::remove_file(record_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(record_path)(e)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_is_1_0_0_with_1_1_0_offered() {
        let text = conflist(Path::new("/etc/headcni/headcni.toml"), true);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert_eq!(doc["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
        assert_eq!(doc["plugins"][0]["type"], "headcni");
        assert_eq!(doc["plugins"][1]["type"], "portmap");
        let without = conflist(Path::new("/x.toml"), false);
        assert!(!without.contains("portmap"));
    }
}
