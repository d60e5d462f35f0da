//! Snapshot isolation at work: many small tests on one guest image, each of
//! which must find the guest as freshly booted (counter 0, no breakpoints, an
//! empty console, stopped at its first instruction) and leaves it dirty.
//! `cargo xtask bench tests` runs it with and without isolation
//! (`XENPROBE_ISOLATION=fresh`) and compares the time per test;
//! `XENPROBE_BENCH_TESTS` sets the number of tests (default 4);
//! `XENPROBE_BENCH_BODY=memory` leaves out running the guest.

use std::process::ExitCode;

use anyhow::{ensure, Result};
use xenprobe::testing::{GuestTest, Mode, Need, Session};

fn starts_fresh_and_leaves_a_mess(s: &mut Session) -> Result<()> {
    let entry = s.dom().symbols()?.entry();
    let rip = s.regs()?.rip;
    ensure!(
        s.read_var::<u64>("known_counter")? == 0,
        "counter left over"
    );
    ensure!(s.dom().breakpoints().is_empty(), "breakpoints left over");
    ensure!(
        s.console().is_empty(),
        "console left over: {:?}",
        s.console()
    );
    // PVH enters at its 32-bit entry point, not the ELF entry.
    let start = s.symbol("_start32").unwrap_or(entry);
    ensure!(
        rip == start || rip == entry,
        "not at the first instruction: {rip:#x}"
    );
    s.write_var("known_counter", 7u64)?;
    // XENPROBE_BENCH_BODY=memory: only write (the harness's own cost).
    if std::env::var("XENPROBE_BENCH_BODY").as_deref() != Ok("memory") {
        s.run_to("known_tick")?;
    }
    let addr = s.symbol("known_checkpoint")?;
    s.dom().add_breakpoint(addr)?;
    Ok(())
}

fn main() -> ExitCode {
    let n = std::env::var("XENPROBE_BENCH_TESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4usize);
    let tests = (0..n)
        .map(|i| {
            GuestTest::new(&format!("isolated_{i:03}"), starts_fresh_and_leaves_a_mess)
                .modes(&[Mode::Pvh])
                .needs(&[Need::Breakpoints])
        })
        .collect();
    xenprobe::testing::main(tests)
}
