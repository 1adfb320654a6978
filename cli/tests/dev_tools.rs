//! `merbridge demo` and `merbridge bench` hand over to the separate `merbridge-dev` tool
//! with their arguments unchanged, and say what to do when it is missing.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn merbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_merbridge"))
}

#[test]
fn demo_and_bench_run_the_dev_tool_with_their_arguments() {
    let dir = std::env::temp_dir().join(format!("mb-dev-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("merbridge-dev");
    std::fs::write(&fake, "#!/bin/sh\necho \"dev tool: $*\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (sub, args) in [
        ("demo", vec!["--help"]),
        ("bench", vec!["--quick", "--pin", "0,0,0", "-x"]),
    ] {
        let out = merbridge()
            .arg(sub)
            .args(&args)
            .env("MB_DEV_BIN", &fake)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), format!("dev tool: {sub} {}", args.join(" ")));
        assert_eq!(
            out.status.code(),
            Some(7),
            "the tool's exit code is merbridge's"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_dev_tool_is_a_clear_error() {
    let out = merbridge()
        .args(["bench", "--quick"])
        .env("MB_DEV_BIN", "/nonexistent/merbridge-dev")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot run /nonexistent/merbridge-dev"),
        "{stderr}"
    );
}
