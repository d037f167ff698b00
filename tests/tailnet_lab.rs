//! Daemon mode over a real WireGuard data plane (wireguard-go, the engine
//! tailscaled embeds). The lab: an "internet" namespace that routes no pod
//! CIDR joins a node's uplink and a tailnet peer's; the node's tailscaled
//! (the stand-in in WireGuard mode) runs in headcni's tailnet namespace and
//! reaches the peer only through the way out headcni gives that namespace;
//! the peer accepts only the sources it approved (the node's tailnet
//! address and pod CIDR), as tailscaled's cryptokey routing does.

mod common;
mod tailnet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{sh, wait_until, Lab, Procs};
use tailnet::{
    bulk, cni_add, cni_add_all, daemon_node, host_spec, host_tailscaled, keypair, uplink,
};

const POD_CIDR: &str = "10.244.0.0/24";
const NODE_TAILNET: &str = "100.64.0.1";
const PEER_TAILNET: &str = "100.64.0.5";
const PEER_UPLINK: &str = "198.51.100.2";

struct TailnetLab {
    /// First, so its processes stop before the namespaces go.
    _procs: Procs,
    lab: Lab,
    node: String,
    peer: String,
    ts: String,
    spec: PathBuf,
}

impl TailnetLab {
    /// `approve`: whether the peer approved the node's pod CIDR. The
    /// node's daemon is started.
    fn new(approve: bool) -> TailnetLab {
        Self::prepared(approve, |_, _, _, _| String::new())
    }

    /// As `new`, with `prepare(lab, inet, node, dir)` run before the node's
    /// daemon starts; it returns more `[daemon]` lines for the spec.
    fn prepared(
        approve: bool,
        prepare: impl FnOnce(&Lab, &str, &str, &Path) -> String,
    ) -> TailnetLab {
        let mut lab = Lab::new();
        let inet = lab.netns("inet");
        let node = lab.netns("node");
        let peer = lab.netns("peer");
        let ts = lab.netns("ts");
        common::sh(&[
            "ip",
            "netns",
            "exec",
            &inet,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        uplink(&lab, &inet, &node, "203.0.113.2", "203.0.113.1");
        uplink(&lab, &inet, &peer, PEER_UPLINK, "198.51.100.1");

        let dir = lab.dir.path().to_path_buf();
        let (node_key, node_pub) = keypair(&dir, "node");
        let (peer_key, peer_pub) = keypair(&dir, "peer");
        // The peer: approves the node's tailnet address and, if asked, its pod CIDR.
        let routes = if approve {
            format!(" routes {POD_CIDR}")
        } else {
            String::new()
        };
        let peer_conf = dir.join("peer.wg");
        std::fs::write(
            &peer_conf,
            format!(
                "address {PEER_TAILNET}\nprivate-key-file {}\npeer {node_pub} allowed {NODE_TAILNET}/32{routes}\n",
                peer_key.display()
            ),
        )
        .unwrap();
        let peer_proc = Command::new("ip")
            .args(["netns", "exec", &peer])
            .arg(common::standin_bin())
            .arg("--tun=wg0")
            .arg("--port=41641")
            .arg(format!("--socket={}", dir.join("peer.sock").display()))
            .arg(format!("--wg-config={}", peer_conf.display()))
            .arg("--peer")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut procs = Procs(vec![peer_proc]);
        wait_until(Duration::from_secs(10), "the peer's wg0", || {
            Command::new("ip")
                .args(["-n", &peer, "route", "show", "dev", "wg0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(NODE_TAILNET))
        });
        // The node's tailscaled: the peer by its public endpoint.
        let wg = format!(
            "address {NODE_TAILNET}\nprivate-key-file {}\npeer {peer_pub} endpoint {PEER_UPLINK}:41641 allowed {PEER_TAILNET}/32\n",
            node_key.display()
        );
        let daemon_extra = prepare(&lab, &inet, &node, &dir);
        let spec = daemon_node(
            &dir,
            &node,
            &ts,
            (POD_CIDR, ""),
            &daemon_extra,
            &wg,
            &mut procs,
        );
        TailnetLab {
            _procs: procs,
            lab,
            node,
            peer,
            ts,
            spec,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.lab.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn add_pod(&mut self, name: &str) -> (String, String) {
        cni_add(&mut self.lab, &self.node, &self.spec, name)
    }

    /// tailscaled's pid, as the daemon reports it.
    fn tailscaled_pid(&self) -> Option<i32> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node,
                common::headcni_bin(),
                "status",
                "--format",
                "json",
            ])
            .env("HEADCNI_SPEC", &self.spec)
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["tailscaled"]["pid"].as_i64().map(|p| p as i32)
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        self.lab.ping(from, to)
    }
}

#[test]
fn daemon_mode_carries_pod_traffic_over_wireguard() {
    let mut t = TailnetLab::new(true);
    let (pod, ip) = t.add_pod("pod1");
    // Only through the tailnet namespace's way out can the stand-in's
    // handshake with the peer behind "the internet" complete.
    wait_until(
        Duration::from_secs(20),
        "pod -> tailnet peer over WireGuard",
        || t.ping(&pod, PEER_TAILNET),
    );
    assert!(
        t.ping(&t.peer, &ip),
        "the peer reaches the pod by its own address"
    );
    // 4 MB each way; each side sees the other's own address.
    let seen = bulk(&pod, &t.peer, PEER_TAILNET, 7001, 4 << 20);
    assert_eq!(
        seen.ip().to_string(),
        ip,
        "the peer sees the pod's own address"
    );
    let seen = bulk(&t.peer, &pod, &ip, 7002, 4 << 20);
    assert_eq!(seen.ip().to_string(), PEER_TAILNET);
    // The way out is headcni's: a default route in the tailnet namespace
    // and masquerading on the node.
    let ts_routes = t.lab.ip(&t.ts, &["route", "show", "default"]);
    assert!(ts_routes.contains("proto headcni"), "{ts_routes}");
    let rules = sh(&[
        "ip", "netns", "exec", &t.node, "nft", "list", "table", "inet", "headcni",
    ]);
    assert!(
        rules.contains("198.18.77.0/30") && rules.contains("masquerade"),
        "{rules}"
    );

    // tailscaled killed: the daemon restarts it and traffic flows again.
    let pid = t
        .tailscaled_pid()
        .unwrap_or_else(|| panic!("no tailscaled pid\n{}", t.log()));
    // SAFETY: killing the stand-in the daemon started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(
        Duration::from_secs(30),
        "traffic after tailscaled's restart",
        || t.ping(&pod, PEER_TAILNET),
    );
    let seen = bulk(&pod, &t.peer, PEER_TAILNET, 7003, 1 << 20);
    assert_eq!(seen.ip().to_string(), ip);
    common::wait_converged(&t.node, &t.spec);
}

/// A stand-in DNS server: answers every A question with 192.0.2.80.
const DNS_STANDIN: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(512)
    end = q.index(b"\0", 12) + 5
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x50"
    s.sendto(q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:end] + answer, peer)
"#;

/// Asks each nameserver of a resolv.conf for one name; prints what answered.
const DNS_ASK: &str = r#"
import socket, sys
servers = [l.split()[1] for l in open(sys.argv[1]) if l.startswith("nameserver")]
assert servers, "no nameserver"
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x09headscale\x07example\x04test\x00" + b"\x00\x01\x00\x01"
for server in servers:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    # A few tries: the stand-in server may still be starting (10 s at most).
    for attempt in range(10):
        s.sendto(q, (server, 53))
        try:
            r = s.recv(512)
            break
        except socket.timeout:
            if attempt == 9:
                raise
    assert r[:2] == b"\x12\x34" and r[-4:] == b"\xc0\x00\x02\x50", r
    print("answered", server)
"#;

#[test]
fn the_tailnet_namespace_resolves_through_the_stub_s_upstream_servers() {
    const UPSTREAM: &str = "198.51.100.53";
    let mut dns: Option<Child> = None;
    let t = TailnetLab::prepared(true, |lab, inet, node, dir| {
        // The node's resolv.conf names systemd-resolved's loopback stub
        // (`ip netns exec` binds /etc/netns/NODE/resolv.conf over it); the
        // stub's upstream server is "on the internet".
        let node_etc = Path::new("/etc/netns").join(node);
        std::fs::create_dir_all(&node_etc).unwrap();
        std::fs::write(
            node_etc.join("resolv.conf"),
            "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lab.test\n",
        )
        .unwrap();
        let upstream = dir.join("upstream-resolv.conf");
        std::fs::write(&upstream, format!("nameserver {UPSTREAM}\n")).unwrap();
        lab.ip(
            inet,
            &["addr", "add", &format!("{UPSTREAM}/32"), "dev", "lo"],
        );
        lab.ip(inet, &["link", "set", "lo", "up"]);
        dns = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    inet,
                    "python3",
                    "-c",
                    DNS_STANDIN,
                    UPSTREAM,
                ])
                .spawn()
                .unwrap(),
        );
        format!("dns_upstream = \"{}\"\n", upstream.display())
    });
    let _dns = Procs(dns.into_iter().collect());
    let written = Path::new("/etc/netns").join(&t.ts).join("resolv.conf");
    wait_until(
        Duration::from_secs(10),
        "the namespace's resolv.conf",
        || std::fs::read_to_string(&written).is_ok_and(|s| s.contains(UPSTREAM)),
    );
    let text = std::fs::read_to_string(&written).unwrap();
    assert!(!text.contains("127.0.0.53"), "{text}");
    assert!(text.contains("search lab.test"), "{text}");
    // The servers it names answer from inside the namespace (through its
    // way out: the default route to the node and the node's masquerade).
    let asked = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", &t.ts, "python3", "-c", DNS_ASK])
        .arg(&written)
        .output()
        .unwrap();
    assert!(
        asked.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&asked.stdout),
        String::from_utf8_lossy(&asked.stderr),
        t.log()
    );
    // `plan` shows the file as headcni's and in place.
    common::wait_converged(&t.node, &t.spec);
    let plan = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &t.node, common::headcni_bin(), "plan"])
            .env("HEADCNI_SPEC", &t.spec)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Drift in headcni's file is named line by line.
    let marked = text.replace(UPSTREAM, "203.0.113.99");
    std::fs::write(&written, &marked).unwrap();
    let drift = plan();
    assert!(
        drift.contains("~ file /etc/netns/")
            && drift.contains("- nameserver 203.0.113.99")
            && drift.contains(&format!("+ nameserver {UPSTREAM}")),
        "{drift}"
    );
    // A file without headcni's mark is someone else's: reported, not overwritten.
    std::fs::write(&written, "nameserver 203.0.113.99\n").unwrap();
    let foreign = plan();
    assert!(
        foreign.contains("! conflict: file /etc/netns/") && !foreign.contains("~ file"),
        "{foreign}"
    );
}

/// One daemon-mode node of the dual-stack cluster (10.244.0.0/16 and
/// fd00:10:244::/56): its pod CIDRs and tailnet addresses, IPv4 then IPv6.
#[allow(clippy::too_many_arguments)]
fn cluster_node(
    dir: &Path,
    node: &str,
    ts: &str,
    (pod_cidr, pod_cidr6): (&str, &str),
    (tailnet_ip, tailnet_ip6): (&str, &str),
    key: &Path,
    peer_line: &str,
    procs: &mut Procs,
) -> PathBuf {
    let wg = format!(
        "address {tailnet_ip}\naddress {tailnet_ip6}\nprivate-key-file {}\n{peer_line}\n",
        key.display()
    );
    let pod_extra = format!(
        "cluster_cidr = \"10.244.0.0/16\"\ncidr6 = \"{pod_cidr6}\"\ncluster_cidr6 = \"fd00:10:244::/56\""
    );
    daemon_node(dir, node, ts, (pod_cidr, &pod_extra), "", &wg, procs)
}

/// Two nodes on "the internet", A at 203.0.113.2 and B at 192.0.2.2, with
/// WireGuard key pairs (private key file, public key) for each.
struct TwoNodes {
    a: String,
    b: String,
    dir: PathBuf,
    key_a: PathBuf,
    pub_a: String,
    key_b: PathBuf,
    pub_b: String,
}

fn two_nodes(lab: &mut Lab) -> TwoNodes {
    let inet = lab.netns("inet");
    common::sh(&[
        "ip",
        "netns",
        "exec",
        &inet,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let (a, b) = (lab.netns("nodea"), lab.netns("nodeb"));
    uplink(lab, &inet, &a, "203.0.113.2", "203.0.113.1");
    uplink(lab, &inet, &b, "192.0.2.2", "192.0.2.1");
    let dir = lab.dir.path().to_path_buf();
    let (key_a, pub_a) = keypair(&dir, "a");
    let (key_b, pub_b) = keypair(&dir, "b");
    TwoNodes {
        a,
        b,
        dir,
        key_a,
        pub_a,
        key_b,
        pub_b,
    }
}

/// Two daemon-mode nodes of one dual-stack cluster, each behind its own
/// NAT (the node's masquerade), each tailscaled reaching the other through
/// "the internet": pods reach each other by their own addresses of both
/// families, which works only if each tailscaled accepts the other's pod
/// CIDRs (--accept-routes).
#[test]
fn two_daemon_mode_nodes_carry_pod_to_pod_traffic_of_both_families() {
    let mut lab = Lab::new();
    let TwoNodes {
        a,
        b,
        dir,
        key_a,
        pub_a,
        key_b,
        pub_b,
    } = two_nodes(&mut lab);
    let (ts_a, ts_b) = (lab.netns("tsa"), lab.netns("tsb"));
    let mut procs = Procs(Vec::new());
    // Each approved the other's tailnet addresses and pod CIDRs; the
    // daemon's tailscaled port is 41642 by default.
    let spec_a = cluster_node(
        &dir.join("a"),
        &a,
        &ts_a,
        ("10.244.0.0/24", "fd00:10:244:a::/64"),
        ("100.64.0.1", "fd7a:115c:a1e0::1"),
        &key_a,
        &format!(
            "peer {pub_b} endpoint 192.0.2.2:41642 allowed 100.64.0.2/32,fd7a:115c:a1e0::2/128 routes 10.244.1.0/24,fd00:10:244:b::/64"
        ),
        &mut procs,
    );
    let spec_b = cluster_node(
        &dir.join("b"),
        &b,
        &ts_b,
        ("10.244.1.0/24", "fd00:10:244:b::/64"),
        ("100.64.0.2", "fd7a:115c:a1e0::2"),
        &key_b,
        // B learns A's endpoint from A's handshake, which reaches B's
        // tailscaled only through B's forwarded port (no simultaneous open).
        &format!(
            "peer {pub_a} allowed 100.64.0.1/32,fd7a:115c:a1e0::1/128 routes 10.244.0.0/24,fd00:10:244:a::/64"
        ),
        &mut procs,
    );
    let (pod_a, ips_a) = cni_add_all(&mut lab, &a, &spec_a, "poda");
    let (pod_b, ips_b) = cni_add_all(&mut lab, &b, &spec_b, "podb");
    assert_eq!((ips_a.len(), ips_b.len()), (2, 2), "{ips_a:?} {ips_b:?}");
    for (family, (ip_a, ip_b)) in ["IPv4", "IPv6"].iter().zip(ips_a.iter().zip(&ips_b)) {
        wait_until(
            Duration::from_secs(45),
            &format!("pod on A -> pod on B across the tailnet ({family})"),
            || lab.ping(&pod_a, ip_b),
        );
        assert!(lab.ping(&pod_b, ip_a), "and back ({family})");
    }
    for (port, (ip_a, ip_b)) in [7101u16, 7103].into_iter().zip(ips_a.iter().zip(&ips_b)) {
        let seen = bulk(&pod_a, &pod_b, ip_b, port, 1 << 20);
        assert_eq!(
            &seen.ip().to_string(),
            ip_a,
            "B's pod sees A's pod's own address"
        );
        let seen = bulk(&pod_b, &pod_a, ip_a, port + 1, 1 << 20);
        assert_eq!(&seen.ip().to_string(), ip_b);
    }
    let up = std::fs::read_to_string(dir.join("a/state/tailscaled.sock.up.args")).unwrap();
    assert!(up.lines().any(|l| l == "--accept-routes"), "{up}");
    // Peers connect directly: the node forwards tailscaled's port.
    let rules = sh(&[
        "ip", "netns", "exec", &b, "nft", "list", "table", "inet", "headcni",
    ]);
    assert!(
        rules.contains("udp dport 41642") && rules.contains("dnat ip to 198.18.77.2"),
        "{rules}"
    );
    common::wait_converged(&a, &spec_a);
    common::wait_converged(&b, &spec_b);
    drop(procs);
}

/// Host mode over WireGuard: a pod reaches a peer that approved the pod
/// CIDR by its own address; with `masquerade = "all"` it reaches a peer
/// that did not (its packets leave with the node's tailnet address).
#[test]
fn host_mode_carries_pod_traffic_over_wireguard() {
    for (approve, masquerade) in [(true, ""), (false, "masquerade = \"all\"")] {
        let mut lab = Lab::new();
        let inet = lab.netns("inet");
        common::sh(&[
            "ip",
            "netns",
            "exec",
            &inet,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let (node, peer) = (lab.netns("node"), lab.netns("peer"));
        uplink(&lab, &inet, &node, "203.0.113.2", "203.0.113.1");
        uplink(&lab, &inet, &peer, PEER_UPLINK, "198.51.100.1");
        let dir = lab.dir.path().to_path_buf();
        let (node_key, node_pub) = keypair(&dir, "node");
        let (peer_key, peer_pub) = keypair(&dir, "peer");
        let mut procs = Procs(Vec::new());
        let routes = if approve {
            format!(" routes {POD_CIDR}")
        } else {
            String::new()
        };
        host_tailscaled(
            &dir.join("peer"),
            &peer,
            &format!("address {PEER_TAILNET}\nprivate-key-file {}\npeer {node_pub} allowed {NODE_TAILNET}/32{routes}\n", peer_key.display()),
            &mut procs,
        );
        host_tailscaled(
            &dir.join("node"),
            &node,
            &format!("address {NODE_TAILNET}\nprivate-key-file {}\npeer {peer_pub} endpoint {PEER_UPLINK}:41641 allowed {PEER_TAILNET}/32\n", node_key.display()),
            &mut procs,
        );
        let spec = host_spec(&dir, POD_CIDR, masquerade);
        let (pod, ip) = cni_add(&mut lab, &node, &spec, "pod");
        common::apply_in(&node, &spec);
        wait_until(
            Duration::from_secs(20),
            "pod -> peer over WireGuard (host mode)",
            || lab.ping(&pod, PEER_TAILNET),
        );
        let seen = bulk(&pod, &peer, PEER_TAILNET, 7201, 4 << 20);
        if approve {
            assert_eq!(
                seen.ip().to_string(),
                ip,
                "the peer sees the pod's own address"
            );
            let seen = bulk(&peer, &pod, &ip, 7202, 4 << 20);
            assert_eq!(seen.ip().to_string(), PEER_TAILNET);
        } else {
            assert_eq!(
                seen.ip().to_string(),
                NODE_TAILNET,
                "masqueraded to the node's tailnet address"
            );
            assert!(
                !lab.ping(&peer, &ip),
                "the peer never approved the pod CIDR"
            );
        }
        common::wait_converged(&node, &spec);
        drop(procs);
    }
}

/// Two host-mode nodes of one cluster over WireGuard: pods reach each other
/// by their own addresses.
#[test]
fn two_host_mode_nodes_carry_pod_to_pod_traffic() {
    let mut lab = Lab::new();
    let TwoNodes {
        a,
        b,
        dir,
        key_a,
        pub_a,
        key_b,
        pub_b,
    } = two_nodes(&mut lab);
    let mut procs = Procs(Vec::new());
    host_tailscaled(
        &dir.join("a"),
        &a,
        &format!("address 100.64.0.1\nprivate-key-file {}\npeer {pub_b} endpoint 192.0.2.2:41641 allowed 100.64.0.2/32 routes 10.244.1.0/24\n", key_a.display()),
        &mut procs,
    );
    host_tailscaled(
        &dir.join("b"),
        &b,
        &format!("address 100.64.0.2\nprivate-key-file {}\npeer {pub_a} endpoint 203.0.113.2:41641 allowed 100.64.0.1/32 routes 10.244.0.0/24\n", key_b.display()),
        &mut procs,
    );
    let cluster = "cluster_cidr = \"10.244.0.0/16\"";
    let spec_a = host_spec(&dir.join("a"), "10.244.0.0/24", cluster);
    let spec_b = host_spec(&dir.join("b"), "10.244.1.0/24", cluster);
    let (pod_a, ip_a) = cni_add(&mut lab, &a, &spec_a, "poda");
    let (pod_b, ip_b) = cni_add(&mut lab, &b, &spec_b, "podb");
    for (node, spec) in [(&a, &spec_a), (&b, &spec_b)] {
        common::apply_in(node, spec);
    }
    wait_until(
        Duration::from_secs(20),
        "pod on A -> pod on B (host mode)",
        || lab.ping(&pod_a, &ip_b),
    );
    let seen = bulk(&pod_a, &pod_b, &ip_b, 7301, 1 << 20);
    assert_eq!(seen.ip().to_string(), ip_a);
    let seen = bulk(&pod_b, &pod_a, &ip_a, 7302, 1 << 20);
    assert_eq!(seen.ip().to_string(), ip_b);
    drop(procs);
}
