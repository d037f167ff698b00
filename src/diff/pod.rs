//! One pod attachment: its host side (veth, gateway address, route, sysctls
//! in the node namespace) and its pod side (inside its own namespace).

use rustc_hash::{FxHashMap, FxHashSet};

use super::draft::Draft;
use super::index::Index;
use super::plan::{Action, Object, Plan, PlannedLink, Waiting};
use crate::model::{
    is_kernel_link_local, Attachment, Link, Netns, NetnsState, ObservedPod, Route, RouteKey,
    Sysctl, VethPeer,
};
use crate::spec::DesiredPod;

/// One pod's plan.
pub(super) enum PodOutcome<'a> {
    /// Its namespace cannot be opened: nothing to plan, only to say.
    Unreachable(Waiting),
    /// Its steps and conflicts in one draft (a conflict skips the whole
    /// pod), and why parts of it wait.
    Planned {
        draft: Draft<'a>,
        waiting: Vec<Waiting>,
    },
}

impl PodOutcome<'_> {
    /// Nothing to do and nothing to say: the pod is as desired.
    pub fn is_empty(&self) -> bool {
        match self {
            PodOutcome::Unreachable(_) => false,
            PodOutcome::Planned { draft, waiting } => {
                waiting.is_empty() && draft.steps.is_empty() && draft.conflicts.is_empty()
            }
        }
    }

    pub fn add_to(self, plan: &mut Plan) {
        match self {
            PodOutcome::Unreachable(waiting) => plan.waiting.push(waiting),
            PodOutcome::Planned { draft, waiting } => {
                draft.add_to(plan);
                plan.waiting.extend(waiting);
            }
        }
    }
}

/// Does the node hold `pod`'s host link and host sysctls exactly as desired?
/// Then its plan made on that assumption stands: those are all that
/// [`diff_pod`] reads of the node's links and sysctls.
pub(super) fn host_side_as_desired(pod: &DesiredPod, node: &Index) -> bool {
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

/// Plans one pod against the node's index and its own namespace, if observed.
pub(super) fn diff_pod<'a>(
    pod: &'a DesiredPod,
    node: &Index,
    observed_pods: &FxHashMap<&Attachment, &'a ObservedPod>,
) -> PodOutcome<'a> {
    let pod_state = match observed_pods.get(&pod.key) {
        Some(ObservedPod { state: None, .. }) => {
            return PodOutcome::Unreachable(Waiting {
                attachment: Some(pod.key.clone()),
                reason: format!("netns {} cannot be opened", pod.netns_path.display()),
            })
        }
        Some(ObservedPod {
            state: Some(state), ..
        }) => Some(state),
        None => None, // not observed: plan the host side only
    };
    let pod_index = pod_state.map(Index::new);
    let pod_link = pod_index
        .as_ref()
        .and_then(|i| i.links.get(pod.pod_link.name.as_str()).copied());

    let mut host = Draft::new(Netns::Node, Some(&pod.key));
    // Only a pod whose namespace was observed gets steps inside it.
    let mut inside = Draft::new(
        match pod_state {
            Some(_) => Netns::Attached {
                to: pod.key.clone(),
                path: pod.netns_path.clone(),
            },
            None => Netns::Node,
        },
        Some(&pod.key),
    );
    let needs_veth = plan_veth(pod, node, pod_index.is_some(), pod_link, &mut host);
    if needs_veth {
        if let Some(foreign) = pod_link {
            inside.conflict(
                Object::Link(PlannedLink::state(pod.pod_link.clone())),
                Object::Link(PlannedLink::state(foreign.clone())),
                "a link with the pod's interface name already exists in its namespace",
            );
        }
    }
    host_side(pod, node, needs_veth, &mut host);
    let mut waiting = Vec::new();
    if let (Some(state), Some(index)) = (pod_state, &pod_index) {
        if let (false, Some(have)) = (needs_veth, pod_link) {
            inside.link_state(&pod.pod_link, have);
        }
        pod_side(pod, state, index, needs_veth, &mut inside, &mut waiting);
    }
    host.absorb(inside);
    PodOutcome::Planned {
        draft: host,
        waiting,
    }
}

/// Plans the veth pair: kept (its state set), or (re)made. Returns whether
/// it is made anew, which makes everything on it new too.
fn plan_veth(
    pod: &DesiredPod,
    node: &Index,
    pod_observed: bool,
    pod_link: Option<&Link>,
    host: &mut Draft,
) -> bool {
    let replace = |host: &mut Draft, have: &Link, reason| {
        host.step(
            Action::Remove,
            Object::Link(PlannedLink::state(have.clone())),
            None,
            reason,
        );
    };
    let needs_veth = match node.links.get(pod.host_link.name.as_str()).copied() {
        None => true,
        Some(have) if have.kind.as_deref() != Some("veth") => {
            replace(host, have, "not a veth");
            true
        }
        Some(have) if pod_observed && pod_link.is_none() => {
            replace(host, have, "its pod end is missing");
            true
        }
        Some(have) => {
            host.link_state(&pod.host_link, have);
            false
        }
    };
    if needs_veth {
        let peer = VethPeer {
            ifname: pod.pod_link.name.clone(),
            netns_path: pod.netns_path.clone(),
        };
        host.step(
            Action::Add,
            Object::Link(PlannedLink::veth(pod.host_link.clone(), peer)),
            None,
            "missing",
        );
    }
    needs_veth
}

/// The gateway address, the route to the pod and the host end's sysctls.
fn host_side(pod: &DesiredPod, node: &Index, needs_veth: bool, host: &mut Draft) {
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
                Object::Sysctl(Sysctl {
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
}

/// Inside the pod's namespace: its address, routes, sysctls and the links
/// headcni configures but does not make.
fn pod_side(
    pod: &DesiredPod,
    state: &NetnsState,
    index: &Index,
    needs_veth: bool,
    inside: &mut Draft,
    waiting: &mut Vec<Waiting>,
) {
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
    let mut wait_for = |what: String, dev: &str| {
        waiting.push(Waiting {
            attachment: Some(pod.key.clone()),
            reason: format!("{what} waits for link {dev}"),
        })
    };
    for want in &pod.pod_routes {
        match want.dev.as_deref().filter(|d| absent.contains(d)) {
            Some(dev) => wait_for(format!("route {want}"), dev),
            None => inside.route(want, index, needs_veth),
        }
    }
    for want in &pod.sysctls {
        if let Some(dev) = want.interface().filter(|d| absent.contains(d)) {
            wait_for(format!("sysctl {}", want.key.replace('/', ".")), dev);
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
        remove_unwanted_in_pod(pod, state, inside);
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
