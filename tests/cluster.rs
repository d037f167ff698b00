//! Cluster traffic end to end: pods on two nodes over a stand-in tailnet,
//! internet egress with masquerade, MSS clamping, drift of the firewall.

mod common;

use common::{sh, tcp_roundtrip, CniCall, Lab};
use serde_json::json;

/// Two nodes with pod CIDRs 10.244.0.0/24 and 10.244.1.0/24 in cluster
/// 10.244.0.0/16, their tailscale0s joined by a veth (proxy ARP stands in
/// for a TUN's layer-3 behaviour).
struct Cluster {
    lab: Lab,
    nodes: [String; 2],
    specs: [std::path::PathBuf; 2],
}

impl Cluster {
    fn new(extra: &str) -> Cluster {
        let mut lab = Lab::new();
        let a = lab.netns("a");
        let b = lab.netns("b");
        lab.veth_pair(&a, "tailscale0", &b, "tailscale0");
        for (ns, ip) in [(&a, "100.64.0.1/32"), (&b, "100.64.0.2/32")] {
            lab.ip(ns, &["addr", "add", ip, "dev", "tailscale0"]);
            lab.ip(ns, &["link", "set", "tailscale0", "up"]);
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.tailscale0.proxy_arp=1",
            ]);
        }
        let mut specs = Vec::new();
        for (i, _) in [&a, &b].iter().enumerate() {
            let spec = lab.dir.path().join(format!("node{i}.toml"));
            std::fs::write(
                &spec,
                format!(
                    "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.244.{i}.0/24\"\ncluster_cidr = \"10.244.0.0/16\"\n{extra}",
                    lab.dir.path().join(format!("state{i}")).display()
                ),
            )
            .unwrap();
            specs.push(spec);
        }
        Cluster {
            lab,
            nodes: [a, b],
            specs: [specs[0].clone(), specs[1].clone()],
        }
    }

    /// CNI ADD of a fresh pod namespace on node `i`; returns (netns, ip).
    fn add_pod(&mut self, i: usize, name: &str) -> (String, String) {
        let ns = self.lab.netns(name);
        let path = Lab::ns_path(&ns);
        let conf = json!({ "cniVersion": "1.1.0", "name": "headcni", "type": "headcni", "spec": self.specs[i] });
        let call = CniCall::add(&ns, &path);
        let out = common::run_plugin(
            &self.nodes[i],
            common::headcni_bin(),
            &call,
            &conf.to_string(),
        );
        assert_eq!(out.code, 0, "{}", out.stdout);
        let ip = common::result_ips(&out.json)[0].clone();
        (ns, ip)
    }

    fn headcni(&self, i: usize, args: &[&str]) -> std::process::Output {
        common::headcni_in(&self.nodes[i], &self.specs[i], args)
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_the_tailnet() {
    let mut c = Cluster::new("");
    for i in 0..2 {
        assert!(c.headcni(i, &["apply"]).status.success());
    }
    let (pa, ipa) = c.add_pod(0, "pa");
    let (pb, ipb) = c.add_pod(1, "pb");
    assert!(c.lab.ping(&pa, &ipb), "a -> b");
    assert!(c.lab.ping(&pb, &ipa), "b -> a");
    let seen = tcp_roundtrip(&pa, &pb, &ipb, 8080);
    assert_eq!(
        seen.ip().to_string(),
        ipa,
        "pod-to-pod keeps the pod's address"
    );
    let seen = tcp_roundtrip(&pb, &pa, &ipa, 8081);
    assert_eq!(seen.ip().to_string(), ipb);
}

fn nft_json(ns: &str) -> serde_json::Value {
    serde_json::from_str(&sh(&[
        "ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "headcni",
    ]))
    .unwrap()
}

/// Packets counted by the rules of `chain` in headcni's table.
fn counted(ns: &str, chain: &str) -> u64 {
    nft_json(ns)["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["chain"] == chain)
        .flat_map(|r| r["expr"].as_array().unwrap().clone())
        .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        .sum()
}

#[test]
fn egress_is_masqueraded_and_mss_clamped_and_the_firewall_is_reconciled() {
    let mut n = common::Node::new();
    // The gateway gets no route back to the pods; behind it an "internet" host.
    n.lab.ip(&n.gw, &["route", "del", common::POD_CIDR]);
    let inet = n.lab.netns("inet");
    n.lab.ip(
        &n.gw,
        &[
            "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", &inet,
        ],
    );
    n.lab
        .ip(&n.gw, &["addr", "add", "198.51.100.1/24", "dev", "out0"]);
    n.lab.ip(&n.gw, &["link", "set", "out0", "up"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &n.gw,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    n.lab
        .ip(&inet, &["addr", "add", "198.51.100.10/24", "dev", "eth0"]);
    n.lab.ip(&inet, &["link", "set", "eth0", "up"]);
    n.lab
        .ip(&inet, &["route", "add", "default", "via", "198.51.100.1"]);
    // A foreign table with masquerade rules of its own must survive everything.
    n.in_node(&["nft", "add table ip foreign; add chain ip foreign post { type nat hook postrouting priority 110; }; add rule ip foreign post oifname \"nothing0\" masquerade"]);
    let node = n.node.clone();
    let foreign = move || {
        sh(&[
            "ip", "netns", "exec", &node, "nft", "list", "table", "ip", "foreign",
        ])
    };
    let foreign_before = foreign();

    let (pod, _ip) = n.add_pod("pod1");
    n.headcni_ok(&["apply"], 0);
    assert!(
        n.lab.ping(&pod, "198.51.100.10"),
        "a pod reaches the internet host"
    );
    let seen = tcp_roundtrip(&pod, &inet, "198.51.100.10", 8443);
    assert_eq!(
        seen.ip().to_string(),
        "203.0.113.2",
        "the internet host sees the node's address"
    );

    // MSS clamping: a pod's SYN towards the tailnet passes the clamp rule.
    let before = counted(&n.node, "forward");
    tcp_roundtrip(&pod, &n.peer, "100.64.0.5", 8444);
    assert!(
        counted(&n.node, "forward") > before,
        "the clamp rule saw the SYN"
    );
    assert!(
        n.lab.ping(&pod, "100.64.0.5"),
        "tailnet traffic is not masqueraded and still works"
    );

    // Drift: the table flushed, forwarding off: the plan names both, apply repairs.
    n.in_node(&["nft", "flush", "table", "inet", "headcni"]);
    n.in_node(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let plan = n.headcni_ok(&["plan", "--detailed-exitcode"], 2);
    assert!(
        plan.contains("~ nft table inet headcni") && plan.contains("+ rule in postrouting"),
        "{plan}"
    );
    assert!(
        plan.contains("~ sysctl net.ipv4.ip_forward 0 -> 1"),
        "{plan}"
    );
    n.headcni_ok(&["apply"], 0);
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    assert!(n.lab.ping(&pod, "198.51.100.10"));
    assert_eq!(foreign(), foreign_before, "the foreign table is untouched");
}

#[test]
fn masquerade_all_lets_a_peer_without_a_pod_route_reply() {
    let mut n = common::Node::new();
    n.lab.ip(&n.peer, &["route", "del", common::POD_CIDR]);
    let (pod, _) = n.add_pod("pod1");
    n.headcni_ok(&["apply"], 0);
    assert!(
        !n.lab.ping(&pod, "100.64.0.5"),
        "without SNAT the peer cannot answer"
    );
    n.write_spec("");
    let text = std::fs::read_to_string(&n.spec)
        .unwrap()
        .replace("[pod_network]\n", "[pod_network]\nmasquerade = \"all\"\n");
    std::fs::write(&n.spec, text).unwrap();
    let plan = n.headcni_ok(&["plan"], 0);
    assert!(plan.contains("+ rule in postrouting: ip saddr 10.244.0.0/24 oifname \"tailscale0\" counter masquerade"), "{plan}");
    n.headcni_ok(&["apply"], 0);
    assert!(
        n.lab.ping(&pod, "100.64.0.5"),
        "with SNAT to the node's tailnet address it can"
    );
    let seen = tcp_roundtrip(&pod, &n.peer, "100.64.0.5", 8445);
    assert_eq!(
        seen.ip().to_string(),
        "100.64.0.1",
        "the peer sees the node's tailnet address"
    );
}

/// The nfnetlink probe that spares most passes an `nft` process: it must
/// see headcni's `inet` table and nothing else.
#[test]
fn firewall_probe_sees_only_headcnis_inet_table() {
    let mut lab = Lab::new();
    let ns = lab.netns("probe");
    let probe = |ns: &str| {
        common::in_ns(ns, || {
            headcni::kernel::netlink::nfnetlink::inet_table_exists("headcni")
        })
        .join()
        .expect("probe thread")
        .expect("probe")
    };
    assert!(!probe(&ns), "an empty namespace has no table");
    sh(&[
        "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "other",
    ]);
    sh(&[
        "ip", "netns", "exec", &ns, "nft", "add", "table", "ip", "headcni",
    ]);
    assert!(!probe(&ns), "another name, or another family, is not ours");
    sh(&[
        "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "headcni",
    ]);
    assert!(probe(&ns));
}

/// Listing the table takes an `nft` process: while the namespace's ruleset
/// stays as it was, the last listing stands; any change is seen.
#[test]
fn firewall_listing_is_reused_until_the_ruleset_changes() {
    let mut lab = Lab::new();
    let a = lab.netns("fwa");
    let b = lab.netns("fwb");
    let nft = |ns: &str, args: &str| {
        let mut full = vec!["ip", "netns", "exec", ns, "nft"];
        full.extend(args.split(' '));
        sh(&full);
    };
    for ns in [&a, &b] {
        nft(ns, "add table inet headcni");
        nft(
            ns,
            "add chain inet headcni post { type nat hook postrouting priority 100 ; }",
        );
    }
    // One caller's listings, as the daemon keeps them across passes.
    let listings = std::sync::Arc::new(headcni::kernel::nft::Listings::default());
    let observe = |ns: &str| {
        let listings = listings.clone();
        common::in_ns(ns, move || {
            let table = headcni::kernel::nft::observe(&listings)
                .expect("observe")
                .expect("table");
            (table, listings.count())
        })
        .join()
        .expect("observe thread")
    };
    let (first, listed) = observe(&a);
    assert_eq!(
        observe(&a),
        (first.clone(), listed),
        "unchanged: not listed again"
    );

    nft(&a, "add rule inet headcni post oifname eth8 masquerade");
    let (changed, listed_a) = observe(&a);
    assert_eq!(listed_a, listed + 1, "a changed ruleset is listed");
    assert_eq!(changed.rules.len(), 1);
    assert_ne!(changed, first);

    // The same ruleset generation in another namespace is another ruleset.
    nft(&b, "add rule inet headcni post oifname eth9 masquerade");
    let (other, listed_b) = observe(&b);
    assert_eq!(listed_b, listed_a + 1, "another namespace is listed");
    assert_ne!(other, changed);
}

/// Pod namespaces' forwarding is asked over netlink (RTM_GETNETCONF), not
/// read from /proc/sys: it must say what the sysctl says.
#[test]
fn forwarding_asked_over_netlink_matches_the_sysctl() {
    let mut lab = Lab::new();
    let ns = lab.netns("fwd");
    let ask = |ns: &str, ipv6: bool| {
        common::in_ns(ns, move || {
            headcni::kernel::netlink::Netlink::open_current()
                .expect("netlink")
                .forwarding(ipv6)
                .expect("netconf")
        })
        .join()
        .expect("thread")
    };
    for (key, ipv6) in [
        ("net.ipv4.ip_forward", false),
        ("net.ipv6.conf.all.forwarding", true),
    ] {
        for value in ["1", "0", "1"] {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ]);
            assert_eq!(ask(&ns, ipv6), Some(value == "1"), "{key}={value}");
        }
    }
}
