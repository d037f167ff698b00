//! The attach use case: ADD, DEL, CHECK and GC of pods, one at a time (the
//! plugin without a daemon) or as a batch (the daemon's hand-off), with one
//! judgement of what an applied pass means for each call (`verdict`). The
//! CNI protocol (environment, stdin, results, error codes) stays in `cni/`;
//! the socket and its queue in `daemon/handoff.rs`.

pub mod batch;
pub mod verdict;

use std::path::Path;

use crate::cni::error::{self, CniError};
use crate::cni::handoff::Wired;
use crate::engine::{self, Applied, PodScope};
use crate::model::{Attachment, Link, Observed, PodKey};
use crate::observe;
use crate::spec::{unowned_host_link, PodIntent, Spec};
use crate::store::PodStore;

/// ADD without the daemon: store the intent, wire the pod, read its MACs.
pub fn add_here(
    spec: &Spec,
    store: &PodStore,
    key: &PodKey,
    netns: &Path,
) -> Result<Wired, CniError> {
    let added = store.add(key, netns)?;
    let intent = added.intent;
    check_netns(&intent, netns)?;
    match wire(spec, &intent) {
        Ok(applied) => Ok(wired_links(intent, &applied.observed_after)),
        Err(e) => {
            if added.created {
                undo(spec, store, key, &intent.host_link);
            }
            Err(e)
        }
    }
}

/// An attachment stored earlier in another namespace is not moved.
pub fn check_netns(intent: &PodIntent, netns: &Path) -> Result<(), CniError> {
    if intent.netns == netns {
        return Ok(());
    }
    Err(CniError::new(
        error::INVALID_ENV,
        format!(
            "CNI_NETNS: {} is already attached in {}, not {}",
            intent.key(),
            intent.netns.display(),
            netns.display()
        ),
    ))
}

/// A wired attachment with its links' hardware addresses (for the result),
/// as the pass's last observation saw them: no look-up of its own.
pub fn wired_links(intent: PodIntent, seen: &Observed) -> Wired {
    let mac = |links: &[Link], name: &str| {
        links
            .iter()
            .find(|l| l.name == name)
            .and_then(Link::mac_text)
    };
    let pod_links = seen
        .attached(&intent.attachment())
        .and_then(|p| p.state.as_ref())
        .map(|s| &s.links[..])
        .unwrap_or_default();
    Wired {
        host_mac: mac(&seen.node.links, &intent.host_link),
        pod_mac: mac(pod_links, &intent.key.ifname),
        intent,
    }
}

/// Plans and applies this pod (and node-wide additions), then verifies.
fn wire(spec: &Spec, intent: &PodIntent) -> Result<Applied, CniError> {
    let key = intent.key();
    let only_this = || Ok(vec![intent.clone()].into());
    let applied = engine::apply(spec, &only_this, &PodScope::one(key.clone()))?;
    verdict::wired(&applied, &key)?;
    Ok(applied)
}

/// Takes back what a failed ADD made, so that a retry starts clean.
pub fn undo(spec: &Spec, store: &PodStore, key: &PodKey, host_link: &str) {
    if let Err(e) = store.remove(key) {
        tracing::warn!("undo of {key}: removing its intent: {}", crate::Chain(&e));
    }
    if let Err(e) = release(spec, store, key, host_link) {
        tracing::warn!("undo of {key}: {e}");
    }
}

/// Removes a released attachment's host link here, and frees its address
/// once the link is gone.
fn release(spec: &Spec, store: &PodStore, key: &PodKey, host_link: &str) -> Result<(), CniError> {
    // With the netns gone the veth went with it and this plan is empty.
    let applied = engine::apply(
        spec,
        &|| Ok(Vec::new().into()),
        &PodScope::released(vec![host_link.to_string()]),
    )?;
    verdict::released(&applied, key, host_link)?;
    store.release(&[host_link.to_string()])?;
    Ok(())
}

/// DEL without the daemon: remove the intent, then the link, then free the address.
pub fn del_here(spec: &Spec, store: &PodStore, key: &PodKey) -> Result<(), CniError> {
    let host_link = match store.remove(key)? {
        Some(intent) => intent.host_link,
        None => match unowned_host_link(key, &store.list()?) {
            Ok(name) => name,
            Err(owner) => {
                tracing::info!(
                    "DEL {key}: nothing of its own; its host-link name belongs to {owner}"
                );
                return Ok(());
            }
        },
    };
    release(spec, store, key, &host_link)
}

/// CHECK: the attachment `intent` in `netns` is as desired, its veth
/// really joins the node to the pod, and `prev_ips` (a prevResult's
/// addresses) are its addresses.
pub fn check(
    spec: &Spec,
    intent: &PodIntent,
    netns: &Path,
    prev_ips: Option<&[String]>,
) -> Result<(), CniError> {
    let key = intent.key();
    let mismatch =
        |what: String| CniError::new(error::CHECK_MISMATCH, format!("pod {key}: {what}"));
    if !crate::cni::same_namespace(netns, &intent.netns) {
        return Err(mismatch(format!(
            "CNI_NETNS {} is not the namespace it was attached in ({})",
            netns.display(),
            intent.netns.display()
        )));
    }
    let only_this = || Ok(vec![intent.clone()].into());
    let planned = engine::plan(spec, &only_this, &PodScope::one(key.clone()))?;
    if let Some(w) = planned
        .plan
        .waiting
        .iter()
        .find(|w| w.attachment.as_ref().and_then(Attachment::pod) == Some(&key))
    {
        return Err(mismatch(w.reason.clone()));
    }
    let pod_steps = planned.plan.for_pod(&key);
    if !pod_steps.is_empty() || !pod_steps.conflicts.is_empty() {
        return Err(
            mismatch("its network differs from the desired state".into())
                .with_details(crate::report::text::plan(&pod_steps, false)),
        );
    }
    // Names alone can lie: a pod may rename its eth0 and make a veth of
    // its own by that name (the plan then matches while the pod is cut off).
    match observe::veth_pair(&intent.host_link, &intent.netns, &key.ifname) {
        Ok(Some(true)) => {}
        Ok(Some(false)) => {
            return Err(mismatch(format!(
                "{} in its namespace is not the other end of the node's veth {}",
                key.ifname, intent.host_link
            )))
        }
        Ok(None) => {
            return Err(mismatch(format!(
                "{} or the node's veth {} is missing",
                key.ifname, intent.host_link
            )))
        }
        Err(e) => {
            return Err(CniError::new(
                error::OBSERVE_FAILED,
                format!("pod {key}: reading its veth: {}", crate::Chain(&e)),
            ))
        }
    }
    if let Some(listed) = prev_ips {
        for ip in intent.addresses() {
            let want = crate::spec::host_prefix(ip).to_string();
            if !listed.contains(&want) {
                return Err(mismatch(format!(
                    "prevResult lists {listed:?} but the pod has {want}"
                )));
            }
        }
    }
    Ok(())
}

/// GC: the intents of attachments the runtime no longer lists are
/// removed, then every owned object no remaining intent wants.
pub fn gc(spec: &Spec, store: &PodStore, valid: &[PodKey]) -> Result<(), CniError> {
    let mut errors = Vec::new();
    for intent in store.list()? {
        let keep = valid.contains(&intent.key);
        if !keep {
            if let Err(e) = store.remove(&intent.key()) {
                errors.push(format!("{}: {}", intent.key(), crate::Chain(&e)));
            }
        }
    }
    // Then every owned link, route and address that no remaining intent wants.
    match engine::apply(spec, &|| store.read(), &PodScope::Prune) {
        Ok(applied) => {
            errors.extend(applied.report.failed.iter().map(|f| f.to_string()));
            if let Err(e) = engine::release_gone(store, &applied.observed_after) {
                errors.push(crate::Chain(&e).to_string());
            }
        }
        Err(e) => errors.push(crate::Chain(&e).to_string()),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            error::APPLY_FAILED,
            format!("GC left {} problems", errors.len()),
        )
        .with_details(errors.join("; ")))
    }
}
