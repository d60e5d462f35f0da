//! Self-test of xenprobe's guest test runner: failing guest tests are
//! reported as failed with their diagnostic, skipped ones as ignored with
//! their reason, and a failed test's guest is not reused.
//!
//! Run plainly (as `cargo test` does) this binary runs one check, which runs
//! this same binary again with `XENPROBE_SELFTEST=1`: then it runs the
//! deliberately failing guest tests below, and the check parses their output
//! and exit status.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use libtest_mimic::{Arguments, Trial};
use xenprobe::testing::{GuestTest, Mode, Need, Session};

/// Set in the child run: run the deliberately failing tests.
const SELFTEST_ENV: &str = "XENPROBE_SELFTEST";

/// Stops in `known_compute`, dirties the guest, then fails.
fn fails_with_diagnostics(s: &mut Session) -> Result<()> {
    s.write_var("known_counter", 999u64)?;
    let r = s.run_to("known_compute")?;
    ensure!(r.rdi == 1234, "deliberate failure: rdi is {}", r.rdi);
    Ok(())
}

/// Panics in the middle of the test.
fn panics(s: &mut Session) -> Result<()> {
    s.write_var("known_counter", 999u64)?;
    panic!("deliberate panic");
}

/// Overruns its timeout.
fn times_out(s: &mut Session) -> Result<()> {
    s.write_var("known_counter", 999u64)?;
    // The guest stays stopped; the watchdog ends this by destroying it.
    loop {
        s.regs()?;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Compares with tests/snapshots/live_selftest__deliberately_wrong.snap,
/// which is deliberately wrong: insta must fail (and, with INSTA_UPDATE=no,
/// write nothing).
fn insta_mismatch_fails(s: &mut Session) -> Result<()> {
    insta::assert_yaml_snapshot!("deliberately_wrong", s.memory_view("known_buffer", 16)?);
    Ok(())
}

/// Needs the vm_event ring, which PV guests never have.
fn skipped_on_pv(_s: &mut Session) -> Result<()> {
    anyhow::bail!("a skipped test ran")
}

/// Runs after the failures on the same guest image: it must get a clean guest.
fn zz_after_failures_the_guest_is_clean(s: &mut Session) -> Result<()> {
    ensure!(
        s.read_var::<u64>("known_counter")? == 0,
        "a failed test's guest was reused"
    );
    s.expect_exit(25)
}

fn selftests() -> Vec<GuestTest> {
    let pvh = &[Mode::Pvh];
    vec![
        GuestTest::new("fails_with_diagnostics", fails_with_diagnostics)
            .modes(pvh)
            .needs(&[Need::Breakpoints]),
        // After a failure the next test boots anyway: no snapshot for these.
        GuestTest::new("panics", panics).modes(pvh).fresh_boot(),
        GuestTest::new("times_out", times_out)
            .modes(pvh)
            .fresh_boot()
            .timeout(Duration::from_secs(3)),
        GuestTest::new("insta_mismatch_fails", insta_mismatch_fails)
            .modes(pvh)
            .fresh_boot(),
        GuestTest::new("skipped_on_pv", skipped_on_pv)
            .modes(&[Mode::Pv])
            .needs(&[Need::VmEvent]),
        GuestTest::new(
            "zz_after_failures_the_guest_is_clean",
            zz_after_failures_the_guest_is_clean,
        )
        .modes(pvh),
    ]
}

/// Runs this binary with the self-tests on and checks what it reports.
fn check_the_runner() -> Result<()> {
    if !xenprobe_tests::have_xen() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating this test binary")?;
    let snapshots = xenprobe_tests::root().join("tests/snapshots");
    let new_snap = snapshots.join("live_selftest__deliberately_wrong.snap.new");
    let _ = std::fs::remove_file(&new_snap);
    let out = Command::new(&exe)
        .env(SELFTEST_ENV, "1")
        .env("INSTA_UPDATE", "no")
        .env("INSTA_WORKSPACE_ROOT", xenprobe_tests::root())
        .args(["--test-threads", "1"])
        .output()
        .context("running the self-tests")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "failing tests, yet exit status 0:\n{all}"
    );
    ensure!(
        out.status.code() == Some(101),
        "exit status {:?}:\n{all}",
        out.status
    );
    // A test's status ends its line, or a later one when the test printed
    // something (insta prints its diff there).
    let status = |name: &str| {
        stdout
            .lines()
            .skip_while(|l| !(l.starts_with("test ") && l.contains(&format!(" {name} "))))
            .filter_map(|l| l.rsplit(' ').next())
            .find(|w| ["ok", "FAILED", "ignored"].contains(w))
            .unwrap_or("(not run)")
            .to_string()
    };
    for (name, want) in [
        ("fails_with_diagnostics::pvh", "FAILED"),
        ("panics::pvh", "FAILED"),
        ("times_out::pvh", "FAILED"),
        ("insta_mismatch_fails::pvh", "FAILED"),
        ("skipped_on_pv::pv", "ignored"),
        ("zz_after_failures_the_guest_is_clean::pvh", "ok"),
    ] {
        ensure!(
            status(name) == want,
            "{name}: {} instead of {want}:\n{all}",
            status(name)
        );
    }
    let has = |s: &str| stdout.contains(s);
    for (what, want) in [
        (
            "the summary",
            "test result: FAILED. 1 passed; 4 failed; 1 ignored",
        ),
        ("the skip tag", "test [skip] skipped_on_pv::pv"),
        (
            "the skip reason",
            "Xen offers vm_event for HVM and PVH guests only",
        ),
        ("the failure message", "deliberate failure: rdi is 3"),
        ("the registers", "registers (vCPU 0):"),
        ("the symbol and line", "= known_compute+0x0 at "),
        ("the disassembly at rip", "=> 0x"),
        ("the console", "last console lines:"),
        ("the panic", "panicked: deliberate panic"),
        ("the timeout", "timed out after 3s"),
        (
            "the snapshot mismatch",
            "snapshot assertion for 'deliberately_wrong' failed",
        ),
    ] {
        ensure!(has(want), "the output lacks {what} ({want:?}):\n{all}");
    }
    ensure!(
        !new_snap.exists(),
        "INSTA_UPDATE=no, yet insta wrote {}",
        new_snap.display()
    );
    ensure!(
        stdout.contains("known/src/main.rs:"),
        "no source line of known_compute:\n{all}"
    );
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os(SELFTEST_ENV).is_some() {
        return xenprobe::testing::main(selftests());
    }
    let args = Arguments::from_args();
    let trials = vec![Trial::test("runner_reports_failures_and_skips", || {
        check_the_runner().map_err(|e| format!("{e:#}").into())
    })];
    libtest_mimic::run(&args, trials).exit_code()
}
