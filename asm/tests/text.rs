//! Text parser errors (with line numbers), lenient vs strict checks, and the kernel printer
//! against the formats of the kernel's `kernel/bpf/disasm.c` (bpf-anchors.md §6).

use mb_asm::text::{fmt_kernel, parse, parse_lenient};
use mb_asm::{Asm, Helper, Program, Reg, RelocKind, Size};

fn err(text: &str) -> (usize, String) {
    match parse_lenient(text) {
        Ok(p) => panic!("`{text}` parsed: {:?}", p.program),
        Err(e) => (e.line, e.message),
    }
}

#[test]
fn syntax_errors_name_the_line_and_the_problem() {
    let cases: &[(&str, usize, &str)] = &[
        ("exit\nfrobnicate r1\n", 2, "does not start an instruction"),
        ("r11 = 1", 1, "not a register"),
        ("r1 = r11", 1, "not a register"),
        ("r1 = w1", 1, "mixes 32-bit"),
        ("r1 += w2", 1, "mixes 32-bit"),
        ("if w1 > r2 goto +1", 1, "mixes 32-bit"),
        ("r1 = 4294967296", 1, "does not fit in 32 bits"),
        ("r1 = -2147483649", 1, "does not fit in 32 bits"),
        ("r1 = 18446744073709551616 ll", 1, "not a number"),
        ("r1 = -9223372036854775809 ll", 1, "does not fit in 64 bits"),
        ("w1 = 5 ll", 1, "64-bit register"),
        ("r1 = *(u32 *)(r2 + 32768)", 1, "16-bit"),
        ("r1 = *(u32 *)(r2 - 32769)", 1, "16-bit"),
        ("r1 = *(u24 *)(r2 + 0)", 1, "is not a type"),
        ("r1 = *(u32 *)(w2 + 0)", 1, "64-bit registers"),
        ("*(s8 *)(r1 + 0) = r2", 1, "stores take"),
        ("exit exit", 1, "after the instruction"),
        ("r1 = 1 @", 1, "unexpected character"),
        ("goto +32768", 1, "16-bit"),
        ("if r1 == 0 goto -32769", 1, "16-bit"),
        ("goto nowhere\nexit", 1, "label `nowhere` is not defined"),
        ("a:\nexit\na:\nexit", 3, "defined twice (first on line 1)"),
        ("r1:\nexit", 1, "reserved"),
        ("r1 = -r2", 1, "in place"),
        ("r1 = be16 r2", 1, "in place"),
        ("r1 = xchg_64(r2 + 0, r3)", 1, "source register"),
        ("r1 = cmpxchg_64(r2 + 0, r0, r3)", 1, "r0"),
        ("r0 = cmpxchg_64(r2 + 0, r1, r3)", 1, "r0"),
        (
            "r1 = atomic_fetch_add((u64 *)(r2 + 0), r3)",
            1,
            "source register",
        ),
        (
            "w1 = atomic_fetch_add((u64 *)(r2 + 0), w1)",
            1,
            "r registers",
        ),
        (
            "r1 = atomic64_fetch_add((u32 *)(r2 + 0), r1)",
            1,
            "takes (u64 *)",
        ),
        ("lock *(u8 *)(r1 + 0) += r2", 1, "u32 or u64"),
        ("lock *(u64 *)(r1 + 0) -= r2", 1, "expected +="),
        ("r1 = (s64)r2", 1, "s8, s16 or s32"),
        ("w1 = (s32)w2", 1, "sign-extending move"),
        ("r1 = *(s64 *)(r2 + 0)", 1, "is not a type"),
        ("r1 = *(u8 *)skb[0]", 1, "legacy packet loads"),
        ("r1 = bogus(1) ll", 1, "not a 64-bit load form"),
        ("r1 = map_value(m, -1) ll", 1, "map value offset"),
        ("call kfunc(4294967296)", 1, "32 bits"),
        ("call 4294967296", 1, "32 bits"),
        ("callx w1", 1, "64-bit register"),
        ("if r1 ~ 2 goto +1", 1, "unexpected character"),
        ("if r1 = 2 goto +1", 1, "expected a comparison"),
        ("r1 = 0x", 1, "not a number"),
    ];
    for (text, line, needle) in cases {
        let (got_line, message) = err(text);
        assert_eq!(got_line, *line, "`{text}`: {message}");
        assert!(
            message.contains(needle),
            "`{text}`: `{message}` lacks `{needle}`"
        );
    }
}

#[test]
fn label_too_far_for_16_bits_is_an_error_naming_gotol() {
    let mut text = String::from("goto far\n");
    for _ in 0..32768 {
        text.push_str("r0 = 0\n");
    }
    text.push_str("far:\nexit\n");
    let (line, message) = err(&text);
    assert_eq!(line, 1);
    assert!(message.contains("gotol"), "{message}");
    // One less fits exactly.
    let text = text.replacen("r0 = 0\n", "", 1);
    let p = parse(&text).unwrap();
    assert_eq!(p.insns[0].off, i16::MAX);
}

#[test]
fn structural_problems_are_warnings_unless_strict() {
    let cases: &[(&str, usize, &str)] = &[
        ("goto +5\nexit", 1, "outside the program"),
        ("if r1 == 0 goto -2\nexit", 1, "outside the program"),
        ("r0 = 0", 1, "falls through"),
        ("r10 = 0\nexit", 1, "r10"),
        ("goto +1\nr1 = 1 ll\nexit", 1, "second half"),
        ("# nothing here\n", 1, "empty"),
        ("call pc+3\nexit", 1, "outside the program"),
    ];
    for (text, line, needle) in cases {
        let lenient = parse_lenient(text).unwrap_or_else(|e| panic!("`{text}`: {e}"));
        let w = lenient
            .warnings
            .first()
            .unwrap_or_else(|| panic!("`{text}`: no warning"));
        assert_eq!(w.line, *line, "`{text}`");
        assert!(w.message.contains(needle), "`{text}`: {}", w.message);
        let strict = parse(text).unwrap_err();
        assert_eq!(&strict, w);
    }
}

#[test]
fn comments_labels_and_directives() {
    let text = "\t.text\n\t.globl prog # a directive\nprog: // the entry\n  r0 = 1 ; set\nLBB0_2: r0 += 1 # label and instruction on one line\n\n  exit\n";
    let parsed = parse_lenient(text).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.program.insns.len(), 3);
    assert_eq!(parsed.slot_lines, vec![4, 5, 7]);
}

#[test]
fn line_numbers_of_warnings_point_at_the_source() {
    let text = "r0 = 0\n\n// gap\nr1 = 2 ll\nr10 = 1\nexit\n";
    let parsed = parse_lenient(text).unwrap();
    assert_eq!(parsed.slot_lines, vec![1, 4, 4, 5, 6]);
    assert_eq!(parsed.warnings.len(), 1);
    assert_eq!(parsed.warnings[0].line, 5);
}

#[test]
fn symbols_become_relocations() {
    let p = parse(
        "r1 = my_map ll\nr2 = map_fd(other) ll\nr3 = map_value(cfg, 4) ll\n\
         r4 = const(base) ll\nr5 = port\nw6 = const(uid)\nif w6 == uid goto +1\n\
         *(u32 *)(r10 - 4) = mark\nexit",
    )
    .unwrap();
    let kinds: Vec<(usize, RelocKind)> = p
        .relocations
        .iter()
        .map(|r| (r.slot, r.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, RelocKind::MapFd("my_map".into())),
            (2, RelocKind::MapFd("other".into())),
            (4, RelocKind::MapValue("cfg".into())),
            (6, RelocKind::Const("base".into())),
            (8, RelocKind::Const("port".into())),
            (9, RelocKind::Const("uid".into())),
            (10, RelocKind::Const("uid".into())),
            (11, RelocKind::Const("mark".into())),
        ]
    );
    assert_eq!(p.insns[0].src, 1, "map fd load carries BPF_PSEUDO_MAP_FD");
    assert_eq!(
        p.insns[4].src, 2,
        "map value load carries BPF_PSEUDO_MAP_VALUE"
    );
    assert_eq!(p.insns[5].imm, 4, "value offset in the second slot");
    let r = p.relocate_const("mark", 0x7f).unwrap();
    assert_eq!(r.insns[11].imm, 0x7f);
}

#[test]
fn kernel_printer_matches_disasm_c_formats() {
    let mut asm = Asm::new();
    let l = asm.label();
    asm.mov64_reg(Reg::R6, Reg::R1)
        .ldx(Size::W, Reg::R1, Reg::R2, 8)
        .jmp_imm(mb_asm::JmpOp::Gt, Reg::R1, 0x40, l)
        .alu64_imm(mb_asm::AluOp::Add, Reg::R1, -4)
        .call(Helper::MapLookupElem)
        .to_be(Reg::R1, 16)
        .atomic_add(Size::DW, Reg::R1, 0, Reg::R2)
        .bind(l)
        .atomic(mb_asm::AtomicOp::FetchAdd, Size::DW, Reg::R1, 0, Reg::R2)
        .atomic(mb_asm::AtomicOp::Cmpxchg, Size::DW, Reg::R1, 0, Reg::R2)
        .atomic(mb_asm::AtomicOp::Xchg, Size::W, Reg::R1, -8, Reg::R2)
        .ld_imm64(Reg::R1, 42)
        .ld_abs(Size::B, 12)
        .ld_ind(Size::B, Reg::R1, 0)
        .neg64(Reg::R1)
        .st_imm(Size::DW, Reg::FP, -8, 0)
        .jmp32_reg(mb_asm::JmpOp::Sle, Reg::R1, Reg::R2, l)
        .call_helper_id(100_000)
        .exit();
    let p = asm.finish().unwrap();
    let printed = fmt_kernel(&p).unwrap();
    let want = "\
0: (bf) r6 = r1
1: (61) r1 = *(u32 *)(r2 +8)
2: (25) if r1 > 0x40 goto pc+4
3: (07) r1 += -4
4: (85) call bpf_map_lookup_elem#1
5: (dc) r1 = be16 r1
6: (db) lock *(u64 *)(r1 +0) += r2
7: (db) r2 = atomic64_fetch_add((u64 *)(r1 +0), r2)
8: (db) r0 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r2)
9: (c3) r2 = atomic_xchg((u32 *)(r1 -8), r2)
10: (18) r1 = 0x2a
12: (30) r0 = *(u8 *)skb[12]
13: (50) r0 = *(u8 *)skb[r1 + 0]
14: (87) r1 = -r1
15: (7a) *(u64 *)(r10 -8) = 0
16: (de) if w1 s<= w2 goto pc-10
17: (85) call unknown#100000
18: (95) exit
";
    assert_eq!(printed, want);
    // Jumps with a negative immediate print it as unsigned hex, like disasm.c's `0x%x`.
    let p = Program::from_bytes(&[0x55, 0x03, 0x0d, 0x00, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(
        fmt_kernel(&p).unwrap(),
        "0: (55) if r3 != 0xffffffff goto pc+13\n"
    );
}

#[test]
fn disassembling_invalid_bytes_is_an_error_naming_the_instruction() {
    let cases: &[(&[u8], &str)] = &[
        (
            &[0x95, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0],
            "instruction 1: opcode 0xff",
        ),
        (&[0xb7, 0x0b, 0, 0, 0, 0, 0, 0], "register r11"),
        (&[0x18, 0x01, 0, 0, 1, 0, 0, 0], "missing its second slot"),
        (
            &[0x18, 0x01, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0],
            "second slot",
        ),
        (&[0xb7, 0x10, 0, 0, 0, 0, 0, 0], "must be zero"),
        (&[0xdc, 0x01, 0, 0, 8, 0, 0, 0], "byte swap width 8"),
        (&[0xdb, 0x21, 0, 0, 0x02, 0, 0, 0], "atomic operation 0x2"),
        (
            &[0xbc, 0x21, 0x20, 0, 0, 0, 0, 0],
            "32-bit sign-extending move",
        ),
        (&[0xbf, 0x21, 0x07, 0, 0, 0, 0, 0], "offset 7"),
        (&[0x85, 0x30, 0, 0, 0, 0, 0, 0], "pseudo source 3"),
        (&[0x8d, 0, 0, 0, 11, 0, 0, 0], "callx register 11"),
        (
            &[0x18, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "pseudo source 7",
        ),
        (
            &[0xd5, 0x01, 0, 0, 0, 0, 0, 0, 0x9d, 0, 0, 0, 0, 0, 0, 0],
            "instruction 1",
        ),
    ];
    for (bytes, needle) in cases {
        let p = Program::from_bytes(bytes).unwrap();
        let e = mb_asm::text::fmt_llvm(&p).unwrap_err().to_string();
        assert!(e.contains(needle), "{bytes:02x?}: `{e}` lacks `{needle}`");
        assert!(fmt_kernel(&p).is_err());
    }
    assert!(Program::from_bytes(&[0; 7])
        .unwrap_err()
        .contains("multiple of 8"));
}

#[test]
fn helpers_can_be_called_by_name_unless_a_label_has_that_name() {
    let p = parse("call bpf_get_socket_cookie\ncall map_lookup_elem\nexit").unwrap();
    assert_eq!(p.insns[0], mb_asm::Insn::new(0x85, 0, 0, 0, 46));
    assert_eq!(p.insns[1], mb_asm::Insn::new(0x85, 0, 0, 0, 1));
    // A label wins: then it is a BPF-to-BPF call.
    let p = parse("call map_lookup_elem\nexit\nmap_lookup_elem:\nr0 = 0\nexit").unwrap();
    assert_eq!(p.insns[0], mb_asm::Insn::new(0x85, 0, 1, 0, 1));
    let e = parse("call no_such_helper\nexit").unwrap_err();
    assert!(e.message.contains("not defined"), "{}", e.message);
}
