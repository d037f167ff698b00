//! The node-local spec rendered from a cluster-wide template (a ConfigMap)
//! and this node's pod CIDR as Kubernetes assigned it: pure.

use std::path::Path;

use ipnetwork::IpNetwork;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{}: {reason}", template.display())]
    Template {
        template: std::path::PathBuf,
        reason: String,
    },
    #[error("node {node} has no pod CIDR headcni can use (its podCIDRs: {cidrs:?})")]
    NoPodCidr { node: String, cidrs: Vec<String> },
    #[error("the spec rendered from {} for node {node} is not valid: {reason}", template.display())]
    Invalid {
        template: std::path::PathBuf,
        node: String,
        reason: String,
    },
}

/// The first words of every rendered spec.
pub const RENDERED_MARK: &str = "# Rendered by headcni";

/// `template` with `pod_network.cidr` and `cidr6` set to the node's IPv4
/// and IPv6 pod CIDRs (a dual-stack cluster's Node has both); checked as a
/// spec would be at `spec_path`.
pub fn render_spec(
    template: &str,
    template_path: &Path,
    node: &str,
    pod_cidrs: &[String],
    spec_path: &Path,
) -> Result<String, RenderError> {
    let bad = |reason: String| RenderError::Template {
        template: template_path.to_path_buf(),
        reason,
    };
    let parsed: Vec<IpNetwork> = pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect();
    let ipv4 = parsed.iter().find(|c| c.is_ipv4());
    let ipv6 = parsed.iter().find(|c| c.is_ipv6());
    if ipv4.is_none() && ipv6.is_none() {
        return Err(RenderError::NoPodCidr {
            node: node.to_string(),
            cidrs: pod_cidrs.to_vec(),
        });
    }
    // Edited in place (toml_edit): the template's comments and layout,
    // which explain the spec to whoever reads it on the node, stay.
    let mut doc: toml_edit::DocumentMut = template.parse().map_err(|e| bad(format!("{e}")))?;
    if !doc.contains_key("pod_network") {
        doc["pod_network"] = toml_edit::table();
    }
    let pod_network = doc["pod_network"]
        .as_table_like_mut()
        .ok_or_else(|| bad("pod_network: expected a table".into()))?;
    for per_node in ["cidr", "cidr6", "gateway"] {
        if pod_network.contains_key(per_node) {
            return Err(bad(format!(
                "pod_network.{per_node}: each node's comes from its Node object; leave it out of the template"
            )));
        }
    }
    for (field, cidr) in [("cidr", ipv4), ("cidr6", ipv6)] {
        if let Some(cidr) = cidr {
            pod_network.insert(field, toml_edit::value(cidr.to_string()));
        }
    }
    let cidrs: Vec<String> = ipv4.iter().chain(&ipv6).map(|c| c.to_string()).collect();
    let body = doc.to_string();
    let text = format!(
        "{RENDERED_MARK} from {} for node {node} (spec.podCIDRs {}).\n# Edit the template, not this file: it is rewritten from it.\n{body}",
        template_path.display(),
        cidrs.join(", ")
    );
    crate::spec::Spec::parse(&text, spec_path).map_err(|e| RenderError::Invalid {
        template: template_path.to_path_buf(),
        node: node.to_string(),
        reason: e.to_string(),
    })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str =
        "version = 1\nmode = \"host\"\n\n[pod_network]\ncluster_cidr = \"10.244.0.0/16\"\n";

    #[test]
    fn the_node_s_ipv4_cidr_goes_in() {
        let cidrs = vec![
            "fd00:10:244:1::/64".to_string(),
            "10.244.1.0/24".to_string(),
        ];
        let text = render_spec(
            TEMPLATE,
            Path::new("t.toml"),
            "n1",
            &cidrs,
            Path::new("s.toml"),
        )
        .unwrap();
        let spec = crate::spec::Spec::parse(&text, Path::new("s.toml")).unwrap();
        assert_eq!(
            spec.pod_network.cidrs(),
            vec![
                "10.244.1.0/24".parse::<IpNetwork>().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap()
            ],
            "both families of a dual-stack node"
        );
        assert!(text.starts_with("# Rendered by headcni"), "{text}");
    }

    #[test]
    fn the_template_s_comments_stay() {
        let template = "# The cluster's headcni spec.
version = 1
mode = \"host\"

[pod_network]
# Every node's pods, for routes between nodes.
cluster_cidr = \"10.244.0.0/16\"
";
        let text = render_spec(
            template,
            Path::new("t.toml"),
            "n1",
            &["10.244.1.0/24".to_string()],
            Path::new("s.toml"),
        )
        .unwrap();
        assert!(text.contains("# The cluster's headcni spec."), "{text}");
        assert!(
            text.contains("# Every node's pods, for routes between nodes."),
            "{text}"
        );
        let spec = crate::spec::Spec::parse(&text, Path::new("s.toml")).unwrap();
        assert_eq!(spec.pod_network.cidrs()[0].to_string(), "10.244.1.0/24");
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let e = render_spec(
            TEMPLATE,
            Path::new("t.toml"),
            "n1",
            &[],
            Path::new("s.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("node n1 has no pod CIDR headcni can use"),
            "{e}"
        );
        let per_node = "version = 1\n[pod_network]\ncidr = \"10.0.0.0/24\"\n";
        let e = render_spec(
            per_node,
            Path::new("t.toml"),
            "n1",
            &["10.244.1.0/24".into()],
            Path::new("s.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("pod_network.cidr"), "{e}");
        let e = render_spec(
            "version = [",
            Path::new("t.toml"),
            "n1",
            &["10.244.1.0/24".into()],
            Path::new("s.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("t.toml:"), "{e}");
    }
}
