//! Bad input to the CNI plugin: the right code, a message a person can act
//! on, and nothing changed for the pods already there.

mod common;

use common::{run_plugin, CniCall, Lab, Node};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    command: &'static str,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    stdin: String,
    code: u64,
    /// Words the message (msg + details) must contain.
    mentions: &'static [&'static str],
}

#[test]
fn bad_inputs_get_the_right_code_and_change_nothing() {
    let mut n = Node::new();
    let existing = n.lab.netns("existing");
    n.cni_add(&existing);
    n.headcni_ok(&["apply"], 0);
    let before_links = n.owned_links();
    let before_routes = n.owned_routes();

    let fresh = n.lab.netns("fresh");
    let fresh_path = Lab::ns_path(&fresh).to_str().unwrap().to_string();
    let conf = n.cni_conf("1.1.0");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = conf.clone();
        f(&mut c);
        c.to_string()
    };
    let dir = n.lab.dir.path().to_path_buf();
    let spec_file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let bad_cidr = spec_file(
        "bad-cidr.toml",
        "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/33\"\n",
    );
    let unknown_field = spec_file(
        "unknown.toml",
        "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\ncolour = \"red\"\n",
    );
    let small = spec_file(
        "small.toml",
        &format!("version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.250.0.0/29\"\n", dir.join("small-state").display()),
    );
    for i in 0..5 {
        let out = std::process::Command::new(common::headcni_bin())
            .args([
                "pod",
                "add",
                "--id",
                &format!("fill{i}"),
                "--netns",
                &fresh_path,
            ])
            .env("HEADCNI_SPEC", &small)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let regular_file = spec_file("not-a-netns", "");
    let ok_id = Some("newpod".to_string());
    let ok_netns = Some(fresh_path.clone());
    let eth0 = Some("eth0".to_string());
    let case = |name,
                command,
                container_id: Option<String>,
                netns: Option<String>,
                ifname: Option<String>,
                stdin: String,
                code,
                mentions| Case {
        name,
        command,
        container_id,
        netns,
        ifname,
        stdin,
        code,
        mentions,
    };

    let cases = vec![
        case(
            "malformed JSON",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            "{\"cniVersion\": ".into(),
            6,
            &["stdin"],
        ),
        case(
            "empty stdin",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            String::new(),
            6,
            &["stdin"],
        ),
        case(
            "not an object",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            "[1,2]".into(),
            7,
            &["stdin"],
        ),
        case(
            "missing cniVersion",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| {
                c.as_object_mut().unwrap().remove("cniVersion");
            }),
            7,
            &["cniVersion"],
        ),
        case(
            "unknown cniVersion",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["cniVersion"] = json!("9.9.9")),
            1,
            &["9.9.9", "1.1.0"],
        ),
        case(
            "missing name",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| {
                c.as_object_mut().unwrap().remove("name");
            }),
            7,
            &["name"],
        ),
        case(
            "wrong type",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["type"] = json!("bridge")),
            7,
            &["bridge"],
        ),
        case(
            "spec file missing",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["spec"] = json!("/nonexistent/headcni.toml")),
            7,
            &["/nonexistent/headcni.toml"],
        ),
        case(
            "bad CIDR in the spec",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["spec"] = json!(bad_cidr)),
            7,
            &["bad-cidr.toml:4", "pod_network.cidr"],
        ),
        case(
            "unknown field in the spec",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["spec"] = json!(unknown_field)),
            7,
            &["colour"],
        ),
        case(
            "empty CNI_COMMAND",
            "",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_COMMAND"],
        ),
        case(
            "unknown CNI_COMMAND",
            "FROB",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_COMMAND", "FROB"],
        ),
        case(
            "missing CNI_CONTAINERID",
            "ADD",
            None,
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_CONTAINERID"],
        ),
        case(
            "container id with ../",
            "ADD",
            Some("../../etc".into()),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_CONTAINERID"],
        ),
        case(
            "container id with a slash",
            "ADD",
            Some("a/b".into()),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_CONTAINERID"],
        ),
        case(
            "container id too long",
            "ADD",
            Some("a".repeat(300)),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_CONTAINERID", "300"],
        ),
        case(
            "missing CNI_IFNAME",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            None,
            conf.to_string(),
            4,
            &["CNI_IFNAME"],
        ),
        case(
            "ifname over 15 bytes",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            Some("eth0123456789abc".into()),
            conf.to_string(),
            4,
            &["CNI_IFNAME", "15"],
        ),
        case(
            "ifname with a slash",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            Some("et/h0".into()),
            conf.to_string(),
            4,
            &["CNI_IFNAME"],
        ),
        case(
            "missing CNI_NETNS",
            "ADD",
            ok_id.clone(),
            None,
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_NETNS"],
        ),
        case(
            "netns does not exist",
            "ADD",
            ok_id.clone(),
            Some("/run/netns/no-such-ns".into()),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_NETNS", "no-such-ns"],
        ),
        case(
            "netns is a regular file",
            "ADD",
            ok_id.clone(),
            Some(regular_file.to_str().unwrap().into()),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_NETNS", "nsfs"],
        ),
        case(
            "netns is relative",
            "ADD",
            ok_id.clone(),
            Some("run/netns/x".into()),
            eth0.clone(),
            conf.to_string(),
            4,
            &["CNI_NETNS", "absolute"],
        ),
        case(
            "exhausted pod CIDR",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["spec"] = json!(small)),
            101,
            &["10.250.0.0/29", "exhausted"],
        ),
        case(
            "CHECK with another pod's namespace",
            "CHECK",
            Some(existing.clone()),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            103,
            &["is not the namespace it was attached in"],
        ),
        case(
            "CHECK with a prevResult that is a string",
            "CHECK",
            Some(existing.clone()),
            Some(Lab::ns_path(&existing).to_str().unwrap().to_string()),
            eth0.clone(),
            with(&|c| c["prevResult"] = json!("x")),
            6,
            &["prevResult", "not an object"],
        ),
        case(
            "CHECK with prevResult ips that are not a list",
            "CHECK",
            Some(existing.clone()),
            Some(Lab::ns_path(&existing).to_str().unwrap().to_string()),
            eth0.clone(),
            with(&|c| c["prevResult"] = json!({"ips": "x"})),
            6,
            &["prevResult", "ips is not a list"],
        ),
        case(
            "CHECK of an unknown container",
            "CHECK",
            Some("ghost".into()),
            ok_netns.clone(),
            eth0.clone(),
            conf.to_string(),
            3,
            &["ghost"],
        ),
        case(
            "GC without valid attachments",
            "GC",
            None,
            None,
            None,
            conf.to_string(),
            7,
            &["cni.dev/valid-attachments"],
        ),
        case(
            "CNI_NETNS is the node's own namespace",
            "ADD",
            ok_id.clone(),
            Some(Lab::ns_path(&n.node).to_str().unwrap().to_string()),
            eth0.clone(),
            conf.to_string(),
            4,
            &["node's own network namespace"],
        ),
        case(
            "stateDir other than the spec's (a second store)",
            "ADD",
            ok_id.clone(),
            ok_netns.clone(),
            eth0.clone(),
            with(&|c| c["stateDir"] = json!(regular_file)),
            7,
            &["not-a-netns", "one store"],
        ),
    ];
    assert!(cases.len() >= 20);

    for c in &cases {
        let call = CniCall {
            command: c.command,
            container_id: c.container_id.as_deref(),
            netns: c.netns.as_deref(),
            ifname: c.ifname.as_deref(),
        };
        let out = run_plugin(&n.node, common::headcni_bin(), &call, &c.stdin);
        assert_eq!(out.code, 1, "{}: exit code; stdout {}", c.name, out.stdout);
        assert_eq!(
            out.json["code"].as_u64(),
            Some(c.code),
            "{}: {}",
            c.name,
            out.stdout
        );
        let text = format!(
            "{} {}",
            out.json["msg"].as_str().unwrap_or(""),
            out.json["details"].as_str().unwrap_or("")
        );
        for word in c.mentions {
            assert!(
                text.contains(word),
                "{}: message should mention {word:?}: {text}",
                c.name
            );
        }
        assert_eq!(
            out.stdout.trim().lines().count(),
            1,
            "{}: stdout holds only the error document",
            c.name
        );
        // Nothing changed for the pods already there.
        assert_eq!(n.owned_links(), before_links, "{}", c.name);
        assert_eq!(n.owned_routes(), before_routes, "{}", c.name);
        n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
        assert_eq!(
            n.lab.ip(&fresh, &["-o", "link"]).lines().count(),
            1,
            "{}: fresh pod untouched",
            c.name
        );
    }
    assert!(n.lab.ping(&existing, "100.64.0.5"));
}

#[test]
fn lock_held_too_long_means_try_again_later() {
    let mut n = Node::new();
    let pod = n.lab.netns("pod");
    n.cni_add(&pod);
    let lock = std::fs::File::options()
        .write(true)
        .open(n.lab.dir.path().join("state/pods.lock"))
        .unwrap();
    lock.lock().unwrap();
    let other = n.lab.netns("other");
    let path = Lab::ns_path(&other);
    let mut conf = n.cni_conf("1.1.0");
    conf["lockTimeoutMs"] = json!(100);
    let out = n.cni(&CniCall::add(&other, &path), &conf);
    assert_eq!(out.json["code"], 11, "{}", out.stdout);
    drop(lock);
    let out = n.cni(&CniCall::add(&other, &path), &conf);
    assert_eq!(out.code, 0, "after the lock is released: {}", out.stdout);
}

#[test]
fn failed_add_is_undone_so_a_retry_starts_clean() {
    let mut n = Node::new();
    let pod = n.lab.netns("pod");
    // Something else already holds eth0 in the pod: ADD must fail and undo.
    n.lab.ip(
        &pod,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "squat",
        ],
    );
    let path = Lab::ns_path(&pod);
    let call = CniCall::add(&pod, &path);
    let out = n.cni(&call, &n.cni_conf("1.1.0"));
    assert_eq!(out.code, 1);
    assert!(
        [102, 104].contains(&out.json["code"].as_u64().unwrap()),
        "{}",
        out.stdout
    );
    assert_eq!(n.intents(), 0, "intent and allocation undone");
    assert!(n.owned_links().is_empty(), "no half-made veth left");
    n.lab.ip(&pod, &["link", "del", "eth0"]);
    let out = n.cni(&call, &n.cni_conf("1.1.0"));
    assert_eq!(out.code, 0, "retry works: {}", out.stdout);
}
