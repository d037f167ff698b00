//! The node spec a person edits (TOML), its validation, the pod-intent store,
//! and the pure compile `Spec + pods -> Desired`.

pub mod alloc;
mod desired;
mod error;
mod names;
mod raw;
pub mod store;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

pub use desired::{compile, Desired, DesiredPod, Problem};
pub use error::SpecError;
pub use names::{host_link_name, validate_container_id, validate_ifname};
pub use store::{PodIntent, PodStore, StoreError};

/// Default location of the spec; `--spec` or `HEADCNI_SPEC` override it.
pub const DEFAULT_SPEC_PATH: &str = "/etc/headcni/headcni.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/headcni";
pub const DEFAULT_TAILNET_CIDR: &str = "100.64.0.0/10";
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Pods reach the tailnet through the host's own tailscale interface.
    Host,
    /// `headcni daemon` runs a tailnet interface of its own.
    Daemon,
}

impl Mode {
    pub fn default_tailnet_interface(self) -> &'static str {
        match self {
            Mode::Host => "tailscale0",
            Mode::Daemon => "headcni01",
        }
    }
}

/// A validated node spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub pod_network: PodNetwork,
    pub tailnet: Tailnet,
    pub routes: Vec<ExtraRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodNetwork {
    pub cidr: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tailnet {
    pub cidr: IpNetwork,
    pub interface: String,
}

/// A `[[route]]` the operator wants kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtraRoute {
    pub destination: IpNetwork,
    pub via: Option<IpAddr>,
    pub device: Option<String>,
    pub metric: u32,
}

impl Spec {
    /// Reads and validates the spec at `path`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|error| SpecError::Read {
            file: path.to_path_buf(),
            error,
        })?;
        Spec::parse(&text, path)
    }

    /// Parses and validates spec text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecError> {
        raw::parse(text, path)
    }
}
