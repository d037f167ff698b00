//! Every JSON plan and drift document validates against docs/plan.schema.json.

use std::path::Path;

fn validator() -> jsonschema::Validator {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("docs/plan.schema.json")).unwrap())
            .unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

fn assert_valid(v: &jsonschema::Validator, doc: &serde_json::Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

#[test]
fn golden_plan_json_validates() {
    let v = validator();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for case in std::fs::read_dir(dir).unwrap() {
        let path = case.unwrap().path().join("plan.json");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_valid(&v, &doc, &path.display().to_string());
        n += 1;
    }
    assert!(n >= 15);
}

#[test]
fn a_document_that_breaks_the_schema_is_caught() {
    let v = validator();
    let doc = serde_json::json!({ "format_version": 1, "kind": "plan", "steps": [{ "action": "explode" }], "conflicts": [], "waiting": [], "summary": {} });
    assert!(!v.is_valid(&doc), "the test can fail");
}

#[test]
fn drift_json_validates() {
    use headcni::diff::expected;
    use headcni::spec::{compile, PodIntent, Spec};
    let spec = Spec::parse(
        "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let pod = PodIntent {
        ip: Some("10.244.0.9".parse().unwrap()),
        ..PodIntent::new("c1", "eth0", "/run/netns/c1")
    };
    let last = compile(&spec, &[]);
    let now = compile(&spec, &[pod]);
    let mut observed = expected(&last);
    observed.node.sysctls[0].value = "0".into();
    let v = validator();
    for (report, code) in [
        (
            headcni::drift::report(Some((&last, 1_700_000_000)), &now, &observed),
            3,
        ),
        (headcni::drift::report(None, &now, &observed), 2),
        (
            headcni::drift::report(Some((&now, 1_700_000_000)), &now, &expected(&now)),
            0,
        ),
    ] {
        assert_eq!(report.exit_code(), code);
        let doc: serde_json::Value =
            serde_json::from_str(&headcni::report::json::drift(&report)).unwrap();
        assert_valid(&v, &doc, "drift");
    }
}
