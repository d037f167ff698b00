//! The CNI network configuration (stdin) and environment.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::error::{self, CniError};
use crate::model::PodKey;
use crate::spec::{validate_container_id, validate_ifname};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// headcni's plugin configuration. Unknown fields are kept by runtimes for
/// other plugins in a list, so they are ignored here, not refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Path of the node spec; default HEADCNI_SPEC or /etc/headcni/headcni.toml.
    pub spec: Option<PathBuf>,
    /// Overrides the spec's state_dir (the pod-intent store).
    pub state_dir: Option<PathBuf>,
    /// How long to wait for the pod store's lock before answering "try again later" (11).
    pub lock_timeout_ms: Option<u64>,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    /// Passed through into the ADD result.
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The name an earlier draft of CNI 1.1 used; libcni sends both.
    #[serde(rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            let code = if e.is_syntax() || e.is_eof() {
                error::DECODE_FAILURE
            } else {
                error::INVALID_CONFIG
            };
            CniError::new(code, format!("network configuration on stdin: {e}"))
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                error::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported; headcni speaks {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.plugin_type != "headcni" {
            return Err(CniError::new(
                error::INVALID_CONFIG,
                format!("type is {:?}, expected \"headcni\"", conf.plugin_type),
            ));
        }
        Ok(conf)
    }

    pub fn spec_path(&self) -> PathBuf {
        self.spec
            .clone()
            .or_else(|| std::env::var_os("HEADCNI_SPEC").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(crate::spec::DEFAULT_SPEC_PATH))
    }

    pub fn gc_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
}

impl CniEnv {
    pub fn from_env() -> CniEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        CniEnv {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname: var("CNI_IFNAME"),
        }
    }

    /// The attachment key, validated: these strings reach the store and logs.
    pub fn pod_key(&self) -> Result<PodKey, CniError> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| CniError::new(error::INVALID_ENV, "CNI_CONTAINERID is not set"))?;
        validate_container_id(id).map_err(|reason| {
            CniError::new(error::INVALID_ENV, format!("CNI_CONTAINERID: {reason}"))
        })?;
        let ifname = self
            .ifname
            .as_deref()
            .ok_or_else(|| CniError::new(error::INVALID_ENV, "CNI_IFNAME is not set"))?;
        validate_ifname(ifname)
            .map_err(|reason| CniError::new(error::INVALID_ENV, format!("CNI_IFNAME: {reason}")))?;
        Ok(PodKey {
            container_id: id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// CNI_NETNS, which must be an absolute path to a network-namespace file.
    pub fn netns(&self) -> Result<PathBuf, CniError> {
        let path = self
            .netns
            .as_deref()
            .ok_or_else(|| CniError::new(error::INVALID_ENV, "CNI_NETNS is not set"))?;
        validate_netns(path).map_err(|reason| {
            CniError::new(
                error::INVALID_ENV,
                format!("CNI_NETNS {}: {reason}", path.display()),
            )
        })?;
        Ok(path.to_path_buf())
    }
}

/// Whether two namespace paths name one namespace (same nsfs inode).
pub fn same_namespace(a: &Path, b: &Path) -> bool {
    match (nix::sys::stat::stat(a), nix::sys::stat::stat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => a == b,
    }
}

pub fn validate_netns(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    let stat = nix::sys::statfs::statfs(path).map_err(|e| format!("cannot be opened: {e}"))?;
    if stat.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err("is not a network namespace file (nsfs)".into());
    }
    // Wiring a "pod" in the node's own namespace would add an address and a
    // default route to the node itself: refused before anything is made.
    if same_namespace(path, Path::new("/proc/self/ns/net")) {
        return Err("is the node's own network namespace, not a pod's".into());
    }
    Ok(())
}
