//! One nftables question over nfnetlink: does a table exist? Listing the
//! table takes an `nft` process (milliseconds); this takes one datagram, so
//! a node without headcni's table never starts one.

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::NetlinkError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFTA_TABLE_NAME: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

/// Does the `inet` table `name` exist in the caller's namespace?
pub fn inet_table_exists(name: &str) -> Result<bool, NetlinkError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    socket
        .send(&get_table_request(name), 0)
        .map_err(NetlinkError::Socket)?;
    let mut exists = false;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0).map_err(NetlinkError::Socket)?;
        let mut offset = 0;
        while offset + NLMSG_HDRLEN <= n {
            let header = &buf[offset..n];
            let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let kind = u16::from_ne_bytes([header[4], header[5]]);
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                exists = true;
            } else if kind == NLMSG_ERROR {
                let code = header
                    .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| NetlinkError::Decode("short nfnetlink error".into()))?;
                return match -code {
                    0 => Ok(exists),
                    libc::ENOENT => Ok(false),
                    errno => Err(NetlinkError::Kernel(std::io::Error::from_raw_os_error(
                        errno,
                    ))),
                };
            }
            if len < NLMSG_HDRLEN {
                return Err(NetlinkError::Decode("nfnetlink message too short".into()));
            }
            offset += (len + 3) & !3;
        }
    }
}

/// nlmsghdr + nfgenmsg + NFTA_TABLE_NAME.
fn get_table_request(name: &str) -> Vec<u8> {
    let value_len = name.len() + 1; // NUL-terminated
    let attr_len = 4 + value_len;
    let total = NLMSG_HDRLEN + 4 + ((attr_len + 3) & !3);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    out.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]); // nfgenmsg: family, version, res_id
    out.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    out.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    out.extend_from_slice(name.as_bytes());
    out.resize(total, 0);
    out
}
