//! The `headcni` command line. Each subcommand lives in its own file; errors
//! become messages and exit codes here and nowhere else.

mod doctor;
mod install;
mod logjson;
mod observe;
mod plan;
mod pod;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use headcni::{out, outln};

use headcni::spec::{Spec, DEFAULT_SPEC_PATH};
use headcni::store::PodStore;

#[derive(Parser)]
#[command(
    name = "headcni",
    version,
    about = "Pod networking on a Tailscale/Headscale tailnet: plan, apply, CNI"
)]
pub struct Cli {
    /// The node spec (TOML).
    #[arg(long, global = true, env = "HEADCNI_SPEC", default_value = DEFAULT_SPEC_PATH)]
    spec: PathBuf,
    /// More of headcni's own log output on stderr (-v debug, -vv trace);
    /// RUST_LOG overrides (and reaches the libraries').
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log lines as text (colour only on a terminal, never with NO_COLOR) or
    /// JSON objects, one a line (for log pipelines).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "HEADCNI_LOG_FORMAT",
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the spec and print it as headcni understands it.
    Validate {
        /// The spec alone: no look at state_dir or key files, so no root
        /// needed (a CI job checking a spec before it ships).
        #[arg(long)]
        offline: bool,
    },
    /// Print the node's (and pods') network state as headcni sees it.
    Observe(observe::ObserveArgs),
    /// Show what apply would change, without changing anything.
    Plan(plan::PlanArgs),
    /// Plan, apply, and verify that the node converged (exit 1 when it did
    /// not: a step failed, a conflict blocks a pod, or something waits).
    Apply(plan::ApplyArgs),
    /// Write and read pod intents by hand (the seam the CNI plugin uses).
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Reconcile continuously (and, in daemon mode, run the node's own tailnet interface).
    Daemon(DaemonArgs),
    /// Put headcni on this node: the CNI binary and network configuration,
    /// the spec when there is none, the protocol name. Idempotent.
    Install(install::InstallArgs),
    /// Remove what install wrote (and, with --purge, what headcni made).
    Uninstall(install::UninstallArgs),
    /// Check what this node needs (kernel, CNI configuration and binary,
    /// state_dir, tailscaled, approval, MTU), each ok/warn/fail with its
    /// fix; exit 1 when something fails. Changes nothing.
    Doctor(doctor::DoctorArgs),
    /// What the running daemon reports (from its socket in state_dir).
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print a shell completion script (e.g. `headcni completions bash >
    /// /etc/bash_completion.d/headcni`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `headcni man > /usr/share/man/man8/headcni.8`.
    Man,
    /// Print the Headscale policy stanza (autoApprovers) that approves every
    /// node's pod CIDR with no operator step, for the cluster's pod CIDRs
    /// (the spec's cluster_cidr/cluster_cidr6, else this node's). The other
    /// way is an API key in the spec's [headscale] (docs/daemon.md).
    HeadscalePolicy {
        /// Who the routes are approved for: tag:NAME, group:NAME or USER@.
        /// Default: the spec's first [headscale] tag, else its user.
        #[arg(long)]
        owner: Option<String>,
    },
}

#[derive(clap::Args)]
struct DaemonArgs {
    #[command(flatten)]
    render: install::RenderArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Failures carry their exit code: 1 for errors, 2 for "changes present",
/// 64 for a command line that does not parse.
pub struct Exit(pub u8);

/// A command used wrongly (sysexits' EX_USAGE): never 2, which `plan
/// --detailed-exitcode` means as "changes pending".
const EXIT_USAGE: u8 = 64;

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are answers, not errors.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A service logs what it does; a command only what went wrong.
    let service = matches!(cli.command, Command::Daemon(_));
    init_logging(cli.verbose, service, cli.log_format);
    let result = match &cli.command {
        Command::Validate { offline } => validate(&cli, *offline),
        Command::Observe(args) => observe::run(&cli, args),
        Command::Plan(args) => plan::run_plan(&cli, args),
        Command::Apply(args) => plan::run_apply(&cli, args),
        Command::Pod(cmd) => pod::run(&cli, cmd),
        Command::Daemon(args) => args
            .render
            .render_before_start(&cli.spec)
            .and_then(|rerender| {
                headcni::daemon::run(&cli.spec, rerender, args.render.node_reporter()?)
            })
            .map(|()| Exit(0)),
        Command::Install(args) => install::run_install(&cli, args),
        Command::Uninstall(args) => install::run_uninstall(&cli, args),
        Command::Status { format } => status(&cli, *format),
        Command::Doctor(args) => doctor::run(&cli, args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut command, "headcni", &mut out);
            out!("{}", String::from_utf8_lossy(&out));
            Ok(Exit(0))
        }
        Command::Man => man(),
        Command::HeadscalePolicy { owner } => headscale_policy(&cli, owner.as_deref()),
    };
    match result {
        Ok(Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("headcni: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, service: bool, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // -v and -vv raise headcni's own targets only: trace from every
    // dependency (netlink, inotify) drowns what matters; RUST_LOG reaches them.
    let base = if service { "info" } else { "warn" };
    let default = match verbose {
        0 => base.to_string(),
        1 => format!("headcni=debug,{base}"),
        _ => format!("headcni=trace,{base}"),
    };
    let default = default.as_str();
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                eprintln!(
                    "headcni: RUST_LOG={directives:?} is not a log filter ({e}); using {default:?}"
                );
                EnvFilter::new(default)
            })
        }
        _ => EnvFilter::new(default),
    };
    // journald and log files store escape codes as they are: colour only
    // for a person at a terminal who did not ask for none.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // (tracing-subscriber also takes over the `log` records of the netlink crates.)
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour).try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(logjson::KlogJson)
            .try_init(),
    };
}

impl Cli {
    fn load_spec(&self) -> anyhow::Result<Spec> {
        Ok(Spec::load(&self.spec)?)
    }

    fn store(spec: &Spec) -> PodStore {
        spec.pod_store()
    }
}

/// state_dir must be usable before anything relies on it: a directory only
/// we can write (or one we can create), holding a store that reads.
fn state_dir_report(spec: &Spec) -> anyhow::Result<String> {
    use headcni::store::StateDirCheck;
    let context = || format!("{}: state_dir", spec.source.display());
    let check = headcni::store::check_state_dir(&spec.state_dir).with_context(context)?;
    let pods = spec.pod_store().read().with_context(context)?;
    let stored = match pods.missing_store {
        Some(_) => "no pod store yet".to_string(),
        None => format!("{} pods in the store", pods.pods.len()),
    };
    Ok(match check {
        StateDirCheck::Private => stored,
        StateDirCheck::WillBeCreated { parent } => {
            format!("will be created under {}", parent.display())
        }
        StateDirCheck::ReadableByOthers { mode } => {
            eprintln!(
                "headcni: warning: state_dir {} is readable by others (mode {mode:04o}); `chmod 700` it",
                spec.state_dir.display()
            );
            stored
        }
    })
}

/// `FILE:LINE:COL: table.key` for a field of the spec file (the value's
/// position), as spec errors name theirs; `FILE: table.key` when the field
/// is not written there (a default).
fn at(spec: &std::path::Path, field: &str) -> String {
    let (table, key) = field.split_once('.').unwrap_or(("", field));
    let text = std::fs::read_to_string(spec).unwrap_or_default();
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            current = header
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            continue;
        }
        let Some(rest) = trimmed.strip_prefix(key) else {
            continue;
        };
        let after = rest.trim_start();
        if current == table && after.starts_with('=') {
            let value = after[1..].trim_start();
            let col = line.len() - value.len() + 1;
            return format!("{}:{}:{col}: {field}", spec.display(), n + 1);
        }
    }
    format!("{}: {field}", spec.display())
}

/// A regular file someone may execute.
fn executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn man() -> anyhow::Result<Exit> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section("8")
        .render(&mut page)
        .context("rendering the man page")?;
    out!("{}{MAN_EXTRA}", String::from_utf8_lossy(&page));
    Ok(Exit(0))
}

/// The sections clap's page has no place for.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
success; for plan \-\-detailed\-exitcode, the node matches its spec
.TP
1
an error; for apply, the node did not converge (a step failed, a conflict blocks a pod, something waits)
.TP
2
plan \-\-detailed\-exitcode: steps, conflicts or waiting items; plan \-\-drift: changes pending since the last apply
.TP
3
plan \-\-drift: the kernel drifted from the last apply
.TP
64
the command line does not parse (EX_USAGE)
.SH FILES
.TP
/etc/headcni/headcni.toml
the node spec (\-\-spec, HEADCNI_SPEC)
.TP
/var/lib/headcni
state_dir: the pod store, the daemon's sockets, tailscaled's state
.TP
/etc/cni/net.d/10\-headcni.conflist, /opt/cni/bin/headcni
what headcni install writes
.SH ENVIRONMENT
.TP
HEADCNI_SPEC
the node spec's path
.TP
HEADCNI_LOG_FORMAT
text or json
.TP
RUST_LOG
log filter (overrides \-v)
.TP
NO_COLOR
no colour in logs and plans
.TP
NODE_NAME
this node's name, for \-\-from\-kubernetes
.TP
CNI_COMMAND
set by the container runtime: run as the CNI plugin
"#;

fn status(cli: &Cli, format: Format) -> anyhow::Result<Exit> {
    let state_dir = match cli.load_spec() {
        Ok(spec) => spec.state_dir,
        Err(_) => Spec::state_dir_of(&cli.spec),
    };
    let status = headcni::daemon::status::query(&state_dir)?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&status)?),
        Format::Text => headcni::daemon::print_status(&status),
    }
    Ok(Exit(0))
}

fn headscale_policy(cli: &Cli, owner: Option<&str>) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    let configured = spec.headscale.as_ref().and_then(|h| {
        h.tags
            .first()
            .cloned()
            .or_else(|| h.user.as_ref().map(|u| format!("{u}@")))
    });
    let Some(owner) = owner.map(str::to_string).or(configured) else {
        anyhow::bail!(
            "whose routes to approve: give --owner (tag:NAME, group:NAME or USER@, the Headscale user the nodes' pre-auth key belongs to)"
        );
    };
    let owner =
        headcni::headscale::policy::owner(&owner).map_err(|e| anyhow::anyhow!("--owner: {e}"))?;
    let prefixes: Vec<ipnetwork::IpNetwork> = spec
        .pod_network
        .ranges()
        .map(|r| r.cluster_cidr.unwrap_or(r.cidr))
        .collect();
    out!("{}", headcni::headscale::policy::stanza(&prefixes, &owner));
    Ok(Exit(0))
}

fn validate(cli: &Cli, offline: bool) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    if offline {
        outln!(
            "{}: valid (offline: state_dir and key files not checked)",
            cli.spec.display()
        );
        return Ok(Exit(0));
    }
    let state = state_dir_report(&spec)?;
    if let Some(key) = spec.daemon.auth_key_file.as_deref() {
        if spec.mode == headcni::spec::Mode::Daemon {
            // The daemon refuses such a key at start; say so now.
            headcni::daemon::supervisor::check_key_file(key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at(&cli.spec, "daemon.auth_key_file")))?;
        }
    }
    if spec.mode == headcni::spec::Mode::Daemon {
        // The daemon would start, then fail to start tailscaled forever.
        for (field, path) in [
            ("daemon.tailscaled", &spec.daemon.tailscaled),
            ("daemon.tailscale", &spec.daemon.tailscale),
        ] {
            if !executable(path) {
                anyhow::bail!(
                    "{}: {} is not an executable file (install Tailscale, or name where it is)",
                    at(&cli.spec, field),
                    path.display()
                );
            }
        }
    }
    if let Some(h) = &spec.headscale {
        headcni::headscale::check_key_file(&h.api_key_file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at(&cli.spec, "headscale.api_key_file")))?;
    }
    outln!("{}: valid", cli.spec.display());
    outln!("  mode: {}", format!("{:?}", spec.mode).to_lowercase());
    outln!("  state_dir: {} ({state})", spec.state_dir.display());
    for range in spec.pod_network.ranges() {
        out!("  pod network: {} gateway {}", range.cidr, range.gateway);
        if let Some(cluster) = range.cluster_cidr {
            out!(" cluster {cluster}");
        }
        outln!(" mtu {}", spec.pod_network.mtu);
    }
    let tailnet: Vec<String> = spec
        .pod_network
        .ranges()
        .map(|r| spec.tailnet.cidr_for(r).to_string())
        .collect();
    outln!(
        "  tailnet: {} dev {}",
        tailnet.join(", "),
        spec.tailnet.interface
    );
    for r in &spec.routes {
        out!("  route: {}", r.destination);
        if let Some(via) = r.via {
            out!(" via {via}");
        }
        if let Some(dev) = &r.device {
            out!(" dev {dev}");
        }
        outln!();
    }
    Ok(Exit(0))
}
