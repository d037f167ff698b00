//! headcni's nftables table `inet headcni`: built with the `nftables`
//! crate's typed schema, read back with `nft -j`, replaced atomically (one nft
//! transaction that touches no other table).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, TcpOption,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Mangle, Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::{NftChain, NftRule, NftTable};
use crate::spec::{Masquerade, Spec};

pub const TABLE: &str = "headcni";
/// The tailnet's MTU is 1280: a TCP segment fits in 1280 - 40 bytes of headers.
pub const TAILNET_MSS: u32 = 1240;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft: {0} (is the nftables package installed?)")]
    Run(String),
}

fn iifname(op: Operator, name: &str) -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Iifname,
        })),
        op,
        Expression::String(Cow::Owned(name.to_string())),
    )
}

fn meta_oifname() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta {
        key: MetaKey::Oifname,
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn saddr_in(cidr: ipnetwork::Ipv4Network) -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed("ip"),
                field: Cow::Borrowed("saddr"),
            },
        ))),
        Operator::EQ,
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(cidr.network().to_string()))),
            len: u32::from(cidr.prefix()),
        })),
    )
}

fn oifname(op: Operator, name: &str) -> Statement<'static> {
    matches(
        meta_oifname(),
        op,
        Expression::String(Cow::Owned(name.to_string())),
    )
}

/// The operator nft spells ">". nftables 0.6.3 swaps the names (its `GT`
/// serializes as "<"), so pick by serialization, robust to a fix upstream.
fn greater_than() -> Operator {
    [Operator::GT, Operator::LT]
        .into_iter()
        .find(|op| {
            serde_json::to_value(op)
                .ok()
                .and_then(|v| v.as_str().map(|s| s == ">"))
                .unwrap_or(false)
        })
        .unwrap_or(Operator::GT)
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

fn mss() -> Expression<'static> {
    Expression::Named(NamedExpression::TcpOption(TcpOption {
        name: Cow::Borrowed("maxseg"),
        field: Some(Cow::Borrowed("size")),
    }))
}

/// The interface pod traffic for the tailnet leaves the node by.
fn tailnet_egress(spec: &Spec) -> String {
    match spec.mode {
        crate::spec::Mode::Host => spec.tailnet.interface.clone(),
        crate::spec::Mode::Daemon => crate::spec::TAILNET_HOST_LINK.to_string(),
    }
}

/// The table the spec asks for; None when it asks for no masquerade and no clamp.
pub fn desired(spec: &Spec) -> Option<NftTable> {
    let pods = spec.pod_network.cidr;
    let egress = tailnet_egress(spec);
    let mut rules: Vec<(String, Vec<Statement<'static>>, String)> = Vec::new();
    if spec.pod_network.masquerade != Masquerade::None {
        rules.push((
            "postrouting".into(),
            vec![
                saddr_in(pods),
                oifname(Operator::NEQ, &egress),
                oifname(Operator::NEQ, "hc*"),
                counter(),
                Statement::Masquerade(None),
            ],
            format!(
                "ip saddr {pods} oifname != \"{egress}\" oifname != \"hc*\" counter masquerade"
            ),
        ));
    }
    if spec.pod_network.masquerade == Masquerade::All {
        rules.push((
            "postrouting".into(),
            vec![
                saddr_in(pods),
                oifname(Operator::EQ, &egress),
                counter(),
                Statement::Masquerade(None),
            ],
            format!("ip saddr {pods} oifname \"{egress}\" counter masquerade"),
        ));
    }
    if spec.mode == crate::spec::Mode::Daemon {
        // tailscaled's own traffic from the tailnet namespace leaves by the
        // node's default route with the node's address.
        let transfer = spec.daemon.transfer_cidr;
        rules.push((
            "postrouting".into(),
            vec![
                saddr_in(transfer),
                oifname(Operator::NEQ, &egress),
                counter(),
                Statement::Masquerade(None),
            ],
            format!("ip saddr {transfer} oifname != \"{egress}\" counter masquerade"),
        ));
    }
    if spec.mode == crate::spec::Mode::Daemon && spec.daemon.forward_port {
        // Peers reach tailscaled directly: its UDP port, arriving at the
        // node from anywhere but its pods and the tailnet namespace, goes
        // into the namespace.
        let port = spec.daemon.port;
        let ns_ip = std::net::Ipv4Addr::from(u32::from(spec.daemon.transfer_cidr.network()) + 2);
        rules.push((
            "prerouting".into(),
            vec![
                iifname(Operator::NEQ, "hc*"),
                matches(
                    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                        PayloadField {
                            protocol: Cow::Borrowed("udp"),
                            field: Cow::Borrowed("dport"),
                        },
                    ))),
                    Operator::EQ,
                    Expression::Number(u32::from(port)),
                ),
                counter(),
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::String(Cow::Owned(ns_ip.to_string()))),
                    family: Some(NATFamily::IP),
                    port: None,
                    flags: None,
                })),
            ],
            format!("iifname != \"hc*\" udp dport {port} counter dnat ip to {ns_ip}"),
        ));
    }
    if spec.pod_network.mss_clamp {
        rules.push((
            "forward".into(),
            vec![
                oifname(Operator::EQ, &egress),
                matches(
                    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
                        protocol: Cow::Borrowed("tcp"),
                        field: Cow::Borrowed("flags"),
                    }))),
                    Operator::IN,
                    Expression::String(Cow::Borrowed("syn")),
                ),
                matches(mss(), greater_than(), Expression::Number(TAILNET_MSS)),
                counter(),
                Statement::Mangle(Mangle { key: mss(), value: Expression::Number(TAILNET_MSS) }),
            ],
            format!("oifname \"{egress}\" tcp flags syn tcp option maxseg size > {TAILNET_MSS} counter tcp option maxseg size set {TAILNET_MSS}"),
        ));
    }
    if rules.is_empty() {
        return None;
    }
    let mut chains = vec![
        NftChain {
            name: "forward".into(),
            kind: "filter".into(),
            hook: "forward".into(),
            priority: -150,
        },
        NftChain {
            name: "postrouting".into(),
            kind: "nat".into(),
            hook: "postrouting".into(),
            priority: 100,
        },
    ];
    if rules.iter().any(|(chain, _, _)| chain == "prerouting") {
        chains.push(NftChain {
            name: "prerouting".into(),
            kind: "nat".into(),
            hook: "prerouting".into(),
            priority: -100,
        });
    }
    let mut rules: Vec<NftRule> = rules
        .into_iter()
        .map(|(chain, stmts, text)| NftRule {
            chain,
            expr: canonical(&serde_json::to_value(&stmts).unwrap_or_default()),
            text,
        })
        .collect();
    // Order matters within a chain only; nft lists chain by chain.
    rules.sort_by(|a, b| a.chain.cmp(&b.chain));
    Some(NftTable { chains, rules })
}

/// Compact JSON with counters zeroed: the form both sides are compared in.
fn canonical(expr: &serde_json::Value) -> String {
    fn zero(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(c) = map.get_mut("counter") {
                    *c = serde_json::Value::Null;
                }
                map.values_mut().for_each(zero);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(zero),
            _ => {}
        }
    }
    let mut v = expr.clone();
    zero(&mut v);
    v.to_string()
}

/// The last table listed, by the ruleset version it was listed at: while
/// the version stays, so does the table, and a daemon pass needs no `nft`.
static LAST_LISTED: Mutex<Option<(RulesetVersion, Option<NftTable>)>> = Mutex::new(None);
/// (namespace cookie, ruleset generation): see `nfnetlink::Nftables::ruleset_version`.
type RulesetVersion = (u64, u32);
static LISTINGS: AtomicU64 = AtomicU64::new(0);

/// Forgets the last listing: the next read lists again, as the first read
/// of a one-shot process does (benchmarks measure both).
pub fn forget_listing() {
    if let Ok(mut last) = LAST_LISTED.lock() {
        *last = None;
    }
}

/// How many times this process has run `nft` to list the table.
pub fn listings() -> u64 {
    LISTINGS.load(Ordering::Relaxed)
}

/// The table as it is now; None when it does not exist.
pub fn observe() -> Result<Option<NftTable>, NftError> {
    start_observe().finish()
}

/// A read of the table under way: answered already, or an `nft` listing
/// running beside the caller, which goes on with its own work meanwhile.
pub struct Reading(ReadingState);

enum ReadingState {
    Answered(Result<Option<NftTable>, NftError>),
    Listing {
        nft: std::process::Child,
        version: Option<RulesetVersion>,
    },
}

/// Starts reading the table. Answers at once when the kernel says there is
/// none (most nodes without masquerade or clamping), or when the ruleset is
/// where it was at the last listing; else starts `nft`.
pub fn start_observe() -> Reading {
    // If the kernel cannot say, nft will.
    let kernel = crate::netlink::nfnetlink::Nftables::open().ok();
    if let Some(Ok(false)) = kernel.as_ref().map(|k| k.inet_table_exists(TABLE)) {
        return Reading(ReadingState::Answered(Ok(None)));
    }
    // Read before listing: a change in between leaves a stale version in
    // the cache, which only costs the next pass a listing.
    let version = kernel.and_then(|k| k.ruleset_version().ok());
    if let (Some(version), Ok(last)) = (version, LAST_LISTED.lock()) {
        if let Some((_, table)) = last.as_ref().filter(|(v, _)| *v == version) {
            return Reading(ReadingState::Answered(Ok(table.clone())));
        }
    }
    LISTINGS.fetch_add(1, Ordering::Relaxed);
    let listing = std::process::Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    Reading(match listing {
        Ok(nft) => ReadingState::Listing { nft, version },
        Err(e) => ReadingState::Answered(Err(NftError::Run(e.to_string()))),
    })
}

impl Reading {
    /// A table already read earlier in the pass.
    pub fn known(table: Option<NftTable>) -> Reading {
        Reading(ReadingState::Answered(Ok(table)))
    }

    /// The table (waiting for `nft` if it is still listing).
    pub fn finish(self) -> Result<Option<NftTable>, NftError> {
        let (nft, version) = match self.0 {
            ReadingState::Answered(answer) => return answer,
            ReadingState::Listing { nft, version } => (nft, version),
        };
        let out = nft
            .wait_with_output()
            .map_err(|e| NftError::Run(e.to_string()))?;
        let table = parse_listing(&out)?;
        if let (Some(version), Ok(mut last)) = (version, LAST_LISTED.lock()) {
            *last = Some((version, table.clone()));
        }
        Ok(table)
    }
}

/// What `nft -j list table` printed.
fn parse_listing(out: &std::process::Output) -> Result<Option<NftTable>, NftError> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NftError::Run(err.trim().to_string()));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| NftError::Run(e.to_string()))?;
    let mut table = NftTable {
        chains: Vec::new(),
        rules: Vec::new(),
    };
    for item in doc["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            table.chains.push(NftChain {
                name: c["name"].as_str().unwrap_or_default().into(),
                kind: c["type"].as_str().unwrap_or_default().into(),
                hook: c["hook"].as_str().unwrap_or_default().into(),
                priority: c["prio"].as_i64().unwrap_or_default() as i32,
            });
        }
        if let Some(r) = item.get("rule") {
            let expr = canonical(&r["expr"]);
            table.rules.push(NftRule {
                chain: r["chain"].as_str().unwrap_or_default().into(),
                text: describe(&r["expr"]),
                expr,
            });
        }
    }
    table.chains.sort();
    table.rules.sort_by(|a, b| a.chain.cmp(&b.chain));
    Ok(Some(table))
}

/// A readable line for a rule headcni did not write (or no longer wants).
fn describe(expr: &serde_json::Value) -> String {
    canonical(expr)
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
            let stmts: Vec<Statement<'static>> = serde_json::from_str(&r.expr)
                .map_err(|e| NftError::Run(format!("rule {}: {e}", r.text)))?;
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
    nftables::helper::apply_ruleset(&ruleset).map_err(|e| NftError::Run(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clamp_compares_with_greater_than() {
        assert_eq!(
            serde_json::to_value(greater_than()).unwrap(),
            serde_json::json!(">")
        );
        let spec = Spec::parse(
            "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\n",
            std::path::Path::new("x"),
        )
        .unwrap();
        let table = desired(&spec).unwrap();
        let clamp = table.rules.iter().find(|r| r.chain == "forward").unwrap();
        assert!(clamp.expr.contains(r#""op":">""#), "{}", clamp.expr);
    }

    #[test]
    fn nothing_asked_means_no_table() {
        let text = "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\nmasquerade = \"none\"\nmss_clamp = false\n";
        let spec = Spec::parse(text, std::path::Path::new("x")).unwrap();
        assert!(desired(&spec).is_none());
    }
}
