//! Bad local state never costs a pod its network: an unreadable store is an
//! error for every command, the daemon and the CNI plugin, never "no pods";
//! a missing store removes nothing; one pod network has one store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{run_plugin, wait_until, CniCall, Lab, Node};
use serde_json::json;

/// What a pod's network is made of, as the kernel holds it.
#[derive(Debug, PartialEq)]
struct Wiring {
    links: Vec<String>,
    routes: Vec<String>,
    pod_addresses: Vec<String>,
}

fn wiring(n: &Node, pods: &[&str]) -> Wiring {
    Wiring {
        links: n.owned_links(),
        routes: n.owned_routes(),
        pod_addresses: pods
            .iter()
            .map(|ns| n.lab.ip(ns, &["-4", "-o", "addr", "show", "dev", "eth0"]))
            .collect(),
    }
}

/// A spec like the node's, with another state_dir (and optionally CIDR).
fn spec_with(n: &Node, name: &str, state_dir: &Path, cidr: &str) -> PathBuf {
    let path = n.lab.dir.path().join(name);
    let text = format!(
        "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\ncidr = \"{cidr}\"\n\n[tailnet]\ninterface = \"tailscale0\"\n",
        state_dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Root without the capabilities that bypass file permissions, as a
/// wrapper the tests run in place of the binary (CLI and plugin alike).
fn without_dac_override(n: &Node) -> PathBuf {
    let path = n.lab.dir.path().join("headcni-no-dac");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -dac_override,-dac_read_search -- {} \"$@\"\n",
            common::headcni_bin()
        ),
    )
    .unwrap();
    sh_chmod(&path, "755");
    path
}

fn sh_chmod(path: &Path, mode: &str) {
    common::sh(&["chmod", mode, path.to_str().unwrap()]);
}

fn run(n: &Node, bin: &Path, spec: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &n.node])
        .arg(bin)
        .args(args)
        .env("HEADCNI_SPEC", spec)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The daemon with `spec`: either it exits at once with an error, or it runs
/// and its passes fail; both name `path`. Stopped before returning.
fn daemon_refuses(n: &Node, bin: &Path, spec: &Path, path: &str) {
    let log = n.lab.dir.path().join("daemon-bad.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.node])
        .arg(bin)
        .arg("daemon")
        .env("HEADCNI_SPEC", spec)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut exited = None;
    wait_until(
        Duration::from_secs(10),
        "the daemon to refuse the store",
        || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            log.contains("failed") && log.contains(path)
        },
    );
    match exited {
        Some(status) => assert!(!status.success(), "daemon exited 0 with a bad state_dir"),
        None => {
            // SAFETY: signalling the child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains(path), "the daemon's log names {path}: {log}");
}

#[test]
fn an_unreadable_store_is_an_error_everywhere_and_changes_nothing() {
    let mut n = Node::new();
    let a = n.lab.netns("a");
    let b = n.lab.netns("b");
    n.cni_add(&a);
    n.cni_add(&b);
    n.headcni_ok(&["apply"], 0);
    let before = wiring(&n, &[&a, &b]);
    assert_eq!(before.links.len(), 2);
    let fresh = n.lab.netns("fresh");
    let fresh_path = Lab::ns_path(&fresh).to_str().unwrap().to_string();

    let dir = n.lab.dir.path().to_path_buf();
    let plain = dir.join("plain");
    std::fs::write(&plain, "not a directory").unwrap();
    let real_store = dir.join("state");
    let no_dac = without_dac_override(&n);
    let bin = PathBuf::from(common::headcni_bin());
    let cases: Vec<(&str, PathBuf, &Path)> = vec![
        ("under a plain file", plain.join("state"), &bin),
        (
            "a path too long",
            dir.join("x".repeat(300)).join("state"),
            &bin,
        ),
        ("no permission", real_store.clone(), &no_dac),
    ];
    for (what, state_dir, bin) in cases {
        let spec = spec_with(&n, "bad.toml", &state_dir, common::POD_CIDR);
        if what == "no permission" {
            sh_chmod(&real_store, "000");
        }
        // The error names the store or its state_dir.
        let named = |out: &Output| {
            let t = text(out);
            t.contains(&*state_dir.to_string_lossy()) || t.contains(&*plain.to_string_lossy())
        };
        for args in [
            &["apply"][..],
            &["plan"],
            &["plan", "--detailed-exitcode"],
            &["pod", "list"],
            &["pod", "add", "--id", "by-hand", "--netns", &fresh_path],
            &["pod", "del", "--id", &a],
        ] {
            let out = run(&n, bin, &spec, args);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what}: headcni {args:?}: {}",
                text(&out)
            );
            assert!(
                named(&out),
                "{what}: headcni {args:?} names the path: {}",
                text(&out)
            );
        }
        let conf =
            json!({"cniVersion": "1.1.0", "name": "headcni", "type": "headcni", "spec": spec});
        for (command, id, netns) in [
            ("ADD", "newpod", Some(fresh_path.as_str())),
            ("DEL", a.as_str(), None),
        ] {
            let call = CniCall {
                command,
                container_id: Some(id),
                netns,
                ifname: Some("eth0"),
            };
            let out = run_plugin(&n.node, bin.to_str().unwrap(), &call, &conf.to_string());
            assert_eq!(out.code, 1, "{what}: CNI {command}: {}", out.stdout);
            assert_eq!(
                out.json["code"], 100,
                "{what}: CNI {command} is a store failure (docs/cni.md): {}",
                out.stdout
            );
            assert!(
                out.json["msg"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&*state_dir.to_string_lossy())
                    || out.stdout.contains(&*plain.to_string_lossy()),
                "{what}: CNI {command} names the path: {}",
                out.stdout
            );
        }
        daemon_refuses(
            &n,
            bin,
            &spec,
            &state_dir
                .to_string_lossy()
                .chars()
                .take(60)
                .collect::<String>(),
        );
        sh_chmod(&real_store, "700");
        assert_eq!(
            wiring(&n, &[&a, &b]),
            before,
            "{what}: the pods' wiring is untouched"
        );
        assert_eq!(n.intents(), 2, "{what}: no intent was lost");
    }
    assert!(
        n.lab.ip(&fresh, &["-o", "link"]).lines().count() == 1,
        "nothing was made in the new pod's namespace"
    );
    // With the store back, all is as it was.
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
}

#[test]
fn a_missing_store_removes_no_pod_and_init_takes_responsibility() {
    let mut n = Node::new();
    let a = n.lab.netns("a");
    n.cni_add(&a);
    let before = wiring(&n, &[&a]);
    let moved = n.lab.dir.path().join("moved-state");
    let spec = spec_with(&n, "moved.toml", &moved, common::POD_CIDR);
    let bin = PathBuf::from(common::headcni_bin());
    for args in [&["apply"][..], &["plan"]] {
        let out = run(&n, &bin, &spec, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "headcni {args:?}: {}",
            text(&out)
        );
        let t = text(&out);
        assert!(
            t.contains("no pod store at") && t.contains(&*moved.to_string_lossy()),
            "{t}"
        );
        assert!(t.contains("pod init"), "says how to go on: {t}");
    }
    assert_eq!(wiring(&n, &[&a]), before, "nothing removed on no evidence");
    // GC with an empty valid list on the moved store removes nothing either.
    let conf = json!({"cniVersion": "1.1.0", "name": "headcni", "type": "headcni", "spec": spec,
                      "cni.dev/valid-attachments": []});
    let out = run_plugin(
        &n.node,
        common::headcni_bin(),
        &CniCall::new("GC"),
        &conf.to_string(),
    );
    assert_ne!(out.code, 0, "GC refuses too: {}", out.stdout);
    assert_eq!(wiring(&n, &[&a]), before);
    // An operator who means it creates the empty store; then apply removes the orphan.
    let out = run(&n, &bin, &spec, &["pod", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&n, &bin, &spec, &["apply"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        n.owned_links().is_empty(),
        "the orphaned pod link is removed once a store says so"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&moved).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "state_dir is private");
}

#[test]
fn one_pod_network_has_one_store() {
    let mut n = Node::new();
    let a = n.lab.netns("a");
    n.cni_add(&a);
    let before = wiring(&n, &[&a]);
    let fresh = n.lab.netns("fresh");
    let fresh_path = Lab::ns_path(&fresh).to_str().unwrap().to_string();
    let add = CniCall {
        command: "ADD",
        container_id: Some("other"),
        netns: Some(&fresh_path),
        ifname: Some("eth0"),
    };
    let del = CniCall {
        command: "DEL",
        container_id: Some(&a),
        netns: None,
        ifname: Some("eth0"),
    };
    let elsewhere = n.lab.dir.path().join("elsewhere");
    for (state_dir, mention) in [
        (json!(elsewhere), "differs from state_dir"),
        (json!("relative/state"), "absolute"),
    ] {
        let mut conf = n.cni_conf("1.1.0");
        conf["stateDir"] = state_dir;
        for call in [&add, &del] {
            let out = n.cni(call, &conf);
            assert_eq!(out.json["code"], 7, "{}: {}", call.command, out.stdout);
            assert!(
                out.json["msg"].as_str().unwrap().contains(mention),
                "{}",
                out.stdout
            );
        }
    }
    assert!(!elsewhere.exists(), "no second store was made");
    // The spec's own state_dir, named again, is fine.
    let mut conf = n.cni_conf("1.1.0");
    conf["stateDir"] = json!(n.lab.dir.path().join("state"));
    let out = n.cni(&add, &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let out = n.cni(
        &CniCall {
            container_id: Some("other"),
            ..CniCall::new("DEL")
        },
        &conf,
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(wiring(&n, &[&a]), before);

    // The store records its CIDR: a spec with another one is refused, not used.
    let other_cidr = spec_with(
        &n,
        "other-cidr.toml",
        &n.lab.dir.path().join("state"),
        "10.245.0.0/24",
    );
    let bin = PathBuf::from(common::headcni_bin());
    for args in [&["apply"][..], &["pod", "list"], &["validate"]] {
        let out = run(&n, &bin, &other_cidr, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("10.244.0.0/24") && text(&out).contains("10.245.0.0/24"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(wiring(&n, &[&a]), before);
}

#[test]
fn validate_checks_state_dir() {
    let n = Node::new();
    let dir = n.lab.dir.path();
    let bin = PathBuf::from(common::headcni_bin());
    std::fs::write(dir.join("plain"), "").unwrap();
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    sh_chmod(&open, "777");
    for (state_dir, mention) in [
        (dir.join("plain").join("state"), "Not a directory"),
        (dir.join("plain"), "not a directory"),
        (open.clone(), "others can write it"),
        (dir.join("y".repeat(300)), "File name too long"),
    ] {
        let spec = spec_with(&n, "v.toml", &state_dir, common::POD_CIDR);
        let out = run(&n, &bin, &spec, &["validate"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(mention), "{}", text(&out));
        assert!(text(&out).contains("state_dir"), "{}", text(&out));
    }
    let spec = spec_with(
        &n,
        "v.toml",
        &dir.join("new").join("state"),
        common::POD_CIDR,
    );
    let out = run(&n, &bin, &spec, &["validate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("will be created"), "{}", text(&out));
}
