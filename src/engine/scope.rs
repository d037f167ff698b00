//! What a pass looks at and may change: every question a pass asks of its
//! scope is answered here, so the engine never matches on it itself.

use crate::diff::{Action, Object, Plan, Step};
use crate::model::{Netns, Observed, PodKey};

/// Which part of the node a pass looks at and may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodScope {
    /// Every pod's namespace as well as the node.
    All,
    /// The node namespace only: the host side of every pod (cheap at scale).
    HostOnly,
    /// CNI calls, one or a batch of them: the node plus the namespaces of the
    /// pods to `wire` (their steps and node-wide additions, never node-wide
    /// removals), and the removal of the host links of attachments whose
    /// intents were just removed (`release`) with what hangs off them, or
    /// of only their routes (`retire`: the pod is cut off, nothing routed
    /// to it, and the daemon's next node-wide pass deletes the links, many in one
    /// kernel grace period, instead of the DEL waiting for it).
    Pods {
        wire: Vec<PodKey>,
        release: Vec<String>,
        retire: Vec<String>,
    },
    /// Node-level removals only: owned objects no intent wants (CNI GC).
    Prune,
}

impl PodScope {
    /// The scope's name in saved plans and messages.
    pub fn name(&self) -> &'static str {
        match self {
            PodScope::All => "all",
            PodScope::HostOnly => "host-only",
            PodScope::Pods { .. } => "pods",
            PodScope::Prune => "prune",
        }
    }

    /// Whether a pass looks at the node as a whole (every pod's host side,
    /// node-wide files, the tailnet namespace), not only what CNI calls touch.
    pub fn node_wide(&self) -> bool {
        matches!(self, PodScope::All | PodScope::HostOnly)
    }

    /// Whether a pass reads the nftables table (the CNI's pod scopes leave
    /// it unknown: `apply` and the daemon keep it).
    pub fn reads_firewall(&self) -> bool {
        matches!(self, PodScope::All | PodScope::HostOnly | PodScope::Prune)
    }

    /// Whether a pass looks into this pod's namespace.
    pub fn observes_pod(&self, key: &PodKey) -> bool {
        match self {
            PodScope::All => true,
            PodScope::HostOnly | PodScope::Prune => false,
            PodScope::Pods { wire, .. } => wire.contains(key),
        }
    }

    /// Whether the kernel's acks of an applied plan are its verification:
    /// a pass that only releases links (DELs) plans nothing else, and a
    /// link whose deletion was acknowledged is unregistered, so a second
    /// look would cost a DEL a whole observation for nothing.
    pub fn trusts_acks(&self) -> bool {
        matches!(self, PodScope::Pods { wire, .. } if wire.is_empty())
    }

    /// Whether a pass of this scope may add objects (removals alone are
    /// safe on any node: they take away only what headcni made).
    pub fn adds(&self) -> bool {
        match self {
            PodScope::All | PodScope::HostOnly => true,
            PodScope::Pods { wire, .. } => !wire.is_empty(),
            PodScope::Prune => false,
        }
    }

    /// One pod's ADD or CHECK.
    pub fn one(key: PodKey) -> PodScope {
        PodScope::Pods {
            wire: vec![key],
            release: Vec::new(),
            retire: Vec::new(),
        }
    }

    /// DELs: the removal of these host links.
    pub fn released(links: Vec<String>) -> PodScope {
        PodScope::Pods {
            wire: Vec::new(),
            release: links,
            retire: Vec::new(),
        }
    }

    /// Keeps of `plan` (made from `observed`) what this scope may touch.
    pub(super) fn restrict(&self, plan: Plan, observed: &Observed) -> Plan {
        match self {
            PodScope::All | PodScope::HostOnly => plan,
            PodScope::Pods {
                wire,
                release,
                retire,
            } => {
                let mut mine = if wire.is_empty() {
                    Plan::default()
                } else {
                    plan.for_pods(wire)
                };
                let on_link = |dev: &str| release.iter().any(|l| l == dev);
                let released = |s: &Step| {
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
                };
                let retiring = retired_routes(&plan, observed, retire);
                // Node-wide additions when wiring (the firewall is not among
                // them: this scope does not read it, so the diff plans nothing
                // for it).
                let node_wide = |s: &crate::diff::Step| {
                    !wire.is_empty() && s.attachment.is_none() && s.action != Action::Remove
                };
                mine.steps.extend(
                    plan.steps
                        .into_iter()
                        .filter(|s| node_wide(s) || released(s)),
                );
                mine.steps.extend(retiring);
                if !wire.is_empty() {
                    mine.waiting
                        .extend(plan.waiting.into_iter().filter(|w| w.attachment.is_none()));
                }
                crate::diff::order(&mut mine);
                mine
            }
            PodScope::Prune => Plan {
                steps: plan
                    .steps
                    .into_iter()
                    .filter(|s| {
                        s.action == Action::Remove
                            && s.attachment.is_none()
                            && s.netns == Netns::Node
                    })
                    .collect(),
                ..Plan::default()
            },
        }
    }
}

/// The removals of the owned routes on the `retire`d host links that the
/// plan removes (a link removal carries its routes with it, so the plan
/// has no steps of their own): the pod is cut off, its link left for later.
/// A link the plan keeps (its pod added again meanwhile) keeps its routes.
fn retired_routes(plan: &Plan, observed: &Observed, retire: &[String]) -> Vec<Step> {
    if retire.is_empty() {
        return Vec::new();
    }
    let removed: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| s.action == Action::Remove && s.netns == Netns::Node)
        .filter_map(|s| match &s.object {
            Object::Link(l) if retire.contains(&l.name) => Some(l.name.as_str()),
            _ => None,
        })
        .collect();
    observed
        .node
        .routes
        .iter()
        .filter(|r| r.is_owned() && r.dev.as_deref().is_some_and(|d| removed.contains(&d)))
        .map(|r| Step {
            action: Action::Remove,
            netns: Netns::Node,
            object: Object::Route(r.clone()),
            before: None,
            attachment: None,
            reason: "its pod is deleted; the link goes in the daemon's next pass".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each scope answers, in one table (the engine asks nothing else).
    #[test]
    fn each_scope_answers_for_itself() {
        let pod = PodKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let other = PodKey {
            container_id: "c2".into(),
            ..pod.clone()
        };
        // (scope, node_wide, reads_firewall, observes pod, trusts acks, adds)
        let table = [
            (PodScope::All, true, true, true, false, true),
            (PodScope::HostOnly, true, true, false, false, true),
            (PodScope::one(pod.clone()), false, false, true, false, true),
            (
                PodScope::released(vec!["hc1".into()]),
                false,
                false,
                false,
                true,
                false,
            ),
            (
                PodScope::Pods {
                    wire: Vec::new(),
                    release: Vec::new(),
                    retire: vec!["hc1".into()],
                },
                false,
                false,
                false,
                true,
                false,
            ),
            (PodScope::Prune, false, true, false, false, false),
        ];
        for (scope, node_wide, firewall, observes, acks, adds) in table {
            let name = scope.name();
            assert_eq!(scope.node_wide(), node_wide, "{name}");
            assert_eq!(scope.reads_firewall(), firewall, "{name}");
            assert_eq!(scope.observes_pod(&pod), observes, "{name}");
            assert_eq!(
                scope.observes_pod(&other),
                observes && scope == PodScope::All,
                "{name}"
            );
            assert_eq!(scope.trusts_acks(), acks, "{name}");
            assert_eq!(scope.adds(), adds, "{name}");
        }
    }
}
