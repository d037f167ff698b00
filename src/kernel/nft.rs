//! headcni's nftables table `inet headcni`: built with the `nftables`
//! crate's typed schema, read back with `nft -j`, replaced atomically (one nft
//! transaction that touches no other table).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nftables::batch::Batch;
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::{NftChain, NftRule, NftTable};

pub use crate::model::NFT_TABLE as TABLE;
use crate::spec::firewall::canonical;
pub use crate::spec::firewall::{desired, TAILNET_MSS};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused: {0}")]
    Refused(String),
    #[error("cannot read nft's listing of table inet {TABLE}")]
    Listing(#[source] serde_json::Error),
    #[error("rule {rule} is not nftables JSON")]
    Rule {
        rule: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot replace table inet {TABLE}")]
    Replace(#[source] nftables::helper::NftablesError),
}

/// The listings a caller keeps between passes: the last table listed, by
/// the ruleset version it was listed at (while the version stays, so does
/// the table, and a pass needs no `nft`), and how many listings were made.
/// The daemon holds one for its life; a one-shot pass starts empty.
#[derive(Default)]
pub struct Listings {
    last: Mutex<Option<(RulesetVersion, Option<NftTable>)>>,
    count: AtomicU64,
}

/// (namespace cookie, ruleset generation): see `nfnetlink::Nftables::ruleset_version`.
type RulesetVersion = (u64, u32);

impl Listings {
    /// How many times `nft` was run to list the table.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The table as it is now; None when it does not exist.
pub fn observe(listings: &Listings) -> Result<Option<NftTable>, NftError> {
    start_observe(listings).finish()
}

/// A read of the table under way: answered already, or an `nft` listing
/// running beside the caller, which goes on with its own work meanwhile.
pub struct Reading<'a>(ReadingState<'a>);

enum ReadingState<'a> {
    Answered(Result<Option<NftTable>, NftError>),
    Listing {
        nft: std::process::Child,
        version: Option<RulesetVersion>,
        listings: &'a Listings,
    },
}

/// Starts reading the table. Answers at once when the kernel says there is
/// none (most nodes without masquerade or clamping), or when the ruleset is
/// where it was at the last listing; else starts `nft`.
pub fn start_observe(listings: &Listings) -> Reading<'_> {
    // If the kernel cannot say, nft will.
    let mut kernel = crate::kernel::netlink::nfnetlink::Nftables::open().ok();
    if let Some(Ok(false)) = kernel.as_mut().map(|k| k.inet_table_exists(TABLE)) {
        return Reading(ReadingState::Answered(Ok(None)));
    }
    // Read before listing: a change in between leaves a stale version in
    // the cache, which only costs the next pass a listing.
    let version = kernel.and_then(|mut k| k.ruleset_version().ok());
    if let (Some(version), Ok(last)) = (version, listings.last.lock()) {
        if let Some((_, table)) = last.as_ref().filter(|(v, _)| *v == version) {
            return Reading(ReadingState::Answered(Ok(table.clone())));
        }
    }
    listings.count.fetch_add(1, Ordering::Relaxed);
    let listing = std::process::Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    Reading(match listing {
        Ok(nft) => ReadingState::Listing {
            nft,
            version,
            listings,
        },
        Err(e) => ReadingState::Answered(Err(NftError::Spawn(e))),
    })
}

impl Reading<'_> {
    /// A table already read earlier in the pass.
    pub fn known(table: Option<NftTable>) -> Reading<'static> {
        Reading(ReadingState::Answered(Ok(table)))
    }

    /// The table (waiting for `nft` if it is still listing).
    pub fn finish(self) -> Result<Option<NftTable>, NftError> {
        let (nft, version, listings) = match self.0 {
            ReadingState::Answered(answer) => return answer,
            ReadingState::Listing {
                nft,
                version,
                listings,
            } => (nft, version, listings),
        };
        let out = nft.wait_with_output().map_err(NftError::Spawn)?;
        let table = parse_listing(&out)?;
        if let (Some(version), Ok(mut last)) = (version, listings.last.lock()) {
            *last = Some((version, table.clone()));
        }
        Ok(table)
    }
}

/// `nft -j list table`'s document: a list of one-key objects, of which
/// chains and rules matter (the table and nft's metainfo do not). A rule's
/// statements stay JSON: they are compared, never interpreted, and a rule
/// someone added by hand may hold statements the nftables crate's schema
/// does not have; it must still be seen, to be replaced.
#[derive(serde::Deserialize)]
struct Listing {
    nftables: Vec<Listed>,
}

#[derive(serde::Deserialize)]
struct Listed {
    chain: Option<ListedChain>,
    rule: Option<ListedRule>,
}

#[derive(serde::Deserialize)]
struct ListedChain {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    hook: Option<String>,
    prio: Option<i32>,
}

#[derive(serde::Deserialize)]
struct ListedRule {
    chain: String,
    expr: serde_json::Value,
}

/// What `nft -j list table` printed.
fn parse_listing(out: &std::process::Output) -> Result<Option<NftTable>, NftError> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NftError::Refused(err.trim().to_string()));
    }
    let listing: Listing = serde_json::from_slice(&out.stdout).map_err(NftError::Listing)?;
    let mut table = NftTable {
        chains: Vec::new(),
        rules: Vec::new(),
    };
    for item in listing.nftables {
        if let Some(c) = item.chain {
            table.chains.push(NftChain {
                name: c.name,
                kind: c.kind.unwrap_or_default(),
                hook: c.hook.unwrap_or_default(),
                priority: c.prio.unwrap_or_default(),
            });
        }
        if let Some(r) = item.rule {
            let expr = canonical(&r.expr);
            table.rules.push(NftRule {
                chain: r.chain,
                // A rule read back is shown as nft's JSON: nothing here
                // renders arbitrary statements (desired rules carry the
                // text they were written from).
                text: expr.clone(),
                expr,
            });
        }
    }
    table.chains.sort();
    table.rules.sort_by(|a, b| a.chain.cmp(&b.chain));
    Ok(Some(table))
}

/// Replaces the table in one transaction ("add" first, so the "delete" never
/// fails): nothing else in the ruleset is touched, and no packet sees half of it.
pub fn replace(table: Option<&NftTable>) -> Result<(), NftError> {
    let mut batch = Batch::new();
    let t = Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    };
    batch.add(NfListObject::Table(t.clone()));
    batch.delete(NfListObject::Table(t.clone()));
    if let Some(table) = table {
        batch.add(NfListObject::Table(t));
        for c in &table.chains {
            batch.add(NfListObject::Chain(Chain {
                family: NfFamily::INet,
                table: Cow::Borrowed(TABLE),
                name: Cow::Owned(c.name.clone()),
                _type: Some(if c.kind == "nat" {
                    NfChainType::NAT
                } else {
                    NfChainType::Filter
                }),
                hook: Some(match c.hook.as_str() {
                    "postrouting" => NfHook::Postrouting,
                    "prerouting" => NfHook::Prerouting,
                    _ => NfHook::Forward,
                }),
                prio: Some(c.priority),
                policy: Some(NfChainPolicy::Accept),
                ..Default::default()
            }));
        }
        for r in &table.rules {
            let stmts: Vec<Statement<'static>> =
                serde_json::from_str(&r.expr).map_err(|source| NftError::Rule {
                    rule: r.text.clone(),
                    source,
                })?;
            batch.add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: Cow::Borrowed(TABLE),
                chain: Cow::Owned(r.chain.clone()),
                expr: Cow::Owned(stmts),
                ..Default::default()
            }));
        }
    }
    let ruleset: Nftables = batch.to_nftables();
    nftables::helper::apply_ruleset(&ruleset).map_err(NftError::Replace)?;
    for port in table.map(forwarded_udp_ports).unwrap_or_default() {
        forget_udp_flows(port);
    }
    Ok(())
}

/// The UDP ports the table forwards (`udp dport N ... dnat`).
fn forwarded_udp_ports(table: &NftTable) -> Vec<u64> {
    table
        .rules
        .iter()
        .filter(|r| r.chain == "prerouting" && r.expr.contains("\"dnat\""))
        .filter_map(|r| {
            let stmts: serde_json::Value = serde_json::from_str(&r.expr).ok()?;
            stmts.as_array()?.iter().find_map(|s| {
                let m = s.get("match")?;
                let field = m.get("left")?.get("payload")?;
                (field.get("protocol")?.as_str()? == "udp"
                    && field.get("field")?.as_str()? == "dport")
                    .then(|| m.get("right")?.as_u64())
                    .flatten()
            })
        })
        .collect()
}

/// Forgets conntrack's flows to a UDP port that is now forwarded: a peer
/// that sent there before the rule existed holds an entry for local
/// delivery, which its keepalives refresh for ever, and NAT applies only to
/// new flows (kube-proxy clears UDP flows for the same reason). Best
/// effort: without the `conntrack` tool, such a peer waits for the entry to
/// time out.
fn forget_udp_flows(port: u64) {
    let port = port.to_string();
    match std::process::Command::new("conntrack")
        .args(["-D", "-p", "udp", "--orig-port-dst", &port])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        // 1: nothing to delete.
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot clear conntrack's UDP flows to port {port}: {e} (is the conntrack package installed?)"),
    }
}
