//! What the lab says when things go wrong, and how it recovers.
//! These tests boot labs of their own (`XENPROBE_LAB_DIR`) or kill the shared
//! one, so they live in their own test binary and run one at a time.

mod common;

use std::sync::Mutex;

use common::*;

/// The tests here must not overlap: they start and kill QEMUs.
static SERIAL: Mutex<()> = Mutex::new(());

fn scratch_lab(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_missing_qemu_is_named_with_what_to_install() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = xtask(&["lab", "up"]);
    c.env("XENPROBE_LAB_DIR", scratch_lab("no-qemu"))
        .env("XENPROBE_QEMU", "/nonexistent/qemu-system-x86_64");
    let out = run(c);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("QEMU is not installed"), "stderr: {err}");
    assert!(err.contains("qemu-system-x86"), "names the package: {err}");
}

#[test]
fn a_boot_timeout_prints_the_last_serial_lines_and_stops_qemu() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch_lab("timeout");
    let mut c = xtask(&["lab", "up", "--timeout", "4"]);
    c.env("XENPROBE_LAB_DIR", &dir);
    let out = run(c);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("did not come up within 4 s"), "stderr: {err}");
    assert!(err.contains("last serial lines"), "stderr: {err}");
    assert!(err.contains("(XEN)"), "Xen's own lines are shown: {err}");
    // No QEMU of that lab is left running.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &dir.join("serial.log").to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "QEMU still running: {}",
        text(&ps.stdout)
    );
}

#[test]
fn a_lab_killed_with_sigkill_is_recovered_by_the_next_command() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(in_dom0(&["true"]).status.success(), "lab up");
    let pid = status_field("lab: stock: up (QEMU pid")
        .and_then(|s| s.split(',').next().map(|p| p.trim().to_string()))
        .expect("status shows the QEMU pid");
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = in_dom0(&["sh", "-c", "echo alive"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "alive\n");
    let err = text(&out.stderr);
    assert!(err.contains("cleaning up after"), "stderr: {err}");
}
