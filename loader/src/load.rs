//! Relocation and `BPF_PROG_LOAD` with the verifier-log strategy: first without a log (fast);
//! on failure again with a log, growing the buffer on ENOSPC (to `log_true_size` when the
//! kernel reports it), so a rejection names the program and quotes the verifier.

use crate::image::ProgramImage;
use mb_asm::Insn;
use mb_sys::bpf::{
    obj_pin, prog_info, prog_load, AttachType, BpfError, ProgInfo, ProgLoad, ProgType, VerifierLog,
};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// First log buffer size when a load failed.
pub const FIRST_LOG_SIZE: usize = 64 * 1024;
/// Largest log buffer the kernel accepts.
pub const MAX_LOG_SIZE: usize = (u32::MAX >> 2) as usize;
/// Load attempts with a log before giving up on ENOSPC.
const LOG_ATTEMPTS: usize = 8;
/// Lines of verifier output kept in the error message.
const EXCERPT_LINES: usize = 12;

/// Why a program could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// A map or constant relocation could not be filled.
    Relocation { program: String, message: String },
    /// The kernel refused the program.
    Rejected {
        program: String,
        error: BpfError,
        /// The whole verifier log (may be empty when the kernel wrote none).
        log: String,
    },
}

impl LoadError {
    /// The verifier log, when the kernel rejected the program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            LoadError::Rejected { log, .. } => Some(log),
            LoadError::Relocation { .. } => None,
        }
    }
}

/// The last lines of a verifier log: the verifier stops at the first error, so the instruction
/// it refused and its complaint are at the end.
pub fn log_excerpt(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Relocation { program, message } => {
                write!(f, "program {program}: {message}")
            }
            LoadError::Rejected {
                program,
                error,
                log,
            } => {
                write!(f, "program {program} was rejected: {error}")?;
                if log.trim().is_empty() {
                    if error.is(nix::errno::Errno::EPERM) {
                        f.write_str(
                            " (no verifier log: missing privileges, or RLIMIT_MEMLOCK too low \
                             on kernels before 5.11)",
                        )?;
                    }
                    Ok(())
                } else {
                    write!(
                        f,
                        "\nverifier log (last lines):\n{}",
                        log_excerpt(log, EXCERPT_LINES)
                    )
                }
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A program the kernel accepted.
#[derive(Debug)]
pub struct LoadedProgram {
    fd: OwnedFd,
    name: String,
    prog_type: ProgType,
    attach_type: Option<AttachType>,
}

impl LoadedProgram {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn prog_type(&self) -> ProgType {
        self.prog_type
    }

    pub fn expected_attach_type(&self) -> Option<AttachType> {
        self.attach_type
    }

    /// The kernel's view (id, tag, name).
    pub fn info(&self) -> Result<ProgInfo, BpfError> {
        prog_info(self.fd.as_fd())
    }

    /// Pins the program itself at `path` (links are what keep attachments; see `attach`).
    pub fn pin(&self, path: &Path) -> Result<(), BpfError> {
        obj_pin(self.fd.as_fd(), path)
    }

    /// A second fd for the same program.
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl AsFd for LoadedProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Fills the image's map relocations with fds and its constants with values; every relocation
/// must be filled, and every name given must exist in the program.
pub fn relocate(
    image: &ProgramImage,
    maps: &[(&str, BorrowedFd<'_>)],
    consts: &[(&str, i64)],
) -> Result<Vec<Insn>, LoadError> {
    use std::os::fd::AsRawFd;
    let err = |message: String| LoadError::Relocation {
        program: image.name.clone(),
        message,
    };
    let mut program = image.program.clone();
    for name in image.program.map_names() {
        let fd = maps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, fd)| fd.as_raw_fd())
            .ok_or_else(|| {
                err(format!(
                    "needs map `{name}`, which the loader was not given"
                ))
            })?;
        program = program
            .relocate_map(name, fd)
            .map_err(|e| err(e.to_string()))?;
    }
    for name in image.program.const_names() {
        let value = consts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| err(format!("needs constant `{name}`, which was not given")))?;
        program = program
            .relocate_const(name, value)
            .map_err(|e| err(e.to_string()))?;
    }
    program
        .resolved_insns()
        .map(|insns| insns.to_vec())
        .map_err(|e| err(e.to_string()))
}

/// Relocates and loads `image`.
pub fn load(
    image: &ProgramImage,
    maps: &[(&str, BorrowedFd<'_>)],
    consts: &[(&str, i64)],
) -> Result<LoadedProgram, LoadError> {
    let insns = relocate(image, maps, consts)?;
    load_insns(image, &insns)
}

/// Loads already-relocated instructions with `image`'s metadata.
pub fn load_insns(image: &ProgramImage, insns: &[Insn]) -> Result<LoadedProgram, LoadError> {
    let bytes: Vec<[u8; 8]> = insns.iter().map(Insn::to_bytes).collect();
    let args = ProgLoad {
        prog_type: image.prog_type,
        expected_attach_type: image.expected_attach_type,
        insns: &bytes,
        license: &image.license,
        name: &image.name,
        prog_flags: 0,
    };
    let loaded = |fd| LoadedProgram {
        fd,
        name: image.name.clone(),
        prog_type: image.prog_type,
        attach_type: image.expected_attach_type,
    };
    // Fast path: no log.
    let first_error = match prog_load(&args, None) {
        Ok(fd) => return Ok(loaded(fd)),
        Err(e) => e,
    };
    let (result, log) = load_with_log(&args, FIRST_LOG_SIZE, 1);
    match result {
        // Loaded the second time (a transient failure): accept it.
        Ok(fd) => Ok(loaded(fd)),
        Err(error) => Err(LoadError::Rejected {
            program: image.describe(),
            // The logged attempt's errno is the one that matches the log; the first is kept
            // when the second attempt could not even produce one.
            error: if log.is_empty() { first_error } else { error },
            log,
        }),
    }
}

/// Loads with a verifier log of `size` bytes at `level`, growing it on ENOSPC (exactly to
/// `log_true_size` on 6.4+ kernels, doubling otherwise). Returns the result and the log text.
pub fn load_with_log(
    args: &ProgLoad<'_>,
    size: usize,
    level: u32,
) -> (Result<OwnedFd, BpfError>, String) {
    let mut size = size.clamp(128, MAX_LOG_SIZE);
    let mut last = None;
    for _ in 0..LOG_ATTEMPTS {
        let mut log = VerifierLog::new(size, level);
        match prog_load(args, Some(&mut log)) {
            Ok(fd) => return (Ok(fd), log.text()),
            Err(e) if e.is(nix::errno::Errno::ENOSPC) && size < MAX_LOG_SIZE => {
                size = if log.true_size as usize > size {
                    log.true_size as usize
                } else {
                    size.saturating_mul(2)
                }
                .min(MAX_LOG_SIZE);
                last = Some((e, log.text()));
            }
            Err(e) => return (Err(e), log.text()),
        }
    }
    let (e, text) = last.expect("the loop ran at least once and only continues after ENOSPC");
    (Err(e), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mb_asm::{Asm, Reg};
    use mb_sys::bpf::fake::{override_syscall, put_u32, u32_at};
    use std::cell::RefCell;
    use std::rc::Rc;

    fn image_with_map_and_const() -> ProgramImage {
        let mut a = Asm::new();
        a.ld_map_fd(Reg::R1, "pods")
            .mov64_const(Reg::R0, "port")
            .exit();
        ProgramImage::new(
            "t",
            ProgType::SOCK_OPS,
            None,
            a.finish().expect("assembles"),
        )
    }

    #[test]
    fn relocation_fills_maps_and_constants() {
        let image = image_with_map_and_const();
        let file = std::fs::File::open("/dev/null").unwrap();
        let insns = relocate(&image, &[("pods", file.as_fd())], &[("port", 15001)]).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(insns[0].imm, file.as_raw_fd());
        assert_eq!(insns[2].imm, 15001);
    }

    #[test]
    fn missing_relocations_are_named() {
        let image = image_with_map_and_const();
        let e = relocate(&image, &[], &[("port", 1)]).unwrap_err();
        assert!(e.to_string().contains("needs map `pods`"), "{e}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = relocate(&image, &[("pods", file.as_fd())], &[]).unwrap_err();
        assert!(e.to_string().contains("constant `port`"), "{e}");
        let e = relocate(&image, &[("pods", file.as_fd())], &[("port", 1 << 40)]).unwrap_err();
        assert!(e.to_string().starts_with("program t:"), "{e}");
    }

    /// Fake kernel: fails without a log, then answers ENOSPC with log_true_size until the
    /// buffer is big enough, then EACCES with a log.
    #[test]
    fn log_strategy_no_log_first_then_grow_to_true_size() {
        let sizes = Rc::new(RefCell::new(Vec::new()));
        let seen = sizes.clone();
        let _g = override_syscall(move |_, a| {
            let log_size = u32_at(a, 28);
            seen.borrow_mut().push(log_size);
            if log_size == 0 {
                Err(libc::EACCES)
            } else if log_size < 200_000 {
                put_u32(a, 140, 200_000);
                Err(libc::ENOSPC)
            } else {
                Err(libc::EACCES)
            }
        });
        let mut a = Asm::new();
        a.mov64_imm(Reg::R0, 0).exit();
        let image = ProgramImage::new("grow", ProgType::SOCK_OPS, None, a.finish().unwrap());
        let e = load_insns(&image, &image.program.insns).unwrap_err();
        assert_eq!(*sizes.borrow(), vec![0, FIRST_LOG_SIZE as u32, 200_000]);
        assert!(
            e.to_string()
                .contains("program grow (sock_ops) was rejected"),
            "{e}"
        );
        assert!(e.to_string().contains("EACCES"), "{e}");
    }

    #[test]
    fn excerpt_keeps_the_last_lines() {
        let log = "0: (b7) r0 = 0\n\n1: (95) exit\nR0 !read_ok\nprocessed 2 insns\n";
        assert_eq!(log_excerpt(log, 2), "R0 !read_ok\nprocessed 2 insns");
    }
}
