//! A unified diff of observed versus desired state, rendered as stable text:
//! one line per object, sorted, so a review reads like a code review.

use similar::TextDiff;

use crate::diff::{Action, Plan};
use crate::spec::Desired;

/// Every desired object as a state line, prefixed by its namespace.
pub fn desired_lines(desired: &Desired) -> Vec<String> {
    use crate::diff::Object;
    let mut lines = Vec::new();
    let node = |o: Object| format!("node: {}", o.state_line());
    lines.extend(
        desired
            .node_sysctls
            .iter()
            .cloned()
            .map(|s| node(Object::Sysctl(s))),
    );
    lines.extend(
        desired
            .node_routes
            .iter()
            .cloned()
            .map(|r| node(Object::Route(r))),
    );
    for pod in &desired.pods {
        lines.push(node(Object::Link(pod.host_link.clone())));
        lines.extend(
            pod.host_addresses
                .iter()
                .cloned()
                .map(|a| node(Object::Address(a))),
        );
        lines.extend(
            pod.host_routes
                .iter()
                .cloned()
                .map(|r| node(Object::Route(r))),
        );
        let inside = |o: Object| format!("pod {}: {}", pod.key, o.state_line());
        lines.push(inside(Object::Link(pod.pod_link.clone())));
        lines.extend(
            pod.pod_addresses
                .iter()
                .cloned()
                .map(|a| inside(Object::Address(a))),
        );
        lines.extend(
            pod.pod_routes
                .iter()
                .cloned()
                .map(|r| inside(Object::Route(r))),
        );
    }
    lines.sort();
    lines
}

/// Observed lines are the desired ones with the plan undone: what an add
/// would add is missing, what a change would change shows its old value,
/// what a removal would remove is there, and a conflict shows the foreign object.
pub fn diff(plan: &Plan, desired: &Desired) -> String {
    let wanted = desired_lines(desired);
    let line = |netns: &crate::model::Netns, o: &crate::diff::Object| {
        format!("{netns}: {}", o.state_line())
    };
    let mut observed: Vec<String> = wanted.clone();
    for step in &plan.steps {
        let after = line(&step.netns, &step.object);
        match step.action {
            Action::Add => observed.retain(|l| *l != after),
            Action::Change => {
                observed.retain(|l| *l != after);
                if let Some(before) = &step.before {
                    observed.push(line(&step.netns, before));
                }
            }
            Action::Remove => observed.push(after),
        }
    }
    for c in &plan.conflicts {
        let want = line(&c.netns, &c.desired);
        observed.retain(|l| *l != want);
        observed.push(line(&c.netns, &c.found));
    }
    observed.sort();
    observed.dedup();
    let (a, b) = (observed.join("\n") + "\n", wanted.join("\n") + "\n");
    let diff = TextDiff::from_lines(&a, &b);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header("observed", "desired")
        .to_string();
    if text.is_empty() {
        "(no differences)\n".to_string()
    } else {
        text
    }
}
