//! A guest test that fails on purpose, for `XENPROBE_DEBUG` (a failed test
//! served to a debugger where it failed). Ignored: the host-side test
//! `xtask/tests/crash_debug.rs` runs it with `--ignored` and
//! `XENPROBE_DEBUG=1234`, connects LLDB and checks the stop.

use xenprobe::testing::{GuestTest, Mode, Need, Session};

/// Stops at `known_compute(3, 4)` and fails: the guest is then at the
/// breakpoint, RDI = 3.
fn fails_at_known_compute(s: &mut Session) -> anyhow::Result<()> {
    let regs = s.run_to("known_compute")?;
    anyhow::ensure!(
        regs.rdi == 99,
        "on purpose: known_compute got rdi={}, not 99",
        regs.rdi
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    xenprobe::testing::main(vec![GuestTest::new(
        "fails_at_known_compute",
        fails_at_known_compute,
    )
    .modes(&[Mode::Pvh])
    .needs(&[Need::Breakpoints])
    .ignore()])
}
