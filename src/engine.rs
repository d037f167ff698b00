//! One reconcile pass: spec + pod intents → Desired; kernel → Observed;
//! diff → Plan; apply; observe again and verify. The CLI, the CNI entry
//! point and the daemon all drive this, differing only in scope.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::apply::{self, ApplyReport};
use crate::diff::{diff, Plan};
use crate::model::{PodKey, RTPROT_HEADCNI, RTPROT_NAME};
use crate::observe::{self, ObserveError, Observed};
use crate::spec::{compile, Desired, PodIntent, Spec};

/// Which pod namespaces a pass looks into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodScope {
    /// Every pod's namespace as well as the node.
    All,
    /// The node namespace only: the host side of every pod (cheap at scale).
    HostOnly,
    /// The node plus one pod's namespace; the plan keeps only that pod's steps.
    One(PodKey),
}

/// A plan and everything it was made from.
pub struct Planned {
    pub desired: Desired,
    pub observed: Observed,
    pub plan: Plan,
    pub took: Duration,
}

pub fn plan(spec: &Spec, pods: &[PodIntent], scope: &PodScope) -> Result<Planned, ObserveError> {
    let started = Instant::now();
    let to_observe: Vec<(PodKey, PathBuf)> = pods
        .iter()
        .filter(|p| match scope {
            PodScope::All => true,
            PodScope::HostOnly => false,
            PodScope::One(key) => p.container_id == key.container_id && p.ifname == key.ifname,
        })
        .map(|p| (p.key(), p.netns.clone()))
        .collect();
    // compile is pure and independent of the kernel: do it while the kernel dumps.
    let (desired, observed) = std::thread::scope(|threads| {
        let desired = threads.spawn(|| compile(spec, pods));
        let observed = observe::observe(&to_observe);
        (desired.join(), observed)
    });
    let desired = desired.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let observed = observed?;
    let mut plan = diff(&desired, &observed);
    if let PodScope::One(key) = scope {
        plan = plan.for_pod(key);
    }
    Ok(Planned {
        desired,
        observed,
        plan,
        took: started.elapsed(),
    })
}

/// What an apply did and what is left.
pub struct Applied {
    pub plan: Plan,
    pub report: ApplyReport,
    /// The plan made right after applying: empty when the node converged.
    pub remaining: Plan,
    pub apply_took: Duration,
}

impl Applied {
    /// Every step applied, nothing left to do, nothing blocked by a foreign object.
    pub fn converged(&self) -> bool {
        self.report.failed.is_empty()
            && self.remaining.is_empty()
            && self.remaining.conflicts.is_empty()
    }
}

pub fn apply(spec: &Spec, pods: &[PodIntent], scope: &PodScope) -> Result<Applied, ObserveError> {
    let planned = plan(spec, pods, scope)?;
    let started = Instant::now();
    let report = apply::apply(&planned.plan);
    let apply_took = started.elapsed();
    let remaining = if planned.plan.is_empty() {
        planned.plan.clone()
    } else {
        plan(spec, pods, scope)?.plan
    };
    Ok(Applied {
        plan: planned.plan,
        report,
        remaining,
        apply_took,
    })
}

/// Registers headcni's route protocol name so `ip route` prints `proto headcni`.
/// Best effort: a read-only /etc only costs the pretty name.
pub fn register_protocol_name() -> std::io::Result<bool> {
    let dir = std::path::Path::new("/etc/iproute2/rt_protos.d");
    let file = dir.join("headcni.conf");
    let line = format!("{RTPROT_HEADCNI}\t{RTPROT_NAME}\n");
    if std::fs::read_to_string(&file).is_ok_and(|t| t == line) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, line)?;
    Ok(true)
}
