//! headcni's nftables table as desired: built from the spec with the
//! `nftables` crate's typed schema, and the canonical form rules are
//! compared in. Pure; `nft.rs` reads and writes the kernel's.

use std::borrow::Cow;

use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, TcpOption,
};
use nftables::stmt::{Counter, Mangle, Match, NATFamily, Operator, Statement, NAT};

use ipnetwork::IpNetwork;

use super::{Masquerade, Spec};
use crate::model::{NftChain, NftRule, NftTable};

/// The tailnet's MTU is 1280: an IPv4 TCP segment fits in 1280 - 40 bytes
/// of headers.
pub const TAILNET_MSS: u32 = 1240;
/// An IPv6 header is 20 bytes longer: 1280 - 60.
pub const TAILNET_MSS6: u32 = 1220;

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

/// nft's name of `cidr`'s family in a payload match ("ip", "ip6").
fn family_word(cidr: &IpNetwork) -> &'static str {
    if cidr.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn saddr_in(cidr: IpNetwork) -> Statement<'static> {
    saddr_matches(Operator::EQ, cidr)
}

fn saddr_matches(op: Operator, cidr: IpNetwork) -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed(family_word(&cidr)),
                field: Cow::Borrowed("saddr"),
            },
        ))),
        op,
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(cidr.network().to_string()))),
            len: u32::from(cidr.prefix()),
        })),
    )
}

/// `meta nfproto ipv4|ipv6`: the inet table sees both families.
fn nfproto(ipv6: bool) -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Nfproto,
        })),
        Operator::EQ,
        Expression::String(Cow::Borrowed(if ipv6 { "ipv6" } else { "ipv4" })),
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
    let egress = tailnet_egress(spec);
    let mut rules: Vec<(String, Vec<Statement<'static>>, String)> = Vec::new();
    for pods in spec.pod_network.cidrs() {
        masquerade_pods(spec, pods, &egress, &mut rules);
    }
    node_plumbing(spec, &egress, &mut rules);
    if spec.pod_network.source_check {
        rules.extend(source_check());
    }
    if spec.pod_network.mss_clamp {
        for range in spec.pod_network.ranges() {
            rules.push(mss_clamp(&egress, range.cidr.is_ipv6()));
        }
    }
    if rules.is_empty() {
        return None;
    }
    Some(table(rules))
}

type Rules = Vec<(String, Vec<Statement<'static>>, String)>;

/// Pod traffic leaving with the node's address (see [`Masquerade`]).
fn masquerade_pods(spec: &Spec, pods: IpNetwork, egress: &str, rules: &mut Rules) {
    let ip = family_word(&pods);
    if spec.pod_network.masquerade != Masquerade::None {
        rules.push((
            "postrouting".into(),
            vec![
                saddr_in(pods),
                oifname(Operator::NEQ, egress),
                oifname(Operator::NEQ, "hc*"),
                counter(),
                Statement::Masquerade(None),
            ],
            format!(
                "{ip} saddr {pods} oifname != \"{egress}\" oifname != \"hc*\" counter masquerade"
            ),
        ));
    }
    if spec.pod_network.masquerade == Masquerade::All {
        rules.push((
            "postrouting".into(),
            vec![
                saddr_in(pods),
                oifname(Operator::EQ, egress),
                counter(),
                Statement::Masquerade(None),
            ],
            format!("{ip} saddr {pods} oifname \"{egress}\" counter masquerade"),
        ));
    }
}

/// Daemon mode: the tailnet namespace's own way out, and the way in to
/// tailscaled's port.
fn node_plumbing(spec: &Spec, egress: &str, rules: &mut Rules) {
    if spec.mode == crate::spec::Mode::Daemon {
        // tailscaled's own traffic from the tailnet namespace leaves by the
        // node's default route with the node's address.
        let transfer = spec.daemon.transfer_cidr;
        rules.push((
            "postrouting".into(),
            vec![
                saddr_in(IpNetwork::V4(transfer)),
                oifname(Operator::NEQ, egress),
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
}

/// The chain that checks pods' sources: a raw-priority prerouting hook, so a
/// spoofed packet is dropped before conntrack or NAT see it.
const SOURCE_CHAIN: &str = "pod_source";

/// A packet from a pod's veth (`hc*`, not the tailnet namespace's `hcts0`,
/// which carries peers' sources) must have a source whose route leads back
/// out of that same veth: only the pod's own /32 and /128 host routes do
/// (strict reverse-path filtering, `fib saddr . iif oif missing`). One rule
/// a family, whatever the number of pods: no per-pod state to keep in step,
/// and the kernel's FIB already holds the veth -> address map. IPv6
/// link-local sources pass: the kernel never forwards them off the link,
/// and neighbour discovery needs them.
fn source_check() -> Rules {
    let from_pod = || {
        [
            iifname(Operator::EQ, "hc*"),
            iifname(Operator::NEQ, crate::spec::TAILNET_HOST_LINK),
        ]
    };
    let no_route_back = matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Oif,
            flags: [FibFlag::Saddr, FibFlag::Iif].into_iter().collect(),
        })),
        Operator::EQ,
        Expression::Boolean(false),
    );
    let link_local6: IpNetwork = "fe80::/10".parse().expect("a valid literal");
    let host = crate::spec::TAILNET_HOST_LINK;
    vec![
        (
            SOURCE_CHAIN.into(),
            [
                vec![nfproto(false)],
                from_pod().to_vec(),
                vec![no_route_back.clone(), counter(), Statement::Drop(None)],
            ]
            .concat(),
            format!("meta nfproto ipv4 iifname \"hc*\" iifname != \"{host}\" fib saddr . iif oif missing counter drop"),
        ),
        (
            SOURCE_CHAIN.into(),
            [
                from_pod().to_vec(),
                vec![
                    saddr_matches(Operator::NEQ, link_local6),
                    no_route_back,
                    counter(),
                    Statement::Drop(None),
                ],
            ]
            .concat(),
            format!("iifname \"hc*\" iifname != \"{host}\" ip6 saddr != fe80::/10 fib saddr . iif oif missing counter drop"),
        ),
    ]
}

/// Tailnet-bound TCP SYNs of one family get an MSS that fits the tailnet's
/// 1280-byte MTU.
fn mss_clamp(egress: &str, ipv6: bool) -> (String, Vec<Statement<'static>>, String) {
    let (size, family) = if ipv6 {
        (TAILNET_MSS6, "ipv6")
    } else {
        (TAILNET_MSS, "ipv4")
    };
    (
        "forward".into(),
        vec![
            nfproto(ipv6),
            oifname(Operator::EQ, egress),
            matches(
                Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
                    protocol: Cow::Borrowed("tcp"),
                    field: Cow::Borrowed("flags"),
                }))),
                Operator::IN,
                Expression::String(Cow::Borrowed("syn")),
            ),
            matches(mss(), greater_than(), Expression::Number(size)),
            counter(),
            Statement::Mangle(Mangle { key: mss(), value: Expression::Number(size) }),
        ],
        format!("meta nfproto {family} oifname \"{egress}\" tcp flags syn tcp option maxseg size > {size} counter tcp option maxseg size set {size}"),
    )
}

/// The table of `rules`, with the chains they need.
fn table(rules: Rules) -> NftTable {
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
    if rules.iter().any(|(chain, _, _)| chain == SOURCE_CHAIN) {
        chains.push(NftChain {
            name: SOURCE_CHAIN.into(),
            kind: "filter".into(),
            hook: "prerouting".into(),
            priority: -300,
        });
    }
    if rules.iter().any(|(chain, _, _)| chain == "prerouting") {
        chains.push(NftChain {
            name: "prerouting".into(),
            kind: "nat".into(),
            hook: "prerouting".into(),
            priority: -100,
        });
    }
    // nft lists chains by name: compare in that order.
    chains.sort_by(|a, b| a.name.cmp(&b.name));
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
    NftTable { chains, rules }
}

/// Compact JSON with counters zeroed: the form both sides are compared in.
pub fn canonical(expr: &serde_json::Value) -> String {
    fn zero(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(c) = map.get_mut("counter") {
                    *c = serde_json::Value::Null;
                }
                // The nftables crate keeps fib flags in a HashSet: its
                // order varies from run to run; nft's does not matter.
                if let Some(serde_json::Value::Array(flags)) = map.get_mut("flags") {
                    flags.sort_by_key(|f| f.to_string());
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
        let text = "version = 1\nmode = \"host\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\nmasquerade = \"none\"\nmss_clamp = false\nsource_check = false\n";
        let spec = Spec::parse(text, std::path::Path::new("x")).unwrap();
        assert!(desired(&spec).is_none());
    }
}
