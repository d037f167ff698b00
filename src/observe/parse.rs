//! Dump answers into plain model types, read in place: only the attributes
//! headcni reasons about are decoded; the rest are skipped unparsed.
//! Header layouts are the kernel's uapi structs (ifinfomsg, ifaddrmsg, rtmsg).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::kernel::netlink::attributes;
use crate::model::{Link, Route, RouteType, Scope};

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;

use libc::{
    IFA_ADDRESS, IFA_LABEL, IFA_LOCAL, IFLA_ADDRESS, IFLA_AF_SPEC, IFLA_GROUP, IFLA_IFNAME,
    IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO, IFLA_LINK_NETNSID, IFLA_MTU, RTA_DST, RTA_GATEWAY,
    RTA_OIF, RTA_PRIORITY, RTA_TABLE,
};

const IFF_UP: u32 = libc::IFF_UP as u32;
const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u8 = libc::AF_INET6 as u8;
// Not in libc: include/uapi/linux/if_link.h and ip_conf's devconf ids.
const IFLA_INET_CONF: u16 = 1;
const IPV4_DEVCONF_RP_FILTER: usize = 8;
const AF_INET6_SPEC: u16 = libc::AF_INET6 as u16;
// include/uapi/linux/if_link.h (IFLA_INET6_CONF) and ipv6.h (DEVCONF_ACCEPT_RA).
const IFLA_INET6_CONF: u16 = 2;
const DEVCONF_ACCEPT_RA: usize = 3;

/// A link plus its kernel index (the index never leaves observe).
pub struct IndexedLink {
    pub index: u32,
    pub link: Link,
    /// net.ipv4.conf.<link>.rp_filter, from the link's IPv4 devconf.
    pub rp_filter: Option<u32>,
    /// net.ipv6.conf.<link>.accept_ra, from the link's IPv6 devconf.
    pub accept_ra: Option<i32>,
    /// The link's group (IFLA_GROUP): apply deletes many links at once by group.
    pub group: u32,
    /// A veth's peer: its index (IFLA_LINK), and whether it lives in
    /// another namespace (IFLA_LINK_NETNSID). CHECK compares the two ends.
    pub peer_index: Option<u32>,
    pub peer_elsewhere: bool,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn ip(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

/// RTM_NEWLINK payload.
pub fn link(payload: &[u8]) -> Option<IndexedLink> {
    let index = u32_at(payload, 4)?;
    let flags = u32_at(payload, 8)?;
    let (mut name, mut mtu, mut kind, mut mac, mut rp_filter) = (None, 0, None, None, None);
    let mut accept_ra = None;
    let mut group = 0;
    let (mut peer_index, mut peer_elsewhere) = (None, false);
    for (attr, value) in attributes(payload.get(IFINFOMSG_LEN..)?) {
        match attr {
            IFLA_IFNAME => name = Some(c_string(value)),
            IFLA_ADDRESS => mac = Some(value),
            IFLA_MTU => mtu = u32_at(value, 0)?,
            IFLA_GROUP => group = u32_at(value, 0)?,
            IFLA_LINK => peer_index = u32_at(value, 0),
            IFLA_LINK_NETNSID => peer_elsewhere = true,
            IFLA_AF_SPEC => {
                rp_filter = inet_devconf(value, IPV4_DEVCONF_RP_FILTER);
                accept_ra = inet6_devconf(value, DEVCONF_ACCEPT_RA);
            }
            IFLA_LINKINFO => {
                for (info_attr, info_value) in attributes(value) {
                    if info_attr == IFLA_INFO_KIND {
                        kind = Some(c_string(info_value));
                    }
                }
            }
            _ => {}
        }
    }
    Some(IndexedLink {
        index,
        link: Link {
            name: name?,
            mtu,
            up: flags & IFF_UP != 0,
            kind,
            mac: crate::model::Seen(mac.and_then(|m| m.try_into().ok())),
        },
        group,
        rp_filter,
        accept_ra,
        peer_index,
        peer_elsewhere,
    })
}

/// One value of the IPv4 devconf array inside IFLA_AF_SPEC (ids start at 1).
fn inet_devconf(af_spec: &[u8], id: usize) -> Option<u32> {
    let (_, inet) = attributes(af_spec).find(|(attr, _)| *attr == AF_INET)?;
    let (_, conf) = attributes(inet).find(|(attr, _)| *attr == IFLA_INET_CONF)?;
    u32_at(conf, (id - 1) * 4)
}

/// One value of the IPv6 devconf array inside IFLA_AF_SPEC (ids start at 0).
fn inet6_devconf(af_spec: &[u8], id: usize) -> Option<i32> {
    let (_, inet6) = attributes(af_spec).find(|(attr, _)| *attr == AF_INET6_SPEC)?;
    let (_, conf) = attributes(inet6).find(|(attr, _)| *attr == IFLA_INET6_CONF)?;
    u32_at(conf, id * 4).map(|v| v as i32)
}

/// RTM_NEWADDR payload, with the link still an index (names come from the
/// link dump, which may still be running).
pub fn address(payload: &[u8]) -> Option<RawAddress> {
    let prefix = *payload.get(1)?;
    let index = u32_at(payload, 4)?;
    let (mut local, mut address, mut label) = (None, None, None);
    for (attr, value) in attributes(payload.get(IFADDRMSG_LEN..)?) {
        match attr {
            IFA_LOCAL => local = ip(value),
            IFA_ADDRESS => address = ip(value),
            IFA_LABEL => label = Some(value),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equals IFA_LOCAL elsewhere.
    let ip = local.or(address)?;
    Some(RawAddress {
        index,
        addr: IpNetwork::new(ip, prefix).ok()?,
        label: label.map(c_string),
    })
}

/// An address with its link as an index, and its label (IPv4 only).
pub struct RawAddress {
    pub index: u32,
    pub addr: IpNetwork,
    pub label: Option<String>,
}

/// The table of an RTM_NEWROUTE payload, read from its header alone, so
/// routes of tables nobody asked about are skipped unparsed.
pub fn route_table_hint(payload: &[u8]) -> Option<u8> {
    payload.get(4).copied()
}

/// RTM_NEWROUTE payload, with its output link still an index. Unicast
/// routes only: local, broadcast and multicast entries are the kernel's bookkeeping.
pub fn route(payload: &[u8]) -> Option<(Option<u32>, Route)> {
    let header = payload.get(..RTMSG_LEN)?;
    let (family, dst_len, header_table, protocol, scope, kind) = (
        header[0], header[1], header[4], header[5], header[6], header[7],
    );
    // Local, broadcast and multicast entries are the kernel's bookkeeping.
    let kind = RouteType::from_kernel(kind)?;
    let (mut table, mut dst, mut via, mut oif, mut metric) =
        (u32::from(header_table), None, None, None, 0);
    for (attr, value) in attributes(&payload[RTMSG_LEN..]) {
        match attr {
            RTA_TABLE => table = u32_at(value, 0)?,
            RTA_DST => dst = ip(value),
            RTA_GATEWAY => via = ip(value),
            RTA_OIF => oif = u32_at(value, 0),
            RTA_PRIORITY => metric = u32_at(value, 0)?,
            _ => {}
        }
    }
    let unspecified = if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let route = Route {
        table,
        dst: IpNetwork::new(dst.unwrap_or(unspecified), dst_len).ok()?,
        via,
        dev: None,
        scope: Scope::from_kernel(scope),
        protocol,
        metric,
        kind,
    };
    Some((oif, route))
}

const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FRA_PROTOCOL: u16 = 21;
const FR_ACT_TO_TBL: u8 = 1;
const FIB_RULE_HDR_LEN: usize = 12;

/// RTM_NEWRULE payload (struct fib_rule_hdr + attributes); lookup rules only.
pub fn rule(payload: &[u8]) -> Option<crate::model::Rule> {
    let header = payload.get(..FIB_RULE_HDR_LEN)?;
    let (dst_len, src_len, header_table, action) = (header[1], header[2], header[4], header[7]);
    if action != FR_ACT_TO_TBL {
        return None;
    }
    let (mut src, mut dst, mut priority, mut table, mut protocol) =
        (None, None, 0, u32::from(header_table), 0);
    for (attr, value) in attributes(&payload[FIB_RULE_HDR_LEN..]) {
        match attr {
            FRA_SRC => src = ip(value).and_then(|a| IpNetwork::new(a, src_len).ok()),
            FRA_DST => dst = ip(value).and_then(|a| IpNetwork::new(a, dst_len).ok()),
            FRA_PRIORITY => priority = u32_at(value, 0)?,
            FRA_TABLE => table = u32_at(value, 0)?,
            FRA_PROTOCOL => protocol = *value.first()?,
            _ => {}
        }
    }
    Some(crate::model::Rule {
        priority,
        src,
        dst,
        table,
        protocol,
    })
}
