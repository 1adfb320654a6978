//! Runtimes known to read only through non-blocking sockets (an `EAGAIN` means "wait again"
//! to them), recognised from the executable itself, not only its name:
//! - Go: the ELF section `.go.buildinfo` starting with Go's build-info magic;
//! - a JVM 13 or newer (`libjvm.so` mapped; `JAVA_VERSION` in its `release` file ≥ 13: the
//!   socket implementation of JEP 353 parks and retries on `EAGAIN`);
//! - Node (libuv), Envoy, linkerd2-proxy: an ELF executable of that name.
//!
//! Files are read through `/proc/PID/exe` and `/proc/PID/root/…`, so a container's own files
//! are read without entering its mount namespace.

use super::Reason;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The first bytes of Go's `.go.buildinfo` section.
const GO_BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Bounds for reading section headers: a damaged file must not make us read gigabytes.
const MAX_SECTIONS: u64 = 4096;
const MAX_SHSTRTAB: u64 = 1 << 20;

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

/// Whether `file` is an ELF file at all.
pub fn is_elf(file: &mut File) -> bool {
    let mut magic = [0u8; 4];
    read_at(file, 0, &mut magic).is_ok() && &magic == b"\x7fELF"
}

/// The file offset of section `wanted` of a 64-bit little-endian ELF file, or `None` (not
/// such a file, no such section, or damaged headers).
pub fn elf_section_offset(file: &mut File, wanted: &str) -> Option<u64> {
    let mut header = [0u8; 64];
    read_at(file, 0, &mut header).ok()?;
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let shoff = u64_at(&header, 0x28);
    let shentsize = u64::from(u16_at(&header, 0x3a));
    let shnum = u64::from(u16_at(&header, 0x3c));
    let shstrndx = u64::from(u16_at(&header, 0x3e));
    if shoff == 0 || shentsize < 64 || shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return None;
    }
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    read_at(file, shoff, &mut table).ok()?;
    let section = |i: u64| &table[(i * shentsize) as usize..(i * shentsize + 64) as usize];
    let strtab = section(shstrndx);
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20));
    if str_size == 0 || str_size > MAX_SHSTRTAB {
        return None;
    }
    let mut names = vec![0u8; str_size as usize];
    read_at(file, str_off, &mut names).ok()?;
    (0..shnum).find_map(|i| {
        let s = section(i);
        let start = u32_at(s, 0) as usize;
        let name = names.get(start..)?;
        let end = name.iter().position(|&c| c == 0)?;
        (&name[..end] == wanted.as_bytes()).then(|| u64_at(s, 0x18))
    })
}

/// Whether the executable is a Go binary: a `.go.buildinfo` section holding Go's magic.
pub fn is_go_binary(file: &mut File) -> bool {
    let Some(offset) = elf_section_offset(file, ".go.buildinfo") else {
        return false;
    };
    let mut magic = [0u8; GO_BUILDINFO_MAGIC.len()];
    read_at(file, offset, &mut magic).is_ok() && magic == GO_BUILDINFO_MAGIC
}

/// The major version of a JDK `release` file's `JAVA_VERSION="17.0.2"` (`"1.8.0_392"` is 8).
pub fn parse_java_release_major(text: &str) -> Option<u32> {
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("JAVA_VERSION="))?
        .trim()
        .trim_matches('"');
    let mut parts = value.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// The JVM's major version if process `pid` has `libjvm.so` mapped (from its `release` file,
/// two or three directories above the library: `lib/server/libjvm.so` or
/// `jre/lib/<arch>/server/libjvm.so`).
fn jvm_major(proc_root: &Path, pid: u32) -> Option<u32> {
    let maps = std::fs::read_to_string(proc_root.join(format!("{pid}/maps"))).ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libjvm.so"))?;
    let root = proc_root.join(format!("{pid}/root"));
    let mut dir = Path::new(lib).parent();
    for _ in 0..5 {
        let d = dir?;
        let release = root.join(d.strip_prefix("/").unwrap_or(d)).join("release");
        if let Ok(text) = std::fs::read_to_string(release) {
            return parse_java_release_major(&text);
        }
        dir = d.parent();
    }
    None
}

/// The known event-driven runtime of process `pid`, if any.
pub fn detect(proc_root: &Path, pid: u32) -> Option<Reason> {
    let exe_path = proc_root.join(format!("{pid}/exe"));
    let mut exe = File::open(&exe_path).ok()?;
    if !is_elf(&mut exe) {
        return None;
    }
    if is_go_binary(&mut exe) {
        return Some(Reason::GoRuntime);
    }
    let name = std::fs::read_link(&exe_path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // A deleted executable reads "envoy (deleted)".
    let name = name.trim_end_matches(" (deleted)");
    match name {
        "envoy" => return Some(Reason::Envoy),
        "linkerd2-proxy" => return Some(Reason::Linkerd2Proxy),
        "node" | "nodejs" => return Some(Reason::Node),
        _ => {}
    }
    match jvm_major(proc_root, pid) {
        Some(major) if major >= 13 => Some(Reason::Jvm),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 file: header, a section-name table and one section `name` holding
    /// `content`.
    fn elf_with_section(name: &str, content: &[u8]) -> Vec<u8> {
        let mut names = vec![0u8];
        let shstrtab_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");
        let wanted_name = names.len() as u32;
        names.extend_from_slice(name.as_bytes());
        names.push(0);
        let names_off = 64u64;
        let content_off = names_off + names.len() as u64;
        let shoff = content_off + content.len() as u64;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&names);
        f.extend_from_slice(content);
        let mut sh = |name: u32, off: u64, size: u64| {
            let mut s = [0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            s[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&s);
        };
        sh(0, 0, 0);
        sh(shstrtab_name, names_off, names.len() as u64);
        sh(wanted_name, content_off, content.len() as u64);
        f
    }

    fn temp_file(tag: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("mb-splice-{tag}-{}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn go_build_info_is_found_by_section_and_magic() {
        let mut content = GO_BUILDINFO_MAGIC.to_vec();
        content.extend_from_slice(&[8, 2, 0, 0]);
        let (path, mut file) = temp_file("go", &elf_with_section(".go.buildinfo", &content));
        assert!(is_go_binary(&mut file));
        std::fs::remove_file(path).unwrap();

        let (path, mut file) = temp_file(
            "nogo",
            &elf_with_section(".go.buildinfo", b"garbage......."),
        );
        assert!(!is_go_binary(&mut file), "section without Go's magic");
        std::fs::remove_file(path).unwrap();

        let (path, mut file) = temp_file("other", &elf_with_section(".rodata", &content));
        assert!(!is_go_binary(&mut file));
        assert_eq!(elf_section_offset(&mut file, ".rodata"), Some(64 + 19));
        std::fs::remove_file(path).unwrap();

        // Damaged: truncated section table, not ELF at all.
        let mut damaged = elf_with_section(".go.buildinfo", &content);
        damaged.truncate(damaged.len() - 10);
        let (path, mut file) = temp_file("damaged", &damaged);
        assert!(!is_go_binary(&mut file));
        std::fs::remove_file(path).unwrap();
        let (path, mut file) = temp_file("text", b"#!/bin/sh\necho hi\n");
        assert!(!is_go_binary(&mut file) && !is_elf(&mut file));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn java_release_versions() {
        assert_eq!(
            parse_java_release_major("IMPLEMENTOR=x\nJAVA_VERSION=\"17.0.2\"\n"),
            Some(17)
        );
        assert_eq!(
            parse_java_release_major("JAVA_VERSION=\"1.8.0_392\""),
            Some(8)
        );
        assert_eq!(parse_java_release_major("JAVA_VERSION=\"21\""), Some(21));
        assert_eq!(parse_java_release_major("JAVA_VERSION=\"x\""), None);
        assert_eq!(parse_java_release_major(""), None);
    }

    /// This test binary is a Rust ELF: no runtime is claimed for it.
    #[test]
    fn this_test_process_is_no_known_runtime() {
        assert_eq!(detect(Path::new("/proc"), std::process::id()), None);
        assert_eq!(detect(Path::new("/proc"), u32::MAX), None);
    }

    /// Real Node and JVM processes, where this machine has them (the CI image has both).
    #[test]
    fn real_node_and_jvm_processes_are_recognised() {
        let mut checked = 0;
        if Path::new("/usr/bin/node").exists() {
            let mut child = std::process::Command::new("/usr/bin/node")
                .args(["-e", "setTimeout(() => {}, 20000)"])
                .spawn()
                .unwrap();
            let found = detect(Path::new("/proc"), child.id());
            child.kill().unwrap();
            child.wait().unwrap();
            assert_eq!(found, Some(Reason::Node));
            checked += 1;
        }
        if Path::new("/usr/bin/java").exists() {
            let dir = std::env::temp_dir().join(format!("mb-splice-java-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let source = dir.join("Sleep.java");
            std::fs::write(
                &source,
                "public class Sleep { public static void main(String[] a) throws Exception \
                 { Thread.sleep(20000); } }",
            )
            .unwrap();
            let mut child = std::process::Command::new("/usr/bin/java")
                .arg(&source)
                .spawn()
                .unwrap();
            // libjvm.so is mapped within the first second; poll, bounded.
            let mut found = None;
            for _ in 0..100 {
                found = detect(Path::new("/proc"), child.id());
                if found.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            child.kill().unwrap();
            child.wait().unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            assert_eq!(
                found,
                Some(Reason::Jvm),
                "java ≥ 13 expected on this machine"
            );
            checked += 1;
        }
        eprintln!("runtimes checked against real processes: {checked}");
    }
}
