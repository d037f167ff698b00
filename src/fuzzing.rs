//! Entry points for the fuzz targets in fuzz/ (and the corpus replay test):
//! every parser that reads input headcni does not control, from bytes.
//! Each must return, never panic, whatever it is given.

use std::path::Path;

/// The CNI network configuration on stdin, and a prevResult in it.
pub fn cni_config(data: &[u8]) {
    if let Ok(conf) = crate::cni::NetConf::parse(data) {
        if let Some(prev) = &conf.prev_result {
            let _ = crate::cni::prev_result_ips(prev);
        }
        let _ = conf.gc_attachments();
    }
}

/// The node spec (TOML), parsed and validated.
pub fn spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::spec::Spec::parse(text, Path::new("fuzz.toml"));
    }
}

/// A saved plan (`plan --out`), as `apply PLAN` reads it.
pub fn saved_plan(data: &[u8]) {
    use crate::snapshot::{parse, SavedPlan};
    if let Ok(plan) = parse::<SavedPlan>(data, Path::new("fuzz.json"), SavedPlan::KIND) {
        let _ = crate::report::text::plan(&plan.plan, false);
    }
}

/// An observed snapshot (`observe --out`), as `plan --observed` reads it.
pub fn snapshot(data: &[u8]) {
    use crate::snapshot::{parse, ObservedDoc};
    if let Ok(doc) = parse::<ObservedDoc>(data, Path::new("fuzz.json"), ObservedDoc::KIND) {
        // Planning from it must not panic either (specs are ours).
        if let Ok(spec) = crate::spec::Spec::parse(
            "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\n",
            Path::new("fuzz.toml"),
        ) {
            let desired = crate::spec::compile(&spec, &doc.pods);
            let _ = crate::diff::diff(&desired, &doc.observed);
        }
    }
}

/// A netlink answer datagram: a pod with CAP_NET_ADMIN in its namespace
/// controls what its links, addresses and routes look like.
pub fn netlink_answer(data: &[u8]) {
    let _ = crate::kernel::netlink::walk(data, |kind, _seq, payload| {
        crate::observe::decode_any(kind, payload);
        Ok(false)
    });
}
