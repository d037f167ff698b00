//! `headcni headscale-policy`: the `autoApprovers` stanza that lets
//! Headscale approve every node's pod CIDR on its own (a node advertising
//! 10.244.1.0/24 is approved under 10.244.0.0/16). Pure.

use ipnetwork::IpNetwork;

/// The stanza for `prefixes` (the cluster's pod CIDRs) approved for
/// `owner` (`tag:NAME`, `group:NAME` or `USER@`), as HuJSON to merge into
/// Headscale's policy; with a tag, its `tagOwners` entry too.
pub fn stanza(prefixes: &[IpNetwork], owner: &str) -> String {
    let routes: Vec<String> = prefixes
        .iter()
        .map(|p| format!("      \"{p}\": [\"{owner}\"]"))
        .collect();
    let mut out = String::from(
        "// headcni: Headscale approves each node's own pod CIDR (a route inside these)\n// with no operator step. Merge into Headscale's policy file.\n{\n",
    );
    if owner.starts_with("tag:") {
        out.push_str(&format!(
            "  // The nodes' pre-auth keys carry {owner}; who may hand it out:\n  \"tagOwners\": {{\"{owner}\": []}},\n"
        ));
    }
    out.push_str("  \"autoApprovers\": {\n    \"routes\": {\n");
    out.push_str(&routes.join(",\n"));
    out.push_str("\n    }\n  }\n}\n");
    out
}

/// An owner as `autoApprovers` names it, or why not.
pub fn owner(owner: &str) -> Result<String, String> {
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    };
    let ok = match owner.split_once(':') {
        Some(("tag" | "group", name)) => valid_name(name) && !name.contains('@'),
        Some(_) => false,
        // A user: `name@`, or by its email.
        None => owner.contains('@') && !owner.starts_with('@') && valid_name(owner),
    };
    if ok {
        Ok(owner.to_string())
    } else {
        Err(format!(
            "{owner:?} is not an approver: use tag:NAME, group:NAME or USER@ (a user, with its @, or its email)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_prefix_for_the_owner() {
        let s = stanza(
            &[
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            "lab@",
        );
        assert!(s.contains("\"10.244.0.0/16\": [\"lab@\"]"), "{s}");
        assert!(s.contains("\"fd00:10:244::/56\": [\"lab@\"]"), "{s}");
        assert!(!s.contains("tagOwners"), "{s}");
        let t = stanza(&["10.244.0.0/16".parse().unwrap()], "tag:headcni-node");
        assert!(
            t.contains("\"tagOwners\": {\"tag:headcni-node\": []}"),
            "{t}"
        );
    }

    #[test]
    fn owners_are_checked() {
        for good in ["tag:headcni-node", "group:k8s", "lab@", "me@example.com"] {
            assert!(owner(good).is_ok(), "{good}");
        }
        for bad in ["lab", "tag:", "user:x", "tag:a b", "\"x\""] {
            assert!(owner(bad).is_err(), "{bad}");
        }
    }
}
