//! Headscale's REST API over ureq with rustls: a handful of calls, each
//! bounded by `[headscale] timeout_seconds`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::spec::HeadscaleConfig;

#[derive(Debug, thiserror::Error)]
pub enum HeadscaleError {
    #[error("Headscale API key file {}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Headscale API key file {}: {reason}", path.display())]
    KeyFileUnsafe { path: PathBuf, reason: String },
    #[error("Headscale CA file {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Headscale CA file {}: no certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("cannot reach Headscale at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("Headscale refused the API key (401) at {url}: create one with `headscale apikeys create` and put it in [headscale] api_key_file")]
    Unauthorized { url: String },
    #[error("Headscale answered {status} for {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("Headscale's answer for {what} is not what its API gives: {reason}")]
    Decode { what: String, reason: String },
    #[error("Headscale has no user {0:?} ([headscale] user): `headscale users create {0}`")]
    NoSuchUser(String),
}

/// A node as `GET /api/v1/node` lists it (grpc-gateway's JSON: camelCase,
/// 64-bit integers as strings).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    #[serde(deserialize_with = "u64_or_string")]
    pub id: u64,
    pub node_key: String,
    pub name: String,
    pub given_name: String,
    pub approved_routes: Vec<String>,
    pub available_routes: Vec<String>,
    pub online: bool,
}

fn u64_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        N(u64),
        S(String),
    }
    match Either::deserialize(d)? {
        Either::N(n) => Ok(n),
        Either::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
struct Nodes {
    #[serde(default)]
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct NodeAnswer {
    node: Node,
}

#[derive(Deserialize)]
struct Users {
    #[serde(default)]
    users: Vec<User>,
}

#[derive(Deserialize)]
struct User {
    #[serde(deserialize_with = "u64_or_string")]
    id: u64,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyAnswer {
    pre_auth_key: Key,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

/// At most this much of an answer is read.
const MAX_ANSWER: u64 = 16 << 20;
/// At most this much of an error answer is shown.
const SHOWN_BODY_CHARS: usize = 300;

pub struct Client {
    url: String,
    key: String,
    agent: ureq::Agent,
}

impl Client {
    /// Reads the API key (a root-only file) and the CA file; makes no call.
    pub fn new(config: &HeadscaleConfig) -> Result<Client, HeadscaleError> {
        let key = read_key(&config.api_key_file)?;
        let roots = match &config.ca_file {
            None => ureq::tls::RootCerts::WebPki,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| HeadscaleError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(HeadscaleError::NoCertificate(path.clone()));
                }
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(config.timeout_seconds)))
            // A redirect could lead elsewhere, or to plain http, with the key.
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            url: config.url.clone(),
            key,
            agent,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every node Headscale knows.
    pub fn nodes(&self) -> Result<Vec<Node>, HeadscaleError> {
        let body = self.call("GET", "/api/v1/node", None, "the node list")?;
        decode::<Nodes>(&body, "the node list").map(|n| n.nodes)
    }

    /// The node whose node key (`nodekey:...`) is `node_key`, if Headscale
    /// has it.
    pub fn node_by_key(&self, node_key: &str) -> Result<Option<Node>, HeadscaleError> {
        Ok(self.nodes()?.into_iter().find(|n| n.node_key == node_key))
    }

    /// Node `id`, if Headscale has it (one node's record, not the list:
    /// what a daemon asks on every check once it knows its id).
    pub fn node(&self, id: u64) -> Result<Option<Node>, HeadscaleError> {
        let what = format!("node {id}");
        match self.call("GET", &format!("/api/v1/node/{id}"), None, &what) {
            Ok(body) => decode::<NodeAnswer>(&body, &what).map(|a| Some(a.node)),
            Err(HeadscaleError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets node `id`'s approved routes to `routes` (Headscale replaces the
    /// set: give the union, see approval.rs).
    pub fn approve_routes(&self, id: u64, routes: &[String]) -> Result<Node, HeadscaleError> {
        let what = format!("approving routes of node {id}");
        let body = serde_json::json!({ "routes": routes }).to_string();
        let answer = self.call(
            "POST",
            &format!("/api/v1/node/{id}/approve_routes"),
            Some(&body),
            &what,
        )?;
        decode::<NodeAnswer>(&answer, &what).map(|a| a.node)
    }

    /// Deletes node `id` from Headscale (one already gone is fine).
    pub fn delete_node(&self, id: u64) -> Result<(), HeadscaleError> {
        let what = format!("deleting node {id}");
        match self.call("DELETE", &format!("/api/v1/node/{id}"), None, &what) {
            Ok(_) | Err(HeadscaleError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A single-use, non-reusable pre-auth key of `user` carrying `tags`,
    /// valid for `valid_for` from `now_unix`.
    pub fn create_pre_auth_key(
        &self,
        user: &str,
        tags: &[String],
        now_unix: i64,
        valid_for: Duration,
    ) -> Result<String, HeadscaleError> {
        let users = self.call("GET", "/api/v1/user", None, "the user list")?;
        let id = decode::<Users>(&users, "the user list")?
            .users
            .into_iter()
            .find(|u| u.name == user)
            .map(|u| u.id)
            .ok_or_else(|| HeadscaleError::NoSuchUser(user.to_string()))?;
        let expiration = chrono::DateTime::from_timestamp(now_unix + valid_for.as_secs() as i64, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let body = serde_json::json!({
            "user": id.to_string(),
            "reusable": false,
            "ephemeral": false,
            "expiration": expiration,
            "aclTags": tags,
        })
        .to_string();
        let what = format!("a pre-auth key for user {user}");
        let answer = self.call("POST", "/api/v1/preauthkey", Some(&body), &what)?;
        decode::<KeyAnswer>(&answer, &what).map(|a| a.pre_auth_key.key)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<String, HeadscaleError> {
        let url = format!("{}{path}", self.url);
        let transport = |reason: String| HeadscaleError::Transport {
            url: url.clone(),
            reason,
        };
        let auth = format!("Bearer {}", self.key);
        let answer = match (method, body) {
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            _ => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut answer = answer.map_err(|e| transport(e.to_string()))?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| transport(e.to_string()))?;
        match status {
            200..=299 => Ok(text),
            401 => Err(HeadscaleError::Unauthorized { url }),
            _ => Err(HeadscaleError::Status {
                what: what.to_string(),
                status,
                body: shown(&text),
            }),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T, HeadscaleError> {
    serde_json::from_str(body).map_err(|e| HeadscaleError::Decode {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// An answer as it may be printed: control characters escaped, cut short.
fn shown(body: &str) -> String {
    let mut out: String = body
        .chars()
        .take(SHOWN_BODY_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if body.chars().nth(SHOWN_BODY_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// The key, from a file only root may read (as the auth key file).
fn read_key(path: &Path) -> Result<String, HeadscaleError> {
    check_key_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| HeadscaleError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_string())
}

/// The API key file exists, belongs to root and is readable by root only:
/// the key is Headscale's admin key, so anyone else reading it could do
/// anything at Headscale.
pub fn check_key_file(path: &Path) -> Result<(), HeadscaleError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).map_err(|source| HeadscaleError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode();
    let unsafe_because = if mode & 0o077 != 0 {
        Some(format!(
            "readable by others than its owner (mode {:o}); chmod 400 it",
            mode & 0o777
        ))
    } else if meta.uid() != 0 {
        Some("must belong to root".to_string())
    } else {
        None
    };
    match unsafe_because {
        Some(reason) => Err(HeadscaleError::KeyFileUnsafe {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_gateway_json() {
        let body = r#"{"nodes":[{"id":"3","machineKey":"mkey:aa","nodeKey":"nodekey:bb","name":"node-a","givenName":"node-a","approvedRoutes":["10.244.1.0/24"],"availableRoutes":["10.244.1.0/24","fd00::/64"],"online":true,"user":{"id":"1","name":"lab"}}]}"#;
        let nodes = decode::<Nodes>(body, "x").unwrap().nodes;
        assert_eq!(nodes[0].id, 3);
        assert_eq!(nodes[0].node_key, "nodekey:bb");
        assert_eq!(nodes[0].approved_routes, vec!["10.244.1.0/24"]);
        assert!(nodes[0].online);
        let empty = decode::<Nodes>("{}", "x").unwrap().nodes;
        assert!(empty.is_empty());
    }

    #[test]
    fn a_shown_answer_is_escaped_and_short() {
        let s = shown(&format!("\x1b[31m{}", "x".repeat(400)));
        assert!(s.starts_with("\\u{1b}[31m"), "{s}");
        assert!(s.ends_with("..."));
    }
}
