//! What a runtime hands a CNI plugin: the network configuration on stdin (with the previous
//! plugin's result in `prevResult`) and the `CNI_*` environment variables, parsed strictly
//! into values that say what was wrong.

use super::error::{code, CniError};
use crate::mesh::Mesh;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// CNI versions whose result format this plugin reads and writes (0.3.0 and later share the
/// `ips` list; 1.0.0 dropped `ips[].version`, which we neither need nor emit; 1.1.0 added GC,
/// STATUS and result fields that ADD passes through untouched in `prevResult`).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version we answer VERSION with and use in errors when the config has none.
pub const OUR_VERSION: &str = "1.1.0";

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/merbridge";
pub const DEFAULT_STATE_DIR: &str = "/var/run/merbridge/cni";
/// The `type` the install step gives the plugin (= binary name in the CNI bin dir).
pub const PLUGIN_TYPE: &str = "merbridge-cni";

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1: can ADD be served?
    Status,
    /// CNI 1.1: forget every sandbox the runtime no longer lists.
    Gc,
}

/// The `CNI_*` variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    pub fn command(&self) -> Result<Command, CniError> {
        match self.command.as_deref() {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            Some("STATUS") => Ok(Command::Status),
            Some("GC") => Ok(Command::Gc),
            Some(other) => Err(CniError::new(
                code::INVALID_ENV,
                format!("unknown CNI_COMMAND {other:?}"),
                "merbridge-cni implements ADD, DEL, CHECK, VERSION, STATUS and GC (CNI spec 1.1)",
            )),
            None => Err(CniError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set",
                "merbridge-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND, \
                 CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and the network config on stdin",
            )),
        }
    }

    /// A variable the command needs; container ids become file names, so they are checked.
    pub fn required(&self, name: &str) -> Result<&str, CniError> {
        let value = match name {
            "CNI_CONTAINERID" => self.container_id.as_deref(),
            "CNI_NETNS" => self.netns.as_deref(),
            "CNI_IFNAME" => self.ifname.as_deref(),
            _ => None,
        };
        let value = value.filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                "the container runtime must set it for this command (CNI spec 1.1)",
            )
        })?;
        if name != "CNI_NETNS"
            && !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "{name} {value:?} has characters other than letters, digits, '-', '_', '.'"
                ),
                "",
            ));
        }
        Ok(value)
    }

    /// `CNI_ARGS` (`K=V;K=V`) as a map; malformed pairs are an error.
    pub fn args(&self) -> Result<BTreeMap<String, String>, CniError> {
        let mut out = BTreeMap::new();
        for pair in self.args.as_deref().unwrap_or("").split(';') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS element {pair:?} is not KEY=VALUE"),
                    "",
                )
            })?;
            out.insert(k.to_owned(), v.to_owned());
        }
        Ok(out)
    }
}

/// The Kubernetes pod a sandbox belongs to, from `CNI_ARGS` (set by the CRI runtimes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sPod {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl K8sPod {
    /// `None` when the sandbox is not a Kubernetes pod (no `K8S_POD_NAME`).
    pub fn from_args(args: &BTreeMap<String, String>) -> Option<K8sPod> {
        let name = args.get("K8S_POD_NAME").filter(|v| !v.is_empty())?;
        let namespace = args.get("K8S_POD_NAMESPACE").filter(|v| !v.is_empty())?;
        Some(K8sPod {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: args.get("K8S_POD_UID").filter(|v| !v.is_empty()).cloned(),
        })
    }
}

impl std::fmt::Display for K8sPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The plugin's entry of the conflist, with the runtime's additions.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// Where `merbridge load`/`run` pinned the maps.
    pub pin_dir: PathBuf,
    /// Per-sandbox records, so DEL works without the netns and without `prevResult`.
    pub state_dir: PathBuf,
    pub mesh: Mesh,
    /// Credentials to read the pod (the install step writes them from the agent's account).
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose pods pass through without an API call (never meshed).
    pub exclude_namespaces: Vec<String>,
    /// Send meshed pods' UDP DNS to the sidecar's DNS proxy (as `merbridge run --dns-capture`).
    pub dns_capture: bool,
    /// The previous plugin's result, passed through unchanged by ADD.
    pub prev_result: Option<Value>,
    /// The whole object as received (for messages).
    pub raw: Value,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        msg,
        "fix merbridge's entry in the node's CNI conflist (merbridge cni install writes it)",
    )
}

impl NetConf {
    /// Parses the config from stdin. Checks the version first: an unknown one is code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("the network configuration on stdin is not valid JSON: {e}"),
                "the runtime passes the plugin's conflist entry on stdin",
            )
        })?;
        let obj = raw
            .as_object()
            .ok_or_else(|| invalid("the network configuration is not a JSON object"))?;
        let text = |key: &str| obj.get(key).and_then(Value::as_str);
        let cni_version = text("cniVersion")
            .ok_or_else(|| invalid("the network configuration has no \"cniVersion\""))?
            .to_owned();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("CNI version {cni_version:?} is not supported"),
                format!(
                    "merbridge-cni supports {}; set the conflist's cniVersion to one of them",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = text("name").unwrap_or_default().to_owned();
        let path_field = |key: &str, default: &str| -> Result<PathBuf, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(PathBuf::from(default)),
                Some(Value::String(s)) if s.starts_with('/') => Ok(PathBuf::from(s)),
                Some(other) => Err(invalid(format!(
                    "\"{key}\" must be an absolute path, not {other}"
                ))),
            }
        };
        let pin_dir = path_field("pinDir", DEFAULT_PIN_DIR)?;
        let state_dir = path_field("stateDir", DEFAULT_STATE_DIR)?;
        let kubeconfig = match obj.get("kubeconfig") {
            None | Some(Value::Null) => None,
            Some(_) => Some(path_field("kubeconfig", "")?),
        };
        let mesh = match obj.get("mesh") {
            Some(Value::String(s)) => s.parse::<Mesh>().map_err(invalid)?,
            None => {
                return Err(invalid(
                    "the configuration has no \"mesh\" (istio, linkerd, kuma or osm)",
                ))
            }
            Some(other) => return Err(invalid(format!("\"mesh\" must be a string, not {other}"))),
        };
        let exclude_namespaces = match obj.get("excludeNamespaces") {
            None | Some(Value::Null) => vec!["kube-system".to_owned()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        invalid(format!("\"excludeNamespaces\" must hold strings, not {v}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(invalid(format!(
                    "\"excludeNamespaces\" must be a list of strings, not {other}"
                )))
            }
        };
        let dns_capture = match obj.get("dnsCapture") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(format!(
                    "\"dnsCapture\" must be true or false, not {other}"
                )))
            }
        };
        let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
        if let Some(prev) = &prev_result {
            if !prev.is_object() {
                return Err(invalid("\"prevResult\" must be a JSON object"));
            }
        }
        Ok(NetConf {
            cni_version,
            name,
            pin_dir,
            state_dir,
            mesh,
            kubeconfig,
            exclude_namespaces,
            dns_capture,
            prev_result,
            raw,
        })
    }

    /// GC's list of attachments still in use, `(container id, interface)`: the runtime's
    /// `cni.dev/valid-attachments` (or `cni.dev/attachments`, the name an earlier libcni used).
    /// Missing is an error: GC with no list would forget every sandbox.
    pub fn valid_attachments(&self) -> Result<Vec<(String, String)>, CniError> {
        let list = ["cni.dev/valid-attachments", "cni.dev/attachments"]
            .iter()
            .find_map(|key| self.raw.get(*key).filter(|v| !v.is_null()))
            .ok_or_else(|| {
                invalid("GC without \"cni.dev/valid-attachments\": nothing was collected")
            })?;
        let items = list.as_array().ok_or_else(|| {
            invalid(format!(
                "\"cni.dev/valid-attachments\" must be a list, not {list}"
            ))
        })?;
        items
            .iter()
            .map(|item| {
                let field = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_owned);
                match (field("containerID"), field("ifname")) {
                    (Some(id), Some(ifname)) => Ok((id, ifname)),
                    _ => Err(invalid(format!(
                        "a valid attachment needs \"containerID\" and \"ifname\" strings, not {item}"
                    ))),
                }
            })
            .collect()
    }

    /// The pod's addresses from `prevResult.ips` (`"10.1.0.5/24"`), for the sandbox's
    /// interface when the result names interfaces, else all of them.
    pub fn prev_ips(&self, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        let prev = self.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "no prevResult: merbridge-cni is a chained plugin",
                "put merbridge after the primary network plugin (bridge, calico, cilium, ...) in \
                 the conflist's \"plugins\" list; `merbridge cni install` does this",
            )
        })?;
        let interfaces = prev.get("interfaces").and_then(Value::as_array);
        let ips = prev.get("ips").and_then(Value::as_array).ok_or_else(|| {
            invalid("prevResult has no \"ips\" list: the primary plugin assigned no address")
        })?;
        let mut out = Vec::new();
        for ip in ips {
            let text = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("prevResult ips entry {ip} has no \"address\"")))?;
            // An entry that names an interface other than the sandbox's (e.g. the host side of
            // a veth) is not the pod's address.
            if let (Some(index), Some(interfaces)) =
                (ip.get("interface").and_then(Value::as_u64), interfaces)
            {
                let iface = interfaces.get(index as usize);
                let in_sandbox = iface.is_some_and(|i| i.get("sandbox").is_some());
                let named = iface.and_then(|i| i.get("name")).and_then(Value::as_str);
                if !in_sandbox || named.is_some_and(|n| n != ifname) {
                    continue;
                }
            }
            let addr = text.split('/').next().unwrap_or(text);
            let parsed: IpAddr = addr.parse().map_err(|_| {
                invalid(format!("prevResult address {text:?} is not an IP address"))
            })?;
            if !out.contains(&parsed) {
                out.push(parsed);
            }
        }
        if out.is_empty() {
            return Err(invalid(format!(
                "prevResult has no address for interface {ifname}"
            )));
        }
        Ok(out)
    }

    /// The result ADD prints: `prevResult` unchanged, under the config's version.
    pub fn result_json(&self) -> String {
        let mut result = self
            .prev_result
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Some(obj) = result.as_object_mut() {
            obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }
        result.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"merbridge-cni","mesh":"istio"{extra}}}"#
        )
    }

    #[test]
    fn parses_defaults_and_rejects_bad_fields() {
        let c = NetConf::parse(conf("").as_bytes()).unwrap();
        assert_eq!(c.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(c.exclude_namespaces, vec!["kube-system"]);
        assert!(c.prev_result.is_none());
        let e = NetConf::parse(br#"{"cniVersion":"9.9.9","mesh":"istio"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("1.0.0"), "{e}");
        assert_eq!(
            NetConf::parse(b"{not json").unwrap_err().code,
            code::DECODE_FAILURE
        );
        let e = NetConf::parse(conf(r#","pinDir":"relative""#).as_bytes()).unwrap_err();
        assert!(
            e.msg.contains("pinDir") && e.code == code::INVALID_CONFIG,
            "{e}"
        );
        let e = NetConf::parse(conf(r#","mesh":"nginx""#).as_bytes()).unwrap_err();
        assert!(e.msg.contains("nginx"), "{e}");
    }

    #[test]
    fn gc_reads_the_valid_attachments_and_refuses_no_list() {
        let c = NetConf::parse(
            conf(r#","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments().unwrap(),
            vec![("abc".to_owned(), "eth0".to_owned())]
        );
        // The name an earlier libcni used.
        let c = NetConf::parse(conf(r#","cni.dev/attachments":[]"#).as_bytes()).unwrap();
        assert_eq!(c.valid_attachments().unwrap(), vec![]);
        let e = NetConf::parse(conf("").as_bytes())
            .unwrap()
            .valid_attachments()
            .unwrap_err();
        assert!(
            e.code == code::INVALID_CONFIG && e.msg.contains("valid-attachments"),
            "{e}"
        );
        let e =
            NetConf::parse(conf(r#","cni.dev/valid-attachments":[{"ifname":"eth0"}]"#).as_bytes())
                .unwrap()
                .valid_attachments()
                .unwrap_err();
        assert!(e.msg.contains("containerID"), "{e}");
    }

    /// A 1.1.0 result's new fields (interface mtu, route table/scope) come out of ADD as they
    /// went in.
    #[test]
    fn a_1_1_result_passes_through_whole() {
        let prev = r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mtu":1400,
            "sandbox":"/run/netns/x","socketPath":"/s"}],
            "ips":[{"address":"10.1.0.9/24","interface":0}],
            "routes":[{"dst":"0.0.0.0/0","table":100,"scope":0,"mtu":1400,"advmss":1360}]}"#;
        let c = NetConf::parse(
            conf(&format!(r#","prevResult":{prev}"#))
                .replace(
                    r#""cniVersion":"1.0.0","name""#,
                    r#""cniVersion":"1.1.0","name""#,
                )
                .as_bytes(),
        )
        .unwrap();
        let out: Value = serde_json::from_str(&c.result_json()).unwrap();
        let prev: Value = serde_json::from_str(prev).unwrap();
        assert_eq!(out, prev);
    }

    #[test]
    fn prev_ips_take_the_sandbox_interface_only() {
        let c = NetConf::parse(
            conf(
                r#","prevResult":{"cniVersion":"1.0.0",
                "interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
                "ips":[{"address":"10.1.0.9/24","interface":1},{"address":"fd00::9/64","interface":1},
                       {"address":"10.1.0.1/24","interface":0}]}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        let ips = c.prev_ips("eth0").unwrap();
        assert_eq!(
            ips,
            vec![
                "10.1.0.9".parse::<IpAddr>().unwrap(),
                "fd00::9".parse().unwrap()
            ]
        );
        let missing = NetConf::parse(conf("").as_bytes())
            .unwrap()
            .prev_ips("eth0")
            .unwrap_err();
        assert!(missing.msg.contains("prevResult"), "{missing}");
    }

    #[test]
    fn cni_args_and_env_are_checked() {
        let env = Env {
            args: Some(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_UID=u1".into(),
            ),
            container_id: Some("../etc".into()),
            ..Env::default()
        };
        let pod = K8sPod::from_args(&env.args().unwrap()).unwrap();
        assert_eq!(pod.to_string(), "ns/web-0");
        assert_eq!(pod.uid.as_deref(), Some("u1"));
        assert!(env.required("CNI_CONTAINERID").is_err());
        assert!(env.required("CNI_NETNS").is_err());
        assert!(Env {
            args: Some("broken".into()),
            ..Env::default()
        }
        .args()
        .is_err());
        assert!(Env::default().command().is_err());
    }
}
