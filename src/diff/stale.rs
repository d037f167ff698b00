//! Owned objects in the node namespace that nothing desired keeps.

use rustc_hash::FxHashSet;

use super::draft::Draft;
use super::plan::{Action, Object, PlannedLink};
use crate::model::{Address, Link, Netns, Observed, Route, Rule};

/// Owned routes and addresses nobody keeps, known before the node's links are.
pub(super) struct Stale<'a> {
    pub routes: Vec<&'a Route>,
    pub addresses: Vec<&'a Address>,
}

impl<'a> Stale<'a> {
    pub fn find(kept: &super::index::Kept, observed: &'a Observed) -> Self {
        Stale {
            routes: (observed.node.routes.iter())
                .filter(|r| kept.is_stale_route(r))
                .collect(),
            addresses: (observed.node.addresses.iter())
                .filter(|a| kept.is_stale_address(a))
                .collect(),
        }
    }

    /// The removals, given the node's links: stale rules, links no pod wants
    /// and the routes and addresses that do not go with those links.
    pub fn removals(
        self,
        links: &'a [Link],
        kept_links: &FxHashSet<&str>,
        observed_rules: &[Rule],
        desired_rules: &[Rule],
    ) -> Draft<'a> {
        let mut removal = Draft::new(Netns::Node, None);
        for rule in observed_rules.iter().filter(|r| r.is_owned()) {
            if !desired_rules.contains(rule) {
                removal.step(
                    Action::Remove,
                    Object::Rule(rule.clone()),
                    None,
                    "not desired",
                );
            }
        }
        let mut removed_links: FxHashSet<&str> = FxHashSet::default();
        for link in links {
            if crate::model::is_owned_link_name(&link.name)
                && !kept_links.contains(link.name.as_str())
            {
                removed_links.insert(link.name.as_str());
                removal.step(
                    Action::Remove,
                    Object::Link(PlannedLink::state(link.clone())),
                    None,
                    "no pod wants it",
                );
            }
        }
        // What hangs off a removed link goes with it.
        let gone_with_link = |dev: &str| removed_links.contains(dev);
        for route in self.routes {
            if !route.dev.as_deref().is_some_and(gone_with_link) {
                removal.step(
                    Action::Remove,
                    Object::Route(route.clone()),
                    None,
                    "not desired",
                );
            }
        }
        for addr in self.addresses {
            if !gone_with_link(&addr.dev) {
                removal.step(
                    Action::Remove,
                    Object::Address(addr.clone()),
                    None,
                    "not desired",
                );
            }
        }
        removal
    }
}
