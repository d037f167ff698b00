//! Daemon mode over a real WireGuard data plane (wireguard-go, the engine
//! tailscaled embeds). The lab: an "internet" namespace that routes no pod
//! CIDR joins a node's uplink and a tailnet peer's; the node's tailscaled
//! (the stand-in in WireGuard mode) runs in headcni's tailnet namespace and
//! reaches the peer only through the way out headcni gives that namespace;
//! the peer accepts only the sources it approved (the node's tailnet
//! address and pod CIDR), as tailscaled's cryptokey routing does.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{run_plugin, sh, wait_until, CniCall, Lab, Procs};

const POD_CIDR: &str = "10.244.0.0/24";
const NODE_TAILNET: &str = "100.64.0.1";
const PEER_TAILNET: &str = "100.64.0.5";
const PEER_UPLINK: &str = "198.51.100.2";

/// A WireGuard key pair: (private key file, public key).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = sh(&["wg", "genkey"]);
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, private.trim()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg (apt install wireguard-tools)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        file,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

struct TailnetLab {
    /// First, so its processes stop before the namespaces go.
    _procs: Procs,
    lab: Lab,
    node: String,
    peer: String,
    ts: String,
    spec: PathBuf,
}

fn veth(lab: &Lab, a: &str, a_if: &str, b: &str, b_if: &str) {
    lab.ip(
        a,
        &[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
        ],
    );
    lab.ip(a, &["link", "set", a_if, "up"]);
    lab.ip(b, &["link", "set", b_if, "up"]);
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

/// Sends `bytes` from `client_ns` to a listener in `server_ns` at `ip`;
/// returns the address the server saw the connection come from.
fn bulk(
    client_ns: &str,
    server_ns: &str,
    ip: &str,
    port: u16,
    bytes: usize,
) -> std::net::SocketAddr {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = common::in_ns(server_ns, move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut conn, from) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("read after {got} bytes: {e}"),
            }
        }
        conn.write_all(&got.to_be_bytes()).unwrap();
        from
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener");
    let target: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let client = common::in_ns(client_ns, move || {
        let mut conn =
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
        conn.set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let chunk = vec![0x5au8; 65536];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            conn.write_all(&chunk[..n]).expect("write");
            sent += n;
        }
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut echo = [0u8; 8];
        conn.read_exact(&mut echo).expect("the count back");
        assert_eq!(usize::from_be_bytes(echo), bytes, "every byte arrived");
    });
    client.join().expect("client");
    server.join().expect("server")
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
        rules.contains("169.254.77.0/30") && rules.contains("masquerade"),
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
    assert_converged(&t.node, &t.spec);
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
    s.settimeout(2)
    s.sendto(q, (server, 53))
    r = s.recv(512)
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
    let asked = Command::new("ip")
        .args(["netns", "exec", &t.ts, "python3", "-c", DNS_ASK])
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
    assert_converged(&t.node, &t.spec);
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

/// The node converged: nothing to do, nothing waiting (no rule the kernel
/// lists differently from how headcni wrote it, say).
fn assert_converged(node: &str, spec: &Path) {
    wait_until(Duration::from_secs(5), "the node to converge", || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                node,
                common::headcni_bin(),
                "plan",
                "--detailed-exitcode",
            ])
            .env("HEADCNI_SPEC", spec)
            .output()
            .is_ok_and(|o| o.status.code() == Some(0))
    });
}

/// Joins `ns` to the internet namespace with `ip`/24, its gateway `gw` there.
fn uplink(lab: &Lab, inet: &str, ns: &str, ip: &str, gw: &str) {
    let inside = format!("to-{}", &ns[ns.len().saturating_sub(4)..]);
    veth(lab, ns, "eth0", inet, &inside);
    lab.ip(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    lab.ip(inet, &["addr", "add", &format!("{gw}/24"), "dev", &inside]);
    lab.ip(ns, &["route", "add", "default", "via", gw]);
}

/// A daemon-mode node of the lab: writes its WireGuard file (`wg_conf`)
/// and spec in `dir` (`pod_extra`: more `[pod_network]` lines), starts its
/// daemon (kept in `procs`); returns the spec's path.
fn daemon_node(
    dir: &Path,
    node: &str,
    ts: &str,
    (pod_cidr, pod_extra): (&str, &str),
    daemon_extra: &str,
    wg_conf: &str,
    procs: &mut Procs,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let wg = dir.join("node.wg");
    std::fs::write(&wg, wg_conf).unwrap();
    let authkey = dir.join("authkey");
    std::fs::write(&authkey, "tskey-auth-lab").unwrap();
    std::fs::set_permissions(&authkey, std::fs::Permissions::from_mode(0o600)).unwrap();
    let spec = dir.join("headcni.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\nstate_dir = \"{state}\"\n\n[pod_network]\ncidr = \"{pod_cidr}\"\n{pod_extra}\n\n[daemon]\ntailscaled = \"{s}\"\ntailscale = \"{s}\"\nlogin_server = \"https://headscale.example.test\"\nauth_key_file = \"{key}\"\nnetns = \"{ts}\"\ntailscaled_flags = [\"--wg-config={wg}\"]\nresync_seconds = 30\n{daemon_extra}",
            state = dir.join("state").display(),
            s = common::standin_bin().display(),
            key = authkey.display(),
            wg = wg.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    procs.0.push(
        Command::new("ip")
            .args(["netns", "exec", node, common::headcni_bin(), "daemon"])
            .env("HEADCNI_SPEC", &spec)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    spec
}

/// One daemon-mode node of the 10.244.0.0/16 cluster.
#[allow(clippy::too_many_arguments)]
fn cluster_node(
    dir: &Path,
    node: &str,
    ts: &str,
    pod_cidr: &str,
    tailnet_ip: &str,
    key: &Path,
    peer_line: &str,
    procs: &mut Procs,
) -> PathBuf {
    let wg = format!(
        "address {tailnet_ip}\nprivate-key-file {}\n{peer_line}\n",
        key.display()
    );
    daemon_node(
        dir,
        node,
        ts,
        (pod_cidr, "cluster_cidr = \"10.244.0.0/16\""),
        "",
        &wg,
        procs,
    )
}

fn cni_add(lab: &mut Lab, node: &str, spec: &Path, name: &str) -> (String, String) {
    let ns = lab.netns(name);
    let path = Lab::ns_path(&ns);
    let call = CniCall::add(&ns, &path);
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "headcni", "type": "headcni", "spec": spec});
    let out = run_plugin(node, common::headcni_bin(), &call, &conf.to_string());
    assert_eq!(out.code, 0, "ADD {ns}: {}\n{}", out.stdout, out.stderr);
    let ip = out.json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_string();
    (ns, ip)
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

/// Two daemon-mode nodes of one cluster, each behind its own NAT (the
/// node's masquerade), each tailscaled reaching the other through "the
/// internet": pods reach each other by their own addresses, which works
/// only if each tailscaled accepts the other's pod CIDR (--accept-routes).
#[test]
fn two_daemon_mode_nodes_carry_pod_to_pod_traffic() {
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
    // Each approved the other's tailnet address and pod CIDR; the daemon's
    // tailscaled port is 41642 by default.
    let spec_a = cluster_node(
        &dir.join("a"),
        &a,
        &ts_a,
        "10.244.0.0/24",
        "100.64.0.1",
        &key_a,
        &format!(
            "peer {pub_b} endpoint 192.0.2.2:41642 allowed 100.64.0.2/32 routes 10.244.1.0/24"
        ),
        &mut procs,
    );
    let spec_b = cluster_node(
        &dir.join("b"),
        &b,
        &ts_b,
        "10.244.1.0/24",
        "100.64.0.2",
        &key_b,
        // B learns A's endpoint from A's handshake, which reaches B's
        // tailscaled only through B's forwarded port (no simultaneous open).
        &format!("peer {pub_a} allowed 100.64.0.1/32 routes 10.244.0.0/24"),
        &mut procs,
    );
    let (pod_a, ip_a) = cni_add(&mut lab, &a, &spec_a, "poda");
    let (pod_b, ip_b) = cni_add(&mut lab, &b, &spec_b, "podb");
    wait_until(
        Duration::from_secs(45),
        "pod on A -> pod on B across the tailnet",
        || lab.ping(&pod_a, &ip_b),
    );
    assert!(lab.ping(&pod_b, &ip_a), "and back");
    let seen = bulk(&pod_a, &pod_b, &ip_b, 7101, 1 << 20);
    assert_eq!(
        seen.ip().to_string(),
        ip_a,
        "B's pod sees A's pod's own address"
    );
    let seen = bulk(&pod_b, &pod_a, &ip_a, 7102, 1 << 20);
    assert_eq!(seen.ip().to_string(), ip_b);
    let up = std::fs::read_to_string(dir.join("a/state/tailscaled.sock.up.args")).unwrap();
    assert!(up.lines().any(|l| l == "--accept-routes"), "{up}");
    // Peers connect directly: the node forwards tailscaled's port.
    let rules = sh(&[
        "ip", "netns", "exec", &b, "nft", "list", "table", "inet", "headcni",
    ]);
    assert!(
        rules.contains("udp dport 41642") && rules.contains("dnat ip to 169.254.77.2"),
        "{rules}"
    );
    assert_converged(&a, &spec_a);
    assert_converged(&b, &spec_b);
    drop(procs);
}

/// The host's own tailscaled (host mode): the stand-in on `tailscale0` in
/// the node namespace, logged in at once, routes in the main table.
fn host_tailscaled(dir: &Path, node: &str, wg_conf: &str, procs: &mut Procs) {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("host.wg");
    std::fs::write(&conf, wg_conf).unwrap();
    procs.0.push(
        Command::new("ip")
            .args(["netns", "exec", node])
            .arg(common::standin_bin())
            .args(["--tun=tailscale0", "--port=41641", "--peer"])
            .arg(format!("--socket={}", dir.join("host-ts.sock").display()))
            .arg(format!("--wg-config={}", conf.display()))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "the host's tailscale0", || {
        Command::new("ip")
            .args(["-n", node, "route", "show", "dev", "tailscale0"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
}

/// A host-mode spec in `dir`; `extra` goes under `[pod_network]`.
fn host_spec(dir: &Path, pod_cidr: &str, extra: &str) -> PathBuf {
    let spec = dir.join("headcni.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\ncidr = \"{pod_cidr}\"\n{extra}\n\n[tailnet]\ninterface = \"tailscale0\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    spec
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
        let out = Command::new("ip")
            .args(["netns", "exec", &node, common::headcni_bin(), "apply"])
            .env("HEADCNI_SPEC", &spec)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        assert_converged(&node, &spec);
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
        let out = Command::new("ip")
            .args(["netns", "exec", node, common::headcni_bin(), "apply"])
            .env("HEADCNI_SPEC", spec)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
