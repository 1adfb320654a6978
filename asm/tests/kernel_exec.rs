//! The real kernel as the reference: programs assembled here are loaded as socket filters
//! (no attach) and run with `BPF_PROG_TEST_RUN`; their return values prove that the verifier
//! reads our encodings the way we meant them (signed division, sign extension, byte swaps,
//! JMP32, gotol, atomics, BPF-to-BPF calls, legacy packet loads, may_goto, load-acquire).

use mb_asm::{parse, AluOp, Asm, Helper, JmpOp, Program, Reg};
use mb_sys::bpf::{prog_load, prog_test_run, ProgLoad, ProgType, TestRun, VerifierLog};
use std::os::fd::AsFd;

/// A 64-byte packet: byte i is i, except the ethertype 0x0800 at 12..14.
fn packet() -> Vec<u8> {
    let mut p: Vec<u8> = (0u8..64).collect();
    p[12] = 0x08;
    p[13] = 0x00;
    p
}

fn run(program: &Program) -> u32 {
    let insns: Vec<[u8; 8]> = program.insns.iter().map(|i| i.to_bytes()).collect();
    let mut log = VerifierLog::new(1 << 20, 1);
    let load = ProgLoad {
        prog_type: ProgType::SOCKET_FILTER,
        expected_attach_type: None,
        insns: &insns,
        license: "GPL",
        name: "mb_asm_test",
        prog_flags: 0,
    };
    let fd = prog_load(&load, Some(&mut log)).unwrap_or_else(|e| {
        panic!(
            "kernel rejected the program: {e}\n--- program ---\n{}--- verifier log ---\n{}",
            program.fmt_llvm().unwrap_or_default(),
            log.text()
        )
    });
    let data = packet();
    let result = prog_test_run(
        fd.as_fd(),
        TestRun {
            data_in: &data,
            repeat: 1,
            ..Default::default()
        },
    )
    .expect("BPF_PROG_TEST_RUN");
    result.retval
}

fn run_text(text: &str) -> u32 {
    run(&parse(text).unwrap_or_else(|e| panic!("{e}\n{text}")))
}

macro_rules! kernel_test {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() {
            if !mb_sys::testing::kernel_tests_enabled(stringify!($name)) {
                return;
            }
            $body
        }
    };
}

kernel_test!(alu_results_match_the_kernel, {
    let cases: &[(&str, u32)] = &[
        ("r0 = 7\nr0 *= 6\nexit", 42),
        ("r0 = -7\nr0 s/= 2\nexit", (-3i32) as u32),
        ("r0 = -7\nr0 /= 2\nr0 >>= 32\nexit", 0x7fff_ffff),
        ("r0 = -7\nr0 s%= 4\nexit", (-3i32) as u32),
        ("w0 = -7\nw0 s%= 4\nexit", (-3i32) as u32),
        ("w0 = -8\nw0 s>>= 1\nexit", (-4i32) as u32),
        ("r0 = 0xff\nr0 = -r0\nexit", (-255i32) as u32),
        ("r1 = 0x80\nr0 = (s8)r1\nexit", 0xffff_ff80),
        ("r1 = 0x8000\nw0 = (s16)w1\nexit", 0xffff_8000),
        (
            "r1 = 0x80000000 ll\nr0 = (s32)r1\nr0 >>= 32\nexit",
            0xffff_ffff,
        ),
        ("r0 = 0x1234\nr0 = bswap16 r0\nexit", 0x3412),
        ("r0 = 0x11223344\nr0 = bswap32 r0\nexit", 0x4433_2211),
        (
            "r0 = 0x1122334455667788 ll\nr0 = bswap64 r0\nexit",
            0x4433_2211,
        ),
        ("r0 = 0x1234\nr0 = be16 r0\nexit", 0x3412),
        ("r0 = 0x12345678\nr0 = le16 r0\nexit", 0x5678),
        ("r0 = 0x1122334455667788 ll\nr0 >>= 32\nexit", 0x1122_3344),
        ("r0 = -1\nw0 += 0\nr0 >>= 32\nexit", 0),
    ];
    for (text, want) in cases {
        assert_eq!(run_text(text), *want, "{text}");
    }
});

kernel_test!(memory_and_sign_extending_loads_match_the_kernel, {
    let text = "\
        r1 = 0xfffe\n\
        *(u16 *)(r10 - 2) = r1\n\
        r0 = *(s16 *)(r10 - 2)\n\
        r2 = *(u16 *)(r10 - 2)\n\
        r0 += r2\n\
        *(u32 *)(r10 - 8) = -5\n\
        r3 = *(s32 *)(r10 - 8)\n\
        r0 += r3\n\
        exit";
    // -2 + 0xfffe - 5
    assert_eq!(run_text(text), 0xfffe - 7);
});

kernel_test!(jumps_match_the_kernel, {
    let cases: &[(&str, u32)] = &[
        // JMP32 compares the low half only.
        (
            "r1 = 0x100000001 ll\nr0 = 1\nif w1 == 1 goto +1\nr0 = 2\nexit",
            1,
        ),
        (
            "r1 = 0x100000001 ll\nr0 = 1\nif r1 == 1 goto +1\nr0 = 2\nexit",
            2,
        ),
        ("r1 = -1\nr0 = 1\nif r1 s< 0 goto +1\nr0 = 2\nexit", 1),
        ("r1 = -1\nr0 = 1\nif r1 < 0 goto +1\nr0 = 2\nexit", 2),
        ("r1 = 6\nr0 = 1\nif r1 & 2 goto +1\nr0 = 2\nexit", 1),
        (
            "r1 = 3\nr2 = 4\nr0 = 1\nif r1 s>= r2 goto +1\nr0 = 2\nexit",
            2,
        ),
        (
            "r0 = 5\nif r0 == 9 goto over\ngotol skip\nover:\nr0 = 9\nskip:\nexit",
            5,
        ),
        ("r0 = 0\nloop:\nr0 += 3\nif r0 < 30 goto loop\nexit", 30),
    ];
    for (text, want) in cases {
        assert_eq!(run_text(text), *want, "{text}");
    }
});

kernel_test!(unsigned_32_bit_compare_helper_matches_the_kernel, {
    for (value, compare, want) in [
        (0xfe00_0001u32, 0xfe00_0001u32, 1),
        (0xfe00_0001, 0xfe00_0002, 2),
    ] {
        let mut asm = Asm::new();
        let hit = asm.label();
        asm.mov32_imm(Reg::R1, value as i32) // zero-extended: r1 = value as u64
            .mov64_imm(Reg::R0, 1)
            .jmp_imm_u32(JmpOp::Eq, Reg::R1, compare, Reg::R9, hit)
            .mov64_imm(Reg::R0, 2)
            .bind(hit)
            .exit();
        assert_eq!(run(&asm.finish().unwrap()), want);
    }
});

kernel_test!(atomics_match_the_kernel, {
    let text = "\
        r1 = 10\n\
        *(u64 *)(r10 - 8) = r1\n\
        r2 = 5\n\
        lock *(u64 *)(r10 - 8) += r2\n\
        r3 = 100\n\
        r3 = atomic_fetch_add((u64 *)(r10 - 8), r3)\n\
        r0 = 115\n\
        r4 = 7\n\
        r0 = cmpxchg_64(r10 - 8, r0, r4)\n\
        r5 = 1000\n\
        r5 = xchg_64(r10 - 8, r5)\n\
        w6 = 3\n\
        *(u32 *)(r10 - 16) = r6\n\
        w7 = 12\n\
        w7 = atomic_fetch_or((u32 *)(r10 - 16), w7)\n\
        r8 = *(u64 *)(r10 - 8)\n\
        r9 = *(u32 *)(r10 - 16)\n\
        r0 *= 1000\n\
        r0 += r3\n\
        r0 += r5\n\
        r0 += r7\n\
        r0 += r8\n\
        r0 += r9\n\
        exit";
    // cmpxchg returns old 115; fetch_add returned 15; xchg returned 7; fetch_or returned 3;
    // memory now 1000 and 15.
    assert_eq!(run_text(text), 115 * 1000 + 15 + 7 + 3 + 1000 + 15);
});

kernel_test!(load_acquire_store_release_match_the_kernel, {
    let text = "\
        r1 = 77\n\
        store_release((u64 *)(r10 - 8), r1)\n\
        r0 = load_acquire((u64 *)(r10 - 8))\n\
        exit";
    assert_eq!(run_text(text), 77);
});

kernel_test!(calls_match_the_kernel, {
    // BPF-to-BPF call by label, a helper by name, and legacy packet loads.
    let mut asm = Asm::new();
    let double = asm.label();
    asm.mov64_reg(Reg::R6, Reg::R1)
        .mov64_imm(Reg::R1, 21)
        .call_local(double)
        .mov64_reg(Reg::R7, Reg::R0)
        .call(Helper::KtimeGetNs)
        // A socket filter's skb starts after the 14-byte Ethernet header: legacy loads read
        // packet[14 + offset], 16-bit loads in network order.
        .ld_abs(mb_asm::Size::H, 12) // packet[26..28] = 0x1a1b
        .alu64_reg(AluOp::Add, Reg::R7, Reg::R0)
        .mov64_imm(Reg::R8, 2)
        .ld_ind(mb_asm::Size::B, Reg::R8, 20) // packet[14 + 22] = 36
        .alu64_reg(AluOp::Add, Reg::R0, Reg::R7)
        .exit()
        .bind(double)
        .mov64_reg(Reg::R0, Reg::R1)
        .alu64_imm(AluOp::Lsh, Reg::R0, 1)
        .exit();
    assert_eq!(run(&asm.finish().unwrap()), 42 + 0x1a1b + 36);
    // The same through text with `call pc+N`.
    assert_eq!(
        run_text("r1 = 4\ncall pc+1\nexit\nr0 = r1\nr0 *= 3\nexit"),
        12
    );
});

kernel_test!(may_goto_bounds_a_loop, {
    let text = "r0 = 0\nloop:\nmay_goto done\nr0 += 1\ngoto loop\ndone:\nexit";
    // The kernel bounds the loop (by count, or since 6.15 on x86 by time); it must end.
    assert!(run_text(text) > 0);
});

kernel_test!(kernel_printer_matches_the_verifier_log, {
    // The verifier log prints each instruction it walks with the kernel's own disassembler;
    // ours must print the same text (up to the register-state comment the log appends).
    let text = "\
        r6 = r1\n\
        r1 = 0x80\n\
        r0 = (s8)r1\n\
        w2 = -3\n\
        w2 s/= 2\n\
        r3 = 0x1234\n\
        r3 = be16 r3\n\
        r3 = bswap32 r3\n\
        *(u64 *)(r10 - 8) = r3\n\
        *(u32 *)(r10 - 12) = 9\n\
        r4 = *(s16 *)(r10 - 8)\n\
        r5 = 1\n\
        lock *(u64 *)(r10 - 8) += r5\n\
        r5 = atomic_fetch_xor((u64 *)(r10 - 8), r5)\n\
        w5 = xchg32_32(r10 - 12, w5)\n\
        r0 = cmpxchg_64(r10 - 8, r0, r5)\n\
        r7 = 0x1122334455667788 ll\n\
        if w2 s> -5 goto +1\n\
        r0 = -r0\n\
        if r0 != 0x7fffffff goto +0\n\
        r0 = *(u8 *)skb[12]\n\
        r8 = 2\n\
        r0 = *(u16 *)skb[r8 + 1]\n\
        call 5\n\
        r0 = 0\n\
        exit\n";
    let program = parse(text).unwrap();
    let insns: Vec<[u8; 8]> = program.insns.iter().map(|i| i.to_bytes()).collect();
    let mut log = VerifierLog::new(1 << 20, 2);
    let load = ProgLoad {
        prog_type: ProgType::SOCKET_FILTER,
        expected_attach_type: None,
        insns: &insns,
        license: "GPL",
        name: "mb_asm_log",
        prog_flags: 0,
    };
    let _fd = prog_load(&load, Some(&mut log)).unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    let log = log.text();
    let ours = program.fmt_kernel().unwrap();
    let mut compared = 0;
    for line in ours.lines() {
        let (index, _) = line.split_once(": ").unwrap();
        // First occurrence of this instruction in the log (`N: (code) text ; state`).
        let prefix = format!("{index}: (");
        let Some(logged) = log.lines().find(|l| l.starts_with(&prefix)) else {
            panic!("instruction {index} not in the verifier log:\n{log}");
        };
        let logged = logged.split(" ; ").next().unwrap().trim_end();
        assert_eq!(line, logged, "\nfull log:\n{log}");
        compared += 1;
    }
    assert_eq!(compared, program.fmt_kernel().unwrap().lines().count());
    // And the real log reassembles to the same bytes.
    let back = mb_asm::text::parse_kernel(&log).unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(back.program.insns, program.insns);
});
