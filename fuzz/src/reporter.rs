//! What a campaign shows while it runs: its progress line, the findings
//! it keeps for the summary, the report files (`summary.md`, `coverage.svg`,
//! `lcov.info`) rewritten every [`REPORT_EVERY`], and when it should stop
//! (time, Ctrl-C or SIGTERM, `stop_on`, `stop_when_found`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use libafl::corpus::Corpus;
use libafl::state::{HasCorpus, HasExecutions};
use xenprobe::xen::Stamp;

use crate::campaign::{stability_text, CampaignOptions, State};
use crate::feedback::{load_crash, OutcomeFeedback};
use crate::lcov::LineMap;
use crate::progress::{write_reports, Finding, Progress, ReportInfo, Sample};
use crate::session::Session;

/// Whether every `KIND` / `KIND@SITE` of `wanted` (non-empty) is among `findings`.
fn all_found(wanted: &[String], findings: &[Finding]) -> bool {
    !wanted.is_empty()
        && wanted.iter().all(|w| {
            let (kind, site) = w.split_once('@').unwrap_or((w, ""));
            findings
                .iter()
                .any(|f| f.kind == kind && f.site.contains(site))
        })
}

/// How often the report files are rewritten while a campaign runs.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Source lines of the instrumented blocks (None without DWARF or when the
/// image's blocks differ from the session's).
fn line_map(image: &Path, cover: &[String], blocks: usize) -> Option<LineMap> {
    let t = Instant::now();
    let (funcs, bl) = match crate::blocks::blocks_in_image(image, cover) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!("no lcov report: {e}");
            return None;
        }
    };
    if bl.len() != blocks {
        tracing::warn!(
            "no lcov report: {} blocks in the image, {blocks} instrumented",
            bl.len()
        );
        return None;
    }
    match LineMap::build(image, &funcs, &bl) {
        Ok(m) => {
            tracing::info!(took = ?t.elapsed(), lines = m.lines(), "source lines of the blocks");
            Some(m)
        }
        Err(e) => {
            tracing::warn!("no lcov report: {e}");
            None
        }
    }
}

/// [`line_map`], cached in `cache` (keyed by the image's bytes and the
/// cover patterns): a resumed campaign has it at once.
fn cached_line_map(cache: &Path, image: &Path, cover: &[String], blocks: usize) -> Option<LineMap> {
    let key = {
        let mut k = std::fs::read(image).ok()?;
        k.extend(cover.join("\n").bytes());
        format!("{:016x}-{blocks}", crate::report::fnv1a(&k))
    };
    if let Ok(text) = std::fs::read_to_string(cache) {
        if let Ok((k, m)) = serde_json::from_str::<(String, LineMap)>(&text) {
            if k == key {
                return Some(m);
            }
        }
    }
    let m = line_map(image, cover, blocks)?;
    if let Ok(text) = serde_json::to_string(&(&key, &m)) {
        let _ = std::fs::write(cache, text);
    }
    Some(m)
}

/// The source lines of a kernel session's blocks (module DWARF).
fn kernel_line_map(session: &Session) -> Option<LineMap> {
    let syms = session.domain()?.symbols().ok()?;
    Some(LineMap::build_with(
        session.functions(),
        &session.blocks,
        |a| syms.line(a),
    ))
}

/// The campaign's title in reports: the campaign directory's name.
fn title(opts: &CampaignOptions) -> String {
    opts.dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| opts.target.image.display().to_string())
}

/// The campaign's clock, findings and reports (see the module documentation).
pub(crate) struct Reporter<'a> {
    opts: &'a CampaignOptions,
    report_dir: &'a Path,
    blocks: usize,
    resumed: usize,
    start: Instant,
    /// The loop's checks read the TSC: a clock read is a system call in a
    /// PV dom0, about 60 us in the lab (fuzz_one makes 1-128 runs).
    tsc_start: Stamp,
    last_sample: Option<Stamp>,
    last_report: Option<Stamp>,
    /// Crash files of the objective already taken into `found`.
    seen_files: usize,
    found: Vec<(PathBuf, Duration)>,
    progress: Progress,
    lines: Option<LineMap>,
    lines_rx: Receiver<Option<LineMap>>,
}

impl<'a> Reporter<'a> {
    /// Starts the clock, and the source-line map aside: the DWARF lookups
    /// take seconds in the emulated dom0, the reports get `lcov.info` once
    /// they are ready.
    pub(crate) fn new(
        opts: &'a CampaignOptions,
        report_dir: &'a Path,
        blocks: usize,
        resumed: usize,
        session: &Session,
    ) -> Self {
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        if session.is_kernel() {
            // A kernel's lines come from the module symbols the session holds.
            let _ = lines_tx.send(kernel_line_map(session));
        } else {
            let (image, cover) = (opts.target.image.clone(), opts.target.cover.clone());
            let cache = opts.dir.join(".lines.json");
            std::thread::spawn(move || {
                let _ = lines_tx.send(cached_line_map(&cache, &image, &cover, blocks));
            });
        }
        Self {
            opts,
            report_dir,
            blocks,
            resumed,
            start: Instant::now(),
            tsc_start: Stamp::now(),
            last_sample: None,
            last_report: None,
            seen_files: 0,
            found: Vec::new(),
            progress: Progress::default(),
            lines: None,
            lines_rx,
        }
    }

    /// One turn of the campaign's loop, before its next fuzzing iteration:
    /// takes in new crash files, samples and prints the progress once a
    /// second, rewrites the reports when due. True when the campaign ends
    /// (the last reports are then written).
    pub(crate) fn turn(&mut self, state: &State, session: &Session, obj: &OutcomeFeedback) -> bool {
        let opts = self.opts;
        let done = self.tsc_start.elapsed() >= opts.time || xenprobe::vmi::cleanup::interrupted();
        let mut stop = false;
        for f in &obj.new_files[self.seen_files..] {
            self.found.push((f.clone(), self.start.elapsed()));
            if let Ok(c) = load_crash(f) {
                stop |= opts.stop_on.contains(&c.report.kind);
                self.progress.findings.push(Finding {
                    t: self.start.elapsed().as_secs_f64(),
                    kind: c.report.kind,
                    site: c.report.site,
                    file: f.clone(),
                });
            }
        }
        self.seen_files = obj.new_files.len();
        stop |= all_found(&opts.stop_when_found, &self.progress.findings);
        let finished = done || stop;
        if finished
            || self
                .last_sample
                .is_none_or(|l| l.elapsed() >= Duration::from_secs(1))
        {
            self.last_sample = Some(Stamp::now());
            self.sample(state, session, obj);
        }
        if self.lines.is_none() {
            self.lines = if finished {
                // The last report waits for them (bounded; briefly after
                // Ctrl-C or SIGTERM, which leave the guest's restore 20 s).
                let wait = if xenprobe::vmi::cleanup::interrupted() {
                    Duration::from_secs(5)
                } else {
                    Duration::from_secs(30)
                };
                self.lines_rx.recv_timeout(wait).ok().flatten()
            } else {
                self.lines_rx.try_recv().ok().flatten()
            };
        }
        if finished || self.last_report.is_none_or(|l| l.elapsed() >= REPORT_EVERY) {
            self.last_report = Some(Stamp::now());
            let info = ReportInfo {
                title: title(opts),
                image: &opts.target.image,
                blocks: self.blocks,
                covered: &obj.covered,
                lines: self.lines.as_ref(),
                resumed: self.resumed,
                restarts: session.restarts(),
                stability: session.stability(),
                timings: session.timings,
                finished,
            };
            if let Err(e) = write_reports(self.report_dir, &info, &self.progress) {
                tracing::warn!(
                    "writing the reports into {}: {e}",
                    self.report_dir.display()
                );
            }
        }
        finished
    }

    /// Records a progress sample and prints the progress line.
    fn sample(&mut self, state: &State, session: &Session, obj: &OutcomeFeedback) {
        let t = self.tsc_start.elapsed().as_secs_f64();
        let covered = session.covered();
        let sample = Sample {
            t,
            execs: *state.executions(),
            covered,
            corpus: state.corpus().count(),
            crashes: obj.crash_sites,
            hangs: obj.hang_sites,
        };
        self.progress.samples.push(sample);
        if self.opts.progress {
            eprint!(
                "\r[{:>5.0}s] execs {} ({:.0}/s)  coverage {}/{}  corpus {}  crashes {}  hangs {}  stability {}  ",
                t,
                sample.execs,
                sample.execs as f64 / t.max(1e-3),
                covered,
                self.blocks,
                sample.corpus,
                sample.crashes,
                sample.hangs,
                stability_text(session.stability())
            );
            let _ = std::io::stderr().flush();
        }
    }

    /// The campaign's start, and the crash files it wrote with when.
    pub(crate) fn finish(self) -> (Instant, Vec<(PathBuf, Duration)>) {
        (self.start, self.found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_when_every_wanted_crash_is_found() {
        let f = |kind: &str, site: &str| Finding {
            t: 1.0,
            kind: kind.into(),
            site: site.into(),
            file: PathBuf::new(),
        };
        let found = vec![
            f("panic", "panic@tlv.rs:1:1"),
            f("hang", "hang@xenprobe_fuzz_end"),
        ];
        let want = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(all_found(&want(&["panic"]), &found));
        assert!(all_found(&want(&["panic@tlv.rs", "hang"]), &found));
        assert!(
            !all_found(&want(&["hang@bytecode"]), &found),
            "site must match"
        );
        assert!(!all_found(&want(&["panic", "page-fault"]), &found));
        assert!(!all_found(&[], &found), "nothing wanted: never stops");
    }
}
