//! Reads kernel state over rtnetlink into plain data ([`Observed`]). Nothing else.

pub mod node;
mod parse;

use libc::{RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE, RTM_NEWRULE};
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

pub use crate::model::{rp_filter_key, Observed, ObservedPod};
pub(crate) use node::start_link_dump;
pub use node::{LinkCollector, NodeLinks, Partial, SortOrder};

use crate::kernel::netlink::{Netlink, NetlinkError};
use crate::model::{
    is_kernel_link_local, Address, Attachment, Link, NetnsState, NftTable, Route, Sysctl,
    TABLE_LOCAL,
};

/// The namespace-wide sysctls observed everywhere (the node and the tailnet
/// namespace forward), asked over netlink.
const IP_FORWARD: &str = "net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "net/ipv6/conf/all/forwarding";

/// The address families a pass reads. IPv4 always (the tailnet namespace's
/// way out is IPv4 whatever the pods'); IPv6 only when the spec gives pods
/// IPv6: it doubles the address and route dumps of every namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    pub ipv6: bool,
    /// Without `ipv6`: still look for headcni's own IPv6 routes and rules in
    /// the node namespace (a spec that had `cidr6` left them), through a
    /// route dump the kernel filters to headcni's protocol: they are then
    /// removed like any owned object nobody keeps.
    pub owned_ipv6: bool,
}

impl Families {
    pub fn of(spec: &crate::spec::Spec) -> Families {
        let ipv6 = spec.pod_network.ipv6.is_some();
        Families {
            ipv6,
            owned_ipv6: !ipv6,
        }
    }

    fn list(self) -> &'static [AddressFamily] {
        if self.ipv6 {
            &[AddressFamily::Inet, AddressFamily::Inet6]
        } else {
            &[AddressFamily::Inet]
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("observing the node namespace")]
    Node(#[source] NetlinkError),
    #[error("observing {attachment} in {}", path.display())]
    Attached {
        attachment: Attachment,
        path: PathBuf,
        #[source]
        error: NetlinkError,
    },
}

/// What a pass does about headcni's nftables table.
pub enum Firewall<'a> {
    /// Reads it: an nfnetlink question, and an `nft` listing when the
    /// ruleset changed since the last of these listings.
    Read(&'a crate::kernel::nft::Listings),
    /// Already known from earlier in this pass (nothing since could have
    /// changed it).
    Known(Option<NftTable>),
    /// Leaves it unread, so unknown (the CNI's per-pod passes leave the
    /// firewall to `apply` and the daemon).
    Skip,
}

/// Reads the node namespace (the caller's) and the namespaces of `pods`.
pub fn observe(
    pods: &[(Attachment, PathBuf)],
    firewall: Firewall<'_>,
    families: Families,
) -> Result<Observed, ObserveError> {
    std::thread::scope(|threads| {
        let links = start_link_dump(threads, families);
        let partial = observe_partial(pods, firewall, families)?;
        let links = links.finish().map_err(ObserveError::Node)?;
        Ok(partial.complete(links))
    })
}

/// Everything but the node's links (see [`node`]).
pub(crate) fn observe_partial(
    pods: &[(Attachment, PathBuf)],
    firewall: Firewall<'_>,
    families: Families,
) -> Result<Partial, ObserveError> {
    // An `nft` listing, when one is needed, runs while we dump.
    let firewall_reading = match firewall {
        Firewall::Read(listings) => Some(crate::kernel::nft::start_observe(listings)),
        Firewall::Known(table) => Some(crate::kernel::nft::Reading::known(table)),
        Firewall::Skip => None,
    };
    let mut nl = Netlink::open_current().map_err(ObserveError::Node)?;
    let (addresses, mut routes) =
        dump_addresses_and_routes(&mut nl, families).map_err(ObserveError::Node)?;
    let mut rules = dump_rules(&mut nl, families).map_err(ObserveError::Node)?;
    // headcni's IPv6 objects exist only where it once applied a spec with
    // IPv6, which turned IPv6 forwarding on (headcni never turns it off):
    // a node where it is off (or whose kernel has no IPv6) is spared the
    // sweep, which walks every link's IPv6 routes in the kernel: about
    // 10 ms of an IPv4-only 10,000-pod pass.
    let may_hold_owned_ipv6 = families.owned_ipv6 && matches!(nl.forwarding(true), Ok(Some(true)));
    if may_hold_owned_ipv6 {
        let (owned_routes, owned_rules) = dump_owned_ipv6().map_err(ObserveError::Node)?;
        routes.extend(owned_routes);
        rules.extend(owned_rules);
        rules.sort();
    }
    let sysctls = forwarding_sysctls(&mut nl, families).map_err(ObserveError::Node)?;
    let pods = observe_pods(pods, families)?;
    let node = NetnsState {
        rules,
        sysctls,
        ..NetnsState::default()
    };
    let mut partial = Partial::new(Observed { node, pods }, addresses, routes);
    // A table that cannot be read is unknown, not absent: this pass then
    // leaves the firewall as it is.
    let node = &mut partial.observed.node;
    (node.nft, node.nft_unread) = match firewall_reading.map(crate::kernel::nft::Reading::finish) {
        Some(Ok(table)) => (table, false),
        Some(Err(e)) => {
            tracing::warn!(
                "cannot read the nftables table, leaving it as it is: {}",
                crate::Chain(&e)
            );
            (None, true)
        }
        None => (None, true),
    };
    Ok(partial)
}

/// The pods' namespaces, in order. Each costs a namespace switch and three
/// small dumps (about 0.1 ms, mostly kernel time), so at scale they are
/// spread over the cores.
fn observe_pods(
    pods: &[(Attachment, PathBuf)],
    families: Families,
) -> Result<Vec<ObservedPod>, ObserveError> {
    const PER_THREAD_AT_LEAST: usize = 16;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let threads = (pods.len() / PER_THREAD_AT_LEAST).clamp(1, cores);
    let paths: Vec<&Path> = pods.iter().map(|(_, path)| path.as_path()).collect();
    let states = crate::kernel::netlink::in_each_netns(&paths, threads, |_| observe_here(families));
    pods.iter()
        .zip(states)
        .map(|((key, path), state)| {
            let state = match state.and_then(|observed| observed) {
                Ok(state) => Ok(Some(state)),
                // Gone, or never there: not observable, which the plan shows.
                Err(NetlinkError::OpenNetns { .. } | NetlinkError::EnterNetns { .. }) => Ok(None),
                Err(error) => Err(error),
            }
            .map_err(|error| ObserveError::Attached {
                attachment: key.clone(),
                path: path.clone(),
                error,
            })?;
            Ok(ObservedPod {
                key: key.clone(),
                netns_path: path.clone(),
                state,
            })
        })
        .collect()
}

/// The namespace the calling thread is in (a pod's, entered by netlink/).
fn observe_here(families: Families) -> Result<NetnsState, NetlinkError> {
    let mut nl = Netlink::open_current()?;
    let mut state = netns_state(&mut nl, families)?;
    state.sysctls.extend(forwarding_sysctls(&mut nl, families)?);
    state.sysctls.sort();
    Ok(state)
}

/// `net.ipv4.ip_forward` (and with IPv6, `net.ipv6.conf.all.forwarding`)
/// of `nl`'s namespace, as sysctls (asked over netlink; see
/// [`Netlink::forwarding`]).
fn forwarding_sysctls(nl: &mut Netlink, families: Families) -> Result<Vec<Sysctl>, NetlinkError> {
    let mut out = Vec::new();
    for family in families.list() {
        let (key, ipv6) = match family {
            AddressFamily::Inet6 => (IPV6_FORWARD, true),
            _ => (IP_FORWARD, false),
        };
        out.extend(nl.forwarding(ipv6)?.map(|on| Sysctl {
            key: key.into(),
            value: if on { "1" } else { "0" }.into(),
        }));
    }
    Ok(out)
}

/// The interface name in an RTM_NEWLINK/RTM_DELLINK payload (for event filters).
pub fn parse_link_name(payload: &[u8]) -> Option<String> {
    parse::link(payload).map(|l| l.link.name)
}

/// Decodes one dump answer of any kind observe reads, for the fuzz targets:
/// the decoders face what a pod's namespace answers.
pub fn decode_any(kind: u16, payload: &[u8]) {
    match kind {
        RTM_NEWLINK => drop(parse::link(payload)),
        RTM_NEWADDR => drop(parse::address(payload)),
        RTM_NEWROUTE => {
            let _ = parse::route_table_hint(payload);
            drop(parse::route(payload));
        }
        RTM_NEWRULE => drop(parse::rule(payload)),
        _ => {}
    }
}

/// Whether an RTM_NEWADDR/RTM_DELADDR payload is a kernel-made IPv6
/// link-local address (for event filters).
pub fn is_kernel_link_local_address(payload: &[u8]) -> bool {
    parse::address(payload).is_some_and(|a| is_kernel_link_local(&a.addr))
}

/// The rule in an RTM_NEWRULE/RTM_DELRULE payload (for event filters).
pub fn parse_rule(payload: &[u8]) -> Option<crate::model::Rule> {
    parse::rule(payload)
}

/// Whether the link `pod_ifname` in the pod's namespace is the other end of
/// the node's veth `host_link`: each end's peer index is the other's own,
/// across namespaces. A veth the pod made and named like ours is not.
/// Ok(None): one of the two links is missing.
pub fn veth_pair(
    host_link: &str,
    pod_netns: &Path,
    pod_ifname: &str,
) -> Result<Option<bool>, NetlinkError> {
    let one = |netns: Option<&Path>,
               name: &str|
     -> Result<Option<(u32, Option<u32>, bool)>, NetlinkError> {
        let mut nl = match netns {
            None => Netlink::open_current()?,
            Some(path) => Netlink::open_in(path)?,
        };
        let mut found = None;
        let request =
            RouteNetlinkMessage::GetLink(rtnetlink::LinkUnspec::new_with_name(name).build());
        match nl.query(request, |kind, payload| {
            if kind == RTM_NEWLINK {
                found = parse::link(payload).map(|l| (l.index, l.peer_index, l.peer_elsewhere));
            }
        }) {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let (Some(host), Some(pod)) = (one(None, host_link)?, one(Some(pod_netns), pod_ifname)?) else {
        return Ok(None);
    };
    let (host_index, host_peer, host_across) = host;
    let (pod_index, pod_peer, pod_across) = pod;
    Ok(Some(
        host_across && pod_across && host_peer == Some(pod_index) && pod_peer == Some(host_index),
    ))
}

/// Names of the links in the caller's namespace (STATUS: is the tailnet interface there?).
pub fn link_names() -> Result<Vec<String>, NetlinkError> {
    let mut nl = Netlink::open_current()?;
    Ok(dump_links(&mut nl)?
        .into_iter()
        .map(|(_, l, _)| l.name)
        .collect())
}

/// A link's kernel index and group, for apply's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIndex {
    pub index: u32,
    pub group: u32,
}

/// Link indexes (and groups) by name, from a link dump.
pub fn link_indexes(nl: &mut Netlink) -> Result<FxHashMap<String, LinkIndex>, NetlinkError> {
    let mut out = FxHashMap::default();
    nl.dump(link_request(), |kind, payload| {
        if kind == RTM_NEWLINK {
            if let Some(l) = parse::link(payload) {
                let index = LinkIndex {
                    index: l.index,
                    group: l.group,
                };
                out.insert(l.link.name, index);
            }
        }
    })?;
    Ok(out)
}

fn link_request() -> RouteNetlinkMessage {
    // No IFLA_EXT_MASK, although RTEXT_FILTER_SKIP_STATS would drop the inet6
    // counters: with any mask set, the kernel first walks every link to size
    // its buffers (rtnl_calcit), measured at 10,000 links as 5-7 ms more
    // than the counters cost.
    RouteNetlinkMessage::GetLink(LinkMessage::default())
}

/// Links, addresses and unicast routes (all tables but local) of `families`
/// in one namespace. One dump at a time per socket: the kernel refuses a
/// second (EBUSY).
pub fn netns_state(nl: &mut Netlink, families: Families) -> Result<NetnsState, NetlinkError> {
    let links = dump_links(nl)?;
    let (addresses, routes) = dump_addresses_and_routes(nl, families)?;
    Ok(assemble(links, addresses, routes))
}

/// Lookup rules of `families` in the namespace, sorted.
fn dump_rules(
    nl: &mut Netlink,
    families: Families,
) -> Result<Vec<crate::model::Rule>, NetlinkError> {
    let mut rules = Vec::new();
    for family in families.list() {
        let mut req = rtnetlink::packet_route::rule::RuleMessage::default();
        req.header.family = *family;
        nl.dump(RouteNetlinkMessage::GetRule(req), |kind, payload| {
            if kind == RTM_NEWRULE {
                rules.extend(parse::rule(payload));
            }
        })?;
    }
    rules.sort();
    Ok(rules)
}

/// (ifindex, address, label).
type RawAddresses = Vec<(u32, ipnetwork::IpNetwork, Option<String>)>;
type RawRoutes = Vec<(Option<u32>, Route)>;

fn dump_links(nl: &mut Netlink) -> Result<Vec<(u32, Link, Option<u32>)>, NetlinkError> {
    let mut links = Vec::new();
    nl.dump(link_request(), |kind, payload| {
        if kind == RTM_NEWLINK {
            if let Some(l) = parse::link(payload) {
                links.push((l.index, l.link, l.rp_filter));
            }
        }
    })?;
    Ok(links)
}

fn dump_addresses_and_routes(
    nl: &mut Netlink,
    families: Families,
) -> Result<(RawAddresses, RawRoutes), NetlinkError> {
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    for family in families.list() {
        let mut addr_req = AddressMessage::default();
        addr_req.header.family = *family;
        nl.dump(
            RouteNetlinkMessage::GetAddress(addr_req),
            |kind, payload| {
                if kind == RTM_NEWADDR {
                    addresses.extend(
                        parse::address(payload)
                            .filter(|a| !is_kernel_link_local(&a.addr))
                            .map(|a| (a.index, a.addr, a.label)),
                    );
                }
            },
        )?;
        dump_all_routes(nl, *family, &mut routes)?;
    }
    Ok((addresses, routes))
}

/// Unicast routes of `family` in every table but local.
fn dump_all_routes(
    nl: &mut Netlink,
    family: AddressFamily,
    routes: &mut RawRoutes,
) -> Result<(), NetlinkError> {
    let mut request = RouteMessage::default();
    request.header.address_family = family;
    nl.dump(RouteNetlinkMessage::GetRoute(request), |kind, payload| {
        if kind == RTM_NEWROUTE && parse::route_table_hint(payload) != Some(TABLE_LOCAL as u8) {
            if let Some((oif, route)) = parse::route(payload) {
                if route.table != TABLE_LOCAL && !is_kernel_bookkeeping(&route) {
                    routes.push((oif, route));
                }
            }
        }
    })
}

/// headcni's IPv6 routes (of every table: the kernel filters the dump by
/// protocol) and rules of the caller's namespace: see
/// [`Families::owned_ipv6`].
fn dump_owned_ipv6() -> Result<(RawRoutes, Vec<crate::model::Rule>), NetlinkError> {
    let mut nl = Netlink::open_current()?.strict()?;
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet6;
    request.header.protocol = crate::model::RTPROT_HEADCNI.into();
    let mut routes = Vec::new();
    nl.dump(RouteNetlinkMessage::GetRoute(request), |kind, payload| {
        if kind == RTM_NEWROUTE {
            routes.extend(parse::route(payload).filter(|(_, route)| route.is_owned()));
        }
    })?;
    let mut rules = Vec::new();
    let mut request = rtnetlink::packet_route::rule::RuleMessage::default();
    request.header.family = AddressFamily::Inet6;
    nl.dump(RouteNetlinkMessage::GetRule(request), |kind, payload| {
        if kind == RTM_NEWRULE {
            rules.extend(parse::rule(payload).filter(|rule| rule.is_owned()));
        }
    })?;
    Ok((routes, rules))
}

/// IPv6 routes the kernel keeps for itself: the fe80::/64 of every link
/// and its unreachable placeholders (metric 2^32-1). Never anyone's
/// intent, and one per link: at 10,000 pods they would double the dump's
/// decoding.
fn is_kernel_bookkeeping(route: &Route) -> bool {
    const RTPROT_KERNEL: u8 = 2;
    route.protocol == RTPROT_KERNEL
        && match route.dst {
            ipnetwork::IpNetwork::V6(v6) => {
                (v6.network().segments()[0] & 0xffc0) == 0xfe80 || route.metric == u32::MAX
            }
            ipnetwork::IpNetwork::V4(_) => false,
        }
}

/// Link names by ifindex. Indexes are usually small and dense, where a
/// vector beats a hash map; but whoever owns a namespace (a pod with
/// CAP_NET_ADMIN) can give a link any index up to 2^31-1, and a vector that
/// long would have the node reserve gigabytes. Sparse indexes get a map.
enum IndexNames<'a> {
    Dense(Vec<Option<&'a str>>),
    Sparse(rustc_hash::FxHashMap<u32, &'a str>),
}

impl<'a> IndexNames<'a> {
    fn new(links: impl Iterator<Item = (u32, &'a str)> + Clone) -> Self {
        let (count, max) = links.clone().fold((0usize, 0usize), |(n, m), (i, _)| {
            (n + 1, m.max(i as usize))
        });
        if max <= 4 * count + 1024 {
            let mut names = vec![None; max + 1];
            for (i, name) in links {
                names[i as usize] = Some(name);
            }
            IndexNames::Dense(names)
        } else {
            IndexNames::Sparse(links.collect())
        }
    }

    fn get(&self, index: u32) -> Option<&'a str> {
        match self {
            IndexNames::Dense(names) => names.get(index as usize).copied().flatten(),
            IndexNames::Sparse(names) => names.get(&index).copied(),
        }
    }
}

/// Puts link names on addresses and routes, and sorts everything.
fn assemble(
    links: Vec<(u32, Link, Option<u32>)>,
    addresses: RawAddresses,
    routes: RawRoutes,
) -> NetnsState {
    let names = IndexNames::new(links.iter().map(|(i, l, _)| (*i, l.name.as_str())));
    let name = |i: u32| names.get(i).map(str::to_string);
    let mut state = NetnsState {
        addresses: addresses
            .into_iter()
            .filter_map(|(index, addr, _)| {
                Some(Address {
                    dev: name(index)?,
                    addr,
                })
            })
            .collect(),
        routes: routes
            .into_iter()
            .map(|(oif, mut route)| {
                route.dev = oif.and_then(name);
                route
            })
            .collect(),
        ..NetnsState::default()
    };
    drop(names);
    // Per-interface rp_filter, for the links headcni cares about (its own and
    // the tailnet interfaces); lo and the like would only add noise.
    state.sysctls = links
        .iter()
        .filter(|(_, l, _)| l.kind.is_some() || crate::model::is_owned_link_name(&l.name))
        .filter_map(|(_, l, rp)| {
            rp.map(|v| Sysctl {
                key: rp_filter_key(&l.name),
                value: v.to_string(),
            })
        })
        .collect();
    state.links = links.into_iter().map(|(_, l, _)| l).collect();
    state.links.sort_unstable();
    state.addresses.sort_unstable();
    state.routes.sort_unstable();
    state
}

#[cfg(test)]
mod index_names_tests {
    use super::IndexNames;

    #[test]
    fn sparse_indexes_take_a_map() {
        let links = [(1u32, "lo"), (2, "eth0"), (2_147_483_647, "big0")];
        let names = IndexNames::new(links.iter().copied());
        assert!(matches!(names, IndexNames::Sparse(_)));
        assert_eq!(names.get(2_147_483_647), Some("big0"));
        assert_eq!(names.get(2), Some("eth0"));
        assert_eq!(names.get(3), None);
        let dense = IndexNames::new(links[..2].iter().copied());
        assert!(matches!(dense, IndexNames::Dense(_)));
        assert_eq!(dense.get(1), Some("lo"));
    }
}
