//! What makes the daemon look again: kernel events about owned objects and
//! the tailnet interface (rtnetlink multicast), and edits of the spec and the
//! pod-intent store (inotify via `notify`). Events only say "look again";
//! every pass reads the whole state (level-triggered).

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use rtnetlink::sys::Socket;
use tokio::sync::mpsc::UnboundedSender;

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
    /// The supervised tailscaled started or exited.
    Tailscaled,
    /// A failed pass is retried.
    Retry,
    /// CNI calls handed over wait to be wired or released.
    Cni,
}

/// Reads events forever on a thread of its own, sending a trigger for each
/// datagram that touches something relevant. `interfaces`: links that matter
/// besides headcni's own (the tailnet interface).
pub fn listen(socket: Socket, interfaces: Vec<String>, tx: UnboundedSender<Trigger>) {
    std::thread::Builder::new()
        .name("headcni-events".into())
        .spawn(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
            loop {
                buf.clear();
                let n = match socket.recv(&mut buf, 0) {
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        tracing::warn!("netlink event socket overran; resyncing");
                        if tx.send(Trigger::Overrun).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("netlink event socket: {e}");
                        return;
                    }
                };
                if relevant(&buf[..n], &interfaces) && tx.send(Trigger::Kernel).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!("cannot start the event thread: {e}"));
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

/// Any ruleset change is a reason to look (nft's own answers to headcni's
/// transactions included: the next pass then finds nothing to do).
pub fn listen_nftables(socket: Socket, tx: UnboundedSender<Trigger>) {
    std::thread::Builder::new()
        .name("headcni-nft-events".into())
        .spawn(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
            loop {
                buf.clear();
                match socket.recv(&mut buf, 0) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => {
                        tracing::error!("nftables event socket: {e}");
                        return;
                    }
                }
                if tx.send(Trigger::Kernel).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!("cannot start the nftables event thread: {e}"));
}

/// Watches the spec file's directory (editors replace files) and the pod
/// store; the watcher must be kept alive by the caller.
pub fn watch_files(
    spec: &Path,
    state_dir: &Path,
    tx: UnboundedSender<Trigger>,
) -> notify::Result<notify::RecommendedWatcher> {
    let spec_name = spec.file_name().map(|n| n.to_os_string());
    // Not the db itself: sled touches its files on every open, reads included.
    let store: PathBuf = state_dir.join(crate::store::CHANGED_FILE);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.kind.is_access() {
            return;
        }
        for path in &event.paths {
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
