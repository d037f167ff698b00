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
    tailnet::assert_converged(&node, &spec);
}
