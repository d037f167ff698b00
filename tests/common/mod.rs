//! Throwaway network namespaces for integration tests. Everything a test
//! makes is registered with a [`Lab`], whose Drop removes it, also when the
//! test panics. Nothing touches the machine's own namespace.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn headcni_bin() -> &'static str {
    env!("CARGO_BIN_EXE_headcni")
}

/// The stand-in tailscaled (an example `cargo test` builds).
pub fn standin_bin() -> PathBuf {
    let path = std::env::current_exe()
        .expect("test binary")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/standin-tailscaled");
    assert!(
        path.exists(),
        "cargo test builds the stand-in ({})",
        path.display()
    );
    path
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests need root (network namespaces); run them as CI does"
    );
}

/// What a command a test runs to completion may take at most.
pub const LIMIT: Duration = Duration::from_secs(120);

/// `timeout` around a command a test runs to completion: none may hang a
/// test (add the program and its arguments). The harness makes every
/// `Command` here or marks it long-running, ended by a guard's Drop
/// (tests/architecture.rs checks that).
pub fn bounded(limit: Duration) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &limit.as_secs().max(1).to_string()]);
    cmd
}

/// Runs a command (within [`LIMIT`]); panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = bounded(LIMIT).args(args).output().expect("spawn timeout");
    assert!(
        out.status.success(),
        "{:?} failed{}: {}{}",
        args,
        if out.status.code() == Some(124) {
            format!(" (timed out after {LIMIT:?})")
        } else {
            String::new()
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `cond` with a deadline instead of sleeping and hoping.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A set of namespaces with a unique prefix, removed on drop.
pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Lab {
            prefix: format!("hct{}x{n}", std::process::id()),
            namespaces: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Creates namespace `<prefix>-<name>` with lo up; returns its full name.
    pub fn netns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        sh(&["ip", "netns", "add", &full]);
        self.namespaces.push(full.clone());
        sh(&["ip", "-n", &full, "link", "set", "lo", "up"]);
        full
    }

    pub fn ns_path(ns: &str) -> PathBuf {
        Path::new("/run/netns").join(ns)
    }

    /// `ip -n NS ...`
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A veth pair: `a_if` in namespace `a`, its peer `b_if` in `b` (both down).
    pub fn veth_pair(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        self.ip(
            a,
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        );
    }

    /// [`Lab::veth_pair`], both ends up.
    pub fn veth_up(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        self.veth_pair(a, a_if, b, b_if);
        self.ip(a, &["link", "set", a_if, "up"]);
        self.ip(b, &["link", "set", b_if, "up"]);
    }

    pub fn ping(&self, ns: &str, target: &str) -> bool {
        bounded(Duration::from_secs(10))
            .args(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", target])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pods first, node last: deleting a namespace takes its links with it.
        for ns in self.namespaces.iter().rev() {
            let _ = bounded(Duration::from_secs(30))
                .args(["ip", "netns", "del", ns])
                .output();
            // A daemon-mode daemon writes /etc/netns/NS/resolv.conf for its
            // tailnet namespace and removes it when it stops; a daemon that
            // was killed instead cannot.
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}

/// The standard test node: a node namespace with a veth `tailscale0`
/// (100.64.0.1) to a tailnet peer holding 100.64.0.5, and a veth `eth0` to a
/// gateway namespace 203.0.113.1 that is the node's default route.
pub struct Node {
    pub lab: Lab,
    pub node: String,
    pub peer: String,
    pub gw: String,
    pub spec: PathBuf,
}

pub const POD_CIDR: &str = "10.244.0.0/24";

impl Node {
    pub fn new() -> Node {
        let mut lab = Lab::new();
        let node = lab.netns("node");
        let peer = lab.netns("peer");
        let gw = lab.netns("gw");
        lab.veth_pair(&node, "tailscale0", &peer, "ts-peer");
        lab.ip(
            &node,
            &["addr", "add", "100.64.0.1/32", "dev", "tailscale0"],
        );
        lab.ip(&node, &["link", "set", "tailscale0", "up"]);
        lab.ip(&peer, &["addr", "add", "100.64.0.5/32", "dev", "ts-peer"]);
        lab.ip(&peer, &["link", "set", "ts-peer", "up"]);
        lab.ip(&peer, &["route", "add", "100.64.0.1/32", "dev", "ts-peer"]);
        lab.ip(
            &peer,
            &[
                "route",
                "add",
                POD_CIDR,
                "via",
                "100.64.0.1",
                "dev",
                "ts-peer",
            ],
        );
        lab.ip(
            &node,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", &gw,
            ],
        );
        lab.ip(&node, &["addr", "add", "203.0.113.2/24", "dev", "eth0"]);
        lab.ip(&node, &["link", "set", "eth0", "up"]);
        lab.ip(&node, &["route", "add", "default", "via", "203.0.113.1"]);
        lab.ip(&gw, &["addr", "add", "203.0.113.1/24", "dev", "up0"]);
        lab.ip(&gw, &["link", "set", "up0", "up"]);
        lab.ip(&gw, &["route", "add", POD_CIDR, "via", "203.0.113.2"]);
        let spec = lab.dir.path().join("headcni.toml");
        let node = Node {
            lab,
            node,
            peer,
            gw,
            spec,
        };
        node.write_spec("");
        node
    }

    /// Writes the spec, with `extra` TOML appended.
    pub fn write_spec(&self, extra: &str) {
        let text = format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\ncidr = \"{POD_CIDR}\"\n\n[tailnet]\ninterface = \"tailscale0\"\n{extra}",
            self.lab.dir.path().join("state").display()
        );
        std::fs::write(&self.spec, text).expect("write spec");
    }

    pub fn headcni(&self, args: &[&str]) -> Output {
        headcni_in(&self.node, &self.spec, args)
    }

    /// Someone else's route to `ip` (protocol static, via the node's
    /// gateway): in the way of the pod that has that address.
    pub fn foreign_route_to(&self, ip: &str) {
        let dst = format!("{ip}/32");
        self.lab.ip(
            &self.node,
            &[
                "route",
                "add",
                &dst,
                "via",
                "203.0.113.1",
                "proto",
                "static",
            ],
        );
    }

    /// Runs headcni and expects exit code `code`; returns stdout.
    pub fn headcni_ok(&self, args: &[&str], code: i32) -> String {
        let out = self.headcni(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "headcni {:?}: stdout:\n{}\nstderr:\n{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Makes a pod namespace and records its intent; returns (netns, ip).
    pub fn add_pod(&mut self, name: &str) -> (String, String) {
        let ns = self.lab.netns(name);
        let path = Lab::ns_path(&ns);
        let out = self.headcni_ok(
            &["pod", "add", "--id", &ns, "--netns", path.to_str().unwrap()],
            0,
        );
        // "added <key> <ip> <hostlink>"
        let ip = out
            .split_whitespace()
            .nth(2)
            .expect("ip in output")
            .to_string();
        (ns, ip)
    }

    /// IPv4 routes of every table (IPv6 link-local routes come and go as
    /// the kernel finishes DAD on new links: noise for these comparisons).
    /// Runs a command inside the node namespace; panics if it fails.
    pub fn in_node(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", self.node.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn node_routes(&self) -> String {
        self.lab
            .ip(&self.node, &["-4", "route", "show", "table", "all"])
    }
}

/// One CNI invocation, as a runtime makes it: env + stdin, inside the node namespace.
pub struct CniCall<'a> {
    pub command: &'a str,
    pub container_id: Option<&'a str>,
    pub netns: Option<&'a str>,
    pub ifname: Option<&'a str>,
}

impl<'a> CniCall<'a> {
    /// `command` (ADD, CHECK, DEL) of `container_id` with its namespace at
    /// `netns`, as eth0.
    pub fn of(command: &'a str, container_id: &'a str, netns: &'a std::path::Path) -> CniCall<'a> {
        CniCall {
            command,
            container_id: Some(container_id),
            netns: netns.to_str(),
            ifname: Some("eth0"),
        }
    }

    /// ADD of `container_id` with its namespace at `netns`, as eth0.
    pub fn add(container_id: &'a str, netns: &'a std::path::Path) -> CniCall<'a> {
        CniCall::of("ADD", container_id, netns)
    }

    pub fn new(command: &'a str) -> CniCall<'a> {
        CniCall {
            command,
            container_id: None,
            netns: None,
            ifname: Some("eth0"),
        }
    }
}

/// The result of a plugin run: exit code and stdout parsed as JSON (Null when empty).
pub struct CniOut {
    pub code: i32,
    pub json: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_plugin(node_ns: &str, plugin: &str, call: &CniCall, stdin: &str) -> CniOut {
    use std::io::Write as _;
    // Every call has a deadline: a hung plugin fails the test (exit 124).
    let mut cmd = bounded(Duration::from_secs(60));
    cmd.args(["ip", "netns", "exec", node_ns, plugin])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(id) = call.container_id {
        cmd.env("CNI_CONTAINERID", id);
    }
    if let Some(netns) = call.netns {
        cmd.env("CNI_NETNS", netns);
    }
    if let Some(ifname) = call.ifname {
        cmd.env("CNI_IFNAME", ifname);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {stdout:?}"))
    };
    CniOut {
        code: out.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Node {
    /// The network configuration a runtime would pass to headcni.
    pub fn cni_conf(&self, version: &str) -> serde_json::Value {
        cni_conf(version, &self.spec)
    }

    pub fn cni(&self, call: &CniCall, conf: &serde_json::Value) -> CniOut {
        run_plugin(&self.node, headcni_bin(), call, &conf.to_string())
    }

    /// ADD for pod namespace `ns` (container id = ns name); asserts success.
    pub fn cni_add(&self, ns: &str) -> serde_json::Value {
        let path = Lab::ns_path(ns);
        let call = CniCall::add(ns, &path);
        let out = self.cni(&call, &self.cni_conf("1.1.0"));
        assert_eq!(out.code, 0, "ADD {ns}: {}\n{}", out.stdout, out.stderr);
        out.json
    }

    pub fn cni_del(&self, ns: &str, netns: Option<&str>) -> CniOut {
        let call = CniCall {
            command: "DEL",
            container_id: Some(ns),
            netns,
            ifname: Some("eth0"),
        };
        self.cni(&call, &self.cni_conf("1.1.0"))
    }

    /// Names of links headcni owns in the node namespace.
    pub fn owned_links(&self) -> Vec<String> {
        self.lab
            .ip(&self.node, &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("hc"))
            .collect()
    }

    pub fn owned_routes(&self) -> Vec<String> {
        self.lab
            .ip(
                &self.node,
                &["route", "show", "table", "all", "proto", "104"],
            )
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn intents(&self) -> usize {
        let out = self.headcni_ok(&["pod", "list", "--format", "json"], 0);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    }

    /// Host links whose addresses the store still holds (their pods deleted).
    pub fn releasing(&self) -> Vec<String> {
        let spec = headcni::spec::Spec::load(&self.spec).unwrap();
        spec.pod_store().releasing().unwrap()
    }
}

/// Runs headcni inside namespace `ns` with `spec`.
pub fn headcni_in(ns: &str, spec: &Path, args: &[&str]) -> Output {
    bounded(LIMIT)
        .args(["ip", "netns", "exec", ns, headcni_bin()])
        .args(args)
        .env("HEADCNI_SPEC", spec)
        .output()
        .expect("spawn headcni")
}

/// `headcni apply` in namespace `ns` with `spec`; it must succeed.
pub fn apply_in(ns: &str, spec: &Path) {
    let out = headcni_in(ns, spec, &["apply"]);
    assert!(
        out.status.success(),
        "apply in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `headcni plan` in `ns` finds nothing to do.
pub fn wait_converged(ns: &str, spec: &Path) {
    wait_until(Duration::from_secs(5), "the node to converge", || {
        headcni_in(ns, spec, &["plan", "--detailed-exitcode"])
            .status
            .code()
            == Some(0)
    });
}

/// The network configuration a runtime would pass to headcni with `spec`.
pub fn cni_conf(version: &str, spec: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": version,
        "name": "headcni",
        "type": "headcni",
        "spec": spec,
    })
}

/// `sysctl -w SETTING` inside namespace `ns`.
pub fn sysctl_in(ns: &str, setting: &str) {
    sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]);
}

/// A link's hardware address as the kernel reports it (`ip -j link`).
pub fn kernel_mac(ns: &str, link: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", link]);
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    links[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {link} in {ns}: {out}"))
        .to_string()
}

/// An ADD result names both veth ends with the MACs the kernel has: the
/// host end in `node`, the pod end (eth0) in `pod`.
pub fn assert_result_macs(result: &serde_json::Value, node: &str, pod: &str) {
    let host = result["interfaces"][0]["name"].as_str().expect("host end");
    assert_eq!(
        result["interfaces"][0]["mac"].as_str(),
        Some(kernel_mac(node, host).as_str()),
        "host end {host}: {result}"
    );
    assert_eq!(
        result["interfaces"][1]["mac"].as_str(),
        Some(kernel_mac(pod, "eth0").as_str()),
        "pod end: {result}"
    );
}

/// The addresses (without prefix length) of a CNI ADD result, in order.
pub fn result_ips(result: &serde_json::Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| {
            ip["address"]
                .as_str()?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .collect()
}

/// Runs `f` on a thread inside network namespace `ns` (test plumbing: TCP
/// listeners and clients in pod namespaces without extra tools).
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = Lab::ns_path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP round trip from a pod to `ip:port`, where a listener in `server_ns`
/// echoes; returns the peer address the server saw.
pub fn tcp_roundtrip(
    client_ns: &str,
    server_ns: &str,
    ip: &str,
    port: u16,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(server_ns, move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
        peer
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    let target: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let client = in_ns(client_ns, move || {
        let mut conn =
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("echo back");
        assert_eq!(&buf, b"hello");
    });
    client.join().expect("client");
    server.join().expect("server")
}

/// Processes the test starts, killed when it ends (also on failure).
pub struct Procs(pub Vec<std::process::Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            // A daemon stops its tailscaled for up to 5 s.
            for _ in 0..800 {
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

/// The running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(n: &Node) -> Daemon {
        Daemon::start_under(n, &[])
    }

    /// The daemon run by `wrapper` (e.g. prlimit and its arguments).
    pub fn start_under(n: &Node, wrapper: &[&str]) -> Daemon {
        let log = n.lab.dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        // long-running: stopped by Daemon's Drop.
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &n.node])
            .args(wrapper)
            .args([headcni_bin(), "daemon"])
            .env("HEADCNI_SPEC", &n.spec)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            log,
        };
        let start = Instant::now();
        while status(n).is_none_or(|s| s["last_pass"].is_null()) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out after 5s waiting for the daemon's first pass; its log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// SIGTERM; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..500 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon's log says `line`; a timeout shows the log.
    pub fn wait_for_log(&self, deadline: Duration, line: &str) {
        let start = Instant::now();
        while !self.log().contains(line) {
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for the daemon to log {line:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn status(n: &Node) -> Option<serde_json::Value> {
    let out = n.headcni(&["status", "--format", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}
