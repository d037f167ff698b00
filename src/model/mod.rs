//! Plain data shared by `Desired`, `Observed` and `Plan`: the kernel objects
//! headcni reasons about, keyed the way the kernel keys them.

mod display;
pub use display::protocol_name;
pub(crate) use display::write_link;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Route protocol number that marks a route as headcni's (`proto headcni`).
/// 104 is ASCII 'h'; it is unused by the protocols iproute2 ships names for.
pub const RTPROT_HEADCNI: u8 = 104;
/// Name registered for [`RTPROT_HEADCNI`] in /etc/iproute2/rt_protos.d.
pub const RTPROT_NAME: &str = "headcni";
/// Every host-side link headcni creates starts with this prefix.
pub const LINK_PREFIX: &str = "hc";
/// headcni's link group ("hcni"): owned links planned for removal are moved
/// into it and deleted with one request. No other link is ever put there;
/// apply deletes by group only when the group holds nothing else.
pub const LINK_GROUP: u32 = 0x6863_6e69;
/// The kernel's main routing table.
pub const TABLE_MAIN: u32 = 254;
/// The kernel's local table (local and broadcast addresses): never ours.
pub const TABLE_LOCAL: u32 = 255;
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// A pod attachment: CNI's (container id, interface name) pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub container_id: String,
    pub ifname: String,
}

/// The whole container id: a shortened one can name several pods.
impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// What sits at the far end of a host veth headcni makes: a pod, or (daemon
/// mode) the namespace tailscaled runs in, which is node plumbing and no
/// workload: it is not counted, stored or released as a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    Pod(PodKey),
    TailnetNamespace,
}

impl Attachment {
    /// The pod, when this is one.
    pub fn pod(&self) -> Option<&PodKey> {
        match self {
            Attachment::Pod(key) => Some(key),
            Attachment::TailnetNamespace => None,
        }
    }
}

impl From<PodKey> for Attachment {
    fn from(key: PodKey) -> Self {
        Attachment::Pod(key)
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attachment::Pod(key) => write!(f, "pod {key}"),
            Attachment::TailnetNamespace => write!(f, "tailnet namespace"),
        }
    }
}

/// Which network namespace an object lives in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Netns {
    /// The namespace headcni runs in (the node's).
    Node,
    /// The namespace behind an attachment, with the path that opens it (so a
    /// plan is self-contained).
    Attached { to: Attachment, path: PathBuf },
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Node => write!(f, "node"),
            Netns::Attached { to, .. } => write!(f, "{to}"),
        }
    }
}

/// A veth end, or any link seen in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    /// Link kind from IFLA_INFO_KIND ("veth", "tun", ...); None for physical links.
    /// Serialized as `type`, as `ip link ... type veth` says it.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The hardware address, as observed (for the CNI result).
    #[serde(skip)]
    pub mac: Seen<[u8; 6]>,
}

impl Link {
    /// The observed hardware address as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_text(&self) -> Option<String> {
        let hex: Vec<String> = self.mac.0?.iter().map(|b| format!("{b:02x}")).collect();
        Some(hex.join(":"))
    }
}

/// A value an observation reports that no plan compares: it takes no part
/// in equality, order or hashing (so desired and observed objects still
/// match whatever it holds), and snapshots leave it out.
#[derive(Clone, Debug, Default)]
pub struct Seen<T>(pub Option<T>);

impl<T> PartialEq for Seen<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Seen<T> {}
impl<T> PartialOrd for Seen<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Seen<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
impl<T> std::hash::Hash for Seen<T> {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// The pod end of a host veth: created inside the pod's namespace under the pod's ifname.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VethPeer {
    pub ifname: String,
    pub netns_path: PathBuf,
}

/// An interface address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    pub dev: String,
    pub addr: IpNetwork,
}

/// Route scope, as `ip route` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Global,
    Link,
    Host,
    Other(u8),
}

impl Scope {
    pub fn to_kernel(self) -> u8 {
        match self {
            Scope::Global => 0,
            Scope::Link => 253,
            Scope::Host => 254,
            Scope::Other(v) => v,
        }
    }

    pub fn from_kernel(v: u8) -> Self {
        match v {
            0 => Scope::Global,
            253 => Scope::Link,
            254 => Scope::Host,
            other => Scope::Other(other),
        }
    }
}

/// A route's type, as `ip route` names it (RTN_*): what happens to a packet
/// that matches. The kernel's bookkeeping types (local, broadcast,
/// multicast, ...) are not routes headcni reasons about.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RouteType {
    /// Forwarded (through a gateway or directly).
    #[default]
    Unicast,
    /// Dropped silently.
    Blackhole,
    /// Dropped, the sender told "host unreachable".
    Unreachable,
    /// Dropped, the sender told "administratively prohibited".
    Prohibit,
    /// Looked up in the next rule's table instead.
    Throw,
}

impl RouteType {
    pub fn to_kernel(self) -> u8 {
        match self {
            RouteType::Unicast => 1,
            RouteType::Blackhole => 6,
            RouteType::Unreachable => 7,
            RouteType::Prohibit => 8,
            RouteType::Throw => 9,
        }
    }

    pub fn from_kernel(v: u8) -> Option<Self> {
        Some(match v {
            1 => RouteType::Unicast,
            6 => RouteType::Blackhole,
            7 => RouteType::Unreachable,
            8 => RouteType::Prohibit,
            9 => RouteType::Throw,
            _ => return None,
        })
    }

    pub fn is_unicast(&self) -> bool {
        *self == RouteType::Unicast
    }

    pub fn name(self) -> &'static str {
        match self {
            RouteType::Unicast => "unicast",
            RouteType::Blackhole => "blackhole",
            RouteType::Unreachable => "unreachable",
            RouteType::Prohibit => "prohibit",
            RouteType::Throw => "throw",
        }
    }
}

/// A route. Identity in the kernel is (table, destination, metric).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub table: u32,
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    pub scope: Scope,
    pub protocol: u8,
    #[serde(default)]
    pub metric: u32,
    /// Serialized as `type` (and only when not unicast), as `ip route` says it.
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "RouteType::is_unicast"
    )]
    pub kind: RouteType,
}

/// What identifies a route in the kernel (IPv4: table, prefix, priority).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteKey {
    pub table: u32,
    pub dst: IpNetwork,
    pub metric: u32,
}

impl Route {
    /// A unicast route of headcni's to `dst` in `table`, nothing else set:
    /// the base the desired routes are built on.
    pub fn owned(table: u32, dst: IpNetwork) -> Route {
        Route {
            table,
            dst,
            via: None,
            dev: None,
            scope: Scope::Global,
            protocol: RTPROT_HEADCNI,
            metric: 0,
            kind: RouteType::Unicast,
        }
    }

    pub fn key(&self) -> RouteKey {
        RouteKey {
            table: self.table,
            dst: self.dst,
            metric: self.metric,
        }
    }

    pub fn is_owned(&self) -> bool {
        self.protocol == RTPROT_HEADCNI
    }

    /// True when `observed` satisfies `self` (a desired route): a route given only
    /// `via` accepts whatever device the kernel resolved it to.
    pub fn satisfied_by(&self, observed: &Route) -> bool {
        self.key() == observed.key()
            && self.via == observed.via
            && self.scope == observed.scope
            && self.protocol == observed.protocol
            && self.kind == observed.kind
            && (self.dev.is_none() || self.dev == observed.dev)
    }
}

/// A policy routing rule (`ip rule`). headcni's carry its protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpNetwork>,
    pub table: u32,
    pub protocol: u8,
}

impl Rule {
    pub fn is_owned(&self) -> bool {
        self.protocol == RTPROT_HEADCNI
    }
}

/// A sysctl under /proc/sys, by its slash-separated path ("net/ipv4/ip_forward").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sysctl {
    pub key: String,
    pub value: String,
}

impl Sysctl {
    /// The interface a per-interface sysctl (`net/ipv{4,6}/conf/<if>/...`) is about.
    pub fn interface(&self) -> Option<&str> {
        let rest = self
            .key
            .strip_prefix("net/ipv4/conf/")
            .or_else(|| self.key.strip_prefix("net/ipv6/conf/"))?;
        let name = rest.split('/').next()?;
        (!matches!(name, "all" | "default")).then_some(name)
    }
}

/// headcni's nftables table (`inet headcni`), rule by rule. Rules are kept
/// as nft's own JSON (counters zeroed), so what is desired compares with what
/// `nft -j` lists; `text` is for people.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NftTable {
    pub chains: Vec<NftChain>,
    pub rules: Vec<NftRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NftChain {
    pub name: String,
    /// "nat" or "filter".
    #[serde(rename = "type")]
    pub kind: String,
    pub hook: String,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NftRule {
    pub chain: String,
    /// The statements as nft's JSON, serialized compactly (counters zeroed).
    pub expr: String,
    pub text: String,
}

/// Everything one namespace holds that headcni looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsState {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// headcni's nftables table, when it exists (node namespace only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft: Option<NftTable>,
    /// The pass did not read the table (a CNI pass leaves the firewall to
    /// `apply` and the daemon): `nft` is then unknown, not absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nft_unread: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<Sysctl>,
    /// Files at the paths headcni writes (node namespace only), whoever wrote them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ManagedFile>,
}

/// First line of every file headcni writes: a file without it is someone
/// else's and is never overwritten or removed.
pub const FILE_MARK: &str = "# Written by headcni";

/// A file headcni writes and keeps (the tailnet namespace's resolv.conf).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ManagedFile {
    pub path: PathBuf,
    pub content: String,
}

impl ManagedFile {
    pub fn is_owned(&self) -> bool {
        self.content.starts_with(FILE_MARK)
    }

    /// The lines that say something (no comments, no blanks).
    pub fn meaningful_lines(&self) -> impl Iterator<Item = &str> {
        self.content
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }
}

pub fn is_owned_link_name(name: &str) -> bool {
    name.starts_with(LINK_PREFIX)
}

/// The IPv6 gateway of every pod, on every host veth (see spec's POD_GATEWAY6).
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The tailnet namespace's end of its veth (daemon mode), link-local too.
pub const TAILNET_PEER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// IPv6 link-local addresses are made by the kernel on every link; they are
/// never ours, but for the two fixed ones headcni puts on its veths.
pub fn is_kernel_link_local(addr: &IpNetwork) -> bool {
    match addr.ip() {
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                && !(addr.prefix() == 64 && (v6 == POD_GATEWAY6 || v6 == TAILNET_PEER6))
        }
        IpAddr::V4(_) => false,
    }
}

/// The name of headcni's nftables table (`inet headcni`).
pub const NFT_TABLE: &str = "headcni";

/// The sysctl key of an interface's IPv6 accept_ra.
pub fn accept_ra_key(ifname: &str) -> String {
    format!("net/ipv6/conf/{ifname}/accept_ra")
}

/// The sysctl key of an interface's rp_filter.
pub fn rp_filter_key(ifname: &str) -> String {
    format!("net/ipv4/conf/{ifname}/rp_filter")
}

/// `Observed`: what the kernel holds, as plain serializable data (read by
/// `observe`, compared by the pure parts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub node: NetnsState,
    /// Pods whose namespaces were looked into. A pod missing here was not
    /// observed (a host-side-only plan), which is not the same as absent.
    pub pods: Vec<ObservedPod>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedPod {
    pub key: Attachment,
    pub netns_path: PathBuf,
    /// None when the namespace could not be opened (gone, or never there).
    pub state: Option<NetnsState>,
}

impl Observed {
    pub fn attached(&self, key: &Attachment) -> Option<&ObservedPod> {
        self.pods.iter().find(|p| &p.key == key)
    }
}
