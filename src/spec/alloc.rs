//! Address allocation from a pod CIDR of either family, as a pure function
//! over the set of addresses in use. Round-robin from the last allocation
//! (as host-local does), so a freed address is not handed out again
//! straight away.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// At most this many candidates are looked at: an IPv6 pod CIDR has up to
/// 2^64 addresses, and a node holds a few hundred pods; a store holding
/// more addresses than this past the cursor counts as exhausted.
const MAX_PROBES: u128 = 1 << 24;

/// An address as an offset in a 128-bit space, and back in `cidr`'s family.
fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(cidr: IpNetwork, raw: u128) -> IpAddr {
    match cidr {
        // In range by construction: an IPv4 network's addresses fit in 32 bits.
        IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(raw as u32)),
        IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(raw)),
    }
}

/// The first and last address pods may get: never the network address
/// (IPv6's subnet-router anycast) nor the last one (IPv4's broadcast).
fn host_range(cidr: IpNetwork) -> Option<(u128, u128)> {
    let first = to_u128(cidr.network()) + 1;
    let last = to_u128(cidr.broadcast()).checked_sub(1)?;
    (first <= last).then_some((first, last))
}

/// Picks the next free address after `cursor`, wrapping once around the CIDR.
/// Never the network, gateway or broadcast address, never one `in_use` says is
/// taken. `last_freed` is passed over while any other address is free (a
/// stale packet for the old pod should not reach a new one), but handed out
/// when it is the only one: every address [`capacity`] counts can be had.
pub fn next_free(
    cidr: IpNetwork,
    gateway: IpAddr,
    cursor: Option<IpAddr>,
    last_freed: Option<IpAddr>,
    mut in_use: impl FnMut(IpAddr) -> bool,
) -> Option<IpAddr> {
    let (first, last) = host_range(cidr)?;
    let span = last - first + 1;
    let start = match cursor.map(to_u128) {
        Some(c) if cursor.is_some_and(|c| cidr.contains(c)) && (first..=last).contains(&c) => {
            c - first + 1
        }
        _ => 0,
    };
    let mut freed_is_free = false;
    let found = (0..span.min(MAX_PROBES))
        .map(|i| from_u128(cidr, first + (start + i) % span))
        .filter(|ip| *ip != gateway)
        .find(|ip| {
            if Some(*ip) == last_freed {
                freed_is_free = !in_use(*ip);
                return false;
            }
            !in_use(*ip)
        });
    found.or(last_freed.filter(|_| freed_is_free))
}

/// Number of addresses pods can ever get from `cidr` with `gateway`
/// (u64::MAX for an IPv6 range with more: no node gets near either).
pub fn capacity(cidr: IpNetwork, gateway: IpAddr) -> u64 {
    host_range(cidr).map_or(0, |(first, last)| {
        let gateway_inside = (first..=last).contains(&to_u128(gateway));
        let count = last - first + 1 - u128::from(gateway_inside);
        u64::try_from(count).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn last_octet(ip: IpAddr) -> u8 {
        match ip {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(v6) => v6.octets()[15],
        }
    }

    #[test]
    fn skips_network_gateway_broadcast() {
        let cidr = net("10.0.0.0/29");
        let gw = v4(10, 0, 0, 1);
        let mut used = BTreeSet::new();
        while let Some(ip) = next_free(cidr, gw, used.iter().next_back().copied(), None, |ip| {
            used.contains(&ip)
        }) {
            used.insert(ip);
        }
        let got: Vec<_> = used.iter().map(|ip| last_octet(*ip)).collect();
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert_eq!(capacity(cidr, gw), 5);
    }

    #[test]
    fn the_last_freed_address_waits_unless_it_is_the_only_one() {
        let cidr = net("10.0.0.0/29");
        let gw = v4(10, 0, 0, 1);
        let (cursor, freed) = (Some(v4(10, 0, 0, 5)), Some(v4(10, 0, 0, 6)));
        // .6 was just freed and .3 is free too: .3.
        let taken = |ip: IpAddr| ![3, 6].contains(&last_octet(ip));
        assert_eq!(
            next_free(cidr, gw, cursor, freed, taken),
            Some(v4(10, 0, 0, 3))
        );
        // .6 is the only one left: every counted address can be had.
        let taken = |ip: IpAddr| last_octet(ip) != 6;
        assert_eq!(next_free(cidr, gw, cursor, freed, taken), freed);
        // Nothing left at all.
        assert_eq!(next_free(cidr, gw, cursor, freed, |_| true), None);
    }

    proptest! {
        #[test]
        fn allocation_never_returns_reserved_or_used(prefix in 24u8..=29, used_bits in proptest::collection::vec(any::<bool>(), 256), cursor in 0u32..256, freed in 0u32..256) {
            let cidr4 = ipnetwork::Ipv4Network::new(Ipv4Addr::new(10, 1, 0, 0), prefix).unwrap();
            let cidr = IpNetwork::V4(cidr4);
            let gw4 = Ipv4Addr::new(10, 1, 0, 1);
            let gw = IpAddr::V4(gw4);
            let base = u32::from(cidr4.network());
            let bit = |ip: Ipv4Addr| used_bits[((u32::from(ip) - base) % 256) as usize];
            let in_use = |ip: IpAddr| match ip { IpAddr::V4(v4) => bit(v4), IpAddr::V6(_) => true };
            let cursor = Some(IpAddr::V4(Ipv4Addr::from(base + cursor % (1 << (32 - prefix)))));
            let freed = Some(IpAddr::V4(Ipv4Addr::from(base + freed % (1 << (32 - prefix)))));
            if let Some(ip) = next_free(cidr, gw, cursor, freed, in_use) {
                let IpAddr::V4(ip) = ip else { panic!("an IPv6 address from an IPv4 CIDR") };
                let (cidr, gw, freed) = (cidr4, gw4, freed.map(|f| match f { IpAddr::V4(v) => v, IpAddr::V6(_) => unreachable!() }));
                let in_use = bit;
                prop_assert!(cidr.contains(ip));
                prop_assert!(ip != cidr.network() && ip != cidr.broadcast() && ip != gw);
                prop_assert!(!in_use(ip));
                if Some(ip) == freed {
                    // Only when nothing else was free.
                    for raw in (base + 1)..u32::from(cidr.broadcast()) {
                        let other = Ipv4Addr::from(raw);
                        prop_assert!(other == gw || other == ip || in_use(other));
                    }
                }
            } else {
                // Exhausted: every candidate really is reserved or used.
                for raw in (base + 1)..u32::from(cidr4.broadcast()) {
                    let ip = Ipv4Addr::from(raw);
                    prop_assert!(ip == gw4 || bit(ip));
                }
            }
        }
    }

    #[test]
    fn ipv6_pods_get_addresses_of_their_cidr_round_robin() {
        let cidr = net("fd00:10:244:1::/64");
        let gw: IpAddr = "fe80::1".parse().unwrap();
        let first = next_free(cidr, gw, None, None, |_| false).unwrap();
        assert_eq!(first, "fd00:10:244:1::1".parse::<IpAddr>().unwrap());
        let next = next_free(cidr, gw, Some(first), None, |_| false).unwrap();
        assert_eq!(next, "fd00:10:244:1::2".parse::<IpAddr>().unwrap());
        assert_eq!(capacity(cidr, gw), u64::MAX - 1);
        // A small range fills up, and says so.
        let small = net("fd00::/124");
        assert_eq!(capacity(small, gw), 14);
        let mut used = BTreeSet::new();
        while let Some(ip) = next_free(small, gw, used.iter().next_back().copied(), None, |ip| {
            used.contains(&ip)
        }) {
            used.insert(ip);
        }
        assert_eq!(used.len(), 14);
    }
}
