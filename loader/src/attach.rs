//! Attaching loaded programs.
//!
//! Cgroup hooks: `BPF_LINK_CREATE` first (the link can be pinned and later swapped atomically
//! with `BPF_LINK_UPDATE`), falling back to `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI` where
//! links are missing, so we coexist with other cgroup programs. sk_msg programs attach to a
//! sockhash with `BPF_PROG_ATTACH(BPF_SK_MSG_VERDICT)` and detach with the same program fd.

use crate::load::LoadedProgram;
use mb_sys::bpf::{
    link_create, link_detach, link_info, link_update, obj_get, obj_pin, prog_attach, prog_detach,
    prog_get_fd_by_id, prog_info, prog_query, AttachType, BpfError, ProgType, F_ALLOW_MULTI,
    F_QUERY_EFFECTIVE,
};
use nix::errno::Errno;
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Why attaching or detaching failed.
#[derive(Debug)]
pub enum AttachError {
    Kernel {
        what: String,
        error: BpfError,
    },
    Io {
        what: String,
        error: std::io::Error,
    },
    /// The program was loaded for another hook than the one asked for.
    WrongHook {
        program: String,
        message: String,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Kernel { what, error } => write!(f, "{what}: {error}"),
            AttachError::Io { what, error } => write!(f, "{what}: {error}"),
            AttachError::WrongHook { program, message } => {
                write!(f, "program {program}: {message}")
            }
        }
    }
}

impl std::error::Error for AttachError {}

fn kernel(what: impl Into<String>) -> impl FnOnce(BpfError) -> AttachError {
    let what = what.into();
    move |error| AttachError::Kernel { what, error }
}

/// How to attach to a cgroup.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// bpf_link when the kernel has it, else PROG_ATTACH with ALLOW_MULTI.
    Auto,
    /// Only bpf_link (fail where the kernel has none).
    LinkOnly,
    /// Only PROG_ATTACH with ALLOW_MULTI (what kernels before 5.7 can do).
    LegacyOnly,
}

/// A program attached to a cgroup.
#[derive(Debug)]
pub enum CgroupAttachment {
    /// A bpf_link. Detached when its last fd closes and it is not pinned.
    Link {
        link: OwnedFd,
        pin: Option<PathBuf>,
        attach_type: AttachType,
    },
    /// A PROG_ATTACH attachment; it outlives our fds, so it is detached on drop unless
    /// [`CgroupAttachment::keep`] was called.
    Legacy {
        cgroup: OwnedFd,
        prog: OwnedFd,
        attach_type: AttachType,
        detach_on_drop: bool,
    },
}

fn open_cgroup(path: &Path) -> Result<OwnedFd, AttachError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|error| AttachError::Io {
            what: format!("open cgroup {}", path.display()),
            error,
        })
}

/// Whether an error from LINK_CREATE means "this kernel cannot link this hook".
fn link_unsupported(e: &BpfError) -> bool {
    e.is(Errno::EINVAL)
        || e.is(Errno::EOPNOTSUPP)
        || e.errno == mb_sys::bpf::ENOTSUPP
        || e.is(Errno::ENOSYS)
        || e.is(Errno::EPERM) // an exclusive (no-flags) program is already attached
}

impl CgroupAttachment {
    /// Attaches `prog` to the cgroup at `cgroup` for `attach_type`.
    ///
    /// With `pin`: when a link is already pinned there, it is updated to run `prog` (atomic
    /// replacement; a defunct link, whose cgroup is gone, is unpinned and recreated); else a
    /// new link is created and pinned there.
    pub fn attach(
        prog: &LoadedProgram,
        cgroup: &Path,
        attach_type: AttachType,
        pin: Option<&Path>,
        mode: AttachMode,
    ) -> Result<CgroupAttachment, AttachError> {
        check_hook(prog, attach_type)?;
        let cg = open_cgroup(cgroup)?;
        let where_ = || format!("{} on cgroup {}", prog.name(), cgroup.display());
        if mode != AttachMode::LegacyOnly {
            if let Some(pin) = pin {
                if let Some(att) = update_pinned_link(prog, pin, cgroup, attach_type)? {
                    return Ok(att);
                }
            }
            match link_create(prog.as_fd(), cg.as_fd(), attach_type, 0) {
                Ok(link) => {
                    if let Some(pin) = pin {
                        obj_pin(link.as_fd(), pin)
                            .map_err(kernel(format!("pin link of {}", where_())))?;
                    }
                    return Ok(CgroupAttachment::Link {
                        link,
                        pin: pin.map(Path::to_path_buf),
                        attach_type,
                    });
                }
                Err(e) if mode == AttachMode::Auto && link_unsupported(&e) => {
                    log::info!(
                        "bpf_link unavailable for {} ({e}); using PROG_ATTACH",
                        where_()
                    );
                }
                Err(e) => return Err(kernel(format!("link {}", where_()))(e)),
            }
        }
        let prog_fd = prog.try_clone_fd().map_err(|error| AttachError::Io {
            what: "dup program fd".into(),
            error,
        })?;
        prog_attach(
            cg.as_fd(),
            prog_fd.as_fd(),
            attach_type,
            F_ALLOW_MULTI,
            None,
        )
        .map_err(kernel(format!("attach {}", where_())))?;
        Ok(CgroupAttachment::Legacy {
            cgroup: cg,
            prog: prog_fd,
            attach_type,
            detach_on_drop: true,
        })
    }

    /// Atomically swaps the attached program for `new` (no moment without a program):
    /// `BPF_LINK_UPDATE` for links, `BPF_F_REPLACE` for legacy attachments.
    pub fn replace(&mut self, new: &LoadedProgram) -> Result<(), AttachError> {
        match self {
            CgroupAttachment::Link {
                link, attach_type, ..
            } => {
                check_hook(new, *attach_type)?;
                link_update(link.as_fd(), new.as_fd(), None)
                    .map_err(kernel(format!("replace with {} (link update)", new.name())))
            }
            CgroupAttachment::Legacy {
                cgroup,
                prog,
                attach_type,
                ..
            } => {
                check_hook(new, *attach_type)?;
                let new_fd = new.try_clone_fd().map_err(|error| AttachError::Io {
                    what: "dup program fd".into(),
                    error,
                })?;
                prog_attach(
                    cgroup.as_fd(),
                    new_fd.as_fd(),
                    *attach_type,
                    F_ALLOW_MULTI,
                    Some(prog.as_fd()),
                )
                .map_err(kernel(format!("replace with {} (F_REPLACE)", new.name())))?;
                *prog = new_fd;
                Ok(())
            }
        }
    }

    /// Leaves the attachment in place when this value drops (pinned links stay anyway).
    pub fn keep(mut self) {
        if let CgroupAttachment::Legacy { detach_on_drop, .. } = &mut self {
            *detach_on_drop = false;
        }
    }

    pub fn is_link(&self) -> bool {
        matches!(self, CgroupAttachment::Link { .. })
    }

    /// Detaches now and removes the pin.
    pub fn detach(mut self) -> Result<(), AttachError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), AttachError> {
        match self {
            CgroupAttachment::Link { link, pin, .. } => {
                if let Some(pin) = pin.take() {
                    remove_pin(&pin)?;
                }
                // LINK_DETACH (5.9+) ends it even if someone else holds an fd; older kernels
                // detach when the last fd closes.
                match link_detach(link.as_fd()) {
                    Ok(()) => Ok(()),
                    Err(e) if e.is(Errno::EINVAL) || e.is(Errno::EOPNOTSUPP) => Ok(()),
                    Err(e) => Err(kernel("detach link")(e)),
                }
            }
            CgroupAttachment::Legacy {
                cgroup,
                prog,
                attach_type,
                detach_on_drop,
            } => {
                *detach_on_drop = false;
                prog_detach(cgroup.as_fd(), Some(prog.as_fd()), *attach_type)
                    .map_err(kernel("detach program"))
            }
        }
    }
}

impl Drop for CgroupAttachment {
    fn drop(&mut self) {
        if let CgroupAttachment::Legacy {
            detach_on_drop: true,
            ..
        } = self
        {
            if let Err(e) = self.detach_inner() {
                log::warn!("detaching on drop: {e}");
            }
        }
    }
}

fn check_hook(prog: &LoadedProgram, attach_type: AttachType) -> Result<(), AttachError> {
    match prog.expected_attach_type() {
        Some(expected) if expected != attach_type => Err(AttachError::WrongHook {
            program: prog.name().to_string(),
            message: format!("loaded for {expected}, cannot attach as {attach_type}"),
        }),
        _ => Ok(()),
    }
}

/// Opens the link pinned at `pin` and points it at `prog`. `Ok(None)`: nothing usable pinned
/// there (absent, or defunct and now unpinned).
fn update_pinned_link(
    prog: &LoadedProgram,
    pin: &Path,
    cgroup: &Path,
    attach_type: AttachType,
) -> Result<Option<CgroupAttachment>, AttachError> {
    let link = match obj_get(pin, 0) {
        Ok(fd) => fd,
        Err(e) if e.is(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(kernel(format!("open pinned link {}", pin.display()))(e)),
    };
    let info = link_info(link.as_fd())
        .map_err(kernel(format!("inspect pinned link {}", pin.display())))?;
    if info.attach_type != attach_type {
        return Err(AttachError::WrongHook {
            program: prog.name().to_string(),
            message: format!(
                "the link pinned at {} is for {}, not {attach_type}; remove it",
                pin.display(),
                info.attach_type
            ),
        });
    }
    // A cgroup v2 id is its directory's inode number; 0 means the link's cgroup is gone.
    if info.cgroup_id == 0 {
        remove_pin(pin)?;
        return Ok(None);
    }
    let target_id = std::fs::metadata(cgroup)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|error| AttachError::Io {
            what: format!("stat cgroup {}", cgroup.display()),
            error,
        })?;
    if info.cgroup_id != target_id {
        return Err(AttachError::WrongHook {
            program: prog.name().to_string(),
            message: format!(
                "the link pinned at {} belongs to another cgroup (id {}, not {} = {}); \
                 use another pin path or remove it",
                pin.display(),
                info.cgroup_id,
                target_id,
                cgroup.display()
            ),
        });
    }
    match link_update(link.as_fd(), prog.as_fd(), None) {
        Ok(()) => Ok(Some(CgroupAttachment::Link {
            link,
            pin: Some(pin.to_path_buf()),
            attach_type,
        })),
        Err(e) if e.is(Errno::ENOLINK) => {
            // Defunct: its cgroup was removed. Start over.
            remove_pin(pin)?;
            Ok(None)
        }
        Err(e) => Err(kernel(format!("update pinned link {}", pin.display()))(e)),
    }
}

fn remove_pin(pin: &Path) -> Result<(), AttachError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(AttachError::Io {
            what: format!("unpin {}", pin.display()),
            error,
        }),
    }
}

/// Detaches the link pinned at `pin` and removes the pin (`merbridge unload`). Absent = done.
pub fn detach_pinned_link(pin: &Path) -> Result<(), AttachError> {
    let link = match obj_get(pin, 0) {
        Ok(fd) => fd,
        Err(e) if e.is(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(kernel(format!("open pinned link {}", pin.display()))(e)),
    };
    remove_pin(pin)?;
    match link_detach(link.as_fd()) {
        Ok(()) => Ok(()),
        Err(e) if e.is(Errno::EINVAL) || e.is(Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(kernel(format!("detach link {}", pin.display()))(e)),
    }
}

/// A program attached to a cgroup, as PROG_QUERY reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    pub id: u32,
    pub name: String,
    pub prog_type: ProgType,
}

/// The programs attached to the cgroup at `cgroup` for `attach_type` (`effective`: include
/// those inherited from ancestors).
pub fn query_cgroup(
    cgroup: &Path,
    attach_type: AttachType,
    effective: bool,
) -> Result<Vec<AttachedProgram>, AttachError> {
    let cg = open_cgroup(cgroup)?;
    let flags = if effective { F_QUERY_EFFECTIVE } else { 0 };
    let q = prog_query(cg.as_fd(), attach_type, flags)
        .map_err(kernel(format!("query cgroup {}", cgroup.display())))?;
    let mut out = Vec::new();
    for id in q.prog_ids {
        // A program detached between the query and now is simply gone.
        let Ok(fd) = prog_get_fd_by_id(id) else {
            continue;
        };
        let info = prog_info(fd.as_fd()).map_err(kernel(format!("inspect program {id}")))?;
        out.push(AttachedProgram {
            id,
            name: info.name,
            prog_type: info.prog_type,
        });
    }
    Ok(out)
}

/// Detaches every program attached directly to `cgroup` for `attach_type` whose name is in
/// `names` (legacy attachments left by an earlier run). Returns how many were detached.
pub fn detach_by_name(
    cgroup: &Path,
    attach_type: AttachType,
    names: &[&str],
) -> Result<usize, AttachError> {
    let cg = open_cgroup(cgroup)?;
    let mut n = 0;
    for p in query_cgroup(cgroup, attach_type, false)? {
        if !names.contains(&p.name.as_str()) {
            continue;
        }
        let Ok(fd) = prog_get_fd_by_id(p.id) else {
            continue;
        };
        match prog_detach(cg.as_fd(), Some(fd.as_fd()), attach_type) {
            Ok(()) => n += 1,
            // Attached through a link: `detach_pinned_link` is the way.
            Err(e) if e.is(Errno::ENOENT) => {}
            Err(e) => return Err(kernel(format!("detach program {}", p.name))(e)),
        }
    }
    Ok(n)
}

/// An sk_msg program attached to a sockhash. Detached on drop unless kept (the attachment
/// otherwise lives as long as the map).
#[derive(Debug)]
pub struct SkMsgAttachment {
    map: OwnedFd,
    prog: OwnedFd,
    detach_on_drop: bool,
}

impl SkMsgAttachment {
    /// `BPF_PROG_ATTACH(map, prog, BPF_SK_MSG_VERDICT)`.
    pub fn attach(
        prog: &LoadedProgram,
        sockhash: BorrowedFd<'_>,
    ) -> Result<SkMsgAttachment, AttachError> {
        if prog.prog_type() != ProgType::SK_MSG {
            return Err(AttachError::WrongHook {
                program: prog.name().to_string(),
                message: format!(
                    "is {}, only sk_msg attaches to a sockhash",
                    prog.prog_type()
                ),
            });
        }
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|error| AttachError::Io {
                what: "dup fd".into(),
                error,
            })
        };
        let map = dup(sockhash)?;
        let prog_fd = dup(prog.as_fd())?;
        prog_attach(
            map.as_fd(),
            prog_fd.as_fd(),
            AttachType::SK_MSG_VERDICT,
            0,
            None,
        )
        .map_err(kernel(format!("attach {} to sockhash", prog.name())))?;
        Ok(SkMsgAttachment {
            map,
            prog: prog_fd,
            detach_on_drop: true,
        })
    }

    /// Leaves the program attached after this value drops (pin the map to keep both).
    pub fn keep(mut self) {
        self.detach_on_drop = false;
    }

    /// Detaches with the same program fd (required since 5.9).
    pub fn detach(mut self) -> Result<(), AttachError> {
        self.detach_on_drop = false;
        prog_detach(
            self.map.as_fd(),
            Some(self.prog.as_fd()),
            AttachType::SK_MSG_VERDICT,
        )
        .map_err(kernel("detach sk_msg program"))
    }
}

impl Drop for SkMsgAttachment {
    fn drop(&mut self) {
        if self.detach_on_drop {
            if let Err(e) = prog_detach(
                self.map.as_fd(),
                Some(self.prog.as_fd()),
                AttachType::SK_MSG_VERDICT,
            ) {
                log::warn!("detaching sk_msg program on drop: {e}");
            }
        }
    }
}
