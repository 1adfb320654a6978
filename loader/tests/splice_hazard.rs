//! The run-time probe of the splice hazard decides on this kernel (root): two real sockets,
//! a real sockhash, a real blocked reader. On a kernel with `tcp_bpf_recvmsg`'s single wait
//! (every kernel up to the newest bpf-next checked, see docs/splice-hazard.md) it must find
//! the hazard; `MB_EXPECT_SPLICE_HAZARD=absent` states a kernel known to be fixed.

use mb_loader::splice_hazard::{probe_splice_hazard, SpliceHazard};

#[test]
fn the_probe_decides_and_finds_what_this_kernel_does() {
    if !mb_sys::testing::kernel_tests_enabled("the_probe_decides_and_finds_what_this_kernel_does") {
        return;
    }
    let found = probe_splice_hazard();
    eprintln!("splice hazard: {found:?}");
    let expect_absent = std::env::var("MB_EXPECT_SPLICE_HAZARD").as_deref() == Ok("absent");
    match found {
        SpliceHazard::Present(_) => assert!(!expect_absent, "{found:?}"),
        SpliceHazard::Absent => assert!(expect_absent, "no hazard found on a kernel that has it"),
        SpliceHazard::Unknown(e) => panic!("the probe could not decide: {e}"),
    }
}
