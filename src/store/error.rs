use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::model::PodKey;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timed out after {waited:?} waiting for the store lock {}; another headcni process holds it", path.display())]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error("store I/O on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("pod store {}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        error: sled::Error,
    },
    #[error("pod CIDR {cidr} is exhausted: all {capacity} addresses are allocated")]
    Exhausted { cidr: IpNetwork, capacity: u64 },
    #[error("pod store entry {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("pod store {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("state_dir {} is not safe: {reason}", path.display())]
    Unsafe { path: PathBuf, reason: String },
    #[error("pod store {} allocates from {stored}, where {pods} pods hold addresses, but the spec's pod CIDR of that family is {}; a store is never used with another CIDR: restore pod_network.{field}, or remove those pods first", path.display(), spec.map_or("not set".to_string(), |s| s.to_string()))]
    CidrMismatch {
        path: PathBuf,
        stored: IpNetwork,
        spec: Option<IpNetwork>,
        field: &'static str,
        pods: usize,
    },
    #[error("host link name {name} of pod {new} collides with pod {existing}")]
    HostLinkCollision {
        name: String,
        new: PodKey,
        existing: PodKey,
    },
}
