//! `--minimize`: shrinks a crash input while it still crashes at the same
//! crash site, and saves it next to the original as `NAME.min.input` (with
//! its report, `NAME.min.json`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::confirm::run_confirmed;
use crate::feedback::{load_crash, SavedCrash};
use crate::report::{CrashReport, Outcome};
use crate::session::{Session, TargetSpec};

/// Limits of a minimisation.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most guest runs.
    pub runs: usize,
    /// Wall-clock limit.
    pub time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            runs: 5000,
            time: Duration::from_secs(300),
        }
    }
}

/// What a minimisation did.
#[derive(Debug, Clone)]
pub struct Minimized {
    /// Size of the original input.
    pub original: usize,
    /// The smallest input found that crashes at the same site.
    pub input: Vec<u8>,
    /// Its crash report.
    pub report: CrashReport,
    /// Guest runs made.
    pub runs: usize,
    /// Where the minimised input was saved.
    pub saved: PathBuf,
}

/// Removes chunks of `input` (halves, quarters, ... single bytes) as long as
/// `keeps(candidate)` says the candidate still shows the behaviour; stops
/// early when `keeps` returns `None` (budget spent). Returns the smallest
/// input kept.
pub fn shrink(
    mut input: Vec<u8>,
    mut keeps: impl FnMut(&[u8]) -> Result<Option<bool>>,
) -> Result<Vec<u8>> {
    let mut chunk = input.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < input.len() {
            let end = (i + chunk).min(input.len());
            let mut cand = Vec::with_capacity(input.len() - (end - i));
            cand.extend_from_slice(&input[..i]);
            cand.extend_from_slice(&input[end..]);
            match keeps(&cand)? {
                None => return Ok(input),
                Some(true) => input = cand,
                Some(false) => i += chunk,
            }
        }
        if chunk == 1 {
            return Ok(input);
        }
        chunk = chunk.div_ceil(2);
    }
}

fn same_site(outcome: &Outcome, site: &str) -> Option<CrashReport> {
    match outcome {
        Outcome::Crash(r) | Outcome::Hang(r) if r.site == site => Some(r.clone()),
        _ => None,
    }
}

/// The path `NAME.min.input` next to `NAME.input`.
pub fn min_path(input_path: &Path) -> PathBuf {
    let stem = input_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "crash".into());
    input_path.with_file_name(format!("{stem}.min.input"))
}

/// Replays the crash at `input_path`, shrinks it within `budget` while it
/// crashes at the same site, and saves `NAME.min.input` and `NAME.min.json`.
pub fn minimize(target: &TargetSpec, input_path: &Path, budget: Budget) -> Result<Minimized> {
    xenprobe::vmi::cleanup::restore_on_ctrl_c().context("installing the Ctrl-C handler")?;
    let input =
        std::fs::read(input_path).with_context(|| format!("reading {}", input_path.display()))?;
    let mut session = Session::start(target.clone()).context("starting the guest")?;
    let guest_len = crate::structured::guest_bytes(target.input_format.as_ref(), &input).len();
    let result = shrink_in(&mut session, input_path, input, guest_len, budget);
    let finish = session.finish();
    let m = result?;
    finish.context("leaving the guest clean")?;
    Ok(m)
}

fn shrink_in(
    session: &mut Session,
    input_path: &Path,
    input: Vec<u8>,
    guest_len: usize,
    budget: Budget,
) -> Result<Minimized> {
    if guest_len > session.input_capacity() {
        bail!(
            "{} makes {guest_len} bytes of guest input; the guest's buffer holds {}",
            input_path.display(),
            session.input_capacity()
        );
    }
    let first = run_confirmed(session, &input, crate::campaign::HANG_RETRIES)?;
    let report = match first {
        Outcome::Crash(r) | Outcome::Hang(r) => r,
        Outcome::Ok => bail!(
            "{} does not crash: it ran to the end point",
            input_path.display()
        ),
    };
    if let Ok(saved) = load_crash(input_path) {
        if saved.report.site != report.site {
            tracing::warn!(
                saved = %saved.report.site,
                now = %report.site,
                "the replay crashes at another site than the saved report; minimising for the replay's"
            );
        }
    }
    let site = report.site.clone();
    let original = input.len();
    let start = Instant::now();
    let mut runs = 1;
    let mut best = report;
    let min = shrink(input, |cand| {
        if runs >= budget.runs
            || start.elapsed() >= budget.time
            || xenprobe::vmi::cleanup::interrupted()
        {
            return Ok(None);
        }
        runs += 1;
        // A timeout while looking for a crash may be a late event: confirm it.
        let retries = u32::from(!site.starts_with("hang@"));
        let out = run_confirmed(session, cand, retries)?;
        Ok(Some(match same_site(&out, &site) {
            Some(r) => {
                best = r;
                true
            }
            None => false,
        }))
    })?;
    let saved = min_path(input_path);
    let json = SavedCrash {
        report: best.clone(),
        input_len: min.len(),
        input_hex: min.iter().map(|b| format!("{b:02x}")).collect(),
    };
    std::fs::write(&saved, &min).with_context(|| format!("writing {}", saved.display()))?;
    let text = serde_json::to_string_pretty(&json)?;
    std::fs::write(saved.with_extension("json"), text)
        .with_context(|| format!("writing {}", saved.with_extension("json").display()))?;
    Ok(Minimized {
        original,
        input: min,
        report: best,
        runs,
        saved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_bytes_that_matter() {
        // "Crashes" when it holds 0xEE followed (anywhere later) by 0x01.
        let crashes = |c: &[u8]| {
            c.iter()
                .position(|&b| b == 0xee)
                .is_some_and(|i| c[i..].contains(&1))
        };
        let input = vec![7, 7, 0xee, 3, 3, 3, 1, 9, 9, 9, 9];
        let mut runs = 0;
        let min = shrink(input, |c| {
            runs += 1;
            Ok(Some(crashes(c)))
        })
        .expect("shrink");
        assert_eq!(min, vec![0xee, 1]);
        assert!(runs < 40, "{runs} runs");
    }

    #[test]
    fn stops_when_the_budget_is_spent() {
        let input = vec![1u8; 64];
        let mut runs = 0;
        let min = shrink(input, |_| {
            runs += 1;
            Ok((runs <= 1).then_some(true))
        })
        .expect("shrink");
        // The first removal (half) was kept, then the budget ran out.
        assert_eq!(min.len(), 32);
    }

    #[test]
    fn names_the_minimised_file() {
        assert_eq!(
            min_path(Path::new("/c/crashes/panic-00ff.input")),
            PathBuf::from("/c/crashes/panic-00ff.min.input")
        );
        assert_eq!(
            min_path(Path::new("/c/crashes/panic-00ff.input")).with_extension("json"),
            PathBuf::from("/c/crashes/panic-00ff.min.json")
        );
    }
}
