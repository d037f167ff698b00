//! The daemon remembers which Headscale node is this node's
//! (state_dir/headscale-node.json, root-only), so `headcni uninstall
//! --purge` can delete it when tailscaled no longer runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "headscale-node.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub url: String,
    pub id: u64,
    pub name: String,
    pub node_key: String,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

pub fn load(state_dir: &Path) -> Option<NodeRecord> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Written atomically, mode 0600.
pub fn save(state_dir: &Path, record: &NodeRecord) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(serde_json::to_string(record)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &target)
}

pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(path(state_dir));
}
