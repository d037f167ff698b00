//! `headcni pod add|del|list`: pod intents by hand.

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
        #[arg(long)]
        id: String,
        /// The pod's network namespace (/run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Forget a pod attachment and free its address.
    Del {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
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
            anyhow::ensure!(
                netns.is_absolute(),
                "--netns {} must be an absolute path",
                netns.display()
            );
            let added = store
                .add(&key, netns, spec.pod_network.cidr, spec.pod_network.gateway)
                .with_context(|| format!("adding pod {key}"))?;
            let verb = if added.created { "added" } else { "exists" };
            println!(
                "{verb} {} {} {}",
                key, added.intent.ip, added.intent.host_link
            );
        }
        PodCommand::Del { id, ifname } => {
            let key = key(id, ifname)?;
            match store
                .remove(&key)
                .with_context(|| format!("removing pod {key}"))?
            {
                Some(intent) => println!("removed {} {} {}", key, intent.ip, intent.host_link),
                None => println!("absent {key}"),
            }
        }
        PodCommand::List { format } => {
            let pods = store.list()?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&pods)?),
                Format::Text => {
                    println!(
                        "{:<24} {:<8} {:<15} {:<14} NETNS",
                        "CONTAINER", "IFNAME", "IP", "HOST-LINK"
                    );
                    for p in pods {
                        let short: String = p.container_id.chars().take(24).collect();
                        println!(
                            "{:<24} {:<8} {:<15} {:<14} {}",
                            short,
                            p.ifname,
                            p.ip,
                            p.host_link,
                            p.netns.display()
                        );
                    }
                }
            }
        }
    }
    Ok(Exit(0))
}
