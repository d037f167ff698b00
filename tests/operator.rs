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
        // klog's top-level fields, the event's own beside them.
        assert!(
            v["ts"].is_f64() && v["level"].is_string() && v["msg"].is_string(),
            "{line}"
        );
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
    // `pod list`: whole ids, and each column starts where its header does.
    let list = n.headcni_ok(&["pod", "list"], 0);
    let header = list.lines().next().unwrap_or_default();
    let at = header.find("NETNS").expect("NETNS column");
    for (line, id) in list.lines().skip(1).zip(&ids) {
        assert!(line.starts_with(id.as_str()), "{list}");
        assert!(line[at..].starts_with("/run/netns/"), "{list}");
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
    for section in ["EXIT STATUS", "FILES", "ENVIRONMENT"] {
        assert!(
            page.contains(&format!(".SH {section}"))
                || page.contains(&format!(".SH \"{section}\"")),
            "{section}"
        );
    }
}

/// A mistyped command line is a usage error (64, sysexits' EX_USAGE), never
/// 2, which `plan --detailed-exitcode` means as "changes pending"; --help
/// and --version answer with 0.
#[test]
fn a_mistyped_flag_exits_64_not_2() {
    let run = |args: &[&str]| {
        common::bounded(std::time::Duration::from_secs(10))
            .arg(common::headcni_bin())
            .args(args)
            .output()
            .unwrap()
    };
    for wrong in [
        &["plan", "--detailed-exitcode", "--typo"][..],
        &["no-such-command"],
        &["plan", "--format", "yaml"],
    ] {
        let out = run(wrong);
        assert_eq!(out.status.code(), Some(64), "{wrong:?}");
        assert!(!out.stderr.is_empty(), "{wrong:?} says why");
    }
    for fine in [&["--help"][..], &["--version"], &["plan", "--help"]] {
        assert_eq!(run(fine).status.code(), Some(0), "{fine:?}");
    }
}

/// `validate --offline` checks a spec with no root (a CI job's user): the
/// spec alone, not state_dir or key files.
#[test]
fn validate_offline_needs_no_root() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = dir.path().join("headcni.toml");
    std::fs::write(
        &spec,
        "version = 1\nmode = \"daemon\"\nstate_dir = \"/var/lib/headcni-nobody-can-write\"\n[pod_network]\ncidr = \"10.244.1.0/24\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&spec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        common::bounded(std::time::Duration::from_secs(10))
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(common::headcni_bin())
            .arg("--spec")
            .arg(&spec)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["validate", "--offline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad spec still fails offline, naming the field.
    std::fs::write(
        &spec,
        "version = 1\nmode = \"daemon\"\n[pod_network]\ncidr = \"10.244.1.0/33\"\n",
    )
    .unwrap();
    let out = as_nobody(&["validate", "--offline"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pod_network.cidr"), "{err}");
}

fn validate(spec: &std::path::Path) -> std::process::Output {
    common::bounded(std::time::Duration::from_secs(10))
        .arg(common::headcni_bin())
        .arg("--spec")
        .arg(spec)
        .arg("validate")
        .output()
        .unwrap()
}

/// Daemon mode: `validate` refuses a spec whose tailscaled is not there
/// (the daemon would run and fail to start it forever).
#[test]
fn validate_names_a_missing_tailscaled() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("headcni.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.244.1.0/24\"\n[daemon]\ntailscaled = \"/nonexistent/tailscaled\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = validate(&spec);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        // Named where it is written: line 7 (the [daemon] table's first), the value's column.
        err.contains("headcni.toml:7:14: daemon.tailscaled")
            && err.contains("/nonexistent/tailscaled"),
        "{err}"
    );
    // A key file others may read: named by line and column too.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("authkey");
    std::fs::write(&key, "k").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        format!("{text}auth_key_file = \"{}\"\n", key.display()),
    )
    .unwrap();
    let out = validate(&spec);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("headcni.toml:8:17: daemon.auth_key_file"),
        "{err}"
    );
}
