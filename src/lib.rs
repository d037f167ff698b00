//! headcni: a Kubernetes CNI plugin and node-local network reconciler that
//! puts pods on a Tailscale/Headscale tailnet.
//!
//! Data flow: [`spec`] (TOML + pod intents) → [`spec::compile`] → `Desired`;
//! [`observe`] (rtnetlink) → `Observed`; [`diff::diff`] → `Plan`;
//! [`apply::apply`] executes it; [`engine`] ties them together.

#[macro_use]
pub mod stdout;
pub mod apply;
pub mod attach;
pub mod cni;
pub mod daemon;
pub mod diff;
pub mod drift;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod headscale;
pub mod hosttailnet;
pub mod install;
pub mod kernel;
pub mod model;
pub mod observe;
pub mod report;
pub mod snapshot;
pub mod spec;
pub mod store;

/// An error with its causes, "what failed: why: why that", as headcni shows
/// every error that leaves the library (CLI, CNI JSON, daemon status and
/// logs). Library errors name what failed and keep the cause as their
/// `source`, never in their own message, so it is said once.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
