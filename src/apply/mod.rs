//! Executes a [`Plan`] over rtnetlink.
//!
//! Steps run in plan order. Consecutive address and route steps in one
//! namespace go out as one batch (many requests per datagram). Every step is
//! idempotent: "already exists" for an add and "not found" for a remove are
//! success, since the next verification decides. A failed step skips the
//! remaining steps of the same pod; other pods and node objects go on.

mod messages;

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::diff::{Action, Object, Plan, Step};
use crate::model::{Attachment, Netns, Sysctl};
use crate::netlink::{Netlink, NetlinkError};
use crate::observe::link_indexes;

/// One failed step and why.
#[derive(Debug)]
pub struct StepFailure {
    pub step: Step,
    pub error: String,
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
    links: Option<FxHashMap<String, u32>>,
}

impl NsConn {
    fn index_of(&mut self, name: &str) -> Result<u32, String> {
        if self.links.is_none() {
            let state = link_indexes(&mut self.nl).map_err(|e| e.to_string())?;
            self.links = Some(state);
        }
        self.links
            .as_ref()
            .and_then(|l| l.get(name).copied())
            .ok_or_else(|| format!("link {name} not found"))
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
        } else {
            exec.run_single(step);
            i += 1;
        }
    }
    exec.report
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

    fn fail(&mut self, step: &Step, error: String) {
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

    fn conn(&mut self, netns: &Netns) -> Result<&mut NsConn, String> {
        self.conn_at(netns_path(netns))
    }

    /// The connection into the namespace at `key` (None: the node's).
    fn conn_at(&mut self, key: Option<PathBuf>) -> Result<&mut NsConn, String> {
        if !self.conns.contains_key(&key) {
            let nl = match &key {
                None => Netlink::open_current(),
                Some(path) => Netlink::open_in(path),
            }
            .map_err(|e| e.to_string())?;
            self.conns.insert(key.clone(), NsConn { nl, links: None });
        }
        self.conns
            .get_mut(&key)
            .ok_or_else(|| "connection vanished".to_string())
    }

    fn run_single(&mut self, step: &Step) {
        if self.blocked(step) {
            self.report.skipped += 1;
            return;
        }
        let result = match &step.object {
            Object::Sysctl(s) => match &step.netns {
                Netns::Node => write_sysctl(s),
                Netns::Attached { path, .. } => crate::netlink::in_netns(path, || write_sysctl(s))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r),
            },
            Object::Link(_) => self.link_step(step),
            Object::Nft(table) => match step.action {
                Action::Remove => crate::nft::replace(None),
                _ => crate::nft::replace(Some(table)),
            }
            .map_err(|e| e.to_string()),
            Object::File(file) => match step.action {
                Action::Remove => crate::files::remove(&file.path),
                _ => crate::files::write_in_place(&file.path, &file.content),
            }
            .map_err(|e| format!("{}: {e}", file.path.display())),
            _ => unreachable!("batchable steps go through run_batch"),
        };
        match result {
            Ok(()) => self.report.applied += 1,
            Err(e) => self.fail(step, e),
        }
    }

    fn link_step(&mut self, step: &Step) -> Result<(), String> {
        let Object::Link(link) = &step.object else {
            return Err("not a link".into());
        };
        let conn = self.conn(&step.netns)?;
        let (msg, flags, ok_errno) = match step.action {
            Action::Add => {
                let peer = link
                    .peer
                    .as_ref()
                    .ok_or("a link to add needs its pod end")?;
                let netns = File::open(&peer.netns_path).map_err(|e| {
                    format!("cannot open pod netns {}: {e}", peer.netns_path.display())
                })?;
                let msg = messages::new_veth(link, &peer.ifname, netns.as_raw_fd());
                let result = conn
                    .nl
                    .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL);
                drop(netns);
                conn.forget_links();
                accept(result, libc::EEXIST)?;
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

    fn run_batch(&mut self, steps: &[Step]) {
        let mut requests = Vec::with_capacity(steps.len());
        let mut sent: Vec<(&Step, i32)> = Vec::with_capacity(steps.len());
        let failed_pods = self.failed_pods.clone();
        let conn = match self.conn(&steps[0].netns) {
            Ok(c) => c,
            Err(e) => {
                for step in steps {
                    self.fail(step, e.clone());
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
    Failed(String),
}

/// The request for an address or route step, with the errno that means
/// "already so"; None when the kernel has nothing left to do.
fn request_for(conn: &mut NsConn, step: &Step) -> Result<Option<Request>, String> {
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
        _ => Err("not an address, route or rule step".into()),
    }
}

fn accept(result: Result<(), NetlinkError>, ok_errno: i32) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if ok_errno != 0 && e.errno() == Some(ok_errno) => Ok(()),
        // ENOENT also means "already gone" for deletes on some kernels.
        Err(e) if ok_errno == libc::ESRCH && e.errno() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn write_sysctl(s: &Sysctl) -> Result<(), String> {
    let path = Path::new("/proc/sys").join(&s.key);
    std::fs::write(&path, format!("{}\n", s.value))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
