//! `[headscale]`: Headscale's API, for the daemon to approve this node's
//! own pod-CIDR routes, mint its own pre-auth key and delete its node when
//! it leaves.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeadscale {
    pub(super) url: Option<Spanned<String>>,
    pub(super) api_key_file: Spanned<String>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) user: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tags: Vec<Spanned<String>>,
    pub(super) timeout_seconds: Option<Spanned<i64>>,
}

pub(super) fn validate_headscale(
    at: &Locator,
    raw: Option<&Spanned<RawHeadscale>>,
    daemon: &DaemonConfig,
) -> Result<Option<HeadscaleConfig>, SpecError> {
    let Some(spanned) = raw else { return Ok(None) };
    let raw = spanned.get_ref();
    let url = match &raw.url {
        Some(v) => {
            let url = v.get_ref();
            if let Some(why) = refused_url(url) {
                return Err(at.invalid(v.span(), "headscale.url", why));
            }
            url.trim_end_matches('/').to_string()
        }
        None => match &daemon.login_server {
            Some(login) => {
                if let Some(why) = refused_url(login) {
                    return Err(at.invalid(
                        spanned.span(),
                        "headscale.url",
                        format!("defaults to daemon.login_server, but {why}"),
                    ));
                }
                login.trim_end_matches('/').to_string()
            }
            None => {
                return Err(at.invalid(
                    spanned.span(),
                    "headscale.url",
                    "give Headscale's URL (or daemon.login_server, which it defaults to)",
                ))
            }
        },
    };
    let mut tags = Vec::new();
    for tag in &raw.tags {
        let t = tag.get_ref();
        let ok = t.strip_prefix("tag:").is_some_and(|name| {
            // Headscale refuses tags with capitals.
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        });
        if !ok {
            return Err(at.invalid(
                tag.span(),
                "headscale.tags",
                format!("{t:?} is not a tag: use tag:NAME (lowercase letters, digits, - and _)"),
            ));
        }
        tags.push(t.clone());
    }
    let user = match &raw.user {
        Some(v) if v.get_ref().is_empty() => {
            return Err(at.invalid(v.span(), "headscale.user", "a user name, not empty"))
        }
        Some(v) => Some(v.get_ref().clone()),
        None => None,
    };
    let timeout = match &raw.timeout_seconds {
        Some(v) => at.in_range(v, "headscale.timeout_seconds", 1..=60)? as u64,
        None => 5,
    };
    Ok(Some(HeadscaleConfig {
        url,
        api_key_file: at.absolute_path(&raw.api_key_file, "headscale.api_key_file")?,
        ca_file: raw
            .ca_file
            .as_ref()
            .map(|v| at.absolute_path(v, "headscale.ca_file"))
            .transpose()?,
        user,
        tags,
        timeout_seconds: timeout,
    }))
}

/// Why a URL may not carry the API key: not http(s), or plain http beyond
/// this host (the key is Headscale's admin key; it must not cross a
/// network in clear).
fn refused_url(url: &str) -> Option<String> {
    if url.starts_with("https://") {
        return None;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Some(format!("{url:?} is not an https:// URL"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!("{url:?} is plain http: the API key would cross the network in clear; use https:// (plain http only to this host's loopback)")
    })
}

#[cfg(test)]
mod tests {
    use super::refused_url;

    #[test]
    fn the_key_goes_only_over_https_or_loopback() {
        for ok in [
            "https://headscale.example.net",
            "http://127.0.0.1:8080",
            "http://[::1]:8080/",
            "http://localhost:8080",
        ] {
            assert_eq!(refused_url(ok), None, "{ok}");
        }
        for refused in [
            "http://192.0.2.2:8080",
            "http://headscale.example.net",
            "http://127.0.0.1.example.net",
            "ftp://x",
        ] {
            assert!(refused_url(refused).is_some(), "{refused}");
        }
    }
}
