//! How the store lays out its db: key prefixes and encodings, and the
//! reads and writes of intents in one open db.

use std::net::IpAddr;
use std::path::Path;

use super::StoreError;
use crate::model::PodKey;
use crate::spec::PodIntent;

pub(super) const POD_PREFIX: &[u8] = b"pod\0";
pub(super) const IP_PREFIX: &[u8] = b"ip\0";
/// Host links of removed attachments whose address stays allocated until
/// the link is known gone (`release`): no address is handed out again while
/// a kernel object may still use it.
pub(super) const RELEASING_PREFIX: &[u8] = b"releasing\0";
/// A family's bookkeeping keys: the pod CIDR the store allocates from (a
/// store holding pods is never used with another: their addresses would be
/// handed out twice or not routed), the last address handed out and the
/// last one freed.
pub(super) struct FamilyKeys {
    pub(super) cidr: &'static [u8],
    pub(super) cursor: &'static [u8],
    pub(super) last_freed: &'static [u8],
}

/// IPv4's keys are those of the stores from before IPv6.
pub(super) const V4_KEYS: FamilyKeys = FamilyKeys {
    cidr: b"meta\0cidr",
    cursor: b"meta\0cursor",
    last_freed: b"meta\0last_freed",
};
pub(super) const V6_KEYS: FamilyKeys = FamilyKeys {
    cidr: b"meta\0cidr6",
    cursor: b"meta\0cursor6",
    last_freed: b"meta\0last_freed6",
};

pub(super) fn keys_of(ip: IpAddr) -> &'static FamilyKeys {
    if ip.is_ipv4() {
        &V4_KEYS
    } else {
        &V6_KEYS
    }
}

pub(super) fn pod_key_bytes(key: &PodKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.container_id.len() + key.ifname.len() + 1);
    out.extend_from_slice(key.container_id.as_bytes());
    out.push(0);
    out.extend_from_slice(key.ifname.as_bytes());
    out
}

pub(super) fn pod_db_key(key: &PodKey) -> Vec<u8> {
    let mut out = POD_PREFIX.to_vec();
    out.extend_from_slice(&pod_key_bytes(key));
    out
}

/// Every intent in the db.
pub(super) fn list_in(db: &sled::Db, path: &Path) -> Result<Vec<PodIntent>, StoreError> {
    db.scan_prefix(POD_PREFIX)
        .map(|item| {
            let (k, v) = item.map_err(|error| StoreError::Db {
                path: path.into(),
                error,
            })?;
            decode_intent(&k, &v)
        })
        .collect()
}

/// Removes the intents of `keys`, their addresses held by their host links.
pub(super) fn remove_in(
    db: &sled::Db,
    path: &Path,
    keys: &[PodKey],
) -> Result<Vec<Option<PodIntent>>, StoreError> {
    let db_err = |error| StoreError::Db {
        path: path.into(),
        error,
    };
    let mut batch = sled::Batch::default();
    let mut removed = Vec::with_capacity(keys.len());
    for key in keys {
        let pod_key = pod_db_key(key);
        let Some(existing) = db.get(&pod_key).map_err(db_err)? else {
            removed.push(None);
            continue;
        };
        let intent = decode_intent(&pod_key, &existing)?;
        batch.remove(pod_key);
        // The link may still hold what an earlier attachment of the same
        // name left (a DEL answered before its link was gone, then an ADD
        // of the same pod): both stay held until the link is gone, and
        // both are freed then, never overwritten and lost.
        let releasing = releasing_db_key(&intent.host_link);
        let mut held = read_ips(db, &releasing, path)?.unwrap_or_default();
        for ip in intent.addresses() {
            if !held.contains(&ip) {
                held.push(ip);
            }
        }
        let text: Vec<String> = held.iter().map(IpAddr::to_string).collect();
        batch.insert(releasing, text.join(" ").as_bytes());
        removed.push(Some(intent));
    }
    if removed.iter().any(Option::is_some) {
        db.apply_batch(batch).map_err(db_err)?;
    }
    Ok(removed)
}

pub(super) fn releasing_db_key(host_link: &str) -> Vec<u8> {
    let mut out = RELEASING_PREFIX.to_vec();
    out.extend_from_slice(host_link.as_bytes());
    out
}

/// IPv4 keys hold 4 bytes, IPv6 keys 16: the families never collide.
pub(super) fn ip_db_key(ip: IpAddr) -> Vec<u8> {
    let mut out = IP_PREFIX.to_vec();
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out
}

pub(super) fn decode_intent(key: &[u8], value: &[u8]) -> Result<PodIntent, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

pub(super) fn read_ip(
    db: &sled::Db,
    key: &[u8],
    path: &Path,
) -> Result<Option<IpAddr>, StoreError> {
    Ok(read_ips(db, key, path)?.and_then(|ips| ips.into_iter().next()))
}

/// Space-separated addresses (a released link holds one per family).
pub(super) fn read_ips(
    db: &sled::Db,
    key: &[u8],
    path: &Path,
) -> Result<Option<Vec<IpAddr>>, StoreError> {
    let Some(raw) = db.get(key).map_err(|error| StoreError::Db {
        path: path.into(),
        error,
    })?
    else {
        return Ok(None);
    };
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.split_whitespace().map(|a| a.parse().ok()).collect())
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "not IP addresses".into(),
        })
}
