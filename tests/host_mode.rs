//! Host mode end to end on the real kernel, in throwaway namespaces.

mod common;

use common::{Lab, Node};

#[test]
fn plan_apply_connect_drift_and_delete() {
    let mut n = Node::new();
    let (pod1, _ip1) = n.add_pod("pod1");
    let (_pod2, ip2) = n.add_pod("pod2");
    let (_pod3, _ip3) = n.add_pod("pod3");

    // A plan with changes exits 2 and lists the steps.
    let plan = n.headcni_ok(&["plan", "--detailed-exitcode"], 2);
    assert!(
        plan.contains("+ route 100.64.0.0/10 dev tailscale0 proto headcni"),
        "{plan}"
    );
    assert!(plan.contains("Plan: "), "{plan}");

    let applied = n.headcni_ok(&["apply"], 0);
    assert!(applied.contains("to add"), "{applied}");

    for target in ["10.244.0.1", ip2.as_str(), "100.64.0.5", "203.0.113.1"] {
        assert!(n.lab.ping(&pod1, target), "ping {target} from {pod1}");
    }
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);

    // An address of the pod CIDR no pod holds is refused on the node, not
    // sent out by the default route: the pod hears "host unreachable".
    assert!(
        n.in_node(&["ip", "route", "show", "type", "unreachable"])
            .contains("unreachable 10.244.0.0/24 proto headcni"),
        "{}",
        n.node_routes()
    );
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &pod1, "ping", "-c1", "-W2", "10.244.0.200"])
        .output()
        .expect("ping");
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains("Destination Host Unreachable"),
        "{ping:?}"
    );

    // Drift: delete an owned route and change a host veth's MTU by hand.
    let pods_json = n.headcni_ok(&["pod", "list", "--format", "json"], 0);
    let pods: serde_json::Value = serde_json::from_str(&pods_json).unwrap();
    let host1 = pods[0]["host_link"].as_str().unwrap().to_string();
    let ip_first = pods[0]["ip"].as_str().unwrap().to_string();
    let host2 = pods[1]["host_link"].as_str().unwrap().to_string();
    n.lab.ip(
        &n.node,
        &["route", "del", &format!("{ip_first}/32"), "dev", &host1],
    );
    n.lab.ip(&n.node, &["link", "set", &host2, "mtu", "1400"]);
    // A foreign route beside ours.
    n.lab.ip(
        &n.node,
        &[
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "203.0.113.1",
            "proto",
            "static",
        ],
    );

    let plan = n.headcni_ok(&["plan", "--detailed-exitcode"], 2);
    let steps: Vec<&str> = plan
        .lines()
        .filter(|l| l.starts_with(['+', '-', '~']))
        .collect();
    assert_eq!(
        steps,
        vec![
            format!("~ link {host2} mtu 1400 -> 1500").as_str(),
            format!("+ route {ip_first}/32 dev {host1} proto headcni scope link").as_str(),
        ],
        "{plan}"
    );
    n.headcni_ok(&["apply"], 0);
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    assert!(
        n.node_routes()
            .contains("192.0.2.0/24 via 203.0.113.1 dev eth0 proto static"),
        "foreign route survives"
    );

    // pod del + apply removes the veth, routes and allocation.
    let id = pods[0]["container_id"].as_str().unwrap().to_string();
    n.headcni_ok(&["pod", "del", "--id", &id], 0);
    n.headcni_ok(&["apply"], 0);
    let links = n.lab.ip(&n.node, &["-o", "link", "show"]);
    assert!(!links.contains(&host1), "{links}");
    assert!(
        !n.node_routes().contains(&format!("{ip_first} ")),
        "route gone"
    );
    let list = n.headcni_ok(&["pod", "list", "--format", "json"], 0);
    assert!(!list.contains(&id), "{list}");
    assert!(
        n.node_routes().contains("192.0.2.0/24"),
        "foreign route still there"
    );
}

#[test]
fn foreign_route_on_a_pod_address_is_a_conflict_that_skips_only_that_pod() {
    let mut n = Node::new();
    let (pod1, ip1) = n.add_pod("pod1");
    let (pod2, _ip2) = n.add_pod("pod2");
    let (pod3, ip3) = n.add_pod("pod3");
    n.foreign_route_to(&ip1);
    // Not only unicast routes are in the way: a blackhole is too.
    let blackhole = format!("blackhole {ip3} proto static");
    n.lab.ip(
        &n.node,
        &["route", "add", "blackhole", &ip3, "proto", "static"],
    );

    let plan = n.headcni_ok(&["plan", "--detailed-exitcode"], 2);
    assert_eq!(plan.matches("! conflict").count(), 2, "{plan}");
    assert!(
        plan.contains(&format!("blocked by route blackhole {ip3}/32 proto static")),
        "{plan}"
    );
    // Apply wires pod2 and reports the conflict (not converged: exit 1).
    let out = n.headcni(&["apply"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.lab.ping(&pod2, "100.64.0.5"), "pod2 works");
    assert!(
        n.lab.ip(&pod1, &["-o", "link"]).lines().count() == 1,
        "pod1 untouched: only lo"
    );
    assert!(
        n.node_routes()
            .contains(&format!("{ip1} via 203.0.113.1 dev eth0 proto static")),
        "foreign route kept"
    );
    assert!(
        n.node_routes().contains(&blackhole),
        "foreign blackhole kept"
    );
    assert_eq!(
        n.lab.ip(&pod3, &["-o", "link"]).lines().count(),
        1,
        "pod3 untouched"
    );

    // Once the operator removes them, the pods are wired.
    n.lab.ip(
        &n.node,
        &["route", "del", &format!("{ip1}/32"), "proto", "static"],
    );
    n.lab.ip(&n.node, &["route", "del", "blackhole", &ip3]);
    n.headcni_ok(&["apply"], 0);
    assert!(n.lab.ping(&pod1, "100.64.0.5"));
    assert!(n.lab.ping(&pod3, "100.64.0.5"));
}

#[test]
fn missing_tailnet_interface_waits_then_recovers() {
    let mut n = Node::new();
    let (pod1, _) = n.add_pod("pod1");
    n.lab.ip(
        &n.node,
        &["link", "set", "tailscale0", "netns", &n.gw.clone()],
    );
    let plan = n.headcni_ok(&["plan"], 0);
    assert!(plan.contains("waits for link tailscale0"), "{plan}");
    // Waiting is not converged: apply does all it can and says so.
    n.headcni_ok(&["apply"], 1);
    assert!(
        n.lab.ping(&pod1, "203.0.113.1"),
        "pods keep their other routes"
    );
    n.lab.ip(
        &n.gw,
        &["link", "set", "tailscale0", "netns", &n.node.clone()],
    );
    n.lab.ip(
        &n.node,
        &["addr", "add", "100.64.0.1/32", "dev", "tailscale0"],
    );
    n.lab.ip(&n.node, &["link", "set", "tailscale0", "up"]);
    n.headcni_ok(&["apply"], 0);
    assert!(n.lab.ping(&pod1, "100.64.0.5"));
}

#[test]
fn invalid_spec_changes_nothing_and_names_line_and_field() {
    let mut n = Node::new();
    let (pod1, _) = n.add_pod("pod1");
    n.headcni_ok(&["apply"], 0);
    let before = n.node_routes();
    n.write_spec("\n[[route]]\ndestination = \"198.51.100.0/33\"\nvia = \"203.0.113.1\"\n");
    let out = n.headcni(&["apply"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("headcni.toml:12:") && err.contains("route[0].destination"),
        "{err}"
    );
    assert_eq!(n.node_routes(), before, "nothing changed");
    assert!(n.lab.ping(&pod1, "100.64.0.5"));
}

#[test]
fn lab_cleans_up_after_a_failing_test() {
    let name;
    {
        let mut lab = Lab::new();
        name = lab.netns("gone");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("a test failing half way");
        }));
        assert!(result.is_err());
    }
    let list = common::sh(&["ip", "netns", "list"]);
    assert!(!list.contains(&name), "{list}");
}

/// A pass for one pod (the CNI's) does not read the firewall, so it must
/// neither plan it nor, verifying, count it as missing.
#[test]
fn a_pod_pass_leaves_the_unread_firewall_alone() {
    let mut n = Node::new();
    let (pod, ip) = n.add_pod("pod1");
    let spec = headcni::spec::Spec::load(&n.spec).expect("spec");
    assert!(
        headcni::spec::compile(&spec, &[]).nft.is_some(),
        "a firewall is desired"
    );
    let intent = headcni::spec::PodIntent {
        ip: Some(ip.parse().expect("ip")),
        ..headcni::spec::PodIntent::new(&pod, "eth0", common::Lab::ns_path(&pod))
    };
    let key = intent.key();
    let applied = common::in_ns(&n.node, move || {
        let intents = vec![intent];
        headcni::engine::apply(
            &spec,
            &|| Ok(intents.clone().into()),
            &headcni::engine::PodScope::one(key),
        )
        .expect("pass")
        .remaining
    })
    .join()
    .expect("pass thread");
    assert!(
        applied.is_empty(),
        "{}",
        headcni::report::text::plan(&applied, false)
    );
    assert!(
        n.in_node(&["nft", "list", "tables"]).is_empty(),
        "the pod pass made no table (apply and the daemon do)"
    );
    assert!(n.lab.ping(&pod, "100.64.0.5"), "the pod is wired");
}

/// Past a few dozen pods their namespaces are observed by several threads;
/// the plan must be the same as one thread's (converged means empty).
#[test]
fn many_pods_converge_with_their_namespaces_observed_in_parallel() {
    let mut n = Node::new();
    let pods: Vec<(String, String)> = (0..40).map(|i| n.add_pod(&format!("m{i}"))).collect();
    n.headcni_ok(&["apply"], 0);
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    // Drift inside one pod late in the list is found and repaired.
    let (last, _) = pods.last().expect("pods");
    n.lab.ip(last, &["route", "del", "default"]);
    let plan = n.headcni_ok(&["plan", "--detailed-exitcode"], 2);
    assert!(
        plan.contains("+ route default via 10.244.0.1 dev eth0"),
        "{plan}"
    );
    n.headcni_ok(&["apply"], 0);
    assert!(
        n.lab.ping(last, &pods[0].1),
        "the last pod reaches the first"
    );
}
