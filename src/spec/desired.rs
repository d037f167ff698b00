//! `compile(Spec, pods) -> Desired`: a pure function, no IO.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

use super::{PodIntent, Spec};
use crate::model::{
    Address, Link, PodKey, Route, Scope, Sysctl, VethPeer, RTPROT_HEADCNI, TABLE_MAIN,
};

/// What the node's pod network must be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Node-level routes (tailnet, extra routes).
    pub node_routes: Vec<Route>,
    pub node_sysctls: Vec<Sysctl>,
    /// Links node routes need that headcni does not make (the tailnet interface, ...).
    pub required_links: Vec<String>,
    pub pods: Vec<DesiredPod>,
    /// Intents that cannot be honoured under the current spec.
    pub problems: Vec<Problem>,
}

/// Everything one pod attachment needs, on both sides of its veth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPod {
    pub key: PodKey,
    pub netns_path: std::path::PathBuf,
    /// Host end, carrying the peer's name and namespace.
    pub host_link: Link,
    pub host_addresses: Vec<Address>,
    pub host_routes: Vec<Route>,
    pub pod_link: Link,
    pub pod_addresses: Vec<Address>,
    pub pod_routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    pub pod: PodKey,
    pub reason: String,
}

pub fn compile(spec: &Spec, pods: &[PodIntent]) -> Desired {
    let mut desired = Desired {
        node_sysctls: vec![Sysctl {
            key: "net/ipv4/ip_forward".into(),
            value: "1".into(),
        }],
        ..Desired::default()
    };

    desired.node_routes.push(Route {
        table: TABLE_MAIN,
        dst: spec.tailnet.cidr,
        via: None,
        dev: Some(spec.tailnet.interface.clone()),
        scope: Scope::Link,
        protocol: RTPROT_HEADCNI,
        metric: 0,
    });
    desired.required_links.push(spec.tailnet.interface.clone());
    for extra in &spec.routes {
        desired.node_routes.push(Route {
            table: TABLE_MAIN,
            dst: extra.destination,
            via: extra.via,
            dev: extra.device.clone(),
            scope: if extra.via.is_some() {
                Scope::Global
            } else {
                Scope::Link
            },
            protocol: RTPROT_HEADCNI,
            metric: extra.metric,
        });
        if let Some(dev) = &extra.device {
            if !desired.required_links.contains(dev) {
                desired.required_links.push(dev.clone());
            }
        }
    }

    let mut pods: Vec<&PodIntent> = pods.iter().collect();
    pods.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
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
        table: TABLE_MAIN,
        dst,
        via,
        dev: Some(dev.to_string()),
        scope,
        protocol: RTPROT_HEADCNI,
        metric: 0,
    };
    let default_v4: IpNetwork =
        IpNetwork::V4(Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"));
    DesiredPod {
        key: intent.key(),
        netns_path: intent.netns.clone(),
        host_link: Link {
            name: intent.host_link.clone(),
            mtu: net.mtu,
            up: true,
            kind: Some("veth".into()),
            peer: Some(VethPeer {
                ifname: intent.ifname.clone(),
                netns_path: intent.netns.clone(),
            }),
        },
        // ptp-style: every host veth carries the gateway as a /32, so each pod
        // ARPs for the gateway on its own point-to-point link.
        host_addresses: vec![Address {
            dev: intent.host_link.clone(),
            addr: gateway,
        }],
        host_routes: vec![route(pod_ip, None, &intent.host_link, Scope::Link)],
        pod_link: Link {
            name: intent.ifname.clone(),
            mtu: net.mtu,
            up: true,
            kind: Some("veth".into()),
            peer: None,
        },
        pod_addresses: vec![Address {
            dev: intent.ifname.clone(),
            addr: pod_ip,
        }],
        pod_routes: vec![
            route(gateway, None, &intent.ifname, Scope::Link),
            route(
                default_v4,
                Some(IpAddr::V4(net.gateway)),
                &intent.ifname,
                Scope::Global,
            ),
        ],
    }
}
