//! The bytecode of every program is pinned by a digest in `golden/programs.digest`, so that a
//! refactor of the program sources (names, stack tables) is proven not to change one byte, and
//! a deliberate change to the data path shows up in review as a changed digest line.
//! `MB_BLESS=1 cargo test -p mb-programs --test bytecode` rewrites the file.

use mb_programs::programs;

const GOLDEN: &str = "tests/golden/programs.digest";

/// FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn digests() -> String {
    let mut out = String::new();
    for def in programs().unwrap_or_else(|(hook, e)| panic!("{hook:?}: {e}")) {
        let mut bytes = def.program.to_bytes();
        bytes.extend_from_slice(format!("{:?}", def.program.relocations).as_bytes());
        out.push_str(&format!(
            "{:?} {:?} insns={} fnv1a={:016x}\n",
            def.hook,
            def.variant,
            def.program.insns.len(),
            fnv1a(&bytes)
        ));
    }
    out
}

#[test]
fn bytecode_matches_the_golden_digests() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    let now = digests();
    if std::env::var_os("MB_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (MB_BLESS=1 writes it)", path.display()));
    assert_eq!(
        now, golden,
        "program bytecode changed; if deliberate, rerun with MB_BLESS=1 and commit the digest"
    );
}
