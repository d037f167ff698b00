//! `headcni pod add|del|list`: pod intents by hand.

use headcni::outln;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use headcni::model::PodKey;
use headcni::spec::{validate_container_id, validate_ifname};

use super::{Cli, Exit, Format};

#[derive(Subcommand)]
pub enum PodCommand {
    /// Record a pod attachment and allocate its address (idempotent).
    Add {
        /// The container id (as the runtime's CNI_CONTAINERID).
        #[arg(long)]
        id: String,
        /// The pod's network namespace (/run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
        /// The interface name inside the pod (CNI_IFNAME).
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Forget a pod attachment and free its address.
    Del {
        /// The container id, as given to `pod add`.
        #[arg(long)]
        id: String,
        /// The interface name inside the pod.
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Create an empty pod store (recording the pod CIDR) where the spec
    /// says; without one, apply and the daemon remove no pod links.
    Init,
    /// List pod intents.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn key(id: &str, ifname: &str) -> anyhow::Result<PodKey> {
    validate_container_id(id).map_err(|reason| anyhow::anyhow!("--id: {reason}"))?;
    validate_ifname(ifname).map_err(|reason| anyhow::anyhow!("--ifname: {reason}"))?;
    Ok(PodKey {
        container_id: id.to_string(),
        ifname: ifname.to_string(),
    })
}

pub fn run(cli: &Cli, cmd: &PodCommand) -> anyhow::Result<Exit> {
    let spec = cli.load_spec()?;
    let store = Cli::store(&spec);
    match cmd {
        PodCommand::Add { id, netns, ifname } => {
            let key = key(id, ifname)?;
            // A namespace that is not there would only ever wait.
            headcni::cni::validate_netns(netns)
                .map_err(|reason| anyhow::anyhow!("--netns {}: {reason}", netns.display()))?;
            let added = store
                .add(&key, netns)
                .with_context(|| format!("adding pod {key}"))?;
            let verb = if added.created { "added" } else { "exists" };
            outln!(
                "{verb} {} {} {}",
                key,
                added.intent.addresses_text(),
                added.intent.host_link
            );
        }
        PodCommand::Del { id, ifname } => {
            let key = key(id, ifname)?;
            match store
                .remove(&key)
                .with_context(|| format!("removing pod {key}"))?
            {
                Some(intent) => outln!(
                    "removed {} {} {}",
                    key,
                    intent.addresses_text(),
                    intent.host_link
                ),
                None => outln!("absent {key}"),
            }
        }
        PodCommand::Init => {
            let created = store.init().context("creating the pod store")?;
            let verb = if created { "created" } else { "exists" };
            outln!("{verb} {}", store.dir().display());
        }
        PodCommand::List { format } => {
            let pods = store.list()?;
            match format {
                Format::Json => outln!("{}", serde_json::to_string_pretty(&pods)?),
                Format::Text => {
                    // Columns as wide as their widest cell (two addresses
                    // on a dual-stack pod; ids as long as they are).
                    let mut rows = vec![[
                        "CONTAINER".to_string(),
                        "IFNAME".into(),
                        "IP".into(),
                        "HOST-LINK".into(),
                        "NETNS".into(),
                    ]];
                    for p in pods {
                        rows.push([
                            p.key.container_id.clone(),
                            p.key.ifname.clone(),
                            p.addresses_text(),
                            p.host_link.clone(),
                            p.netns.display().to_string(),
                        ]);
                    }
                    let widths: Vec<usize> = (0..5)
                        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                        .collect();
                    for row in &rows {
                        let cells: Vec<String> = row
                            .iter()
                            .zip(&widths)
                            .map(|(cell, w)| format!("{cell:<w$}"))
                            .collect();
                        outln!("{}", cells.join("  ").trim_end());
                    }
                }
            }
        }
    }
    Ok(Exit(0))
}
