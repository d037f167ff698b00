//! The spec as written (with source spans), and its validation into
//! [`Spec`]: the document and its top-level keys here, a module per table.

mod daemon;
mod headscale;
mod locator;
mod pod_network;
mod route;
mod tailnet;

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::Deserialize;
use toml::Spanned;

use super::names::validate_ifname;
use super::{
    DaemonConfig, ExtraRoute, HeadscaleConfig, Masquerade, Mode, PodNetwork, PodRange, Spec,
    SpecError, Tailnet, DEFAULT_MTU, DEFAULT_STATE_DIR, DEFAULT_TAILNET_CIDR,
    DEFAULT_TAILNET_CIDR6, POD_GATEWAY6,
};

use daemon::*;
use headscale::*;
use locator::*;
use pod_network::*;
use route::*;
use tailnet::*;

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
    headscale: Option<Spanned<RawHeadscale>>,
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
    let headscale = validate_headscale(&at, raw.headscale.as_ref(), &daemon)?;
    Ok(Spec {
        source: file.to_path_buf(),
        mode,
        state_dir,
        pod_network,
        tailnet,
        routes,
        daemon,
        headscale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (Its first line is blank: the line numbers below count it.)
    const GOOD: &str = concat!("\n", crate::spec::example_spec!());

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
