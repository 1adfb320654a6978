//! Builder: encodings against the kernel's instruction macros, labels, relocations and every
//! error path of `Asm::finish`.

use mb_asm::check::Issue;
use mb_asm::opcode::*;
use mb_asm::{
    AluOp, Asm, AsmError, AtomicOp, Helper, Insn, JmpOp, Reg, RelocError, RelocKind, Size,
};

fn one(build: impl FnOnce(&mut Asm)) -> Insn {
    let mut asm = Asm::new();
    build(&mut asm);
    asm.exit();
    asm.finish().unwrap().insns[0]
}

#[test]
fn builder_matches_kernel_macros() {
    // Each expected value spells out the kernel macro's expansion (tools/include/linux/filter.h)
    // with the UAPI constants (checked against the header in uapi_header.rs).
    let cases: Vec<(Insn, Insn, &str)> = vec![
        (
            one(|a| {
                a.mov64_imm(Reg::R1, 5);
            }),
            Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 5),
            "BPF_MOV64_IMM",
        ),
        (
            one(|a| {
                a.mov64_reg(Reg::R6, Reg::R1);
            }),
            Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),
            "BPF_MOV64_REG",
        ),
        (
            one(|a| {
                a.mov32_imm(Reg::R2, -1);
            }),
            Insn::new(BPF_ALU | BPF_MOV | BPF_K, 2, 0, 0, -1),
            "BPF_MOV32_IMM",
        ),
        (
            one(|a| {
                a.mov32_reg(Reg::R2, Reg::R3);
            }),
            Insn::new(BPF_ALU | BPF_MOV | BPF_X, 2, 3, 0, 0),
            "BPF_MOV32_REG",
        ),
        (
            one(|a| {
                a.alu64_imm(AluOp::Add, Reg::R2, -8);
            }),
            Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -8),
            "BPF_ALU64_IMM(BPF_ADD)",
        ),
        (
            one(|a| {
                a.alu64_reg(AluOp::Xor, Reg::R4, Reg::R5);
            }),
            Insn::new(BPF_ALU64 | BPF_XOR | BPF_X, 4, 5, 0, 0),
            "BPF_ALU64_REG(BPF_XOR)",
        ),
        (
            one(|a| {
                a.alu32_imm(AluOp::Arsh, Reg::R1, 3);
            }),
            Insn::new(BPF_ALU | BPF_ARSH | BPF_K, 1, 0, 0, 3),
            "BPF_ALU32_IMM(BPF_ARSH)",
        ),
        (
            one(|a| {
                a.alu32_reg(AluOp::Lsh, Reg::R1, Reg::R9);
            }),
            Insn::new(BPF_ALU | BPF_LSH | BPF_X, 1, 9, 0, 0),
            "BPF_ALU32_REG(BPF_LSH)",
        ),
        (
            one(|a| {
                a.sdiv64_imm(Reg::R1, 3);
            }),
            Insn::new(BPF_ALU64 | BPF_DIV | BPF_K, 1, 0, 1, 3),
            "sdiv: BPF_DIV with off 1 (instruction-set.rst)",
        ),
        (
            one(|a| {
                a.smod64_imm(Reg::R1, 3);
            }),
            Insn::new(BPF_ALU64 | BPF_MOD | BPF_K, 1, 0, 1, 3),
            "smod: BPF_MOD with off 1",
        ),
        (
            one(|a| {
                a.movsx64(Reg::R1, Reg::R2, 16);
            }),
            Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 1, 2, 16, 0),
            "movsx: BPF_MOV with off 8/16/32",
        ),
        (
            one(|a| {
                a.neg64(Reg::R3);
            }),
            Insn::new(BPF_ALU64 | BPF_NEG, 3, 0, 0, 0),
            "BPF_ALU64_IMM(BPF_NEG)",
        ),
        (
            one(|a| {
                a.to_be(Reg::R1, 16);
            }),
            Insn::new(BPF_ALU | BPF_END | BPF_TO_BE, 1, 0, 0, 16),
            "BPF_ENDIAN(BPF_TO_BE, 16)",
        ),
        (
            one(|a| {
                a.to_le(Reg::R1, 64);
            }),
            Insn::new(BPF_ALU | BPF_END | BPF_TO_LE, 1, 0, 0, 64),
            "BPF_ENDIAN(BPF_TO_LE, 64)",
        ),
        (
            one(|a| {
                a.bswap(Reg::R1, 32);
            }),
            Insn::new(BPF_ALU64 | BPF_END | BPF_TO_LE, 1, 0, 0, 32),
            "bswap: BPF_ALU64 | BPF_END",
        ),
        (
            one(|a| {
                a.ldx(Size::W, Reg::R7, Reg::R6, 4);
            }),
            Insn::new(BPF_LDX | BPF_MEM | BPF_W, 7, 6, 4, 0),
            "BPF_LDX_MEM(BPF_W)",
        ),
        (
            one(|a| {
                a.ldx_sx(Size::H, Reg::R7, Reg::R6, -2);
            }),
            Insn::new(BPF_LDX | BPF_MEMSX | BPF_H, 7, 6, -2, 0),
            "BPF_LDX_MEMSX(BPF_H)",
        ),
        (
            one(|a| {
                a.stx(Size::DW, Reg::R10, -8, Reg::R1);
            }),
            Insn::new(BPF_STX | BPF_MEM | BPF_DW, 10, 1, -8, 0),
            "BPF_STX_MEM(BPF_DW)",
        ),
        (
            one(|a| {
                a.st_imm(Size::H, Reg::R10, -2, 0x1234);
            }),
            Insn::new(BPF_ST | BPF_MEM | BPF_H, 10, 0, -2, 0x1234),
            "BPF_ST_MEM(BPF_H)",
        ),
        (
            one(|a| {
                a.atomic_add(Size::DW, Reg::R1, 0, Reg::R2);
            }),
            Insn::new(BPF_STX | BPF_ATOMIC | BPF_DW, 1, 2, 0, BPF_ADD as i32),
            "BPF_ATOMIC_OP(BPF_DW, BPF_ADD)",
        ),
        (
            one(|a| {
                a.atomic(AtomicOp::FetchAdd, Size::W, Reg::R1, 8, Reg::R2);
            }),
            Insn::new(
                BPF_STX | BPF_ATOMIC | BPF_W,
                1,
                2,
                8,
                BPF_ADD as i32 | BPF_FETCH,
            ),
            "BPF_ATOMIC_OP(BPF_W, BPF_ADD | BPF_FETCH)",
        ),
        (
            one(|a| {
                a.atomic(AtomicOp::Cmpxchg, Size::DW, Reg::R1, 0, Reg::R3);
            }),
            Insn::new(BPF_STX | BPF_ATOMIC | BPF_DW, 1, 3, 0, BPF_CMPXCHG),
            "BPF_ATOMIC_OP(BPF_DW, BPF_CMPXCHG)",
        ),
        (
            one(|a| {
                a.atomic(AtomicOp::Xchg, Size::W, Reg::R1, 0, Reg::R3);
            }),
            Insn::new(BPF_STX | BPF_ATOMIC | BPF_W, 1, 3, 0, BPF_XCHG),
            "BPF_ATOMIC_OP(BPF_W, BPF_XCHG)",
        ),
        (
            one(|a| {
                a.ld_abs(Size::H, 12);
            }),
            Insn::new(BPF_LD | BPF_ABS | BPF_H, 0, 0, 0, 12),
            "BPF_LD_ABS(BPF_H, 12)",
        ),
        (
            one(|a| {
                a.ld_ind(Size::B, Reg::R3, 1);
            }),
            Insn::new(BPF_LD | BPF_IND | BPF_B, 0, 3, 0, 1),
            "BPF_LD_IND(BPF_B, R3, 1)",
        ),
        (
            one(|a| {
                a.call(Helper::GetSocketCookie);
            }),
            Insn::new(BPF_JMP | BPF_CALL, 0, 0, 0, 46),
            "BPF_EMIT_CALL(BPF_FUNC_get_socket_cookie)",
        ),
        (
            one(|a| {
                a.call_kfunc(1234, 0);
            }),
            Insn::new(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_KFUNC_CALL, 0, 1234),
            "kfunc call",
        ),
    ];
    for (got, want, what) in cases {
        assert_eq!(got, want, "{what}");
    }
    let mut asm = Asm::new();
    asm.exit();
    assert_eq!(
        asm.finish().unwrap().insns,
        vec![Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)],
        "BPF_EXIT_INSN"
    );
}

#[test]
fn ld_imm64_is_two_slots_like_bpf_ld_imm64() {
    let mut asm = Asm::new();
    asm.ld_imm64(Reg::R1, 0x1122_3344_5566_7788).exit();
    let p = asm.finish().unwrap();
    assert_eq!(p.insns.len(), 3);
    assert_eq!(
        p.insns[0],
        Insn::new(BPF_LD | BPF_DW | BPF_IMM, 1, 0, 0, 0x5566_7788)
    );
    assert_eq!(p.insns[1], Insn::new(0, 0, 0, 0, 0x1122_3344));
    // cilium/ebpf TestWrite64bitImmediate: r0 = MinInt32 - 1.
    let mut asm = Asm::new();
    asm.ld_imm64(Reg::R0, (i64::from(i32::MIN) - 1) as u64)
        .exit();
    let bytes = asm.finish().unwrap().to_bytes();
    assert_eq!(
        &bytes[..16],
        &[0x18, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
    );
}

#[test]
fn map_relocations_follow_bpf_ld_map_fd_and_value() {
    let mut asm = Asm::new();
    asm.ld_map_fd(Reg::R1, "sock_pair_map")
        .ld_map_value(Reg::R2, "settings", 16)
        .mov64_imm(Reg::R0, 0)
        .exit();
    let p = asm.finish().unwrap();
    assert_eq!(p.insns[0], Insn::new(0x18, 1, BPF_PSEUDO_MAP_FD, 0, 0));
    assert_eq!(p.insns[2], Insn::new(0x18, 2, BPF_PSEUDO_MAP_VALUE, 0, 0));
    assert_eq!(p.insns[3], Insn::new(0, 0, 0, 0, 16));
    assert_eq!(p.map_names(), vec!["sock_pair_map", "settings"]);
    assert_eq!(p.relocations[0].slot, 0);
    assert_eq!(p.relocations[1].slot, 2);
    assert!(matches!(&p.relocations[1].kind, RelocKind::MapValue(n) if n == "settings"));

    let r = p.relocate_map("sock_pair_map", 9).unwrap();
    assert_eq!(r.insns[0].imm, 9);
    assert_eq!(p.insns[0].imm, 0, "relocation patches a copy");
    assert_eq!(r.relocations.len(), 1);
    let r = r.relocate_map("settings", 4).unwrap();
    assert_eq!(r.insns[2].imm, 4);
    assert_eq!(r.insns[3].imm, 16, "value offset kept");
    assert_eq!(r.resolved_insns().unwrap().len(), 6);
    assert_eq!(
        p.relocate_map("nope", 3),
        Err(RelocError::UnknownName {
            kind: "map",
            name: "nope".into()
        })
    );
}

#[test]
fn const_relocations_are_range_checked() {
    let mut asm = Asm::new();
    let out = asm.label();
    asm.mov64_const(Reg::R1, "outbound_port")
        .mov32_const(Reg::R2, "proxy_uid")
        .jmp_const(JmpOp::Eq, Reg::R2, "proxy_uid", out)
        .jmp32_const(JmpOp::Ne, Reg::R2, "mark", out)
        .ld_imm64_const(Reg::R3, "cookie_base")
        .bind(out)
        .exit();
    let p = asm.finish().unwrap();
    assert_eq!(
        p.const_names(),
        vec!["outbound_port", "proxy_uid", "mark", "cookie_base"]
    );
    // Jump offsets are resolved although the immediates are relocated.
    assert_eq!(p.insns[2].off, 3);
    assert_eq!(p.insns[3].off, 2);

    let r = p.relocate_const("outbound_port", 15001).unwrap();
    assert_eq!(r.insns[0].imm, 15001);
    let r = r.relocate_const("proxy_uid", 1337).unwrap();
    assert_eq!((r.insns[1].imm, r.insns[2].imm), (1337, 1337));
    // 32-bit forms take the full u32 range.
    let r = r.relocate_const("mark", 0xffff_fff0).unwrap();
    assert_eq!(r.insns[3].imm as u32, 0xffff_fff0);
    let r = r.relocate_const("cookie_base", 0x1_0000_0002).unwrap();
    assert_eq!((r.insns[4].imm, r.insns[5].imm), (2, 1));
    assert!(r.resolved_insns().is_ok());

    // 64-bit mov sign-extends: 2^31 does not fit.
    assert!(matches!(
        p.relocate_const("outbound_port", 1 << 31),
        Err(RelocError::DoesNotFit { slot: 0, .. })
    ));
    assert!(p
        .relocate_const("outbound_port", i64::from(i32::MIN))
        .is_ok());
    // 32-bit mov: 2^32 does not fit, -2^31 ..= 2^32-1 does.
    assert!(matches!(
        p.relocate_const("mark", 1 << 32),
        Err(RelocError::DoesNotFit { slot: 3, .. })
    ));
    assert!(matches!(
        p.relocate_const("mark", i64::from(i32::MIN) - 1),
        Err(RelocError::DoesNotFit { .. })
    ));
    // proxy_uid is on a 32-bit mov and a 64-bit jump: the stricter range applies.
    assert!(p.relocate_const("proxy_uid", 0x8000_0000).is_err());
    assert!(matches!(
        p.relocate_const("missing", 1),
        Err(RelocError::UnknownName {
            kind: "constant",
            ..
        })
    ));
    // Unresolved relocation: the loader forgot one.
    let e = p.resolved_insns().unwrap_err();
    assert!(matches!(e, RelocError::Unresolved { slot: 0, .. }));
    assert!(e.to_string().contains("unresolved relocation"), "{e}");
    assert!(e.to_string().contains("outbound_port"), "{e}");
}

#[test]
fn forward_and_backward_labels() {
    let mut asm = Asm::new();
    let top = asm.here();
    let end = asm.label();
    asm.mov64_imm(Reg::R0, 0) // 0
        .jmp_imm(JmpOp::Gt, Reg::R0, 5, end) // 1 -> 6: off 4
        .ld_imm64(Reg::R1, 7) // 2, 3
        .alu64_imm(AluOp::Add, Reg::R0, 1) // 4
        .ja(top) // 5 -> 0: off -6
        .bind(end)
        .exit(); // 6
    let p = asm.finish().unwrap();
    assert_eq!(p.insns[1].off, 4, "forward jump counts both lddw slots");
    assert_eq!(p.insns[5].off, -6);

    // Jump to the very next instruction is offset 0; several labels on one instruction.
    let mut asm = Asm::new();
    let a = asm.label();
    let b = asm.label();
    asm.ja(a)
        .bind(a)
        .bind(b)
        .jmp_imm(JmpOp::Eq, Reg::R1, 0, b)
        .exit();
    let p = asm.finish().unwrap();
    assert_eq!((p.insns[0].off, p.insns[1].off), (0, -1));
}

#[test]
fn jump_range_limits_are_exact() {
    // Forward: offset 32767 fits, 32768 (one past) does not.
    for (filler, ok) in [(32767usize, true), (32768, false)] {
        let mut asm = Asm::new();
        let end = asm.label();
        asm.ja(end);
        for _ in 0..filler {
            asm.mov64_imm(Reg::R0, 0);
        }
        asm.bind(end).exit();
        let r = asm.finish();
        if ok {
            assert_eq!(r.unwrap().insns[0].off, i16::MAX);
        } else {
            assert_eq!(
                r.unwrap_err(),
                AsmError::JumpOutOfRange {
                    insn: 0,
                    offset: 32768,
                    bits: 16
                }
            );
        }
    }
    // Backward: -32768 fits, -32769 does not.
    for (filler, ok) in [(32767usize, true), (32768, false)] {
        let mut asm = Asm::new();
        let top = asm.here();
        for _ in 0..filler {
            asm.mov64_imm(Reg::R0, 0);
        }
        asm.ja(top).exit();
        let r = asm.finish();
        if ok {
            assert_eq!(r.unwrap().insns[filler].off, i16::MIN);
        } else {
            let e = r.unwrap_err();
            assert_eq!(
                e,
                AsmError::JumpOutOfRange {
                    insn: filler,
                    offset: -32769,
                    bits: 16
                }
            );
            assert!(e.to_string().contains("gotol"), "{e}");
        }
    }
    // gotol reaches what goto cannot.
    let mut asm = Asm::new();
    let end = asm.label();
    asm.gotol(end);
    for _ in 0..40_000 {
        asm.mov64_imm(Reg::R0, 0);
    }
    asm.bind(end).exit();
    let p = asm.finish().unwrap();
    assert_eq!(p.insns[0], Insn::new(BPF_JMP32 | BPF_JA, 0, 0, 0, 40_000));
}

#[test]
fn gotol_offset_one_past_i32_is_rejected() {
    // A program of 2^31 slots cannot be built in a test; the range check is the same code
    // path as for 16 bits, so exercise it through a program whose *text* offset is too far.
    let e = mb_asm::text::parse_lenient("gotol +2147483648\nexit").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("32-bit"), "{}", e.message);
    assert!(mb_asm::text::parse_lenient("gotol +2147483647\nexit").is_ok());
    assert!(mb_asm::text::parse_lenient("gotol -2147483648\nexit").is_ok());
    assert!(mb_asm::text::parse_lenient("gotol -2147483649\nexit").is_err());
}

#[test]
fn unbound_label_is_an_error() {
    let mut asm = Asm::new();
    let nowhere = asm.label();
    asm.mov64_imm(Reg::R0, 0)
        .jmp_imm(JmpOp::Eq, Reg::R0, 0, nowhere)
        .exit();
    let e = asm.finish().unwrap_err();
    assert_eq!(e, AsmError::UnboundLabel { insn: 1, label: 0 });
    assert!(e.to_string().starts_with("instruction 1:"), "{e}");
}

#[test]
fn label_bound_twice_is_an_error() {
    let mut asm = Asm::new();
    let l = asm.label();
    asm.bind(l).mov64_imm(Reg::R0, 0).bind(l).exit();
    let e = asm.finish().unwrap_err();
    assert_eq!(
        e,
        AsmError::LabelBoundTwice {
            label: 0,
            first: 0,
            second: 1
        }
    );
    assert!(e.to_string().contains("second time"), "{e}");
}

#[test]
fn label_from_another_builder_is_an_error() {
    let mut other = Asm::new();
    other.label();
    let foreign = other.label();
    let mut asm = Asm::new();
    asm.bind(foreign).exit();
    assert!(matches!(
        asm.finish(),
        Err(AsmError::InvalidOperand { insn: 0, .. })
    ));
}

#[test]
fn write_to_r10_is_an_error() {
    for build in [
        (|a: &mut Asm| {
            a.mov64_imm(Reg::FP, 0);
        }) as fn(&mut Asm),
        |a| {
            a.alu64_imm(AluOp::Add, Reg::R10, -8);
        },
        |a| {
            a.ldx(Size::DW, Reg::R10, Reg::R1, 0);
        },
        |a| {
            a.ld_imm64(Reg::R10, 1);
        },
        |a| {
            a.atomic(AtomicOp::FetchAdd, Size::DW, Reg::R1, 0, Reg::R10);
        },
    ] {
        let mut asm = Asm::new();
        asm.mov64_imm(Reg::R0, 0);
        build(&mut asm);
        asm.exit();
        let e = asm.finish().unwrap_err();
        assert_eq!(
            e,
            AsmError::Structure(Issue::WriteToFramePointer { insn: 1 })
        );
        assert!(e.to_string().contains("r10"), "{e}");
    }
    // Storing through r10 is fine: that is how the stack is used.
    let mut asm = Asm::new();
    asm.st_imm(Size::DW, Reg::FP, -8, 0)
        .stx(Size::DW, Reg::FP, -16, Reg::R1)
        .mov64_reg(Reg::R2, Reg::FP)
        .exit();
    assert!(asm.finish().is_ok());
}

#[test]
fn jump_into_second_half_of_lddw_is_an_error() {
    use mb_asm::Op;
    let mut asm = Asm::new();
    asm.op(Op::Jmp {
        jmp32: false,
        op: JmpOp::Eq,
        dst: Reg::R1,
        src: mb_asm::Source::Imm(0),
        off: 1,
    })
    .ld_imm64(Reg::R2, 1)
    .exit();
    let e = asm.finish().unwrap_err();
    assert_eq!(
        e,
        AsmError::Structure(Issue::JumpIntoLdImm64 { insn: 0, target: 2 })
    );
}

#[test]
fn jump_past_the_end_is_an_error() {
    let mut asm = Asm::new();
    let end = asm.label();
    asm.jmp_imm(JmpOp::Eq, Reg::R1, 0, end).exit().bind(end);
    let e = asm.finish().unwrap_err();
    assert_eq!(
        e,
        AsmError::Structure(Issue::JumpOutside { insn: 0, target: 2 })
    );
}

#[test]
fn fall_through_at_the_end_is_an_error() {
    let mut asm = Asm::new();
    asm.mov64_imm(Reg::R0, 0).exit().mov64_imm(Reg::R0, 1);
    let e = asm.finish().unwrap_err();
    assert_eq!(e, AsmError::Structure(Issue::FallThrough { insn: 2 }));
    assert!(e.to_string().contains("falls through"), "{e}");
    // A conditional jump at the end falls through too.
    let mut asm = Asm::new();
    let top = asm.here();
    asm.jmp_imm(JmpOp::Eq, Reg::R1, 0, top);
    assert_eq!(
        asm.finish().unwrap_err(),
        AsmError::Structure(Issue::FallThrough { insn: 0 })
    );
    // An unconditional jump at the end is fine.
    let mut asm = Asm::new();
    let top = asm.here();
    asm.exit().ja(top);
    assert!(asm.finish().is_ok());
}

#[test]
fn empty_program_is_an_error() {
    assert_eq!(
        Asm::new().finish().unwrap_err(),
        AsmError::Structure(Issue::Empty)
    );
}

#[test]
fn invalid_operands_are_errors_not_panics() {
    let cases: Vec<fn(&mut Asm)> = vec![
        |a| {
            a.movsx64(Reg::R1, Reg::R2, 7);
        },
        |a| {
            a.movsx32(Reg::R1, Reg::R2, 32);
        },
        |a| {
            a.to_be(Reg::R1, 8);
        },
        |a| {
            a.atomic_add(Size::B, Reg::R1, 0, Reg::R2);
        },
        |a| {
            a.ld_abs(Size::DW, 0);
        },
        |a| {
            a.ldx_sx(Size::DW, Reg::R1, Reg::R2, 0);
        },
    ];
    for build in cases {
        let mut asm = Asm::new();
        asm.mov64_imm(Reg::R0, 0);
        build(&mut asm);
        asm.exit();
        let e = asm.finish().unwrap_err();
        assert!(
            matches!(e, AsmError::InvalidOperand { insn: 1, .. }),
            "{e:?}"
        );
    }
}

#[test]
fn bad_relocation_names_are_errors() {
    for name in ["", "1map", "has space", "semi;colon"] {
        let mut asm = Asm::new();
        asm.ld_map_fd(Reg::R1, name).exit();
        assert_eq!(
            asm.finish().unwrap_err(),
            AsmError::BadRelocationName {
                insn: 0,
                name: name.into()
            },
            "{name:?}"
        );
    }
}

#[test]
fn local_calls_and_function_pointers_resolve() {
    let mut asm = Asm::new();
    let sub = asm.label();
    asm.call_local(sub) // 0 -> 4: imm 3
        .ld_func(Reg::R2, sub) // 1,2 -> 4: imm 2
        .exit() // 3
        .bind(sub)
        .mov64_imm(Reg::R0, 1)
        .exit();
    let p = asm.finish().unwrap();
    assert_eq!(p.insns[0], Insn::new(0x85, 0, BPF_PSEUDO_CALL, 0, 3));
    assert_eq!(p.insns[1], Insn::new(0x18, 2, BPF_PSEUDO_FUNC, 0, 2));
}

#[test]
fn unsigned_32_bit_compares_do_not_sign_extend() {
    let mut asm = Asm::new();
    let hit = asm.label();
    asm.jmp_imm_u32(JmpOp::Eq, Reg::R1, 0x7fff_ffff, Reg::R9, hit)
        .jmp_imm_u32(JmpOp::Eq, Reg::R1, 0xfe00_0001, Reg::R9, hit)
        .bind(hit)
        .exit();
    let p = asm.finish().unwrap();
    assert_eq!(p.insns.len(), 4);
    assert_eq!(
        p.insns[0],
        Insn::new(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 2, 0x7fff_ffff)
    );
    // w9 = 0xfe000001 (zero-extending 32-bit mov), then a register compare.
    assert_eq!(
        p.insns[1],
        Insn::new(BPF_ALU | BPF_MOV | BPF_K, 9, 0, 0, 0xfe00_0001_u32 as i32)
    );
    assert_eq!(p.insns[2], Insn::new(BPF_JMP | BPF_JEQ | BPF_X, 1, 9, 0, 0));
    assert_eq!(
        p.fmt_llvm().unwrap(),
        "if r1 == 2147483647 goto +2\nw9 = -33554431\nif r1 == r9 goto +0\nexit\n"
    );
    assert_eq!(
        p.insns.len(),
        mb_asm::parse(&p.fmt_llvm().unwrap()).unwrap().insns.len()
    );
    assert_eq!(mb_asm::Op::Exit.to_string(), "exit");
}

#[test]
fn raw_invalid_slot_is_reported_by_finish() {
    let mut asm = Asm::new();
    asm.mov64_imm(Reg::R0, 0)
        .raw(Insn::new(0xff, 0, 0, 0, 0))
        .exit();
    let e = asm.finish().unwrap_err();
    assert!(
        matches!(&e, AsmError::Structure(Issue::Invalid(d)) if d.slot == 1),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with("instruction 1: opcode 0xff"),
        "{e}"
    );
}

#[test]
fn jump_to_the_first_slot_of_lddw_is_fine() {
    let mut asm = Asm::new();
    let load = asm.label();
    asm.ja(load).bind(load).ld_imm64(Reg::R0, 1).exit();
    let p = asm.finish().unwrap();
    assert_eq!(p.insns[0].off, 0);
}

#[test]
fn relocations_on_the_wrong_instruction_are_errors() {
    use mb_asm::{Program, Relocation};
    let exit = Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    let mov = Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 1, 2, 0, 0);
    let with = |insns: Vec<Insn>, slot, kind| Program {
        insns,
        relocations: vec![Relocation { slot, kind }],
    };
    // A constant on an instruction without an immediate.
    let p = with(vec![mov, exit], 0, RelocKind::Const("c".into()));
    assert!(matches!(
        p.relocate_const("c", 1),
        Err(RelocError::BadSlot { slot: 0, .. })
    ));
    // A map on something that is not a 64-bit load.
    let p = with(vec![mov, exit], 1, RelocKind::MapFd("m".into()));
    let e = p.relocate_map("m", 3).unwrap_err();
    assert!(matches!(e, RelocError::BadSlot { slot: 1, .. }));
    assert!(e.to_string().contains("not on a 64-bit load"), "{e}");
    // Past the end.
    let p = with(vec![exit], 5, RelocKind::Const("c".into()));
    assert!(matches!(
        p.relocate_const("c", 1),
        Err(RelocError::BadSlot { slot: 5, .. })
    ));
    // A 64-bit load cut short.
    let lddw = Insn::new(BPF_LD | BPF_DW | BPF_IMM, 1, 0, 0, 0);
    let p = with(vec![lddw], 0, RelocKind::Const("c".into()));
    assert!(matches!(
        p.relocate_const("c", 1),
        Err(RelocError::BadSlot { slot: 0, .. })
    ));
    // The store immediate is sign-extended for u64 stores: the 64-bit range applies.
    let st = Insn::new(BPF_ST | BPF_MEM | BPF_DW, 10, 0, -8, 0);
    let p = with(vec![st, exit], 0, RelocKind::Const("c".into()));
    assert!(p.relocate_const("c", -1).is_ok());
    assert!(p.relocate_const("c", 1 << 31).is_err());
    let st32 = Insn::new(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, 0);
    let p = with(vec![st32, exit], 0, RelocKind::Const("c".into()));
    assert_eq!(p.relocate_const("c", 0xffff_ffff).unwrap().insns[0].imm, -1);
    assert!(p.relocate_const("c", 1 << 32).is_err());
}
