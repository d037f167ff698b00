//! The one order every plan is printed and applied in.

use std::collections::BTreeMap;

use super::plan::{Action, Object, Plan, Step};

/// Removals first, routes before addresses before links; then sysctls, links,
/// addresses and routes in that order. Within a group: node first, then by
/// namespace and object, so the same inputs always give the same bytes.
pub fn order(plan: &mut Plan) {
    let group = |s: &Step| -> u8 {
        match s.action {
            Action::Remove => 3 - s.object.rank().min(3),
            _ => 4 + s.object.rank(),
        }
    };
    // Stable sort on a total key (objects are Ord), with a deduplication pass:
    // two drafts may plan the same removal (a replaced link).
    // A route through a gateway needs the on-link route to that gateway first
    // (and goes first on removal).
    let via_rank = |s: &Step| -> u8 {
        let via = matches!(&s.object, Object::Route(r) if r.via.is_some());
        match (s.action, via) {
            (Action::Remove, true) | (Action::Add | Action::Change, false) => 0,
            _ => 1,
        }
    };
    plan.steps.sort_by(|a, b| {
        (group(a), &a.netns, via_rank(a), &a.object, a.action).cmp(&(
            group(b),
            &b.netns,
            via_rank(b),
            &b.object,
            b.action,
        ))
    });
    plan.steps
        .dedup_by(|a, b| a.action == b.action && a.netns == b.netns && a.object == b.object);
    plan.conflicts
        .sort_by(|a, b| (&a.netns, &a.desired).cmp(&(&b.netns, &b.desired)));
    let mut seen = BTreeMap::new();
    plan.waiting.retain(|w| {
        seen.insert((w.attachment.clone(), w.reason.clone()), ())
            .is_none()
    });
    plan.waiting
        .sort_by(|a, b| (&a.attachment, &a.reason).cmp(&(&b.attachment, &b.reason)));
}
