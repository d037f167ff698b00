//! headcni as a CNI plugin, run as a runtime runs it (env + stdin), inside
//! throwaway namespaces.

mod common;

use common::{run_plugin, CniCall, Lab, Node};
use serde_json::{json, Value};

fn ip_of(result: &Value) -> String {
    let addr = result["ips"][0]["address"].as_str().expect("address");
    addr.split('/').next().unwrap().to_string()
}

#[test]
fn add_check_del_with_connectivity() {
    let mut n = Node::new();
    let pods: Vec<String> = (1..=3).map(|i| n.lab.netns(&format!("pod{i}"))).collect();
    let results: Vec<Value> = pods.iter().map(|p| n.cni_add(p)).collect();

    // The result is shaped as CNI 1.1 asks.
    let r = &results[0];
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["ips"][0]["gateway"], "10.244.0.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert!(r["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .starts_with("hc"));
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        Lab::ns_path(&pods[0]).to_str().unwrap()
    );
    assert_eq!(r["interfaces"][1]["mac"].as_str().unwrap().len(), 17);
    common::assert_result_macs(r, &n.node, &pods[0]);
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");

    for p in &pods {
        let path = Lab::ns_path(p);
        let out = n.cni(&CniCall::of("CHECK", p, &path), &n.cni_conf("1.1.0"));
        assert_eq!((out.code, &out.json), (0, &Value::Null), "{}", out.stderr);
    }
    assert!(n.lab.ping(&pods[0], &ip_of(&results[1])), "pod to pod");
    assert!(n.lab.ping(&pods[0], "10.244.0.1"), "pod to gateway");
    assert!(n.lab.ping(&pods[0], "100.64.0.5"), "pod to tailnet peer");
    assert!(
        n.lab.ping(&pods[2], "203.0.113.1"),
        "pod to default gateway"
    );

    // A repeated ADD returns the same result and allocates nothing new.
    assert_eq!(n.cni_add(&pods[0]), results[0]);
    assert_eq!(n.intents(), 3);

    // CHECK notices drift inside the pod.
    n.lab.ip(&pods[1], &["route", "del", "default"]);
    let path = Lab::ns_path(&pods[1]);
    let out = n.cni(&CniCall::of("CHECK", &pods[1], &path), &n.cni_conf("1.1.0"));
    assert_eq!(out.json["code"], 103, "{}", out.stdout);
    assert!(
        out.json["details"]
            .as_str()
            .unwrap()
            .contains("route default"),
        "{}",
        out.stdout
    );

    // DEL, twice; DEL with the netns gone.
    for p in &pods[..2] {
        let path = Lab::ns_path(p);
        assert_eq!(n.cni_del(p, path.to_str()).code, 0);
        assert_eq!(n.cni_del(p, path.to_str()).code, 0, "second DEL succeeds");
    }
    let gone = pods[2].clone();
    common::sh(&["ip", "netns", "del", &gone]);
    let out = n.cni_del(&gone, Some("/run/netns/does-not-exist"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(n.owned_links().is_empty(), "{:?}", n.owned_links());
    assert_eq!(n.intents(), 0);
    let routes = n.owned_routes();
    assert!(
        routes.iter().all(|r| !r.starts_with("10.244.")),
        "{routes:?}"
    );
}

#[test]
fn gc_keeps_only_valid_attachments() {
    let mut n = Node::new();
    let pods: Vec<String> = (1..=3).map(|i| n.lab.netns(&format!("pod{i}"))).collect();
    for p in &pods {
        n.cni_add(p);
    }
    let mut conf = n.cni_conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{ "containerID": pods[0], "ifname": "eth0" }]);
    let out = n.cni(&CniCall::new("GC"), &conf);
    assert_eq!((out.code, &out.json), (0, &Value::Null), "{}", out.stderr);
    assert_eq!(n.intents(), 1);
    assert_eq!(n.owned_links().len(), 1);
    assert!(
        n.lab.ping(&pods[0], "100.64.0.5"),
        "the valid pod still works"
    );
    assert_eq!(
        n.lab.ip(&pods[1], &["-o", "link"]).lines().count(),
        1,
        "only lo left in a collected pod"
    );
}

#[test]
fn status_both_ways() {
    let n = Node::new();
    let out = n.cni(&CniCall::new("STATUS"), &n.cni_conf("1.1.0"));
    assert_eq!((out.code, &out.json), (0, &Value::Null), "{}", out.stderr);

    std::fs::write(
        &n.spec,
        "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"nonsense\"\n",
    )
    .unwrap();
    let out = n.cni(&CniCall::new("STATUS"), &n.cni_conf("1.1.0"));
    assert_eq!(out.json["code"], 50, "{}", out.stdout);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .contains("pod_network.cidr"),
        "{}",
        out.stdout
    );

    // Daemon mode without its tailnet interface is not ready either.
    n.write_spec("");
    let text = std::fs::read_to_string(&n.spec)
        .unwrap()
        .replace("mode = \"host\"", "mode = \"daemon\"")
        .replace("interface = \"tailscale0\"", "interface = \"headcni01\"");
    std::fs::write(&n.spec, text).unwrap();
    let out = n.cni(&CniCall::new("STATUS"), &n.cni_conf("1.1.0"));
    assert_eq!(out.json["code"], 50, "{}", out.stdout);
    assert!(
        out.json["msg"].as_str().unwrap().contains("headcni01"),
        "{}",
        out.stdout
    );
}

#[test]
fn version_and_results_for_every_supported_version() {
    let mut n = Node::new();
    let out = n.cni(&CniCall::new("VERSION"), &json!({ "cniVersion": "1.0.0" }));
    assert_eq!(
        out.json,
        json!({ "cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] })
    );
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let ns = n.lab.netns(&format!("v{i}"));
        let path = Lab::ns_path(&ns);
        let out = n.cni(&CniCall::add(&ns, &path), &n.cni_conf(version));
        assert_eq!(out.code, 0, "{}", out.stdout);
        assert_eq!(out.json["cniVersion"], *version);
        assert_eq!(
            out.json["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{version}: {}",
            out.stdout
        );
        assert_eq!(
            out.json["interfaces"][0].get("mtu").is_some(),
            *version == "1.1.0"
        );
    }
}

#[test]
fn chained_with_portmap_and_tuning_as_libcni_does() {
    let mut n = Node::new();
    let pod = n.lab.netns("pod1");
    let path = Lab::ns_path(&pod);
    let netns = path.to_str().unwrap();
    // libcni runs each plugin of the list with the list's name and version
    // and the previous plugin's result as prevResult.
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "headcni",
        "plugins": [
            { "type": "headcni", "spec": n.spec },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    });
    let plugin_conf = |i: usize, prev: Option<&Value>| {
        let mut conf = list["plugins"][i].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if i == 1 {
            conf["runtimeConfig"] = json!({ "portMappings": [{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }] });
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    };
    let call = |command| CniCall {
        command,
        container_id: Some(&pod),
        netns: Some(netns),
        ifname: Some("eth0"),
    };
    let first = n.cni(&call("ADD"), &plugin_conf(0, None));
    assert_eq!(first.code, 0, "{}", first.stdout);
    let second = run_plugin(
        &n.node,
        "/usr/lib/cni/portmap",
        &call("ADD"),
        &plugin_conf(1, Some(&first.json)).to_string(),
    );
    assert_eq!(
        second.code, 0,
        "portmap: {} {}",
        second.stdout, second.stderr
    );
    assert_eq!(
        second.json["ips"], first.json["ips"],
        "prevResult flowed through portmap"
    );
    let nat = common::sh(&["ip", "netns", "exec", &n.node, "iptables-save", "-t", "nat"]);
    assert!(
        nat.contains(&format!("{}:80", ip_of(&first.json))),
        "portmap DNAT rule for our pod: {nat}"
    );

    // tuning after portmap: sets a sysctl on the pod's interface from prevResult.
    let tuning_conf = json!({
        "cniVersion": "1.0.0", "name": "headcni", "type": "tuning",
        "sysctl": { "net.ipv4.conf.eth0.arp_notify": "1" },
        "prevResult": second.json,
    });
    let third = run_plugin(
        &n.node,
        "/usr/lib/cni/tuning",
        &call("ADD"),
        &tuning_conf.to_string(),
    );
    assert_eq!(third.code, 0, "tuning: {} {}", third.stdout, third.stderr);
    assert_eq!(
        third.json["ips"], first.json["ips"],
        "prevResult flowed through tuning"
    );
    let notify = common::sh(&[
        "ip",
        "netns",
        "exec",
        &pod,
        "sysctl",
        "-n",
        "net.ipv4.conf.eth0.arp_notify",
    ]);
    assert_eq!(notify.trim(), "1", "tuning configured the pod's interface");

    // CHECK down the list, then DEL in reverse order, each with the final result.
    let final_result = third.json.clone();
    let check = n.cni(&call("CHECK"), &plugin_conf(0, Some(&final_result)));
    assert_eq!(check.code, 0, "{}", check.stdout);
    let del = run_plugin(
        &n.node,
        "/usr/lib/cni/portmap",
        &call("DEL"),
        &plugin_conf(1, Some(&final_result)).to_string(),
    );
    assert_eq!(del.code, 0, "{}", del.stdout);
    let del = n.cni(&call("DEL"), &plugin_conf(0, Some(&final_result)));
    assert_eq!(del.code, 0, "{}", del.stdout);
    assert!(n.owned_links().is_empty());
}

#[test]
fn parallel_adds_and_dels_leave_nothing_behind() {
    let mut n = Node::new();
    let pods: Vec<String> = (0..32).map(|i| n.lab.netns(&format!("p{i}"))).collect();
    for round in 0..5 {
        let ips: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .map(|p| s.spawn(|| ip_of(&n.cni_add(p))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), 32, "round {round}: {ips:?}");
        assert_eq!(n.owned_links().len(), 32);
        assert!(n.lab.ping(&pods[0], &ips[31]), "round {round}: pod to pod");
        std::thread::scope(|s| {
            for p in &pods {
                let n = &n;
                s.spawn(move || {
                    let path = Lab::ns_path(p);
                    let out = n.cni_del(p, path.to_str());
                    assert_eq!(out.code, 0, "DEL {p}: {}", out.stdout);
                });
            }
        });
        assert!(
            n.owned_links().is_empty(),
            "round {round}: {:?}",
            n.owned_links()
        );
        assert!(
            n.owned_routes().iter().all(|r| !r.starts_with("10.244.")),
            "round {round}: {:?}",
            n.owned_routes()
        );
        assert_eq!(n.intents(), 0, "round {round}");
        for p in &pods {
            assert_eq!(
                n.lab.ip(p, &["-o", "link"]).lines().count(),
                1,
                "round {round}: {p} has only lo"
            );
        }
    }
}
