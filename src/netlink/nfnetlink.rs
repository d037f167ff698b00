//! Two nftables questions over nfnetlink, each one datagram where listing a
//! table takes an `nft` process (milliseconds): does a table exist, and
//! which version of the ruleset is this.

use std::os::fd::AsRawFd;

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::{attributes, NetlinkError};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// getsockopt: the namespace's cookie, never reused (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Does the `inet` table `name` exist in the caller's namespace?
pub fn inet_table_exists(name: &str) -> Result<bool, NetlinkError> {
    let socket = connect()?;
    let answer = ask(&socket, NFT_MSG_GETTABLE, NFPROTO_INET, Some(name))?;
    Ok(answer.is_some())
}

/// This namespace's ruleset, as (namespace cookie, generation): the
/// generation changes with every change to any table, and the cookie tells
/// namespaces apart (an inode number can come back after a namespace is
/// gone; a cookie cannot). Equal versions mean an equal ruleset.
pub fn ruleset_version() -> Result<(u64, u32), NetlinkError> {
    let socket = connect()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and a pointer to a live u64 with its size in len.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
    }
    let answer = ask(&socket, NFT_MSG_GETGEN, NFPROTO_UNSPEC, None)?
        .ok_or_else(|| NetlinkError::Decode("no ruleset generation".into()))?;
    let generation = attributes(answer.get(NFGENMSG_LEN..).unwrap_or_default())
        .find(|(kind, _)| *kind == NFTA_GEN_ID)
        .and_then(|(_, value)| Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?)))
        .ok_or_else(|| NetlinkError::Decode("no NFTA_GEN_ID in NEWGEN".into()))?;
    Ok((cookie, generation))
}

fn connect() -> Result<Socket, NetlinkError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    Ok(socket)
}

/// Sends one nftables GET and returns the payload of its answer (the NEW
/// message of the same object), or None when the kernel says ENOENT.
fn ask(
    socket: &Socket,
    get: u16,
    family: u8,
    name: Option<&str>,
) -> Result<Option<Vec<u8>>, NetlinkError> {
    socket
        .send(&request(get, family, name), 0)
        .map_err(NetlinkError::Socket)?;
    let answer_kind = (NFNL_SUBSYS_NFTABLES << 8) | (get - 1); // GETx is NEWx + 1
    let mut answer = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0).map_err(NetlinkError::Socket)?;
        let mut offset = 0;
        while offset + NLMSG_HDRLEN <= n {
            let message = &buf[offset..n];
            let len = u32::from_ne_bytes(message[0..4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes([message[4], message[5]]);
            if len < NLMSG_HDRLEN || len > message.len() {
                return Err(NetlinkError::Decode("malformed nfnetlink answer".into()));
            }
            let payload = &message[NLMSG_HDRLEN..len];
            if kind == answer_kind {
                answer = Some(payload.to_vec());
            } else if kind == NLMSG_ERROR {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| NetlinkError::Decode("short nfnetlink error".into()))?;
                return match -code {
                    0 => Ok(answer), // the ack that ends the answer
                    libc::ENOENT => Ok(None),
                    errno => Err(NetlinkError::Kernel(std::io::Error::from_raw_os_error(
                        errno,
                    ))),
                };
            }
            offset += (len + 3) & !3;
        }
    }
}

/// nlmsghdr + nfgenmsg (+ NFTA_*_NAME).
fn request(get: u16, family: u8, name: Option<&str>) -> Vec<u8> {
    let attr_len = name.map_or(0, |n| 4 + n.len() + 1); // NUL-terminated
    let total = NLMSG_HDRLEN + NFGENMSG_LEN + ((attr_len + 3) & !3);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | get).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    out.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version, res_id
    if let Some(name) = name {
        out.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        out.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.resize(total, 0);
    out
}
