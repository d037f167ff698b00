//! Headscale, asked over its REST API (`/api/v1`, `Authorization: Bearer`)
//! with the key `[headscale]` names: this node's own record, approving its
//! own pod CIDRs, a single-use pre-auth key for its own tailscaled, and
//! deleting its own record when it leaves. Every call is bounded in time;
//! callers run them off the reconcile loop (daemon/approver.rs).
//!
//! An API key opens all of Headscale's API: what bounds it here is what
//! headcni sends (only this node's record, only this node's CIDRs, always
//! the union with what is approved already), said in docs/daemon.md.

pub mod approval;
mod client;
pub mod node_record;
pub mod policy;
pub mod tailscaled;

pub use approval::{assess, Approval};
pub use client::{check_key_file, Client, HeadscaleError, Node};
