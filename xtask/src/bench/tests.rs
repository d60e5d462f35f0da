//! `cargo xtask bench tests`: time per guest test with snapshot isolation
//! against a fresh boot per test, both measured in this run.
//!
//! Runs the `live_bench` test binary (N small tests on one guest) with the
//! runner's snapshot isolation, then with `XENPROBE_ISOLATION=fresh`, for two
//! test bodies: writing guest memory only, and also running the guest to a
//! breakpoint.
//! The runner appends each test's whole time (guest, body, clean-up) to a
//! file (`XENPROBE_TEST_TIMES`). The first isolated test pays the boot and
//! the snapshot; the figure compared is the median of the restored tests
//! against the median of the booted ones.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::stats;
use crate::lab::xen::Flavour;
use crate::ws;

pub fn run(tests: usize, flavour: Flavour) -> Result<i32> {
    let dir = ws::root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut lines = vec![];
    for (body, what) in [
        ("memory", "tests that write guest memory"),
        ("run", "tests that also run the guest to a breakpoint"),
    ] {
        let isolated = measure(&dir, tests, flavour, body, false)?;
        let fresh = measure(&dir, tests, flavour, body, true)?;
        lines.push(compare(what, &isolated, &fresh)?);
    }
    println!(
        "guest tests, known guest (PVH), {} hypervisor, {tests} tests a run:",
        flavour.name()
    );
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}

/// Runs `live_bench` once; returns each test's time and how it got its guest.
fn measure(
    dir: &Path,
    tests: usize,
    flavour: Flavour,
    body: &str,
    fresh: bool,
) -> Result<Vec<(f64, String)>> {
    let isolation = if fresh { "fresh" } else { "snapshot" };
    let file = dir.join(format!("tests-{body}-{isolation}.tsv"));
    let _ = std::fs::remove_file(&file);
    eprintln!("bench: {tests} tests ({body}), isolation: {isolation}");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(ws::root())
        .args([
            "test",
            "-p",
            "xenprobe-tests",
            "--test",
            "live_bench",
            "--",
            "--test-threads",
            "1",
        ])
        .env("XENPROBE_XEN", flavour.name())
        .env("XENPROBE_BENCH_TESTS", tests.to_string())
        .env("XENPROBE_BENCH_BODY", body)
        .env("XENPROBE_TEST_TIMES", &file);
    if fresh {
        cmd.env("XENPROBE_ISOLATION", "fresh");
    } else {
        cmd.env_remove("XENPROBE_ISOLATION");
    }
    let st = cmd.status().context("running cargo test")?;
    if !st.success() {
        bail!("the live_bench tests failed");
    }
    read_times(&file)
}

/// The report lines for one kind of test.
fn compare(what: &str, isolated: &[(f64, String)], fresh: &[(f64, String)]) -> Result<String> {
    let of = |v: &[(f64, String)], how: &str| -> Vec<f64> {
        v.iter()
            .filter(|(_, h)| h == how)
            .map(|(t, _)| *t)
            .collect()
    };
    let restored = of(isolated, "restored");
    let first = of(isolated, "booted");
    let booted = of(fresh, "booted");
    if restored.is_empty() || booted.is_empty() {
        bail!(
            "no restored tests ({} isolated, {} fresh timings): is snapshot isolation available?",
            isolated.len(),
            fresh.len()
        );
    }
    let (r, b) = (stats(restored.clone()), stats(booted.clone()));
    let ratio = b.median / r.median;
    Ok(format!(
        "  {what}:\n    fresh boot per test        {:>8.1} ms (median of {}, min {:.1}, max {:.1})\n    snapshot restore per test  {:>8.1} ms (median of {}, min {:.1}, max {:.1})\n    first test (boot + snapshot) {:.1} ms\n    speed-up {ratio:.1}x per test (target >= 20x: {})",
        b.median * 1e3,
        booted.len(),
        b.min * 1e3,
        b.max * 1e3,
        r.median * 1e3,
        restored.len(),
        r.min * 1e3,
        r.max * 1e3,
        first.first().copied().unwrap_or(0.0) * 1e3,
        if ratio >= 20.0 { "met" } else { "not met" }
    ))
}

/// `(seconds, restored|booted)` per test from a `XENPROBE_TEST_TIMES` file.
fn read_times(path: &Path) -> Result<Vec<(f64, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (no test ran?)", path.display()))?;
    Ok(parse_times(&text))
}

fn parse_times(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _name = f.next()?;
            let secs = f.next()?.parse().ok()?;
            Some((secs, f.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn times_file_lines() {
        let t = parse_times("a::pvh\t1.5\tbooted\nb::pvh\t0.02\trestored\nbad line\n");
        assert_eq!(
            t,
            vec![(1.5, "booted".to_string()), (0.02, "restored".to_string())]
        );
    }
}
