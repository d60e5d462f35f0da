//! The run's outcome as a LibAFL observer, and the objective feedback that
//! keeps one crash (or hang) per crash site and saves it with its report.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use libafl::executors::ExitKind;
use libafl::feedbacks::{Feedback, StateInitializer};
use libafl::inputs::{BytesInput, HasTargetBytes};
use libafl::observers::{MapObserver, Observer, ObserversTuple, StdMapObserver};
use libafl::Error;
use libafl_bolts::tuples::MatchName;
use libafl_bolts::Named;
use serde::{Deserialize, Serialize};

use crate::report::{fnv1a, CrashReport, Outcome};

/// Name of the outcome observer.
pub const OUTCOME: &str = "outcome";

/// Holds how the last run ended.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OutcomeObserver {
    #[serde(skip)]
    last: Option<Outcome>,
}

impl OutcomeObserver {
    /// Records the outcome of the run that just ended.
    pub fn set(&mut self, o: Outcome) {
        self.last = Some(o);
    }

    /// The outcome of the last run.
    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }
}

impl Named for OutcomeObserver {
    fn name(&self) -> &Cow<'static, str> {
        static NAME: Cow<'static, str> = Cow::Borrowed(OUTCOME);
        &NAME
    }
}

impl<I, S> Observer<I, S> for OutcomeObserver {
    fn pre_exec(&mut self, _state: &mut S, _input: &I) -> Result<(), Error> {
        self.last = None;
        Ok(())
    }
}

/// Corpus feedback: a run is interesting when it reached a block no run
/// reached before. Coverage breakpoints are one-shot, so the executor's
/// map holds exactly those blocks: this is LibAFL's `MaxMapFeedback`
/// without the history map it would keep beside them (and look up in the
/// state's metadata on every run).
#[derive(Debug, Default)]
pub struct NewBlocksFeedback;

impl Named for NewBlocksFeedback {
    fn name(&self) -> &Cow<'static, str> {
        static NAME: Cow<'static, str> = Cow::Borrowed("new-blocks");
        &NAME
    }
}

impl<S> StateInitializer<S> for NewBlocksFeedback {}

impl<EM, OT, S> Feedback<EM, BytesInput, OT, S> for NewBlocksFeedback
where
    OT: MatchName,
{
    // The map by name, as `OutcomeFeedback` finds it.
    #[allow(deprecated)]
    fn is_interesting(
        &mut self,
        _state: &mut S,
        _manager: &mut EM,
        _input: &BytesInput,
        observers: &OT,
        _exit_kind: &ExitKind,
    ) -> Result<bool, Error> {
        Ok(observers
            .match_name::<StdMapObserver<'static, u8, false>>(crate::executor::COVERAGE_MAP)
            .is_some_and(|map| map.count_bytes() != 0))
    }
}

/// A saved crash: input file and report, as written to the campaign directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedCrash {
    /// The report.
    pub report: CrashReport,
    /// Input length.
    pub input_len: usize,
    /// Input as hex.
    pub input_hex: String,
}

/// Path stem of a crash file for a site (without extension).
pub fn crash_stem(dir: &Path, report: &CrashReport) -> PathBuf {
    let name = format!("{}-{:016x}", report.kind, fnv1a(report.site.as_bytes()));
    dir.join(name)
}

/// Writes `<stem>.input` (raw bytes) and `<stem>.json` (report).
pub fn save_crash(dir: &Path, report: &CrashReport, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = crash_stem(dir, report);
    let saved = SavedCrash {
        report: report.clone(),
        input_len: input.len(),
        input_hex: input.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let json = serde_json::to_string_pretty(&saved).map_err(std::io::Error::other)?;
    std::fs::write(stem.with_extension("json"), json)?;
    let path = stem.with_extension("input");
    std::fs::write(&path, input)?;
    Ok(path)
}

/// Reads the `.json` report next to a crash input file.
pub fn load_crash(input_path: &Path) -> std::io::Result<SavedCrash> {
    let text = std::fs::read_to_string(input_path.with_extension("json"))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Objective: a crash or hang at a site not seen before. Saves it into
/// `crashes/` or `hangs/` of the campaign directory.
#[derive(Debug)]
pub struct OutcomeFeedback {
    crashes: PathBuf,
    hangs: PathBuf,
    seen: BTreeSet<String>,
    /// Unique crash sites (this run and earlier runs of the campaign).
    pub crash_sites: usize,
    /// Unique hang sites.
    pub hang_sites: usize,
    /// Crash files written by this run.
    pub new_files: Vec<PathBuf>,
    /// Blocks reached by any run of this process (index = coverage map
    /// index), crashing runs included: the objective sees every run, the
    /// corpus feedback only those that did not crash.
    pub covered: Vec<bool>,
}

impl OutcomeFeedback {
    /// Feedback saving into `dir/crashes` and `dir/hangs`; sites already
    /// saved there count as seen (a resumed campaign does not save them again).
    pub fn new(dir: &Path) -> Self {
        let mut f = Self {
            crashes: dir.join("crashes"),
            hangs: dir.join("hangs"),
            seen: BTreeSet::new(),
            crash_sites: 0,
            hang_sites: 0,
            new_files: Vec::new(),
            covered: Vec::new(),
        };
        for (d, hang) in [(f.crashes.clone(), false), (f.hangs.clone(), true)] {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "input") {
                    if let Ok(c) = load_crash(&p) {
                        if f.seen.insert(c.report.site) {
                            if hang {
                                f.hang_sites += 1;
                            } else {
                                f.crash_sites += 1;
                            }
                        }
                    }
                }
            }
        }
        f
    }
}

impl Named for OutcomeFeedback {
    fn name(&self) -> &Cow<'static, str> {
        static NAME: Cow<'static, str> = Cow::Borrowed("outcome-feedback");
        &NAME
    }
}

impl<S> StateInitializer<S> for OutcomeFeedback {}

impl<EM, OT, S> Feedback<EM, BytesInput, OT, S> for OutcomeFeedback
where
    OT: ObserversTuple<BytesInput, S> + MatchName,
{
    #[allow(deprecated)]
    fn is_interesting(
        &mut self,
        _state: &mut S,
        _manager: &mut EM,
        input: &BytesInput,
        observers: &OT,
        exit_kind: &ExitKind,
    ) -> Result<bool, Error> {
        if let Some(map) = observers
            .match_name::<StdMapObserver<'static, u8, false>>(crate::executor::COVERAGE_MAP)
        {
            let n = map.usable_count();
            if self.covered.len() < n {
                self.covered.resize(n, false);
            }
            for (i, c) in self.covered.iter_mut().enumerate().take(n) {
                *c |= map.get(i) != 0;
            }
        }
        if *exit_kind == ExitKind::Ok {
            return Ok(false);
        }
        let Some(obs) = observers.match_name::<OutcomeObserver>(OUTCOME) else {
            return Ok(false);
        };
        let (report, hang) = match obs.last() {
            Some(Outcome::Crash(r)) => (r, false),
            Some(Outcome::Hang(r)) => (r, true),
            _ => return Ok(false),
        };
        if !self.seen.insert(report.site.clone()) {
            return Ok(false);
        }
        let dir = if hang { &self.hangs } else { &self.crashes };
        let bytes = input.target_bytes();
        let path = save_crash(dir, report, &bytes)
            .map_err(|e| Error::unknown(format!("saving a crash: {e}")))?;
        if hang {
            self.hang_sites += 1;
        } else {
            self.crash_sites += 1;
        }
        eprintln!(
            "\n[xenprobe-fuzz] new {} at {} -> {}",
            report.kind,
            report.site,
            path.display()
        );
        self.new_files.push(path);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libafl::events::NopEventManager;
    use libafl::state::NopState;

    fn interesting(map: Vec<u8>) -> bool {
        let observers = (
            StdMapObserver::owned(crate::executor::COVERAGE_MAP, map),
            (OutcomeObserver::default(), ()),
        );
        let mut state: NopState<BytesInput> = NopState::new();
        NewBlocksFeedback
            .is_interesting(
                &mut state,
                &mut NopEventManager::new(),
                &BytesInput::new(Vec::new()),
                &observers,
                &ExitKind::Ok,
            )
            .expect("feedback")
    }

    #[test]
    fn a_run_is_interesting_when_it_reached_a_new_block() {
        assert!(
            !interesting(vec![0; 60]),
            "no block reached for the first time"
        );
        let mut map = vec![0; 60];
        map[59] = 1;
        assert!(
            interesting(map),
            "the last block reached for the first time"
        );
    }
}
