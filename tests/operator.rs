//! What an operator meets first: logs fit for journald and pipelines, exit
//! codes that do not hide waiting work, full pod ids, completions and a man
//! page.

mod common;

use std::process::Command;

use common::{Lab, Node};

fn stderr_of(n: &Node, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &n.node, common::headcni_bin()])
        .args(args)
        .env("HEADCNI_SPEC", &n.spec)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // stderr is a pipe here, as under systemd or kubectl logs.
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn logs_are_plain_on_a_pipe_json_on_request_and_verbosity_is_as_documented() {
    let mut n = Node::new();
    n.add_pod("a");
    let (code, log) = stderr_of(&n, &[], &["-v", "plan"]);
    assert_eq!(code, Some(0));
    assert!(log.contains("DEBUG"), "-v is debug: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "no escape codes on a pipe: {log:?}"
    );

    let (code, log) = stderr_of(&n, &[], &["-v", "--log-format", "json", "plan"]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }

    let (code, log) = stderr_of(&n, &[("RUST_LOG", "headcni=loud")], &["plan"]);
    assert_eq!(code, Some(0));
    assert!(
        log.contains("RUST_LOG") && log.contains("not a log filter"),
        "{log}"
    );
}

#[test]
fn a_plan_that_waits_is_not_converged() {
    let mut n = Node::new();
    n.add_pod("a");
    n.headcni_ok(&["apply"], 0);
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    // The tailnet interface goes away: the tailnet route waits.
    n.lab.ip(&n.node, &["link", "del", "tailscale0"]);
    let out = n.headcni(&["plan", "--detailed-exitcode"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("waits for link tailscale0"), "{text}");
    assert!(!text.contains("matches the spec"), "{text}");
    assert!(text.contains("waiting"), "{text}");
}

#[test]
fn pods_are_named_by_their_whole_id() {
    let n = Node::new();
    // Three pods whose ids share their first 12 characters.
    let ids: Vec<String> = (0..3).map(|i| format!("0123456789abcdef-pod{i}")).collect();
    let mut lab = Lab::new();
    for id in &ids {
        let ns = lab.netns(&id[16..]);
        let path = Lab::ns_path(&ns);
        let out = n.headcni_ok(
            &["pod", "add", "--id", id, "--netns", path.to_str().unwrap()],
            0,
        );
        assert!(out.contains(id.as_str()), "{out}");
    }
    let text = n.headcni_ok(&["plan"], 0);
    let json = n.headcni_ok(&["plan", "--format", "json"], 0);
    for id in &ids {
        assert!(text.contains(&format!("[in pod {id}/eth0]")), "{text}");
        assert!(json.contains(id.as_str()), "{json}");
    }
}

#[test]
fn pod_add_refuses_a_namespace_that_is_not_there() {
    let n = Node::new();
    let out = n.headcni(&[
        "pod",
        "add",
        "--id",
        "p",
        "--netns",
        "/run/netns/hc-no-such-ns",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/netns/hc-no-such-ns"), "{err}");
    assert_eq!(n.intents(), 0);
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(common::headcni_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("headcni") && text.contains("plan") && text.contains("apply"),
            "{shell}"
        );
    }
    let out = Command::new(common::headcni_bin())
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH headcni 8") && page.contains("daemon"),
        "{page}"
    );
}
