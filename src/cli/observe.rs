//! `headcni observe`.

use headcni::outln;
use std::path::PathBuf;

use clap::Args;

use headcni::engine::{self, PodScope};
use headcni::model::NetnsState;
use headcni::snapshot::{self, LastApplied, ObservedDoc};

use super::{Cli, Exit, Format};

#[derive(Args)]
pub struct ObserveArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Write a versioned snapshot (observed state, pod intents, last apply)
    /// for `headcni plan --observed` to read elsewhere, e.g. in CI.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(cli: &Cli, args: &ObserveArgs) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    let store = Cli::store(&spec);
    // Observing removes nothing, so a missing store needs no guard here.
    let pods = || store.list().map(Into::into);
    let planned = engine::plan(&spec, &pods, &PodScope::All)?;
    if let Some(out) = &args.out {
        let last = LastApplied::load_from(&spec.state_dir)?;
        let doc = ObservedDoc::new(planned.observed, planned.pods, last);
        snapshot::save(out, &doc)?;
        eprintln!("headcni: snapshot written to {}", out.display());
        return Ok(Exit(0));
    }
    let observed = planned.observed;
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&observed)?),
        Format::Text => {
            outln!("node:");
            print_state(&observed.node);
            for pod in &observed.pods {
                outln!("{} ({}):", pod.key, pod.netns_path.display());
                match &pod.state {
                    Some(state) => print_state(state),
                    None => outln!("  netns cannot be opened"),
                }
            }
        }
    }
    Ok(Exit(0))
}

fn print_state(state: &NetnsState) {
    for link in &state.links {
        outln!("  link {link}");
    }
    for addr in &state.addresses {
        outln!("  address {} dev {}", addr.addr, addr.dev);
    }
    for route in &state.routes {
        outln!("  route {route}");
    }
    for s in &state.sysctls {
        outln!("  sysctl {} = {}", s.key.replace('/', "."), s.value);
    }
}
