//! `merbridge cni` end to end, as root, with no agent running: the REAL reference plugins of
//! Debian's containernetworking-plugins (`bridge` with `host-local` IPAM, in /usr/lib/cni)
//! and then merbridge-cni (this binary under that name) are run the way a container runtime
//! runs a chain — `CNI_*` variables, the config on stdin, each plugin's result passed on as
//! `prevResult`; merbridge's entry is the one `merbridge cni install` wrote into a conflist
//! whose primary plugin is that bridge. Everything lives in what the test makes: a "host" network namespace (the
//! bridge `mbcni0` and its private subnet are created there by the bridge plugin), one
//! namespace per sandbox, a private cgroup with the data path attached, a private bpffs and
//! a temp dir for IPAM data, state and kubeconfig. A fake API server on loopback answers the
//! plugin's pod GET (the fixture is the injected Istio pod with SYNTHETIC uid and name).
//!
//! The application's first connection is checked with `merbridge validate` started in the
//! sandbox right after ADD, the first inbound one from the node. CNI 1.1's STATUS and GC run
//! on a 1.1.0 config.

mod common;
#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use common::{Agent, AgentOptions};
use k8s_support::server::FakeApiServer;
use k8s_support::{fixture_pod_value, kubeconfig_text, synthesize_running, TempDir};
use mb_agent::mesh::Mesh;
use mb_agent::pods::PodMaps;
use mb_loader::datapath::{load_datapath, unload_datapath, LoadOptions, PinLayout};
use mb_maps::datapath::{MAP_CIDR_RULES, MAP_NETNS_PODS, MAP_PORT_RULES, SPLICE_SIDECARS};
use mb_maps::layout::{CidrRuleKey, PodEntry, PortRuleKey};
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::cgroup::OwnedCgroup;
use mb_sys::netns::NamedNetns;
use mb_sys::process::{place, Placement};
use serde_json::{json, Value};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const CNI_BIN_DIR: &str = "/usr/lib/cni";
const NODE: &str = "mb-cni-node";
const APP_UID: u32 = 1000;
static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "mb-{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unloads the data path before the cgroup and bpffs go.
struct UnloadOnDrop {
    pin_dir: PathBuf,
    cgroup: PathBuf,
}

impl Drop for UnloadOnDrop {
    fn drop(&mut self) {
        let _ = unload_datapath(&self.pin_dir, Some(&self.cgroup));
    }
}

/// A pod sandbox as a runtime makes it: an empty network namespace and the pod's cgroup.
struct Sandbox {
    id: String,
    netns: NamedNetns,
    cgroup: PathBuf,
}

impl Sandbox {
    /// Makes `cmd` start inside the sandbox (its netns and cgroup) as `uid`.
    fn place(&self, cmd: &mut Command, uid: u32) {
        place(
            cmd,
            &Placement {
                netns: Some(self.netns.path()),
                cgroup: Some(&self.cgroup),
                uid: Some(uid),
                gid: None,
                die_with_parent: true,
            },
        )
        .unwrap();
    }
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin output is not JSON ({e}): {self:?}"))
    }
}

/// The node: "host" namespace, cgroup with the data path, pins, IPAM/state dirs, API server.
/// Fields drop in order: data path first, then cgroup, namespaces, bpffs, files.
struct Rig {
    _unload: UnloadOnDrop,
    cgroup: OwnedCgroup,
    host: NamedNetns,
    _bpffs: PrivateBpffs,
    pin_dir: PathBuf,
    dir: TempDir,
    plugin: PathBuf,
    api: FakeApiServer,
    subnet: u8,
}

impl Rig {
    fn new() -> Rig {
        assert!(
            Path::new(CNI_BIN_DIR).join("bridge").is_file(),
            "{CNI_BIN_DIR}/bridge missing: apt-get install containernetworking-plugins"
        );
        let cgroup = OwnedCgroup::create_private("mb-cni").expect("cgroup");
        let host = NamedNetns::create(&unique("cnihost")).expect("host netns");
        let bpffs = PrivateBpffs::new("mb-cni").expect("bpffs");
        let pin_dir = bpffs.path().join("merbridge");
        let istio = Mesh::Istio.defaults().constants(SPLICE_SIDECARS);
        load_datapath(&LoadOptions::for_mesh(cgroup.path(), &pin_dir, istio))
            .expect("load the data path");
        let unload = UnloadOnDrop {
            pin_dir: pin_dir.clone(),
            cgroup: cgroup.path().to_path_buf(),
        };
        let dir = TempDir::new("cni");
        // The binary under the name a runtime calls it by (argv[0] dispatch).
        let bin = dir.0.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let plugin = bin.join("merbridge-cni");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_merbridge"), &plugin).unwrap();
        let api = FakeApiServer::start(None);
        std::fs::write(
            dir.0.join("kubeconfig"),
            kubeconfig_text(&format!("http://{}", api.addr), None, None, None),
        )
        .unwrap();
        Rig {
            _unload: unload,
            cgroup,
            host,
            _bpffs: bpffs,
            pin_dir,
            dir,
            plugin,
            api,
            subnet: (std::process::id() % 200) as u8 + 20,
        }
    }

    fn sandbox(&self, name: &str) -> Sandbox {
        let netns = NamedNetns::create(&unique(name)).expect("sandbox netns");
        let cgroup = self.cgroup.create_child(name).expect("pod cgroup");
        let sb = Sandbox {
            id: format!("{name}{}", std::process::id()),
            netns,
            cgroup,
        };
        // As containerd does for every sandbox: `lo` up with the reference loopback plugin.
        let lo = self.exec_if(
            &Path::new(CNI_BIN_DIR).join("loopback"),
            "ADD",
            &sb,
            "lo",
            r#"{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}"#,
        );
        assert!(lo.ok, "loopback ADD: {lo:?}");
        sb
    }

    fn gateway(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "mbcni", "type": "bridge",
            "bridge": "mbcni0", "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": format!("10.77.{}.0/24", self.subnet)}]],
                     "dataDir": self.dir.0.join("ipam")}
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    /// merbridge's entry as `merbridge cni install` writes it into a conflist whose primary
    /// plugin is the bridge above, turned into the plugin's stdin as libcni does (the list's
    /// name and cniVersion added, the previous result as prevResult).
    fn merbridge_conf(&self, prev: Option<&Value>) -> Value {
        let conf_dir = self.dir.0.join("net.d");
        let list_path = conf_dir.join("10-mbcni.conflist");
        if !list_path.exists() {
            std::fs::create_dir_all(&conf_dir).unwrap();
            let mut bridge = self.bridge_conf();
            let plugin = bridge.as_object_mut().unwrap();
            plugin.remove("cniVersion");
            plugin.remove("name");
            let list = json!({"cniVersion": "1.0.0", "name": "mbcni", "plugins": [bridge]});
            std::fs::write(&list_path, list.to_string()).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_merbridge"))
                .args(["cni", "install", "--mesh", "istio", "--conf-dir"])
                .arg(&conf_dir)
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .arg("--state-dir")
                .arg(self.state_dir())
                .arg("--kubeconfig")
                .arg(self.dir.0.join("kubeconfig"))
                .output()
                .unwrap();
            assert!(out.status.success(), "merbridge cni install: {out:?}");
        }
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&list_path).unwrap()).unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins[0]["type"], "bridge", "{list}");
        let mut conf = plugins.last().unwrap().clone();
        assert_eq!(conf["type"], "merbridge-cni", "{list}");
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// Runs one plugin in the host namespace as a runtime does.
    fn exec(&self, plugin: &Path, command: &str, sb: &Sandbox, args: &str, stdin: &str) -> Run {
        let netns = sb.netns.path().display().to_string();
        self.exec_full(plugin, command, &sb.id, &netns, "eth0", args, stdin)
    }

    fn exec_if(
        &self,
        plugin: &Path,
        command: &str,
        sb: &Sandbox,
        ifname: &str,
        stdin: &str,
    ) -> Run {
        let netns = sb.netns.path().display().to_string();
        self.exec_full(plugin, command, &sb.id, &netns, ifname, "", stdin)
    }

    fn exec_env(
        &self,
        plugin: &Path,
        command: &str,
        container: &str,
        netns: &str,
        args: &str,
        stdin: &str,
    ) -> Run {
        self.exec_full(plugin, command, container, netns, "eth0", args, stdin)
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_full(
        &self,
        plugin: &Path,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        args: &str,
        stdin: &str,
    ) -> Run {
        let mut cmd = Command::new(plugin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", CNI_BIN_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The reference plugins make the bridge and veths in the namespace they run in: the
        // private "host" one. merbridge-cni touches no interface (it opens the sandbox's
        // namespace by path and writes pins), so it runs where the test runs and reaches the
        // fake API server on loopback, as the real one reaches the API from the host.
        let netns = (plugin != self.plugin).then(|| self.host.path());
        place(
            &mut cmd,
            &Placement {
                netns,
                die_with_parent: true,
                ..Placement::default()
            },
        )
        .unwrap();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn bridge(&self) -> PathBuf {
        Path::new(CNI_BIN_DIR).join("bridge")
    }

    /// The chain's ADD: bridge, then merbridge with bridge's result. Returns both results.
    fn chain_add(&self, sb: &Sandbox, args: &str) -> (Value, Run) {
        let bridge = self.exec(
            &self.bridge(),
            "ADD",
            sb,
            args,
            &self.bridge_conf().to_string(),
        );
        assert!(bridge.ok, "bridge ADD: {bridge:?}");
        let prev = bridge.json();
        let conf = self.merbridge_conf(Some(&prev)).to_string();
        (prev, self.exec(&self.plugin, "ADD", sb, args, &conf))
    }

    /// The chain's DEL, in reverse order, with the cached result as prevResult.
    fn chain_del(&self, sb: &Sandbox, args: &str, prev: &Value) -> Run {
        let conf = self.merbridge_conf(Some(prev)).to_string();
        let ours = self.exec(&self.plugin, "DEL", sb, args, &conf);
        self.bridge_del(sb, args, prev);
        ours
    }

    /// The bridge plugin's DEL (it must succeed), with the cached result as prevResult.
    fn bridge_del(&self, sb: &Sandbox, args: &str, prev: &Value) {
        let mut bridge_conf = self.bridge_conf();
        bridge_conf["prevResult"] = prev.clone();
        let bridge = self.exec(&self.bridge(), "DEL", sb, args, &bridge_conf.to_string());
        assert!(bridge.ok, "bridge DEL: {bridge:?}");
    }

    /// The real agent on this node (`--on-exit keep`), once it is ready; its files in `dir`.
    fn start_agent(&self, dir: &TempDir) -> Agent {
        let mut agent = Agent::start(&AgentOptions {
            api: &self.api,
            dir: &dir.0,
            node: NODE,
            cgroup: self.cgroup.path(),
            pin_dir: &self.pin_dir,
            extra: &["--on-exit", "keep"],
        });
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// No map entry, and the same pins, links and sandbox records as `before`.
    fn assert_left_nothing(&self, before: &[PathBuf], when: &str) {
        assert_eq!(self.map_keys(), 0, "no map entry left {when}");
        assert_eq!(
            self.pins_and_state(),
            before,
            "no pin, link or record left {when}"
        );
    }

    /// Serves pod `name` (meshed: the injected Istio fixture; else a plain pod).
    fn api_pod(&self, name: &str, uid: &str, meshed: bool, ips: &[&str]) -> Value {
        let mut pod = if meshed {
            synthesize_running(
                fixture_pod_value("istio/istio-master__pod.yaml.injected"),
                uid,
                NODE,
                ips,
                "1",
            )
        } else {
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"namespace": "default", "uid": uid},
                   "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "x"}]},
                   "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
        };
        pod["metadata"]["name"] = name.into();
        pod["metadata"]["namespace"] = "default".into();
        self.api.set_object(
            &format!("/api/v1/namespaces/default/pods/{name}"),
            Some(pod.clone()),
        );
        pod
    }

    fn maps(&self) -> PodMaps {
        PodMaps::open(&self.pin_dir).expect("pod maps")
    }

    /// Every key of every pod map: nothing may stay after DEL.
    fn map_keys(&self) -> usize {
        let layout = PinLayout::new(&self.pin_dir);
        let ports: mb_maps::LpmTrie<PortRuleKey, u32> =
            mb_maps::LpmTrie::open_pinned(&layout.map(MAP_PORT_RULES)).unwrap();
        let cidrs: mb_maps::LpmTrie<CidrRuleKey, u32> =
            mb_maps::LpmTrie::open_pinned(&layout.map(MAP_CIDR_RULES)).unwrap();
        self.maps().pods().unwrap().len() + ports.keys().count() + cidrs.keys().count()
    }

    fn netns_map(&self) -> mb_maps::HashMap<u64, PodEntry> {
        mb_maps::HashMap::open_pinned(&PinLayout::new(&self.pin_dir).map(MAP_NETNS_PODS)).unwrap()
    }

    /// Files under the pin dir (maps, links, programs) and the state dir.
    /// Every pin and sandbox record, but the data path's own hook links (`links/mb_*`): the
    /// agent started mid-test reloads the data path with the hooks its flags choose (the DNS
    /// hooks for a mesh with a DNS proxy), which is not something a pod leaves behind.
    fn pins_and_state(&self) -> Vec<PathBuf> {
        let hook_links = self.pin_dir.join("links");
        let mut out = self.all_pins_and_state();
        out.retain(|p| {
            !(p.parent() == Some(hook_links.as_path())
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("mb_")))
        });
        out
    }

    fn all_pins_and_state(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [self.pin_dir.clone(), self.state_dir()] {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    }
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// `merbridge validate` as the sandbox's first process (app UID, pod cgroup and netns).
    fn validate(&self, sb: &Sandbox) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_merbridge"));
        cmd.args(["validate", "--mesh", "istio", "--timeout-ms", "1500"])
            .arg(format!("--target={}:9", self.gateway()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sb.place(&mut cmd, APP_UID);
        let out = cmd.output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn k8s_args(name: &str, uid: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_UID={uid}")
}

fn pod_ip(prev: &Value) -> IpAddr {
    let text = prev["ips"][0]["address"].as_str().unwrap();
    text.split('/').next().unwrap().parse().unwrap()
}

fn assert_cni_error(run: &Run, code: u64, words: &str) {
    assert!(!run.ok, "expected a failure: {run:?}");
    let v = run.json();
    assert_eq!(v["code"].as_u64(), Some(code), "{run:?}");
    let text = format!("{} {}", v["msg"], v["details"]);
    assert!(text.contains(words), "{words:?} not in {text}");
}

#[test]
fn chained_after_bridge_meshed_pods_are_intercepted_from_their_first_connect() {
    if !mb_sys::testing::kernel_tests_enabled(
        "chained_after_bridge_meshed_pods_are_intercepted_from_their_first_connect",
    ) {
        return;
    }
    let rig = Rig::new();
    let pins_before = rig.pins_and_state();

    // VERSION through the symlink (argv[0] = merbridge-cni).
    let version = rig.exec_env(
        &rig.plugin,
        "VERSION",
        "",
        "",
        "",
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(version.ok, "{version:?}");
    assert!(version.json()["supportedVersions"]
        .to_string()
        .contains("1.0.0"));

    // A meshed pod: the bridge gives it an address, merbridge registers it.
    let meshed = rig.sandbox("meshed");
    rig.api_pod("web-0", "uid-web", true, &[]);
    let args = k8s_args("web-0", "uid-web");
    let (prev, add) = rig.chain_add(&meshed, &args);
    assert!(add.ok, "merbridge ADD: {add:?}");
    assert_eq!(
        add.json()["ips"],
        prev["ips"],
        "ADD passes prevResult through"
    );
    let ip = pod_ip(&prev);
    let entry = rig.maps().find(ip).unwrap().expect("pod in pod_ips");
    let cookie = mb_sys::netns::netns_cookie(meshed.netns.path()).unwrap();
    assert_eq!(entry.netns, cookie, "registered under its namespace cookie");
    assert!(rig.netns_map().get(&cookie).unwrap().is_some());

    // The first connection of the pod's first process is redirected (no agent running).
    let check = rig.validate(&meshed);
    assert!(check.ok, "validate in the meshed pod: {check:?}");
    assert!(check.stdout.contains("redirected"), "{check:?}");

    // A pod that is not meshed passes through untouched, and validation fails it closed.
    let plain = rig.sandbox("plain");
    rig.api_pod("plain-0", "uid-plain", false, &[]);
    let plain_args = k8s_args("plain-0", "uid-plain");
    let (plain_prev, plain_add) = rig.chain_add(&plain, &plain_args);
    assert!(plain_add.ok, "{plain_add:?}");
    assert_eq!(plain_add.json()["ips"], plain_prev["ips"]);
    assert!(rig.maps().find(pod_ip(&plain_prev)).unwrap().is_none());
    let refused = rig.validate(&plain);
    assert!(
        !refused.ok,
        "validate must fail in a pod that is not intercepted: {refused:?}"
    );
    assert!(refused.stderr.contains("not redirected"), "{refused:?}");

    // CHECK passes, then detects a deleted entry.
    let conf = rig.merbridge_conf(Some(&prev)).to_string();
    let ok = rig.exec(&rig.plugin, "CHECK", &meshed, &args, &conf);
    assert!(ok.ok, "CHECK: {ok:?}");
    rig.netns_map().remove(&cookie).unwrap();
    let missing = rig.exec(&rig.plugin, "CHECK", &meshed, &args, &conf);
    assert_cni_error(&missing, 103, "missing");
    // ADD again (the runtime retries) restores it with the same id.
    let again = rig.exec(&rig.plugin, "ADD", &meshed, &args, &conf);
    assert!(again.ok, "{again:?}");
    assert_eq!(rig.maps().find(ip).unwrap().unwrap().pod_id, entry.pod_id);

    // Bad input: CNI error JSON, a clear message, nothing written.
    let keys_before = rig.map_keys();
    let bad = rig.sandbox("bad");
    rig.api_pod("bad-0", "uid-bad", true, &[]);
    let bad_args = k8s_args("bad-0", "uid-bad");
    let cases: Vec<(String, String, u64, &str)> = vec![
        (
            "{not json".into(),
            bad.netns.path().display().to_string(),
            6,
            "not valid JSON",
        ),
        (
            rig.merbridge_conf(None).to_string(),
            bad.netns.path().display().to_string(),
            7,
            "prevResult",
        ),
        (
            {
                let mut c = rig.merbridge_conf(Some(&prev));
                c["cniVersion"] = "0.9.9".into();
                c.to_string()
            },
            bad.netns.path().display().to_string(),
            1,
            "0.9.9",
        ),
        (
            rig.merbridge_conf(Some(&prev)).to_string(),
            "/run/netns/mb-cni-no-such-netns".into(),
            3,
            "does not exist",
        ),
    ];
    for (stdin, netns, code, words) in &cases {
        let run = rig.exec_env(&rig.plugin, "ADD", &bad.id, netns, &bad_args, stdin);
        assert_cni_error(&run, *code, words);
    }
    assert_eq!(rig.map_keys(), keys_before, "failed ADDs wrote nothing");
    assert!(!rig
        .state_dir()
        .join(format!("{}-eth0.json", bad.id))
        .exists());

    // Maps missing (pin dir without a data path): plain pods pass, meshed pods are refused
    // with what to do.
    let mut no_maps = rig.merbridge_conf(Some(&prev));
    no_maps["pinDir"] = json!(rig.dir.0.join("no-pins"));
    let run = rig.exec(
        &rig.plugin,
        "ADD",
        &plain,
        &plain_args,
        &no_maps.to_string(),
    );
    assert!(run.ok, "non-meshed pod without maps: {run:?}");
    let run = rig.exec(&rig.plugin, "ADD", &bad, &bad_args, &no_maps.to_string());
    assert_cni_error(&run, 100, "Start the merbridge DaemonSet");

    // The agent started now adopts the CNI-registered pod without changing its id.
    let node_ip = ip.to_string();
    let api_view = rig.api_pod("web-0", "uid-web", true, &[&node_ip]);
    rig.api.add_pod(api_view);
    let agent_dir = TempDir::new("cni-agent");
    let mut agent = rig.start_agent(&agent_dir);
    let adopted = rig.maps().find(ip).unwrap().expect("still registered");
    assert_eq!(
        adopted.pod_id,
        entry.pod_id,
        "agent kept the id; log:\n{}",
        agent.log()
    );
    assert_eq!(adopted.netns, cookie, "agent kept the namespace");
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.log());
    let still = rig.validate(&meshed);
    assert!(still.ok, "after the agent: {still:?}");

    // DEL removes everything (twice: idempotent), also once the namespace is gone.
    let del = rig.chain_del(&meshed, &args, &prev);
    assert!(del.ok && del.stdout.is_empty(), "{del:?}");
    assert!(rig.maps().find(ip).unwrap().is_none());
    let again = rig.exec(&rig.plugin, "DEL", &meshed, &args, &conf);
    assert!(again.ok, "second DEL: {again:?}");
    let plain_del = rig.chain_del(&plain, &plain_args, &plain_prev);
    assert!(plain_del.ok, "{plain_del:?}");
    // A sandbox whose namespace vanished before DEL.
    let gone = rig.sandbox("gone");
    rig.api_pod("gone-0", "uid-gone", true, &[]);
    let gone_args = k8s_args("gone-0", "uid-gone");
    let (gone_prev, gone_add) = rig.chain_add(&gone, &gone_args);
    assert!(gone_add.ok, "{gone_add:?}");
    let Sandbox {
        id: gone_id,
        netns: gone_netns,
        ..
    } = gone;
    let gone_path = gone_netns.path().display().to_string();
    drop(gone_netns);
    let run = rig.exec_env(
        &rig.plugin,
        "DEL",
        &gone_id,
        &gone_path,
        &gone_args,
        &rig.merbridge_conf(Some(&gone_prev)).to_string(),
    );
    assert!(run.ok, "DEL without netns: {run:?}");
    rig.assert_left_nothing(&pins_before, "after every DEL");
}

#[test]
fn a_thousand_add_del_cycles_leave_nothing_behind() {
    if !mb_sys::testing::kernel_tests_enabled("a_thousand_add_del_cycles_leave_nothing_behind") {
        return;
    }
    let rig = Rig::new();
    let pins_before = rig.pins_and_state();
    let sb = rig.sandbox("cycle");
    rig.api_pod("cycle-0", "uid-cycle", true, &[]);
    let args = k8s_args("cycle-0", "uid-cycle");
    let (prev, first) = rig.chain_add(&sb, &args);
    assert!(first.ok, "{first:?}");
    let conf = rig.merbridge_conf(Some(&prev)).to_string();
    let del = rig.exec(&rig.plugin, "DEL", &sb, &args, &conf);
    assert!(del.ok, "{del:?}");
    let ip = pod_ip(&prev);
    for i in 0..1000 {
        let add = rig.exec(&rig.plugin, "ADD", &sb, &args, &conf);
        assert!(add.ok, "cycle {i} ADD: {add:?}");
        if i % 100 == 0 {
            assert!(
                rig.maps().find(ip).unwrap().is_some(),
                "cycle {i}: registered"
            );
        }
        let del = rig.exec(&rig.plugin, "DEL", &sb, &args, &conf);
        assert!(del.ok, "cycle {i} DEL: {del:?}");
    }
    rig.bridge_del(&sb, &args, &prev);
    rig.assert_left_nothing(&pins_before, "after 1,000 cycles");
}

/// The agent and the plugin allocate pod ids side by side and never give two pods one id:
/// the real agent runs (with one pod of its own) while the plugin ADDs three sandboxes; then
/// the API lists three pods only the agent writes, and finally the plugin's pods, whose ids
/// and namespaces the agent adopts. Every address has its own id, the plugin's pods keep
/// theirs, every pod has exactly its own rules, and the first one is still intercepted.
#[test]
fn agent_and_plugin_never_give_two_pods_one_id() {
    if !mb_sys::testing::kernel_tests_enabled("agent_and_plugin_never_give_two_pods_one_id") {
        return;
    }
    let rig = Rig::new();
    let net = format!("10.77.{}", rig.subnet);
    let agent_only = |i: u32| format!("{net}.{}", 200 + i);
    let early = rig.api_pod("early-0", "uid-early", true, &[&agent_only(0)]);
    rig.api.add_pod(early);
    let agent_dir = TempDir::new("cni-ids");
    let mut agent = rig.start_agent(&agent_dir);
    let early_ip: IpAddr = agent_only(0).parse().unwrap();
    common::wait_until(Duration::from_secs(10), "the agent's own pod", || {
        rig.maps().find(early_ip).unwrap().is_some()
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));

    // The plugin registers three sandboxes while the agent runs.
    let mut registered = Vec::new();
    for i in 0..3 {
        let sb = rig.sandbox(&format!("ids{i}"));
        let (name, uid) = (format!("cni-{i}"), format!("uid-cni-{i}"));
        rig.api_pod(&name, &uid, true, &[]);
        let args = k8s_args(&name, &uid);
        let (prev, add) = rig.chain_add(&sb, &args);
        assert!(add.ok, "ADD {name}: {add:?}");
        let ip = pod_ip(&prev);
        let id = rig.maps().find(ip).unwrap().expect("registered").pod_id;
        registered.push((sb, name, uid, args, prev, ip, id));
    }
    // Pods only the agent writes, then the plugin's pods as the API reports them.
    for i in 1..=3 {
        let pod = rig.api_pod(
            &format!("agent-{i}"),
            &format!("uid-agent-{i}"),
            true,
            &[&agent_only(i)],
        );
        rig.api.add_pod(pod);
    }
    for (_, name, uid, _, _, ip, _) in &registered {
        let pod = rig.api_pod(name, uid, true, &[&ip.to_string()]);
        rig.api.add_pod(pod);
    }
    let mut addresses: Vec<IpAddr> = (0..=3).map(|i| agent_only(i).parse().unwrap()).collect();
    addresses.extend(registered.iter().map(|r| r.5));
    common::wait_until(Duration::from_secs(10), "all seven pods", || {
        addresses
            .iter()
            .all(|ip| rig.maps().find(*ip).unwrap().is_some())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    // Let the agent handle every event it has (the plugin's pods are the last ones).
    std::thread::sleep(Duration::from_millis(300));

    let maps = rig.maps();
    let ids: Vec<u32> = addresses
        .iter()
        .map(|ip| maps.find(*ip).unwrap().expect("still registered").pod_id)
        .collect();
    let distinct: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "two pods share an id: {addresses:?} -> {ids:?}; log:\n{}",
        agent.log()
    );
    // Namespace entries too: each carries the id of the pod with its address.
    for entry in rig.netns_map().iter() {
        let (cookie, e) = entry.unwrap();
        let at = ids.iter().position(|i| *i == e.pod_id);
        let at = at.unwrap_or_else(|| panic!("netns {cookie}: id {} is no pod's", e.pod_id));
        assert_eq!(
            mb_maps::layout::addr_from_bytes(e.ipv4),
            addresses[at],
            "netns {cookie}: id {} is another pod's",
            e.pod_id
        );
    }
    for (i, (sb, name, ..)) in registered.iter().enumerate() {
        let cookie = mb_sys::netns::netns_cookie(sb.netns.path()).unwrap();
        let entry = maps.find(registered[i].5).unwrap().unwrap();
        assert_eq!(
            entry.pod_id, registered[i].6,
            "{name}: the agent kept its id"
        );
        assert_eq!(entry.netns, cookie, "{name}: the agent kept its namespace");
        let by_netns = rig.netns_map().get(&cookie).unwrap().expect("netns entry");
        assert_eq!(by_netns.pod_id, entry.pod_id, "{name}");
    }
    // Every pod is the same injected Istio pod: each id has the same, non-empty rule set,
    // and no rule belongs to an id that no pod has.
    let per_pod = maps.rule_counts(ids[0]);
    assert!(per_pod.0 > 0, "the pods have port rules");
    for id in &ids {
        assert_eq!(maps.rule_counts(*id), per_pod, "rules of pod id {id}");
    }
    let layout = PinLayout::new(&rig.pin_dir);
    let ports: mb_maps::LpmTrie<PortRuleKey, u32> =
        mb_maps::LpmTrie::open_pinned(&layout.map(MAP_PORT_RULES)).unwrap();
    assert_eq!(
        ports.keys().count(),
        per_pod.0 * ids.len(),
        "no stray rules"
    );
    let first = rig.validate(&registered[0].0);
    assert!(first.ok, "the plugin's pod is still intercepted: {first:?}");

    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.log());
    for (sb, _, _, args, prev, ..) in &registered {
        let del = rig.chain_del(sb, args, prev);
        assert!(del.ok, "{del:?}");
    }
}

/// A server process in a sandbox (its netns and cgroup, as `uid`), once it says `ready`.
fn serve_in(sb: &Sandbox, uid: u32, port: u16) -> std::process::Child {
    use std::io::BufRead;
    let mut cmd = Command::new(mb_testbed::workload_binary().expect("mb-workload"));
    cmd.args(["serve", "--whoami", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    sb.place(&mut cmd, uid);
    let mut child = cmd.spawn().expect("spawn mb-workload");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "mb-workload: {line:?}");
    child
}

/// Inbound right after ADD, from outside the pod (the node's namespace, across the bridge):
/// refused while the sidecar does not listen — even though the application does (fail
/// closed) — and steered to the sidecar's inbound port once it listens; DEL detaches the
/// pod's sk_lookup link.
#[test]
fn inbound_right_after_add_meets_the_sidecar_or_is_refused() {
    if !mb_sys::testing::kernel_tests_enabled(
        "inbound_right_after_add_meets_the_sidecar_or_is_refused",
    ) {
        return;
    }
    let rig = Rig::new();
    let sb = rig.sandbox("inbound");
    rig.api_pod("in-0", "uid-in", true, &[]);
    let args = k8s_args("in-0", "uid-in");
    let (prev, add) = rig.chain_add(&sb, &args);
    assert!(add.ok, "ADD: {add:?}");
    let ip = pod_ip(&prev);
    let id = rig.maps().find(ip).unwrap().expect("registered").pod_id;
    let link = rig
        .pin_dir
        .join("links")
        .join("inbound")
        .join(format!("pod-{id}"));
    assert!(link.exists(), "ADD pinned the pod's inbound link {link:?}");
    let target = std::net::SocketAddr::new(ip, 8080);
    let from_node = || {
        mb_sys::netns::run_in_netns(rig.host.path(), || mb_testbed::workload::whoami(target))
            .expect("enter the node namespace")
    };

    // The application listens, its sidecar not yet: the first caller is refused.
    let mut app = serve_in(&sb, APP_UID, 8080);
    let refused = from_node();
    let _ = app.kill();
    let _ = app.wait();
    let err = refused.expect_err("no sidecar yet: refused, never delivered to the app");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "refused at once: {err}"
    );

    // The sidecar listens on its inbound port (nothing listens on 8080 now): the next
    // caller reaches it, with the original destination as its local address.
    let mut sidecar = serve_in(&sb, 1337, 15006);
    let seen = from_node();
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    let (peer, local) = seen.expect("steered to the sidecar");
    assert_eq!(local, target, "the sidecar sees the original destination");
    assert_eq!(
        peer.ip().to_string(),
        rig.gateway(),
        "the caller is the node"
    );

    let del = rig.chain_del(&sb, &args, &prev);
    assert!(del.ok, "DEL: {del:?}");
    assert!(!link.exists(), "DEL removed the inbound link");
    assert_eq!(rig.map_keys(), 0, "no map entry left");
}

/// CNI 1.1 on a 1.1.0 conflist: STATUS answers ready while the data path is pinned and "not
/// available" (code 50) for a node without it; GC, given the runtime's valid attachments,
/// does a full DEL of every other sandbox merbridge registered on this network (map
/// entries, inbound link, record) and leaves the listed one intercepted; a GC without the
/// list is refused and forgets nothing.
#[test]
fn status_and_gc_of_cni_1_1() {
    if !mb_sys::testing::kernel_tests_enabled("status_and_gc_of_cni_1_1") {
        return;
    }
    let rig = Rig::new();
    let pins_before = rig.pins_and_state();
    let v11 = |prev: Option<&Value>| {
        let mut conf = rig.merbridge_conf(prev);
        conf["cniVersion"] = "1.1.0".into();
        conf
    };
    let status = rig.exec_env(&rig.plugin, "STATUS", "", "", "", &v11(None).to_string());
    assert!(status.ok && status.stdout.is_empty(), "{status:?}");
    let mut unloaded = v11(None);
    unloaded["pinDir"] = rig.dir.0.join("no-data-path").display().to_string().into();
    let status = rig.exec_env(&rig.plugin, "STATUS", "", "", "", &unloaded.to_string());
    assert_cni_error(&status, 50, "not loaded");

    let kept = rig.sandbox("gckept");
    let gone = rig.sandbox("gcgone");
    let mut added = Vec::new();
    for (sb, name) in [(&kept, "kept-0"), (&gone, "gone-0")] {
        rig.api_pod(name, &format!("uid-{name}"), true, &[]);
        let args = k8s_args(name, &format!("uid-{name}"));
        let (prev, add) = rig.chain_add(sb, &args);
        assert!(add.ok, "ADD {name}: {add:?}");
        let ip = pod_ip(&prev);
        let id = rig.maps().find(ip).unwrap().expect("registered").pod_id;
        added.push((args, prev, ip, id));
    }
    let link = |id: u32| rig.pin_dir.join("links/inbound").join(format!("pod-{id}"));
    let record = |sb: &Sandbox| rig.state_dir().join(format!("{}-eth0.json", sb.id));
    assert!(record(&gone).exists() && link(added[1].3).exists());

    let mut no_list = v11(None);
    no_list
        .as_object_mut()
        .unwrap()
        .remove("cni.dev/valid-attachments");
    let refused = rig.exec_env(&rig.plugin, "GC", "", "", "", &no_list.to_string());
    assert_cni_error(&refused, 7, "valid-attachments");
    assert!(record(&gone).exists(), "a refused GC forgets nothing");

    let mut gc = v11(None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": kept.id, "ifname": "eth0"}]);
    for round in ["first", "again"] {
        let out = rig.exec_env(&rig.plugin, "GC", "", "", "", &gc.to_string());
        assert!(out.ok && out.stdout.is_empty(), "{round} GC: {out:?}");
    }
    assert!(!record(&gone).exists(), "GC removed the stale record");
    assert!(
        !link(added[1].3).exists(),
        "GC detached the stale inbound link"
    );
    assert!(
        rig.maps().find(added[1].2).unwrap().is_none(),
        "stale entry gone"
    );
    let kept_entry = rig
        .maps()
        .find(added[0].2)
        .unwrap()
        .expect("kept pod stays");
    assert_eq!(kept_entry.pod_id, added[0].3);
    assert!(record(&kept).exists() && link(added[0].3).exists());
    let valid = rig.validate(&kept);
    assert!(valid.ok, "the kept pod is still intercepted: {valid:?}");

    let (args, prev, ..) = &added[0];
    let del = rig.exec(
        &rig.plugin,
        "DEL",
        &kept,
        args,
        &v11(Some(prev)).to_string(),
    );
    assert!(del.ok, "{del:?}");
    rig.bridge_del(&kept, args, prev);
    rig.bridge_del(&gone, &added[1].0, &added[1].1);
    rig.assert_left_nothing(&pins_before, "after GC and DEL");
}
