//! mb-sys wrappers against the real kernel (root only).

use mb_sys::bpf::*;
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::testing::kernel_tests_enabled;
use std::os::fd::{AsFd, AsRawFd};

/// `r0 = 42; exit` as little-endian bytes.
const RETURN_42: [[u8; 8]; 2] = [
    [0xb7, 0x00, 0, 0, 42, 0, 0, 0],
    [0x95, 0x00, 0, 0, 0, 0, 0, 0],
];

fn load_filter(name: &str) -> std::os::fd::OwnedFd {
    prog_load(
        &ProgLoad {
            prog_type: ProgType::SOCKET_FILTER,
            expected_attach_type: None,
            insns: &RETURN_42,
            license: "GPL",
            name,
            prog_flags: 0,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn load_inspect_test_run_pin_and_reopen_a_program() {
    if !kernel_tests_enabled("load_inspect_test_run_pin_and_reopen_a_program") {
        return;
    }
    let prog = load_filter("mb_t_ret42");
    let info = prog_info(prog.as_fd()).unwrap();
    assert_eq!(info.name, "mb_t_ret42");
    assert_eq!(info.prog_type, ProgType::SOCKET_FILTER);
    assert!(info.id > 0);
    // Run it on a minimal Ethernet frame.
    let packet = [0u8; 64];
    let mut out = [0u8; 128];
    let r = prog_test_run(
        prog.as_fd(),
        TestRun {
            data_in: &packet,
            data_out: Some(&mut out),
            repeat: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.retval, 42);
    assert_eq!(r.data_size_out, 64);
    // Pin, re-open by path and by id: the same program.
    let fs = PrivateBpffs::new("mb-test-sys-pin").unwrap();
    let path = fs.path().join("ret42");
    obj_pin(prog.as_fd(), &path).unwrap();
    let again = obj_get(&path, 0).unwrap();
    assert_eq!(prog_info(again.as_fd()).unwrap().id, info.id);
    let by_id = prog_get_fd_by_id(info.id).unwrap();
    assert_eq!(prog_info(by_id.as_fd()).unwrap().tag, info.tag);
    // Pinning twice at one path: EEXIST, with the path in the message.
    let e = obj_pin(prog.as_fd(), &path).unwrap_err();
    assert!(e.is(nix::errno::Errno::EEXIST));
    assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
}

#[test]
fn kernel_fds_are_close_on_exec_and_never_zero() {
    if !kernel_tests_enabled("kernel_fds_are_close_on_exec_and_never_zero") {
        return;
    }
    let map = MapFd::create(&MapCreate {
        map_type: MapType::ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        name: "mb_t_cloexec",
    })
    .unwrap();
    let prog = load_filter("mb_t_cloexec");
    for fd in [map.as_fd().as_raw_fd(), prog.as_raw_fd()] {
        assert!(fd > 0);
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC),
            "fd {fd} lacks FD_CLOEXEC"
        );
    }
}

#[test]
fn kernel_refusals_name_the_command_and_errno() {
    if !kernel_tests_enabled("kernel_refusals_name_the_command_and_errno") {
        return;
    }
    let e = map_create(&MapCreate {
        map_type: MapType(9999),
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        name: "mb_t_bad",
    })
    .unwrap_err();
    assert!(e.is(nix::errno::Errno::EINVAL));
    let text = e.to_string();
    assert!(
        text.contains("BPF_MAP_CREATE") && text.contains("EINVAL") && text.contains("mb_t_bad"),
        "{text}"
    );
    // A key of the wrong size never reaches the kernel.
    let map = MapFd::create(&MapCreate {
        map_type: MapType::HASH,
        key_size: 8,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        name: "mb_t_sizes",
    })
    .unwrap();
    let e = map.update(&[0; 4], &[0; 4], UPDATE_ANY).unwrap_err();
    assert!(e.to_string().contains("key is 4 bytes"), "{e}");
    assert!(!map.lookup(&[0; 8], &mut [0; 4]).unwrap());
}
