//! Kernel feature probing with tiny programs and maps — never version numbers. Each result is
//! tri-state (yes / no / unknown) and carries the first mainline kernel that has the feature,
//! for messages only. Results are cached for the life of the process.

use mb_asm::{Helper, Insn};
use mb_sys::bpf::{
    link_create_probe, map_create, prog_load, AttachType, BpfError, MapCreate, MapType, ProgLoad,
    ProgType, VerifierLog, ENOTSUPP, F_NO_PREALLOC,
};
use nix::errno::Errno;
use std::fmt;
use std::sync::OnceLock;

/// A probe's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// The kernel lacks it; the text says how we know.
    No(String),
    /// Could not tell (usually: not root); the text says why.
    Unknown(String),
}

impl Support {
    pub fn is_yes(&self) -> bool {
        *self == Support::Yes
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Yes => f.write_str("yes"),
            Support::No(_) => f.write_str("no"),
            Support::Unknown(_) => f.write_str("unknown"),
        }
    }
}

/// How much merbridge depends on a feature.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Without it merbridge cannot intercept traffic at all.
    Required,
    /// Without it a feature is off or a fallback is used.
    Optional,
}

/// What was probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    ProgramType(ProgType, Option<AttachType>),
    Helper {
        prog_type: ProgType,
        attach_type: Option<AttachType>,
        helper: u32,
        helper_name: &'static str,
    },
    MapType(MapType),
    CgroupLink,
    MemcgAccounting,
    Jmp32,
}

/// One probe and its result.
#[derive(Clone, Debug)]
pub struct Probed {
    /// Short stable name, e.g. `helper sock_ops/get_socket_cookie`.
    pub name: String,
    pub item: Item,
    /// First mainline kernel with it (for messages; "measured" where only test runs tell).
    pub first_kernel: &'static str,
    /// The merbridge feature that needs it.
    pub needed_for: &'static str,
    pub need: Need,
    pub support: Support,
}

/// `r0 = 1`: every hook accepts 1 as a return value (recvmsg accepts nothing else), so a
/// refusal can only be about the program type or helper being probed.
fn mov_r0_1() -> Insn {
    Insn::new(0xb7, 0, 0, 0, 1)
}
fn exit() -> Insn {
    Insn::new(0x95, 0, 0, 0, 0)
}
fn call(id: u32) -> Insn {
    Insn::new(0x85, 0, 0, 0, id as i32)
}
/// `if w0 == 0 goto +0` (BPF_JMP32 | BPF_JEQ | BPF_K).
fn jmp32_jeq_w0_0() -> Insn {
    Insn::new(0x16, 0, 0, 0, 0)
}

fn not_root(e: &BpfError) -> bool {
    e.is(Errno::EPERM)
}

fn load(
    prog_type: ProgType,
    attach_type: Option<AttachType>,
    insns: &[Insn],
    log: Option<&mut VerifierLog>,
) -> Result<(), BpfError> {
    let bytes: Vec<[u8; 8]> = insns.iter().map(Insn::to_bytes).collect();
    prog_load(
        &ProgLoad {
            prog_type,
            expected_attach_type: attach_type,
            insns: &bytes,
            license: "GPL",
            name: "mb_probe",
            prog_flags: 0,
        },
        log,
    )
    .map(drop)
}

/// Does the kernel load a trivial program of this type (and expected attach type)?
pub fn probe_program_type(prog_type: ProgType, attach_type: Option<AttachType>) -> Support {
    match load(prog_type, attach_type, &[mov_r0_1(), exit()], None) {
        Ok(()) => Support::Yes,
        Err(e) if not_root(&e) => Support::Unknown("needs root (CAP_BPF) to load programs".into()),
        Err(e) if e.is(Errno::EINVAL) || e.is(Errno::E2BIG) || e.errno == ENOTSUPP => Support::No(
            format!("the kernel refuses this program type: {}", e.errno_name()),
        ),
        Err(e) => Support::Unknown(e.to_string()),
    }
}

/// The verifier's words for "this helper does not exist here" (the same three strings
/// libbpf, aya and cilium/ebpf look for).
const HELPER_MISSING: [&str; 3] = [
    "invalid func ",
    "unknown func ",
    "program of this type cannot use helper ",
];

/// Can a program of this type call helper `id`? Loads `call id; r0 = 1; exit` with a log: an
/// argument complaint means the verifier knows the helper; one of [`HELPER_MISSING`] means no.
pub fn probe_helper(prog_type: ProgType, attach_type: Option<AttachType>, id: u32) -> Support {
    let mut log = VerifierLog::new(16 * 1024, 1);
    match load(
        prog_type,
        attach_type,
        &[call(id), mov_r0_1(), exit()],
        Some(&mut log),
    ) {
        Ok(()) => Support::Yes,
        Err(e) if not_root(&e) => Support::Unknown("needs root (CAP_BPF) to load programs".into()),
        Err(e) => {
            let text = log.text();
            if let Some(line) = text
                .lines()
                .find(|l| HELPER_MISSING.iter().any(|m| l.contains(m)))
            {
                Support::No(format!("verifier: {}", line.trim()))
            } else if e.is(Errno::EACCES) || e.is(Errno::EINVAL) {
                // The verifier got past the helper lookup and complained about arguments.
                Support::Yes
            } else {
                Support::Unknown(e.to_string())
            }
        }
    }
}

/// Can the kernel create a 1-entry map of this type?
pub fn probe_map_type(map_type: MapType) -> Support {
    let (key_size, flags) = match map_type {
        MapType::LPM_TRIE => (8, F_NO_PREALLOC),
        _ => (4, 0),
    };
    match map_create(&MapCreate {
        map_type,
        key_size,
        value_size: 4,
        max_entries: 1,
        map_flags: flags,
        name: "mb_probe",
    }) {
        Ok(_) => Support::Yes,
        Err(e) if not_root(&e) => Support::Unknown("needs root (CAP_BPF) to create maps".into()),
        Err(e) if e.is(Errno::EINVAL) || e.is(Errno::E2BIG) || e.errno == ENOTSUPP => {
            Support::No(format!("map creation refused: {}", e.errno_name()))
        }
        Err(e) => Support::Unknown(e.to_string()),
    }
}

/// Cgroup bpf_link: LINK_CREATE with invalid fds says EBADF when the command exists.
pub fn probe_cgroup_link() -> Support {
    match link_create_probe(AttachType::CGROUP_INET_INGRESS) {
        Err(e) if e.is(Errno::EBADF) => Support::Yes,
        Err(e) if not_root(&e) => Support::Unknown("needs root to probe bpf_link".into()),
        Err(e) if e.is(Errno::EINVAL) => Support::No("BPF_LINK_CREATE is unknown".into()),
        Err(e) => Support::Unknown(e.to_string()),
        Ok(()) => Support::Unknown("LINK_CREATE accepted invalid fds".into()),
    }
}

/// Memcg accounting of BPF memory (5.11). Probed by libbpf's proxy, which has no process-wide
/// side effects: `bpf_ktime_get_coarse_ns` landed in the same release.
pub fn memcg_accounting() -> Support {
    static CACHE: OnceLock<Support> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            match probe_helper(ProgType::SOCKET_FILTER, None, Helper::KtimeGetCoarseNs.id()) {
                Support::No(_) => {
                    Support::No("bpf_ktime_get_coarse_ns (5.11 proxy) missing".into())
                }
                other => other,
            }
        })
        .clone()
}

/// JMP32 instructions (5.1).
pub fn probe_jmp32() -> Support {
    match load(
        ProgType::SOCKET_FILTER,
        None,
        &[mov_r0_1(), jmp32_jeq_w0_0(), exit()],
        None,
    ) {
        Ok(()) => Support::Yes,
        Err(e) if not_root(&e) => Support::Unknown("needs root (CAP_BPF) to load programs".into()),
        Err(e) if e.is(Errno::EINVAL) => Support::No("the verifier refuses JMP32".into()),
        Err(e) => Support::Unknown(e.to_string()),
    }
}

struct Hook {
    label: &'static str,
    prog_type: ProgType,
    attach: Option<AttachType>,
}

const CONNECT4: Hook = Hook {
    label: "connect4",
    prog_type: ProgType::CGROUP_SOCK_ADDR,
    attach: Some(AttachType::CGROUP_INET4_CONNECT),
};
const RECVMSG4: Hook = Hook {
    label: "recvmsg4",
    prog_type: ProgType::CGROUP_SOCK_ADDR,
    attach: Some(AttachType::CGROUP_UDP4_RECVMSG),
};
const SOCKOPS: Hook = Hook {
    label: "sock_ops",
    prog_type: ProgType::SOCK_OPS,
    attach: None,
};
const SKMSG: Hook = Hook {
    label: "sk_msg",
    prog_type: ProgType::SK_MSG,
    attach: Some(AttachType::SK_MSG_VERDICT),
};
const GETSOCKOPT: Hook = Hook {
    label: "getsockopt",
    prog_type: ProgType::CGROUP_SOCKOPT,
    attach: Some(AttachType::CGROUP_GETSOCKOPT),
};

/// (name, program type, attach type, first kernel, needed for, need)
type ProgRow = (
    &'static str,
    ProgType,
    Option<AttachType>,
    &'static str,
    &'static str,
    Need,
);

/// (hook, helper, first kernel, needed for, need)
type HelperRow = (Hook, Helper, &'static str, &'static str, Need);

fn helper_rows() -> Vec<HelperRow> {
    use Helper::*;
    use Need::*;
    const ORIG: &str = "original destination by socket (connect4, sockops)";
    const MAPS: &str = "every hook (map access)";
    const IDENT: &str = "pod identity by network namespace (else: sidecar-listening fallback)";
    const FEEDBACK: &str = "process_ip feedback and per-cgroup cache (fallback path)";
    const UID: &str = "telling the sidecar from the application (proxy UID)";
    const PAIR_KEYS: &str = "netns-scoped 4-tuple keys";
    const LISTENING: &str = "meshed-pod detection fallback (sidecar listening)";
    const DNS_RESTORE: &str = "DNS source restore (recvmsg)";
    const DNS_PROXY: &str = "DNS proxy detection (UDP)";
    const BIND_SOURCE: &str = "binding the source to the pod IP (kernels without netns cookies)";
    const SOCKHASH: &str = "socket pairing into the sockhash (sockops)";
    const LOOPBACK_BYPASS: &str = "loopback bypass (sk_msg redirect)";
    const ORIG_ANSWERS: &str = "SO_ORIGINAL_DST answers (getsockopt)";
    // First kernels: measured in the kernel matrix, or the oldest one it runs.
    const OLDEST: &str = "5.10 (oldest measured)";
    const K5_15: &str = "5.15 (measured: on 6.1, not on 5.10)";
    const K6_1: &str = "6.1 (measured: not on 5.10)";
    const K6_12: &str = "6.12 (measured: not on 6.1)";
    const K6_18: &str = "6.18 (measured: not on 6.12)";
    vec![
        (CONNECT4, MapLookupElem, "4.17", MAPS, Required),
        (CONNECT4, MapUpdateElem, "4.17", MAPS, Required),
        (CONNECT4, MapDeleteElem, "4.17", MAPS, Required),
        (CONNECT4, GetSocketCookie, "4.19", ORIG, Required),
        (CONNECT4, GetCurrentUidGid, OLDEST, UID, Required),
        (CONNECT4, GetNetnsCookie, "5.7", IDENT, Optional),
        (CONNECT4, SkLookupTcp, "5.0", LISTENING, Optional),
        (CONNECT4, SkLookupUdp, "5.0", DNS_PROXY, Optional),
        (CONNECT4, SkRelease, "5.0", LISTENING, Optional),
        (CONNECT4, Bind, "4.17", BIND_SOURCE, Optional),
        (CONNECT4, GetCurrentPidTgid, OLDEST, FEEDBACK, Optional),
        (CONNECT4, GetCurrentCgroupId, OLDEST, FEEDBACK, Optional),
        (RECVMSG4, MapLookupElem, "5.2", DNS_RESTORE, Optional),
        (RECVMSG4, GetSocketCookie, "5.2", DNS_RESTORE, Optional),
        (SOCKOPS, MapLookupElem, "4.13", MAPS, Required),
        (SOCKOPS, MapUpdateElem, "4.13", MAPS, Required),
        (SOCKOPS, MapDeleteElem, "4.13", MAPS, Required),
        (SOCKOPS, SockHashUpdate, "4.18", SOCKHASH, Required),
        (SOCKOPS, GetSocketCookie, "4.19", ORIG, Required),
        (SOCKOPS, GetNetnsCookie, K5_15, PAIR_KEYS, Optional),
        (SOCKOPS, GetCurrentPidTgid, K6_12, FEEDBACK, Optional),
        (SOCKOPS, GetCurrentUidGid, K6_18, FEEDBACK, Optional),
        (SOCKOPS, GetCurrentCgroupId, K6_12, FEEDBACK, Optional),
        (SKMSG, MsgRedirectHash, "4.18", LOOPBACK_BYPASS, Required),
        (SKMSG, MapLookupElem, "4.17", MAPS, Optional),
        (SKMSG, GetNetnsCookie, K5_15, PAIR_KEYS, Optional),
        (SKMSG, GetCurrentUidGid, OLDEST, FEEDBACK, Optional),
        (SKMSG, GetCurrentPidTgid, OLDEST, FEEDBACK, Optional),
        (SKMSG, GetCurrentCgroupId, OLDEST, FEEDBACK, Optional),
        (GETSOCKOPT, MapLookupElem, "5.3", ORIG_ANSWERS, Required),
        (GETSOCKOPT, GetNetnsCookie, K5_15, PAIR_KEYS, Optional),
        (GETSOCKOPT, GetCurrentUidGid, OLDEST, FEEDBACK, Optional),
        (GETSOCKOPT, GetCurrentPidTgid, K6_1, FEEDBACK, Optional),
        (GETSOCKOPT, GetCurrentCgroupId, OLDEST, FEEDBACK, Optional),
    ]
}

/// Runs every probe (once per process; later calls return the cached results).
pub fn probe_all() -> &'static [Probed] {
    static CACHE: OnceLock<Vec<Probed>> = OnceLock::new();
    CACHE.get_or_init(run_all)
}

fn run_all() -> Vec<Probed> {
    use Need::*;
    let mut out = Vec::new();
    let progs: [ProgRow; 11] = [
        (
            "cgroup/connect4",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET4_CONNECT),
            "4.17",
            "outbound and inbound redirection (IPv4)",
            Required,
        ),
        (
            "cgroup/connect6",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET6_CONNECT),
            "4.17",
            "redirection of IPv6 connections",
            Optional,
        ),
        (
            "cgroup/bind4",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET4_BIND),
            "4.17",
            "Linkerd outbound listener fix (bind)",
            Optional,
        ),
        (
            "cgroup/bind6",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_INET6_BIND),
            "4.17",
            "Linkerd outbound listener fix (bind, IPv6)",
            Optional,
        ),
        (
            "cgroup/sendmsg4",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP4_SENDMSG),
            "4.18",
            "DNS redirection to the sidecar (UDP sendmsg)",
            Optional,
        ),
        (
            "cgroup/sendmsg6",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP6_SENDMSG),
            "4.18",
            "DNS redirection to the sidecar (UDP sendmsg, IPv6)",
            Optional,
        ),
        (
            "cgroup/recvmsg4",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP4_RECVMSG),
            "5.2",
            "DNS source restore (UDP recvmsg)",
            Optional,
        ),
        (
            "cgroup/recvmsg6",
            ProgType::CGROUP_SOCK_ADDR,
            Some(AttachType::CGROUP_UDP6_RECVMSG),
            "5.2",
            "DNS source restore (UDP recvmsg, IPv6)",
            Optional,
        ),
        (
            "cgroup/getsockopt",
            ProgType::CGROUP_SOCKOPT,
            Some(AttachType::CGROUP_GETSOCKOPT),
            "5.3",
            "SO_ORIGINAL_DST answers without conntrack",
            Required,
        ),
        (
            "sockops",
            ProgType::SOCK_OPS,
            None,
            "4.13",
            "socket pairing (sockops)",
            Required,
        ),
        (
            "sk_msg",
            ProgType::SK_MSG,
            Some(AttachType::SK_MSG_VERDICT),
            "4.17",
            "loopback bypass (sk_msg redirect)",
            Required,
        ),
    ];
    let mut type_ok = std::collections::HashMap::new();
    for (name, pt, at, first, needed_for, need) in progs {
        let support = probe_program_type(pt, at);
        type_ok.insert((pt, at), support.clone());
        out.push(Probed {
            name: format!("program {name}"),
            item: Item::ProgramType(pt, at),
            first_kernel: first,
            needed_for,
            need,
            support,
        });
    }
    for (hook, helper, first, needed_for, need) in helper_rows() {
        let (id, helper_name) = (helper.id(), helper.name());
        let support = match type_ok.get(&(hook.prog_type, hook.attach)) {
            Some(Support::No(_)) => Support::No(format!("no {} programs at all", hook.label)),
            _ => probe_helper(hook.prog_type, hook.attach, id),
        };
        out.push(Probed {
            name: format!("helper {}/{helper_name}", hook.label),
            item: Item::Helper {
                prog_type: hook.prog_type,
                attach_type: hook.attach,
                helper: id,
                helper_name,
            },
            first_kernel: first,
            needed_for,
            need,
            support,
        });
    }
    let maps: [(MapType, &str, &str, Need); 6] = [
        (
            MapType::HASH,
            "3.19",
            "pod, policy and address tables",
            Required,
        ),
        (
            MapType::LRU_HASH,
            "4.10",
            "original destinations per connection",
            Required,
        ),
        (
            MapType::LPM_TRIE,
            "4.11",
            "CIDR include/exclude rules",
            Required,
        ),
        (
            MapType::SOCKHASH,
            "4.18",
            "socket pairs for the sk_msg redirect",
            Required,
        ),
        (MapType::ARRAY, "3.19", "settings", Optional),
        (
            MapType::PERCPU_ARRAY,
            "4.6",
            "counters for `merbridge status` and metrics",
            Optional,
        ),
    ];
    for (mt, first, needed_for, need) in maps {
        out.push(Probed {
            name: format!("map {mt}"),
            item: Item::MapType(mt),
            first_kernel: first,
            needed_for,
            need,
            support: probe_map_type(mt),
        });
    }
    out.push(Probed {
        name: "cgroup bpf_link".into(),
        item: Item::CgroupLink,
        first_kernel: "5.7",
        needed_for:
            "pinned attachments and atomic replacement on upgrade (else PROG_ATTACH, multi)",
        need: Optional,
        support: probe_cgroup_link(),
    });
    out.push(Probed {
        name: "memcg accounting".into(),
        item: Item::MemcgAccounting,
        first_kernel: "5.11",
        needed_for: "no RLIMIT_MEMLOCK raise (else raised at start-up)",
        need: Optional,
        support: memcg_accounting(),
    });
    out.push(Probed {
        name: "JMP32 instructions".into(),
        item: Item::Jmp32,
        first_kernel: "5.1",
        needed_for: "shorter 32-bit compares in the programs",
        need: Optional,
        support: probe_jmp32(),
    });
    out
}

/// What merbridge can do on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything.
    Full,
    /// Runs, with these features off or on a fallback (one line each).
    Reduced(Vec<String>),
    /// Cannot intercept: these required items are missing (one line each).
    CannotRun(Vec<String>),
    /// Some required items could not be probed (not root).
    Unknown(Vec<String>),
}

/// The verdict over a set of probe results.
pub fn verdict(probes: &[Probed]) -> Verdict {
    let line = |p: &Probed| {
        format!(
            "{}: {} (first in Linux {})",
            p.name, p.needed_for, p.first_kernel
        )
    };
    let missing_required: Vec<String> = probes
        .iter()
        .filter(|p| p.need == Need::Required && matches!(p.support, Support::No(_)))
        .map(line)
        .collect();
    if !missing_required.is_empty() {
        return Verdict::CannotRun(missing_required);
    }
    let unknown: Vec<String> = probes
        .iter()
        .filter(|p| matches!(p.support, Support::Unknown(_)))
        .map(|p| p.name.clone())
        .collect();
    if !unknown.is_empty() {
        return Verdict::Unknown(unknown);
    }
    let off: Vec<String> = probes
        .iter()
        .filter(|p| matches!(p.support, Support::No(_)))
        .map(line)
        .collect();
    if off.is_empty() {
        Verdict::Full
    } else {
        Verdict::Reduced(off)
    }
}
