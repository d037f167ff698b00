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
    is_kernel_link_local, is_owned_link_name, Address, Attachment, Link, Netns, NetnsState, Route,
    RouteKey, Rule, Sysctl,
};
use crate::model::{Observed, ObservedPod};
use crate::spec::{Desired, DesiredPod};

/// Kernel state of one namespace, indexed for lookups.
struct Index<'a> {
    links: FxHashMap<&'a str, &'a Link>,
    /// Sysctl values by key (the node's: forwarding, per-link rp_filter).
    sysctls: FxHashMap<&'a str, &'a str>,
    addresses: FxHashSet<(&'a str, IpNetwork)>,
    owned_routes: FxHashMap<RouteKey, &'a Route>,
    /// Foreign routes by (table, destination): anything there blocks ours.
    foreign_routes: FxHashMap<(u32, IpNetwork), &'a Route>,
}

impl<'a> Index<'a> {
    fn new(state: &'a NetnsState) -> Self {
        let mut index = Self::without_links(state);
        index.set_links(&state.links, &state.sysctls);
        index
    }

    /// Addresses and routes only; links and sysctls come with [`Index::set_links`].
    fn without_links(state: &'a NetnsState) -> Self {
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
            links: FxHashMap::default(),
            sysctls: FxHashMap::default(),
            addresses: state
                .addresses
                .iter()
                .map(|a| (a.dev.as_str(), a.addr))
                .collect(),
            owned_routes,
            foreign_routes,
        }
    }

    /// Replaces the links and sysctls, keeping the maps' room: the second
    /// stage then allocates nothing large (with glibc, a large allocation
    /// after many frees first consolidates every free chunk: milliseconds).
    fn set_links(
        &mut self,
        links: impl IntoIterator<Item = &'a Link>,
        sysctls: impl IntoIterator<Item = &'a Sysctl>,
    ) {
        self.links.clear();
        self.links
            .extend(links.into_iter().map(|l| (l.name.as_str(), l)));
        self.sysctls.clear();
        self.sysctls.extend(
            sysctls
                .into_iter()
                .map(|s| (s.key.as_str(), s.value.as_str())),
        );
    }
}

/// Steps for one owner, collected before they are known to be conflict-free.
struct Draft<'a> {
    netns: Netns,
    attachment: Option<&'a Attachment>,
    steps: Vec<Step>,
    conflicts: Vec<Conflict>,
}

impl<'a> Draft<'a> {
    fn new(netns: Netns, attachment: Option<&'a Attachment>) -> Self {
        Draft {
            netns,
            attachment,
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
            attachment: self.attachment.cloned(),
            reason: reason.into(),
        });
    }

    fn conflict(&mut self, desired: Object, found: Object, reason: impl Into<String>) {
        self.conflicts.push(Conflict {
            netns: self.netns.clone(),
            attachment: self.attachment.cloned(),
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

    /// Its steps into `plan`, or, if anything is in the way, its conflicts instead.
    fn add_to(self, plan: &mut Plan) {
        if self.conflicts.is_empty() {
            plan.steps.extend(self.steps);
        } else {
            plan.conflicts.extend(self.conflicts);
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

/// The plan that takes the kernel from `observed` to `desired`.
pub fn diff(desired: &Desired, observed: &Observed) -> Plan {
    Early::exact(desired, observed).finish(&observed.node.links, &observed.node.sysctls)
}

/// A diff in two stages, so that its bulk can run while the kernel is still
/// listing the node's links (by far its slowest dump; see the engine).
///
/// [`Early::new`] sees everything but the node's links and their sysctls,
/// and plans each pod assuming its host link and host sysctls are as
/// desired. [`Early::finish`] gets the links, checks that assumption pod by
/// pod, plans again every pod where it does not hold, and adds what depends
/// on links (node-wide objects, stale links). The result is exactly
/// [`diff`]'s (a property test holds them equal).
pub struct Early<'a> {
    desired: &'a Desired,
    observed: &'a Observed,
    observed_pods: FxHashMap<&'a Attachment, &'a ObservedPod>,
    node: Index<'a>,
    kept: Kept<'a>,
    /// One per desired pod, in order (None in it: nothing to do for that
    /// pod); None: plan every pod in `finish`.
    pods: Option<Vec<Option<Box<PodOutcome<'a>>>>>,
    /// Owned routes and addresses no pod wants (before links are known).
    stale_routes: Vec<&'a Route>,
    stale_addresses: Vec<&'a Address>,
}

/// What every desired pod and node route keeps: never removed as stale.
struct Kept<'a> {
    links: FxHashSet<&'a str>,
    routes: FxHashSet<RouteKey>,
    addresses: FxHashSet<(&'a str, IpNetwork)>,
}

impl<'a> Kept<'a> {
    fn new(desired: &'a Desired) -> Self {
        let n = desired.pods.len();
        let mut kept = Kept {
            links: FxHashSet::with_capacity_and_hasher(n, Default::default()),
            routes: FxHashSet::with_capacity_and_hasher(
                n + desired.node_routes.len(),
                Default::default(),
            ),
            addresses: FxHashSet::with_capacity_and_hasher(n, Default::default()),
        };
        kept.routes
            .extend(desired.node_routes.iter().map(Route::key));
        for pod in &desired.pods {
            kept.links.insert(pod.host_link.name.as_str());
            kept.routes.extend(pod.host_routes.iter().map(Route::key));
            kept.addresses
                .extend(pod.host_addresses.iter().map(|a| (a.dev.as_str(), a.addr)));
        }
        kept
    }
}

/// One pod's plan: its draft (None when it cannot be planned at all) and why
/// parts of it wait.
struct PodOutcome<'a> {
    draft: Option<Draft<'a>>,
    waiting: Vec<Waiting>,
}

impl<'a> PodOutcome<'a> {
    /// Boxed when there is anything in it: on a converged node nearly every
    /// pod has nothing, and 10,000 full outcomes are megabytes to move.
    fn boxed(self) -> Option<Box<PodOutcome<'a>>> {
        let empty = self.waiting.is_empty()
            && self
                .draft
                .as_ref()
                .is_none_or(|d| d.steps.is_empty() && d.conflicts.is_empty());
        (!empty).then(|| Box::new(self))
    }

    fn add_to(self, plan: &mut Plan) {
        if let Some(draft) = self.draft {
            draft.add_to(plan);
        }
        plan.waiting.extend(self.waiting);
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
        let pods = desired
            .pods
            .iter()
            .map(|pod| diff_pod(pod, &early.node, &early.observed_pods).boxed())
            .collect();
        early.pods = Some(pods);
        early
    }

    /// Stage one without assumptions: every pod is planned in `finish`.
    fn exact(desired: &'a Desired, observed: &'a Observed) -> Self {
        let kept = Kept::new(desired);
        let stale_routes = observed
            .node
            .routes
            .iter()
            .filter(|r| r.is_owned() && !kept.routes.contains(&r.key()))
            .collect();
        let stale_addresses = observed
            .node
            .addresses
            .iter()
            .filter(|a| {
                is_owned_link_name(&a.dev)
                    && !is_kernel_link_local(&a.addr)
                    && !kept.addresses.contains(&(a.dev.as_str(), a.addr))
            })
            .collect();
        Early {
            desired,
            observed,
            observed_pods: observed.pods.iter().map(|p| (&p.key, p)).collect(),
            node: Index::without_links(&observed.node),
            kept,
            pods: None,
            stale_routes,
            stale_addresses,
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
            stale_routes,
            stale_addresses,
        } = self;
        node.set_links(links, sysctls);
        let mut plan = Plan::default();
        node_wide(desired, observed, &node, &mut plan);

        // Pods. Host links and routes of every desired pod are kept, even of
        // pods skipped here: skipping must never turn into removing.
        let mut early = pods.map(Vec::into_iter);
        for pod in &desired.pods {
            let planned = early.as_mut().and_then(Iterator::next);
            match planned {
                Some(outcome) if host_side_as_desired(pod, &node) => {
                    if let Some(outcome) = outcome {
                        outcome.add_to(&mut plan);
                    }
                }
                _ => diff_pod(pod, &node, &observed_pods).add_to(&mut plan),
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
        for link in links {
            if is_owned_link_name(&link.name) && !kept.links.contains(link.name.as_str()) {
                removed_links.insert(link.name.as_str());
                removal.step(
                    Action::Remove,
                    Object::Link(link.clone()),
                    None,
                    "no pod wants it",
                );
            }
        }
        // What hangs off a removed link goes with it.
        let gone_with_link = |dev: &str| removed_links.contains(dev);
        for route in stale_routes {
            if !route.dev.as_deref().is_some_and(gone_with_link) {
                removal.step(
                    Action::Remove,
                    Object::Route(route.clone()),
                    None,
                    "not desired",
                );
            }
        }
        for addr in stale_addresses {
            if !gone_with_link(&addr.dev) {
                removal.step(
                    Action::Remove,
                    Object::Address(addr.clone()),
                    None,
                    "not desired",
                );
            }
        }
        removal.add_to(&mut plan);
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

/// Does the node hold `pod`'s host link and host sysctls exactly as desired?
/// Then its plan made on that assumption stands: those are all that
/// [`diff_pod`] reads of the node's links and sysctls.
fn host_side_as_desired(pod: &DesiredPod, node: &Index) -> bool {
    let want = &pod.host_link;
    let link_ok = node.links.get(want.name.as_str()).is_some_and(|have| {
        have.kind.as_deref() == Some("veth")
            && want.kind.as_deref() == Some("veth")
            && have.mtu == want.mtu
            && have.up == want.up
    });
    link_ok
        && pod
            .host_sysctls
            .iter()
            .all(|s| node.sysctls.get(s.key.as_str()) == Some(&s.value.as_str()))
}

/// The tailnet interface, if it carries the node's own default route: a
/// spec naming the uplink as tailnet interface would move tailnet traffic
/// onto it, loosen its reverse-path filter and clamp its MSS.
fn uplinks_among_required<'a>(desired: &'a Desired, observed: &Observed) -> Vec<&'a str> {
    let default = |r: &&crate::model::Route| {
        r.table == crate::model::TABLE_MAIN
            && r.dst.prefix() == 0
            && r.protocol != crate::model::RTPROT_HEADCNI
    };
    desired
        .tailnet_link
        .iter()
        .map(String::as_str)
        .filter(|link| {
            observed
                .node
                .routes
                .iter()
                .filter(default)
                .any(|r| r.dev.as_deref() == Some(*link))
        })
        .collect()
}

fn uplink_reason(dev: &str) -> String {
    format!("link {dev} carries the node's default route; it is the uplink, not a tailnet interface (tailnet.interface in the spec)")
}

/// Node-wide objects: sysctls, node routes, the firewall table, rules.
fn node_wide(desired: &Desired, observed: &Observed, node: &Index, plan: &mut Plan) {
    let mut node_draft = Draft::new(Netns::Node, None);
    let uplinks = uplinks_among_required(desired, observed);
    for want in &desired.node_sysctls {
        if let Some(dev) = want.interface().filter(|d| uplinks.contains(d)) {
            plan.waiting.push(Waiting {
                attachment: None,
                reason: format!(
                    "sysctl {} refused: {}",
                    want.key.replace('/', "."),
                    uplink_reason(dev)
                ),
            });
            continue;
        }
        if let Some(dev) = want.interface() {
            if !node.links.contains_key(dev) {
                plan.waiting.push(Waiting {
                    attachment: None,
                    reason: format!("sysctl {} waits for link {dev}", want.key.replace('/', ".")),
                });
                continue;
            }
        }
        match node.sysctls.get(want.key.as_str()) {
            Some(have) if *have == want.value => {}
            Some(have) => node_draft.step(
                Action::Change,
                Object::Sysctl(want.clone()),
                Some(Object::Sysctl(Sysctl {
                    key: want.key.clone(),
                    value: (*have).to_string(),
                })),
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
                _ if uplinks.contains(&dev.as_str()) => {
                    Some(format!("route {want} refused: {}", uplink_reason(dev)))
                }
                None => Some(format!("route {want} waits for link {dev}")),
                Some(link) if !link.up => {
                    Some(format!("route {want} waits for link {dev} to come up"))
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                plan.waiting.push(Waiting {
                    attachment: None,
                    reason,
                });
                continue;
            }
        }
        // Node objects are independent: a conflict blocks only its own route.
        let mut one = Draft::new(Netns::Node, None);
        one.route(want, node, false);
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
    // Unread (a CNI pass): unknown, so neither added nor removed.
    if let (Some(dev), Some(_)) = (uplinks.first(), &desired.nft) {
        plan.waiting.push(Waiting {
            attachment: None,
            reason: format!("nft table inet headcni refused: {}", uplink_reason(dev)),
        });
    } else if !observed.node.nft_unread {
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
    }
    diff_files(desired, observed, &mut node_draft, plan);
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
    node_draft.add_to(plan);
}

/// Files headcni keeps whole: written when missing or different, removed
/// when no longer desired. One without headcni's mark is someone else's: a
/// conflict, never overwritten.
fn diff_files(desired: &Desired, observed: &Observed, draft: &mut Draft, plan: &mut Plan) {
    let held = |path: &std::path::Path| observed.node.files.iter().find(|f| f.path == path);
    for want in &desired.files {
        match held(&want.path) {
            None => draft.step(Action::Add, Object::File(want.clone()), None, "missing"),
            Some(have) if !have.is_owned() => plan.conflicts.push(Conflict {
                netns: Netns::Node,
                attachment: None,
                desired: Object::File(want.clone()),
                found: Object::File(have.clone()),
                reason: "a file headcni did not write is at that path".into(),
            }),
            Some(have) if have.content != want.content => draft.step(
                Action::Change,
                Object::File(want.clone()),
                Some(Object::File(have.clone())),
                "differs",
            ),
            Some(_) => {}
        }
    }
    for have in &observed.node.files {
        if have.is_owned() && !desired.files.iter().any(|w| w.path == have.path) {
            draft.step(
                Action::Remove,
                Object::File(have.clone()),
                None,
                "not desired",
            );
        }
    }
}

/// A link as the kernel holds it: no peer (that is only desired state). A
/// removal names it so whether `have` came from a dump or from [`Early`]'s
/// assumption.
fn as_held(have: &Link) -> Link {
    Link {
        peer: None,
        ..have.clone()
    }
}

/// Plans one pod; its steps and conflicts go into one draft so that a
/// conflict skips the whole pod.
fn diff_pod<'a>(
    pod: &'a DesiredPod,
    node: &Index,
    observed_pods: &FxHashMap<&Attachment, &'a ObservedPod>,
) -> PodOutcome<'a> {
    let mut waiting = Vec::new();
    let observed_pod = observed_pods.get(&pod.key);
    let pod_state = match observed_pod {
        Some(o) => match &o.state {
            Some(state) => Some(state),
            None => {
                waiting.push(Waiting {
                    attachment: Some(pod.key.clone()),
                    reason: format!("netns {} cannot be opened", pod.netns_path.display()),
                });
                return PodOutcome {
                    draft: None,
                    waiting,
                };
            }
        },
        None => None, // not observed: plan the host side only
    };
    let pod_index = pod_state.map(Index::new);

    let mut host = Draft::new(Netns::Node, Some(&pod.key));
    // Only a pod whose namespace was observed gets steps inside it.
    let pod_netns = || Netns::Attached {
        to: pod.key.clone(),
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
                Object::Link(as_held(have)),
                None,
                "not a veth",
            );
            true
        }
        Some(have) if pod_index.is_some() && pod_link.is_none() => {
            host.step(
                Action::Remove,
                Object::Link(as_held(have)),
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
            node.sysctls.get(want.key.as_str()).copied()
        };
        if have != Some(want.value.as_str()) {
            let before = have.map(|v| {
                Object::Sysctl(crate::model::Sysctl {
                    key: want.key.clone(),
                    value: v.to_string(),
                })
            });
            // A sysctl of a veth about to be made is part of making it.
            let (action, reason) = if needs_veth {
                (Action::Add, "with its link")
            } else {
                (Action::Change, "differs")
            };
            host.step(action, Object::Sysctl(want.clone()), before, reason);
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
                    attachment: Some(pod.key.clone()),
                    reason: format!("route {want} waits for link {dev}"),
                });
                continue;
            }
            inside.route(want, index, needs_veth);
        }
        for want in &pod.sysctls {
            if let Some(dev) = want.interface().filter(|d| absent.contains(d)) {
                waiting.push(Waiting {
                    attachment: Some(pod.key.clone()),
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
    PodOutcome {
        draft: Some(host),
        waiting,
    }
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
    plan.waiting.retain(|w| {
        seen.insert((w.attachment.clone(), w.reason.clone()), ())
            .is_none()
    });
    plan.waiting
        .sort_by(|a, b| (&a.attachment, &a.reason).cmp(&(&b.attachment, &b.reason)));
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
