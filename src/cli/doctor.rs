//! `headcni doctor`: what a node needs, checked one at a time, each ok,
//! warn or fail with the command that fixes it. Read only: it changes
//! nothing, so it is safe to run on a node in trouble.

use std::path::PathBuf;

use headcni::spec::{Mode, Spec};
use headcni::{out, outln};
use serde::Serialize;

use super::{executable, Cli, Exit, Format};

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Where kubelet's runtime reads CNI configuration.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where the runtime finds CNI plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// headcni's conflist, as `headcni install` named it.
    #[arg(long, default_value = "10-headcni.conflist")]
    conflist_name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    level: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn problem(
    check: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        level,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub fn run(cli: &Cli, args: &DoctorArgs) -> anyhow::Result<Exit> {
    let findings = match cli.load_spec() {
        Ok(spec) => check_node(cli, &spec, args),
        Err(e) => vec![problem(
            "spec",
            Level::Fail,
            format!("{e:#}"),
            "fix the spec where the message says (`headcni validate`)",
        )],
    };
    match args.format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "format_version": 1,
                "kind": "doctor",
                "findings": findings,
            }))?
        ),
        Format::Text => print(&findings),
    }
    let failed = findings.iter().any(|f| f.level == Level::Fail);
    Ok(Exit(u8::from(failed)))
}

fn print(findings: &[Finding]) {
    for f in findings {
        let level = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        outln!("{level} {}: {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            outln!("     fix: {fix}");
        }
    }
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    out!(
        "{} ok, {}, {} failed\n",
        count(Level::Ok),
        headcni::report::plural(count(Level::Warn), "warning"),
        count(Level::Fail)
    );
}

fn check_node(cli: &Cli, spec: &Spec, args: &DoctorArgs) -> Vec<Finding> {
    let mut found = vec![ok("spec", format!("{} is valid", cli.spec.display()))];
    found.extend(kernel(spec));
    found.push(match super::state_dir_report(spec) {
        Ok(what) => ok("state_dir", format!("{}: {what}", spec.state_dir.display())),
        Err(e) => problem(
            "state_dir",
            Level::Fail,
            format!("{e:#}"),
            format!(
                "make {} a directory of root's, mode 0700",
                spec.state_dir.display()
            ),
        ),
    });
    found.push(conflist(args));
    found.push(cni_binary(args));
    found.extend(mtu(spec));
    match spec.mode {
        Mode::Host => found.extend(host_tailnet(spec)),
        Mode::Daemon => found.extend(daemon_tailnet(spec)),
    }
    found
}

fn kernel(spec: &Spec) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(if on_path("nft").is_some() {
        ok("nftables", "nft is installed")
    } else {
        problem(
            "nftables",
            Level::Fail,
            "nft is not on PATH: the masquerade, source check and MSS clamp need it",
            "install nftables (`apt install nftables`)",
        )
    });
    if spec.pod_network.ipv6.is_some() {
        let disabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .map(|v| v.trim() != "0")
            .unwrap_or(true);
        out.push(if disabled {
            problem(
                "ipv6",
                Level::Fail,
                "pod_network.cidr6 is set but IPv6 is off on this node",
                "sysctl -w net.ipv6.conf.all.disable_ipv6=0 (or boot without ipv6.disable=1)",
            )
        } else {
            ok("ipv6", "IPv6 is on")
        });
    }
    out
}

/// The runtime takes the first configuration in name order: it must be
/// headcni's.
fn conflist(args: &DoctorArgs) -> Finding {
    let mut names: Vec<String> = std::fs::read_dir(&args.cni_conf_dir)
        .map(|d| {
            d.flatten()
                // As libcni: files only.
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    [".conf", ".conflist", ".json"]
                        .iter()
                        .any(|ext| n.ends_with(ext))
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let dir = args.cni_conf_dir.display();
    match names.first() {
        None => problem(
            "cni config",
            Level::Fail,
            format!("no CNI configuration in {dir}: pods get no network"),
            "headcni install",
        ),
        Some(first) if *first == args.conflist_name => ok(
            "cni config",
            format!("{dir}/{first} is the first, so the runtime uses it"),
        ),
        Some(first) => problem(
            "cni config",
            Level::Fail,
            format!(
                "{dir}/{first} comes before {} in name order: the runtime uses it, not headcni",
                args.conflist_name
            ),
            format!(
                "remove {dir}/{first} if it is a leftover, or `headcni install --conflist-name 00-headcni.conflist`"
            ),
        ),
    }
}

/// The plugin the runtime runs must be this very binary: an older one
/// speaks an older hand-off and plans with older rules.
fn cni_binary(args: &DoctorArgs) -> Finding {
    let installed = args.cni_bin_dir.join("headcni");
    let ours = std::env::current_exe().and_then(std::fs::read);
    match (std::fs::read(&installed), ours) {
        (Err(e), _) => problem(
            "cni binary",
            Level::Fail,
            format!("{}: {e}", installed.display()),
            "headcni install",
        ),
        (Ok(theirs), Ok(ours)) if theirs == ours => ok(
            "cni binary",
            format!(
                "{} is this headcni ({})",
                installed.display(),
                env!("CARGO_PKG_VERSION")
            ),
        ),
        (Ok(_), Ok(_)) => problem(
            "cni binary",
            Level::Fail,
            format!(
                "{} is not this headcni {}: the runtime runs another build",
                installed.display(),
                env!("CARGO_PKG_VERSION")
            ),
            "headcni install (the DaemonSet's init container does it)",
        ),
        (Ok(_), Err(e)) => problem(
            "cni binary",
            Level::Warn,
            format!("cannot read this binary to compare: {e}"),
            "run doctor from the installed binary",
        ),
    }
}

/// Pods' MTU against the node's uplink (the interface of its default route).
fn mtu(spec: &Spec) -> Vec<Finding> {
    let mut out = Vec::new();
    let pod_mtu = spec.pod_network.mtu;
    if let Some((dev, uplink)) = default_route_mtu() {
        out.push(if pod_mtu > uplink {
            problem(
                "mtu",
                Level::Warn,
                format!("pods' MTU {pod_mtu} is above {dev}'s {uplink}: large packets to the internet are fragmented or dropped"),
                format!("pod_network.mtu = {uplink}"),
            )
        } else {
            ok("mtu", format!("pods' MTU {pod_mtu} fits {dev}'s {uplink}"))
        });
    }
    if !spec.pod_network.mss_clamp && pod_mtu > 1280 {
        out.push(problem(
            "mtu",
            Level::Warn,
            format!("the tailnet's MTU is 1280 and mss_clamp is off: TCP from pods (MTU {pod_mtu}) to the tailnet relies on path MTU discovery"),
            "pod_network.mss_clamp = true",
        ));
    }
    out
}

/// The IPv4 default route's interface (`/proc/net/route`, this namespace's)
/// and its MTU.
fn default_route_mtu() -> Option<(String, u32)> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = routes.lines().skip(1).find_map(|l| {
        let mut fields = l.split_whitespace();
        let dev = fields.next()?;
        (fields.next()? == "00000000").then(|| dev.to_string())
    })?;
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((dev, mtu))
}

fn host_tailnet(spec: &Spec) -> Vec<Finding> {
    let lacks = headcni::hosttailnet::check(
        &spec.daemon.tailscale,
        &spec.pod_network.cidrs(),
        spec.pod_network.has_cluster(),
    );
    if lacks.is_empty() {
        return vec![ok(
            "tailnet",
            "the host's tailscaled is logged in, advertises and has approved the pod CIDRs, does not masquerade",
        )];
    }
    lacks
        .into_iter()
        .map(|finding| {
            // Each sentence ends with its fix after the last ": ".
            let (detail, fix) = finding
                .rsplit_once(": `")
                .map(|(d, f)| (d.to_string(), format!("`{f}")))
                .unwrap_or((finding.clone(), "see docs/traffic.md".into()));
            problem("tailnet", Level::Warn, detail, fix)
        })
        .collect()
}

fn daemon_tailnet(spec: &Spec) -> Vec<Finding> {
    let d = &spec.daemon;
    let mut out = Vec::new();
    for (what, path) in [("tailscaled", &d.tailscaled), ("tailscale", &d.tailscale)] {
        if !executable(path) {
            out.push(problem(
                "tailscaled",
                Level::Fail,
                format!("{} ({what}) is not an executable file", path.display()),
                format!("install Tailscale, or set daemon.{what} to where it is"),
            ));
        }
    }
    if !out.is_empty() {
        return out;
    }
    match headcni::daemon::running(&spec.state_dir) {
        Some(pid) => out.push(ok("daemon", format!("headcni daemon runs (pid {pid})"))),
        None => out.push(problem(
            "daemon",
            Level::Fail,
            "no headcni daemon runs on this node: nothing runs tailscaled or wires pods",
            "start it (the DaemonSet, or `systemctl start headcni`)",
        )),
    }
    let socket = spec.state_dir.join("tailscaled.sock");
    match headcni::headscale::tailscaled::status(
        &d.tailscale,
        &socket,
        std::time::Duration::from_secs(5),
    ) {
        Ok(me) if me.node_key().is_some() => {
            out.push(ok("tailscaled", "logged in (Running)"));
            let findings = headcni::daemon::approver::findings(spec);
            if findings.is_empty() {
                out.push(ok("approval", "the pod CIDRs are approved at Headscale"));
            }
            for f in findings {
                out.push(problem(
                    "approval",
                    Level::Warn,
                    f,
                    "[headscale] api_key_file, or `headcni headscale-policy` (docs/daemon.md)",
                ));
            }
        }
        Ok(me) => out.push(problem(
            "tailscaled",
            Level::Fail,
            format!("not logged in ({})", me.backend_state),
            "daemon.login_server and daemon.auth_key_file (or [headscale] user), then `headcni status`",
        )),
        Err(e) => out.push(problem(
            "tailscaled",
            Level::Fail,
            e,
            "`headcni status` and the daemon's log (target tailscaled)",
        )),
    }
    out
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    })
}
