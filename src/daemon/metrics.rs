//! Prometheus metrics and the optional HTTP listener (/healthz, /readyz,
//! /metrics). The listener answers one request per connection: scrapers and
//! probes need nothing more, and nothing more is exposed.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::status::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CidrLabel {
    pub cidr: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub passes: Family<ResultLabel, Counter>,
    pub pass_duration: Histogram,
    pub drift_repairs: Counter,
    pub tailscaled_restarts: Counter,
    /// Starts of the supervised tailscaled that failed (no process ran).
    pub tailscaled_start_failures: Counter,
    firewall_listings: Counter,
    pub pods: Gauge,
    pub interface_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// 1 per own pod CIDR Headscale approved (as last seen), else 0.
    pub route_approved: Family<CidrLabel, Gauge>,
    pub headscale_errors: Counter,
    pub headscale_drift_repairs: Counter,
    /// Unix time of Headscale's (or, without an API key, tailscaled's) last answer.
    pub approval_last_contact: Gauge,
    /// Objects in the way that headcni does not own, as of the last pass.
    pub conflicts: Gauge,
    /// Items waiting (an interface away, a pod's namespace gone).
    pub waiting: Gauge,
    /// 1 while the spec file is refused (the daemon runs on the last good one).
    pub spec_errors: Gauge,
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("headcni");
        let passes = Family::<ResultLabel, Counter>::default();
        let pass_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        let drift_repairs = Counter::<u64, AtomicU64>::default();
        let tailscaled_restarts = Counter::<u64, AtomicU64>::default();
        let firewall_listings = Counter::<u64, AtomicU64>::default();
        let pods = Gauge::default();
        let interface_up = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("passes", "Reconcile passes by result", passes.clone());
        registry.register(
            "pass_duration_seconds",
            "Duration of reconcile passes",
            pass_duration.clone(),
        );
        registry.register(
            "drift_repairs",
            "Steps applied to repair drift",
            drift_repairs.clone(),
        );
        registry.register(
            "tailscaled_restarts",
            "Restarts of the supervised tailscaled",
            tailscaled_restarts.clone(),
        );
        registry.register(
            "firewall_listings",
            "nft processes run to list the firewall table (only when the ruleset changed)",
            firewall_listings.clone(),
        );
        registry.register("pods", "Pod attachments known to the node", pods.clone());
        registry.register(
            "tailnet_interface_up",
            "1 when the tailnet interface is present and up",
            interface_up.clone(),
        );
        let route_approved = Family::<CidrLabel, Gauge>::default();
        let headscale_errors = Counter::<u64, AtomicU64>::default();
        let headscale_drift_repairs = Counter::<u64, AtomicU64>::default();
        let approval_last_contact = Gauge::default();
        registry.register(
            "route_approved",
            "1 when the control server approved this node's pod CIDR",
            route_approved.clone(),
        );
        registry.register(
            "headscale_errors",
            "Headscale API calls that failed",
            headscale_errors.clone(),
        );
        registry.register(
            "headscale_drift_repairs",
            "Own pod CIDRs approved again after someone unapproved them at Headscale",
            headscale_drift_repairs.clone(),
        );
        registry.register(
            "approval_last_contact_seconds",
            "Unix time of the last answer about this node's route approval",
            approval_last_contact.clone(),
        );
        let conflicts = Gauge::default();
        let waiting = Gauge::default();
        let spec_errors = Gauge::default();
        registry.register(
            "conflicts",
            "Objects headcni does not own that block a pod, as of the last pass",
            conflicts.clone(),
        );
        registry.register(
            "waiting",
            "Items waiting (an interface away, a pod's namespace gone), as of the last pass",
            waiting.clone(),
        );
        registry.register(
            "spec_errors",
            "1 while the spec file is refused and the last good one is in force",
            spec_errors.clone(),
        );
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "headcni's version (always 1)", build_info);
        let tailscaled_start_failures = Counter::<u64, AtomicU64>::default();
        registry.register(
            "tailscaled_start_failures",
            "Starts of the supervised tailscaled that failed (no process ran)",
            tailscaled_start_failures.clone(),
        );
        Metrics {
            tailscaled_start_failures,
            conflicts,
            waiting,
            spec_errors,
            route_approved,
            headscale_errors,
            headscale_drift_repairs,
            approval_last_contact,
            passes,
            pass_duration,
            drift_repairs,
            tailscaled_restarts,
            firewall_listings,
            pods,
            interface_up,
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Brings the listing count up to the daemon's `listed`.
    pub fn note_firewall_listings(&self, listed: u64) {
        self.firewall_listings
            .inc_by(listed.saturating_sub(self.firewall_listings.get()));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves /healthz (the daemon runs), /readyz (the last pass converged) and /metrics.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Metrics,
    status: Shared,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("metrics and health on http://{addr}");
    let limit = super::listen::Limit::new();
    super::listen::serve_each(listener, "metrics listener", limit, |mut conn| {
        let metrics = metrics.clone();
        let status = status.clone();
        async move {
            // The request line may come in pieces (a client's several
            // writes, TCP's segments): read up to the end of the headers.
            let mut buf = [0u8; 1024];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout_at(deadline, conn.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(read)) => n += read,
                }
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let mut words = request.split_whitespace();
            let method = words.next().unwrap_or("");
            // The query string selects nothing here: /metrics?x=1 is /metrics.
            let target = words.next().unwrap_or("/");
            let path = target.split('?').next().unwrap_or(target);
            let (code, body, kind) = match path {
                _ if method != "GET" && method != "HEAD" => {
                    (405, "only GET and HEAD\n".to_string(), "text/plain")
                }
                "/healthz" => (200, "ok\n".to_string(), "text/plain"),
                "/readyz" => {
                    // Ready: the last pass converged and no pod is skipped
                    // for a conflict (waiting, say for the tailnet, is not a
                    // reason to hold a rollout).
                    let last = status.lock().ok().and_then(|s| s.last_pass.clone());
                    match last {
                        Some(p) if p.ok && p.conflicts == 0 => {
                            (200, "ready\n".to_string(), "text/plain")
                        }
                        Some(p) if p.ok => (
                            503,
                            format!(
                                "not ready: {} blocking pods (headcni status)\n",
                                crate::report::plural(p.conflicts, "conflict")
                            ),
                            "text/plain",
                        ),
                        _ => (
                            503,
                            "not ready: no converged pass yet\n".to_string(),
                            "text/plain",
                        ),
                    }
                }
                "/metrics" => (
                    200,
                    metrics.encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                _ => (404, "not found\n".to_string(), "text/plain"),
            };
            let reason = match code {
                200 => "OK",
                405 => "Method Not Allowed",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let allow = if code == 405 {
                "allow: GET, HEAD\r\n"
            } else {
                ""
            };
            let head = format!("HTTP/1.1 {code} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{allow}connection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes()).await;
            if method != "HEAD" {
                let _ = conn.write_all(body.as_bytes()).await;
            }
            let _ = conn.shutdown().await;
        }
    })
    .await
}
