//! Address allocation from the pod CIDR, as a pure function over the set of
//! addresses in use. Round-robin from the last allocation (as host-local does),
//! so a freed address is not handed out again straight away.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// Picks the next free address after `cursor`, wrapping once around the CIDR.
/// Never the network, gateway or broadcast address, never one `in_use` says is
/// taken. `last_freed` is passed over while any other address is free (a
/// stale packet for the old pod should not reach a new one), but handed out
/// when it is the only one: every address [`capacity`] counts can be had.
pub fn next_free(
    cidr: Ipv4Network,
    gateway: Ipv4Addr,
    cursor: Option<Ipv4Addr>,
    last_freed: Option<Ipv4Addr>,
    mut in_use: impl FnMut(Ipv4Addr) -> bool,
) -> Option<Ipv4Addr> {
    let first = u32::from(cidr.network()) + 1;
    let last = u32::from(cidr.broadcast()) - 1;
    if first > last {
        return None;
    }
    let span = last - first + 1;
    let start = match cursor {
        Some(c) if cidr.contains(c) && (first..=last).contains(&u32::from(c)) => {
            u32::from(c) - first + 1
        }
        _ => 0,
    };
    let mut freed_is_free = false;
    let found = (0..span)
        .map(|i| Ipv4Addr::from(first + (start + i) % span))
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

/// Number of addresses pods can ever get from `cidr`.
pub fn capacity(cidr: Ipv4Network) -> u32 {
    // network, broadcast and gateway are never handed out.
    (1u32 << (32 - cidr.prefix())).saturating_sub(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_broadcast() {
        let cidr = net("10.0.0.0/29");
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let mut used = BTreeSet::new();
        while let Some(ip) = next_free(cidr, gw, used.iter().next_back().copied(), None, |ip| {
            used.contains(&ip)
        }) {
            used.insert(ip);
        }
        let got: Vec<_> = used.iter().map(|ip| ip.octets()[3]).collect();
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert_eq!(capacity(cidr), 5);
    }

    #[test]
    fn the_last_freed_address_waits_unless_it_is_the_only_one() {
        let cidr = net("10.0.0.0/29");
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let (cursor, freed) = (
            Some(Ipv4Addr::new(10, 0, 0, 5)),
            Some(Ipv4Addr::new(10, 0, 0, 6)),
        );
        // .6 was just freed and .3 is free too: .3.
        let taken = |ip: Ipv4Addr| ![3, 6].contains(&ip.octets()[3]);
        assert_eq!(
            next_free(cidr, gw, cursor, freed, taken),
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
        // .6 is the only one left: every counted address can be had.
        let taken = |ip: Ipv4Addr| ip.octets()[3] != 6;
        assert_eq!(next_free(cidr, gw, cursor, freed, taken), freed);
        // Nothing left at all.
        assert_eq!(next_free(cidr, gw, cursor, freed, |_| true), None);
    }

    proptest! {
        #[test]
        fn allocation_never_returns_reserved_or_used(prefix in 24u8..=29, used_bits in proptest::collection::vec(any::<bool>(), 256), cursor in 0u32..256, freed in 0u32..256) {
            let cidr = Ipv4Network::new(Ipv4Addr::new(10, 1, 0, 0), prefix).unwrap();
            let gw = Ipv4Addr::new(10, 1, 0, 1);
            let base = u32::from(cidr.network());
            let in_use = |ip: Ipv4Addr| used_bits[((u32::from(ip) - base) % 256) as usize];
            let cursor = Some(Ipv4Addr::from(base + cursor % (1 << (32 - prefix))));
            let freed = Some(Ipv4Addr::from(base + freed % (1 << (32 - prefix))));
            if let Some(ip) = next_free(cidr, gw, cursor, freed, in_use) {
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
                for raw in (base + 1)..u32::from(cidr.broadcast()) {
                    let ip = Ipv4Addr::from(raw);
                    prop_assert!(ip == gw || in_use(ip));
                }
            }
        }
    }
}
