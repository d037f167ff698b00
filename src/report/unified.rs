//! A unified diff of observed versus desired state, rendered as stable text:
//! one line per object, sorted, so a review reads like a code review.

use similar::TextDiff;

use crate::diff::{Action, Plan};
use crate::spec::Desired;

/// An object's state lines, prefixed by its namespace: one line for most,
/// one per chain and rule for the firewall table (so a review sees which
/// rule moved).
fn object_lines(netns: &str, object: &crate::diff::Object) -> Vec<String> {
    use crate::diff::Object;
    match object {
        Object::File(file) => file
            .meaningful_lines()
            .map(|line| format!("{netns}: file {}: {line}", file.path.display()))
            .collect(),
        Object::Nft(table) => {
            let name = crate::model::NFT_TABLE;
            table
                .chains
                .iter()
                .map(|c| {
                    format!(
                        "{netns}: nft table inet {name} chain {} type {} hook {} priority {}",
                        c.name, c.kind, c.hook, c.priority
                    )
                })
                .chain(table.rules.iter().map(|r| {
                    format!(
                        "{netns}: nft table inet {name} rule in {}: {}",
                        r.chain, r.text
                    )
                }))
                .collect()
        }
        other => vec![format!("{netns}: {}", other.state_line())],
    }
}

/// Every object of an observation as state lines, prefixed by its namespace
/// (for saying what moved between two observations).
pub fn observed_lines(observed: &crate::model::Observed) -> Vec<String> {
    use crate::diff::Object;
    let state = |netns: &str, s: &crate::model::NetnsState| -> Vec<String> {
        let objects = s
            .links
            .iter()
            .cloned()
            .map(Object::link)
            .chain(s.addresses.iter().cloned().map(Object::Address))
            .chain(s.routes.iter().cloned().map(Object::Route))
            .chain(s.rules.iter().cloned().map(Object::Rule))
            .chain(s.sysctls.iter().cloned().map(Object::Sysctl))
            .chain(s.nft.iter().cloned().map(Object::Nft))
            .chain(
                s.files
                    .iter()
                    .filter(|f| f.is_owned())
                    .cloned()
                    .map(Object::File),
            );
        objects.flat_map(|o| object_lines(netns, &o)).collect()
    };
    let mut lines = state("node", &observed.node);
    for pod in &observed.pods {
        let netns = pod.key.to_string();
        match &pod.state {
            Some(s) => lines.extend(state(&netns, s)),
            None => lines.push(format!(
                "{netns}: namespace {} cannot be opened",
                pod.netns_path.display()
            )),
        }
    }
    lines.sort();
    lines
}

/// What moved from `then` to `now`, as `- ` and `+ ` lines (at most `max`).
pub fn moved(
    then: &crate::model::Observed,
    now: &crate::model::Observed,
    max: usize,
) -> Vec<String> {
    let (a, b) = (observed_lines(then), observed_lines(now));
    let gone = a
        .iter()
        .filter(|l| b.binary_search(l).is_err())
        .map(|l| format!("- {l}"));
    let new = b
        .iter()
        .filter(|l| a.binary_search(l).is_err())
        .map(|l| format!("+ {l}"));
    let mut all: Vec<String> = gone.chain(new).collect();
    let total = all.len();
    all.truncate(max);
    if total > max {
        all.push(format!("... and {} more", total - max));
    }
    all
}

/// Every desired object as state lines, prefixed by its namespace.
pub fn desired_lines(desired: &Desired) -> Vec<String> {
    use crate::diff::Object;
    let mut objects: Vec<(String, Object)> = Vec::new();
    let node = |o: Object| ("node".to_string(), o);
    objects.extend(
        desired
            .node_sysctls
            .iter()
            .cloned()
            .map(|s| node(Object::Sysctl(s))),
    );
    objects.extend(
        desired
            .node_routes
            .iter()
            .cloned()
            .map(|r| node(Object::Route(r))),
    );
    objects.extend(
        desired
            .node_rules
            .iter()
            .cloned()
            .map(|r| node(Object::Rule(r))),
    );
    objects.extend(desired.nft.iter().cloned().map(|t| node(Object::Nft(t))));
    objects.extend(desired.files.iter().cloned().map(|f| node(Object::File(f))));
    for pod in &desired.pods {
        objects.push(node(Object::link(pod.host_link.clone())));
        objects.extend(
            pod.host_addresses
                .iter()
                .cloned()
                .map(|a| node(Object::Address(a))),
        );
        objects.extend(
            pod.host_routes
                .iter()
                .cloned()
                .map(|r| node(Object::Route(r))),
        );
        objects.extend(
            pod.host_sysctls
                .iter()
                .cloned()
                .map(|s| node(Object::Sysctl(s))),
        );
        let inside = pod.key.to_string();
        let pod_objects = std::iter::once(Object::link(pod.pod_link.clone()))
            .chain(pod.extra_links.iter().cloned().map(Object::link))
            .chain(pod.pod_addresses.iter().cloned().map(Object::Address))
            .chain(pod.pod_routes.iter().cloned().map(Object::Route))
            .chain(pod.sysctls.iter().cloned().map(Object::Sysctl));
        objects.extend(pod_objects.map(|o| (inside.clone(), o)));
    }
    let mut lines: Vec<String> = objects
        .iter()
        .flat_map(|(netns, o)| object_lines(netns, o))
        .collect();
    lines.sort();
    lines
}

/// Observed lines are the desired ones with the plan undone: what an add
/// would add is missing, what a change would change shows its old value,
/// what a removal would remove is there, and a conflict shows the foreign object.
pub fn diff(plan: &Plan, desired: &Desired) -> String {
    let wanted = desired_lines(desired);
    let lines =
        |netns: &crate::model::Netns, o: &crate::diff::Object| object_lines(&netns.to_string(), o);
    let mut observed: Vec<String> = wanted.clone();
    for step in &plan.steps {
        let after = lines(&step.netns, &step.object);
        match step.action {
            Action::Add => {
                observed.retain(|l| !after.contains(l));
                // A veth made in the node brings its pod end with it.
                if let (crate::diff::Object::Link(link), Some(to)) =
                    (&step.object, &step.attachment)
                {
                    if let Some(peer) = &link.peer {
                        let pod_end = format!("{to}: link {} ", peer.ifname);
                        observed.retain(|l| !l.starts_with(&pod_end));
                    }
                }
            }
            Action::Change => {
                observed.retain(|l| !after.contains(l));
                if let Some(before) = &step.before {
                    observed.extend(lines(&step.netns, before));
                }
            }
            Action::Remove => observed.extend(after),
        }
    }
    for c in &plan.conflicts {
        let want = lines(&c.netns, &c.desired);
        observed.retain(|l| !want.contains(l));
        observed.extend(lines(&c.netns, &c.found));
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
    let waits = !plan.waiting.is_empty() || !plan.problems.is_empty();
    let mut text = if text.is_empty() && waits {
        "(nothing headcni can change now; what waits is below)\n".to_string()
    } else if text.is_empty() {
        "(no differences)\n".to_string()
    } else {
        text
    };
    // What waits is neither observed nor about to be made: said apart, so
    // it never reads as unchanged.
    for w in plan.waiting.iter().chain(&plan.problems) {
        match &w.attachment {
            Some(to) => text.push_str(&format!("# waiting: {to}: {}\n", w.reason)),
            None => text.push_str(&format!("# waiting: {}\n", w.reason)),
        }
    }
    text
}
