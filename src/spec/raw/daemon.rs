//! `[daemon]`: how `headcni daemon` runs and, in daemon mode, its tailscaled.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) tailscaled: Option<Spanned<String>>,
    pub(super) dns_upstream: Option<Spanned<String>>,
    pub(super) tailscale: Option<Spanned<String>>,
    pub(super) login_server: Option<Spanned<String>>,
    pub(super) auth_key_file: Option<Spanned<String>>,
    pub(super) hostname: Option<Spanned<String>>,
    pub(super) resync_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) tailscaled_flags: Vec<String>,
    #[serde(default)]
    pub(super) up_flags: Vec<String>,
    pub(super) netns: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) forward_port: Option<bool>,
    pub(super) route_table: Option<Spanned<i64>>,
    pub(super) rule_priority: Option<Spanned<i64>>,
    pub(super) transfer_cidr: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
}

pub(super) fn validate_daemon(
    at: &Locator,
    raw: Option<&RawDaemon>,
    pod: &PodNetwork,
    tailnet: &Tailnet,
) -> Result<DaemonConfig, SpecError> {
    let mut d = DaemonConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    if let Some(v) = &raw.dns_upstream {
        d.dns_upstream = at.absolute_path(v, "daemon.dns_upstream")?;
    }
    if let Some(v) = &raw.tailscaled {
        d.tailscaled = at.absolute_path(v, "daemon.tailscaled")?;
    }
    if let Some(v) = &raw.tailscale {
        d.tailscale = at.absolute_path(v, "daemon.tailscale")?;
    }
    if let Some(v) = &raw.auth_key_file {
        d.auth_key_file = Some(at.absolute_path(v, "daemon.auth_key_file")?);
    }
    if let Some(v) = &raw.login_server {
        d.login_server = Some(login_server(at, v)?);
    }
    if let Some(v) = &raw.hostname {
        d.hostname = Some(hostname(at, v)?);
    }
    if let Some(v) = &raw.resync_seconds {
        d.resync_seconds = at.in_range(v, "daemon.resync_seconds", 1..=86_400)? as u64;
    }
    d.tailscaled_flags = raw.tailscaled_flags.clone();
    d.up_flags = raw.up_flags.clone();
    if let Some(v) = &raw.netns {
        d.netns = netns_name(at, v)?;
    }
    if let Some(v) = raw.forward_port {
        d.forward_port = v;
    }
    if let Some(v) = &raw.port {
        d.port = at.in_range(v, "daemon.port", 1..=65535)? as u16;
    }
    if let Some(v) = &raw.route_table {
        d.route_table = route_table(at, v)?;
    }
    if let Some(v) = &raw.rule_priority {
        // It and the two after it, all before the main table's rule (32766).
        d.rule_priority = at.in_range(v, "daemon.rule_priority", 1..=32763)? as u32;
    }
    if let Some(v) = &raw.transfer_cidr {
        d.transfer_cidr = transfer_cidr(at, v, pod, tailnet)?;
    }
    if let Some(v) = &raw.metrics_listen {
        d.metrics_listen = Some(v.get_ref().parse().map_err(|e| {
            at.invalid(
                v.span(),
                "daemon.metrics_listen",
                format!("{e}: expected IP:PORT, an address and not a host name (e.g. 127.0.0.1:9108 or [::1]:9108)"),
            )
        })?);
    }
    Ok(d)
}

pub(super) fn login_server(at: &Locator, v: &Spanned<String>) -> Result<String, SpecError> {
    let url = v.get_ref();
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.clone())
    } else {
        Err(at.invalid(
            v.span(),
            "daemon.login_server",
            format!("{url:?} is not an http(s) URL"),
        ))
    }
}

pub(super) fn hostname(at: &Locator, v: &Spanned<String>) -> Result<String, SpecError> {
    let name = v.get_ref();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(name.clone())
    } else {
        Err(at.invalid(v.span(), "daemon.hostname", "use 1-63 of [A-Za-z0-9-]"))
    }
}

pub(super) fn netns_name(at: &Locator, v: &Spanned<String>) -> Result<String, SpecError> {
    let name = v.get_ref();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(name.clone())
    } else {
        Err(at.invalid(
            v.span(),
            "daemon.netns",
            "use 1-64 of [A-Za-z0-9_.-], not starting with '.'",
        ))
    }
}

pub(super) fn route_table(at: &Locator, v: &Spanned<i64>) -> Result<u32, SpecError> {
    let t = at.in_range(v, "daemon.route_table", 1..=u32::MAX as i64)? as u32;
    if matches!(t, 52 | 253..=255) {
        return Err(at.invalid(
            v.span(),
            "daemon.route_table",
            format!("table {t} belongs to the kernel or tailscale; pick another"),
        ));
    }
    Ok(t)
}

pub(super) fn transfer_cidr(
    at: &Locator,
    v: &Spanned<String>,
    pod: &PodNetwork,
    tailnet: &Tailnet,
) -> Result<Ipv4Network, SpecError> {
    let field = "daemon.transfer_cidr";
    let net: Ipv4Network = at.parse(v, field, "an IPv4 CIDR")?;
    if net.prefix() != 30 || net.network() != net.ip() {
        return Err(at.invalid(v.span(), field, "must be a /30 network address"));
    }
    if net.ip().is_link_local() || net.ip().is_loopback() {
        // tailscaled takes an interface with only such an address for no
        // network at all: it pauses its control client and never logs in.
        return Err(at.invalid(
            v.span(),
            field,
            "must not be link-local (169.254.0.0/16) or loopback: tailscaled then sees no usable network and never logs in; the default is 198.18.77.0/30",
        ));
    }
    let transfer = IpNetwork::V4(net);
    if pod.ranges().any(|r| r.cidr.overlaps_net(&transfer)) || tailnet.cidr.overlaps_net(&transfer)
    {
        return Err(at.invalid(v.span(), field, "overlaps the pod or tailnet CIDR"));
    }
    Ok(net)
}
