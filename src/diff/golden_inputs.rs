//! The inputs of the golden cases, tests/golden/<case>/{spec.toml,
//! pods.json, observed.json}, built from the diff tests' helpers (a
//! converged node, then what each case changes in it). The runner is
//! tests/golden.rs, beside the cases.
//! `cargo test --lib -- --ignored write_golden_inputs` recreates them.

use std::fs;
use std::path::Path;

use super::tests::{converged, drift_inside, route_on_eth0};
use crate::model::{Link, NetnsState, Observed, Route, Sysctl};
use crate::spec::{compile, PodIntent, Spec};

const SPEC: &str = crate::spec::example_spec!();

fn intent(i: u8) -> PodIntent {
    let id = format!("{i:02}c0ffee{i:02}");
    PodIntent {
        ip: Some(std::net::Ipv4Addr::new(10, 244, 0, 10 + i)),
        ..PodIntent::new(&id, "eth0", format!("/run/netns/pod{i}"))
    }
}

fn spec() -> Spec {
    Spec::parse(SPEC, Path::new("spec.toml")).unwrap()
}

fn foreign(dst: &str) -> Route {
    route_on_eth0(dst, 4)
}

fn empty_pods(observed: &mut Observed, pods: &[PodIntent]) {
    for p in pods {
        observed.pods.push(crate::observe::ObservedPod {
            key: p.attachment(),
            netns_path: p.netns.clone(),
            state: Some(NetnsState::default()),
        });
    }
}

/// The scenarios behind the golden inputs.
fn scenarios() -> Vec<(&'static str, String, Vec<PodIntent>, Observed)> {
    let three: Vec<PodIntent> = (1..=3).map(intent).collect();
    let bare = || {
        let mut o = converged(&compile(&spec(), &[]));
        o.node.routes.clear();
        o.node.rules.clear();
        o.node.nft = None;
        o.node.sysctls = vec![Sysctl {
            key: "net/ipv4/ip_forward".into(),
            value: "0".into(),
        }];
        o
    };
    let mut out = Vec::new();

    out.push(("01-empty-node-no-pods", SPEC.to_string(), vec![], bare()));

    let mut o = bare();
    empty_pods(&mut o, &three);
    out.push((
        "02-empty-node-three-pods",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    out.push((
        "03-converged",
        SPEC.to_string(),
        three.clone(),
        converged(&compile(&spec(), &three)),
    ));

    let mut o = converged(&compile(&spec(), &three));
    let host = three[0].host_link.clone();
    o.node
        .routes
        .retain(|r| r.dev.as_deref() != Some(host.as_str()));
    o.node
        .links
        .iter_mut()
        .find(|l| l.name == host)
        .unwrap()
        .mtu = 1280;
    out.push((
        "04-drift-route-deleted-mtu-changed",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    let mut o = bare();
    empty_pods(&mut o, &three);
    o.node.routes.push(foreign("10.244.0.12/32"));
    out.push((
        "05-conflict-foreign-route-on-pod-ip",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    let mut o = converged(&compile(&spec(), &three));
    o.pods.retain(|p| p.key != three[2].attachment());
    o.node.routes.push(foreign("192.0.2.0/24"));
    out.push((
        "06-pod-deleted-owned-objects-removed",
        SPEC.to_string(),
        three[..2].to_vec(),
        o,
    ));

    let mut o = converged(&compile(&spec(), &three));
    o.node.links.retain(|l| l.name != "tailscale0");
    o.node
        .routes
        .retain(|r| r.dev.as_deref() != Some("tailscale0"));
    out.push((
        "07-tailnet-interface-missing",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    let mut outside = intent(4);
    outside.ip = Some(std::net::Ipv4Addr::new(10, 9, 0, 4));
    let mut pods = three.clone();
    pods.push(outside);
    out.push((
        "08-pod-address-outside-cidr",
        SPEC.to_string(),
        pods,
        converged(&compile(&spec(), &three)),
    ));

    let mut o = converged(&compile(&spec(), &three));
    o.pods[1].state = None;
    out.push(("09-pod-netns-gone", SPEC.to_string(), three.clone(), o));

    let changed = SPEC
        .replace("mtu = 1500", "mtu = 1400")
        .replace("via = \"203.0.113.1\"", "via = \"203.0.113.254\"");
    out.push((
        "10-spec-change-mtu-and-route",
        changed,
        three.clone(),
        converged(&compile(&spec(), &three)),
    ));

    let mut o = converged(&compile(&spec(), &three));
    drift_inside(&mut o, 0);
    o.node.sysctls[0].value = "0".into();
    out.push((
        "11-pod-side-drift-and-forwarding-off",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    let mut o = converged(&compile(&spec(), &three));
    o.node.routes.push(Route {
        protocol: crate::model::RTPROT_HEADCNI,
        ..foreign("203.0.113.128/25")
    });
    o.node.links.push(Link {
        name: "hcdeadbeef00".into(),
        mtu: 1500,
        up: true,
        kind: Some("veth".into()),
        mac: Default::default(),
    });
    out.push((
        "12-stale-owned-route-and-link",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    let more_routes = format!("{SPEC}\n[[route]]\ndestination = \"192.0.2.0/24\"\ndevice = \"tailscale0\"\nmetric = 100\n");
    out.push((
        "13-spec-adds-a-device-route",
        more_routes,
        three.clone(),
        converged(&compile(&spec(), &three)),
    ));

    let mut o = converged(&compile(&spec(), &three[..2]));
    o.node
        .links
        .iter_mut()
        .find(|l| l.name == three[1].host_link)
        .unwrap()
        .up = false;
    o.pods.retain(|p| p.key != three[1].attachment());
    let mut pods = vec![three[0].clone(), three[2].clone()];
    pods.push(intent(5));
    empty_pods(&mut o, &pods[1..]);
    out.push(("14-mixed-add-change-remove", SPEC.to_string(), pods, o));

    let mut o = converged(&compile(&spec(), &three));
    o.node.routes.push(foreign("192.0.2.0/24"));
    o.node.routes.push(Route {
        metric: 50,
        ..foreign("10.244.0.0/24")
    });
    out.push((
        "15-foreign-routes-beside-ours-no-change",
        SPEC.to_string(),
        three.clone(),
        o,
    ));

    let mut o = bare();
    empty_pods(&mut o, &three[..1]);
    o.pods[0].state.as_mut().unwrap().links.push(Link {
        name: "eth0".into(),
        mtu: 1500,
        up: true,
        kind: Some("macvlan".into()),
        mac: Default::default(),
    });
    out.push((
        "16-conflict-pod-interface-name-taken",
        SPEC.to_string(),
        three[..1].to_vec(),
        o,
    ));

    dual_stack_scenarios(&mut out);
    out
}

/// The spec with IPv6 pods beside the IPv4 ones, or instead of them.
fn dual_spec() -> String {
    SPEC.replace(
        "cidr = \"10.244.0.0/24\"",
        "cidr = \"10.244.0.0/24\"\ncidr6 = \"fd00:10:244::/64\"",
    )
}

fn ipv6_only_spec() -> String {
    SPEC.replace("cidr = \"10.244.0.0/24\"", "cidr6 = \"fd00:10:244::/64\"")
}

fn dual_intent(i: u8, ipv4: bool) -> PodIntent {
    PodIntent {
        ip: ipv4.then(|| std::net::Ipv4Addr::new(10, 244, 0, 10 + i)),
        ip6: Some(std::net::Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            0,
            0,
            0,
            0,
            0x10 + u16::from(i),
        )),
        ..intent(i)
    }
}

/// IPv6-only, dual-stack, and drift of IPv6 objects.
fn dual_stack_scenarios(out: &mut Vec<(&'static str, String, Vec<PodIntent>, Observed)>) {
    let parse = |text: &str| Spec::parse(text, Path::new("spec.toml")).unwrap();
    let bare = |spec: &Spec| {
        let mut o = converged(&compile(spec, &[]));
        o.node.routes.clear();
        o.node.rules.clear();
        o.node.nft = None;
        for sysctl in &mut o.node.sysctls {
            sysctl.value = "0".into();
        }
        o.node.sysctls.push(Sysctl {
            key: "net/ipv6/conf/eth0/accept_ra".into(),
            value: "1".into(),
        });
        o
    };
    let v6_only: Vec<PodIntent> = (1..=2).map(|i| dual_intent(i, false)).collect();
    let mut o = bare(&parse(&ipv6_only_spec()));
    empty_pods(&mut o, &v6_only);
    out.push((
        "19-ipv6-only-two-pods-on-an-empty-node",
        ipv6_only_spec(),
        v6_only,
        o,
    ));

    let dual: Vec<PodIntent> = (1..=2).map(|i| dual_intent(i, true)).collect();
    let mut o = bare(&parse(&dual_spec()));
    empty_pods(&mut o, &dual);
    out.push((
        "20-dual-stack-two-pods-on-an-empty-node",
        dual_spec(),
        dual.clone(),
        o,
    ));

    // One pod's IPv6 host route and IPv6 default route gone; a pod from
    // before IPv6 was enabled keeps its IPv4 address only.
    let mut pods = dual.clone();
    pods.push(intent(3));
    let mut o = converged(&compile(&parse(&dual_spec()), &pods));
    let host = dual[0].host_link.clone();
    o.node
        .routes
        .retain(|r| !(r.dst.is_ipv6() && r.dev.as_deref() == Some(host.as_str())));
    o.pods[0]
        .state
        .as_mut()
        .unwrap()
        .routes
        .retain(|r| r.dst.is_ipv4());
    out.push(("21-dual-stack-ipv6-routes-drifted", dual_spec(), pods, o));
}

#[test]
#[ignore = "writes golden inputs; run on purpose"]
fn write_golden_inputs() {
    for (name, spec_text, pods, observed) in scenarios() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("spec.toml"), spec_text).unwrap();
        fs::write(
            dir.join("pods.json"),
            serde_json::to_string_pretty(&pods).unwrap() + "\n",
        )
        .unwrap();
        fs::write(
            dir.join("observed.json"),
            serde_json::to_string_pretty(&observed).unwrap() + "\n",
        )
        .unwrap();
    }
}
