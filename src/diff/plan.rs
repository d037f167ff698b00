//! The plan: ordered steps, plus what could not be planned and why.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{
    protocol_name, Address, Attachment, Link, Netns, PodKey, Route, Rule, Sysctl, VethPeer,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Add,
    Change,
    Remove,
}

impl Action {
    pub fn sigil(self) -> char {
        match self {
            Action::Add => '+',
            Action::Change => '~',
            Action::Remove => '-',
        }
    }
}

/// A link as a step acts on it: its state, and for a veth headcni creates,
/// where the pod end goes. That is creation data: never observed, never
/// compared, so it lives here and not in [`Link`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlannedLink {
    #[serde(flatten)]
    pub link: Link,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<VethPeer>,
}

impl PlannedLink {
    /// A link as it is or must be, nothing to create.
    pub fn state(link: Link) -> Self {
        PlannedLink { link, peer: None }
    }

    /// A veth to create, its pod end going to `peer`.
    pub fn veth(link: Link, peer: VethPeer) -> Self {
        PlannedLink {
            link,
            peer: Some(peer),
        }
    }
}

impl std::ops::Deref for PlannedLink {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.link
    }
}

/// A kernel object a step acts on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Object {
    Sysctl(Sysctl),
    Link(PlannedLink),
    Address(Address),
    Route(Route),
    Rule(Rule),
    /// The whole `inet headcni` table: replaced atomically, shown rule by rule.
    Nft(crate::model::NftTable),
    /// A file headcni keeps whole (the tailnet namespace's resolv.conf).
    File(crate::model::ManagedFile),
}

impl Object {
    /// A link's state as an object (nothing to create).
    pub fn link(link: Link) -> Object {
        Object::Link(PlannedLink::state(link))
    }

    /// Links before addresses before routes; sysctls first of all.
    pub fn rank(&self) -> u8 {
        match self {
            // An interface's sysctl needs its interface: after links.
            Object::Sysctl(s) if s.interface().is_some() => 2,
            Object::Sysctl(_) => 0,
            Object::Link(_) => 1,
            Object::Address(_) => 2,
            Object::Route(_) => 3,
            Object::Rule(_) => 4,
            Object::Nft(_) => 5,
            Object::File(_) => 5,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Object::Sysctl(_) => "sysctl",
            Object::Link(_) => "link",
            Object::Address(_) => "address",
            Object::Route(_) => "route",
            Object::Rule(_) => "rule",
            Object::Nft(_) => "nft",
            Object::File(_) => "file",
        }
    }
}

/// One field that differs between what is and what should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub desired: String,
    pub observed: String,
}

impl Object {
    /// A stable identifier: what the kernel keys the object by.
    pub fn key(&self) -> String {
        match self {
            Object::Sysctl(s) => format!("sysctl {}", s.key.replace('/', ".")),
            Object::Link(l) => format!("link {}", l.name),
            Object::Address(a) => format!("address {} dev {}", a.addr, a.dev),
            Object::Route(r) => format!("route {} table {} metric {}", r.dst, r.table, r.metric),
            Object::Rule(r) => format!("rule {} table {}", r.priority, r.table),
            Object::Nft(_) => format!("nft table inet {}", crate::model::NFT_TABLE),
            Object::File(file) => format!("file {}", file.path.display()),
        }
    }

    /// The object as a line of state, without creation-only details (a veth's peer).
    pub fn state_line(&self) -> String {
        match self {
            Object::Link(l) => format!("link {}", l.link),
            other => other.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub action: Action,
    pub netns: Netns,
    /// For Add and Change the object as it must be; for Remove, as it is.
    pub object: Object,
    /// For Change: the object as observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Object>,
    /// The attachment (pod or tailnet namespace) this step serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    pub reason: String,
}

/// A foreign object in the way of a desired one. headcni never touches it;
/// the pod (or node object) it blocks is skipped until someone resolves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub netns: Netns,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    pub desired: Object,
    pub found: Object,
    pub reason: String,
}

/// Something that cannot be done yet because a precondition is missing
/// (the tailnet interface is absent, a pod's netns is gone, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub conflicts: Vec<Conflict>,
    pub waiting: Vec<Waiting>,
    /// Pod intents the spec cannot honour (from `Desired::problems`).
    pub problems: Vec<Waiting>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
    pub conflicts: usize,
    pub waiting: usize,
}

impl Step {
    /// Namespace plus object key: unique within a plan.
    pub fn key(&self) -> String {
        format!("{}: {}", self.netns, self.object.key())
    }

    /// Each mismatch: the field, the desired value and the observed value.
    pub fn changes(&self) -> Vec<FieldChange> {
        let change = |field: &str, desired: String, observed: String| FieldChange {
            field: field.into(),
            desired,
            observed,
        };
        match (self.action, &self.before, &self.object) {
            (Action::Add, _, object) => {
                vec![change("present", object.state_line(), "absent".into())]
            }
            (Action::Remove, _, object) => {
                vec![change("present", "absent".into(), object.state_line())]
            }
            (Action::Change, Some(Object::Link(old)), Object::Link(new)) => {
                let mut out = Vec::new();
                if old.mtu != new.mtu {
                    out.push(change("mtu", new.mtu.to_string(), old.mtu.to_string()));
                }
                if old.up != new.up {
                    let state = |up: bool| if up { "up" } else { "down" }.to_string();
                    out.push(change("state", state(new.up), state(old.up)));
                }
                out
            }
            (Action::Change, Some(Object::Route(old)), Object::Route(new)) => {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
                let mut out = Vec::new();
                if old.kind != new.kind {
                    out.push(change(
                        "type",
                        new.kind.name().into(),
                        old.kind.name().into(),
                    ));
                }
                if old.via != new.via {
                    out.push(change(
                        "via",
                        opt(new.via.map(|v| v.to_string())),
                        opt(old.via.map(|v| v.to_string())),
                    ));
                }
                if new.dev.is_some() && old.dev != new.dev {
                    out.push(change("dev", opt(new.dev.clone()), opt(old.dev.clone())));
                }
                if old.scope != new.scope {
                    out.push(change(
                        "scope",
                        format!("{:?}", new.scope).to_lowercase(),
                        format!("{:?}", old.scope).to_lowercase(),
                    ));
                }
                if old.protocol != new.protocol {
                    out.push(change(
                        "protocol",
                        protocol_name(new.protocol),
                        protocol_name(old.protocol),
                    ));
                }
                out
            }
            (Action::Change, Some(Object::Sysctl(old)), Object::Sysctl(new)) => {
                vec![change("value", new.value.clone(), old.value.clone())]
            }
            (Action::Change, None, Object::Sysctl(new)) => {
                vec![change("value", new.value.clone(), "unreadable".into())]
            }
            (Action::Change, Some(Object::File(old)), Object::File(new)) => {
                let lines = |f: &crate::model::ManagedFile| {
                    f.meaningful_lines().collect::<Vec<_>>().join("; ")
                };
                vec![change("content", lines(new), lines(old))]
            }
            (Action::Change, _, object) => {
                vec![change("state", object.state_line(), "differs".into())]
            }
        }
    }
}

/// Rule by rule: what the table lacks and what it has too much of.
fn nft_changes(old: &crate::model::NftTable, new: &crate::model::NftTable) -> Vec<FieldChange> {
    let same = |a: &crate::model::NftRule, b: &crate::model::NftRule| {
        a.chain == b.chain && a.expr == b.expr
    };
    let mut out = Vec::new();
    for r in &new.rules {
        if !old.rules.iter().any(|o| same(o, r)) {
            out.push(FieldChange {
                field: format!("rule in {}", r.chain),
                desired: r.text.clone(),
                observed: "absent".into(),
            });
        }
    }
    for r in &old.rules {
        if !new.rules.iter().any(|n| same(n, r)) {
            out.push(FieldChange {
                field: format!("rule in {}", r.chain),
                desired: "absent".into(),
                observed: r.text.clone(),
            });
        }
    }
    if old.chains != new.chains {
        out.push(FieldChange {
            field: "chains".into(),
            desired: new
                .chains
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(","),
            observed: old
                .chains
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    if out.is_empty() {
        out.push(FieldChange {
            field: "rule order".into(),
            desired: "as planned".into(),
            observed: "differs".into(),
        });
    }
    out
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Nothing to do, nothing blocked, nothing waiting: the node is as specified.
    pub fn is_settled(&self) -> bool {
        self.steps.is_empty()
            && self.conflicts.is_empty()
            && self.waiting.is_empty()
            && self.problems.is_empty()
    }

    pub fn summary(&self) -> Summary {
        let count = |a| self.steps.iter().filter(|s| s.action == a).count();
        Summary {
            add: count(Action::Add),
            change: count(Action::Change),
            remove: count(Action::Remove),
            conflicts: self.conflicts.len(),
            waiting: self.waiting.len() + self.problems.len(),
        }
    }

    /// Only what concerns one pod attachment (plus nothing node-wide): the CNI's view.
    pub fn for_pod(&self, pod: &PodKey) -> Plan {
        self.for_pods(std::slice::from_ref(pod))
    }

    /// The part of the plan that belongs to any of `pods`.
    pub fn for_pods(&self, pods: &[PodKey]) -> Plan {
        let mine = |a: &Option<Attachment>| {
            a.as_ref()
                .and_then(Attachment::pod)
                .is_some_and(|p| pods.contains(p))
        };
        Plan {
            steps: self
                .steps
                .iter()
                .filter(|s| mine(&s.attachment))
                .cloned()
                .collect(),
            conflicts: self
                .conflicts
                .iter()
                .filter(|c| mine(&c.attachment))
                .cloned()
                .collect(),
            waiting: self
                .waiting
                .iter()
                .filter(|w| mine(&w.attachment))
                .cloned()
                .collect(),
            problems: self
                .problems
                .iter()
                .filter(|w| mine(&w.attachment))
                .cloned()
                .collect(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to add, {} to change, {} to remove",
            self.add, self.change, self.remove
        )?;
        if self.conflicts > 0 {
            write!(f, ", {} conflicts", self.conflicts)?;
        }
        if self.waiting > 0 {
            write!(f, ", {} waiting", self.waiting)?;
        }
        Ok(())
    }
}

impl fmt::Display for PlannedLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::model::write_link(f, &self.link, self.peer.as_ref())
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Sysctl(s) => write!(f, "sysctl {} = {}", s.key.replace('/', "."), s.value),
            Object::Link(l) => write!(f, "link {l}"),
            Object::Address(a) => write!(f, "address {} dev {}", a.addr, a.dev),
            Object::Route(r) => write!(f, "route {r}"),
            Object::Rule(r) => write!(f, "rule {r}"),
            Object::Nft(t) => write!(
                f,
                "nft table inet {} ({} chains, {} rules)",
                crate::model::NFT_TABLE,
                t.chains.len(),
                t.rules.len()
            ),
            Object::File(file) => write!(f, "file {}", file.path.display()),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sigil = self.action.sigil();
        match (&self.action, &self.before, &self.object) {
            (Action::Change, Some(Object::Link(old)), Object::Link(new)) => {
                write!(f, "{sigil} link {}", new.name)?;
                if old.mtu != new.mtu {
                    write!(f, " mtu {} -> {}", old.mtu, new.mtu)?;
                }
                if old.up != new.up {
                    let state = |up| if up { "up" } else { "down" };
                    write!(f, " {} -> {}", state(old.up), state(new.up))?;
                }
            }
            (Action::Change, Some(Object::Sysctl(old)), Object::Sysctl(new)) => {
                write!(
                    f,
                    "{sigil} sysctl {} {} -> {}",
                    new.key.replace('/', "."),
                    old.value,
                    new.value
                )?;
            }
            (Action::Change, Some(Object::Route(old)), Object::Route(new)) => {
                write!(f, "{sigil} route {new} (was {old})")?;
            }
            (Action::Change, Some(Object::Nft(old)), Object::Nft(new)) => {
                write!(f, "{sigil} nft table inet {}", crate::model::NFT_TABLE)?;
                for c in nft_changes(old, new) {
                    if c.observed == "absent" {
                        write!(f, "\n    + {}: {}", c.field, c.desired)?;
                    } else if c.desired == "absent" {
                        write!(f, "\n    - {}: {}", c.field, c.observed)?;
                    } else {
                        write!(f, "\n    ~ {}: {} -> {}", c.field, c.observed, c.desired)?;
                    }
                }
            }
            (Action::Add | Action::Change, before, Object::File(new)) => {
                write!(f, "{sigil} file {}", new.path.display())?;
                let old: Vec<&str> = match before {
                    Some(Object::File(old)) => old.meaningful_lines().collect(),
                    _ => Vec::new(),
                };
                let new_lines: Vec<&str> = new.meaningful_lines().collect();
                for line in old.iter().filter(|l| !new_lines.contains(l)) {
                    write!(f, "\n    - {line}")?;
                }
                for line in new_lines.iter().filter(|l| !old.contains(l)) {
                    write!(f, "\n    + {line}")?;
                }
            }
            (Action::Add, _, Object::Nft(new)) => {
                write!(f, "{sigil} nft table inet {}", crate::model::NFT_TABLE)?;
                for r in &new.rules {
                    write!(f, "\n    + rule in {}: {}", r.chain, r.text)?;
                }
            }
            _ => write!(f, "{sigil} {}", self.object)?,
        }
        if let Netns::Attached { to, .. } = &self.netns {
            write!(f, " [in {to}]")?;
        }
        Ok(())
    }
}
