//! The one netlink socket type, for every protocol headcni speaks (rtnetlink
//! and nfnetlink): made in a namespace, connected to the kernel for requests
//! or subscribed to multicast groups for events, with the one loop that
//! reads answers. What differs per protocol is its messages, built and read
//! by the modules beside this one.

use std::io;
use std::marker::PhantomData;
use std::path::Path;

use rtnetlink::sys::{self, protocols, SocketAddr};

use super::{error_code, in_netns, walk, NetlinkError, NLMSG_DONE, NLMSG_ERROR};

/// A netlink protocol (the third argument of socket(2)).
pub trait Protocol {
    const NUMBER: isize;
}

/// rtnetlink: links, addresses, routes, rules, netconf.
pub enum Route {}
impl Protocol for Route {
    const NUMBER: isize = protocols::NETLINK_ROUTE;
}

/// nfnetlink: nftables' tables, generations and change events.
pub enum Netfilter {}
impl Protocol for Netfilter {
    const NUMBER: isize = protocols::NETLINK_NETFILTER;
}

/// Where an exchange's answers end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// NLMSG_DONE: a dump's answers.
    Done,
    /// The ack (or NLMSG_DONE): a request sent with NLM_F_ACK.
    Ack,
}

/// A netlink socket of protocol `P`. Dropping it closes it.
pub struct Socket<P: Protocol> {
    inner: sys::Socket,
    seq: u32,
    rx: Vec<u8>,
    /// A marker only (a fn type: Send and Sync whatever P is).
    protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> Socket<P> {
    /// A socket made in the namespace at `netns` (None: the caller's); it
    /// stays bound to that namespace for its life.
    fn make(netns: Option<&Path>) -> Result<sys::Socket, NetlinkError> {
        let make = || sys::Socket::new(P::NUMBER).map_err(NetlinkError::Socket);
        match netns {
            None => make(),
            Some(path) => in_netns(path, make)?,
        }
    }

    fn wrap(inner: sys::Socket, receive_chunk: usize) -> Socket<P> {
        Socket {
            inner,
            seq: 0,
            rx: Vec::with_capacity(receive_chunk),
            protocol: PhantomData,
        }
    }

    /// A socket for requests, connected to the kernel.
    pub fn connect(netns: Option<&Path>, receive_chunk: usize) -> Result<Socket<P>, NetlinkError> {
        let mut inner = Self::make(netns)?;
        inner.bind_auto().map_err(NetlinkError::Socket)?;
        inner
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Self::wrap(inner, receive_chunk))
    }

    /// A socket for events: bound to the legacy group bits `groups` and
    /// joined to `memberships` (groups past the legacy bits), its receive
    /// buffer raised to `buffer` bytes so bursts fit.
    pub fn subscribe(
        netns: Option<&Path>,
        groups: u32,
        memberships: &[u32],
        buffer: libc::c_int,
    ) -> Result<Socket<P>, NetlinkError> {
        let mut inner = Self::make(netns)?;
        inner
            .bind(&SocketAddr::new(0, groups))
            .map_err(NetlinkError::Socket)?;
        for group in memberships {
            inner.add_membership(*group).map_err(NetlinkError::Socket)?;
        }
        force_receive_buffer(&inner, buffer);
        Ok(Self::wrap(inner, 256 * 1024))
    }

    /// The kernel socket, for socket options.
    pub fn raw(&self) -> &sys::Socket {
        &self.inner
    }

    pub fn raw_mut(&mut self) -> &mut sys::Socket {
        &mut self.inner
    }

    /// The next request's sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The sequence number the next `next_seq` follows.
    pub fn last_seq(&self) -> u32 {
        self.seq
    }

    pub fn send(&self, datagram: &[u8]) -> Result<(), NetlinkError> {
        self.inner
            .send(datagram, 0)
            .map(drop)
            .map_err(NetlinkError::Socket)
    }

    /// Receives one datagram into the socket's own buffer.
    pub fn receive(&mut self) -> io::Result<&[u8]> {
        self.rx.clear();
        let n = self.inner.recv(&mut self.rx, 0)?;
        Ok(&self.rx[..n])
    }

    /// Receives one datagram into `buf` (cleared first), which the caller
    /// keeps: another thread can decode it while this one reads on.
    pub fn receive_into(&self, buf: &mut Vec<u8>) -> Result<usize, NetlinkError> {
        buf.clear();
        self.inner.recv(buf, 0).map_err(NetlinkError::Socket)
    }

    /// Receives datagrams and walks their messages, handing (type, sequence,
    /// payload) to `on` until it says done (Ok(true)) or fails.
    pub fn read_until(
        &mut self,
        mut on: impl FnMut(u16, u32, &[u8]) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        loop {
            let datagram = self.receive().map_err(NetlinkError::Socket)?;
            if walk(datagram, &mut on)? {
                return Ok(());
            }
        }
    }

    /// Reads the answers to request `seq`, handing each message that is not
    /// netlink's own (type, payload) to `each`, until they end (`until`); a
    /// refusal is the kernel's error.
    pub fn answers(
        &mut self,
        seq: u32,
        until: Until,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<(), NetlinkError> {
        self.read_until(|kind, msg_seq, payload| {
            if msg_seq != seq {
                return Ok(false);
            }
            match kind {
                NLMSG_DONE => Ok(true),
                NLMSG_ERROR => match error_code(payload) {
                    Some(e) => Err(NetlinkError::Kernel(e)),
                    None => Ok(until == Until::Ack),
                },
                kind => {
                    each(kind, payload);
                    Ok(false)
                }
            }
        })
    }
}

/// Makes room in a socket's receive buffer (many acks wait there during a
/// batch; bursts of events in a listener's): past rmem_max when we may
/// (root), else as much as the system allows. Returns the size in effect.
pub(super) fn force_receive_buffer(socket: &sys::Socket, size: libc::c_int) -> usize {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = usize::try_from(size).unwrap_or(0);
    if setsockopt(socket, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &size);
    }
    socket.get_rx_buf_sz().unwrap_or(212_992)
}
