//! The plan and drift documents for programs. The schema is
//! docs/plan.schema.json; `format_version` changes on incompatible changes.

use serde::Serialize;

use crate::diff::{Conflict, FieldChange, Object, Plan, Step, Summary, Waiting};
use crate::model::{Attachment, PodKey};

pub const FORMAT_VERSION: u32 = 2;

#[derive(Serialize)]
pub struct JsonStep<'a> {
    pub action: crate::diff::Action,
    /// sysctl, link, address or route.
    pub kind: &'static str,
    /// Unique within a plan: namespace and what the kernel keys the object by.
    pub key: String,
    /// "node", or "pod <container>/<ifname>".
    pub netns: String,
    pub pod: Option<&'a PodKey>,
    /// The object as observed (null when it is to be added).
    pub before: Option<&'a Object>,
    /// The object as desired (null when it is to be removed).
    pub after: Option<&'a Object>,
    /// Each mismatch: field, desired value, observed value.
    pub changes: Vec<FieldChange>,
    pub reason: &'a str,
    /// The step as `headcni plan` prints it.
    pub text: String,
}

impl<'a> JsonStep<'a> {
    pub fn new(step: &'a Step) -> Self {
        let (before, after) = match step.action {
            crate::diff::Action::Add => (None, Some(&step.object)),
            crate::diff::Action::Change => (step.before.as_ref(), Some(&step.object)),
            crate::diff::Action::Remove => (Some(&step.object), None),
        };
        JsonStep {
            action: step.action,
            kind: step.object.kind_name(),
            key: step.key(),
            netns: step.netns.to_string(),
            pod: step.attachment.as_ref().and_then(Attachment::pod),
            before,
            after,
            changes: step.changes(),
            reason: &step.reason,
            text: step.to_string(),
        }
    }
}

#[derive(Serialize)]
pub struct JsonPlan<'a> {
    pub steps: Vec<JsonStep<'a>>,
    pub conflicts: &'a [Conflict],
    pub waiting: Vec<&'a Waiting>,
    pub summary: Summary,
}

impl<'a> JsonPlan<'a> {
    pub fn new(plan: &'a Plan) -> Self {
        JsonPlan {
            steps: plan.steps.iter().map(JsonStep::new).collect(),
            conflicts: &plan.conflicts,
            waiting: plan.waiting.iter().chain(&plan.problems).collect(),
            summary: plan.summary(),
        }
    }
}

#[derive(Serialize)]
struct PlanDoc<'a> {
    format_version: u32,
    kind: &'static str,
    #[serde(flatten)]
    plan: JsonPlan<'a>,
}

pub fn plan(plan: &Plan) -> String {
    to_string(&PlanDoc {
        format_version: FORMAT_VERSION,
        kind: "plan",
        plan: JsonPlan::new(plan),
    })
}

pub fn to_string(doc: &impl Serialize) -> String {
    let mut s =
        serde_json::to_string_pretty(doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

#[derive(Serialize)]
struct DriftDoc<'a> {
    format_version: u32,
    kind: &'static str,
    /// RFC 3339; null when no apply was ever recorded.
    last_applied_at: Option<String>,
    /// 0 clean, 2 pending changes, 3 drift.
    exit_code: u8,
    drift: JsonPlan<'a>,
    pending: JsonPlan<'a>,
}

pub fn drift(report: &crate::drift::DriftReport) -> String {
    to_string(&DriftDoc {
        format_version: FORMAT_VERSION,
        kind: "drift",
        last_applied_at: report.last_applied_at.map(super::timestamp),
        exit_code: report.exit_code(),
        drift: JsonPlan::new(&report.drift),
        pending: JsonPlan::new(&report.pending),
    })
}
