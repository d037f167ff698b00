//! Pod intents: what `Desired` is compiled from, as the store keeps them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::names::host_link_name;
use crate::model::PodKey;

/// One pod attachment as stored: what `Desired` is compiled from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodIntent {
    /// Stored flat (`container_id`, `ifname`), as before the key had a type.
    #[serde(flatten)]
    pub key: PodKey,
    pub netns: PathBuf,
    /// The pod's IPv4 address, when the spec had IPv4 as it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address, when the spec had IPv6 as it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub host_link: String,
}

impl PodIntent {
    /// Pod `container_id`'s attachment `ifname` in `netns`, its host link
    /// named as headcni names it, with no address yet (set `ip`, `ip6`).
    pub fn new(container_id: &str, ifname: &str, netns: impl Into<PathBuf>) -> PodIntent {
        PodIntent {
            host_link: host_link_name(container_id, ifname),
            key: PodKey {
                container_id: container_id.into(),
                ifname: ifname.into(),
            },
            netns: netns.into(),
            ip: None,
            ip6: None,
        }
    }

    /// The pod's addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ip6.map(IpAddr::V6))
    }

    /// The pod's addresses as "10.244.0.5 fd00::5".
    pub fn addresses_text(&self) -> String {
        self.addresses()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn key(&self) -> PodKey {
        self.key.clone()
    }

    pub fn attachment(&self) -> crate::model::Attachment {
        crate::model::Attachment::Pod(self.key())
    }
}

/// The pod intents a pass plans from, and whether a store stood behind them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intents {
    pub pods: Vec<PodIntent>,
    /// Set when no store exists at this path (never created): nothing was
    /// read, so the absence of a pod is no evidence that it is gone.
    pub missing_store: Option<PathBuf>,
}

/// Intents given whole (a file, one CNI attachment): complete as they are.
impl From<Vec<PodIntent>> for Intents {
    fn from(pods: Vec<PodIntent>) -> Self {
        Intents {
            pods,
            missing_store: None,
        }
    }
}

/// The host link a DEL of `key` may remove when the store holds no intent
/// for it: the link its name would have, unless another pod's intent owns
/// that name. Runtimes DEL after every failed ADD, also one refused because
/// its host-link name collided with an existing pod's; that DEL must not
/// take the other pod's veth. (With no owner the link, if any, is a
/// half-removed attachment of this key: intents go before their links.)
pub fn unowned_host_link(key: &PodKey, intents: &[PodIntent]) -> Result<String, PodKey> {
    let name = host_link_name(&key.container_id, &key.ifname);
    match intents
        .iter()
        .find(|i| i.host_link == name && i.key != *key)
    {
        Some(owner) => Err(owner.key.clone()),
        None => Ok(name),
    }
}
