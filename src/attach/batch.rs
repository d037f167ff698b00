//! A batch of ADDs and DELs (the daemon's hand-off): one store operation,
//! one pass, each call judged as the plugin would have judged it alone.

use std::path::PathBuf;

use super::verdict;
use crate::cni::error::CniError;
use crate::cni::handoff::{Request, Wired};
use crate::engine::{self, PodScope};
use crate::model::PodKey;
use crate::spec::{PodIntent, Spec};

/// A batch's calls as they go: each settles once, in order.
type Verdicts = Vec<Option<Verdict>>;

/// What each call of a batch comes to, in order: for an ADD the wired
/// attachment, for a DEL nothing; or the error the plugin would report.
pub type Verdict = Result<Option<Wired>, CniError>;

/// A batch run: each call's verdict, in order, and the host links of DELs
/// still there (their routes removed, unless their pod was added again;
/// the daemon's next node-wide pass deletes the intent-less ones and frees
/// their addresses).
pub struct Ran {
    pub verdicts: Vec<Verdict>,
    pub retired: Vec<String>,
}

impl Ran {
    fn settled(verdicts: Verdicts) -> Ran {
        Ran {
            verdicts: settle(verdicts),
            retired: Vec::new(),
        }
    }
}

/// Stores and removes a batch's intents under one lock, wires them and
/// retires the released ones in one pass, and judges each call as the
/// plugin would have judged it alone. A DEL is answered once its pod is
/// cut off (its host routes gone: nothing routes to it, and the source
/// check, on by default, drops what it sends beyond its link; IPv6
/// link-local traffic with the node stays possible until the link goes);
/// its link is left to the daemon's next pass, so the DEL
/// does not wait for the kernel's teardown, and its address stays held
/// until the link is gone. Blocking (it drives netlink).
pub fn run(spec: &Spec, batch: &[Request]) -> Ran {
    let mut verdicts: Verdicts = batch.iter().map(|_| None).collect();
    let adds: Vec<(PodKey, PathBuf)> = batch
        .iter()
        .filter_map(|p| match p {
            Request::Add { key, netns } => Some((key.clone(), netns.clone())),
            Request::Del { .. } => None,
        })
        .collect();
    let dels: Vec<PodKey> = batch
        .iter()
        .filter_map(|p| match p {
            Request::Del { key } => Some(key.clone()),
            Request::Add { .. } => None,
        })
        .collect();
    // The daemon is told directly: its own file watch need not hear of it.
    let store = spec.pod_store().quiet();
    let started = std::time::Instant::now();
    // The pass runs while the change goes to disk; no call is answered
    // before it is there.
    let changed = store.change_and_list_flushing(&adds, &dels);
    tracing::debug!(
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch: intents changed"
    );
    let (changed, flushing) = match changed {
        Ok(changed) => changed,
        Err(e) => {
            let e = CniError::from_store(&e);
            return Ran::settled(batch_failed(&mut verdicts, &e));
        }
    };
    // What each call stands for now: an intent to wire, a link to release.
    let mut added = changed.added.into_iter();
    let mut removed = changed.removed.into_iter();
    let mut wire = Vec::new();
    let mut retire = Vec::new();
    let mut created = Vec::new();
    let mut targets: Vec<Target> = Vec::with_capacity(batch.len());
    for (p, verdict) in batch.iter().zip(verdicts.iter_mut()) {
        match p {
            Request::Add { netns, .. } => match added.next() {
                Some(Ok(a)) => match super::check_netns(&a.intent, netns) {
                    Ok(()) => {
                        wire.push(a.intent.key());
                        if a.created {
                            created.push(a.intent.clone());
                        }
                        targets.push(Target::Wire(a.intent));
                    }
                    Err(e) => {
                        *verdict = Some(Err(e));
                        targets.push(Target::Settled);
                    }
                },
                Some(Err(e)) => {
                    *verdict = Some(Err(CniError::from_store(&e)));
                    targets.push(Target::Settled);
                }
                None => targets.push(Target::Settled),
            },
            Request::Del { key } => match removed.next().flatten() {
                Some(intent) => {
                    retire.push(intent.host_link.clone());
                    targets.push(Target::Release(intent.host_link));
                }
                None => match crate::spec::unowned_host_link(key, &changed.pods) {
                    Ok(name) => {
                        retire.push(name.clone());
                        targets.push(Target::Release(name));
                    }
                    Err(owner) => {
                        tracing::info!(
                            "DEL {key}: nothing of its own; its host-link name belongs to {owner}"
                        );
                        *verdict = Some(Ok(None));
                        targets.push(Target::Settled);
                    }
                },
            },
        }
    }
    // Other pods' intents are read with these, under the same lock; this
    // scope never removes anything but the released links, so intents
    // added meanwhile by someone else are safe.
    let pods: crate::spec::Intents = changed.pods.into();
    let scope = PodScope::Pods {
        wire,
        release: Vec::new(),
        retire,
    };
    let applied = engine::apply(spec, &|| Ok(pods.clone()), &scope);
    let durable = flushing.durable();
    tracing::debug!(
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch: applied and durable"
    );
    if let Err(e) = durable {
        // Not on disk: nothing may be answered as done. What was wired
        // without an intent behind it is removed by the next pass.
        let e = CniError::from_store(&e);
        return Ran::settled(batch_failed(&mut verdicts, &e));
    }
    let applied = match applied {
        Ok(applied) => applied,
        Err(e) => {
            let e = CniError::from_engine(&e);
            undo_created(spec, &store, &created);
            return Ran::settled(batch_failed(&mut verdicts, &e));
        }
    };
    let mut failed_adds = Vec::new();
    let mut gone = Vec::new();
    let mut retired = Vec::new();
    for ((p, verdict), target) in batch.iter().zip(verdicts.iter_mut()).zip(targets) {
        if verdict.is_some() {
            continue;
        }
        *verdict = Some(match (target, p) {
            (Target::Wire(intent), _) => match verdict::wired(&applied, &intent.key()) {
                Ok(()) => Ok(Some(super::wired_links(intent, &applied.observed_after))),
                Err(e) => {
                    failed_adds.push(intent);
                    Err(e)
                }
            },
            (Target::Release(link), Request::Del { key }) => {
                let v = verdict::released(&applied, key, &link);
                let present = applied
                    .observed_after
                    .node
                    .links
                    .iter()
                    .any(|l| l.name == link);
                match (&v, present) {
                    (Ok(()), false) => gone.push(link),
                    (Ok(()), true) => retired.push(link),
                    (Err(_), _) => {}
                }
                v.map(|()| None)
            }
            (_, _) => Ok(None),
        });
    }
    // Addresses of released attachments whose links are gone are free again.
    if let Err(e) = store.release(&gone) {
        let e = CniError::from_store(&e);
        for (p, v) in batch.iter().zip(verdicts.iter_mut()) {
            if matches!(p, Request::Del { .. }) && matches!(v, Some(Ok(_))) {
                *v = Some(Err(e.clone()));
            }
        }
    }
    // A failed ADD is taken back, so that the runtime's retry starts clean.
    let failed_created: Vec<PodIntent> = failed_adds
        .into_iter()
        .filter(|i| created.iter().any(|c| c.key == i.key))
        .collect();
    undo_created(spec, &store, &failed_created);
    Ran {
        verdicts: settle(verdicts),
        retired,
    }
}

/// What a call of the batch asks of the pass.
enum Target {
    Wire(PodIntent),
    Release(String),
    /// Already answered (refused by the store).
    Settled,
}

/// Every call not yet settled fails with `e`.
fn batch_failed(verdicts: &mut Verdicts, e: &CniError) -> Verdicts {
    verdicts
        .iter_mut()
        .map(|v| Some(v.take().unwrap_or_else(|| Err(e.clone()))))
        .collect()
}

fn settle(verdicts: Verdicts) -> Vec<Verdict> {
    verdicts
        .into_iter()
        .map(|v| v.unwrap_or(Ok(None)))
        .collect()
}

/// Takes back the intents this batch created for calls that failed.
fn undo_created(spec: &Spec, store: &crate::store::PodStore, intents: &[PodIntent]) {
    for intent in intents {
        super::undo(spec, store, &intent.key(), &intent.host_link);
    }
}
