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

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests need root (network namespaces); run them as CI does"
    );
}

/// Runs a command; panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        args,
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

    /// Runs headcni inside namespace `ns` with `spec`.
    pub fn headcni(&self, ns: &str, spec: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, headcni_bin()])
            .args(args)
            .env("HEADCNI_SPEC", spec)
            .output()
            .expect("spawn headcni")
    }

    pub fn ping(&self, ns: &str, target: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W2", target])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pods first, node last: deleting a namespace takes its links with it.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
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
        lab.ip(
            &node,
            &[
                "link",
                "add",
                "tailscale0",
                "type",
                "veth",
                "peer",
                "name",
                "ts-peer",
                "netns",
                &peer,
            ],
        );
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
        self.lab.headcni(&self.node, &self.spec, args)
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

    pub fn node_routes(&self) -> String {
        self.lab.ip(&self.node, &["route", "show", "table", "all"])
    }
}
