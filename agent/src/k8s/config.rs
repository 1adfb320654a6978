//! How to reach the API server: in-cluster (service env vars, service-account token and CA)
//! or a kubeconfig file (current or named context; token, token file, client certificate, CA).

use super::http::Endpoint;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the service-account files are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A configuration problem, in words that say what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn fail<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError(message))
}

/// How requests authenticate (client certificates live in the TLS config instead).
pub enum Auth {
    None,
    Token(String),
    /// Re-read from disk when older than `max_age` and right after a 401, because the kubelet
    /// rotates projected service-account tokens.
    TokenFile(TokenFile),
}

pub struct TokenFile {
    path: PathBuf,
    max_age: Duration,
    /// The token, when it was read, and whether a 401 made it suspect.
    cached: Mutex<Option<(String, Instant, bool)>>,
}

impl TokenFile {
    pub fn new(path: PathBuf, max_age: Duration) -> TokenFile {
        TokenFile {
            path,
            max_age,
            cached: Mutex::new(None),
        }
    }

    fn read(&self) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            ConfigError(format!(
                "cannot read the API token {}: {e}",
                self.path.display()
            ))
        })?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return fail(format!(
                "the API token file {} is empty",
                self.path.display()
            ));
        }
        Ok(token)
    }

    /// The current token: cached, or re-read when stale; a failed re-read keeps the old one.
    pub fn token(&self) -> Result<String, ConfigError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, read_at, suspect)) = cached.as_ref() {
            if !suspect && read_at.elapsed() < self.max_age {
                return Ok(token.clone());
            }
        }
        match self.read() {
            Ok(token) => {
                *cached = Some((token.clone(), Instant::now(), false));
                Ok(token)
            }
            Err(e) => match cached.as_ref() {
                Some((old, _, _)) => {
                    log::warn!("{e}; keeping the previous token");
                    Ok(old.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Forces a re-read at the next request (after a 401).
    pub fn invalidate(&self) {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, suspect)) = cached.as_mut() {
            // Re-read next time; the token stays as a fallback if the read fails.
            *suspect = true;
        }
    }
}

impl Auth {
    /// The bearer token to send, if any.
    pub fn bearer(&self) -> Result<Option<String>, ConfigError> {
        match self {
            Auth::None => Ok(None),
            Auth::Token(token) => Ok(Some(token.clone())),
            Auth::TokenFile(file) => file.token().map(Some),
        }
    }

    /// After a 401: make the next request read the token again.
    pub fn invalidate(&self) {
        if let Auth::TokenFile(file) = self {
            file.invalidate();
        }
    }
}

/// Everything needed to talk to one API server.
pub struct ClientConfig {
    pub endpoint: Endpoint,
    pub auth: Auth,
    /// Where the configuration came from, for messages.
    pub source: String,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (from {})", self.endpoint, self.source)
    }
}

/// Token re-read interval (client-go re-reads a token file after about a minute).
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| ConfigError(format!("{what}: not valid PEM: {e}")))?;
    if certs.is_empty() {
        return fail(format!("{what}: no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Builds a rustls client config that trusts the PEM CA bundle `ca_pem` and optionally
/// presents a client certificate.
pub fn tls_config(
    ca_pem: &[u8],
    ca_what: &str,
    client: Option<(&[u8], &[u8], &str)>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_pem_certs(ca_pem, ca_what)? {
        roots
            .add(cert)
            .map_err(|e| ConfigError(format!("{ca_what}: unusable CA certificate: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(super::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem, what)) => {
            let chain = parse_pem_certs(cert_pem, what)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| ConfigError(format!("{what}: no usable private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConfigError(format!("{what}: client certificate rejected: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

impl ClientConfig {
    /// In-cluster configuration from the environment and the service-account mount.
    pub fn in_cluster() -> Result<ClientConfig, ConfigError> {
        ClientConfig::in_cluster_from(
            std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    /// In-cluster configuration with explicit inputs (for tests and overrides).
    pub fn in_cluster_from(
        host: Option<&str>,
        port: Option<&str>,
        account_dir: &Path,
    ) -> Result<ClientConfig, ConfigError> {
        let (host, port) = match (
            host.filter(|h| !h.is_empty()),
            port.filter(|p| !p.is_empty()),
        ) {
            (Some(h), Some(p)) => (h, p),
            _ => return fail(
                "not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT \
                     are not both set; pass --kubeconfig FILE"
                    .into(),
            ),
        };
        let port: u16 = port.parse().map_err(|_| {
            ConfigError(format!(
                "KUBERNETES_SERVICE_PORT={port:?} is not a port number"
            ))
        })?;
        let ca_path = account_dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|e| {
            ConfigError(format!(
                "cannot read the cluster CA {}: {e} (is the service-account token mounted?)",
                ca_path.display()
            ))
        })?;
        let tls = tls_config(&ca, &ca_path.display().to_string(), None)?;
        let token = TokenFile::new(account_dir.join("token"), TOKEN_MAX_AGE);
        token.token()?;
        Ok(ClientConfig {
            endpoint: Endpoint {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
                base_path: String::new(),
                tls: Some(tls),
                server_name: None,
                connect_timeout: CONNECT_TIMEOUT,
            },
            auth: Auth::TokenFile(token),
            source: "in-cluster service account".into(),
        })
    }

    /// Configuration from a kubeconfig file: `context` or else its `current-context`.
    pub fn from_kubeconfig(
        path: &Path,
        context: Option<&str>,
    ) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read kubeconfig {}: {e}", path.display())))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let what = format!("kubeconfig {}", path.display());
        ClientConfig::from_kubeconfig_text(&text, base_dir, context, &what)
    }

    /// Parses kubeconfig text; relative file paths are resolved against `base_dir`.
    pub fn from_kubeconfig_text(
        text: &str,
        base_dir: &Path,
        context: Option<&str>,
        what: &str,
    ) -> Result<ClientConfig, ConfigError> {
        let config: KubeConfig = serde_norway::from_str(text)
            .map_err(|e| ConfigError(format!("{what} is not a valid kubeconfig: {e}")))?;
        let context_name = match context.or(config.current_context.as_deref()) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => {
                return fail(format!(
                    "{what} has no current-context; pass a context name"
                ))
            }
        };
        let context = config
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .map(|c| &c.context)
            .ok_or_else(|| ConfigError(format!("{what} has no context {context_name:?}")))?;
        let cluster = config
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .map(|c| &c.cluster)
            .ok_or_else(|| {
                ConfigError(format!(
                    "{what}: context {context_name:?} names cluster {:?}, which is not defined",
                    context.cluster
                ))
            })?;
        let empty_user = KubeUser::default();
        let user = match context.user.as_deref() {
            None | Some("") => &empty_user,
            Some(name) => config
                .users
                .iter()
                .find(|u| u.name == name)
                .map(|u| &u.user)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{what}: context {context_name:?} names user {name:?}, which is not defined"
                    ))
                })?,
        };
        let resolve = |file: &str| -> PathBuf {
            let p = Path::new(file);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let load = |data: &Option<String>,
                    file: &Option<String>,
                    field: &str|
         -> Result<Option<Vec<u8>>, ConfigError> {
            if let Some(data) = data.as_deref().filter(|d| !d.is_empty()) {
                let cleaned: String = data.chars().filter(|c| !c.is_whitespace()).collect();
                return base64::engine::general_purpose::STANDARD
                    .decode(cleaned)
                    .map(Some)
                    .map_err(|e| ConfigError(format!("{what}: {field}-data is not base64: {e}")));
            }
            if let Some(file) = file.as_deref().filter(|f| !f.is_empty()) {
                let path = resolve(file);
                return std::fs::read(&path).map(Some).map_err(|e| {
                    ConfigError(format!(
                        "{what}: cannot read {field} {}: {e}",
                        path.display()
                    ))
                });
            }
            Ok(None)
        };

        if user.exec.is_some() || user.auth_provider.is_some() {
            return fail(format!(
                "{what}: user of context {context_name:?} uses an exec/auth-provider plugin, \
                 which merbridge does not run; use a token, tokenFile or client certificate"
            ));
        }
        if user.username.is_some() || user.password.is_some() {
            return fail(format!(
                "{what}: basic auth (username/password) is not supported; use a token or client certificate"
            ));
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return fail(format!(
                "{what}: insecure-skip-tls-verify is not supported; give the cluster's \
                 certificate-authority instead"
            ));
        }

        let (https, host, port, base_path) = parse_server(&cluster.server, what)?;
        let tls = if https {
            let ca = load(
                &cluster.certificate_authority_data,
                &cluster.certificate_authority,
                "certificate-authority",
            )?
            .ok_or_else(|| {
                ConfigError(format!(
                    "{what}: cluster {:?} has no certificate-authority(-data); merbridge does not \
                     use system roots for the API server",
                    context.cluster
                ))
            })?;
            let cert = load(
                &user.client_certificate_data,
                &user.client_certificate,
                "client-certificate",
            )?;
            let key = load(&user.client_key_data, &user.client_key, "client-key")?;
            let client = match (&cert, &key) {
                (Some(c), Some(k)) => Some((c.as_slice(), k.as_slice(), what)),
                (None, None) => None,
                _ => {
                    return fail(format!(
                        "{what}: a client certificate needs both client-certificate and client-key"
                    ))
                }
            };
            Some(tls_config(
                &ca,
                &format!("{what}: certificate-authority"),
                client,
            )?)
        } else {
            None
        };
        let auth = if let Some(token) = user.token.as_deref().filter(|t| !t.is_empty()) {
            Auth::Token(token.trim().to_string())
        } else if let Some(file) = user.token_file.as_deref().filter(|t| !t.is_empty()) {
            let token = TokenFile::new(resolve(file), TOKEN_MAX_AGE);
            token.token()?;
            Auth::TokenFile(token)
        } else {
            Auth::None
        };
        Ok(ClientConfig {
            endpoint: Endpoint {
                host,
                port,
                base_path,
                tls,
                server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
                connect_timeout: CONNECT_TIMEOUT,
            },
            auth,
            source: format!("{what}, context {context_name:?}"),
        })
    }

    /// The configuration `merbridge run` uses: `--kubeconfig FILE` (with `--context`, else
    /// its current context); without it, in-cluster. Never `~/.kube/config` implicitly: a
    /// node agent that silently used an admin's kubeconfig would be surprising.
    pub fn load(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<ClientConfig, ConfigError> {
        match kubeconfig {
            Some(path) => ClientConfig::from_kubeconfig(path, context),
            None if context.is_some() => fail(
                "a kube context was given without --kubeconfig; pass --kubeconfig FILE too".into(),
            ),
            None => ClientConfig::in_cluster(),
        }
    }

    /// Replaces a token file's re-read interval (tests use a short one).
    pub fn set_token_max_age(&mut self, max_age: Duration) {
        if let Auth::TokenFile(file) = &mut self.auth {
            file.max_age = max_age;
        }
    }
}

/// The node whose pods to watch: `--node-name`, else `$NODE_NAME` (set from the downward
/// API `spec.nodeName` in the DaemonSet). Never the host name: the Node object's name may
/// differ from it (kubelet `--hostname-override`, cloud naming).
pub fn node_name(flag: Option<&str>, env: Option<&str>) -> Result<String, ConfigError> {
    match flag.or(env).map(str::trim) {
        Some(name) if !name.is_empty() => {
            if name.contains(|c: char| c.is_whitespace() || c == ',' || c == '=') {
                return fail(format!(
                    "node name {name:?} is not a Kubernetes object name (it contains a space, ',' or '=')"
                ));
            }
            Ok(name.to_string())
        }
        _ => fail(
            "no node name: pass --node-name NAME or set NODE_NAME (in a DaemonSet: env NODE_NAME \
             from fieldRef spec.nodeName)"
                .into(),
        ),
    }
}

/// Splits `https://host:port/prefix` into parts.
fn parse_server(server: &str, what: &str) -> Result<(bool, String, u16, String), ConfigError> {
    let (https, rest) = if let Some(rest) = server.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = server.strip_prefix("http://") {
        (false, rest)
    } else {
        return fail(format!(
            "{what}: server {server:?} must start with https:// or http://"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| ConfigError(format!("{what}: server {server:?}: unclosed '['")))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok(),
            None if after.is_empty() => Some(default_port),
            None => None,
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()),
            None => (authority.to_string(), Some(default_port)),
        }
    };
    let port = port.ok_or_else(|| ConfigError(format!("{what}: server {server:?}: bad port")))?;
    if host.is_empty() {
        return fail(format!("{what}: server {server:?} has no host"));
    }
    Ok((https, host, port, path.to_string()))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeConfig {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: KubeCluster,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: Option<bool>,
    #[serde(default)]
    tls_server_name: Option<String>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: KubeContext,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: KubeUser,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeUser {
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    client_key_data: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    exec: Option<serde_norway::Value>,
    #[serde(default)]
    auth_provider: Option<serde_norway::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let p = |s| parse_server(s, "t");
        assert_eq!(
            p("https://10.0.0.1:6443").unwrap(),
            (true, "10.0.0.1".into(), 6443, String::new())
        );
        assert_eq!(
            p("https://[fd00::1]/k8s/").unwrap(),
            (true, "fd00::1".into(), 443, "/k8s".into())
        );
        assert_eq!(
            p("http://localhost:8001").unwrap(),
            (false, "localhost".into(), 8001, String::new())
        );
        assert!(p("ftp://x").is_err());
        assert!(p("https://x:notaport").is_err());
    }

    #[test]
    fn kubeconfig_errors_name_the_problem() {
        let dir = Path::new("/nonexistent");
        let err = |text: &str| {
            ClientConfig::from_kubeconfig_text(text, dir, None, "kc")
                .err()
                .unwrap()
                .0
        };
        assert!(err("current-context: a\ncontexts: []\n").contains("no context \"a\""));
        assert!(err(
            "current-context: a\ncontexts: [{name: a, context: {cluster: c, user: u}}]\nclusters: [{name: c, cluster: {server: 'http://h:1'}}]\nusers: [{name: u, user: {exec: {command: x}}}]\n"
        )
        .contains("exec"));
        assert!(err(
            "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: 'https://h:1'}}]\n"
        )
        .contains("certificate-authority"));
        assert!(err("- not a map").contains("not a valid kubeconfig"));
    }

    #[test]
    fn plain_http_kubeconfig_with_token() {
        let config = ClientConfig::from_kubeconfig_text(
            "current-context: a\ncontexts: [{name: a, context: {cluster: c, user: u}}]\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:8001'}}]\nusers: [{name: u, user: {token: abc}}]\n",
            Path::new("/"),
            None,
            "kc",
        )
        .unwrap();
        assert_eq!(config.endpoint.port, 8001);
        assert!(config.endpoint.tls.is_none());
        assert_eq!(config.auth.bearer().unwrap().as_deref(), Some("abc"));
    }

    #[test]
    fn node_name_from_flag_then_env_never_hostname() {
        assert_eq!(node_name(Some("n1"), Some("n2")).unwrap(), "n1");
        assert_eq!(node_name(None, Some(" n2 ")).unwrap(), "n2");
        assert!(node_name(None, None).unwrap_err().0.contains("NODE_NAME"));
        assert!(node_name(Some(""), None).is_err());
        assert!(node_name(Some("a,b"), None).is_err());
        assert!(ClientConfig::load(None, Some("ctx"))
            .unwrap_err()
            .0
            .contains("--kubeconfig"));
    }

    #[test]
    fn in_cluster_requires_env() {
        let e = ClientConfig::in_cluster_from(None, Some("443"), Path::new("/x"))
            .err()
            .unwrap();
        assert!(e.0.contains("KUBERNETES_SERVICE_HOST"));
    }
}
