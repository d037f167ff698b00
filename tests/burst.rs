//! A node full of pods at once: parallel CNI ADDs and DELs, with the daemon
//! taking them in batches, with no daemon, and with the daemon killed in
//! the middle of a burst.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{status, wait_until, CniCall, CniOut, Daemon, Lab, Node};

const PODS: usize = 24;

/// `PODS` pod namespaces in `n`'s lab.
fn pod_namespaces(n: &mut Node) -> Vec<String> {
    (0..PODS).map(|i| n.lab.netns(&format!("b{i}"))).collect()
}

/// Every call at once (one thread each, as a runtime's workers); the
/// answers in the order of `pods`. `after_first`: run once one answer is in.
fn burst(
    n: &Node,
    command: &str,
    pods: &[String],
    after_first: impl FnOnce() + Send,
) -> Vec<CniOut> {
    let answered = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let calls: Vec<_> = pods
            .iter()
            .map(|ns| {
                let answered = &answered;
                s.spawn(move || {
                    let path = Lab::ns_path(ns);
                    let call = CniCall::of(command, ns, &path);
                    let out = n.cni(&call, &n.cni_conf("1.1.0"));
                    answered.fetch_add(1, Ordering::SeqCst);
                    out
                })
            })
            .collect();
        wait_until(Duration::from_secs(60), "a first answer", || {
            answered.load(Ordering::SeqCst) > 0
        });
        after_first();
        calls
            .into_iter()
            .map(|c| c.join().expect("CNI call thread"))
            .collect()
    })
}

/// A pod's address from its ADD result.
fn address(o: &CniOut) -> String {
    o.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {}", o.stdout))
        .to_string()
}

fn addresses(outs: &[CniOut]) -> Vec<String> {
    outs.iter().map(address).collect()
}

/// The node holds exactly `pods`' wiring: one owned link each, its /32
/// route, and inside each pod its address; the store holds their intents
/// and no address held by a removed attachment.
fn assert_wired(n: &Node, pods: &[String], addresses: &[String]) {
    assert_eq!(n.owned_links().len(), pods.len(), "{:?}", n.owned_links());
    let routes = n.owned_routes();
    for (ns, cidr) in pods.iter().zip(addresses) {
        let ip = cidr.split('/').next().unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.starts_with(&format!("{ip} dev hc"))),
            "no route to {ip} for {ns}: {routes:?}"
        );
        let inside = n.lab.ip(ns, &["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(inside.contains(&format!("{ip}/32")), "{ns}: {inside}");
    }
    assert_eq!(n.intents(), pods.len());
}

fn assert_all_ok(outs: &[CniOut], what: &str) {
    for o in outs {
        assert_eq!(o.code, 0, "{what}: {}\n{}", o.stdout, o.stderr);
    }
}

/// After the DELs: no pod route and no intent at once; no pod link and no
/// held address soon (a DEL the daemon answered leaves its link, cut off,
/// to the daemon's next pass).
fn assert_emptied(n: &Node) {
    assert!(
        !n.owned_routes().iter().any(|r| r.contains("dev hc")),
        "{:?}",
        n.owned_routes()
    );
    assert_eq!(n.intents(), 0);
    wait_until(Duration::from_secs(10), "the pod links gone", || {
        n.owned_links().is_empty()
    });
    wait_until(Duration::from_secs(10), "their addresses free", || {
        n.releasing().is_empty()
    });
}

#[test]
fn a_burst_handed_to_the_daemon_is_wired_in_batches() {
    common::require_root();
    let mut n = Node::new();
    let pods = pod_namespaces(&mut n);
    let _daemon = Daemon::start(&n);

    let added = burst(&n, "ADD", &pods, || {});
    assert_all_ok(&added, "ADD");
    let ips = addresses(&added);
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        PODS,
        "distinct addresses: {ips:?}"
    );
    assert_wired(&n, &pods, &ips);
    // The answers' MACs come from the batch's observation: a few checked.
    for (ns, o) in pods.iter().zip(&added).step_by(PODS / 4) {
        common::assert_result_macs(&o.json, &n.node, ns);
    }
    let s = status(&n).expect("status");
    let (calls, batches) = (s["cni_calls"].as_u64(), s["cni_batches"].as_u64());
    assert_eq!(calls, Some(PODS as u64), "{s}");
    assert!(
        batches.is_some_and(|b| b < PODS as u64),
        "calls coalesce into fewer passes: {s}"
    );
    // Whatever path a pod took, CHECK and plan see the same state.
    for ns in &pods {
        let path = Lab::ns_path(ns);
        let call = CniCall {
            command: "CHECK",
            ..CniCall::add(ns, &path)
        };
        let out = n.cni(&call, &n.cni_conf("1.1.0"));
        assert_eq!(out.code, 0, "CHECK {ns}: {}", out.stdout);
    }
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    // GC that keeps every pod keeps every pod.
    let mut conf = n.cni_conf("1.1.0");
    conf["cni.dev/valid-attachments"] = pods
        .iter()
        .map(|ns| serde_json::json!({ "containerID": ns, "ifname": "eth0" }))
        .collect();
    let gc = n.cni(&CniCall::new("GC"), &conf);
    assert_eq!(gc.code, 0, "{}\n{}", gc.stdout, gc.stderr);
    assert_wired(&n, &pods, &ips);

    let deleted = burst(&n, "DEL", &pods, || {});
    assert_all_ok(&deleted, "DEL");
    assert_emptied(&n);
    let s = status(&n).expect("status");
    assert_eq!(s["cni_calls"].as_u64(), Some(2 * PODS as u64), "{s}");
}

#[test]
fn a_burst_without_a_daemon_still_passes() {
    common::require_root();
    let mut n = Node::new();
    let pods = pod_namespaces(&mut n);
    let added = burst(&n, "ADD", &pods, || {});
    assert_all_ok(&added, "ADD");
    let ips = addresses(&added);
    assert_eq!(ips.iter().collect::<BTreeSet<_>>().len(), PODS, "{ips:?}");
    assert_wired(&n, &pods, &ips);
    let deleted = burst(&n, "DEL", &pods, || {});
    assert_all_ok(&deleted, "DEL");
    assert_emptied(&n);
}

#[test]
fn the_daemon_killed_mid_burst_leaves_every_call_answered() {
    common::require_root();
    let mut n = Node::new();
    let pods = pod_namespaces(&mut n);
    let mut daemon = Daemon::start(&n);
    let pid = daemon.pid().expect("daemon pid");
    let kill = || {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    };
    let added = burst(&n, "ADD", &pods, kill);
    daemon.stop();
    // Each call answered: wired (by the daemon or, once it was gone, by
    // the plugin itself) or a clear CNI error.
    let (mut ok_pods, mut ok_ips) = (Vec::new(), Vec::new());
    for (ns, o) in pods.iter().zip(&added) {
        if o.code == 0 {
            ok_pods.push(ns.clone());
            ok_ips.push(address(o));
        } else {
            assert!(
                o.json["code"].as_u64().is_some() && o.json["msg"].is_string(),
                "{ns}: {}\n{}",
                o.stdout,
                o.stderr
            );
        }
    }
    assert!(!ok_pods.is_empty());
    // Back again, the daemon converges the node.
    let _daemon = Daemon::start(&n);
    wait_until(Duration::from_secs(20), "the node converged", || {
        n.headcni(&["plan", "--detailed-exitcode"]).status.code() == Some(0)
    });
    assert_wired(&n, &ok_pods, &ok_ips);
    // Someone else's link in headcni's link group: never deleted with ours.
    let group = headcni::model::LINK_GROUP.to_string();
    n.in_node(&[
        "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    n.in_node(&["ip", "link", "set", "other0", "group", &group]);
    let deleted = burst(&n, "DEL", &pods, || {});
    assert_all_ok(&deleted, "DEL");
    assert_emptied(&n);
    n.in_node(&["ip", "link", "show", "other0"]);
    n.in_node(&["ip", "link", "del", "other0"]);
}

/// Unmounts a bind mount when dropped, also on a failed assertion.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_namespace_the_daemon_cannot_see_is_wired_by_the_plugin() {
    common::require_root();
    let mut n = Node::new();
    let pod = n.lab.netns("unseen");
    // The pod's namespace at a path under a directory the daemon's own
    // mount namespace covers with an empty tmpfs.
    let hidden = n.lab.dir.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    let netns = hidden.join("pod");
    std::fs::write(&netns, "").unwrap();
    common::sh(&[
        "mount",
        "--bind",
        Lab::ns_path(&pod).to_str().unwrap(),
        netns.to_str().unwrap(),
    ]);
    let _unmount = Unmount(netns.clone());
    let cover = format!(
        "mount -t tmpfs hidden {} && exec \"$0\" \"$@\"",
        hidden.display()
    );
    let _daemon = Daemon::start_under(
        &n,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &cover,
        ],
    );
    let out = n.cni(&CniCall::add(&pod, &netns), &n.cni_conf("1.1.0"));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("declined"),
        "the daemon said why: {}",
        out.stderr
    );
    let inside = n.lab.ip(&pod, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains(&address(&out)), "{inside}");
    let s = status(&n).expect("status");
    assert_eq!(s["cni_calls"].as_u64(), Some(0), "{s}");
    let del = n.cni_del(&pod, netns.to_str());
    assert_eq!(del.code, 0, "{}\n{}", del.stdout, del.stderr);
    assert_emptied(&n);
}
