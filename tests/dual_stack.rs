//! IPv6 end to end over the WireGuard tailnet lab: a pod reaches a tailnet
//! peer by its fd7a:115c:a1e0:: address and back, TCP crosses the 1280-byte
//! tailnet, and a stand-in IPv6 internet host (2001:db8::/32) behind the
//! node answers through the node's masquerade: the "internet" routes no
//! pod CIDR. Host mode with dual-stack and IPv6-only specs, daemon mode
//! dual-stack; pod to pod across two nodes is in tailnet_lab.rs.

mod common;
mod tailnet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run_plugin, sh, wait_until, CniCall, Lab, Procs};
use tailnet::{
    bulk, cni_add_result, daemon_node, host_spec, host_tailscaled, internet, keypair, uplink,
    uplink6,
};

const POD_CIDR: &str = "10.244.0.0/24";
const POD_CIDR6: &str = "fd00:10:244::/64";
const NODE_TAILNET: &str = "100.64.0.1";
const NODE_TAILNET6: &str = "fd7a:115c:a1e0::1";
const PEER_TAILNET: &str = "100.64.0.5";
const PEER_TAILNET6: &str = "fd7a:115c:a1e0::5";
const PEER_UPLINK: &str = "198.51.100.2";
/// The node's own IPv6 address on "the internet".
const NODE_UPLINK6: &str = "2001:db8:1::2";
/// A host on "the internet", in a namespace of its own behind it.
const WEB6: &str = "2001:db8:80::80";

/// The pod network's families.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    Dual,
    Ipv6Only,
}

impl Stack {
    /// The pod CIDR of the spec's `cidr` line ("" for none).
    fn cidr(self) -> &'static str {
        match self {
            Stack::Dual => POD_CIDR,
            Stack::Ipv6Only => "",
        }
    }
}

/// The lab around one node: "the internet" (both families), the node's
/// uplink to it (both), a tailnet peer's (IPv4: WireGuard's own packets),
/// and an IPv6 web host behind it.
struct Around {
    lab: Lab,
    node: String,
    peer: String,
    web: String,
    dir: PathBuf,
    node_key: PathBuf,
    node_pub: String,
    peer_key: PathBuf,
    peer_pub: String,
}

fn around() -> Around {
    let mut lab = Lab::new();
    let inet = internet(&mut lab, true);
    let (node, peer, web) = (lab.netns("node"), lab.netns("peer"), lab.netns("web"));
    uplink(&lab, &inet, &node, "203.0.113.2", "203.0.113.1");
    uplink6(&lab, &inet, &node, NODE_UPLINK6, "2001:db8:1::1");
    uplink(&lab, &inet, &peer, PEER_UPLINK, "198.51.100.1");
    lab.veth_up(&web, "eth0", &inet, "to-web");
    lab.ip(
        &web,
        &["addr", "add", &format!("{WEB6}/64"), "dev", "eth0", "nodad"],
    );
    lab.ip(
        &inet,
        &["addr", "add", "2001:db8:80::1/64", "dev", "to-web", "nodad"],
    );
    lab.ip(
        &web,
        &["-6", "route", "add", "default", "via", "2001:db8:80::1"],
    );
    let dir = lab.dir.path().to_path_buf();
    let (node_key, node_pub) = keypair(&dir, "node");
    let (peer_key, peer_pub) = keypair(&dir, "peer");
    Around {
        lab,
        node,
        peer,
        web,
        dir,
        node_key,
        node_pub,
        peer_key,
        peer_pub,
    }
}

impl Around {
    /// The peer's stand-in tailscaled: it approved the node's tailnet
    /// addresses and its pod CIDRs of `stack`, nothing else.
    fn start_peer(&self, stack: Stack, procs: &mut Procs) {
        let routes = match stack {
            Stack::Dual => format!("{POD_CIDR},{POD_CIDR6}"),
            Stack::Ipv6Only => POD_CIDR6.to_string(),
        };
        host_tailscaled(
            &self.dir.join("peer"),
            &self.peer,
            &format!(
                "address {PEER_TAILNET}\naddress {PEER_TAILNET6}\nprivate-key-file {}\npeer {} allowed {NODE_TAILNET}/32,{NODE_TAILNET6}/128 routes {routes}\n",
                self.peer_key.display(),
                self.node_pub
            ),
            procs,
        );
    }

    /// The node's WireGuard lines: its addresses and the peer.
    fn node_wg(&self) -> String {
        format!(
            "address {NODE_TAILNET}\naddress {NODE_TAILNET6}\nprivate-key-file {}\npeer {} endpoint {PEER_UPLINK}:41641 allowed {PEER_TAILNET}/32,{PEER_TAILNET6}/128\n",
            self.node_key.display(),
            self.peer_pub
        )
    }

    fn sysctl(&self, key: &str) -> String {
        sh(&["ip", "netns", "exec", &self.node, "sysctl", "-n", key])
            .trim()
            .to_string()
    }
}

/// The ADD result says what the pod got: an address per family, each with
/// its gateway (IPv6's the link-local one), and a default route per family.
fn check_result(result: &serde_json::Value, stack: Stack) -> Vec<String> {
    let ips = result["ips"].as_array().expect("ips");
    let routes = result["routes"].as_array().expect("routes");
    let families = match stack {
        Stack::Dual => vec![
            ("/32", "10.244.0.1", "0.0.0.0/0"),
            ("/128", "fe80::1", "::/0"),
        ],
        Stack::Ipv6Only => vec![("/128", "fe80::1", "::/0")],
    };
    assert_eq!(ips.len(), families.len(), "{result}");
    assert_eq!(routes.len(), families.len(), "{result}");
    families
        .iter()
        .zip(ips.iter().zip(routes))
        .map(|((prefix, gateway, default), (ip, route))| {
            let address = ip["address"].as_str().expect("address");
            assert!(address.ends_with(prefix), "{result}");
            assert_eq!(ip["gateway"], *gateway, "{result}");
            assert_eq!(route["dst"], *default, "{result}");
            assert_eq!(route["gw"], *gateway, "{result}");
            address.trim_end_matches(prefix).to_string()
        })
        .collect()
}

/// What a pod of `stack` reaches: the peer's IPv6 tailnet address and back
/// (ping, and 4 MB of TCP each way through the 1280-byte tailnet, each side
/// seeing the other's own address), the peer's IPv4 one too when dual, and
/// the IPv6 web host with the node's address.
fn pod_reaches_everything(around: &Around, pod: &str, ips: &[String], stack: Stack) {
    let lab = &around.lab;
    let ip6 = ips.last().expect("an IPv6 address");
    wait_until(
        Duration::from_secs(20),
        "pod -> peer's fd7a:115c:a1e0:: address over WireGuard",
        || lab.ping(pod, PEER_TAILNET6),
    );
    assert!(
        lab.ping(&around.peer, ip6),
        "the peer reaches the pod by its IPv6 address"
    );
    let seen = bulk(pod, &around.peer, PEER_TAILNET6, 7401, 4 << 20);
    assert_eq!(
        &seen.ip().to_string(),
        ip6,
        "the peer sees the pod's own IPv6 address"
    );
    let seen = bulk(&around.peer, pod, ip6, 7402, 4 << 20);
    assert_eq!(seen.ip().to_string(), PEER_TAILNET6);
    if stack == Stack::Dual {
        assert!(lab.ping(pod, PEER_TAILNET), "IPv4 beside it");
        let seen = bulk(pod, &around.peer, PEER_TAILNET, 7403, 1 << 20);
        assert_eq!(seen.ip().to_string(), ips[0]);
    }
    // The internet routes no pod CIDR: only the node's masquerade gets the
    // answer back.
    let seen = bulk(pod, &around.web, WEB6, 7404, 1 << 20);
    assert_eq!(
        seen.ip().to_string(),
        NODE_UPLINK6,
        "masqueraded to the node's address"
    );
    // Forwarding is on, and the uplink still takes router advertisements.
    assert_eq!(around.sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(around.sysctl("net.ipv6.conf.eth0.accept_ra"), "2");
}

/// Host mode, dual-stack and IPv6-only: the host's tailscaled has both
/// tailnet addresses; the peer approved the node's pod CIDRs.
#[test]
fn host_mode_pods_reach_the_tailnet_and_the_internet_over_ipv6() {
    for stack in [Stack::Dual, Stack::Ipv6Only] {
        let mut around = around();
        let mut procs = Procs(Vec::new());
        around.start_peer(stack, &mut procs);
        host_tailscaled(
            &around.dir.join("node"),
            &around.node,
            &around.node_wg(),
            &mut procs,
        );
        let spec = host_spec(
            &around.dir,
            stack.cidr(),
            &format!("cidr6 = \"{POD_CIDR6}\""),
        );
        let node = around.node.clone();
        let (pod, result) = cni_add_result(&mut around.lab, &node, &spec, "pod");
        let ips = check_result(&result, stack);
        // The pod's side, as the result says.
        let inside = around.lab.ip(&pod, &["-6", "route", "show", "default"]);
        assert!(inside.contains("via fe80::1 dev eth0"), "{inside}");
        common::apply_in(&node, &spec);
        pod_reaches_everything(&around, &pod, &ips, stack);
        host_veth_has_headcnis_ipv6_only(&around.lab, &node, &result);
        let table = sh(&[
            "ip", "netns", "exec", &node, "nft", "list", "table", "inet", "headcni",
        ]);
        assert!(
            table.contains("meta nfproto ipv6") && table.contains("maxseg size set 1220"),
            "IPv6's clamp: {table}"
        );
        assert_eq!(
            table.contains("ip saddr 10.244.0.0/24"),
            stack == Stack::Dual,
            "IPv4 rules only with IPv4 pods: {table}"
        );
        common::wait_converged(&node, &spec);
        check_then_delete(&around, &spec, &pod, &result);
        drop(procs);
    }
}

/// The host veth carries headcni's fe80::1 and nothing of the kernel's:
/// no link-local address of its own (addr_gen_mode none), no fe80::/64
/// route (the gateway address makes no prefix route), so the node's IPv6
/// dumps grow by what headcni owns alone.
fn host_veth_has_headcnis_ipv6_only(lab: &Lab, node: &str, result: &serde_json::Value) {
    let host = result["interfaces"][0]["name"].as_str().expect("host veth");
    let addresses = lab.ip(node, &["-6", "-o", "addr", "show", "dev", host]);
    let link_locals: Vec<&str> = addresses
        .split_whitespace()
        .filter(|w| w.starts_with("fe80:"))
        .collect();
    assert_eq!(link_locals, ["fe80::1/64"], "{addresses}");
    let routes = lab.ip(node, &["-6", "route", "show", "dev", host]);
    assert!(!routes.contains("fe80::/64"), "{routes}");
}

/// CHECK with the ADD's result agrees; DEL leaves no owned address or
/// route of either family, and the store holds nothing.
fn check_then_delete(around: &Around, spec: &Path, pod: &str, result: &serde_json::Value) {
    let path = Lab::ns_path(pod);
    let conf = |prev: Option<&serde_json::Value>| {
        let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "headcni", "type": "headcni", "spec": spec});
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf.to_string()
    };
    let call = |command| CniCall {
        command,
        ..CniCall::add(pod, &path)
    };
    let out = run_plugin(
        &around.node,
        common::headcni_bin(),
        &call("CHECK"),
        &conf(Some(result)),
    );
    assert_eq!(out.code, 0, "CHECK: {}\n{}", out.stdout, out.stderr);
    // A prevResult missing the IPv6 address is refused.
    let mut ipv4_only = result.clone();
    ipv4_only["ips"]
        .as_array_mut()
        .expect("ips")
        .retain(|ip| !ip["address"].as_str().unwrap_or_default().contains(':'));
    let out = run_plugin(
        &around.node,
        common::headcni_bin(),
        &call("CHECK"),
        &conf(Some(&ipv4_only)),
    );
    assert_ne!(
        out.code, 0,
        "CHECK without the IPv6 address: {}",
        out.stdout
    );
    let out = run_plugin(
        &around.node,
        common::headcni_bin(),
        &call("DEL"),
        &conf(None),
    );
    assert_eq!(out.code, 0, "DEL: {}\n{}", out.stdout, out.stderr);
    let owned = sh(&[
        "ip",
        "-n",
        &around.node,
        "-6",
        "route",
        "show",
        "proto",
        "headcni",
    ]);
    assert!(!owned.contains("dev hc"), "no pod route left: {owned}");
    let links = sh(&["ip", "-n", &around.node, "link", "show"]);
    assert!(!links.contains(": hc"), "no host veth left: {links}");
}

/// Daemon mode, dual-stack: the daemon's tailscaled (in its namespace) has
/// both tailnet addresses; pod IPv6 traffic crosses the veth to that
/// namespace between link-local addresses.
#[test]
fn daemon_mode_pods_reach_the_tailnet_and_the_internet_over_ipv6() {
    let mut around = around();
    let mut procs = Procs(Vec::new());
    around.start_peer(Stack::Dual, &mut procs);
    let ts = around.lab.netns("ts");
    let wg = around.node_wg();
    let spec = daemon_node(
        &around.dir.join("node"),
        &around.node,
        &ts,
        (POD_CIDR, &format!("cidr6 = \"{POD_CIDR6}\"")),
        "",
        &wg,
        &mut procs,
    );
    let node = around.node.clone();
    let (pod, result) = cni_add_result(&mut around.lab, &node, &spec, "pod");
    let ips = check_result(&result, Stack::Dual);
    pod_reaches_everything(&around, &pod, &ips, Stack::Dual);
    host_veth_has_headcnis_ipv6_only(&around.lab, &node, &result);
    // IPv6 drift is a kernel event the daemon acts on at once (its resync
    // is 30 s away): a deleted host route and gateway address come back.
    let host_link = result["interfaces"][0]["name"].as_str().expect("host link");
    let host_route = format!("{}/128", ips[1]);
    around.lab.ip(&node, &["-6", "route", "del", &host_route]);
    around.lab.ip(
        &node,
        &["-6", "addr", "del", "fe80::1/64", "dev", host_link],
    );
    wait_until(
        Duration::from_secs(10),
        "the daemon to restore the IPv6 host route and gateway",
        || {
            let routes = around
                .lab
                .ip(&node, &["-6", "route", "show", "proto", "headcni"]);
            let addresses = around
                .lab
                .ip(&node, &["-6", "addr", "show", "dev", host_link]);
            routes.contains(&ips[1]) && addresses.contains("fe80::1/64")
        },
    );
    assert!(
        around.lab.ping(&pod, PEER_TAILNET6),
        "and traffic with them"
    );
    host_veth_has_headcnis_ipv6_only(&around.lab, &node, &result);
    let up = std::fs::read_to_string(around.dir.join("node/state/tailscaled.sock.up.args"))
        .unwrap_or_default();
    assert!(
        up.lines()
            .any(|l| l == format!("--advertise-routes={POD_CIDR},{POD_CIDR6}")),
        "both pod CIDRs advertised: {up}"
    );
    common::wait_converged(&node, &spec);
    drop(procs);
}

/// A node's spec gains IPv6, then loses it again: a pod from before keeps
/// its IPv4 address only, a new one gets both; once no pod holds an IPv6
/// address and the spec drops `cidr6`, headcni's IPv6 routes go too (found
/// by the route dump the kernel filters to headcni's protocol).
#[test]
fn a_spec_gains_ipv6_and_loses_it_again() {
    let mut n = common::Node::new();
    let (spec_path, state) = (n.spec.clone(), n.lab.dir.path().join("state"));
    let spec = |ipv6: bool| {
        let cidr6 = if ipv6 {
            format!("cidr6 = \"{POD_CIDR6}\"\n")
        } else {
            String::new()
        };
        std::fs::write(
            &spec_path,
            format!(
                "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\ncidr = \"{POD_CIDR}\"\n{cidr6}\n[tailnet]\ninterface = \"tailscale0\"\n",
                state.display()
            ),
        )
        .unwrap();
    };
    let owned_ipv6_routes = |n: &common::Node| {
        n.lab
            .ip(&n.node, &["-6", "route", "show", "proto", "headcni"])
    };
    let (old, _) = n.add_pod("old");
    n.headcni_ok(&["apply"], 0);
    assert_eq!(owned_ipv6_routes(&n), "");
    spec(true);
    n.headcni_ok(&["apply"], 0);
    let (new, _) = n.add_pod("new");
    // Someone else's route to the new pod's IPv6 address is in the way: a
    // conflict, shown and left alone, until it is gone.
    let listed: serde_json::Value =
        serde_json::from_str(&n.headcni_ok(&["pod", "list", "--format", "json"], 0)).unwrap();
    let new_ip6 = listed
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["ip6"].as_str())
        .expect("the new pod's IPv6 address")
        .to_string();
    let foreign = format!("{new_ip6}/128");
    n.lab.ip(
        &n.node,
        &[
            "-6", "route", "add", &foreign, "dev", "eth0", "proto", "static",
        ],
    );
    let plan = n.headcni_ok(&["plan"], 0);
    assert!(
        plan.contains(&format!(
            "blocked by route {new_ip6}/128 dev eth0 proto static"
        )),
        "{plan}"
    );
    n.headcni_ok(&["apply"], 1);
    let kept = n.lab.ip(&n.node, &["-6", "route", "show", &foreign]);
    assert!(
        kept.contains("proto static"),
        "the foreign route stays: {kept}"
    );
    n.lab.ip(&n.node, &["-6", "route", "del", &foreign]);
    n.headcni_ok(&["apply"], 0);
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    let global6 = |pod: &str| n.lab.ip(pod, &["-6", "addr", "show", "scope", "global"]);
    assert_eq!(global6(&old), "", "the pod from before has no IPv6 address");
    assert!(global6(&new).contains("fd00:10:244::"), "{}", global6(&new));
    assert!(owned_ipv6_routes(&n).contains("fd7a:115c:a1e0::/48"));
    // IPv6 dropped while a pod holds an IPv6 address: refused, nothing changed.
    spec(false);
    let out = n.headcni(&["apply"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cidr6"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(global6(&new).contains("fd00:10:244::"));
    // Once no pod holds one (the pod from before stays), the IPv6 routes go.
    spec(true);
    n.headcni_ok(&["pod", "del", "--id", &new], 0);
    n.headcni_ok(&["apply"], 0);
    spec(false);
    n.headcni_ok(&["apply"], 0);
    assert_eq!(owned_ipv6_routes(&n), "", "no IPv6 route of headcni's left");
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    assert!(
        n.lab.ping(&old, "10.244.0.1"),
        "the pod from before is still wired"
    );
}
