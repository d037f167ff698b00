//! One pass of the daemon's loop, on a blocking thread (the loop awaits it:
//! passes never overlap): a batch of CNI calls, or a reconcile of the node
//! with what it updates in the status and metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::blocked::Blocked;
use super::events::Trigger;
use super::handoff;
use super::metrics::{self, Metrics};
use super::status::{InterfaceStatus, PassStatus, Shared};
use crate::engine::{self, PodScope};
use crate::kernel::nft::Listings;
use crate::spec::{Mode, Spec};

/// The CNI calls waiting, as one batch on a blocking thread (awaited like a
/// pass: they never overlap). True when DELs left host links for the next
/// pass to delete.
pub(super) async fn cni_batch(spec: &Spec, queue: &handoff::Queue, status: &Shared) -> bool {
    let batch = queue.take();
    if batch.is_empty() {
        return false;
    }
    let owned = spec.clone();
    let size = batch.len();
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || handoff::run_batch(&owned, batch));
    let retired = match done.await {
        Ok(retired) => retired,
        Err(e) => {
            tracing::error!("CNI batch panicked: {e}");
            Vec::new()
        }
    };
    tracing::debug!(
        calls = size,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "CNI batch"
    );
    if let Ok(mut s) = status.lock() {
        s.cni_calls += size as u64;
        s.cni_batches += 1;
    }
    !retired.is_empty()
}

/// One reconcile pass on a blocking thread; the loop awaits it, so passes never overlap.
pub(super) async fn pass(
    spec: &Spec,
    triggers: &BTreeSet<Trigger>,
    status: &Shared,
    metrics: &Metrics,
    listings: &Arc<Listings>,
    blocked: &mut Blocked,
) -> bool {
    // Kernel events need only the node (and the tailnet namespace); anything
    // else looks into every pod too (a Removal while a pod is blocked: the
    // pass that unblocks it must wire both of its ends).
    let kernel_only = triggers
        .iter()
        .all(|t| matches!(t, Trigger::Kernel | Trigger::Tailscaled | Trigger::Retired));
    let scope = if kernel_only {
        PodScope::HostOnly
    } else {
        PodScope::All
    };
    let repair = triggers.iter().any(|t| {
        matches!(
            t,
            Trigger::Kernel
                | Trigger::Removal
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
    let sweep = triggers.iter().any(|t| {
        matches!(
            t,
            Trigger::Start | Trigger::Resync | Trigger::Pods | Trigger::Retired | Trigger::Retry
        )
    });
    let kept = listings.clone();
    let result = tokio::task::spawn_blocking(move || {
        let store = owned.pod_store();
        engine::apply_with(&owned, &|| store.read(), &scope, &kept).map(|applied| {
            let releasing = engine::settle(&owned, &store, &applied, sweep);
            let interface = interface_status(&owned, &applied.observed_after);
            (applied, interface, releasing)
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
        Ok(Ok((applied, interface, releasing))) => {
            // Waiting (the tailnet interface is away) is not a failure: the
            // pass did all it could; the interface's return triggers the next.
            let ok = applied.report.failed.is_empty() && applied.remaining.is_empty();
            let steps = applied.report.applied;
            if steps > 0 {
                tracing::info!(
                    "pass ({label}): applied {} in {:.1} ms",
                    crate::report::plural(steps, "step"),
                    took.as_secs_f64() * 1000.0
                );
                log_steps(&applied.plan, repair);
            }
            s.blocked = blocked.note(&applied.remaining, kernel_only, metrics);
            for f in &applied.report.failed {
                tracing::warn!("step failed: {f}");
            }
            if repair && steps > 0 {
                s.drift_repairs += steps as u64;
                metrics.drift_repairs.inc_by(steps as u64);
            }
            s.pods = applied.pods.len();
            if let Some(held) = releasing {
                s.releasing = held;
            }
            metrics.pods.set(applied.pods.len() as i64);
            metrics.note_firewall_listings(listings.count());
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

/// Names each step a pass applied: at info when it repaired drift (someone
/// changed the node), at debug when it served the spec or pods.
fn log_steps(plan: &crate::diff::Plan, repair: bool) {
    const SHOWN: usize = 20;
    for step in plan.steps.iter().take(SHOWN) {
        if repair {
            tracing::info!("repaired: {step}");
        } else {
            tracing::debug!("applied: {step}");
        }
    }
    if repair && plan.steps.len() > SHOWN {
        tracing::info!("repaired: ... and {} more", plan.steps.len() - SHOWN);
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
