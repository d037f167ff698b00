//! A node full of pods at once, one run, real kernel, throwaway namespaces
//! (root): 110 CNI ADDs launched together (kubelet's default max pods), then
//! 110 DELs, whole processes, for the reference `ptp` + `host-local`,
//! headcni alone, and headcni with its daemon running; rounds interleaved so
//! all see the same machine. `cargo bench --bench burst` prints the figures;
//! HEADCNI_BURST_PODS and HEADCNI_BURST_ROUNDS change the size;
//! HEADCNI_BENCH_NO_SOURCE_CHECK=1 turns source validation off;
//! HEADCNI_BENCH_BASELINE=PATH measures another headcni binary (an older
//! build) in the same rounds, alone and with its daemon, for before/after.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    env_number, ms, percentile, reference_plugin, require_root, run_batch, sh, start_plugin,
    wait_for_idle, Netns,
};

/// All `pods` invocations of `command` at once; the wall time until the last answered.
fn burst(plugin: &Path, command: &str, round: usize, pods: &[String], conf: &str) -> Duration {
    let started = Instant::now();
    let children: Vec<(String, Child)> = pods
        .iter()
        .map(|ns| {
            let id = format!("{ns}-r{round}");
            let child = start_plugin(plugin, command, &id, &format!("/run/netns/{ns}"), conf);
            (id, child)
        })
        .collect();
    for (id, child) in children {
        let out = child.wait_with_output().expect("plugin");
        assert!(
            out.status.success(),
            "{} {command} {id}: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    started.elapsed()
}

/// The daemon, stopped (SIGTERM, then waited for) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start_daemon(headcni: &Path, spec: &Path, state: &Path) -> Daemon {
    let child = Command::new(headcni)
        .arg("daemon")
        .env("HEADCNI_SPEC", spec)
        .env(
            "RUST_LOG",
            std::env::var("HEADCNI_BURST_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("daemon");
    let daemon = Daemon(child);
    let socket = state.join("daemon.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon
}

fn main() {
    require_root();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pods: usize = env_number("HEADCNI_BURST_PODS", 110);
    let rounds: usize = env_number("HEADCNI_BURST_ROUNDS", 3);
    let ptp = reference_plugin();
    let headcni = PathBuf::from(env!("CARGO_BIN_EXE_headcni"));
    let tag = format!("hcb{}", std::process::id());
    let node = format!("{tag}-node");
    let pod_names: Vec<String> = (0..pods).map(|i| format!("{tag}-p{i}")).collect();
    let mut all = pod_names.clone();
    all.push(node.clone());
    let _guard = Netns(all);
    let batch: String = std::iter::once(format!("netns add {node}\n"))
        .chain(pod_names.iter().map(|p| format!("netns add {p}\n")))
        .collect();
    assert!(run_batch(&batch), "creating namespaces");

    // The plugins and the daemon run in the node namespace, as under a
    // kubelet: entered here (children inherit it).
    let netns = std::fs::File::open(format!("/run/netns/{node}")).expect("node netns");
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "tailscale0", "mode", "tun"]);
    sh(&["ip", "link", "set", "tailscale0", "up"]);

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let spec = dir.path().join("headcni.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.244.0.0/16\"\n{}",
            state.display(),
            // The cost of source validation: the same run with it off.
            if std::env::var_os("HEADCNI_BENCH_NO_SOURCE_CHECK").is_some() {
                "source_check = false\n"
            } else {
                ""
            }
        ),
    )
    .expect("spec");
    let ours = format!(
        r#"{{"cniVersion":"1.1.0","name":"headcni","type":"headcni","spec":"{}"}}"#,
        spec.display()
    );
    let reference = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref","type":"ptp","ipMasq":false,"mtu":1500,"ipam":{{"type":"host-local","subnet":"10.245.0.0/16","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}"#,
        dir.path().join("host-local").display()
    );
    let warm = &pod_names[..1];
    burst(&headcni, "ADD", 999, warm, &ours);
    burst(&headcni, "DEL", 999, warm, &ours);
    burst(&ptp, "ADD", 999, warm, &reference);
    burst(&ptp, "DEL", 999, warm, &reference);

    // headcni, and the baseline build when one is given: each alone, then
    // with its own daemon.
    let mut builds = vec![("headcni", headcni.clone())];
    if let Some(old) = std::env::var_os("HEADCNI_BENCH_BASELINE") {
        builds.push(("baseline", PathBuf::from(old)));
    }
    let mut rows: Vec<(String, Vec<Duration>, Vec<Duration>)> =
        vec![("ptp+host-local".into(), Vec::new(), Vec::new())];
    for (name, _) in &builds {
        rows.push((format!("{name} alone"), Vec::new(), Vec::new()));
        rows.push((format!("{name} + daemon"), Vec::new(), Vec::new()));
    }
    for round in 0..rounds {
        wait_for_idle(Duration::from_secs(10));
        rows[0]
            .1
            .push(burst(&ptp, "ADD", round, &pod_names, &reference));
        rows[0]
            .2
            .push(burst(&ptp, "DEL", round, &pod_names, &reference));
        for (i, (_, plugin)) in builds.iter().enumerate() {
            wait_for_idle(Duration::from_secs(10));
            let alone = &mut rows[1 + 2 * i];
            alone.1.push(burst(plugin, "ADD", round, &pod_names, &ours));
            alone.2.push(burst(plugin, "DEL", round, &pod_names, &ours));
            let daemon = start_daemon(plugin, &spec, &state);
            wait_for_idle(Duration::from_secs(10));
            let with_daemon = &mut rows[2 + 2 * i];
            with_daemon
                .1
                .push(burst(plugin, "ADD", round + 100, &pod_names, &ours));
            with_daemon
                .2
                .push(burst(plugin, "DEL", round + 100, &pod_names, &ours));
            drop(daemon);
        }
    }
    let med = |v: &mut Vec<Duration>| percentile(v, 0.5);
    println!("{pods} parallel ADDs then {pods} parallel DELs, whole processes, median of {rounds} rounds");
    let reference_total = med(&mut rows[0].1) + med(&mut rows[0].2);
    for (name, add, del) in rows.iter_mut() {
        let total = med(add) + med(del);
        println!(
            "{name:<17} ADD {:>10}  DEL {:>10}  total {:>10}  ratio {:.2}x",
            ms(med(add)),
            ms(med(del)),
            ms(total),
            total.as_secs_f64() / reference_total.as_secs_f64()
        );
    }
    println!("target: headcni + daemon <= 0.8x (aim 0.5x); headcni alone no worse than before");
}
