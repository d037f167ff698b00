//! headcni: a Kubernetes CNI plugin and node-local network reconciler that
//! puts pods on a Tailscale/Headscale tailnet.
//!
//! Data flow: [`spec`] (TOML + pod intents) → [`spec::compile`] → `Desired`;
//! [`observe`] (rtnetlink) → `Observed`; [`diff::diff`] → `Plan`;
//! [`apply::apply`] executes it; [`engine`] ties them together.

#[macro_use]
pub mod stdout;
pub mod apply;
pub mod cni;
pub mod daemon;
pub mod diff;
pub mod drift;
pub mod engine;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod hosttailnet;
pub mod install;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod observe;
pub mod report;
pub mod snapshot;
pub mod spec;

/// "cause: cause of cause: ..." of an error's sources, for messages that
/// cross a boundary where `{:#}` is not available (CNI JSON, daemon status).
pub fn error_sources(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
