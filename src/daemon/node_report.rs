//! With `--from-kubernetes`: the node's headcni state where `kubectl` shows
//! it. A Node condition `HeadcniReady` (reason and message) patched when it
//! changes and every few minutes as a heartbeat, and a Warning Event on the
//! Node for each new conflict or tailnet problem. Beside the loop, every
//! call bounded: the API server down changes nothing on the node.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::status::{Shared, Status};
use crate::install::kube::{ApiServer, NodeCondition, NodeEvent};

/// Where and as whom the node's state is reported.
#[derive(Clone, Debug)]
pub struct NodeReporter {
    /// The API server; None: the in-cluster one.
    pub url: Option<String>,
    /// The service account's token and ca.crt, read for each report: the
    /// kubelet rotates the token in place.
    pub sa_dir: PathBuf,
    pub node: String,
}

pub const CONDITION: &str = "HeadcniReady";
const LOOK_EVERY: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(300);

/// What the condition says of a status: (ready, reason, message).
pub fn condition_of(s: &Status) -> (bool, &'static str, String) {
    let Some(pass) = &s.last_pass else {
        return (false, "Starting", "no reconcile pass yet".into());
    };
    // From the blocked lines, not the last pass's counts: a node-only pass
    // does not look into pods, and the lines keep what it did not see.
    let first_line = |prefix: char| s.blocked.iter().find(|l| l.starts_with(prefix)).cloned();
    let count = |prefix: char| s.blocked.iter().filter(|l| l.starts_with(prefix)).count();
    if !pass.ok {
        let why = s
            .last_error
            .clone()
            .unwrap_or_else(|| "did not converge".into());
        return (false, "PassFailed", why);
    }
    if count('!') > 0 {
        let line = first_line('!').unwrap_or_default();
        return (
            false,
            "Conflict",
            format!(
                "{} blocking pods (headcni plan): {line}",
                crate::report::plural(count('!'), "conflict")
            ),
        );
    }
    if let Some(f) = s.host_tailnet.first() {
        return (false, "TailnetProblem", f.clone());
    }
    if let Some(a) = &s.approval {
        let missing: Vec<&str> = a
            .routes
            .iter()
            .filter(|r| !r.approved)
            .map(|r| r.cidr.as_str())
            .collect();
        if !missing.is_empty() {
            return (
                false,
                "RouteNotApproved",
                format!(
                    "Headscale has not approved {} (headcni status)",
                    missing.join(" and ")
                ),
            );
        }
    }
    if let Some(line) = first_line('?') {
        return (false, "Waiting", line);
    }
    // No pod count: every pod's coming and going would rewrite the Node.
    (true, "Converged", "the node matches its spec".into())
}

/// The problems an Event is recorded for, each once while it stands.
fn problems(s: &Status) -> BTreeSet<(&'static str, String)> {
    let mut out = BTreeSet::new();
    for line in s.blocked.iter().filter(|l| l.starts_with('!')) {
        out.insert(("PodNetworkConflict", line.clone()));
    }
    for f in &s.host_tailnet {
        out.insert(("TailnetProblem", f.clone()));
    }
    if let Some(e) = s.approval.as_ref().and_then(|a| a.error.clone()) {
        out.insert(("TailnetProblem", format!("route approval: {e}")));
    }
    out
}

pub(super) async fn run(
    reporter: NodeReporter,
    status: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sent: Option<(bool, &'static str, String)> = None;
    let mut transition = now_rfc3339();
    let mut last_sent = Instant::now();
    let mut reported: BTreeSet<(&'static str, String)> = BTreeSet::new();
    let mut last_error: Option<String> = None;
    // A refused or failed report is tried again later, not every look.
    let mut backoff = super::supervisor::Backoff::new(LOOK_EVERY, HEARTBEAT);
    let mut wait = LOOK_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        wait = LOOK_EVERY;
        let snapshot = match status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let now_condition = condition_of(&snapshot);
        let current = problems(&snapshot);
        // Problems that cleared may be told again if they come back.
        reported.retain(|p| current.contains(p));
        let new_problems: Vec<_> = current.difference(&reported).cloned().collect();
        let changed = sent.as_ref() != Some(&now_condition);
        let due = changed || last_sent.elapsed() >= HEARTBEAT;
        if !due && new_problems.is_empty() {
            continue;
        }
        if sent.as_ref().map(|s| s.0) != Some(now_condition.0) {
            transition = now_rfc3339();
        }
        let condition = due.then(|| NodeCondition {
            kind: CONDITION.into(),
            status: if now_condition.0 { "True" } else { "False" }.into(),
            reason: now_condition.1.into(),
            message: now_condition.2.clone(),
            last_heartbeat_time: now_rfc3339(),
            last_transition_time: transition.clone(),
        });
        let r = reporter.clone();
        let events = new_problems.clone();
        // The condition, then each Event: what got through is kept, so an
        // Event is never recorded twice and a condition never re-sent.
        let (patched, posted, error) = tokio::task::spawn_blocking(move || {
            let mut posted = Vec::new();
            let api = match ApiServer::in_cluster(r.url.as_deref(), &r.sa_dir) {
                Ok(api) => api,
                Err(e) => return (false, posted, Some(e)),
            };
            let ca_path = r.sa_dir.join("ca.crt");
            if let Some(c) = &condition {
                if let Err(e) = api.patch_node_condition(&r.node, c, &ca_path) {
                    return (false, posted, Some(e));
                }
            }
            let now = now_rfc3339();
            for (reason, message) in events {
                let event = NodeEvent {
                    kind: "Warning",
                    reason,
                    message: message.clone(),
                };
                if let Err(e) = api.create_node_event(&r.node, &event, &now, &ca_path) {
                    return (condition.is_some(), posted, Some(e));
                }
                posted.push((reason, message));
            }
            (condition.is_some(), posted, None)
        })
        .await
        .unwrap_or((false, Vec::new(), None));
        if patched {
            if changed {
                tracing::info!(
                    node = %reporter.node,
                    reason = now_condition.1,
                    "node condition {CONDITION}={}",
                    now_condition.0
                );
            }
            sent = Some(now_condition);
            last_sent = Instant::now();
        }
        reported.extend(posted);
        match error {
            None => {
                backoff.reset();
                last_error = None;
            }
            Some(e) => {
                let text = crate::Chain(&e).to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!("reporting to the API server (the node is unaffected): {text}");
                    last_error = Some(text);
                }
                wait = backoff.next_delay();
            }
        }
    }
}

fn now_rfc3339() -> String {
    crate::report::timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::PassStatus;

    #[test]
    fn the_condition_names_what_keeps_the_node_from_ready() {
        let mut s = Status::default();
        assert_eq!(condition_of(&s).1, "Starting");
        s.last_pass = Some(PassStatus {
            ok: true,
            waiting: 1,
            ..PassStatus::default()
        });
        s.blocked = vec!["? route waits for link tailscale0".into()];
        assert_eq!(
            condition_of(&s),
            (false, "Waiting", "? route waits for link tailscale0".into())
        );
        s.host_tailnet = vec!["the host's tailscaled masquerades".into()];
        assert_eq!(condition_of(&s).1, "TailnetProblem");
        s.last_pass = Some(PassStatus {
            ok: true,
            ..PassStatus::default()
        });
        s.host_tailnet.clear();
        s.blocked.clear();
        s.pods = 3;
        assert!(condition_of(&s).0);
        assert!(problems(&s).is_empty());
    }
}
