//! The call point for a pod's per-pod inbound capture link (issue 12: an sk_lookup program
//! attached to the pod's network namespace, owned by the "inbound" work). ADD calls
//! [`attach_pod_inbound`] after the pod is in the maps, DEL calls [`detach_pod_inbound`]
//! before removing it. On this branch the data path captures inbound through the cgroup
//! programs only, so there is no per-pod link yet and both calls do nothing: this module is
//! where the sk_lookup link gets created (and pinned per sandbox) once it exists.

use super::error::CniError;
use std::path::Path;

/// Attaches the pod's inbound link, if the loaded data path has one. Nothing yet (see above).
pub fn attach_pod_inbound(
    _pin_dir: &Path,
    _container_id: &str,
    _netns: &Path,
    _pod_id: u32,
) -> Result<(), CniError> {
    Ok(())
}

/// Detaches and unpins the pod's inbound link; must succeed when the netns is gone.
pub fn detach_pod_inbound(_pin_dir: &Path, _container_id: &str) -> Result<(), CniError> {
    Ok(())
}
