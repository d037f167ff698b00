//! The plan for people: one line per step, then a summary. Colour only on
//! a terminal, never when NO_COLOR is set (the caller decides).

use std::fmt::Write as _;

use crate::diff::{Action, Plan};

const RESET: &str = "\x1b[0m";

fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[{code}m{text}{RESET}")
    } else {
        text.to_string()
    }
}

pub fn plan(plan: &Plan, color: bool) -> String {
    let mut out = String::new();
    for step in &plan.steps {
        let code = match step.action {
            Action::Add => "32",
            Action::Change => "33",
            Action::Remove => "31",
        };
        let _ = writeln!(out, "{}", paint(color, code, &step.to_string()));
    }
    for line in conflicts(plan).lines() {
        let _ = writeln!(out, "{}", paint(color, "35", line));
    }
    for w in plan.waiting.iter().chain(&plan.problems) {
        let _ = writeln!(out, "{}", paint(color, "36", &waiting_line(w)));
    }
    if plan.steps.is_empty() {
        // Waiting or blocked is not converged: never say "matches" then.
        if plan.is_settled() {
            let _ = writeln!(out, "No changes. The node matches the spec.");
        } else {
            let _ = writeln!(
                out,
                "Nothing headcni can do now; the node does not match the spec yet."
            );
        }
    }
    let _ = writeln!(out, "Plan: {}.", plan.summary());
    out
}

/// One `! conflict` line per foreign object in the way.
pub fn conflicts(plan: &Plan) -> String {
    let mut out = String::new();
    for c in &plan.conflicts {
        let _ = writeln!(out, "{}", conflict_line(c));
    }
    out
}

/// `! conflict: WANTED blocked by FOUND (POD skipped): why`.
pub fn conflict_line(c: &crate::diff::Conflict) -> String {
    let mut out = format!("! conflict: {} blocked by {}", c.desired, c.found);
    if let Some(to) = &c.attachment {
        let _ = write!(out, " ({to} skipped)");
    }
    let _ = write!(out, ": {}", c.reason);
    out
}

/// `? POD: why` (or `? why` for the node's own).
pub fn waiting_line(w: &crate::diff::Waiting) -> String {
    match &w.attachment {
        Some(to) => format!("? {to}: {}", w.reason),
        None => format!("? {}", w.reason),
    }
}

pub fn drift(report: &crate::drift::DriftReport, color: bool) -> String {
    let mut out = String::new();
    let indent = |text: String| text.lines().map(|l| format!("  {l}\n")).collect::<String>();
    match report.last_applied_at {
        None => {
            let _ = writeln!(
                out,
                "No apply was ever recorded on this node: everything below is pending."
            );
        }
        Some(at) => {
            let _ = writeln!(
                out,
                "Drift: the kernel moved away from the last apply ({}):",
                super::timestamp(at)
            );
            if report.has_drift() {
                out.push_str(&indent(plan(&report.drift, color)));
            } else {
                let _ = writeln!(out, "  none");
            }
            let _ = writeln!(
                out,
                "Pending changes: the spec or pod intents changed since then:"
            );
        }
    }
    if report.pending.is_empty() && report.pending.conflicts.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        out.push_str(&indent(plan(&report.pending, color)));
    }
    let verdict = match report.exit_code() {
        crate::drift::EXIT_DRIFT => "drift",
        crate::drift::EXIT_PENDING => "pending changes",
        _ => "clean",
    };
    let _ = writeln!(out, "Result: {verdict}.");
    out
}
