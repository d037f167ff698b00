//! `[[route]]`: routes the operator wants kept.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) destination: Spanned<String>,
    pub(super) via: Option<Spanned<String>>,
    pub(super) device: Option<Spanned<String>>,
    pub(super) metric: Option<Spanned<i64>>,
}

pub(super) fn validate_route(
    at: &Locator,
    index: usize,
    spanned: &Spanned<RawRoute>,
    pod: &PodNetwork,
) -> Result<ExtraRoute, SpecError> {
    let raw = spanned.get_ref();
    let field = |name: &str| format!("route[{index}].{name}");
    let destination: IpNetwork = raw.destination.get_ref().parse().map_err(|e| {
        at.invalid(
            raw.destination.span(),
            &field("destination"),
            format!("not a CIDR: {e}"),
        )
    })?;
    if destination.network() != destination.ip() {
        return Err(at.invalid(
            raw.destination.span(),
            &field("destination"),
            format!(
                "{destination} has host bits set; did you mean {}/{}?",
                destination.network(),
                destination.prefix()
            ),
        ));
    }
    if let Some(range) = pod
        .ranges()
        .find(|r| destination.prefix() > 0 && r.cidr.overlaps_net(&destination))
    {
        return Err(at.invalid(
            raw.destination.span(),
            &field("destination"),
            format!(
                "{destination} overlaps the pod CIDR {}: pods are routed by headcni itself",
                range.cidr
            ),
        ));
    }
    let via = match &raw.via {
        None => None,
        Some(v) => {
            let ip: IpAddr = v.get_ref().parse().map_err(|e| {
                at.invalid(v.span(), &field("via"), format!("not an IP address: {e}"))
            })?;
            if ip.is_ipv4() != destination.is_ipv4() {
                return Err(at.invalid(
                    v.span(),
                    &field("via"),
                    format!("{ip} is not the same address family as {destination}"),
                ));
            }
            Some(ip)
        }
    };
    let device = match &raw.device {
        None => None,
        Some(d) => {
            validate_ifname(d.get_ref())
                .map_err(|reason| at.invalid(d.span(), &field("device"), reason))?;
            Some(d.get_ref().clone())
        }
    };
    if via.is_none() && device.is_none() {
        return Err(at.invalid(
            spanned.span(),
            &field("via"),
            "a route needs `via`, `device`, or both",
        ));
    }
    let metric = match &raw.metric {
        None => 0,
        Some(m) => u32::try_from(*m.get_ref()).map_err(|_| {
            at.invalid(
                m.span(),
                &field("metric"),
                format!("{} is not a valid metric", m.get_ref()),
            )
        })?,
    };
    Ok(ExtraRoute {
        destination,
        via,
        device,
        metric,
    })
}
