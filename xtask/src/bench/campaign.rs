//! The campaign section of `cargo xtask bench fuzz`: execs/s with one guest
//! and with two (`--jobs 2`, ratio against one measured in the same run),
//! and the median time to find each planted bug of `guests/BUGS.md` up to
//! depth 3 over a few seeded runs: with raw inputs, and again with a
//! target's structured input format (`--input-format`, `STRUCTURED`) as
//! extra rows such as "IMG-3 (ximg)".
//!
//! Each measurement is a real campaign of `xenprobe-fuzz` in the lab's dom0
//! (PVH guests); the numbers are read back from the campaign directories'
//! `summary.md` (target/bench-fuzz/).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{deps, guests, lab, ws};

/// Planted bugs up to depth 3: id, target, the crash kind it shows on PVH,
/// and a substring its crash site must hold (hangs: the interpreter loop,
/// not a slow run timed out elsewhere).
const BUGS: &[(&str, &str, &str, &str)] = &[
    ("TLV-1", "tlv", "panic", ""),
    ("TLV-2", "tlv", "page-fault", ""),
    ("TLV-3", "tlv", "divide-error", ""),
    ("BC-1", "bytecode", "invalid-opcode", ""),
    ("BC-2", "bytecode", "divide-error", ""),
    ("BC-3", "bytecode", "hang", "bytecode"),
    ("IMG-1", "imghdr", "page-fault", ""),
    ("IMG-2", "imghdr", "panic", ""),
    ("IMG-3", "imghdr", "general-protection", ""),
];

/// Targets whose time-to-find campaigns also run with a structured input
/// format (fuzz/src/structured.rs): target, format.
const STRUCTURED: &[(&str, &str)] = &[("tlv", "tlv-records"), ("imghdr", "ximg")];

/// The input formats of `target`'s time-to-find campaigns: raw (None), then
/// its structured ones.
fn formats_of(target: &str) -> Vec<Option<&'static str>> {
    std::iter::once(None)
        .chain(
            STRUCTURED
                .iter()
                .filter(|s| s.0 == target)
                .map(|s| Some(s.1)),
        )
        .collect()
}

/// A value in a `summary.md` table row `| key | value |`.
fn field(summary: &str, key: &str) -> Option<String> {
    let pat = format!("| {key} | ");
    summary
        .lines()
        .find_map(|l| l.strip_prefix(&pat))
        .map(|v| v.trim_end_matches(" |").to_string())
}

/// Execs/s of a finished campaign directory (one job or `--jobs`).
fn execs_per_sec(dir: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(dir.join("summary.md")).ok()?;
    if let Some(v) = field(&s, "execs/s") {
        return v.parse().ok();
    }
    // --jobs: "Total: N executions, R execs/s (...)".
    let total = s.lines().find_map(|l| l.strip_prefix("Total: "))?;
    let rate = total.split(", ").nth(1)?.split(' ').next()?;
    rate.parse().ok()
}

/// Seconds after which each crash kind was first found (summary.md's
/// crash and hang tables: `| kind | `site` | 12.3 s | ...`).
fn found_after(dir: &Path, kind: &str, site: &str) -> Option<f64> {
    let s = std::fs::read_to_string(dir.join("summary.md")).ok()?;
    s.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.len() > 3 && cols[1] == kind && cols[2].contains(site))
                .then(|| cols[3].strip_suffix(" s")?.parse::<f64>().ok())
                .flatten()
        })
        .reduce(f64::min)
}

/// The planted bugs of `target` as `--stop-when-found` entries.
fn bug_stops(target: &str) -> Vec<String> {
    BUGS.iter()
        .filter(|b| b.1 == target)
        .map(|&(_, _, kind, site)| match site {
            "" => kind.to_string(),
            s => format!("{kind}@{s}"),
        })
        .collect()
}

/// A campaign of `secs` against `target` (PVH) in `dir`; `extra` are more
/// fuzzer arguments (`--jobs 2`, `--input-format F`).
fn campaign(
    bin: &Path,
    target: &str,
    dir: &Path,
    secs: u64,
    seed: u64,
    stop_when_found: &[String],
    extra: &[&str],
) -> Result<i32> {
    let _ = std::fs::remove_dir_all(dir);
    let mut argv: Vec<String> = vec![bin.display().to_string()];
    argv.extend(crate::fuzz::sample_args(target, "pvh"));
    argv.extend([
        "--dir".into(),
        dir.display().to_string(),
        "--time".into(),
        format!("{secs}s"),
        "--rng-seed".into(),
        seed.to_string(),
    ]);
    argv.extend(extra.iter().map(|a| a.to_string()));
    if !stop_when_found.is_empty() {
        argv.extend(["--stop-when-found".into(), stop_when_found.join(",")]);
    }
    lab::run_in_dom0(&argv)
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}{unit}"))
}

/// Runs the campaign benchmark: `rate_secs`-long campaigns with one and two
/// guests per target, then `runs` seeded campaigns of `find_secs` each per
/// target for the time-to-find table.
pub fn run(targets: &[String], runs: usize, rate_secs: u64, find_secs: u64) -> Result<()> {
    deps::ensure(deps::Need::Lab)?;
    guests::build()?;
    let bin = crate::fuzz::build_fuzzer(true)?;
    let root: PathBuf = ws::target_dir().join("bench-fuzz");
    std::fs::create_dir_all(&root).context("creating target/bench-fuzz")?;

    println!("\n## execs/s, one guest vs two (--jobs 2), {rate_secs} s campaigns\n");
    println!("| target | 1 guest | 2 guests | ratio (target >= 1.6) |");
    println!("|---|---|---|---|");
    for t in targets {
        let one = root.join(format!("{t}-rate-1"));
        let two = root.join(format!("{t}-rate-2"));
        campaign(&bin, t, &one, rate_secs, 1, &[], &[])?;
        campaign(&bin, t, &two, rate_secs, 1, &[], &["--jobs", "2"])?;
        let (r1, r2) = (execs_per_sec(&one), execs_per_sec(&two));
        let ratio = match (r1, r2) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        println!(
            "| {t} | {} | {} | {} |",
            fmt_opt(r1, ""),
            fmt_opt(r2, ""),
            fmt_opt(ratio, "x")
        );
    }

    println!(
        "\n## time to find each planted bug up to depth 3 (median of {runs} seeded runs, {find_secs} s budget; target <= 600 s)\n"
    );
    // One row per bug and input format: label, kind, time of each run.
    let mut rows: Vec<(String, &str, Vec<Option<f64>>)> = Vec::new();
    for t in targets {
        let bugs: Vec<_> = BUGS.iter().filter(|b| b.1 == t).collect();
        for format in formats_of(t) {
            let mut times = vec![Vec::new(); bugs.len()];
            for r in 0..runs {
                let dir = root.join(match format {
                    None => format!("{t}-find-{r}"),
                    Some(f) => format!("{t}-{f}-find-{r}"),
                });
                // Each run stops once all of the target's bugs are found.
                let extra = format.map_or(vec![], |f| vec!["--input-format", f]);
                let seed = 100 + r as u64;
                campaign(&bin, t, &dir, find_secs, seed, &bug_stops(t), &extra)?;
                for (i, (_, _, kind, site)) in bugs.iter().enumerate() {
                    times[i].push(found_after(&dir, kind, site));
                }
            }
            for (&&(id, _, kind, _), times) in bugs.iter().zip(times) {
                let label = match format {
                    None => id.to_string(),
                    Some(f) => format!("{id} ({f})"),
                };
                rows.push((label, kind, times));
            }
        }
    }
    println!("| bug | kind | found in | median | min | max |");
    println!("|---|---|---|---|---|---|");
    for (id, kind, times) in &rows {
        let found: Vec<f64> = times.iter().flatten().copied().collect();
        let n = times.len();
        let (med, min, max) = if found.len() * 2 > n {
            // Median over all runs, a miss counting as "later than the budget".
            let mut all: Vec<f64> = times.iter().map(|v| v.unwrap_or(f64::INFINITY)).collect();
            all.sort_by(f64::total_cmp);
            let s = super::stats(found.clone());
            (Some(all[n / 2]), Some(s.min), Some(s.max))
        } else if found.is_empty() {
            (None, None, None)
        } else {
            let s = super::stats(found.clone());
            (None, Some(s.min), Some(s.max))
        };
        println!(
            "| {id} | {kind} | {}/{n} runs | {} | {} | {} |",
            found.len(),
            med.filter(|m| m.is_finite())
                .map_or(format!("> {find_secs} s"), |m| format!("{m:.1} s")),
            fmt_opt(min, " s"),
            fmt_opt(max, " s")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_campaign_summaries() {
        let d = std::env::temp_dir().join(format!("xtask-bench-campaign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        std::fs::write(
            d.join("summary.md"),
            "| execs/s | 123.4 |\n| panic | `panic@a.rs:1:2` | 15.0 s | 2 B | crashes/x |\n| panic | `panic@b.rs:1:2` | 9.5 s | 2 B | crashes/y |\n| hang | `hang@f` | earlier run | 2 B | hangs/z |\n",
        )
        .expect("write");
        assert_eq!(execs_per_sec(&d), Some(123.4));
        assert_eq!(found_after(&d, "panic", ""), Some(9.5));
        assert_eq!(found_after(&d, "panic", "a.rs"), Some(15.0));
        assert_eq!(found_after(&d, "hang", ""), None);
        std::fs::write(
            d.join("summary.md"),
            "# Parallel\n\nTotal: 900 executions, 45.5 execs/s (sum of the jobs' rates).\n",
        )
        .expect("write");
        assert_eq!(execs_per_sec(&d), Some(45.5));
        assert_eq!(
            bug_stops("bytecode"),
            vec!["invalid-opcode", "divide-error", "hang@bytecode"]
        );
        assert_eq!(formats_of("imghdr"), vec![None, Some("ximg")]);
        assert_eq!(formats_of("tlv"), vec![None, Some("tlv-records")]);
        assert_eq!(formats_of("bytecode"), vec![None]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
