//! `headcni daemon`: reconciles continuously. Passes (plan, apply, verify)
//! are triggered by spec edits, pod-intent changes, kernel events about owned
//! objects and the tailnet interface, the supervised tailscaled, and a
//! periodic resync. Triggers coalesce (a burst gives one pass), passes never
//! overlap, a failed pass is retried with exponential backoff and jitter, and
//! a bad spec edit changes nothing: the last good spec stays in force.

pub mod events;
mod handoff;
mod listen;
pub mod metrics;
mod single;
pub mod status;
pub mod supervisor;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::engine::{self, PodScope};
use crate::snapshot::{self, LastApplied};
use crate::spec::{Mode, Spec};
use events::Trigger;
use metrics::Metrics;
use status::{InterfaceStatus, PassStatus, Shared, Status};
use supervisor::Backoff;

/// How long a trigger waits for company before the pass starts: kernel events
/// come in bursts (one `ip` command can send several), file edits in longer ones.
const KERNEL_SETTLE: Duration = Duration::from_millis(3);
const FILE_SETTLE: Duration = Duration::from_millis(50);
/// CNI calls wait for company only briefly: a runtime is waiting on each,
/// and those arriving during a pass form the next batch anyway.
const CNI_SETTLE: Duration = Duration::from_millis(1);

/// A spec the daemon starts on that could not be rendered anew (the API
/// server out of reach): why, and how to try again. Until `attempt`
/// succeeds (it writes the spec file, which the file watch then reloads)
/// the daemon runs on the spec rendered last and its status says so.
pub struct Rerender {
    pub why: String,
    pub attempt: Box<dyn FnMut() -> anyhow::Result<()> + Send>,
}

/// How often a failed render is tried again: soon at first (an API server
/// restarting with the node), then at most every minute.
const RERENDER_FIRST: Duration = Duration::from_secs(1);
const RERENDER_MAX: Duration = Duration::from_secs(60);

pub fn run(spec_path: &Path, rerender: Option<Rerender>) -> anyhow::Result<()> {
    let spec = Spec::load(spec_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(main(spec_path.to_path_buf(), spec, rerender))
}

async fn main(
    spec_path: PathBuf,
    mut spec: Spec,
    rerender: Option<Rerender>,
) -> anyhow::Result<()> {
    crate::store::create_state_dir(&spec.state_dir)
        .map_err(|e| anyhow::anyhow!("state_dir {}: {e}", spec.state_dir.display()))?;
    // Held for the daemon's life: a second daemon would take over the
    // sockets and delete them when it exits.
    let _only_daemon = single::claim(&spec.state_dir)?;
    let status: Shared = Default::default();
    let metrics = Metrics::new();
    {
        let mut s = status
            .lock()
            .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
        s.mode = format!("{:?}", spec.mode).to_lowercase();
        s.spec = spec_path.display().to_string();
        s.tailnet_interface.name = spec.tailnet.interface.clone();
    }
    if let Some(rerender) = rerender {
        tokio::spawn(render_until_it_works(rerender, status.clone()));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Set once the first pass has wired the tailnet namespace's uplink: the
    // supervisor starts tailscaled only then (supervisor::wait_for_uplink).
    let (wired_tx, wired_rx) = watch::channel(false);

    let queue = handoff::Queue::default();
    let sockets = serve_sockets(&spec, &status, &metrics, &queue, &tx);
    let _watcher = listen_for_changes(&spec_path, &spec, &tx);
    let supervisor = (spec.mode == Mode::Daemon).then(|| {
        tokio::spawn(supervisor::run(
            spec.clone(),
            status.clone(),
            metrics.clone(),
            tx.clone(),
            stop_rx.clone(),
            wired_rx,
        ))
    });
    let resync = Duration::from_secs(spec.daemon.resync_seconds);
    tokio::spawn({
        let tx = tx.clone();
        async move {
            let mut tick = tokio::time::interval(resync);
            tick.tick().await;
            loop {
                tick.tick().await;
                if tx.send(Trigger::Resync).is_err() {
                    return;
                }
            }
        }
    });

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let _ = tx.send(Trigger::Start);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut retry_at: Option<tokio::time::Instant> = None;
    tracing::info!(
        "headcni daemon running ({:?} mode, spec {})",
        spec.mode,
        spec_path.display()
    );

    loop {
        let first = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            t = rx.recv() => match t { Some(t) => t, None => break },
            _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => Trigger::Retry,
        };
        let mut triggers = BTreeSet::from([first]);
        let settle = if triggers.contains(&Trigger::Cni) {
            CNI_SETTLE
        } else if triggers
            .iter()
            .any(|t| matches!(t, Trigger::Spec | Trigger::Pods))
        {
            FILE_SETTLE
        } else {
            KERNEL_SETTLE
        };
        tokio::time::sleep(settle).await;
        while let Ok(t) = rx.try_recv() {
            triggers.insert(t);
        }
        if triggers.contains(&Trigger::Spec) && !reload_spec(&spec_path, &mut spec, &status) {
            // A bad edit changes nothing: no pass for it alone.
            triggers.remove(&Trigger::Spec);
            if triggers.is_empty() {
                continue;
            }
        }
        if triggers.remove(&Trigger::Cni) {
            cni_batch(&spec, &queue, &status).await;
            if !queue.is_empty() {
                let _ = tx.send(Trigger::Cni);
            }
            if triggers.is_empty() {
                continue;
            }
        }
        retry_at = None;
        let ok = pass(&spec, &triggers, &status, &metrics).await;
        wired_tx.send_replace(true);
        if ok {
            backoff.reset();
        } else {
            retry_at = Some(tokio::time::Instant::now() + backoff.next_delay());
        }
    }

    tracing::info!("stopping: the routes stay in place");
    let _ = stop_tx.send(true);
    if let Some(handle) = supervisor {
        let _ = handle.await;
    }
    for socket in sockets {
        let _ = std::fs::remove_file(&socket);
    }
    Ok(())
}

/// Tries the render again, with backoff, until it works; the status says
/// meanwhile that the spec in force is the one rendered last.
async fn render_until_it_works(rerender: Rerender, status: Shared) {
    let Rerender { why, mut attempt } = rerender;
    let set = |text: Option<String>| {
        if let Ok(mut s) = status.lock() {
            s.render_error = text;
        }
    };
    set(Some(format!("running on the spec rendered last: {why}")));
    let mut backoff = Backoff::new(RERENDER_FIRST, RERENDER_MAX);
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let tried = tokio::task::spawn_blocking(move || {
            let result = attempt();
            (attempt, result)
        })
        .await;
        let Ok((again, result)) = tried else {
            tracing::error!("rendering the spec panicked; running on the spec rendered last");
            return;
        };
        attempt = again;
        match result {
            Ok(()) => {
                tracing::info!("the spec is rendered from the cluster again");
                set(None);
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot render the spec yet (running on the one rendered last): {e:#}"
                );
                set(Some(format!("running on the spec rendered last: {e:#}")));
            }
        }
    }
}

/// The status and CNI sockets in state_dir, and the metrics listener;
/// returns the sockets' paths (removed at exit).
fn serve_sockets(
    spec: &Spec,
    status: &Shared,
    metrics: &Metrics,
    queue: &handoff::Queue,
    tx: &mpsc::UnboundedSender<Trigger>,
) -> [PathBuf; 2] {
    let socket = status::socket_path(&spec.state_dir);
    tokio::spawn({
        let (path, status) = (socket.clone(), status.clone());
        async move {
            if let Err(e) = status::serve(path, status).await {
                tracing::error!("status socket: {e}");
            }
        }
    });
    let handoff_socket = crate::cni::handoff::socket_path(&spec.state_dir);
    tokio::spawn({
        let (path, queue, tx) = (handoff_socket.clone(), queue.clone(), tx.clone());
        async move {
            if let Err(e) = handoff::serve(path, queue, tx).await {
                tracing::error!("CNI handoff socket (CNI calls wire pods themselves): {e}");
            }
        }
    });
    if let Some(addr) = spec.daemon.metrics_listen {
        let (metrics, status) = (metrics.clone(), status.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, metrics, status).await {
                tracing::error!("metrics listener {addr}: {e}");
            }
        });
    }
    [socket, handoff_socket]
}

/// Everything that makes the loop look again: file watches (returned: they
/// stop when dropped), kernel and nftables events, in daemon mode those of
/// the tailnet namespace (made here if missing).
fn listen_for_changes(
    spec_path: &Path,
    spec: &Spec,
    tx: &mpsc::UnboundedSender<Trigger>,
) -> Option<notify::RecommendedWatcher> {
    let watcher = events::watch_files(spec_path, &spec.state_dir, tx.clone())
        .map_err(|e| tracing::error!("cannot watch the spec and store: {e}"))
        .ok();
    let interfaces = vec![spec.tailnet.interface.clone()];
    match crate::kernel::netlink::events::event_socket(None) {
        Ok(sock) => events::listen(sock, interfaces.clone(), tx.clone()),
        Err(e) => tracing::error!("kernel events: {}", crate::Chain(&e)),
    }
    match crate::kernel::netlink::events::nftables_socket() {
        Ok(sock) => events::listen_nftables(sock, tx.clone()),
        Err(e) => tracing::warn!("nftables events (changes will wait for the resync): {e}"),
    }
    if spec.mode == Mode::Daemon {
        let netns = spec.daemon.netns_path();
        if let Err(e) = crate::kernel::netlink::netns::ensure_netns(&netns) {
            tracing::error!("tailnet namespace {}: {e}", netns.display());
        }
        match crate::kernel::netlink::events::event_socket(Some(&netns)) {
            Ok(sock) => events::listen(sock, interfaces, tx.clone()),
            Err(e) => tracing::error!(
                "kernel events in the tailnet namespace: {}",
                crate::Chain(&e)
            ),
        }
    }
    watcher
}

/// Reads the edited spec: true when it is good (and now in force), false
/// when it was refused (the last good one stays, the error in the status).
fn reload_spec(spec_path: &Path, spec: &mut Spec, status: &Shared) -> bool {
    match Spec::load(spec_path) {
        Ok(new) => {
            if let Ok(mut s) = status.lock() {
                s.spec_error = None;
            }
            if new != *spec {
                tracing::info!("spec {} changed; applying it", spec_path.display());
            }
            *spec = new;
            true
        }
        Err(e) => {
            let e = crate::Chain(&e).to_string();
            tracing::error!("spec edit refused, keeping the last good spec: {e}");
            if let Ok(mut s) = status.lock() {
                s.spec_error = Some(e.clone());
                s.last_error = Some(e);
            }
            false
        }
    }
}

/// The CNI calls waiting, as one batch on a blocking thread (awaited like a
/// pass: they never overlap).
async fn cni_batch(spec: &Spec, queue: &handoff::Queue, status: &Shared) {
    let batch = queue.take();
    if batch.is_empty() {
        return;
    }
    let owned = spec.clone();
    let size = batch.len();
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || handoff::run_batch(&owned, batch));
    if let Err(e) = done.await {
        tracing::error!("CNI batch panicked: {e}");
    }
    tracing::debug!(
        calls = size,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "CNI batch"
    );
    if let Ok(mut s) = status.lock() {
        s.cni_calls += size as u64;
        s.cni_batches += 1;
    }
}

/// One reconcile pass on a blocking thread; the loop awaits it, so passes never overlap.
async fn pass(
    spec: &Spec,
    triggers: &BTreeSet<Trigger>,
    status: &Shared,
    metrics: &Metrics,
) -> bool {
    // Kernel events need only the node (and the tailnet namespace); anything
    // else looks into every pod too.
    let kernel_only = triggers
        .iter()
        .all(|t| matches!(t, Trigger::Kernel | Trigger::Tailscaled));
    let scope = if kernel_only {
        PodScope::HostOnly
    } else {
        PodScope::All
    };
    let repair = triggers.iter().any(|t| {
        matches!(
            t,
            Trigger::Kernel
                | Trigger::Resync
                | Trigger::Overrun
                | Trigger::Tailscaled
                | Trigger::Retry
        )
    });
    let label = triggers
        .iter()
        .map(|t| format!("{t:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join("+");
    let started = Instant::now();
    let owned = spec.clone();
    // Host mode leans on the host's tailscaled: ask it now and then (not on
    // every kernel event: it costs two processes).
    let ask_host = spec.mode == Mode::Host
        && triggers
            .iter()
            .any(|t| matches!(t, Trigger::Start | Trigger::Resync | Trigger::Spec));
    let host_spec = spec.clone();
    let host_tailnet = ask_host.then(|| {
        tokio::task::spawn_blocking(move || {
            crate::hosttailnet::check(
                &host_spec.daemon.tailscale,
                &host_spec.pod_network.cidrs(),
                host_spec.pod_network.has_cluster(),
            )
        })
    });
    // Now and then, addresses held by DELs that never finished are freed.
    let sweep = triggers
        .iter()
        .any(|t| matches!(t, Trigger::Start | Trigger::Resync | Trigger::Pods));
    let result = tokio::task::spawn_blocking(move || {
        let store = owned.pod_store();
        engine::apply(&owned, &|| store.read(), &scope).map(|applied| {
            if sweep {
                match engine::release_gone(&store, &applied.observed_after) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!("released {n} addresses of attachments whose links are gone")
                    }
                    Err(e) => {
                        tracing::warn!("cannot free released addresses: {}", crate::Chain(&e))
                    }
                }
            }
            let interface = interface_status(&owned, &applied.observed_after);
            if applied.converged() {
                let record = LastApplied::new(&owned, &applied.pods, applied.desired.clone());
                if let Err(e) = snapshot::save(&LastApplied::path(&owned.state_dir), &record) {
                    tracing::warn!("cannot record the applied state: {}", crate::Chain(&e));
                }
            }
            (applied, interface)
        })
    })
    .await;
    let took = started.elapsed();
    metrics.pass_duration.observe(took.as_secs_f64());
    let now = crate::report::timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let host_tailnet = match host_tailnet {
        Some(task) => task.await.ok(),
        None => None,
    };
    let Ok(mut s) = status.lock() else {
        return false;
    };
    if let Some(findings) = host_tailnet {
        for f in &findings {
            tracing::warn!("host tailnet: {f}");
        }
        s.host_tailnet = findings;
    }
    match result {
        Ok(Ok((applied, interface))) => {
            // Waiting (the tailnet interface is away) is not a failure: the
            // pass did all it could; the interface's return triggers the next.
            let ok = applied.report.failed.is_empty() && applied.remaining.is_empty();
            let steps = applied.report.applied;
            if steps > 0 {
                tracing::info!(
                    "pass ({label}): applied {steps} steps in {:.1} ms",
                    took.as_secs_f64() * 1000.0
                );
            }
            for f in &applied.report.failed {
                tracing::warn!("step failed: {f}");
            }
            if repair && steps > 0 {
                s.drift_repairs += steps as u64;
                metrics.drift_repairs.inc_by(steps as u64);
            }
            s.pods = applied.pods.len();
            metrics.pods.set(applied.pods.len() as i64);
            metrics.note_firewall_listings();
            metrics
                .interface_up
                .set(i64::from(interface.present && interface.up));
            s.tailnet_interface = interface;
            s.last_pass = Some(PassStatus {
                at: now,
                ok,
                duration_ms: took.as_secs_f64() * 1000.0,
                trigger: label,
                applied: steps,
                remaining: applied.remaining.steps.len(),
                conflicts: applied.remaining.conflicts.len(),
                waiting: applied.remaining.waiting.len(),
            });
            let result = if ok { "ok" } else { "error" };
            metrics
                .passes
                .get_or_create(&metrics::ResultLabel {
                    result: result.into(),
                })
                .inc();
            if ok {
                s.passes_ok += 1;
                if s.spec_error.is_none() {
                    s.last_error = None;
                }
            } else {
                s.passes_failed += 1;
                s.last_error = applied
                    .report
                    .failed
                    .first()
                    .map(|f| f.to_string())
                    .or(Some("did not converge".into()));
            }
            ok
        }
        Ok(Err(e)) => {
            let text = crate::Chain(&e).to_string();
            tracing::error!("pass ({label}) failed: {text}");
            s.passes_failed += 1;
            s.last_error = Some(text);
            metrics
                .passes
                .get_or_create(&metrics::ResultLabel {
                    result: "error".into(),
                })
                .inc();
            false
        }
        Err(e) => {
            s.passes_failed += 1;
            s.last_error = Some(format!("pass panicked: {e}"));
            false
        }
    }
}

/// The tailnet interface as the last pass saw it.
fn interface_status(spec: &Spec, observed: &crate::observe::Observed) -> InterfaceStatus {
    let name = spec.tailnet.interface.clone();
    let state = match spec.mode {
        Mode::Host => Some(&observed.node),
        Mode::Daemon => observed
            .pods
            .iter()
            .find(|p| p.key == crate::model::Attachment::TailnetNamespace)
            .and_then(|p| p.state.as_ref()),
    };
    let Some(state) = state else {
        return InterfaceStatus {
            name,
            ..Default::default()
        };
    };
    let link = state.links.iter().find(|l| l.name == name);
    InterfaceStatus {
        present: link.is_some(),
        up: link.is_some_and(|l| l.up),
        addresses: state
            .addresses
            .iter()
            .filter(|a| a.dev == name)
            .map(|a| a.addr.to_string())
            .collect(),
        name,
    }
}

/// Prints a status for people.
pub fn print_status(s: &Status) {
    outln!("mode: {} (spec {})", s.mode, s.spec);
    for finding in &s.host_tailnet {
        outln!("host tailnet: {finding}");
    }
    let i = &s.tailnet_interface;
    let state = if !i.present {
        "absent"
    } else if i.up {
        "up"
    } else {
        "down"
    };
    outln!(
        "tailnet interface: {} {state} {}",
        i.name,
        i.addresses.join(" ")
    );
    match &s.last_pass {
        Some(p) => outln!(
            "last pass: {} {} in {:.1} ms (trigger {}; {} applied, {} remaining, {} conflicts, {} waiting)",
            p.at,
            if p.ok { "converged" } else { "FAILED" },
            p.duration_ms,
            p.trigger,
            p.applied,
            p.remaining,
            p.conflicts,
            p.waiting
        ),
        None => outln!("last pass: none yet"),
    }
    outln!(
        "passes: {} ok, {} failed; drift repairs: {}",
        s.passes_ok,
        s.passes_failed,
        s.drift_repairs
    );
    if s.tailscaled.supervised {
        outln!(
            "tailscaled: {} (pid {}), {} restarts",
            if s.tailscaled.running {
                "running"
            } else {
                "not running"
            },
            s.tailscaled.pid.map_or("-".into(), |p| p.to_string()),
            s.tailscaled.restarts
        );
    }
    outln!("pods: {}", s.pods);
    if s.cni_calls > 0 {
        outln!(
            "CNI calls handed over: {} in {} batches",
            s.cni_calls,
            s.cni_batches
        );
    }
    if let Some(e) = &s.spec_error {
        outln!("spec error (running on the last good spec): {e}");
    }
    if let Some(e) = &s.render_error {
        outln!("not rendered from the cluster: {e}");
    }
    if let Some(e) = &s.last_error {
        outln!("last error: {e}");
    }
}
