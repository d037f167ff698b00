//! Model objects into rtnetlink request messages.

use std::net::IpAddr;
use std::os::fd::RawFd;

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use crate::model::{Address, Link, Route};

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A veth pair whose peer is created directly inside the pod's namespace,
/// under its final name, up, with the same MTU: one request, nothing to rename.
pub fn new_veth(host: &Link, peer_name: &str, peer_netns: RawFd) -> LinkMessage {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer_name.to_string())
        .mtu(host.mtu)
        .setns_by_fd(peer_netns)
        .build();
    let builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host.name.clone())
        .mtu(host.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
    if host.up {
        builder.up()
    } else {
        builder.down()
    }
    .build()
}

/// No IPv6 address of the kernel's own on the link `name` (addr_gen_mode
/// none): a host veth has headcni's fe80::1 and needs no other, and the
/// kernel's would add an address and a route per pod to every dump. Sent
/// before the link has a carrier (its pod end still down), when the kernel
/// would make it.
pub fn no_kernel_link_local(name: &str) -> LinkMessage {
    let mut msg = LinkUnspec::new_with_name(name).build();
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    msg
}

pub fn set_link(index: u32, link: &Link) -> LinkMessage {
    let builder = LinkUnspec::new_with_index(index).mtu(link.mtu);
    if link.up {
        builder.up()
    } else {
        builder.down()
    }
    .build()
}

pub fn set_link_by_name(name: &str, up: bool) -> LinkMessage {
    let builder = LinkUnspec::new_with_name(name);
    if up { builder.up() } else { builder.down() }.build()
}

pub fn del_link(index: u32) -> LinkMessage {
    LinkUnspec::new_with_index(index).build()
}

pub fn set_link_group(index: u32, group: u32) -> LinkMessage {
    LinkUnspec::new_with_index(index).link_group(group).build()
}

/// Deletes every link in `group` (`ip link delete group N`): the kernel
/// unregisters them together, one RCU grace period for all of them.
pub fn del_link_group(group: u32) -> LinkMessage {
    LinkUnspec::new_with_index(0).link_group(group).build()
}

pub fn address(index: u32, addr: &Address) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr.addr.ip());
    msg.header.prefix_len = addr.addr.prefix();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.addr.ip()));
    if addr.addr.is_ipv4() {
        msg.attributes
            .push(AddressAttribute::Address(addr.addr.ip()));
    } else {
        // No duplicate address detection: headcni's addresses are unique by
        // allocation (pods) or by construction (a link-local gateway alone
        // on its veth), and a tentative address cannot be used for a second
        // or so: a pod's first packets, or its gateway's answers, would be lost.
        // A link-local gateway (fe80::1 on a host veth) routes nothing: the
        // pod's /128 route is headcni's own, and the kernel's fe80::/64 per
        // link would only double the node's route dump.
        let flags = match addr.addr.ip() {
            IpAddr::V6(ip) if ip.is_unicast_link_local() => {
                AddressFlags::Nodad | AddressFlags::Noprefixroute
            }
            _ => AddressFlags::Nodad,
        };
        msg.attributes.push(AddressAttribute::Flags(flags));
    }
    msg
}

/// A route request. The protocol is always set, so a delete can only ever
/// match a route with that protocol: headcni cannot delete a foreign route.
pub fn route(route: &Route, oif: Option<u32>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(route.dst.ip());
    msg.header.destination_prefix_length = route.dst.prefix();
    msg.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.scope = RouteScope::from(route.scope.to_kernel());
    msg.header.kind = RouteType::from(route.kind.to_kernel());
    msg.attributes.push(RouteAttribute::Table(route.table));
    if route.dst.prefix() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.dst.ip(),
            )));
    }
    if let Some(via) = route.via {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(via)));
    }
    if let Some(oif) = oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if route.metric != 0 {
        msg.attributes.push(RouteAttribute::Priority(route.metric));
    }
    msg
}

/// A lookup rule; always with its protocol, so a delete matches only headcni's.
pub fn rule(rule: &crate::model::Rule) -> rtnetlink::packet_route::rule::RuleMessage {
    use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
    let mut msg = RuleMessage::default();
    let ipv6 = rule.src.or(rule.dst).is_some_and(|net| net.is_ipv6());
    msg.header.family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(rule.table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    msg.attributes.push(RuleAttribute::Table(rule.table));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(rule.protocol)));
    if let Some(src) = rule.src {
        msg.header.src_len = src.prefix();
        msg.attributes.push(RuleAttribute::Source(src.ip()));
    }
    if let Some(dst) = rule.dst {
        msg.header.dst_len = dst.prefix();
        msg.attributes.push(RuleAttribute::Destination(dst.ip()));
    }
    msg
}
