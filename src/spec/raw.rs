//! The spec as written (with source spans), and its validation into [`Spec`].

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::Deserialize;
use toml::Spanned;

use super::names::validate_ifname;
use super::{
    DaemonConfig, ExtraRoute, Masquerade, Mode, PodNetwork, PodRange, Spec, SpecError, Tailnet,
    DEFAULT_MTU, DEFAULT_STATE_DIR, DEFAULT_TAILNET_CIDR, DEFAULT_TAILNET_CIDR6, POD_GATEWAY6,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    version: Spanned<i64>,
    mode: Spanned<Mode>,
    state_dir: Option<Spanned<String>>,
    pod_network: Spanned<RawPodNetwork>,
    tailnet: Option<RawTailnet>,
    #[serde(default, rename = "route")]
    routes: Vec<Spanned<RawRoute>>,
    daemon: Option<RawDaemon>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    tailscaled: Option<Spanned<String>>,
    dns_upstream: Option<Spanned<String>>,
    tailscale: Option<Spanned<String>>,
    login_server: Option<Spanned<String>>,
    auth_key_file: Option<Spanned<String>>,
    hostname: Option<Spanned<String>>,
    resync_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    tailscaled_flags: Vec<String>,
    #[serde(default)]
    up_flags: Vec<String>,
    netns: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    forward_port: Option<bool>,
    route_table: Option<Spanned<i64>>,
    rule_priority: Option<Spanned<i64>>,
    transfer_cidr: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPodNetwork {
    cidr: Option<Spanned<String>>,
    cidr6: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    cluster_cidr: Option<Spanned<String>>,
    cluster_cidr6: Option<Spanned<String>>,
    masquerade: Option<Spanned<Masquerade>>,
    mss_clamp: Option<bool>,
    source_check: Option<bool>,
    allow_wide_cidrs: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTailnet {
    cidr: Option<Spanned<String>>,
    cidr6: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    destination: Spanned<String>,
    via: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    metric: Option<Spanned<i64>>,
}

/// Turns byte spans into located errors.
struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    /// `v` parsed as a `what` (its reason if not).
    fn parse<T: std::str::FromStr>(
        &self,
        v: &Spanned<String>,
        field: &str,
        what: &str,
    ) -> Result<T, SpecError>
    where
        T::Err: std::fmt::Display,
    {
        v.get_ref()
            .parse()
            .map_err(|e| self.invalid(v.span(), field, format!("not {what}: {e}")))
    }

    fn absolute_path(&self, v: &Spanned<String>, field: &str) -> Result<PathBuf, SpecError> {
        let p = PathBuf::from(v.get_ref());
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(self.invalid(v.span(), field, "must be an absolute path"))
        }
    }

    fn in_range(
        &self,
        v: &Spanned<i64>,
        field: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, SpecError> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.invalid(
                v.span(),
                field,
                format!("{n} is out of range {}..={}", range.start(), range.end()),
            ))
        }
    }

    fn invalid(&self, span: Range<usize>, field: &str, reason: impl Into<String>) -> SpecError {
        let (line, column) = self.line_col(span.start);
        SpecError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// TOML into [`RawSpec`], with errors that name the field (the path
/// serde_path_to_error tracked) and say what is expected in words, not in
/// Rust types.
fn deserialize(at: &Locator) -> Result<RawSpec, SpecError> {
    let syntax = |e: toml::de::Error| {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = at.line_col(span.start);
        let mut message = e.message().trim().to_string();
        if message == "duplicate key" {
            let key = at.text.get(span).unwrap_or("").trim();
            message = format!("duplicate key `{key}`: each table and key may appear only once");
        }
        SpecError::Syntax {
            file: at.file.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let de = toml::Deserializer::parse(at.text).map_err(syntax)?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> wraps each value in private fields: not the user's path.
        let field = e
            .path()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| !s.starts_with("$__") && s != "?")
            .collect::<Vec<_>>()
            .join(".")
            .replace(".[", "[");
        let inner = e.into_inner();
        let span = inner.span().unwrap_or(0..0);
        let reason = plain_types(inner.message().trim());
        if field.is_empty() {
            syntax(inner)
        } else {
            at.invalid(span, &field, reason)
        }
    })
}

/// serde's Rust type names as a person would say them.
fn plain_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected i64", "expected an integer"),
        ("expected u32", "expected an integer"),
        ("expected u16", "expected an integer"),
        ("expected a boolean", "expected true or false"),
        ("expected bool", "expected true or false"),
        ("expected a string", "expected a string in quotes"),
    ] {
        out = out.replace(rust, words);
    }
    out
}

pub(super) fn parse(text: &str, file: &Path) -> Result<Spec, SpecError> {
    let at = Locator { text, file };
    let raw = deserialize(&at)?;

    if *raw.version.get_ref() != 1 {
        return Err(at.invalid(
            raw.version.span(),
            "version",
            format!(
                "unsupported spec version {}; this headcni reads version 1",
                raw.version.get_ref()
            ),
        ));
    }
    let mode = *raw.mode.get_ref();

    let state_dir = match &raw.state_dir {
        None => PathBuf::from(DEFAULT_STATE_DIR),
        Some(dir) => {
            let path = PathBuf::from(dir.get_ref());
            if !path.is_absolute() {
                return Err(at.invalid(dir.span(), "state_dir", "must be an absolute path"));
            }
            path
        }
    };

    let pod_network = validate_pod_network(&at, &raw.pod_network)?;
    if mode == Mode::Daemon && pod_network.masquerade == Masquerade::All {
        // The node's tailnet address lives in the tailnet namespace there;
        // SNAT on the node would use the transfer address instead.
        let span = raw
            .pod_network
            .get_ref()
            .masquerade
            .as_ref()
            .map_or(raw.mode.span(), |m| m.span());
        return Err(at.invalid(
            span,
            "pod_network.masquerade",
            "\"all\" is not supported in daemon mode yet: the pod CIDR is advertised, so use \"internet\"",
        ));
    }
    let tailnet = validate_tailnet(
        &at,
        raw.tailnet.as_ref(),
        mode,
        &raw.pod_network,
        &pod_network,
    )?;

    let mut routes: Vec<ExtraRoute> = Vec::with_capacity(raw.routes.len());
    for (i, route) in raw.routes.iter().enumerate() {
        let validated = validate_route(&at, i, route, &pod_network)?;
        if routes
            .iter()
            .any(|r| r.destination == validated.destination && r.metric == validated.metric)
        {
            return Err(at.invalid(
                route.get_ref().destination.span(),
                &format!("route[{i}].destination"),
                format!(
                    "{} (metric {}) is listed twice",
                    validated.destination, validated.metric
                ),
            ));
        }
        routes.push(validated);
    }

    let daemon = validate_daemon(&at, raw.daemon.as_ref(), &pod_network, &tailnet)?;
    Ok(Spec {
        source: file.to_path_buf(),
        mode,
        state_dir,
        pod_network,
        tailnet,
        routes,
        daemon,
    })
}

fn validate_pod_network(
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
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The pod CIDR field of this family.
    fn cidr_field(self) -> &'static str {
        match self {
            Family::V4 => "pod_network.cidr",
            Family::V6 => "pod_network.cidr6",
        }
    }

    /// The smallest pod CIDR: /29 (5 pods) and /124 (14 pods).
    fn longest_prefix(self) -> u8 {
        match self {
            Family::V4 => 29,
            Family::V6 => 124,
        }
    }
}

/// IPv4's default gateway: the CIDR's first host address (IPv6's gateway
/// is always link-local). A pod CIDR is at least a /29, so there is one.
fn first_host(cidr: IpNetwork) -> IpAddr {
    cidr.iter().nth(1).unwrap_or(cidr.network())
}

/// A network address of `family` (no host bits set).
fn network_of(
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
fn usable_range(
    at: &Locator,
    v: &Spanned<String>,
    field: &str,
    net: IpNetwork,
    wide_ok: bool,
) -> Result<IpNetwork, SpecError> {
    if let Some(what) = super::ranges::special_purpose(&net) {
        return Err(at.invalid(
            v.span(),
            field,
            format!("{net} overlaps {what}, which pods cannot use"),
        ));
    }
    if super::ranges::too_wide(&net) && !wide_ok {
        let widest = match net {
            IpNetwork::V4(_) => super::ranges::WIDEST_V4,
            IpNetwork::V6(_) => super::ranges::WIDEST_V6,
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

fn pod_cidr(
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

fn gateway(at: &Locator, v: &Spanned<String>, cidr: IpNetwork) -> Result<IpAddr, SpecError> {
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

fn cluster_cidr(
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

fn validate_tailnet(
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
trait OverlapsNet {
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

fn validate_daemon(
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

fn login_server(at: &Locator, v: &Spanned<String>) -> Result<String, SpecError> {
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

fn hostname(at: &Locator, v: &Spanned<String>) -> Result<String, SpecError> {
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

fn netns_name(at: &Locator, v: &Spanned<String>) -> Result<String, SpecError> {
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

fn route_table(at: &Locator, v: &Spanned<i64>) -> Result<u32, SpecError> {
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

fn transfer_cidr(
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

fn validate_route(
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
mode = "host"
state_dir = "/var/lib/headcni"

[pod_network]
cidr = "10.244.0.0/24"
mtu = 1500

[tailnet]
interface = "tailscale0"

[[route]]
destination = "198.51.100.0/24"
via = "203.0.113.1"
"#;

    fn err(text: &str) -> SpecError {
        Spec::parse(text, Path::new("/etc/headcni/headcni.toml")).unwrap_err()
    }

    #[test]
    fn parses_a_good_spec_with_defaults() {
        let spec = Spec::parse(GOOD, Path::new("x.toml")).unwrap();
        let ipv4 = spec.pod_network.ipv4.as_ref().unwrap();
        assert_eq!(ipv4.gateway, IpAddr::V4(Ipv4Addr::new(10, 244, 0, 1)));
        assert_eq!(spec.pod_network.ipv6, None);
        assert_eq!(spec.tailnet.cidr.to_string(), "100.64.0.0/10");
        assert_eq!(spec.routes.len(), 1);
        assert_eq!(spec.routes[0].metric, 0);
    }

    #[test]
    fn a_link_local_transfer_cidr_is_refused() {
        let text = GOOD.replace("mode = \"host\"", "mode = \"daemon\"")
            + "\n[daemon]\ntransfer_cidr = \"169.254.77.0/30\"\n";
        let e = err(&text).to_string();
        assert!(
            e.contains("daemon.transfer_cidr") && e.contains("never logs in"),
            "{e}"
        );
        let spec = Spec::parse(
            &GOOD.replace("mode = \"host\"", "mode = \"daemon\""),
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(!spec.daemon.transfer_cidr.ip().is_link_local());
    }

    #[test]
    fn special_and_wide_pod_ranges_are_refused() {
        for (from, to, says) in [
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"127.0.0.0/24\"",
                "loopback",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"169.254.77.0/29\"",
                "link-local",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"224.0.0.0/24\"",
                "multicast",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"0.0.0.0/24\"",
                "this network",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"255.255.255.248/29\"",
                "broadcast",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"128.0.0.0/1\"",
                "link-local",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"10.244.0.0/24\"\ncluster_cidr = \"10.0.0.0/7\"",
                "allow_wide_cidrs",
            ),
            ("cidr = \"10.244.0.0/24\"", "cidr6 = \"::/1\"", "::/8"),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr6 = \"fe80::/64\"",
                "link-local",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr6 = \"ff02::/64\"",
                "multicast",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr6 = \"::ffff:0:0/104\"",
                "::/8",
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr6 = \"2001:db8::/64\"\ncluster_cidr6 = \"2000::/3\"",
                "wider than a /32",
            ),
        ] {
            let e = err(&GOOD.replace(from, to)).to_string();
            assert!(e.contains("pod_network.c") && e.contains(says), "{to}: {e}");
        }
        // The opt-in takes a wide range; a special one never.
        let wide = GOOD.replace(
            "cidr = \"10.244.0.0/24\"",
            "cidr = \"10.244.0.0/24\"\ncluster_cidr = \"10.0.0.0/7\"\nallow_wide_cidrs = true",
        );
        Spec::parse(&wide, Path::new("x.toml")).unwrap();
        let e = err(&wide.replace("10.0.0.0/7", "0.0.0.0/0")).to_string();
        assert!(e.contains("this network"), "{e}");
    }

    #[test]
    fn daemon_mode_defaults_its_interface() {
        let text = GOOD
            .replace("mode = \"host\"", "mode = \"daemon\"")
            .replace("interface = \"tailscale0\"", "");
        let spec = Spec::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(spec.tailnet.interface, "headcni01");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases: &[(&str, &str, usize, Option<&str>)] = &[
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"10.244.0.0/33\"",
                7,
                Some("pod_network.cidr"),
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"10.244.0.5/24\"",
                7,
                Some("pod_network.cidr"),
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"100.64.0.0/24\"",
                7,
                Some("pod_network.cidr"),
            ),
            ("mtu = 1500", "mtu = 70000", 8, Some("pod_network.mtu")),
            (
                "mtu = 1500",
                "gateway = \"10.245.0.1\"",
                8,
                Some("pod_network.gateway"),
            ),
            (
                "mtu = 1500",
                "gateway = \"10.244.0.255\"",
                8,
                Some("pod_network.gateway"),
            ),
            (
                "interface = \"tailscale0\"",
                "interface = \"tailscale0123456789\"",
                11,
                Some("tailnet.interface"),
            ),
            (
                "via = \"203.0.113.1\"",
                "via = \"203.0.113\"",
                15,
                Some("route[0].via"),
            ),
            (
                "via = \"203.0.113.1\"",
                "via = \"2001:db8::1\"",
                15,
                Some("route[0].via"),
            ),
            (
                "destination = \"198.51.100.0/24\"",
                "destination = \"10.244.0.0/16\"",
                14,
                Some("route[0].destination"),
            ),
            (
                "cidr = \"10.244.0.0/24\"",
                "cidr = \"fd00::/64\"",
                7,
                Some("pod_network.cidr"),
            ),
            (
                "mtu = 1500",
                "cidr6 = \"10.245.0.0/24\"",
                8,
                Some("pod_network.cidr6"),
            ),
            (
                "mtu = 1500",
                "cidr6 = \"fd00::/126\"",
                8,
                Some("pod_network.cidr6"),
            ),
            (
                "mtu = 1500",
                "cidr6 = \"fd7a:115c:a1e0:1::/64\"",
                8,
                Some("pod_network.cidr6"),
            ),
            (
                "mtu = 1500",
                "cluster_cidr6 = \"fd00::/48\"",
                8,
                Some("pod_network.cluster_cidr6"),
            ),
            (
                "mtu = 1500",
                "cidr6 = \"fd00:1::/64\"\ncluster_cidr6 = \"fd00:2::/48\"",
                9,
                Some("pod_network.cluster_cidr6"),
            ),
            ("version = 1", "version = 2", 2, Some("version")),
            (
                "state_dir = \"/var/lib/headcni\"",
                "state_dir = \"relative\"",
                4,
                Some("state_dir"),
            ),
            ("mtu = 1500", "mtu = 1500\ncolour = \"blue\"", 9, None),
            ("mode = \"host\"", "mode = \"bridge\"", 3, None),
        ];
        for (from, to, line, field) in cases {
            let text = GOOD.replacen(from, to, 1);
            let e = err(&text);
            let msg = e.to_string();
            assert!(msg.starts_with("/etc/headcni/headcni.toml:"), "{msg}");
            let (got_line, got_field) = e.location().unwrap();
            assert_eq!(got_line, *line, "{to}: {msg}");
            if let Some(field) = field {
                assert_eq!(got_field, Some(*field), "{to}: {msg}");
            }
        }
    }

    #[test]
    fn either_family_alone_or_both() {
        let v6_only = GOOD.replace("cidr = \"10.244.0.0/24\"", "cidr6 = \"fd00:10:244::/64\"");
        let spec = Spec::parse(&v6_only, Path::new("x.toml")).unwrap();
        let ipv6 = spec.pod_network.ipv6.as_ref().unwrap();
        assert_eq!(spec.pod_network.ipv4, None);
        assert_eq!(ipv6.gateway, IpAddr::V6(POD_GATEWAY6));
        assert_eq!(spec.tailnet.cidr6.to_string(), "fd7a:115c:a1e0::/48");
        let dual = GOOD.replace(
            "cidr = \"10.244.0.0/24\"",
            "cidr = \"10.244.0.0/24\"\ncidr6 = \"fd00:10:244::/64\"\ncluster_cidr6 = \"fd00:10::/32\"",
        );
        let spec = Spec::parse(&dual, Path::new("x.toml")).unwrap();
        assert_eq!(spec.pod_network.cidrs().len(), 2);
        assert!(spec.pod_network.has_cluster());
        // Neither: said so, naming the table.
        let neither = GOOD.replace("cidr = \"10.244.0.0/24\"\n", "");
        let e = Spec::parse(&neither, Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("`cidr` (IPv4), `cidr6` (IPv6), or both"),
            "{e}"
        );
        // An IPv6 pod route overlapping the pod CIDR is refused like IPv4's.
        let overlapping =
            format!("{dual}\n[[route]]\ndestination = \"fd00:10:244::/48\"\ndevice = \"eth1\"\n");
        let e = Spec::parse(&overlapping, Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("overlaps the pod CIDR fd00:10:244::/64"),
            "{e}"
        );
    }

    /// Every error names the field and says what is expected in words.
    #[test]
    fn errors_say_the_field_and_what_is_expected() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "mode = \"host\"",
                "mode = \"hosted\"",
                &[":3:8: mode:", "`host` or `daemon`"],
            ),
            (
                "mtu = 1500",
                "mtu = \"1500\"",
                &["pod_network.mtu:", "expected an integer"],
            ),
            (
                "mtu = 1500",
                "mtu = 1500\nmasquerade = \"some\"",
                &["pod_network.masquerade:", "`internet`, `all`, `none`"],
            ),
            (
                "mtu = 1500",
                "mtu = 1500\nmss_clamp = \"yes\"",
                &["pod_network.mss_clamp:", "true or false"],
            ),
            (
                "[tailnet]",
                "[pod_network]\ncidr = \"10.244.0.0/24\"\n[tailnet]",
                &["duplicate key `pod_network`"],
            ),
            (
                "[tailnet]",
                "[daemon]\nmetrics_listen = \"localhost:9108\"\n[tailnet]",
                &["daemon.metrics_listen:", "IP:PORT", "not a host name"],
            ),
            ("mode = \"host\"", "mode = \"daemon\"", &[]),
        ];
        for (from, to, wants) in cases {
            let text = GOOD.replacen(from, to, 1);
            let Err(e) = Spec::parse(&text, Path::new("/etc/headcni/headcni.toml")) else {
                assert!(wants.is_empty(), "{to} must be refused");
                continue;
            };
            let msg = e.to_string();
            for want in *wants {
                assert!(msg.contains(want), "{to}: {msg}");
            }
        }
        // Daemon mode with masquerade = "all": the error points at that line.
        let text = GOOD
            .replace("mode = \"host\"", "mode = \"daemon\"")
            .replace("mtu = 1500", "mtu = 1500\nmasquerade = \"all\"");
        let msg = err(&text).to_string();
        assert!(msg.contains(":9:14: pod_network.masquerade:"), "{msg}");
    }

    #[test]
    fn unknown_field_is_named() {
        let msg = err(&GOOD.replace("mtu = 1500", "mtu = 1500\ncolour = \"blue\"")).to_string();
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn route_needs_via_or_device() {
        let text = GOOD.replace("via = \"203.0.113.1\"", "");
        let msg = err(&text).to_string();
        assert!(msg.contains("route[0]") && msg.contains("needs"), "{msg}");
    }
}
