//! The `headcni` command line. Each subcommand lives in its own file; errors
//! become messages and exit codes here and nowhere else.

mod observe;
mod plan;
mod pod;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use headcni::spec::{PodStore, Spec, DEFAULT_SPEC_PATH};

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
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the spec and print it as headcni understands it.
    Validate,
    /// Print the node's (and pods') network state as headcni sees it.
    Observe(observe::ObserveArgs),
    /// Show what apply would change, without changing anything.
    Plan(plan::PlanArgs),
    /// Plan, apply, and verify that the node converged.
    Apply(plan::ApplyArgs),
    /// Write and read pod intents by hand (the seam the CNI plugin uses).
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Reconcile continuously (and, in daemon mode, run the node's own tailnet interface).
    Daemon,
    /// What the running daemon reports (from its socket in state_dir).
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Failures carry their exit code: 1 for errors, 2 for "changes present".
pub struct Exit(pub u8);

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // A service logs what it does; a command only what went wrong.
    let base = if matches!(cli.command, Command::Daemon) {
        1
    } else {
        0
    };
    init_logging(cli.verbose + base);
    let result = match &cli.command {
        Command::Validate => validate(&cli),
        Command::Observe(args) => observe::run(&cli, args),
        Command::Plan(args) => plan::run_plan(&cli, args),
        Command::Apply(args) => plan::run_apply(&cli, args),
        Command::Pod(cmd) => pod::run(&cli, cmd),
        Command::Daemon => headcni::daemon::run(&cli.spec).map(|()| Exit(0)),
        Command::Status { format } => status(&cli, *format),
    };
    match result {
        Ok(Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("headcni: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "headcni=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // rtnetlink and netlink-proto log through `log`; bridge them into tracing.
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

impl Cli {
    fn load_spec(&self) -> anyhow::Result<Spec> {
        Ok(Spec::load(&self.spec)?)
    }

    fn store(spec: &Spec) -> PodStore {
        PodStore::new(&spec.state_dir)
    }
}

fn status(cli: &Cli, format: Format) -> anyhow::Result<Exit> {
    let state_dir = match cli.load_spec() {
        Ok(spec) => spec.state_dir,
        Err(_) => Spec::state_dir_of(&cli.spec),
    };
    let status = headcni::daemon::status::query(&state_dir)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Format::Text => headcni::daemon::print_status(&status),
    }
    Ok(Exit(0))
}

fn validate(cli: &Cli) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    println!("{}: valid", cli.spec.display());
    println!("  mode: {:?}", spec.mode);
    println!("  state_dir: {}", spec.state_dir.display());
    println!(
        "  pod network: {} gateway {} mtu {}",
        spec.pod_network.cidr, spec.pod_network.gateway, spec.pod_network.mtu
    );
    println!(
        "  tailnet: {} dev {}",
        spec.tailnet.cidr, spec.tailnet.interface
    );
    for r in &spec.routes {
        print!("  route: {}", r.destination);
        if let Some(via) = r.via {
            print!(" via {via}");
        }
        if let Some(dev) = &r.device {
            print!(" dev {dev}");
        }
        println!();
    }
    Ok(Exit(0))
}
