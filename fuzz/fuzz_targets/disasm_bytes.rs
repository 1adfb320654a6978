//! Any bytes give text or an error, never a panic; whatever disassembles assembles back to
//! the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(program) = mb_asm::Program::from_bytes(data) else {
        return;
    };
    let _ = mb_asm::check::check(&program.insns);
    let kernel = mb_asm::text::fmt_kernel(&program);
    let Ok(text) = mb_asm::text::fmt_llvm(&program) else {
        assert!(kernel.is_err());
        return;
    };
    let back = mb_asm::text::parse_lenient(&text).expect("disassembly parses");
    assert_eq!(
        back.program.to_bytes(),
        data,
        "asm(disasm(bytes)) of {text}"
    );
    let hex = mb_asm::text::fmt_llvm_hex(&program).expect("decodes");
    let back = mb_asm::text::parse_lenient(&hex).expect("hex disassembly parses");
    assert_eq!(back.program.to_bytes(), data, "hex round trip of {hex}");
    let labeled = mb_asm::text::fmt_llvm_labeled(&program).expect("decodes");
    let back = mb_asm::text::parse_lenient(&labeled).expect("labeled disassembly parses");
    assert_eq!(
        back.program.to_bytes(),
        data,
        "labeled round trip of {labeled}"
    );
});
