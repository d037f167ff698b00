//! `Observed`: what the kernel holds, as plain serializable data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{Attachment, NetnsState};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub node: NetnsState,
    /// Pods whose namespaces were looked into. A pod missing here was not
    /// observed (a host-side-only plan), which is not the same as absent.
    pub pods: Vec<ObservedPod>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedPod {
    pub key: Attachment,
    pub netns_path: PathBuf,
    /// None when the namespace could not be opened (gone, or never there).
    pub state: Option<NetnsState>,
}

impl Observed {
    pub fn attached(&self, key: &Attachment) -> Option<&ObservedPod> {
        self.pods.iter().find(|p| &p.key == key)
    }
}
