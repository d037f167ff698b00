//! The golden plan files: tests/golden/<case>/{spec.toml, pods.json,
//! observed.json} (and, optionally, the node's resolvers: node-resolv.conf,
//! upstream-resolv.conf; its IPv6 uplinks: ipv6-uplinks) in, {plan.txt,
//! plan.json, plan.diff, plan.junit.xml} out. Adding a case is adding a
//! folder. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expected
//! outputs; the inputs of the cases written by code come from
//! src/diff/golden_inputs.rs.

use std::fs;
use std::path::{Path, PathBuf};

use headcni::model::Observed;
use headcni::spec::{Desired, PodIntent, Spec};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load(case: &Path) -> (Desired, Observed) {
    let spec_path = case.join("spec.toml");
    let spec = Spec::parse(
        &fs::read_to_string(&spec_path).unwrap(),
        Path::new("spec.toml"),
    )
    .unwrap();
    let pods: Vec<PodIntent> =
        serde_json::from_str(&fs::read_to_string(case.join("pods.json")).unwrap()).unwrap();
    let observed: Observed =
        serde_json::from_str(&fs::read_to_string(case.join("observed.json")).unwrap()).unwrap();
    // A case that gives the node's resolvers gets the files compiled from them.
    let facts = headcni::spec::NodeFacts {
        resolvers: fs::read_to_string(case.join("node-resolv.conf"))
            .ok()
            .map(|resolv_conf| headcni::spec::NodeResolvers {
                resolv_conf,
                upstream: fs::read_to_string(case.join("upstream-resolv.conf")).ok(),
            }),
        ipv6_uplinks: fs::read_to_string(case.join("ipv6-uplinks"))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
    };
    (headcni::spec::compile_on(&spec, &pods, &facts), observed)
}

#[test]
fn golden_plans() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "golden cases missing");
    let mut failures = Vec::new();
    for case in cases {
        let (desired, observed) = load(&case);
        let plan = headcni::diff::diff(&desired, &observed);
        for (file, got) in [
            ("plan.txt", headcni::report::text::plan(&plan, false)),
            ("plan.json", headcni::report::json::plan(&plan)),
            ("plan.diff", headcni::report::unified::diff(&plan, &desired)),
            ("plan.junit.xml", headcni::report::junit::plan(&plan)),
        ] {
            let path = case.join(file);
            if update {
                fs::write(&path, &got).unwrap();
                continue;
            }
            let want = fs::read_to_string(&path).unwrap_or_default();
            if want != got {
                failures.push(format!(
                    "{}:\n--- want\n{want}\n--- got\n{got}",
                    path.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}
