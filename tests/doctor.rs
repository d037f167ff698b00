//! `headcni doctor` on a throwaway node: quiet on a node that has all it
//! needs, and each thing a node can lack named with its fix. The host's
//! tailscale CLI is a stand-in script (what it says is the point here, not
//! a tailnet).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Node, POD_CIDR};

/// A stand-in `tailscale` CLI answering `debug prefs` and `status --json`.
fn tailscale_cli(path: &Path, no_snat: bool, approved: bool) {
    let primary = if approved {
        format!("[\"{POD_CIDR}\"]")
    } else {
        "[]".into()
    };
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n debug) echo '{{\"RouteAll\": true, \"AdvertiseRoutes\": [\"{POD_CIDR}\"], \"NoSNAT\": {no_snat}}}';;\n status) echo '{{\"BackendState\": \"Running\", \"Self\": {{\"HostName\": \"node-a\", \"PrimaryRoutes\": {primary}}}}}';;\nesac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Doctor {
    code: Option<i32>,
    text: String,
}

fn doctor(n: &Node, conf: &Path, bin: &Path, extra: &[&str]) -> Doctor {
    let mut args = vec![
        "doctor".to_string(),
        format!("--cni-conf-dir={}", conf.display()),
        format!("--cni-bin-dir={}", bin.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = n.headcni(&args);
    Doctor {
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn doctor_is_quiet_on_a_good_node_and_names_each_lack_with_its_fix() {
    let n = Node::new();
    let dir = n.lab.dir.path();
    let (conf, bin, cli) = (dir.join("net.d"), dir.join("bin"), dir.join("tailscale"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(conf.join("10-headcni.conflist"), "{}").unwrap();
    std::fs::copy(common::headcni_bin(), bin.join("headcni")).unwrap();
    tailscale_cli(&cli, true, true);
    let spec = std::fs::read_to_string(&n.spec).unwrap();
    std::fs::write(
        &n.spec,
        format!("{spec}\n[daemon]\ntailscale = \"{}\"\n", cli.display()),
    )
    .unwrap();

    let good = doctor(&n, &conf, &bin, &[]);
    assert_eq!(good.code, Some(0), "{}", good.text);
    assert!(
        !good.text.contains("WARN") && !good.text.contains("FAIL"),
        "{}",
        good.text
    );

    // Another network's configuration sorts first: the runtime uses it.
    std::fs::write(conf.join("05-other.conflist"), "{}").unwrap();
    // The plugin the runtime runs is another build.
    std::fs::write(bin.join("headcni"), "#!/bin/sh\necho 0.0.1\n").unwrap();
    // The host's tailscaled masquerades and its route is not approved.
    tailscale_cli(&cli, false, false);
    let bad = doctor(&n, &conf, &bin, &[]);
    assert_eq!(bad.code, Some(1), "{}", bad.text);
    for (what, fix) in [
        ("FAIL cni config: ", "00-headcni.conflist"),
        ("FAIL cni binary: ", "headcni install"),
        (
            "WARN tailnet: the control server has not approved",
            "approve-routes",
        ),
        (
            "WARN tailnet: the host's tailscaled masquerades",
            "--snat-subnet-routes=false",
        ),
    ] {
        assert!(bad.text.contains(what), "{what}\n{}", bad.text);
        assert!(bad.text.contains(fix), "{fix}\n{}", bad.text);
    }
    let json = doctor(&n, &conf, &bin, &["--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.text).expect(&json.text);
    assert_eq!(v["kind"], "doctor");
    assert!(v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["check"] == "cni binary" && f["level"] == "fail" && f["fix"].is_string()));

    // Daemon mode with no tailscaled where the spec says.
    let text = std::fs::read_to_string(&n.spec)
        .unwrap()
        .replace("mode = \"host\"", "mode = \"daemon\"");
    std::fs::write(
        &n.spec,
        text.replace(
            "[daemon]\n",
            "[daemon]\ntailscaled = \"/nonexistent/tailscaled\"\n",
        ),
    )
    .unwrap();
    let daemon = doctor(&n, &conf, &bin, &[]);
    assert_eq!(daemon.code, Some(1), "{}", daemon.text);
    assert!(
        daemon
            .text
            .contains("FAIL tailscaled: /nonexistent/tailscaled"),
        "{}",
        daemon.text
    );
}
