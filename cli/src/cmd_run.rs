//! `merbridge run`: the node agent (what the DaemonSet runs).

use crate::cmd::args::{MeshArgs, TargetArgs};
use clap::Args;
use mb_agent::k8s::node_name;
use mb_agent::mesh::Mesh;
use mb_agent::run::{AgentConfig, OnExit};
use mb_loader::attach::AttachMode;
use mb_loader::datapath::LoadOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// This node's name as the API knows it (default: $NODE_NAME, from the downward API).
    #[arg(long)]
    pub node_name: Option<String>,
    /// A kubeconfig file (its current context unless --context); default: in-cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Where /metrics, /healthz and /readyz are served (none when omitted). deploy/ uses
    /// 0.0.0.0:9476, a port no mesh uses (the agent shares the node's network).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// On SIGTERM: `keep` the data path attached, `unload` it, or `auto`: unload only when
    /// our DaemonSet is gone or being deleted.
    #[arg(long, default_value = "auto")]
    pub on_exit: String,
    /// Namespace of our DaemonSet (default: $POD_NAMESPACE, else the service account's).
    #[arg(long)]
    pub daemonset_namespace: Option<String>,
    /// Name of our DaemonSet (default: $DAEMONSET_NAME). Without it, `--on-exit auto` keeps
    /// the data path attached (a guessed name that is wrong would unload on every upgrade).
    #[arg(long)]
    pub daemonset_name: Option<String>,
    /// Intercept IPv6 too (connect6).
    #[arg(long)]
    pub ipv6: bool,
    /// Send DNS queries (UDP and TCP port 53) of pods that do not say otherwise to the
    /// sidecar's DNS proxy. Pods decide for themselves with ISTIO_META_DNS_CAPTURE in
    /// proxy.istio.io/config (Istio) or kuma.io/builtin-dns (Kuma): the DNS hooks are
    /// attached whenever the mesh has a DNS proxy.
    #[arg(long)]
    pub dns_capture: bool,
    /// Seconds after which the API server ends each pod watch (drawn from [S, 2 S]); a watch
    /// silent for that long plus S/5 is taken as stalled and replaced (logged "watch stalled").
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub watch_timeout: u32,
    /// Seconds between full scans of the host's network namespaces.
    #[arg(long, default_value_t = 30)]
    pub rescan_secs: u64,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// In a pod: the namespace its service account lives in (the DaemonSet's own namespace).
fn service_account_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let level: log::LevelFilter = args.log_level.parse().map_err(|_| {
        format!(
            "--log-level {:?}: use error, warn, info or debug",
            args.log_level
        )
    })?;
    let _ = simplelog::WriteLogger::init(level, simplelog::Config::default(), std::io::stderr());
    let mesh: Mesh = args.mesh.mesh()?;
    let constants = args.mesh.constants()?;
    let node = node_name(args.node_name.as_deref(), env("NODE_NAME").as_deref())
        .map_err(|e| e.to_string())?;
    // Every flag is checked before anything on the host changes (the bpffs mount below).
    let on_exit = args.on_exit.parse::<OnExit>()?;
    let map_sizes = args.target.sizes.sizes()?;
    let cgroup = match &args.target.cgroup {
        Some(p) => p.clone(),
        None => mb_sys::cgroup::cgroup2_root().map_err(|e| e.to_string())?,
    };
    // Hybrid hosts mount cgroup v2 under <cgroup v1 root>/unified; a DaemonSet written for
    // pure v2 hosts passes /sys/fs/cgroup.
    let cgroup = if !mb_sys::cgroup::is_cgroup2(&cgroup)
        && mb_sys::cgroup::is_cgroup2(&cgroup.join("unified"))
    {
        log::info!(
            "{} is not cgroup v2; using {}/unified (hybrid host)",
            cgroup.display(),
            cgroup.display()
        );
        cgroup.join("unified")
    } else {
        cgroup
    };
    if !mb_sys::cgroup::is_cgroup2(&cgroup) {
        return Err(format!(
            "{} is not a cgroup v2 directory: pass --cgroup with a path under the cgroup2 mount",
            cgroup.display()
        ));
    }
    args.target.pin.prepare()?;
    let daemonset = match (
        args.daemonset_namespace
            .or_else(|| env("POD_NAMESPACE"))
            .or_else(service_account_namespace),
        args.daemonset_name.or_else(|| env("DAEMONSET_NAME")),
    ) {
        (Some(ns), Some(name)) => Some((ns, name)),
        _ => None,
    };
    let config = AgentConfig {
        load: LoadOptions {
            cgroup,
            pin_dir: args.target.pin.pin_dir.clone(),
            constants,
            ipv6: args.ipv6,
            dns_capture: args.dns_capture || mesh.defaults().dns_port.is_some(),
            bind4: mesh == Mesh::Linkerd,
            mode: AttachMode::Auto,
            netns_keys: None,
        },
        dns_capture_default: args.dns_capture,
        map_sizes,
        mesh,
        node_name: node,
        kubeconfig: args.kubeconfig,
        context: args.context,
        metrics_addr: args.metrics_addr,
        on_exit,
        daemonset,
        rescan_interval: Duration::from_secs(args.rescan_secs.max(1)),
        retry_interval: Duration::from_secs(2),
        scan_spacing: Duration::from_millis(100),
        watch_timeout_secs: args.watch_timeout,
        // Two scans mark an event-driven process: about a second after its first socket.
        splice_interval: Duration::from_millis(500),
    };
    mb_agent::run::run(config)?;
    Ok(ExitCode::SUCCESS)
}
