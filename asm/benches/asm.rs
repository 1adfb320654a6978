//! Builder throughput (1M instructions built, checked and encoded; target < 1 s) and text
//! parsing throughput. Run: `cargo bench -p mb-asm --bench asm`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mb_asm::{AluOp, Asm, Helper, JmpOp, Reg, Size};
use std::hint::black_box;

const INSNS: usize = 1_000_000;

/// A realistic mix: ALU, loads/stores, a map lookup, forward jumps over short blocks.
/// Each round is 10 slots.
fn build(slots: usize) -> Vec<u8> {
    let mut asm = Asm::new();
    for i in 0..slots / 10 {
        let skip = asm.label();
        asm.mov64_reg(Reg::R6, Reg::R1)
            .ldx(Size::W, Reg::R2, Reg::R6, 4)
            .alu64_imm(AluOp::Add, Reg::R2, i as i32)
            .stx(Size::W, Reg::FP, -4, Reg::R2)
            .jmp_imm(JmpOp::Ne, Reg::R2, 80, skip)
            .ld_map_fd(Reg::R1, "settings")
            .call(Helper::MapLookupElem)
            .alu32_reg(AluOp::Xor, Reg::R3, Reg::R3)
            .bind(skip)
            .mov64_imm(Reg::R0, 1);
    }
    asm.exit();
    let program = asm.finish().expect("benchmark program is valid");
    program.to_bytes()
}

fn program_text(lines: usize) -> String {
    let body = "\
LBB0_%:
    r6 = r1
    r2 = *(u32 *)(r6 + 4)
    r2 += 17
    *(u32 *)(r10 - 4) = r2
    if r2 != 80 goto LBB0_%_end
    r1 = settings ll
    call 1
    w3 ^= w3
    lock *(u64 *)(r10 - 16) += r2
LBB0_%_end:
    r0 = 1
";
    let per_round = body.lines().count();
    let mut text = String::new();
    for i in 0..lines.div_ceil(per_round) {
        text.push_str(&body.replace('%', &i.to_string()));
    }
    text.push_str("    exit\n");
    text
}

fn bench_builder(c: &mut Criterion) {
    let mut group = c.benchmark_group("builder");
    group.sample_size(10);
    group.throughput(Throughput::Elements(INSNS as u64));
    group.bench_function(BenchmarkId::new("build_finish_encode", INSNS), |b| {
        b.iter(|| black_box(build(black_box(INSNS))))
    });
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let text = program_text(100_000);
    let mut group = c.benchmark_group("text");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function(BenchmarkId::new("parse", "100k lines"), |b| {
        b.iter(|| black_box(mb_asm::text::parse(black_box(&text)).expect("valid text")))
    });
    let program = mb_asm::text::parse(&text).unwrap();
    group.throughput(Throughput::Elements(program.insns.len() as u64));
    group.bench_function(BenchmarkId::new("print_llvm", "100k lines"), |b| {
        b.iter(|| black_box(mb_asm::text::fmt_llvm(black_box(&program)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench_builder, bench_parse);
criterion_main!(benches);
