//! Load + attach of ten small programs (connect4 rewrites built with mb-asm, attached with
//! bpf_link to a private cgroup). Budget: < 20 ms for the ten. Needs root; run with
//! `cargo bench -p mb-loader --bench load_attach`.

use mb_asm::{Asm, JmpOp, Reg, Size};
use mb_loader::{load, AttachMode, CgroupAttachment, ProgramImage};
use mb_sys::bpf::{AttachType, ProgType};
use mb_sys::cgroup::OwnedCgroup;
use std::time::{Duration, Instant};

const PROGRAMS: usize = 10;
const RUNS: usize = 7;

fn image(i: usize) -> ProgramImage {
    let mut a = Asm::new();
    let out = a.label();
    a.ldx(Size::W, Reg::R2, Reg::R1, 24)
        .jmp_const(JmpOp::Ne, Reg::R2, "from_port", out)
        .mov64_const(Reg::R2, "to_port")
        .stx(Size::W, Reg::R1, 24, Reg::R2)
        .bind(out)
        .mov64_imm(Reg::R0, 1)
        .exit();
    ProgramImage::new(
        &format!("mb_bench_{i}"),
        ProgType::CGROUP_SOCK_ADDR,
        Some(AttachType::CGROUP_INET4_CONNECT),
        a.finish().expect("assembles"),
    )
}

fn main() {
    if !mb_sys::testing::kernel_tests_enabled("load_attach bench") {
        return;
    }
    let cg = OwnedCgroup::create_private("mb-bench-load").expect("private cgroup");
    let images: Vec<ProgramImage> = (0..PROGRAMS).map(image).collect();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut attached = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let consts = [("from_port", 1000 + i as i64), ("to_port", 2000 + i as i64)];
            let prog = load(img, &[], &consts).unwrap_or_else(|e| panic!("{e}"));
            let att = CgroupAttachment::attach(
                &prog,
                cg.path(),
                AttachType::CGROUP_INET4_CONNECT,
                None,
                AttachMode::Auto,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            attached.push((prog, att));
        }
        times.push(start.elapsed());
        assert_eq!(attached.len(), PROGRAMS);
        drop(attached); // closing the link fds detaches
    }
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "load + attach of {PROGRAMS} programs: median {:.2} ms, min {:.2} ms, max {:.2} ms over \
         {RUNS} runs; budget < 20 ms: {}",
        ms(median),
        ms(times[0]),
        ms(times[RUNS - 1]),
        if median < Duration::from_millis(20) {
            "met"
        } else {
            "MISSED"
        }
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
