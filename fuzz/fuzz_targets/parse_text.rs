//! Any text gives a program or an error, never a panic; whatever parses prints and parses
//! back to the same program.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = mb_asm::text::parse_kernel(text) {
        let _ = mb_asm::text::fmt_kernel(&parsed.program);
    }
    let Ok(parsed) = mb_asm::text::parse_lenient(text) else {
        return;
    };
    let program = parsed.program;
    let printed = mb_asm::text::fmt_llvm(&program).expect("parsed programs decode");
    let again = mb_asm::text::parse_lenient(&printed).expect("printed text parses");
    assert_eq!(again.program, program, "print/parse round trip of {text:?}");
    let _ = mb_asm::text::fmt_kernel(&program);
    let _ = mb_asm::text::fmt_llvm_labeled(&program);
});
