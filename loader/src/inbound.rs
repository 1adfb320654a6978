//! Each meshed pod's inbound capture: the pinned sk_lookup program attached to the pod's
//! network namespace with `BPF_LINK_CREATE` (target = the netns fd), the link pinned at
//! `links/inbound/<pod>` so that a restarted agent finds and adopts it, and `unload` removes
//! every one.
//!
//! A netns link ends when its namespace does (the kernel marks it defunct: netns inode 0);
//! such pins are swept by [`attach`] (same name) and [`sweep_defunct`].

use crate::attach::AttachError;
use crate::datapath::PinLayout;
use crate::load::LoadedProgram;
use mb_maps::datapath::Hook;
use mb_sys::bpf::{
    link_create, link_detach, link_info, link_update, obj_get, obj_pin, AttachType, BpfError,
    LINK_TYPE_NETNS,
};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// One pod's sk_lookup link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundLink {
    /// The pin's name: the pod's id.
    pub name: String,
    pub link_id: u32,
    pub prog_id: u32,
    /// Inode of the namespace it is attached to; 0 once that namespace is gone.
    pub netns_ino: u32,
}

impl InboundLink {
    pub fn is_defunct(&self) -> bool {
        self.netns_ino == 0
    }
}

fn kernel(what: impl Into<String>) -> impl FnOnce(BpfError) -> AttachError {
    let what = what.into();
    move |error| AttachError::Kernel { what, error }
}

/// Pod ids become file names in bpffs: letters, digits, `.`, `_`, `-` only.
pub fn check_name(name: &str) -> Result<(), AttachError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AttachError::WrongHook {
            program: Hook::SkLookup.program_name().into(),
            message: format!(
                "{name:?} cannot name a pod's inbound link: use 1-200 letters, digits, '.', '_' \
                 or '-'"
            ),
        })
    }
}

fn pin_path(layout: &PinLayout, name: &str) -> PathBuf {
    layout.inbound_links_dir().join(name)
}

fn read_link(pin: &Path, name: &str) -> Result<Option<InboundLink>, AttachError> {
    let fd = match obj_get(pin, 0) {
        Ok(fd) => fd,
        Err(e) if e.is(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(kernel(format!("open pinned link {}", pin.display()))(e)),
    };
    let info = link_info(fd.as_fd()).map_err(kernel(format!("link info {}", pin.display())))?;
    if info.link_type != LINK_TYPE_NETNS {
        return Err(AttachError::WrongHook {
            program: name.into(),
            message: format!(
                "{} is a link of type {}, not a netns (sk_lookup) link",
                pin.display(),
                info.link_type
            ),
        });
    }
    Ok(Some(InboundLink {
        name: name.to_string(),
        link_id: info.id,
        prog_id: info.prog_id,
        // struct bpf_link_info.netns: { __u32 netns_ino; __u32 attach_type; } shares the
        // union with the cgroup member that LinkInfo decodes.
        netns_ino: info.cgroup_id as u32,
    }))
}

/// What [`attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// A new link was created and pinned.
    Created,
    /// A pinned link on this very namespace was already there (an earlier agent's).
    Adopted,
}

/// Attaches the pinned sk_lookup program to the network namespace at `netns` as pod `name`,
/// or adopts the link already pinned for it. A pin left from a namespace that is gone (or
/// another one) is replaced.
pub fn attach(
    layout: &PinLayout,
    name: &str,
    netns: &Path,
) -> Result<(InboundLink, AttachOutcome), AttachError> {
    check_name(name)?;
    let ns = File::open(netns).map_err(|error| AttachError::Io {
        what: format!(
            "open the network namespace {} of pod {name} (is the pod gone?)",
            netns.display()
        ),
        error,
    })?;
    let ino = mb_sys::netns::netns_inode(netns).map_err(|error| AttachError::Io {
        what: format!("stat {}", netns.display()),
        error,
    })? as u32;
    let pin = pin_path(layout, name);
    if let Some(existing) = read_link(&pin, name)? {
        if existing.netns_ino == ino {
            return Ok((existing, AttachOutcome::Adopted));
        }
        detach(layout, name)?;
    }
    let prog_pin = layout.prog(Hook::SkLookup);
    let prog = obj_get(&prog_pin, 0).map_err(kernel(format!(
        "open the pinned sk_lookup program {} (run `merbridge load` first)",
        prog_pin.display()
    )))?;
    let link = link_create(prog.as_fd(), ns.as_fd(), AttachType::SK_LOOKUP, 0).map_err(kernel(
        format!(
            "attach sk_lookup to the network namespace {} of pod {name}",
            netns.display()
        ),
    ))?;
    std::fs::create_dir_all(layout.inbound_links_dir()).map_err(|error| AttachError::Io {
        what: format!("create {}", layout.inbound_links_dir().display()),
        error,
    })?;
    // Until pinned, closing `link` detaches it: a failure here leaves nothing behind.
    obj_pin(link.as_fd(), &pin).map_err(kernel(format!("pin {}", pin.display())))?;
    let info = read_link(&pin, name)?.ok_or_else(|| AttachError::Io {
        what: format!("re-open {}", pin.display()),
        error: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    Ok((info, AttachOutcome::Created))
}

/// Detaches pod `name`'s link and removes its pin. Returns false when there was none.
pub fn detach(layout: &PinLayout, name: &str) -> Result<bool, AttachError> {
    check_name(name)?;
    let pin = pin_path(layout, name);
    let link = match obj_get(&pin, 0) {
        Ok(fd) => fd,
        Err(e) if e.is(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(kernel(format!("open pinned link {}", pin.display()))(e)),
    };
    std::fs::remove_file(&pin).map_err(|error| AttachError::Io {
        what: format!("unpin {}", pin.display()),
        error,
    })?;
    match link_detach(link.as_fd()) {
        // A defunct link (namespace gone) is detached already.
        Ok(()) => Ok(true),
        Err(e) if e.is(Errno::EINVAL) || e.is(Errno::ENOLINK) || e.is(Errno::EOPNOTSUPP) => {
            Ok(true)
        }
        Err(e) => Err(kernel(format!("detach {}", pin.display()))(e)),
    }
}

/// Every pinned pod link, sorted by name.
pub fn list(layout: &PinLayout) -> Result<Vec<InboundLink>, AttachError> {
    let mut names: Vec<String> = match std::fs::read_dir(layout.inbound_links_dir()) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            return Err(AttachError::Io {
                what: format!("list {}", layout.inbound_links_dir().display()),
                error,
            })
        }
    };
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if let Some(link) = read_link(&pin_path(layout, &name), &name)? {
            out.push(link);
        }
    }
    Ok(out)
}

/// Detaches every pod link (`merbridge unload`). Returns how many there were.
pub fn detach_all(layout: &PinLayout) -> Result<usize, AttachError> {
    let mut n = 0;
    for link in list(layout)? {
        if detach(layout, &link.name)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes the pins of links whose namespace is gone. Returns their names.
pub fn sweep_defunct(layout: &PinLayout) -> Result<Vec<String>, AttachError> {
    let mut gone = Vec::new();
    for link in list(layout)? {
        if link.is_defunct() {
            detach(layout, &link.name)?;
            gone.push(link.name);
        }
    }
    Ok(gone)
}

/// Makes every pod link run `prog` (a reload swapped the program): `BPF_LINK_UPDATE`, atomic
/// per namespace. Links of namespaces that are gone are unpinned.
pub fn update_links(layout: &PinLayout, prog: &LoadedProgram) -> Result<(), AttachError> {
    for link in list(layout)? {
        let pin = pin_path(layout, &link.name);
        if link.is_defunct() {
            detach(layout, &link.name)?;
            continue;
        }
        let fd = obj_get(&pin, 0).map_err(kernel(format!("open {}", pin.display())))?;
        match link_update(fd.as_fd(), prog.as_fd(), None) {
            Ok(()) => {}
            Err(e) if e.is(Errno::ENOLINK) => {
                detach(layout, &link.name)?;
            }
            Err(e) => return Err(kernel(format!("update {}", pin.display()))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_stay_inside_the_links_directory() {
        assert!(check_name("pod-7").is_ok());
        assert!(check_name("a/b").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(201)).is_err());
    }
}
