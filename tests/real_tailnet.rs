//! headcni against the real tailnet: real Headscale and real tailscaled
//! (tests/realnet), in host mode and daemon mode. Routes are approved by
//! Headscale's own `autoApprovers` policy, never by hand; peers are real
//! tailscaled nodes that accept the pods' routes.

mod common;
mod realnet;
mod tailnet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Lab, Procs};
use realnet::{join, policy, wait_ping, Control, Tailscaled};
use tailnet::{bulk, cni_add};

const CLUSTER: &str = "10.244.0.0/16";
const CLUSTER6: &str = "fd00:10:244::/56";

/// "The internet", Headscale on it, and a peer: a real tailscaled that
/// accepts subnet routes.
struct World {
    lab: Lab,
    inet: String,
    control: Control,
    peer: Tailscaled,
    key: PathBuf,
}

fn world() -> World {
    world_with(&policy(&[CLUSTER, CLUSTER6]))
}

/// [`world`] with Headscale's `policy`.
fn world_with(policy: &str) -> World {
    let mut lab = Lab::new();
    let inet = tailnet::internet(&mut lab, false);
    let control = Control::start(&mut lab, &inet, policy);
    let key = control.auth_key_file(&lab.dir.path().join("keys"));
    let peer_ns = lab.netns("peer");
    join(
        &lab,
        &inet,
        &peer_ns,
        "to-peer",
        "198.51.100.2",
        "198.51.100.1",
    );
    let peer = Tailscaled::start(&lab, &control, &peer_ns, "peer", "tailscale0", &[]);
    peer.up(&control, &key, &["--accept-routes"]);
    World {
        lab,
        inet,
        control,
        peer,
        key,
    }
}

impl World {
    /// A node namespace `name` on "the internet" at `ip` (gateway `gw`) with
    /// its own real tailscaled (host mode's), logged in with `flags`.
    fn host_node(
        &mut self,
        name: &str,
        (ip, gw): (&str, &str),
        env: &[(&str, &str)],
        flags: &[&str],
    ) -> (String, Tailscaled) {
        let node = self.lab.netns(name);
        join(&self.lab, &self.inet, &node, &format!("to-{name}"), ip, gw);
        let ts = Tailscaled::start(&self.lab, &self.control, &node, name, "tailscale0", env);
        ts.up(&self.control, &self.key, flags);
        (node, ts)
    }
}

/// Daemon mode: the supervised real tailscaled logs in to Headscale
/// through the tailnet namespace's way out with a pre-auth key, gets its
/// address, advertises the pod CIDR, which the policy approves; the peer
/// and a pod reach each other by their own addresses; tailscaled killed
/// and restarted by the supervisor comes back without a new key; a
/// restarted Headscale keeps the node connected.
#[test]
fn daemon_mode_logs_in_to_headscale_and_carries_pod_traffic() {
    let mut w = world();
    let node = w.lab.netns("node");
    let ts = w.lab.netns("ts");
    join(
        &w.lab,
        &w.inet,
        &node,
        "to-node",
        "203.0.113.2",
        "203.0.113.1",
    );
    let dir = w.lab.dir.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = realnet::daemon_spec(
        &dir,
        &ts,
        "cidr = \"10.244.1.0/24\"",
        "hostname = \"node-a\"",
        &w.control,
        &w.key,
    );
    let _daemon = Procs(vec![realnet::start_daemon(
        &node,
        &spec,
        &dir,
        &w.control,
        &[],
    )]);
    let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    realnet::wait_for(
        Duration::from_secs(60),
        "Headscale to approve node-a's pod CIDR",
        || {
            w.control
                .approved_routes("node-a")
                .iter()
                .any(|r| r == "10.244.1.0/24")
        },
        || format!("{:#?}\n{}\n{}", w.control.nodes(), log(), w.control.log()),
    );
    w.peer.wait_for_route("10.244.1.0/24");
    let (pod, ip) = cni_add(&mut w.lab, &node, &spec, "pod1");
    let peer_ip = w.peer.ip(false);
    wait_ping(&pod, &peer_ip, "pod -> peer over the real tailnet", log);
    wait_ping(&w.peer.ns, &ip, "peer -> pod by its own address", log);
    let seen = bulk(&pod, &w.peer.ns, &peer_ip, 7001, 4 << 20);
    assert_eq!(
        seen.ip().to_string(),
        ip,
        "the peer sees the pod's own address\n{}",
        log()
    );
    let seen = bulk(&w.peer.ns, &pod, &ip, 7002, 4 << 20);
    assert_eq!(
        seen.ip().to_string(),
        peer_ip,
        "the pod sees the peer's own address"
    );

    // tailscaled killed: the supervisor starts it again on its state, which
    // logs in again with no new key (Headscale still knows one node-a).
    let pid = realnet::daemon_status(&node, &spec)
        .and_then(|s| s["tailscaled"]["pid"].as_i64())
        .unwrap_or_else(|| panic!("no tailscaled pid\n{}", log()));
    // SAFETY: killing the tailscaled the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    realnet::wait_for(
        Duration::from_secs(30),
        "a new tailscaled",
        || {
            realnet::daemon_status(&node, &spec)
                .and_then(|s| s["tailscaled"]["pid"].as_i64())
                .is_some_and(|p| p != pid)
        },
        log,
    );
    wait_ping(
        &pod,
        &peer_ip,
        "pod -> peer after tailscaled's restart",
        log,
    );
    wait_ping(
        &w.peer.ns,
        &ip,
        "peer -> pod after tailscaled's restart",
        log,
    );
    let named = |name: &str| {
        w.control
            .nodes()
            .iter()
            .filter(|n| n["given_name"] == name)
            .count()
    };
    assert_eq!(
        named("node-a"),
        1,
        "the restarted tailscaled is the same node"
    );
    // Headscale restarted: the node stays connected and answers again.
    w.control.restart();
    wait_ping(&pod, &peer_ip, "pod -> peer after Headscale's restart", log);
    let seen = bulk(&pod, &w.peer.ns, &peer_ip, 7003, 1 << 20);
    assert_eq!(seen.ip().to_string(), ip);
    realnet::wait_for(
        Duration::from_secs(30),
        "node-a online at the restarted Headscale",
        || {
            w.control
                .nodes()
                .iter()
                .any(|n| n["given_name"] == "node-a" && n["online"] == true)
        },
        || w.control.log(),
    );
    common::wait_converged(&node, &spec);
}

/// `headcni plan` in `node`: its stderr, where host-tailnet findings go.
fn plan_findings(node: &str, spec: &std::path::Path) -> String {
    let out = common::headcni_in(node, spec, &["plan"]);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A host-mode spec for `node`'s own tailscaled `ts`: `pod_lines` under
/// `[pod_network]`; headcni asks the real CLI through `ts`'s socket.
fn host_mode_spec(
    dir: &std::path::Path,
    pod_cidr: &str,
    pod_lines: &str,
    ts: &Tailscaled,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let spec = tailnet::host_spec(dir, pod_cidr, pod_lines);
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str(&format!(
        "\n[daemon]\ntailscale = \"{}\"\n",
        ts.cli_wrapper().display()
    ));
    std::fs::write(&spec, text).unwrap();
    spec
}

/// Host mode beside a real host tailscaled (netfilter on, its default: its
/// rules 5210-5270, table 52 and its ts-* chains in the node): the pod CIDR
/// is advertised and approved by policy; a pod and a peer reach each other
/// by their own addresses over IPv4 and IPv6; what the host tailscaled
/// lacks (its SNAT, a route no policy approves) is told with its command;
/// `masquerade = "all"` reaches a peer that accepts no routes.
#[test]
fn host_mode_beside_a_real_host_tailscaled() {
    let mut w = world();
    let (node, host_ts) = w.host_node(
        "node-h",
        ("203.0.113.2", "203.0.113.1"),
        &[],
        &["--advertise-routes=10.244.2.0/24,fd00:10:244:2::/64"],
    );
    let dir = w.lab.dir.path().join("node");
    let spec = host_mode_spec(
        &dir,
        "10.244.2.0/24",
        "cidr6 = \"fd00:10:244:2::/64\"",
        &host_ts,
    );
    // tailscaled's default SNAT: reported, with the command that ends it.
    let findings = plan_findings(&node, &spec);
    assert!(
        findings.contains("tailscale set --snat-subnet-routes=false"),
        "{findings}"
    );
    let set = host_ts.cli(&["set", "--snat-subnet-routes=false"]);
    assert!(set.status.success(), "{set:?}");
    realnet::wait_for(
        Duration::from_secs(30),
        "no host-tailnet findings",
        || !plan_findings(&node, &spec).contains("host tailnet"),
        || plan_findings(&node, &spec),
    );
    common::apply_in(&node, &spec);
    let (pod, ips) = tailnet::cni_add_all(&mut w.lab, &node, &spec, "pod1");
    let (ip, ip6) = (ips[0].clone(), ips[1].clone());
    w.peer.wait_for_route("10.244.2.0/24");
    let (peer_ip, peer_ip6) = (w.peer.ip(false), w.peer.ip(true));
    let logs = || format!("{}\n{}", host_ts.log(), w.peer.log());
    wait_ping(&pod, &peer_ip, "pod -> peer's 100.x", logs);
    wait_ping(&pod, &peer_ip6, "pod -> peer's fd7a:115c:a1e0::", logs);
    wait_ping(&w.peer.ns, &ip, "peer -> pod (IPv4)", logs);
    wait_ping(&w.peer.ns, &ip6, "peer -> pod (IPv6)", logs);
    for (target, back, port) in [(&peer_ip, &ip, 7101), (&peer_ip6, &ip6, 7103)] {
        let seen = bulk(&pod, &w.peer.ns, target, port, 4 << 20);
        assert_eq!(
            &seen.ip().to_string(),
            back,
            "the peer sees the pod's own address"
        );
        let seen = bulk(&w.peer.ns, &pod, back, port + 1, 4 << 20);
        assert_eq!(
            &seen.ip().to_string(),
            target,
            "the pod sees the peer's own address"
        );
    }
    common::wait_converged(&node, &spec);

    // masquerade = "all": a peer that accepts no routes still answers, and
    // sees the node's tailnet address.
    let plain_ns = w.lab.netns("plain");
    join(
        &w.lab,
        &w.inet,
        &plain_ns,
        "to-plain",
        "198.51.100.18",
        "198.51.100.17",
    );
    let plain = Tailscaled::start(&w.lab, &w.control, &plain_ns, "plain", "tailscale0", &[]);
    plain.up(&w.control, &w.key, &[]);
    let plain_ip = plain.ip(false);
    let spec = host_mode_spec(
        &dir,
        "10.244.2.0/24",
        "cidr6 = \"fd00:10:244:2::/64\"\nmasquerade = \"all\"",
        &host_ts,
    );
    common::apply_in(&node, &spec);
    wait_ping(
        &pod,
        &plain_ip,
        "pod -> a peer without --accept-routes",
        logs,
    );
    let seen = bulk(&pod, &plain_ns, &plain_ip, 7105, 1 << 20);
    assert_eq!(
        seen.ip().to_string(),
        host_ts.ip(false),
        "masqueraded to the node's tailnet address"
    );

    // A second node whose pod CIDR no policy approves: told, with the command.
    let (other, other_ts) = w.host_node(
        "node-o",
        ("203.0.113.18", "203.0.113.17"),
        &[],
        &[
            "--advertise-routes=10.250.0.0/24",
            "--snat-subnet-routes=false",
        ],
    );
    let other_spec = host_mode_spec(
        &w.lab.dir.path().join("other"),
        "10.250.0.0/24",
        "",
        &other_ts,
    );
    let findings = plan_findings(&other, &other_spec);
    assert!(
        findings.contains("has not approved 10.250.0.0/24")
            && findings.contains("headscale nodes approve-routes"),
        "{findings}"
    );
    assert!(!findings.contains("snat-subnet-routes"), "{findings}");
}

/// A peer that advertises a route covering this node's pod CIDR (approved:
/// the policy's 10.244.0.0/16 itself) lands in the host tailscaled's table
/// 52, which rule 5270 consults before the main table: without headcni's
/// rule (`to POD_CIDR lookup main`, priority 5200) pod-to-pod traffic on
/// the node and a peer's traffic to a pod are sent into the tailnet. The
/// test removes that rule to see the capture, and headcni's apply mends it.
#[test]
fn a_peer_route_over_the_pod_cidr_does_not_capture_local_pod_traffic() {
    let mut w = world();
    let (node, host_ts) = w.host_node(
        "node-h",
        ("203.0.113.2", "203.0.113.1"),
        &[],
        &[
            "--advertise-routes=10.244.2.0/24",
            "--snat-subnet-routes=false",
            "--accept-routes",
        ],
    );
    let rogue_ns = w.lab.netns("rogue");
    join(
        &w.lab,
        &w.inet,
        &rogue_ns,
        "to-rogue",
        "198.51.100.34",
        "198.51.100.33",
    );
    let rogue = Tailscaled::start(&w.lab, &w.control, &rogue_ns, "rogue", "tailscale0", &[]);
    rogue.up(&w.control, &w.key, &["--advertise-routes=10.244.0.0/16"]);
    host_ts.wait_for_route("10.244.0.0/16");

    let spec = host_mode_spec(
        &w.lab.dir.path().join("node"),
        "10.244.2.0/24",
        "cluster_cidr = \"10.244.0.0/16\"",
        &host_ts,
    );
    common::apply_in(&node, &spec);
    let (a, ip_a) = cni_add(&mut w.lab, &node, &spec, "poda");
    let (_b, ip_b) = cni_add(&mut w.lab, &node, &spec, "podb");
    let logs = || host_ts.log();
    wait_ping(&a, &ip_b, "pod -> pod on the node", logs);
    wait_ping(&w.peer.ns, &ip_a, "peer -> pod", logs);
    assert!(w.lab.ping(&node, &ip_a), "the node reaches its pod");

    // Without headcni's rule, table 52 takes the node's own pod traffic.
    let rule = w.lab.ip(&node, &["rule", "show", "priority", "5200"]);
    assert!(rule.contains("to 10.244.2.0/24 lookup main"), "{rule}");
    w.lab.ip(&node, &["rule", "del", "priority", "5200"]);
    assert!(
        !w.lab.ping(&a, &ip_b),
        "captured by table 52 without the rule"
    );
    assert!(
        !w.lab.ping(&node, &ip_a),
        "captured by table 52 without the rule"
    );
    common::apply_in(&node, &spec);
    wait_ping(&a, &ip_b, "pod -> pod once headcni put its rule back", logs);
    wait_ping(
        &w.peer.ns,
        &ip_a,
        "peer -> pod once headcni put its rule back",
        logs,
    );
}

/// Pods on `a` and `b` reach each other by their own addresses, IPv4 and
/// IPv6, with TCP each way (`pods`: each node's namespace, spec and pod name).
fn pods_reach_each_other(
    lab: &mut Lab,
    a: (&str, &PathBuf),
    b: (&str, &PathBuf),
    port: u16,
    logs: impl Fn() -> String + Copy,
) {
    let (pa, ips_a) = tailnet::cni_add_all(lab, a.0, a.1, "pa");
    let (pb, ips_b) = tailnet::cni_add_all(lab, b.0, b.1, "pb");
    assert_eq!((ips_a.len(), ips_b.len()), (2, 2), "dual-stack pods");
    for (i, (ip_a, ip_b)) in ips_a.iter().zip(&ips_b).enumerate() {
        wait_ping(&pa, ip_b, "pod a -> pod b", logs);
        wait_ping(&pb, ip_a, "pod b -> pod a", logs);
        let p = port + 2 * i as u16;
        let seen = bulk(&pa, &pb, ip_b, p, 1 << 20);
        assert_eq!(&seen.ip().to_string(), ip_a, "b sees a's own address");
        let seen = bulk(&pb, &pa, ip_a, p + 1, 1 << 20);
        assert_eq!(&seen.ip().to_string(), ip_b, "a sees b's own address");
    }
}

/// The peer named `name` in `status` (`tailscale status --json`).
fn peer_named<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["Peer"]
        .as_object()?
        .values()
        .find(|p| p["HostName"] == name)
}

fn dual_pod_lines(n: u8) -> String {
    format!(
        "cidr6 = \"fd00:10:244:{n}::/64\"\ncluster_cidr = \"{CLUSTER}\"\ncluster_cidr6 = \"{CLUSTER6}\""
    )
}

/// Two daemon-mode nodes of one dual-stack cluster, each behind its own
/// masquerade, their supervised tailscaleds logged in to Headscale and
/// approved by policy: pods reach each other by their own addresses, and
/// the two tailscaleds talk directly (the forwarded port), not via DERP.
#[test]
fn two_daemon_mode_nodes_carry_pod_to_pod_traffic_directly() {
    let mut w = world();
    let mut procs = Procs(Vec::new());
    let mut nodes = Vec::new();
    for (n, name, ip, gw) in [
        (1u8, "node-a", "203.0.113.2", "203.0.113.1"),
        (3, "node-b", "203.0.113.18", "203.0.113.17"),
    ] {
        let (node, spec, dir, ts) = daemon_node(&mut w, (n, name, ip, gw));
        procs
            .0
            .push(realnet::start_daemon(&node, &spec, &dir, &w.control, &[]));
        nodes.push((node, spec, dir, ts));
    }
    let logs = || {
        nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.2.join("daemon.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (name, n) in [("node-a", 1), ("node-b", 3)] {
        realnet::wait_for(
            Duration::from_secs(60),
            &format!("{name}'s pod CIDRs approved"),
            || {
                let approved = w.control.approved_routes(name);
                approved.contains(&format!("10.244.{n}.0/24"))
                    && approved.contains(&format!("fd00:10:244:{n}::/64"))
            },
            logs,
        );
    }
    // Each tailscaled started only once its namespace's uplink was wired: its
    // first look at the links already shows node0 (otherwise it may stay
    // "network down", see supervisor::wait_for_uplink).
    for node in &nodes {
        let log = std::fs::read_to_string(node.2.join("daemon.log")).unwrap_or_default();
        let first = log.lines().find(|l| l.contains("link state:"));
        assert!(
            first.is_some_and(|l| l.contains("node0:[198.18.77.2/30")),
            "tailscaled's first link state in {}: {first:?}",
            node.2.display()
        );
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    pods_reach_each_other(&mut w.lab, (&a.0, &a.1), (&b.0, &b.1), 7201, logs);
    // node-a's tailscaled, asked through its socket: node-b is reached
    // directly (disco may take a moment after the first packets).
    wait_for_direct_path(&a.3, &a.2, ("node-b", "203.0.113.18"));
}

/// Waits until the supervised tailscaled of the daemon in `dir` (asked in
/// namespace `netns` through its socket) reaches `peer` directly at its
/// node address `at` (disco may take a moment after the first packets).
fn wait_for_direct_path(netns: &str, dir: &Path, (peer, at): (&str, &str)) {
    let status = || {
        let out = std::process::Command::new("timeout")
            .args(["20", "ip", "netns", "exec", netns])
            .arg(realnet::bins().tailscale)
            .arg(format!(
                "--socket={}",
                dir.join("state/tailscaled.sock").display()
            ))
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    realnet::wait_for(
        Duration::from_secs(30),
        &format!("a direct path to {peer}'s forwarded port"),
        || {
            peer_named(&status(), peer)
                .and_then(|p| {
                    p["CurAddr"]
                        .as_str()
                        .map(|a| a.starts_with(&format!("{at}:")))
                })
                .unwrap_or(false)
        },
        || format!("{:#}", status()),
    );
}

/// Two host-mode nodes of one dual-stack cluster beside real host
/// tailscaleds, one of which speaks only through Headscale's embedded DERP
/// server (TS_DEBUG_ALWAYS_USE_DERP): pods still reach each other by their
/// own addresses.
#[test]
fn two_host_mode_nodes_carry_pod_to_pod_traffic_through_derp() {
    let mut w = world();
    let mut nodes = Vec::new();
    for (n, name, ip, gw, env) in [
        (2u8, "node-c", "203.0.113.2", "203.0.113.1", vec![]),
        (
            4,
            "node-d",
            "203.0.113.18",
            "203.0.113.17",
            vec![("TS_DEBUG_ALWAYS_USE_DERP", "1")],
        ),
    ] {
        let routes = format!("--advertise-routes=10.244.{n}.0/24,fd00:10:244:{n}::/64");
        let (node, ts) = w.host_node(
            name,
            (ip, gw),
            &env,
            &[&routes, "--accept-routes", "--snat-subnet-routes=false"],
        );
        let spec = host_mode_spec(
            &w.lab.dir.path().join(name),
            &format!("10.244.{n}.0/24"),
            &dual_pod_lines(n),
            &ts,
        );
        common::apply_in(&node, &spec);
        nodes.push((node, spec, ts));
    }
    nodes[0].2.wait_for_route("10.244.4.0/24");
    nodes[1].2.wait_for_route("10.244.2.0/24");
    let (c, d) = (&nodes[0], &nodes[1]);
    let logs = || format!("{}\n{}", c.2.log(), d.2.log());
    pods_reach_each_other(&mut w.lab, (&c.0, &c.1), (&d.0, &d.1), 7301, logs);
    let status = d.2.status();
    let peer = peer_named(&status, "node-c").unwrap_or_else(|| panic!("node-c in {status}"));
    assert_eq!(peer["CurAddr"], "", "no direct path: {peer}");
    assert_eq!(
        peer["Relay"], "lab",
        "through the lab's DERP region: {peer}"
    );
}

/// A daemon-mode node `name` (pod CIDRs `10.244.n.0/24` and
/// `fd00:10:244:n::/64`) on "the internet" at `ip`/`gw`, logging in with
/// the lab's shared key: its namespace, spec, dir and tailnet namespace.
fn daemon_node(
    w: &mut World,
    (n, name, ip, gw): (u8, &str, &str, &str),
) -> (String, PathBuf, PathBuf, String) {
    let node = w.lab.netns(name);
    let ts = w.lab.netns(&format!("ts{n}"));
    join(&w.lab, &w.inet, &node, &format!("to-{name}"), ip, gw);
    let dir = w.lab.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = realnet::daemon_spec(
        &dir,
        &ts,
        &format!("cidr = \"10.244.{n}.0/24\"\n{}", dual_pod_lines(n)),
        &format!("hostname = \"{name}\""),
        &w.control,
        &w.key,
    );
    (node, spec, dir, ts)
}

/// [`daemon_node`] with `extra` appended to its spec, resync every 5 s,
/// and without the shared key unless `shared_key`.
fn zero_touch_node(
    w: &mut World,
    at: (u8, &str, &str, &str),
    shared_key: bool,
    extra: &str,
) -> (String, PathBuf, PathBuf) {
    let (node, spec, dir, _) = daemon_node(w, at);
    let mut text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("resync_seconds = 30", "resync_seconds = 5");
    if !shared_key {
        text = text
            .lines()
            .filter(|l| !l.starts_with("auth_key_file"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    std::fs::write(&spec, format!("{text}\n{extra}")).unwrap();
    (node, spec, dir)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Zero-touch join with an API key and no autoApprovers: each daemon finds
/// its own node at Headscale and approves exactly its own pod CIDRs (no
/// `headscale` command run for it); node-b logs in with a single-use key it
/// minted; a route unapproved by hand is drift, logged, and approved again
/// within a resync; Headscale stopped leaves pods working and CNI calls as
/// fast as before, and approval resumes when it is back; `uninstall --purge`
/// deletes the node from Headscale.
#[test]
fn daemons_with_an_api_key_approve_their_own_routes_and_leave_nothing_behind() {
    // Every node may talk to every other; nothing is approved by policy.
    let mut w = world_with(&policy(&[]));
    let api_key = w.control.api_key_file(&w.lab.dir.path().join("api"));
    let headscale = |mint: bool| {
        format!(
            "[headscale]\napi_key_file = \"{}\"\nca_file = \"{}\"\n{}",
            api_key.display(),
            w.control.ca_file().display(),
            if mint { "user = \"lab\"\n" } else { "" }
        )
    };
    let (with_shared, with_minted) = (headscale(false), headscale(true));
    let mut procs = Procs(Vec::new());
    let mut nodes = Vec::new();
    for (n, name, ip, gw) in [
        (1u8, "node-a", "203.0.113.2", "203.0.113.1"),
        (3, "node-b", "203.0.113.18", "203.0.113.17"),
        (5, "node-c", "203.0.113.34", "203.0.113.33"),
    ] {
        let minted = name == "node-b";
        let extra = if minted { &with_minted } else { &with_shared };
        let (node, spec, dir) = zero_touch_node(&mut w, (n, name, ip, gw), !minted, extra);
        procs
            .0
            .push(realnet::start_daemon(&node, &spec, &dir, &w.control, &[]));
        nodes.push((name, n, node, spec, dir));
    }
    let logs = || {
        nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.4.join("daemon.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let own = |n: u8| {
        sorted(vec![
            format!("10.244.{n}.0/24"),
            format!("fd00:10:244:{n}::/64"),
        ])
    };
    for (name, n, ..) in &nodes {
        realnet::wait_for(
            Duration::from_secs(60),
            &format!("{name} to approve its own pod CIDRs"),
            || sorted(w.control.approved_routes(name)) == own(*n),
            || format!("{:#?}\n{}\n{}", w.control.nodes(), logs(), w.control.log()),
        );
    }
    assert!(
        logs().contains("minted a single-use pre-auth key"),
        "node-b joined with a key of its own\n{}",
        logs()
    );
    // Each daemon sent its own CIDRs only: no node holds another's.
    for (name, n, ..) in &nodes {
        assert_eq!(sorted(w.control.approved_routes(name)), own(*n), "{name}");
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let (pa, ips_a) = tailnet::cni_add_all(&mut w.lab, &a.2, &a.3, "pa");
    let (pb, ips_b) = tailnet::cni_add_all(&mut w.lab, &b.2, &b.3, "pb");
    for (ip_a, ip_b) in ips_a.iter().zip(&ips_b) {
        wait_ping(&pa, ip_b, "pod a -> pod b", logs);
        wait_ping(&pb, ip_a, "pod b -> pod a", logs);
    }
    let status_a = || realnet::daemon_status(&a.2, &a.3).unwrap_or_default();
    assert_eq!(status_a()["approval"]["by"], "api", "{}", status_a());

    // An operator unapproves node-a's IPv4 CIDR by hand: drift, repaired.
    w.control.set_approved("node-a", "fd00:10:244:1::/64");
    realnet::wait_for(
        Duration::from_secs(15),
        "node-a's unapproved route approved again",
        || sorted(w.control.approved_routes("node-a")) == own(1),
        logs,
    );
    // The repair is logged as drift (the line follows the call it reports).
    realnet::wait_for(
        Duration::from_secs(5),
        "node-a to log the drift it repaired",
        || logs().contains("drift at Headscale: this node's pod CIDR 10.244.1.0/24"),
        logs,
    );
    realnet::wait_for(
        Duration::from_secs(10),
        "the repair in node-a's status",
        || status_a()["approval"]["drift_repairs"].as_u64() >= Some(1),
        || status_a().to_string(),
    );
    // Headscale's netmap carries the repair to node-b: its pod reaches node-a's again.
    wait_ping(&pb, &ips_a[0], "pod b -> pod a after the repair", logs);

    // Headscale down: CNI calls as fast, pods still reach each other. The
    // lab's only DERP server is Headscale's own, so what survives it is the
    // direct path between the two tailscaleds: wait for it first.
    wait_for_direct_path(&a.2, &a.4, ("node-b", "203.0.113.18"));
    let timed_add = |lab: &mut Lab, name: &str| {
        let started = std::time::Instant::now();
        tailnet::cni_add_all(lab, &a.2, &a.3, name);
        started.elapsed()
    };
    let up = timed_add(&mut w.lab, "up1").min(timed_add(&mut w.lab, "up2"));
    w.control.stop();
    realnet::wait_for(
        Duration::from_secs(20),
        "node-a's status to say Headscale is out of reach",
        || {
            status_a()["approval"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot reach Headscale"))
        },
        || status_a().to_string(),
    );
    let down = timed_add(&mut w.lab, "down1").min(timed_add(&mut w.lab, "down2"));
    eprintln!("CNI ADD (both families) with Headscale up {up:?}, down {down:?}");
    assert!(
        down < up * 2 + Duration::from_millis(200),
        "ADD with Headscale down took {down:?} against {up:?}"
    );
    let pass_ms = status_a()["last_pass"]["duration_ms"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("the last pass with Headscale down took {pass_ms} ms");
    assert!(pass_ms < 1000.0, "a pass with Headscale down: {pass_ms} ms");
    wait_ping(&pa, &ips_b[0], "pod a -> pod b with Headscale down", logs);

    // Back: approval resumes (a route unapproved while it was down).
    w.control.start_again();
    w.control.set_approved("node-b", "10.244.3.0/24");
    realnet::wait_for(
        Duration::from_secs(30),
        "node-b's route approved again once Headscale is back",
        || sorted(w.control.approved_routes("node-b")) == own(3),
        logs,
    );

    // node-c leaves: its daemon stopped, `uninstall --purge` deletes it there.
    let c = &nodes[2];
    let mut daemon_c = procs.0.remove(2);
    // SAFETY: signalling our own child; SIGTERM lets it stop its tailscaled.
    unsafe { libc::kill(daemon_c.id() as i32, libc::SIGTERM) };
    common::wait_until(Duration::from_secs(15), "node-c's daemon to stop", || {
        matches!(daemon_c.try_wait(), Ok(Some(_)))
    });
    let out = common::bounded(Duration::from_secs(60))
        .args(["ip", "netns", "exec", &c.2, common::headcni_bin()])
        .args(["uninstall", "--purge", "--record"])
        .arg(c.4.join("install.json"))
        .env("HEADCNI_SPEC", &c.3)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("- headscale node node-c"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        w.control.node_id("node-c"),
        None,
        "{:#?}",
        w.control.nodes()
    );
}

/// No API key: the autoApprovers stanza `headcni headscale-policy` prints,
/// loaded into Headscale, approves node-a's pod CIDRs and pods reach the
/// peer; node-d, outside those prefixes and with neither, is told in its
/// status what is missing and the command or policy that fixes it.
#[test]
fn the_printed_policy_approves_and_a_node_without_either_is_told_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("cluster.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\n[pod_network]\ncidr = \"10.244.1.0/24\"\n{}\n",
            dual_pod_lines(1)
        ),
    )
    .unwrap();
    let out = common::bounded(Duration::from_secs(10))
        .args([common::headcni_bin(), "headscale-policy", "--owner", "lab@"])
        .env("HEADCNI_SPEC", &spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stanza: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut policy: serde_json::Value =
        serde_json::from_str(&stanza).unwrap_or_else(|e| panic!("{e}: {stanza}"));
    policy["acls"] = serde_json::json!([{"action": "accept", "src": ["*"], "dst": ["*:*"]}]);
    let mut w = world_with(&policy.to_string());
    let mut procs = Procs(Vec::new());
    let (a_node, a_spec, a_dir) = zero_touch_node(
        &mut w,
        (1, "node-a", "203.0.113.2", "203.0.113.1"),
        true,
        "",
    );
    procs.0.push(realnet::start_daemon(
        &a_node,
        &a_spec,
        &a_dir,
        &w.control,
        &[],
    ));
    // node-d's pod CIDR is outside the cluster's: no policy approves it.
    let (d_node, d_spec, d_dir) = zero_touch_node(
        &mut w,
        (9, "node-d", "203.0.113.18", "203.0.113.17"),
        true,
        "",
    );
    let text = std::fs::read_to_string(&d_spec)
        .unwrap()
        .replace("10.244.9.0/24", "10.250.9.0/24")
        .replace(
            "cluster_cidr = \"10.244.0.0/16\"",
            "cluster_cidr = \"10.250.0.0/16\"",
        )
        .replace("fd00:10:244:9::/64", "fd00:10:250:9::/64")
        .replace(
            "cluster_cidr6 = \"fd00:10:244::/56\"",
            "cluster_cidr6 = \"fd00:10:250::/56\"",
        );
    std::fs::write(&d_spec, text).unwrap();
    procs.0.push(realnet::start_daemon(
        &d_node,
        &d_spec,
        &d_dir,
        &w.control,
        &[],
    ));
    let logs = || {
        [&a_dir, &d_dir]
            .iter()
            .map(|d| std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let status_of =
        |node: &str, spec: &PathBuf| realnet::daemon_status(node, spec).unwrap_or_default();
    realnet::wait_for(
        Duration::from_secs(60),
        "node-a approved by the printed policy, in its status",
        || {
            let s = status_of(&a_node, &a_spec);
            s["approval"]["by"] == "control server"
                && s["approval"]["routes"]
                    .as_array()
                    .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["approved"] == true))
        },
        || format!("{}\n{}", status_of(&a_node, &a_spec), logs()),
    );
    w.peer.wait_for_route("10.244.1.0/24");
    let (pod, ip) = cni_add(&mut w.lab, &a_node, &a_spec, "pod1");
    let peer_ip = w.peer.ip(false);
    wait_ping(
        &pod,
        &peer_ip,
        "pod -> peer, approved by the printed policy",
        logs,
    );
    wait_ping(&w.peer.ns, &ip, "peer -> pod", logs);
    realnet::wait_for(
        Duration::from_secs(60),
        "node-d's status to name the missing approval and its fixes",
        || {
            let advice = status_of(&d_node, &d_spec)["approval"]["advice"].to_string();
            advice.contains("has not approved 10.250.9.0/24")
                && advice.contains("headcni headscale-policy")
                && advice.contains("headscale nodes approve-routes")
                && advice.contains("api_key_file")
        },
        || format!("{}\n{}", status_of(&d_node, &d_spec), logs()),
    );
    let shown = common::bounded(Duration::from_secs(10))
        .args([
            "ip",
            "netns",
            "exec",
            &d_node,
            common::headcni_bin(),
            "status",
        ])
        .env("HEADCNI_SPEC", &d_spec)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("10.250.9.0/24 NOT approved"), "{shown}");
}
