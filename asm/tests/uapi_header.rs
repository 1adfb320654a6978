//! Opcode constants and helper ids checked against the installed UAPI headers
//! (`/usr/include/linux/bpf_common.h`, `/usr/include/linux/bpf.h`, Debian linux-libc-dev).
//! Values missing from an older header (ISA v4 additions) are checked against the kernel's
//! instruction-set document in `encodings.rs`.

use mb_asm::helper::{Helper, ALL};
use mb_asm::opcode::*;
use std::collections::HashMap;

const BPF_H_PATH: &str = "/usr/include/linux/bpf.h";
const BPF_COMMON_PATH: &str = "/usr/include/linux/bpf_common.h";

fn headers() -> Option<String> {
    let a = std::fs::read_to_string(BPF_COMMON_PATH).ok()?;
    let b = std::fs::read_to_string(BPF_H_PATH).ok()?;
    Some(a + &b)
}

/// `#define NAME value` lines whose value is a number or `(A | B)` of known names.
fn defines(text: &str) -> HashMap<String, i64> {
    let mut out: HashMap<String, i64> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#define") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let mut value = value.to_string();
        // `(0xe0 | BPF_FETCH)` spans several whitespace-separated parts.
        if value.starts_with('(') {
            value = rest[rest.find('(').unwrap()..]
                .split("/*")
                .next()
                .unwrap()
                .trim()
                .to_string();
        }
        let eval = |tok: &str, known: &HashMap<String, i64>| -> Option<i64> {
            let tok = tok.trim().trim_matches(|c| c == '(' || c == ')').trim();
            if let Some(h) = tok.strip_prefix("0x") {
                i64::from_str_radix(h, 16).ok()
            } else if let Ok(n) = tok.parse() {
                Some(n)
            } else {
                known.get(tok).copied()
            }
        };
        let parsed: Option<i64> = value
            .split('|')
            .map(|t| eval(t, &out))
            .try_fold(0i64, |acc, v| v.map(|v| acc | v));
        if let Some(v) = parsed {
            out.insert(name.to_string(), v);
        }
    }
    out
}

#[test]
fn opcode_constants_match_the_header() {
    let Some(text) = headers() else {
        eprintln!("skipped: {BPF_H_PATH} not installed");
        return;
    };
    let d = defines(&text);
    let ours: &[(&str, i64)] = &[
        ("BPF_LD", BPF_LD.into()),
        ("BPF_LDX", BPF_LDX.into()),
        ("BPF_ST", BPF_ST.into()),
        ("BPF_STX", BPF_STX.into()),
        ("BPF_ALU", BPF_ALU.into()),
        ("BPF_JMP", BPF_JMP.into()),
        ("BPF_JMP32", BPF_JMP32.into()),
        ("BPF_ALU64", BPF_ALU64.into()),
        ("BPF_W", BPF_W.into()),
        ("BPF_H", BPF_H.into()),
        ("BPF_B", BPF_B.into()),
        ("BPF_DW", BPF_DW.into()),
        ("BPF_IMM", BPF_IMM.into()),
        ("BPF_ABS", BPF_ABS.into()),
        ("BPF_IND", BPF_IND.into()),
        ("BPF_MEM", BPF_MEM.into()),
        ("BPF_ATOMIC", BPF_ATOMIC.into()),
        ("BPF_ADD", BPF_ADD.into()),
        ("BPF_SUB", BPF_SUB.into()),
        ("BPF_MUL", BPF_MUL.into()),
        ("BPF_DIV", BPF_DIV.into()),
        ("BPF_OR", BPF_OR.into()),
        ("BPF_AND", BPF_AND.into()),
        ("BPF_LSH", BPF_LSH.into()),
        ("BPF_RSH", BPF_RSH.into()),
        ("BPF_NEG", BPF_NEG.into()),
        ("BPF_MOD", BPF_MOD.into()),
        ("BPF_XOR", BPF_XOR.into()),
        ("BPF_MOV", BPF_MOV.into()),
        ("BPF_ARSH", BPF_ARSH.into()),
        ("BPF_END", BPF_END.into()),
        ("BPF_TO_LE", BPF_TO_LE.into()),
        ("BPF_TO_BE", BPF_TO_BE.into()),
        ("BPF_JA", BPF_JA.into()),
        ("BPF_JEQ", BPF_JEQ.into()),
        ("BPF_JGT", BPF_JGT.into()),
        ("BPF_JGE", BPF_JGE.into()),
        ("BPF_JSET", BPF_JSET.into()),
        ("BPF_JNE", BPF_JNE.into()),
        ("BPF_JSGT", BPF_JSGT.into()),
        ("BPF_JSGE", BPF_JSGE.into()),
        ("BPF_CALL", BPF_CALL.into()),
        ("BPF_EXIT", BPF_EXIT.into()),
        ("BPF_JLT", BPF_JLT.into()),
        ("BPF_JLE", BPF_JLE.into()),
        ("BPF_JSLT", BPF_JSLT.into()),
        ("BPF_JSLE", BPF_JSLE.into()),
        ("BPF_K", BPF_K.into()),
        ("BPF_X", BPF_X.into()),
        ("BPF_FETCH", BPF_FETCH.into()),
        ("BPF_XCHG", BPF_XCHG.into()),
        ("BPF_CMPXCHG", BPF_CMPXCHG.into()),
        ("BPF_PSEUDO_MAP_FD", BPF_PSEUDO_MAP_FD.into()),
        ("BPF_PSEUDO_MAP_VALUE", BPF_PSEUDO_MAP_VALUE.into()),
        ("BPF_PSEUDO_BTF_ID", BPF_PSEUDO_BTF_ID.into()),
        ("BPF_PSEUDO_FUNC", BPF_PSEUDO_FUNC.into()),
        ("BPF_PSEUDO_MAP_IDX", BPF_PSEUDO_MAP_IDX.into()),
        ("BPF_PSEUDO_MAP_IDX_VALUE", BPF_PSEUDO_MAP_IDX_VALUE.into()),
        ("BPF_PSEUDO_CALL", BPF_PSEUDO_CALL.into()),
        ("BPF_PSEUDO_KFUNC_CALL", BPF_PSEUDO_KFUNC_CALL.into()),
    ];
    let mut wrong = Vec::new();
    for (name, value) in ours {
        match d.get(*name) {
            Some(v) if v == value => {}
            Some(v) => wrong.push(format!("{name}: header {v:#x}, ours {value:#x}")),
            None => wrong.push(format!("{name}: not found in the header")),
        }
    }
    // Newer constants, checked only when this header has them.
    for (name, value) in [
        ("BPF_MEMSX", i64::from(BPF_MEMSX)),
        ("BPF_JCOND", i64::from(BPF_JCOND)),
        ("BPF_LOAD_ACQ", i64::from(BPF_LOAD_ACQ)),
        ("BPF_STORE_REL", i64::from(BPF_STORE_REL)),
    ] {
        if let Some(v) = d.get(name) {
            if *v != value {
                wrong.push(format!("{name}: header {v:#x}, ours {value:#x}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The helper names in `__BPF_FUNC_MAPPER` order (index = id), handling both the old
/// `FN(name)` and the newer `FN(name, id, ##ctx)` forms.
fn header_helpers(text: &str) -> Vec<(String, u32)> {
    let start = text
        .find("#define ___BPF_FUNC_MAPPER")
        .or_else(|| text.find("#define __BPF_FUNC_MAPPER"))
        .expect("helper list in bpf.h");
    let mut out = Vec::new();
    for line in text[start..].lines().skip(1) {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("FN(") else {
            if line.starts_with("/*") || line.is_empty() {
                break;
            }
            continue;
        };
        let args: Vec<&str> = rest
            .split(')')
            .next()
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        let id = match args.get(1) {
            Some(id) => id.parse().expect("helper id is a number"),
            None => out.len() as u32,
        };
        out.push((args[0].to_string(), id));
    }
    out
}

#[test]
fn every_helper_matches_the_header() {
    let Some(text) = headers() else {
        eprintln!("skipped: {BPF_H_PATH} not installed");
        return;
    };
    let helpers = header_helpers(&text);
    assert!(helpers.len() > 200, "parsed only {} helpers", helpers.len());
    assert_eq!(helpers[0].0, "unspec");
    let mut wrong = Vec::new();
    for (name, id) in helpers.iter().skip(1) {
        match Helper::from_id(*id) {
            Some(h) if h.name() == name => {}
            Some(h) => wrong.push(format!("id {id}: header `{name}`, ours `{}`", h.name())),
            None => wrong.push(format!("id {id} (`{name}`) missing from Helper")),
        }
        if Helper::from_name(name).map(Helper::id) != Some(*id) {
            wrong.push(format!("`{name}` does not map back to id {id}"));
        }
    }
    // Every variant we have is in the header, or newer than this header.
    let max_header_id = helpers.iter().map(|h| h.1).max().unwrap();
    for h in ALL {
        if h.id() <= max_header_id && !helpers.iter().any(|(n, id)| n == h.name() && *id == h.id())
        {
            wrong.push(format!("Helper::{h:?} ({}) not in the header", h.id()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn helpers_the_data_path_uses_have_their_kernel_ids() {
    // Ids from bpf-anchors.md §10 and the issue text (cross-checked with the header above).
    let expected = [
        (Helper::MapLookupElem, 1),
        (Helper::MapUpdateElem, 2),
        (Helper::MapDeleteElem, 3),
        (Helper::KtimeGetNs, 5),
        (Helper::TracePrintk, 6),
        (Helper::GetPrandomU32, 7),
        (Helper::GetSmpProcessorId, 8),
        (Helper::GetCurrentPidTgid, 14),
        (Helper::GetCurrentUidGid, 15),
        (Helper::GetCurrentComm, 16),
        (Helper::GetCgroupClassid, 17),
        (Helper::GetSocketCookie, 46),
        (Helper::GetSocketUid, 47),
        (Helper::Setsockopt, 49),
        (Helper::SockMapUpdate, 53),
        (Helper::Getsockopt, 57),
        (Helper::SockOpsCbFlagsSet, 59),
        (Helper::MsgRedirectMap, 60),
        (Helper::MsgApplyBytes, 61),
        (Helper::MsgCorkBytes, 62),
        (Helper::MsgPullData, 63),
        (Helper::Bind, 64),
        (Helper::SockHashUpdate, 70),
        (Helper::MsgRedirectHash, 71),
        (Helper::GetCurrentCgroupId, 80),
        (Helper::SkLookupTcp, 84),
        (Helper::SkLookupUdp, 85),
        (Helper::SkRelease, 86),
        (Helper::MapPushElem, 87),
        (Helper::SkFullsock, 95),
        (Helper::TcpSock, 96),
        (Helper::GetNetnsCookie, 122),
        (Helper::GetCurrentAncestorCgroupId, 123),
        (Helper::KtimeGetCoarseNs, 160),
    ];
    for (helper, id) in expected {
        assert_eq!(helper.id(), id, "{helper:?}");
        assert_eq!(Helper::from_id(id), Some(helper));
    }
    assert_eq!(Helper::MapLookupElem.name(), "map_lookup_elem");
    assert_eq!(
        Helper::from_name("bpf_get_socket_cookie"),
        Some(Helper::GetSocketCookie)
    );
    assert_eq!(Helper::from_id(0), None);
    assert_eq!(Helper::from_id(100_000), None);
    assert_eq!(Helper::from_name("no_such_helper"), None);
}
