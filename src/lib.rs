//! headcni: a Kubernetes CNI plugin and node-local network reconciler that
//! puts pods on a Tailscale/Headscale tailnet.
//!
//! Data flow: [`spec`] (TOML + pod intents) → [`spec::compile`] → `Desired`;
//! [`observe`] (rtnetlink) → `Observed`; [`diff::diff`] → `Plan`;
//! [`apply::apply`] executes it; [`engine`] ties them together.

pub mod apply;
pub mod cni;
pub mod daemon;
pub mod diff;
pub mod drift;
pub mod engine;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod observe;
pub mod report;
pub mod snapshot;
pub mod spec;
