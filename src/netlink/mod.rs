//! The one place headcni talks rtnetlink: a connection per network namespace,
//! dumps, and batched requests (several requests per datagram).
//!
//! Entering a namespace happens only in [`Netlink::open_in`], on a short-lived
//! std thread: a netlink socket stays bound to the namespace it was created
//! in, so the thread creates the socket there and hands it back. No tokio
//! worker ever calls setns.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::proto::{ConnectionHandle, NetlinkCodec};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr, TokioSocket};

/// Requests per datagram in a batch. Each answer (an ack, or an error that
/// echoes the request) must fit the receive buffer together.
const BATCH: usize = 256;
const RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open network namespace {}: {error}", path.display())]
    OpenNetns { path: PathBuf, error: io::Error },
    #[error("cannot enter network namespace {}: {error}", path.display())]
    EnterNetns { path: PathBuf, error: io::Error },
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink connection closed before the kernel answered")]
    Closed,
    #[error("kernel said: {0}")]
    Kernel(io::Error),
}

impl NetlinkError {
    /// The kernel's errno, for idempotence checks (EEXIST, ENOENT, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// A connection to rtnetlink in one namespace. Dropping it closes the socket.
pub struct Netlink {
    handle: ConnectionHandle<RouteNetlinkMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Connects in the caller's own namespace. Needs a tokio runtime.
    pub fn open_current() -> Result<Netlink, NetlinkError> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        Self::from_socket(socket)
    }

    /// Connects inside the namespace at `path` (a /run/netns file or /proc/PID/ns/net).
    pub fn open_in(path: &Path) -> Result<Netlink, NetlinkError> {
        let netns = File::open(path).map_err(|error| NetlinkError::OpenNetns {
            path: path.into(),
            error,
        })?;
        let owned_path = path.to_path_buf();
        let socket = std::thread::spawn(move || -> Result<Socket, NetlinkError> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
                NetlinkError::EnterNetns {
                    path: owned_path,
                    error: io::Error::from(errno),
                }
            })?;
            Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)
        })
        .join()
        .map_err(|_| NetlinkError::Socket(io::Error::other("namespace thread panicked")))??;
        Self::from_socket(socket)
    }

    fn from_socket(socket: Socket) -> Result<Netlink, NetlinkError> {
        // Large batches get one ack each; make room for them.
        socket
            .set_rx_buf_sz(RECV_BUFFER_BYTES)
            .map_err(NetlinkError::Socket)?;
        socket
            .set_non_blocking(true)
            .map_err(NetlinkError::Socket)?;
        // SAFETY: the fd comes straight out of a Socket we own and give up here.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (mut conn, handle, _unsolicited) = rtnetlink::proto::from_socket_with_codec::<
            RouteNetlinkMessage,
            TokioSocket,
            NetlinkCodec,
        >(socket);
        conn.set_forward_ack(true);
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// Runs a dump request and collects every answer.
    pub async fn dump(
        &self,
        payload: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut req = NetlinkMessage::from(payload);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut responses = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|_| NetlinkError::Closed)?;
        let mut out = Vec::new();
        while let Some(msg) = responses.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::Kernel(e.to_io()))
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Sends one request and waits for its ack.
    pub async fn request(
        &self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        self.batch(vec![(payload, flags)])
            .await
            .pop()
            .unwrap_or(Err(NetlinkError::Closed))
    }

    /// Sends requests packed many to a datagram; returns one result per request, in order.
    pub async fn batch(
        &self,
        requests: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut results: Vec<Result<(), NetlinkError>> = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<NetlinkMessage<RouteNetlinkMessage>> = requests
                .by_ref()
                .take(BATCH)
                .map(|(payload, flags)| {
                    let mut msg = NetlinkMessage::from(payload);
                    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
                    msg
                })
                .collect();
            let n = chunk.len();
            let mut answers: Vec<Option<Result<(), NetlinkError>>> = (0..n).map(|_| None).collect();
            match self.handle.request_batch(chunk, SocketAddr::new(0, 0)) {
                Err(_) => {}
                Ok(mut responses) => {
                    // Sequence numbers of one batch are consecutive; the kernel
                    // answers every request of it, so the smallest is the first.
                    let mut got = Vec::with_capacity(n);
                    while let Some(msg) = responses.next().await {
                        if let NetlinkPayload::Error(e) = msg.payload {
                            let result = match e.code {
                                None => Ok(()),
                                Some(_) => Err(NetlinkError::Kernel(e.to_io())),
                            };
                            got.push((msg.header.sequence_number, result));
                        }
                    }
                    let base = got.iter().map(|(seq, _)| *seq).min().unwrap_or(0);
                    for (seq, result) in got {
                        if let Some(slot) = answers.get_mut(seq.wrapping_sub(base) as usize) {
                            *slot = Some(result);
                        }
                    }
                }
            }
            results.extend(
                answers
                    .into_iter()
                    .map(|a| a.unwrap_or(Err(NetlinkError::Closed))),
            );
        }
        results
    }
}
