//! Model objects in `ip`'s words (`ip route`, `ip rule`, `ip link`): how
//! plans, drift reports and logs name them.

use std::fmt;

use super::{Link, Route, Rule, Scope, VethPeer, RTPROT_HEADCNI, RTPROT_NAME, TABLE_MAIN};

/// A route protocol as `ip route` names it (headcni's own by its registered name).
pub fn protocol_name(p: u8) -> String {
    match p {
        RTPROT_HEADCNI => RTPROT_NAME.to_string(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        16 => "dhcp".into(),
        other => other.to_string(),
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.kind.is_unicast() {
            write!(f, "{} ", self.kind.name())?;
        }
        if self.dst.prefix() == 0 {
            write!(f, "default")?;
        } else if self.dst.prefix() == 32 && self.dst.is_ipv4() || self.dst.prefix() == 128 {
            write!(f, "{}/{}", self.dst.ip(), self.dst.prefix())?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        if self.table != TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto {}", protocol_name(self.protocol))?;
        match self.scope {
            Scope::Link => write!(f, " scope link")?,
            Scope::Host => write!(f, " scope host")?,
            Scope::Other(v) => write!(f, " scope {v}")?,
            Scope::Global => {}
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.priority)?;
        match &self.src {
            Some(src) => write!(f, " from {src}")?,
            None => write!(f, " from all")?,
        }
        if let Some(dst) = &self.dst {
            write!(f, " to {dst}")?;
        }
        write!(
            f,
            " lookup {} proto {}",
            self.table,
            protocol_name(self.protocol)
        )
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_link(f, self, None)
    }
}

/// `ip link`'s words: name, type, the pod end of a veth to create, MTU, state.
pub(crate) fn write_link(
    f: &mut fmt::Formatter<'_>,
    link: &Link,
    peer: Option<&VethPeer>,
) -> fmt::Result {
    write!(f, "{}", link.name)?;
    if let Some(kind) = &link.kind {
        write!(f, " type {kind}")?;
    }
    if let Some(peer) = peer {
        write!(
            f,
            " peer {} netns {}",
            peer.ifname,
            peer.netns_path.display()
        )?;
    }
    write!(
        f,
        " mtu {} {}",
        link.mtu,
        if link.up { "up" } else { "down" }
    )
}
