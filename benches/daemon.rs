//! `headcni daemon` figures, one run, real kernel, throwaway namespaces (root):
//! drift-repair latency (an owned route deleted to its return, median of 100),
//! idle CPU over 60 s with 100 pods, RSS with 1,000 pods.
//! `cargo bench --bench daemon`; HEADCNI_BENCH_IDLE_SECS shortens the idle window.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{env_number, require_root, run_batch, sh};
use headcni::kernel::netlink::Netlink;

struct Cleanup {
    namespaces: Vec<String>,
    daemon: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
        let batch: String = self
            .namespaces
            .iter()
            .rev()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        let _ = run_batch(&batch);
    }
}

fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Owned routes besides the pods' /32s: the tailnet route and the pod
/// CIDR's unreachable route.
const NODE_ROUTES: usize = 2;

fn owned_routes() -> usize {
    let mut nl = Netlink::open_current().expect("netlink");
    let state = headcni::observe::netns_state(&mut nl, Default::default()).expect("dump");
    state.routes.iter().filter(|r| r.is_owned()).count()
}

fn route_present(nl: &mut Netlink, dst: &str) -> bool {
    let state = headcni::observe::netns_state(nl, Default::default()).expect("dump");
    state
        .routes
        .iter()
        .any(|r| r.is_owned() && r.dst.to_string() == dst)
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // After the command name: state is field 3 (not numeric), utime 14, stime 15.
    fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0)
}

struct Setup {
    cleanup: Cleanup,
    spec: PathBuf,
    pods: Vec<String>,
}

fn setup(tag: &str, pods: usize, dir: &Path) -> Setup {
    let node = format!("{tag}-node");
    let pod_names: Vec<String> = (0..pods).map(|i| format!("{tag}-p{i}")).collect();
    let mut cleanup = Cleanup {
        namespaces: vec![node.clone()],
        daemon: None,
    };
    cleanup.namespaces.extend(pod_names.iter().cloned());
    let batch: String = std::iter::once(format!("netns add {node}\n"))
        .chain(pod_names.iter().map(|p| format!("netns add {p}\n")))
        .collect();
    assert!(run_batch(&batch), "creating namespaces");
    let spec = dir.join(format!("{tag}.toml"));
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.240.0.0/16\"\n",
            dir.join(format!("{tag}-state")).display()
        ),
    )
    .unwrap();
    let parsed = headcni::spec::Spec::load(&spec).unwrap();
    let store = parsed.pod_store();
    for p in &pod_names {
        let key = headcni::model::PodKey {
            container_id: p.clone(),
            ifname: "eth0".into(),
        };
        store
            .add(&key, &PathBuf::from("/run/netns").join(p))
            .unwrap();
    }
    Setup {
        cleanup,
        spec,
        pods: pod_names,
    }
}

/// Enters the node namespace (this thread; children inherit it) and gives it a tailscale0.
fn enter_node(node: &str) {
    let netns = File::open(format!("/run/netns/{node}")).unwrap();
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "tailscale0", "mode", "tun"]);
    sh(&["ip", "link", "set", "tailscale0", "up"]);
}

fn start_daemon(s: &mut Setup, node: &str) -> u32 {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            node,
            env!("CARGO_BIN_EXE_headcni"),
            "daemon",
        ])
        .env("HEADCNI_SPEC", &s.spec)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("daemon");
    let pid = child.id();
    s.cleanup.daemon = Some(child);
    pid
}

fn main() {
    require_root();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let idle_secs: u64 = env_number("HEADCNI_BENCH_IDLE_SECS", 60);
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("hcd{}", std::process::id());
    println!("headcni daemon benchmark");

    // Drift repair and idle CPU, 100 pods.
    {
        let mut s = setup(&format!("{tag}a"), 100, dir.path());
        let node = format!("{tag}a-node");
        enter_node(&node);
        let pid = start_daemon(&mut s, &node);
        wait_until(Duration::from_secs(60), "100 pods wired", || {
            owned_routes() == 100 + NODE_ROUTES
        });
        // Let the echo of its own changes settle before measuring.
        std::thread::sleep(Duration::from_secs(2));

        let mut nl = Netlink::open_current().unwrap();
        let mut latencies = Vec::new();
        let target = "10.240.0.2/32";
        for _ in 0..100 {
            sh(&["ip", "route", "del", target, "proto", "104"]);
            let t0 = Instant::now();
            while !route_present(&mut nl, target) {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "the route did not come back"
                );
            }
            latencies.push(t0.elapsed());
        }
        latencies.sort();
        println!(
            "drift repair (ip route del -> back), 100 runs: median {:.1} ms, p90 {:.1} ms, max {:.1} ms  (target median <= 50 ms)",
            latencies[50].as_secs_f64() * 1000.0,
            latencies[90].as_secs_f64() * 1000.0,
            latencies[99].as_secs_f64() * 1000.0
        );

        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: sysconf has no preconditions.
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(idle_secs));
        let used = (cpu_ticks(pid) - before) as f64 / ticks_per_sec;
        println!(
            "idle CPU, 100 pods, {idle_secs} s (resync every 30 s): {:.3}% of a core ({used:.2} s)  (target < 1%)",
            used / idle_secs as f64 * 100.0
        );
        println!(
            "RSS, 100 pods: {} KiB",
            proc_field(pid, "status", "VmRSS:").unwrap_or(0)
        );
        drop(s);
    }

    // RSS with 1,000 pods.
    {
        let mut s = setup(&format!("{tag}b"), 1000, dir.path());
        let node = format!("{tag}b-node");
        enter_node(&node);
        let pid = start_daemon(&mut s, &node);
        wait_until(Duration::from_secs(300), "1,000 pods wired", || {
            owned_routes() == 1000 + NODE_ROUTES
        });
        // One full resync (every pod namespace observed) before reading the peak.
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "RSS, 1,000 pods: {} KiB now, {} KiB peak  (target <= 40 MiB = 40960 KiB)",
            proc_field(pid, "status", "VmRSS:").unwrap_or(0),
            proc_field(pid, "status", "VmHWM:").unwrap_or(0)
        );
        // What a full pass costs here: `headcni plan` looks into every pod's
        // namespace (the daemon's resync does the same).
        let mut took = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node,
                    env!("CARGO_BIN_EXE_headcni"),
                    "plan",
                ])
                .args(["--detailed-exitcode"])
                .env("HEADCNI_SPEC", &s.spec)
                .output()
                .expect("headcni plan");
            took.push(started.elapsed());
            assert_eq!(out.status.code(), Some(0), "converged");
        }
        took.sort();
        println!(
            "full plan (every pod namespace), 1,000 pods, whole process: median {:.0} ms",
            took[took.len() / 2].as_secs_f64() * 1e3
        );
        let _ = s.pods.len();
    }
}
