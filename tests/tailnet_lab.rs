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

use common::{run_plugin, sh, wait_until, CniCall, Lab};

const POD_CIDR: &str = "10.244.0.0/24";
const NODE_TAILNET: &str = "100.64.0.1";
const PEER_TAILNET: &str = "100.64.0.5";
const PEER_UPLINK: &str = "198.51.100.2";

fn standin() -> PathBuf {
    let path = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/standin-tailscaled");
    assert!(
        path.exists(),
        "cargo test builds the stand-in ({})",
        path.display()
    );
    path
}

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

/// Processes the test starts, killed when it ends (also on failure).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            for _ in 0..300 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct TailnetLab {
    lab: Lab,
    node: String,
    peer: String,
    ts: String,
    spec: PathBuf,
    procs: Procs,
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
    /// `approve`: whether the peer approved the node's pod CIDR.
    fn new(approve: bool, extra_spec: &str) -> TailnetLab {
        let mut lab = Lab::new();
        let inet = lab.netns("inet");
        let node = lab.netns("node");
        let peer = lab.netns("peer");
        let ts = lab.netns("ts");
        lab.ip(&inet, &["link", "set", "lo", "up"]);
        common::sh(&[
            "ip",
            "netns",
            "exec",
            &inet,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        veth(&lab, &node, "eth0", &inet, "to-node");
        lab.ip(&node, &["addr", "add", "203.0.113.2/24", "dev", "eth0"]);
        lab.ip(&inet, &["addr", "add", "203.0.113.1/24", "dev", "to-node"]);
        lab.ip(&node, &["route", "add", "default", "via", "203.0.113.1"]);
        veth(&lab, &peer, "eth0", &inet, "to-peer");
        lab.ip(
            &peer,
            &["addr", "add", &format!("{PEER_UPLINK}/24"), "dev", "eth0"],
        );
        lab.ip(&inet, &["addr", "add", "198.51.100.1/24", "dev", "to-peer"]);
        lab.ip(&peer, &["route", "add", "default", "via", "198.51.100.1"]);

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
            .arg(standin())
            .arg("--tun=wg0")
            .arg("--port=41641")
            .arg(format!("--socket={}", dir.join("peer.sock").display()))
            .arg(format!("--wg-config={}", peer_conf.display()))
            .arg("--peer")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let procs = Procs(vec![peer_proc]);
        wait_until(Duration::from_secs(10), "the peer's wg0", || {
            Command::new("ip")
                .args(["-n", &peer, "route", "show", "dev", "wg0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(NODE_TAILNET))
        });
        // The node's tailscaled: the peer by its public endpoint.
        let node_conf = dir.join("node.wg");
        std::fs::write(
            &node_conf,
            format!(
                "address {NODE_TAILNET}\nprivate-key-file {}\npeer {peer_pub} endpoint {PEER_UPLINK}:41641 allowed {PEER_TAILNET}/32\n",
                node_key.display()
            ),
        )
        .unwrap();
        let authkey = dir.join("authkey");
        std::fs::write(&authkey, "tskey-auth-lab").unwrap();
        std::fs::set_permissions(&authkey, std::fs::Permissions::from_mode(0o600)).unwrap();
        let spec = dir.join("headcni.toml");
        std::fs::write(
            &spec,
            format!(
                "version = 1\nmode = \"daemon\"\nstate_dir = \"{state}\"\n\n[pod_network]\ncidr = \"{POD_CIDR}\"\n{extra_spec}\n\n[daemon]\ntailscaled = \"{s}\"\ntailscale = \"{s}\"\nlogin_server = \"https://headscale.example.test\"\nauth_key_file = \"{key}\"\nhostname = \"node-a\"\nnetns = \"{ts}\"\ntailscaled_flags = [\"--wg-config={conf}\"]\nresync_seconds = 30\n",
                state = dir.join("state").display(),
                s = standin().display(),
                key = authkey.display(),
                conf = node_conf.display(),
            ),
        )
        .unwrap();
        TailnetLab {
            lab,
            node,
            peer,
            ts,
            spec,
            procs,
        }
    }

    fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.lab.dir.path().join("daemon.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node, common::headcni_bin(), "daemon"])
            .env("HEADCNI_SPEC", &self.spec)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.0.push(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.lab.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// CNI ADD of a new pod namespace; returns (namespace, address).
    fn add_pod(&mut self, name: &str) -> (String, String) {
        let ns = self.lab.netns(name);
        let path = Lab::ns_path(&ns);
        let call = CniCall {
            command: "ADD",
            container_id: Some(&ns),
            netns: path.to_str(),
            ifname: Some("eth0"),
        };
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "headcni", "type": "headcni", "spec": self.spec});
        let out = run_plugin(&self.node, common::headcni_bin(), &call, &conf.to_string());
        assert_eq!(out.code, 0, "ADD {ns}: {}\n{}", out.stdout, out.stderr);
        let ip = out.json["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .to_string();
        (ns, ip)
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
    let mut t = TailnetLab::new(true, "");
    t.start_daemon();
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
}
