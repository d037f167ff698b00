//! Which address ranges can hold pods: never a special-purpose one, never
//! one that holds the node's own uplink, and a very wide one only when the
//! spec says so. Pure: the node's addresses come in as data.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::{is_owned_link_name, NetnsState};

/// Ranges no pod network may overlap, and what they are (RFC 6890 and the
/// IANA special-purpose registries). A pod route into any of them cuts the
/// node off something it needs: loopback, link-local (daemon mode's own
/// transfer link may live there), multicast, broadcast, IPv4-mapped.
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    (
        "240.0.0.0/4",
        "reserved, with the broadcast address (240.0.0.0/4)",
    ),
    ("::/8", "loopback, unspecified and IPv4-compatible (::/8)"),
    ("::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
];

/// Shortest prefix a pod or cluster CIDR may have without the spec's
/// `pod_network.allow_wide_cidrs`: wider ones send a large share of all
/// addresses (`128.0.0.0/1` half of IPv4, `2000::/3` all global IPv6) to
/// pods or to the tailnet.
pub const WIDEST_V4: u8 = 8;
pub const WIDEST_V6: u8 = 32;

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The special-purpose range `net` overlaps, described, if any.
pub fn special_purpose(net: &IpNetwork) -> Option<&'static str> {
    SPECIAL.iter().find_map(|(range, what)| {
        let range: IpNetwork = range.parse().ok()?;
        (range.is_ipv4() == net.is_ipv4() && overlaps(&range, net)).then_some(*what)
    })
}

/// Whether `net` is wider than pods may have without an opt-in.
pub fn too_wide(net: &IpNetwork) -> bool {
    net.prefix()
        < match net {
            IpNetwork::V4(_) => WIDEST_V4,
            IpNetwork::V6(_) => WIDEST_V6,
        }
}

/// Why `ranges` (the spec's pod and cluster CIDRs, by field) cannot be used
/// on this node: one holds an address of the node's own (on a link headcni
/// did not make) or the gateway of one of its default routes. Pods there
/// would take the node's uplink traffic, or the node would route its way
/// out into the pod network.
pub fn covers_node(spec: &super::Spec, node: &NetnsState) -> Option<String> {
    let pod = &spec.pod_network;
    let ranges = [
        ("pod_network.cidr", pod.ipv4.as_ref().map(|r| r.cidr)),
        ("pod_network.cidr6", pod.ipv6.as_ref().map(|r| r.cidr)),
        (
            "pod_network.cluster_cidr",
            pod.ipv4.as_ref().and_then(|r| r.cluster_cidr),
        ),
        (
            "pod_network.cluster_cidr6",
            pod.ipv6.as_ref().and_then(|r| r.cluster_cidr),
        ),
    ];
    ranges_cover_node(
        ranges
            .iter()
            .filter_map(|(field, net)| net.as_ref().map(|net| (*field, net))),
        node,
    )
    .map(|why| format!("{}: {why}", spec.source.display()))
}

fn ranges_cover_node<'a>(
    ranges: impl IntoIterator<Item = (&'static str, &'a IpNetwork)>,
    node: &NetnsState,
) -> Option<String> {
    let usable = |ip: &IpAddr| !ip.is_loopback() && !is_link_local(ip);
    let addresses = node
        .addresses
        .iter()
        .filter(|a| !is_owned_link_name(&a.dev) && usable(&a.addr.ip()))
        .map(|a| (a.addr.ip(), format!("address {} of {}", a.addr, a.dev)));
    let gateways = node
        .routes
        .iter()
        .filter(|r| r.dst.prefix() == 0 && r.table == crate::model::TABLE_MAIN)
        .filter_map(|r| r.via.map(|via| (via, format!("default gateway {via}"))));
    let ranges: Vec<_> = ranges.into_iter().collect();
    for (ip, what) in addresses.chain(gateways) {
        if let Some((field, range)) = ranges.iter().find(|(_, r)| r.contains(ip)) {
            return Some(format!(
                "{field} {range} holds the node's own {what}: pods there would take the node's traffic; choose a range the node does not use"
            ));
        }
    }
    None
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, Route};

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_found_by_any_overlap() {
        for (range, what) in [
            ("::/1", "::/8"),
            ("128.0.0.0/1", "169.254.0.0/16"),
            ("127.0.0.0/24", "127.0.0.0/8"),
            ("169.254.77.0/30", "169.254.0.0/16"),
            ("0.0.0.0/0", "0.0.0.0/8"),
            ("fe80::/64", "fe80::/10"),
            ("ff02::/16", "ff00::/8"),
            ("255.255.255.255/32", "240.0.0.0/4"),
        ] {
            let found = special_purpose(&net(range)).unwrap_or_default();
            assert!(found.contains(what), "{range}: {found:?}");
        }
        for fine in [
            "10.244.0.0/16",
            "100.64.0.0/10",
            "fd00:10:244::/56",
            "2001:db8::/32",
        ] {
            assert_eq!(special_purpose(&net(fine)), None, "{fine}");
        }
    }

    #[test]
    fn wide_ranges_need_an_opt_in() {
        assert!(too_wide(&net("2000::/3")));
        assert!(too_wide(&net("10.0.0.0/7")));
        assert!(!too_wide(&net("10.0.0.0/8")));
        assert!(!too_wide(&net("fd00::/32")));
    }

    #[test]
    fn a_range_holding_the_uplink_or_its_gateway_is_named() {
        let mut node = NetnsState::default();
        node.addresses.push(Address {
            dev: "eth0".into(),
            addr: net("203.0.113.2/24"),
        });
        node.addresses.push(Address {
            dev: crate::spec::host_link_name("a", "eth0"),
            addr: net("10.244.0.1/32"),
        });
        node.routes.push(Route {
            via: Some("192.0.2.1".parse().unwrap()),
            ..Route::owned(crate::model::TABLE_MAIN, net("0.0.0.0/0"))
        });
        let pods = net("10.244.0.0/24");
        assert_eq!(
            ranges_cover_node([("pod_network.cidr", &pods)], &node),
            None
        );
        let wide = net("203.0.0.0/8");
        let why = ranges_cover_node([("pod_network.cluster_cidr", &wide)], &node).unwrap();
        assert!(
            why.contains("pod_network.cluster_cidr 203.0.0.0/8")
                && why.contains("203.0.113.2/24 of eth0"),
            "{why}"
        );
        let gw = net("192.0.2.0/24");
        let why = ranges_cover_node([("pod_network.cidr", &gw)], &node).unwrap();
        assert!(why.contains("default gateway 192.0.2.1"), "{why}");
    }
}
