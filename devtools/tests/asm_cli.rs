//! `merbridge asm` / `merbridge disasm` (the developer tool merbridge-dev, which `merbridge asm` starts) run as a user would run them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn merbridge(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_merbridge-dev"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run merbridge");
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            pipe.write_all(data).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// A private scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mb-asm-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, contents: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PROGRAM: &str = "\
// counts to 3
    r0 = 0
loop:
    r0 += 1
    if r0 < 3 goto loop
    r1 = 0x1122334455667788 ll
    exit
";

#[test]
fn asm_prints_hex_lines_from_stdin() {
    let out = merbridge(&["asm"], Some(PROGRAM.as_bytes()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "b7 00 00 00 00 00 00 00\n\
         07 00 00 00 01 00 00 00\n\
         a5 00 fe ff 03 00 00 00\n\
         18 01 00 00 88 77 66 55 00 00 00 00 44 33 22 11\n\
         95 00 00 00 00 00 00 00\n"
    );
    // `-` means standard input too.
    let out = merbridge(&["asm", "-"], Some(b"exit\n"));
    assert_eq!(out.stdout, b"95 00 00 00 00 00 00 00\n");
}

#[test]
fn asm_writes_raw_bytes_and_disasm_reads_them_back() {
    let dir = Scratch::new("roundtrip");
    let src = dir.file("prog.s", PROGRAM.as_bytes());
    let bin = dir.path("prog.bin");
    let out = merbridge(&["asm", &src, "-o", &bin], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let bytes = std::fs::read(&bin).unwrap();
    assert_eq!(bytes.len(), 6 * 8);
    assert_eq!(&bytes[..8], &[0xb7, 0, 0, 0, 0, 0, 0, 0]);

    let out = merbridge(&["disasm", &bin], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "r0 = 0\nr0 += 1\nif r0 < 3 goto -2\nr1 = 1234605616436508552 ll\nexit\n"
    );
    // asm(disasm(bytes)) == bytes
    let again = dir.path("again.bin");
    let text_file = dir.file("again.s", text.as_bytes());
    assert!(merbridge(&["asm", &text_file, "-o", &again], None)
        .status
        .success());
    assert_eq!(std::fs::read(&again).unwrap(), bytes);

    let out = merbridge(&["disasm", &bin, "--kernel"], None);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        "0: (b7) r0 = 0\n1: (07) r0 += 1\n2: (a5) if r0 < 0x3 goto pc-2\n\
         3: (18) r1 = 0x1122334455667788\n5: (95) exit\n"
    );

    // The kernel listing reassembles too.
    let kernel_listing = dir.file("prog.kernel", &out.stdout);
    let from_kernel = dir.path("from_kernel.bin");
    let out = merbridge(
        &["asm", "--kernel", &kernel_listing, "-o", &from_kernel],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&from_kernel).unwrap(), bytes);

    let out = merbridge(&["disasm", &bin, "--hex"], None);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "r0 = 0x0\nr0 += 0x1\nif r0 < 0x3 goto -0x2\nr1 = 0x1122334455667788 ll\nexit\n"
    );

    let out = merbridge(&["disasm", &bin, "--labels"], None);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "r0 = 0\nL1:\nr0 += 1\nif r0 < 3 goto L1\nr1 = 1234605616436508552 ll\nexit\n"
    );
}

#[test]
fn asm_errors_are_file_line_message() {
    let dir = Scratch::new("errors");
    let src = dir.file("bad.s", b"r0 = 0\n\nr0 += w1\nexit\n");
    let out = merbridge(&["asm", &src], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{src}:3: ")),
        "stderr was: {stderr}"
    );
    assert!(stderr.contains("mixes 32-bit"), "{stderr}");

    let out = merbridge(&["asm"], Some(b"exit\ngoto nowhere\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr, "<stdin>:2: label `nowhere` is not defined\n");
}

#[test]
fn structural_checks_warn_unless_strict() {
    // What llvm-mc accepts assembles: numeric offsets outside this snippet, no final exit.
    let text = b"goto +29\nr0 = 1\n";
    let out = merbridge(&["asm"], Some(text));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "05 00 1d 00 00 00 00 00\nb7 00 00 00 01 00 00 00\n"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("<stdin>:1: warning:"), "{stderr}");
    assert!(stderr.contains("<stdin>:2: warning:"), "{stderr}");

    let out = merbridge(&["asm", "--strict"], Some(text));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("<stdin>:1: "), "{stderr}");
    assert!(stderr.contains("outside the program"), "{stderr}");
}

#[test]
fn disasm_rejects_bad_input() {
    let dir = Scratch::new("disasm-bad");
    let short = dir.file("short.bin", &[0x95, 0, 0]);
    let out = merbridge(&["disasm", &short], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("multiple of 8"), "{stderr}");

    let invalid = dir.file(
        "invalid.bin",
        &[0x95, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0],
    );
    let out = merbridge(&["disasm", &invalid], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("instruction 1"), "{stderr}");

    let out = merbridge(&["disasm", &dir.path("missing.bin")], None);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("cannot read"));

    let out = merbridge(&["asm"], Some(&[0xff, 0xfe]));
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("not UTF-8"));
}
