//! Shared by the scenario test files: the test bed's binaries and the test-generating macro.

use mb_testbed::scenarios::Binaries;

/// This package's `mb-sidecar` and `mb-workload`, as Cargo built them for these tests.
pub fn bins() -> Binaries {
    Binaries::at(
        env!("CARGO_BIN_EXE_mb-sidecar").as_ref(),
        env!("CARGO_BIN_EXE_mb-workload").as_ref(),
    )
    .expect("the sidecar and workload binaries")
}

/// Per `name => |bins| body;` line, a module `name` with two `#[test]`s, `reference` and
/// `haproxy`: the body with each sidecar kind. Each is gated on root and the kernel.
#[macro_export]
macro_rules! scenario_tests {
    ($($name:ident => $body:expr;)*) => {$(
        mod $name {
            use super::*;

            fn run(kind: mb_testbed::sidecar::SidecarKind) {
                if !mb_sys::testing::kernel_tests_enabled(stringify!($name)) {
                    return;
                }
                let bins = common::bins().with_sidecar(kind);
                let run: &dyn Fn(&mb_testbed::scenarios::Binaries) = &$body;
                run(&bins);
            }

            #[test]
            fn reference() {
                run(mb_testbed::sidecar::SidecarKind::Reference);
            }

            #[test]
            fn haproxy() {
                run(mb_testbed::sidecar::SidecarKind::Haproxy);
            }
        }
    )*};
}
