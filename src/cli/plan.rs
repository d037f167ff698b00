//! `headcni plan` and `headcni apply`.

use headcni::{out, outln};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use headcni::apply;
use headcni::diff::diff;
use headcni::drift;
use headcni::engine::{self, Applied, PodScope};
use headcni::observe::Observed;
use headcni::report;
use headcni::snapshot::{self, Fingerprints, LastApplied, ObservedDoc, SavedPlan};
use headcni::spec::{compile, Desired, Intents, PodIntent, Spec};
use headcni::store::StoreError;

use super::{Cli, Exit};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// For people (coloured on a terminal unless NO_COLOR is set).
    #[default]
    Text,
    /// Versioned JSON (docs/plan.schema.json).
    Json,
    /// A unified diff of observed versus desired state.
    Diff,
    /// JUnit XML, one test case per object that differs.
    Junit,
}

impl From<ReportFormat> for report::Format {
    fn from(f: ReportFormat) -> Self {
        match f {
            ReportFormat::Text => report::Format::Text,
            ReportFormat::Json => report::Format::Json,
            ReportFormat::Diff => report::Format::Diff,
            ReportFormat::Junit => report::Format::Junit,
        }
    }
}

#[derive(Args)]
pub struct PlanArgs {
    #[arg(long, value_enum, default_value_t)]
    format: ReportFormat,
    /// Exit 0 when the node matches the spec, 2 when there are changes,
    /// conflicts or items waiting, 1 on error.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Look at the node namespace only (the host side of every pod): fast at scale.
    #[arg(long)]
    host_only: bool,
    /// Plan against a snapshot from `headcni observe --out` instead of the
    /// kernel: no root, no netlink, no store (CI).
    #[arg(long, value_name = "FILE")]
    observed: Option<PathBuf>,
    /// Pod intents to plan for (JSON as `headcni pod list --format json`
    /// prints); default: the snapshot's, else the store's.
    #[arg(long, value_name = "FILE")]
    pods: Option<PathBuf>,
    /// Save the plan with fingerprints of what it was made from, for `headcni apply PLAN`.
    #[arg(long, value_name = "PLAN")]
    out: Option<PathBuf>,
    /// Read-only drift report: exit 0 clean, 2 pending changes (spec or pods
    /// changed since the last apply), 3 drift (the kernel moved away from it).
    #[arg(long)]
    drift: bool,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// A plan saved by `headcni plan --out`: applied exactly, or refused if
    /// the node, the spec or the pods changed since it was made.
    plan: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: ReportFormat,
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

fn read_pods(file: &Path) -> anyhow::Result<Vec<PodIntent>> {
    let text = std::fs::read(file)
        .with_context(|| format!("reading pod intents from {}", file.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a pod list (headcni pod list --format json)",
            file.display()
        )
    })
}

/// Everything a plan or drift report is made from.
struct Inputs {
    spec: Spec,
    pods: Vec<PodIntent>,
    desired: Desired,
    observed: Observed,
    plan: headcni::diff::Plan,
    last: Option<LastApplied>,
}

fn gather(cli: &Cli, args: &PlanArgs) -> anyhow::Result<Inputs> {
    let spec = cli.load_spec()?;
    if let Some(file) = &args.observed {
        let doc: ObservedDoc = snapshot::load(file, ObservedDoc::KIND)?;
        let pods = match &args.pods {
            Some(f) => read_pods(f)?,
            None => doc.pods,
        };
        let desired = compile(&spec, &pods);
        let plan = diff(&desired, &doc.observed);
        return Ok(Inputs {
            spec,
            pods,
            desired,
            observed: doc.observed,
            plan,
            last: doc.last_applied,
        });
    }
    let store = Cli::store(&spec);
    let given = args.pods.as_deref().map(read_pods).transpose()?;
    let source = || -> Result<Intents, StoreError> {
        match &given {
            Some(pods) => Ok(pods.clone().into()),
            None => store.read(),
        }
    };
    let planned = engine::plan(&spec, &source, &scope(args.host_only))?;
    tracing::debug!(took = ?planned.took, "planned");
    let last = if args.drift {
        LastApplied::load_from(&spec.state_dir)?
    } else {
        None
    };
    Ok(Inputs {
        spec,
        pods: planned.pods,
        desired: planned.desired,
        observed: planned.observed,
        plan: planned.plan,
        last,
    })
}

pub fn run_plan(cli: &Cli, args: &PlanArgs) -> anyhow::Result<Exit> {
    let inputs = gather(cli, args)?;
    if inputs.spec.mode == headcni::spec::Mode::Host && args.observed.is_none() {
        // What the host's tailscaled lacks is not headcni's to change: said
        // beside the plan, with the commands that fix it.
        for finding in headcni::hosttailnet::check(
            &inputs.spec.daemon.tailscale,
            &inputs.spec.pod_network.cidrs(),
            inputs.spec.pod_network.has_cluster(),
        ) {
            // Through the log, so it keeps the chosen log format.
            tracing::warn!("host tailnet: {finding}");
        }
    }
    if inputs.spec.mode == headcni::spec::Mode::Daemon
        && args.observed.is_none()
        && inputs.spec.daemon.login_server.is_some()
    {
        for finding in headcni::daemon::approver::findings(&inputs.spec) {
            tracing::warn!("tailnet: {finding}");
        }
    }
    let color = want_color();
    if args.drift {
        let last = inputs.last.as_ref().map(|l| (&l.desired, l.applied_at));
        let drift = drift::report(last, &inputs.desired, &inputs.observed);
        let last_desired = inputs.last.as_ref().map(|l| &l.desired);
        out!(
            "{}",
            report::drift(
                &drift,
                last_desired,
                &inputs.desired,
                args.format.into(),
                color
            )
        );
        return Ok(Exit(drift.exit_code()));
    }
    if let Some(out) = &args.out {
        let fingerprints = Fingerprints::of(&inputs.observed, &inputs.spec, &inputs.pods);
        let saved = SavedPlan::new(
            scope(args.host_only).name(),
            fingerprints,
            inputs.plan.clone(),
            inputs.observed.clone(),
        );
        snapshot::save(out, &saved)?;
        eprintln!(
            "headcni: plan saved to {}; apply it with `headcni apply {}`",
            out.display(),
            out.display()
        );
    }
    out!(
        "{}",
        report::plan(&inputs.plan, &inputs.desired, args.format.into(), color)
    );
    // Waiting (a missing interface, a pod's namespace gone) is not converged.
    let pending = !inputs.plan.is_settled();
    Ok(Exit(if args.detailed_exitcode && pending {
        2
    } else {
        0
    }))
}

pub fn run_apply(cli: &Cli, args: &ApplyArgs) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    let store = Cli::store(&spec);
    let pods = || store.read();
    if let Err(e) = engine::register_protocol_name() {
        tracing::warn!("cannot register route protocol name in /etc/iproute2/rt_protos.d: {e}");
    }
    let applied = match &args.plan {
        None => engine::apply(&spec, &pods, &scope(args.host_only))?,
        Some(file) => apply_saved(&spec, &pods, file)?,
    };
    let color = want_color();
    match args.format {
        ReportFormat::Text => {
            out!("{}", report::text::plan(&applied.plan, color));
            if !applied.plan.is_empty() {
                outln!(
                    "Applied {} in {:.1} ms.",
                    headcni::report::plural(applied.report.applied, "step"),
                    applied.apply_took.as_secs_f64() * 1000.0
                );
            }
        }
        other => out!(
            "{}",
            report::plan(&applied.plan, &applied.desired, other.into(), false)
        ),
    }
    for failure in &applied.report.failed {
        eprintln!("headcni: step failed: {failure}");
    }
    if applied.report.skipped > 0 {
        eprintln!(
            "headcni: {} skipped after a failure in the same pod",
            headcni::report::plural(applied.report.skipped, "step")
        );
    }
    if !applied.remaining.conflicts.is_empty() {
        eprintln!(
            "headcni: {} with objects headcni does not own; the pods they block are not wired",
            headcni::report::plural(applied.remaining.conflicts.len(), "conflict")
        );
    }
    // Waiting (an interface away, a pod's namespace gone) is not converged
    // either, as `plan --detailed-exitcode` says.
    let settled = applied.converged() && applied.remaining.is_settled();
    if !settled {
        eprintln!("headcni: the node did not converge; still to do:");
        eprint!("{}", report::text::plan(&applied.remaining, false));
    }
    engine::settle(&spec, &spec.pod_store(), &applied, applied.converged());
    Ok(Exit(if settled { 0 } else { 1 }))
}

/// Applies a saved plan exactly, after checking it is not stale.
fn apply_saved(spec: &Spec, pods: engine::PodSource, file: &Path) -> anyhow::Result<Applied> {
    let saved: SavedPlan = snapshot::load(file, SavedPlan::KIND)?;
    let scope = if saved.scope == "host-only" {
        PodScope::HostOnly
    } else {
        PodScope::All
    };
    let fresh = engine::plan(spec, pods, &scope)?;
    let now = Fingerprints::of(&fresh.observed, spec, &fresh.pods);
    let changed = saved.fingerprints.changes_since(&now);
    if !changed.is_empty() {
        // Say what moved in the node, not only that something did.
        let moved = match &saved.observed {
            Some(then) if saved.fingerprints.observed != now.observed => {
                let lines = report::unified::moved(then, &fresh.observed, 20);
                format!(
                    "\nWhat moved in the node since the plan was made:\n  {}",
                    lines.join("\n  ")
                )
            }
            _ => String::new(),
        };
        anyhow::bail!(
            "stale plan {}: {} changed since it was made; nothing was applied. Make a new plan with `headcni plan --out`.{moved}",
            file.display(),
            changed.join(" and ")
        );
    }
    let started = std::time::Instant::now();
    let report = apply::apply(&saved.plan);
    let apply_took = started.elapsed();
    let again = engine::plan(spec, pods, &scope)?;
    Ok(Applied {
        plan: saved.plan,
        desired: fresh.desired,
        pods: fresh.pods,
        report,
        remaining: again.plan,
        observed_after: again.observed,
        apply_took,
    })
}

/// Colour for people at a terminal who have not asked for none.
fn want_color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
