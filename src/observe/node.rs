//! The node namespace in two parts, so the engine can dump links on one core
//! while the other does everything else: [`NodeLinks`] (the link dump, the
//! slowest by far: about a kilobyte and several microseconds of kernel time
//! a link) and [`Partial`] (addresses, routes, rules, firewall, sysctls and
//! the pods' namespaces).
//!
//! Until the link dump is in, addresses and routes carry provisional link
//! names: an IPv4 address's label (the link's name, or `name:alias`), and
//! for a link without an address, `if_indextoname`. [`Partial::names_agree`]
//! checks every one against the dump; where one disagrees (a link renamed,
//! replaced or relabelled meanwhile) [`Partial::complete`] names from the dump.

use rustc_hash::FxHashMap;

use super::{rp_filter_key, Observed, RawAddresses, RawRoutes};
use crate::model::{is_owned_link_name, Address, Link, Route, Sysctl};
use crate::netlink::{Netlink, NetlinkError};

/// The node's links, from one dump.
pub struct NodeLinks {
    /// Sorted by name.
    pub links: Vec<Link>,
    /// rp_filter of headcni's links and of typed links (tun, veth, ...).
    pub sysctls: Vec<Sysctl>,
    /// Position in `links` by ifindex.
    by_index: FxHashMap<u32, usize>,
}

impl NodeLinks {
    /// Dumps the links of the caller's namespace, on a socket of its own.
    pub fn dump() -> Result<NodeLinks, NetlinkError> {
        let mut nl = Netlink::open_current()?;
        Ok(Self::from_dump(super::dump_links(&mut nl)?))
    }

    fn from_dump(mut dumped: Vec<(u32, Link, Option<u32>)>) -> NodeLinks {
        dumped.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        let mut by_index = FxHashMap::with_capacity_and_hasher(dumped.len(), Default::default());
        let mut sysctls = Vec::new();
        let mut links = Vec::with_capacity(dumped.len());
        for (position, (index, link, rp_filter)) in dumped.into_iter().enumerate() {
            by_index.insert(index, position);
            // Only the links headcni reasons about: lo and the like would be noise.
            if link.kind.is_some() || is_owned_link_name(&link.name) {
                if let Some(value) = rp_filter {
                    sysctls.push(Sysctl {
                        key: rp_filter_key(&link.name),
                        value: value.to_string(),
                    });
                }
            }
            links.push(link);
        }
        NodeLinks {
            links,
            sysctls,
            by_index,
        }
    }

    fn name(&self, index: u32) -> Option<&str> {
        let position = *self.by_index.get(&index)?;
        Some(self.links[position].name.as_str())
    }
}

/// Everything observed but the node's links: `observed.node.links` is empty
/// and `observed.node.sysctls` holds the node-wide ones only.
pub struct Partial {
    pub observed: Observed,
    /// The ifindex behind each of `observed.node.addresses`, in order.
    address_links: Vec<u32>,
    /// The output ifindex of each of `observed.node.routes`, in order.
    route_links: Vec<Option<u32>>,
}

impl Partial {
    /// Names addresses by their labels and routes by those names (or
    /// if_indextoname), and sorts both.
    pub(super) fn new(
        mut observed: Observed,
        addresses: RawAddresses,
        routes: RawRoutes,
    ) -> Partial {
        // No label (possible through raw netlink): the name asked by index,
        // or none, which never agrees with the dump, so the dump names it.
        let mut named: Vec<(Address, u32)> = addresses
            .into_iter()
            .map(|(index, addr, label)| {
                let dev = label
                    .map(label_link_name)
                    .or_else(|| index_to_name(index))
                    .unwrap_or_default();
                (Address { dev, addr }, index)
            })
            .collect();
        named.sort_unstable();
        let by_index: FxHashMap<u32, &str> = named
            .iter()
            .map(|(a, index)| (*index, a.dev.as_str()))
            .collect();
        let mut routes: Vec<(Route, Option<u32>)> = routes
            .into_iter()
            .map(|(oif, mut route)| {
                route.dev = oif.and_then(|i| match by_index.get(&i) {
                    Some(name) => Some((*name).to_string()),
                    None => index_to_name(i),
                });
                (route, oif)
            })
            .collect();
        drop(by_index);
        routes.sort_unstable();
        let (addresses, address_links) = named.into_iter().unzip();
        let (routes, route_links) = routes.into_iter().unzip();
        observed.node.addresses = addresses;
        observed.node.routes = routes;
        Partial {
            observed,
            address_links,
            route_links,
        }
    }

    /// Does every provisional name match the link dump? Then whatever was
    /// computed from them stands.
    pub fn names_agree(&self, links: &NodeLinks) -> bool {
        let node = &self.observed.node;
        node.addresses
            .iter()
            .zip(&self.address_links)
            .all(|(a, i)| links.name(*i) == Some(a.dev.as_str()))
            && node
                .routes
                .iter()
                .zip(&self.route_links)
                .all(|(r, i)| i.and_then(|i| links.name(i)) == r.dev.as_deref())
    }

    /// The whole observation, named after the link dump.
    pub fn complete(self, links: NodeLinks) -> Observed {
        let agree = self.names_agree(&links);
        let Partial {
            mut observed,
            address_links,
            route_links,
        } = self;
        let node = &mut observed.node;
        if !agree {
            // An address on a link the dump no longer has is dropped with it.
            node.addresses = std::mem::take(&mut node.addresses)
                .into_iter()
                .zip(address_links)
                .filter_map(|(a, i)| {
                    Some(Address {
                        dev: links.name(i)?.to_string(),
                        ..a
                    })
                })
                .collect();
            for (route, oif) in node.routes.iter_mut().zip(route_links) {
                route.dev = oif.and_then(|i| links.name(i)).map(str::to_string);
            }
            node.addresses.sort_unstable();
            node.routes.sort_unstable();
        }
        node.sysctls.extend(links.sysctls);
        node.sysctls.sort_unstable();
        node.links = links.links;
        observed
    }
}

/// The link part of an IPv4 address label: `eth0:1` is an alias on `eth0`
/// (link names cannot hold ':').
fn label_link_name(mut label: String) -> String {
    if let Some(colon) = label.find(':') {
        label.truncate(colon);
    }
    label
}

/// The name of a link by index, in the caller's namespace; None when gone.
fn index_to_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname writes at most.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Scope, TABLE_MAIN};

    fn link(name: &str) -> Link {
        Link {
            name: name.into(),
            mtu: 1500,
            up: true,
            kind: Some("veth".into()),
            peer: None,
        }
    }

    fn route(dst: &str) -> Route {
        Route {
            table: TABLE_MAIN,
            dst: dst.parse().unwrap(),
            via: None,
            dev: None,
            scope: Scope::Link,
            protocol: 104,
            metric: 0,
        }
    }

    /// Link indexes far above any this machine has: if_indextoname finds none.
    const GONE: u32 = 0x7fff_0000;

    fn partial(labels: &[(u32, &str)], oifs: &[u32]) -> Partial {
        let addresses = labels
            .iter()
            .enumerate()
            .map(|(i, (index, label))| {
                let addr = format!("10.0.0.{}/32", i + 1).parse().unwrap();
                (*index, addr, Some((*label).to_string()))
            })
            .collect();
        let routes = oifs
            .iter()
            .enumerate()
            .map(|(i, oif)| (Some(*oif), route(&format!("10.1.0.{}/32", i + 1))))
            .collect();
        Partial::new(Observed::default(), addresses, routes)
    }

    fn dump(links: &[(u32, &str)]) -> NodeLinks {
        NodeLinks::from_dump(
            links
                .iter()
                .map(|(index, name)| (*index + GONE, link(name), Some(2)))
                .collect(),
        )
    }

    #[test]
    fn labels_name_addresses_and_routes_until_the_dump_says_otherwise() {
        // An alias label names its link; a route takes its link's label.
        let p = partial(
            &[(GONE + 1, "hca:1"), (GONE + 2, "hcb")],
            &[GONE + 1, GONE + 2],
        );
        assert_eq!(p.observed.node.addresses[0].dev, "hca");
        assert_eq!(p.observed.node.routes[1].dev.as_deref(), Some("hcb"));
        let links = dump(&[(1, "hca"), (2, "hcb")]);
        assert!(p.names_agree(&links));
        let observed = p.complete(links);
        assert_eq!(observed.node.links.len(), 2);
        assert_eq!(observed.node.sysctls.len(), 2, "rp_filter of both");

        // Link 2 renamed between the dumps: the dump's name wins everywhere.
        let p = partial(&[(GONE + 1, "hca"), (GONE + 2, "hcold")], &[GONE + 2]);
        let links = dump(&[(1, "hca"), (2, "hcnew")]);
        assert!(!p.names_agree(&links));
        let observed = p.complete(links);
        let devs: Vec<&str> = observed
            .node
            .addresses
            .iter()
            .map(|a| a.dev.as_str())
            .collect();
        assert_eq!(devs, ["hca", "hcnew"]);
        assert_eq!(observed.node.routes[0].dev.as_deref(), Some("hcnew"));
    }

    #[test]
    fn links_gone_or_new_between_the_dumps_are_named_by_the_link_dump() {
        // Address on a link the dump no longer has: dropped with it.
        let p = partial(&[(GONE + 1, "hca"), (GONE + 3, "hcgone")], &[]);
        let observed = p.complete(dump(&[(1, "hca")]));
        assert_eq!(observed.node.addresses.len(), 1);
        // A route through a link without addresses, not there when asked
        // but in the dump: named from the dump.
        let p = partial(&[], &[GONE + 4]);
        assert_eq!(p.observed.node.routes[0].dev, None);
        let links = dump(&[(4, "tailscale0")]);
        assert!(!p.names_agree(&links));
        let observed = p.complete(links);
        assert_eq!(observed.node.routes[0].dev.as_deref(), Some("tailscale0"));
        // ... and absent from both: no name, and that agrees.
        let p = partial(&[], &[GONE + 5]);
        assert!(p.names_agree(&dump(&[])));
    }
}
