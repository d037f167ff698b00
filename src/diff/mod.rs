//! `diff(&Desired, &Observed) -> Plan`: pure, deterministic, minimal, ordered.
//!
//! Ownership decides what may be touched: routes with headcni's protocol,
//! links with its prefix, and inside a pod's namespace the pod's interface.
//! A foreign object in the way becomes a [`Conflict`]; it is never a step.

mod expected;
mod plan;

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use ipnetwork::IpNetwork;

pub use expected::expected;
pub use plan::{Action, Conflict, FieldChange, Object, Plan, Step, Summary, Waiting};

use crate::model::{
    is_kernel_link_local, is_owned_link_name, Address, Link, Netns, NetnsState, PodKey, Route,
    RouteKey, Rule,
};
use crate::observe::Observed;
use crate::spec::{Desired, DesiredPod};

/// Kernel state of one namespace, indexed for lookups.
struct Index<'a> {
    links: FxHashMap<&'a str, &'a Link>,
    addresses: FxHashSet<(&'a str, IpNetwork)>,
    owned_routes: FxHashMap<RouteKey, &'a Route>,
    /// Foreign routes by (table, destination): anything there blocks ours.
    foreign_routes: FxHashMap<(u32, IpNetwork), &'a Route>,
}

impl<'a> Index<'a> {
    fn new(state: &'a NetnsState) -> Self {
        let mut owned_routes =
            FxHashMap::with_capacity_and_hasher(state.routes.len(), Default::default());
        let mut foreign_routes = FxHashMap::default();
        for route in &state.routes {
            if route.is_owned() {
                owned_routes.insert(route.key(), route);
            } else {
                foreign_routes
                    .entry((route.table, route.dst))
                    .or_insert(route);
            }
        }
        Index {
            links: state.links.iter().map(|l| (l.name.as_str(), l)).collect(),
            addresses: state
                .addresses
                .iter()
                .map(|a| (a.dev.as_str(), a.addr))
                .collect(),
            owned_routes,
            foreign_routes,
        }
    }
}

/// Steps for one owner, collected before they are known to be conflict-free.
struct Draft<'a> {
    netns: Netns,
    pod: Option<&'a PodKey>,
    steps: Vec<Step>,
    conflicts: Vec<Conflict>,
}

impl<'a> Draft<'a> {
    fn new(netns: Netns, pod: Option<&'a PodKey>) -> Self {
        Draft {
            netns,
            pod,
            steps: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    fn step(
        &mut self,
        action: Action,
        object: Object,
        before: Option<Object>,
        reason: impl Into<String>,
    ) {
        self.steps.push(Step {
            action,
            netns: self.netns.clone(),
            object,
            before,
            pod: self.pod.cloned(),
            reason: reason.into(),
        });
    }

    fn conflict(&mut self, desired: Object, found: Object, reason: impl Into<String>) {
        self.conflicts.push(Conflict {
            netns: self.netns.clone(),
            pod: self.pod.cloned(),
            desired,
            found,
            reason: reason.into(),
        });
    }

    /// Compares one desired route with the namespace's routes. `fresh`: its
    /// device is being (re)created, so an owned route on it now will be gone.
    fn route(&mut self, want: &Route, index: &Index, fresh: bool) {
        let owned = index
            .owned_routes
            .get(&want.key())
            .filter(|have| !(fresh && have.dev == want.dev));
        match owned {
            Some(have) if want.satisfied_by(have) => {}
            Some(have) => self.step(
                Action::Change,
                Object::Route(want.clone()),
                Some(Object::Route((*have).clone())),
                "differs",
            ),
            None => match index.foreign_routes.get(&(want.table, want.dst)) {
                Some(foreign) => self.conflict(
                    Object::Route(want.clone()),
                    Object::Route((*foreign).clone()),
                    "a route to the same destination with another protocol is in the way",
                ),
                None => self.step(Action::Add, Object::Route(want.clone()), None, "missing"),
            },
        }
    }

    fn address(&mut self, want: &Address, index: &Index, fresh: bool) {
        if fresh || !index.addresses.contains(&(want.dev.as_str(), want.addr)) {
            self.step(Action::Add, Object::Address(want.clone()), None, "missing");
        }
    }

    fn link_state(&mut self, want: &Link, have: &Link) {
        if want.mtu != have.mtu || want.up != have.up {
            let mut before = have.clone();
            before.peer = want.peer.clone();
            self.step(
                Action::Change,
                Object::Link(want.clone()),
                Some(Object::Link(before)),
                "differs",
            );
        }
    }
}

pub fn diff(desired: &Desired, observed: &Observed) -> Plan {
    let node = Index::new(&observed.node);
    let mut plan = Plan::default();
    let mut drafts: Vec<Draft> = Vec::new();

    // Node-wide objects.
    let mut node_draft = Draft::new(Netns::Node, None);
    for want in &desired.node_sysctls {
        if let Some(dev) = want.interface() {
            if !node.links.contains_key(dev) {
                plan.waiting.push(Waiting {
                    pod: None,
                    reason: format!("sysctl {} waits for link {dev}", want.key.replace('/', ".")),
                });
                continue;
            }
        }
        let have = observed.node.sysctls.iter().find(|s| s.key == want.key);
        match have {
            Some(have) if have.value == want.value => {}
            Some(have) => node_draft.step(
                Action::Change,
                Object::Sysctl(want.clone()),
                Some(Object::Sysctl(have.clone())),
                "differs",
            ),
            None => node_draft.step(
                Action::Change,
                Object::Sysctl(want.clone()),
                None,
                "not observed",
            ),
        }
    }
    for want in &desired.node_routes {
        if let Some(dev) = &want.dev {
            // The kernel refuses routes through a missing or down link (ENETDOWN).
            let reason = match node.links.get(dev.as_str()) {
                None => Some(format!("route {want} waits for link {dev}")),
                Some(link) if !link.up => {
                    Some(format!("route {want} waits for link {dev} to come up"))
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                plan.waiting.push(Waiting { pod: None, reason });
                continue;
            }
        }
        // Node objects are independent: a conflict blocks only its own route.
        let mut one = Draft::new(Netns::Node, None);
        one.route(want, &node, false);
        node_draft.steps.append(&mut one.steps);
        plan.conflicts.append(&mut one.conflicts);
    }
    // The nftables table: one object, compared rule by rule (ignoring counters and wording).
    let same_table = |a: &crate::model::NftTable, b: &crate::model::NftTable| {
        a.chains == b.chains
            && a.rules.len() == b.rules.len()
            && a.rules
                .iter()
                .zip(&b.rules)
                .all(|(x, y)| x.chain == y.chain && x.expr == y.expr)
    };
    match (&desired.nft, &observed.node.nft) {
        (Some(want), None) => {
            node_draft.step(Action::Add, Object::Nft(want.clone()), None, "missing")
        }
        (Some(want), Some(have)) if !same_table(want, have) => node_draft.step(
            Action::Change,
            Object::Nft(want.clone()),
            Some(Object::Nft(have.clone())),
            "differs",
        ),
        (None, Some(have)) => node_draft.step(
            Action::Remove,
            Object::Nft(have.clone()),
            None,
            "not desired",
        ),
        _ => {}
    }
    let owned_rules: FxHashSet<&Rule> = observed
        .node
        .rules
        .iter()
        .filter(|r| r.is_owned())
        .collect();
    for want in &desired.node_rules {
        if !owned_rules.contains(want) {
            node_draft.step(Action::Add, Object::Rule(want.clone()), None, "missing");
        }
    }
    drafts.push(node_draft);

    // Pods. Host links and routes of every desired pod are kept, even of pods
    // skipped below: skipping must never turn into removing.
    let mut kept_links: FxHashSet<&str> = FxHashSet::default();
    let mut kept_routes: FxHashSet<RouteKey> = desired.node_routes.iter().map(Route::key).collect();
    let mut kept_addresses: FxHashSet<(&str, IpNetwork)> = FxHashSet::default();
    for pod in &desired.pods {
        kept_links.insert(pod.host_link.name.as_str());
        kept_routes.extend(pod.host_routes.iter().map(Route::key));
        kept_addresses.extend(pod.host_addresses.iter().map(|a| (a.dev.as_str(), a.addr)));
    }
    let node_sysctls: FxHashMap<&str, &str> = observed
        .node
        .sysctls
        .iter()
        .map(|s| (s.key.as_str(), s.value.as_str()))
        .collect();
    for pod in &desired.pods {
        if let Some(reason) = diff_pod(
            pod,
            &node,
            &node_sysctls,
            observed,
            &mut drafts,
            &mut plan.waiting,
        ) {
            plan.waiting.push(Waiting {
                pod: Some(pod.key.clone()),
                reason,
            });
        }
    }

    // Owned objects nobody wants any more, in the node namespace.
    let mut removal = Draft::new(Netns::Node, None);
    for rule in observed.node.rules.iter().filter(|r| r.is_owned()) {
        if !desired.node_rules.contains(rule) {
            removal.step(
                Action::Remove,
                Object::Rule(rule.clone()),
                None,
                "not desired",
            );
        }
    }
    let mut removed_links: FxHashSet<&str> = FxHashSet::default();
    for link in &observed.node.links {
        if is_owned_link_name(&link.name) && !kept_links.contains(link.name.as_str()) {
            removed_links.insert(link.name.as_str());
            removal.step(
                Action::Remove,
                Object::Link(link.clone()),
                None,
                "no pod wants it",
            );
        }
    }
    let gone_with_link =
        |dev: &Option<String>| dev.as_deref().is_some_and(|d| removed_links.contains(d));
    for route in &observed.node.routes {
        if route.is_owned() && !kept_routes.contains(&route.key()) && !gone_with_link(&route.dev) {
            removal.step(
                Action::Remove,
                Object::Route(route.clone()),
                None,
                "not desired",
            );
        }
    }
    for addr in &observed.node.addresses {
        if is_owned_link_name(&addr.dev)
            && !removed_links.contains(addr.dev.as_str())
            && !is_kernel_link_local(&addr.addr)
            && !kept_addresses.contains(&(addr.dev.as_str(), addr.addr))
        {
            removal.step(
                Action::Remove,
                Object::Address(addr.clone()),
                None,
                "not desired",
            );
        }
    }
    drafts.push(removal);

    for draft in drafts {
        if draft.conflicts.is_empty() {
            plan.steps.extend(draft.steps);
        } else {
            plan.conflicts.extend(draft.conflicts);
        }
    }
    plan.problems = desired
        .problems
        .iter()
        .map(|p| Waiting {
            pod: Some(p.pod.clone()),
            reason: p.reason.clone(),
        })
        .collect();
    order(&mut plan);
    plan
}

/// Plans one pod; its steps and conflicts go into one draft so that a conflict
/// skips the whole pod. Returns why the pod must wait, if it must.
fn diff_pod<'a>(
    pod: &'a DesiredPod,
    node: &Index,
    node_sysctls: &FxHashMap<&str, &str>,
    observed: &'a Observed,
    drafts: &mut Vec<Draft<'a>>,
    waiting: &mut Vec<Waiting>,
) -> Option<String> {
    let observed_pod = observed.pod(&pod.key);
    let pod_state = match observed_pod {
        Some(o) => match &o.state {
            Some(state) => Some(state),
            None => {
                return Some(format!(
                    "netns {} cannot be opened",
                    pod.netns_path.display()
                ))
            }
        },
        None => None, // not observed: plan the host side only
    };
    let pod_index = pod_state.map(Index::new);

    let mut host = Draft::new(Netns::Node, Some(&pod.key));
    // Only a pod whose namespace was observed gets steps inside it.
    let pod_netns = || Netns::Pod {
        pod: pod.key.clone(),
        path: pod.netns_path.clone(),
    };
    let mut inside = Draft::new(
        if pod_state.is_some() {
            pod_netns()
        } else {
            Netns::Node
        },
        Some(&pod.key),
    );
    let host_link = node.links.get(pod.host_link.name.as_str()).copied();
    let pod_link = pod_index
        .as_ref()
        .and_then(|i| i.links.get(pod.pod_link.name.as_str()).copied());

    let needs_veth = match host_link {
        None => true,
        Some(have) if have.kind.as_deref() != Some("veth") => {
            host.step(
                Action::Remove,
                Object::Link(have.clone()),
                None,
                "not a veth",
            );
            true
        }
        Some(have) if pod_index.is_some() && pod_link.is_none() => {
            host.step(
                Action::Remove,
                Object::Link(have.clone()),
                None,
                "its pod end is missing",
            );
            true
        }
        Some(have) => {
            host.link_state(&pod.host_link, have);
            false
        }
    };
    if needs_veth {
        if let Some(foreign) = pod_link {
            inside.conflict(
                Object::Link(pod.pod_link.clone()),
                Object::Link(foreign.clone()),
                "a link with the pod's interface name already exists in its namespace",
            );
        }
        host.step(
            Action::Add,
            Object::Link(pod.host_link.clone()),
            None,
            "missing",
        );
    }
    for want in &pod.host_addresses {
        host.address(want, node, needs_veth);
    }
    for want in &pod.host_routes {
        host.route(want, node, needs_veth);
    }
    for want in &pod.host_sysctls {
        let have = if needs_veth {
            None
        } else {
            node_sysctls.get(want.key.as_str()).copied()
        };
        if have != Some(want.value.as_str()) {
            let before = have.map(|v| {
                Object::Sysctl(crate::model::Sysctl {
                    key: want.key.clone(),
                    value: v.to_string(),
                })
            });
            host.step(
                Action::Change,
                Object::Sysctl(want.clone()),
                before,
                "differs",
            );
        }
    }

    if let (Some(state), Some(index)) = (pod_state, &pod_index) {
        if let (false, Some(have)) = (needs_veth, pod_link) {
            inside.link_state(&pod.pod_link, have);
        }
        for want in &pod.pod_addresses {
            inside.address(want, index, needs_veth);
        }
        // Links headcni configures but does not make (the tailnet interface
        // tailscaled creates): set them as desired, or wait for them, and hold
        // back only the routes through them.
        let mut absent: Vec<&str> = Vec::new();
        for want in &pod.extra_links {
            match index.links.get(want.name.as_str()) {
                Some(have) => inside.link_state(want, have),
                None => absent.push(want.name.as_str()),
            }
        }
        for want in &pod.pod_routes {
            if let Some(dev) = want.dev.as_deref().filter(|d| absent.contains(d)) {
                waiting.push(Waiting {
                    pod: Some(pod.key.clone()),
                    reason: format!("route {want} waits for link {dev}"),
                });
                continue;
            }
            inside.route(want, index, needs_veth);
        }
        for want in &pod.sysctls {
            if let Some(dev) = want.interface().filter(|d| absent.contains(d)) {
                waiting.push(Waiting {
                    pod: Some(pod.key.clone()),
                    reason: format!("sysctl {} waits for link {dev}", want.key.replace('/', ".")),
                });
                continue;
            }
            match state.sysctls.iter().find(|s| s.key == want.key) {
                Some(have) if have.value == want.value => {}
                have => inside.step(
                    Action::Change,
                    Object::Sysctl(want.clone()),
                    have.cloned().map(Object::Sysctl),
                    "differs",
                ),
            }
        }
        if !needs_veth {
            remove_unwanted_in_pod(pod, state, &mut inside);
        }
    }

    host.steps.append(&mut inside.steps);
    host.conflicts.append(&mut inside.conflicts);
    drafts.push(host);
    None
}

/// Inside a pod's namespace headcni owns the pod interface's addresses and
/// every route with its protocol.
fn remove_unwanted_in_pod(pod: &DesiredPod, state: &NetnsState, draft: &mut Draft) {
    let wanted_routes: FxHashSet<RouteKey> = pod.pod_routes.iter().map(Route::key).collect();
    for route in &state.routes {
        if route.is_owned() && !wanted_routes.contains(&route.key()) {
            draft.step(
                Action::Remove,
                Object::Route(route.clone()),
                None,
                "not desired",
            );
        }
    }
    for addr in &state.addresses {
        if addr.dev == pod.pod_link.name
            && !is_kernel_link_local(&addr.addr)
            && !pod.pod_addresses.contains(addr)
        {
            draft.step(
                Action::Remove,
                Object::Address(addr.clone()),
                None,
                "not desired",
            );
        }
    }
}

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
    plan.waiting
        .retain(|w| seen.insert((w.pod.clone(), w.reason.clone()), ()).is_none());
    plan.waiting
        .sort_by(|a, b| (&a.pod, &a.reason).cmp(&(&b.pod, &b.reason)));
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
