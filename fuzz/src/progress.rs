//! A campaign's progress over time and its report files: `summary.md`,
//! `coverage.svg` (coverage over time), `coverage.csv` and `lcov.info`,
//! written into the campaign directory periodically and at the end, so a
//! campaign that is killed still leaves them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::feedback::load_crash;
use crate::lcov::LineMap;
use crate::plot::{self, Marker, Series};

/// One sample of the campaign's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the campaign started.
    pub t: f64,
    /// Executions so far.
    pub execs: u64,
    /// Blocks reached so far.
    pub covered: usize,
    /// Corpus entries.
    pub corpus: usize,
    /// Unique crash sites.
    pub crashes: usize,
    /// Unique hang sites.
    pub hangs: usize,
}

/// A crash or hang found by this run.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Seconds since the campaign started.
    pub t: f64,
    /// Crash kind.
    pub kind: String,
    /// Crash site.
    pub site: String,
    /// The saved input.
    pub file: PathBuf,
}

/// Counters over time and findings of one campaign run.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Samples, oldest first.
    pub samples: Vec<Sample>,
    /// Findings of this run, in order.
    pub findings: Vec<Finding>,
}

/// What the reports describe besides the progress.
#[derive(Debug, Clone)]
pub struct ReportInfo<'a> {
    /// Campaign title (target and guest).
    pub title: String,
    /// The guest image.
    pub image: &'a Path,
    /// Blocks instrumented.
    pub blocks: usize,
    /// Blocks reached (index = coverage map index).
    pub covered: &'a [bool],
    /// Source lines of the blocks, if the image has DWARF.
    pub lines: Option<&'a LineMap>,
    /// Corpus entries resumed from the campaign directory.
    pub resumed: usize,
    /// Guest re-creations after unexpected shutdowns.
    pub restarts: u32,
    /// Runs checked twice for determinism, and those that repeated.
    pub stability: (u64, u64),
    /// Time in restore, input writes, guest runs (resume, waits).
    pub timings: crate::session::RunTimings,
    /// True for the final report (false: written while running).
    pub finished: bool,
}

/// A crash or hang file saved in the campaign directory.
#[derive(Debug, Clone)]
struct Saved {
    kind: String,
    site: String,
    file: String,
    input_len: usize,
}

fn saved_in(dir: &Path) -> Vec<Saved> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<Saved> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "input")
                && !p.to_string_lossy().ends_with(".min.input")
        })
        .filter_map(|p| {
            let c = load_crash(&p).ok()?;
            Some(Saved {
                kind: c.report.kind,
                site: c.report.site,
                file: p.file_name()?.to_string_lossy().into_owned(),
                input_len: c.input_len,
            })
        })
        .collect();
    v.sort_by(|a, b| (&a.kind, &a.site).cmp(&(&b.kind, &b.site)));
    v
}

/// The summary as Markdown.
pub fn render_summary(dir: &Path, info: &ReportInfo<'_>, p: &Progress) -> String {
    let last = p.samples.last().copied().unwrap_or(Sample {
        t: 0.0,
        execs: 0,
        covered: 0,
        corpus: 0,
        crashes: 0,
        hangs: 0,
    });
    let covered = info.covered.iter().filter(|c| **c).count();
    let pct = |a: usize, b: usize| 100.0 * a as f64 / (b.max(1)) as f64;
    let mut o = String::new();
    let _ = writeln!(o, "# Fuzz campaign: {}\n", info.title);
    let _ = writeln!(
        o,
        "{}\n",
        if info.finished {
            "Final report."
        } else {
            "Interim report (the campaign is running or was killed)."
        }
    );
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| image | `{}` |", info.image.display());
    let _ = writeln!(o, "| duration | {:.1} s |", last.t);
    let _ = writeln!(o, "| executions | {} |", last.execs);
    let _ = writeln!(
        o,
        "| execs/s | {:.1} |",
        last.execs as f64 / last.t.max(1e-3)
    );
    let _ = writeln!(
        o,
        "| coverage | {covered}/{} blocks ({:.1} %) |",
        info.blocks,
        pct(covered, info.blocks)
    );
    if let Some(lines) = info.lines {
        let text = lines.render("", |i| info.covered.get(i).copied().unwrap_or(false));
        let lh: usize = text
            .lines()
            .filter_map(|l| l.strip_prefix("LH:"))
            .filter_map(|n| n.parse::<usize>().ok())
            .sum();
        let _ = writeln!(
            o,
            "| source lines | {lh}/{} ({:.1} %, lcov.info) |",
            lines.lines(),
            pct(lh, lines.lines())
        );
    }
    let _ = writeln!(
        o,
        "| corpus | {} entries ({} resumed) |",
        last.corpus, info.resumed
    );
    let _ = writeln!(o, "| unique crash sites | {} |", last.crashes);
    let _ = writeln!(o, "| unique hang sites | {} |", last.hangs);
    let _ = writeln!(o, "| guest restarts | {} |", info.restarts);
    let _ = writeln!(
        o,
        "| stability | {} |",
        crate::campaign::stability_text(info.stability)
    );
    let t = info.timings;
    let _ = writeln!(
        o,
        "| time split | restore {:.1} s (log-dirty calls {:.1} s), input writes {:.1} s, guest runs {:.1} s (resume {:.1} s, waits {:.1} s of which the guest ran {:.1} s) |",
        t.restore.as_secs_f64(),
        t.log_dirty.as_secs_f64(),
        t.input.as_secs_f64(),
        t.run.as_secs_f64(),
        t.resume.as_secs_f64(),
        t.wait.as_secs_f64(),
        t.guest.as_secs_f64()
    );
    for (what, sub) in [("Crashes", "crashes"), ("Hangs", "hangs")] {
        let saved = saved_in(&dir.join(sub));
        let _ = writeln!(o, "\n## {what} ({} sites)\n", saved.len());
        if saved.is_empty() {
            let _ = writeln!(o, "none");
            continue;
        }
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &saved {
            *by_kind.entry(&s.kind).or_default() += 1;
        }
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(o, "By kind: {}\n", kinds.join(", "));
        let _ = writeln!(
            o,
            "| kind | site | found after | input | file |\n|---|---|---|---|---|"
        );
        for s in &saved {
            let found = p
                .findings
                .iter()
                .find(|f| f.site == s.site)
                .map_or("earlier run".to_string(), |f| format!("{:.1} s", f.t));
            let _ = writeln!(
                o,
                "| {} | `{}` | {} | {} B | {}/{} |",
                s.kind, s.site, found, s.input_len, sub, s.file
            );
        }
    }
    o
}

/// The coverage-over-time chart.
pub fn render_plot(info: &ReportInfo<'_>, p: &Progress) -> String {
    let series = vec![
        Series {
            label: format!("blocks covered (of {})", info.blocks),
            colour: "#1f77b4".into(),
            points: p.samples.iter().map(|s| (s.t, s.covered as f64)).collect(),
        },
        Series {
            label: "corpus entries".into(),
            colour: "#2ca02c".into(),
            points: p.samples.iter().map(|s| (s.t, s.corpus as f64)).collect(),
        },
    ];
    let markers: Vec<Marker> = p
        .findings
        .iter()
        .map(|f| Marker {
            x: f.t,
            label: f.kind.clone(),
        })
        .collect();
    plot::line_chart(
        &format!("Coverage over time: {}", info.title),
        "seconds",
        "blocks / entries",
        &series,
        &markers,
    )
}

fn csv(p: &Progress) -> String {
    let mut o = String::from("seconds,execs,covered,corpus,crash_sites,hang_sites\n");
    for s in &p.samples {
        let _ = writeln!(
            o,
            "{:.2},{},{},{},{},{}",
            s.t, s.execs, s.covered, s.corpus, s.crashes, s.hangs
        );
    }
    o
}

/// Writes `path` through a temporary file and a rename: a campaign killed
/// while writing leaves the previous complete file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Writes `summary.md`, `coverage.svg`, `coverage.csv` and (with DWARF)
/// `lcov.info` into the campaign directory.
pub fn write_reports(dir: &Path, info: &ReportInfo<'_>, p: &Progress) -> std::io::Result<()> {
    write_atomic(&dir.join("summary.md"), &render_summary(dir, info, p))?;
    write_atomic(&dir.join("coverage.svg"), &render_plot(info, p))?;
    write_atomic(&dir.join("coverage.csv"), &csv(p))?;
    if let Some(lines) = info.lines {
        let text = lines.render(
            &info
                .title
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            |i| info.covered.get(i).copied().unwrap_or(false),
        );
        write_atomic(&dir.join("lcov.info"), &text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::save_crash;
    use crate::report::CrashReport;

    #[test]
    fn summary_lists_counts_and_crashes_by_kind() {
        let dir = std::env::temp_dir().join(format!("xenprobe-progress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = CrashReport {
            kind: "panic".into(),
            site: "panic@a.rs:1:2".into(),
            rip: 1,
            fault_address: None,
            message: String::new(),
            backtrace: Vec::new(),
        };
        let file = save_crash(&dir.join("crashes"), &r, b"\xee\x01").expect("save");
        let p = Progress {
            samples: vec![
                Sample {
                    t: 1.0,
                    execs: 100,
                    covered: 3,
                    corpus: 2,
                    crashes: 0,
                    hangs: 0,
                },
                Sample {
                    t: 2.0,
                    execs: 300,
                    covered: 5,
                    corpus: 4,
                    crashes: 1,
                    hangs: 0,
                },
            ],
            findings: vec![Finding {
                t: 1.5,
                kind: "panic".into(),
                site: r.site.clone(),
                file,
            }],
        };
        let covered = [true, true, false, true, true, true, false, false];
        let info = ReportInfo {
            title: "tlv-pvh".into(),
            image: Path::new("/x/tlv-pvh"),
            blocks: 8,
            covered: &covered,
            lines: None,
            resumed: 1,
            restarts: 0,
            stability: (40, 39),
            timings: Default::default(),
            finished: true,
        };
        write_reports(&dir, &info, &p).expect("write");
        let s = std::fs::read_to_string(dir.join("summary.md")).expect("summary");
        assert!(s.contains("| executions | 300 |"), "{s}");
        assert!(s.contains("| stability | 97.5% (40 checked) |"), "{s}");
        assert!(s.contains("| execs/s | 150.0 |"), "{s}");
        assert!(s.contains("| coverage | 5/8 blocks (62.5 %) |"), "{s}");
        assert!(s.contains("By kind: panic: 1"), "{s}");
        assert!(
            s.contains("| panic | `panic@a.rs:1:2` | 1.5 s | 2 B |"),
            "{s}"
        );
        assert!(s.contains("## Hangs (0 sites)"), "{s}");
        let svg = std::fs::read_to_string(dir.join("coverage.svg")).expect("svg");
        assert_eq!(svg.matches("class=\"marker\"").count(), 1);
        let csv = std::fs::read_to_string(dir.join("coverage.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 3);
        assert!(!dir.join("lcov.info").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
