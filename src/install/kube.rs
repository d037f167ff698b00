//! This node's pod CIDRs from the Kubernetes API server: one authenticated
//! GET of the Node object with the pod's service account (what flannel's
//! kube subnet manager and Cilium's `ipam: kubernetes` read).
//!
//! One GET does not earn a full Kubernetes client (kube-rs and k8s-openapi
//! are a hundred crates and minutes of build); ureq with rustls does it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// Where the kubelet mounts a pod's service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{0} is not set: not running in a Kubernetes pod (or give --kube-api)")]
    NotInCluster(&'static str),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("the API server refused to show node {node} (403): the service account needs `get` on nodes (deploy/kubernetes/rbac.yaml)")]
    Forbidden { node: String },
    #[error("the API server refused to {rule} (403): the service account needs that in its ClusterRole (deploy/kubernetes/rbac.yaml)")]
    ForbiddenTo { rule: &'static str },
    #[error("the API server has no node {node} (404): NODE_NAME should be the node's name (spec.nodeName)")]
    NoSuchNode { node: String },
    #[error("the API server answered {status} for node {node}: {body}")]
    Status {
        node: String,
        status: u16,
        body: String,
    },
    #[error("node {node} has no spec.podCIDR yet: the controller manager assigns one when run with --allocate-node-cidrs; try again once it has")]
    NoPodCidr { node: String },
    #[error("asking {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{0:?} is not a node name (NODE_NAME, --node-name)")]
    BadNodeName(String),
    #[error("node {node}: the answer is not a Node object: {reason}")]
    Decode { node: String, reason: String },
}

/// An API server and the credentials to ask it.
#[derive(Clone, Debug)]
pub struct ApiServer {
    /// https://HOST:PORT
    pub url: String,
    pub token: String,
    pub ca_pem: Vec<u8>,
}

impl ApiServer {
    /// The in-cluster API server (`KUBERNETES_SERVICE_HOST`/`_PORT`), or
    /// `url` when given, with the token and CA of the service account in `sa_dir`.
    pub fn in_cluster(url: Option<&str>, sa_dir: &Path) -> Result<ApiServer, KubeError> {
        let url = match url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .map_err(|_| KubeError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
                let port = std::env::var("KUBERNETES_SERVICE_PORT")
                    .map_err(|_| KubeError::NotInCluster("KUBERNETES_SERVICE_PORT"))?;
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let read = |name: &str| {
            let path = sa_dir.join(name);
            std::fs::read(&path).map_err(|source| KubeError::Read { path, source })
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        Ok(ApiServer {
            url,
            token,
            ca_pem: read("ca.crt")?,
        })
    }

    fn agent(&self, ca_path: &Path) -> Result<ureq::Agent, KubeError> {
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&self.ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(KubeError::NoCertificate(ca_path.to_path_buf()));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
            .build();
        Ok(ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(15)))
            // A redirect is never followed: it could lead off the API
            // server, or from https to plain http, with the token.
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into())
    }

    /// One request with the token: the answer's status and body (at most
    /// 4 MiB).
    fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<(&str, &str)>,
        ca_path: &Path,
    ) -> Result<(u16, String), KubeError> {
        let transport = |reason: String| KubeError::Transport {
            url: url.to_string(),
            reason,
        };
        let agent = self.agent(ca_path)?;
        let auth = format!("Bearer {}", self.token);
        let answer = match (method, body) {
            ("PATCH", Some((kind, text))) => agent
                .patch(url)
                .header("Authorization", &auth)
                .header("Content-Type", kind)
                .header("Accept", "application/json")
                .send(text),
            ("POST", Some((kind, text))) => agent
                .post(url)
                .header("Authorization", &auth)
                .header("Content-Type", kind)
                .header("Accept", "application/json")
                .send(text),
            _ => agent
                .get(url)
                .header("Authorization", &auth)
                .header("Accept", "application/json")
                .call(),
        };
        let mut answer = answer.map_err(|e| transport(e.to_string()))?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .map_err(|e| transport(e.to_string()))?;
        Ok((status, text))
    }

    /// The node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`); an
    /// error when it has none yet.
    pub fn node_pod_cidrs(&self, node: &str, ca_path: &Path) -> Result<Vec<String>, KubeError> {
        let url = format!("{}/api/v1/nodes/{}", self.url, path_segment(node)?);
        let (status, body) = self.request("GET", &url, None, ca_path)?;
        let node_name = node.to_string();
        match status {
            200 => {}
            403 => return Err(KubeError::Forbidden { node: node_name }),
            404 => return Err(KubeError::NoSuchNode { node: node_name }),
            _ => {
                return Err(KubeError::Status {
                    node: node_name,
                    status,
                    body: shown_body(status, &body),
                })
            }
        }
        pod_cidrs_of(node, &body)
    }

    /// Sets one condition of the node's status (merged by `type`, as the
    /// kubelet's own are: the others stay).
    pub fn patch_node_condition(
        &self,
        node: &str,
        condition: &NodeCondition,
        ca_path: &Path,
    ) -> Result<(), KubeError> {
        let url = format!("{}/api/v1/nodes/{}/status", self.url, path_segment(node)?);
        let body = serde_json::json!({ "status": { "conditions": [condition] } }).to_string();
        let kind = "application/strategic-merge-patch+json";
        let (status, text) = self.request("PATCH", &url, Some((kind, &body)), ca_path)?;
        self.judge(node, status, &text, "patch nodes/status")
    }

    /// Records an Event on the node (in `default`, where Node events live).
    pub fn create_node_event(
        &self,
        node: &str,
        event: &NodeEvent,
        now: &str,
        ca_path: &Path,
    ) -> Result<(), KubeError> {
        let url = format!("{}/api/v1/namespaces/default/events", self.url);
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "generateName": format!("{node}.headcni.") },
            "involvedObject": { "apiVersion": "v1", "kind": "Node", "name": node, "uid": node },
            "reason": event.reason,
            "message": event.message,
            "type": event.kind,
            "source": { "component": "headcni", "host": node },
            "reportingComponent": "headcni",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        })
        .to_string();
        let (status, text) =
            self.request("POST", &url, Some(("application/json", &body)), ca_path)?;
        self.judge(node, status, &text, "create events")
    }

    fn judge(
        &self,
        node: &str,
        status: u16,
        body: &str,
        rule: &'static str,
    ) -> Result<(), KubeError> {
        match status {
            200..=299 => Ok(()),
            403 => Err(KubeError::ForbiddenTo { rule }),
            404 => Err(KubeError::NoSuchNode {
                node: node.to_string(),
            }),
            _ => Err(KubeError::Status {
                node: node.to_string(),
                status,
                body: shown_body(status, body),
            }),
        }
    }
}

/// A Node condition as the API takes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub kind: String,
    /// "True" or "False".
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_heartbeat_time: String,
    pub last_transition_time: String,
}

/// An Event about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    /// "Warning" or "Normal".
    pub kind: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// The node name as one URL path segment: escaped, so that a name holding
/// `/`, `?` or `#` cannot ask for another object; `.` and `..` alone would
/// still be path steps and are refused.
fn path_segment(node: &str) -> Result<String, KubeError> {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    if node.is_empty() || node == "." || node == ".." {
        return Err(KubeError::BadNodeName(node.to_string()));
    }
    Ok(percent_encoding::utf8_percent_encode(node, KEEP).to_string())
}

/// At most this much of an error answer is shown.
const SHOWN_BODY_CHARS: usize = 300;

/// An error answer as it may be printed: control characters (terminal
/// escapes, newlines) escaped, cut to a few hundred characters; a redirect
/// says it was not followed.
fn shown_body(status: u16, body: &str) -> String {
    let mut shown: String = body
        .chars()
        .take(SHOWN_BODY_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if body.chars().nth(SHOWN_BODY_CHARS).is_some() {
        shown.push_str("...");
    }
    if (300..400).contains(&status) {
        shown = format!("a redirect, which headcni does not follow; --kube-api should name the API server itself ({shown})");
    }
    shown
}

#[derive(Deserialize)]
struct Node {
    #[serde(default)]
    spec: NodeSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeSpec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pod_cidrs: Vec<String>,
}

/// The pod CIDRs in a Node object's JSON.
pub fn pod_cidrs_of(node: &str, json: &str) -> Result<Vec<String>, KubeError> {
    let parsed: Node = serde_json::from_str(json).map_err(|e| KubeError::Decode {
        node: node.to_string(),
        reason: e.to_string(),
    })?;
    let mut cidrs = parsed.spec.pod_cidrs;
    if cidrs.is_empty() {
        cidrs.extend(parsed.spec.pod_cidr.filter(|c| !c.is_empty()));
    }
    if cidrs.is_empty() {
        return Err(KubeError::NoPodCidr {
            node: node.to_string(),
        });
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_from_either_field() {
        let both =
            r#"{"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24","fd00::/64"]}}"#;
        assert_eq!(pod_cidrs_of("n", both).unwrap().len(), 2);
        let old = r#"{"spec":{"podCIDR":"10.244.2.0/24"}}"#;
        assert_eq!(pod_cidrs_of("n", old).unwrap(), vec!["10.244.2.0/24"]);
        let none = r#"{"metadata":{"name":"n"},"spec":{}}"#;
        assert!(matches!(
            pod_cidrs_of("n", none),
            Err(KubeError::NoPodCidr { .. })
        ));
    }

    #[test]
    fn the_node_name_is_one_path_segment() {
        assert_eq!(path_segment("node-1.example").unwrap(), "node-1.example");
        assert_eq!(path_segment("x/../ready").unwrap(), "x%2F..%2Fready");
        assert_eq!(path_segment("a?watch=1#b").unwrap(), "a%3Fwatch%3D1%23b");
        for bad in ["", ".", ".."] {
            assert!(matches!(path_segment(bad), Err(KubeError::BadNodeName(_))));
        }
    }

    #[test]
    fn an_error_body_is_escaped_and_cut() {
        let body = "\u{1b}[31mred\nline\r".repeat(100);
        let shown = shown_body(500, &body);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}[31mred\\n"), "{shown}");
        assert!(shown.ends_with("..."), "{shown}");
        assert!(shown_body(302, "").contains("does not follow"));
    }
}
