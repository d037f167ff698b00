//! Kernel state of one namespace, indexed for the diff's lookups, and what
//! the desired state keeps.

use std::collections::{HashMap, HashSet};

use foldhash::fast::FixedState;
use ipnetwork::IpNetwork;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::{Address, Link, NetnsState, Route, RouteKey, Sysctl};
use crate::spec::Desired;

/// Maps keyed by addresses and routes. FxHash, fine for names and IPv4,
/// clusters IPv6 prefixes (measured: 20,000 dual-stack route keys in
/// 9,400 distinct low 16 bits, 257 in the worst): foldhash does not, at
/// about FxHash's speed. Fixed seed: the same on every run.
pub(super) type AddrMap<K, V> = HashMap<K, V, FixedState>;
pub(super) type AddrSet<K> = HashSet<K, FixedState>;

/// Kernel state of one namespace, indexed for lookups.
pub(super) struct Index<'a> {
    pub links: FxHashMap<&'a str, &'a Link>,
    /// Sysctl values by key (the node's: forwarding, per-link rp_filter).
    pub sysctls: FxHashMap<&'a str, &'a str>,
    pub addresses: AddrSet<(&'a str, IpNetwork)>,
    pub owned_routes: AddrMap<RouteKey, &'a Route>,
    /// Foreign routes by (table, destination): anything there blocks ours.
    pub foreign_routes: AddrMap<(u32, IpNetwork), &'a Route>,
}

impl<'a> Index<'a> {
    pub fn new(state: &'a NetnsState) -> Self {
        let mut index = Self::without_links(state);
        index.set_links(&state.links, &state.sysctls);
        index
    }

    /// Addresses and routes only; links and sysctls come with [`Index::set_links`].
    pub fn without_links(state: &'a NetnsState) -> Self {
        let mut owned_routes =
            AddrMap::with_capacity_and_hasher(state.routes.len(), Default::default());
        let mut foreign_routes = AddrMap::default();
        for route in &state.routes {
            if route.is_owned() {
                owned_routes.insert(route.key(), route);
            } else {
                foreign_routes
                    .entry((route.table, route.dst))
                    .or_insert(route);
            }
        }
        Index {
            links: FxHashMap::default(),
            sysctls: FxHashMap::default(),
            addresses: state
                .addresses
                .iter()
                .map(|a| (a.dev.as_str(), a.addr))
                .collect(),
            owned_routes,
            foreign_routes,
        }
    }

    /// Replaces the links and sysctls, keeping the maps' room: the second
    /// stage then allocates nothing large (with glibc, a large allocation
    /// after many frees first consolidates every free chunk: milliseconds).
    pub fn set_links(
        &mut self,
        links: impl IntoIterator<Item = &'a Link>,
        sysctls: impl IntoIterator<Item = &'a Sysctl>,
    ) {
        self.links.clear();
        self.links
            .extend(links.into_iter().map(|l| (l.name.as_str(), l)));
        self.sysctls.clear();
        self.sysctls.extend(
            sysctls
                .into_iter()
                .map(|s| (s.key.as_str(), s.value.as_str())),
        );
    }
}

/// What every desired pod and node route keeps: never removed as stale.
pub(super) struct Kept<'a> {
    pub links: FxHashSet<&'a str>,
    pub routes: AddrSet<RouteKey>,
    pub addresses: AddrSet<(&'a str, IpNetwork)>,
}

impl<'a> Kept<'a> {
    pub fn new(desired: &'a Desired) -> Self {
        let n = desired.pods.len();
        // Sized for what comes (a pod has a route and an address per
        // family): growing a table of 10,000 means rehashing it whole.
        let routes = desired.node_routes.len()
            + desired
                .pods
                .iter()
                .map(|p| p.host_routes.len())
                .sum::<usize>();
        let addresses = desired.pods.iter().map(|p| p.host_addresses.len()).sum();
        let mut kept = Kept {
            links: FxHashSet::with_capacity_and_hasher(n, Default::default()),
            routes: AddrSet::with_capacity_and_hasher(routes, Default::default()),
            addresses: AddrSet::with_capacity_and_hasher(addresses, Default::default()),
        };
        kept.routes
            .extend(desired.node_routes.iter().map(Route::key));
        for pod in &desired.pods {
            kept.links.insert(pod.host_link.name.as_str());
            kept.routes.extend(pod.host_routes.iter().map(Route::key));
            kept.addresses
                .extend(pod.host_addresses.iter().map(|a| (a.dev.as_str(), a.addr)));
        }
        kept
    }

    /// Is `address` one of headcni's that nobody keeps?
    pub fn is_stale_address(&self, address: &Address) -> bool {
        crate::model::is_owned_link_name(&address.dev)
            && !crate::model::is_kernel_link_local(&address.addr)
            && !self
                .addresses
                .contains(&(address.dev.as_str(), address.addr))
    }

    /// Is `route` one of headcni's that nobody keeps?
    pub fn is_stale_route(&self, route: &Route) -> bool {
        route.is_owned() && !self.routes.contains(&route.key())
    }
}
