//! The merbridge data path in the kernel: create or re-open its pinned maps, load its
//! programs (embedded at build time) with the mesh's constants, attach them to a cgroup and
//! the sockhash, pin everything under one directory — and take it all away again.
//!
//! Pin layout under the pin directory (default `/sys/fs/bpf/merbridge`):
//! `maps/<map>`, `links/<program>` (cgroup bpf_links), `progs/<program>` (the sk_msg program,
//! the sk_lookup program that [`crate::inbound`] attaches per pod, and cgroup programs
//! attached without links, so `unload` can detach them), `links/inbound/<pod>` (each meshed
//! pod's sk_lookup link on its network namespace).
//!
//! Loading again over a loaded data path swaps every program atomically (`BPF_LINK_UPDATE`;
//! sk_msg by re-attaching to the same sockhash) and keeps the maps and their contents, so an
//! upgrade drops no connection and leaves no moment without interception.

use crate::attach::{
    detach_by_name, detach_pinned_link, AttachError, AttachMode, CgroupAttachment, SkMsgAttachment,
};
use crate::image::ProgramImage;
use crate::load::{load, LoadError, LoadedProgram};
use crate::map_sizes::{size_mismatch, MapSizes};
use crate::memlock::{raise_memlock_if_needed, Memlock};
use mb_asm::{Insn, Program, RelocKind, Relocation};
use mb_maps::datapath::{
    Hook, MapDecl, CONST_DNS_PORT, CONST_INBOUND_PORT, CONST_OUTBOUND_PORT, CONST_PROXY_UID,
    CONST_SPLICE, MAPS, MAP_COUNTERS, MAP_SOCK_PAIRS,
};
use mb_maps::layout::Counter;
use mb_maps::{Map, MapError, PerCpuArray};
use mb_sys::bpf::{link_info, obj_get, prog_detach, AttachType, BpfError, LinkInfo};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a relocation of an embedded program is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocTag {
    MapFd,
    MapValue,
    Const,
}

/// A data-path program as the build script embedded it.
#[derive(Debug)]
pub struct EmbeddedProgram {
    pub hook: Hook,
    /// Built for netns-scoped keys (`true`) or for binding sources to pod addresses.
    pub netns_keys: bool,
    /// Little-endian instruction slots.
    pub insns: &'static [u64],
    pub relocations: &'static [(usize, RelocTag, &'static str)],
}

include!(concat!(env!("OUT_DIR"), "/datapath.rs"));

impl EmbeddedProgram {
    /// The program with its relocations still to fill.
    pub fn program(&self) -> Program {
        Program {
            insns: self
                .insns
                .iter()
                .map(|w| Insn::from_bytes(w.to_le_bytes()))
                .collect(),
            relocations: self
                .relocations
                .iter()
                .map(|&(slot, tag, name)| Relocation {
                    slot,
                    kind: match tag {
                        RelocTag::MapFd => RelocKind::MapFd(name.into()),
                        RelocTag::MapValue => RelocKind::MapValue(name.into()),
                        RelocTag::Const => RelocKind::Const(name.into()),
                    },
                })
                .collect(),
        }
    }

    pub fn image(&self) -> ProgramImage {
        ProgramImage::new(
            self.hook.program_name(),
            self.hook.prog_type(),
            self.hook.expected_attach_type(),
            self.program(),
        )
    }
}

/// The embedded program for `hook` in the netns-keys variant.
pub fn embedded(hook: Hook) -> &'static EmbeddedProgram {
    embedded_variant(hook, true)
}

/// The embedded program for `hook`: the `netns_keys` variant where the hook has two.
pub fn embedded_variant(hook: Hook, netns_keys: bool) -> &'static EmbeddedProgram {
    EMBEDDED
        .iter()
        .find(|p| p.hook == hook && p.netns_keys == netns_keys)
        .or_else(|| EMBEDDED.iter().find(|p| p.hook == hook))
        .expect("the build script embeds every hook")
}

/// Whether this kernel lets sock_ops, sk_msg and getsockopt programs read the network
/// namespace cookie (6.1 and newer): then pair keys carry it; otherwise connect binds
/// redirected sockets to their pod's address (the original's way).
pub fn kernel_has_netns_keys() -> bool {
    use mb_sys::bpf::ProgType;
    const GET_NETNS_COOKIE: u32 = 122;
    [
        (ProgType::SOCK_OPS, Hook::SockOps),
        (ProgType::SK_MSG, Hook::SkMsg),
        (ProgType::CGROUP_SOCKOPT, Hook::GetSockopt),
    ]
    .iter()
    .all(|&(prog_type, hook)| {
        crate::probe::probe_helper(prog_type, hook.expected_attach_type(), GET_NETNS_COOKIE)
            .is_yes()
    })
}

/// The mesh's numbers patched into the bytecode at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshConstants {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub dns_port: u16,
    /// `mb_maps::datapath::SPLICE_*`.
    pub splice_mode: u32,
}

impl MeshConstants {
    pub fn relocations(&self) -> [(&'static str, i64); 5] {
        [
            (CONST_OUTBOUND_PORT, self.outbound_port as i64),
            (CONST_INBOUND_PORT, self.inbound_port as i64),
            (CONST_PROXY_UID, self.proxy_uid as i64),
            (CONST_DNS_PORT, self.dns_port as i64),
            (CONST_SPLICE, self.splice_mode as i64),
        ]
    }
}

/// Which cgroup, where to pin, what to enable.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub constants: MeshConstants,
    /// Attach connect6 too.
    pub ipv6: bool,
    /// Attach the UDP DNS hooks (sendmsg/recvmsg).
    pub dns_capture: bool,
    /// Attach bind4 (Linkerd's outbound listener).
    pub bind4: bool,
    pub mode: AttachMode,
    /// Netns-scoped pair keys (`Some(true)`), bound sources (`Some(false)`), or probe the
    /// kernel (`None`).
    pub netns_keys: Option<bool>,
}

impl LoadOptions {
    /// The usual options for a mesh whose numbers are `constants`: attach to `cgroup`, pin
    /// under `pin_dir`, IPv4 only, no DNS capture, no bind4, attach mode `Auto`, pair keys
    /// probed. Callers change what differs with `LoadOptions { ipv6: true, ..for_mesh(..) }`.
    pub fn for_mesh(
        cgroup: impl Into<PathBuf>,
        pin_dir: impl Into<PathBuf>,
        constants: MeshConstants,
    ) -> LoadOptions {
        LoadOptions {
            cgroup: cgroup.into(),
            pin_dir: pin_dir.into(),
            constants,
            ipv6: false,
            dns_capture: false,
            bind4: false,
            mode: AttachMode::Auto,
            netns_keys: None,
        }
    }

    /// The hooks these options enable, in attach order: the sockhash side first, so that by
    /// the time connects are redirected, their sockets can be spliced.
    pub fn hooks(&self) -> Vec<Hook> {
        // sk_lookup is loaded and pinned only: pods attach it to their namespaces.
        let mut hooks = vec![
            Hook::SkMsg,
            Hook::SkLookup,
            Hook::SockOps,
            Hook::GetSockopt,
            Hook::Connect4,
        ];
        if self.ipv6 {
            hooks.push(Hook::Connect6);
        }
        if self.dns_capture {
            hooks.extend([Hook::Sendmsg4, Hook::Recvmsg4]);
            if self.ipv6 {
                hooks.extend([Hook::Sendmsg6, Hook::Recvmsg6]);
            }
        }
        if self.bind4 {
            hooks.push(Hook::Bind4);
        }
        hooks
    }
}

/// Every data-path counter pinned under `pin_dir`, summed over the CPUs (`merbridge status`
/// and the bench read them).
pub fn read_counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>, MapError> {
    let map: PerCpuArray<u64> =
        PerCpuArray::open_pinned(&PinLayout::new(pin_dir).map(MAP_COUNTERS))?;
    Counter::ALL
        .iter()
        .map(|&c| Ok((c, map.get_sum(c as u32)?.unwrap_or(0))))
        .collect()
}

/// Paths under the pin directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: &Path) -> PinLayout {
        PinLayout {
            root: root.to_path_buf(),
        }
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    pub fn link(&self, hook: Hook) -> PathBuf {
        self.links_dir().join(hook.program_name())
    }
    pub fn prog(&self, hook: Hook) -> PathBuf {
        self.progs_dir().join(hook.program_name())
    }
    /// Where each pod's sk_lookup link is pinned.
    pub fn inbound_links_dir(&self) -> PathBuf {
        self.links_dir().join("inbound")
    }
}

/// Why the data path could not be loaded or unloaded.
#[derive(Debug)]
pub enum DataPathError {
    PinDir { path: PathBuf, message: String },
    Map { name: String, error: MapError },
    Load(LoadError),
    Attach { hook: Hook, error: AttachError },
    Kernel { what: String, error: BpfError },
}

impl fmt::Display for DataPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataPathError::PinDir { path, message } => {
                write!(f, "pin directory {}: {message}", path.display())
            }
            DataPathError::Map { name, error } => write!(f, "map {name}: {error}"),
            DataPathError::Load(e) => {
                write!(f, "{e}")?;
                if let Some(log) = e.verifier_log() {
                    if log.contains("cannot use helper") || log.contains("unknown func") {
                        write!(
                            f,
                            "\nhint: this kernel lacks a helper the data path needs; \
                             `merbridge probe` lists what is missing"
                        )?;
                    }
                }
                Ok(())
            }
            DataPathError::Attach { hook, error } => {
                write!(f, "attaching {}: {error}", hook.program_name())
            }
            DataPathError::Kernel { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for DataPathError {}

/// How one program ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedHook {
    pub hook: Hook,
    pub prog_id: u32,
    pub insns: usize,
    /// "bpf_link", "prog_attach" or "sockhash".
    pub via: &'static str,
    /// An earlier program was swapped for this one.
    pub replaced: bool,
}

/// What `load` did.
#[derive(Debug)]
pub struct LoadReport {
    /// Which variant was loaded (see [`LoadOptions::netns_keys`]).
    pub netns_keys: bool,
    pub hooks: Vec<LoadedHook>,
    pub maps_created: Vec<&'static str>,
    pub maps_reused: Vec<&'static str>,
    pub memlock: Memlock,
    pub elapsed: Duration,
}

/// Checks that `dir` is (inside) a bpffs, creating it when its parent is one. A symlink is
/// refused (whoever can write its parent could point our pins elsewhere), and the
/// directories are created `0700`: pins are `0600` and root-owned (the kernel's default for
/// `BPF_OBJ_PIN` by root), and nobody else may list or replace them.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), DataPathError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |message: String| DataPathError::PinDir {
        path: dir.to_path_buf(),
        message,
    };
    let private_dir = |path: &Path| std::fs::DirBuilder::new().mode(0o700).create(path);
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        if meta.file_type().is_symlink() {
            return Err(err(
                "is a symlink: refusing to pin through it; give the real directory on bpffs".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(err("is not a directory".into()));
        }
    }
    if !dir.exists() {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !mb_sys::bpffs::is_bpffs(parent) {
            return Err(err(format!(
                "{} is not a bpf filesystem: mount one with `mount -t bpf bpf {}` or choose \
                 --pin-dir inside one",
                parent.display(),
                parent.display()
            )));
        }
        private_dir(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    } else if !mb_sys::bpffs::is_bpffs(dir) {
        return Err(err(
            "is not on a bpf filesystem: pins must live on bpffs (mount -t bpf)".into(),
        ));
    }
    let layout = PinLayout::new(dir);
    for sub in [
        layout.maps_dir(),
        layout.links_dir(),
        layout.progs_dir(),
        layout.inbound_links_dir(),
    ] {
        if !sub.exists() {
            private_dir(&sub).map_err(|e| err(format!("cannot create {}: {e}", sub.display())))?;
        }
    }
    Ok(())
}

/// Creates or re-opens (shape-checked) every data-path map under `layout`.
/// Returns the maps and which of them were created now.
pub fn open_maps(layout: &PinLayout) -> Result<Vec<(&'static MapDecl, Map, bool)>, DataPathError> {
    open_maps_sized(layout, &MapSizes::default())
}

/// [`open_maps`] with the sized maps at `sizes`; a pinned map of another size is refused
/// with what to do.
pub fn open_maps_sized(
    layout: &PinLayout,
    sizes: &MapSizes,
) -> Result<Vec<(&'static MapDecl, Map, bool)>, DataPathError> {
    MAPS.iter()
        .map(|decl| {
            let path = layout.map(decl.name);
            Map::create_or_open_pinned(&path, &decl.spec_with(sizes.max_entries(decl)))
                .or_else(|error| match &error {
                    // Counters pinned by an older version with fewer entries: kept (the
                    // programs' lookups past its end miss and count nothing).
                    MapError::Mismatch { found, .. }
                        if decl.name == MAP_COUNTERS && size_mismatch(decl, &error).is_some() =>
                    {
                        let size = found.max_entries;
                        let result = Map::create_or_open_pinned(&path, &decl.spec_with(size));
                        if result.is_ok() && size < Counter::COUNT {
                            log::warn!(
                                "counters map {} was pinned with {size} entries by an older \
                                 version: counters from {} on are not counted until \
                                 `merbridge unload` and a fresh load",
                                path.display(),
                                Counter::ALL[size as usize].name()
                            );
                        }
                        result
                    }
                    _ => Err(error),
                })
                .map(|(map, created)| (decl, map, created))
                .map_err(|error| match size_mismatch(decl, &error) {
                    Some(message) => DataPathError::PinDir { path, message },
                    None => DataPathError::Map {
                        name: decl.name.to_string(),
                        error,
                    },
                })
        })
        .collect()
}

/// Loads and attaches the data path with the default map sizes. On failure, whatever this
/// call attached anew is detached again; programs it swapped in place stay (they are whole
/// and working).
pub fn load_datapath(opts: &LoadOptions) -> Result<LoadReport, DataPathError> {
    load_datapath_sized(opts, &MapSizes::default())
}

/// [`load_datapath`] with the sized maps at `sizes` (`--max-pods`, `--max-connections`).
pub fn load_datapath_sized(
    opts: &LoadOptions,
    sizes: &MapSizes,
) -> Result<LoadReport, DataPathError> {
    let started = Instant::now();
    let memlock = raise_memlock_if_needed().map_err(|message| DataPathError::PinDir {
        path: opts.pin_dir.clone(),
        message: format!("raising RLIMIT_MEMLOCK: {message}"),
    })?;
    prepare_pin_dir(&opts.pin_dir)?;
    let layout = PinLayout::new(&opts.pin_dir);
    let maps = open_maps_sized(&layout, sizes)?;
    let map_fds: Vec<(&str, BorrowedFd<'_>)> =
        maps.iter().map(|(d, m, _)| (d.name, m.as_fd())).collect();
    let consts = opts.constants.relocations();

    let hooks = opts.hooks();
    let netns_keys = opts.netns_keys.unwrap_or_else(kernel_has_netns_keys);
    let mut programs: Vec<(Hook, LoadedProgram)> = Vec::new();
    for &hook in &hooks {
        let image = embedded_variant(hook, netns_keys).image();
        let prog = load(&image, &map_fds, &consts).map_err(DataPathError::Load)?;
        programs.push((hook, prog));
    }

    let mut fresh: Vec<Fresh> = Vec::new();
    let mut report_hooks = Vec::new();
    let result = (|| {
        for (hook, prog) in &programs {
            let prog_id = prog.info().map(|i| i.id).unwrap_or(0);
            let insns = embedded_variant(*hook, netns_keys).insns.len();
            if *hook == Hook::SkMsg {
                let sockhash = maps
                    .iter()
                    .find(|(d, _, _)| d.name == MAP_SOCK_PAIRS)
                    .map(|(_, m, _)| m)
                    .expect("declared map");
                let pin = layout.prog(*hook);
                let replaced = pin.exists();
                let att = SkMsgAttachment::attach(prog, sockhash.as_fd())
                    .map_err(|error| DataPathError::Attach { hook: *hook, error })?;
                repin_prog(prog, &pin)?;
                if replaced {
                    att.keep();
                } else {
                    fresh.push(Fresh::SkMsg(att, pin));
                }
                report_hooks.push(LoadedHook {
                    hook: *hook,
                    prog_id,
                    insns,
                    via: "sockhash",
                    replaced,
                });
                continue;
            }
            if *hook == Hook::SkLookup {
                // Pinned for the per-pod links; links already made run the new program now.
                let pin = layout.prog(*hook);
                let replaced = pin.exists();
                repin_prog(prog, &pin)?;
                crate::inbound::update_links(&layout, prog)
                    .map_err(|error| DataPathError::Attach { hook: *hook, error })?;
                report_hooks.push(LoadedHook {
                    hook: *hook,
                    prog_id,
                    insns,
                    via: "pinned (per-pod netns links)",
                    replaced,
                });
                continue;
            }
            let link_pin = layout.link(*hook);
            let replaced = link_pin.exists();
            let att = CgroupAttachment::attach(
                prog,
                &opts.cgroup,
                hook.attach_type(),
                Some(&link_pin),
                opts.mode,
            )
            .map_err(|error| DataPathError::Attach { hook: *hook, error })?;
            let via = if att.is_link() {
                "bpf_link"
            } else {
                "prog_attach"
            };
            if !att.is_link() {
                // Without a link nothing in bpffs holds the attachment: pin the program so
                // `unload` and `status` can find it.
                repin_prog(prog, &layout.prog(*hook))?;
            }
            if replaced {
                att.keep();
            } else {
                fresh.push(Fresh::Cgroup(att, layout.prog(*hook)));
            }
            report_hooks.push(LoadedHook {
                hook: *hook,
                prog_id,
                insns,
                via,
                replaced,
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        for f in fresh {
            f.undo();
        }
        return Err(e);
    }
    for f in fresh {
        f.keep();
    }
    // Hooks an earlier load enabled that these options do not: take them away.
    for hook in Hook::ALL {
        if !hooks.contains(&hook) && hook.attaches_to_cgroup() {
            detach_pinned_link(&layout.link(hook))
                .map_err(|error| DataPathError::Attach { hook, error })?;
        }
    }
    let (created, reused): (Vec<_>, Vec<_>) = maps.iter().partition(|(_, _, c)| *c);
    Ok(LoadReport {
        netns_keys,
        hooks: report_hooks,
        maps_created: created.iter().map(|(d, _, _)| d.name).collect(),
        maps_reused: reused.iter().map(|(d, _, _)| d.name).collect(),
        memlock,
        elapsed: started.elapsed(),
    })
}

/// An attachment made by this load, undone if a later step fails.
enum Fresh {
    Cgroup(CgroupAttachment, PathBuf),
    SkMsg(SkMsgAttachment, PathBuf),
}

impl Fresh {
    fn undo(self) {
        match self {
            Fresh::Cgroup(att, prog_pin) => {
                let _ = att.detach();
                let _ = std::fs::remove_file(prog_pin);
            }
            Fresh::SkMsg(att, prog_pin) => {
                let _ = att.detach();
                let _ = std::fs::remove_file(prog_pin);
            }
        }
    }

    fn keep(self) {
        match self {
            Fresh::Cgroup(att, _) => att.keep(),
            Fresh::SkMsg(att, _) => att.keep(),
        }
    }
}

fn repin_prog(prog: &LoadedProgram, pin: &Path) -> Result<(), DataPathError> {
    if pin.exists() {
        std::fs::remove_file(pin).map_err(|e| DataPathError::PinDir {
            path: pin.to_path_buf(),
            message: format!("cannot replace the pinned program: {e}"),
        })?;
    }
    prog.pin(pin).map_err(|error| DataPathError::Kernel {
        what: format!("pin {}", prog.name()),
        error,
    })
}

/// What `unload` removed.
#[derive(Debug, Default)]
pub struct UnloadReport {
    pub links_detached: usize,
    pub legacy_detached: usize,
    pub sk_msg_detached: bool,
    pub pins_removed: usize,
    /// Per-pod sk_lookup links detached.
    pub inbound_detached: usize,
}

/// Detaches and unpins everything of ours under `pin_dir` (and, for attachments made without
/// links, on `cgroup`). Afterwards nothing of ours is attached there or pinned. Absent pieces
/// are fine: unloading twice is not an error.
pub fn unload_datapath(
    pin_dir: &Path,
    cgroup: Option<&Path>,
) -> Result<UnloadReport, DataPathError> {
    let layout = PinLayout::new(pin_dir);
    let mut report = UnloadReport {
        inbound_detached: crate::inbound::detach_all(&layout).map_err(|error| {
            DataPathError::Attach {
                hook: Hook::SkLookup,
                error,
            }
        })?,
        ..UnloadReport::default()
    };
    for hook in Hook::ALL {
        let pin = layout.link(hook);
        if pin.exists() {
            detach_pinned_link(&pin).map_err(|error| DataPathError::Attach { hook, error })?;
            report.links_detached += 1;
        }
    }
    if let Some(cgroup) = cgroup {
        for hook in Hook::ALL.into_iter().filter(|h| h.attaches_to_cgroup()) {
            report.legacy_detached +=
                detach_by_name(cgroup, hook.attach_type(), &[hook.program_name()])
                    .map_err(|error| DataPathError::Attach { hook, error })?;
        }
    }
    let sk_msg_pin = layout.prog(Hook::SkMsg);
    let sockhash_pin = layout.map(MAP_SOCK_PAIRS);
    if sk_msg_pin.exists() && sockhash_pin.exists() {
        let kernel = |what: &str| {
            let what = what.to_string();
            move |error| DataPathError::Kernel { what, error }
        };
        let prog = obj_get(&sk_msg_pin, 0).map_err(kernel("open the pinned sk_msg program"))?;
        let map = obj_get(&sockhash_pin, 0).map_err(kernel("open the pinned sockhash"))?;
        match prog_detach(map.as_fd(), Some(prog.as_fd()), AttachType::SK_MSG_VERDICT) {
            Ok(()) => report.sk_msg_detached = true,
            Err(e) if e.is(nix::errno::Errno::ENOENT) => {}
            Err(error) => return Err(kernel("detach the sk_msg program")(error)),
        }
    }
    for dir in [
        layout.progs_dir(),
        layout.maps_dir(),
        layout.inbound_links_dir(),
        layout.links_dir(),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if std::fs::remove_file(entry.path()).is_ok() {
                    report.pins_removed += 1;
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(report)
}

/// One attached program as `status` sees it.
#[derive(Clone, Debug)]
pub struct HookStatus {
    pub hook: Hook,
    /// The pinned link's kernel view, when attached through a link.
    pub link: Option<LinkInfo>,
    /// A pinned program (sk_msg, or a cgroup program attached without a link).
    pub pinned_prog: bool,
}

/// What is attached under `pin_dir`.
pub fn hook_status(pin_dir: &Path) -> Vec<HookStatus> {
    let layout = PinLayout::new(pin_dir);
    Hook::ALL
        .iter()
        .filter_map(|&hook| {
            let link = obj_get(&layout.link(hook), 0)
                .ok()
                .and_then(|fd| link_info(fd.as_fd()).ok());
            let pinned_prog = layout.prog(hook).exists();
            (link.is_some() || pinned_prog).then_some(HookStatus {
                hook,
                link,
                pinned_prog,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_embedded_where_they_differ() {
        assert!(!embedded_variant(Hook::Connect4, false).netns_keys);
        assert!(embedded_variant(Hook::Connect4, true).netns_keys);
        // One program serves both where nothing differs.
        assert!(embedded_variant(Hook::Recvmsg4, false).netns_keys);
    }

    #[test]
    fn every_hook_is_embedded_with_its_relocations() {
        for hook in Hook::ALL {
            let e = embedded(hook);
            let program = e.program();
            assert!(!program.insns.is_empty(), "{hook:?}");
            assert_eq!(program.relocations.len(), e.relocations.len());
            // The embedded bytecode is what the assembler produces today.
            assert_eq!(program.insns.len(), e.insns.len());
            assert!(program
                .map_names()
                .iter()
                .all(|m| MapDecl::find(m).is_some()));
        }
    }

    #[test]
    fn options_choose_hooks() {
        // The mesh's numbers do not choose hooks.
        let constants = MeshConstants {
            outbound_port: 1,
            inbound_port: 2,
            proxy_uid: 3,
            dns_port: 4,
            splice_mode: mb_maps::datapath::SPLICE_SIDECARS,
        };
        let opts = LoadOptions::for_mesh("/x", "/y", constants);
        assert_eq!(
            opts.hooks(),
            vec![
                Hook::SkMsg,
                Hook::SkLookup,
                Hook::SockOps,
                Hook::GetSockopt,
                Hook::Connect4
            ]
        );
        let all = LoadOptions {
            ipv6: true,
            dns_capture: true,
            bind4: true,
            ..opts
        };
        let mut hooks = all.hooks();
        hooks.sort();
        let mut every = Hook::ALL.to_vec();
        every.sort();
        assert_eq!(hooks, every);
    }
}
