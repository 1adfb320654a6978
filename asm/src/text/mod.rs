//! Text in and out: LLVM syntax ([`fmt_llvm`], [`parse`]) and the kernel's syntax
//! ([`fmt_kernel`], [`parse_kernel`] for verifier logs and `bpftool prog dump xlated`).
//!
//! # Syntax
//!
//! The LLVM forms, as `llvm-objdump --no-print-imm-hex -d` prints them and `llvm-mc` reads
//! them: `r0 = *(u32 *)(r1 + 8)`, `w1 += w2`, `if r1 > 64 goto +3`, `if w1 s< w2 goto LBB0_2`,
//! `r1 = 0x1122334455667788 ll`, `r1 = my_map ll` (a map relocation),
//! `lock *(u64 *)(r1 + 0) += r2`, `r0 = atomic_fetch_add((u64 *)(r1 + 0), r0)`,
//! `r0 = xchg_64(r1 + 0, r0)`, `r0 = cmpxchg_64(r1 + 0, r0, r2)`, `r1 = bswap16 r1`,
//! `r1 = (s8)r2`, `r1 s/= r2`, `r0 = *(u16 *)skb[r1]`, `call 1`, `callx r1`, `exit`,
//! `gotol +70000`, `may_goto +2`, `w0 = load_acquire((u8 *)(r1 + 0))`,
//! `store_release((u64 *)(r1 + 0), r2)`, `r0 = addr_space_cast(r1, 0, 1)`. Labels are `name:`; comments start with `#`, `;` or `//`.
//! Numbers are decimal or `0x` hex. Lines starting with a `.directive` are ignored.
//!
//! The printer writes decimal (LLVM's `--no-print-imm-hex` form, the one LLVM's own MC tests
//! check): it round-trips exactly and diffs cleanly against those tests; the parser reads
//! both. [`fmt_llvm_hex`] prints hex like `llvm-objdump -d` does by default since LLVM 16.
//!
//! Difference from llvm-mc's bytes: `r1 = my_map ll` sets `src = BPF_PSEUDO_MAP_FD` in the
//! instruction (what the kernel needs); llvm-mc leaves `src = 0` and emits an ELF relocation
//! for libbpf to fix.
//!
//! Extensions (LLVM's text has no way to say these, but the bytes can):
//! * `call pc+N` / `call pc-N` / `call label`: BPF-to-BPF call (`src = BPF_PSEUDO_CALL`);
//!   `call N` (also `+N`, `-N`, as llvm-mc reads them) is a helper call, and so is
//!   `call bpf_map_lookup_elem` / `call map_lookup_elem` when no label has that name.
//! * `call kfunc(ID)` / `call kfunc(ID, OFF)`: kfunc call (`src = BPF_PSEUDO_KFUNC_CALL`).
//! * 64-bit loads with a pseudo source: `r1 = map_fd(FD) ll`, `r1 = map_value(FD, OFF) ll`,
//!   `r1 = btf_id(ID) ll`, `r1 = func(OFF) ll` / `func(label)`, `map_idx(..)`,
//!   `map_idx_value(..)`; a second argument is the second slot's `imm`.
//! * Relocations: `r1 = name ll` / `map_fd(name)` (map fd), `map_value(name, OFF)`, and named
//!   constants: a bare name in an immediate position (`r1 = outbound_port`,
//!   `if w2 == proxy_uid goto +3`, `*(u32 *)(r10 - 4) = mark`) or `const(name)`, which
//!   is also the 64-bit form `r1 = const(name) ll`.
//! * Legacy packet load with a register and an offset: `r0 = *(u8 *)skb[r1 + 4]`.

mod parse;
mod print;

pub use parse::{parse, parse_kernel, parse_lenient, ParseError, Parsed};
pub use print::{fmt_kernel, fmt_llvm, fmt_llvm_hex, fmt_llvm_labeled, kernel_op, llvm_text};
