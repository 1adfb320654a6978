//! Proof that programs built with `mb-asm` run in the real kernel through mb-loader: connect
//! rewrite, link update with no window, legacy attach, pinned links, sockops + sk_msg
//! redirect, getsockopt answers, verifier rejections, probing. Root only; every program is
//! attached to a private cgroup that the test created, traffic stays on loopback.

mod common;

use common::*;
use mb_loader::probe::{probe_all, verdict, Item, Need, Support, Verdict};
use mb_loader::*;
use mb_maps::SockHash;
use mb_sys::bpf::AttachType;
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::cgroup::OwnedCgroup;
use mb_sys::testing::kernel_tests_enabled;
use std::os::fd::AsFd;
use std::time::Duration;

const CONNECT4: AttachType = AttachType::CGROUP_INET4_CONNECT;

fn load_rewrite(name: &str, from: u16, to: u16) -> LoadedProgram {
    load(
        &connect4_rewrite(name),
        &[],
        &[
            ("from_port", port_in_ctx(from)),
            ("to_port", port_in_ctx(to)),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A kernel test's private cgroup and the `app` child its peer runs in (both removed on drop).
struct TestCgroup {
    cg: OwnedCgroup,
    app: std::path::PathBuf,
}

/// The start of the kernel tests that attach to a cgroup: `None` (skip) without root outside
/// CI, else a private cgroup `mb-test-<label>` with an `app` child.
fn start(test: &str, label: &str) -> Option<TestCgroup> {
    if !kernel_tests_enabled(test) {
        return None;
    }
    let cg = OwnedCgroup::create_private(&format!("mb-test-{label}")).unwrap();
    let app = cg.create_child("app").unwrap();
    Some(TestCgroup { cg, app })
}

/// Connects `n` times from a peer in `cgroup` to `port` and returns how many succeeded.
fn peer_connects(cgroup: &std::path::Path, port: u16, n: u32) -> String {
    Peer::start(cgroup, &["connect", &port.to_string(), &n.to_string()]).result()
}

/// The setup of the tests that swap programs: acceptors for the original port and two
/// rewrite targets, a program for each target, and the first attached to `cg` in `mode`.
struct TwoRewrites {
    original: Acceptor,
    first: Acceptor,
    second: Acceptor,
    p1: LoadedProgram,
    p2: LoadedProgram,
    att: CgroupAttachment,
}

fn two_rewrites(cg: &OwnedCgroup, names: [&str; 2], mode: AttachMode) -> TwoRewrites {
    let (original, first, second) = (Acceptor::new(), Acceptor::new(), Acceptor::new());
    let p1 = load_rewrite(names[0], original.port, first.port);
    let p2 = load_rewrite(names[1], original.port, second.port);
    let att = CgroupAttachment::attach(&p1, cg.path(), CONNECT4, None, mode).unwrap();
    TwoRewrites {
        original,
        first,
        second,
        p1,
        p2,
        att,
    }
}

/// A peer in `cgroup` connects `n` times to `port`, every connect succeeding, and `acceptor`
/// then has `total` connections in all within 5 s.
fn connects_reach(cgroup: &std::path::Path, port: u16, n: u32, acceptor: &Acceptor, total: usize) {
    assert_eq!(
        peer_connects(cgroup, port, n),
        format!("connected={n} failed=0")
    );
    assert!(
        acceptor.wait_for(total, Duration::from_secs(5)),
        "{} of {total} connections arrived",
        acceptor.count()
    );
}

#[test]
fn connect4_rewrites_inside_the_cgroup_only_and_stops_after_detach() {
    let Some(TestCgroup { cg, app }) = start(
        "connect4_rewrites_inside_the_cgroup_only_and_stops_after_detach",
        "connect4",
    ) else {
        return;
    };
    let (original, sidecar) = (Acceptor::new(), Acceptor::new());
    let prog = load_rewrite("mb_t_rewrite", original.port, sidecar.port);
    let att = CgroupAttachment::attach(&prog, cg.path(), CONNECT4, None, AttachMode::Auto).unwrap();
    assert!(att.is_link(), "this kernel has cgroup bpf_link");

    // Inside (a child cgroup of the attached one): rewritten to the sidecar port.
    connects_reach(&app, original.port, 3, &sidecar, 3);
    // Outside (this test process): untouched.
    std::net::TcpStream::connect(("127.0.0.1", original.port)).unwrap();
    assert!(original.wait_for(1, Duration::from_secs(5)));
    assert_eq!((original.count(), sidecar.count()), (1, 3));

    att.detach().unwrap();
    connects_reach(&app, original.port, 2, &original, 3);
    assert_eq!(sidecar.count(), 3, "nothing rewritten after detach");
}

#[test]
fn legacy_attach_is_multi_listed_replaceable_and_detachable() {
    let Some(TestCgroup { cg, app }) = start(
        "legacy_attach_is_multi_listed_replaceable_and_detachable",
        "legacy",
    ) else {
        return;
    };
    let TwoRewrites {
        original,
        first,
        second,
        p1,
        p2,
        mut att,
    } = two_rewrites(
        &cg,
        ["mb_t_legacy1", "mb_t_legacy2"],
        AttachMode::LegacyOnly,
    );
    assert!(!att.is_link());
    let listed = query_cgroup(cg.path(), CONNECT4, false).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "mb_t_legacy1");
    assert_eq!(listed[0].id, p1.info().unwrap().id);
    let flags =
        mb_sys::bpf::prog_query(std::fs::File::open(cg.path()).unwrap().as_fd(), CONNECT4, 0)
            .unwrap()
            .attach_flags;
    assert_eq!(
        flags,
        mb_sys::bpf::F_ALLOW_MULTI,
        "coexists with other programs"
    );

    connects_reach(&app, original.port, 1, &first, 1);
    att.replace(&p2).unwrap();
    connects_reach(&app, original.port, 1, &second, 1);
    let listed = query_cgroup(cg.path(), CONNECT4, false).unwrap();
    assert_eq!(listed.len(), 1, "replaced, not added");
    assert_eq!(listed[0].name, "mb_t_legacy2");

    att.detach().unwrap();
    assert!(query_cgroup(cg.path(), CONNECT4, false).unwrap().is_empty());
    assert_eq!(original.count(), 0);
}

#[test]
fn link_update_swaps_programs_with_no_unrewritten_connect() {
    let Some(TestCgroup { cg, app }) = start(
        "link_update_swaps_programs_with_no_unrewritten_connect",
        "swap",
    ) else {
        return;
    };
    let TwoRewrites {
        original,
        first: old_side,
        second: new_side,
        p1: _p1,
        p2,
        mut att,
    } = two_rewrites(
        &cg,
        ["mb_t_swap_old", "mb_t_swap_new"],
        AttachMode::LinkOnly,
    );
    let stop = std::env::temp_dir().join(format!("mb-test-swap-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let peer = Peer::start(
        &app,
        &[
            "connect-until",
            &original.port.to_string(),
            stop.to_str().unwrap(),
            "200",
            "100000",
        ],
    );
    // Swap while the peer is connecting in a loop.
    assert!(
        old_side.wait_for(50, Duration::from_secs(10)),
        "peer is connecting"
    );
    att.replace(&p2).unwrap();
    assert!(new_side.wait_for(1, Duration::from_secs(10)));
    std::fs::write(&stop, b"").unwrap();
    let result = peer.result();
    let _ = std::fs::remove_file(&stop);
    let connected: usize = result
        .strip_prefix("connected=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected peer result {result:?}"));
    assert!(result.ends_with("failed=0"), "{result}");
    assert!(new_side.wait_for(200, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        original.count(),
        0,
        "a connect went unrewritten during the swap"
    );
    assert_eq!(old_side.count() + new_side.count(), connected);
    eprintln!(
        "swap: {} connects before, {} after, 0 unrewritten",
        old_side.count(),
        new_side.count()
    );
}

#[test]
fn pinned_link_survives_its_fd_is_updated_in_place_and_unloads() {
    let Some(TestCgroup { cg, app }) = start(
        "pinned_link_survives_its_fd_is_updated_in_place_and_unloads",
        "linkpin",
    ) else {
        return;
    };
    let fs = PrivateBpffs::new("mb-test-linkpin").unwrap();
    let pin = fs.path().join("connect4");
    let (original, first, second) = (Acceptor::new(), Acceptor::new(), Acceptor::new());
    {
        let p1 = load_rewrite("mb_t_pin1", original.port, first.port);
        let att = CgroupAttachment::attach(&p1, cg.path(), CONNECT4, Some(&pin), AttachMode::Auto)
            .unwrap();
        assert!(att.is_link());
        // Program and link fds close here; the pin keeps the attachment.
    }
    // Still attached via the pin.
    connects_reach(&app, original.port, 1, &first, 1);
    // A "restarted agent": same pin, new program → updated in place, not attached twice.
    let p2 = load_rewrite("mb_t_pin2", original.port, second.port);
    let att =
        CgroupAttachment::attach(&p2, cg.path(), CONNECT4, Some(&pin), AttachMode::Auto).unwrap();
    drop(att);
    let listed = query_cgroup(cg.path(), CONNECT4, false).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "mb_t_pin2");
    connects_reach(&app, original.port, 1, &second, 1);
    // Unload: detach through the pin and remove it.
    detach_pinned_link(&pin).unwrap();
    assert!(!pin.exists());
    assert!(query_cgroup(cg.path(), CONNECT4, false).unwrap().is_empty());
    connects_reach(&app, original.port, 1, &original, 1);
    detach_pinned_link(&pin).unwrap(); // absent: nothing to do
}

#[test]
fn pinned_link_of_a_removed_cgroup_is_replaced_and_another_cgroups_pin_refused() {
    if !kernel_tests_enabled(
        "pinned_link_of_a_removed_cgroup_is_replaced_and_another_cgroups_pin_refused",
    ) {
        return;
    }
    let fs = PrivateBpffs::new("mb-test-defunct").unwrap();
    let pin = fs.path().join("connect4");
    let prog = load_rewrite("mb_t_defunct", 1, 2);
    let first = OwnedCgroup::create_private("mb-test-defunct-a").unwrap();
    let second = OwnedCgroup::create_private("mb-test-defunct-b").unwrap();
    CgroupAttachment::attach(&prog, first.path(), CONNECT4, Some(&pin), AttachMode::Auto).unwrap();
    // The pin belongs to the first cgroup: using it for the second is refused, clearly.
    let e = CgroupAttachment::attach(&prog, second.path(), CONNECT4, Some(&pin), AttachMode::Auto)
        .unwrap_err();
    assert!(e.to_string().contains("belongs to another cgroup"), "{e}");
    // Remove the first cgroup: its link goes defunct (asynchronously).
    drop(first);
    let link = mb_sys::bpf::obj_get(&pin, 0).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mb_sys::bpf::link_info(link.as_fd()).unwrap().cgroup_id != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "link never went defunct"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(link);
    let att =
        CgroupAttachment::attach(&prog, second.path(), CONNECT4, Some(&pin), AttachMode::Auto)
            .unwrap();
    assert!(att.is_link());
    let listed = query_cgroup(second.path(), CONNECT4, false).unwrap();
    assert_eq!(listed.len(), 1, "a fresh link on the live cgroup");
    att.detach().unwrap();
    assert!(!pin.exists());
}

/// Program `name` (sockops putting every socket into `socks`), loaded and attached to `cg`.
fn attach_sockops_insert(
    name: &str,
    socks: &SockHash<u32>,
    cg: &OwnedCgroup,
) -> (LoadedProgram, CgroupAttachment) {
    let sockops = load(&sockops_insert(name), &[("socks", socks.as_fd())], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let att = CgroupAttachment::attach(
        &sockops,
        cg.path(),
        AttachType::CGROUP_SOCK_OPS,
        None,
        AttachMode::Auto,
    )
    .unwrap();
    (sockops, att)
}

#[test]
fn sockops_and_sk_msg_redirect_a_message_into_another_socket() {
    let Some(TestCgroup { cg, app }) = start(
        "sockops_and_sk_msg_redirect_a_message_into_another_socket",
        "skmsg",
    ) else {
        return;
    };
    let socks: SockHash<u32> = SockHash::create("mb_t_socks", 64).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let sk_msg = load(
        &sk_msg_redirect("mb_t_skmsg"),
        &[("socks", socks.as_fd())],
        &[("target_port", i64::from(p2))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let msg_att = SkMsgAttachment::attach(&sk_msg, socks.as_fd()).unwrap();
    let (_sockops, ops_att) = attach_sockops_insert("mb_t_sockops", &socks, &cg);
    let result = Peer::start(&app, &["sockmap", &p1.to_string(), &p2.to_string()]).result();
    // The message written on connection 1 arrived on connection 2's server socket, and not on
    // its own peer: only the sk_msg redirect can do that.
    assert_eq!(result, "s2=redirected-ping s1_bytes=0");
    drop(ops_att);
    msg_att.detach().unwrap();
}

#[test]
fn sockops_fills_the_sockhash_with_both_ends() {
    let Some(TestCgroup { cg, app }) =
        start("sockops_fills_the_sockhash_with_both_ends", "sockops")
    else {
        return;
    };
    let socks: SockHash<u32> = SockHash::create("mb_t_socks2", 64).unwrap();
    let (_sockops, _att) = attach_sockops_insert("mb_t_sockops2", &socks, &cg);
    let (p1, p2) = (free_port(), free_port());
    let mut peer = Peer::start(&app, &["hold", &p1.to_string(), &p2.to_string()]);
    assert_eq!(peer.read_line(), "READY");
    // Four live sockets: both server ends under the listening ports, both clients under
    // their ephemeral ports.
    let mut keys: Vec<u32> = socks.keys().map(Result::unwrap).collect();
    keys.sort();
    assert_eq!(keys.len(), 4, "keys {keys:?}");
    assert!(
        keys.contains(&u32::from(p1)) && keys.contains(&u32::from(p2)),
        "{keys:?}"
    );
    assert!(socks.cookie(&u32::from(p1)).unwrap().is_some());
    peer.send_line("done");
    assert_eq!(peer.result(), "held");
    // Closed sockets leave the sockhash by themselves.
    assert_eq!(socks.keys().count(), 0);
}

#[test]
fn getsockopt_program_answers_a_chosen_optname() {
    let Some(TestCgroup { cg, app }) =
        start("getsockopt_program_answers_a_chosen_optname", "getsockopt")
    else {
        return;
    };
    // sockaddr_in { AF_INET, htons(15006), 10.1.2.3 } as two little-endian words (mov64
    // sign-extends its immediate; the 32-bit store keeps the low half).
    let word0 = i64::from(u32::from_le_bytes([2, 0, 0x3a, 0x9e]) as i32);
    let word1 = i64::from(u32::from_le_bytes([10, 1, 2, 3]) as i32);
    let prog = load(
        &getsockopt_answer("mb_t_getsockopt"),
        &[],
        &[("optname", 80), ("word0", word0), ("word1", word1)], // SO_ORIGINAL_DST = 80
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _att = CgroupAttachment::attach(
        &prog,
        cg.path(),
        AttachType::CGROUP_GETSOCKOPT,
        None,
        AttachMode::Auto,
    )
    .unwrap();
    assert_eq!(
        Peer::start(&app, &["origdst"]).result(),
        "origdst=10.1.2.3:15006"
    );
    // Outside the cgroup the kernel answers (no conntrack entry): an error, not our value.
    let outside = std::process::Command::new(env!("CARGO_BIN_EXE_mb-test-peer"))
        .arg("origdst")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    outside.stdin.as_ref().unwrap().write_all(b"go\n").unwrap();
    let out = outside.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RESULT error="), "{text}");
}

#[test]
fn rejected_program_error_names_it_and_quotes_the_verifier() {
    if !kernel_tests_enabled("rejected_program_error_names_it_and_quotes_the_verifier") {
        return;
    }
    use mb_asm::{Asm, Reg, Size};
    let mut a = Asm::new();
    // Reads through r2, which was never written.
    a.ldx(Size::W, Reg::R0, Reg::R2, 0).exit();
    let image = ProgramImage::new(
        "mb_t_bad_read",
        mb_sys::bpf::ProgType::SOCK_OPS,
        None,
        a.finish().unwrap(),
    );
    let e = load(&image, &[], &[]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("program mb_t_bad_read (sock_ops) was rejected"),
        "{text}"
    );
    assert!(text.contains("EACCES"), "{text}");
    assert!(says_never_written(&text, "R2"), "{text}");
    assert!(text.contains("(61) r0 = *(u32 *)(r2 +0)"), "{text}");
    assert!(says_never_written(e.verifier_log().unwrap(), "R2"));
}

/// Whether a verifier log says `reg` was read before anything was written to it, in any
/// kernel's words: "R2 !read_ok" (up to 6.x), "R2 has never been initialized" (7.x).
fn says_never_written(log: &str, reg: &str) -> bool {
    const WORDINGS: [&str; 3] = ["!read_ok", "never been initialized", "not initialized"];
    log.lines()
        .any(|line| line.contains(reg) && WORDINGS.iter().any(|w| line.contains(w)))
}

#[test]
fn verifier_wordings_of_an_unwritten_register_are_recognised() {
    assert!(says_never_written(
        "0: (61) r0 = *(u32 *)(r2 +0)\nR2 !read_ok\n",
        "R2"
    ));
    assert!(says_never_written("R2 has never been initialized", "R2"));
    assert!(!says_never_written("R3 !read_ok", "R2"));
    assert!(!says_never_written("R2 invalid mem access 'scalar'", "R2"));
}

#[test]
fn probe_on_this_machine_has_no_unknowns_and_matches_kernel_versions() {
    if !kernel_tests_enabled("probe_on_this_machine_has_no_unknowns_and_matches_kernel_versions") {
        return;
    }
    let probes = probe_all();
    let unknown: Vec<_> = probes
        .iter()
        .filter(|p| matches!(p.support, Support::Unknown(_)))
        .map(|p| format!("{}: {:?}", p.name, p.support))
        .collect();
    assert!(unknown.is_empty(), "unknowns: {unknown:#?}");
    // cilium's feature-matrix habit: the probe agrees with the version table both ways. On a
    // kernel at least as new as a feature's first release it must say yes (a "no" there is a
    // probe regression); on an older one, no (a "yes" means the table is wrong). So the test
    // passes on 5.10 because 5.10 lacks what the table says it lacks, not by being lenient.
    let running = mb_sys::testing::kernel_release();
    let mut missing = Vec::new();
    for p in probes {
        let Some(first) = mb_sys::testing::parse_release(p.first_kernel) else {
            continue;
        };
        if running >= first {
            assert_eq!(
                p.support,
                Support::Yes,
                "{} (first in {})",
                p.name,
                p.first_kernel
            );
        } else {
            assert!(
                matches!(p.support, Support::No(_)),
                "{} is {:?} on {running:?}, but the table says it came in {}",
                p.name,
                p.support,
                p.first_kernel
            );
            assert_eq!(p.need, Need::Optional, "{}: required", p.name);
            missing.push(p.name.clone());
        }
    }
    // The verdict follows: everything on a new enough kernel, else reduced by exactly the
    // features the table says this kernel lacks.
    match verdict(probes) {
        Verdict::Full => assert!(missing.is_empty(), "full, but missing {missing:?}"),
        Verdict::Reduced(off) => {
            assert_eq!(off.len(), missing.len(), "{off:#?} vs {missing:#?}");
            for name in &missing {
                assert!(
                    off.iter().any(|line| line.starts_with(name.as_str())),
                    "{name}: {off:#?}"
                );
            }
        }
        other => panic!("verdict {other:?} on {running:?}"),
    }
    // Cached: the same slice comes back.
    assert!(std::ptr::eq(probes, probe_all()));
    // RLIMIT_MEMLOCK is raised exactly where the kernel still charges it (before 5.11).
    let memcg = probes
        .iter()
        .find(|p| p.item == Item::MemcgAccounting)
        .unwrap();
    let expected = if memcg.support == Support::Yes {
        Memlock::NotNeeded
    } else {
        Memlock::Raised
    };
    assert_eq!(raise_memlock_if_needed().unwrap(), expected);
}
