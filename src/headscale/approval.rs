//! What this node's record at Headscale lacks, and the request that
//! repairs it. Pure.

use ipnetwork::IpNetwork;

use super::Node;

/// This node's pod CIDRs against its record at Headscale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Own CIDRs Headscale approved.
    pub approved: Vec<IpNetwork>,
    /// Own CIDRs it has not.
    pub missing: Vec<IpNetwork>,
    /// The body of `approve_routes` that repairs it (the node's approved set
    /// is replaced by it, so it is the union of what is approved and what is
    /// missing, nothing else); `None` when nothing is missing.
    pub request: Option<Vec<String>>,
}

/// Compares prefixes as networks, not as strings (Headscale may print
/// `fd00:10:244:1::/64` in another form than the spec).
pub fn assess(own: &[IpNetwork], node: &Node) -> Approval {
    let parsed: Vec<IpNetwork> = node
        .approved_routes
        .iter()
        .filter_map(|r| r.parse::<IpNetwork>().ok())
        .map(canonical)
        .collect();
    let (approved, missing): (Vec<IpNetwork>, Vec<IpNetwork>) = own
        .iter()
        .map(|c| canonical(*c))
        .partition(|c| parsed.contains(c));
    let request = (!missing.is_empty()).then(|| {
        // Keep every approved entry as Headscale wrote it (even one we cannot
        // parse): the request replaces the set.
        let mut routes = node.approved_routes.clone();
        routes.extend(missing.iter().map(|c| c.to_string()));
        routes.sort();
        routes.dedup();
        routes
    });
    Approval {
        approved,
        missing,
        request,
    }
}

/// What fixes an approval that is missing for `node` (no API key): the
/// three ways, each with its command.
pub fn advice(missing: &[String], node: &str) -> Vec<String> {
    let routes = missing.join(",");
    vec![
        format!("the control server has not approved {} for {node}: pods on this node are unreachable from the tailnet until it does", missing.join(" and ")),
        "either give the daemon a Headscale API key ([headscale] api_key_file in the spec; docs/daemon.md), and it approves its own pod CIDRs".into(),
        "or load Headscale an autoApprovers policy: `headcni headscale-policy` prints it for the cluster's pod CIDRs".into(),
        format!("or approve it by hand: `headscale nodes list` for the node's ID, then `headscale nodes approve-routes --identifier ID --routes {routes}`"),
    ]
}

fn canonical(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(approved: &[&str]) -> Node {
        Node {
            id: 7,
            approved_routes: approved.iter().map(|s| s.to_string()).collect(),
            ..Node::default()
        }
    }

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn all_approved_asks_nothing() {
        let a = assess(
            &nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            &node(&["fd00:10:244:1:0::/64", "10.244.1.0/24"]),
        );
        assert_eq!(a.missing, vec![]);
        assert_eq!(a.request, None);
        assert_eq!(a.approved.len(), 2);
    }

    #[test]
    fn the_request_keeps_what_is_approved_and_adds_only_our_own() {
        let a = assess(
            &nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            &node(&["192.0.2.0/24", "fd00:10:244:1::/64"]),
        );
        assert_eq!(a.missing, nets(&["10.244.1.0/24"]));
        assert_eq!(
            a.request,
            Some(vec![
                "10.244.1.0/24".to_string(),
                "192.0.2.0/24".into(),
                "fd00:10:244:1::/64".into()
            ])
        );
    }

    proptest::proptest! {
        /// Whatever is approved already, the request holds all of it, all of
        /// our own CIDRs, and nothing else.
        #[test]
        fn the_request_is_the_union(approved in proptest::collection::vec(0u8..8, 0..6), own in proptest::collection::vec(0u8..8, 1..3)) {
            let approved: Vec<String> = approved.iter().map(|i| format!("10.244.{i}.0/24")).collect();
            let own: Vec<IpNetwork> = own.iter().map(|i| format!("10.244.{i}.0/24").parse().unwrap()).collect();
            let n = Node { approved_routes: approved.clone(), ..Node::default() };
            let a = assess(&own, &n);
            let mut want: Vec<String> = approved.iter().cloned().chain(own.iter().map(|c| c.to_string())).collect();
            want.sort();
            want.dedup();
            match a.request {
                Some(r) => proptest::prop_assert_eq!(r, want),
                None => proptest::prop_assert!(own.iter().all(|c| approved.contains(&c.to_string()))),
            }
        }
    }
}
