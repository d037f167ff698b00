//! One reconcile pass: spec + pod intents → Desired; kernel → Observed;
//! diff → Plan; apply; observe again and verify. The CLI, the CNI entry
//! point and the daemon all drive this, differing only in scope.
//!
//! Concurrency: CNI processes write an intent *before* creating its veth and
//! remove it *before* deleting the veth. A pass that read the intents before
//! observing the kernel might see a veth whose intent it has not read and
//! take it for stale; so before planning any node-level removal, the pass
//! reads the intents again, now known to be newer than what it observed.
//! The daemon's CNI batches plan from the intents read under the same lock
//! as the batch's own changes; their scope (`Pods`) removes nothing but the
//! links they release, so an intent written meanwhile by anyone else is safe.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::apply::{self, ApplyReport};
use crate::diff::{diff, Action, Object, Plan};
use crate::kernel::nft::Listings;
use crate::model::{Netns, RTPROT_HEADCNI, RTPROT_NAME};
use crate::observe::{self, Firewall, ObserveError, Observed};
use crate::spec::{compile_on, Desired, Intents, PodIntent, Spec};
use crate::store::StoreError;

mod scope;
mod staged;

pub use scope::PodScope;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error("reading pod intents")]
    Store(#[from] StoreError),
    /// Pod links exist but no store was ever created where the spec says:
    /// a moved or wiped state_dir must not read as "every pod is gone".
    #[error("no pod store at {}, yet the node has {} pod links headcni made ({}); refusing to remove them on no evidence. If state_dir moved, point it back; if these pods are gone for good, `headcni pod init` creates an empty store and the next apply removes them", store.display(), links.len(), preview(links))]
    NoStore { store: PathBuf, links: Vec<String> },
    /// The spec's pod ranges hold the node's own uplink: wiring pods would
    /// take the node's traffic.
    #[error("{0}")]
    CoversNode(String),
}

fn preview(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", and {} more", names.len() - SHOWN));
    }
    text
}

/// A plan and everything it was made from.
pub struct Planned {
    /// The pod intents the plan was made from (read after observing when it removes anything).
    pub pods: Vec<PodIntent>,
    pub desired: Desired,
    pub observed: Observed,
    pub plan: Plan,
    pub took: Duration,
}

/// Where a pass gets the pod intents from; called again before removals.
/// `Vec<PodIntent>` converts into complete [`Intents`] (`.into()`); a store
/// says itself whether it exists ([`crate::store::PodStore::read`]).
pub type PodSource<'a> = &'a dyn Fn() -> Result<Intents, StoreError>;

/// One pass's plan, as a one-shot process makes it (the firewall table
/// listed afresh when there is one).
pub fn plan(spec: &Spec, pods: PodSource, scope: &PodScope) -> Result<Planned, EngineError> {
    plan_with(spec, pods, scope, &Listings::default())
}

/// [`plan`], reusing the firewall listings a long-lived caller keeps.
pub fn plan_with(
    spec: &Spec,
    pods: PodSource,
    scope: &PodScope,
    listings: &Listings,
) -> Result<Planned, EngineError> {
    plan_knowing(spec, pods, scope, None, listings)
}

/// `known_firewall`: the nftables table as already read in this pass (when
/// nothing since could have changed it), so it is not read again.
fn plan_knowing(
    spec: &Spec,
    pods: PodSource,
    scope: &PodScope,
    known_firewall: Option<Option<crate::model::NftTable>>,
    listings: &Listings,
) -> Result<Planned, EngineError> {
    let started = Instant::now();
    let staged::Pass {
        mut intents,
        facts,
        mut desired,
        observed,
        mut plan,
    } = staged::observe_and_diff(spec, pods, scope, known_firewall, listings)?;
    tracing::debug!(took_ms = started.elapsed().as_secs_f64() * 1e3, "planned");
    if removes_node_objects(&plan) {
        let fresh = pods()?;
        if fresh != intents {
            desired = compile_on(spec, &fresh.pods, &facts);
            plan = diff(&desired, &observed);
            intents = fresh;
        }
    }
    let plan = scope.restrict(plan, &observed);
    refuse_removals_without_store(&plan, &intents)?;
    let intents = intents.pods;
    Ok(Planned {
        pods: intents,
        desired,
        observed,
        plan,
        took: started.elapsed(),
    })
}

/// Removals of pod links are planned only from a store that was read.
fn refuse_removals_without_store(plan: &Plan, intents: &Intents) -> Result<(), EngineError> {
    let Some(store) = &intents.missing_store else {
        return Ok(());
    };
    let links: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.action == Action::Remove && s.netns == Netns::Node)
        .filter_map(|s| match &s.object {
            Object::Link(l)
                if l.name.starts_with(crate::model::LINK_PREFIX)
                    && l.name != crate::spec::TAILNET_HOST_LINK =>
            {
                Some(l.name.clone())
            }
            _ => None,
        })
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    Err(EngineError::NoStore {
        store: store.clone(),
        links,
    })
}

fn removes_node_objects(plan: &Plan) -> bool {
    plan.steps
        .iter()
        .any(|s| s.action == Action::Remove && s.attachment.is_none())
}

/// What an apply did and what is left.
pub struct Applied {
    pub plan: Plan,
    /// What the plan was made for, and from which intents.
    pub desired: Desired,
    pub pods: Vec<PodIntent>,
    pub report: ApplyReport,
    /// The plan made right after applying: empty when the node converged.
    pub remaining: Plan,
    /// The kernel as the verification saw it (with nothing to do, or only
    /// acknowledged removals of released links, as the plan saw it).
    pub observed_after: Observed,
    pub apply_took: Duration,
}

impl Applied {
    /// Every step applied, nothing left to do, nothing blocked by a foreign object.
    pub fn converged(&self) -> bool {
        self.report.failed.is_empty()
            && self.remaining.is_empty()
            && self.remaining.conflicts.is_empty()
    }
}

/// One pass, planned, applied and verified, as a one-shot process runs it.
pub fn apply(spec: &Spec, pods: PodSource, scope: &PodScope) -> Result<Applied, EngineError> {
    apply_with(spec, pods, scope, &Listings::default())
}

/// [`apply`], reusing the firewall listings a long-lived caller (the
/// daemon) keeps.
pub fn apply_with(
    spec: &Spec,
    pods: PodSource,
    scope: &PodScope,
    listings: &Listings,
) -> Result<Applied, EngineError> {
    let planned = plan_with(spec, pods, scope, listings)?;
    let started = Instant::now();
    let report = apply::apply(&planned.plan);
    let apply_took = started.elapsed();
    // A pass that only releases links (DEL) trusts the kernel's acks: a
    // link whose deletion was acknowledged is unregistered, and this scope
    // plans nothing else; a second look would cost a DEL a whole observation.
    let acked_removals = scope.trusts_acks() && report.failed.is_empty() && report.skipped == 0;
    let verify_started = Instant::now();
    let (remaining, observed_after) = if planned.plan.is_empty() {
        (planned.plan.clone(), planned.observed)
    } else if acked_removals {
        let done = Plan {
            steps: Vec::new(),
            ..planned.plan.clone()
        };
        (done, planned.observed)
    } else {
        // The firewall is read again only if this pass changed it (an `nft`
        // process per read; foreign changes meanwhile bring their own event).
        let touched_firewall = planned
            .plan
            .steps
            .iter()
            .any(|s| matches!(s.object, Object::Nft(_)));
        // (Only a table that was read: unknown stays unknown.)
        let known = (!touched_firewall && !planned.observed.node.nft_unread)
            .then(|| planned.observed.node.nft.clone());
        let again = plan_knowing(spec, pods, scope, known, listings)?;
        (again.plan, again.observed)
    };
    tracing::debug!(
        apply_ms = apply_took.as_secs_f64() * 1e3,
        verify_ms = verify_started.elapsed().as_secs_f64() * 1e3,
        steps = planned.plan.steps.len(),
        "applied"
    );
    Ok(Applied {
        plan: planned.plan,
        desired: planned.desired,
        pods: planned.pods,
        report,
        remaining,
        observed_after,
        apply_took,
    })
}

/// What [`purge`] removed.
pub struct Purged {
    pub plan: Plan,
    pub report: crate::apply::ApplyReport,
    /// The tailnet namespace (daemon mode's /run/netns/NAME): whether there
    /// was one to remove, or why it could not be.
    pub netns: (PathBuf, std::io::Result<bool>),
}

/// Everything headcni made on the node, planned away and removed: the diff
/// of an empty desired state against the node (owned routes, rules, links,
/// the nftables table, files), then the tailnet namespace those links
/// joined. What is anyone else's is never in such a plan.
pub fn purge(spec: &Spec) -> Result<Purged, EngineError> {
    let listings = Listings::default();
    let mut observed =
        observe::observe(&[], Firewall::Read(&listings), observe::Families::of(spec))?;
    observed.node.files = crate::kernel::files::read_existing(&staged::owned_file_paths(spec));
    let plan = diff(&Desired::default(), &observed);
    let report = crate::apply::apply(&plan);
    let netns = spec.daemon.netns_path();
    let removed = crate::kernel::netlink::netns::remove_netns(&netns);
    Ok(Purged {
        plan,
        report,
        netns: (netns, removed),
    })
}

/// What follows an applied pass, for `headcni apply` and the daemon alike:
/// a converged node's state is recorded (what drift reports compare
/// against), and, when `release` says so, the addresses of removed pods
/// whose links are now gone are freed. Both are best effort (logged): the
/// pass itself stands either way. Returns how many addresses stay held by
/// links not yet gone (None: not asked, or the store failed).
pub fn settle(
    spec: &Spec,
    store: &crate::store::PodStore,
    applied: &Applied,
    release: bool,
) -> Option<usize> {
    if applied.converged() {
        let record =
            crate::snapshot::LastApplied::new(spec, &applied.pods, applied.desired.clone());
        let path = crate::snapshot::LastApplied::path(&spec.state_dir);
        let saved = crate::store::create_state_dir(&spec.state_dir)
            .map_err(|e| crate::Chain(&e).to_string())
            .and_then(|()| {
                crate::snapshot::save(&path, &record).map_err(|e| crate::Chain(&e).to_string())
            });
        if let Err(e) = saved {
            tracing::warn!("cannot record the applied state for drift reports: {e}");
        }
    }
    if !release {
        return None;
    }
    match release_gone(store, &applied.observed_after) {
        Ok(released) => {
            if released.freed > 0 {
                tracing::info!(
                    "released {} addresses of attachments whose links are gone",
                    released.freed
                );
            }
            Some(released.still_held)
        }
        Err(e) => {
            tracing::warn!("cannot free released addresses: {}", crate::Chain(&e));
            None
        }
    }
}

/// What [`release_gone`] did.
pub struct Released {
    /// Links whose addresses were freed.
    pub freed: usize,
    /// Released attachments whose links are still there.
    pub still_held: usize,
}

/// Frees the addresses still held by removed attachments whose host links
/// `observed` shows gone (a DEL whose process died before it could say so).
/// A link still there keeps its address: its DEL is under way.
pub fn release_gone(
    store: &crate::store::PodStore,
    observed: &Observed,
) -> Result<Released, StoreError> {
    let held = store.releasing()?;
    if held.is_empty() {
        // The usual pass: no set of the node's links to build.
        return Ok(Released {
            freed: 0,
            still_held: 0,
        });
    }
    let links: rustc_hash::FxHashSet<&str> = observed
        .node
        .links
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    let gone: Vec<String> = held
        .iter()
        .filter(|link| !links.contains(link.as_str()))
        .cloned()
        .collect();
    let freed = store.release(&gone)?;
    Ok(Released {
        freed,
        still_held: held.len() - gone.len(),
    })
}

/// Registers headcni's route protocol name so `ip route` prints `proto headcni`.
/// Best effort: a read-only /etc only costs the pretty name.
pub fn register_protocol_name() -> std::io::Result<bool> {
    let dir = std::path::Path::new("/etc/iproute2/rt_protos.d");
    let file = dir.join("headcni.conf");
    let line = format!("{RTPROT_HEADCNI}\t{RTPROT_NAME}\n");
    if std::fs::read_to_string(&file).is_ok_and(|t| t == line) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, line)?;
    Ok(true)
}
