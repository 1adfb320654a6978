//! `merbridge cni`: a chained CNI plugin (spec 1.1) in the same binary, run by the container
//! runtime at pod sandbox creation, so a meshed pod is in the data path's maps before its
//! first container starts — also while the agent is down. Plus the DaemonSet's install step
//! and the `merbridge validate` init-container check.
//!
//! - [`config`]: stdin config and `CNI_*` variables.
//! - [`plugin`]: ADD, DEL, CHECK, VERSION, STATUS, GC.
//! - [`api`]: policy at ADD, from the pod read with the node agent's credentials.
//! - [`state`]: per-sandbox records (DEL without netns or `prevResult`).
//! - [`inbound`]: where the per-pod inbound link (issue 12) is attached and detached.
//! - [`install`]: inserting the plugin into the node's conflist and taking it out again.
//! - [`validate`]: proving from inside a pod that its outbound connect is redirected.

pub mod api;
pub mod config;
pub mod error;
pub mod inbound;
pub mod install;
pub mod plugin;
pub mod state;
pub mod validate;

pub use config::{Env, NetConf};
pub use error::CniError;
pub use plugin::AddOutcome;

/// What the plugin prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

/// Runs one CNI command as a runtime invokes the plugin: `env` and the config on `stdin`.
pub fn run_plugin(env: &Env, stdin: &[u8]) -> Outcome {
    let version = || {
        serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
            .filter(|v| config::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| config::OUR_VERSION.to_owned())
    };
    let fail = |e: CniError| Outcome {
        stdout: e.to_json(&version()),
        exit_code: 1,
    };
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if command == config::Command::Version {
        return Outcome {
            stdout: plugin::version_json(),
            exit_code: 0,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let result = match command {
        config::Command::Add => plugin::add(env, &conf).map(|_| conf.result_json()),
        config::Command::Del => plugin::del(env, &conf).map(|()| String::new()),
        config::Command::Check => plugin::check(env, &conf).map(|()| String::new()),
        config::Command::Status => plugin::status(&conf).map(|()| String::new()),
        config::Command::Gc => plugin::gc(&conf).map(|_| String::new()),
        config::Command::Version => unreachable!("answered above"),
    };
    match result {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => fail(e),
    }
}
