//! JUnit XML for CI dashboards: one test case per object that differs.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::diff::Plan;

/// A suite named `suite` with a failing case per step and conflict, a skipped
/// case per wait, and one passing case when nothing differs.
pub fn suite(name: &str, plan: &Plan) -> TestSuite {
    let mut suite = TestSuite::new(name);
    for step in &plan.steps {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message(step.to_string());
        let details: Vec<String> = step
            .changes()
            .iter()
            .map(|c| {
                format!(
                    "{}: desired {}, observed {}",
                    c.field, c.desired, c.observed
                )
            })
            .collect();
        status.set_description(details.join("\n"));
        let mut case = TestCase::new(step.key(), status);
        case.set_classname(format!("headcni.{}", step.object.kind_name()));
        suite.add_test_case(case);
    }
    for c in &plan.conflicts {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message(format!(
            "{} blocked by {}: {}",
            c.desired, c.found, c.reason
        ));
        let mut case = TestCase::new(format!("{}: {}", c.netns, c.desired.key()), status);
        case.set_classname("headcni.conflict");
        suite.add_test_case(case);
    }
    for w in plan.waiting.iter().chain(&plan.problems) {
        let mut status = TestCaseStatus::skipped();
        status.set_message(w.reason.clone());
        let name = match &w.attachment {
            Some(to) => format!("{to}: waiting"),
            None => format!("waiting: {}", w.reason),
        };
        let mut case = TestCase::new(name, status);
        case.set_classname("headcni.waiting");
        suite.add_test_case(case);
    }
    if plan.steps.is_empty() && plan.conflicts.is_empty() {
        let mut case = TestCase::new("node matches", TestCaseStatus::success());
        case.set_classname("headcni");
        suite.add_test_case(case);
    }
    suite
}

pub fn report(name: &str, suites: Vec<TestSuite>) -> String {
    let mut report = Report::new(name);
    report.add_test_suites(suites);
    report
        .to_string()
        .unwrap_or_else(|e| format!("<!-- cannot render JUnit: {e} -->\n"))
}

pub fn plan(plan: &Plan) -> String {
    report("headcni", vec![suite("headcni plan", plan)])
}
