//! Every data-path program passes the running kernel's verifier, with its maps created as
//! declared and every constant patched. (Attaching and traffic are the loader's and the
//! end-to-end tests' job.)

use mb_programs::{programs, Hook, MapKind, CONSTANTS, MAPS};
use mb_sys::bpf::{
    map_create, prog_load, AttachType, MapCreate, MapType, ProgLoad, ProgType, VerifierLog,
    F_NO_PREALLOC,
};
use std::os::fd::{AsRawFd, OwnedFd};

fn hook_types(hook: Hook) -> (ProgType, Option<AttachType>) {
    match hook {
        Hook::Connect4 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET4_CONNECT),
        ),
        Hook::Connect6 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET6_CONNECT),
        ),
        Hook::Sendmsg4 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP4_SENDMSG),
        ),
        Hook::Sendmsg6 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP6_SENDMSG),
        ),
        Hook::Recvmsg4 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP4_RECVMSG),
        ),
        Hook::Recvmsg6 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP6_RECVMSG),
        ),
        Hook::Bind4 => (
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET4_BIND),
        ),
        Hook::SockOps => (ProgType::SOCK_OPS, None),
        Hook::SkMsg => (ProgType::SK_MSG, Some(AttachType::SK_MSG_VERDICT)),
        Hook::GetSockopt => (
            ProgType::CGROUP_SOCKOPT,
            Some(AttachType::CGROUP_GETSOCKOPT),
        ),
    }
}

fn map_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::Hash => MapType::HASH,
        MapKind::LruHash => MapType::LRU_HASH,
        MapKind::LpmTrie => MapType::LPM_TRIE,
        MapKind::SockHash => MapType::SOCKHASH,
        MapKind::PerCpuArray => MapType::PERCPU_ARRAY,
    }
}

#[test]
fn every_program_passes_the_verifier() {
    if !mb_sys::testing::kernel_tests_enabled("every_program_passes_the_verifier") {
        return;
    }
    let maps: Vec<(&str, OwnedFd)> = MAPS
        .iter()
        .map(|m| {
            let fd = map_create(&MapCreate {
                map_type: map_type(m.kind),
                key_size: m.key_size,
                value_size: m.value_size,
                max_entries: m.max_entries.min(1024),
                map_flags: if m.kind == MapKind::LpmTrie {
                    F_NO_PREALLOC
                } else {
                    0
                },
                name: m.name,
            })
            .unwrap_or_else(|e| panic!("creating map {}: {e}", m.name));
            (m.name, fd)
        })
        .collect();
    let mut failures = Vec::new();
    for def in programs().unwrap() {
        let mut program = def.program.clone();
        for (name, fd) in &maps {
            if program.map_names().contains(name) {
                program = program.relocate_map(name, fd.as_raw_fd()).unwrap();
            }
        }
        for (name, _) in CONSTANTS {
            if program.const_names().contains(name) {
                program = program.relocate_const(name, 15001).unwrap();
            }
        }
        let insns: Vec<[u8; 8]> = program.insns.iter().map(|i| i.to_bytes()).collect();
        let (prog_type, attach) = hook_types(def.hook);
        let mut log = VerifierLog::new(1 << 20, 1);
        let result = prog_load(
            &ProgLoad {
                prog_type,
                expected_attach_type: attach,
                insns: &insns,
                license: "Apache-2.0",
                name: def.hook.program_name(),
                prog_flags: 0,
            },
            Some(&mut log),
        );
        match result {
            Ok(_) => {
                let text = log.text();
                let processed = text
                    .lines()
                    .rev()
                    .find(|l| l.contains("processed"))
                    .unwrap_or("");
                eprintln!("{:?}: {} insns; {processed}", def.hook, insns.len());
            }
            Err(e) => {
                let text = log.text();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                failures.push(format!("{:?}: {e}\n{}", def.hook, tail.join("\n")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "verifier rejected:\n{}",
        failures.join("\n\n")
    );
}
