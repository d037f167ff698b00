//! The daemon's event subscriptions: multicast sockets for rtnetlink
//! (links, addresses, routes, rules, netconf) and nftables changes. Made
//! here, at the kernel boundary; read and judged in daemon/events.rs.

use std::path::Path;

use super::socket::{Netfilter, Route, Socket};
use super::NetlinkError;

const EVENT_BUFFER_BYTES: libc::c_int = 4 * 1024 * 1024;
/// Links, addresses, routes and rules of both families (the legacy group
/// bits bind takes; IPv6 rules have none). Whatever the spec's families: a
/// spec edited to add IPv6 is read by the running daemon. The kernel's own
/// IPv6 events (a link-local address per new link, its routes) are
/// filtered out in daemon/events.rs.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV4_RULE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE) as u32;
/// Beyond the legacy bits: IPv6 rules, and forwarding and rp_filter changes
/// (RTM_NEWNETCONF).
const MEMBERSHIPS: [u32; 3] = [
    libc::RTNLGRP_IPV6_RULE,
    libc::RTNLGRP_IPV4_NETCONF,
    libc::RTNLGRP_IPV6_NETCONF,
];

/// A multicast socket for link, address, route and rule events, made in the
/// namespace at `netns` (None: the caller's). Its receive buffer is raised so
/// bursts (a pod churn, a flap) fit; an overrun still means a full resync.
pub fn event_socket(netns: Option<&Path>) -> Result<Socket<Route>, NetlinkError> {
    Socket::subscribe(netns, GROUPS, &MEMBERSHIPS, EVENT_BUFFER_BYTES)
}

/// A socket for nftables change events in the caller's namespace: someone
/// flushing headcni's table is drift like a deleted route.
pub fn nftables_socket() -> Result<Socket<Netfilter>, NetlinkError> {
    Socket::subscribe(
        None,
        0,
        &[libc::NFNLGRP_NFTABLES as u32],
        EVENT_BUFFER_BYTES,
    )
}
