//! The staged pass: intents, observation, compile and diff, with the
//! node's link dump running beside all of it. Its stages (the partial
//! observation, the diff's early stage, the link names' check) are driven
//! here and nowhere else.

use std::path::PathBuf;

use super::{EngineError, PodScope, PodSource};
use crate::diff::{diff, Early, Plan};
use crate::model::{Attachment, NftTable};
use crate::observe::{self, Families, Firewall, ObserveError, Observed};
use crate::spec::{compile_on, Desired, Intents, Mode, NodeFacts, PodIntent, Spec};

/// What one pass read and planned.
pub(super) struct Pass {
    pub intents: Intents,
    /// The node facts the desired state was compiled with (kept for a recompile).
    pub facts: NodeFacts,
    pub desired: Desired,
    pub observed: Observed,
    pub plan: Plan,
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
pub(super) fn observe_and_diff(
    spec: &Spec,
    pods: PodSource,
    scope: &PodScope,
    known_firewall: Option<Option<NftTable>>,
    listings: &crate::kernel::nft::Listings,
) -> Result<Pass, EngineError> {
    let firewall = match known_firewall {
        Some(table) => Firewall::Known(table),
        None if scope.reads_firewall() => Firewall::Read(listings),
        None => Firewall::Skip,
    };
    std::thread::scope(|threads| {
        let families = Families::of(spec);
        let mut links = observe::start_link_dump(threads, families);
        let intents = pods()?;
        let to_observe = namespaces_to_observe(spec, scope, &intents.pods);
        let mut partial = observe::observe_partial(&to_observe, firewall, families)?;
        if scope.adds() {
            if let Some(why) = crate::spec::covers_node(spec, &partial.observed.node) {
                return Err(EngineError::CoversNode(why));
            }
        }
        links.take_ready();
        // The files headcni keeps are node-wide objects: looked at (and so
        // written or removed) only by node-wide passes.
        let node_wide = scope.node_wide();
        if node_wide {
            partial.observed.node.files =
                crate::kernel::files::read_existing(&owned_file_paths(spec));
        }
        let facts = NodeFacts {
            // Only daemon mode plans files from the node's resolvers.
            resolvers: (node_wide && spec.mode == Mode::Daemon)
                .then(|| crate::kernel::files::node_resolvers(&spec.daemon.dns_upstream)),
            // Only node-wide passes keep node-wide sysctls.
            ipv6_uplinks: if node_wide && families.ipv6 {
                partial.ipv6_uplinks()
            } else {
                Vec::new()
            },
        };
        let desired = compile_on(spec, &intents.pods, &facts);
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
        Ok(Pass {
            intents,
            facts,
            desired,
            observed,
            plan,
        })
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
        .filter(|p| scope.observes_pod(&p.key))
        .map(|p| (Attachment::Pod(p.key()), p.netns.clone()))
        .chain(system_namespaces(spec, scope))
        .collect()
}

/// Every path where headcni may have written a file under `spec`, whatever
/// the mode (so one written in daemon mode is removed after a switch).
pub(super) fn owned_file_paths(spec: &Spec) -> Vec<PathBuf> {
    vec![spec.daemon.resolv_conf_path()]
}

/// Namespaces that are part of the node's own plumbing (daemon mode: the
/// tailnet namespace), observed in every node-wide pass.
fn system_namespaces(spec: &Spec, scope: &PodScope) -> Vec<(Attachment, PathBuf)> {
    if spec.mode == Mode::Daemon && scope.node_wide() {
        vec![(Attachment::TailnetNamespace, spec.daemon.netns_path())]
    } else {
        Vec::new()
    }
}
