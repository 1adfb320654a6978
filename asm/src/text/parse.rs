//! Parser for LLVM's BPF assembly syntax (what `llvm-mc -triple bpfel` accepts), plus the
//! extensions our printer needs (see the `text` module docs).

use crate::check;
use crate::op::{AluOp, AtomicOp, CallTarget, Endian, JmpOp, Op, Size, Source};
use crate::opcode::*;
use crate::program::{Program, RelocKind, Relocation};
use crate::Reg;
use std::collections::HashMap;
use std::fmt;

/// A problem at a 1-based source line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Result of [`parse_lenient`]: the program, the source line of every slot, and the
/// structural problems that `--strict` would reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub program: Program,
    /// `slot_lines[i]` is the 1-based source line of slot `i` (both slots of a 64-bit load).
    pub slot_lines: Vec<usize>,
    pub warnings: Vec<ParseError>,
}

/// Parse a whole program strictly: structural problems (jump outside the program, into a
/// 64-bit load, write to r10, fall-through at the end, empty program) are errors.
pub fn parse(text: &str) -> Result<Program, ParseError> {
    let parsed = parse_lenient(text)?;
    match parsed.warnings.into_iter().next() {
        Some(w) => Err(w),
        None => Ok(parsed.program),
    }
}

/// Parse leniently: any instruction sequence `llvm-mc` accepts assembles; structural
/// problems come back as warnings.
pub fn parse_lenient(text: &str) -> Result<Parsed, ParseError> {
    let mut asm = TextAsm::default();
    for (index, raw_line) in text.lines().enumerate() {
        asm.line(index + 1, raw_line)?;
    }
    asm.finish()
}

/// Parse the kernel's syntax: a verifier log, `bpftool prog dump xlated` or
/// [`fmt_kernel`](super::fmt_kernel) output (`0: (61) r1 = *(u32 *)(r2 +8)`,
/// `if r1 > 0x40 goto pc+3`, `call bpf_map_lookup_elem#1`, `r2 = atomic64_fetch_add(...)`).
/// Only lines with an `(code)` byte are instructions; everything else (verifier messages,
/// register states, the state comment after `;`) is skipped. When every line has an index,
/// lines are put in index order and repeats (the verifier walks some instructions more than
/// once) are dropped; instructions the verifier never walked are missing from its log. The `(code)` byte, when present, must
/// match what the text assembles to. What the kernel text cannot carry is lost: pseudo
/// sources of 64-bit loads (maps print as plain numbers) and kfunc BTF object offsets.
pub fn parse_kernel(text: &str) -> Result<Parsed, ParseError> {
    // A verifier log lists instructions in the order it walked them, some more than once:
    // keep the first copy of each index, in index order.
    let mut lines: Vec<(Option<usize>, usize, u8, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        if let Some((insn_index, code, translated)) = kernel_line(raw) {
            lines.push((insn_index, index + 1, code, translated));
        }
    }
    if lines.iter().all(|l| l.0.is_some()) {
        lines.sort_by_key(|l| l.0);
        lines.dedup_by_key(|l| l.0);
    }
    let mut asm = TextAsm::default();
    for (_, line, code, translated) in lines {
        let before = asm.insns.len();
        asm.line(line, &translated)?;
        if let Some(insn) = asm.insns.get(before) {
            if insn.code != code {
                return Err(ParseError {
                    line,
                    message: format!(
                        "the line says opcode ({code:02x}) but its text assembles to ({:02x})",
                        insn.code
                    ),
                });
            }
        }
    }
    asm.finish()
}

/// The instruction index (if given), the opcode byte and the line rewritten in LLVM
/// syntax; `None` for lines that carry no instruction.
fn kernel_line(raw: &str) -> Option<(Option<usize>, u8, String)> {
    let mut rest = raw.trim_start();
    // `12: ` instruction index (verifier log, bpftool).
    let mut insn_index = None;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && rest[digits..].starts_with(':') {
        insn_index = rest[..digits].parse().ok();
        rest = rest[digits + 1..].trim_start();
    }
    // `(61) ` opcode byte. Only such lines are instructions; the rest is verifier chatter or
    // register state (`func#0 @0`, `0: R1=ctx() R10=fp0`, `processed 5 insns ...`).
    if rest.len() < 4 || !rest.starts_with('(') || rest.as_bytes()[3] != b')' {
        return None;
    }
    let code = u8::from_str_radix(rest.get(1..3)?, 16).ok()?;
    rest = rest[4..].trim_start();
    // Drop the register-state comment before rewriting (it may contain `#`).
    let body = rest.split(';').next().unwrap_or("").trim_end();
    let mut text = if let Some(call) = body.strip_prefix("call ") {
        match call.split_once('#') {
            Some(("kernel-function", id)) => format!("call kfunc({id})"),
            Some((_, id)) => format!("call {id}"),
            None => body.to_string(),
        }
    } else {
        body.replace("goto pc", "goto ")
            .replace("gotol pc", "gotol ")
    };
    if code == BPF_LD | BPF_DW | BPF_IMM {
        text.push_str(" ll");
    }
    Some((insn_index, code, text))
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(u64),
    Punct(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Num(n) => write!(f, "`{n}`"),
            Tok::Punct(p) => write!(f, "`{p}`"),
        }
    }
}

const PUNCTS: &[&str] = &[
    "s>>=", "<<=", ">>=", "s/=", "s%=", "s>=", "s<=", "+=", "-=", "*=", "/=", "%=", "|=", "&=",
    "^=", "==", "!=", ">=", "<=", "s>", "s<", ">", "<", "=", "&", "(", ")", "*", "+", "-", ",",
    "[", "]", ":",
];

fn strip_comment(line: &str) -> &str {
    let mut end = line.len();
    for pat in ["//", "#", ";"] {
        if let Some(i) = line.find(pat) {
            end = end.min(i);
        }
    }
    &line[..end]
}

fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let bytes = line.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // `s>`, `s>=`, `s<`, `s<=`, `s>>=`, `s/=`, `s%=` start with a letter.
        if c == b's' {
            if let Some(p) = PUNCTS
                .iter()
                .find(|p| p.starts_with('s') && line[i..].starts_with(**p))
            {
                let next_is_ident = line[i + 1..]
                    .chars()
                    .next()
                    .is_some_and(|n| n.is_ascii_alphanumeric() || n == '_');
                if !next_is_ident {
                    toks.push(Tok::Punct(p));
                    i += p.len();
                    continue;
                }
            }
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b'.' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
            {
                i += 1;
            }
            toks.push(Tok::Ident(line[start..i].to_string()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let text = &line[start..i];
            let value = if let Some(hex) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
                u64::from_str_radix(hex, 16)
            } else {
                text.parse::<u64>()
            };
            let value = value.map_err(|_| {
                format!("`{text}` is not a number (decimal or 0x hex, at most 64 bits)")
            })?;
            toks.push(Tok::Num(value));
            continue;
        }
        match PUNCTS
            .iter()
            .find(|p| !p.starts_with('s') && line[i..].starts_with(**p))
        {
            Some(p) => {
                toks.push(Tok::Punct(p));
                i += p.len();
            }
            None => {
                let ch = line[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character `{ch}`"));
            }
        }
    }
    Ok(toks)
}

fn parse_reg(name: &str) -> Option<(Reg, bool)> {
    let (wide, digits) = if let Some(d) = name.strip_prefix('r') {
        (true, d)
    } else {
        (false, name.strip_prefix('w')?)
    };
    if digits.is_empty() || digits.len() > 2 || (digits.len() == 2 && digits.starts_with('0')) {
        return None;
    }
    let n: u8 = digits.parse().ok()?;
    Reg::new(n).map(|r| (r, wide))
}

/// `r11`, `w99`: shaped like a register but not one.
fn looks_like_register(name: &str) -> bool {
    let digits = name.strip_prefix('r').or_else(|| name.strip_prefix('w'));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_reserved(name: &str) -> bool {
    looks_like_register(name)
        || matches!(
            name,
            "ll" | "goto"
                | "gotol"
                | "may_goto"
                | "if"
                | "call"
                | "callx"
                | "exit"
                | "lock"
                | "skb"
                | "pc"
        )
}

#[derive(Copy, Clone, Debug, PartialEq)]
enum Field {
    Off,
    Imm,
}

/// Where a jump goes: a numeric offset or a label.
enum Target {
    Offset(i64),
    Label(String),
}

struct Stmt {
    op: Op,
    reloc: Option<RelocKind>,
    target: Option<(Target, Field)>,
}

impl Stmt {
    fn op(op: Op) -> Stmt {
        Stmt {
            op,
            reloc: None,
            target: None,
        }
    }
}

/// An immediate operand: a number or a constant name.
enum Imm {
    Num(i32),
    Const(String),
}

struct Cursor {
    toks: Vec<Tok>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn found(&self) -> String {
        match self.peek() {
            Some(t) => format!("found {t}"),
            None => "found the end of the line".into(),
        }
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }
    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, p: &str) -> Result<(), String> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(format!("expected `{p}`, {}", self.found()))
        }
    }
    fn is_ident(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == name)
    }
    fn eat_ident(&mut self, name: &str) -> bool {
        if self.is_ident(name) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_ident(&mut self, name: &str) -> Result<(), String> {
        if self.eat_ident(name) {
            Ok(())
        } else {
            Err(format!("expected `{name}`, {}", self.found()))
        }
    }
    fn end(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {t} after the instruction")),
        }
    }
    fn peek_reg(&self) -> Option<(Reg, bool)> {
        match self.peek() {
            Some(Tok::Ident(s)) => parse_reg(s),
            _ => None,
        }
    }
    fn reg(&mut self) -> Result<(Reg, bool), String> {
        match self.peek_reg() {
            Some(r) => {
                self.pos += 1;
                Ok(r)
            }
            None => Err(format!(
                "expected a register r0-r10 or w0-w10, {}",
                self.found()
            )),
        }
    }
    /// A register of the given width.
    fn reg_of(&mut self, wide: bool) -> Result<Reg, String> {
        let (r, w) = self.reg()?;
        if w != wide {
            return Err(format!(
                "register {}{} mixes 32-bit (w) and 64-bit (r) registers in one instruction",
                if w { 'r' } else { 'w' },
                r.index()
            ));
        }
        Ok(r)
    }
    /// An optionally signed integer.
    fn int(&mut self) -> Result<i128, String> {
        let negative = if self.eat_punct("-") {
            true
        } else {
            self.eat_punct("+");
            false
        };
        match self.next() {
            Some(Tok::Num(n)) => Ok(if negative {
                -i128::from(n)
            } else {
                i128::from(n)
            }),
            other => {
                self.pos -= 1;
                let _ = other;
                Err(format!("expected a number, {}", self.found()))
            }
        }
    }
    fn is_int(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) => true,
            Some(Tok::Punct("-" | "+")) => matches!(self.peek_at(1), Some(Tok::Num(_))),
            _ => false,
        }
    }
    /// A 32-bit immediate: `-2^31 ..= 2^32-1` (as LLVM accepts), or a constant name.
    fn imm32(&mut self) -> Result<Imm, String> {
        if self.is_ident("const") && self.peek_at(1) == Some(&Tok::Punct("(")) {
            self.pos += 2;
            let name = self.symbol()?;
            self.expect_punct(")")?;
            return Ok(Imm::Const(name));
        }
        if let Some(Tok::Ident(name)) = self.peek() {
            if looks_like_register(name) && parse_reg(name).is_none() {
                return Err(format!("`{name}` is not a register: use r0-r10 or w0-w10"));
            }
            if !is_reserved(name) {
                let name = name.clone();
                self.pos += 1;
                return Ok(Imm::Const(name));
            }
        }
        let v = self.int()?;
        fit_imm32(v).map(Imm::Num)
    }
    fn symbol(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Ident(name)) if !is_reserved(name) => {
                let name = name.clone();
                self.pos += 1;
                Ok(name)
            }
            _ => Err(format!("expected a name, {}", self.found())),
        }
    }
    /// `(TY *)` after the `*` or inside atomics; returns (size, signed).
    fn type_cast(&mut self) -> Result<(Size, bool), String> {
        self.expect_punct("(")?;
        let ty = match self.next() {
            Some(Tok::Ident(t)) => t,
            _ => {
                self.pos -= 1;
                return Err(format!("expected a type u8/u16/u32/u64, {}", self.found()));
            }
        };
        let r = match ty.as_str() {
            "u8" => (Size::B, false),
            "u16" => (Size::H, false),
            "u32" => (Size::W, false),
            "u64" => (Size::DW, false),
            "s8" => (Size::B, true),
            "s16" => (Size::H, true),
            "s32" => (Size::W, true),
            other => return Err(format!("`{other}` is not a type: use u8, u16, u32, u64 (or s8, s16, s32 for sign-extending loads)")),
        };
        self.expect_punct("*")?;
        self.expect_punct(")")?;
        Ok(r)
    }
    /// `REG + N`, `REG - N` (no parentheses).
    fn mem_inner(&mut self) -> Result<(Reg, i16), String> {
        let (base, wide) = self.reg()?;
        if !wide {
            return Err("memory addresses use 64-bit registers (r0-r10)".into());
        }
        let off = if self.is_punct("+") || self.is_punct("-") {
            let negative = self.next() == Some(Tok::Punct("-"));
            let v = self.int()?;
            if negative {
                -v
            } else {
                v
            }
        } else {
            0
        };
        let off = i16::try_from(off)
            .map_err(|_| format!("offset {off} does not fit in a signed 16-bit field"))?;
        Ok((base, off))
    }
    /// `(REG + N)`.
    fn mem(&mut self) -> Result<(Reg, i16), String> {
        self.expect_punct("(")?;
        let m = self.mem_inner()?;
        self.expect_punct(")")?;
        Ok(m)
    }
    /// A jump target: `+N`, `-N`, `N` or a label name.
    fn target(&mut self) -> Result<Target, String> {
        if self.is_int() {
            return Ok(Target::Offset(self.int()? as i64));
        }
        match self.peek() {
            Some(Tok::Ident(name)) if !is_reserved(name) => {
                let name = name.clone();
                self.pos += 1;
                Ok(Target::Label(name))
            }
            _ => Err(format!(
                "expected a jump target (+N, -N or a label), {}",
                self.found()
            )),
        }
    }
}

fn fit_imm32(v: i128) -> Result<i32, String> {
    if (i128::from(i32::MIN)..=i128::from(u32::MAX)).contains(&v) {
        Ok(v as u32 as i32)
    } else {
        Err(format!(
            "immediate {v} does not fit in 32 bits (-2147483648 ..= 4294967295)"
        ))
    }
}

fn alu_op(p: &str) -> Option<AluOp> {
    AluOp::ALL
        .into_iter()
        .find(|a| a.symbol() == p && *a != AluOp::Mov)
}

fn jmp_op(p: &str) -> Option<JmpOp> {
    JmpOp::ALL.into_iter().find(|j| j.symbol() == p)
}

fn endian_op(name: &str) -> Option<(Endian, u8)> {
    let (kind, bits) = if let Some(b) = name.strip_prefix("bswap") {
        (Endian::Swap, b)
    } else if let Some(b) = name.strip_prefix("be") {
        (Endian::ToBe, b)
    } else {
        (Endian::ToLe, name.strip_prefix("le")?)
    };
    match bits {
        "16" => Some((kind, 16)),
        "32" => Some((kind, 32)),
        "64" => Some((kind, 64)),
        _ => None,
    }
}

fn pseudo_from_name(name: &str) -> Option<u8> {
    (1..=BPF_PSEUDO_MAP_IDX_VALUE).find(|p| super::print::pseudo_name(*p) == Some(name))
}

fn with_imm(op: impl FnOnce(i32) -> Op, imm: Imm) -> Stmt {
    match imm {
        Imm::Num(n) => Stmt::op(op(n)),
        Imm::Const(name) => Stmt {
            op: op(0),
            reloc: Some(RelocKind::Const(name)),
            target: None,
        },
    }
}

fn statement(c: &mut Cursor) -> Result<Stmt, String> {
    let Some(first) = c.peek().cloned() else {
        return Err("empty statement".into());
    };
    let stmt = match first {
        Tok::Ident(ref w) if w == "exit" => {
            c.next();
            Stmt::op(Op::Exit)
        }
        Tok::Ident(ref w) if w == "callx" => {
            c.next();
            let (reg, wide) = c.reg()?;
            if !wide {
                return Err("callx takes a 64-bit register".into());
            }
            Stmt::op(Op::Callx { reg })
        }
        Tok::Ident(ref w) if w == "call" => {
            c.next();
            call(c)?
        }
        Tok::Ident(ref w) if w == "goto" || w == "gotol" || w == "may_goto" => {
            c.next();
            let target = c.target()?;
            let (op, field) = match w.as_str() {
                "goto" => (Op::Ja { off: 0 }, Field::Off),
                "gotol" => (Op::Gotol { imm: 0 }, Field::Imm),
                _ => (Op::MayGoto { off: 0 }, Field::Off),
            };
            Stmt {
                op,
                reloc: None,
                target: Some((target, field)),
            }
        }
        Tok::Ident(ref w) if w == "if" => {
            c.next();
            let (dst, wide) = c.reg()?;
            let op = match c.next() {
                Some(Tok::Punct(p)) => jmp_op(p),
                _ => None,
            }
            .ok_or_else(|| {
                c.pos -= 1;
                format!(
                    "expected a comparison (==, !=, >, >=, <, <=, s>, s>=, s<, s<=, &), {}",
                    c.found()
                )
            })?;
            let make = |src| Op::Jmp {
                jmp32: !wide,
                op,
                dst,
                src,
                off: 0,
            };
            let mut stmt = if c.peek_reg().is_some() {
                Stmt::op(make(Source::Reg(c.reg_of(wide)?)))
            } else {
                with_imm(|n| make(Source::Imm(n)), c.imm32()?)
            };
            c.expect_ident("goto")?;
            stmt.target = Some((c.target()?, Field::Off));
            stmt
        }
        Tok::Ident(ref w) if w == "lock" => {
            c.next();
            c.expect_punct("*")?;
            let (size, signed) = c.type_cast()?;
            if signed || !matches!(size, Size::W | Size::DW) {
                return Err("atomic operations work on u32 or u64".into());
            }
            let (dst, off) = c.mem()?;
            let op = match c.next() {
                Some(Tok::Punct("+=")) => AtomicOp::Add,
                Some(Tok::Punct("|=")) => AtomicOp::Or,
                Some(Tok::Punct("&=")) => AtomicOp::And,
                Some(Tok::Punct("^=")) => AtomicOp::Xor,
                _ => {
                    c.pos -= 1;
                    return Err(format!("expected +=, |=, &= or ^=, {}", c.found()));
                }
            };
            let (src, wide) = c.reg()?;
            if !wide && size == Size::DW {
                return Err("a 64-bit atomic takes a 64-bit register".into());
            }
            Stmt::op(Op::Atomic {
                size,
                op,
                dst,
                src,
                off,
            })
        }
        Tok::Punct("*") => {
            c.next();
            let (size, signed) = c.type_cast()?;
            if signed {
                return Err("stores take u8, u16, u32 or u64".into());
            }
            let (dst, off) = c.mem()?;
            c.expect_punct("=")?;
            if c.peek_reg().is_some() {
                let (src, wide) = c.reg()?;
                if !wide && size == Size::DW {
                    return Err("a u64 store takes a 64-bit register".into());
                }
                Stmt::op(Op::Stx {
                    size,
                    dst,
                    off,
                    src,
                })
            } else {
                with_imm(
                    |imm| Op::St {
                        size,
                        dst,
                        off,
                        imm,
                    },
                    c.imm32()?,
                )
            }
        }
        Tok::Ident(ref w) if w == "store_release" => {
            c.next();
            c.expect_punct("(")?;
            let (size, signed) = c.type_cast()?;
            if signed {
                return Err("store_release takes u8, u16, u32 or u64".into());
            }
            let (dst, off) = c.mem()?;
            c.expect_punct(",")?;
            let (src, wide) = c.reg()?;
            if size == Size::DW && !wide {
                return Err("store_release of a u64 takes an r register".into());
            }
            c.expect_punct(")")?;
            Stmt::op(Op::StoreRelease {
                size,
                dst,
                off,
                src,
            })
        }
        Tok::Ident(_) if c.peek_reg().is_some() => assignment(c)?,
        Tok::Ident(ref w) if looks_like_register(w) => {
            return Err(format!("`{w}` is not a register: use r0-r10 or w0-w10"))
        }
        other => return Err(format!("{other} does not start an instruction")),
    };
    c.end()?;
    Ok(stmt)
}

fn call(c: &mut Cursor) -> Result<Stmt, String> {
    if c.is_ident("pc") && matches!(c.peek_at(1), Some(Tok::Punct("+" | "-"))) {
        c.next();
        return Ok(Stmt {
            op: Op::Call(CallTarget::Local(0)),
            reloc: None,
            target: Some((c.target()?, Field::Imm)),
        });
    }
    if c.eat_ident("kfunc") {
        c.expect_punct("(")?;
        let id = c.int()?;
        let btf_id =
            i32::try_from(id).map_err(|_| format!("kfunc id {id} does not fit in 32 bits"))?;
        let off = if c.eat_punct(",") {
            let v = c.int()?;
            i16::try_from(v).map_err(|_| format!("kfunc offset {v} does not fit in 16 bits"))?
        } else {
            0
        };
        c.expect_punct(")")?;
        return Ok(Stmt::op(Op::Call(CallTarget::Kfunc { btf_id, off })));
    }
    if c.is_int() {
        // `call N`, `call +N`, `call -N`: a helper id, as llvm-mc reads it.
        let v = c.int()?;
        let id = i32::try_from(v).map_err(|_| format!("helper id {v} does not fit in 32 bits"))?;
        return Ok(Stmt::op(Op::Call(CallTarget::Helper(id))));
    }
    match c.target()? {
        Target::Label(name) => Ok(Stmt {
            op: Op::Call(CallTarget::Local(0)),
            reloc: None,
            target: Some((Target::Label(name), Field::Imm)),
        }),
        Target::Offset(_) => Err("expected a helper id, pc+N/pc-N or a function label".into()),
    }
}

fn assignment(c: &mut Cursor) -> Result<Stmt, String> {
    let (dst, wide) = c.reg()?;
    let p = match c.next() {
        Some(Tok::Punct(p)) => p,
        _ => {
            c.pos -= 1;
            return Err(format!(
                "expected `=` or an operator like `+=`, {}",
                c.found()
            ));
        }
    };
    if p != "=" {
        let op = alu_op(p).ok_or_else(|| format!("`{p}` is not an arithmetic operator"))?;
        let make = |src| Op::Alu {
            alu64: wide,
            op,
            dst,
            src,
        };
        return if c.peek_reg().is_some() {
            Ok(Stmt::op(make(Source::Reg(c.reg_of(wide)?))))
        } else {
            Ok(with_imm(|n| make(Source::Imm(n)), c.imm32()?))
        };
    }
    // dst = ...
    // Register move.
    if c.peek_reg().is_some() {
        let src = c.reg_of(wide)?;
        return Ok(Stmt::op(Op::Alu {
            alu64: wide,
            op: AluOp::Mov,
            dst,
            src: Source::Reg(src),
        }));
    }
    // Negation `r1 = -r1`.
    if c.is_punct("-") && matches!(c.peek_at(1), Some(Tok::Ident(s)) if parse_reg(s).is_some()) {
        c.next();
        let src = c.reg_of(wide)?;
        if src != dst {
            return Err("negation works in place: write `r1 = -r1`".into());
        }
        return Ok(Stmt::op(Op::Neg { alu64: wide, dst }));
    }
    // Sign-extending move `r1 = (s8)r2`.
    if c.is_punct("(") {
        c.next();
        let bits = match c.next() {
            Some(Tok::Ident(t)) if t == "s8" => 8,
            Some(Tok::Ident(t)) if t == "s16" => 16,
            Some(Tok::Ident(t)) if t == "s32" => 32,
            _ => {
                c.pos -= 1;
                return Err(format!("expected s8, s16 or s32, {}", c.found()));
            }
        };
        c.expect_punct(")")?;
        let src = c.reg_of(wide)?;
        let op = Op::MovSx {
            alu64: wide,
            dst,
            src,
            bits,
        };
        op.validate()?;
        return Ok(Stmt::op(op));
    }
    // Loads `r1 = *(u32 *)(r2 + 8)` and `r0 = *(u8 *)skb[...]`.
    if c.eat_punct("*") {
        let (size, signed) = c.type_cast()?;
        if c.eat_ident("skb") {
            if signed || size == Size::DW || dst != Reg::R0 || !wide {
                return Err("legacy packet loads are `r0 = *(u8|u16|u32 *)skb[...]`".into());
            }
            c.expect_punct("[")?;
            let stmt = if c.peek_reg().is_some() {
                let (src, wide) = c.reg()?;
                if !wide {
                    return Err("packet offsets use 64-bit registers (r0-r10)".into());
                }
                let imm = if c.is_punct("+") || c.is_punct("-") {
                    let negative = c.next() == Some(Tok::Punct("-"));
                    let v = c.int()?;
                    let v = if negative { -v } else { v };
                    i32::try_from(v)
                        .map_err(|_| format!("packet offset {v} does not fit in 32 bits"))?
                } else {
                    0
                };
                Stmt::op(Op::LdInd { size, src, imm })
            } else {
                let v = c.int()?;
                let imm = i32::try_from(v)
                    .map_err(|_| format!("packet offset {v} does not fit in 32 bits"))?;
                Stmt::op(Op::LdAbs { size, imm })
            };
            c.expect_punct("]")?;
            return Ok(stmt);
        }
        if signed && size == Size::DW {
            return Err("sign-extending loads read s8, s16 or s32".into());
        }
        if !wide && size == Size::DW {
            return Err("a u64 load needs a 64-bit register".into());
        }
        let (src, off) = c.mem()?;
        return Ok(Stmt::op(Op::Ldx {
            size,
            signed,
            dst,
            src,
            off,
        }));
    }
    if let Some(Tok::Ident(name)) = c.peek().cloned() {
        // Byte swaps `r1 = be16 r1`.
        if let Some((kind, bits)) = endian_op(&name) {
            if c.peek_at(1)
                .is_some_and(|t| matches!(t, Tok::Ident(s) if parse_reg(s).is_some()))
            {
                c.next();
                let (src, _) = c.reg()?;
                if src != dst {
                    return Err(format!(
                        "byte swaps work in place: write `r{d} = {name} r{d}`",
                        d = dst.index()
                    ));
                }
                return Ok(Stmt::op(Op::Endian { kind, dst, bits }));
            }
        }
        // Atomic fetch forms.
        if c.peek_at(1) == Some(&Tok::Punct("(")) {
            if let Some(stmt) = atomic_call(c, &name, dst, wide)? {
                return Ok(stmt);
            }
        }
    }
    // 64-bit loads `... ll`.
    if c.toks.last() == Some(&Tok::Ident("ll".into())) {
        if !wide {
            return Err("64-bit immediate loads need a 64-bit register".into());
        }
        let stmt = ld_imm64(c, dst)?;
        c.expect_ident("ll")?;
        return Ok(stmt);
    }
    // Move of an immediate or a constant.
    let imm = c.imm32()?;
    Ok(with_imm(
        |n| Op::Alu {
            alu64: wide,
            op: AluOp::Mov,
            dst,
            src: Source::Imm(n),
        },
        imm,
    ))
}

fn ld_imm64(c: &mut Cursor, dst: Reg) -> Result<Stmt, String> {
    let make = |pseudo, imm| Op::LdImm64 { dst, pseudo, imm };
    if c.is_int() {
        let v = c.int()?;
        if !(i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&v) {
            return Err(format!("immediate {v} does not fit in 64 bits"));
        }
        return Ok(Stmt::op(make(0, v as u64)));
    }
    let name = c.symbol()?;
    if !c.eat_punct("(") {
        return Ok(Stmt {
            op: make(BPF_PSEUDO_MAP_FD, 0),
            reloc: Some(RelocKind::MapFd(name)),
            target: None,
        });
    }
    if name == "const" {
        let sym = c.symbol()?;
        c.expect_punct(")")?;
        return Ok(Stmt {
            op: make(0, 0),
            reloc: Some(RelocKind::Const(sym)),
            target: None,
        });
    }
    let pseudo = pseudo_from_name(&name).ok_or_else(|| {
        format!("`{name}(...)` is not a 64-bit load form: use map_fd, map_value, btf_id, func, map_idx, map_idx_value or const")
    })?;
    // Symbolic forms: map_fd(name), map_value(name, off), func(label).
    if matches!(c.peek(), Some(Tok::Ident(_))) {
        let sym = c.symbol()?;
        let stmt = match pseudo {
            BPF_PSEUDO_MAP_FD => Stmt {
                op: make(pseudo, 0),
                reloc: Some(RelocKind::MapFd(sym)),
                target: None,
            },
            BPF_PSEUDO_MAP_VALUE => {
                c.expect_punct(",")?;
                let off = c.int()?;
                let off = u32::try_from(off)
                    .map_err(|_| format!("map value offset {off} must be in 0 ..= 4294967295"))?;
                Stmt {
                    op: make(pseudo, u64::from(off) << 32),
                    reloc: Some(RelocKind::MapValue(sym)),
                    target: None,
                }
            }
            BPF_PSEUDO_FUNC => Stmt {
                op: make(pseudo, 0),
                reloc: None,
                target: Some((Target::Label(sym), Field::Imm)),
            },
            _ => return Err(format!("`{name}` takes numbers, not a name")),
        };
        c.expect_punct(")")?;
        return Ok(stmt);
    }
    let lo = fit_imm32(c.int()?)?;
    let hi = if c.eat_punct(",") {
        fit_imm32(c.int()?)?
    } else {
        0
    };
    c.expect_punct(")")?;
    Ok(Stmt::op(make(
        pseudo,
        u64::from(lo as u32) | (u64::from(hi as u32) << 32),
    )))
}

fn atomic_call(c: &mut Cursor, name: &str, dst: Reg, wide: bool) -> Result<Option<Stmt>, String> {
    // LLVM: `atomic_fetch_add((u64 *)(..), r1)`; kernel: `atomic64_fetch_add((u64 *)(..), r1)`,
    // `atomic_fetch_add((u32 *)(..), r1)`, `atomic64_xchg(..)`, `atomic_cmpxchg(..)`.
    let (named_64, core) = if let Some(rest) = name.strip_prefix("atomic64_") {
        (true, rest)
    } else if let Some(rest) = name.strip_prefix("atomic_") {
        (false, rest)
    } else {
        (false, "")
    };
    let op = match core {
        "fetch_add" => Some(AtomicOp::FetchAdd),
        "fetch_or" => Some(AtomicOp::FetchOr),
        "fetch_and" => Some(AtomicOp::FetchAnd),
        "fetch_xor" => Some(AtomicOp::FetchXor),
        "xchg" => Some(AtomicOp::Xchg),
        "cmpxchg" => Some(AtomicOp::Cmpxchg),
        _ => None,
    };
    if let Some(op) = op {
        c.next();
        c.expect_punct("(")?;
        let (size, signed) = c.type_cast()?;
        if signed || !matches!(size, Size::W | Size::DW) || (named_64 && size != Size::DW) {
            return Err(format!(
                "`{name}` takes {}",
                if named_64 {
                    "(u64 *)"
                } else {
                    "(u64 *) or (u32 *)"
                }
            ));
        }
        if size == Size::DW && !wide {
            return Err("a 64-bit atomic takes r registers".into());
        }
        let (base, off) = c.mem()?;
        c.expect_punct(",")?;
        if op == AtomicOp::Cmpxchg {
            if dst != Reg::R0 || c.reg_of(wide)? != Reg::R0 {
                return Err("cmpxchg compares with and returns in r0: write `r0 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r2)`".into());
            }
            c.expect_punct(",")?;
        }
        let src = c.reg_of(wide)?;
        c.expect_punct(")")?;
        if op != AtomicOp::Cmpxchg && src != dst {
            return Err("the fetched value goes to the source register: write `rN = atomic_fetch_op((u64 *)(..), rN)`".into());
        }
        return Ok(Some(Stmt::op(Op::Atomic {
            size,
            op,
            dst: base,
            src,
            off,
        })));
    }
    if name == "load_acquire" {
        c.next();
        c.expect_punct("(")?;
        let (size, signed) = c.type_cast()?;
        if signed || (size == Size::DW && !wide) {
            return Err("load_acquire takes (u8|u16|u32|u64 *); a u64 needs an r register".into());
        }
        let (src, off) = c.mem()?;
        c.expect_punct(")")?;
        return Ok(Some(Stmt::op(Op::LoadAcquire {
            size,
            dst,
            src,
            off,
        })));
    }
    if name == "addr_space_cast" {
        c.next();
        if !wide {
            return Err("addr_space_cast works on 64-bit registers".into());
        }
        c.expect_punct("(")?;
        let src = c.reg_of(true)?;
        c.expect_punct(",")?;
        let a = c.int()?;
        c.expect_punct(",")?;
        let b = c.int()?;
        c.expect_punct(")")?;
        let as16 = |v: i128| {
            u16::try_from(v).map_err(|_| format!("address space {v} must be in 0 ..= 65535"))
        };
        return Ok(Some(Stmt::op(Op::AddrSpaceCast {
            dst,
            src,
            dst_as: as16(a)?,
            src_as: as16(b)?,
        })));
    }
    let (op, size) = match (name, wide) {
        ("xchg_64", true) => (AtomicOp::Xchg, Size::DW),
        ("xchg32_32", false) => (AtomicOp::Xchg, Size::W),
        ("cmpxchg_64", true) => (AtomicOp::Cmpxchg, Size::DW),
        ("cmpxchg32_32", false) => (AtomicOp::Cmpxchg, Size::W),
        ("xchg_64" | "cmpxchg_64", false) | ("xchg32_32" | "cmpxchg32_32", true) => {
            return Err(format!(
                "`{name}` takes {} registers",
                if wide { "w" } else { "r" }
            ))
        }
        _ => return Ok(None),
    };
    c.next();
    c.expect_punct("(")?;
    let (base, off) = c.mem_inner()?;
    c.expect_punct(",")?;
    if op == AtomicOp::Cmpxchg {
        if dst != Reg::R0 {
            return Err("cmpxchg returns in r0: write `r0 = cmpxchg_64(r1 + 0, r0, r2)`".into());
        }
        let cmp = c.reg_of(wide)?;
        if cmp != Reg::R0 {
            return Err("cmpxchg compares with r0: write `r0 = cmpxchg_64(r1 + 0, r0, r2)`".into());
        }
        c.expect_punct(",")?;
    }
    let src = c.reg_of(wide)?;
    c.expect_punct(")")?;
    if op == AtomicOp::Xchg && src != dst {
        return Err("xchg returns in its source register: write `r2 = xchg_64(r1 + 0, r2)`".into());
    }
    Ok(Some(Stmt::op(Op::Atomic {
        size,
        op,
        dst: base,
        src,
        off,
    })))
}

#[derive(Default)]
struct TextAsm {
    insns: Vec<crate::Insn>,
    slot_lines: Vec<usize>,
    relocations: Vec<Relocation>,
    labels: HashMap<String, (usize, usize)>,
    fixups: Vec<(usize, String, Field, usize)>,
}

impl TextAsm {
    fn line(&mut self, line: usize, raw: &str) -> Result<(), ParseError> {
        let err = |message: String| ParseError { line, message };
        let text = strip_comment(raw);
        let toks = tokenize(text).map_err(err)?;
        let mut c = Cursor { toks, pos: 0 };
        // Labels `name:` (several allowed, instruction may follow).
        while let (Some(Tok::Ident(name)), Some(Tok::Punct(":"))) = (c.peek(), c.peek_at(1)) {
            let name = name.clone();
            if is_reserved(&name) {
                return Err(err(format!("`{name}` is reserved and cannot be a label")));
            }
            if let Some((_, first_line)) = self.labels.get(&name) {
                return Err(err(format!(
                    "label `{name}` is defined twice (first on line {first_line})"
                )));
            }
            self.labels.insert(name, (self.insns.len(), line));
            c.pos += 2;
        }
        match c.peek() {
            None => return Ok(()),
            Some(Tok::Ident(d)) if d.starts_with('.') => {
                // Assembler directives (.text, .globl, ...) carry nothing we encode.
                return Ok(());
            }
            _ => {}
        }
        let mut stmt = statement(&mut c).map_err(err)?;
        let slot = self.insns.len();
        if let Some((target, field)) = stmt.target.take() {
            match target {
                Target::Label(name) => self.fixups.push((slot, name, field, line)),
                Target::Offset(off) => {
                    let bits = match field {
                        Field::Off => 16,
                        Field::Imm => 32,
                    };
                    let fits = match field {
                        Field::Off => i16::try_from(off).is_ok(),
                        Field::Imm => i32::try_from(off).is_ok(),
                    };
                    if !fits {
                        return Err(err(format!(
                            "jump offset {off} does not fit in a signed {bits}-bit field"
                        )));
                    }
                    set_target(&mut stmt.op, off);
                }
            }
        }
        if let Some(kind) = stmt.reloc {
            self.relocations.push(Relocation { slot, kind });
        }
        stmt.op.encode_into(&mut self.insns);
        self.slot_lines.resize(self.insns.len(), line);
        Ok(())
    }

    fn finish(mut self) -> Result<Parsed, ParseError> {
        for (slot, name, field, line) in std::mem::take(&mut self.fixups) {
            let Some(&(target, _)) = self.labels.get(&name) else {
                // `call bpf_get_socket_cookie` / `call get_socket_cookie`: a helper by name.
                let insn = &mut self.insns[slot];
                if insn.code == BPF_JMP | BPF_CALL && insn.src == BPF_PSEUDO_CALL {
                    if let Some(helper) = crate::Helper::from_name(&name) {
                        insn.src = 0;
                        insn.imm = helper.id() as i32;
                        continue;
                    }
                }
                return Err(ParseError {
                    line,
                    message: format!("label `{name}` is not defined"),
                });
            };
            let offset = target as i64 - slot as i64 - 1;
            let insn = &mut self.insns[slot];
            match field {
                Field::Off => {
                    insn.off = i16::try_from(offset).map_err(|_| ParseError {
                        line,
                        message: format!(
                            "jump to `{name}` is {offset} instructions away, more than a signed 16-bit offset holds (use `gotol`)"
                        ),
                    })?;
                }
                Field::Imm => {
                    insn.imm = i32::try_from(offset).map_err(|_| ParseError {
                        line,
                        message: format!(
                            "jump to `{name}` is {offset} instructions away, more than a signed 32-bit offset holds"
                        ),
                    })?;
                }
            }
        }
        let last_line = self.slot_lines.last().copied().unwrap_or(1);
        let warnings = check::check(&self.insns)
            .into_iter()
            .map(|issue| ParseError {
                line: self
                    .slot_lines
                    .get(issue.insn())
                    .copied()
                    .unwrap_or(last_line),
                message: issue.to_string(),
            })
            .collect();
        Ok(Parsed {
            program: Program {
                insns: self.insns,
                relocations: self.relocations,
            },
            slot_lines: self.slot_lines,
            warnings,
        })
    }
}

fn set_target(op: &mut Op, offset: i64) {
    match op {
        Op::Jmp { off, .. } | Op::Ja { off } | Op::MayGoto { off } => *off = offset as i16,
        Op::Gotol { imm } | Op::Call(CallTarget::Local(imm)) => *imm = offset as i32,
        Op::LdImm64 { imm, .. } => *imm = u64::from(offset as i32 as u32),
        _ => {}
    }
}
