//! A campaign: LibAFL's state, corpus, mutator and fuzzer around a
//! [`XenExecutor`], with a progress line, resume from the campaign
//! directory, and replay of saved crashes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libafl::corpus::{Corpus, InMemoryCorpus};
use libafl::events::{
    EventConfig, EventFirer, EventReceiver, LlmpEventManagerBuilder, NopEventManager,
    ProgressReporter, SendExiting,
};
use libafl::fuzzer::{Evaluator, Fuzzer, HasFeedback, HasObjective, StdFuzzer};
use libafl::inputs::BytesInput;
use libafl::mutators::{havoc_mutations, tokens_mutations, HavocScheduledMutator, Tokens};
use libafl::schedulers::QueueScheduler;
use libafl::state::{HasCorpus, HasExecutions, HasSolutions, StdState};
use libafl::HasMetadata;
use libafl_bolts::rands::StdRand;
use libafl_bolts::shmem::{ShMemProvider, StdShMemProvider};
use libafl_bolts::tuples::tuple_list;
use libafl_bolts::tuples::Merge;

use crate::confirm::{run_confirmed, ConfirmingExecutor};
use crate::corpus_dir::{read_inputs, CorpusDir};
use crate::executor::XenExecutor;
use crate::feedback::{load_crash, NewBlocksFeedback, OutcomeFeedback};
use crate::havoc::HavocStage;
use crate::i2s::InputToStateStage;
use crate::report::{CrashReport, Outcome};
use crate::reporter::Reporter;
use crate::session::{Session, TargetSpec};
use crate::timed::Timed;

/// Havoc stacks 2, 4 or 8 mutations per mutant (`1 << (1 + rand(3))`), not
/// LibAFL's default of up to 128: the sample targets read short streams of
/// records, which deep stacks mostly destroy. The host model
/// `fuzz/examples/stacking_model.rs` (this campaign's stages on a model of
/// the `tlv` parser, 48 seeds) needs a median 0.9 M executions to TLV-3
/// with it against 1.8 M with the default; in the lab the same three seeds
/// found TLV-3 in 423, 300 and 47 s (before: 445, 575 s, not in 600 s).
pub const HAVOC_STACK_POW: usize = 3;

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
    /// Stop once every one of these has been found: `KIND` or `KIND@SITE`
    /// (a crash of that kind whose site contains SITE). Benchmarks use it
    /// to time the planted bugs without spending the whole budget.
    pub stop_when_found: Vec<String>,
    /// Print a progress line to stderr.
    pub progress: bool,
    /// RNG seed (None: from the clock).
    pub rng_seed: Option<u64>,
    /// Extra dictionary tokens (besides those gathered from comparisons).
    pub dictionary: Vec<Vec<u8>>,
    /// Set when this process is one guest of a parallel campaign (`--jobs`).
    pub job: Option<Job>,
    /// Run the input-to-state stage ([`crate::i2s`]): comparison operands
    /// logged at run time written into inputs. With a structured format the
    /// operands are written into the bytes the value is built from: that
    /// helps where the format takes bytes as they are (arrays, integers),
    /// and costs a few runs where it does not.
    pub cmplog: bool,
}

/// One guest of a parallel campaign: it shares corpus/ and crashes/ with
/// the others, exchanges new inputs through the LLMP broker on
/// `broker_port`, and writes its reports into `job-<index>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// 1-based job number.
    pub index: usize,
    /// TCP port of the local LLMP broker.
    pub broker_port: u16,
}

/// The LibAFL state of a campaign.
pub type State =
    StdState<InMemoryCorpus<BytesInput>, BytesInput, StdRand, InMemoryCorpus<BytesInput>>;

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
    /// Corpus entries resumed from the campaign directory.
    pub resumed: usize,
    /// Seeds run at the start besides the resumed corpus (seed directory,
    /// or the default seeds when there was nothing else).
    pub seeded: usize,
    /// Runs checked for determinism and those that repeated
    /// ([`Session::stability`]).
    pub stability: (u64, u64),
    /// Where the time went.
    pub split: TimeSplit,
    /// The input-to-state stage's traced runs and candidate inputs.
    pub i2s_runs: (u64, u64),
    /// The session's counters: restores, and what the guest runs were like.
    pub counters: crate::session::Counters,
}

/// Where a campaign's time went, in total. The guest-run phases include
/// the runs a session makes on its own (an input that found new coverage
/// is run twice to check its stability).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeSplit {
    /// Restores of the snapshot (memory and vCPU).
    pub restore: Duration,
    /// Of `restore`: the log-dirty hypercalls.
    pub log_dirty: Duration,
    /// Writing inputs into the guest.
    pub input: Duration,
    /// Replies that resume the guest.
    pub resume: Duration,
    /// Waiting for the guest's next event (its own work included).
    pub wait: Duration,
    /// Of `wait`: until the events came (the guest running).
    pub guest: Duration,
    /// Whole executions: the phases above and the session's own work
    /// around them (coverage breakpoints, crash reports, stability runs).
    pub runs: Duration,
    /// Making mutants (havoc, and input-to-state's own mutants).
    pub mutation: Duration,
    /// Coverage and crash feedback on each run (saving new entries included).
    pub feedback: Duration,
    /// The input-to-state stage: its traced runs and candidate inputs
    /// (their runs, mutation and feedback are in the fields above too).
    pub i2s: Duration,
    /// The campaign's wall time.
    pub wall: Duration,
    /// Restores made (full, or registers only in persistent mode).
    pub restores: u64,
}

impl CampaignSummary {
    /// Executions per second.
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// One-paragraph summary.
    pub fn render(&self) -> String {
        format!(
            "{} execs in {:.1} s ({:.0}/s), coverage {}/{} blocks, corpus {}, crash sites {}, hang sites {}, guest restarts {}, stability {}",
            self.execs,
            self.elapsed.as_secs_f64(),
            self.execs_per_sec(),
            self.covered,
            self.blocks,
            self.corpus,
            self.crash_sites,
            self.hang_sites,
            self.restarts,
            stability_text(self.stability)
        )
    }
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
    if let Some(seeds) = opts.seeds.as_ref().filter(|s| !s.is_dir()) {
        bail!("seed directory {} does not exist", seeds.display());
    }
    let corpus_dir = opts.dir.join("corpus");
    std::fs::create_dir_all(&corpus_dir)
        .with_context(|| format!("creating {}", corpus_dir.display()))?;
    let session = Session::start(opts.target.clone()).context("starting the guest")?;
    let blocks = session.blocks.len();
    // A timeout counts as a hang only when it repeats (see crate::confirm).
    let mut executor = ConfirmingExecutor::new(XenExecutor::new(session), HANG_RETRIES);
    let result = match opts.job {
        None => campaign(
            opts,
            &corpus_dir,
            &opts.dir,
            blocks,
            &mut executor,
            &mut NopEventManager::new(),
        ),
        Some(job) => {
            let report_dir = opts.dir.join(format!("job-{}", job.index));
            std::fs::create_dir_all(&report_dir)
                .with_context(|| format!("creating {}", report_dir.display()))?;
            let shmem = StdShMemProvider::new().context("LLMP shared memory")?;
            match LlmpEventManagerBuilder::new().build_on_port(
                shmem,
                job.broker_port,
                EventConfig::from_name("xenprobe-fuzz"),
            ) {
                Ok(mut mgr) => {
                    let r = campaign(
                        opts,
                        &corpus_dir,
                        &report_dir,
                        blocks,
                        &mut executor,
                        &mut mgr,
                    );
                    let _ = mgr.send_exiting();
                    r
                }
                Err(e) => Err(anyhow::anyhow!(
                    "connecting to the LLMP broker on port {}: {e}",
                    job.broker_port
                )),
            }
        }
    };
    let finish = executor.into_inner().into_session().finish();
    let summary = result?;
    finish.context("leaving the guest clean")?;
    Ok(summary)
}

/// Extra runs of an input that timed out before it counts as a hang.
pub const HANG_RETRIES: u32 = 2;

/// How often a job tells the event manager its execution count (the
/// `--jobs` broker's status line sums them).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// `99.5% (200 runs)`: share of runs checked twice that repeated.
pub fn stability_text((checked, same): (u64, u64)) -> String {
    if checked == 0 {
        return "n/a (none checked yet)".into();
    }
    format!(
        "{:.1}% ({checked} checked)",
        100.0 * same as f64 / checked as f64
    )
}

fn campaign<EM>(
    opts: &CampaignOptions,
    corpus_dir: &Path,
    report_dir: &Path,
    blocks: usize,
    executor: &mut ConfirmingExecutor,
    mgr: &mut EM,
) -> Result<CampaignSummary>
where
    EM: EventFirer<BytesInput, State>
        + ProgressReporter<State>
        + SendExiting
        + EventReceiver<BytesInput, State>,
{
    let mut feedback = Timed::new(NewBlocksFeedback);
    let mut objective = Timed::new(OutcomeFeedback::new(&opts.dir));
    let seed = opts.rng_seed.unwrap_or_else(libafl_bolts::current_nanos);
    let mut state = StdState::new(
        StdRand::with_seed(seed),
        InMemoryCorpus::<BytesInput>::new(),
        InMemoryCorpus::<BytesInput>::new(),
        &mut feedback,
        &mut objective,
    )?;
    let mut tokens = executor.inner().session().comparison_tokens();
    for t in &opts.dictionary {
        if !tokens.contains(t) {
            tokens.push(t.clone());
        }
    }
    let ntokens = tokens.len();
    let mut dict = Tokens::new();
    dict.add_tokens(tokens.iter());
    state.add_metadata(dict);
    let mut fuzzer = StdFuzzer::new(QueueScheduler::new(), feedback, objective);
    let mut on_disk = CorpusDir::new(corpus_dir);
    let mut inputs = on_disk.inputs();
    let resumed = inputs.len();
    if let Some(seeds) = &opts.seeds {
        inputs.extend(read_inputs(seeds));
    }
    if inputs.is_empty() {
        inputs = default_seeds();
    }
    let seeded = inputs.len() - resumed;
    let used_defaults = resumed == 0 && opts.seeds.is_none();
    let mut reporter = Reporter::new(
        opts,
        report_dir,
        blocks,
        resumed,
        executor.inner().session(),
    );
    for input in inputs {
        // Every starting input joins the corpus (one-shot coverage breakpoints
        // make a re-run of an old input look uninteresting), unless it is a
        // crash or a hang: LibAFL keeps those as solutions only.
        fuzzer.add_input(&mut state, executor, mgr, input)?;
    }
    if state.corpus().count() == 0 && !used_defaults {
        // Every starting input crashed: try the generic ones.
        for input in default_seeds() {
            fuzzer.add_input(&mut state, executor, mgr, input)?;
        }
    }
    on_disk
        .save_new(state.corpus())
        .context("saving the corpus")?;
    if state.corpus().count() == 0 {
        bail!(
            "every starting input crashed or hung ({} saved under {}/crashes and hangs): \
             nothing to mutate; give seeds that run to the end point (--seeds DIR)",
            state.solutions().count(),
            opts.dir.display()
        );
    }
    let cmplog = opts.cmplog;
    if opts.progress {
        eprintln!(
            "[xenprobe-fuzz] {} blocks instrumented, {} dictionary tokens, {}, {} corpus entries ({} resumed), snapshot restore by dirty pages",
            blocks,
            ntokens,
            if cmplog {
                format!(
                    "{} comparisons logged at run time",
                    executor.inner().session().comparison_sites()
                )
            } else {
                "no comparison logging".to_string()
            },
            state.corpus().count(),
            resumed
        );
    }
    let mutator = HavocScheduledMutator::with_max_stack_pow(
        havoc_mutations().merge(tokens_mutations()),
        HAVOC_STACK_POW,
    );
    let i2s = InputToStateStage::new(
        Timed::new(HavocScheduledMutator::with_max_stack_pow(
            havoc_mutations(),
            HAVOC_STACK_POW,
        )),
        cmplog,
    );
    let mut stages = tuple_list!(HavocStage::new(Timed::new(mutator)), i2s);
    while !reporter.turn(&state, executor.inner().session(), fuzzer.objective()) {
        // Keeps a --jobs broker's totals current between corpus events.
        mgr.maybe_report_progress(&mut state, PROGRESS_EVERY)?;
        fuzzer.fuzz_one(&mut stages, executor, &mut state, mgr)?;
        on_disk
            .save_new(state.corpus())
            .context("saving the corpus")?;
    }
    let (start, found) = reporter.finish();
    let t = executor.inner().session().timings;
    let i2s = &stages.1 .0;
    let split = TimeSplit {
        restore: t.restore,
        log_dirty: t.log_dirty,
        input: t.input,
        resume: t.resume,
        wait: t.wait,
        guest: t.guest,
        runs: executor.inner().time_in_runs(),
        mutation: stages.0.mutator().time + i2s.mutator().time,
        feedback: fuzzer.feedback().time + fuzzer.objective().time,
        i2s: i2s.time[0] + i2s.time[1],
        wall: start.elapsed(),
        restores: {
            let c = executor.inner().session().counters;
            c.full_restores + c.register_resets
        },
    };
    if opts.progress {
        eprintln!();
        if cmplog {
            eprintln!(
                "[xenprobe-fuzz] input-to-state: {} traced runs ({:.1} s), {} candidate inputs ({:.1} s), {} new corpus entries; {:.0}% of the time",
                i2s.traced,
                i2s.time[0].as_secs_f64(),
                i2s.candidates,
                i2s.time[1].as_secs_f64(),
                i2s.found,
                100.0 * split.i2s.as_secs_f64() / split.wall.as_secs_f64().max(1e-9)
            );
        }
        eprintln!(
            "[xenprobe-fuzz] stability {}: inputs run twice from the snapshot (each new corpus entry, one run in {}) that ended in the same state",
            stability_text(executor.inner().session().stability()),
            crate::session::STABILITY_SAMPLE
        );
        eprintln!(
            "[xenprobe-fuzz] time in restore {:.1} s (log-dirty calls {:.1} s), input writes {:.1} s, guest runs {:.1} s (resume {:.1} s, waits {:.1} s of which the guest ran {:.1} s); reports in {}",
            t.restore.as_secs_f64(),
            t.log_dirty.as_secs_f64(),
            t.input.as_secs_f64(),
            t.run.as_secs_f64(),
            t.resume.as_secs_f64(),
            t.wait.as_secs_f64(),
            t.guest.as_secs_f64(),
            opts.dir.display()
        );
        eprintln!(
            "[xenprobe-fuzz] {}",
            executor.inner().session().counters.runs_text()
        );
        eprintln!(
            "[xenprobe-fuzz] time in whole runs {:.1} s, mutation {:.1} s, feedback {:.1} s, the rest (scheduling, corpus, reports) {:.1} s of {:.1} s",
            split.runs.as_secs_f64(),
            split.mutation.as_secs_f64(),
            split.feedback.as_secs_f64(),
            split
                .wall
                .saturating_sub(split.runs + split.mutation + split.feedback)
                .as_secs_f64(),
            split.wall.as_secs_f64()
        );
    }
    let obj = fuzzer.objective();
    let _ = state.solutions().count();
    Ok(CampaignSummary {
        execs: *state.executions(),
        elapsed: start.elapsed(),
        covered: executor.inner().session().covered(),
        blocks,
        corpus: state.corpus().count(),
        crash_sites: obj.crash_sites,
        hang_sites: obj.hang_sites,
        found,
        restarts: executor.inner().session().restarts(),
        resumed,
        seeded,
        stability: executor.inner().session().stability(),
        split,
        i2s_runs: (i2s.traced, i2s.candidates),
        counters: executor.inner().session().counters,
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
    let guest_len = crate::structured::guest_bytes(target.input_format.as_ref(), &input).len();
    let mut session = Session::start(target).context("starting the guest")?;
    if guest_len > session.input_capacity() {
        bail!(
            "{} makes {guest_len} bytes of guest input; the guest's buffer holds {}",
            input_path.display(),
            session.input_capacity()
        );
    }
    let run = run_confirmed(&mut session, &input, HANG_RETRIES);
    let finish = session.finish();
    let outcome = run?;
    finish.context("leaving the guest clean")?;
    let report = match outcome {
        Outcome::Ok => None,
        Outcome::Crash(r) | Outcome::Hang(r) => Some(r),
    };
    Ok((report, saved))
}
