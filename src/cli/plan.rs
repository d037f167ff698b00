//! `headcni plan` and `headcni apply`.

use clap::Args;

use headcni::diff::render;
use headcni::engine::{self, PodScope};

use super::{Cli, Exit, Format};

#[derive(Args)]
pub struct PlanArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Look at the node namespace only (the host side of every pod): fast at scale.
    #[arg(long)]
    host_only: bool,
}

#[derive(Args)]
pub struct ApplyArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Reconcile the node namespace only (the host side of every pod).
    #[arg(long)]
    host_only: bool,
}

fn scope(host_only: bool) -> PodScope {
    if host_only {
        PodScope::HostOnly
    } else {
        PodScope::All
    }
}

pub fn run_plan(cli: &Cli, args: &PlanArgs) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    let store = Cli::store(&spec);
    let pods = || store.list();
    let planned = (engine::plan(&spec, &pods, &scope(args.host_only)))?;
    tracing::debug!(took = ?planned.took, "planned");
    match args.format {
        Format::Text => print!("{}", render::text(&planned.plan)),
        Format::Json => print!("{}", render::json(&planned.plan)),
    }
    Ok(Exit(
        if args.detailed_exitcode && !planned.plan.is_empty() {
            2
        } else {
            0
        },
    ))
}

pub fn run_apply(cli: &Cli, args: &ApplyArgs) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    let store = Cli::store(&spec);
    let pods = || store.list();
    if let Err(e) = engine::register_protocol_name() {
        tracing::warn!("cannot register route protocol name in /etc/iproute2/rt_protos.d: {e}");
    }
    let applied = (engine::apply(&spec, &pods, &scope(args.host_only)))?;
    match args.format {
        Format::Json => print!("{}", render::json(&applied.plan)),
        Format::Text => {
            print!("{}", render::text(&applied.plan));
            if !applied.plan.is_empty() {
                println!(
                    "Applied {} steps in {:.1} ms.",
                    applied.report.applied,
                    applied.apply_took.as_secs_f64() * 1000.0
                );
            }
        }
    }
    for failure in &applied.report.failed {
        eprintln!("headcni: step failed: {}: {}", failure.step, failure.error);
    }
    if applied.report.skipped > 0 {
        eprintln!(
            "headcni: {} steps skipped after a failure in the same pod",
            applied.report.skipped
        );
    }
    if !applied.remaining.conflicts.is_empty() {
        eprintln!(
            "headcni: {} conflicts with objects headcni does not own; the pods they block are not wired",
            applied.remaining.conflicts.len()
        );
    }
    if !applied.remaining.is_empty() {
        eprintln!("headcni: the node did not converge; still to do:");
        eprint!("{}", render::text(&applied.remaining));
    }
    Ok(Exit(if applied.converged() { 0 } else { 1 }))
}
