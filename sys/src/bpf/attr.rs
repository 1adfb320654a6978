//! One `repr(C)` attr struct per `bpf(2)` command, sized to the fields we use.
//!
//! The kernel copies `size` bytes of `union bpf_attr` and zero-fills the rest, so a struct that
//! stops after its last used field works on every kernel that knows those fields. Every struct
//! has explicit padding fields (no implicit padding), so viewing it as bytes reads only
//! initialised memory.
//!
//! Offsets are the UAPI's (`include/uapi/linux/bpf.h`). `layout_tests` pins every one of them
//! as a number and compiles `offsetof()`/`sizeof()` of every field against the installed
//! header (`/usr/include/linux/bpf.h`, Debian's linux-libc-dev) to compare; `log_true_size`
//! (6.4, after `core_relo_rec_size`) is compared only where the header is that new.

/// Marker for the attr structs: plain integers, explicit padding, `repr(C)`.
///
/// # Safety
/// Implementors must be `repr(C)`, contain only integer fields and byte arrays, and have no
/// implicit padding, so that every byte of the value is initialised.
pub(crate) unsafe trait Attr: Sized {}

macro_rules! attr {
    ($(#[$meta:meta])* pub struct $name:ident { $(pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $(pub $field: $ty,)* }
        // SAFETY: the macro only ever receives integer and byte-array fields laid out by hand
        // with explicit padding; `no_implicit_padding` in the tests checks the sizes add up.
        unsafe impl Attr for $name {}
        impl $name {
            /// Sum of the field sizes; equal to `size_of::<Self>()` when there is no implicit
            /// padding.
            #[cfg(test)]
            pub(crate) const FIELD_BYTES: usize = 0 $(+ std::mem::size_of::<$ty>())*;
        }
    };
}

attr! {
    /// `BPF_MAP_CREATE`, up to `map_name`.
    pub struct MapCreateAttr {
        pub map_type: u32,
        pub key_size: u32,
        pub value_size: u32,
        pub max_entries: u32,
        pub map_flags: u32,
        pub inner_map_fd: u32,
        pub numa_node: u32,
        pub map_name: [u8; 16],
    }
}

attr! {
    /// `BPF_MAP_LOOKUP_ELEM`, `UPDATE_ELEM`, `DELETE_ELEM`, `GET_NEXT_KEY`. `value` doubles as
    /// `next_key`.
    pub struct MapElemAttr {
        pub map_fd: u32,
        pub _pad0: u32,
        pub key: u64,
        pub value: u64,
        pub flags: u64,
    }
}

attr! {
    /// `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_UPDATE_BATCH` (5.6+).
    pub struct MapBatchAttr {
        pub in_batch: u64,
        pub out_batch: u64,
        pub keys: u64,
        pub values: u64,
        pub count: u32,
        pub map_fd: u32,
        pub elem_flags: u64,
        pub flags: u64,
    }
}

attr! {
    /// `BPF_PROG_LOAD`, up to `log_true_size` (6.4; older kernels ignore the zero tail).
    pub struct ProgLoadAttr {
        pub prog_type: u32,
        pub insn_cnt: u32,
        pub insns: u64,
        pub license: u64,
        pub log_level: u32,
        pub log_size: u32,
        pub log_buf: u64,
        pub kern_version: u32,
        pub prog_flags: u32,
        pub prog_name: [u8; 16],
        pub prog_ifindex: u32,
        pub expected_attach_type: u32,
        pub prog_btf_fd: u32,
        pub func_info_rec_size: u32,
        pub func_info: u64,
        pub func_info_cnt: u32,
        pub line_info_rec_size: u32,
        pub line_info: u64,
        pub line_info_cnt: u32,
        pub attach_btf_id: u32,
        pub attach_prog_fd: u32,
        pub core_relo_cnt: u32,
        pub fd_array: u64,
        pub core_relos: u64,
        pub core_relo_rec_size: u32,
        pub log_true_size: u32,
    }
}

attr! {
    /// `BPF_OBJ_PIN` and `BPF_OBJ_GET`.
    pub struct ObjAttr {
        pub pathname: u64,
        pub bpf_fd: u32,
        pub file_flags: u32,
    }
}

attr! {
    /// `BPF_PROG_ATTACH` and `BPF_PROG_DETACH`, up to `replace_bpf_fd`.
    pub struct ProgAttachAttr {
        pub target_fd: u32,
        pub attach_bpf_fd: u32,
        pub attach_type: u32,
        pub attach_flags: u32,
        pub replace_bpf_fd: u32,
    }
}

attr! {
    /// `BPF_PROG_TEST_RUN`, up to `cpu`.
    pub struct TestRunAttr {
        pub prog_fd: u32,
        pub retval: u32,
        pub data_size_in: u32,
        pub data_size_out: u32,
        pub data_in: u64,
        pub data_out: u64,
        pub repeat: u32,
        pub duration: u32,
        pub ctx_size_in: u32,
        pub ctx_size_out: u32,
        pub ctx_in: u64,
        pub ctx_out: u64,
        pub flags: u32,
        pub cpu: u32,
    }
}

attr! {
    /// `BPF_PROG_GET_FD_BY_ID` (and the other `*_GET_FD_BY_ID`), up to `open_flags`.
    pub struct GetFdByIdAttr {
        pub id: u32,
        pub next_id: u32,
        pub open_flags: u32,
    }
}

attr! {
    /// `BPF_OBJ_GET_INFO_BY_FD`.
    pub struct InfoAttr {
        pub bpf_fd: u32,
        pub info_len: u32,
        pub info: u64,
    }
}

attr! {
    /// `BPF_PROG_QUERY`, up to `prog_cnt` (with the padding before `prog_attach_flags`).
    pub struct ProgQueryAttr {
        pub target_fd: u32,
        pub attach_type: u32,
        pub query_flags: u32,
        pub attach_flags: u32,
        pub prog_ids: u64,
        pub prog_cnt: u32,
        pub _pad0: u32,
    }
}

attr! {
    /// `BPF_LINK_CREATE`, up to `flags` (the per-link-type union after it stays zero).
    pub struct LinkCreateAttr {
        pub prog_fd: u32,
        pub target_fd: u32,
        pub attach_type: u32,
        pub flags: u32,
    }
}

attr! {
    /// `BPF_LINK_UPDATE`.
    pub struct LinkUpdateAttr {
        pub link_fd: u32,
        pub new_prog_fd: u32,
        pub flags: u32,
        pub old_prog_fd: u32,
    }
}

attr! {
    /// `BPF_LINK_DETACH`.
    pub struct LinkDetachAttr {
        pub link_fd: u32,
    }
}

attr! {
    /// `struct bpf_map_info`, up to `name`.
    pub struct MapInfoRaw {
        pub map_type: u32,
        pub id: u32,
        pub key_size: u32,
        pub value_size: u32,
        pub max_entries: u32,
        pub map_flags: u32,
        pub name: [u8; 16],
    }
}

attr! {
    /// `struct bpf_prog_info`, up to `name`. The pointer fields stay zero: we never ask the
    /// kernel to copy instructions or map ids.
    pub struct ProgInfoRaw {
        pub prog_type: u32,
        pub id: u32,
        pub tag: [u8; 8],
        pub jited_prog_len: u32,
        pub xlated_prog_len: u32,
        pub jited_prog_insns: u64,
        pub xlated_prog_insns: u64,
        pub load_time: u64,
        pub created_by_uid: u32,
        pub nr_map_ids: u32,
        pub map_ids: u64,
        pub name: [u8; 16],
    }
}

attr! {
    /// `struct bpf_link_info` with the cgroup member of its union.
    pub struct LinkInfoRaw {
        pub link_type: u32,
        pub id: u32,
        pub prog_id: u32,
        pub _pad0: u32,
        pub cgroup_id: u64,
        pub attach_type: u32,
        pub _pad1: u32,
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use memoffset::offset_of;
    use std::mem::size_of;

    macro_rules! no_padding {
        ($($t:ty),*) => {$(
            assert_eq!(size_of::<$t>(), <$t>::FIELD_BYTES, "{} has implicit padding", stringify!($t));
        )*};
    }

    #[test]
    fn no_implicit_padding() {
        no_padding!(
            MapCreateAttr,
            MapElemAttr,
            MapBatchAttr,
            ProgLoadAttr,
            ObjAttr,
            ProgAttachAttr,
            TestRunAttr,
            GetFdByIdAttr,
            InfoAttr,
            ProgQueryAttr,
            LinkCreateAttr,
            LinkUpdateAttr,
            LinkDetachAttr,
            MapInfoRaw,
            ProgInfoRaw,
            LinkInfoRaw
        );
    }

    // Expected numbers: `offsetof(union bpf_attr, …)` / `offsetof(struct bpf_*_info, …)` from
    // /usr/include/linux/bpf.h (linux-libc-dev 6.1.187), printed once with a throwaway program.
    #[test]
    fn map_attrs_match_uapi() {
        assert_eq!(offset_of!(MapCreateAttr, map_type), 0);
        assert_eq!(offset_of!(MapCreateAttr, key_size), 4);
        assert_eq!(offset_of!(MapCreateAttr, value_size), 8);
        assert_eq!(offset_of!(MapCreateAttr, max_entries), 12);
        assert_eq!(offset_of!(MapCreateAttr, map_flags), 16);
        assert_eq!(offset_of!(MapCreateAttr, inner_map_fd), 20);
        assert_eq!(offset_of!(MapCreateAttr, numa_node), 24);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(size_of::<MapCreateAttr>(), 44); // = offsetof(map_ifindex)
        assert_eq!(offset_of!(MapElemAttr, map_fd), 0);
        assert_eq!(offset_of!(MapElemAttr, key), 8);
        assert_eq!(offset_of!(MapElemAttr, value), 16);
        assert_eq!(offset_of!(MapElemAttr, flags), 24);
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(offset_of!(MapBatchAttr, in_batch), 0);
        assert_eq!(offset_of!(MapBatchAttr, out_batch), 8);
        assert_eq!(offset_of!(MapBatchAttr, keys), 16);
        assert_eq!(offset_of!(MapBatchAttr, values), 24);
        assert_eq!(offset_of!(MapBatchAttr, count), 32);
        assert_eq!(offset_of!(MapBatchAttr, map_fd), 36);
        assert_eq!(offset_of!(MapBatchAttr, elem_flags), 40);
        assert_eq!(offset_of!(MapBatchAttr, flags), 48);
        assert_eq!(size_of::<MapBatchAttr>(), 56);
    }

    #[test]
    fn prog_load_attr_matches_uapi() {
        assert_eq!(offset_of!(ProgLoadAttr, prog_type), 0);
        assert_eq!(offset_of!(ProgLoadAttr, insn_cnt), 4);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(offset_of!(ProgLoadAttr, log_level), 24);
        assert_eq!(offset_of!(ProgLoadAttr, log_size), 28);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, kern_version), 40);
        assert_eq!(offset_of!(ProgLoadAttr, prog_flags), 44);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, prog_ifindex), 64);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(ProgLoadAttr, fd_array), 120);
        assert_eq!(offset_of!(ProgLoadAttr, core_relos), 128);
        assert_eq!(offset_of!(ProgLoadAttr, core_relo_rec_size), 136);
        // 6.4 UAPI: `__u32 log_true_size;` right after core_relo_rec_size.
        assert_eq!(offset_of!(ProgLoadAttr, log_true_size), 140);
        assert_eq!(size_of::<ProgLoadAttr>(), 144);
    }

    #[test]
    fn object_and_attach_attrs_match_uapi() {
        assert_eq!(offset_of!(ObjAttr, pathname), 0);
        assert_eq!(offset_of!(ObjAttr, bpf_fd), 8);
        assert_eq!(offset_of!(ObjAttr, file_flags), 12);
        assert_eq!(size_of::<ObjAttr>(), 16);
        assert_eq!(offset_of!(ProgAttachAttr, target_fd), 0);
        assert_eq!(offset_of!(ProgAttachAttr, attach_bpf_fd), 4);
        assert_eq!(offset_of!(ProgAttachAttr, attach_type), 8);
        assert_eq!(offset_of!(ProgAttachAttr, attach_flags), 12);
        assert_eq!(offset_of!(ProgAttachAttr, replace_bpf_fd), 16);
        assert_eq!(size_of::<ProgAttachAttr>(), 20);
        assert_eq!(offset_of!(InfoAttr, bpf_fd), 0);
        assert_eq!(offset_of!(InfoAttr, info_len), 4);
        assert_eq!(offset_of!(InfoAttr, info), 8);
        assert_eq!(offset_of!(ProgQueryAttr, target_fd), 0);
        assert_eq!(offset_of!(ProgQueryAttr, attach_type), 4);
        assert_eq!(offset_of!(ProgQueryAttr, query_flags), 8);
        assert_eq!(offset_of!(ProgQueryAttr, attach_flags), 12);
        assert_eq!(offset_of!(ProgQueryAttr, prog_ids), 16);
        assert_eq!(offset_of!(ProgQueryAttr, prog_cnt), 24);
        assert_eq!(size_of::<ProgQueryAttr>(), 32); // = offsetof(prog_attach_flags)
        assert_eq!(offset_of!(LinkCreateAttr, prog_fd), 0);
        assert_eq!(offset_of!(LinkCreateAttr, target_fd), 4);
        assert_eq!(offset_of!(LinkCreateAttr, attach_type), 8);
        assert_eq!(offset_of!(LinkCreateAttr, flags), 12);
        assert_eq!(size_of::<LinkCreateAttr>(), 16); // = offsetof(target_btf_id)
        assert_eq!(offset_of!(LinkUpdateAttr, link_fd), 0);
        assert_eq!(offset_of!(LinkUpdateAttr, new_prog_fd), 4);
        assert_eq!(offset_of!(LinkUpdateAttr, flags), 8);
        assert_eq!(offset_of!(LinkUpdateAttr, old_prog_fd), 12);
        assert_eq!(offset_of!(LinkDetachAttr, link_fd), 0);
        assert_eq!(offset_of!(GetFdByIdAttr, open_flags), 8);
    }

    #[test]
    fn test_run_attr_matches_uapi() {
        assert_eq!(offset_of!(TestRunAttr, prog_fd), 0);
        assert_eq!(offset_of!(TestRunAttr, retval), 4);
        assert_eq!(offset_of!(TestRunAttr, data_size_in), 8);
        assert_eq!(offset_of!(TestRunAttr, data_size_out), 12);
        assert_eq!(offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(offset_of!(TestRunAttr, data_out), 24);
        assert_eq!(offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(offset_of!(TestRunAttr, duration), 36);
        assert_eq!(offset_of!(TestRunAttr, ctx_size_in), 40);
        assert_eq!(offset_of!(TestRunAttr, ctx_size_out), 44);
        assert_eq!(offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(offset_of!(TestRunAttr, ctx_out), 56);
        assert_eq!(offset_of!(TestRunAttr, flags), 64);
        assert_eq!(offset_of!(TestRunAttr, cpu), 68);
        assert_eq!(size_of::<TestRunAttr>(), 72); // = offsetof(batch_size)
    }

    #[test]
    fn info_structs_match_uapi() {
        assert_eq!(offset_of!(MapInfoRaw, map_type), 0);
        assert_eq!(offset_of!(MapInfoRaw, id), 4);
        assert_eq!(offset_of!(MapInfoRaw, key_size), 8);
        assert_eq!(offset_of!(MapInfoRaw, value_size), 12);
        assert_eq!(offset_of!(MapInfoRaw, max_entries), 16);
        assert_eq!(offset_of!(MapInfoRaw, map_flags), 20);
        assert_eq!(offset_of!(MapInfoRaw, name), 24);
        assert_eq!(size_of::<MapInfoRaw>(), 40); // = offsetof(ifindex)
        assert_eq!(offset_of!(ProgInfoRaw, prog_type), 0);
        assert_eq!(offset_of!(ProgInfoRaw, id), 4);
        assert_eq!(offset_of!(ProgInfoRaw, tag), 8);
        assert_eq!(offset_of!(ProgInfoRaw, jited_prog_len), 16);
        assert_eq!(offset_of!(ProgInfoRaw, xlated_prog_len), 20);
        assert_eq!(offset_of!(ProgInfoRaw, load_time), 40);
        assert_eq!(offset_of!(ProgInfoRaw, created_by_uid), 48);
        assert_eq!(offset_of!(ProgInfoRaw, nr_map_ids), 52);
        assert_eq!(offset_of!(ProgInfoRaw, map_ids), 56);
        assert_eq!(offset_of!(ProgInfoRaw, name), 64);
        assert_eq!(size_of::<ProgInfoRaw>(), 80); // = offsetof(ifindex)
        assert_eq!(offset_of!(LinkInfoRaw, link_type), 0);
        assert_eq!(offset_of!(LinkInfoRaw, id), 4);
        assert_eq!(offset_of!(LinkInfoRaw, prog_id), 8);
        assert_eq!(offset_of!(LinkInfoRaw, cgroup_id), 16);
        assert_eq!(offset_of!(LinkInfoRaw, attach_type), 24);
    }

    /// One field of ours and the C member it stands for.
    struct Field {
        ours: &'static str,
        c_type: &'static str,
        member: &'static str,
        offset: usize,
        size: usize,
    }

    /// Rows for the fields of `$ours`, which mirrors C type `$c` (`field => "c.member"`).
    macro_rules! fields {
        ($c:literal, $ours:ty { $($f:ident => $m:literal),* $(,)? }) => {
            [$(Field {
                ours: concat!(stringify!($ours), ".", stringify!($f)),
                c_type: $c,
                member: $m,
                offset: offset_of!($ours, $f),
                size: memoffset::span_of!($ours, $f).len(),
            }),*]
        };
    }

    /// Every field's offset and size, and where each truncated struct stops, compiled against
    /// the installed UAPI header: nothing here is a number copied by hand.
    #[test]
    fn every_field_matches_the_installed_uapi_header() {
        let attr = "union bpf_attr";
        let mut rows: Vec<Field> = Vec::new();
        rows.extend(fields!("union bpf_attr", MapCreateAttr {
            map_type => "map_type", key_size => "key_size", value_size => "value_size",
            max_entries => "max_entries", map_flags => "map_flags",
            inner_map_fd => "inner_map_fd", numa_node => "numa_node", map_name => "map_name",
        }));
        rows.extend(fields!("union bpf_attr", MapElemAttr {
            map_fd => "map_fd", key => "key", value => "value", flags => "flags",
        }));
        rows.extend(fields!("union bpf_attr", MapBatchAttr {
            in_batch => "batch.in_batch", out_batch => "batch.out_batch", keys => "batch.keys",
            values => "batch.values", count => "batch.count", map_fd => "batch.map_fd",
            elem_flags => "batch.elem_flags", flags => "batch.flags",
        }));
        rows.extend(fields!("union bpf_attr", ProgLoadAttr {
            prog_type => "prog_type", insn_cnt => "insn_cnt", insns => "insns",
            license => "license", log_level => "log_level", log_size => "log_size",
            log_buf => "log_buf", kern_version => "kern_version", prog_flags => "prog_flags",
            prog_name => "prog_name", prog_ifindex => "prog_ifindex",
            expected_attach_type => "expected_attach_type", prog_btf_fd => "prog_btf_fd",
            func_info_rec_size => "func_info_rec_size", func_info => "func_info",
            func_info_cnt => "func_info_cnt", line_info_rec_size => "line_info_rec_size",
            line_info => "line_info", line_info_cnt => "line_info_cnt",
            attach_btf_id => "attach_btf_id", attach_prog_fd => "attach_prog_fd",
            core_relo_cnt => "core_relo_cnt", fd_array => "fd_array",
            core_relos => "core_relos", core_relo_rec_size => "core_relo_rec_size",
            log_true_size => "log_true_size",
        }));
        rows.extend(fields!("union bpf_attr", ObjAttr {
            pathname => "pathname", bpf_fd => "bpf_fd", file_flags => "file_flags",
        }));
        rows.extend(fields!("union bpf_attr", ProgAttachAttr {
            target_fd => "target_fd", attach_bpf_fd => "attach_bpf_fd",
            attach_type => "attach_type", attach_flags => "attach_flags",
            replace_bpf_fd => "replace_bpf_fd",
        }));
        rows.extend(fields!("union bpf_attr", TestRunAttr {
            prog_fd => "test.prog_fd", retval => "test.retval",
            data_size_in => "test.data_size_in", data_size_out => "test.data_size_out",
            data_in => "test.data_in", data_out => "test.data_out", repeat => "test.repeat",
            duration => "test.duration", ctx_size_in => "test.ctx_size_in",
            ctx_size_out => "test.ctx_size_out", ctx_in => "test.ctx_in",
            ctx_out => "test.ctx_out", flags => "test.flags", cpu => "test.cpu",
        }));
        rows.extend(fields!("union bpf_attr", GetFdByIdAttr {
            id => "start_id", next_id => "next_id", open_flags => "open_flags",
        }));
        rows.extend(fields!("union bpf_attr", InfoAttr {
            bpf_fd => "info.bpf_fd", info_len => "info.info_len", info => "info.info",
        }));
        rows.extend(fields!("union bpf_attr", ProgQueryAttr {
            target_fd => "query.target_fd", attach_type => "query.attach_type",
            query_flags => "query.query_flags", attach_flags => "query.attach_flags",
            prog_ids => "query.prog_ids", prog_cnt => "query.prog_cnt",
        }));
        rows.extend(fields!("union bpf_attr", LinkCreateAttr {
            prog_fd => "link_create.prog_fd", target_fd => "link_create.target_fd",
            attach_type => "link_create.attach_type", flags => "link_create.flags",
        }));
        rows.extend(fields!("union bpf_attr", LinkUpdateAttr {
            link_fd => "link_update.link_fd", new_prog_fd => "link_update.new_prog_fd",
            flags => "link_update.flags", old_prog_fd => "link_update.old_prog_fd",
        }));
        rows.extend(fields!("union bpf_attr", LinkDetachAttr {
            link_fd => "link_detach.link_fd",
        }));
        rows.extend(fields!("struct bpf_map_info", MapInfoRaw {
            map_type => "type", id => "id", key_size => "key_size", value_size => "value_size",
            max_entries => "max_entries", map_flags => "map_flags", name => "name",
        }));
        rows.extend(fields!("struct bpf_prog_info", ProgInfoRaw {
            prog_type => "type", id => "id", tag => "tag", jited_prog_len => "jited_prog_len",
            xlated_prog_len => "xlated_prog_len", jited_prog_insns => "jited_prog_insns",
            xlated_prog_insns => "xlated_prog_insns", load_time => "load_time",
            created_by_uid => "created_by_uid", nr_map_ids => "nr_map_ids",
            map_ids => "map_ids", name => "name",
        }));
        rows.extend(fields!("struct bpf_link_info", LinkInfoRaw {
            link_type => "type", id => "id", prog_id => "prog_id",
            cgroup_id => "cgroup.cgroup_id", attach_type => "cgroup.attach_type",
        }));
        // Where each struct that stops early stops: the C expression its size must equal.
        let ends: &[(&str, usize, String)] = &[
            (
                "MapCreateAttr",
                size_of::<MapCreateAttr>(),
                format!("offsetof({attr}, map_ifindex)"),
            ),
            (
                "MapBatchAttr",
                size_of::<MapBatchAttr>(),
                format!("sizeof((({attr} *)0)->batch)"),
            ),
            (
                "TestRunAttr",
                size_of::<TestRunAttr>(),
                format!("offsetof({attr}, test.batch_size)"),
            ),
            (
                "InfoAttr",
                size_of::<InfoAttr>(),
                format!("sizeof((({attr} *)0)->info)"),
            ),
            (
                "ProgQueryAttr",
                size_of::<ProgQueryAttr>(),
                format!("offsetof({attr}, query.prog_attach_flags)"),
            ),
            (
                "LinkCreateAttr",
                size_of::<LinkCreateAttr>(),
                format!("offsetof({attr}, link_create.target_btf_id)"),
            ),
            (
                "LinkUpdateAttr",
                size_of::<LinkUpdateAttr>(),
                format!("sizeof((({attr} *)0)->link_update)"),
            ),
            (
                "LinkDetachAttr",
                size_of::<LinkDetachAttr>(),
                format!("sizeof((({attr} *)0)->link_detach)"),
            ),
            (
                "MapInfoRaw",
                size_of::<MapInfoRaw>(),
                "offsetof(struct bpf_map_info, ifindex)".into(),
            ),
            (
                "ProgInfoRaw",
                size_of::<ProgInfoRaw>(),
                "offsetof(struct bpf_prog_info, ifindex)".into(),
            ),
        ];
        // Fields newer than the installed header are left to the pinned numbers above.
        let header = std::fs::read_to_string(crate::testing::UAPI_BPF_H).unwrap_or_default();
        let newer = |f: &Field| f.member == "log_true_size" && !header.contains("log_true_size");
        let (checked, skipped): (Vec<&Field>, Vec<&Field>) = rows.iter().partition(|f| !newer(f));
        for f in &skipped {
            eprintln!(
                "{}: not in the installed header, checked by its pinned offset only",
                f.ours
            );
        }
        let mut exprs = Vec::new();
        for f in &checked {
            exprs.push(format!("offsetof({}, {})", f.c_type, f.member));
            exprs.push(format!("sizeof((({} *)0)->{})", f.c_type, f.member));
        }
        exprs.extend(ends.iter().map(|(_, _, e)| e.clone()));
        let values = crate::testing::uapi_values(&exprs);
        for (f, kernel) in checked.iter().zip(values.chunks(2)) {
            assert_eq!(
                f.offset as i64, kernel[0],
                "{}: offset of {} in {}",
                f.ours, f.member, f.c_type
            );
            assert_eq!(
                f.size as i64, kernel[1],
                "{}: size of {} in {}",
                f.ours, f.member, f.c_type
            );
        }
        for ((ours, size, expr), kernel) in ends.iter().zip(&values[2 * checked.len()..]) {
            assert_eq!(*size as i64, *kernel, "size of {ours} vs {expr}");
        }
        assert!(
            checked.len() >= rows.len() - 1,
            "at most log_true_size is newer"
        );
    }
}
