//! CNI errors as the spec defines them: a well-known code, a short message and details, printed
//! as JSON on stdout with a non-zero exit, so the runtime (and `kubectl describe pod`) shows
//! what went wrong and what to do.

use serde_json::json;
use std::fmt;

/// Well-known error codes of the CNI spec (1.1, "Error" section); 100+ are the plugin's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (CNI 1.1): the plugin cannot serve ADD now.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The data path is not loaded on this node (merbridge's own code).
    pub const DATA_PATH_MISSING: u32 = 100;
    /// The pod could not be read from the API server.
    pub const API_FAILURE: u32 = 101;
    /// A map write failed.
    pub const MAP_FAILURE: u32 = 102;
    /// CHECK found the pod's entries missing or different.
    pub const CHECK_FAILED: u32 = 103;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object for stdout; `cni_version` is the config's (or ours when unknown).
    pub fn to_json(&self, cni_version: &str) -> String {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}
