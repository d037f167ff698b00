//! `headcni install` / `uninstall`, and the spec rendered from the cluster
//! (also for `headcni daemon --from-kubernetes`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use headcni::install::{self, kube, Removal, SpecContent, Written};
use headcni::outln;

use super::{Cli, Exit};

/// The example spec written when a node has none and no template is given.
const EXAMPLE_SPEC: &str = include_str!("../../examples/headcni.toml");

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Where the CNI plugin binary goes (as `headcni`).
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Where the network configuration list goes.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "10-headcni.conflist")]
    conflist_name: String,
    /// Where iproute2 looks for protocol names (`proto headcni`).
    #[arg(long, default_value = "/etc/iproute2/rt_protos.d")]
    protocols_dir: PathBuf,
    /// The record of what install wrote (for uninstall).
    #[arg(long, default_value = "/var/lib/headcni/install.json")]
    record: PathBuf,
    /// The binary to install; default: this one.
    #[arg(long)]
    binary: Option<PathBuf>,
    #[command(flatten)]
    render: RenderArgs,
}

/// The spec from a template and the cluster.
#[derive(clap::Args, Clone)]
pub struct RenderArgs {
    /// A spec template (a ConfigMap's headcni.toml): written as the spec when
    /// the node has none; with --from-kubernetes, rendered with the node's
    /// pod CIDR and kept equal to that.
    #[arg(long)]
    spec_template: Option<PathBuf>,
    /// Take the node's pod CIDR from its Node object (spec.podCIDRs) on the
    /// API server, with the pod's service account.
    #[arg(long, requires = "spec_template")]
    from_kubernetes: bool,
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The API server (https://HOST:PORT); default: the in-cluster one.
    #[arg(long)]
    kube_api: Option<String>,
    /// The service account's token and ca.crt.
    #[arg(long, default_value = kube::SERVICE_ACCOUNT_DIR)]
    kube_sa_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    /// The record install wrote.
    #[arg(long, default_value = "/var/lib/headcni/install.json")]
    record: PathBuf,
    /// Also tear down what headcni made on the node: its links, routes,
    /// rules, nftables table, files and the tailnet namespace, and with
    /// [headscale] its node at Headscale. Nothing of anyone else's. Refused
    /// while a daemon runs on the node (it would put everything back): stop
    /// it first.
    #[arg(long)]
    purge: bool,
    /// Once done, stay running until SIGTERM (the pod of a cleanup
    /// DaemonSet: deploy/cleanup/); a failure exits at once, so the pod is
    /// retried.
    #[arg(long)]
    stay: bool,
}

impl RenderArgs {
    /// The spec install writes, or None when --from-kubernetes is off and
    /// there is no template.
    fn spec_content(&self, spec_path: &Path) -> anyhow::Result<Option<SpecContent>> {
        let Some(template_path) = &self.spec_template else {
            return Ok(None);
        };
        let template = std::fs::read_to_string(template_path)
            .with_context(|| format!("spec template {}", template_path.display()))?;
        if !self.from_kubernetes {
            return Ok(Some(SpecContent::IfMissing(template)));
        }
        let node = self
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .context("--from-kubernetes needs the node's name: --node-name or NODE_NAME")?;
        let api = kube::ApiServer::in_cluster(self.kube_api.as_deref(), &self.kube_sa_dir)?;
        let cidrs = api.node_pod_cidrs(node, &self.kube_sa_dir.join("ca.crt"))?;
        let text = install::render::render_spec(&template, template_path, node, &cidrs, spec_path)?;
        Ok(Some(SpecContent::Rendered(text)))
    }

    /// For the daemon: the spec rendered and written (when it changed)
    /// before anything reads it. When the cluster cannot be asked (an API
    /// server outage) but a spec rendered earlier is there, the daemon
    /// starts on that one and keeps trying (the returned [`Rerender`]):
    /// a node must not lose its pod network, nor its tailscaled, because
    /// the control plane is down when the daemon restarts.
    pub fn render_before_start(
        &self,
        spec_path: &Path,
    ) -> anyhow::Result<Option<headcni::daemon::Rerender>> {
        if !self.from_kubernetes {
            return Ok(None);
        }
        match self.render_and_write(spec_path) {
            Ok(()) => Ok(None),
            Err(e) if rendered_earlier(spec_path) => {
                tracing::warn!(
                    "cannot render the spec from the cluster: {e:#}; starting on the spec rendered last ({})",
                    spec_path.display()
                );
                let (args, path) = (self.clone(), spec_path.to_path_buf());
                Ok(Some(headcni::daemon::Rerender {
                    why: format!("{e:#}"),
                    attempt: Box::new(move || args.render_and_write(&path)),
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// With --from-kubernetes: who reports the node's state to the API
    /// server (a Node condition and Events).
    pub fn node_reporter(&self) -> anyhow::Result<Option<headcni::daemon::NodeReporter>> {
        if !self.from_kubernetes {
            return Ok(None);
        }
        let Some(node) = self.node_name.clone() else {
            anyhow::bail!("--from-kubernetes needs the node's name: --node-name or NODE_NAME");
        };
        Ok(Some(headcni::daemon::NodeReporter {
            url: self.kube_api.clone(),
            sa_dir: self.kube_sa_dir.clone(),
            node,
        }))
    }

    fn render_and_write(&self, spec_path: &Path) -> anyhow::Result<()> {
        if let Some(SpecContent::Rendered(text)) = self.spec_content(spec_path)? {
            let written = install::atomic::write(spec_path, text.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", spec_path.display()))?;
            tracing::info!(
                ?written,
                "spec {} rendered from the cluster",
                spec_path.display()
            );
        }
        Ok(())
    }
}

/// Whether the spec at `path` is one headcni rendered (its first line says
/// so): only such a spec stands in for a render that failed; a hand-written
/// one at that path would be a different node's network.
fn rendered_earlier(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 64];
    std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .is_ok_and(|n| head[..n].starts_with(install::render::RENDERED_MARK.as_bytes()))
}

pub fn run_install(cli: &Cli, args: &InstallArgs) -> anyhow::Result<Exit> {
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding this binary")?,
    };
    let paths = install::Paths {
        binary,
        cni_bin_dir: args.cni_bin_dir.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        conflist_name: args.conflist_name.clone(),
        spec: cli.spec.clone(),
        protocols_dir: args.protocols_dir.clone(),
        record: args.record.clone(),
    };
    let spec = args
        .render
        .spec_content(&cli.spec)?
        .unwrap_or_else(|| SpecContent::IfMissing(EXAMPLE_SPEC.to_string()));
    for done in install::install(&paths, &spec)? {
        let what = match done.written {
            Written::Created => "created",
            Written::Replaced => "replaced",
            Written::Unchanged => "unchanged",
        };
        outln!("{what:>9} {}", done.path.display());
    }
    Ok(Exit(0))
}

/// With `[headscale]`: deletes this node's record at Headscale (the one
/// the daemon found by its node key and wrote down in state_dir), after
/// checking that the id still holds this node's key: never another node's.
fn leave_headscale(spec: &headcni::spec::Spec) -> anyhow::Result<()> {
    use headcni::headscale::{node_record, Client};
    let Some(config) = &spec.headscale else {
        return Ok(());
    };
    let manual = |what: &str| {
        format!("{what}; find it with `headscale nodes list` and delete it with `headscale nodes delete --identifier ID`")
    };
    let client = Client::new(config)?;
    let record = node_record::load(&spec.state_dir).filter(|r| {
        let same = r.url == config.url;
        if !same {
            outln!(
                "  the node record names another Headscale ({}), not {}: ignored",
                r.url,
                config.url
            );
        }
        same
    });
    let record = match record {
        Some(r) => r,
        None => {
            // Never recorded (no daemon check got that far): ask tailscaled.
            let asked = headcni::headscale::tailscaled::status(
                &spec.daemon.tailscale,
                &spec.state_dir.join("tailscaled.sock"),
                std::time::Duration::from_secs(config.timeout_seconds),
            );
            let key = match asked {
                Ok(me) => me.node_key().map(str::to_string),
                Err(e) => {
                    let state = spec.state_dir.join("tailscaled").join("tailscaled.state");
                    if !state.exists() {
                        outln!("  nothing at Headscale to delete (this node never joined)");
                        return Ok(());
                    }
                    anyhow::bail!(manual(&format!(
                        "cannot tell which Headscale node is this one (no record in {}, and tailscaled: {e})",
                        spec.state_dir.display()
                    )));
                }
            };
            let Some(key) = key else {
                outln!("  nothing at Headscale to delete (tailscaled is not logged in)");
                return Ok(());
            };
            let node = client
                .node_by_key(&key)
                .map_err(|e| anyhow::anyhow!(manual(&headcni::Chain(&e).to_string())))?;
            let Some(node) = node else {
                outln!("  nothing at Headscale to delete (it does not list {key})");
                return Ok(());
            };
            node_record::NodeRecord {
                url: config.url.clone(),
                id: node.id,
                name: node.given_name,
                node_key: key,
            }
        }
    };
    let by_hand = |e: &dyn std::error::Error| {
        anyhow::anyhow!(
            "{}; delete it by hand: `headscale nodes delete --identifier {}`",
            headcni::Chain(e),
            record.id
        )
    };
    match client.node(record.id).map_err(|e| by_hand(&e))? {
        None => outln!(
            "  headscale node {} (id {}) is gone already",
            record.name,
            record.id
        ),
        Some(node) if node.node_key != record.node_key => outln!(
            "  headscale node id {} is another node now ({}): not deleted",
            record.id,
            node.given_name
        ),
        Some(_) => {
            client.delete_node(record.id).map_err(|e| by_hand(&e))?;
            outln!(
                "- headscale node {} (id {}) at {}",
                record.name,
                record.id,
                record.url
            );
        }
    }
    node_record::remove(&spec.state_dir);
    Ok(())
}

pub fn run_uninstall(cli: &Cli, args: &UninstallArgs) -> anyhow::Result<Exit> {
    let mut code = 0;
    if args.purge {
        let spec = cli.load_spec()?;
        // Held while purging: a daemon would put everything back within a
        // pass, and none may start meanwhile.
        let held = headcni::daemon::hold(&spec.state_dir)?;
        if let Err(pid) = held {
            anyhow::bail!(
                "headcni daemon{} runs on {}: stop it first (delete the DaemonSet, or `systemctl stop headcni`); nothing was removed",
                if pid > 0 { format!(" (pid {pid})") } else { String::new() },
                spec.state_dir.display()
            );
        }
        if let Err(e) = leave_headscale(&spec) {
            eprintln!("headcni: {e}");
            code = 1;
        }
        let purged = headcni::engine::purge(&spec)?;
        for step in &purged.plan.steps {
            outln!("{step}");
        }
        for failure in &purged.report.failed {
            eprintln!("headcni: {failure}");
            code = 1;
        }
        match purged.netns {
            (netns, Ok(true)) => outln!("- netns {}", netns.display()),
            (_, Ok(false)) => {}
            (netns, Err(e)) => {
                eprintln!("headcni: {}: {e}", netns.display());
                code = 1;
            }
        }
    }
    for (path, removal) in install::uninstall(&args.record)? {
        let what = match removal {
            Removal::Removed => "removed",
            Removal::AlreadyGone => "gone",
            Removal::KeptChanged => "kept (changed since install)",
        };
        outln!("{what:>9} {}", path.display());
    }
    if args.stay && code == 0 {
        // A cleanup DaemonSet's pod: done on this node, Running until the
        // operator deletes it (deploy/cleanup/), so `kubectl rollout
        // status` shows every node done.
        outln!("headcni: uninstalled; staying until stopped");
        wait_for_stop()?;
    }
    Ok(Exit(code))
}

/// Blocks until SIGTERM or SIGINT, then returns (exit 0). Waited for, not
/// left to their default: as a container's PID 1 (no hostPID) they would
/// be ignored. Blocked on this thread only: should another thread (a DNS
/// look-up's) take one, its default ends the process, which is the point.
fn wait_for_stop() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM")?;
    set.wait().context("waiting for SIGTERM")?;
    Ok(())
}
