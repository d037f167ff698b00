//! The ADD result, shaped for the cniVersion the runtime asked for.

use serde_json::{json, Value};

use crate::spec::{PodIntent, Spec};

pub struct Wired<'a> {
    pub intent: &'a PodIntent,
    pub spec: &'a Spec,
    pub host_mac: Option<String>,
    pub pod_mac: Option<String>,
}

pub fn add_result(cni_version: &str, wired: &Wired, dns: Option<&Value>) -> Value {
    let legacy = cni_version.starts_with("0.");
    let with_mtu = cni_version == "1.1.0";
    let gateway = wired.spec.pod_network.gateway.to_string();
    let mut host = json!({ "name": wired.intent.host_link });
    let mut pod = json!({ "name": wired.intent.key.ifname, "sandbox": wired.intent.netns });
    if let Some(mac) = &wired.host_mac {
        host["mac"] = json!(mac);
    }
    if let Some(mac) = &wired.pod_mac {
        pod["mac"] = json!(mac);
    }
    if with_mtu {
        host["mtu"] = json!(wired.spec.pod_network.mtu);
        pod["mtu"] = json!(wired.spec.pod_network.mtu);
    }
    // The pod holds a /32: everything, its gateway included, is reached
    // through the gateway's on-link route.
    let mut ip =
        json!({ "address": format!("{}/32", wired.intent.ip), "gateway": gateway, "interface": 1 });
    if legacy {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": [host, pod],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": gateway }],
        "dns": dns.cloned().unwrap_or_else(|| json!({})),
    })
}
