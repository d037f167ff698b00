//! The tailnet lab's parts, on top of tests/common (namespaces, commands,
//! headcni and CNI calls): an "internet" namespace that routes no pod CIDR,
//! uplinks to it, tailscaled stand-ins on wireguard-go, the specs of a
//! daemon-mode or host-mode node, pods added by a node name and a spec.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, run_plugin, sh, wait_until, CniCall, Lab, Procs};

/// `cidr = "..."`, or nothing for an IPv6-only spec (an empty `cidr`).
fn cidr_line(cidr: &str) -> String {
    if cidr.is_empty() {
        String::new()
    } else {
        format!("cidr = \"{cidr}\"\n")
    }
}

/// A WireGuard key pair: (private key file, public key).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = sh(&["wg", "genkey"]);
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, private.trim()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = common::bounded(Duration::from_secs(10))
        .args(["wg", "pubkey"])
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

/// Sends `bytes` from `client_ns` to a listener in `server_ns` at `ip`;
/// returns the address the server saw the connection come from.
pub fn bulk(
    client_ns: &str,
    server_ns: &str,
    ip: &str,
    port: u16,
    bytes: usize,
) -> std::net::SocketAddr {
    let ipv6 = ip.contains(':');
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = common::in_ns(server_ns, move || {
        let any = if ipv6 { "::" } else { "0.0.0.0" };
        let listener = std::net::TcpListener::bind((any, port)).expect("bind");
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
    let target = std::net::SocketAddr::new(ip.parse().expect("an IP address"), port);
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

/// Joins `ns` to the internet namespace with `ip`/24, its gateway `gw` there.
pub fn uplink(lab: &Lab, inet: &str, ns: &str, ip: &str, gw: &str) {
    let inside = uplink_peer(ns);
    lab.veth_up(ns, "eth0", inet, &inside);
    lab.ip(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    lab.ip(inet, &["addr", "add", &format!("{gw}/24"), "dev", &inside]);
    lab.ip(ns, &["route", "add", "default", "via", gw]);
}

/// The internet namespace's end of `ns`'s uplink.
fn uplink_peer(ns: &str) -> String {
    format!("to-{}", &ns[ns.len().saturating_sub(4)..])
}

/// IPv6 on an [`uplink`] too: `ip`/64 in `ns`, its gateway `gw` there.
/// Addresses without duplicate address detection: usable at once.
pub fn uplink6(lab: &Lab, inet: &str, ns: &str, ip: &str, gw: &str) {
    let inside = uplink_peer(ns);
    lab.ip(
        ns,
        &["addr", "add", &format!("{ip}/64"), "dev", "eth0", "nodad"],
    );
    lab.ip(
        inet,
        &["addr", "add", &format!("{gw}/64"), "dev", &inside, "nodad"],
    );
    lab.ip(ns, &["-6", "route", "add", "default", "via", gw]);
}

/// The "internet" namespace: a router that routes no pod CIDR (IPv6 too
/// when `ipv6`).
pub fn internet(lab: &mut Lab, ipv6: bool) -> String {
    let inet = lab.netns("inet");
    common::sysctl_in(&inet, "net.ipv4.ip_forward=1");
    if ipv6 {
        common::sysctl_in(&inet, "net.ipv6.conf.all.forwarding=1");
    }
    inet
}

/// A daemon-mode node of the lab: writes its WireGuard file (`wg_conf`)
/// and spec in `dir` (`pod_extra`: more `[pod_network]` lines), starts its
/// daemon (kept in `procs`); returns the spec's path.
pub fn daemon_node(
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
    let cidr = cidr_line(pod_cidr);
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\nstate_dir = \"{state}\"\n\n[pod_network]\n{cidr}{pod_extra}\n\n[daemon]\ntailscaled = \"{s}\"\ntailscale = \"{s}\"\nlogin_server = \"https://headscale.example.test\"\nauth_key_file = \"{key}\"\nnetns = \"{ts}\"\ntailscaled_flags = [\"--wg-config={wg}\"]\nresync_seconds = 30\n{daemon_extra}",
            state = dir.join("state").display(),
            s = common::standin_bin().display(),
            key = authkey.display(),
            wg = wg.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    procs.0.push(
        // long-running: killed by Procs' Drop.
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

pub fn cni_add(lab: &mut Lab, node: &str, spec: &Path, name: &str) -> (String, String) {
    let (ns, ips) = cni_add_all(lab, node, spec, name);
    (ns, ips[0].clone())
}

/// ADD of a new pod `name`: its namespace and every address of the result
/// (without prefix lengths), IPv4 first.
pub fn cni_add_all(lab: &mut Lab, node: &str, spec: &Path, name: &str) -> (String, Vec<String>) {
    let (ns, result) = cni_add_result(lab, node, spec, name);
    let ips = common::result_ips(&result);
    assert!(!ips.is_empty(), "ADD {ns}: no address in {result}");
    (ns, ips)
}

/// ADD of a new pod `name` (cniVersion 1.0.0): its namespace and the result.
pub fn cni_add_result(
    lab: &mut Lab,
    node: &str,
    spec: &Path,
    name: &str,
) -> (String, serde_json::Value) {
    let ns = lab.netns(name);
    let path = Lab::ns_path(&ns);
    let call = CniCall::add(&ns, &path);
    let conf = common::cni_conf("1.0.0", spec);
    let out = run_plugin(node, common::headcni_bin(), &call, &conf.to_string());
    assert_eq!(out.code, 0, "ADD {ns}: {}\n{}", out.stdout, out.stderr);
    (ns, out.json)
}

/// The host's own tailscaled (host mode): the stand-in on `tailscale0` in
/// the node namespace, logged in at once, routes in the main table.
pub fn host_tailscaled(dir: &Path, node: &str, wg_conf: &str, procs: &mut Procs) {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("host.wg");
    std::fs::write(&conf, wg_conf).unwrap();
    procs.0.push(
        // long-running: killed by Procs' Drop.
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
        common::bounded(Duration::from_secs(10))
            .args(["ip", "-n", node, "route", "show", "dev", "tailscale0"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
}

/// A host-mode spec in `dir`; `extra` goes under `[pod_network]`.
pub fn host_spec(dir: &Path, pod_cidr: &str, extra: &str) -> PathBuf {
    let spec = dir.join("headcni.toml");
    let cidr = cidr_line(pod_cidr);
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\n{cidr}{extra}\n\n[tailnet]\ninterface = \"tailscale0\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    spec
}
