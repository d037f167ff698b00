//! Findings of a probe as an attacker and a careless operator would make
//! them: each is fixed, and each test here failed before its fix.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{run_plugin, CniCall, Lab, Node};
use serde_json::json;

/// A pipe whose reading end is already closed: writing to it fails (EPIPE).
fn closed_stdout() -> Stdio {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    drop(read);
    Stdio::from(write)
}

#[test]
fn a_closed_stdout_ends_the_output_not_the_process() {
    let mut n = Node::new();
    n.add_pod("a");
    for args in [
        &["pod", "list"][..],
        &["plan"],
        &["apply"],
        &["validate"],
        &["observe"],
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &n.node, common::headcni_bin()])
            .args(args)
            .env("HEADCNI_SPEC", &n.spec)
            .stdout(closed_stdout())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
    assert_eq!(n.owned_links().len(), 1, "apply did its work");
    // A CNI ADD whose runtime stopped reading: the pod is wired, no panic.
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = Command::new("ip")
        .args(["netns", "exec", &n.node, common::headcni_bin()])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &b)
        .env("CNI_NETNS", &path)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(closed_stdout())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(n.cni_conf("1.1.0").to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(n.owned_links().len(), 2);
}

/// STATUS and ADD agree on whether an address is left, and every address
/// the CIDR counts can be had, the one freed last included.
#[test]
fn status_and_add_agree_on_the_pool() {
    let n = Node::new();
    let spec = n.lab.dir.path().join("small.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.250.0.0/29\"\n[tailnet]\ninterface = \"tailscale0\"\n",
            n.lab.dir.path().join("small-state").display()
        ),
    )
    .unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "headcni", "type": "headcni", "spec": spec});
    let cni = |command, id: Option<&str>, netns: Option<&str>| {
        let call = CniCall {
            command,
            container_id: id,
            netns,
            ifname: Some("eth0"),
        };
        run_plugin(&n.node, common::headcni_bin(), &call, &conf.to_string())
    };
    let mut lab = Lab::new();
    let pods: Vec<String> = (0..6).map(|i| lab.netns(&format!("p{i}"))).collect();
    let path = |ns: &str| Lab::ns_path(ns).to_str().unwrap().to_string();
    for ns in &pods[..5] {
        assert_eq!(
            cni("STATUS", None, None).code,
            0,
            "ready while addresses are left"
        );
        let out = cni("ADD", Some(ns), Some(&path(ns)));
        assert_eq!(out.code, 0, "{}", out.stdout);
    }
    let status = cni("STATUS", None, None);
    assert_eq!(
        status.json["code"], 50,
        "not ready when full: {}",
        status.stdout
    );
    let full = cni("ADD", Some(&pods[5]), Some(&path(&pods[5])));
    assert_eq!(full.json["code"], 101, "{}", full.stdout);
    // Free one: STATUS says ready, and ADD gets exactly that address.
    let out = cni("DEL", Some(&pods[2]), Some(&path(&pods[2])));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(cni("STATUS", None, None).code, 0);
    let out = cni("ADD", Some(&pods[5]), Some(&path(&pods[5])));
    assert_eq!(
        out.code, 0,
        "ready meant an address was left: {}",
        out.stdout
    );
    for ns in &pods {
        cni("DEL", Some(ns), Some(&path(ns)));
    }
}

/// The uplink named as the tailnet interface is refused: no tailnet route,
/// rp_filter or MSS clamping lands on it.
#[test]
fn the_uplink_is_not_taken_for_the_tailnet_interface() {
    let mut n = Node::new();
    n.add_pod("a");
    let spec = std::fs::read_to_string(&n.spec)
        .unwrap()
        .replace("interface = \"tailscale0\"", "interface = \"eth0\"");
    std::fs::write(&n.spec, spec).unwrap();
    let rp_before = n.in_node(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"]);
    let plan = n.headcni_ok(&["plan"], 0);
    assert!(plan.contains("carries the node's default route"), "{plan}");
    n.headcni(&["apply"]);
    assert!(
        !n.node_routes().contains("100.64.0.0/10 dev eth0"),
        "no tailnet route on the uplink: {}",
        n.node_routes()
    );
    assert_eq!(
        n.in_node(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"]),
        rp_before
    );
    let tables = n.in_node(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("headcni"),
        "no clamping on the uplink: {tables}"
    );
    assert_eq!(n.owned_links().len(), 1, "the pod is wired all the same");
}

#[test]
fn private_state_and_checked_inputs() {
    let mut n = Node::new();
    n.add_pod("a");
    n.headcni_ok(&["apply"], 0);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    let state = n.lab.dir.path().join("state");
    assert_eq!(mode(&state), 0o700, "state_dir is root's alone");
    assert_eq!(mode(&state.join("pods.lock")), 0o600);

    // validate refuses an auth key the daemon would refuse.
    let key = n.lab.dir.path().join("authkey");
    std::fs::write(&key, "tskey-test").unwrap();
    common::sh(&["chmod", "644", key.to_str().unwrap()]);
    let spec = n.lab.dir.path().join("daemon.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\n[daemon]\nlogin_server = \"https://headscale.example.test\"\nauth_key_file = \"{}\"\n",
            state.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = n.lab.headcni(&n.node, &spec, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth_key_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    // logFile never follows a symlink to somewhere else.
    let victim = n.lab.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = n.lab.dir.path().join("cni.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut conf = n.cni_conf("1.1.0");
    conf["logFile"] = json!(link);
    conf["logLevel"] = json!("debug");
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = n.cni(&CniCall::add(&b, &path), &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        out.stderr.contains("logFile"),
        "says why it logs to stderr only: {}",
        out.stderr
    );
}

#[test]
fn a_pod_s_huge_interface_index_costs_the_node_nothing() {
    // A pod with CAP_NET_ADMIN picks its links' indexes; observing its
    // namespace once sized a vector by the largest (2^31-1: 32 GiB).
    let mut n = Node::new();
    let (pod, _ip) = n.add_pod("big");
    n.headcni_ok(&["apply"], 0);
    n.lab.ip(
        &pod,
        &[
            "link",
            "add",
            "name",
            "big0",
            "index",
            "2147483647",
            "type",
            "veth",
            "peer",
            "name",
            "big1",
        ],
    );
    let out = n.headcni_ok(&["observe", "--format", "json"], 0);
    assert!(out.contains("big0"), "{out}");
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
}
