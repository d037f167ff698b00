//! Node-wide objects: sysctls, node routes, the nftables table, rules and
//! the files headcni keeps.

use rustc_hash::FxHashSet;

use super::draft::Draft;
use super::index::Index;
use super::plan::{Action, Conflict, Object, Plan, Waiting};
use crate::model::{Netns, NftTable, Observed, Route, Rule, Sysctl, RTPROT_HEADCNI, TABLE_MAIN};
use crate::spec::Desired;

/// The tailnet interface, if it carries the node's own default route: a
/// spec naming the uplink as tailnet interface would move tailnet traffic
/// onto it, loosen its reverse-path filter and clamp its MSS.
fn uplinks_among_required<'a>(desired: &'a Desired, observed: &Observed) -> Vec<&'a str> {
    let default =
        |r: &&Route| r.table == TABLE_MAIN && r.dst.prefix() == 0 && r.protocol != RTPROT_HEADCNI;
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
pub(super) fn node_wide(desired: &Desired, observed: &Observed, node: &Index, plan: &mut Plan) {
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
        plan.conflicts.append(&mut one.conflicts);
        node_draft.steps.append(&mut one.steps);
    }
    // The nftables table: one object, compared rule by rule (ignoring counters and wording).
    let same_table = |a: &NftTable, b: &NftTable| {
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
