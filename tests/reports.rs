//! Saved plans, snapshots and drift reports, against the real kernel in
//! throwaway namespaces (and offline, as an unprivileged user).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Node;

#[test]
fn saved_plan_is_applied_exactly_or_refused_when_stale() {
    let mut n = Node::new();
    n.add_pod("pod1");
    let plan_file = n.lab.dir.path().join("plan.json");
    let plan_path = plan_file.to_str().unwrap();
    let shown = n.headcni_ok(&["plan", "--out", plan_path], 0);
    assert!(shown.contains("to add"), "{shown}");
    let applied = n.headcni_ok(&["apply", plan_path], 0);
    assert_eq!(
        applied.lines().filter(|l| l.starts_with('+')).count(),
        shown.lines().filter(|l| l.starts_with('+')).count()
    );
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);

    // A route changes between plan and apply: refused, nothing applied.
    let (pod2, _) = n.add_pod("pod2");
    n.headcni_ok(&["plan", "--out", plan_path], 0);
    n.lab
        .ip(&n.node, &["route", "del", "100.64.0.0/10", "proto", "104"]);
    let before = n.node_routes();
    let out = n.headcni(&["apply", plan_path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stale plan")
            && err.contains("the node's network state")
            && err.contains("nothing was applied"),
        "{err}"
    );
    assert!(
        err.contains("What moved") && err.contains("- node: route 100.64.0.0/10 dev tailscale0"),
        "names what moved: {err}"
    );
    assert_eq!(n.node_routes(), before, "nothing applied");
    assert_eq!(
        n.lab.ip(&pod2, &["-o", "link"]).lines().count(),
        1,
        "pod2 not wired"
    );

    // The spec changes: refused too.
    n.headcni_ok(&["plan", "--out", plan_path], 0);
    n.write_spec("\n[[route]]\ndestination = \"192.0.2.0/24\"\nvia = \"203.0.113.1\"\n");
    let out = n.headcni(&["apply", plan_path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the spec"));

    // A fresh plan applies.
    n.headcni_ok(&["plan", "--out", plan_path], 0);
    n.headcni_ok(&["apply", plan_path], 0);
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    assert!(n.lab.ping(&pod2, "100.64.0.5"));
}

#[test]
fn offline_plan_runs_unprivileged_without_netlink_or_store() {
    let mut n = Node::new();
    n.add_pod("pod1");
    n.add_pod("pod2");
    n.headcni_ok(&["apply"], 0);
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let snap = shared.path().join("snapshot.json");
    n.headcni_ok(&["observe", "--out", snap.to_str().unwrap()], 0);
    // A spec change to review in CI: a smaller MTU.
    let spec = std::fs::read_to_string(&n.spec)
        .unwrap()
        .replace("[pod_network]\n", "[pod_network]\nmtu = 1400\n");
    let new_spec = shared.path().join("headcni.toml");
    std::fs::write(&new_spec, spec).unwrap();
    for f in [&snap, &new_spec] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // As nobody, in the machine's own namespace (which holds none of these
    // links): the plan can only come from the snapshot. The store is root-only.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::headcni_bin())
        .args([
            "plan",
            "--observed",
            snap.to_str().unwrap(),
            "--spec",
            new_spec.to_str().unwrap(),
            "--detailed-exitcode",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("mtu 1500 -> 1400"))
            .count(),
        4,
        "{text}"
    );
    assert!(
        text.contains("Plan: 0 to add, 4 to change, 0 to remove."),
        "{text}"
    );
}

#[test]
fn drift_is_told_apart_from_pending_changes() {
    let mut n = Node::new();
    n.add_pod("pod1");
    let never = n.headcni(&["plan", "--drift"]);
    assert_eq!(never.status.code(), Some(2), "never applied: all pending");
    n.headcni_ok(&["apply"], 0);
    let clean = n.headcni_ok(&["plan", "--drift"], 0);
    assert!(clean.contains("Result: clean."), "{clean}");

    // A new pod intent: pending, not drift.
    n.add_pod("pod2");
    let pending = n.headcni_ok(&["plan", "--drift"], 2);
    assert!(
        pending.contains("Pending changes") && pending.contains("Result: pending changes."),
        "{pending}"
    );

    // Someone deletes an owned route: drift (outranks pending).
    n.lab
        .ip(&n.node, &["route", "del", "100.64.0.0/10", "proto", "104"]);
    let drift = n.headcni_ok(&["plan", "--drift"], 3);
    assert!(
        drift.contains("+ route 100.64.0.0/10 dev tailscale0"),
        "{drift}"
    );
    let junit = n.headcni_ok(&["plan", "--drift", "--format", "junit"], 3);
    assert!(
        junit.contains("<testsuite name=\"headcni drift\"") && junit.contains("<failure"),
        "{junit}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&n.headcni_ok(&["plan", "--drift", "--format", "json"], 3)).unwrap();
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["drift"]["steps"][0]["changes"][0]["field"], "present");
    let diff = n.headcni_ok(&["plan", "--drift", "--format", "diff"], 3);
    assert!(
        diff.contains("+node: route 100.64.0.0/10 dev tailscale0"),
        "{diff}"
    );

    n.headcni_ok(&["apply"], 0);
    n.headcni_ok(&["plan", "--drift"], 0);
}

/// `plan --format diff` for a pod not wired yet: its pod end of the veth
/// (made by the node's veth step) is a `+` line, never shown as unchanged.
#[test]
fn the_diff_shows_a_missing_pod_link_as_added() {
    let mut n = Node::new();
    let (_pod, _ip) = n.add_pod("pod1");
    let diff = n.headcni_ok(&["plan", "--format", "diff"], 0);
    let pod_links: Vec<&str> = diff
        .lines()
        .filter(|l| l.contains(": link eth0") && l.contains("pod "))
        .collect();
    assert!(!pod_links.is_empty(), "{diff}");
    for line in pod_links {
        assert!(line.starts_with('+'), "{line}\n{diff}");
    }
}
