//! Plan output for people (text) and programs (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use super::{Plan, Step, Summary};

/// Version of the JSON plan document; bumped on incompatible changes.
pub const PLAN_FORMAT_VERSION: u32 = 1;

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    for step in &plan.steps {
        let _ = writeln!(out, "{step}");
    }
    out.push_str(&conflicts(plan));
    for w in plan.waiting.iter().chain(&plan.problems) {
        match &w.pod {
            Some(pod) => {
                let _ = writeln!(out, "? pod {pod}: {}", w.reason);
            }
            None => {
                let _ = writeln!(out, "? {}", w.reason);
            }
        }
    }
    if plan.steps.is_empty() {
        let _ = writeln!(out, "No changes. The node matches the spec.");
    }
    let _ = writeln!(out, "Plan: {}.", plan.summary());
    out
}

/// One `! conflict` line per foreign object in the way.
pub fn conflicts(plan: &Plan) -> String {
    let mut out = String::new();
    for c in &plan.conflicts {
        let _ = write!(out, "! conflict: {} blocked by {}", c.desired, c.found);
        if let Some(pod) = &c.pod {
            let _ = write!(out, " (pod {pod} skipped)");
        }
        let _ = writeln!(out, ": {}", c.reason);
    }
    out
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    format_version: u32,
    steps: Vec<JsonStep<'a>>,
    conflicts: &'a [super::Conflict],
    waiting: Vec<&'a super::Waiting>,
    summary: Summary,
}

#[derive(Serialize)]
struct JsonStep<'a> {
    #[serde(flatten)]
    step: &'a Step,
    /// The step as `headcni plan` prints it.
    text: String,
}

pub fn json(plan: &Plan) -> String {
    let doc = JsonPlan {
        format_version: PLAN_FORMAT_VERSION,
        steps: plan
            .steps
            .iter()
            .map(|step| JsonStep {
                step,
                text: step.to_string(),
            })
            .collect(),
        conflicts: &plan.conflicts,
        waiting: plan.waiting.iter().chain(&plan.problems).collect(),
        summary: plan.summary(),
    };
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}
