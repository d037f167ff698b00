//! What keeps the node from its spec after a pass (conflicts with objects
//! headcni does not own, items waiting), as `headcni plan` prints them: each
//! logged once when it appears and once when it clears, counted in gauges
//! and listed in the status. While something is blocked, the kernel's
//! removal of anything (say, the foreign route in the way) is a reason to
//! look again at once, not at the next resync.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::metrics::Metrics;
use crate::diff::Plan;
use crate::model::Netns;

/// Shared with the event listeners: true while a conflict blocks a pod.
#[derive(Clone, Debug, Default)]
pub struct BlockedFlag(Arc<AtomicBool>);

impl BlockedFlag {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, blocked: bool) {
        self.0.store(blocked, Ordering::Relaxed);
    }
}

/// One line of what is blocked; `host` when a node-only pass sees it too.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    host: bool,
    line: String,
}

/// The items the daemon last reported.
#[derive(Debug, Default)]
pub struct Blocked {
    items: BTreeSet<Item>,
    pub flag: BlockedFlag,
}

impl Blocked {
    /// Takes a verified pass's remaining plan. A node-only pass (`host_only`)
    /// does not look into pods, so what it did not see there still stands.
    /// Returns the lines now blocked, for the status.
    pub fn note(&mut self, remaining: &Plan, host_only: bool, metrics: &Metrics) -> Vec<String> {
        let mut now: BTreeSet<Item> = items(remaining).collect();
        if host_only {
            now.extend(self.items.iter().filter(|i| !i.host).cloned());
        }
        for gone in self.items.difference(&now) {
            tracing::info!("cleared: {}", gone.line);
        }
        for new in now.difference(&self.items) {
            tracing::warn!("blocked: {}", new.line);
        }
        self.items = now;
        let conflicts = self
            .items
            .iter()
            .filter(|i| i.line.starts_with('!'))
            .count();
        metrics.conflicts.set(conflicts as i64);
        metrics.waiting.set((self.items.len() - conflicts) as i64);
        self.flag.set(conflicts > 0);
        self.items.iter().map(|i| i.line.clone()).collect()
    }
}

/// The plan's conflict and waiting lines, each marked with whether it is
/// the node's own (seen by a node-only pass too).
fn items(plan: &Plan) -> impl Iterator<Item = Item> + '_ {
    let conflicts = plan.conflicts.iter().map(|c| Item {
        host: c.netns == Netns::Node,
        line: crate::report::text::conflict_line(c),
    });
    let waiting = plan.waiting.iter().chain(&plan.problems).map(|w| Item {
        host: w.attachment.is_none(),
        line: crate::report::text::waiting_line(w),
    });
    conflicts.chain(waiting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Waiting;

    fn waiting(reason: &str) -> Waiting {
        Waiting {
            attachment: None,
            reason: reason.into(),
        }
    }

    #[test]
    fn each_item_is_reported_while_it_stands() {
        let metrics = Metrics::new();
        let mut blocked = Blocked::default();
        let plan = Plan {
            waiting: vec![waiting("tailnet interface headcni01 is missing")],
            ..Plan::default()
        };
        let lines = blocked.note(&plan, false, &metrics);
        assert_eq!(lines, vec!["? tailnet interface headcni01 is missing"]);
        assert_eq!(metrics.waiting.get(), 1);
        assert!(!blocked.flag.get());
        assert!(blocked.note(&Plan::default(), true, &metrics).is_empty());
        assert_eq!(metrics.waiting.get(), 0);
    }
}
