//! One record per meshed sandbox (`<state dir>/<container id>-<ifname>.json`): what ADD wrote,
//! so DEL removes exactly that even when the network namespace and `prevResult` are gone, and
//! CHECK knows what to look for. Written atomically (temp file + rename); a sandbox without a
//! record was not meshed at ADD (or is already deleted).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// `namespace/name` of the pod, for messages.
    pub pod: String,
    pub pod_uid: Option<String>,
    pub pod_id: u32,
    pub netns_cookie: u64,
    pub ips: Vec<IpAddr>,
    /// The network (conflist name) whose ADD wrote it: GC of one network leaves the records
    /// of another alone. `None` in records written before GC existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

pub fn record_path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    state_dir.join(format!("{container_id}-{ifname}.json"))
}

pub fn read(path: &Path) -> io::Result<Option<SandboxRecord>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a merbridge sandbox record: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

pub fn write(path: &Path, record: &SandboxRecord) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    let text = serde_json::to_vec(record).map_err(io::Error::other)?;
    // Not synced: a record only matters until the node reboots, and so do the maps.
    write_atomically(path, &text, false)
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`, so a reader
/// sees the old or the new content, never a part; `durable` also syncs it to disk first.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A leading dot and a `.tmp` end: no runtime reads it as a network config.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("write {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Every record in `state_dir` (none when it does not exist), skipping in-flight temporary files.
pub fn record_paths(state_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", state_dir.display()),
            ))
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with('.') && name.ends_with(".json") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("remove {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}
