//! `[pod_network]`: pod CIDRs of each family, their gateways and cluster ranges, MTU, masquerade, checks.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPodNetwork {
    pub(super) cidr: Option<Spanned<String>>,
    pub(super) cidr6: Option<Spanned<String>>,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) mtu: Option<Spanned<i64>>,
    pub(super) cluster_cidr: Option<Spanned<String>>,
    pub(super) cluster_cidr6: Option<Spanned<String>>,
    pub(super) masquerade: Option<Spanned<Masquerade>>,
    pub(super) mss_clamp: Option<bool>,
    pub(super) source_check: Option<bool>,
    pub(super) allow_wide_cidrs: Option<bool>,
}

pub(super) fn validate_pod_network(
    at: &Locator,
    spanned: &Spanned<RawPodNetwork>,
) -> Result<PodNetwork, SpecError> {
    let raw = spanned.get_ref();
    let wide_ok = raw.allow_wide_cidrs.unwrap_or(false);
    let ipv4 = match &raw.cidr {
        None => None,
        Some(v) => {
            let cidr = pod_cidr(at, v, Family::V4, wide_ok)?;
            let gateway = match &raw.gateway {
                None => first_host(cidr),
                Some(gw) => gateway(at, gw, cidr)?,
            };
            let cluster_cidr = match &raw.cluster_cidr {
                None => None,
                Some(c) => Some(cluster_cidr(at, c, cidr, Family::V4, wide_ok)?),
            };
            Some(PodRange {
                cidr,
                gateway,
                cluster_cidr,
            })
        }
    };
    let ipv6 = match &raw.cidr6 {
        None => None,
        Some(v) => {
            let cidr = pod_cidr(at, v, Family::V6, wide_ok)?;
            let cluster_cidr = match &raw.cluster_cidr6 {
                None => None,
                Some(c) => Some(cluster_cidr(at, c, cidr, Family::V6, wide_ok)?),
            };
            Some(PodRange {
                cidr,
                gateway: IpAddr::V6(POD_GATEWAY6),
                cluster_cidr,
            })
        }
    };
    // A field of a family the spec does not have is a mistake, not a no-op.
    for (field, value, family_field) in [
        ("pod_network.gateway", &raw.gateway, "cidr"),
        ("pod_network.cluster_cidr", &raw.cluster_cidr, "cidr"),
        ("pod_network.cluster_cidr6", &raw.cluster_cidr6, "cidr6"),
    ] {
        let present = if family_field == "cidr" {
            ipv4.is_some()
        } else {
            ipv6.is_some()
        };
        if let (Some(v), false) = (value, present) {
            return Err(at.invalid(
                v.span(),
                field,
                format!("needs pod_network.{family_field}, which is not set"),
            ));
        }
    }
    if ipv4.is_none() && ipv6.is_none() {
        return Err(at.invalid(
            spanned.span(),
            "pod_network.cidr",
            "a pod network needs `cidr` (IPv4), `cidr6` (IPv6), or both",
        ));
    }
    let mtu = match &raw.mtu {
        None => DEFAULT_MTU,
        // IPv6 needs links of at least 1280 bytes.
        Some(mtu) if ipv6.is_some() => at.in_range(mtu, "pod_network.mtu", 1280..=65535)? as u32,
        Some(mtu) => at.in_range(mtu, "pod_network.mtu", 576..=65535)? as u32,
    };
    Ok(PodNetwork {
        ipv4,
        ipv6,
        mtu,
        masquerade: raw
            .masquerade
            .as_ref()
            .map(|m| *m.get_ref())
            .unwrap_or_default(),
        mss_clamp: raw.mss_clamp.unwrap_or(true),
        source_check: raw.source_check.unwrap_or(true),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The pod CIDR field of this family.
    pub(super) fn cidr_field(self) -> &'static str {
        match self {
            Family::V4 => "pod_network.cidr",
            Family::V6 => "pod_network.cidr6",
        }
    }

    /// The smallest pod CIDR: /29 (5 pods) and /124 (14 pods).
    pub(super) fn longest_prefix(self) -> u8 {
        match self {
            Family::V4 => 29,
            Family::V6 => 124,
        }
    }
}

/// IPv4's default gateway: the CIDR's first host address (IPv6's gateway
/// is always link-local). A pod CIDR is at least a /29, so there is one.
pub(super) fn first_host(cidr: IpNetwork) -> IpAddr {
    cidr.iter().nth(1).unwrap_or(cidr.network())
}

/// A network address of `family` (no host bits set).
pub(super) fn network_of(
    at: &Locator,
    v: &Spanned<String>,
    field: &str,
    family: Family,
) -> Result<IpNetwork, SpecError> {
    let net: IpNetwork = at.parse(v, field, "a CIDR")?;
    if Family::of(&net) != family {
        let hint = match family {
            Family::V4 => "; IPv6 goes in the `...6` field (cidr6, cluster_cidr6)",
            Family::V6 => "; IPv4 goes in the field without the 6",
        };
        return Err(at.invalid(
            v.span(),
            field,
            format!("{net} is not {}{hint}", family.name()),
        ));
    }
    if net.network() != net.ip() {
        return Err(at.invalid(
            v.span(),
            field,
            format!(
                "{net} has host bits set; did you mean {}/{}?",
                net.network(),
                net.prefix()
            ),
        ));
    }
    Ok(net)
}

/// Refuses a pod or cluster CIDR that overlaps a special-purpose range, or
/// is wider than pods may have unless the spec allows it.
pub(super) fn usable_range(
    at: &Locator,
    v: &Spanned<String>,
    field: &str,
    net: IpNetwork,
    wide_ok: bool,
) -> Result<IpNetwork, SpecError> {
    if let Some(what) = super::super::ranges::special_purpose(&net) {
        return Err(at.invalid(
            v.span(),
            field,
            format!("{net} overlaps {what}, which pods cannot use"),
        ));
    }
    if super::super::ranges::too_wide(&net) && !wide_ok {
        let widest = match net {
            IpNetwork::V4(_) => super::super::ranges::WIDEST_V4,
            IpNetwork::V6(_) => super::super::ranges::WIDEST_V6,
        };
        return Err(at.invalid(
            v.span(),
            field,
            format!(
                "{net} is wider than a /{widest}: it would send a large share of all addresses to pods; if that is meant, set pod_network.allow_wide_cidrs = true"
            ),
        ));
    }
    Ok(net)
}

pub(super) fn pod_cidr(
    at: &Locator,
    v: &Spanned<String>,
    family: Family,
    wide_ok: bool,
) -> Result<IpNetwork, SpecError> {
    let field = family.cidr_field();
    let cidr = network_of(at, v, field, family)?;
    let cidr = usable_range(at, v, field, cidr, wide_ok)?;
    if cidr.prefix() > family.longest_prefix() {
        return Err(at.invalid(
            v.span(),
            field,
            format!(
                "/{} is too small: a pod network needs at least a /{}",
                cidr.prefix(),
                family.longest_prefix()
            ),
        ));
    }
    Ok(cidr)
}

pub(super) fn gateway(
    at: &Locator,
    v: &Spanned<String>,
    cidr: IpNetwork,
) -> Result<IpAddr, SpecError> {
    let field = "pod_network.gateway";
    let ip: Ipv4Addr = at.parse(v, field, "an IPv4 address")?;
    let ip = IpAddr::V4(ip);
    if !cidr.contains(ip) {
        return Err(at.invalid(
            v.span(),
            field,
            format!("{ip} is outside the pod CIDR {cidr}"),
        ));
    }
    if ip == cidr.network() || ip == cidr.broadcast() {
        return Err(at.invalid(
            v.span(),
            field,
            format!("{ip} is the network or broadcast address of {cidr}"),
        ));
    }
    Ok(ip)
}

pub(super) fn cluster_cidr(
    at: &Locator,
    v: &Spanned<String>,
    cidr: IpNetwork,
    family: Family,
    wide_ok: bool,
) -> Result<IpNetwork, SpecError> {
    let field = match family {
        Family::V4 => "pod_network.cluster_cidr",
        Family::V6 => "pod_network.cluster_cidr6",
    };
    let net = network_of(at, v, field, family)?;
    let net = usable_range(at, v, field, net, wide_ok)?;
    if !(net.contains(cidr.network()) && net.prefix() <= cidr.prefix()) {
        return Err(at.invalid(
            v.span(),
            field,
            format!("{net} does not contain this node's pod CIDR {cidr}"),
        ));
    }
    Ok(net)
}
