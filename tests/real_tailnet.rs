//! headcni against the real tailnet: real Headscale and real tailscaled
//! (tests/realnet), in host mode and daemon mode. Routes are approved by
//! Headscale's own `autoApprovers` policy, never by hand; peers are real
//! tailscaled nodes that accept the pods' routes.

mod common;
mod realnet;
mod tailnet;

use std::path::PathBuf;
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
    let mut lab = Lab::new();
    let inet = tailnet::internet(&mut lab, false);
    let control = Control::start(&mut lab, &inet, &policy(&[CLUSTER, CLUSTER6]));
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
    let status = || {
        let out = std::process::Command::new("timeout")
            .args(["20", "ip", "netns", "exec", &a.3])
            .arg(realnet::bins().tailscale)
            .arg(format!(
                "--socket={}",
                a.2.join("state/tailscaled.sock").display()
            ))
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    realnet::wait_for(
        Duration::from_secs(30),
        "a direct path to node-b's forwarded port",
        || {
            peer_named(&status(), "node-b")
                .and_then(|p| {
                    p["CurAddr"]
                        .as_str()
                        .map(|a| a.starts_with("203.0.113.18:"))
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
