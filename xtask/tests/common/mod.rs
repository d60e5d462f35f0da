//! Helpers for the lab's host-side tests: run `xtask` and capture what it says.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// An `xtask` command (the binary cargo built for these tests).
pub fn xtask(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).env_remove("XENPROBE_LAB_DIR");
    c
}

/// Runs it and returns its output, printing it for the test log.
pub fn run(mut c: Command) -> Output {
    let out = c.output().expect("xtask runs");
    eprintln!(
        "--- {:?}: {}\nstdout:\n{}\nstderr:\n{}",
        c.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `xtask lab run -- argv...` on the shared stock lab.
pub fn in_dom0(argv: &[&str]) -> Output {
    let mut args = vec!["lab", "run", "--"];
    args.extend_from_slice(argv);
    run(xtask(&args))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The value after `key` in `cargo xtask lab status`.
pub fn status_field(key: &str) -> Option<String> {
    let out = run(xtask(&["lab", "status"]));
    text(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `tool --version` runs and succeeds (the tool is installed).
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
