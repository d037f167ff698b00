//! Two nftables questions over nfnetlink, each one datagram where listing a
//! table takes an `nft` process (milliseconds): does a table exist, and
//! which version of the ruleset is this.

use std::os::fd::AsRawFd;

use super::socket::{Netfilter, Socket, Until};
use super::{attributes, raw_request, NetlinkError};

const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
const NFT_MSG_GETTABLE: u16 = libc::NFT_MSG_GETTABLE as u16;
const NFT_MSG_GETGEN: u16 = libc::NFT_MSG_GETGEN as u16;
const NFPROTO_UNSPEC: u8 = libc::NFPROTO_UNSPEC as u8;
const NFPROTO_INET: u8 = libc::NFPROTO_INET as u8;
// Not in libc: include/uapi/linux/netfilter/nf_tables.h and socket.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NFGENMSG_LEN: usize = 4;
/// getsockopt: the namespace's cookie, never reused (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An nfnetlink connection in the caller's namespace: one socket for both
/// questions a pass asks.
pub struct Nftables {
    socket: Socket<Netfilter>,
}

impl Nftables {
    pub fn open() -> Result<Nftables, NetlinkError> {
        Ok(Nftables {
            socket: Socket::connect(None, 64 * 1024)?,
        })
    }

    /// Does the `inet` table `name` exist?
    pub fn inet_table_exists(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let answer = ask(&mut self.socket, NFT_MSG_GETTABLE, NFPROTO_INET, Some(name))?;
        Ok(answer.is_some())
    }

    /// The namespace's ruleset, as (namespace cookie, generation): the
    /// generation changes with every change to any table, and the cookie
    /// tells namespaces apart (an inode number can come back after a
    /// namespace is gone; a cookie cannot). Equal versions, equal rulesets.
    pub fn ruleset_version(&mut self) -> Result<(u64, u32), NetlinkError> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid fd, and a pointer to a live u64 with its size in len.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.raw().as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        let answer = ask(&mut self.socket, NFT_MSG_GETGEN, NFPROTO_UNSPEC, None)?
            .ok_or_else(|| NetlinkError::Decode("no ruleset generation".into()))?;
        let generation = attributes(answer.get(NFGENMSG_LEN..).unwrap_or_default())
            .find(|(kind, _)| *kind == NFTA_GEN_ID)
            .and_then(|(_, value)| Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?)))
            .ok_or_else(|| NetlinkError::Decode("no NFTA_GEN_ID in NEWGEN".into()))?;
        Ok((cookie, generation))
    }
}

/// Does the `inet` table `name` exist in the caller's namespace?
pub fn inet_table_exists(name: &str) -> Result<bool, NetlinkError> {
    Nftables::open()?.inet_table_exists(name)
}

/// Sends one nftables GET and returns the payload of its answer (the NEW
/// message of the same object), or None when the kernel says ENOENT.
fn ask(
    socket: &mut Socket<Netfilter>,
    get: u16,
    family: u8,
    name: Option<&str>,
) -> Result<Option<Vec<u8>>, NetlinkError> {
    let name = name.map(|n| [n.as_bytes(), &[0]].concat()); // NUL-terminated
    let attrs: Vec<(u16, &[u8])> = name.iter().map(|n| (NFTA_TABLE_NAME, &n[..])).collect();
    let seq = socket.next_seq();
    // nfgenmsg: family, version, res_id.
    let request = raw_request(
        (NFNL_SUBSYS_NFTABLES << 8) | get,
        seq,
        [family, 0, 0, 0],
        &attrs,
    );
    socket.send(&request)?;
    let answer_kind = (NFNL_SUBSYS_NFTABLES << 8) | (get - 1); // GETx is NEWx + 1
    let mut answer = None;
    match socket.answers(seq, Until::Ack, |kind, payload| {
        if kind == answer_kind {
            answer = Some(payload.to_vec());
        }
    }) {
        Ok(()) => Ok(answer),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
