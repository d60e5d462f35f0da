//! A campaign: LibAFL's state, corpus, mutator and fuzzer around a
//! [`XenExecutor`], with a progress line, resume from the campaign
//! directory, and replay of saved crashes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libafl::corpus::{Corpus, InMemoryCorpus, InMemoryOnDiskCorpus};
use libafl::events::NopEventManager;
use libafl::feedbacks::MaxMapFeedback;
use libafl::fuzzer::{Evaluator, Fuzzer, HasObjective, StdFuzzer};
use libafl::inputs::BytesInput;
use libafl::mutators::{havoc_mutations, tokens_mutations, HavocScheduledMutator, Tokens};
use libafl::schedulers::QueueScheduler;
use libafl::stages::StdMutationalStage;
use libafl::state::{HasCorpus, HasExecutions, HasSolutions, StdState};
use libafl::HasMetadata;
use libafl_bolts::rands::StdRand;
use libafl_bolts::tuples::tuple_list;
use libafl_bolts::tuples::Merge;

use crate::executor::XenExecutor;
use crate::feedback::{load_crash, OutcomeFeedback};
use crate::report::{CrashReport, Outcome};
use crate::session::{Session, TargetSpec};

/// Options of a campaign.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    /// The guest.
    pub target: TargetSpec,
    /// Campaign directory (corpus/, crashes/, hangs/).
    pub dir: PathBuf,
    /// Wall-clock budget.
    pub time: Duration,
    /// Extra seed directory.
    pub seeds: Option<PathBuf>,
    /// Stop as soon as a crash whose kind is in this list is found (tests).
    pub stop_on: Vec<String>,
    /// Print a progress line to stderr.
    pub progress: bool,
    /// RNG seed (None: from the clock).
    pub rng_seed: Option<u64>,
}

/// What a campaign did.
#[derive(Debug, Clone)]
pub struct CampaignSummary {
    /// Executions.
    pub execs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Blocks reached / blocks instrumented.
    pub covered: usize,
    /// Blocks instrumented.
    pub blocks: usize,
    /// Corpus size at the end.
    pub corpus: usize,
    /// Unique crash sites (with earlier runs).
    pub crash_sites: usize,
    /// Unique hang sites.
    pub hang_sites: usize,
    /// Crash/hang files written by this run, with the time they were found.
    pub found: Vec<(PathBuf, Duration)>,
    /// Guest restarts after unexpected shutdowns.
    pub restarts: u32,
}

impl CampaignSummary {
    /// Executions per second.
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// One-paragraph summary.
    pub fn render(&self) -> String {
        format!(
            "{} execs in {:.1} s ({:.0}/s), coverage {}/{} blocks, corpus {}, crash sites {}, hang sites {}, guest restarts {}",
            self.execs,
            self.elapsed.as_secs_f64(),
            self.execs_per_sec(),
            self.covered,
            self.blocks,
            self.corpus,
            self.crash_sites,
            self.hang_sites,
            self.restarts
        )
    }
}

fn read_inputs(dir: &Path) -> Vec<BytesInput> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".metadata"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(BytesInput::new)
        .collect()
}

/// Default seeds when the corpus is empty: small, generic inputs.
pub fn default_seeds() -> Vec<BytesInput> {
    vec![
        BytesInput::new(vec![0u8; 4]),
        BytesInput::new(b"\x01\x00\x03\x02AB".to_vec()),
    ]
}

/// Runs a campaign; the guest is left clean at the end.
pub fn run(opts: &CampaignOptions) -> Result<CampaignSummary> {
    xenprobe::vmi::cleanup::restore_on_ctrl_c().context("installing the Ctrl-C handler")?;
    let corpus_dir = opts.dir.join("corpus");
    std::fs::create_dir_all(&corpus_dir)
        .with_context(|| format!("creating {}", corpus_dir.display()))?;
    let session = Session::start(opts.target.clone()).context("starting the guest")?;
    let blocks = session.blocks.len();
    let mut executor = XenExecutor::new(session);
    let result = campaign(opts, &corpus_dir, blocks, &mut executor);
    let finish = executor.into_session().finish();
    let summary = result?;
    finish.context("leaving the guest clean")?;
    Ok(summary)
}

fn campaign(
    opts: &CampaignOptions,
    corpus_dir: &Path,
    blocks: usize,
    executor: &mut XenExecutor,
) -> Result<CampaignSummary> {
    let mut feedback = MaxMapFeedback::new(executor.coverage_observer());
    let mut objective = OutcomeFeedback::new(&opts.dir);
    let seed = opts.rng_seed.unwrap_or_else(libafl_bolts::current_nanos);
    let mut state = StdState::new(
        StdRand::with_seed(seed),
        InMemoryOnDiskCorpus::<BytesInput>::no_meta(corpus_dir)?,
        InMemoryCorpus::<BytesInput>::new(),
        &mut feedback,
        &mut objective,
    )?;
    let tokens = crate::blocks::tokens_in_image(&opts.target.image, &opts.target.cover)?;
    let ntokens = tokens.len();
    let mut dict = Tokens::new();
    dict.add_tokens(tokens.iter());
    state.add_metadata(dict);
    let mut fuzzer = StdFuzzer::new(QueueScheduler::new(), feedback, objective);
    let mut mgr = NopEventManager::new();
    let start = Instant::now();

    let mut inputs = read_inputs(corpus_dir);
    let resumed = inputs.len();
    if let Some(seeds) = &opts.seeds {
        inputs.extend(read_inputs(seeds));
    }
    if inputs.is_empty() {
        inputs = default_seeds();
    }
    for input in inputs {
        // Every starting input joins the corpus (one-shot coverage breakpoints
        // make a re-run of an old input look uninteresting).
        fuzzer.add_input(&mut state, executor, &mut mgr, input)?;
    }
    if opts.progress {
        eprintln!(
            "[xenprobe-fuzz] {} blocks instrumented, {} dictionary tokens from comparisons, {} corpus entries ({} resumed), snapshot restore by dirty pages",
            blocks,
            ntokens,
            state.corpus().count(),
            resumed
        );
    }
    let mutator = HavocScheduledMutator::new(havoc_mutations().merge(tokens_mutations()));
    let mut stages = tuple_list!(StdMutationalStage::new(mutator));
    let mut found = Vec::new();
    let mut last_print = Instant::now();
    let mut seen_files = 0;
    loop {
        if start.elapsed() >= opts.time || xenprobe::vmi::cleanup::interrupted() {
            break;
        }
        fuzzer.fuzz_one(&mut stages, executor, &mut state, &mut mgr)?;
        let obj = fuzzer.objective();
        let mut stop = false;
        for f in &obj.new_files[seen_files..] {
            found.push((f.clone(), start.elapsed()));
            if let Ok(c) = load_crash(f) {
                stop |= opts.stop_on.contains(&c.report.kind);
            }
        }
        seen_files = obj.new_files.len();
        if opts.progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let t = start.elapsed().as_secs_f64();
            eprint!(
                "\r[{:>5.0}s] execs {} ({:.0}/s)  coverage {}/{}  corpus {}  crashes {}  hangs {}  stability n/a (one-shot coverage)  ",
                t,
                state.executions(),
                *state.executions() as f64 / t.max(1e-3),
                executor.session().covered(),
                blocks,
                state.corpus().count(),
                obj.crash_sites,
                obj.hang_sites
            );
            let _ = std::io::stderr().flush();
        }
        if stop {
            break;
        }
    }
    if opts.progress {
        let t = executor.session().timings;
        eprintln!(
            "\n[xenprobe-fuzz] time in restore {:.1} s, input writes {:.1} s, guest runs {:.1} s (resume {:.1} s, waits {:.1} s)",
            t[0].as_secs_f64(),
            t[1].as_secs_f64(),
            t[2].as_secs_f64(),
            t[3].as_secs_f64(),
            t[4].as_secs_f64()
        );
    }
    let obj = fuzzer.objective();
    let _ = state.solutions().count();
    Ok(CampaignSummary {
        execs: *state.executions(),
        elapsed: start.elapsed(),
        covered: executor.session().covered(),
        blocks,
        corpus: state.corpus().count(),
        crash_sites: obj.crash_sites,
        hang_sites: obj.hang_sites,
        found,
        restarts: executor.session().restarts(),
    })
}

/// Replays a saved crash input once; returns the new report (None: the run
/// ended cleanly) and the saved one if a `.json` sits next to the input.
pub fn reproduce(
    target: &TargetSpec,
    input_path: &Path,
) -> Result<(Option<CrashReport>, Option<CrashReport>)> {
    xenprobe::vmi::cleanup::restore_on_ctrl_c().context("installing the Ctrl-C handler")?;
    let input =
        std::fs::read(input_path).with_context(|| format!("reading {}", input_path.display()))?;
    let saved = load_crash(input_path).ok().map(|c| c.report);
    // Keep the console output of a replay: it is the guest's own report.
    let mut target = target.clone();
    target.discard_console = false;
    let mut session = Session::start(target).context("starting the guest")?;
    if input.len() > session.input_capacity() {
        bail!(
            "{} has {} bytes; the guest's buffer holds {}",
            input_path.display(),
            input.len(),
            session.input_capacity()
        );
    }
    let run = session.run(&input);
    let finish = session.finish();
    let (outcome, _) = run?;
    finish.context("leaving the guest clean")?;
    let report = match outcome {
        Outcome::Ok => None,
        Outcome::Crash(r) | Outcome::Hang(r) => Some(r),
    };
    Ok((report, saved))
}
