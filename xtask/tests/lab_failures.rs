//! What the lab says when things go wrong, and how it recovers.
//! These tests boot labs of their own (`XENPROBE_LAB_DIR`) or kill the shared
//! one, so they live in their own test binary and run one at a time.

mod common;

use std::sync::Mutex;

use common::*;

/// The tests here must not overlap: they start and kill QEMUs.
static SERIAL: Mutex<()> = Mutex::new(());

/// A lab directory of a test's own, with no lab left running in it.
fn scratch_lab(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    in_lab(&d, &["lab", "down"]);
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `xtask ARGS` on the lab in `dir`.
fn in_lab(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = xtask(args);
    c.env("XENPROBE_LAB_DIR", dir);
    run(c)
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
    let out = in_lab(&dir, &["lab", "up", "--cold", "--timeout", "4"]);
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

/// Every saved stock state (the key of the current configuration is not
/// known here; a test's damage is repaired by the next cold boot).
fn saved_stock_states() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xenlab/states");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with("stock-") && n.ends_with(".state")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_restored_lab_runs_commands_like_a_cold_one() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Make sure a state exists, then start from it.
    assert!(in_dom0(&["true"]).status.success());
    assert!(run(xtask(&["lab", "down"])).status.success());
    let out = run(xtask(&["lab", "up"]));
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("restored from its saved state"),
        "stderr: {err}"
    );
    let out = in_dom0(&["sh", "-c", "xl list | head -n 2; ls Cargo.toml"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("Domain-0"), "{s}");
    assert!(
        s.contains("Cargo.toml"),
        "workspace mounted after restore: {s}"
    );
}

#[test]
fn a_state_for_another_configuration_is_not_used() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        in_dom0(&["true"]).status.success(),
        "a state for the default exists"
    );
    let dir = scratch_lab("other-key");
    let mut c = xtask(&["lab", "up"]);
    // A harmless extra hypervisor option changes the configuration's key.
    c.env("XENPROBE_LAB_DIR", &dir)
        .env("XENPROBE_XEN_CMDLINE", "xenprobe-test=1");
    let out = run(c);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cold boot"), "stderr: {err}");
    assert!(!err.contains("restored"), "stderr: {err}");
    assert!(in_lab(&dir, &["lab", "down"]).status.success());
}

#[test]
fn a_truncated_state_leads_to_a_cold_boot_with_a_message() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(in_dom0(&["true"]).status.success(), "a state exists");
    let states = saved_stock_states();
    assert!(!states.is_empty(), "no saved stock state to damage");
    for s in &states {
        let f = std::fs::OpenOptions::new().write(true).open(s).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
    }
    let dir = scratch_lab("truncated");
    let out = in_lab(&dir, &["lab", "up"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("saved state is damaged"), "stderr: {err}");
    assert!(err.contains("cold boot"), "stderr: {err}");
    assert!(in_lab(&dir, &["lab", "run", "--", "xl", "info"])
        .status
        .success());
    assert!(in_lab(&dir, &["lab", "down"]).status.success());
}

/// The lab's QEMU killed while `cargo xtask fuzz` runs a campaign in it (a
/// lab of the test's own, so that the shared one stays up): the command
/// ends at once and says that the lab's QEMU is gone, and the next command
/// cleans up and boots the lab again.
#[test]
fn a_lab_killed_mid_campaign_is_named_and_the_next_command_recovers() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch_lab("killed-mid-campaign");
    assert!(
        in_lab(&dir, &["lab", "up"]).status.success(),
        "the scratch lab boots"
    );
    let status = text(&in_lab(&dir, &["lab", "status"]).stdout);
    let pid = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("lab: stock: up (QEMU pid"))
        .and_then(|s| s.split(',').next().map(|p| p.trim().to_string()))
        .expect("status shows the QEMU pid");
    // A campaign directory of its own (`--config`: named after the file).
    let cfg = dir.join("labkill-tlv.toml");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(
        &cfg,
        format!(
            "image = \"{}\"\nmode = \"pvh\"\nname = \"labkill-tlv\"\nmemory_mb = 32\ncover = [\"xenprobe_target\", \"crate:tlv\"]\n",
            root.join("target/guests/tlv-pvh").canonicalize().expect("tlv-pvh is built").display()
        ),
    )
    .expect("write the config");
    let mut fuzz = xtask(&["fuzz", "--config"]);
    fuzz.arg(&cfg)
        .args(["--time", "300s", "--debug-build"])
        .env("XENPROBE_LAB_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = fuzz.spawn().expect("xtask fuzz starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let l = String::from_utf8_lossy(&l).into_owned();
            if l.contains("blocks instrumented") {
                let _ = tx.send(());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(600))
        .expect("the campaign started fuzzing in the scratch lab");
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().expect("xtask fuzz ends");
    let took = killed.elapsed();
    let err = reader.join().expect("stderr reader");
    eprintln!("--- xtask fuzz ({status}, {took:?} after the kill):\n{err}");
    assert!(!status.success(), "xtask fuzz failed: {status}");
    assert!(
        took < Duration::from_secs(30),
        "xtask fuzz took {took:?} to notice"
    );
    assert!(
        err.contains(&format!("lab's QEMU (pid {pid}) is gone")),
        "says that the lab's QEMU is gone: {err}"
    );
    assert!(
        err.contains("The next lab command cleans up"),
        "says what happens next: {err}"
    );
    // The next command recovers.
    let out = in_lab(&dir, &["lab", "run", "--", "sh", "-c", "echo alive"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "alive\n");
    assert!(text(&out.stderr).contains("cleaning up after"));
    assert!(in_lab(&dir, &["lab", "down"]).status.success());
}
