//! Policy at ADD: the pod is read from the API server with the node agent's credentials (a
//! kubeconfig the install step writes from the DaemonSet's service account), as istio-cni
//! does. The pod's annotations then give the same decision and policy the agent would
//! compute, so the pod is intercepted exactly as meant from its first packet, and the agent
//! adopts the entry unchanged. One GET per pod outside `excludeNamespaces`.

use super::config::K8sPod;
use super::error::{code, CniError};
use crate::k8s::{http, ClientConfig, PodInfo};
use std::path::Path;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_LIMIT: usize = 4 << 20;

fn api_error(msg: String) -> CniError {
    CniError::new(
        code::API_FAILURE,
        msg,
        "merbridge-cni reads the pod to learn whether it is meshed; the kubelet retries the \
         sandbox. Check that the API server is reachable from the node and that merbridge's \
         service account may get pods (the DaemonSet's ClusterRole)",
    )
}

/// The pod as the API server has it now.
pub fn fetch_pod(kubeconfig: &Path, pod: &K8sPod) -> Result<PodInfo, CniError> {
    let config = ClientConfig::from_kubeconfig(kubeconfig, None).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("cannot use kubeconfig {}: {e}", kubeconfig.display()),
            "`merbridge cni install` writes it from the DaemonSet's service account; is the \
             install container running?",
        )
    })?;
    let token = config.auth.bearer().map_err(|e| api_error(e.to_string()))?;
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Accept", "application/json"),
        (
            "User-Agent",
            concat!("merbridge-cni/", env!("CARGO_PKG_VERSION")),
        ),
    ];
    if let Some(value) = authorization.as_deref() {
        headers.push(("Authorization", value));
    }
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        http::encode_query_value(&pod.namespace),
        http::encode_query_value(&pod.name)
    );
    let mut response = http::get(&config.endpoint, &path, &headers, READ_TIMEOUT, &mut |_| {})
        .map_err(|e| api_error(format!("GET pod {pod}: {}", e.message)))?;
    let body = response
        .read_to_end(BODY_LIMIT)
        .map_err(|e| api_error(format!("GET pod {pod}: {}", e.message)))?;
    if response.status != 200 {
        let status = crate::k8s::decode::ApiStatus::from_body(response.status, &body);
        return Err(api_error(format!(
            "GET pod {pod}: HTTP {}: {}",
            response.status,
            status.message.trim()
        )));
    }
    let info = PodInfo::from_json(&body).map_err(|e| api_error(format!("pod {pod}: {e}")))?;
    if let Some(uid) = &pod.uid {
        if !info.uid.is_empty() && &info.uid != uid {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "pod {pod} in the API has uid {}, the sandbox is for uid {uid}",
                    info.uid
                ),
                "the pod was replaced; the kubelet will retry or drop this sandbox",
            ));
        }
    }
    Ok(info)
}
