//! Executes a [`Plan`] over rtnetlink.
//!
//! Steps run in plan order. Consecutive address and route steps in one
//! namespace go out as one batch (many requests per datagram). Every step is
//! idempotent: "already exists" for an add and "not found" for a remove are
//! success, since the next verification decides. A failed step skips the
//! remaining steps of the same pod; other pods and node objects go on.

mod messages;

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::diff::{Action, Object, Plan, Step};
use crate::kernel::netlink::{Netlink, NetlinkError};
use crate::model::LINK_GROUP;
use crate::model::{Attachment, Netns, Sysctl};
use crate::observe::{link_indexes, LinkIndex};

/// One failed step and why.
#[derive(Debug)]
pub struct StepFailure {
    pub step: Step,
    pub error: StepError,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, crate::Chain(&self.error))
    }
}

/// Why a step failed. Each names what it could not do; the cause (the
/// kernel's errno, an I/O error) is its source.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot connect to rtnetlink there")]
    Connect(#[source] NetlinkError),
    #[error("cannot list the links there")]
    ListLinks(#[source] NetlinkError),
    #[error("link {0} not found")]
    NoSuchLink(String),
    #[error("a veth to add needs its pod end")]
    NoPeer,
    #[error("cannot open pod netns {}", .0.display())]
    OpenPodNetns(PathBuf, #[source] std::io::Error),
    #[error("rtnetlink request failed")]
    Kernel(#[source] NetlinkError),
    #[error("cannot write {}", .0.display())]
    Sysctl(PathBuf, #[source] std::io::Error),
    #[error("cannot enter the namespace to write a sysctl")]
    EnterForSysctl(#[source] NetlinkError),
    #[error("nftables")]
    Nft(#[source] crate::kernel::nft::NftError),
    #[error("file {}", .0.display())]
    File(PathBuf, #[source] std::io::Error),
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub failed: Vec<StepFailure>,
    /// Steps not tried because an earlier step of the same pod failed.
    pub skipped: usize,
}

/// A namespace's connection plus its link-name index, filled on first use.
struct NsConn {
    nl: Netlink,
    links: Option<FxHashMap<String, LinkIndex>>,
}

impl NsConn {
    fn index_of(&mut self, name: &str) -> Result<u32, StepError> {
        Ok(self.link(name)?.index)
    }

    fn link(&mut self, name: &str) -> Result<LinkIndex, StepError> {
        self.links()?
            .get(name)
            .copied()
            .ok_or_else(|| StepError::NoSuchLink(name.to_string()))
    }

    fn links(&mut self) -> Result<&FxHashMap<String, LinkIndex>, StepError> {
        if self.links.is_none() {
            let state = link_indexes(&mut self.nl).map_err(StepError::ListLinks)?;
            self.links = Some(state);
        }
        Ok(self.links.get_or_insert_default())
    }

    /// Links changed: names must be looked up again.
    fn forget_links(&mut self) {
        self.links = None;
    }
}

struct Executor {
    conns: HashMap<Option<PathBuf>, NsConn>,
    report: ApplyReport,
    failed_pods: Vec<Attachment>,
}

pub fn apply(plan: &Plan) -> ApplyReport {
    let mut exec = Executor {
        conns: HashMap::new(),
        report: ApplyReport::default(),
        failed_pods: Vec::new(),
    };
    let mut i = 0;
    while i < plan.steps.len() {
        let step = &plan.steps[i];
        if is_batchable(step) {
            let mut j = i + 1;
            while j < plan.steps.len()
                && is_batchable(&plan.steps[j])
                && plan.steps[j].netns == step.netns
                && plan.steps[j].object.rank() == step.object.rank()
            {
                j += 1;
            }
            exec.run_batch(&plan.steps[i..j]);
            i = j;
        } else if is_link_removal(step) {
            let mut j = i + 1;
            while j < plan.steps.len()
                && is_link_removal(&plan.steps[j])
                && plan.steps[j].netns == step.netns
            {
                j += 1;
            }
            exec.remove_links(&plan.steps[i..j]);
            i = j;
        } else {
            exec.run_single(step);
            i += 1;
        }
    }
    exec.report
}

fn is_link_removal(step: &Step) -> bool {
    step.action == Action::Remove && matches!(step.object, Object::Link(_))
}

fn is_batchable(step: &Step) -> bool {
    matches!(
        step.object,
        Object::Route(_) | Object::Address(_) | Object::Rule(_)
    )
}

fn netns_path(netns: &Netns) -> Option<PathBuf> {
    match netns {
        Netns::Node => None,
        Netns::Attached { path, .. } => Some(path.clone()),
    }
}

impl Executor {
    fn blocked(&self, step: &Step) -> bool {
        step.attachment
            .as_ref()
            .is_some_and(|p| self.failed_pods.contains(p))
    }

    fn fail(&mut self, step: &Step, error: StepError) {
        if let Some(pod) = &step.attachment {
            if !self.failed_pods.contains(pod) {
                self.failed_pods.push(pod.clone());
            }
        }
        self.report.failed.push(StepFailure {
            step: step.clone(),
            error,
        });
    }

    fn conn(&mut self, netns: &Netns) -> Result<&mut NsConn, StepError> {
        self.conn_at(netns_path(netns))
    }

    /// The connection into the namespace at `key` (None: the node's).
    fn conn_at(&mut self, key: Option<PathBuf>) -> Result<&mut NsConn, StepError> {
        match self.conns.entry(key) {
            Entry::Occupied(conn) => Ok(conn.into_mut()),
            Entry::Vacant(slot) => {
                let nl = match slot.key() {
                    None => Netlink::open_current(),
                    Some(path) => Netlink::open_in(path),
                }
                .map_err(StepError::Connect)?;
                Ok(slot.insert(NsConn { nl, links: None }))
            }
        }
    }

    fn run_single(&mut self, step: &Step) {
        if self.blocked(step) {
            self.report.skipped += 1;
            return;
        }
        let result = match &step.object {
            Object::Sysctl(s) => match &step.netns {
                Netns::Node => write_sysctl(s),
                Netns::Attached { path, .. } => {
                    crate::kernel::netlink::in_netns(path, || write_sysctl(s))
                        .map_err(StepError::EnterForSysctl)
                        .and_then(|r| r)
                }
            },
            Object::Link(_) => self.link_step(step),
            Object::Nft(table) => match step.action {
                Action::Remove => crate::kernel::nft::replace(None),
                _ => crate::kernel::nft::replace(Some(table)),
            }
            .map_err(StepError::Nft),
            Object::File(file) => match step.action {
                Action::Remove => crate::kernel::files::remove(&file.path),
                _ => crate::kernel::files::write_in_place(&file.path, &file.content),
            }
            .map_err(|e| StepError::File(file.path.clone(), e)),
            _ => unreachable!("batchable steps go through run_batch"),
        };
        match result {
            Ok(()) => self.report.applied += 1,
            Err(e) => self.fail(step, e),
        }
    }

    fn link_step(&mut self, step: &Step) -> Result<(), StepError> {
        let Object::Link(link) = &step.object else {
            unreachable!("run_single sends only link steps here");
        };
        let conn = self.conn(&step.netns)?;
        let (msg, flags, ok_errno) = match step.action {
            Action::Add => {
                let peer = link.peer.as_ref().ok_or(StepError::NoPeer)?;
                let netns = File::open(&peer.netns_path)
                    .map_err(|e| StepError::OpenPodNetns(peer.netns_path.clone(), e))?;
                let msg = messages::new_veth(link, &peer.ifname, netns.as_raw_fd());
                let result = conn
                    .nl
                    .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL);
                drop(netns);
                conn.forget_links();
                accept(result, libc::EEXIST)?;
                // (EAFNOSUPPORT: a kernel without IPv6 makes no address anyway.)
                let no_ll = messages::no_kernel_link_local(&link.name);
                accept(
                    conn.nl.request(RouteNetlinkMessage::SetLink(no_ll), 0),
                    libc::EAFNOSUPPORT,
                )?;
                // The kernel refuses IFF_UP for a peer created in another
                // namespace (ENOTCONN), so the pod end is raised from inside.
                let pod_conn = self.conn_at(Some(peer.netns_path.clone()))?;
                pod_conn.forget_links();
                let up = messages::set_link_by_name(&peer.ifname, link.up);
                return accept(pod_conn.nl.request(RouteNetlinkMessage::SetLink(up), 0), 0);
            }
            Action::Change => {
                let index = conn.index_of(&link.name)?;
                (
                    RouteNetlinkMessage::SetLink(messages::set_link(index, link)),
                    0,
                    0,
                )
            }
            Action::Remove => {
                let index = match conn.index_of(&link.name) {
                    Ok(i) => i,
                    Err(_) => return Ok(()), // already gone
                };
                conn.forget_links();
                (
                    RouteNetlinkMessage::DelLink(messages::del_link(index)),
                    0,
                    libc::ENODEV,
                )
            }
        };
        accept(conn.nl.request(msg, flags), ok_errno)
    }

    /// Link removals in one namespace. Deleting a veth waits for an RCU
    /// grace period, and one at a time those waits add up (about 10 ms a
    /// link); moved into headcni's group and deleted by group, many links
    /// share one. Fewer than two, or a group that holds anything else, and
    /// they go one at a time.
    fn remove_links(&mut self, steps: &[Step]) {
        let mut present: Vec<(&Step, u32)> = Vec::new();
        for step in steps {
            if self.blocked(step) {
                self.report.skipped += 1;
                continue;
            }
            let Object::Link(link) = &step.object else {
                unreachable!("only link removals come here");
            };
            let found = self.conn(&step.netns).and_then(|c| c.link(&link.name));
            match found {
                Ok(l) => present.push((step, l.index)),
                Err(StepError::NoSuchLink(_)) => self.report.applied += 1, // already gone
                Err(e) => self.fail(step, e),
            }
        }
        let by_group = present.len() >= 2
            && self.conn(&steps[0].netns).is_ok_and(|conn| {
                conn.links.as_ref().is_some_and(|links| {
                    links.values().all(|l| {
                        l.group != LINK_GROUP || present.iter().any(|(_, i)| *i == l.index)
                    })
                })
            });
        if !by_group {
            for (step, _) in present {
                self.run_single(step);
            }
            return;
        }
        let Ok(conn) = self.conn(&steps[0].netns) else {
            return;
        };
        let moves = present
            .iter()
            .map(|(_, index)| {
                let msg = messages::set_link_group(*index, LINK_GROUP);
                (RouteNetlinkMessage::SetLink(msg), 0)
            })
            .collect();
        let moved = conn.nl.batch(moves);
        conn.forget_links();
        let mut grouped = Vec::new();
        let mut one_by_one = Vec::new();
        for ((step, index), result) in present.into_iter().zip(moved) {
            match accept(result, libc::ENODEV) {
                Ok(()) => grouped.push((step, index)),
                Err(_) => one_by_one.push(step),
            }
        }
        let deleted = conn.nl.request(
            RouteNetlinkMessage::DelLink(messages::del_link_group(LINK_GROUP)),
            0,
        );
        match accept(deleted, libc::ENODEV) {
            Ok(()) => self.report.applied += grouped.len(),
            Err(e) => {
                tracing::debug!(
                    "deleting links by group: {}; one at a time",
                    crate::Chain(&e)
                );
                one_by_one.extend(grouped.into_iter().map(|(step, _)| step));
            }
        }
        for step in one_by_one {
            self.run_single(step);
        }
    }

    fn run_batch(&mut self, steps: &[Step]) {
        let mut requests = Vec::with_capacity(steps.len());
        let mut sent: Vec<(&Step, i32)> = Vec::with_capacity(steps.len());
        let failed_pods = self.failed_pods.clone();
        let conn = match self.conn(&steps[0].netns) {
            Ok(c) => c,
            Err(e) => {
                // The first step carries the cause; the rest could not be tried.
                let mut cause = Some(e);
                for step in steps {
                    match cause.take() {
                        Some(e) => self.fail(step, e),
                        None => self.fail(step, StepError::Kernel(NetlinkError::Unanswered)),
                    }
                }
                return;
            }
        };
        let mut early: Vec<(&Step, Settled)> = Vec::new();
        for step in steps {
            if step
                .attachment
                .as_ref()
                .is_some_and(|p| failed_pods.contains(p))
            {
                early.push((step, Settled::Skipped));
                continue;
            }
            match request_for(conn, step) {
                Ok(Some((msg, flags, ok_errno))) => {
                    requests.push((msg, flags));
                    sent.push((step, ok_errno));
                }
                Ok(None) => early.push((step, Settled::AlreadySo)),
                Err(e) => early.push((step, Settled::Failed(e))),
            }
        }
        let results = conn.nl.batch(requests);
        for (step, settled) in early {
            match settled {
                Settled::Skipped => self.report.skipped += 1,
                Settled::Failed(e) => self.fail(step, e),
                Settled::AlreadySo => self.report.applied += 1,
            }
        }
        for ((step, ok_errno), result) in sent.into_iter().zip(results) {
            match accept(result, ok_errno) {
                Ok(()) => self.report.applied += 1,
                Err(e) => self.fail(step, e),
            }
        }
    }
}

type Request = (RouteNetlinkMessage, u16, i32);

/// A batched step settled before the batch is sent.
enum Settled {
    /// The kernel already holds what the step asks (its device is gone
    /// with what it removes).
    AlreadySo,
    /// An earlier step of the same attachment failed.
    Skipped,
    Failed(StepError),
}

/// The request for an address or route step, with the errno that means
/// "already so"; None when the kernel has nothing left to do.
fn request_for(conn: &mut NsConn, step: &Step) -> Result<Option<Request>, StepError> {
    match (&step.object, step.action) {
        (Object::Address(a), action) => {
            let index = match (conn.index_of(&a.dev), action) {
                (Ok(i), _) => i,
                (Err(_), Action::Remove) => return Ok(None),
                (Err(e), _) => return Err(e),
            };
            let msg = messages::address(index, a);
            Ok(Some(match action {
                Action::Remove => (RouteNetlinkMessage::DelAddress(msg), 0, libc::EADDRNOTAVAIL),
                _ => (
                    RouteNetlinkMessage::NewAddress(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    libc::EEXIST,
                ),
            }))
        }
        (Object::Route(r), action) => {
            let oif = match &r.dev {
                None => None,
                Some(dev) => match (conn.index_of(dev), action) {
                    (Ok(i), _) => Some(i),
                    // The device is gone and took the route with it.
                    (Err(_), Action::Remove) => return Ok(None),
                    (Err(e), _) => return Err(e),
                },
            };
            let msg = messages::route(r, oif);
            Ok(Some(match action {
                Action::Add => (
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    libc::EEXIST,
                ),
                Action::Change => (
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    0,
                ),
                Action::Remove => (RouteNetlinkMessage::DelRoute(msg), 0, libc::ESRCH),
            }))
        }
        (Object::Rule(rule), action) => {
            let msg = messages::rule(rule);
            Ok(Some(match action {
                Action::Remove => (RouteNetlinkMessage::DelRule(msg), 0, libc::ENOENT),
                _ => (
                    RouteNetlinkMessage::NewRule(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    libc::EEXIST,
                ),
            }))
        }
        _ => unreachable!("only address, route and rule steps are batched"),
    }
}

fn accept(result: Result<(), NetlinkError>, ok_errno: i32) -> Result<(), StepError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if ok_errno != 0 && e.errno() == Some(ok_errno) => Ok(()),
        // ENOENT also means "already gone" for deletes on some kernels.
        Err(e) if ok_errno == libc::ESRCH && e.errno() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(StepError::Kernel(e)),
    }
}

fn write_sysctl(s: &Sysctl) -> Result<(), StepError> {
    crate::kernel::sysctl::write(&s.key, &s.value.to_string())
        .map_err(|(path, e)| StepError::Sysctl(path, e))
}
