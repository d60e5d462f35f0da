//! Snapshot assertions (insta) and property tests (proptest) on live guests.
//!
//! Snapshot files are in tests/snapshots/, one per view and mode. A mismatch
//! or a missing snapshot fails the test (insta writes `.snap.new` next to it
//! for review with `cargo insta review`; `cargo xtask test` runs with
//! `INSTA_UPDATE=no`, so nothing is written or accepted there). To record
//! new snapshots on purpose:
//! `INSTA_UPDATE=always cargo test -p xenprobe-tests --test live_state`.

use std::process::ExitCode;

use anyhow::{anyhow, ensure, Result};
use proptest::prelude::*;
use xenprobe::testing::prop::{self, Falsified, Mutation, Reg};
use xenprobe::testing::{GuestTest, Mode, Need, Session};

/// `name_MODE`: one snapshot per mode where a view depends on the mode.
fn per_mode(s: &Session, name: &str) -> String {
    format!("{name}_{}", s.mode().name())
}

fn registers_at_known_compute(s: &mut Session) -> Result<()> {
    s.run_to("known_compute")?;
    insta::assert_yaml_snapshot!(per_mode(s, "regs_at_known_compute"), s.regs_view()?);
    Ok(())
}

fn the_known_buffer(s: &mut Session) -> Result<()> {
    // The same bytes in every mode: one snapshot for all three.
    insta::assert_yaml_snapshot!("known_buffer", s.memory_view("known_buffer", 64)?);
    Ok(())
}

fn console_after_exit(s: &mut Session) -> Result<()> {
    s.expect_exit(25)?;
    insta::assert_yaml_snapshot!(per_mode(s, "console_after_exit"), s.console_view());
    Ok(())
}

fn backtrace_in_known_tick(s: &mut Session) -> Result<()> {
    s.run_to("known_tick")?;
    let bt = s.backtrace()?;
    // insta's own redactions on top of the view's: offsets into functions
    // move whenever the guest is rebuilt; keep the snapshot to functions and lines.
    insta::assert_yaml_snapshot!(per_mode(s, "backtrace_in_known_tick"), bt, {
        "[].offset" => insta::dynamic_redaction(|v, _| {
            if v.as_str().is_some_and(|o| o.starts_with("0x")) { "[offset]".into() } else { v }
        }),
    });
    ensure!(bt.first().is_some_and(|f| f.function == "known_tick"));
    Ok(())
}

/// known_compute(a, b) = a * 7 + b for any a, b in rdi/rsi at its entry.
fn known_compute_is_linear(s: &mut Session) -> Result<()> {
    s.run_to("known_compute")?;
    let strategy = prop::regs(&[Reg::Rdi, Reg::Rsi], any::<u64>());
    let passed = s.check_property(prop::Config::cases(24), strategy, |s, m| {
        let a = m.reg_value(Reg::Rdi).unwrap_or(0);
        let b = m.reg_value(Reg::Rsi).unwrap_or(0);
        s.run_to("known_checkpoint")?;
        let got = s.read_var::<u64>("known_result")?;
        ensure!(
            got == a.wrapping_mul(7).wrapping_add(b),
            "known_compute({a:#x}, {b:#x}) = {got:#x}"
        );
        Ok(())
    })?;
    ensure!(passed.cases == 24);
    Ok(())
}

/// The tlv guest's input never crashes it: false (TLV-1 of guests/BUGS.md).
/// The check must find the planted bug, shrink it, and print a reproduction.
fn finds_and_shrinks_the_tlv_vendor_bug(s: &mut Session) -> Result<()> {
    s.run_to("xenprobe_fuzz_start")?;
    // Record types near the ones the parser knows, short lengths.
    let byte = prop_oneof![0u8..8, Just(0xeeu8), any::<u8>()];
    let no_crash = |s: &mut Session, _m: &Mutation| -> Result<()> {
        let crash = s.symbol("xenprobe_crash")?;
        let end = s.symbol("xenprobe_fuzz_end")?;
        let ids = [s.dom().add_breakpoint(crash)?, s.dom().add_breakpoint(end)?];
        let e = s.cont()?;
        match e {
            xenprobe::vmi::Event::Breakpoint { id, .. } if id == ids[1] => Ok(()),
            xenprobe::vmi::Event::Breakpoint { id, .. } if id == ids[0] => {
                Err(anyhow!("the guest crashed"))
            }
            other => Err(anyhow!("the guest stopped for {other:?}")),
        }
    };
    let err = match s.check_property(prop::Config::cases(64), prop::input(byte, 0..12), no_crash) {
        Ok(p) => anyhow::bail!(
            "{} cases and no crash: the planted bug was not found",
            p.cases
        ),
        Err(e) => e,
    };
    let f = err
        .downcast_ref::<Falsified>()
        .ok_or_else(|| anyhow!("not a falsified property: {err:#}"))?;
    println!("{f}");
    let minimal = f.minimal.input_bytes().unwrap_or_default();
    let first = f.first.input_bytes().unwrap_or_default();
    ensure!(
        minimal.contains(&0xee),
        "minimal input {minimal:02x?} has no vendor record"
    );
    ensure!(
        minimal.len() <= 4 && minimal.len() <= first.len(),
        "not shrunk: {first:02x?} -> {minimal:02x?}"
    );
    ensure!(
        f.reproduction
            .contains("s.run_to(\"xenprobe_fuzz_start\")?;")
            && f.reproduction.contains(&format!("{:?}", f.minimal)),
        "{}",
        f.reproduction
    );
    // The printed case reproduces the crash on its own.
    f.minimal.apply(s)?;
    ensure!(
        no_crash(s, &f.minimal).is_err(),
        "the minimal case does not crash"
    );
    Ok(())
}

/// Tests that start at `xenprobe_fuzz_start` (`.start_at`): pooled guests
/// are snapshotted there, with the boot's console output kept.
fn at_fuzz_start(s: &mut Session) -> Result<()> {
    ensure!(
        s.regs()?.rip == s.symbol("xenprobe_fuzz_start")?,
        "not at the start point"
    );
    ensure!(
        s.console().contains("xenprobe guest tlv"),
        "the boot's console output is missing: {:?}",
        s.console()
    );
    ensure!(!s.console().contains("EXIT") && !s.console().contains("CRASH"));
    Ok(())
}

fn starts_at_fuzz_start_and_crashes(s: &mut Session) -> Result<()> {
    at_fuzz_start(s)?;
    Mutation::new().input(&[0xee, 0x01, 0xff]).apply(s)?;
    let console = s.expect_crash("panic")?;
    ensure!(console.contains("PANIC at "), "{console}");
    Ok(())
}

fn starts_at_fuzz_start_and_exits(s: &mut Session) -> Result<()> {
    at_fuzz_start(s)?;
    s.expect_exit(0)
}

fn main() -> ExitCode {
    // insta finds the workspace with `cargo metadata`, which dom0 lacks.
    if std::env::var_os("INSTA_WORKSPACE_ROOT").is_none() {
        std::env::set_var("INSTA_WORKSPACE_ROOT", xenprobe_tests::root());
    }
    let bp = &[Need::Breakpoints];
    let snapshots = &[Need::Breakpoints, Need::LogDirty];
    xenprobe::testing::main(vec![
        GuestTest::new("registers_at_known_compute", registers_at_known_compute).needs(bp),
        GuestTest::new("the_known_buffer", the_known_buffer),
        GuestTest::new("console_after_exit", console_after_exit),
        GuestTest::new("backtrace_in_known_tick", backtrace_in_known_tick).needs(bp),
        GuestTest::new("known_compute_is_linear", known_compute_is_linear)
            .modes(&Mode::HVM_CONTAINERS)
            .needs(snapshots),
        GuestTest::new(
            "finds_and_shrinks_the_tlv_vendor_bug",
            finds_and_shrinks_the_tlv_vendor_bug,
        )
        .guest("tlv")
        .modes(&[Mode::Pvh])
        .needs(snapshots),
        GuestTest::new(
            "starts_at_fuzz_start_and_crashes",
            starts_at_fuzz_start_and_crashes,
        )
        .guest("tlv")
        .modes(&Mode::HVM_CONTAINERS)
        .start_at("xenprobe_fuzz_start")
        .needs(bp),
        GuestTest::new(
            "starts_at_fuzz_start_and_exits",
            starts_at_fuzz_start_and_exits,
        )
        .guest("tlv")
        .modes(&Mode::HVM_CONTAINERS)
        .start_at("xenprobe_fuzz_start")
        .needs(bp),
    ])
}
