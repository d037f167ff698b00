//! Host mode depends on the host's own tailscaled, which headcni does not
//! change: it must advertise this node's pod CIDR, accept other nodes'
//! routes when there is a cluster CIDR, and the control server must have
//! approved the route. This reads what tailscaled says of itself
//! (`tailscale debug prefs`, `tailscale status --json`) and tells what is
//! missing, each with the command that fixes it.

use std::path::Path;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

/// The parts of `tailscale debug prefs` used here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Prefs {
    #[serde(default)]
    route_all: bool,
    #[serde(default)]
    advertise_routes: Option<Vec<String>>,
    /// `--snat-subnet-routes=false`; tailscaled's default masquerades.
    #[serde(rename = "NoSNAT", default)]
    no_snat: bool,
}

/// The parts of `tailscale status --json` used here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Status {
    #[serde(default)]
    backend_state: String,
    #[serde(rename = "Self", default)]
    self_: Option<SelfStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SelfStatus {
    #[serde(default)]
    host_name: String,
    /// Routes the control server approved and made primary for this node.
    #[serde(default)]
    primary_routes: Option<Vec<String>>,
}

/// What the host's tailscaled lacks for this node's pods, as sentences an
/// operator can act on. Empty when all is well. Pure, for tests.
pub fn assess(prefs: &str, status: &str, pod_cidrs: &[IpNetwork], cluster: bool) -> Vec<String> {
    let prefs: Prefs = match serde_json::from_str(prefs) {
        Ok(p) => p,
        Err(e) => return vec![format!("cannot read tailscale's prefs: {e}")],
    };
    let status: Status = serde_json::from_str(status).unwrap_or_default();
    let mut out = Vec::new();
    if !status.backend_state.is_empty() && status.backend_state != "Running" {
        out.push(format!(
            "the host's tailscaled is {} (not Running): pods reach no peer until it is; `tailscale up`",
            status.backend_state
        ));
    }
    let advertised = prefs.advertise_routes.unwrap_or_default();
    let cidrs: Vec<String> = pod_cidrs.iter().map(|c| c.to_string()).collect();
    let missing: Vec<&String> = cidrs.iter().filter(|c| !advertised.contains(c)).collect();
    if !missing.is_empty() {
        let mut routes = advertised.clone();
        routes.extend(missing.iter().map(|c| c.to_string()));
        let missing: Vec<&str> = missing.iter().map(|c| c.as_str()).collect();
        out.push(format!(
            "the host's tailscaled does not advertise the pod CIDR {}, so peers cannot answer pods: `tailscale set --advertise-routes={}`",
            missing.join(" and "),
            routes.join(",")
        ));
    }
    for cidr in cidrs.iter().filter(|c| advertised.contains(c)) {
        let approved = status
            .self_
            .as_ref()
            .and_then(|s| s.primary_routes.as_ref())
            .is_some_and(|r| r.contains(cidr));
        if !approved {
            let host = status.self_.as_ref().map_or("", |s| s.host_name.as_str());
            out.push(format!(
                "the control server has not approved {cidr} for this node{}: on Headscale, `headscale nodes list-routes` then `headscale nodes approve-routes --identifier ID --routes {cidr}` (or an autoApprovers ACL)",
                if host.is_empty() { String::new() } else { format!(" ({host})") }
            ));
        }
    }
    if !prefs.no_snat {
        out.push(
            "the host's tailscaled masquerades tailnet traffic into the pod CIDR (--snat-subnet-routes is on, its default): pods see this node's address instead of the peer's, and whatever goes by source address (policies, logs) cannot tell peers apart: `tailscale set --snat-subnet-routes=false`".into(),
        );
    }
    if cluster && !prefs.route_all {
        out.push(
            "the host's tailscaled does not accept routes, so other nodes' pods are unreachable: `tailscale set --accept-routes`".into(),
        );
    }
    out
}

/// Asks the host's `tailscale` CLI and assesses; a CLI that cannot be run
/// or does not answer is one finding itself.
pub fn check(tailscale: &Path, pod_cidrs: &[IpNetwork], cluster: bool) -> Vec<String> {
    let ask = |args: &[&str]| -> Result<String, String> {
        let out = crate::headscale::tailscaled::ask(tailscale, args, Duration::from_secs(5))?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed ({})",
                tailscale.display(),
                args.join(" "),
                out.status
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match (ask(&["debug", "prefs"]), ask(&["status", "--json"])) {
        (Ok(prefs), Ok(status)) => assess(&prefs, &status, pod_cidrs, cluster),
        (Err(e), _) | (_, Err(e)) => vec![format!("cannot ask the host's tailscaled: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::assess;

    const CIDR: &str = "10.244.0.0/24";

    fn cidr() -> Vec<ipnetwork::IpNetwork> {
        vec![CIDR.parse().unwrap()]
    }

    #[test]
    fn all_well_says_nothing() {
        let prefs = r#"{"NoSNAT": true, "RouteAll": true, "AdvertiseRoutes": ["10.244.0.0/24"]}"#;
        let status = r#"{"BackendState": "Running", "Self": {"HostName": "n1", "PrimaryRoutes": ["10.244.0.0/24"]}}"#;
        assert!(assess(prefs, status, &cidr(), true).is_empty());
    }

    #[test]
    fn each_gap_comes_with_its_command() {
        let status = r#"{"BackendState": "Running", "Self": {"HostName": "n1"}}"#;
        let got = assess(
            r#"{"NoSNAT": true, "RouteAll": false, "AdvertiseRoutes": ["192.0.2.0/24"]}"#,
            status,
            &cidr(),
            true,
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].contains("tailscale set --advertise-routes=192.0.2.0/24,10.244.0.0/24"),
            "{got:?}"
        );
        assert!(got[1].contains("tailscale set --accept-routes"), "{got:?}");
        let got = assess(
            r#"{"NoSNAT": true, "RouteAll": false, "AdvertiseRoutes": ["10.244.0.0/24"]}"#,
            status,
            &cidr(),
            false,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("approve-routes") && got[0].contains("(n1)"),
            "{got:?}"
        );
        let got = assess("{}", r#"{"BackendState": "NeedsLogin"}"#, &cidr(), false);
        assert!(got[0].contains("NeedsLogin"), "{got:?}");
    }

    #[test]
    fn a_masquerading_host_tailscaled_is_told_how_to_stop() {
        let prefs = r#"{"RouteAll": true, "AdvertiseRoutes": ["10.244.0.0/24"], "NoSNAT": false}"#;
        let status = r#"{"BackendState": "Running", "Self": {"HostName": "n1", "PrimaryRoutes": ["10.244.0.0/24"]}}"#;
        let got = assess(prefs, status, &cidr(), true);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("tailscale set --snat-subnet-routes=false"),
            "{got:?}"
        );
    }

    #[test]
    fn a_dual_stack_node_needs_both_pod_cidrs_advertised_and_approved() {
        let both: Vec<ipnetwork::IpNetwork> =
            vec![CIDR.parse().unwrap(), "fd00:10:244::/64".parse().unwrap()];
        let status = r#"{"BackendState": "Running", "Self": {"HostName": "n1", "PrimaryRoutes": ["10.244.0.0/24"]}}"#;
        let got = assess(
            r#"{"NoSNAT": true, "RouteAll": true, "AdvertiseRoutes": ["10.244.0.0/24"]}"#,
            status,
            &both,
            false,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("--advertise-routes=10.244.0.0/24,fd00:10:244::/64"),
            "{got:?}"
        );
        let got = assess(
            r#"{"NoSNAT": true, "RouteAll": true, "AdvertiseRoutes": ["10.244.0.0/24", "fd00:10:244::/64"]}"#,
            status,
            &both,
            false,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("--routes fd00:10:244::/64"), "{got:?}");
    }
}
