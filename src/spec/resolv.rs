//! The tailnet namespace's resolv.conf, compiled from the node's: pure, so
//! `plan` shows exactly what `apply` writes.

use crate::model::{ManagedFile, FILE_MARK};

use super::{Mode, Spec};

/// What the node's resolvers are, as read at the edge (observe).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeResolvers {
    /// The node's /etc/resolv.conf.
    pub resolv_conf: String,
    /// The file `daemon.dns_upstream` names, when it exists.
    pub upstream: Option<String>,
}

/// The files headcni keeps for `spec`: in daemon mode, tailscaled's
/// resolv.conf in /etc/netns (the convention `ip netns exec` follows).
pub fn compile_files(spec: &Spec, resolvers: &NodeResolvers) -> Vec<ManagedFile> {
    match spec.mode {
        Mode::Host => Vec::new(),
        Mode::Daemon => vec![ManagedFile {
            path: spec.daemon.resolv_conf_path(),
            content: namespace_resolv_conf(&resolvers.resolv_conf, resolvers.upstream.as_deref()),
        }],
    }
}

/// The resolv.conf tailscaled gets in its namespace. A node's loopback stub
/// (systemd-resolved's 127.0.0.53) does not exist there: its upstream
/// servers stand in, else the node's other servers.
pub fn namespace_resolv_conf(node: &str, upstream: Option<&str>) -> String {
    let is_loopback = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .is_some_and(|a| a.is_loopback())
    };
    let servers = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("nameserver") && !is_loopback(l))
            .map(str::to_string)
            .collect()
    };
    let stub = node
        .lines()
        .map(str::trim)
        .any(|l| l.starts_with("nameserver") && is_loopback(l));
    let mut chosen = servers(node);
    if stub {
        if let Some(up) = upstream {
            chosen = servers(up);
        }
    }
    let mut out = format!("{FILE_MARK} for the tailnet namespace (loopback resolvers left out).\n");
    for line in node.lines().map(str::trim) {
        if line.starts_with("search") || line.starts_with("domain") || line.starts_with("options") {
            out.push_str(line);
            out.push('\n');
        }
    }
    for s in chosen {
        out.push_str(&s);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::namespace_resolv_conf;

    #[test]
    fn a_loopback_stub_gives_way_to_its_upstream_servers() {
        let node = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.test\n";
        let upstream = "nameserver 192.0.2.53\nnameserver 198.51.100.53\n";
        let got = namespace_resolv_conf(node, Some(upstream));
        assert!(got.starts_with(crate::model::FILE_MARK), "{got}");
        assert!(
            got.contains("nameserver 192.0.2.53\nnameserver 198.51.100.53\n"),
            "{got}"
        );
        assert!(!got.contains("127.0.0.53"), "{got}");
        assert!(
            got.contains("search example.test") && got.contains("options edns0"),
            "{got}"
        );
        // Without an upstream file, the loopback server is left out all the same.
        let got = namespace_resolv_conf("nameserver 127.0.0.53\nnameserver 203.0.113.53\n", None);
        assert!(
            got.contains("nameserver 203.0.113.53") && !got.contains("127.0.0.53"),
            "{got}"
        );
        // A node with real servers keeps them.
        let got = namespace_resolv_conf("nameserver 192.0.2.1\n", Some(upstream));
        assert!(
            got.contains("nameserver 192.0.2.1") && !got.contains("192.0.2.53"),
            "{got}"
        );
    }
}
