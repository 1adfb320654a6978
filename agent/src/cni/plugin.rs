//! ADD, DEL, CHECK, VERSION, STATUS and GC. ADD registers a meshed pod in the pinned maps
//! before any of its containers starts (the runtime runs the chain at sandbox creation) and
//! prints `prevResult` unchanged; non-meshed pods pass through with no map access. DEL removes
//! what the sandbox's record says ADD wrote, also without the netns. CHECK reports missing
//! entries. STATUS (CNI 1.1) says whether ADD can register a meshed pod; GC (CNI 1.1) does a
//! DEL for every sandbox of this network the runtime no longer lists. Nothing needs the agent:
//! writes go straight into the pins.

use super::api::fetch_pod;
use super::config::{Env, K8sPod, NetConf, OUR_VERSION, SUPPORTED_VERSIONS};
use super::error::{code, CniError};
use super::inbound::{attach_pod_inbound, detach_pod_inbound};
use super::state::{self, SandboxRecord};
use crate::mesh::{intercepted, PodPolicy};
use crate::pin_lock::{write_lock, write_lock_dir, WRITE_LOCK_TIMEOUT};
use crate::pods::{LocalPod, PodMaps};
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::MAP_NETNS_PODS;
use mb_maps::layout::PodEntry;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What ADD decided for a sandbox (tests and the bench look at it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Not a Kubernetes pod, in an excluded namespace, or not meshed: nothing written.
    PassedThrough,
    /// Registered with this pod id.
    Registered(u32),
}

fn data_path_missing(pod: &K8sPod, pin_dir: &Path, e: String) -> CniError {
    CniError::new(
        code::DATA_PATH_MISSING,
        format!(
            "pod {pod} is meshed but merbridge's data path is not loaded on this node ({})",
            pin_dir.display()
        ),
        format!(
            "the pod must not start without interception. Start the merbridge DaemonSet on this \
             node (kubectl -n merbridge-system get pods -o wide) and the kubelet retries the \
             sandbox; or remove merbridge from the node's CNI conflist with \
             `merbridge cni uninstall` if merbridge is being removed. Cause: {e}"
        ),
    )
}

fn io_error(what: String, e: io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what}: {e}"), "")
}

/// The decision for a Kubernetes pod: `Some(policy)` if it must be intercepted.
fn decide(conf: &NetConf, pod: &K8sPod, ips: &[IpAddr]) -> Result<Option<PodPolicy>, CniError> {
    let Some(kubeconfig) = &conf.kubeconfig else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "merbridge's CNI config has no \"kubeconfig\": it cannot tell whether the pod is meshed",
            "reinstall with `merbridge cni install`, which writes the kubeconfig from the \
             DaemonSet's service account, or add the pod's namespace to \"excludeNamespaces\"",
        ));
    };
    let mut info = fetch_pod(kubeconfig, pod)?;
    // At sandbox creation the API has no address yet; the primary plugin just assigned it.
    info.pod_ips = ips.to_vec();
    Ok(intercepted(&info, conf.mesh).map(|d| d.policy))
}

pub fn add(env: &Env, conf: &NetConf) -> Result<AddOutcome, CniError> {
    let container_id = env.required("CNI_CONTAINERID")?;
    let ifname = env.required("CNI_IFNAME")?;
    let netns = Path::new(env.required("CNI_NETNS")?);
    let ips = conf.prev_ips(ifname)?;
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("the network namespace {} does not exist", netns.display()),
            "the sandbox is gone; the runtime will create a new one",
        ));
    }
    let Some(pod) = K8sPod::from_args(&env.args()?) else {
        return Ok(AddOutcome::PassedThrough);
    };
    if conf.exclude_namespaces.contains(&pod.namespace) {
        return Ok(AddOutcome::PassedThrough);
    }
    let Some(policy) = decide(conf, &pod, &ips)? else {
        return Ok(AddOutcome::PassedThrough);
    };
    let netns_cookie = mb_sys::netns::netns_cookie(netns).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!(
                "cannot read the cookie of network namespace {}: {e}",
                netns.display()
            ),
            "merbridge identifies pods by SO_NETNS_COOKIE (Linux 5.14 or later)",
        )
    })?;
    // Held until ADD returns: the agent and `merbridge pod` write the same maps.
    let _write = write_lock(&conf.pin_dir, WRITE_LOCK_TIMEOUT).map_err(|e| {
        if write_lock_dir(&conf.pin_dir).exists() {
            CniError::new(code::MAP_FAILURE, format!("pod {pod}: {e}"), "")
        } else {
            data_path_missing(&pod, &conf.pin_dir, e)
        }
    })?;
    let maps = PodMaps::open(&conf.pin_dir)
        .map_err(|e| data_path_missing(&pod, &conf.pin_dir, e.to_string()))?;
    let local = LocalPod {
        ips: ips.clone(),
        netns_cookie,
        policy,
        dns_capture: conf.dns_capture,
    };
    let record_path = state::record_path(&conf.state_dir, container_id, ifname);
    // A repeated ADD for the same sandbox whose addresses or namespace changed: what the
    // earlier one wrote must not stay behind.
    if let Ok(Some(old)) = state::read(&record_path) {
        if old.ips != local.ips || old.netns_cookie != netns_cookie {
            remove_written(
                &maps,
                &conf.pin_dir,
                &old.ips,
                old.netns_cookie,
                Some(old.pod_id),
            );
        }
    }
    let pod_id = match maps.upsert(&local) {
        Ok((id, _)) => id,
        Err(e) => {
            // Leave nothing half-written: remove whatever carries this namespace.
            remove_written(&maps, &conf.pin_dir, &ips, netns_cookie, None);
            return Err(CniError::new(
                code::MAP_FAILURE,
                format!("cannot register pod {pod} in merbridge's maps: {e}"),
                "",
            ));
        }
    };
    let record = SandboxRecord {
        pod: pod.to_string(),
        pod_uid: pod.uid.clone(),
        pod_id,
        netns_cookie,
        ips,
        network: Some(conf.name.clone()),
    };
    let finish = state::write(&record_path, &record)
        .map_err(|e| io_error(format!("pod {pod}: cannot write its sandbox record"), e))
        .and_then(|()| attach_pod_inbound(&conf.pin_dir, netns, pod_id));
    if let Err(e) = finish {
        remove_written(
            &maps,
            &conf.pin_dir,
            &record.ips,
            netns_cookie,
            Some(pod_id),
        );
        let _ = state::remove(&record_path);
        return Err(e);
    }
    Ok(AddOutcome::Registered(pod_id))
}

fn netns_entry(pin_dir: &Path, cookie: u64) -> Result<Option<PodEntry>, String> {
    let map: mb_maps::HashMap<u64, PodEntry> =
        mb_maps::HashMap::open_pinned(&PinLayout::new(pin_dir).map(MAP_NETNS_PODS))
            .map_err(|e| format!("map {MAP_NETNS_PODS}: {e}"))?;
    map.get(&cookie)
        .map_err(|e| format!("map {MAP_NETNS_PODS}: {e}"))
}

/// Removes the entries of one sandbox: those of its addresses and namespace that carry
/// `pod_id` (any id when `None`), so an address already reused by another pod stays.
fn remove_written(
    maps: &PodMaps,
    pin_dir: &Path,
    ips: &[IpAddr],
    cookie: u64,
    pod_id: Option<u32>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let ours = |e: &PodEntry| pod_id.is_none_or(|id| e.pod_id == id);
    for ip in ips {
        match maps.find(*ip) {
            Ok(Some(entry)) if ours(&entry) => {
                if let Err(e) = maps.remove_entry(&entry) {
                    errors.push(e.to_string());
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    match netns_entry(pin_dir, cookie) {
        Ok(Some(entry)) if ours(&entry) => {
            if let Err(e) = maps.remove_entry(&entry) {
                errors.push(e.to_string());
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    errors
}

/// Where ADD recorded this sandbox (container id and interface name from the environment), and
/// the record, if there is one.
fn sandbox_record(env: &Env, conf: &NetConf) -> Result<(PathBuf, Option<SandboxRecord>), CniError> {
    let container_id = env.required("CNI_CONTAINERID")?;
    let ifname = env.required("CNI_IFNAME")?;
    let record_path = state::record_path(&conf.state_dir, container_id, ifname);
    let record = state::read(&record_path)
        .map_err(|e| io_error("cannot read the sandbox record".into(), e))?;
    Ok((record_path, record))
}

pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (record_path, record) = sandbox_record(env, conf)?;
    let Some(record) = record else {
        // Not meshed at ADD, or deleted already: DEL is idempotent.
        return Ok(());
    };
    forget_sandbox(conf, &record_path, &record)
}

/// Undoes what ADD wrote for one sandbox: its inbound link, its map entries (those still
/// carrying its pod id), then its record.
fn forget_sandbox(
    conf: &NetConf,
    record_path: &Path,
    record: &SandboxRecord,
) -> Result<(), CniError> {
    detach_pod_inbound(&conf.pin_dir, record.pod_id)?;
    // No maps directory, no entries (`merbridge unload` removed them): nothing to lock.
    let _write = if write_lock_dir(&conf.pin_dir).exists() {
        Some(write_lock(&conf.pin_dir, WRITE_LOCK_TIMEOUT).map_err(|e| {
            CniError::new(code::MAP_FAILURE, format!("pod {}: {e}", record.pod), "")
        })?)
    } else {
        None
    };
    match PodMaps::open(&conf.pin_dir) {
        Ok(maps) => {
            let errors = remove_written(
                &maps,
                &conf.pin_dir,
                &record.ips,
                record.netns_cookie,
                Some(record.pod_id),
            );
            if !errors.is_empty() {
                return Err(CniError::new(
                    code::MAP_FAILURE,
                    format!("cannot remove pod {} from merbridge's maps", record.pod),
                    errors.join("; "),
                ));
            }
        }
        // No data path, no entries: `merbridge unload` removed them with the maps.
        Err(_) if !PinLayout::new(&conf.pin_dir).maps_dir().exists() => {}
        Err(e) => {
            return Err(CniError::new(
                code::MAP_FAILURE,
                format!("cannot open merbridge's maps to remove pod {}", record.pod),
                e,
            ))
        }
    }
    state::remove(record_path).map_err(|e| io_error("cannot remove the sandbox record".into(), e))
}

/// STATUS: ADD can register a meshed pod only while the data path's maps are pinned. A node
/// without them must not get meshed pods (they would start unintercepted or not at all), so
/// the runtime hears "not available" (code 50) and reports the network not ready.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    if conf.kubeconfig.is_none() {
        return Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            "merbridge's CNI config has no \"kubeconfig\": ADD cannot tell whether a pod is meshed",
            "reinstall with `merbridge cni install`, which writes the kubeconfig from the \
             DaemonSet's service account",
        ));
    }
    PodMaps::open(&conf.pin_dir).map(|_| ()).map_err(|e| {
        CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!(
                "merbridge's data path is not loaded on this node ({})",
                conf.pin_dir.display()
            ),
            format!(
                "meshed pods cannot start without interception. Start the merbridge DaemonSet on \
                 this node, or take merbridge out of the conflist with `merbridge cni uninstall`. \
                 Cause: {e}"
            ),
        )
    })
}

/// GC: a DEL for every sandbox record of this network whose (container id, interface) the
/// runtime no longer lists. Goes on past a failure and reports every one at the end.
pub fn gc(conf: &NetConf) -> Result<usize, CniError> {
    let valid: std::collections::BTreeSet<PathBuf> = conf
        .valid_attachments()?
        .iter()
        .map(|(id, ifname)| state::record_path(&conf.state_dir, id, ifname))
        .collect();
    let paths = state::record_paths(&conf.state_dir)
        .map_err(|e| io_error("cannot list the sandbox records".into(), e))?;
    let mut forgotten = 0;
    let mut errors = Vec::new();
    for path in paths.iter().filter(|p| !valid.contains(*p)) {
        match state::read(path) {
            Ok(Some(record)) if record.network.as_ref().is_none_or(|n| *n == conf.name) => {
                match forget_sandbox(conf, path, &record) {
                    Ok(()) => forgotten += 1,
                    Err(e) => errors.push(format!("{}: {e}", record.pod)),
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(forgotten)
    } else {
        Err(CniError::new(
            code::MAP_FAILURE,
            format!(
                "GC forgot {forgotten} stale sandboxes but failed on {}",
                errors.len()
            ),
            errors.join("; "),
        ))
    }
}

pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (_, record) = sandbox_record(env, conf)?;
    let Some(record) = record else {
        return Ok(());
    };
    let failed = |what: String| {
        CniError::new(
            code::CHECK_FAILED,
            format!("pod {}: {what}", record.pod),
            "the pod is not intercepted as it should be: delete it so that its sandbox is \
             recreated, or restart the merbridge agent on this node to rewrite its entries",
        )
    };
    let netns = Path::new(env.required("CNI_NETNS")?);
    match mb_sys::netns::netns_cookie(netns) {
        Ok(cookie) if cookie == record.netns_cookie => {}
        Ok(cookie) => {
            return Err(failed(format!(
                "network namespace {} has cookie {cookie}, ADD registered {}",
                netns.display(),
                record.netns_cookie
            )))
        }
        Err(e) => {
            return Err(failed(format!(
                "network namespace {}: {e}",
                netns.display()
            )))
        }
    }
    let maps = PodMaps::open(&conf.pin_dir).map_err(|e| {
        failed(format!(
            "merbridge's data path is not loaded ({}): {e}",
            conf.pin_dir.display()
        ))
    })?;
    for ip in &record.ips {
        match maps.find(*ip) {
            Ok(Some(entry)) if entry.netns == record.netns_cookie => {}
            Ok(Some(entry)) => {
                return Err(failed(format!(
                    "address {ip} belongs to another namespace in map pod_ips (cookie {})",
                    entry.netns
                )))
            }
            Ok(None) => return Err(failed(format!("address {ip} is missing from map pod_ips"))),
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    match netns_entry(&conf.pin_dir, record.netns_cookie) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(failed(format!(
            "network namespace cookie {} is missing from map {MAP_NETNS_PODS}",
            record.netns_cookie
        ))),
        Err(e) => Err(failed(e)),
    }
}

/// The VERSION answer.
pub fn version_json() -> String {
    serde_json::json!({"cniVersion": OUR_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
        .to_string()
}
