//! Netlink messages into plain model types. Only what headcni reasons about
//! is kept; everything else in a message is skipped.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};

use crate::model::{Address, Link, Route, Scope};

/// A link plus its kernel index (the index never leaves observe).
pub struct IndexedLink {
    pub index: u32,
    pub link: Link,
}

pub fn link(msg: &LinkMessage) -> Option<IndexedLink> {
    let mut name = None;
    let mut mtu = 0;
    let mut kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(IndexedLink {
        index: msg.header.index,
        link: Link {
            name: name?,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind,
            peer: None,
        },
    })
}

pub fn address(msg: &AddressMessage, names: &HashMap<u32, String>) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equals IFA_LOCAL elsewhere.
    let ip = local.or(address)?;
    Some(Address {
        dev: names.get(&msg.header.index)?.clone(),
        addr: IpNetwork::new(ip, msg.header.prefix_len).ok()?,
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Unicast routes only: local, broadcast and multicast entries are the kernel's bookkeeping.
pub fn route(msg: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    let mut metric = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => via = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let family_default = || match msg.header.address_family {
        rtnetlink::packet_route::AddressFamily::Inet6 => {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        }
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let dst = IpNetwork::new(
        dst.unwrap_or_else(family_default),
        msg.header.destination_prefix_length,
    )
    .ok()?;
    Some(Route {
        table,
        dst,
        via,
        dev: oif.and_then(|i| names.get(&i).cloned()),
        scope: Scope::from_kernel(u8::from(msg.header.scope)),
        protocol: u8::from(msg.header.protocol),
        metric,
    })
}
