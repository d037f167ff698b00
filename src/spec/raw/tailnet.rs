//! `[tailnet]`: the tailnet's ranges and interface.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTailnet {
    pub(super) cidr: Option<Spanned<String>>,
    pub(super) cidr6: Option<Spanned<String>>,
    pub(super) interface: Option<Spanned<String>>,
}

pub(super) fn validate_tailnet(
    at: &Locator,
    raw: Option<&RawTailnet>,
    mode: Mode,
    raw_pod: &Spanned<RawPodNetwork>,
    pod: &PodNetwork,
) -> Result<Tailnet, SpecError> {
    let tailnet_cidr =
        |field: Option<&Spanned<String>>, name: &str, default: &str, family| match field {
            None => Ok(default.parse().expect("default tailnet CIDR is valid")),
            Some(v) => network_of(at, v, name, family),
        };
    let cidr_field = raw.and_then(|t| t.cidr.as_ref());
    let cidr6_field = raw.and_then(|t| t.cidr6.as_ref());
    let cidr = tailnet_cidr(cidr_field, "tailnet.cidr", DEFAULT_TAILNET_CIDR, Family::V4)?;
    let cidr6 = tailnet_cidr(
        cidr6_field,
        "tailnet.cidr6",
        DEFAULT_TAILNET_CIDR6,
        Family::V6,
    )?;
    for range in pod.ranges() {
        let family = Family::of(&range.cidr);
        let (tailnet, field) = match family {
            Family::V4 => (cidr, cidr_field),
            Family::V6 => (cidr6, cidr6_field),
        };
        let raw = raw_pod.get_ref();
        let pod_span = match family {
            Family::V4 => raw.cidr.as_ref(),
            Family::V6 => raw.cidr6.as_ref(),
        }
        .map_or(raw_pod.span(), |c| c.span());
        if let Some(cluster) = range.cluster_cidr {
            if tailnet.overlaps_net(&cluster) {
                return Err(at.invalid(
                    field.map_or(pod_span.clone(), |c| c.span()),
                    if family == Family::V4 {
                        "pod_network.cluster_cidr"
                    } else {
                        "pod_network.cluster_cidr6"
                    },
                    format!("cluster CIDR {cluster} overlaps the tailnet CIDR {tailnet}"),
                ));
            }
        }
        if tailnet.overlaps_net(&range.cidr) {
            return Err(at.invalid(
                field.map_or(pod_span, |c| c.span()),
                match (field.is_some(), family) {
                    (true, Family::V4) => "tailnet.cidr",
                    (true, Family::V6) => "tailnet.cidr6",
                    (false, family) => family.cidr_field(),
                },
                format!(
                    "pod CIDR {} overlaps the tailnet CIDR {tailnet}",
                    range.cidr
                ),
            ));
        }
    }
    let interface = match raw.and_then(|t| t.interface.as_ref()) {
        None => mode.default_tailnet_interface().to_string(),
        Some(name) => {
            validate_ifname(name.get_ref())
                .map_err(|reason| at.invalid(name.span(), "tailnet.interface", reason))?;
            name.get_ref().clone()
        }
    };
    Ok(Tailnet {
        cidr,
        cidr6,
        interface,
    })
}

/// Overlap of two networks of any families (different families never do).
pub(super) trait OverlapsNet {
    fn overlaps_net(&self, other: &IpNetwork) -> bool;
}

impl OverlapsNet for IpNetwork {
    fn overlaps_net(&self, other: &IpNetwork) -> bool {
        match (self, other) {
            (IpNetwork::V4(a), IpNetwork::V4(b)) => a.overlaps(*b),
            (IpNetwork::V6(a), IpNetwork::V6(b)) => a.overlaps(*b),
            _ => false,
        }
    }
}
