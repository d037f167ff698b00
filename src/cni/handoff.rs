//! Handing a CNI call to the running daemon: the plugin asks it, over a
//! root-only unix socket in state_dir, to store (or remove) the pod's intent
//! and wire (or release) it in its next batch, and waits for the verdict.
//! One JSON line each way. A batch costs the store one lock and one open,
//! and the kernel one pass, however many calls it holds.
//!
//! Nothing depends on the daemon: no socket (no daemon), a refused
//! connection (a daemon gone), a connection closed without an answer (a
//! daemon that died mid-request) or no answer in time all say so, and the
//! plugin then runs the pod-scoped pass itself.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::CniError;
use crate::model::PodKey;
use crate::spec::PodIntent;

pub const SOCKET_FILE: &str = "cni.sock";

/// How long the plugin waits for the daemon before doing the work itself;
/// well inside a runtime's own timeout (containerd's and CRI-O's are minutes).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Longest request or answer line: anything longer is not ours.
pub const MAX_LINE: u64 = 64 * 1024;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// Store this attachment's intent (allocating its address) and wire it.
    Add { key: PodKey, netns: PathBuf },
    /// Remove this attachment's intent and its host link; its address is
    /// freed once the link is gone.
    Del { key: PodKey },
}

impl Request {
    pub fn key(&self) -> &PodKey {
        match self {
            Request::Add { key, .. } | Request::Del { key } => key,
        }
    }
}

/// The daemon's verdict: done (for an ADD, with what the result needs), or
/// the CNI error the plugin answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AnswerError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wired: Option<Wired>,
    /// The daemon cannot make this call where it runs (it cannot see the
    /// pod's namespace at that path: another mount namespace), and why:
    /// the plugin does it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declined: Option<String>,
}

/// A wired attachment: its intent and its links' hardware addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wired {
    pub intent: PodIntent,
    pub host_mac: Option<String>,
    pub pod_mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl Answer {
    pub fn of(verdict: Result<Option<Wired>, CniError>) -> Answer {
        match verdict {
            Ok(wired) => Answer {
                error: None,
                wired,
                declined: None,
            },
            Err(e) => Answer {
                error: Some(AnswerError {
                    code: e.code,
                    msg: e.msg,
                    details: e.details,
                }),
                wired: None,
                declined: None,
            },
        }
    }

    pub fn declined(why: String) -> Answer {
        Answer {
            error: None,
            wired: None,
            declined: Some(why),
        }
    }

    pub fn verdict(self) -> Result<Option<Wired>, CniError> {
        match self.error {
            None => Ok(self.wired),
            Some(e) => Err(CniError::new(e.code, e.msg).with_details(e.details)),
        }
    }
}

/// How asking the daemon went.
#[derive(Debug)]
pub enum Handoff {
    /// The daemon ran the pass: its verdict.
    Answered(Result<Option<Wired>, CniError>),
    /// No daemon listens (no socket, or nobody behind it): do it here.
    NoDaemon,
    /// The daemon took the request but gave no answer (it died, or did not
    /// answer in time): do it here; the passes are idempotent.
    Lost(String),
}

/// Asks the daemon whose socket is in `state_dir`, waiting at most `within`.
pub fn ask(state_dir: &Path, request: &Request, within: Duration) -> Handoff {
    // Whoever could plant a socket in an unsafe state_dir could answer for
    // the daemon; the store refuses such a state_dir with the reason.
    if crate::store::require_safe_state_dir(state_dir).is_err() {
        return Handoff::NoDaemon;
    }
    let path = socket_path(state_dir);
    let deadline = Instant::now() + within;
    let conn = match connect_within(&path, within) {
        Ok(conn) => conn,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Handoff::NoDaemon
        }
        Err(e) if is_timeout(&e) => {
            return Handoff::Lost(format!(
                "the daemon did not take the connection within {within:?}"
            ))
        }
        Err(e) => return Handoff::Lost(format!("cannot reach {}: {e}", path.display())),
    };
    let exchange = || -> std::io::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        conn.set_write_timeout(Some(left(deadline)?))?;
        (&conn).write_all(&line)?;
        read_within(&conn, deadline, MAX_LINE)
    };
    // Dropping the connection unanswered tells the daemon to drop the call.
    match exchange() {
        Ok(answer) if answer.is_empty() => {
            Handoff::Lost("the daemon closed the connection without answering".into())
        }
        Ok(answer) => match serde_json::from_slice::<Answer>(&answer) {
            Ok(Answer {
                declined: Some(why),
                ..
            }) => Handoff::Lost(format!("the daemon declined: {why}")),
            Ok(answer) => Handoff::Answered(answer.verdict()),
            Err(e) => Handoff::Lost(format!("the daemon's answer is not understood: {e}")),
        },
        Err(e) if is_timeout(&e) => {
            Handoff::Lost(format!("no answer from the daemon within {within:?}"))
        }
        Err(e) => Handoff::Lost(format!("talking to the daemon: {e}")),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Time left until `deadline`; none left is a timeout.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Connects to a daemon socket, waiting at most `within`. A plain connect
/// waits for ever while the daemon does not accept and its backlog is full
/// (a stopped or stuck daemon); on Linux a unix socket's connect waits at
/// most its send timeout, so that is set first.
pub fn connect_within(path: &Path, within: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let timeout = nix::sys::time::TimeVal::new(
        within.as_secs() as libc::time_t,
        within.subsec_micros() as libc::suseconds_t,
    );
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// Reads until the peer closes, at most `limit` bytes, all by `deadline`
/// (a read timeout alone restarts with every byte a slow peer sends).
pub fn read_within(conn: &UnixStream, deadline: Instant, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    while (out.len() as u64) < limit {
        conn.set_read_timeout(Some(left(deadline)?))?;
        let want = chunk.len().min((limit - out.len() as u64) as usize);
        match (&*conn).read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
