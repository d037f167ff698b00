//! Reconciler benchmark, one run, real kernel, throwaway namespaces (root).
//!
//! 1. Host-side plan (observe + diff) with 1,000 and 10,000 pods whose host
//!    links, addresses and routes are present.
//! 2. Applying 10,000 host routes, against `ip -batch` adding the same routes.
//!
//! `cargo bench --bench reconcile` prints the figures; docs/benchmarks.md keeps them.
//! `HEADCNI_BENCH_DUAL_STACK=1`: the pods have IPv6 addresses too (the spec
//! a `cidr6`), so every pass also dumps and diffs IPv6.
//! `HEADCNI_BENCH_NO_SOURCE_CHECK=1`: the spec turns source validation off.

mod common;

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ms, percentile, require_root, sh, wait_for_idle, Netns};

use headcni::engine::{self, PodScope};
use headcni::spec::{PodIntent, Spec};

fn median(mut v: Vec<Duration>) -> Duration {
    percentile(&mut v, 0.5)
}

fn intent(i: u32, pods_ns: &Path, dual_stack: bool) -> PodIntent {
    let id = format!("bench-{i:06}");
    PodIntent {
        ip: Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i)),
        ip6: dual_stack.then(|| {
            std::net::Ipv6Addr::from(0xfd00_0010_0244_0000_0000_0000_0000_0002u128 + u128::from(i))
        }),
        ..PodIntent::new(&id, "eth0", pods_ns)
    }
}

/// Creates veth pairs for `pods`, host ends here, pod ends (p<first+i>) in `pods_ns`.
fn make_veths(pods: &[PodIntent], first: usize, pods_ns: &str, dir: &Path) {
    let path = dir.join("veth.batch");
    let mut f = File::create(&path).unwrap();
    for (i, p) in pods.iter().enumerate() {
        writeln!(
            f,
            "link add {} type veth peer name p{} netns {pods_ns}",
            p.host_link,
            first + i
        )
        .unwrap();
    }
    drop(f);
    sh(&["ip", "-batch", path.to_str().unwrap()]);
}

/// `HEADCNI_BENCH_PROFILE_SECS=N`: plan 10,000 pods over and over for N
/// seconds (attach `perf record -p` meanwhile), then go on.
fn profile_loop(spec: &Spec, pods: &[PodIntent]) {
    let Some(secs) = std::env::var("HEADCNI_BENCH_PROFILE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    eprintln!(
        "profiling: pid {} planning for {secs} s",
        std::process::id()
    );
    let cpu = || {
        let usage =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 * 1e3 + tv.tv_usec() as f64 / 1e3;
        (t(usage.user_time()), t(usage.system_time()))
    };
    let (user0, sys0) = cpu();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut runs = 0u32;
    let listings = headcni::kernel::nft::Listings::default();
    while Instant::now() < until {
        let planned = engine::plan_with(
            spec,
            &|| Ok(pods.to_vec().into()),
            &PodScope::HostOnly,
            &listings,
        )
        .unwrap();
        assert!(planned.plan.is_empty());
        runs += 1;
    }
    let (user1, sys1) = cpu();
    let n = f64::from(runs);
    eprintln!(
        "profiling: {runs} plans, wall {:.1} ms, user {:.1} ms, system {:.1} ms each",
        started.elapsed().as_secs_f64() * 1e3 / n,
        (user1 - user0) / n,
        (sys1 - sys0) / n
    );
}

fn main() {
    if std::env::var_os("HEADCNI_BENCH_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("headcni=debug")
            .with_writer(std::io::stderr)
            .try_init();
    }
    require_root();
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; nothing to list here.
    }
    let tag = format!("hcb{}", std::process::id());
    let node = format!("{tag}-node");
    let pods_ns = format!("{tag}-pods");
    let _guard = Netns(vec![pods_ns.clone(), node.clone()]);
    sh(&["ip", "netns", "add", &node]);
    sh(&["ip", "netns", "add", &pods_ns]);
    let dir = tempfile::tempdir().unwrap();
    let pods_path = PathBuf::from("/run/netns").join(&pods_ns);

    // Enter the node namespace on this (the runtime's only) thread.
    let netns = File::open(Path::new("/run/netns").join(&node)).unwrap();
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "tuntap", "add", "tailscale0", "mode", "tun"]);
    sh(&["ip", "link", "set", "tailscale0", "up"]);

    let dual_stack = std::env::var_os("HEADCNI_BENCH_DUAL_STACK").is_some();
    let mut spec_text =
        "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/16\"\n".to_string();
    if dual_stack {
        spec_text.push_str("cidr6 = \"fd00:10:244::/64\"\n");
    }
    // The cost of source validation: the same run with it off.
    if std::env::var_os("HEADCNI_BENCH_NO_SOURCE_CHECK").is_some() {
        spec_text.push_str("source_check = false\n");
    }
    let spec = Spec::parse(&spec_text, Path::new("bench.toml")).unwrap();
    let all: Vec<PodIntent> = (0..10_000)
        .map(|i| intent(i, &pods_path, dual_stack))
        .collect();

    println!(
        "headcni reconcile benchmark ({} cores, {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if dual_stack { "dual-stack" } else { "IPv4" }
    );
    let mut made = 0;
    for n in [1_000usize, 10_000] {
        make_veths(&all[made..n], made, &pods_ns, dir.path());
        made = n;
        let pods = &all[..n];
        let applied =
            engine::apply(&spec, &|| Ok(pods.to_vec().into()), &PodScope::HostOnly).unwrap();
        assert!(applied.converged(), "setup did not converge");
        wait_for_idle(Duration::from_secs(20));
        let mut dumps = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            let names = headcni::observe::link_names().unwrap();
            dumps.push(started.elapsed());
            assert!(names.len() > n);
        }
        // Repeated passes, as the daemon makes them, keep the firewall
        // table's last listing while the ruleset stays.
        let listings = headcni::kernel::nft::Listings::default();
        let mut times = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            let planned = engine::plan_with(
                &spec,
                &|| Ok(pods.to_vec().into()),
                &PodScope::HostOnly,
                &listings,
            )
            .unwrap();
            times.push(started.elapsed());
            assert!(planned.plan.is_empty());
        }
        if n == 10_000 {
            profile_loop(&spec, pods);
        }
        // A one-shot `headcni plan` process lists the firewall table once
        // (an `nft` process); repeated passes (the daemon) reuse the listing.
        let mut cold = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            let planned =
                engine::plan(&spec, &|| Ok(pods.to_vec().into()), &PodScope::HostOnly).unwrap();
            cold.push(started.elapsed());
            assert!(planned.plan.is_empty());
        }
        let best = *times.iter().min().unwrap();
        let planned =
            engine::plan(&spec, &|| Ok(pods.to_vec().into()), &PodScope::HostOnly).unwrap();
        let t = Instant::now();
        let desired = headcni::spec::compile(&spec, pods);
        let compile_took = t.elapsed();
        let t = Instant::now();
        let plan = headcni::diff::diff(&desired, &planned.observed);
        let diff_took = t.elapsed();
        assert!(plan.is_empty());
        let t = Instant::now();
        let observed = headcni::observe::observe(
            &[],
            headcni::observe::Firewall::Read(&listings),
            headcni::observe::Families::of(&spec),
        )
        .unwrap();
        let observe_took = t.elapsed();
        assert_eq!(
            observed.node.routes.len(),
            planned.observed.node.routes.len()
        );
        println!("host-side plan (observe + diff), {n:>6} pods: median {}  best {}  (target at 10,000: < 50 ms)", ms(median(times.clone())), ms(best));
        println!(
            "    with the firewall table listed afresh (a one-shot process): median {}",
            ms(median(cold))
        );
        println!(
            "    the kernel's link dump alone (one thread, names only): median {}",
            ms(median(dumps))
        );
        println!(
            "    the parts run one after the other (a pass overlaps them): observe {}  compile {}  diff {}",
            ms(observe_took),
            ms(compile_took),
            ms(diff_took)
        );
    }

    // Apply of 10,000 host routes vs ip -batch of the same routes.
    let batch = dir.path().join("routes.batch");
    let mut f = File::create(&batch).unwrap();
    for p in &all {
        writeln!(
            f,
            "route add {}/32 dev {} proto 104 scope link",
            p.ip.expect("an IPv4 address"),
            p.host_link
        )
        .unwrap();
    }
    drop(f);
    let flush = || sh(&["ip", "route", "flush", "proto", "104"]);
    let (mut ours, mut theirs, mut ours_pass) = (Vec::new(), Vec::new(), Vec::new());
    wait_for_idle(Duration::from_secs(20));
    for _ in 0..7 {
        flush();
        let planned = engine::plan(&spec, &|| Ok(all.clone().into()), &PodScope::HostOnly).unwrap();
        assert_eq!(planned.plan.summary().add, 10_002); // + the tailnet route, the pod CIDR unreachable
        let started = Instant::now();
        let report = headcni::apply::apply(&planned.plan);
        ours.push(started.elapsed());
        assert!(report.failed.is_empty(), "{:?}", report.failed.first());

        flush();
        let started = Instant::now();
        let applied =
            engine::apply(&spec, &|| Ok(all.clone().into()), &PodScope::HostOnly).unwrap();
        ours_pass.push(started.elapsed());
        assert!(applied.converged());

        flush();
        let started = Instant::now();
        sh(&["ip", "-batch", batch.to_str().unwrap()]);
        theirs.push(started.elapsed());
    }
    flush();
    let (ours, theirs, pass) = (median(ours), median(theirs), median(ours_pass));
    println!(
        "apply 10,000 host routes: headcni {}  ip -batch {}  ratio {:.2}x  (target <= 0.6x)",
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    println!(
        "whole pass (plan + apply + verify), 10,000 routes: {}  ({:.2}x ip -batch)",
        ms(pass),
        pass.as_secs_f64() / theirs.as_secs_f64()
    );
}
