//! CNI errors: the spec's codes, headcni's own (100+), and the JSON shape.

use serde::Serialize;

/// Codes from the CNI spec (SPEC.md, "Error codes").
pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const NOT_AVAILABLE: u32 = 50;

/// headcni's own codes (documented in docs/cni.md).
pub const STORE_FAILURE: u32 = 100;
pub const POOL_EXHAUSTED: u32 = 101;
pub const APPLY_FAILED: u32 = 102;
pub const CHECK_MISMATCH: u32 = 103;
pub const CONFLICT: u32 = 104;
pub const OBSERVE_FAILED: u32 = 105;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error document runtimes parse from stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Doc<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Doc {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl CniError {
    /// A store failure: try again later while another process holds the
    /// lock, the pool's own code when it is exhausted.
    pub fn from_store(e: &crate::store::StoreError) -> CniError {
        use crate::store::StoreError;
        let code = match e {
            StoreError::LockTimeout { .. } => TRY_AGAIN_LATER,
            StoreError::Exhausted { .. } => POOL_EXHAUSTED,
            _ => STORE_FAILURE,
        };
        CniError::new(code, crate::Chain(e).to_string())
    }

    pub fn from_engine(e: &crate::engine::EngineError) -> CniError {
        use crate::engine::EngineError;
        match e {
            EngineError::Store(s) => CniError::from_store(s),
            EngineError::NoStore { .. } => {
                CniError::new(STORE_FAILURE, crate::Chain(e).to_string())
            }
            EngineError::Observe(o) => CniError::new(OBSERVE_FAILED, crate::Chain(o).to_string()),
            EngineError::CoversNode(why) => CniError::new(INVALID_CONFIG, why.clone()),
        }
    }
}

impl From<crate::store::StoreError> for CniError {
    fn from(e: crate::store::StoreError) -> Self {
        CniError::from_store(&e)
    }
}

impl From<crate::engine::EngineError> for CniError {
    fn from(e: crate::engine::EngineError) -> Self {
        CniError::from_engine(&e)
    }
}
