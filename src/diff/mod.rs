//! `diff(&Desired, &Observed) -> Plan`: pure, deterministic, minimal, ordered.
//!
//! Ownership decides what may be touched: routes with headcni's protocol,
//! links with its prefix, and inside a pod's namespace the pod's interface.
//! A foreign object in the way becomes a [`Conflict`]; it is never a step.
//!
//! One module a concern: `index` (kernel state for lookups, what is kept),
//! `draft` (one owner's steps and conflicts), `pod` (a pod's host and pod
//! side), `node` (node-wide objects), `stale` (owned objects nobody wants),
//! `order` (the one order of a plan), `staged` (the two-stage pass the
//! engine runs beside the kernel's link dump).

mod draft;
mod expected;
mod index;
mod node;
mod order;
mod plan;
mod pod;
mod staged;
mod stale;

pub use expected::expected;
pub use order::order;
pub use plan::{Action, Conflict, FieldChange, Object, Plan, PlannedLink, Step, Summary, Waiting};
pub(crate) use staged::Early;

use crate::model::Observed;
use crate::spec::Desired;

/// The plan that takes the kernel from `observed` to `desired`.
pub fn diff(desired: &Desired, observed: &Observed) -> Plan {
    Early::exact(desired, observed).finish(&observed.node.links, &observed.node.sysctls)
}

#[cfg(test)]
mod golden_inputs;
#[cfg(test)]
mod tests;
