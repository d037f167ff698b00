//! CNI latency, one run, real kernel, throwaway namespaces (root): ADD and DEL
//! as whole-process invocations, headcni against the reference `ptp` +
//! `host-local` plugins (Debian's containernetworking-plugins), interleaved
//! so both see the same machine. `cargo bench --bench cni` prints the figures;
//! HEADCNI_BENCH_BASELINE=PATH measures another headcni binary (an older
//! build) in the same rounds, on a state_dir of its own, for before/after.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ms, percentile, reference_plugin, require_root, sh, start_plugin, Netns};

const ROUNDS: usize = 150;

/// Runs one plugin invocation the way a runtime does; returns its wall time.
fn invoke(plugin: &Path, command: &str, id: &str, netns: &str, conf: &str) -> Duration {
    let started = Instant::now();
    let child = start_plugin(plugin, command, id, netns, conf);
    let out = child.wait_with_output().expect("plugin");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{} {command}: {}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Where ptp + host-local stands among the plugins measured.
const REFERENCE: usize = 1;

/// A host-mode spec with its own state_dir in `dir` (`NAME.toml`,
/// `NAME-state`), and the network config that names it.
fn headcni_conf(dir: &Path, name: &str, cidr: &str) -> String {
    let spec = dir.join(format!("{name}.toml"));
    let state = dir.join(format!("{name}-state"));
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"{cidr}\"\n",
            state.display()
        ),
    )
    .unwrap();
    format!(
        r#"{{"cniVersion":"1.1.0","name":"headcni","type":"headcni","spec":"{}"}}"#,
        spec.display()
    )
}

fn main() {
    require_root();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ptp = reference_plugin();
    let headcni = PathBuf::from(env!("CARGO_BIN_EXE_headcni"));
    let tag = format!("hcc{}", std::process::id());
    let (node, pod) = (format!("{tag}-node"), format!("{tag}-pod"));
    let _guard = Netns(vec![pod.clone(), node.clone()]);
    sh(&["ip", "netns", "add", &node]);
    sh(&["ip", "netns", "add", &pod]);
    let pod_path = format!("/run/netns/{pod}");
    let dir = tempfile::tempdir().unwrap();

    // The plugins run in the node namespace, as under a kubelet: enter it here
    // (children inherit it), so no `ip netns exec` sits in the measurement.
    let netns = std::fs::File::open(format!("/run/netns/{node}")).unwrap();
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "tailscale0", "mode", "tun"]);
    sh(&["ip", "link", "set", "tailscale0", "up"]);

    let ours = headcni_conf(dir.path(), "headcni", "10.244.0.0/16");
    let reference = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref","type":"ptp","ipMasq":false,"mtu":1500,"ipam":{{"type":"host-local","subnet":"10.245.0.0/16","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}"#,
        dir.path().join("host-local").display()
    );

    // headcni, the reference, and the baseline build when one is given (its
    // own spec and state_dir: two builds never share a store).
    let mut plugins = vec![
        ("headcni".to_string(), headcni.clone(), ours),
        ("ptp+host-local".to_string(), ptp.clone(), reference),
    ];
    if let Some(old) = std::env::var_os("HEADCNI_BENCH_BASELINE") {
        let conf = headcni_conf(dir.path(), "baseline", "10.246.0.0/16");
        plugins.push(("baseline".to_string(), PathBuf::from(old), conf));
    }
    // Warm the page cache and the stores once.
    for (_, plugin, conf) in &plugins {
        invoke(plugin, "ADD", "warm", &pod_path, conf);
        invoke(plugin, "DEL", "warm", &pod_path, conf);
    }
    let mut adds: Vec<Vec<Duration>> = plugins.iter().map(|_| Vec::new()).collect();
    let mut dels = adds.clone();
    for i in 0..ROUNDS {
        let id = format!("bench{i:04}");
        // Each round starts with the next plugin: the first of a round
        // pays for the previous round's teardown (about 4 ms of DEL here,
        // measured with one binary in two places).
        for k in (0..plugins.len()).map(|j| (i + j) % plugins.len()) {
            let (_, plugin, conf) = &plugins[k];
            adds[k].push(invoke(plugin, "ADD", &id, &pod_path, conf));
            dels[k].push(invoke(plugin, "DEL", &id, &pod_path, conf));
        }
    }
    let med = |v: &mut Vec<Duration>| percentile(v, 0.5);
    let p90 = |v: &mut Vec<Duration>| percentile(v, 0.9);
    println!("CNI latency, {ROUNDS} rounds, whole-process invocations");
    for (k, (name, _, _)) in plugins.iter().enumerate() {
        println!(
            "{name:<14} ADD median {}  p90 {}   DEL median {}  p90 {}",
            ms(med(&mut adds[k])),
            ms(p90(&mut adds[k])),
            ms(med(&mut dels[k])),
            ms(p90(&mut dels[k]))
        );
    }
    let ref_total = med(&mut adds[REFERENCE]) + med(&mut dels[REFERENCE]);
    for k in (0..plugins.len()).filter(|k| *k != REFERENCE) {
        let total = med(&mut adds[k]) + med(&mut dels[k]);
        println!(
            "ADD+DEL median: {} {}  reference {}  ratio {:.2}x  (target <= 1.0x)",
            plugins[k].0,
            ms(total),
            ms(ref_total),
            total.as_secs_f64() / ref_total.as_secs_f64()
        );
    }
}
