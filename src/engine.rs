//! One reconcile pass: spec + pod intents → Desired; kernel → Observed;
//! diff → Plan; apply; observe again and verify. The CLI, the CNI entry
//! point and the daemon all drive this, differing only in scope.
//!
//! Concurrency: CNI processes write an intent *before* creating its veth and
//! remove it *before* deleting the veth. A pass that read the intents before
//! observing the kernel might see a veth whose intent it has not read and
//! take it for stale; so before planning any node-level removal, the pass
//! reads the intents again, now known to be newer than what it observed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::apply::{self, ApplyReport};
use crate::diff::{diff, Action, Early, Object, Plan};
use crate::model::{Attachment, Netns, PodKey, RTPROT_HEADCNI, RTPROT_NAME};
use crate::observe::{self, Firewall, ObserveError, Observed};
use crate::spec::{compile, Desired, Intents, PodIntent, Spec, StoreError};

/// Which part of the node a pass looks at and may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodScope {
    /// Every pod's namespace as well as the node.
    All,
    /// The node namespace only: the host side of every pod (cheap at scale).
    HostOnly,
    /// The node plus one pod's namespace (the CNI ADD/CHECK view): that pod's
    /// steps and node-wide additions, never node-wide removals.
    One(PodKey),
    /// Host links of attachments whose intents were just removed (CNI DEL):
    /// only the removal of those links and what hangs off them.
    Released(Vec<String>),
    /// Node-level removals only: owned objects no intent wants (CNI GC).
    Prune,
}

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
/// says itself whether it exists ([`crate::spec::PodStore::read`]).
pub type PodSource<'a> = &'a dyn Fn() -> Result<Intents, StoreError>;

pub fn plan(spec: &Spec, pods: PodSource, scope: &PodScope) -> Result<Planned, EngineError> {
    plan_knowing(spec, pods, scope, None)
}

/// `known_firewall`: the nftables table as already read in this pass (when
/// nothing since could have changed it), so it is not read again.
fn plan_knowing(
    spec: &Spec,
    pods: PodSource,
    scope: &PodScope,
    known_firewall: Option<Option<crate::model::NftTable>>,
) -> Result<Planned, EngineError> {
    let started = Instant::now();
    let (mut intents, mut desired, observed, mut plan) =
        observe_and_diff(spec, pods, scope, known_firewall)?;
    tracing::debug!(took_ms = started.elapsed().as_secs_f64() * 1e3, "planned");
    if removes_node_objects(&plan) {
        let fresh = pods()?;
        if fresh != intents {
            let files = std::mem::take(&mut desired.files);
            desired = compile(spec, &fresh.pods);
            desired.files = files;
            plan = diff(&desired, &observed);
            intents = fresh;
        }
    }
    let plan = restrict(plan, scope);
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

/// Reads the intents, observes, compiles and diffs, with the node's link
/// dump beside all of it.
///
/// At scale the link dump is most of a pass (about a kilobyte and several
/// microseconds of kernel time a link, on one core), so it starts first, on
/// a thread of its own that only keeps the kernel dumping; this thread
/// decodes its answers whenever it has a moment and meanwhile observes the
/// rest, compiles, and diffs every pod assuming its host link is as
/// desired ([`Early`]). Only the links' part of the diff waits for the dump.
fn observe_and_diff(
    spec: &Spec,
    pods: PodSource,
    scope: &PodScope,
    known_firewall: Option<Option<crate::model::NftTable>>,
) -> Result<(Intents, Desired, Observed, Plan), EngineError> {
    let firewall = match known_firewall {
        Some(table) => Firewall::Known(table),
        None if matches!(scope, PodScope::All | PodScope::HostOnly | PodScope::Prune) => {
            Firewall::Read
        }
        None => Firewall::Skip,
    };
    std::thread::scope(|threads| {
        let mut links = observe::start_link_dump(threads);
        let intents = pods()?;
        let to_observe = namespaces_to_observe(spec, scope, &intents.pods);
        let mut partial = observe::observe_partial(&to_observe, firewall)?;
        links.take_ready();
        let mut desired = compile(spec, &intents.pods);
        // The files headcni keeps are node-wide objects: looked at (and so
        // written or removed) only by node-wide passes.
        if matches!(scope, PodScope::All | PodScope::HostOnly) {
            partial.observed.node.files = crate::files::read_existing(&owned_file_paths(spec));
            let resolvers = crate::files::node_resolvers(&spec.daemon.dns_upstream);
            desired.files = crate::spec::compile_files(spec, &resolvers);
        }
        links.take_ready();
        let early = Early::new(&desired, &partial.observed);
        let links = links.finish().map_err(ObserveError::Node)?;
        let agree = partial.names_agree(&links);
        if !agree {
            tracing::debug!(
                "a link's name changed during the pass: planning from the link dump's names"
            );
        }
        // The diff's second stage; unless names disagree (a link renamed
        // meanwhile: the first stage read wrong ones; plan from the dump's
        // names below).
        let second_stage = || {
            agree.then(|| {
                let node_sysctls = partial.observed.node.sysctls.iter();
                early.finish(&links.links, node_sysctls.chain(&links.sysctls))
            })
        };
        // Beside it, at scale, the sorting of the links for the observation
        // (both only read them); on a small node a thread costs more than
        // the sort it would hide.
        const SORT_BESIDE_FROM: usize = 4096;
        let (plan, order) = if links.links.len() < SORT_BESIDE_FROM {
            (second_stage(), links.sort_order())
        } else {
            std::thread::scope(|tail| {
                let order = tail.spawn(|| links.sort_order());
                let plan = second_stage();
                let order = order
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (plan, order)
            })
        };
        let observed = partial.complete_with(links, order, agree);
        let plan = plan.unwrap_or_else(|| diff(&desired, &observed));
        Ok((intents, desired, observed, plan))
    })
}

/// The pods' namespaces `scope` looks into, and the node's own.
fn namespaces_to_observe(
    spec: &Spec,
    scope: &PodScope,
    intents: &[PodIntent],
) -> Vec<(Attachment, PathBuf)> {
    intents
        .iter()
        .filter(|p| match scope {
            PodScope::All => true,
            PodScope::HostOnly | PodScope::Released(_) | PodScope::Prune => false,
            PodScope::One(key) => &p.key == key,
        })
        .map(|p| (Attachment::Pod(p.key()), p.netns.clone()))
        .chain(system_namespaces(spec, scope))
        .collect()
}

/// Every path where headcni may have written a file under `spec`, whatever
/// the mode (so one written in daemon mode is removed after a switch).
fn owned_file_paths(spec: &Spec) -> Vec<PathBuf> {
    vec![spec.daemon.resolv_conf_path()]
}

/// Namespaces that are part of the node's own plumbing (daemon mode: the
/// tailnet namespace), observed in every node-wide pass.
fn system_namespaces(spec: &Spec, scope: &PodScope) -> Vec<(Attachment, PathBuf)> {
    let node_wide = matches!(scope, PodScope::All | PodScope::HostOnly);
    if spec.mode == crate::spec::Mode::Daemon && node_wide {
        vec![(Attachment::TailnetNamespace, spec.daemon.netns_path())]
    } else {
        Vec::new()
    }
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

/// Keeps what `scope` may touch.
fn restrict(plan: Plan, scope: &PodScope) -> Plan {
    match scope {
        PodScope::All | PodScope::HostOnly => plan,
        PodScope::One(key) => {
            let mut mine = plan.for_pod(key);
            // Node-wide additions (the firewall is not among them: this
            // scope does not read it, so the diff plans nothing for it).
            mine.steps.extend(
                plan.steps
                    .into_iter()
                    .filter(|s| s.attachment.is_none() && s.action != Action::Remove),
            );
            mine.waiting
                .extend(plan.waiting.into_iter().filter(|w| w.attachment.is_none()));
            crate::diff::order(&mut mine);
            mine
        }
        PodScope::Prune => Plan {
            steps: plan
                .steps
                .into_iter()
                .filter(|s| {
                    s.action == Action::Remove && s.attachment.is_none() && s.netns == Netns::Node
                })
                .collect(),
            ..Plan::default()
        },
        PodScope::Released(links) => {
            let on_link = |dev: &str| links.iter().any(|l| l == dev);
            let steps = plan
                .steps
                .into_iter()
                .filter(|s| {
                    s.action == Action::Remove
                        && s.netns == Netns::Node
                        && match &s.object {
                            Object::Link(l) => on_link(&l.name),
                            Object::Address(a) => on_link(&a.dev),
                            Object::Route(r) => r.dev.as_deref().is_some_and(on_link),
                            Object::Sysctl(_)
                            | Object::Rule(_)
                            | Object::Nft(_)
                            | Object::File(_) => false,
                        }
                })
                .collect();
            Plan {
                steps,
                ..Plan::default()
            }
        }
    }
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
    /// The kernel as the verification (or, with nothing to do, the plan) saw it.
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

pub fn apply(spec: &Spec, pods: PodSource, scope: &PodScope) -> Result<Applied, EngineError> {
    let planned = plan(spec, pods, scope)?;
    let started = Instant::now();
    let report = apply::apply(&planned.plan);
    let apply_took = started.elapsed();
    let (remaining, observed_after) = if planned.plan.is_empty() {
        (planned.plan.clone(), planned.observed)
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
        let again = plan_knowing(spec, pods, scope, known)?;
        (again.plan, again.observed)
    };
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

/// Everything headcni made on the node, planned away and removed: the diff
/// of an empty desired state against the node (owned routes, rules, links,
/// the nftables table, files). What is anyone else's is never in such a plan.
pub fn purge(spec: &Spec) -> Result<(Plan, crate::apply::ApplyReport), EngineError> {
    let mut observed = observe::observe(&[], Firewall::Read)?;
    observed.node.files = crate::files::read_existing(&owned_file_paths(spec));
    let plan = diff(&Desired::default(), &observed);
    let report = crate::apply::apply(&plan);
    Ok((plan, report))
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
