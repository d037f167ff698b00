//! `compile(Spec, pods) -> Desired`: a pure function, no IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::{Mode, PodIntent, Spec, POD_GATEWAY6, TAILNET_PEER6};
use crate::model::{
    Address, Attachment, Link, PodKey, Route, RouteType, Rule, Scope, Sysctl, RTPROT_HEADCNI,
    TABLE_MAIN,
};

/// What the node's pod network must be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Node-level routes (tailnet, extra routes).
    pub node_routes: Vec<Route>,
    /// Policy rules in the node namespace (daemon mode: pod traffic to the tailnet).
    #[serde(default)]
    pub node_rules: Vec<Rule>,
    /// headcni's nftables table (masquerade, MSS clamping); None: no table.
    #[serde(default)]
    pub nft: Option<crate::model::NftTable>,
    pub node_sysctls: Vec<Sysctl>,
    /// Links node routes need that headcni does not make (the tailnet interface, ...).
    pub required_links: Vec<String>,
    /// The node's tailnet interface, when it is in the node namespace (host mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet_link: Option<String>,
    pub pods: Vec<DesiredPod>,
    /// Files headcni keeps (daemon mode: the tailnet namespace's resolv.conf,
    /// from the node's resolvers in [`NodeFacts`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::model::ManagedFile>,
    /// Intents that cannot be honoured under the current spec.
    pub problems: Vec<Problem>,
}

/// Everything one pod attachment needs, on both sides of its veth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPod {
    pub key: Attachment,
    pub netns_path: std::path::PathBuf,
    /// Host end, carrying the peer's name and namespace.
    pub host_link: Link,
    pub host_addresses: Vec<Address>,
    pub host_routes: Vec<Route>,
    pub pod_link: Link,
    pub pod_addresses: Vec<Address>,
    pub pod_routes: Vec<Route>,
    /// Links in the pod's namespace that headcni configures but does not
    /// create (the tailnet interface of the daemon's own namespace).
    #[serde(default)]
    pub extra_links: Vec<Link>,
    /// Sysctls of the pod's namespace.
    #[serde(default)]
    pub sysctls: Vec<Sysctl>,
    /// Sysctls of the host end (rp_filter), set in the node namespace.
    #[serde(default)]
    pub host_sysctls: Vec<Sysctl>,
}

/// Loose reverse-path filtering: tailnet traffic is asymmetric by design
/// (tailscale #3310), and strict mode drops it.
pub fn rp_filter_loose(ifname: &str) -> Sysctl {
    Sysctl {
        key: crate::model::rp_filter_key(ifname),
        value: "2".into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    pub pod: PodKey,
    pub reason: String,
}

/// What the desired state depends on beyond the spec and the pod intents,
/// read at the edge so that compiling stays pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's resolvers; None when not read (pod-scoped passes, host
    /// mode), so no file that depends on them is planned.
    pub resolvers: Option<super::NodeResolvers>,
    /// The node's links that carry an IPv6 default route (node-wide passes
    /// with IPv6 pods): forwarding must not stop them taking router
    /// advertisements.
    pub ipv6_uplinks: Vec<String>,
}

/// The desired state without node facts: no files planned.
pub fn compile(spec: &Spec, pods: &[PodIntent]) -> Desired {
    compile_on(spec, pods, &NodeFacts::default())
}

/// The kernel's metric for an IPv6 route given none (IP6_RT_PRIO_USER):
/// desired IPv6 routes carry it, so they compare with what the kernel holds.
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// A route as the kernel keeps it: IPv6 routes have no scope (the kernel
/// reports universe) and get metric 1024 when given 0.
pub fn keep_as_kernel(route: &mut Route) {
    if route.dst.is_ipv6() {
        route.scope = Scope::Global;
        if route.metric == 0 {
            route.metric = IPV6_DEFAULT_METRIC;
        }
    }
}

fn forwarding(ipv6: bool) -> Sysctl {
    Sysctl {
        key: if ipv6 {
            "net/ipv6/conf/all/forwarding"
        } else {
            "net/ipv4/ip_forward"
        }
        .into(),
        value: "1".into(),
    }
}

/// The whole desired state of a node: `spec` and `pods` on a node with `facts`.
pub fn compile_on(spec: &Spec, pods: &[PodIntent], facts: &NodeFacts) -> Desired {
    let net = &spec.pod_network;
    let mut desired = Desired {
        files: facts
            .resolvers
            .as_ref()
            .map(|r| super::resolv::compile_files(spec, r))
            .unwrap_or_default(),
        // IPv4 forwarding in daemon mode whatever the pods' families:
        // tailscaled's own traffic leaves the tailnet namespace through it.
        node_sysctls: (net.ipv4.is_some() || spec.mode == Mode::Daemon)
            .then(|| forwarding(false))
            .into_iter()
            .chain(net.ipv6.as_ref().map(|_| forwarding(true)))
            .collect(),
        ..Desired::default()
    };
    if net.ipv6.is_some() {
        // With forwarding on, a link takes router advertisements only at
        // accept_ra = 2: the node's uplinks would lose their IPv6 default
        // route when it expires.
        desired
            .node_sysctls
            .extend(facts.ipv6_uplinks.iter().map(|link| Sysctl {
                key: crate::model::accept_ra_key(link),
                value: "2".into(),
            }));
    }

    match spec.mode {
        Mode::Host => {
            let to_tailnet = |dst| Route {
                dev: Some(spec.tailnet.interface.clone()),
                scope: Scope::Link,
                ..Route::owned(TABLE_MAIN, dst)
            };
            for range in net.ranges() {
                // The host's tailscaled looks up table 52 at rule 5270,
                // before the main table, whatever the prefix length: a peer's
                // accepted route that covers this node's pod CIDR would take
                // the node's own pod traffic into the tailnet. This node's
                // pods are found in the main table first.
                desired.node_rules.push(Rule {
                    priority: spec.daemon.rule_priority,
                    src: None,
                    dst: Some(range.cidr),
                    table: TABLE_MAIN,
                    protocol: RTPROT_HEADCNI,
                });
                desired
                    .node_routes
                    .push(to_tailnet(spec.tailnet.cidr_for(range)));
                // Other nodes' pods are on the tailnet; this node's own pods
                // win by their host routes.
                if let Some(cluster) = range.cluster_cidr {
                    desired.node_routes.push(to_tailnet(cluster));
                }
            }
            desired.required_links.push(spec.tailnet.interface.clone());
            desired.tailnet_link = Some(spec.tailnet.interface.clone());
            desired
                .node_sysctls
                .push(rp_filter_loose(&spec.tailnet.interface));
        }
        Mode::Daemon => compile_tailnet_namespace(spec, &mut desired),
    }
    // Addresses of this node's pod CIDR that no pod holds: refused here at
    // once (the sender hears "host unreachable"), not sent on by a wider
    // route: the cluster CIDR's to the tailnet, or the default route out.
    // Each pod's host route is more specific; the gateway is a local address.
    for range in net.ranges() {
        desired.node_routes.push(Route {
            kind: RouteType::Unreachable,
            ..Route::owned(TABLE_MAIN, range.cidr)
        });
    }
    for extra in &spec.routes {
        desired.node_routes.push(Route {
            via: extra.via,
            dev: extra.device.clone(),
            scope: if extra.via.is_some() {
                Scope::Global
            } else {
                Scope::Link
            },
            metric: extra.metric,
            ..Route::owned(TABLE_MAIN, extra.destination)
        });
        if let Some(dev) = &extra.device {
            if !desired.required_links.contains(dev) {
                desired.required_links.push(dev.clone());
            }
        }
    }

    desired.nft = super::firewall::desired(spec);
    let mut pods: Vec<&PodIntent> = pods.iter().collect();
    pods.sort_by(|a, b| a.key.cmp(&b.key));
    for intent in pods {
        match unusable_address(spec, intent) {
            Some(reason) => desired.problems.push(Problem {
                pod: intent.key(),
                reason,
            }),
            None => desired.pods.push(compile_pod(spec, intent)),
        }
    }
    normalize_routes(&mut desired);
    desired
}

/// Why `intent`'s addresses cannot be wired under `spec`, if they cannot.
fn unusable_address(spec: &Spec, intent: &PodIntent) -> Option<String> {
    let mut addresses = intent.addresses().peekable();
    if addresses.peek().is_none() {
        return Some("holds no address; delete and re-add the pod".into());
    }
    addresses.find_map(|ip| match spec.pod_network.range_of(ip) {
        Some(range) if range.usable(ip) => None,
        Some(range) => Some(format!(
            "address {ip} is not usable in pod CIDR {} (gateway {}); delete and re-add the pod",
            range.cidr, range.gateway
        )),
        None => Some(format!(
            "address {ip} has no pod CIDR of its family in the spec; delete and re-add the pod"
        )),
    })
}

/// Every desired route as the kernel keeps it (see [`keep_as_kernel`]).
fn normalize_routes(desired: &mut Desired) {
    let all = desired.node_routes.iter_mut().chain(
        desired
            .pods
            .iter_mut()
            .flat_map(|p| p.host_routes.iter_mut().chain(p.pod_routes.iter_mut())),
    );
    all.for_each(keep_as_kernel);
}

/// The address as a host prefix (/32, /128).
pub fn host_prefix(ip: IpAddr) -> IpNetwork {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, bits).expect("a host prefix is valid")
}

/// The default route's destination of `ip`'s family.
fn default_of(ip: IpAddr) -> IpNetwork {
    match ip {
        IpAddr::V4(_) => IpNetwork::V4(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0")),
        IpAddr::V6(_) => IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0")),
    }
}

/// A link-local address on a point-to-point veth (/64, as the kernel's own).
fn link_local(ip: Ipv6Addr) -> IpNetwork {
    IpNetwork::V6(Ipv6Network::new(ip, 64).expect("/64 is valid"))
}

fn compile_pod(spec: &Spec, intent: &PodIntent) -> DesiredPod {
    let net = &spec.pod_network;
    let route = |dst: IpNetwork, via: Option<IpAddr>, dev: &str, scope: Scope| Route {
        via,
        dev: Some(dev.to_string()),
        scope,
        ..Route::owned(TABLE_MAIN, dst)
    };
    let (host, pod) = (&intent.host_link, &intent.key.ifname);
    let veth = |name: &str| Link {
        name: name.to_string(),
        mtu: net.mtu,
        up: true,
        kind: Some("veth".into()),
        mac: Default::default(),
    };
    let mut desired = DesiredPod {
        key: Attachment::Pod(intent.key()),
        netns_path: intent.netns.clone(),
        host_link: veth(host),
        host_addresses: Vec::new(),
        host_routes: Vec::new(),
        pod_link: veth(pod),
        pod_addresses: Vec::new(),
        pod_routes: Vec::new(),
        extra_links: Vec::new(),
        sysctls: Vec::new(),
        host_sysctls: vec![rp_filter_loose(host)],
    };
    for ip in intent.addresses() {
        let Some(range) = net.range_of(ip) else {
            continue;
        };
        let pod_ip = host_prefix(ip);
        // ptp-style: every host veth carries the gateway (IPv4: a /32 of
        // the pod CIDR; IPv6: a link-local /64), so each pod resolves its
        // gateway on its own point-to-point link.
        let gateway = match range.gateway {
            IpAddr::V6(v6) => link_local(v6),
            v4 => host_prefix(v4),
        };
        desired.host_addresses.push(Address {
            dev: host.clone(),
            addr: gateway,
        });
        desired
            .host_routes
            .push(route(pod_ip, None, host, Scope::Link));
        desired.pod_addresses.push(Address {
            dev: pod.clone(),
            addr: pod_ip,
        });
        if ip.is_ipv4() {
            // An IPv6 link-local gateway is on-link by the kernel's fe80::/64.
            desired
                .pod_routes
                .push(route(gateway, None, pod, Scope::Link));
        }
        desired.pod_routes.push(route(
            default_of(ip),
            Some(range.gateway),
            pod,
            Scope::Global,
        ));
    }
    desired
}

/// Node end of the veth to the tailnet namespace (an owned `hc` link).
pub const TAILNET_HOST_LINK: &str = "hcts0";
/// Its end inside the tailnet namespace.
pub const TAILNET_PEER_LINK: &str = "node0";
/// The tailnet's MTU (WireGuard inside UDP).
pub const TAILNET_MTU: u32 = 1280;

/// Daemon mode: tailscaled lives in a namespace of its own, attached to the
/// node by a veth exactly as a pod is. The node sends pod traffic for the
/// tailnet through a policy rule and a table of headcni's own into that
/// namespace, which routes it to the tailnet interface; the reverse path
/// routes the pod CIDR back to the node.
fn compile_tailnet_namespace(spec: &Spec, desired: &mut Desired) {
    let d = &spec.daemon;
    let net = &spec.pod_network;
    let transfer = d.transfer_cidr;
    let node_ip = IpAddr::V4(Ipv4Addr::from(u32::from(transfer.network()) + 1));
    let ns_ip = IpAddr::V4(Ipv4Addr::from(u32::from(transfer.network()) + 2));
    let on_transfer = |ip| IpNetwork::new(ip, 30).expect("/30 is valid");
    // IPv6 crosses the veth between link-local addresses, as a pod's does.
    let (node_ip6, ns_ip6) = (IpAddr::V6(POD_GATEWAY6), IpAddr::V6(TAILNET_PEER6));
    let route = |table, dst: IpNetwork, via: Option<IpAddr>, dev: &str| Route {
        via,
        dev: Some(dev.to_string()),
        scope: if via.is_some() {
            Scope::Global
        } else {
            Scope::Link
        },
        ..Route::owned(table, dst)
    };
    let mut host_routes = Vec::new();
    let mut pod_routes = Vec::new();
    for range in net.ranges() {
        let tailnet = spec.tailnet.cidr_for(range);
        let (node_end, ns_end) = if range.cidr.is_ipv4() {
            (node_ip, ns_ip)
        } else {
            (node_ip6, ns_ip6)
        };
        desired.node_rules.push(Rule {
            priority: d.rule_priority,
            src: Some(range.cidr),
            dst: Some(tailnet),
            table: d.route_table,
            protocol: RTPROT_HEADCNI,
        });
        // Other nodes' pods are reached through the tailnet too; this node's
        // own stay in the main table (their host routes): the cluster rule
        // alone would send them into the tailnet namespace, which routes the
        // pod CIDR back here, and round again.
        if let Some(cluster) = range.cluster_cidr {
            desired.node_rules.push(Rule {
                priority: d.rule_priority + 1,
                src: Some(range.cidr),
                dst: Some(range.cidr),
                table: TABLE_MAIN,
                protocol: RTPROT_HEADCNI,
            });
            desired.node_rules.push(Rule {
                priority: d.rule_priority + 2,
                src: Some(range.cidr),
                dst: Some(cluster),
                table: d.route_table,
                protocol: RTPROT_HEADCNI,
            });
        }
        let to_namespace = std::iter::once(tailnet).chain(range.cluster_cidr);
        host_routes.extend(
            to_namespace
                .clone()
                .map(|dst| route(d.route_table, dst, Some(ns_end), TAILNET_HOST_LINK)),
        );
        pod_routes.push(route(
            TABLE_MAIN,
            range.cidr,
            Some(node_end),
            TAILNET_PEER_LINK,
        ));
        if range.cidr.is_ipv4() {
            // The way out for tailscaled itself (Headscale, DERP, STUN, its
            // peers' UDP endpoints): through the node, which masquerades it
            // (firewall.rs) out of its own default route.
            pod_routes.push(route(
                TABLE_MAIN,
                default_of(node_ip),
                Some(node_ip),
                TAILNET_PEER_LINK,
            ));
        }
        pod_routes
            .extend(to_namespace.map(|dst| route(TABLE_MAIN, dst, None, &spec.tailnet.interface)));
    }
    if net.ipv4.is_none() {
        // IPv6 pods only: tailscaled still reaches the world over IPv4.
        pod_routes.push(route(
            TABLE_MAIN,
            default_of(node_ip),
            Some(node_ip),
            TAILNET_PEER_LINK,
        ));
    }
    let mut host_addresses = vec![Address {
        dev: TAILNET_HOST_LINK.into(),
        addr: on_transfer(node_ip),
    }];
    let mut pod_addresses = vec![Address {
        dev: TAILNET_PEER_LINK.into(),
        addr: on_transfer(ns_ip),
    }];
    let mut sysctls = vec![forwarding(false)];
    if net.ipv6.is_some() {
        host_addresses.push(Address {
            dev: TAILNET_HOST_LINK.into(),
            addr: link_local(POD_GATEWAY6),
        });
        pod_addresses.push(Address {
            dev: TAILNET_PEER_LINK.into(),
            addr: link_local(TAILNET_PEER6),
        });
        sysctls.push(forwarding(true));
    }
    sysctls.push(rp_filter_loose(&spec.tailnet.interface));
    let veth = |name: &str| Link {
        name: name.into(),
        mtu: net.mtu,
        up: true,
        kind: Some("veth".into()),
        mac: Default::default(),
    };
    desired.pods.push(DesiredPod {
        key: Attachment::TailnetNamespace,
        netns_path: d.netns_path(),
        host_link: veth(TAILNET_HOST_LINK),
        host_addresses,
        host_routes,
        pod_link: veth(TAILNET_PEER_LINK),
        pod_addresses,
        pod_routes,
        extra_links: vec![
            Link {
                name: "lo".into(),
                mtu: 65536,
                up: true,
                kind: None,
                mac: Default::default(),
            },
            Link {
                name: spec.tailnet.interface.clone(),
                mtu: TAILNET_MTU,
                up: true,
                kind: None,
                mac: Default::default(),
            },
        ],
        sysctls,
        host_sysctls: vec![rp_filter_loose(TAILNET_HOST_LINK)],
    });
}
