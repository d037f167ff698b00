//! The node spec a person edits (TOML), its validation, and the pure
//! compile `Spec + pod intents -> Desired`. Pure: reading the file is
//! `files::spec` (the kernel layer), the intents' store is `store`.

pub mod alloc;
mod desired;
mod error;
pub mod firewall;
mod intent;
mod names;
mod ranges;
mod raw;
mod resolv;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

pub use desired::{
    compile, compile_on, host_prefix, Desired, DesiredPod, NodeFacts, Problem, TAILNET_HOST_LINK,
    TAILNET_MTU, TAILNET_PEER_LINK,
};
pub use error::SpecError;
pub use intent::{unowned_host_link, Intents, PodIntent};
pub use names::{host_link_name, validate_container_id, validate_ifname};
pub use ranges::covers_node;
pub use resolv::{namespace_resolv_conf, NodeResolvers};

/// Default location of the spec; `--spec` or `HEADCNI_SPEC` override it.
pub const DEFAULT_SPEC_PATH: &str = "/etc/headcni/headcni.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/headcni";
pub const DEFAULT_TAILNET_CIDR: &str = "100.64.0.0/10";
/// Tailscale's IPv6 range (Headscale's `prefixes.v6` default).
pub const DEFAULT_TAILNET_CIDR6: &str = "fd7a:115c:a1e0::/48";
/// The IPv6 gateway of every pod: a link-local address headcni puts on each
/// host veth (as IPv4's gateway is put on each). ptp instead routes a pod
/// via the kernel's own link-local address of the host veth, which exists
/// only once the link is up and is known only after reading it back; a
/// fixed one is known when planning, the same on every node, and survives
/// the link's re-creation. It is added without duplicate address
/// detection: it is unique on its point-to-point link by construction.
pub use crate::model::POD_GATEWAY6;
/// The tailnet namespace's end of its veth (daemon mode), link-local too.
pub use crate::model::TAILNET_PEER6;
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
    pub daemon: DaemonConfig,
    /// `[headscale]`: Headscale's API, when the operator gives a key.
    pub headscale: Option<HeadscaleConfig>,
}

/// `[headscale]`: where Headscale's API is and the key that opens it. The
/// key itself is read only when a call is made, never kept in the spec (a
/// spec is printed in plans and snapshots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeadscaleConfig {
    /// https://HOST[:PORT], default daemon.login_server.
    pub url: String,
    pub api_key_file: PathBuf,
    /// PEM certificates to trust for `url`; default the web's roots.
    pub ca_file: Option<PathBuf>,
    /// The Headscale user a minted pre-auth key belongs to.
    pub user: Option<String>,
    /// Tags a minted pre-auth key gives the node.
    pub tags: Vec<String>,
    /// Each call's limit.
    pub timeout_seconds: u64,
}

/// `[daemon]`: how `headcni daemon` runs (both modes) and, in daemon mode,
/// the supervised tailscaled and the namespace it lives in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    pub tailscaled: PathBuf,
    pub tailscale: PathBuf,
    pub login_server: Option<String>,
    pub auth_key_file: Option<PathBuf>,
    /// The tailnet node's name; default: the host's name.
    pub hostname: Option<String>,
    pub resync_seconds: u64,
    pub tailscaled_flags: Vec<String>,
    pub up_flags: Vec<String>,
    /// The network namespace tailscaled runs in (/run/netns/NAME).
    pub netns: String,
    /// tailscaled's WireGuard UDP port (a host tailscaled uses 41641).
    pub port: u16,
    /// Forward that port from the node's own addresses into the tailnet
    /// namespace, so peers can open direct connections (behind the node's
    /// masquerade they could not).
    pub forward_port: bool,
    /// Route table for pod traffic to the tailnet.
    pub route_table: u32,
    /// Priority of the rule sending pod traffic to that table (before a host
    /// tailscaled's rules at 5210-5270).
    pub rule_priority: u32,
    /// The /30 joining the node to the tailnet namespace.
    pub transfer_cidr: Ipv4Network,
    /// Optional HTTP listener for /healthz, /readyz and /metrics.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where a node whose /etc/resolv.conf names a loopback stub keeps the
    /// stub's upstream servers (systemd-resolved's file by default): those
    /// are what the tailnet namespace is given.
    pub dns_upstream: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            tailscaled: PathBuf::from("/usr/sbin/tailscaled"),
            tailscale: PathBuf::from("/usr/bin/tailscale"),
            login_server: None,
            auth_key_file: None,
            hostname: None,
            resync_seconds: 30,
            tailscaled_flags: Vec::new(),
            up_flags: Vec::new(),
            netns: "headcni-ts".into(),
            port: 41642,
            forward_port: true,
            route_table: 1042,
            rule_priority: 5200,
            // Not link-local: tailscaled counts an interface with only a
            // 169.254.x.x address as no network and never logs in (seen
            // against real tailscaled). 198.18.0.0/15 is reserved
            // (benchmarking, RFC 2544) and never routed on the internet.
            transfer_cidr: "198.18.77.0/30".parse().expect("valid default"),
            metrics_listen: None,
            dns_upstream: PathBuf::from("/run/systemd/resolve/resolv.conf"),
        }
    }
}

impl DaemonConfig {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// The tailnet namespace's resolv.conf, where `ip netns exec` looks too.
    pub fn resolv_conf_path(&self) -> PathBuf {
        Path::new("/etc/netns")
            .join(&self.netns)
            .join("resolv.conf")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodNetwork {
    /// IPv4 pod addresses (`cidr`), when the spec has them.
    pub ipv4: Option<PodRange>,
    /// IPv6 pod addresses (`cidr6`), when the spec has them.
    pub ipv6: Option<PodRange>,
    pub mtu: u32,
    pub masquerade: Masquerade,
    /// Clamp the MSS of tailnet-bound TCP SYNs to the tailnet's path MTU.
    pub mss_clamp: bool,
    /// Drop packets from a pod's veth whose source is not that pod's own
    /// address (tailnet ACLs go by source address).
    pub source_check: bool,
}

/// One address family's pod addresses on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRange {
    pub cidr: IpNetwork,
    /// The address pods route through: for IPv4 one of the CIDR's, for IPv6
    /// the link-local [`POD_GATEWAY6`]; on every host veth either way.
    pub gateway: IpAddr,
    /// All nodes' pod CIDRs of this family together; other nodes' pods are
    /// reached over the tailnet.
    pub cluster_cidr: Option<IpNetwork>,
}

impl PodRange {
    /// Whether `ip` can be a pod's address here (in the CIDR, not its
    /// network, broadcast or gateway address).
    pub fn usable(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip)
            && ip != self.gateway
            && ip != self.cidr.network()
            && ip != self.cidr.broadcast()
    }
}

impl PodNetwork {
    /// The families the spec has, IPv4 first.
    pub fn ranges(&self) -> impl Iterator<Item = &PodRange> + Clone {
        self.ipv4.iter().chain(&self.ipv6)
    }

    /// The range of `ip`'s family, if the spec has that family.
    pub fn range_of(&self, ip: IpAddr) -> Option<&PodRange> {
        match ip {
            IpAddr::V4(_) => self.ipv4.as_ref(),
            IpAddr::V6(_) => self.ipv6.as_ref(),
        }
    }

    /// The pod CIDRs, IPv4 first ("10.244.1.0/24, fd00:10:244:1::/64").
    pub fn cidrs(&self) -> Vec<IpNetwork> {
        self.ranges().map(|r| r.cidr).collect()
    }

    /// Whether any family has a cluster CIDR.
    pub fn has_cluster(&self) -> bool {
        self.ranges().any(|r| r.cluster_cidr.is_some())
    }
}

/// Which pod traffic leaves with the node's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Masquerade {
    /// Traffic leaving by anything but the tailnet (and other pods).
    #[default]
    Internet,
    /// That, and tailnet-bound traffic too (SNAT to the node's tailnet
    /// address), for tailnets where the pod CIDR is not advertised.
    All,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tailnet {
    /// The tailnet's IPv4 range.
    pub cidr: IpNetwork,
    /// The tailnet's IPv6 range; routed only when the pods have IPv6.
    pub cidr6: IpNetwork,
    pub interface: String,
}

impl Tailnet {
    /// The tailnet range of a pod range's family.
    pub fn cidr_for(&self, range: &PodRange) -> IpNetwork {
        if range.cidr.is_ipv4() {
            self.cidr
        } else {
            self.cidr6
        }
    }
}

/// A `[[route]]` the operator wants kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtraRoute {
    pub destination: IpNetwork,
    pub via: Option<IpAddr>,
    pub device: Option<String>,
    pub metric: u32,
}

/// The host-mode spec the unit tests start from (golden plans, validation).
#[cfg(test)]
macro_rules! example_spec {
    () => {
        r#"version = 1
mode = "host"
state_dir = "/var/lib/headcni"

[pod_network]
cidr = "10.244.0.0/24"
mtu = 1500

[tailnet]
interface = "tailscale0"

[[route]]
destination = "198.51.100.0/24"
via = "203.0.113.1"
"#
    };
}
#[cfg(test)]
pub(crate) use example_spec;

/// A spec is never more than this; anything larger is not a spec.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

impl Spec {
    /// Parses and validates spec text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecError> {
        raw::parse(text, path)
    }
}
