//! CNI latency, one run, real kernel, throwaway namespaces (root): ADD and DEL
//! as whole-process invocations, headcni against the reference `ptp` +
//! `host-local` plugins (Debian's containernetworking-plugins), interleaved
//! so both see the same machine. `cargo bench --bench cni` prints the figures.

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

    let spec = dir.path().join("headcni.toml");
    std::fs::write(
        &spec,
        format!("version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.244.0.0/16\"\n", dir.path().join("state").display()),
    )
    .unwrap();
    let ours = format!(
        r#"{{"cniVersion":"1.1.0","name":"headcni","type":"headcni","spec":"{}"}}"#,
        spec.display()
    );
    let reference = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref","type":"ptp","ipMasq":false,"mtu":1500,"ipam":{{"type":"host-local","subnet":"10.245.0.0/16","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}"#,
        dir.path().join("host-local").display()
    );

    // Warm the page cache and the stores once.
    invoke(&headcni, "ADD", "warm", &pod_path, &ours);
    invoke(&headcni, "DEL", "warm", &pod_path, &ours);
    invoke(&ptp, "ADD", "warm", &pod_path, &reference);
    invoke(&ptp, "DEL", "warm", &pod_path, &reference);

    let (mut our_add, mut our_del, mut ref_add, mut ref_del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let id = format!("bench{i:04}");
        our_add.push(invoke(&headcni, "ADD", &id, &pod_path, &ours));
        our_del.push(invoke(&headcni, "DEL", &id, &pod_path, &ours));
        ref_add.push(invoke(&ptp, "ADD", &id, &pod_path, &reference));
        ref_del.push(invoke(&ptp, "DEL", &id, &pod_path, &reference));
    }
    let med = |v: &mut Vec<Duration>| percentile(v, 0.5);
    let p90 = |v: &mut Vec<Duration>| percentile(v, 0.9);
    println!("CNI latency, {ROUNDS} rounds, whole-process invocations");
    println!(
        "headcni      ADD median {}  p90 {}   DEL median {}  p90 {}",
        ms(med(&mut our_add)),
        ms(p90(&mut our_add)),
        ms(med(&mut our_del)),
        ms(p90(&mut our_del))
    );
    println!(
        "ptp+host-local ADD median {}  p90 {}   DEL median {}  p90 {}",
        ms(med(&mut ref_add)),
        ms(p90(&mut ref_add)),
        ms(med(&mut ref_del)),
        ms(p90(&mut ref_del))
    );
    let ours_total = med(&mut our_add) + med(&mut our_del);
    let ref_total = med(&mut ref_add) + med(&mut ref_del);
    println!(
        "ADD+DEL median: headcni {}  reference {}  ratio {:.2}x  (target <= 1.0x)",
        ms(ours_total),
        ms(ref_total),
        ours_total.as_secs_f64() / ref_total.as_secs_f64()
    );
}
