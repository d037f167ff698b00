//! The one place headcni talks rtnetlink: a synchronous connection per
//! network namespace, lazy dumps, and batched requests.
//!
//! Messages are built with rtnetlink's builders and netlink-packet-route's
//! types. Transport is a plain blocking netlink socket: a CNI call or a
//! reconcile pass is a short burst of request/answer, and a socket of our own
//! lets us (1) pack hundreds of requests into one datagram and (2) read dump
//! answers in place, decoding only the attributes headcni uses (the link
//! dump's per-interface inet6 configuration alone is most of its bytes).
//!
//! Entering a namespace happens only in [`in_netns`] and [`in_each_netns`], on
//! short-lived threads: a netlink socket stays bound to the namespace it was
//! created in, so that thread creates it there and hands it back. The socket
//! itself, and the loop that reads answers, are [`socket::Socket`]'s, for
//! rtnetlink and nfnetlink alike.

pub mod events;
pub mod netns;
pub mod nfnetlink;
pub mod socket;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use rtnetlink::packet_route::RouteNetlinkMessage;

use socket::{Route, Socket, Until};

pub(crate) const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
pub(crate) const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
/// Most requests per datagram. Every one is answered by an ack that holds
/// about a kilobyte of receive buffer until read, so a batch must fit it.
const MAX_BATCH: usize = 512;
const ACK_TRUESIZE: usize = 1536;
/// Receive buffer asked for (root may exceed rmem_max with SO_RCVBUFFORCE).
const RECV_BUFFER_BYTES: libc::c_int = 8 * 1024 * 1024;
const READ_CHUNK: usize = 1024 * 1024;
/// Room for one dump datagram: the kernel fills at most 32 KiB a read.
const DATAGRAM_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open network namespace {}", path.display())]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {}", path.display())]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("netlink socket")]
    Socket(#[source] io::Error),
    #[error("malformed netlink answer: {0}")]
    Decode(String),
    #[error("the kernel refused the request")]
    Kernel(#[source] io::Error),
    #[error("the kernel did not acknowledge the request")]
    NoAck,
    /// A batch failed before this request's answer was read; the request
    /// that met the failure carries its cause.
    #[error("not answered: an earlier request of its batch failed")]
    Unanswered,
    #[error("the thread working in a network namespace panicked")]
    NamespaceThreadPanicked,
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
    socket: Socket<Route>,
    batch: usize,
    tx: Vec<u8>,
}

impl Netlink {
    /// Connects in the caller's own namespace.
    pub fn open_current() -> Result<Netlink, NetlinkError> {
        Self::configure(Socket::connect(None, READ_CHUNK)?)
    }

    /// Connects inside the namespace at `path` (a /run/netns file or /proc/PID/ns/net).
    pub fn open_in(path: &Path) -> Result<Netlink, NetlinkError> {
        Self::configure(Socket::connect(Some(path), READ_CHUNK)?)
    }

    /// Strict checking of requests (NETLINK_GET_STRICT_CHK): the kernel
    /// then honours a dump request's filters (a route dump's protocol, say)
    /// instead of ignoring them.
    pub fn strict(self) -> Result<Netlink, NetlinkError> {
        self.socket
            .raw()
            .set_netlink_get_strict_chk(true)
            .map_err(NetlinkError::Socket)?;
        Ok(self)
    }

    fn configure(mut socket: Socket<Route>) -> Result<Netlink, NetlinkError> {
        // Acks without a copy of the request: smaller, so batches fit better.
        socket
            .raw_mut()
            .set_cap_ack(true)
            .map_err(NetlinkError::Socket)?;
        let buffer = socket::force_receive_buffer(socket.raw(), RECV_BUFFER_BYTES);
        let batch = (buffer / ACK_TRUESIZE).clamp(1, MAX_BATCH);
        Ok(Netlink {
            socket,
            batch,
            tx: Vec::new(),
        })
    }

    /// Runs a dump and hands each answer's (message type, payload) to `each`,
    /// straight from the receive buffer.
    pub fn dump(
        &mut self,
        request: RouteNetlinkMessage,
        each: impl FnMut(u16, &[u8]),
    ) -> Result<(), NetlinkError> {
        let seq = self.send_one(request, NLM_F_REQUEST | NLM_F_DUMP)?;
        self.socket.answers(seq, Until::Done, each)
    }

    /// Runs a dump and hands each datagram of answers, whole, to `each`,
    /// which returns an empty buffer to receive the next one into: another
    /// thread can decode answers while this one keeps the kernel dumping.
    pub fn dump_datagrams(
        &mut self,
        request: RouteNetlinkMessage,
        mut each: impl FnMut(Vec<u8>) -> Vec<u8>,
    ) -> Result<(), NetlinkError> {
        let seq = self.send_one(request, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut buf = each(Vec::new());
        loop {
            buf.reserve(DATAGRAM_BYTES);
            let n = self.socket.receive_into(&mut buf)?;
            let mut done = false;
            walk(&buf[..n], |kind, msg_seq, payload| {
                if msg_seq == seq {
                    match kind {
                        NLMSG_DONE => done = true,
                        NLMSG_ERROR => {
                            if let Some(e) = error_code(payload) {
                                return Err(NetlinkError::Kernel(e));
                            }
                        }
                        _ => {}
                    }
                }
                Ok(false)
            })?;
            buf = each(buf);
            if done {
                return Ok(());
            }
        }
    }

    /// Sends one request whose answer is a message (a GET by name, say) and
    /// hands it to `each`; waits for the ack that ends it.
    pub fn query(
        &mut self,
        request: RouteNetlinkMessage,
        each: impl FnMut(u16, &[u8]),
    ) -> Result<(), NetlinkError> {
        let seq = self.send_one(request, NLM_F_REQUEST | NLM_F_ACK)?;
        self.socket.answers(seq, Until::Ack, each)
    }

    /// Forwarding of this namespace (`net.ipv4.ip_forward`, which is
    /// `conf/all/forwarding`, or IPv6's `conf/all/forwarding`), asked with
    /// RTM_GETNETCONF rather than read from /proc/sys: with many namespaces
    /// every /proc/sys lookup walks entries of all of them (1,000 pod
    /// namespaces: 100 ms a pass).
    /// netlink-packet-route has no netconf messages; this one is small.
    pub fn forwarding(&mut self, ipv6: bool) -> Result<Option<bool>, NetlinkError> {
        const RTM_GETNETCONF: u16 = 82;
        const RTM_NEWNETCONF: u16 = 80;
        const NETCONFA_IFINDEX: u16 = 1;
        const NETCONFA_FORWARDING: u16 = 2;
        const NETCONFA_IFINDEX_ALL: i32 = -1;

        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let seq = self.socket.next_seq();
        let request = raw_request(
            RTM_GETNETCONF,
            seq,
            [family, 0, 0, 0], // struct netconfmsg, padded
            &[(NETCONFA_IFINDEX, &NETCONFA_IFINDEX_ALL.to_ne_bytes())],
        );
        self.socket.send(&request)?;
        let mut forwarding = None;
        self.socket.answers(seq, Until::Ack, |kind, payload| {
            if kind == RTM_NEWNETCONF {
                forwarding = attributes(payload.get(4..).unwrap_or_default())
                    .find(|(attr, _)| *attr == NETCONFA_FORWARDING)
                    .and_then(|(_, v)| Some(i32::from_ne_bytes(v.get(..4)?.try_into().ok()?)))
                    .map(|v| v != 0);
            }
        })?;
        Ok(forwarding)
    }

    fn send_one(&mut self, request: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        let seq = self.socket.next_seq();
        self.tx.clear();
        encode(&mut self.tx, request, flags, seq);
        self.socket.send(&self.tx)?;
        Ok(seq)
    }

    /// Sends one request and waits for its ack.
    pub fn request(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        self.batch(vec![(request, flags)])
            .pop()
            .unwrap_or(Err(NetlinkError::NoAck))
    }

    /// Sends requests packed many to a datagram; returns one result per request, in order.
    pub fn batch(
        &mut self,
        requests: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut results = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let first = self.socket.last_seq().wrapping_add(1);
            self.tx.clear();
            let mut count = 0usize;
            for (request, flags) in requests.by_ref().take(self.batch) {
                let seq = self.socket.next_seq();
                encode(
                    &mut self.tx,
                    request,
                    NLM_F_REQUEST | NLM_F_ACK | flags,
                    seq,
                );
                count += 1;
            }
            let mut answers: Vec<Option<Result<(), NetlinkError>>> =
                (0..count).map(|_| None).collect();
            let failure = match self.socket.send(&self.tx) {
                Err(e) => Some(e),
                Ok(()) => self.collect_acks(first, &mut answers).err(),
            };
            // The first unanswered request carries the failure; the rest
            // of its batch say they were not answered.
            let batch_failed = failure.is_some();
            let mut failure = failure;
            results.extend(answers.into_iter().map(|answer| match answer {
                Some(result) => result,
                None => Err(match failure.take() {
                    Some(cause) => cause,
                    None if batch_failed => NetlinkError::Unanswered,
                    None => NetlinkError::NoAck,
                }),
            }));
        }
        results
    }

    fn collect_acks(
        &mut self,
        first: u32,
        answers: &mut [Option<Result<(), NetlinkError>>],
    ) -> Result<(), NetlinkError> {
        let mut pending = answers.len();
        self.socket.read_until(|kind, seq, payload| {
            if kind == NLMSG_ERROR {
                let index = seq.wrapping_sub(first) as usize;
                if let Some(slot) = answers.get_mut(index).filter(|s| s.is_none()) {
                    *slot =
                        Some(error_code(payload).map_or(Ok(()), |e| Err(NetlinkError::Kernel(e))));
                    pending -= 1;
                }
            }
            Ok(pending == 0)
        })
    }
}

/// A request netlink-packet-route has no type for: nlmsghdr (with
/// NLM_F_REQUEST | NLM_F_ACK), a 4-byte family header, attributes.
pub fn raw_request(kind: u16, seq: u32, header: [u8; 4], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    const NLMSG_HDRLEN: usize = 16;
    let mut out = vec![0u8; NLMSG_HDRLEN];
    out.extend_from_slice(&header);
    for (attr, value) in attrs {
        let len = 4 + value.len();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&attr.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((out.len() + 3) & !3, 0);
    }
    let total = out.len() as u32;
    out[0..4].copy_from_slice(&total.to_ne_bytes());
    out[4..6].copy_from_slice(&kind.to_ne_bytes());
    out[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    out // the port stays 0: the kernel's
}

/// The errno of an NLMSG_ERROR payload; None for an ack.
pub fn error_code(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// Walks the messages of one datagram, handing (type, sequence, payload) to
/// `on` until it says done (Ok(true)) or fails; Ok(true) if it said done.
pub fn walk(
    datagram: &[u8],
    mut on: impl FnMut(u16, u32, &[u8]) -> Result<bool, NetlinkError>,
) -> Result<bool, NetlinkError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let msg = NetlinkBuffer::new_checked(&datagram[offset..])
            .map_err(|e| NetlinkError::Decode(e.to_string()))?;
        let len = (msg.length() as usize).max(16);
        if on(msg.message_type(), msg.sequence_number(), msg.payload())? {
            return Ok(true);
        }
        offset += (len + 3) & !3;
    }
    Ok(false)
}

/// The netlink attributes in `buf` as (type, value), borrowed from it; ends
/// at the first malformed one. (netlink-packet-core's iterator lends values
/// only as long as each attribute, too short to keep a label or a MAC.)
pub fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    const NLA_TYPE_MASK: u16 = 0x3fff; // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(buf.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = buf.get(4..len)?;
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

/// Is `path` a network-namespace file (nsfs)?
pub fn is_netns_file(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Runs `f` on a short-lived thread that has entered the network namespace
/// at `path`: the only place headcni calls setns. Sockets made there stay in
/// that namespace; /proc/sys/net opened there is that namespace's.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetlinkError::NamespaceThreadPanicked)?
    })
}

/// Moves the calling thread into the network namespace at `path`. Only the
/// threads of [`in_netns`] and [`in_each_netns`], which end with their work.
fn enter_netns(path: &Path) -> Result<(), NetlinkError> {
    let netns = File::open(path).map_err(|source| NetlinkError::OpenNetns {
        path: path.into(),
        source,
    })?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
        NetlinkError::EnterNetns {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        }
    })
}

/// Runs `f` inside each namespace of `paths`, on up to `threads` short-lived
/// threads of their own that enter one namespace after another (a thread
/// and a switch per namespace would cost more than most visits). Results
/// come in the order of `paths`.
pub fn in_each_netns<T: Send>(
    paths: &[&Path],
    threads: usize,
    f: impl Fn(&Path) -> T + Sync,
) -> Vec<Result<T, NetlinkError>> {
    let visit = |path: &Path| -> Result<T, NetlinkError> {
        enter_netns(path)?;
        Ok(f(path))
    };
    if paths.is_empty() {
        return Vec::new();
    }
    let per_thread = paths.len().div_ceil(threads.max(1));
    std::thread::scope(|scope| {
        let parts: Vec<_> = paths
            .chunks(per_thread)
            .map(|part| scope.spawn(|| part.iter().map(|p| visit(p)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| {
                part.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn encode(out: &mut Vec<u8>, payload: RouteNetlinkMessage, flags: u16, seq: u32) {
    let mut msg = NetlinkMessage::from(payload);
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
}
