//! Every data-path program the loader would use on the running kernel passes its verifier,
//! with its maps created as declared and every constant patched; the variant it would not use
//! is refused for the reason the probe gives (no `bpf_get_netns_cookie` in that hook, before
//! 6.1). (Attaching and traffic are the loader's and the end-to-end tests' job.)

use mb_loader::probe::probe_helper;
use mb_programs::{programs, CONSTANTS, MAPS};
use mb_sys::bpf::{map_create, prog_load, MapCreate, ProgLoad, VerifierLog};
use std::os::fd::{AsRawFd, OwnedFd};

#[test]
fn every_program_passes_the_verifier() {
    if !mb_sys::testing::kernel_tests_enabled("every_program_passes_the_verifier") {
        return;
    }
    let maps: Vec<(&str, OwnedFd)> = MAPS
        .iter()
        .map(|m| {
            let fd = map_create(&MapCreate {
                map_type: m.kind.map_type(),
                key_size: m.key_size,
                value_size: m.value_size,
                max_entries: m.max_entries.min(1024),
                map_flags: m.kind.flags(),
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
        let mut log = VerifierLog::new(1 << 20, 1);
        let result = prog_load(
            &ProgLoad {
                prog_type: def.hook.prog_type(),
                expected_attach_type: def.hook.expected_attach_type(),
                insns: &insns,
                license: "Apache-2.0",
                name: def.hook.program_name(),
                prog_flags: 0,
            },
            Some(&mut log),
        );
        // The loader's probe says whether this hook may call bpf_get_netns_cookie here
        // (connect4/6 from 5.7; sock_ops, sk_msg, getsockopt only from 5.15): where it may
        // not, the netns-keyed variant must be refused for exactly that reason (the loader
        // then takes the bind-source variant).
        let expect_refusal = uses_netns_cookie(&def.program)
            && !probe_helper(
                def.hook.prog_type(),
                def.hook.expected_attach_type(),
                GET_NETNS_COOKIE,
            )
            .is_yes();
        match result {
            Ok(_) if expect_refusal => failures.push(format!(
                "{:?} {:?}: loaded, but the probe says this hook has no bpf_get_netns_cookie \
                 on this kernel (the probe or the test is wrong)",
                def.hook, def.variant
            )),
            Err(_) if expect_refusal => {
                let text = log.text();
                assert!(
                    text.contains("bpf_get_netns_cookie") || text.contains("#122"),
                    "{:?} {:?}: refused, but not for the netns cookie helper:\n{text}",
                    def.hook,
                    def.variant
                );
                eprintln!(
                    "{:?} {:?}: refused as expected (no netns cookies)",
                    def.hook, def.variant
                );
            }
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

const GET_NETNS_COOKIE: u32 = 122;

/// Whether a program calls `bpf_get_netns_cookie` (a BPF_CALL with that helper id).
fn uses_netns_cookie(program: &mb_asm::Program) -> bool {
    program.insns.iter().any(|insn| {
        let bytes = insn.to_bytes();
        let helper = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        bytes[0] == 0x85 && helper == GET_NETNS_COOKIE as i32
    })
}
