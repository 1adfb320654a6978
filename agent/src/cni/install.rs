//! The DaemonSet's install step (as istio-cni's install-cni): put `merbridge-cni` into the
//! node's CNI configuration, chained after the primary plugin, and take it out again.
//!
//! Rules that keep the node able to create pods:
//! - the binary is copied into the CNI bin dir (temp + rename) *before* any config names it;
//! - the config the runtime uses (the first `*.conf`, `*.conflist`, `*.json` by name, as
//!   libcni picks it) is rewritten atomically (temp + rename), only when it differs from what
//!   it should be: a second install is a no-op, so two installers never fight in a loop;
//! - a primary plugin that rewrites its config drops our entry; the next install (the watch
//!   loop) puts it back;
//! - uninstall removes only our entry (the binary stays until asked), so a config never
//!   names a missing binary.
//!
//! The plugin itself lets non-meshed pods through even without maps (see `plugin`).

use super::config::PLUGIN_TYPE;
use super::state::write_atomically;
use base64::Engine;
use serde_json::{Map, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// Where the runtime finds plugins and configs, as seen by the installer (host paths mounted
/// into the DaemonSet pod).
#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub conf_dir: PathBuf,
    /// Copy the running binary here as `merbridge-cni` (skipped when `None`).
    pub bin_dir: Option<PathBuf>,
    /// The binary to copy (default: this executable).
    pub binary: Option<PathBuf>,
    /// merbridge's conflist entry (`type` is set to `merbridge-cni`).
    pub plugin: Map<String, Value>,
}

/// What an install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Our entry was added (or replaced) in this file.
    Written(PathBuf),
    /// Already there as it should be: nothing written.
    Unchanged(PathBuf),
}

const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// The config file the runtime uses: the first by name with a CNI extension.
pub fn primary_config(conf_dir: &Path) -> Result<Option<PathBuf>, String> {
    let entries = fs::read_dir(conf_dir)
        .map_err(|e| format!("cannot read the CNI config dir {}: {e}", conf_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        format!(
            "{} is not valid JSON ({e}): fix or remove it; merbridge leaves it alone",
            path.display()
        )
    })
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The conflist `config` should be: ours removed, then appended last.
fn with_plugin(config: &Value, plugin: &Map<String, Value>, path: &Path) -> Result<Value, String> {
    let mut list = config.clone();
    let obj = list
        .as_object_mut()
        .ok_or_else(|| format!("{} is not a JSON object", path.display()))?;
    if !obj.contains_key("plugins") {
        // A single-plugin .conf: becomes a list of that plugin.
        let mut single = obj.clone();
        let mut conflist = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = single.remove(key) {
                conflist.insert(key.into(), v);
            }
        }
        conflist.insert("plugins".into(), Value::Array(vec![Value::Object(single)]));
        *obj = conflist;
    }
    let plugins = obj
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("{}: \"plugins\" is not a list", path.display()))?;
    plugins.retain(|p| !is_ours(p));
    if plugins.is_empty() {
        return Err(format!(
            "{} has no plugin to chain after; install the primary network plugin first",
            path.display()
        ));
    }
    let mut ours = plugin.clone();
    ours.insert("type".into(), Value::String(PLUGIN_TYPE.into()));
    plugins.push(Value::Object(ours));
    Ok(list)
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Copies the binary into the bin dir unless the same bytes are there already.
fn install_binary(bin_dir: &Path, source: Option<&Path>) -> Result<(), String> {
    let source = match source {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
    };
    let bytes = fs::read(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    if fs::read(&target).ok().as_deref() == Some(&bytes[..]) {
        return Ok(());
    }
    write_atomically(&target, &bytes, true).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", target.display()))
}

/// Inserts (or re-inserts) merbridge into the node's primary CNI config.
pub fn install(options: &InstallOptions) -> Result<Installed, String> {
    if let Some(bin_dir) = &options.bin_dir {
        install_binary(bin_dir, options.binary.as_deref())?;
    }
    let path = primary_config(&options.conf_dir)?.ok_or_else(|| {
        format!(
            "no CNI config in {} yet: waiting for the primary network plugin to write one",
            options.conf_dir.display()
        )
    })?;
    let config = read_json(&path)?;
    let wanted = with_plugin(&config, &options.plugin, &path)?;
    let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    if is_list && wanted == config {
        return Ok(Installed::Unchanged(path));
    }
    if is_list {
        write_atomically(&path, &pretty(&wanted), true).map_err(|e| e.to_string())?;
        return Ok(Installed::Written(path));
    }
    // A .conf/.json cannot hold a list: write `<name>.conflist`, then remove the single
    // config (it would sort first and win).
    let list_path = path.with_extension("conflist");
    write_atomically(&list_path, &pretty(&wanted), true).map_err(|e| e.to_string())?;
    fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
    Ok(Installed::Written(list_path))
}

/// Removes merbridge from every CNI config in `conf_dir`. Returns the files changed.
pub fn uninstall(conf_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut changed = Vec::new();
    let entries = fs::read_dir(conf_dir)
        .map_err(|e| format!("cannot read the CNI config dir {}: {e}", conf_dir.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let Ok(mut config) = read_json(&path) else {
            continue;
        };
        let Some(plugins) = config.get_mut("plugins").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        if plugins.len() != before {
            write_atomically(&path, &pretty(&config), true).map_err(|e| e.to_string())?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// A kubeconfig for the plugin from the DaemonSet pod's service account (server from
/// `KUBERNETES_SERVICE_HOST`/`_PORT`, token and CA inlined), as istio-cni writes one. The
/// watch loop rewrites it when the projected token rotates.
pub fn service_account_kubeconfig(server: &str, token: &str, ca_pem: &[u8]) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: merbridge-cni\n  user:\n    token: {token}\n\
         contexts:\n- name: merbridge-cni\n  context:\n    cluster: local\n    user: merbridge-cni\n\
         current-context: merbridge-cni\n"
    )
}

/// Writes `text` to `path` (mode 0600) unless it is already there.
pub fn write_private_file(path: &Path, text: &str) -> Result<bool, String> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    write_atomically(path, text.as_bytes(), true).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::config::Auth;
    use crate::k8s::ClientConfig;

    /// The kubeconfig the install step writes is one the plugin's client loads: server, CA
    /// and token as given.
    #[test]
    fn service_account_kubeconfig_loads_in_our_client() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().pem();
        let text = service_account_kubeconfig("https://[fd00::1]:443", "tok-123", ca.as_bytes());
        let config = ClientConfig::from_kubeconfig_text(&text, Path::new("/"), None, "test")
            .unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(config.endpoint.host, "fd00::1");
        assert_eq!(config.endpoint.port, 443);
        assert!(config.endpoint.tls.is_some());
        assert!(matches!(&config.auth, Auth::Token(t) if t == "tok-123"));
    }

    #[test]
    fn with_plugin_appends_once_and_keeps_the_primary() {
        let ours: Map<String, Value> =
            serde_json::from_str(r#"{"mesh":"istio","pinDir":"/p"}"#).unwrap();
        let list: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"calico"},{"type":"merbridge-cni","mesh":"old"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let out = with_plugin(&list, &ours, Path::new("x.conflist")).unwrap();
        let types: Vec<&str> = out["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["calico", "portmap", "merbridge-cni"]);
        assert_eq!(out["plugins"][2]["mesh"], "istio");
        assert_eq!(with_plugin(&out, &ours, Path::new("x")).unwrap(), out);
        let empty: Value = serde_json::from_str(r#"{"plugins":[]}"#).unwrap();
        assert!(with_plugin(&empty, &ours, Path::new("e.conflist"))
            .unwrap_err()
            .contains("no plugin to chain after"));
    }
}
