//! `headcni daemon`: reconciles continuously. Passes (plan, apply, verify)
//! are triggered by spec edits, pod-intent changes, kernel events about owned
//! objects and the tailnet interface, the supervised tailscaled, and a
//! periodic resync. Triggers coalesce (a burst gives one pass), passes never
//! overlap, a failed pass is retried with exponential backoff and jitter, and
//! a bad spec edit changes nothing: the last good spec stays in force.

pub mod approver;
mod blocked;
pub mod events;
mod handoff;
mod listen;
pub mod metrics;
pub mod node_report;
mod pass;
mod rerender;
mod single;

pub use single::{hold, Claim};

/// The pid of the daemon running on `state_dir`, if one is (0: one runs,
/// its pid unknown); an error when that cannot be told counts as one.
pub fn running(state_dir: &std::path::Path) -> Option<i32> {
    match single::hold(state_dir) {
        Ok(Ok(_released_at_once)) => None,
        Ok(Err(pid)) => Some(pid),
        Err(_) => Some(0),
    }
}
pub mod status;
pub mod supervisor;

pub use node_report::NodeReporter;
pub use rerender::Rerender;
pub use status::print_status;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::spec::{Mode, Spec};
use events::Trigger;
use metrics::Metrics;
use status::Shared;
use supervisor::Backoff;

/// How long a trigger waits for company before the pass starts: kernel events
/// come in bursts (one `ip` command can send several), file edits in longer ones.
const KERNEL_SETTLE: Duration = Duration::from_millis(3);
const FILE_SETTLE: Duration = Duration::from_millis(50);
/// CNI calls do not wait for company: a runtime is waiting on each, and
/// those arriving during a batch form the next one anyway (a 1 ms settle
/// is a timer tick or more on every lone ADD and DEL).
const CNI_SETTLE: Duration = Duration::ZERO;

/// Runs the daemon; with `--from-kubernetes`, `rerender` (a spec that could
/// not be rendered at start) and `reporter` (the Node condition and Events).
pub fn run(
    spec_path: &Path,
    rerender: Option<Rerender>,
    reporter: Option<NodeReporter>,
) -> anyhow::Result<()> {
    let spec = Spec::load(spec_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(main(spec_path.to_path_buf(), spec, rerender, reporter))
}

async fn main(
    spec_path: PathBuf,
    mut spec: Spec,
    rerender: Option<Rerender>,
    reporter: Option<NodeReporter>,
) -> anyhow::Result<()> {
    crate::store::create_state_dir(&spec.state_dir)
        .map_err(|e| anyhow::anyhow!("state_dir {}: {e}", spec.state_dir.display()))?;
    // Held for the daemon's life: a second daemon would take over the
    // sockets and delete them when it exits.
    let _only_daemon = single::claim(&spec.state_dir)?;
    let status: Shared = Default::default();
    let metrics = Metrics::new();
    // The firewall table's last listing, reused while the ruleset stays.
    let listings = std::sync::Arc::new(crate::kernel::nft::Listings::default());
    {
        let mut s = status
            .lock()
            .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
        s.mode = format!("{:?}", spec.mode).to_lowercase();
        s.spec = spec_path.display().to_string();
        s.tailnet_interface.name = spec.tailnet.interface.clone();
    }
    if let Some(rerender) = rerender {
        tokio::spawn(rerender::render_until_it_works(rerender, status.clone()));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Set once the first pass has wired the tailnet namespace's uplink: the
    // supervisor starts tailscaled only then (supervisor::wait_for_uplink).
    let (wired_tx, wired_rx) = watch::channel(false);

    let queue = handoff::Queue::default();
    let sockets = serve_sockets(&spec, &status, &metrics, &queue, &tx);
    let mut blocked = blocked::Blocked::default();
    let _watcher = listen_for_changes(&spec_path, &spec, &tx, &blocked.flag);
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
    if let Some(reporter) = reporter {
        tokio::spawn(node_report::run(reporter, status.clone(), stop_rx.clone()));
    }
    // The approver follows spec edits the loop accepts.
    let (spec_tx, spec_rx) = watch::channel(spec.clone());
    if spec.mode == Mode::Daemon {
        tokio::spawn(approver::run(
            spec_rx,
            status.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
    }
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
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
        }
        while let Ok(t) = rx.try_recv() {
            triggers.insert(t);
        }
        if triggers.contains(&Trigger::Spec)
            && reload_spec(&spec_path, &mut spec, &status, &metrics)
        {
            spec_tx.send_if_modified(|old| {
                let changed = *old != spec;
                if changed {
                    *old = spec.clone();
                }
                changed
            });
        } else if triggers.contains(&Trigger::Spec) {
            // A bad edit changes nothing: no pass for it alone.
            triggers.remove(&Trigger::Spec);
            if triggers.is_empty() {
                continue;
            }
        }
        if triggers.remove(&Trigger::Cni) {
            if pass::cni_batch(&spec, &queue, &status).await {
                let _ = tx.send(Trigger::Retired);
            }
            if !queue.is_empty() {
                let _ = tx.send(Trigger::Cni);
            }
            if triggers.is_empty() {
                continue;
            }
        }
        retry_at = None;
        let ok = pass::pass(&spec, &triggers, &status, &metrics, &listings, &mut blocked).await;
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
    blocked: &blocked::BlockedFlag,
) -> Option<notify::RecommendedWatcher> {
    let watcher = events::watch_files(spec_path, &spec.state_dir, tx.clone())
        .map_err(|e| tracing::error!("cannot watch the spec and store: {e}"))
        .ok();
    // Only a daemon that hears others ask for the store may keep it open.
    if watcher.is_some() {
        crate::store::keep_open(&spec.state_dir);
    }
    let interfaces = vec![spec.tailnet.interface.clone()];
    match crate::kernel::netlink::events::event_socket(None) {
        Ok(sock) => events::listen(sock, interfaces.clone(), blocked.clone(), tx.clone()),
        Err(e) => tracing::error!("kernel events: {}", crate::Chain(&e)),
    }
    match crate::kernel::netlink::events::nftables_socket() {
        Ok(sock) => events::listen_nftables(sock, tx.clone()),
        Err(e) => tracing::warn!(
            "nftables events (changes will wait for the resync): {}",
            crate::Chain(&e)
        ),
    }
    if spec.mode == Mode::Daemon {
        let netns = spec.daemon.netns_path();
        if let Err(e) = crate::kernel::netlink::netns::ensure_netns(&netns) {
            tracing::error!("tailnet namespace {}: {e}", netns.display());
        }
        match crate::kernel::netlink::events::event_socket(Some(&netns)) {
            Ok(sock) => events::listen(sock, interfaces, blocked.clone(), tx.clone()),
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
fn reload_spec(spec_path: &Path, spec: &mut Spec, status: &Shared, metrics: &Metrics) -> bool {
    match Spec::load(spec_path) {
        Ok(new) => {
            metrics.spec_errors.set(0);
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
            metrics.spec_errors.set(1);
            if let Ok(mut s) = status.lock() {
                s.spec_error = Some(e.clone());
                s.last_error = Some(e);
            }
            false
        }
    }
}
