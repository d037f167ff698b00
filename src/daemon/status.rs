//! What the daemon reports: kept in memory, served as JSON over a root-only
//! unix socket in state_dir, and printed by `headcni status`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub const SOCKET_FILE: &str = "daemon.sock";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub mode: String,
    pub spec: String,
    pub tailnet_interface: InterfaceStatus,
    pub last_pass: Option<PassStatus>,
    pub passes_ok: u64,
    pub passes_failed: u64,
    /// Steps applied by passes that repaired drift (kernel events, resyncs).
    pub drift_repairs: u64,
    pub tailscaled: TailscaledStatus,
    /// The last error, if the last pass or the spec failed; cleared on success.
    pub last_error: Option<String>,
    /// Set while the spec file is invalid: the daemon runs on the last good one.
    pub spec_error: Option<String>,
    /// Set while `--from-kubernetes` cannot render the spec anew (the API
    /// server out of reach): the daemon runs on the spec rendered last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_error: Option<String>,
    pub pods: usize,
    /// Addresses still held by deleted pods whose host links the daemon has
    /// yet to delete (as of the last pass that looked).
    #[serde(default)]
    pub releasing: usize,
    /// CNI calls handed to the daemon, and the passes that served them.
    #[serde(default)]
    pub cni_calls: u64,
    #[serde(default)]
    pub cni_batches: u64,
    /// Host mode: what the host's tailscaled lacks for this node's pods
    /// (headcni's to report, the operator's to fix); empty when all is well.
    #[serde(default)]
    pub host_tailnet: Vec<String>,
    /// Daemon mode: whether and how Headscale approved this node's pod
    /// CIDRs (daemon/approver.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalStatus>,
    /// What keeps the node from its spec, as `headcni plan` prints it
    /// (`! conflict: ...`, `? ...`), as of the last pass.
    #[serde(default)]
    pub blocked: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalStatus {
    /// "api" (the daemon approves with `[headscale]`'s key) or "control
    /// server" (no key: Headscale's autoApprovers, or an operator by hand).
    pub by: String,
    /// The node as the control server names it, and its Headscale id.
    pub node: Option<String>,
    pub node_id: Option<u64>,
    pub routes: Vec<RouteApproval>,
    /// RFC 3339: the last answer (Headscale's, or tailscaled's without a key).
    pub last_contact: Option<String>,
    /// Why the last check could not finish (Headscale down, a bad key...).
    pub error: Option<String>,
    /// What fixes a missing approval, when something is missing.
    pub advice: Vec<String>,
    /// Own CIDRs approved again after someone unapproved them.
    pub drift_repairs: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteApproval {
    pub cidr: String,
    pub approved: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub present: bool,
    pub up: bool,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PassStatus {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    pub duration_ms: f64,
    pub trigger: String,
    pub applied: usize,
    pub remaining: usize,
    pub conflicts: usize,
    pub waiting: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TailscaledStatus {
    pub supervised: bool,
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u64,
}

pub type Shared = Arc<Mutex<Status>>;

/// How long `headcni status` waits for a stopped or stuck daemon.
const QUERY_WITHIN: Duration = Duration::from_secs(5);
/// A status document is a few KiB; more is not ours.
const MAX_STATUS: u64 = 4 * 1024 * 1024;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Serves the status socket: the status as JSON to whoever connects (root
/// only).
pub async fn serve(path: PathBuf, status: Shared) -> std::io::Result<()> {
    let listener = super::listen::bind_root_only(&path)?;
    let limit = super::listen::Limit::new();
    super::listen::serve_each(listener, "status socket", limit, |mut conn| {
        let doc = {
            let s = status.lock().map(|s| s.clone()).unwrap_or_default();
            serde_json::to_vec(&s).unwrap_or_default()
        };
        async move {
            let _ = conn.write_all(&doc).await;
            let _ = conn.shutdown().await;
        }
    })
    .await
}

/// Reads the daemon's status (for `headcni status`).
pub fn query(state_dir: &Path) -> std::io::Result<Status> {
    use crate::cni::handoff::{connect_within, read_within};
    let path = socket_path(state_dir);
    let deadline = std::time::Instant::now() + QUERY_WITHIN;
    let conn = connect_within(&path, QUERY_WITHIN).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot reach the daemon at {}: {e}", path.display()),
        )
    })?;
    let buf = read_within(&conn, deadline, MAX_STATUS).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("no status from the daemon at {}: {e}", path.display()),
        )
    })?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}

fn print_approval(a: &ApprovalStatus) {
    let node = match (&a.node, a.node_id) {
        (Some(name), Some(id)) => format!(" for node {name} (id {id})"),
        (Some(name), None) => format!(" for node {name}"),
        _ => String::new(),
    };
    let routes: Vec<String> = a
        .routes
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.cidr,
                if r.approved {
                    "approved"
                } else {
                    "NOT approved"
                }
            )
        })
        .collect();
    outln!(
        "route approval (by {}){node}: {}{}",
        a.by,
        if routes.is_empty() {
            "not known yet".to_string()
        } else {
            routes.join(", ")
        },
        a.last_contact
            .as_ref()
            .map_or(String::new(), |t| format!("; last answer {t}"))
    );
    if a.drift_repairs > 0 {
        outln!(
            "  approved again after drift at Headscale: {}",
            a.drift_repairs
        );
    }
    if let Some(e) = &a.error {
        outln!("  error: {e}");
    }
    for advice in &a.advice {
        outln!("  {advice}");
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
            "last pass: {} {} in {:.1} ms (trigger {}; {} applied, {} remaining, {}, {} waiting)",
            p.at,
            match (p.ok, p.conflicts, p.waiting) {
                (false, ..) => "FAILED",
                (true, 0, 0) => "converged",
                (true, 0, _) => "waiting",
                _ => "BLOCKED",
            },
            p.duration_ms,
            p.trigger,
            p.applied,
            p.remaining,
            crate::report::plural(p.conflicts, "conflict"),
            p.waiting
        ),
        None => outln!("last pass: none yet"),
    }
    for line in &s.blocked {
        outln!("  {line}");
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
    if let Some(a) = &s.approval {
        print_approval(a);
    }
    outln!("pods: {}", s.pods);
    if s.releasing > 0 {
        outln!(
            "addresses held by deleted pods' links not yet deleted: {}",
            s.releasing
        );
    }
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
