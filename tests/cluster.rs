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
        lab.ip(
            &a,
            &[
                "link",
                "add",
                "tailscale0",
                "type",
                "veth",
                "peer",
                "name",
                "tailscale0",
                "netns",
                &b,
            ],
        );
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
        let call = CniCall {
            command: "ADD",
            container_id: Some(&ns),
            netns: path.to_str(),
            ifname: Some("eth0"),
        };
        let out = common::run_plugin(
            &self.nodes[i],
            common::headcni_bin(),
            &call,
            &conf.to_string(),
        );
        assert_eq!(out.code, 0, "{}", out.stdout);
        let ip = out.json["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        (ns, ip)
    }

    fn headcni(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.lab.headcni(&self.nodes[i], &self.specs[i], args)
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
