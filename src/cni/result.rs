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
    // The pod holds a host prefix (/32, /128) per family: everything, its
    // gateway included, is reached through the gateway, which is on-link
    // (IPv4: its own route; IPv6: link-local).
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for address in wired.intent.addresses() {
        let Some(range) = wired.spec.pod_network.range_of(address) else {
            continue;
        };
        let gateway = range.gateway.to_string();
        let mut ip = json!({
            "address": crate::spec::host_prefix(address).to_string(),
            "gateway": gateway,
            "interface": 1,
        });
        if legacy {
            ip["version"] = json!(if address.is_ipv4() { "4" } else { "6" });
        }
        ips.push(ip);
        let default = if address.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        routes.push(json!({ "dst": default, "gw": gateway }));
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": [host, pod],
        "ips": ips,
        "routes": routes,
        "dns": dns.cloned().unwrap_or_else(|| json!({})),
    })
}
