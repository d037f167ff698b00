//! Interface-name rules and the stable host-link naming scheme.

use sha2::{Digest, Sha256};

use crate::model::{IFNAME_MAX, LINK_PREFIX};

/// Checks a Linux interface name: 1..=15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "interface name {name:?} is {} bytes; Linux allows at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

/// Container ids become store keys and appear in names and logs: keep them
/// to what runtimes actually use (hex ids, pod sandbox names).
pub fn validate_container_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 {
        return Err(format!("{} bytes; use 1 to 256", id.len()));
    }
    if id.starts_with('.') || id.contains("..") {
        return Err(format!("{id:?} looks like a relative path"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("{id:?} contains {c:?}; use [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// Host-side veth name for a pod attachment: `hc` + 10 hex digits of
/// SHA-256(container id, ifname). Stable across versions and processes, so the
/// CNI plugin, the daemon and `headcni apply` all agree on it.
pub fn host_link_name(container_id: &str, ifname: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(container_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(ifname.as_bytes());
    let digest = hasher.finalize();
    let mut name = String::with_capacity(12);
    name.push_str(LINK_PREFIX);
    for byte in &digest[..5] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_names_fit_and_are_stable() {
        let name = host_link_name("abc", "eth0");
        assert_eq!(name.len(), 12);
        assert!(name.starts_with("hc"));
        assert_eq!(name, host_link_name("abc", "eth0"));
        assert_ne!(name, host_link_name("abc", "eth1"));
        // The separator keeps ("ab","ceth0") and ("abc","eth0") apart.
        assert_ne!(host_link_name("ab", "ceth0"), host_link_name("abc", "eth0"));
    }

    #[test]
    fn no_container_id_is_reserved() {
        // The tailnet namespace is its own kind of attachment, not a pod id.
        assert!(validate_container_id("headcni-tailnet").is_ok());
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a-very-long-name0").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
    }
}
