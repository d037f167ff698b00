//! Reads kernel state over rtnetlink into plain data ([`Observed`]). Nothing else.

mod parse;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

pub use state::{Observed, ObservedPod};

use crate::model::{NetnsState, PodKey, Sysctl, TABLE_LOCAL};
use crate::netlink::{Netlink, NetlinkError};

/// Sysctls of the node namespace that the desired state speaks about.
pub const NODE_SYSCTLS: &[&str] = &["net/ipv4/ip_forward"];
/// Pod namespaces opened at once.
const POD_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("observing the node namespace")]
    Node(#[source] NetlinkError),
    #[error("observing pod {pod} in {}", path.display())]
    Pod {
        pod: PodKey,
        path: PathBuf,
        source: NetlinkError,
    },
}

/// Reads the node namespace (the caller's) and the namespaces of `pods`.
pub async fn observe(pods: &[(PodKey, PathBuf)]) -> Result<Observed, ObserveError> {
    let node_nl = Netlink::open_current().map_err(ObserveError::Node)?;
    let mut node = netns_state(&node_nl).await.map_err(ObserveError::Node)?;
    node.sysctls = read_sysctls(NODE_SYSCTLS);
    let pods = stream::iter(pods.iter().cloned())
        .map(|(key, path)| async move {
            let state = observe_pod(&path)
                .await
                .map_err(|source| ObserveError::Pod {
                    pod: key.clone(),
                    path: path.clone(),
                    source,
                })?;
            Ok::<_, ObserveError>(ObservedPod {
                key,
                netns_path: path,
                state,
            })
        })
        .buffered(POD_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Observed { node, pods })
}

/// A pod's namespace; None when it cannot be opened (gone or never there).
async fn observe_pod(path: &Path) -> Result<Option<NetnsState>, NetlinkError> {
    let nl = match Netlink::open_in(path) {
        Ok(nl) => nl,
        Err(NetlinkError::OpenNetns { .. } | NetlinkError::EnterNetns { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    netns_state(&nl).await.map(Some)
}

/// Links, IPv4 addresses and IPv4 unicast routes (all tables but local) of one namespace.
pub async fn netns_state(nl: &Netlink) -> Result<NetnsState, NetlinkError> {
    let mut link_req = LinkMessage::default();
    // Counters are most of a link message and never used here.
    link_req
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut addr_req = AddressMessage::default();
    addr_req.header.family = AddressFamily::Inet;
    let mut route_req = RouteMessage::default();
    route_req.header.address_family = AddressFamily::Inet;

    // One dump at a time: the kernel refuses a second dump on a socket (EBUSY).
    let links = nl.dump(RouteNetlinkMessage::GetLink(link_req)).await?;
    let addrs = nl.dump(RouteNetlinkMessage::GetAddress(addr_req)).await?;
    let routes = nl.dump(RouteNetlinkMessage::GetRoute(route_req)).await?;

    let mut state = NetnsState::default();
    let mut names: HashMap<u32, String> = HashMap::with_capacity(links.len());
    for msg in &links {
        if let RouteNetlinkMessage::NewLink(m) = msg {
            if let Some(l) = parse::link(m) {
                names.insert(l.index, l.link.name.clone());
                state.links.push(l.link);
            }
        }
    }
    for msg in &addrs {
        if let RouteNetlinkMessage::NewAddress(m) = msg {
            state.addresses.extend(parse::address(m, &names));
        }
    }
    for msg in &routes {
        if let RouteNetlinkMessage::NewRoute(m) = msg {
            if let Some(r) = parse::route(m, &names) {
                if r.table != TABLE_LOCAL {
                    state.routes.push(r);
                }
            }
        }
    }
    state.links.sort();
    state.addresses.sort();
    state.routes.sort();
    Ok(state)
}

/// Reads sysctls of the caller's namespace; an unreadable one is left out
/// (the plan then shows it as not observed).
pub fn read_sysctls(keys: &[&str]) -> Vec<Sysctl> {
    keys.iter()
        .filter_map(|key| {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?;
            Some(Sysctl {
                key: (*key).to_string(),
                value: value.trim().to_string(),
            })
        })
        .collect()
}
