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

use std::sync::mpsc;

use rustc_hash::FxHashMap;

use super::{parse, rp_filter_key, Observed, RawAddresses, RawRoutes};
use crate::kernel::netlink::{Netlink, NetlinkError};
use crate::model::{is_owned_link_name, Address, Link, Route, Sysctl};

/// Links without an address whose names are asked for by index before the
/// link dump is in; past this many, the dump names them.
const MAX_ASKED_BY_INDEX: usize = 64;

/// The node's links, from one dump, in dump order until [`Partial::complete`]
/// sorts them.
pub struct NodeLinks {
    pub links: Vec<Link>,
    /// rp_filter of headcni's links and of typed links (tun, veth, ...).
    pub sysctls: Vec<Sysctl>,
    /// Position in `links` by ifindex.
    by_index: FxHashMap<u32, usize>,
}

/// Where each link (by name) and each sysctl (by key) goes when sorted.
pub struct SortOrder {
    links: Vec<usize>,
    sysctls: Vec<usize>,
}

impl NodeLinks {
    fn name(&self, index: u32) -> Option<&str> {
        let position = *self.by_index.get(&index)?;
        Some(self.links[position].name.as_str())
    }

    /// The sorted order, computed from a shared borrow so that it can run
    /// on a thread of its own while the links are being read.
    pub(crate) fn sort_order(&self) -> SortOrder {
        // Link names fit 16 bytes (IFNAMSIZ): compared as one integer,
        // zero-padded, they sort as the strings do.
        let packed = |name: &str| {
            let mut bytes = [0u8; 16];
            let len = name.len().min(16);
            bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
            u128::from_be_bytes(bytes)
        };
        let mut keyed: Vec<(u128, usize)> = self
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| (packed(&l.name), i))
            .collect();
        keyed.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.links[a.1].name.cmp(&self.links[b.1].name))
        });
        let mut sysctls: Vec<usize> = (0..self.sysctls.len()).collect();
        sysctls.sort_by(|a, b| self.sysctls[*a].cmp(&self.sysctls[*b]));
        SortOrder {
            links: keyed.into_iter().map(|(_, i)| i).collect(),
            sysctls,
        }
    }
}

/// `items` rearranged so that the item at `order[k]` comes k-th.
fn permute<T>(items: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&i| slots.get_mut(i)?.take())
        .collect()
}

/// Starts the node's link dump on a thread of `scope` (which shares the
/// caller's namespace). Its answers are decoded by the caller, through the
/// returned collector, whenever it has a moment: the dump thread does
/// nothing but keep the kernel dumping.
pub(crate) fn start_link_dump<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    families: super::Families,
) -> LinkCollector<'scope> {
    let (datagrams_tx, datagrams) = mpsc::channel::<Vec<u8>>();
    let (spare, spare_rx) = mpsc::channel::<Vec<u8>>();
    let dump = scope.spawn(move || {
        let mut nl = Netlink::open_current()?;
        nl.dump_datagrams(super::link_request(), |full| {
            if !full.is_empty() {
                // A collector gone (its pass failed) just stops reading.
                let _ = datagrams_tx.send(full);
            }
            spare_rx.try_recv().unwrap_or_default()
        })
    });
    LinkCollector {
        dump,
        datagrams,
        spare,
        links: Vec::new(),
        sysctls: Vec::new(),
        by_index: FxHashMap::default(),
        ipv6: families.ipv6,
    }
}

/// The receiving end of [`start_link_dump`].
pub struct LinkCollector<'scope> {
    dump: std::thread::ScopedJoinHandle<'scope, Result<(), NetlinkError>>,
    datagrams: mpsc::Receiver<Vec<u8>>,
    /// Decoded datagrams go back to the dump thread, to receive into again.
    spare: mpsc::Sender<Vec<u8>>,
    links: Vec<Link>,
    sysctls: Vec<Sysctl>,
    by_index: FxHashMap<u32, usize>,
    /// Whether IPv6 is observed: then the node's own links' accept_ra too.
    ipv6: bool,
}

impl LinkCollector<'_> {
    /// Decodes what has arrived so far; never waits.
    pub(crate) fn take_ready(&mut self) {
        while let Ok(datagram) = self.datagrams.try_recv() {
            self.decode(datagram);
        }
    }

    /// Waits for the end of the dump.
    pub fn finish(mut self) -> Result<NodeLinks, NetlinkError> {
        while let Ok(datagram) = self.datagrams.recv() {
            self.decode(datagram);
        }
        self.dump
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok(NodeLinks {
            links: self.links,
            sysctls: self.sysctls,
            by_index: self.by_index,
        })
    }

    fn decode(&mut self, datagram: Vec<u8>) {
        let _ = crate::kernel::netlink::walk(&datagram, |kind, _, payload| {
            if kind == super::RTM_NEWLINK {
                if let Some(l) = parse::link(payload) {
                    if self.ipv6 && !is_owned_link_name(&l.link.name) {
                        if let Some(value) = l.accept_ra {
                            self.sysctls.push(Sysctl {
                                key: crate::model::accept_ra_key(&l.link.name),
                                value: value.to_string(),
                            });
                        }
                    }
                    self.add(l.index, l.link, l.rp_filter);
                }
            }
            Ok(false)
        });
        let _ = self.spare.send(datagram);
    }

    fn add(&mut self, index: u32, link: Link, rp_filter: Option<u32>) {
        // Only the links headcni reasons about: lo and the like would be noise.
        if link.kind.is_some() || is_owned_link_name(&link.name) {
            if let Some(value) = rp_filter {
                self.sysctls.push(Sysctl {
                    key: rp_filter_key(&link.name),
                    value: value.to_string(),
                });
            }
        }
        self.by_index.insert(index, self.links.len());
        self.links.push(link);
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
        // IPv6 addresses have no label: named after an IPv4 address's label
        // on the same link; else asked by index (a few), or unnamed, which
        // never agrees with the dump, so the dump names it.
        let labelled: FxHashMap<u32, String> = addresses
            .iter()
            .filter_map(|(index, _, label)| Some((*index, label_link_name(label.clone()?))))
            .collect();
        let mut asked_for_addresses = 0;
        let mut named: Vec<(Address, u32)> = addresses
            .into_iter()
            .map(|(index, addr, label)| {
                let dev = label
                    .map(label_link_name)
                    .or_else(|| labelled.get(&index).cloned())
                    .or_else(|| {
                        asked_for_addresses += 1;
                        (asked_for_addresses <= MAX_ASKED_BY_INDEX)
                            .then(|| index_to_name(index))
                            .flatten()
                    })
                    .unwrap_or_default();
                (Address { dev, addr }, index)
            })
            .collect();
        drop(labelled);
        named.sort_unstable();
        let by_index: FxHashMap<u32, &str> = named
            .iter()
            .map(|(a, index)| (*index, a.dev.as_str()))
            .collect();
        // Links without an address are asked for by index, once each and
        // only a few: a node with thousands of them (another CNI's veths)
        // is better served by the dump's names than by a syscall apiece.
        let mut asked: FxHashMap<u32, Option<String>> = FxHashMap::default();
        let mut ask = |index: u32| -> Option<String> {
            if asked.len() >= MAX_ASKED_BY_INDEX && !asked.contains_key(&index) {
                return None; // unnamed: never agrees, so the dump names it
            }
            asked
                .entry(index)
                .or_insert_with(|| index_to_name(index))
                .clone()
        };
        let mut routes: Vec<(Route, Option<u32>)> = routes
            .into_iter()
            .map(|(oif, mut route)| {
                route.dev = oif.and_then(|i| match by_index.get(&i) {
                    Some(name) => Some((*name).to_string()),
                    None => ask(i),
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

    /// The links the node's IPv6 default routes leave by (provisional
    /// names: a link renamed meanwhile is missed until the next pass).
    pub(crate) fn ipv6_uplinks(&self) -> Vec<String> {
        let mut links: Vec<String> = self
            .observed
            .node
            .routes
            .iter()
            .filter(|r| {
                r.dst.is_ipv6() && r.dst.prefix() == 0 && r.table == crate::model::TABLE_MAIN
            })
            .filter_map(|r| r.dev.clone())
            .filter(|dev| !dev.is_empty() && !is_owned_link_name(dev))
            .collect();
        links.sort();
        links.dedup();
        links
    }

    /// Does every provisional name match the link dump? Then whatever was
    /// computed from them stands.
    pub(crate) fn names_agree(&self, links: &NodeLinks) -> bool {
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

    /// The whole observation, named after the link dump and sorted.
    pub fn complete(self, links: NodeLinks) -> Observed {
        let agree = self.names_agree(&links);
        let order = links.sort_order();
        self.complete_with(links, order, agree)
    }

    /// [`Partial::complete`] with what the caller has already worked out:
    /// the sorted order (computed beside something else) and whether the
    /// provisional names agree with the dump.
    pub(crate) fn complete_with(
        self,
        links: NodeLinks,
        order: SortOrder,
        names_agree: bool,
    ) -> Observed {
        let Partial {
            mut observed,
            address_links,
            route_links,
        } = self;
        let node = &mut observed.node;
        if !names_agree {
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
        // The node-wide sysctls are a handful: merged into the sorted rest.
        let mut sysctls = permute(links.sysctls, &order.sysctls);
        for sysctl in std::mem::take(&mut node.sysctls) {
            let at = sysctls.partition_point(|s| *s < sysctl);
            sysctls.insert(at, sysctl);
        }
        node.sysctls = sysctls;
        node.links = permute(links.links, &order.links);
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
    // nix 0.31 answers an unknown index with an empty name, not an error.
    nix::net::if_::if_indextoname(index)
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
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
            mac: Default::default(),
        }
    }

    fn route(dst: &str) -> Route {
        Route {
            scope: Scope::Link,
            ..Route::owned(TABLE_MAIN, dst.parse().unwrap())
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
        let mut dump = NodeLinks {
            links: Vec::new(),
            sysctls: Vec::new(),
            by_index: FxHashMap::default(),
        };
        // Out of name order, as a dump gives them.
        for (index, name) in links.iter().rev() {
            dump.by_index.insert(*index + GONE, dump.links.len());
            dump.links.push(link(name));
            dump.sysctls.push(Sysctl {
                key: rp_filter_key(name),
                value: "2".into(),
            });
        }
        dump
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
        let names: Vec<&str> = observed
            .node
            .links
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["hca", "hcb"], "sorted by name");
        assert_eq!(observed.node.sysctls.len(), 2, "rp_filter of both");
        assert!(observed.node.sysctls.is_sorted());

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

    #[test]
    fn many_links_without_addresses_are_named_by_the_dump() {
        let oifs: Vec<u32> = (0..200).map(|i| GONE + 100 + i).collect();
        let names: Vec<String> = (0..200).map(|i| format!("cali{i}")).collect();
        let links: Vec<(u32, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (100 + i as u32, n.as_str()))
            .collect();
        let observed = partial(&[], &oifs).complete(dump(&links));
        assert!(observed
            .node
            .routes
            .iter()
            .all(|r| r.dev.as_deref().is_some_and(|d| d.starts_with("cali"))));
    }
}
