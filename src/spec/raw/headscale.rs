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
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(at.invalid(
                    v.span(),
                    "headscale.url",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            url.trim_end_matches('/').to_string()
        }
        None => match &daemon.login_server {
            Some(login) => login.trim_end_matches('/').to_string(),
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
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if !ok {
            return Err(at.invalid(
                tag.span(),
                "headscale.tags",
                format!("{t:?} is not a tag: use tag:NAME (letters, digits, - and _)"),
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
