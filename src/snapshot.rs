//! Versioned documents headcni writes and reads back: observed-state
//! snapshots (`observe --out`), saved plans (`plan --out`, `apply PLAN`) and
//! the record of the last apply (state_dir/last-applied.json).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diff::Plan;
use crate::model::Observed;
use crate::spec::{Desired, PodIntent, Spec};

/// Bumped on incompatible changes to any of these documents.
/// 2: attachments are `{"pod": {...}}` or `"tailnet_namespace"`; files.
pub const FORMAT_VERSION: u32 = 2;
pub const LAST_APPLIED_FILE: &str = "last-applied.json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot write {}", file.display())]
    Write {
        file: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{} is not a headcni {expected} document: {error}", file.display())]
    Decode {
        file: PathBuf,
        expected: &'static str,
        error: String,
    },
    #[error("{} is a headcni {kind} document, not a {expected}", file.display())]
    WrongKind {
        file: PathBuf,
        kind: String,
        expected: &'static str,
    },
    #[error("{} has format_version {found}; this headcni reads format_version {FORMAT_VERSION}", file.display())]
    Version { file: PathBuf, found: u32 },
}

/// SHA-256 of a value's JSON: the same state gives the same fingerprint.
pub fn fingerprint<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spec's fingerprint ignores where it was read from.
pub fn spec_fingerprint(spec: &Spec) -> String {
    let mut anonymous = spec.clone();
    anonymous.source = PathBuf::new();
    fingerprint(&anonymous)
}

pub fn pods_fingerprint(pods: &[PodIntent]) -> String {
    let mut sorted = pods.to_vec();
    sorted.sort();
    fingerprint(&sorted)
}

/// What a saved plan was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    pub observed: String,
    pub spec: String,
    pub pods: String,
}

impl Fingerprints {
    pub fn of(observed: &Observed, spec: &Spec, pods: &[PodIntent]) -> Fingerprints {
        Fingerprints {
            observed: fingerprint(observed),
            spec: spec_fingerprint(spec),
            pods: pods_fingerprint(pods),
        }
    }

    /// What changed between `self` (when planned) and `now`, in words.
    pub fn changes_since(&self, now: &Fingerprints) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.observed != now.observed {
            out.push("the node's network state");
        }
        if self.spec != now.spec {
            out.push("the spec");
        }
        if self.pods != now.pods {
            out.push("the pod intents");
        }
        out
    }
}

/// `headcni observe --out`: the node's state, the intents, and (if any) the
/// last applied desired state: everything an offline plan or drift check needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObservedDoc {
    pub format_version: u32,
    pub kind: String,
    pub pods: Vec<PodIntent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<LastApplied>,
    pub observed: Observed,
}

impl ObservedDoc {
    pub const KIND: &'static str = "observed";

    pub fn new(
        observed: Observed,
        pods: Vec<PodIntent>,
        last_applied: Option<LastApplied>,
    ) -> Self {
        ObservedDoc {
            format_version: FORMAT_VERSION,
            kind: Self::KIND.into(),
            pods,
            last_applied,
            observed,
        }
    }
}

/// `headcni plan --out`: a plan and what it was made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub kind: String,
    /// "all" or "host-only": what `apply` must observe to check freshness.
    pub scope: String,
    pub fingerprints: Fingerprints,
    pub plan: Plan,
    /// The node as the plan saw it, so a stale plan can say what moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
}

impl SavedPlan {
    pub const KIND: &'static str = "saved-plan";

    pub fn new(scope: &str, fingerprints: Fingerprints, plan: Plan, observed: Observed) -> Self {
        SavedPlan {
            format_version: FORMAT_VERSION,
            kind: Self::KIND.into(),
            scope: scope.into(),
            fingerprints,
            plan,
            observed: Some(observed),
        }
    }
}

/// The desired state of the last apply that converged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastApplied {
    pub format_version: u32,
    pub kind: String,
    pub applied_at: u64,
    pub spec: String,
    pub pods: String,
    pub desired: Desired,
}

impl LastApplied {
    pub const KIND: &'static str = "last-applied";

    pub fn new(spec: &Spec, pods: &[PodIntent], desired: Desired) -> Self {
        let applied_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        LastApplied {
            format_version: FORMAT_VERSION,
            kind: Self::KIND.into(),
            applied_at,
            spec: spec_fingerprint(spec),
            pods: pods_fingerprint(pods),
            desired,
        }
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(LAST_APPLIED_FILE)
    }

    /// The record in `state_dir`, if one was ever written. One an older
    /// headcni wrote (another format_version) is only a record: it counts as
    /// none, and the next converged `apply` or daemon pass writes it anew.
    pub fn load_from(state_dir: &Path) -> Result<Option<LastApplied>, SnapshotError> {
        let path = Self::path(state_dir);
        if !path.exists() {
            return Ok(None);
        }
        match load(&path, Self::KIND) {
            Ok(record) => Ok(Some(record)),
            Err(e @ SnapshotError::Version { .. }) => {
                tracing::warn!("{e}; ignored until the next converged pass rewrites it");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Documents that carry a kind and a format version.
pub trait Versioned {
    fn version(&self) -> u32;
    fn kind(&self) -> &str;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u32 { self.format_version }
            fn kind(&self) -> &str { &self.kind }
        }
    )*};
}
versioned!(ObservedDoc, SavedPlan, LastApplied);

/// Reads a document, checking its kind and format version.
pub fn load<T: DeserializeOwned + Versioned>(
    file: &Path,
    expected: &'static str,
) -> Result<T, SnapshotError> {
    let text = std::fs::read(file).map_err(|error| SnapshotError::Read {
        file: file.into(),
        error,
    })?;
    parse(&text, file, expected)
}

/// [`load`] of bytes already read; `file` only names them in errors.
pub fn parse<T: DeserializeOwned + Versioned>(
    text: &[u8],
    file: &Path,
    expected: &'static str,
) -> Result<T, SnapshotError> {
    // Look at kind and version first, so a newer document gets a clear message.
    #[derive(Deserialize)]
    struct Head {
        format_version: Option<u32>,
        kind: Option<String>,
    }
    let head: Head = serde_json::from_slice(text).map_err(|e| SnapshotError::Decode {
        file: file.into(),
        expected,
        error: e.to_string(),
    })?;
    if let Some(kind) = head.kind.filter(|k| k != expected) {
        return Err(SnapshotError::WrongKind {
            file: file.into(),
            kind,
            expected,
        });
    }
    if let Some(found) = head.format_version.filter(|v| *v != FORMAT_VERSION) {
        return Err(SnapshotError::Version {
            file: file.into(),
            found,
        });
    }
    let doc: T = serde_json::from_slice(text).map_err(|e| SnapshotError::Decode {
        file: file.into(),
        expected,
        error: e.to_string(),
    })?;
    debug_assert!(doc.version() == FORMAT_VERSION && doc.kind() == expected);
    Ok(doc)
}

/// Writes a document atomically (temp file + rename), so a reader never sees half of it.
pub fn save<T: Serialize>(file: &Path, doc: &T) -> Result<(), SnapshotError> {
    let write_err = |error| SnapshotError::Write {
        file: file.into(),
        error,
    };
    let mut text =
        serde_json::to_vec_pretty(doc).map_err(|e| write_err(std::io::Error::other(e)))?;
    text.push(b'\n');
    let tmp = file.with_extension("tmp");
    // Never through a symlink planted at the temporary name.
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
        .map_err(write_err)?;
    std::fs::rename(&tmp, file).map_err(write_err)
}
