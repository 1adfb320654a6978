//! The setups the `run_*` tests share: private pins unloaded on drop, the agent's options,
//! and a test-bed node with two meshed pods (client and server, the reference sidecar in each,
//! the app in the server) listed by a fake API server.

use super::{wait_until, Agent, AgentOptions};
use crate::k8s_support::server::FakeApiServer;
use crate::k8s_support::{fixture_pod_value, synthesize_running, TempDir};
use mb_agent::pods::PodMaps;
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::cgroup::OwnedCgroup;
use mb_testbed::scenarios::{start_app, Binaries};
use mb_testbed::{Node, Pod, PodSpec, Sidecar, Spawned};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A private bpffs for the agent's pins. On drop (also when the test fails) whatever is
/// still pinned there is unloaded and detached from `cgroup`, then the bpffs goes.
pub struct PrivatePins {
    pub pin_dir: PathBuf,
    cgroup: PathBuf,
    bpffs: PrivateBpffs,
}

impl PrivatePins {
    /// Pins in `merbridge/` of a fresh private bpffs.
    pub fn new(prefix: &str, cgroup: &Path) -> PrivatePins {
        PrivatePins::in_subdir(prefix, cgroup, "merbridge")
    }

    /// Pins in `subdir` of a fresh private bpffs.
    pub fn in_subdir(prefix: &str, cgroup: &Path, subdir: &str) -> PrivatePins {
        let bpffs = PrivateBpffs::new(prefix).expect("private bpffs");
        PrivatePins {
            pin_dir: bpffs.path().join(subdir),
            cgroup: cgroup.to_path_buf(),
            bpffs,
        }
    }

    /// The private bpffs mount the pin directory is in.
    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }
}

impl Drop for PrivatePins {
    fn drop(&mut self) {
        let _ = mb_loader::datapath::unload_datapath(&self.pin_dir, Some(&self.cgroup));
    }
}

impl<'a> AgentOptions<'a> {
    /// Options for an agent on node `node` that asks `api` (a kubeconfig and the log go to
    /// `dir`), attaches to `cgroup` and pins under `pin_dir`, with `extra` flags.
    pub fn new(
        api: &'a FakeApiServer,
        dir: &'a TempDir,
        node: &'a str,
        cgroup: &'a Path,
        pin_dir: &'a Path,
        extra: &'a [&'a str],
    ) -> AgentOptions<'a> {
        AgentOptions {
            api,
            dir: &dir.0,
            node,
            cgroup,
            pin_dir,
            extra,
        }
    }
}

/// What an agent test without test-bed pods needs: a private cgroup (`mb-test-NAME`), private
/// pins (`mb-NAME`), a fake API server and a scratch directory. Fields drop in declaration
/// order: the API first, the pins (unloaded) before the cgroup they are attached to.
pub struct AgentBed {
    pub api: FakeApiServer,
    pub dir: TempDir,
    pub pins: PrivatePins,
    pub cgroup: OwnedCgroup,
}

impl AgentBed {
    pub fn new(name: &str) -> AgentBed {
        let cgroup = OwnedCgroup::create_private(&format!("mb-test-{name}")).expect("cgroup");
        let pins = PrivatePins::new(&format!("mb-{name}"), cgroup.path());
        AgentBed {
            api: FakeApiServer::start(None),
            dir: TempDir::new(name),
            pins,
            cgroup,
        }
    }

    /// Options for an agent on node `node` with `extra` flags.
    pub fn agent_options<'a>(&'a self, node: &'a str, extra: &'a [&'a str]) -> AgentOptions<'a> {
        AgentOptions::new(
            &self.api,
            &self.dir,
            node,
            self.cgroup.path(),
            &self.pins.pin_dir,
            extra,
        )
    }
}

/// The injected Istio fixture pod, made a running pod of `node_name` with `pod`'s addresses.
pub fn api_pod(pod: &Pod, uid: &str, node_name: &str) -> serde_json::Value {
    let template = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let v4 = pod.ipv4().to_string();
    let v6 = pod.ipv6().to_string();
    synthesize_running(template, uid, node_name, &[&v4, &v6], "1")
}

/// A test-bed node with a client and a server pod, each with the reference sidecar, the app
/// in the server, and a fake API server listing both (uids `uid-client`, `uid-server`).
/// Fields drop in declaration order: API and processes first, the pins (unloaded) before the
/// node that owns the cgroup.
pub struct TwoPodNode {
    pub dir: TempDir,
    pub api: FakeApiServer,
    _app: Spawned,
    pub server_sidecar: Sidecar,
    pub client_sidecar: Sidecar,
    pub server: Pod,
    pub client: Pod,
    pub pins: PrivatePins,
    pub node: Node,
    pub bins: Binaries,
    pub node_name: &'static str,
}

impl TwoPodNode {
    /// `name` names the test-bed node, the bpffs and the scratch directory; `v6_tag` keeps
    /// the pods' IPv6 addresses apart from other tests'.
    pub fn start(name: &str, node_name: &'static str, v6_tag: u16) -> TwoPodNode {
        let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
        let node = Node::new(name).expect("node");
        let pins = PrivatePins::new(&format!("mb-{name}"), node.cgroup_path());
        // Test beds of other processes reuse the same IPv4 subnets; an IPv6 address unique
        // to this process tells the agent's scanner which namespace is ours (as pod IPs do
        // on a real node).
        let unique_pod = |name: &str, host: u16| {
            let mut spec = PodSpec::named(name);
            spec.ipv6 = Some(node.process_unique_v6(v6_tag, host));
            node.add_pod(spec).expect("pod")
        };
        let client = unique_pod("client", 2);
        let server = unique_pod("server", 3);
        let sidecar = |pod: &Pod| Sidecar::start_istio(&bins.sidecar, pod).expect("sidecar");
        let client_sidecar = sidecar(&client);
        let server_sidecar = sidecar(&server);
        let app = start_app(&server, &bins).expect("app");
        let api = FakeApiServer::start(None);
        api.add_pod(api_pod(&client, "uid-client", node_name));
        api.add_pod(api_pod(&server, "uid-server", node_name));
        TwoPodNode {
            dir: TempDir::new(name),
            api,
            _app: app,
            server_sidecar,
            client_sidecar,
            server,
            client,
            pins,
            node,
            bins,
            node_name,
        }
    }

    /// Options for an agent of this node with `extra` flags.
    pub fn agent_options<'a>(&'a self, extra: &'a [&'a str]) -> AgentOptions<'a> {
        AgentOptions::new(
            &self.api,
            &self.dir,
            self.node_name,
            self.node.cgroup_path(),
            &self.pins.pin_dir,
            extra,
        )
    }

    /// Waits until both pods are in the maps, each with the namespace the agent's scanner
    /// found; panics with the agent's log otherwise.
    pub fn wait_for_both_pods(&self, agent: &Agent) -> PodMaps {
        let maps = PodMaps::open(&self.pins.pin_dir).expect("maps");
        for pod in [&self.client, &self.server] {
            let cookie = pod.netns_cookie().unwrap();
            wait_until(Duration::from_secs(10), "pod namespace found", || {
                maps.find(pod.ipv4().into())
                    .unwrap()
                    .is_some_and(|e| e.netns == cookie)
            })
            .unwrap_or_else(|e| panic!("{e} for {}; agent log:\n{}", pod.name(), agent.log()));
        }
        maps
    }
}
