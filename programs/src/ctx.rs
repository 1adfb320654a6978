//! Offsets of the context fields the programs read and write, from `include/uapi/linux/bpf.h`.
//! The kernel rewrites these accesses itself, so they are stable UAPI across kernels; a test
//! compiles `offsetof()` of every one against the installed header and compares.

/// Where a context holds one address: its IPv4 field (one word, network order) and its IPv6
/// field (four words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpField {
    pub v4: i16,
    pub v6: i16,
}

impl IpField {
    pub const fn new(v4: i16, v6: i16) -> IpField {
        IpField { v4, v6 }
    }
}

/// `struct bpf_sock_addr` (cgroup connect/bind/sendmsg/recvmsg hooks).
pub mod sock_addr {
    pub const USER_FAMILY: i16 = 0;
    pub const USER_IP4: i16 = 4;
    pub const USER_IP6: i16 = 8;
    pub const USER_PORT: i16 = 24;
    pub const FAMILY: i16 = 28;
    pub const TYPE: i16 = 32;
    pub const PROTOCOL: i16 = 36;
    pub const MSG_SRC_IP4: i16 = 40;
    pub const MSG_SRC_IP6: i16 = 44;
}

/// `struct bpf_sock_ops`.
pub mod sock_ops {
    pub const OP: i16 = 0;
    /// `args[0]`; `args[1]` follows (STATE_CB: old state, new state).
    pub const ARGS: i16 = 4;
    pub const FAMILY: i16 = 20;
    pub const REMOTE_IP4: i16 = 24;
    pub const LOCAL_IP4: i16 = 28;
    pub const REMOTE_IP6: i16 = 32;
    pub const LOCAL_IP6: i16 = 48;
    pub const REMOTE_IP: super::IpField = super::IpField::new(REMOTE_IP4, REMOTE_IP6);
    pub const LOCAL_IP: super::IpField = super::IpField::new(LOCAL_IP4, LOCAL_IP6);
    /// Network order in the upper 16 bits of a 4-byte load on little-endian.
    pub const REMOTE_PORT: i16 = 64;
    /// Host order.
    pub const LOCAL_PORT: i16 = 68;
}

/// `struct sk_msg_md`.
pub mod sk_msg {
    pub const FAMILY: i16 = 16;
    pub const REMOTE_IP4: i16 = 20;
    pub const LOCAL_IP4: i16 = 24;
    pub const REMOTE_IP6: i16 = 28;
    pub const LOCAL_IP6: i16 = 44;
    pub const REMOTE_IP: super::IpField = super::IpField::new(REMOTE_IP4, REMOTE_IP6);
    pub const LOCAL_IP: super::IpField = super::IpField::new(LOCAL_IP4, LOCAL_IP6);
    /// Network order in the upper 16 bits of a 4-byte load on little-endian.
    pub const REMOTE_PORT: i16 = 60;
    /// Host order.
    pub const LOCAL_PORT: i16 = 64;
    pub const SIZE: i16 = 68;
}

/// `struct bpf_sockopt` (cgroup getsockopt).
pub mod sockopt {
    pub const SK: i16 = 0;
    pub const OPTVAL: i16 = 8;
    pub const OPTVAL_END: i16 = 16;
    pub const LEVEL: i16 = 24;
    pub const OPTNAME: i16 = 28;
    pub const OPTLEN: i16 = 32;
    pub const RETVAL: i16 = 36;
}

/// `struct bpf_sock` (behind `bpf_sockopt.sk`).
pub mod sock {
    pub const FAMILY: i16 = 4;
    pub const PROTOCOL: i16 = 12;
    pub const SRC_IP4: i16 = 24;
    pub const SRC_IP6: i16 = 28;
    /// Host order.
    pub const SRC_PORT: i16 = 44;
    /// Network order, 2 bytes.
    pub const DST_PORT: i16 = 48;
    pub const DST_IP4: i16 = 52;
    pub const DST_IP6: i16 = 56;
    pub const SRC_IP: super::IpField = super::IpField::new(SRC_IP4, SRC_IP6);
    pub const DST_IP: super::IpField = super::IpField::new(DST_IP4, DST_IP6);
}

/// `struct bpf_sk_lookup` (sk_lookup programs). `ingress_ifindex` (5.17+) is deliberately
/// absent: 5.10's verifier refuses it, and in-pod callers are told apart by address anyway.
pub mod sk_lookup {
    pub const FAMILY: i16 = 8;
    pub const PROTOCOL: i16 = 12;
    pub const REMOTE_IP4: i16 = 16;
    pub const REMOTE_IP6: i16 = 20;
    pub const LOCAL_IP4: i16 = 40;
    pub const LOCAL_IP6: i16 = 44;
    pub const REMOTE_IP: super::IpField = super::IpField::new(REMOTE_IP4, REMOTE_IP6);
    pub const LOCAL_IP: super::IpField = super::IpField::new(LOCAL_IP4, LOCAL_IP6);
    /// Host order.
    pub const LOCAL_PORT: i16 = 60;
}

/// Constants of the kernel and libc ABI the programs compare against.
pub mod abi {
    pub const AF_INET: i32 = 2;
    pub const AF_INET6: i32 = 10;
    pub const IPPROTO_TCP: i32 = 6;
    pub const IPPROTO_UDP: i32 = 17;
    pub const SOL_IP: i32 = 0;
    pub const SOL_IPV6: i32 = 41;
    /// `SO_ORIGINAL_DST` (SOL_IP) and `IP6T_SO_ORIGINAL_DST` (SOL_IPV6) are both 80.
    pub const SO_ORIGINAL_DST: i32 = 80;
    pub const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: i32 = 4;
    pub const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: i32 = 5;
    pub const BPF_SOCK_OPS_STATE_CB: i32 = 10;
    pub const BPF_SOCK_OPS_TCP_LISTEN_CB: i32 = 11;
    pub const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;
    pub const BPF_TCP_CLOSE: i32 = 7;
    pub const BPF_ANY: i32 = 0;
    pub const BPF_NOEXIST: i32 = 1;
    pub const BPF_F_INGRESS: i32 = 1;
    pub const SK_PASS: i32 = 1;
    pub const SK_DROP: i32 = 0;
    pub const SOCKADDR_IN_SIZE: i32 = 16;
    pub const SOCKADDR_IN6_SIZE: i32 = 28;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Compiles a C program printing `offsetof()` of each field against the installed UAPI
    /// header and compares. The C compiler is a test-time tool only; nothing ships from it.
    #[test]
    fn offsets_match_the_installed_uapi_header() {
        if !Path::new("/usr/include/linux/bpf.h").exists() {
            panic!("/usr/include/linux/bpf.h is missing: install Debian's linux-libc-dev");
        }
        let fields: &[(&str, &str, i16)] = &[
            ("bpf_sock_addr", "user_family", sock_addr::USER_FAMILY),
            ("bpf_sock_addr", "user_ip4", sock_addr::USER_IP4),
            ("bpf_sock_addr", "user_ip6", sock_addr::USER_IP6),
            ("bpf_sock_addr", "user_port", sock_addr::USER_PORT),
            ("bpf_sock_addr", "family", sock_addr::FAMILY),
            ("bpf_sock_addr", "type", sock_addr::TYPE),
            ("bpf_sock_addr", "protocol", sock_addr::PROTOCOL),
            ("bpf_sock_addr", "msg_src_ip4", sock_addr::MSG_SRC_IP4),
            ("bpf_sock_addr", "msg_src_ip6", sock_addr::MSG_SRC_IP6),
            ("bpf_sock_ops", "op", sock_ops::OP),
            ("bpf_sock_ops", "args", sock_ops::ARGS),
            ("bpf_sock_ops", "family", sock_ops::FAMILY),
            ("bpf_sock_ops", "remote_ip4", sock_ops::REMOTE_IP4),
            ("bpf_sock_ops", "local_ip4", sock_ops::LOCAL_IP4),
            ("bpf_sock_ops", "remote_ip6", sock_ops::REMOTE_IP6),
            ("bpf_sock_ops", "local_ip6", sock_ops::LOCAL_IP6),
            ("bpf_sock_ops", "remote_port", sock_ops::REMOTE_PORT),
            ("bpf_sock_ops", "local_port", sock_ops::LOCAL_PORT),
            ("sk_msg_md", "family", sk_msg::FAMILY),
            ("sk_msg_md", "remote_ip4", sk_msg::REMOTE_IP4),
            ("sk_msg_md", "local_ip4", sk_msg::LOCAL_IP4),
            ("sk_msg_md", "remote_ip6", sk_msg::REMOTE_IP6),
            ("sk_msg_md", "local_ip6", sk_msg::LOCAL_IP6),
            ("sk_msg_md", "remote_port", sk_msg::REMOTE_PORT),
            ("sk_msg_md", "local_port", sk_msg::LOCAL_PORT),
            ("sk_msg_md", "size", sk_msg::SIZE),
            ("bpf_sockopt", "sk", sockopt::SK),
            ("bpf_sockopt", "optval", sockopt::OPTVAL),
            ("bpf_sockopt", "optval_end", sockopt::OPTVAL_END),
            ("bpf_sockopt", "level", sockopt::LEVEL),
            ("bpf_sockopt", "optname", sockopt::OPTNAME),
            ("bpf_sockopt", "optlen", sockopt::OPTLEN),
            ("bpf_sockopt", "retval", sockopt::RETVAL),
            ("bpf_sk_lookup", "family", sk_lookup::FAMILY),
            ("bpf_sk_lookup", "protocol", sk_lookup::PROTOCOL),
            ("bpf_sk_lookup", "remote_ip4", sk_lookup::REMOTE_IP4),
            ("bpf_sk_lookup", "remote_ip6", sk_lookup::REMOTE_IP6),
            ("bpf_sk_lookup", "local_ip4", sk_lookup::LOCAL_IP4),
            ("bpf_sk_lookup", "local_ip6", sk_lookup::LOCAL_IP6),
            ("bpf_sk_lookup", "local_port", sk_lookup::LOCAL_PORT),
            ("bpf_sock", "family", sock::FAMILY),
            ("bpf_sock", "protocol", sock::PROTOCOL),
            ("bpf_sock", "src_ip4", sock::SRC_IP4),
            ("bpf_sock", "src_ip6", sock::SRC_IP6),
            ("bpf_sock", "src_port", sock::SRC_PORT),
            ("bpf_sock", "dst_port", sock::DST_PORT),
            ("bpf_sock", "dst_ip4", sock::DST_IP4),
            ("bpf_sock", "dst_ip6", sock::DST_IP6),
        ];
        let consts: &[(&str, i32)] = &[
            (
                "BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB",
                abi::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
            ),
            (
                "BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB",
                abi::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
            ),
            ("BPF_SOCK_OPS_STATE_CB", abi::BPF_SOCK_OPS_STATE_CB),
            (
                "BPF_SOCK_OPS_STATE_CB_FLAG",
                abi::BPF_SOCK_OPS_STATE_CB_FLAG,
            ),
            (
                "BPF_SOCK_OPS_TCP_LISTEN_CB",
                abi::BPF_SOCK_OPS_TCP_LISTEN_CB,
            ),
            ("BPF_TCP_CLOSE", abi::BPF_TCP_CLOSE),
            ("BPF_ANY", abi::BPF_ANY),
            ("BPF_NOEXIST", abi::BPF_NOEXIST),
            ("BPF_F_INGRESS", abi::BPF_F_INGRESS),
            ("SK_PASS", abi::SK_PASS),
            ("SK_DROP", abi::SK_DROP),
            ("BPF_PROG_TYPE_SK_LOOKUP", 30),
            ("BPF_SK_LOOKUP", 36),
        ];
        let mut c = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\nint main(void){\n",
        );
        for (s, f, _) in fields {
            c += &format!("printf(\"%zu\\n\", offsetof(struct {s}, {f}));\n");
        }
        for (name, _) in consts {
            c += &format!("printf(\"%d\\n\", (int){name});\n");
        }
        c += "return 0;}\n";
        let dir = std::env::temp_dir().join(format!("mb-ctx-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        let bin = dir.join("layout");
        std::fs::write(&src, c).unwrap();
        let status = Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .status()
            .expect("the layout test needs a C compiler (cc) to read the UAPI header");
        assert!(status.success(), "compiling the layout probe failed");
        let out = Command::new(&bin).output().unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let values: Vec<i64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(values.len(), fields.len() + consts.len());
        for ((s, f, ours), kernel) in fields.iter().zip(&values) {
            assert_eq!(*ours as i64, *kernel, "offsetof(struct {s}, {f})");
        }
        for ((name, ours), kernel) in consts.iter().zip(&values[fields.len()..]) {
            assert_eq!(*ours as i64, *kernel, "{name}");
        }
    }
}
