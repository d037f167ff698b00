//! What a store allocates from.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use super::layout::{FamilyKeys, V4_KEYS, V6_KEYS};
use crate::spec::{PodNetwork, PodRange};

/// What a store allocates from: a pool per address family the spec has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pools {
    pub ipv4: Option<Pool>,
    pub ipv6: Option<Pool>,
}

/// One family's addresses: every address of `cidr` but its network,
/// broadcast and `gateway` addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub cidr: IpNetwork,
    pub gateway: IpAddr,
}

impl Pools {
    pub fn of(net: &PodNetwork) -> Pools {
        let pool = |r: &PodRange| Pool {
            cidr: r.cidr,
            gateway: r.gateway,
        };
        Pools {
            ipv4: net.ipv4.as_ref().map(pool),
            ipv6: net.ipv6.as_ref().map(pool),
        }
    }

    /// An IPv4-only store's pools (tests, tools).
    pub fn ipv4(cidr: ipnetwork::Ipv4Network, gateway: Ipv4Addr) -> Pools {
        Pools {
            ipv4: Some(Pool {
                cidr: IpNetwork::V4(cidr),
                gateway: IpAddr::V4(gateway),
            }),
            ipv6: None,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.ipv4.iter().chain(&self.ipv6)
    }

    /// The pool of each family's keys, present or not.
    pub(super) fn by_family(&self) -> [(&'static FamilyKeys, Option<&Pool>); 2] {
        [
            (&V4_KEYS, self.ipv4.as_ref()),
            (&V6_KEYS, self.ipv6.as_ref()),
        ]
    }
}
