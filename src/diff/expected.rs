//! What the kernel holds once a Desired state is applied: the expected
//! `Observed`. Drift reports compare against it ("what did we last apply?").

use crate::model::{Link, NetnsState};
use crate::model::{Observed, ObservedPod};
use crate::spec::Desired;

pub fn expected(desired: &Desired) -> Observed {
    let mut node = NetnsState {
        sysctls: desired.node_sysctls.clone(),
        ..NetnsState::default()
    };
    // Links headcni needs but does not make count as present and up.
    for name in &desired.required_links {
        node.links.push(Link {
            name: name.clone(),
            mtu: 0,
            up: true,
            kind: None,
            mac: Default::default(),
        });
    }
    node.routes.extend(desired.node_routes.iter().cloned());
    node.rules.extend(desired.node_rules.iter().cloned());
    node.nft = desired.nft.clone();
    node.files = desired.files.clone();
    let mut pods = Vec::with_capacity(desired.pods.len());
    for pod in &desired.pods {
        node.links.push(Link {
            ..pod.host_link.clone()
        });
        node.addresses.extend(pod.host_addresses.iter().cloned());
        node.routes.extend(pod.host_routes.iter().cloned());
        node.sysctls.extend(pod.host_sysctls.iter().cloned());
        let state = NetnsState {
            links: vec![pod.pod_link.clone()],
            addresses: pod.pod_addresses.clone(),
            routes: pod.pod_routes.clone(),
            rules: Vec::new(),
            nft: None,
            nft_unread: false,
            sysctls: pod.sysctls.clone(),
            files: Vec::new(),
        };
        let mut state = state;
        state.links.extend(pod.extra_links.iter().cloned());
        pods.push(ObservedPod {
            key: pod.key.clone(),
            netns_path: pod.netns_path.clone(),
            state: Some(state),
        });
    }
    node.sysctls.sort();
    node.links.sort();
    node.addresses.sort();
    node.routes.sort();
    Observed { node, pods }
}
