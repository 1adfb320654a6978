//! Round trips over every instruction form and over random instructions (proptest):
//! `decode(encode(op)) == op`, `asm(disasm(bytes)) == bytes`, `disasm(asm(text)) == text`.

use mb_asm::op::{AluOp, AtomicOp, CallTarget, Endian, JmpOp, Op, Size, Source};
use mb_asm::text::{
    fmt_kernel, fmt_llvm, fmt_llvm_labeled, kernel_op, llvm_text, parse, parse_lenient,
};
use mb_asm::{Insn, Program, Reg};
use proptest::prelude::*;

fn encode(op: &Op) -> Vec<Insn> {
    let mut v = Vec::new();
    op.encode_into(&mut v);
    v
}

/// One instance of every instruction form (every opcode, operand kind, size and width).
fn all_forms() -> Vec<Op> {
    let (d, s) = (Reg::R3, Reg::R7);
    let mut v = Vec::new();
    for alu64 in [false, true] {
        for op in AluOp::ALL {
            v.push(Op::Alu {
                alu64,
                op,
                dst: d,
                src: Source::Reg(s),
            });
            v.push(Op::Alu {
                alu64,
                op,
                dst: d,
                src: Source::Imm(-5),
            });
        }
        v.push(Op::Neg { alu64, dst: d });
        for bits in [8, 16] {
            v.push(Op::MovSx {
                alu64,
                dst: d,
                src: s,
                bits,
            });
        }
    }
    v.push(Op::MovSx {
        alu64: true,
        dst: d,
        src: s,
        bits: 32,
    });
    for kind in [Endian::ToLe, Endian::ToBe, Endian::Swap] {
        for bits in [16, 32, 64] {
            v.push(Op::Endian { kind, dst: d, bits });
        }
    }
    for pseudo in 0..=6 {
        v.push(Op::LdImm64 {
            dst: d,
            pseudo,
            imm: 0x8000_0001_0000_0002,
        });
    }
    for size in [Size::B, Size::H, Size::W] {
        v.push(Op::LdAbs { size, imm: 14 });
        v.push(Op::LdInd {
            size,
            src: s,
            imm: 0,
        });
        for imm in [-2, i32::MIN, 70_000] {
            v.push(Op::LdInd { size, src: s, imm });
        }
        v.push(Op::Ldx {
            size,
            signed: true,
            dst: d,
            src: s,
            off: -9,
        });
    }
    for size in Size::ALL {
        v.push(Op::Ldx {
            size,
            signed: false,
            dst: d,
            src: s,
            off: 9,
        });
        v.push(Op::St {
            size,
            dst: d,
            off: -1,
            imm: 77,
        });
        v.push(Op::Stx {
            size,
            dst: d,
            off: 32767,
            src: s,
        });
        v.push(Op::LoadAcquire {
            size,
            dst: d,
            src: s,
            off: 4,
        });
        v.push(Op::StoreRelease {
            size,
            dst: d,
            off: -4,
            src: s,
        });
    }
    for size in [Size::W, Size::DW] {
        for op in AtomicOp::ALL {
            let src = s;
            v.push(Op::Atomic {
                size,
                op,
                dst: d,
                src,
                off: -32768,
            });
        }
    }
    v.push(Op::AddrSpaceCast {
        dst: d,
        src: s,
        dst_as: 1,
        src_as: 0,
    });
    for jmp32 in [false, true] {
        for op in JmpOp::ALL {
            v.push(Op::Jmp {
                jmp32,
                op,
                dst: d,
                src: Source::Reg(s),
                off: -3,
            });
            v.push(Op::Jmp {
                jmp32,
                op,
                dst: d,
                src: Source::Imm(i32::MIN),
                off: 3,
            });
        }
    }
    v.push(Op::Ja { off: -1 });
    v.push(Op::Gotol { imm: 100_000 });
    v.push(Op::MayGoto { off: 2 });
    v.push(Op::Call(CallTarget::Helper(1)));
    v.push(Op::Call(CallTarget::Local(-4)));
    v.push(Op::Call(CallTarget::Kfunc { btf_id: 99, off: 0 }));
    v.push(Op::Call(CallTarget::Kfunc { btf_id: 99, off: 2 }));
    v.push(Op::Callx { reg: Reg::R5 });
    v.push(Op::Exit);
    v
}

#[test]
fn every_form_encodes_decodes_prints_and_parses_back() {
    let forms = all_forms();
    assert!(forms.len() > 150);
    for op in &forms {
        op.validate().unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let slots = encode(op);
        assert_eq!(slots.len(), op.width());
        assert_eq!(Op::decode(&slots, 0), Ok(*op), "decode(encode({op:?}))");
        let text = llvm_text(op);
        let parsed = parse_lenient(&text).unwrap_or_else(|e| panic!("`{text}` ({op:?}): {e}"));
        assert_eq!(parsed.program.insns, slots, "asm(`{text}`)");
        let again = fmt_llvm(&parsed.program).unwrap();
        assert_eq!(again.trim_end(), text, "disasm(asm(`{text}`))");
        // The kernel form names the opcode byte.
        let k = kernel_op(op);
        assert!(k.starts_with(&format!("({:02x}) ", slots[0].code)), "{k}");
    }
}

#[test]
fn every_form_in_one_program_round_trips_through_bytes() {
    let mut insns = Vec::new();
    for op in all_forms() {
        op.encode_into(&mut insns);
    }
    let program = Program {
        insns,
        relocations: vec![],
    };
    let bytes = program.to_bytes();
    let text = fmt_llvm(&Program::from_bytes(&bytes).unwrap()).unwrap();
    let back = parse_lenient(&text).unwrap().program;
    assert_eq!(back.to_bytes(), bytes);
    assert!(!fmt_kernel(&program).unwrap().is_empty());
}

#[test]
fn relocations_survive_print_and_parse() {
    let mut asm = mb_asm::Asm::new();
    let out = asm.label();
    asm.ld_map_fd(Reg::R1, "sock_pair_map")
        .ld_map_value(Reg::R2, "settings", 8)
        .ld_imm64_const(Reg::R3, "cookie")
        .mov64_const(Reg::R4, "outbound_port")
        .mov32_const(Reg::R5, "proxy_uid")
        .jmp_const(JmpOp::Eq, Reg::R5, "proxy_uid", out)
        .jmp32_const(JmpOp::Ne, Reg::R5, "mark", out)
        .bind(out)
        .exit();
    let program = asm.finish().unwrap();
    let text = fmt_llvm(&program).unwrap();
    assert_eq!(
        text,
        "r1 = sock_pair_map ll\n\
         r2 = map_value(settings, 8) ll\n\
         r3 = const(cookie) ll\n\
         r4 = outbound_port\n\
         w5 = proxy_uid\n\
         if r5 == proxy_uid goto +1\n\
         if w5 != mark goto +0\n\
         exit\n"
    );
    assert_eq!(parse(&text).unwrap(), program);
    let labeled = fmt_llvm_labeled(&program).unwrap();
    assert!(labeled.contains("goto L10"), "{labeled}");
    assert_eq!(parse(&labeled).unwrap(), program);
}

#[test]
fn labeled_listing_round_trips() {
    let text = "r0 = 0\nLtop:\nr0 += 1\nif r0 < 10 goto Ltop\ncall sub\nexit\nsub:\nr0 = 2\nexit\n";
    let program = parse(text).unwrap();
    let labeled = fmt_llvm_labeled(&program).unwrap();
    assert_eq!(
        labeled,
        "r0 = 0\nL1:\nr0 += 1\nif r0 < 10 goto L1\ncall L5\nexit\nL5:\nr0 = 2\nexit\n"
    );
    assert_eq!(parse(&labeled).unwrap(), program);
    assert_eq!(
        fmt_llvm(&program).unwrap(),
        "r0 = 0\nr0 += 1\nif r0 < 10 goto -2\ncall pc+1\nexit\nr0 = 2\nexit\n"
    );
}

fn reg() -> impl Strategy<Value = Reg> {
    (0u8..=10).prop_map(|n| Reg::new(n).unwrap())
}

fn size() -> impl Strategy<Value = Size> {
    prop::sample::select(Size::ALL.to_vec())
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        reg().prop_map(Source::Reg),
        any::<i32>().prop_map(Source::Imm)
    ]
}

/// Any valid instruction.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any::<bool>(),
            prop::sample::select(AluOp::ALL.to_vec()),
            reg(),
            source()
        )
            .prop_map(|(alu64, op, dst, src)| Op::Alu {
                alu64,
                op,
                dst,
                src
            }),
        (any::<bool>(), reg()).prop_map(|(alu64, dst)| Op::Neg { alu64, dst }),
        (
            any::<bool>(),
            reg(),
            reg(),
            prop::sample::select(vec![8u8, 16, 32])
        )
            .prop_map(|(alu64, dst, src, bits)| Op::MovSx {
                alu64: alu64 || bits == 32,
                dst,
                src,
                bits
            }),
        (
            prop::sample::select(vec![Endian::ToLe, Endian::ToBe, Endian::Swap]),
            reg(),
            prop::sample::select(vec![16u8, 32, 64])
        )
            .prop_map(|(kind, dst, bits)| Op::Endian { kind, dst, bits }),
        (reg(), 0u8..=6, any::<u64>()).prop_map(|(dst, pseudo, imm)| Op::LdImm64 {
            dst,
            pseudo,
            imm
        }),
        (
            prop::sample::select(vec![Size::B, Size::H, Size::W]),
            any::<i32>()
        )
            .prop_map(|(size, imm)| Op::LdAbs { size, imm }),
        (
            prop::sample::select(vec![Size::B, Size::H, Size::W]),
            reg(),
            any::<i32>()
        )
            .prop_map(|(size, src, imm)| Op::LdInd { size, src, imm }),
        (size(), any::<bool>(), reg(), reg(), any::<i16>()).prop_map(
            |(size, signed, dst, src, off)| Op::Ldx {
                size,
                signed: signed && size != Size::DW,
                dst,
                src,
                off
            }
        ),
        (size(), reg(), any::<i16>(), any::<i32>()).prop_map(|(size, dst, off, imm)| Op::St {
            size,
            dst,
            off,
            imm
        }),
        (size(), reg(), any::<i16>(), reg()).prop_map(|(size, dst, off, src)| Op::Stx {
            size,
            dst,
            off,
            src
        }),
        (
            prop::sample::select(vec![Size::W, Size::DW]),
            prop::sample::select(AtomicOp::ALL.to_vec()),
            reg(),
            reg(),
            any::<i16>()
        )
            .prop_map(|(size, op, dst, src, off)| Op::Atomic {
                size,
                op,
                dst,
                src,
                off
            }),
        (size(), reg(), reg(), any::<i16>()).prop_map(|(size, dst, src, off)| Op::LoadAcquire {
            size,
            dst,
            src,
            off
        }),
        (size(), reg(), any::<i16>(), reg()).prop_map(|(size, dst, off, src)| Op::StoreRelease {
            size,
            dst,
            off,
            src
        }),
        (reg(), reg(), any::<u16>(), any::<u16>()).prop_map(|(dst, src, dst_as, src_as)| {
            Op::AddrSpaceCast {
                dst,
                src,
                dst_as,
                src_as,
            }
        }),
        (
            any::<bool>(),
            prop::sample::select(JmpOp::ALL.to_vec()),
            reg(),
            source(),
            any::<i16>()
        )
            .prop_map(|(jmp32, op, dst, src, off)| Op::Jmp {
                jmp32,
                op,
                dst,
                src,
                off
            }),
        any::<i16>().prop_map(|off| Op::Ja { off }),
        any::<i32>().prop_map(|imm| Op::Gotol { imm }),
        any::<i16>().prop_map(|off| Op::MayGoto { off }),
        any::<i32>().prop_map(|id| Op::Call(CallTarget::Helper(id))),
        any::<i32>().prop_map(|imm| Op::Call(CallTarget::Local(imm))),
        (any::<i32>(), any::<i16>())
            .prop_map(|(btf_id, off)| Op::Call(CallTarget::Kfunc { btf_id, off })),
        reg().prop_map(|reg| Op::Callx { reg }),
        Just(Op::Exit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn random_instruction_round_trips(op in op()) {
        prop_assert!(op.validate().is_ok(), "{:?}", op);
        let slots = encode(&op);
        prop_assert_eq!(Op::decode(&slots, 0), Ok(op));
        let text = llvm_text(&op);
        let parsed = parse_lenient(&text);
        prop_assert!(parsed.is_ok(), "`{}`: {:?}", text, parsed.err());
        let program = parsed.unwrap().program;
        prop_assert_eq!(&program.insns, &slots, "`{}`", text);
        let printed = fmt_llvm(&program).unwrap();
        prop_assert_eq!(printed.trim_end(), text.as_str());
        let _ = kernel_op(&op);
    }

    #[test]
    fn random_programs_round_trip_through_bytes(ops in prop::collection::vec(op(), 1..40)) {
        let mut insns = Vec::new();
        for op in &ops {
            op.encode_into(&mut insns);
        }
        let bytes = Program { insns, relocations: vec![] }.to_bytes();
        let text = fmt_llvm(&Program::from_bytes(&bytes).unwrap()).unwrap();
        let back = parse_lenient(&text).unwrap().program;
        prop_assert_eq!(back.to_bytes(), bytes.clone());
        let hex = mb_asm::text::fmt_llvm_hex(&Program::from_bytes(&bytes).unwrap()).unwrap();
        let back = parse_lenient(&hex);
        prop_assert!(back.is_ok(), "{}: {:?}", hex, back.err());
        prop_assert_eq!(back.unwrap().program.to_bytes(), bytes.clone());
        let labeled = fmt_llvm_labeled(&Program::from_bytes(&bytes).unwrap()).unwrap();
        let back = parse_lenient(&labeled);
        prop_assert!(back.is_ok(), "{}: {:?}", labeled, back.err());
        prop_assert_eq!(back.unwrap().program.to_bytes(), bytes);
    }

    #[test]
    fn random_bytes_decode_canonically_or_fail(raw in prop::collection::vec(any::<u8>(), 8..64)) {
        let len = raw.len() / 8 * 8;
        let program = Program::from_bytes(&raw[..len]).unwrap();
        if let Ok(text) = fmt_llvm(&program) {
            // Whatever decodes prints, and the text assembles back to the same bytes.
            let back = parse_lenient(&text);
            prop_assert!(back.is_ok(), "`{}`: {:?}", text, back.err());
            prop_assert_eq!(back.unwrap().program.to_bytes(), raw[..len].to_vec());
            prop_assert!(fmt_kernel(&program).is_ok());
        }
    }
}

#[test]
fn kernel_text_parses_back_to_the_same_bytes() {
    use mb_asm::text::parse_kernel;
    // Everything but what the kernel's text cannot carry (pseudo sources, kfunc offsets).
    let forms: Vec<Op> = all_forms()
        .into_iter()
        .filter(|op| {
            !matches!(op, Op::LdImm64 { pseudo, .. } if *pseudo != 0)
                && !matches!(op, Op::Call(CallTarget::Kfunc { off, .. }) if *off != 0)
        })
        .collect();
    let mut insns = Vec::new();
    for op in &forms {
        op.encode_into(&mut insns);
    }
    let program = Program {
        insns,
        relocations: vec![],
    };
    let printed = fmt_kernel(&program).unwrap();
    let back = parse_kernel(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(back.program.insns, program.insns);
}

#[test]
fn kernel_parser_reads_a_verifier_log() {
    use mb_asm::text::parse_kernel;
    let log = "\
func#0 @0
0: R1=ctx() R10=fp0
0: (bf) r6 = r1                       ; R1=ctx() R6_w=ctx()
1: (b7) r1 = 128                      ; R1_w=128
2: (18) r7 = 0x1122334455667788      ; R7_w=0x1122334455667788
4: (85) call bpf_ktime_get_ns#5       ; R0=scalar()
5: (66) if w1 s> 0xfffffffb goto pc+1
6: (95) exit
processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";
    let parsed = parse_kernel(log).unwrap();
    assert_eq!(
        parsed.program.fmt_llvm().unwrap(),
        "r6 = r1\nr1 = 128\nr7 = 1234605616436508552 ll\ncall 5\nif w1 s> -5 goto +1\nexit\n"
    );
    // The opcode in parentheses must agree with the text.
    let e = parse_kernel("0: (07) r1 = 1").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(
        e.message.contains("(07)") && e.message.contains("(b7)"),
        "{}",
        e.message
    );
}
