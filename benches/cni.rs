//! CNI latency, one pod at a time, one run, real kernel, throwaway namespaces
//! (root): ADD and DEL as whole-process invocations, headcni alone and with
//! its daemon running (as on every Kubernetes node), against the reference
//! `ptp` + `host-local` plugins (Debian's containernetworking-plugins) and
//! the kernel's own cost (`ip -batch` doing the same veth, address and route
//! work), interleaved so all see the same machine. Each plugin has a node
//! namespace and a pod namespace of its own (a daemon owns its node's
//! links). `cargo bench --bench cni` prints the figures;
//! HEADCNI_BENCH_BASELINE=PATH measures another headcni binary (an older
//! build), alone and with its daemon, in the same rounds, for before/after;
//! HEADCNI_BENCH_ROUNDS sets the rounds (default 100).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_number, ms, percentile, reference_plugin, require_root, sh, start_plugin, Netns};

/// How a plugin is run.
enum Kind {
    /// A CNI plugin binary with its network configuration.
    Cni { binary: PathBuf, conf: String },
    /// `ip -batch` doing the kernel work of an ADD, `ip link del` of a DEL.
    IpBatch,
}

struct Plugin {
    name: String,
    kind: Kind,
    /// The node namespace it runs in, entered before each invocation.
    node: File,
    pod: String,
    /// With a daemon: its spec, whose store says when a DEL's link is gone.
    daemon_spec: Option<PathBuf>,
}

/// A daemon to run beside a plugin: its binary and spec.
struct Daemon {
    binary: PathBuf,
    spec: PathBuf,
}

/// Daemons stopped (SIGTERM) when dropped, also when the benchmark panics.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
    }
}

/// Runs `args` with `input` on stdin; panics unless it succeeds.
fn feed(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("stdin");
    assert!(child.wait().expect("wait").success(), "{args:?} failed");
}

/// Runs one invocation the way a runtime does; returns its wall time.
fn invoke(p: &Plugin, command: &str, id: &str) -> Duration {
    nix::sched::setns(&p.node, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let netns = format!("/run/netns/{}", p.pod);
    let started = Instant::now();
    match &p.kind {
        Kind::Cni { binary, conf } => {
            let out = start_plugin(binary, command, id, &netns, conf)
                .wait_with_output()
                .expect("plugin");
            let took = started.elapsed();
            assert!(
                out.status.success(),
                "{} {command}: {}{}",
                p.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            took
        }
        Kind::IpBatch if command == "ADD" => {
            feed(
                &["ip", "-batch", "-"],
                &format!(
                    "link add hcb0 type veth peer name eth0 netns {pod}\n\
                     addr add 10.248.0.1/32 dev hcb0\n\
                     link set hcb0 up\n\
                     route add 10.248.0.2/32 dev hcb0\n",
                    pod = p.pod
                ),
            );
            feed(
                &["ip", "-n", &p.pod, "-batch", "-"],
                "addr add 10.248.0.2/32 dev eth0\n\
                 link set eth0 up\n\
                 route add 10.248.0.1/32 dev eth0 scope link\n\
                 route add default via 10.248.0.1 dev eth0\n",
            );
            started.elapsed()
        }
        Kind::IpBatch => {
            sh(&["ip", "link", "del", "hcb0"]);
            started.elapsed()
        }
    }
}

/// The daemon's passes so far (None without a daemon).
fn daemon_passes(p: &Plugin) -> Option<u64> {
    let spec = p.daemon_spec.as_ref()?;
    let state_dir = headcni::spec::Spec::load(spec).expect("spec").state_dir;
    let s = headcni::daemon::status::query(&state_dir).expect("daemon status");
    Some(s.passes_ok + s.passes_failed)
}

/// Waits (untimed) until the pod's interface is gone and, with a daemon,
/// its address freed: a DEL answered before the kernel's teardown leaves
/// that to the daemon (so its DEL figure leaves out the teardown that
/// ptp's includes), whose pass must not run into the next plugin's timing,
/// and the next ADD in the same namespace needs the name free. Asks the
/// daemon's status, not the store: a store read would have the daemon let
/// go of the store it keeps open, which kubelet never makes it do.
fn wait_for_teardown(p: &Plugin, passes_before_del: Option<u64>) {
    wait_for_link_gone(&p.pod);
    let (Some(spec), Some(before)) = (&p.daemon_spec, passes_before_del) else {
        return;
    };
    let state_dir = headcni::spec::Spec::load(spec).expect("spec").state_dir;
    let started = Instant::now();
    loop {
        let s = headcni::daemon::status::query(&state_dir).expect("daemon status");
        // A pass since the DEL that found no address held: the one that
        // deleted the link, or a later one.
        if s.passes_ok + s.passes_failed > before && s.releasing == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}: an address still held 10 s after its DEL",
            p.name
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for_link_gone(pod: &str) {
    let started = Instant::now();
    loop {
        let present = Command::new("ip")
            .args(["-n", pod, "link", "show", "dev", "eth0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !present {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{pod}: eth0 still there 10 s after its DEL"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A host-mode spec with its own state_dir in `dir` (`NAME.toml`,
/// `NAME-state`), and the network config that names it.
fn headcni_conf(dir: &Path, name: &str, cidr: &str) -> (PathBuf, String) {
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
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"headcni","type":"headcni","spec":"{}"}}"#,
        spec.display()
    );
    (spec, conf)
}

/// Creates a node namespace with lo and a tailscale0, enters it, and
/// returns it.
fn node_namespace(name: &str) -> File {
    sh(&["ip", "netns", "add", name]);
    let node = File::open(format!("/run/netns/{name}")).unwrap();
    nix::sched::setns(&node, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "tailscale0", "mode", "tun"]);
    sh(&["ip", "link", "set", "tailscale0", "up"]);
    node
}

/// Starts `headcni daemon` for `spec` in the current namespace and waits
/// until its CNI socket answers.
fn start_daemon(binary: &Path, spec: &Path, daemons: &mut Daemons) {
    let child = Command::new(binary)
        .arg("daemon")
        .env("HEADCNI_SPEC", spec)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("daemon");
    daemons.0.push(child);
    let state = headcni::spec::Spec::load(spec).expect("spec").state_dir;
    let socket = headcni::cni::handoff::socket_path(&state);
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the daemon for {} did not listen within 10 s",
            spec.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    require_root();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = env_number("HEADCNI_BENCH_ROUNDS", 100);
    let ptp = reference_plugin();
    let headcni = PathBuf::from(env!("CARGO_BIN_EXE_headcni"));
    let tag = format!("hcc{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let reference = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref","type":"ptp","ipMasq":false,"mtu":1500,"ipam":{{"type":"host-local","subnet":"10.245.0.0/16","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}"#,
        dir.path().join("host-local").display()
    );

    let mut wanted: Vec<(String, Kind, Option<Daemon>)> = Vec::new();
    let mut builds = vec![("headcni", headcni.clone(), "10.244")];
    let baseline = std::env::var_os("HEADCNI_BENCH_BASELINE").map(PathBuf::from);
    if let Some(old) = &baseline {
        builds.push(("baseline", old.clone(), "10.246"));
    }
    for (name, binary, net) in &builds {
        let (_, conf) = headcni_conf(dir.path(), name, &format!("{net}.0.0/17"));
        let cni = Kind::Cni {
            binary: binary.clone(),
            conf,
        };
        wanted.push((name.to_string(), cni, None));
        let with = format!("{name}-daemon");
        let (spec, conf) = headcni_conf(dir.path(), &with, &format!("{net}.128.0/17"));
        let cni = Kind::Cni {
            binary: binary.clone(),
            conf,
        };
        let daemon = Daemon {
            binary: binary.clone(),
            spec,
        };
        wanted.push((format!("{name}+daemon"), cni, Some(daemon)));
    }
    let cni = Kind::Cni {
        binary: ptp,
        conf: reference,
    };
    wanted.insert(2, ("ptp+host-local".into(), cni, None));
    wanted.push(("ip -batch".into(), Kind::IpBatch, None));
    let reference_at = 2;
    let kernel_at = wanted.len() - 1;

    // Declared before the daemons: dropped after them.
    let mut namespaces = Netns(Vec::new());
    let mut plugins = Vec::new();
    let mut daemons = Daemons(Vec::new());
    for (k, (name, kind, daemon)) in wanted.into_iter().enumerate() {
        let (node, pod) = (format!("{tag}-n{k}"), format!("{tag}-p{k}"));
        // Registered first: removed even if what follows fails.
        namespaces.0.push(pod.clone());
        namespaces.0.push(node.clone());
        let node_ns = node_namespace(&node);
        sh(&["ip", "netns", "add", &pod]);
        let daemon_spec = daemon.map(|d| {
            start_daemon(&d.binary, &d.spec, &mut daemons);
            d.spec
        });
        plugins.push(Plugin {
            name,
            kind,
            node: node_ns,
            pod,
            daemon_spec,
        });
    }

    // Warm the page cache and the stores once.
    for p in &plugins {
        invoke(p, "ADD", "warm");
        let passes = daemon_passes(p);
        invoke(p, "DEL", "warm");
        wait_for_teardown(p, passes);
    }
    let mut adds: Vec<Vec<Duration>> = plugins.iter().map(|_| Vec::new()).collect();
    let mut dels = adds.clone();
    for i in 0..rounds {
        let id = format!("bench{i:04}");
        // Each round starts with the next plugin, so none always follows
        // the same one.
        for k in (0..plugins.len()).map(|j| (i + j) % plugins.len()) {
            let p = &plugins[k];
            adds[k].push(invoke(p, "ADD", &id));
            let passes = daemon_passes(p);
            dels[k].push(invoke(p, "DEL", &id));
            wait_for_teardown(p, passes);
        }
    }
    drop(daemons);
    let med = |v: &mut Vec<Duration>| percentile(v, 0.5);
    let p90 = |v: &mut Vec<Duration>| percentile(v, 0.9);
    println!("CNI latency, one pod at a time, {rounds} rounds, whole-process invocations");
    for (k, p) in plugins.iter().enumerate() {
        println!(
            "{:<17} ADD median {}  p90 {}   DEL median {}  p90 {}",
            p.name,
            ms(med(&mut adds[k])),
            ms(p90(&mut adds[k])),
            ms(med(&mut dels[k])),
            ms(p90(&mut dels[k]))
        );
    }
    let ref_add = med(&mut adds[reference_at]).as_secs_f64();
    let ref_del = med(&mut dels[reference_at]).as_secs_f64();
    let kernel_add = med(&mut adds[kernel_at]).as_secs_f64();
    for k in (0..plugins.len()).filter(|k| *k != reference_at && *k != kernel_at) {
        let (add, del) = (
            med(&mut adds[k]).as_secs_f64(),
            med(&mut dels[k]).as_secs_f64(),
        );
        let targets = if plugins[k].name.ends_with("+daemon") {
            "targets ADD <= 0.5x, DEL <= 0.3x"
        } else {
            "target ADD+DEL <= 1.0x"
        };
        println!(
            "{:<17} vs ptp+host-local: ADD {:.2}x  DEL {:.2}x  ADD+DEL {:.2}x   ADD vs ip -batch {:.2}x  ({targets})",
            plugins[k].name,
            add / ref_add,
            del / ref_del,
            (add + del) / (ref_add + ref_del),
            add / kernel_add
        );
    }
}
