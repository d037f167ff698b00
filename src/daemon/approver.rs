//! Daemon mode: this node's pod CIDRs approved at Headscale. With
//! `[headscale]` (an API key) the daemon finds its own node by its node key,
//! approves exactly its own CIDRs (the union with what is approved already)
//! and keeps them approved: an own CIDR someone unapproved is drift, logged
//! and counted, then approved again. Without a key it reads what tailscaled
//! says Headscale made primary, and says what fixes a missing approval.
//!
//! It runs beside the reconcile loop, never in it: every call is bounded,
//! and Headscale down is "not approved yet" (what is approved stays
//! approved and carries traffic), never an error of the node's networking.

use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::watch;

use super::metrics::{CidrLabel, Metrics};
use super::status::{ApprovalStatus, RouteApproval, Shared};
use super::supervisor::Backoff;
use crate::headscale::{self, node_record, Client};
use crate::spec::Spec;

/// Own CIDRs seen approved, and for which Headscale node.
#[derive(Clone, Debug, Default)]
struct Seen {
    node_id: Option<u64>,
    cidrs: Vec<IpNetwork>,
}

/// What one check found.
#[derive(Debug, Default)]
struct Check {
    status: ApprovalStatus,
    /// Own CIDRs approved again because someone had unapproved them.
    drift: Vec<IpNetwork>,
    /// Every own CIDR is approved.
    settled: bool,
    /// Headscale (or tailscaled) answered.
    answered: bool,
}

/// Runs until shutdown: a check at start-up, soon again while something is
/// missing (backing off to the resync interval), every resync when all is
/// approved.
pub async fn run(
    mut spec: watch::Receiver<Spec>,
    status: Shared,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // Own CIDRs seen approved for this node since the daemon started: one
    // missing later is drift.
    let mut seen = Seen::default();
    loop {
        let current = spec.borrow_and_update().clone();
        let resync = Duration::from_secs(current.daemon.resync_seconds);
        // A CIDR no longer in the spec is no longer ours to miss.
        let own = current.pod_network.cidrs();
        seen.cidrs.retain(|c| own.contains(c));
        let asked = seen.clone();
        let check = tokio::task::spawn_blocking(move || check(&current, &asked, true))
            .await
            .unwrap_or_default();
        if check.status.node_id.is_some() && check.status.node_id != seen.node_id {
            // Another node record (joined again): nothing of it was seen yet.
            seen = Seen {
                node_id: check.status.node_id,
                cidrs: Vec::new(),
            };
        }
        for cidr in &check.drift {
            metrics.headscale_drift_repairs.inc();
            tracing::warn!(
                cidr = %cidr,
                "drift at Headscale: this node's pod CIDR {cidr} was no longer approved; approved it again"
            );
        }
        if check.status.error.is_some() {
            metrics.headscale_errors.inc();
        }
        if check.answered {
            metrics.approval_last_contact.set(unix_now() as i64);
        }
        if !check.status.routes.is_empty() {
            // Only the CIDRs of the spec in force have a gauge.
            metrics.route_approved.clear();
        }
        for r in &check.status.routes {
            metrics
                .route_approved
                .get_or_create(&CidrLabel {
                    cidr: r.cidr.clone(),
                })
                .set(i64::from(r.approved));
            if r.approved {
                if let Ok(net) = r.cidr.parse::<IpNetwork>() {
                    if !seen.cidrs.contains(&net) {
                        seen.cidrs.push(net);
                    }
                }
            }
        }
        if let Ok(mut s) = status.lock() {
            let old = s.approval.take().unwrap_or_default();
            let mut new = check.status;
            new.drift_repairs = old.drift_repairs + check.drift.len() as u64;
            if new.last_contact.is_none() {
                new.last_contact = old.last_contact;
            }
            if new.routes.is_empty() {
                // Not known this time (Headscale down): what was seen stands.
                new.routes = old.routes;
                new.node = new.node.or(old.node);
                new.node_id = new.node_id.or(old.node_id);
            }
            if new.error != old.error {
                if let Some(e) = &new.error {
                    tracing::warn!("route approval: {e}");
                }
            }
            s.approval = Some(new);
        }
        let delay = if check.settled {
            backoff.reset();
            resync
        } else {
            backoff.next_delay().min(resync)
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = spec.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// For `headcni plan` in daemon mode: what is missing at the control
/// server, read only (the daemon repairs it), as sentences.
pub fn findings(spec: &Spec) -> Vec<String> {
    let check = check(spec, &Seen::default(), false);
    let missing: Vec<&RouteApproval> = check.status.routes.iter().filter(|r| !r.approved).collect();
    let mut out = Vec::new();
    if let Some(e) = &check.status.error {
        out.push(format!("route approval unknown: {e}"));
    }
    if !missing.is_empty() {
        let cidrs: Vec<&str> = missing.iter().map(|r| r.cidr.as_str()).collect();
        if spec.headscale.is_some() {
            out.push(format!(
                "not approved at Headscale: {} for {}; the running daemon approves it at its next check (within {} s)",
                cidrs.join(" and "),
                check.status.node.as_deref().unwrap_or("this node"),
                spec.daemon.resync_seconds
            ));
        } else {
            out.extend(check.status.advice.iter().cloned());
        }
    }
    out
}

fn check(spec: &Spec, seen: &Seen, repair: bool) -> Check {
    let own = spec.pod_network.cidrs();
    let by = if spec.headscale.is_some() {
        "api"
    } else {
        "control server"
    };
    let mut out = Check {
        status: ApprovalStatus {
            by: by.into(),
            ..ApprovalStatus::default()
        },
        ..Check::default()
    };
    let limit = Duration::from_secs(spec.headscale.as_ref().map_or(5, |h| h.timeout_seconds));
    let me = match headscale::tailscaled::status(
        &spec.daemon.tailscale,
        &spec.state_dir.join("tailscaled.sock"),
        limit,
    ) {
        Ok(me) => me,
        Err(e) => {
            out.status.error = Some(format!("tailscaled: {e}"));
            return out;
        }
    };
    let Some(node_key) = me.node_key().map(str::to_string) else {
        out.status.error = Some(format!(
            "tailscaled is not logged in yet ({})",
            if me.backend_state.is_empty() {
                "no state"
            } else {
                me.backend_state.as_str()
            }
        ));
        return out;
    };
    let host_name = me.self_.as_ref().map(|s| s.host_name.clone());
    let Some(config) = &spec.headscale else {
        // No key: what tailscaled was told is primary is what is approved.
        out.answered = true;
        out.status.last_contact = Some(now_rfc3339());
        out.status.node = host_name.clone();
        let primary = me
            .self_
            .as_ref()
            .and_then(|s| s.primary_routes.clone())
            .unwrap_or_default();
        let primary: Vec<IpNetwork> = primary.iter().filter_map(|r| r.parse().ok()).collect();
        out.status.routes = own
            .iter()
            .map(|c| RouteApproval {
                cidr: c.to_string(),
                approved: primary.contains(c),
            })
            .collect();
        let missing: Vec<String> = own
            .iter()
            .filter(|c| !primary.contains(c))
            .map(|c| c.to_string())
            .collect();
        out.settled = missing.is_empty();
        if !missing.is_empty() {
            out.status.advice =
                headscale::approval::advice(&missing, host_name.as_deref().unwrap_or("this node"));
        }
        return out;
    };
    let result = Client::new(config).and_then(|client| {
        let node = own_node(&client, spec, config, &node_key)?;
        Ok((client, node))
    });
    let (client, node) = match result {
        Ok((client, Some(node))) => (client, node),
        Ok((_, None)) => {
            out.answered = true;
            out.status.error = Some(format!(
                "Headscale at {} does not list this node ({node_key}) yet",
                config.url
            ));
            return out;
        }
        Err(e) => {
            out.status.error = Some(crate::Chain(&e).to_string());
            return out;
        }
    };
    out.answered = true;
    out.status.last_contact = Some(now_rfc3339());
    out.status.node = Some(if node.given_name.is_empty() {
        node.name.clone()
    } else {
        node.given_name.clone()
    });
    out.status.node_id = Some(node.id);
    if repair {
        remember(spec, config, &node);
    }
    let mut approval = headscale::assess(&own, &node);
    if let Some(request) = approval.request.as_ref().filter(|_| repair) {
        match client.approve_routes(node.id, request) {
            Ok(after) => {
                tracing::info!(
                    node = %out.status.node.as_deref().unwrap_or(""),
                    node_id = node.id,
                    "approved {} at Headscale",
                    approval.missing.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
                );
                if seen.node_id == Some(node.id) {
                    out.drift = approval
                        .missing
                        .iter()
                        .filter(|c| seen.cidrs.contains(c))
                        .copied()
                        .collect();
                }
                approval = headscale::assess(&own, &after);
            }
            Err(e) => out.status.error = Some(crate::Chain(&e).to_string()),
        }
    }
    out.status.routes = own
        .iter()
        .map(|c| RouteApproval {
            cidr: c.to_string(),
            approved: !approval.missing.contains(c),
        })
        .collect();
    out.settled = approval.missing.is_empty();
    out
}

/// This node's record at Headscale: by the id written down before (one
/// node's record per check, not the whole list), else found by node key.
fn own_node(
    client: &Client,
    spec: &Spec,
    config: &crate::spec::HeadscaleConfig,
    node_key: &str,
) -> Result<Option<headscale::Node>, headscale::HeadscaleError> {
    let known = node_record::load(&spec.state_dir)
        .filter(|r| r.url == config.url && r.node_key == node_key);
    if let Some(record) = known {
        if let Some(node) = client.node(record.id)? {
            if node.node_key == node_key {
                return Ok(Some(node));
            }
        }
    }
    client.node_by_key(node_key)
}

/// The node's Headscale id, for `uninstall --purge` once tailscaled is gone.
fn remember(spec: &Spec, config: &crate::spec::HeadscaleConfig, node: &headscale::Node) {
    let record = node_record::NodeRecord {
        url: config.url.clone(),
        id: node.id,
        name: node.given_name.clone(),
        node_key: node.node_key.clone(),
    };
    if node_record::load(&spec.state_dir).as_ref() != Some(&record) {
        if let Err(e) = node_record::save(&spec.state_dir, &record) {
            tracing::warn!(
                "cannot write {}: {e}",
                node_record::path(&spec.state_dir).display()
            );
        }
    }
}

fn now_rfc3339() -> String {
    crate::report::timestamp(unix_now())
}
