//! `merbridge cni` (the chained CNI plugin; also chosen when the binary runs as
//! `merbridge-cni`), `merbridge cni install|uninstall` (the DaemonSet's install step) and
//! `merbridge validate` (the init-container check). Logic in `mb_agent::cni`.

use clap::{Args, Subcommand};
use mb_agent::cni::install::{
    install, primary_config, service_account_kubeconfig, uninstall, write_private_file,
    InstallOptions, Installed,
};
use mb_agent::cni::validate::{validate, ValidateOptions, DEFAULT_TARGET};
use mb_agent::cni::{run_plugin, Env};
use mb_agent::mesh::Mesh;
use nix::sys::signal::{SigSet, Signal};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum CniCommand {
    /// Insert merbridge-cni into the node's CNI config, chained after the primary plugin.
    Install(InstallArgs),
    /// Remove merbridge-cni from the node's CNI configs.
    Uninstall(UninstallArgs),
}

#[derive(Args)]
pub struct InstallArgs {
    /// The node's CNI config dir, as mounted here.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The same dir as the runtime on the node sees it (paths written into the config).
    #[arg(long)]
    pub host_conf_dir: Option<PathBuf>,
    /// Copy this binary into the node's CNI bin dir (as mounted here) as `merbridge-cni`.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long, default_value = "istio")]
    pub mesh: String,
    /// Where the data path's pins are (host path).
    #[arg(long, default_value = mb_agent::cni::config::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Where the plugin keeps its per-sandbox records (host path).
    #[arg(long, default_value = mb_agent::cni::config::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Host path of a kubeconfig for the plugin; with --write-kubeconfig it is written (into
    /// --conf-dir) from this pod's service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Write the kubeconfig from the service account (KUBERNETES_SERVICE_HOST/PORT, token, CA).
    #[arg(long)]
    pub write_kubeconfig: bool,
    /// Namespaces whose pods are never meshed (no API call at ADD). Repeatable.
    #[arg(long = "exclude-namespace", default_values_t = ["kube-system".to_string()])]
    pub exclude_namespaces: Vec<String>,
    /// Meshed pods' UDP DNS to the sidecar (as `merbridge run --dns-capture`).
    #[arg(long)]
    pub dns_capture: bool,
    /// Keep the entry in place: re-check every N seconds until SIGTERM, then uninstall.
    #[arg(long)]
    pub watch_secs: Option<u64>,
}

#[derive(Args)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// Also remove `merbridge-cni` from this bin dir (after the configs no longer name it).
    #[arg(long)]
    pub remove_binary_from: Option<PathBuf>,
}

#[derive(Args)]
pub struct ValidateArgs {
    #[arg(long, default_value = "istio")]
    pub mesh: String,
    /// The sidecar's outbound port (default: the mesh's).
    #[arg(long)]
    pub outbound_port: Option<u16>,
    /// Where the test connection goes (never reached when interception works).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: std::net::SocketAddr,
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Plugin mode: CNI_* from the environment, config on stdin, result or error JSON on stdout.
pub fn run_plugin_mode() -> ExitCode {
    let mut stdin = Vec::new();
    let env = Env::from_process();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = run_plugin(&env, &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.exit_code != 0 {
        eprintln!("merbridge-cni: {}", outcome.stdout);
    }
    ExitCode::from(outcome.exit_code)
}

fn plugin_entry(
    args: &InstallArgs,
    kubeconfig: Option<&PathBuf>,
) -> Result<Map<String, Value>, String> {
    let mesh: Mesh = args.mesh.parse()?;
    let mut entry = json!({
        "type": mb_agent::cni::config::PLUGIN_TYPE,
        "mesh": mesh.name(),
        "pinDir": args.pin_dir,
        "stateDir": args.state_dir,
        "excludeNamespaces": args.exclude_namespaces,
        "dnsCapture": args.dns_capture,
    });
    if let Some(k) = kubeconfig {
        entry["kubeconfig"] = json!(k);
    }
    Ok(entry.as_object().cloned().unwrap_or_default())
}

const KUBECONFIG_NAME: &str = "merbridge-cni.kubeconfig";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn refresh_kubeconfig(args: &InstallArgs) -> Result<Option<PathBuf>, String> {
    if !args.write_kubeconfig {
        return Ok(args.kubeconfig.clone());
    }
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| "--write-kubeconfig: KUBERNETES_SERVICE_HOST is not set (run in a pod)")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let token = std::fs::read_to_string(format!("{SA_DIR}/token"))
        .map_err(|e| format!("service account token: {e}"))?;
    let ca = std::fs::read(format!("{SA_DIR}/ca.crt"))
        .map_err(|e| format!("service account CA: {e}"))?;
    let text = service_account_kubeconfig(&format!("https://{host}:{port}"), token.trim(), &ca);
    write_private_file(&args.conf_dir.join(KUBECONFIG_NAME), &text)?;
    let host_dir = args
        .host_conf_dir
        .clone()
        .unwrap_or_else(|| args.conf_dir.clone());
    Ok(Some(
        args.kubeconfig
            .clone()
            .unwrap_or_else(|| host_dir.join(KUBECONFIG_NAME)),
    ))
}

fn install_once(args: &InstallArgs) -> Result<Installed, String> {
    let kubeconfig = refresh_kubeconfig(args)?;
    install(&InstallOptions {
        conf_dir: args.conf_dir.clone(),
        bin_dir: args.bin_dir.clone(),
        binary: None,
        plugin: plugin_entry(args, kubeconfig.as_ref())?,
    })
}

fn report(result: &Result<Installed, String>) {
    match result {
        Ok(Installed::Written(p)) => println!("merbridge-cni inserted into {}", p.display()),
        Ok(Installed::Unchanged(p)) => log::debug!("{} already chains merbridge-cni", p.display()),
        Err(e) => eprintln!("merbridge cni install: {e}"),
    }
}

pub fn run(command: CniCommand) -> Result<ExitCode, String> {
    match command {
        CniCommand::Install(args) => {
            let Some(secs) = args.watch_secs else {
                let result = install_once(&args);
                report(&result);
                return result.map(|_| ExitCode::SUCCESS);
            };
            // Block the signals before any thread exists; one thread waits for them.
            let mut signals = SigSet::empty();
            signals.add(Signal::SIGTERM);
            signals.add(Signal::SIGINT);
            signals
                .thread_block()
                .map_err(|e| format!("cannot block SIGTERM/SIGINT: {e}"))?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(signals.wait());
            });
            loop {
                // A missing primary config is normal at node start: keep waiting.
                report(&install_once(&args));
                if rx.recv_timeout(Duration::from_secs(secs.max(1))).is_ok() {
                    let changed = uninstall(&args.conf_dir)?;
                    for p in changed {
                        println!("merbridge-cni removed from {}", p.display());
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        CniCommand::Uninstall(args) => {
            let changed = uninstall(&args.conf_dir)?;
            for p in &changed {
                println!("merbridge-cni removed from {}", p.display());
            }
            if changed.is_empty() {
                println!(
                    "no CNI config in {} names merbridge-cni",
                    args.conf_dir.display()
                );
            }
            let _ = std::fs::remove_file(args.conf_dir.join(KUBECONFIG_NAME));
            if let Some(bin_dir) = args.remove_binary_from {
                let target = bin_dir.join(mb_agent::cni::config::PLUGIN_TYPE);
                match std::fs::remove_file(&target) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(format!("remove {}: {e}", target.display()))
                    }
                    _ => {}
                }
            }
            let _ = primary_config(&args.conf_dir);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run_validate(args: ValidateArgs) -> Result<ExitCode, String> {
    let mesh: Mesh = args.mesh.parse()?;
    let options = ValidateOptions {
        outbound_port: args.outbound_port.unwrap_or(mesh.defaults().outbound_port),
        target: args.target,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let line = validate(&options)?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
