//! The live suite for the sample guests, written with xenprobe's test API:
//! every engine feature on every guest type, as a user of the API writes it.
//! Each test boots its own guest (paused at its first instruction) and
//! destroys it afterwards.

use std::process::ExitCode;

use anyhow::{ensure, Result};
use xenprobe::testing::{GuestTest, Mode, Need, Session};

/// The known guest's buffer (guests/known/src/main.rs).
const KNOWN_BUFFER: &[u8; 64] =
    b"xenprobe known buffer: 0123456789 abcdefghijklmnopqrstuvwxyz!!!\n";

fn reads_the_known_buffer(s: &mut Session) -> Result<()> {
    let got: [u8; 64] = s.read_var("known_buffer")?;
    ensure!(
        &got == KNOWN_BUFFER,
        "read {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

fn exits_with_its_computed_result(s: &mut Session) -> Result<()> {
    s.expect_exit(25)?;
    ensure!(s.console().contains("KNOWN counter=10 state=3 result=25"));
    Ok(())
}

fn a_memory_write_changes_what_the_guest_does(s: &mut Session) -> Result<()> {
    // Before the first instruction: the counter starts at 100 instead of 0.
    s.write_var("known_counter", 100u64)?;
    ensure!(s.read_var::<u64>("known_counter")? == 100);
    s.expect_exit(25)?;
    ensure!(
        s.console().contains("KNOWN counter=110 "),
        "console: {}",
        s.console()
    );
    Ok(())
}

fn a_register_write_changes_the_result(s: &mut Session) -> Result<()> {
    let mut r = s.run_to("known_compute")?;
    ensure!(
        (r.rdi, r.rsi) == (3, 4),
        "arguments at entry: {} {}",
        r.rdi,
        r.rsi
    );
    r.rdi = 5;
    r.rsi = 6;
    s.set_regs(&r)?;
    ensure!(s.regs()?.rdi == 5, "rdi did not stick");
    s.expect_exit(41)?; // 5 * 7 + 6
    Ok(())
}

fn breaks_on_a_symbol_and_counts_hits(s: &mut Session) -> Result<()> {
    let addr = s.symbol("known_tick")?;
    let bp = s.dom().add_breakpoint(addr)?;
    let ticks = s.read_var::<u64>("known_ticks")?;
    for i in 0..ticks {
        let r = s.run_to("known_tick")?;
        ensure!(r.rip == addr, "stopped at {:#x}", r.rip);
        ensure!(r.rdi == i, "call {i} got argument {}", r.rdi);
    }
    ensure!(s.dom().breakpoint_hits(bp)? == ticks, "hits");
    s.dom().remove_breakpoint(bp)?;
    let state = s.run_to("known_checkpoint")?;
    ensure!(state.rip == s.symbol("known_checkpoint")?);
    ensure!(s.read_var::<u64>("known_counter")? == 10);
    ensure!(s.read_var::<u32>("known_state")? == 3, "state machine DONE");
    ensure!(s.read_var::<u64>("known_result")? == 25);
    s.expect_exit(25)
}

fn single_steps_through_a_function_like_its_disassembly(s: &mut Session) -> Result<()> {
    let start = s.run_to("known_compute")?.rip;
    let size = s
        .dom()
        .symbols()?
        .get("known_compute")
        .map(|f| f.size)
        .unwrap_or(0);
    ensure!(size > 0, "known_compute has no size");
    // known_compute is straight-line code ending in `ret`.
    let listing = s.dom().disassemble(start, 16)?;
    let body: Vec<u64> = listing
        .iter()
        .map(|(a, _, _)| *a)
        .take_while(|a| *a < start + size)
        .collect();
    ensure!(
        listing.iter().any(|(_, _, t)| t.starts_with("ret")),
        "{listing:?}"
    );
    let mut seen = vec![start];
    loop {
        let rip = s.step()?;
        if rip < start || rip >= start + size {
            break;
        }
        seen.push(rip);
        ensure!(seen.len() <= body.len(), "stepped past the body: {seen:x?}");
    }
    ensure!(seen == body, "steps {seen:x?} vs disassembly {body:x?}");
    // The caller stores the result next: the value is in rax.
    ensure!(s.regs()?.rax == 25, "rax after ret");
    s.expect_exit(25)
}

fn a_planted_bug_crashes_as_listed(s: &mut Session) -> Result<()> {
    // TLV-1 of guests/BUGS.md: record type 0xEE indexes a table unchecked.
    let input = [0xee, 0x01, 0xff];
    let addr = s.symbol("xenprobe_input")?;
    s.dom().write_virt(addr, &input)?;
    s.write_var("xenprobe_input_len", input.len() as u64)?;
    let console = s.expect_crash("panic")?;
    ensure!(console.contains("PANIC at "), "{console}");
    Ok(())
}

fn main() -> ExitCode {
    let bp = &[Need::Breakpoints];
    xenprobe::testing::main(vec![
        GuestTest::new("reads_the_known_buffer", reads_the_known_buffer),
        GuestTest::new(
            "exits_with_its_computed_result",
            exits_with_its_computed_result,
        ),
        GuestTest::new(
            "a_memory_write_changes_what_the_guest_does",
            a_memory_write_changes_what_the_guest_does,
        ),
        GuestTest::new(
            "a_register_write_changes_the_result",
            a_register_write_changes_the_result,
        )
        .needs(bp),
        GuestTest::new(
            "breaks_on_a_symbol_and_counts_hits",
            breaks_on_a_symbol_and_counts_hits,
        )
        .needs(bp),
        GuestTest::new(
            "single_steps_through_a_function_like_its_disassembly",
            single_steps_through_a_function_like_its_disassembly,
        )
        .needs(&[Need::Breakpoints, Need::Step]),
        GuestTest::new(
            "a_planted_bug_crashes_as_listed",
            a_planted_bug_crashes_as_listed,
        )
        .guest("tlv")
        .modes(&Mode::ALL),
    ])
}
