//! `compile(Spec, pods) -> Desired`: a pure function, no IO.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

use super::{Mode, PodIntent, Spec};
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
}

/// The desired state without node facts: no files planned.
pub fn compile(spec: &Spec, pods: &[PodIntent]) -> Desired {
    compile_on(spec, pods, &NodeFacts::default())
}

/// The whole desired state of a node: `spec` and `pods` on a node with `facts`.
pub fn compile_on(spec: &Spec, pods: &[PodIntent], facts: &NodeFacts) -> Desired {
    let mut desired = Desired {
        files: facts
            .resolvers
            .as_ref()
            .map(|r| super::resolv::compile_files(spec, r))
            .unwrap_or_default(),
        node_sysctls: vec![Sysctl {
            key: "net/ipv4/ip_forward".into(),
            value: "1".into(),
        }],
        ..Desired::default()
    };

    match spec.mode {
        Mode::Host => {
            let to_tailnet = |dst| Route {
                dev: Some(spec.tailnet.interface.clone()),
                scope: Scope::Link,
                ..Route::owned(TABLE_MAIN, dst)
            };
            desired.node_routes.push(to_tailnet(spec.tailnet.cidr));
            desired.required_links.push(spec.tailnet.interface.clone());
            desired.tailnet_link = Some(spec.tailnet.interface.clone());
            desired
                .node_sysctls
                .push(rp_filter_loose(&spec.tailnet.interface));
            // Other nodes' pods are on the tailnet; this node's own pods win
            // by their /32s.
            if let Some(cluster) = spec.pod_network.cluster_cidr {
                desired.node_routes.push(to_tailnet(IpNetwork::V4(cluster)));
            }
        }
        Mode::Daemon => compile_tailnet_namespace(spec, &mut desired),
    }
    // Addresses of this node's pod CIDR that no pod holds: refused here at
    // once (the sender hears "host unreachable"), not sent on by a wider
    // route: the cluster CIDR's to the tailnet, or the default route out.
    // Each pod's /32 is more specific; the gateway is a local address.
    desired.node_routes.push(Route {
        kind: RouteType::Unreachable,
        ..Route::owned(TABLE_MAIN, IpNetwork::V4(spec.pod_network.cidr))
    });
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
        if !spec.pod_network.cidr.contains(intent.ip) || intent.ip == spec.pod_network.gateway {
            desired.problems.push(Problem {
                pod: intent.key(),
                reason: format!(
                    "address {} is not usable in pod CIDR {} (gateway {}); delete and re-add the pod",
                    intent.ip, spec.pod_network.cidr, spec.pod_network.gateway
                ),
            });
            continue;
        }
        desired.pods.push(compile_pod(spec, intent));
    }
    desired
}

fn host32(ip: std::net::Ipv4Addr) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(ip, 32).expect("/32 is a valid prefix"))
}

fn compile_pod(spec: &Spec, intent: &PodIntent) -> DesiredPod {
    let net = &spec.pod_network;
    let gateway = host32(net.gateway);
    let pod_ip = host32(intent.ip);
    let route = |dst: IpNetwork, via: Option<IpAddr>, dev: &str, scope: Scope| Route {
        via,
        dev: Some(dev.to_string()),
        scope,
        ..Route::owned(TABLE_MAIN, dst)
    };
    let default_v4: IpNetwork =
        IpNetwork::V4(Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"));
    DesiredPod {
        key: Attachment::Pod(intent.key()),
        netns_path: intent.netns.clone(),
        host_link: Link {
            name: intent.host_link.clone(),
            mtu: net.mtu,
            up: true,
            kind: Some("veth".into()),
        },
        // ptp-style: every host veth carries the gateway as a /32, so each pod
        // ARPs for the gateway on its own point-to-point link.
        host_addresses: vec![Address {
            dev: intent.host_link.clone(),
            addr: gateway,
        }],
        host_routes: vec![route(pod_ip, None, &intent.host_link, Scope::Link)],
        pod_link: Link {
            name: intent.key.ifname.clone(),
            mtu: net.mtu,
            up: true,
            kind: Some("veth".into()),
        },
        pod_addresses: vec![Address {
            dev: intent.key.ifname.clone(),
            addr: pod_ip,
        }],
        pod_routes: vec![
            route(gateway, None, &intent.key.ifname, Scope::Link),
            route(
                default_v4,
                Some(IpAddr::V4(net.gateway)),
                &intent.key.ifname,
                Scope::Global,
            ),
        ],
        extra_links: Vec::new(),
        sysctls: Vec::new(),
        host_sysctls: vec![rp_filter_loose(&intent.host_link)],
    }
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
    let transfer = d.transfer_cidr;
    let node_ip = std::net::Ipv4Addr::from(u32::from(transfer.network()) + 1);
    let ns_ip = std::net::Ipv4Addr::from(u32::from(transfer.network()) + 2);
    let on_transfer = |ip| IpNetwork::V4(Ipv4Network::new(ip, 30).expect("/30 is valid"));
    let route = |table, dst: IpNetwork, via: Option<std::net::Ipv4Addr>, dev: &str| Route {
        via: via.map(IpAddr::V4),
        dev: Some(dev.to_string()),
        scope: if via.is_some() {
            Scope::Global
        } else {
            Scope::Link
        },
        ..Route::owned(table, dst)
    };
    desired.node_rules.push(Rule {
        priority: d.rule_priority,
        src: Some(IpNetwork::V4(spec.pod_network.cidr)),
        dst: Some(spec.tailnet.cidr),
        table: d.route_table,
        protocol: RTPROT_HEADCNI,
    });
    // Other nodes' pods are reached through the tailnet too; this node's own
    // stay in the main table (their /32s): the cluster rule alone would send
    // them into the tailnet namespace, which routes the pod CIDR back here,
    // and round again.
    let cluster = spec.pod_network.cluster_cidr.map(IpNetwork::V4);
    if let Some(cluster) = cluster {
        let pods = IpNetwork::V4(spec.pod_network.cidr);
        desired.node_rules.push(Rule {
            priority: d.rule_priority + 1,
            src: Some(pods),
            dst: Some(pods),
            table: TABLE_MAIN,
            protocol: RTPROT_HEADCNI,
        });
        desired.node_rules.push(Rule {
            priority: d.rule_priority + 2,
            src: Some(pods),
            dst: Some(cluster),
            table: d.route_table,
            protocol: RTPROT_HEADCNI,
        });
    }
    let netns_path = d.netns_path();
    desired.pods.push(DesiredPod {
        key: Attachment::TailnetNamespace,
        netns_path: netns_path.clone(),
        host_link: Link {
            name: TAILNET_HOST_LINK.into(),
            mtu: spec.pod_network.mtu,
            up: true,
            kind: Some("veth".into()),
        },
        host_addresses: vec![Address {
            dev: TAILNET_HOST_LINK.into(),
            addr: on_transfer(node_ip),
        }],
        host_routes: std::iter::once(spec.tailnet.cidr)
            .chain(cluster)
            .map(|dst| route(d.route_table, dst, Some(ns_ip), TAILNET_HOST_LINK))
            .collect(),
        pod_link: Link {
            name: TAILNET_PEER_LINK.into(),
            mtu: spec.pod_network.mtu,
            up: true,
            kind: Some("veth".into()),
        },
        pod_addresses: vec![Address {
            dev: TAILNET_PEER_LINK.into(),
            addr: on_transfer(ns_ip),
        }],
        pod_routes: vec![
            route(
                TABLE_MAIN,
                IpNetwork::V4(spec.pod_network.cidr),
                Some(node_ip),
                TAILNET_PEER_LINK,
            ),
            // The way out for tailscaled itself (Headscale, DERP, STUN, its
            // peers' UDP endpoints): through the node, which masquerades it
            // (nft.rs) out of its own default route.
            route(
                TABLE_MAIN,
                IpNetwork::V4(
                    Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
                ),
                Some(node_ip),
                TAILNET_PEER_LINK,
            ),
            route(TABLE_MAIN, spec.tailnet.cidr, None, &spec.tailnet.interface),
        ]
        .into_iter()
        .chain(cluster.map(|c| route(TABLE_MAIN, c, None, &spec.tailnet.interface)))
        .collect(),
        extra_links: vec![
            Link {
                name: "lo".into(),
                mtu: 65536,
                up: true,
                kind: None,
            },
            Link {
                name: spec.tailnet.interface.clone(),
                mtu: TAILNET_MTU,
                up: true,
                kind: None,
            },
        ],
        sysctls: vec![
            Sysctl {
                key: "net/ipv4/ip_forward".into(),
                value: "1".into(),
            },
            rp_filter_loose(&spec.tailnet.interface),
        ],
        host_sysctls: vec![rp_filter_loose(TAILNET_HOST_LINK)],
    });
}
