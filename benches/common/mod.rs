//! Scaffolding shared by the benchmarks: throwaway namespaces removed on
//! drop, commands that must succeed, and figures.

#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// Namespaces deleted when dropped, also when a benchmark panics.
pub struct Netns(pub Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn sh(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{args:?} failed");
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The `p`-quantile (0.5: median) of `v`, sorting it.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the benchmark needs root (network namespaces)"
    );
}

/// Waits (at most `limit`) until the machine is idle: after building or
/// deleting thousands of links the kernel keeps working in the background
/// for seconds, and a measurement then would time that work too.
pub fn wait_for_idle(limit: Duration) {
    let busy_and_total = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        Some((total - idle, total))
    };
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let Some((busy0, total0)) = busy_and_total() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(250));
        let Some((busy1, total1)) = busy_and_total() else {
            return;
        };
        let busy = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
        if busy < 0.05 {
            return;
        }
    }
    eprintln!("(the machine did not settle within {limit:?}; figures may be noisy)");
}

/// Starts one CNI plugin invocation the way a runtime does: its environment
/// only, the network configuration on stdin.
pub fn start_plugin(
    plugin: &std::path::Path,
    command: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> std::process::Child {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("stdin");
    child
}

/// Feeds `batch` to `ip -force -batch -`; whether every line succeeded.
pub fn run_batch(batch: &str) -> bool {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip");
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes());
    child.wait().map(|s| s.success()).unwrap_or(false)
}

/// A number from the environment, else `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Debian's `ptp` plugin (with `host-local`), the reference CNI plugins.
pub fn reference_plugin() -> std::path::PathBuf {
    let ptp = std::path::PathBuf::from("/usr/lib/cni/ptp");
    assert!(
        ptp.exists(),
        "install containernetworking-plugins (scripts/deps.sh)"
    );
    ptp
}
