//! A sandbox's inbound capture at ADD and DEL: the pod's sk_lookup link on its network
//! namespace ([`crate::inbound`]), attached right after the pod is in the maps and before any
//! container starts, so the first connection from outside the pod already meets its sidecar
//! (or is refused while the sidecar does not listen yet: fail closed).

use super::error::{code, CniError};
use std::path::Path;

/// Attaches (or adopts) the pod's sk_lookup link. No listener is looked for: at sandbox
/// creation no container of the pod runs yet, so nothing can listen, and the search walks
/// every process of the node (`/proc`). The sidecar's `listen()` inserts its listener
/// (sock_ops, 6.1+); on older kernels the agent adopts it at its next scan.
pub fn attach_pod_inbound(pin_dir: &Path, netns: &Path, pod_id: u32) -> Result<(), CniError> {
    let layout = mb_loader::datapath::PinLayout::new(pin_dir);
    mb_loader::inbound::attach(&layout, &crate::inbound::link_name(pod_id), netns)
        .map(|_| ())
        .map_err(|e| {
            CniError::new(
                code::MAP_FAILURE,
                format!("cannot attach inbound capture (sk_lookup) for pod id {pod_id}: {e}"),
                "the loaded data path may predate inbound capture: reload it with `merbridge load`",
            )
        })
}

/// Detaches and unpins the pod's inbound link; succeeds when the netns is gone already.
pub fn detach_pod_inbound(pin_dir: &Path, pod_id: u32) -> Result<(), CniError> {
    crate::inbound::detach_pod(pin_dir, pod_id)
        .map(|_| ())
        .map_err(|e| {
            CniError::new(
                code::MAP_FAILURE,
                format!("cannot detach inbound capture (sk_lookup) of pod id {pod_id}: {e}"),
                "",
            )
        })
}
