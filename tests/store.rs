//! The pod-intent store shared by many processes at once.

use std::collections::BTreeSet;
use std::process::Command;

/// A throwaway network namespace for `--netns` (pod add checks that it is
/// one), removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("hcstore{}{tag}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn spec(dir: &std::path::Path, cidr: &str) -> std::path::PathBuf {
    let path = dir.join("headcni.toml");
    let text = format!(
        "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"{cidr}\"\n",
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn headcni(spec: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headcni"))
        .args(args)
        .env("HEADCNI_SPEC", spec)
        .output()
        .unwrap()
}

#[test]
fn parallel_processes_get_distinct_addresses_and_leave_nothing_behind() {
    let ns = Netns::new("t1");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "10.250.0.0/24");
    for round in 0..3 {
        let children: Vec<_> = (0..24)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_headcni"))
                    .args([
                        "pod",
                        "add",
                        "--id",
                        &format!("r{round}p{i}"),
                        "--netns",
                        &ns.path(),
                    ])
                    .env("HEADCNI_SPEC", &spec)
                    .output()
            })
            .collect();
        let mut ips = BTreeSet::new();
        for out in children {
            let out = out.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            ips.insert(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .nth(2)
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(ips.len(), 24, "distinct addresses");
        let dels: Vec<_> = (0..24)
            .map(|i| {
                std::thread::spawn({
                    let spec = spec.clone();
                    move || headcni(&spec, &["pod", "del", "--id", &format!("r{round}p{i}")])
                })
            })
            .collect();
        for d in dels {
            assert!(d.join().unwrap().status.success());
        }
        let list = headcni(&spec, &["pod", "list", "--format", "json"]);
        assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
    }
}

#[test]
fn exhausted_cidr_is_a_clear_error_and_keeps_existing_pods() {
    let ns = Netns::new("t2");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "10.250.0.0/29");
    for i in 0..5 {
        assert!(headcni(
            &spec,
            &[
                "pod",
                "add",
                "--id",
                &format!("p{i}"),
                "--netns",
                &ns.path()
            ]
        )
        .status
        .success());
    }
    let out = headcni(&spec, &["pod", "add", "--id", "p5", "--netns", &ns.path()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.250.0.0/29 is exhausted"), "{err}");
    let list = headcni(&spec, &["pod", "list", "--format", "json"]);
    let pods: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(pods.as_array().unwrap().len(), 5);
}

#[test]
fn bad_pod_arguments_are_refused() {
    let ns = Netns::new("t3");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "10.250.0.0/24");
    for args in [
        vec!["pod", "add", "--id", "../etc", "--netns", &ns.path()],
        vec![
            "pod",
            "add",
            "--id",
            "ok",
            "--netns",
            &ns.path(),
            "--ifname",
            "eth0123456789abc",
        ],
        vec!["pod", "add", "--id", "ok", "--netns", "relative/path"],
    ] {
        let out = headcni(&spec, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}
