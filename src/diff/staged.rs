//! The diff in two stages, so that its bulk can run while the kernel is
//! still listing the node's links (by far its slowest dump; see the engine).

use rustc_hash::FxHashMap;

use super::index::{Index, Kept};
use super::node::node_wide;
use super::order::order;
use super::plan::{Plan, Waiting};
use super::pod::{diff_pod, host_side_as_desired, PodOutcome};
use super::stale::Stale;
use crate::model::{Attachment, Link, Observed, ObservedPod, Sysctl};
use crate::spec::Desired;

/// [`Early::new`] sees everything but the node's links and their sysctls,
/// and plans each pod assuming its host link and host sysctls are as
/// desired. [`Early::finish`] gets the links, checks that assumption pod by
/// pod, plans again every pod where it does not hold, and adds what depends
/// on links (node-wide objects, stale links). The result is exactly
/// [`super::diff`]'s (a property test holds them equal).
pub struct Early<'a> {
    desired: &'a Desired,
    observed: &'a Observed,
    observed_pods: FxHashMap<&'a Attachment, &'a ObservedPod>,
    node: Index<'a>,
    kept: Kept<'a>,
    pods: PodPlans<'a>,
    stale: Stale<'a>,
}

/// What stage one did for the pods.
enum PodPlans<'a> {
    /// Nothing: every pod is planned in `finish`.
    Deferred,
    /// One per desired pod, in order, made assuming its host side is as desired.
    Assumed(Vec<Assumed<'a>>),
}

/// One pod's plan made in stage one.
enum Assumed<'a> {
    /// As desired: nothing to do, nothing to say (most pods of a converged node).
    AsDesired,
    /// Boxed: 10,000 full outcomes would be megabytes to move.
    Planned(Box<PodOutcome<'a>>),
}

impl<'a> Assumed<'a> {
    fn from(outcome: PodOutcome<'a>) -> Self {
        if outcome.is_empty() {
            Assumed::AsDesired
        } else {
            Assumed::Planned(Box::new(outcome))
        }
    }
}

impl<'a> Early<'a> {
    /// Stage one. `observed.node.links` and the node's per-link sysctls are
    /// not looked at: they come to [`Early::finish`].
    pub fn new(desired: &'a Desired, observed: &'a Observed) -> Self {
        let mut early = Self::exact(desired, observed);
        // Room for the node's links too (pods' and a few more) and their sysctls.
        let room = desired.pods.len() + 64;
        early.node.links.reserve(room);
        early.node.sysctls.reserve(room);
        // Assume every host link and its sysctls are as desired.
        early.node.set_links(
            desired.pods.iter().map(|p| &p.host_link),
            desired.pods.iter().flat_map(|p| &p.host_sysctls),
        );
        let planned = desired
            .pods
            .iter()
            .map(|pod| Assumed::from(diff_pod(pod, &early.node, &early.observed_pods)))
            .collect();
        early.pods = PodPlans::Assumed(planned);
        early
    }

    /// Stage one without assumptions: every pod is planned in `finish`.
    pub(super) fn exact(desired: &'a Desired, observed: &'a Observed) -> Self {
        let kept = Kept::new(desired);
        let stale = Stale::find(&kept, observed);
        Early {
            desired,
            observed,
            observed_pods: observed.pods.iter().map(|p| (&p.key, p)).collect(),
            node: Index::without_links(&observed.node),
            kept,
            pods: PodPlans::Deferred,
            stale,
        }
    }

    /// Stage two: the node's links and all its sysctls (node-wide and per link).
    pub fn finish(self, links: &'a [Link], sysctls: impl IntoIterator<Item = &'a Sysctl>) -> Plan {
        let Early {
            desired,
            observed,
            observed_pods,
            mut node,
            kept,
            pods,
            stale,
        } = self;
        node.set_links(links, sysctls);
        let mut plan = Plan::default();
        node_wide(desired, observed, &node, &mut plan);

        // Pods. Host links and routes of every desired pod are kept, even of
        // pods skipped here: skipping must never turn into removing.
        let mut assumed = match pods {
            PodPlans::Deferred => None,
            PodPlans::Assumed(planned) => Some(planned.into_iter()),
        };
        for pod in &desired.pods {
            match assumed.as_mut().and_then(Iterator::next) {
                Some(earlier) if host_side_as_desired(pod, &node) => {
                    if let Assumed::Planned(outcome) = earlier {
                        outcome.add_to(&mut plan);
                    }
                }
                _ => diff_pod(pod, &node, &observed_pods).add_to(&mut plan),
            }
        }

        stale
            .removals(
                links,
                &kept.links,
                &observed.node.rules,
                &desired.node_rules,
            )
            .add_to(&mut plan);
        plan.problems = desired
            .problems
            .iter()
            .map(|p| Waiting {
                attachment: Some(Attachment::Pod(p.pod.clone())),
                reason: p.reason.clone(),
            })
            .collect();
        order(&mut plan);
        plan
    }
}
