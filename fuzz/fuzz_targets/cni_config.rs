//! CNI network config (stdin of ADD/DEL/CHECK) and `CNI_ARGS`: no input panics; a config that
//! parses answers `prev_ips` and prints a result that is JSON. The first byte picks where the
//! input splits into the config and `CNI_ARGS`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mb_agent::cni::config::K8sPod;
use mb_agent::cni::{Env, NetConf};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(control) % (rest.len() + 1);
    let (stdin, args) = rest.split_at(split);
    if let Ok(conf) = NetConf::parse(stdin) {
        let _ = conf.prev_ips("eth0");
        let result = conf.result_json();
        assert!(
            serde_json::from_str::<serde_json::Value>(&result).is_ok(),
            "result is not JSON: {result}"
        );
    }
    let env = Env {
        args: Some(String::from_utf8_lossy(args).into_owned()),
        ..Env::default()
    };
    if let Ok(map) = env.args() {
        let _ = K8sPod::from_args(&map);
    }
});
