//! Unit and property tests of the pure diff, against a model of the kernel.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::model::{
    Address, Attachment, Link, Netns, NetnsState, Observed, Route, Scope, Sysctl, VethPeer,
    TABLE_MAIN,
};
use crate::observe::ObservedPod;
use crate::spec::Desired;
use crate::spec::{compile, PodIntent, Spec};

const SPEC: &str = r#"
version = 1
mode = "host"
[pod_network]
cidr = "10.244.0.0/24"
[[route]]
destination = "198.51.100.0/24"
via = "203.0.113.1"
"#;

fn spec() -> Spec {
    Spec::parse(SPEC, Path::new("test.toml")).unwrap()
}

/// The spec, dual-stack with `dual`.
fn spec_of(dual: bool) -> Spec {
    if !dual {
        return spec();
    }
    let text = SPEC.replace(
        "cidr = \"10.244.0.0/24\"",
        "cidr = \"10.244.0.0/24\"\ncidr6 = \"fd00:10:244::/64\"",
    );
    Spec::parse(&text, Path::new("test.toml")).unwrap()
}

/// Pod `i`, with an IPv6 address too with `dual`.
fn pod_of(i: u8, dual: bool) -> PodIntent {
    PodIntent {
        ip6: dual
            .then(|| std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x10 + u16::from(i))),
        ..pod(i)
    }
}

fn pod(i: u8) -> PodIntent {
    let id = format!("pod{i}");
    PodIntent {
        ip: Some(Ipv4Addr::new(10, 244, 0, 10 + i)),
        ..PodIntent::new(&id, "eth0", format!("/run/netns/{id}"))
    }
}

/// A scope-link route on eth0 with `protocol` (4 = static: someone else's).
pub(crate) fn route_on_eth0(dst: &str, protocol: u8) -> Route {
    Route {
        dev: Some("eth0".into()),
        scope: Scope::Link,
        protocol,
        ..Route::owned(TABLE_MAIN, dst.parse().unwrap())
    }
}

/// A node that already holds exactly `desired` (plus its physical links).
pub(crate) fn converged(desired: &Desired) -> Observed {
    let mut node = NetnsState::default();
    node.links.push(Link {
        name: "eth0".into(),
        mtu: 1500,
        up: true,
        kind: None,
        mac: Default::default(),
    });
    node.links.push(Link {
        name: "tailscale0".into(),
        mtu: 1280,
        up: true,
        kind: Some("tun".into()),
        mac: Default::default(),
    });
    node.sysctls = desired.node_sysctls.clone();
    node.nft = desired.nft.clone();
    node.rules = desired.node_rules.clone();
    node.routes
        .extend(desired.node_routes.iter().cloned().map(|mut r| {
            if r.dev.is_none() && r.via.is_some() {
                r.dev = Some("eth0".into()); // the kernel resolves `via`
            }
            r
        }));
    let mut pods = Vec::new();
    for p in &desired.pods {
        node.links.push(Link {
            ..p.host_link.clone()
        });
        node.addresses.extend(p.host_addresses.iter().cloned());
        node.routes.extend(p.host_routes.iter().cloned());
        node.sysctls.extend(p.host_sysctls.iter().cloned());
        let mut state = NetnsState::default();
        state.links.push(Link {
            name: "lo".into(),
            mtu: 65536,
            up: true,
            kind: None,
            mac: Default::default(),
        });
        state.links.push(p.pod_link.clone());
        state.addresses.extend(p.pod_addresses.iter().cloned());
        state.routes.extend(p.pod_routes.iter().cloned());
        pods.push(ObservedPod {
            key: p.key.clone(),
            netns_path: p.netns_path.clone(),
            state: Some(state),
        });
    }
    Observed { node, pods }
}

/// The interface name at the far end of an attachment's veth.
fn inner_ifname(a: &Attachment) -> &str {
    match a {
        Attachment::Pod(key) => &key.ifname,
        Attachment::TailnetNamespace => crate::spec::TAILNET_PEER_LINK,
    }
}

/// What the kernel would hold after a plan: a model of apply.
pub(crate) fn simulate(observed: &Observed, plan: &Plan) -> Observed {
    let mut out = observed.clone();
    for step in &plan.steps {
        let state = match &step.netns {
            Netns::Node => &mut out.node,
            Netns::Attached { to, .. } => &mut out
                .pods
                .iter_mut()
                .find(|p| &p.key == to)
                .expect("pod observed")
                .state
                .as_mut()
                .expect("netns"),
        };
        match (step.action, &step.object) {
            (Action::Add, Object::Link(l)) => {
                state.links.push(l.link.clone());
                if let (Some(peer), Some(key)) = (&l.peer, &step.attachment) {
                    if let Some(p) = out.pods.iter_mut().find(|p| &p.key == key) {
                        let inside = p.state.as_mut().expect("netns");
                        inside.links.push(Link {
                            name: peer.ifname.clone(),
                            ..l.link.clone()
                        });
                    }
                }
            }
            (Action::Change, Object::Link(l)) => {
                let have = state
                    .links
                    .iter_mut()
                    .find(|x| x.name == l.name)
                    .expect("link to change");
                have.mtu = l.mtu;
                have.up = l.up;
            }
            (Action::Remove, Object::Link(l)) => {
                state.links.retain(|x| x.name != l.name);
                state.addresses.retain(|a| a.dev != l.name);
                state.routes.retain(|r| r.dev.as_deref() != Some(&l.name));
                // A veth takes its pod end with it.
                if let Some(key) = &step.attachment {
                    if let Some(p) = out.pods.iter_mut().find(|p| &p.key == key) {
                        let inside = p.state.as_mut().expect("netns");
                        let ifname = inner_ifname(key);
                        inside.links.retain(|x| x.name != ifname);
                        inside.addresses.retain(|a| a.dev != ifname);
                        inside.routes.retain(|r| r.dev.as_deref() != Some(ifname));
                    }
                }
            }
            (Action::Add | Action::Change, Object::Route(r)) => {
                state
                    .routes
                    .retain(|x| !(x.is_owned() && x.key() == r.key()));
                let mut r = r.clone();
                if r.dev.is_none() && r.via.is_some() {
                    r.dev = Some("eth0".into());
                }
                state.routes.push(r);
            }
            (Action::Remove, Object::Route(r)) => state
                .routes
                .retain(|x| !(x.is_owned() && x.key() == r.key())),
            (Action::Add, Object::Address(a)) => state.addresses.push(a.clone()),
            (Action::Remove, Object::Address(a)) => state.addresses.retain(|x| x != a),
            (Action::Add | Action::Change, Object::Nft(t)) => state.nft = Some(t.clone()),
            (Action::Remove, Object::Nft(_)) => state.nft = None,
            (Action::Add, Object::Rule(r)) => state.rules.push(r.clone()),
            (Action::Remove, Object::Rule(r)) => state.rules.retain(|x| x != r),
            (_, Object::Sysctl(s)) => {
                state.sysctls.retain(|x| x.key != s.key);
                state.sysctls.push(s.clone());
            }
            (action, object) => panic!("unexpected step {action:?} {object:?}"),
        }
    }
    out
}

fn foreign_routes(o: &Observed) -> Vec<Route> {
    let mut all: Vec<Route> = o
        .node
        .routes
        .iter()
        .filter(|r| !r.is_owned())
        .cloned()
        .collect();
    for p in &o.pods {
        if let Some(s) = &p.state {
            all.extend(s.routes.iter().filter(|r| !r.is_owned()).cloned());
        }
    }
    all.sort();
    all
}

#[test]
fn converged_node_gives_an_empty_plan() {
    let desired = compile(&spec(), &[pod(1), pod(2), pod(3)]);
    let plan = diff(&desired, &converged(&desired));
    assert!(
        plan.is_empty(),
        "{}",
        crate::report::text::plan(&plan, false)
    );
    assert!(plan.conflicts.is_empty());
}

#[test]
fn empty_node_plans_everything_in_order() {
    let desired = compile(&spec(), &[pod(1)]);
    let mut observed = converged(&compile(&spec(), &[]));
    observed.node.routes.clear();
    observed.node.sysctls[0].value = "0".into();
    observed.pods.push(ObservedPod {
        key: pod(1).attachment(),
        netns_path: pod(1).netns.clone(),
        state: Some(NetnsState::default()),
    });
    let plan = diff(&desired, &observed);
    let kinds: Vec<_> = plan
        .steps
        .iter()
        .map(|s| (s.action, s.object.rank()))
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort_by_key(|(_, rank)| *rank);
    assert_eq!(
        kinds, sorted,
        "sysctls, then links, then addresses, then routes"
    );
    let s = plan.summary();
    assert_eq!(
        (s.add, s.change, s.remove),
        (10, 1, 0),
        "{}",
        crate::report::text::plan(&plan, false)
    );
    // The gateway's on-link route comes before the default route through it.
    let inside: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.netns, Netns::Attached { .. }) && s.object.rank() == 3)
        .map(|s| s.object.to_string())
        .collect();
    assert!(
        inside[0].contains("scope link") && inside[1].starts_with("route default"),
        "{inside:?}"
    );
}

#[test]
fn drift_is_named_exactly() {
    let desired = compile(&spec(), &[pod(1), pod(2)]);
    let mut observed = converged(&desired);
    let host = &desired.pods[0].host_link.name;
    observed
        .node
        .routes
        .retain(|r| r.dev.as_deref() != Some(host.as_str()));
    observed
        .node
        .links
        .iter_mut()
        .find(|l| &l.name == host)
        .unwrap()
        .mtu = 1400;
    let plan = diff(&desired, &observed);
    let text: Vec<String> = plan.steps.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        text,
        vec![
            format!("~ link {host} mtu 1400 -> 1500"),
            format!("+ route 10.244.0.11/32 dev {host} proto headcni scope link")
        ]
    );
}

#[test]
fn foreign_route_in_the_way_is_a_conflict_and_skips_only_that_pod() {
    let desired = compile(&spec(), &[pod(1), pod(2)]);
    let mut observed = converged(&compile(&spec(), &[]));
    for p in [pod(1), pod(2)] {
        observed.pods.push(ObservedPod {
            key: p.attachment(),
            netns_path: p.netns.clone(),
            state: Some(NetnsState::default()),
        });
    }
    let foreign = route_on_eth0("10.244.0.11/32", 4);
    observed.node.routes.push(foreign.clone());
    let plan = diff(&desired, &observed);
    assert_eq!(plan.conflicts.len(), 1);
    assert_eq!(plan.conflicts[0].attachment, Some(pod(1).attachment()));
    assert!(
        plan.steps
            .iter()
            .all(|s| s.attachment != Some(pod(1).attachment())),
        "pod 1 is skipped"
    );
    assert!(
        plan.steps
            .iter()
            .any(|s| s.attachment == Some(pod(2).attachment())),
        "pod 2 goes ahead"
    );
    assert!(
        plan.steps
            .iter()
            .all(|s| s.object != Object::Route(foreign.clone())),
        "never touched"
    );
}

#[test]
fn stale_owned_objects_are_removed_but_foreign_ones_stay() {
    let desired = compile(&spec(), &[pod(1)]);
    let mut observed = converged(&compile(&spec(), &[pod(1), pod(2)]));
    observed.pods.retain(|p| p.key == pod(1).attachment());
    let foreign = route_on_eth0("192.0.2.0/24", 4);
    observed.node.routes.push(foreign);
    let plan = diff(&desired, &observed);
    let text: Vec<String> = plan.steps.iter().map(|s| s.to_string()).collect();
    // One step: the link goes, and its address and route with it.
    assert_eq!(
        text,
        vec![format!("- link {} type veth mtu 1500 up", pod(2).host_link)]
    );
}

#[test]
fn missing_tailnet_interface_waits_and_keeps_the_rest() {
    let desired = compile(&spec(), &[pod(1)]);
    let mut observed = converged(&desired);
    observed.node.links.retain(|l| l.name != "tailscale0");
    observed
        .node
        .routes
        .retain(|r| r.dev.as_deref() != Some("tailscale0"));
    let plan = diff(&desired, &observed);
    assert!(plan.steps.is_empty());
    // Its route and its rp_filter both wait for it.
    assert_eq!(plan.waiting.len(), 2);
    assert!(plan
        .waiting
        .iter()
        .all(|w| w.reason.contains("waits for link tailscale0")));
}

#[test]
fn missing_pod_netns_waits_and_keeps_its_host_side() {
    let desired = compile(&spec(), &[pod(1)]);
    let mut observed = converged(&desired);
    observed.pods[0].state = None;
    let plan = diff(&desired, &observed);
    assert!(
        plan.steps.is_empty(),
        "{}",
        crate::report::text::plan(&plan, false)
    );
    assert_eq!(plan.waiting.len(), 1);
}

/// Pod `index`'s inside drifted: its default route gone, its eth0 down.
pub(crate) fn drift_inside(observed: &mut Observed, index: usize) -> &mut NetnsState {
    let inside = observed.pods[index]
        .state
        .as_mut()
        .expect("the pod's namespace observed");
    inside.routes.retain(|r| r.via.is_none());
    if let Some(eth0) = inside.links.iter_mut().find(|l| l.name == "eth0") {
        eth0.up = false;
    }
    inside
}

#[test]
fn pod_side_drift_is_repaired_in_the_pod() {
    let desired = compile(&spec(), &[pod(1)]);
    let mut observed = converged(&desired);
    drift_inside(&mut observed, 0).addresses.push(Address {
        dev: "eth0".into(),
        addr: "10.244.0.99/32".parse().unwrap(),
    });
    let plan = diff(&desired, &observed);
    let text: Vec<String> = plan.steps.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "- address 10.244.0.99/32 dev eth0 [in pod pod1/eth0]".to_string(),
            "~ link eth0 down -> up [in pod pod1/eth0]".to_string(),
            "+ route default via 10.244.0.1 dev eth0 proto headcni [in pod pod1/eth0]".to_string(),
        ]
    );
}

#[test]
fn ip_forward_off_is_drift() {
    let desired = compile(&spec(), &[]);
    let mut observed = converged(&desired);
    for s in &mut observed.node.sysctls {
        if s.key == "net/ipv4/ip_forward" {
            s.value = "0".into();
        }
    }
    let plan = diff(&desired, &observed);
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.steps[0].to_string(),
        "~ sysctl net.ipv4.ip_forward 0 -> 1"
    );
}

#[test]
fn pod_end_missing_means_the_veth_is_recreated() {
    let desired = compile(&spec(), &[pod(1)]);
    let mut observed = converged(&desired);
    let inside = observed.pods[0].state.as_mut().unwrap();
    inside.links.retain(|l| l.name != "eth0");
    inside.addresses.clear();
    inside.routes.clear();
    let plan = diff(&desired, &observed);
    let after = simulate(&observed, &plan);
    assert!(diff(&desired, &after).is_empty());
    assert_eq!(plan.steps[0].action, Action::Remove);
}

/// Random perturbations of a converged node.
#[derive(Debug, Clone)]
enum Perturb {
    DropNodeRoute(usize),
    DropPodRoute(usize, usize),
    ChangeMtu(usize, u32),
    LinkDown(usize),
    DropHostLink(usize),
    DropPodEnd(usize),
    ForeignRoute(u8),
    StaleOwnedRoute(u8),
    StaleLink(u8),
    ForwardOff,
    HostLinkDown(usize),
    HostLinkNotVeth(usize),
    HostRpFilterStrict(usize),
}

fn perturbation() -> impl Strategy<Value = Perturb> {
    prop_oneof![
        any::<usize>().prop_map(Perturb::DropNodeRoute),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Perturb::DropPodRoute(a, b)),
        (any::<usize>(), 1280u32..9000).prop_map(|(a, m)| Perturb::ChangeMtu(a, m)),
        any::<usize>().prop_map(Perturb::LinkDown),
        any::<usize>().prop_map(Perturb::DropHostLink),
        any::<usize>().prop_map(Perturb::DropPodEnd),
        (0u8..40).prop_map(Perturb::ForeignRoute),
        (0u8..40).prop_map(Perturb::StaleOwnedRoute),
        any::<u8>().prop_map(Perturb::StaleLink),
        Just(Perturb::ForwardOff),
        any::<usize>().prop_map(Perturb::HostLinkDown),
        any::<usize>().prop_map(Perturb::HostLinkNotVeth),
        any::<usize>().prop_map(Perturb::HostRpFilterStrict),
    ]
}

fn perturb(observed: &mut Observed, desired: &Desired, perturbation: &Perturb) {
    let n = desired.pods.len().max(1);
    match perturbation {
        Perturb::DropNodeRoute(i) => {
            if !observed.node.routes.is_empty() {
                let i = i % observed.node.routes.len();
                if observed.node.routes[i].is_owned() {
                    observed.node.routes.remove(i);
                }
            }
        }
        Perturb::DropPodRoute(i, j) => {
            if let Some(s) = observed.pods.get_mut(i % n).and_then(|p| p.state.as_mut()) {
                if !s.routes.is_empty() {
                    let j = j % s.routes.len();
                    s.routes.remove(j);
                }
            }
        }
        Perturb::LinkDown(i) => {
            if let Some(s) = observed.pods.get_mut(i % n).and_then(|p| p.state.as_mut()) {
                for l in &mut s.links {
                    l.up = false;
                }
            }
        }
        Perturb::DropHostLink(i) => {
            if let Some(p) = desired.pods.get(i % n) {
                let name = p.host_link.name.clone();
                observed.node.links.retain(|l| l.name != name);
                observed.node.addresses.retain(|a| a.dev != name);
                observed
                    .node
                    .routes
                    .retain(|r| r.dev.as_deref() != Some(name.as_str()));
                if let Some(s) = observed
                    .pods
                    .iter_mut()
                    .find(|o| o.key == p.key)
                    .and_then(|o| o.state.as_mut())
                {
                    s.links.retain(|l| l.name != inner_ifname(&p.key));
                    s.addresses.clear();
                    s.routes.clear();
                }
            }
        }
        Perturb::DropPodEnd(i) => {
            if let Some(s) = observed.pods.get_mut(i % n).and_then(|p| p.state.as_mut()) {
                let ifname = inner_ifname(&desired.pods[i % n].key).to_string();
                s.links.retain(|l| l.name != ifname);
                s.addresses.clear();
                s.routes.clear();
            }
        }
        Perturb::ForeignRoute(last) => observed
            .node
            .routes
            .push(route_on_eth0(&format!("10.244.0.{last}/32"), 4)),
        Perturb::StaleOwnedRoute(last) => observed.node.routes.push(route_on_eth0(
            &format!("192.0.2.{last}/32"),
            crate::model::RTPROT_HEADCNI,
        )),
        Perturb::StaleLink(x) => {
            let name = format!("hcdead{x:02x}");
            if !observed.node.links.iter().any(|l| l.name == name) {
                observed.node.links.push(Link {
                    name,
                    mtu: 1500,
                    up: true,
                    kind: Some("veth".into()),
                    mac: Default::default(),
                });
            }
        }
        Perturb::ForwardOff => {
            observed.node.sysctls = vec![Sysctl {
                key: "net/ipv4/ip_forward".into(),
                value: "0".into(),
            }]
        }
        Perturb::ChangeMtu(i, _) | Perturb::HostLinkDown(i) | Perturb::HostLinkNotVeth(i) => {
            if let Some(p) = desired.pods.get(i % n) {
                if let Some(l) = observed
                    .node
                    .links
                    .iter_mut()
                    .find(|l| l.name == p.host_link.name)
                {
                    match perturbation {
                        Perturb::ChangeMtu(_, mtu) => l.mtu = *mtu,
                        Perturb::HostLinkDown(_) => l.up = false,
                        _ => l.kind = Some("tun".into()),
                    }
                }
            }
        }
        Perturb::HostRpFilterStrict(i) => {
            if let Some(want) = desired.pods.get(i % n).and_then(|p| p.host_sysctls.first()) {
                observed.node.sysctls.retain(|s| s.key != want.key);
                observed.node.sysctls.push(Sysctl {
                    key: want.key.clone(),
                    value: "1".into(),
                });
            }
        }
    }
}

/// `n` pods desired (dual-stack with `dual`); the node converged to them,
/// then perturbed.
fn perturbed_node(n: u8, dual: bool, perturbations: &[Perturb]) -> (Desired, Observed) {
    let pods: Vec<_> = (0..n).map(|i| pod_of(i, dual)).collect();
    let desired = compile(&spec_of(dual), &pods);
    let mut observed = converged(&desired);
    for p in perturbations {
        perturb(&mut observed, &desired, p);
    }
    (desired, observed)
}

/// `observed` as the engine's first diff stage sees it: no node links and no
/// per-link sysctls yet.
fn without_node_links(observed: &Observed) -> Observed {
    let mut partial = observed.clone();
    partial.node.links.clear();
    partial.node.sysctls.retain(|s| s.interface().is_none());
    partial
}

proptest! {
    #[test]
    fn diff_of_converged_state_is_empty(n in 0u8..20, dual in any::<bool>()) {
        let pods: Vec<_> = (0..n).map(|i| pod_of(i, dual)).collect();
        let desired = compile(&spec_of(dual), &pods);
        let plan = diff(&desired, &converged(&desired));
        prop_assert!(plan.is_empty());
        prop_assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn applying_the_plan_converges_and_spares_foreign_objects(
        n in 1u8..12,
        dual in any::<bool>(),
        perturbations in proptest::collection::vec(perturbation(), 0..12),
    ) {
        let (desired, observed) = perturbed_node(n, dual, &perturbations);
        let plan = diff(&desired, &observed);
        let after = simulate(&observed, &plan);
        let again = diff(&desired, &after);
        prop_assert!(again.is_empty(), "not converged:\n{}", crate::report::text::plan(&again, false));
        prop_assert_eq!(&again.conflicts, &plan.conflicts);
        prop_assert_eq!(foreign_routes(&after), foreign_routes(&observed));
        // No step ever names a foreign route.
        for step in &plan.steps {
            if let Object::Route(r) = &step.object {
                prop_assert!(r.is_owned());
            }
        }
    }

    #[test]
    fn the_staged_diff_is_the_diff(
        n in 0u8..12,
        observe_pods in any::<bool>(),
        dual in any::<bool>(),
        perturbations in proptest::collection::vec(perturbation(), 0..12),
    ) {
        let (desired, mut observed) = perturbed_node(n, dual, &perturbations);
        if !observe_pods {
            observed.pods.clear(); // a host-side pass
        }
        let partial = without_node_links(&observed);
        let staged = Early::new(&desired, &partial)
            .finish(&observed.node.links, &observed.node.sysctls);
        prop_assert_eq!(staged, diff(&desired, &observed));
    }

    #[test]
    fn plans_are_deterministic_whatever_the_input_order(n in 1u8..12, seed in any::<u64>()) {
        let mut pods: Vec<_> = (0..n).map(pod).collect();
        let desired = compile(&spec(), &pods);
        let mut observed = converged(&compile(&spec(), &pods[..pods.len() / 2]));
        observed.node.routes.push(route_on_eth0("192.0.2.7/32", crate::model::RTPROT_HEADCNI));
        let first = crate::report::json::plan(&diff(&desired, &observed));
        // Shuffle every input list.
        let rot = (seed as usize) % pods.len();
        pods.rotate_left(rot);
        let desired2 = compile(&spec(), &pods);
        let mut observed2 = observed.clone();
        observed2.node.routes.reverse();
        observed2.node.links.reverse();
        observed2.node.addresses.reverse();
        observed2.pods.reverse();
        prop_assert_eq!(first, crate::report::json::plan(&diff(&desired2, &observed2)));
    }
}

#[test]
fn only_a_veth_to_create_carries_its_pod_end() {
    let desired = compile(&spec(), &[pod(1)]);
    let plan = diff(&desired, &Observed::default());
    let created: Vec<&PlannedLink> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.object {
            Object::Link(l) if s.action == Action::Add => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0].peer,
        Some(VethPeer {
            ifname: "eth0".into(),
            netns_path: PathBuf::from("/run/netns/pod1")
        })
    );
    // The same link with another MTU: a change of state, no creation data.
    let mut observed = super::expected(&desired);
    observed.node.links[0].mtu = 1400;
    let plan = diff(&desired, &observed);
    assert!(plan.steps.iter().all(|s| match (&s.object, &s.before) {
        (Object::Link(l), Some(Object::Link(before))) => l.peer.is_none() && before.peer.is_none(),
        (Object::Link(l), None) => l.peer.is_none(),
        _ => true,
    }));
    assert_eq!(plan.steps.len(), 1, "{plan:?}");
}

#[test]
fn daemon_mode_plans_rule_table_and_tailnet_namespace() {
    let text = SPEC.replace("mode = \"host\"", "mode = \"daemon\"");
    let spec = Spec::parse(&text, Path::new("d.toml")).unwrap();
    let desired = compile(&spec, &[pod(1)]);
    assert_eq!(desired.node_rules.len(), 1);
    assert_eq!(
        desired.pods.len(),
        2,
        "the tailnet namespace is planned like a pod"
    );
    // Converged, then headcni01 disappears: its route waits, the rest stays.
    let mut observed = super::expected(&desired);
    assert!(diff(&desired, &observed).is_empty());
    let ts = observed
        .pods
        .iter_mut()
        .find(|p| p.key == Attachment::TailnetNamespace)
        .unwrap();
    let inside = ts.state.as_mut().unwrap();
    inside.links.retain(|l| l.name != "headcni01");
    inside
        .routes
        .retain(|r| r.dev.as_deref() != Some("headcni01"));
    let plan = diff(&desired, &observed);
    assert!(
        plan.steps.is_empty(),
        "{}",
        crate::report::text::plan(&plan, false)
    );
    assert!(plan
        .waiting
        .iter()
        .any(|w| w.reason.contains("waits for link headcni01")));
    // A stray owned rule is removed; the desired one added back.
    let mut observed = super::expected(&desired);
    let mut stray = desired.node_rules[0].clone();
    stray.priority = 5201;
    observed.node.rules = vec![stray];
    let text: Vec<String> = diff(&desired, &observed)
        .steps
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(text.len(), 2, "{text:?}");
}

#[test]
fn an_unread_firewall_is_neither_added_nor_removed() {
    let desired = compile(&spec(), &[pod(1)]);
    assert!(desired.nft.is_some(), "the test spec has a firewall table");
    let mut observed = converged(&desired);
    observed.node.nft = None;
    let nft_steps = |o: &Observed| {
        diff(&desired, o)
            .steps
            .iter()
            .filter(|s| matches!(s.object, Object::Nft(_)))
            .count()
    };
    assert_eq!(nft_steps(&observed), 1, "read and missing: added");
    observed.node.nft_unread = true;
    assert_eq!(nft_steps(&observed), 0, "not read (a CNI pass): left alone");
}
