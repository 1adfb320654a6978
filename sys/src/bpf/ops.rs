//! One safe wrapper per `bpf(2)` command. Each builds its attr struct from Rust values, so
//! every pointer the kernel follows comes from a live slice of the length the attr states.

use super::attr::*;
use super::{bpf, name_from_kernel, new_fd, object_name, AttachType, BpfError, Cmd, MapType};
use super::{ProgType, F_REPLACE};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

fn c_path(cmd: Cmd, path: &Path) -> Result<CString, BpfError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        BpfError::new(cmd, libc::EINVAL)
            .with_detail(format!("path {} contains a NUL byte", path.display()))
    })
}

/// The address of `bytes` for an attr field, or 0 (NULL) when empty: no input at all rather
/// than a dangling pointer with length 0.
fn ptr_or_null(bytes: &[u8]) -> u64 {
    if bytes.is_empty() {
        0
    } else {
        bytes.as_ptr() as u64
    }
}

fn len_u32(cmd: Cmd, what: &str, len: usize) -> Result<u32, BpfError> {
    u32::try_from(len).map_err(|_| {
        BpfError::new(cmd, libc::E2BIG).with_detail(format!("{what} of {len} bytes is too long"))
    })
}

/// What `BPF_MAP_CREATE` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCreate<'a> {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    /// Up to 15 characters are kept.
    pub name: &'a str,
}

/// `BPF_MAP_CREATE`.
pub fn map_create(args: &MapCreate<'_>) -> Result<OwnedFd, BpfError> {
    let mut attr = MapCreateAttr {
        map_type: args.map_type.0,
        key_size: args.key_size,
        value_size: args.value_size,
        max_entries: args.max_entries,
        map_flags: args.map_flags,
        map_name: object_name(args.name),
        ..Default::default()
    };
    let fd = bpf(Cmd::MapCreate, &mut attr)
        .map_err(|e| e.with_detail(format!("map {:?} ({})", args.name, args.map_type)))?;
    new_fd(Cmd::MapCreate, fd)
}

/// A verifier log buffer and level for [`prog_load`].
#[derive(Clone, Debug, Default)]
pub struct VerifierLog {
    pub buf: Vec<u8>,
    /// 1 = the instructions the verifier walked; 2 = with register state.
    pub level: u32,
    /// Set by kernels >= 6.4 after the call: the size the whole log needs.
    pub true_size: u32,
}

impl VerifierLog {
    pub fn new(size: usize, level: u32) -> VerifierLog {
        VerifierLog {
            buf: vec![0; size],
            level,
            true_size: 0,
        }
    }

    /// The log text the kernel wrote (up to the first NUL).
    pub fn text(&self) -> String {
        name_from_kernel(&self.buf)
    }
}

/// What `BPF_PROG_LOAD` needs.
#[derive(Clone, Debug)]
pub struct ProgLoad<'a> {
    pub prog_type: ProgType,
    pub expected_attach_type: Option<AttachType>,
    /// Encoded instructions, 8 bytes each.
    pub insns: &'a [[u8; 8]],
    pub license: &'a str,
    /// Up to 15 characters are kept.
    pub name: &'a str,
    pub prog_flags: u32,
}

/// How often PROG_LOAD is retried when the verifier was interrupted (EAGAIN).
pub const PROG_LOAD_EAGAIN_RETRIES: usize = 5;

/// `BPF_PROG_LOAD`, with an optional verifier log. Retries EAGAIN a bounded number of times.
pub fn prog_load(args: &ProgLoad<'_>, log: Option<&mut VerifierLog>) -> Result<OwnedFd, BpfError> {
    let cmd = Cmd::ProgLoad;
    let license = CString::new(args.license)
        .map_err(|_| BpfError::new(cmd, libc::EINVAL).with_detail("license contains a NUL byte"))?;
    let mut attr = ProgLoadAttr {
        prog_type: args.prog_type.0,
        insn_cnt: len_u32(cmd, "program", args.insns.len())?,
        insns: args.insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_flags: args.prog_flags,
        prog_name: object_name(args.name),
        expected_attach_type: args.expected_attach_type.map_or(0, |t| t.0),
        ..Default::default()
    };
    let mut log = log;
    if let Some(log) = log.as_deref_mut() {
        // The kernel wants a NUL-terminated buffer of at most u32::MAX >> 2 bytes.
        log.buf.truncate((u32::MAX >> 2) as usize);
        if let Some(first) = log.buf.first_mut() {
            *first = 0;
        }
        attr.log_level = log.level;
        attr.log_size = log.buf.len() as u32;
        attr.log_buf = log.buf.as_mut_ptr() as u64;
    }
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match bpf(cmd, &mut attr) {
            Err(e) if e.is(nix::errno::Errno::EAGAIN) && attempt < PROG_LOAD_EAGAIN_RETRIES => {
                continue
            }
            other => break other,
        }
    };
    if let Some(log) = log {
        log.true_size = attr.log_true_size;
    }
    new_fd(cmd, result?)
}

/// `BPF_OBJ_PIN`: pins a map, program or link at `path` (inside a bpffs).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), BpfError> {
    let cmd = Cmd::ObjPin;
    let c = c_path(cmd, path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd_u32(fd),
        file_flags: 0,
    };
    bpf(cmd, &mut attr).map_err(|e| e.with_detail(format!("pin at {}", path.display())))?;
    Ok(())
}

/// `BPF_OBJ_GET`: opens a pinned object. `file_flags` is 0, [`super::OBJ_RDONLY`] or
/// [`super::OBJ_WRONLY`].
pub fn obj_get(path: &Path, file_flags: u32) -> Result<OwnedFd, BpfError> {
    let cmd = Cmd::ObjGet;
    let c = c_path(cmd, path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags,
    };
    let fd =
        bpf(cmd, &mut attr).map_err(|e| e.with_detail(format!("open pin {}", path.display())))?;
    new_fd(cmd, fd)
}

/// `BPF_PROG_ATTACH`. `replace` (with [`F_REPLACE`] added to the flags) swaps that program
/// for `prog` atomically in a multi-attached cgroup.
pub fn prog_attach(
    target: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: AttachType,
    flags: u32,
    replace: Option<BorrowedFd<'_>>,
) -> Result<(), BpfError> {
    let mut attr = ProgAttachAttr {
        target_fd: fd_u32(target),
        attach_bpf_fd: fd_u32(prog),
        attach_type: attach_type.0,
        attach_flags: flags | if replace.is_some() { F_REPLACE } else { 0 },
        replace_bpf_fd: replace.map_or(0, fd_u32),
    };
    bpf(Cmd::ProgAttach, &mut attr).map_err(|e| e.with_detail(format!("attach {attach_type}")))?;
    Ok(())
}

/// `BPF_PROG_DETACH`. Multi-attached cgroup programs and sk_msg programs (5.9+) need the
/// program's fd.
pub fn prog_detach(
    target: BorrowedFd<'_>,
    prog: Option<BorrowedFd<'_>>,
    attach_type: AttachType,
) -> Result<(), BpfError> {
    let mut attr = ProgAttachAttr {
        target_fd: fd_u32(target),
        attach_bpf_fd: prog.map_or(0, fd_u32),
        attach_type: attach_type.0,
        ..Default::default()
    };
    bpf(Cmd::ProgDetach, &mut attr).map_err(|e| e.with_detail(format!("detach {attach_type}")))?;
    Ok(())
}

/// What `BPF_PROG_QUERY` says about one attach point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgQuery {
    pub attach_flags: u32,
    pub prog_ids: Vec<u32>,
}

/// `BPF_PROG_QUERY`: the programs attached to `target` at `attach_type`. `query_flags` may be
/// [`super::F_QUERY_EFFECTIVE`]. The id buffer grows when the kernel says ENOSPC.
pub fn prog_query(
    target: BorrowedFd<'_>,
    attach_type: AttachType,
    query_flags: u32,
) -> Result<ProgQuery, BpfError> {
    let mut ids = vec![0u32; 64];
    for _ in 0..8 {
        let mut attr = ProgQueryAttr {
            target_fd: fd_u32(target),
            attach_type: attach_type.0,
            query_flags,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        match bpf(Cmd::ProgQuery, &mut attr) {
            Ok(_) => {
                ids.truncate((attr.prog_cnt as usize).min(ids.len()));
                return Ok(ProgQuery {
                    attach_flags: attr.attach_flags,
                    prog_ids: ids,
                });
            }
            Err(e) if e.is(nix::errno::Errno::ENOSPC) => {
                let want = (attr.prog_cnt as usize).max(ids.len() * 2);
                ids = vec![0; want];
            }
            Err(e) => return Err(e.with_detail(format!("query {attach_type}"))),
        }
    }
    Err(BpfError::new(Cmd::ProgQuery, libc::ENOSPC)
        .with_detail("the program list kept growing while we read it"))
}

/// `BPF_PROG_GET_FD_BY_ID`.
pub fn prog_get_fd_by_id(id: u32) -> Result<OwnedFd, BpfError> {
    let mut attr = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    let fd = bpf(Cmd::ProgGetFdById, &mut attr)
        .map_err(|e| e.with_detail(format!("program id {id}")))?;
    new_fd(Cmd::ProgGetFdById, fd)
}

fn get_info<I: Attr + Default>(fd: BorrowedFd<'_>) -> Result<I, BpfError> {
    let mut info = I::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd),
        info_len: std::mem::size_of::<I>() as u32,
        info: &mut info as *mut I as u64,
    };
    bpf(Cmd::ObjGetInfoByFd, &mut attr)?;
    Ok(info)
}

/// A map's shape as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub map_type: MapType,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: String,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a map.
pub fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo, BpfError> {
    let raw: MapInfoRaw = get_info(fd)?;
    Ok(MapInfo {
        map_type: MapType(raw.map_type),
        id: raw.id,
        key_size: raw.key_size,
        value_size: raw.value_size,
        max_entries: raw.max_entries,
        map_flags: raw.map_flags,
        name: name_from_kernel(&raw.name),
    })
}

/// A program as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub prog_type: ProgType,
    pub id: u32,
    pub tag: [u8; 8],
    pub name: String,
    /// Length of the instructions after the verifier's rewrites, in bytes.
    pub xlated_len: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo, BpfError> {
    let raw: ProgInfoRaw = get_info(fd)?;
    Ok(ProgInfo {
        prog_type: ProgType(raw.prog_type),
        id: raw.id,
        tag: raw.tag,
        name: name_from_kernel(&raw.name),
        xlated_len: raw.xlated_prog_len,
    })
}

/// A link as the kernel reports it (the cgroup fields are meaningful for cgroup links only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: AttachType,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub fn link_info(fd: BorrowedFd<'_>) -> Result<LinkInfo, BpfError> {
    let raw: LinkInfoRaw = get_info(fd)?;
    Ok(LinkInfo {
        link_type: raw.link_type,
        id: raw.id,
        prog_id: raw.prog_id,
        cgroup_id: raw.cgroup_id,
        attach_type: AttachType(raw.attach_type),
    })
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` and returns the link fd (pin it to keep the
/// attachment after this process exits).
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: AttachType,
    flags: u32,
) -> Result<OwnedFd, BpfError> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_fd: fd_u32(target),
        attach_type: attach_type.0,
        flags,
    };
    let fd = bpf(Cmd::LinkCreate, &mut attr)
        .map_err(|e| e.with_detail(format!("link {attach_type}")))?;
    new_fd(Cmd::LinkCreate, fd)
}

/// Feature probe for `BPF_LINK_CREATE` on `attach_type` with invalid fds (nothing is
/// attached): EBADF means the kernel knows the command and type; EINVAL means it does not.
pub fn link_create_probe(attach_type: AttachType) -> Result<(), BpfError> {
    let mut attr = LinkCreateAttr {
        prog_fd: u32::MAX,
        target_fd: u32::MAX,
        attach_type: attach_type.0,
        flags: 0,
    };
    bpf(Cmd::LinkCreate, &mut attr)?;
    Ok(())
}

/// `BPF_LINK_UPDATE`: atomically replaces the link's program. With `old`, only if the link
/// still runs `old` (`BPF_F_REPLACE`).
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old: Option<BorrowedFd<'_>>,
) -> Result<(), BpfError> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link),
        new_prog_fd: fd_u32(new_prog),
        flags: if old.is_some() { F_REPLACE } else { 0 },
        old_prog_fd: old.map_or(0, fd_u32),
    };
    bpf(Cmd::LinkUpdate, &mut attr)?;
    Ok(())
}

/// `BPF_LINK_DETACH` (5.9+): detaches the link's program; the link fd stays valid but defunct.
pub fn link_detach(link: BorrowedFd<'_>) -> Result<(), BpfError> {
    let mut attr = LinkDetachAttr {
        link_fd: fd_u32(link),
    };
    bpf(Cmd::LinkDetach, &mut attr)?;
    Ok(())
}

/// Input and output buffers for [`prog_test_run`].
#[derive(Debug, Default)]
pub struct TestRun<'a> {
    pub data_in: &'a [u8],
    pub data_out: Option<&'a mut [u8]>,
    pub ctx_in: &'a [u8],
    pub ctx_out: Option<&'a mut [u8]>,
    pub repeat: u32,
}

/// What `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunResult {
    pub retval: u32,
    /// Average run time in ns.
    pub duration_ns: u32,
    pub data_size_out: u32,
    pub ctx_size_out: u32,
}

/// `BPF_PROG_TEST_RUN`: runs `prog` on the given data (socket filters, cgroup skb, …).
pub fn prog_test_run(prog: BorrowedFd<'_>, run: TestRun<'_>) -> Result<TestRunResult, BpfError> {
    let cmd = Cmd::ProgTestRun;
    let (data_out, data_size_out) = match run.data_out {
        Some(b) => (b.as_mut_ptr() as u64, len_u32(cmd, "data_out", b.len())?),
        None => (0, 0),
    };
    let (ctx_out, ctx_size_out) = match run.ctx_out {
        Some(b) => (b.as_mut_ptr() as u64, len_u32(cmd, "ctx_out", b.len())?),
        None => (0, 0),
    };
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        data_size_in: len_u32(cmd, "data_in", run.data_in.len())?,
        data_in: ptr_or_null(run.data_in),
        data_out,
        data_size_out,
        repeat: run.repeat,
        ctx_size_in: len_u32(cmd, "ctx_in", run.ctx_in.len())?,
        ctx_in: ptr_or_null(run.ctx_in),
        ctx_out,
        ctx_size_out,
        ..Default::default()
    };
    bpf(cmd, &mut attr)?;
    Ok(TestRunResult {
        retval: attr.retval,
        duration_ns: attr.duration,
        data_size_out: attr.data_size_out,
        ctx_size_out: attr.ctx_size_out,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{dummy_fd, override_syscall, put_u32, u32_at, u64_at};
    use super::super::*;
    use super::*;
    use std::cell::RefCell;
    use std::os::fd::AsFd;
    use std::rc::Rc;

    type Calls = Rc<RefCell<Vec<(Cmd, Vec<u8>)>>>;

    /// Records every call; answers with `reply(cmd, attr)`.
    fn record(
        mut reply: impl FnMut(Cmd, &mut [u8]) -> Result<i64, i32> + 'static,
    ) -> (Calls, fake::FakeGuard) {
        let calls: Calls = Rc::default();
        let seen = calls.clone();
        let guard = override_syscall(move |cmd, attr| {
            // Recorded before the reply writes outputs: tests check what we passed.
            seen.borrow_mut().push((cmd, attr.to_vec()));
            reply(cmd, attr)
        });
        (calls, guard)
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn map_create_passes_shape_and_name() {
        let (calls, _g) = record(|_, _| Ok(dummy_fd() as i64));
        let fd = map_create(&MapCreate {
            map_type: MapType::LPM_TRIE,
            key_size: 8,
            value_size: 4,
            max_entries: 100,
            map_flags: F_NO_PREALLOC,
            name: "cidr_rules",
        })
        .unwrap();
        drop(fd);
        let calls = calls.borrow();
        let (cmd, a) = &calls[0];
        assert_eq!(*cmd, Cmd::MapCreate);
        assert_eq!(a.len(), 44);
        assert_eq!(u32_at(a, 0), 11);
        assert_eq!(u32_at(a, 4), 8);
        assert_eq!(u32_at(a, 8), 4);
        assert_eq!(u32_at(a, 12), 100);
        assert_eq!(u32_at(a, 16), 1);
        assert_eq!(&a[28..39], b"cidr_rules\0");
    }

    #[test]
    fn map_create_error_names_the_map() {
        let (_calls, _g) = record(|_, _| Err(libc::EINVAL));
        let e = map_create(&MapCreate {
            map_type: MapType::SOCKHASH,
            key_size: 48,
            value_size: 4,
            max_entries: 1,
            map_flags: 0,
            name: "pairs",
        })
        .unwrap_err();
        assert_eq!(e.cmd, Cmd::MapCreate);
        assert!(e.to_string().contains("\"pairs\" (sockhash)"), "{e}");
    }

    #[test]
    fn prog_load_passes_program_log_and_reads_true_size() {
        let insns = [[0xb7, 0, 0, 0, 0, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
        let insns_ptr = insns.as_ptr() as u64;
        let (calls, _g) = record(|_, a| {
            put_u32(a, 140, 12345);
            Err(libc::EACCES)
        });
        let mut log = VerifierLog::new(4096, 1);
        let log_ptr = log.buf.as_ptr() as u64;
        let e = prog_load(
            &ProgLoad {
                prog_type: ProgType::CGROUP_SOCK_ADDR,
                expected_attach_type: Some(AttachType::CGROUP_INET4_CONNECT),
                insns: &insns,
                license: "GPL",
                name: "mb_connect4",
                prog_flags: 0,
            },
            Some(&mut log),
        )
        .unwrap_err();
        assert_eq!(e.cmd, Cmd::ProgLoad);
        assert_eq!(log.true_size, 12345);
        let calls = calls.borrow();
        let (_, a) = &calls[0];
        assert_eq!(a.len(), 144);
        assert_eq!(u32_at(a, 0), 18);
        assert_eq!(u32_at(a, 4), 2);
        assert_eq!(u64_at(a, 8), insns_ptr);
        assert_ne!(u64_at(a, 16), 0, "license pointer");
        assert_eq!(u32_at(a, 24), 1);
        assert_eq!(u32_at(a, 28), 4096);
        assert_eq!(u64_at(a, 32), log_ptr);
        assert_eq!(&a[48..60], b"mb_connect4\0");
        assert_eq!(u32_at(a, 68), 10);
    }

    #[test]
    fn prog_load_without_log_leaves_log_fields_zero_and_retries_eagain() {
        let insns = [[0x95, 0, 0, 0, 0, 0, 0, 0]];
        let mut eagains = 2;
        let (calls, _g) = record(move |_, _| {
            if eagains > 0 {
                eagains -= 1;
                Err(libc::EAGAIN)
            } else {
                Ok(dummy_fd() as i64)
            }
        });
        prog_load(&sock_ops_load(&insns), None).unwrap();
        let calls = calls.borrow();
        assert_eq!(calls.len(), 3, "two EAGAIN retries, then success");
        let a = &calls[2].1;
        assert_eq!((u32_at(a, 24), u32_at(a, 28), u64_at(a, 32)), (0, 0, 0));
        assert_eq!(u32_at(a, 68), 0);
    }

    /// A sock_ops program load of `insns` (named `x`, GPL).
    fn sock_ops_load(insns: &[[u8; 8]]) -> ProgLoad<'_> {
        ProgLoad {
            prog_type: ProgType::SOCK_OPS,
            expected_attach_type: None,
            insns,
            license: "GPL",
            name: "x",
            prog_flags: 0,
        }
    }

    #[test]
    fn prog_load_gives_up_after_bounded_eagain() {
        let (calls, _g) = record(|_, _| Err(libc::EAGAIN));
        let insns = [[0x95, 0, 0, 0, 0, 0, 0, 0]];
        let e = prog_load(&sock_ops_load(&insns), None).unwrap_err();
        assert!(e.is(nix::errno::Errno::EAGAIN));
        assert_eq!(calls.borrow().len(), PROG_LOAD_EAGAIN_RETRIES);
    }

    #[test]
    fn obj_pin_and_get_pass_path_and_fd() {
        let paths = Rc::new(RefCell::new(Vec::new()));
        let seen = paths.clone();
        let (calls, _g) = record(move |cmd, a| {
            let ptr = u64_at(a, 0) as *const libc::c_char;
            // SAFETY: the wrapper set `pathname` to a CString that lives across this call.
            let s = unsafe { std::ffi::CStr::from_ptr(ptr) };
            seen.borrow_mut().push(s.to_str().unwrap().to_string());
            Ok(if cmd == Cmd::ObjGet {
                dummy_fd() as i64
            } else {
                0
            })
        });
        let fd = devnull();
        obj_pin(fd.as_fd(), Path::new("/sys/fs/bpf/x/map")).unwrap();
        obj_get(Path::new("/sys/fs/bpf/x/map"), OBJ_RDONLY).unwrap();
        assert_eq!(*paths.borrow(), vec!["/sys/fs/bpf/x/map"; 2]);
        let calls = calls.borrow();
        assert_eq!(calls[0].0, Cmd::ObjPin);
        assert_eq!(u32_at(&calls[0].1, 8), fd.as_raw_fd() as u32);
        assert_eq!(calls[1].0, Cmd::ObjGet);
        assert_eq!(u32_at(&calls[1].1, 12), OBJ_RDONLY);
        assert!(obj_pin(fd.as_fd(), Path::new("/a\0b")).is_err());
    }

    #[test]
    fn prog_attach_detach_pass_fds_type_and_flags() {
        let (calls, _g) = record(|_, _| Ok(0));
        let (cg, prog, old) = (devnull(), devnull(), devnull());
        prog_attach(
            cg.as_fd(),
            prog.as_fd(),
            AttachType::CGROUP_INET4_CONNECT,
            F_ALLOW_MULTI,
            Some(old.as_fd()),
        )
        .unwrap();
        prog_detach(cg.as_fd(), Some(prog.as_fd()), AttachType::SK_MSG_VERDICT).unwrap();
        let calls = calls.borrow();
        let a = &calls[0].1;
        assert_eq!(calls[0].0, Cmd::ProgAttach);
        assert_eq!(a.len(), 20);
        assert_eq!(u32_at(a, 0), cg.as_raw_fd() as u32);
        assert_eq!(u32_at(a, 4), prog.as_raw_fd() as u32);
        assert_eq!(u32_at(a, 8), 10);
        assert_eq!(u32_at(a, 12), F_ALLOW_MULTI | F_REPLACE);
        assert_eq!(u32_at(a, 16), old.as_raw_fd() as u32);
        let d = &calls[1].1;
        assert_eq!(calls[1].0, Cmd::ProgDetach);
        assert_eq!(u32_at(d, 4), prog.as_raw_fd() as u32);
        assert_eq!(u32_at(d, 8), 7);
        assert_eq!((u32_at(d, 12), u32_at(d, 16)), (0, 0));
    }

    #[test]
    fn prog_query_grows_on_enospc() {
        let (calls, _g) = record(|_, a| {
            if u32_at(a, 24) < 100 {
                put_u32(a, 24, 100);
                Err(libc::ENOSPC)
            } else {
                put_u32(a, 24, 0);
                put_u32(a, 12, F_ALLOW_MULTI);
                Ok(0)
            }
        });
        let cg = devnull();
        let q = prog_query(cg.as_fd(), AttachType::CGROUP_SOCK_OPS, F_QUERY_EFFECTIVE).unwrap();
        assert_eq!(q.attach_flags, F_ALLOW_MULTI);
        assert!(q.prog_ids.is_empty());
        let calls = calls.borrow();
        assert_eq!(calls.len(), 2);
        assert_eq!(u32_at(&calls[0].1, 4), 3);
        assert_eq!(u32_at(&calls[0].1, 8), F_QUERY_EFFECTIVE);
        assert_eq!(u32_at(&calls[1].1, 24), 128);
    }

    #[test]
    fn info_passes_buffer_of_struct_size() {
        let (calls, _g) = record(|_, _| Ok(0));
        let fd = devnull();
        let info = map_info(fd.as_fd()).unwrap();
        assert_eq!(info.map_type, MapType(0));
        prog_info(fd.as_fd()).unwrap();
        link_info(fd.as_fd()).unwrap();
        let calls = calls.borrow();
        let lens: Vec<u32> = calls.iter().map(|(_, a)| u32_at(a, 4)).collect();
        assert_eq!(lens, vec![40, 80, 32]);
        assert!(calls.iter().all(|(c, a)| *c == Cmd::ObjGetInfoByFd
            && u32_at(a, 0) == fd.as_raw_fd() as u32
            && u64_at(a, 8) != 0));
    }

    #[test]
    fn link_commands_pass_fds() {
        let (calls, _g) = record(|cmd, _| {
            Ok(if cmd == Cmd::LinkCreate {
                dummy_fd() as i64
            } else {
                0
            })
        });
        let (prog, cg, new, old) = (devnull(), devnull(), devnull(), devnull());
        let link = link_create(prog.as_fd(), cg.as_fd(), AttachType::CGROUP_SOCK_OPS, 0).unwrap();
        link_update(link.as_fd(), new.as_fd(), Some(old.as_fd())).unwrap();
        link_update(link.as_fd(), new.as_fd(), None).unwrap();
        link_detach(link.as_fd()).unwrap();
        let calls = calls.borrow();
        let c = &calls[0].1;
        assert_eq!(c.len(), 16);
        assert_eq!(
            (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8), u32_at(c, 12)),
            (prog.as_raw_fd() as u32, cg.as_raw_fd() as u32, 3, 0)
        );
        let u = &calls[1].1;
        assert_eq!(
            (u32_at(u, 0), u32_at(u, 4), u32_at(u, 8), u32_at(u, 12)),
            (
                link.as_raw_fd() as u32,
                new.as_raw_fd() as u32,
                F_REPLACE,
                old.as_raw_fd() as u32
            )
        );
        assert_eq!((u32_at(&calls[2].1, 8), u32_at(&calls[2].1, 12)), (0, 0));
        assert_eq!(calls[3].0, Cmd::LinkDetach);
        assert_eq!(u32_at(&calls[3].1, 0), link.as_raw_fd() as u32);
    }

    #[test]
    fn link_create_probe_passes_invalid_fds() {
        let (calls, _g) = record(|_, _| Err(libc::EBADF));
        let e = link_create_probe(AttachType::CGROUP_INET_INGRESS).unwrap_err();
        assert!(e.is(nix::errno::Errno::EBADF));
        let a = &calls.borrow()[0].1;
        assert_eq!(
            (u32_at(a, 0), u32_at(a, 4), u32_at(a, 8)),
            (u32::MAX, u32::MAX, 0)
        );
    }

    #[test]
    fn test_run_passes_buffers_and_reads_results() {
        let (calls, _g) = record(|_, a| {
            put_u32(a, 4, 7);
            put_u32(a, 36, 99);
            Ok(0)
        });
        let prog = devnull();
        let data = [1u8; 64];
        let mut out = [0u8; 128];
        let out_ptr = out.as_ptr() as u64;
        let r = prog_test_run(
            prog.as_fd(),
            TestRun {
                data_in: &data,
                data_out: Some(&mut out),
                repeat: 3,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((r.retval, r.duration_ns), (7, 99));
        let calls = calls.borrow();
        let a = &calls[0].1;
        assert_eq!(a.len(), 72);
        assert_eq!(u32_at(a, 8), 64);
        assert_eq!(u32_at(a, 12), 128);
        assert_eq!(u64_at(a, 16), data.as_ptr() as u64);
        assert_eq!(u64_at(a, 24), out_ptr);
        assert_eq!(u32_at(a, 32), 3);
        assert_eq!((u32_at(a, 40), u64_at(a, 48)), (0, 0));
    }

    #[test]
    fn prog_get_fd_by_id_passes_id() {
        let (calls, _g) = record(|_, _| Ok(dummy_fd() as i64));
        prog_get_fd_by_id(42).unwrap();
        assert_eq!(u32_at(&calls.borrow()[0].1, 0), 42);
    }
}
