//! What makes the daemon look again: kernel events about owned objects and
//! the tailnet interface (rtnetlink multicast), and edits of the spec and the
//! pod-intent store (inotify via `notify`). Events only say "look again";
//! every pass reads the whole state (level-triggered).

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::blocked::BlockedFlag;
use crate::kernel::netlink::socket::{Netfilter, Protocol, Route, Socket};
use crate::model::{LINK_PREFIX, RTPROT_HEADCNI};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    Start,
    /// The spec file changed.
    Spec,
    /// Pod intents changed.
    Pods,
    /// The kernel changed something headcni owns or depends on.
    Kernel,
    /// The event socket overran: events were lost, so look at everything.
    Overrun,
    /// The periodic full resync.
    Resync,
    /// While a conflict blocks a pod: something was removed that may have
    /// been in its way; the pass looks into pods too (to wire both ends).
    Removal,
    /// The supervised tailscaled started or exited.
    Tailscaled,
    /// A failed pass is retried.
    Retry,
    /// CNI calls handed over wait to be wired or released.
    Cni,
    /// DELs were answered with their host links still there (routes gone):
    /// a node-wide pass deletes the links and frees their addresses.
    Retired,
}

/// Reads events forever on a thread of its own, sending a trigger for each
/// datagram that touches something relevant. `interfaces`: links that matter
/// besides headcni's own (the tailnet interface).
/// While `blocked` (a conflict skips a pod), any removal is relevant: it
/// may be the foreign object in the way.
pub fn listen(
    socket: Socket<Route>,
    interfaces: Vec<String>,
    blocked: BlockedFlag,
    tx: UnboundedSender<Trigger>,
) {
    read_events(
        "headcni-events",
        socket,
        tx,
        Trigger::Overrun,
        move |datagram| {
            if relevant(datagram, &interfaces) {
                Some(Trigger::Kernel)
            } else if blocked.get() && removes_something(datagram) {
                Some(Trigger::Removal)
            } else {
                None
            }
        },
    );
}

/// Reads a subscription on a thread named `name`, sending `Trigger::Kernel`
/// for each datagram `relevant` keeps, and `overrun` when the socket overran
/// (events were lost).
fn read_events<P: Protocol + 'static>(
    name: &'static str,
    mut socket: Socket<P>,
    tx: UnboundedSender<Trigger>,
    overrun: Trigger,
    relevant: impl Fn(&[u8]) -> Option<Trigger> + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let trigger = match socket.receive() {
                Ok(datagram) => relevant(datagram),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("{name}: the event socket overran");
                    Some(overrun.clone())
                }
                Err(e) => {
                    tracing::error!("{name}: {e}");
                    return;
                }
            };
            if trigger.is_some_and(|t| tx.send(t).is_err()) {
                return;
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the thread {name}: {e}");
    }
}

/// Does a datagram of events touch headcni's objects or the interfaces it
/// needs? One that does not decode is a reason to look, not to ignore.
fn relevant(datagram: &[u8], interfaces: &[String]) -> bool {
    let touches = |kind: u16, payload: &[u8]| match kind {
        libc::RTM_NEWLINK | libc::RTM_DELLINK => crate::observe::parse_link_name(payload)
            .is_none_or(|name| name.starts_with(LINK_PREFIX) || interfaces.contains(&name)),
        // Addresses: rare, and the index alone does not say whose; but the
        // kernel's IPv6 link-local ones (one per new link) are never ours.
        libc::RTM_NEWADDR | libc::RTM_DELADDR => {
            !crate::observe::is_kernel_link_local_address(payload)
        }
        // rtmsg.rtm_protocol is byte 5.
        libc::RTM_NEWROUTE | libc::RTM_DELROUTE => payload.get(5) == Some(&RTPROT_HEADCNI),
        // Rules carry their protocol as an attribute.
        libc::RTM_NEWRULE | libc::RTM_DELRULE => {
            crate::observe::parse_rule(payload).is_none_or(|r| r.is_owned())
        }
        // Forwarding or rp_filter flipped somewhere.
        libc::RTM_NEWNETCONF => true,
        _ => false,
    };
    crate::kernel::netlink::walk(datagram, |kind, _, payload| Ok(touches(kind, payload)))
        .unwrap_or(true)
}

/// Does a datagram remove a link, address, route or rule (anyone's)?
fn removes_something(datagram: &[u8]) -> bool {
    crate::kernel::netlink::walk(datagram, |kind, _, _| {
        Ok(matches!(
            kind,
            libc::RTM_DELLINK | libc::RTM_DELADDR | libc::RTM_DELROUTE | libc::RTM_DELRULE
        ))
    })
    .unwrap_or(false)
}

/// Any ruleset change is a reason to look (nft's own answers to headcni's
/// transactions included: the next pass then finds nothing to do).
pub fn listen_nftables(socket: Socket<Netfilter>, tx: UnboundedSender<Trigger>) {
    read_events("headcni-nft-events", socket, tx, Trigger::Kernel, |_| {
        Some(Trigger::Kernel)
    });
}

/// Watches the spec file's directory (editors replace files) and the pod
/// store, and lets go of the store when another process asks for it (see
/// `store::keep_open`); the watcher must be kept alive by the caller.
pub fn watch_files(
    spec: &Path,
    state_dir: &Path,
    tx: UnboundedSender<Trigger>,
) -> notify::Result<notify::RecommendedWatcher> {
    let spec_name = spec.file_name().map(|n| n.to_os_string());
    // Not the db itself: sled touches its files on every open, reads included.
    let store: PathBuf = state_dir.join(crate::store::CHANGED_FILE);
    let wanted: PathBuf = state_dir.join(crate::store::WANTED_FILE);
    let dir = state_dir.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.kind.is_access() {
            return;
        }
        for path in &event.paths {
            if *path == wanted {
                // Here, not in the loop: a pass under way must not delay it.
                crate::store::let_go(&dir);
                continue;
            }
            let trigger = if *path == store {
                Some(Trigger::Pods)
            } else if path.file_name().map(|n| n.to_os_string()) == spec_name {
                Some(Trigger::Spec)
            } else {
                None
            };
            if let Some(t) = trigger {
                let _ = tx.send(t);
            }
        }
    })?;
    let spec_dir = spec
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(spec_dir, RecursiveMode::NonRecursive)?;
    crate::store::create_state_dir(state_dir).ok();
    watcher.watch(state_dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
