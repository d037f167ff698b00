//! The daemon's end of the CNI handoff (`cni/handoff.rs`): each request
//! waits in a queue; the loop takes the whole queue into one pass (a burst
//! of calls becomes a few passes, not one each) and answers every request
//! with the same verdict the plugin would have reached itself.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::events::Trigger;
use crate::cni::error::CniError;
use crate::cni::handoff::{Answer, Request, MAX_LINE};
use crate::spec::Spec;

/// Requests served at once: a node's worth of pods arriving together
/// (kubelet's default max pods is 110) with room to spare; more wait in the
/// listen backlog.
const MAX_WAITING: usize = 512;
/// A client that does not send its request line in this time is dropped.
const REQUEST_WITHIN: Duration = Duration::from_secs(5);

/// One request and where its answer goes.
pub struct Pending {
    pub request: Request,
    pub answer: oneshot::Sender<Answer>,
}

#[derive(Clone, Default)]
pub struct Queue(Arc<Mutex<Vec<Pending>>>);

impl Queue {
    fn push(&self, pending: Pending) -> bool {
        self.0.lock().map(|mut q| q.push(pending)).is_ok()
    }

    /// What waits, in arrival order, up to the first attachment asked for a
    /// second time: a DEL and a new ADD of one pod must not share a batch
    /// (it stores every ADD before any DEL). The rest waits for the next.
    pub fn take(&self) -> Vec<Pending> {
        let Ok(mut queue) = self.0.lock() else {
            return Vec::new();
        };
        let waiting = queue.len();
        queue.retain(|p| !p.answer.is_closed());
        if queue.len() < waiting {
            log_withdrawn(waiting - queue.len());
        }
        let mut seen = std::collections::HashSet::new();
        let cut = queue
            .iter()
            .position(|p| !seen.insert(p.request.key().clone()))
            .unwrap_or(queue.len());
        let rest = queue.split_off(cut);
        std::mem::replace(&mut *queue, rest)
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().map_or(true, |q| q.is_empty())
    }
}

fn log_withdrawn(calls: usize) {
    tracing::info!(
        "dropped {calls} CNI calls whose plugins stopped waiting (they wire the pod themselves)"
    );
}

/// Whether the client has closed its end (it gave up and left), asked of
/// the kernel with a poll that does not wait. Not of the runtime's cached
/// readiness: for a connection accepted after its client had left, that was
/// seen to say "readable" but not "closed" (with several daemons busy on the
/// machine), so a one-shot read stayed pending and the withdrawn call ran.
/// A client that only shut its writing half still waits for its answer.
fn already_closed(conn: &impl AsFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

/// Serves the handoff socket: root-only, in state_dir (0700 already).
pub async fn serve(
    path: PathBuf,
    queue: Queue,
    tx: UnboundedSender<Trigger>,
) -> std::io::Result<()> {
    let listener = super::listen::bind_root_only(&path)?;
    let limit = super::listen::Limit::with(MAX_WAITING);
    super::listen::serve_each(listener, "CNI handoff socket", limit, |conn| {
        let (queue, tx) = (queue.clone(), tx.clone());
        async move {
            let (read, mut write) = conn.into_split();
            let mut line = Vec::new();
            let mut reader = BufReader::new(read.take(MAX_LINE));
            let read = tokio::time::timeout(REQUEST_WITHIN, reader.read_until(b'\n', &mut line));
            if !matches!(read.await, Ok(Ok(n)) if n > 0) {
                return;
            }
            let request: Request = match serde_json::from_slice(&line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("CNI handoff: a request not understood: {e}");
                    return;
                }
            };
            // Only root can connect; still, what goes into the store and
            // the kernel passes the plugin's own checks here too.
            if let Some(answer) = check(&request) {
                return write_answer(&mut write, &answer).await;
            }
            // A plugin that gave up while its request sat in the listen
            // backlog (the daemon stopped or busy) has closed its end and
            // wired the pod itself: the call is withdrawn before it is
            // queued, not raced against the next batch.
            if already_closed(reader.get_ref().get_ref().as_ref()) {
                log_withdrawn(1);
                return;
            }
            let (answer_tx, answer_rx) = oneshot::channel();
            if !queue.push(Pending {
                request,
                answer: answer_tx,
            }) || tx.send(Trigger::Cni).is_err()
            {
                return;
            }
            // Dropped unanswered (the daemon stopping): the connection
            // closes without an answer, and the plugin does the work itself.
            // A plugin that stops waiting (it does the work itself then)
            // closes its end: dropping `answer_rx` withdraws the call, so a
            // batch not yet begun skips it.
            let mut rest = [0u8; 1];
            tokio::select! {
                answer = answer_rx => if let Ok(answer) = answer {
                    write_answer(&mut write, &answer).await;
                },
                _ = reader.read(&mut rest) => {}
            }
        }
    })
    .await
}

/// One answer line, then the end of the connection (a plugin gone
/// meanwhile misses it: nothing to do about that).
async fn write_answer(write: &mut tokio::net::unix::OwnedWriteHalf, answer: &Answer) {
    let mut doc = serde_json::to_vec(answer).unwrap_or_default();
    doc.push(b'\n');
    let _ = write.write_all(&doc).await;
    let _ = write.shutdown().await;
}

/// The checks the plugin made of its environment, made again: a refusal,
/// or, for a pod namespace this daemon cannot see at that path (it runs in
/// a mount namespace of its own), a decline: the plugin does it itself.
fn check(request: &Request) -> Option<Answer> {
    let invalid = |what: &str, why: String| {
        Answer::of(Err(CniError::new(
            crate::cni::error::INVALID_ENV,
            format!("{what}: {why}"),
        )))
    };
    let key = request.key();
    if let Err(why) = crate::spec::validate_container_id(&key.container_id) {
        return Some(invalid("CNI_CONTAINERID", why));
    }
    if let Err(why) = crate::spec::validate_ifname(&key.ifname) {
        return Some(invalid("CNI_IFNAME", why));
    }
    match request {
        Request::Add { netns, .. } => crate::cni::validate_netns(netns)
            .err()
            .map(|why| Answer::declined(format!("CNI_NETNS {}: {why}", netns.display()))),
        Request::Del { .. } => None,
    }
}

/// Runs a batch (`attach::batch`) and answers each call with its verdict;
/// returns the host links of DELs left for the next pass to delete.
/// Runs on a blocking thread (it drives netlink).
pub fn run_batch(spec: &Spec, batch: Vec<Pending>) -> Vec<String> {
    let calls: Vec<Request> = batch.iter().map(|p| p.request.clone()).collect();
    let ran = crate::attach::batch::run(spec, &calls);
    for (p, v) in batch.into_iter().zip(ran.verdicts) {
        let _ = p.answer.send(Answer::of(v));
    }
    ran.retired
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::PodKey;

    /// A call, and the plugin's end of it (dropping that withdraws the call).
    fn pending(request: Request) -> (Pending, oneshot::Receiver<Answer>) {
        let (answer, waiting) = oneshot::channel();
        (Pending { request, answer }, waiting)
    }

    fn key(id: &str) -> PodKey {
        PodKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn a_pod_asked_for_twice_waits_for_the_next_batch() {
        let queue = Queue::default();
        let add = |id: &str| Request::Add {
            key: key(id),
            netns: PathBuf::from("/run/netns/x"),
        };
        let mut plugins = Vec::new();
        for request in [add("a"), add("b"), Request::Del { key: key("a") }, add("a")] {
            let (call, plugin) = pending(request);
            assert!(queue.push(call));
            plugins.push(plugin);
        }
        let first: Vec<Request> = queue.take().into_iter().map(|p| p.request).collect();
        assert_eq!(first, vec![add("a"), add("b")]);
        let second: Vec<Request> = queue.take().into_iter().map(|p| p.request).collect();
        assert_eq!(second, vec![Request::Del { key: key("a") }]);
        let third: Vec<Request> = queue.take().into_iter().map(|p| p.request).collect();
        assert_eq!(third, vec![add("a")]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_call_whose_plugin_left_is_not_taken() {
        let queue = Queue::default();
        let del = |id: &str| Request::Del { key: key(id) };
        let (a, plugin_a) = pending(del("a"));
        let (b, gone) = pending(del("b"));
        assert!(queue.push(a) && queue.push(b));
        drop(gone);
        let taken: Vec<Request> = queue.take().into_iter().map(|p| p.request).collect();
        assert_eq!(taken, vec![del("a")]);
        drop(plugin_a);
    }

    /// A plugin that closed its end before the daemon read its request
    /// (it gave up while the call sat in the backlog) is seen at once; one
    /// still waiting is not (also when it shut only its writing half), and
    /// the check does not wait for it.
    #[tokio::test]
    async fn a_request_whose_plugin_already_left_is_seen_without_waiting() {
        for (plugin_left, half_closed) in [(true, false), (false, false), (false, true)] {
            let (daemon_end, mut plugin) = tokio::net::UnixStream::pair().unwrap();
            plugin.write_all(b"{}\n").await.unwrap();
            if half_closed {
                plugin.shutdown().await.unwrap();
            }
            let plugin = (!plugin_left).then_some(plugin);
            let mut reader = BufReader::new(daemon_end);
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).await.unwrap();
            assert_eq!(already_closed(reader.get_ref()), plugin_left);
            drop(plugin);
        }
    }
}
