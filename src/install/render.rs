//! The node-local spec rendered from a cluster-wide template (a ConfigMap)
//! and this node's pod CIDR as Kubernetes assigned it: pure.

use std::path::Path;

use ipnetwork::Ipv4Network;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{}: {reason}", template.display())]
    Template {
        template: std::path::PathBuf,
        reason: String,
    },
    #[error("node {node} has no IPv4 pod CIDR (its podCIDRs: {cidrs:?})")]
    NoIpv4 { node: String, cidrs: Vec<String> },
    #[error("the spec rendered from {} for node {node} is not valid: {reason}", template.display())]
    Invalid {
        template: std::path::PathBuf,
        node: String,
        reason: String,
    },
}

/// `template` with `pod_network.cidr` set to the node's IPv4 pod CIDR;
/// checked as a spec would be at `spec_path`.
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
    let cidr = pod_cidrs
        .iter()
        .find_map(|c| c.parse::<Ipv4Network>().ok())
        .ok_or_else(|| RenderError::NoIpv4 {
            node: node.to_string(),
            cidrs: pod_cidrs.to_vec(),
        })?;
    let mut doc: toml::Table = toml::from_str(template).map_err(|e| bad(e.to_string()))?;
    let pod_network = doc
        .entry("pod_network")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| bad("pod_network: expected a table".into()))?;
    for per_node in ["cidr", "gateway"] {
        if pod_network.contains_key(per_node) {
            return Err(bad(format!(
                "pod_network.{per_node}: each node's comes from its Node object; leave it out of the template"
            )));
        }
    }
    pod_network.insert("cidr".into(), toml::Value::String(cidr.to_string()));
    let body = toml::to_string(&doc).map_err(|e| bad(e.to_string()))?;
    let text = format!(
        "# Rendered by headcni from {} for node {node} (spec.podCIDR {cidr}).\n# Edit the template, not this file: it is rewritten from it.\n{body}",
        template_path.display()
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
        assert_eq!(spec.pod_network.cidr.to_string(), "10.244.1.0/24");
        assert!(text.starts_with("# Rendered by headcni"), "{text}");
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
            e.to_string().contains("node n1 has no IPv4 pod CIDR"),
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
