//! Plans and drift reports in every format: text (people), json (programs),
//! diff (review), junit (CI dashboards).

pub mod json;
pub mod junit;
pub mod text;
pub mod unified;

use crate::diff::Plan;
use crate::spec::Desired;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Diff,
    Junit,
}

/// Renders a plan. `desired` is what the plan was made for (the diff format needs it).
pub fn plan(plan: &Plan, desired: &Desired, format: Format, color: bool) -> String {
    match format {
        Format::Text => text::plan(plan, color),
        Format::Json => json::plan(plan),
        Format::Diff => unified::diff(plan, desired),
        Format::Junit => junit::plan(plan),
    }
}

/// Renders a drift report. `last` is the last applied desired state (if any),
/// `now` the desired state of the current spec and intents.
pub fn drift(
    report: &crate::drift::DriftReport,
    last: Option<&Desired>,
    now: &Desired,
    format: Format,
    color: bool,
) -> String {
    match format {
        Format::Text => text::drift(report, color),
        Format::Json => json::drift(report),
        Format::Diff => {
            let mut out = String::new();
            if let Some(last) = last {
                out.push_str("# drift: observed versus the last applied state\n");
                out.push_str(&unified::diff(&report.drift, last));
            }
            out.push_str(
                "# pending: the last applied state versus what the spec and intents ask now\n",
            );
            out.push_str(&unified::diff(&report.pending, now));
            out
        }
        Format::Junit => junit::report(
            "headcni",
            vec![
                junit::suite("headcni drift", &report.drift),
                junit::suite("headcni pending changes", &report.pending),
            ],
        ),
    }
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn timestamp(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || secs.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

/// `1 conflict`, `2 conflicts`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
