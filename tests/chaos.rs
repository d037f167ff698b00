//! A bounded chaos run, inside throwaway namespaces only: the daemon runs
//! under tight descriptor and memory limits while workers make parallel
//! random CNI ADD, DEL and CHECK calls, drift is injected with `ip`, `nft`
//! and sysctl, the spec is edited at random (some edits invalid), and the
//! tailnet interface flaps. At the end the plan is empty, every live pod
//! reaches its gateway and the tailnet, and links, routes and allocations
//! match the intents exactly.
//!
//! HEADCNI_CHAOS_SECONDS sets the length (default 15, as in CI);
//! `scripts/chaos.sh` runs the long one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_plugin, wait_until, CniCall, Lab, Node, POD_CIDR};

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Counts {
    adds: AtomicUsize,
    dels: AtomicUsize,
    checks: AtomicUsize,
    refused: AtomicUsize,
    drift: AtomicUsize,
    edits: AtomicUsize,
}

/// The spec with one of a few valid variations, or something invalid.
fn spec_text(n: &Node, variant: u64) -> String {
    let state = n.lab.dir.path().join("state");
    let base = format!(
        "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\ncidr = \"{POD_CIDR}\"\n",
        state.display()
    );
    let tail = "\n[tailnet]\ninterface = \"tailscale0\"\n\n[daemon]\nresync_seconds = 2\n";
    match variant {
        0 => format!("{base}{tail}"),
        1 => format!("{base}mtu = 1400\n{tail}"),
        2 => format!("{base}masquerade = \"none\"\n{tail}"),
        3 => format!(
            "{base}{tail}\n[[route]]\ndestination = \"198.51.100.0/24\"\nvia = \"203.0.113.1\"\n"
        ),
        4 => format!("{base}cidr = \"10.244.0.0/33\"\n{tail}"),
        _ => "version = 1\nmode = \"hosted\"\n[pod_network\n".to_string(),
    }
}

fn cni(n: &Node, command: &str, ns: &str) -> i64 {
    let path = Lab::ns_path(ns);
    let call = CniCall::of(command, ns, &path);
    let out = run_plugin(
        &n.node,
        common::headcni_bin(),
        &call,
        &n.cni_conf("1.1.0").to_string(),
    );
    if out.code == 0 {
        0
    } else {
        out.json["code"].as_i64().unwrap_or(-1)
    }
}

/// The daemon, killed when dropped (also when the test fails).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(n: &Node) -> Daemon {
    Daemon(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &n.node,
                "prlimit",
                "--nofile=256:256",
                "--as=4294967296",
                "--",
            ])
            .arg(common::headcni_bin())
            .arg("daemon")
            .env("HEADCNI_SPEC", &n.spec)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(n.lab.dir.path().join("chaos-daemon.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    )
}

#[test]
fn chaos_ends_converged_with_everything_accounted_for() {
    let seconds: u64 = std::env::var("HEADCNI_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    eprintln!("chaos seed {seed}, {seconds} s");
    let mut n = Node::new();
    std::fs::write(&n.spec, spec_text(&n, 0)).unwrap();
    const WORKERS: usize = 3;
    const PODS_EACH: usize = 4;
    let pods: Vec<Vec<String>> = (0..WORKERS)
        .map(|w| {
            (0..PODS_EACH)
                .map(|p| n.lab.netns(&format!("w{w}p{p}")))
                .collect()
        })
        .collect();
    let mut daemon = start_daemon(&n);
    // Before any edit: a daemon whose first read finds an invalid spec
    // rightly refuses to start.
    common::wait_until(Duration::from_secs(10), "the daemon's first pass", || {
        common::status(&n).is_some_and(|s| !s["last_pass"].is_null())
    });
    let n = Arc::new(n);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    // Each worker owns its pods: its model says which are attached.
    let live: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let mut threads = Vec::new();
    for (w, mine) in pods.iter().cloned().enumerate() {
        let (n, stop, counts, live) = (n.clone(), stop.clone(), counts.clone(), live.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
            while !stop.load(Ordering::Relaxed) {
                let ns = &mine[rng.below(mine.len() as u64) as usize];
                let attached = live.lock().unwrap().get(ns).copied().unwrap_or(false);
                let (command, counter) = match rng.below(3) {
                    0 => ("ADD", &counts.adds),
                    1 => ("DEL", &counts.dels),
                    _ if attached => ("CHECK", &counts.checks),
                    _ => ("ADD", &counts.adds),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let code = cni(&n, command, ns);
                if code != 0 {
                    // An invalid spec of the moment, a CHECK during a change.
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
                match (command, code) {
                    ("ADD", 0) => {
                        live.lock().unwrap().insert(ns.clone(), true);
                    }
                    ("DEL", 0) => {
                        live.lock().unwrap().insert(ns.clone(), false);
                    }
                    // A failed ADD is undone by the plugin, but whether its
                    // intent was written first is not the model's to guess:
                    // DEL it once the spec is valid again (below).
                    ("ADD", _) => {
                        live.lock().unwrap().insert(ns.clone(), false);
                        while cni(&n, "DEL", ns) != 0 && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    _ => {}
                }
            }
        }));
    }
    // Drift, spec edits and tailnet flaps.
    {
        let (n, stop, counts) = (n.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0xdead_beef);
            let quiet = |args: &[&str]| {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &n.node])
                    .args(args)
                    .output();
            };
            while !stop.load(Ordering::Relaxed) {
                match rng.below(6) {
                    0 => {
                        let routes = n.owned_routes();
                        if let Some(r) = routes.iter().find(|r| r.contains(" dev hc")) {
                            let dst = r.split_whitespace().next().unwrap_or("").to_string();
                            quiet(&["ip", "route", "del", &dst, "proto", "104"]);
                        }
                    }
                    1 => {
                        if let Some(l) = n.owned_links().first() {
                            quiet(&["ip", "link", "set", l, "down"]);
                        }
                    }
                    2 => quiet(&["nft", "flush", "table", "inet", "headcni"]),
                    3 => quiet(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]),
                    4 => {
                        quiet(&["ip", "link", "set", "tailscale0", "down"]);
                        std::thread::sleep(Duration::from_millis(rng.below(30)));
                        quiet(&["ip", "link", "set", "tailscale0", "up"]);
                    }
                    _ => {
                        let text = spec_text(&n, rng.below(6));
                        let tmp = n.spec.with_extension("tmp");
                        std::fs::write(&tmp, text).unwrap();
                        std::fs::rename(&tmp, &n.spec).unwrap();
                        counts.edits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                counts.drift.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(rng.below(40)));
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "the daemon died: {}",
            std::fs::read_to_string(n.lab.dir.path().join("chaos-daemon.log")).unwrap_or_default()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // The last edit may be invalid: a valid spec back for the end (after
    // the editor stopped, or it might write another).
    std::fs::write(&n.spec, spec_text(&n, 0)).unwrap();
    // Workers stopped mid-retry DEL their unknown pods now, with a valid spec.
    for ns in pods.iter().flatten() {
        if !live.lock().unwrap().get(ns).copied().unwrap_or(false) {
            assert_eq!(cni(&n, "DEL", ns), 0, "DEL {ns} with a valid spec");
        }
    }
    wait_until(
        Duration::from_secs(10),
        "the daemon to converge after the chaos",
        || n.headcni(&["plan", "--detailed-exitcode"]).status.code() == Some(0),
    );

    let listed = n.headcni_ok(&["pod", "list", "--format", "json"], 0);
    let intents: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let stored: BTreeSet<String> = intents
        .iter()
        .map(|i| i["container_id"].as_str().unwrap().to_string())
        .collect();
    let model: BTreeSet<String> = live
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| **l)
        .map(|(ns, _)| ns.clone())
        .collect();
    assert_eq!(
        stored, model,
        "the store holds exactly the pods ADD answered and DEL did not take"
    );
    let links: BTreeSet<String> = n.owned_links().into_iter().collect();
    let want_links: BTreeSet<String> = intents
        .iter()
        .map(|i| i["host_link"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(links, want_links, "one link per intent, no leak");
    let routes = n.owned_routes();
    let pod_routes = routes.iter().filter(|r| r.contains(" dev hc")).count();
    assert_eq!(
        pod_routes,
        intents.len(),
        "one route per intent: {routes:?}"
    );
    for i in &intents {
        let ns = i["container_id"].as_str().unwrap();
        assert!(n.lab.ping(ns, "10.244.0.1"), "{ns} reaches its gateway");
        assert!(
            n.lab.ping(ns, "100.64.0.5"),
            "{ns} reaches the tailnet peer"
        );
    }
    eprintln!(
        "chaos: {} ADD, {} DEL, {} CHECK ({} refused or failed while the spec was invalid or changing), {} drift events and flaps, {} spec edits; {} pods live at the end",
        counts.adds.load(Ordering::Relaxed),
        counts.dels.load(Ordering::Relaxed),
        counts.checks.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.drift.load(Ordering::Relaxed),
        counts.edits.load(Ordering::Relaxed),
        intents.len()
    );
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    wait_until(Duration::from_secs(5), "the daemon to stop", || {
        daemon.0.try_wait().unwrap().is_some()
    });
    let _ = std::io::stderr().flush();
}
