//! A network namespace's cookie (what `bpf_get_netns_cookie` returns for its sockets), on any
//! kernel the data path supports: `SO_NETNS_COOKIE` where the kernel has it (5.14+), else a
//! one-shot connect4 program that reports the cookie of a socket opened in that namespace.

use crate::attach::{AttachMode, CgroupAttachment};
use crate::image::ProgramImage;
use crate::load::load;
use mb_asm::{Asm, Helper, JmpOp, Reg, Size};
use mb_maps::Array;
use mb_sys::bpf::{AttachType, ProgType};
use mb_sys::cgroup::OwnedCgroup;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;

/// One report at a time (the map has one slot).
static REPORTER: Mutex<()> = Mutex::new(());

/// The cookie of the network namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn netns_cookie(path: &Path) -> Result<u64, String> {
    match mb_sys::netns::netns_cookie(path) {
        Ok(cookie) => Ok(cookie),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            cookie_from_bpf(path).map_err(|why| {
                format!(
                    "the network-namespace cookie of {}: this kernel has no SO_NETNS_COOKIE \
                     (Linux 5.14) and reading it with a BPF program failed: {why}",
                    path.display()
                )
            })
        }
        Err(e) => Err(format!(
            "the network-namespace cookie of {}: {e}",
            path.display()
        )),
    }
}

/// connect4: `cookie[0] = bpf_get_netns_cookie(ctx)`; every connect is allowed.
fn reporter() -> Result<ProgramImage, String> {
    let mut a = Asm::new();
    let out = a.label();
    a.mov64_reg(Reg::R6, Reg::R1)
        .st_imm(Size::W, Reg::FP, -4, 0)
        .ld_map_fd(Reg::R1, "cookie")
        .mov64_reg(Reg::R2, Reg::FP)
        .alu64_imm(mb_asm::AluOp::Add, Reg::R2, -4)
        .call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, Reg::R0, 0, out)
        .mov64_reg(Reg::R7, Reg::R0)
        .mov64_reg(Reg::R1, Reg::R6)
        .call(Helper::GetNetnsCookie)
        .stx(Size::DW, Reg::R7, 0, Reg::R0)
        .bind(out)
        .mov64_imm(Reg::R0, 1)
        .exit();
    let program = a.finish().map_err(|e| e.to_string())?;
    Ok(ProgramImage::new(
        "mb_ns_cookie",
        ProgType::CGROUP_SOCK_ADDR,
        Some(AttachType::CGROUP_INET4_CONNECT),
        program,
    ))
}

fn cookie_from_bpf(path: &Path) -> Result<u64, String> {
    let _one = REPORTER.lock().unwrap_or_else(|p| p.into_inner());
    let map: Array<u64> = Array::create("mb_ns_cookie", 1).map_err(|e| e.to_string())?;
    let prog = load(&reporter()?, &[("cookie", map.as_fd())], &[]).map_err(|e| e.to_string())?;
    let cgroup = OwnedCgroup::create_private("mb-cookie").map_err(|e| e.to_string())?;
    let attachment = CgroupAttachment::attach(
        &prog,
        cgroup.path(),
        AttachType::CGROUP_INET4_CONNECT,
        None,
        AttachMode::Auto,
    )
    .map_err(|e| e.to_string())?;
    let connected = mb_sys::netns::connect_once_in(path, cgroup.path());
    let cookie = map.get(&0).map_err(|e| e.to_string())?.unwrap_or(0);
    attachment.detach().map_err(|e| e.to_string())?;
    connected.map_err(|e| e.to_string())?;
    if cookie == 0 {
        return Err("the reporter program saw no connect".into());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bpf_reporter_agrees_with_so_netns_cookie() {
        if !mb_sys::testing::kernel_tests_enabled("the_bpf_reporter_agrees_with_so_netns_cookie") {
            return;
        }
        let ns = mb_sys::netns::NamedNetns::create(&format!("mb-cookie-{}", std::process::id()))
            .unwrap();
        let from_bpf = cookie_from_bpf(ns.path()).unwrap();
        match mb_sys::netns::netns_cookie(ns.path()) {
            Ok(from_sockopt) => assert_eq!(from_bpf, from_sockopt),
            // Before 5.14: only the BPF way exists; it must at least differ from ours.
            Err(_) => assert_ne!(from_bpf, 0),
        }
        assert_eq!(netns_cookie(ns.path()).unwrap(), from_bpf);
    }
}
