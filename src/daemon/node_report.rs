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
    let first_line = |prefix: char| s.blocked.iter().find(|l| l.starts_with(prefix)).cloned();
    if !pass.ok {
        let why = s
            .last_error
            .clone()
            .unwrap_or_else(|| "did not converge".into());
        return (false, "PassFailed", why);
    }
    if pass.conflicts > 0 {
        let line = first_line('!').unwrap_or_default();
        return (
            false,
            "Conflict",
            format!(
                "{} blocking pods (headcni plan): {line}",
                crate::report::plural(pass.conflicts, "conflict")
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
    if pass.waiting > 0 {
        let line = first_line('?').unwrap_or_default();
        return (false, "Waiting", line);
    }
    (
        true,
        "Converged",
        format!(
            "{} wired; the node matches its spec",
            crate::report::plural(s.pods, "pod")
        ),
    )
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let Some(snapshot) = status.lock().ok().map(|s| s.clone()) else {
            return;
        };
        let now_condition = condition_of(&snapshot);
        let current = problems(&snapshot);
        let new_problems: Vec<_> = current.difference(&reported).cloned().collect();
        let changed = sent.as_ref() != Some(&now_condition);
        if !changed && new_problems.is_empty() && last_sent.elapsed() < HEARTBEAT {
            continue;
        }
        if sent.as_ref().map(|s| s.0) != Some(now_condition.0) {
            transition = now_rfc3339();
        }
        let condition = NodeCondition {
            kind: CONDITION.into(),
            status: if now_condition.0 { "True" } else { "False" }.into(),
            reason: now_condition.1.into(),
            message: now_condition.2.clone(),
            last_heartbeat_time: now_rfc3339(),
            last_transition_time: transition.clone(),
        };
        let events: Vec<NodeEvent> = new_problems
            .iter()
            .map(|(reason, message)| NodeEvent {
                kind: "Warning",
                reason,
                message: message.clone(),
            })
            .collect();
        let r = reporter.clone();
        let result = tokio::task::spawn_blocking(move || {
            let api = ApiServer::in_cluster(r.url.as_deref(), &r.sa_dir)?;
            let ca_path = r.sa_dir.join("ca.crt");
            api.patch_node_condition(&r.node, &condition, &ca_path)?;
            let now = now_rfc3339();
            for event in &events {
                api.create_node_event(&r.node, event, &now, &ca_path)?;
            }
            Ok::<(), crate::install::kube::KubeError>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {
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
                reported = current;
                last_error = None;
            }
            Ok(Err(e)) => {
                let text = crate::Chain(&e).to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!("reporting to the API server (the node is unaffected): {text}");
                    last_error = Some(text);
                }
            }
            Err(e) => tracing::error!("reporting to the API server panicked: {e}"),
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
