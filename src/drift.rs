//! Drift versus pending changes, told apart (pure).
//!
//! - **drift**: the kernel moved away from the desired state that was last
//!   applied (someone deleted a route, changed an MTU): `diff(last, observed)`.
//! - **pending**: the spec or the pod intents changed since that apply:
//!   `diff(now, expected(last))`.

use serde::Serialize;

use crate::diff::{diff, expected, Plan};
use crate::model::Observed;
use crate::spec::Desired;

/// Exit codes of `headcni plan --drift` (documented in docs/ci.md).
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_PENDING: u8 = 2;
pub const EXIT_DRIFT: u8 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// When the last apply was recorded (seconds since the epoch); None if never.
    pub last_applied_at: Option<u64>,
    pub drift: Plan,
    pub pending: Plan,
}

impl DriftReport {
    pub fn has_drift(&self) -> bool {
        !self.drift.is_empty() || !self.drift.conflicts.is_empty()
    }

    pub fn has_pending(&self) -> bool {
        self.last_applied_at.is_none()
            || !self.pending.is_empty()
            || !self.pending.conflicts.is_empty()
    }

    /// Drift outranks pending changes: it means someone changed the node by hand.
    pub fn exit_code(&self) -> u8 {
        if self.has_drift() {
            EXIT_DRIFT
        } else if self.has_pending() {
            EXIT_PENDING
        } else {
            EXIT_CLEAN
        }
    }
}

/// `last`: the last applied desired state and when; None when nothing was
/// ever recorded (then everything is pending and nothing can be drift).
pub fn report(last: Option<(&Desired, u64)>, now: &Desired, observed: &Observed) -> DriftReport {
    match last {
        Some((applied, at)) => DriftReport {
            last_applied_at: Some(at),
            drift: diff(applied, observed),
            pending: diff(now, &expected(applied)),
        },
        None => DriftReport {
            last_applied_at: None,
            drift: Plan::default(),
            pending: diff(now, observed),
        },
    }
}
