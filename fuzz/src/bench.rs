//! Execution-speed measurement of one guest (`xenprobe-fuzz-bench`, run
//! in dom0 by `cargo xtask bench fuzz`): the floor of the stack (no memory
//! reset, vCPU reset in the vm_event reply, no LibAFL), each reset strategy
//! on the same inputs, and LibAFL's own share of a campaign's time.
//!
//! Every mode runs the same fixed list of inputs (generated from a seed,
//! kept only if they end normally once coverage breakpoints are gone), in
//! rounds interleaved across modes so that load drifts hit every mode alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libafl::corpus::{Corpus, InMemoryCorpus};
use libafl::events::NopEventManager;
use libafl::fuzzer::{Evaluator, Fuzzer, StdFuzzer};
use libafl::inputs::BytesInput;
use libafl::mutators::{havoc_mutations, tokens_mutations, HavocScheduledMutator, Tokens};
use libafl::schedulers::QueueScheduler;
use libafl::state::{HasCorpus, HasExecutions, StdState};
use libafl::HasMetadata;
use libafl_bolts::rands::StdRand;
use libafl_bolts::tuples::{tuple_list, Merge};
use xenprobe::vmi::{RegisterReset, RestoreOptions, RestoreStrategy, SnapshotCheck};

use crate::campaign::{CampaignOptions, TimeSplit};
use crate::executor::XenExecutor;
use crate::feedback::{NewBlocksFeedback, OutcomeFeedback};
use crate::rawloop::{RawLoop, RawMode, RawOptions, RawPhases};
use crate::report::Outcome;
use crate::session::{Counters, Session, TargetSpec};

/// One way of running inputs.
#[derive(Debug, Clone)]
pub struct Mode {
    /// Row name.
    pub name: String,
    /// Restore options.
    pub restore: RestoreOptions,
    /// Persistent interval (`u32::MAX`: never restore memory).
    pub persistent: u32,
    /// Busy-poll bound.
    pub spin: Duration,
    /// The target for this row, printed as is.
    pub target: &'static str,
    /// Resets memory and registers exactly after every run.
    pub exact: bool,
    /// Target: at least this ratio to the floor.
    pub min_ratio: Option<f64>,
    /// Target: at least this many execs/s.
    pub min_rate: Option<f64>,
}

impl Mode {
    /// A floor: memory never reset, the vCPU reset in the vm_event reply
    /// (with or without busy-polling).
    pub fn is_floor(&self) -> bool {
        self.persistent == u32::MAX && self.restore.registers == RegisterReset::EventReply
    }
}

/// Bench settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The guest.
    pub target: TargetSpec,
    /// Executions per mode per round (at most).
    pub execs: usize,
    /// Time per mode per round (at most).
    pub batch: Duration,
    /// Rounds (the table shows medians).
    pub rounds: usize,
    /// Distinct inputs generated.
    pub inputs: usize,
    /// Busy-poll bound of the spin rows (zero: no spin rows).
    pub spin: Duration,
    /// Seconds of the LibAFL campaign row per round (zero: none).
    pub libafl_secs: u64,
    /// Reset-exactness check after each mode (memory hash and registers).
    pub check: bool,
    /// Only these rows (indices into [`modes`]; empty: all).
    pub only: Vec<usize>,
}

/// The modes measured, floor first.
pub fn modes(spin: Duration) -> Vec<Mode> {
    let opts = |strategy, registers| RestoreOptions {
        strategy,
        registers,
    };
    // A row without a target, not spinning.
    let row = |name: &str, restore, persistent, exact| Mode {
        name: name.into(),
        restore,
        persistent,
        spin: Duration::ZERO,
        target: "",
        exact,
        min_ratio: None,
        min_rate: None,
    };
    let peek = RestoreStrategy::PeekCleanEvery(1000);
    let clean = RestoreStrategy::CleanEveryRun;
    let mut v = vec![
        Mode {
            target: "1.00x (baseline)",
            ..row(
                "floor: no memory reset, vCPU in the reply",
                opts(peek, RegisterReset::EventReply),
                u32::MAX,
                false,
            )
        },
        row(
            "no memory reset, setcontext",
            opts(peek, RegisterReset::Context),
            u32::MAX,
            false,
        ),
        row(
            "clean every run + setcontext (session 1)",
            opts(clean, RegisterReset::Context),
            1,
            true,
        ),
        row(
            "clean every run + vCPU in the reply",
            opts(clean, RegisterReset::EventReply),
            1,
            true,
        ),
        row(
            "peek, clean every 1000 + setcontext",
            opts(peek, RegisterReset::Context),
            1,
            true,
        ),
        Mode {
            target: ">= 0.5x and >= 2500/s",
            min_ratio: Some(0.5),
            min_rate: Some(2500.0),
            ..row(
                "peek, clean every 1000 + vCPU in reply",
                opts(peek, RegisterReset::EventReply),
                1,
                true,
            )
        },
        Mode {
            target: ">= 0.85x",
            min_ratio: Some(0.85),
            ..row(
                "persistent 100 (peek + reply)",
                opts(peek, RegisterReset::EventReply),
                100,
                false,
            )
        },
    ];
    if !spin.is_zero() {
        let us = spin.as_micros();
        for (base, name) in [
            (0, format!("floor + spin {us} us")),
            (5, format!("peek + reply + spin {us} us")),
            (6, format!("persistent 100 + spin {us} us")),
        ] {
            v.push(Mode {
                name,
                spin,
                target: "",
                min_ratio: None,
                min_rate: None,
                ..v[base].clone()
            });
        }
    }
    v
}

/// A small xorshift generator (deterministic inputs).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Inputs: record-like byte strings (type, length, value) around a few
/// well-formed prefixes, so that runs go past the first byte.
pub fn generate_inputs(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut r = Rng(seed | 1);
    let prefixes: [&[u8]; 3] = [b"", b"\x01\x00", b"\x01\x00\x02\x04xp!k"];
    (0..n)
        .map(|i| {
            let mut v = prefixes[i % prefixes.len()].to_vec();
            let records = (r.next() % 8) as usize;
            for _ in 0..records {
                let ty = (r.next() % 8) as u8; // not 0x08 FILL (hundreds of pages)
                let len = (r.next() % 24) as u8;
                v.push(ty);
                v.push(len);
                v.extend((0..len).map(|_| r.next() as u8));
            }
            if r.next() % 4 == 0 {
                v.extend((0..(r.next() % 64)).map(|_| r.next() as u8));
            }
            v
        })
        .collect()
}

/// A row of results.
#[derive(Debug, Clone)]
pub struct Row {
    /// The mode.
    pub mode: Mode,
    /// execs/s of each round.
    pub rates: Vec<f64>,
    /// Exactness check result (None: not checked).
    pub exact: Option<bool>,
    /// Counters of the last round.
    pub counters: Counters,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run_batch(
    s: &mut Session,
    inputs: &[Vec<u8>],
    execs: usize,
    batch: Duration,
) -> Result<(f64, usize)> {
    let t = Instant::now();
    let mut not_ok = 0;
    let mut n = 0;
    // The clock is read every 16 runs only (a system call in dom0).
    while n < execs && (n % 16 != 0 || n == 0 || t.elapsed() < batch) {
        let (o, _) = s.run(&inputs[n % inputs.len()])?;
        not_ok += usize::from(!matches!(o, Outcome::Ok));
        n += 1;
    }
    Ok((n as f64 / t.elapsed().as_secs_f64().max(1e-6), not_ok))
}

/// Runs the bench and prints the table. Returns the rows.
pub fn run(opts: &BenchOptions) -> Result<Vec<Row>> {
    let mut s = Session::start(opts.target.clone()).context("starting the guest")?;
    let result = measure(&mut s, opts);
    let finish = s.finish();
    let rows = result?;
    finish.context("leaving the guest clean")?;
    Ok(rows)
}

fn measure(s: &mut Session, opts: &BenchOptions) -> Result<Vec<Row>> {
    // Warm-up: every coverage breakpoint these inputs reach is hit (and
    // removed) once; keep the inputs that end normally.
    let generated = opts.inputs.max(1);
    let inputs = normal_inputs(s, generated, Duration::ZERO)?;
    eprintln!(
        "[bench] {}: {} of {} inputs end normally; up to {} execs or {:?} per mode per round, {} rounds",
        s.name(),
        inputs.len(),
        generated,
        opts.execs,
        opts.batch,
        opts.rounds
    );
    let mut rows: Vec<Row> = modes(opts.spin)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| opts.only.is_empty() || opts.only.contains(i))
        .map(|(_, m)| m)
        .map(|mode| Row {
            mode,
            rates: Vec::new(),
            exact: None,
            counters: Counters::default(),
        })
        .collect();
    for round in 0..opts.rounds.max(1) {
        for row in rows.iter_mut() {
            let m = &row.mode;
            s.set_mode(m.restore, m.persistent, m.spin);
            // One untimed run so that every mode starts from a full restore.
            s.run(&inputs[0])?;
            let before = s.counters;
            let (rate, not_ok) = run_batch(s, &inputs, opts.execs, opts.batch)?;
            let after = s.counters;
            row.counters = after - before;
            eprintln!(
                "[bench] round {}: {:<44} {:>7.0} execs/s ({} not ok, {:?})",
                round + 1,
                m.name,
                rate,
                not_ok,
                row.counters
            );
            row.rates.push(rate);
            if opts.check && round == 0 {
                let c = s.check_reset()?;
                if !c.exact() {
                    eprintln!("[bench] {}: NOT EXACT: {}", m.name, differences(&c));
                }
                row.exact = Some(c.exact());
            }
        }
    }
    Ok(rows)
}

/// LibAFL's share of a campaign: a campaign-like loop (havoc + tokens,
/// queue scheduler, the campaign's coverage feedback) over `executor` for `secs`; returns
/// (execs/s, fraction of the wall time spent outside the guest runs).
pub fn libafl_share(
    executor: &mut XenExecutor,
    image: &std::path::Path,
    cover: &[String],
    secs: u64,
) -> Result<(f64, f64)> {
    let mut feedback = NewBlocksFeedback;
    let dir = std::env::temp_dir().join(format!("xenprobe-bench-{}", std::process::id()));
    let mut objective = OutcomeFeedback::new(&dir);
    let mut state = StdState::new(
        StdRand::with_seed(7),
        InMemoryCorpus::<BytesInput>::new(),
        InMemoryCorpus::<BytesInput>::new(),
        &mut feedback,
        &mut objective,
    )?;
    let tokens = crate::blocks::tokens_in_image(image, cover)?;
    let mut dict = Tokens::new();
    dict.add_tokens(tokens.iter());
    state.add_metadata(dict);
    let mut fuzzer = StdFuzzer::new(QueueScheduler::new(), feedback, objective);
    let mut mgr = NopEventManager::new();
    for input in crate::campaign::default_seeds() {
        fuzzer.add_input(&mut state, executor, &mut mgr, input)?;
    }
    let _ = state.corpus().count();
    let mutator = HavocScheduledMutator::with_max_stack_pow(
        havoc_mutations().merge(tokens_mutations()),
        crate::campaign::HAVOC_STACK_POW,
    );
    let mut stages = tuple_list!(crate::havoc::HavocStage::new(mutator));
    let in_runs0 = executor.time_in_runs();
    let execs0 = *state.executions();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        fuzzer.fuzz_one(&mut stages, executor, &mut state, &mut mgr)?;
    }
    let wall = t.elapsed().as_secs_f64();
    let runs = (executor.time_in_runs() - in_runs0).as_secs_f64();
    let execs = (*state.executions() - execs0) as f64;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        execs / wall.max(1e-6),
        (1.0 - runs / wall.max(1e-6)).max(0.0),
    ))
}

/// Prints the table (medians, ratio to the floor measured in the same run;
/// a busy-polling row to the busy-polling floor).
pub fn print_table(guest: &str, rows: &[Row], libafl: Option<(f64, f64)>) {
    let floor_for = |spin: Duration| {
        rows.iter()
            .find(|r| r.mode.is_floor() && r.mode.spin == spin)
            .map_or(0.0, |r| median(&r.rates))
    };
    let floor = floor_for(Duration::ZERO);
    println!();
    println!(
        "fuzz execution speed, {guest} (medians of {} rounds; ratios to the floor of this run, \
         busy-polling rows to the busy-polling floor)",
        rows.first().map_or(0, |r| r.rates.len())
    );
    let (m, e, t) = ("mode", "exact", "target");
    let (r, mm, q) = ("execs/s", "min..max", "ratio");
    println!("{m:<46} {r:>9} {mm:>17} {q:>7} {e:>6}  {t}");
    for r in rows {
        let m = median(&r.rates);
        let min = r.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.rates.iter().copied().fold(0.0, f64::max);
        let exact = match r.exact {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let ratio = m / floor_for(r.mode.spin).max(1e-9);
        let met = match (r.mode.min_ratio, r.mode.min_rate) {
            (None, None) => String::new(),
            (a, b) => {
                let ok = a.is_none_or(|a| ratio >= a) && b.is_none_or(|b| m >= b);
                if ok {
                    " (met)".into()
                } else {
                    " (NOT met)".into()
                }
            }
        };
        let (name, target) = (&r.mode.name, r.mode.target);
        println!(
            "{name:<46} {m:>9.0} {min:>8.0}..{max:<8.0} {ratio:>6.2}x {exact:>6}  {target}{met}"
        );
    }
    if let Some((rate, share)) = libafl {
        let (name, ratio) = ("LibAFL campaign (default mode)", rate / floor.max(1e-9));
        println!("{name:<46} {rate:>9.0} {:>17} {ratio:>6.2}x {:>6}", "", "-");
        let name = "  LibAFL's own share of the time";
        let pct = share * 100.0;
        let met = if share <= 0.10 { "met" } else { "NOT met" };
        println!(
            "{name:<46} {pct:>8.1}% {:>17} {:>7} {:>6}  <= 10% ({met})",
            "", "", ""
        );
    }
}

/// Microseconds per run by phase: the columns of the comparison with the
/// raw loop ([`compare`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerRun {
    /// Restoring the snapshot (the raw loop: PEEK or CLEAN and the copy).
    pub restore: f64,
    /// Of `restore`: the log-dirty hypercall (PEEK or CLEAN).
    pub peek: f64,
    /// Writing the input.
    pub input: f64,
    /// The reply that resumes the guest.
    pub resume: f64,
    /// Waiting for the guest's next event (its own work included).
    pub wait: f64,
    /// Of `wait`: until the event came (the guest running); the rest is
    /// the event's handling.
    pub guest: f64,
    /// Making mutants.
    pub mutation: f64,
    /// Coverage and crash feedback.
    pub feedback: f64,
    /// Everything else: the loop's, the session's and LibAFL's bookkeeping.
    pub other: f64,
}

impl PerRun {
    /// Time of a whole run.
    pub fn total(&self) -> f64 {
        self.restore
            + self.input
            + self.resume
            + self.wait
            + self.mutation
            + self.feedback
            + self.other
    }

    /// The phase-wise median of `v` (empty: zeros).
    pub fn median(v: &[PerRun]) -> PerRun {
        let m = |f: fn(&PerRun) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        PerRun {
            restore: m(|p| p.restore),
            peek: m(|p| p.peek),
            input: m(|p| p.input),
            resume: m(|p| p.resume),
            wait: m(|p| p.wait),
            guest: m(|p| p.guest),
            mutation: m(|p| p.mutation),
            feedback: m(|p| p.feedback),
            other: m(|p| p.other),
        }
    }

    /// The microseconds a run spends beyond `base`'s, phase by phase (the
    /// log-dirty call and the guest's run apart from the work around them).
    pub fn beyond(&self, base: &PerRun) -> String {
        let steps = [
            ("log-dirty call", self.peek - base.peek),
            (
                "rest of the restore",
                (self.restore - self.peek) - (base.restore - base.peek),
            ),
            ("input", self.input - base.input),
            ("resume", self.resume - base.resume),
            ("the guest's run", self.guest - base.guest),
            (
                "event handling",
                (self.wait - self.guest) - (base.wait - base.guest),
            ),
            ("mutation", self.mutation - base.mutation),
            ("feedback", self.feedback - base.feedback),
            ("other", self.other - base.other),
        ];
        let parts: Vec<String> = steps
            .iter()
            .map(|(what, d)| format!("{what} {d:+.1}"))
            .collect();
        format!(
            "{} = {:+.1} us a run",
            parts.join(", "),
            self.total() - base.total()
        )
    }

    /// A raw loop's phases.
    pub fn from_raw(p: &RawPhases) -> PerRun {
        PerRun {
            restore: p.peek + p.copy,
            peek: p.peek,
            input: p.input,
            resume: p.resume,
            wait: p.wait,
            guest: p.wait,
            mutation: 0.0,
            feedback: 0.0,
            other: p.other,
        }
    }

    /// A campaign's time split over `execs` executions.
    pub fn from_campaign(t: &TimeSplit, execs: u64) -> PerRun {
        let n = execs.max(1) as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
        let p = PerRun {
            restore: us(t.restore),
            peek: us(t.log_dirty),
            input: us(t.input),
            resume: us(t.resume),
            wait: us(t.wait),
            guest: us(t.guest),
            mutation: us(t.mutation),
            feedback: us(t.feedback),
            other: 0.0,
        };
        PerRun {
            other: (us(t.wall) - p.total()).max(0.0),
            ..p
        }
    }
}

/// One row of the comparison with the raw loop.
#[derive(Debug, Clone)]
pub struct FloorRow {
    /// Row name.
    pub name: String,
    /// execs/s of each batch.
    pub rates: Vec<f64>,
    /// Each batch's rate over the raw exact loop's around it.
    pub ratios: Vec<f64>,
    /// Phases of each batch.
    pub phases: Vec<PerRun>,
    /// Memory and registers equal the snapshot after the row (None: not
    /// checked or not an exact mode).
    pub exact: Option<bool>,
    /// Restores per run and microseconds per restore, each batch (rows
    /// that count them).
    pub restores: Vec<(f64, f64)>,
    /// Blocks covered at the end, each campaign.
    pub covered: Vec<usize>,
    /// The input-to-state stage: share of the campaign's time, traced runs
    /// and candidates, each campaign.
    pub i2s: Vec<(f64, u64, u64)>,
    /// What the guest runs of the row were like, all batches together
    /// (xenprobe's rows).
    pub runs: Counters,
}

impl FloorRow {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            rates: Vec::new(),
            ratios: Vec::new(),
            phases: Vec::new(),
            exact: None,
            restores: Vec::new(),
            covered: Vec::new(),
            i2s: Vec::new(),
            runs: Counters::default(),
        }
    }

    fn exact(&mut self, ok: bool) {
        self.exact = Some(self.exact.unwrap_or(true) && ok);
    }
}

/// Settings of the comparison with the raw loop.
#[derive(Debug, Clone)]
pub struct FloorOptions {
    /// The `xenprobe-rawloop` binary.
    pub raw_bin: PathBuf,
    /// Rounds (medians are printed).
    pub rounds: usize,
    /// Length of each raw and xenprobe batch.
    pub batch: Duration,
    /// Length of each campaign (zero: no campaign rows).
    pub campaign: Duration,
    /// Busy-poll bound of every row (what `cargo xtask fuzz` uses).
    pub spin: Duration,
    /// Distinct inputs generated for the loops.
    pub inputs: usize,
    /// The campaigns' RNG seed (the same in every round).
    pub rng_seed: u64,
    /// The campaigns' extra dictionary.
    pub dictionary: Vec<Vec<u8>>,
}

/// Row indices of [`compare`].
pub const RAW_NONE: usize = 0;
/// The raw exact loop: the denominator of every ratio.
pub const RAW_EXACT: usize = 1;
/// The raw exact loop with its log-dirty call made as xenprobe makes it.
pub const RAW_DIRECT: usize = 2;
/// xenprobe's session loop without memory reset.
pub const XP_FLOOR: usize = 3;
/// xenprobe's session loop, exact reset (the campaign default).
pub const XP_EXACT: usize = 4;
/// A campaign without input-to-state.
pub const CAMPAIGN: usize = 5;
/// A campaign with input-to-state.
pub const CAMPAIGN_I2S: usize = 6;

/// `spec` under another domain name (a copy of its xl config in `dir`).
fn renamed(spec: &TargetSpec, name: &str, dir: &Path) -> Result<TargetSpec> {
    let text = std::fs::read_to_string(&spec.cfg)
        .with_context(|| format!("reading {}", spec.cfg.display()))?;
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(&cfg, crate::config::with_name(&text, name))?;
    Ok(TargetSpec {
        cfg,
        ..spec.clone()
    })
}

/// Runs the raw loop (exact and without reset), xenprobe's own loop
/// (`Session::run`, exact and without memory reset) on the same inputs, and
/// campaigns with and without input-to-state, each on a guest of its own.
/// The raw loop and xenprobe's loop keep their guests and take turns in
/// short batches, and every xenprobe rate is divided by the raw exact
/// batches just before and after it, so that both see the same load.
/// Returns the rows in the order of the `RAW_*`, `XP_*` and `CAMPAIGN*`
/// indices.
pub fn compare(spec: &TargetSpec, opts: &FloorOptions) -> Result<Vec<FloorRow>> {
    let base = crate::session::cfg_name(&std::fs::read_to_string(&spec.cfg)?)
        .context("no name= in the guest's xl config")?;
    let dir = std::env::temp_dir().join(format!("xenprobe-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = compare_in(spec, opts, &base, &dir);
    for suffix in ["raw", "xp", "campaign"] {
        crate::session::destroy(&format!("{base}-{suffix}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn compare_in(
    spec: &TargetSpec,
    opts: &FloorOptions,
    base: &str,
    dir: &Path,
) -> Result<Vec<FloorRow>> {
    let mut rows: Vec<FloorRow> = [
        "raw C loop: no memory reset",
        "raw C loop: exact (PEEK + copy)",
        "raw C loop: exact, domctl PEEK",
        "xenprobe loop: no memory reset",
        "xenprobe loop: exact",
        "campaign, no input-to-state",
        "campaign, input-to-state",
    ]
    .iter()
    .map(|n| FloorRow::new(n))
    .collect();
    let mut xp_spec = renamed(spec, &format!("{base}-xp"), dir)?;
    xp_spec.event_spin = opts.spin;
    xp_spec.restore = modes(Duration::ZERO)[5].restore;
    xp_spec.persistent = 1;
    let mut camp_spec = renamed(spec, &format!("{base}-campaign"), dir)?;
    camp_spec.event_spin = opts.spin;
    let mut s = Session::start(xp_spec).context("starting the guest")?;
    let result = (|| -> Result<()> {
        let inputs = pick_inputs(&mut s, opts)?;
        let raw_opts = RawOptions {
            bin: opts.raw_bin.clone(),
            spin: opts.spin,
            clean_every: 1000,
        };
        let mut raw = RawLoop::start(&raw_opts, spec, &format!("{base}-raw"), &inputs)?;
        for round in 0..opts.rounds.max(1) {
            let a = raw_batch(&mut raw, RawMode::Exact, opts.batch, &mut rows)?;
            let direct = raw_batch(&mut raw, RawMode::ExactDirect, opts.batch, &mut rows)?;
            let xp_exact = xp_batch(&mut s, &inputs, 1, opts, &mut rows[XP_EXACT])?;
            let xp_floor = xp_batch(&mut s, &inputs, u32::MAX, opts, &mut rows[XP_FLOOR])?;
            let none = raw_batch(&mut raw, RawMode::NoReset, opts.batch, &mut rows)?;
            let b = raw_batch(&mut raw, RawMode::Exact, opts.batch, &mut rows)?;
            let around = (a + b) / 2.0;
            for (i, rate) in [
                (RAW_DIRECT, direct),
                (XP_EXACT, xp_exact),
                (XP_FLOOR, xp_floor),
                (RAW_NONE, none),
            ] {
                rows[i].ratios.push(rate / around.max(1e-9));
            }
            let mut before = b;
            if !opts.campaign.is_zero() {
                for (i, cmplog) in [(CAMPAIGN, false), (CAMPAIGN_I2S, true)] {
                    let rate = campaign_run(&camp_spec, opts, cmplog, dir, round, &mut rows[i])?;
                    let after = raw_batch(&mut raw, RawMode::Exact, opts.batch, &mut rows)?;
                    rows[i]
                        .ratios
                        .push(rate / ((before + after) / 2.0).max(1e-9));
                    before = after;
                }
            }
            let last = |i: usize| rows[i].rates.last().copied().unwrap_or(0.0);
            eprintln!(
                "[bench] round {}: raw exact {:.0}/s, no reset {:.0}/s; xenprobe exact {:.0}/s, no reset {:.0}/s; campaign {:.0}/s, with input-to-state {:.0}/s",
                round + 1,
                around,
                last(RAW_NONE),
                last(XP_EXACT),
                last(XP_FLOOR),
                last(CAMPAIGN),
                last(CAMPAIGN_I2S)
            );
        }
        let (ok, what) = raw.check()?;
        if !ok {
            eprintln!("[bench] the raw loop's reset is NOT EXACT: {what}");
        }
        rows[RAW_EXACT].exact(ok);
        // xenprobe's own loop, exact mode last: its reset checked.
        s.set_mode(modes(Duration::ZERO)[5].restore, 1, opts.spin);
        s.run(&inputs[0])?;
        let c = s.check_reset()?;
        if !c.exact() {
            eprintln!("[bench] xenprobe's reset is NOT EXACT: {}", differences(&c));
        }
        rows[XP_EXACT].exact(c.exact());
        Ok(())
    })();
    let fin = s.finish();
    result?;
    fin.context("leaving the guest clean")?;
    Ok(rows)
}

/// The loops' inputs: generated, kept if they end normally once every
/// coverage breakpoint they reach is gone (a warm-up run of each first).
fn pick_inputs(s: &mut Session, opts: &FloorOptions) -> Result<Vec<Vec<u8>>> {
    normal_inputs(s, opts.inputs.max(1), opts.spin)
}

/// `n` generated inputs, run once each in the exact mode (event spin
/// `spin`) to hit and remove the coverage breakpoints they reach, then
/// kept if a second run ends normally.
fn normal_inputs(s: &mut Session, n: usize, spin: Duration) -> Result<Vec<Vec<u8>>> {
    s.set_mode(modes(Duration::ZERO)[5].restore, 1, spin);
    let all = generate_inputs(n, 0x5eed);
    for inp in &all {
        s.run(inp)?;
    }
    let mut inputs = Vec::new();
    for inp in &all {
        if matches!(s.run(inp)?.0, Outcome::Ok) {
            inputs.push(inp.clone());
        }
    }
    anyhow::ensure!(
        !inputs.is_empty(),
        "none of the {} generated inputs ends normally",
        all.len()
    );
    Ok(inputs)
}

/// One raw batch into its row; returns its rate.
fn raw_batch(
    raw: &mut RawLoop,
    mode: RawMode,
    time: Duration,
    rows: &mut [FloorRow],
) -> Result<f64> {
    let r = raw.batch(mode, time)?;
    let row = &mut rows[match mode {
        RawMode::Exact => RAW_EXACT,
        RawMode::ExactDirect => RAW_DIRECT,
        RawMode::NoReset => RAW_NONE,
    }];
    row.rates.push(r.execs_per_s);
    row.phases.push(PerRun::from_raw(&r.phases));
    if mode != RawMode::NoReset {
        row.restores.push((1.0, r.phases.peek + r.phases.copy));
    }
    Ok(r.execs_per_s)
}

/// One batch of xenprobe's own loop over `inputs` (`persistent`: 1 exact,
/// `u32::MAX` no memory reset); returns its rate.
fn xp_batch(
    s: &mut Session,
    inputs: &[Vec<u8>],
    persistent: u32,
    opts: &FloorOptions,
    row: &mut FloorRow,
) -> Result<f64> {
    s.set_mode(modes(Duration::ZERO)[5].restore, persistent, opts.spin);
    s.run(&inputs[0])?;
    let (t0, c0) = (s.timings, s.counters);
    let (rate, runs) = timed_batch(s, inputs, opts.batch)?;
    let (t1, c1) = (s.timings, s.counters);
    let c = c1 - c0;
    let n = c.full_restores + c.register_resets;
    row.runs = row.runs + c;
    let d = t1 - t0;
    let per_run = |t: Duration| t.as_secs_f64() * 1e6 / runs.max(1) as f64;
    let p = PerRun {
        restore: per_run(d.restore),
        peek: per_run(d.log_dirty),
        input: per_run(d.input),
        resume: per_run(d.resume),
        wait: per_run(d.wait),
        guest: per_run(d.guest),
        mutation: 0.0,
        feedback: 0.0,
        other: 0.0,
    };
    let total = 1e6 / rate.max(1e-9);
    row.rates.push(rate);
    row.phases.push(PerRun {
        other: (total - p.total()).max(0.0),
        ..p
    });
    row.restores.push((
        n as f64 / runs.max(1) as f64,
        d.restore.as_secs_f64() * 1e6 / n.max(1) as f64,
    ));
    Ok(rate)
}

/// Runs inputs (in order, repeated) for `time`; (execs/s, runs). Stamps
/// from the TSC: no clock read between runs.
fn timed_batch(s: &mut Session, inputs: &[Vec<u8>], time: Duration) -> Result<(f64, u64)> {
    let t = xenprobe::xen::Stamp::now();
    let until = t.after(time);
    let mut n = 0u64;
    while xenprobe::xen::Stamp::now() < until {
        s.run(&inputs[n as usize % inputs.len()])?;
        n += 1;
    }
    Ok((n as f64 / t.elapsed().as_secs_f64().max(1e-9), n))
}

/// One campaign into its row; returns its rate.
fn campaign_run(
    spec: &TargetSpec,
    opts: &FloorOptions,
    cmplog: bool,
    dir: &Path,
    round: usize,
    row: &mut FloorRow,
) -> Result<f64> {
    let cdir = dir.join(format!("campaign-{round}-{cmplog}"));
    let c = crate::campaign::run(&CampaignOptions {
        target: spec.clone(),
        dir: cdir.clone(),
        time: opts.campaign,
        seeds: None,
        stop_on: Vec::new(),
        stop_when_found: Vec::new(),
        progress: false,
        rng_seed: Some(opts.rng_seed),
        dictionary: opts.dictionary.clone(),
        job: None,
        cmplog,
    })?;
    let _ = std::fs::remove_dir_all(&cdir);
    row.rates.push(c.execs_per_sec());
    row.phases.push(PerRun::from_campaign(&c.split, c.execs));
    let n = c.split.restores.max(1) as f64;
    row.restores.push((
        c.split.restores as f64 / c.execs.max(1) as f64,
        c.split.restore.as_secs_f64() * 1e6 / n,
    ));
    row.covered.push(c.covered);
    row.runs = row.runs + c.counters;
    row.i2s.push((
        c.split.i2s.as_secs_f64() / c.split.wall.as_secs_f64().max(1e-9),
        c.i2s_runs.0,
        c.i2s_runs.1,
    ));
    Ok(c.execs_per_sec())
}

/// What dom0's own machinery costs on this host, for reading the
/// comparison: microseconds per system call (`getpid`), and per distinct
/// page touched right after one (a PV dom0's kernel and user space have
/// page tables of their own, so a system call leaves the TLB to be refilled
/// page by page; under an emulated CPU each refill is a software walk).
/// A run makes two system calls (the log-dirty call and the notify), so
/// every page a loop touches per run beyond another's costs about twice
/// the second figure.
pub fn dom0_costs() -> (f64, f64) {
    use xenprobe::xen::PAGE_SIZE;
    const PAGES: usize = 64;
    const ROUNDS: u32 = 2000;
    let pages = vec![1u8; PAGES * PAGE_SIZE];
    let time = |touch: usize| {
        let t = xenprobe::xen::Stamp::now();
        let mut sum = 0u64;
        for i in 0..ROUNDS {
            sum = sum.wrapping_add(u64::from(std::process::id()));
            for p in 0..touch {
                sum = sum.wrapping_add(u64::from(pages[p * PAGE_SIZE + i as usize % PAGE_SIZE]));
            }
        }
        std::hint::black_box(sum);
        t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS)
    };
    let (bare, touched) = (time(0), time(PAGES));
    (bare, ((touched - bare) / PAGES as f64).max(0.0))
}

/// Prints the comparison: rates and per-run phases (medians over rounds),
/// ratios to the raw exact loop of this run, and the targets.
pub fn print_comparison(guest: &str, rows: &[FloorRow]) {
    let ratio = |i: usize| {
        if i == RAW_EXACT {
            1.0
        } else {
            median(&rows[i].ratios)
        }
    };
    println!();
    println!(
        "fuzz loop against the raw C loop, {guest} (medians of {} rounds; ratio: each batch over the raw exact batches just before and after it; us per run; peek: of restore, the log-dirty call; guest: of wait, until the event came)",
        rows[XP_EXACT].rates.len()
    );
    println!(
        "{:<34} {:>8} {:>15} {:>6} {:>5} | {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
        "loop",
        "execs/s",
        "min..max",
        "ratio",
        "exact",
        "restore",
        "peek",
        "input",
        "resume",
        "wait",
        "guest",
        "mutate",
        "feedbk",
        "other",
        "total"
    );
    for (i, r) in rows.iter().enumerate() {
        if r.rates.is_empty() {
            continue;
        }
        let m = median(&r.rates);
        let min = r.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.rates.iter().copied().fold(0.0, f64::max);
        let p = PerRun::median(&r.phases);
        let exact = match r.exact {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<34} {m:>8.0} {:>15} {:>5.2}x {exact:>5} | {:>7.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>7.1}",
            r.name,
            format!("{min:.0}..{max:.0}"),
            ratio(i),
            p.restore,
            p.peek,
            p.input,
            p.resume,
            p.wait,
            p.guest,
            p.mutation,
            p.feedback,
            p.other,
            p.total()
        );
    }
    for i in [XP_EXACT, CAMPAIGN, CAMPAIGN_I2S] {
        if rows[i].runs.guest_runs > 0 {
            println!("{}: {}", rows[i].name, rows[i].runs.runs_text());
        }
    }
    let raw = PerRun::median(&rows[RAW_EXACT].phases);
    let raw_restore = raw.restore;
    for i in [XP_EXACT, CAMPAIGN] {
        if !rows[i].phases.is_empty() {
            println!(
                "{} against the raw exact loop, step by step: {}",
                rows[i].name,
                PerRun::median(&rows[i].phases).beyond(&raw)
            );
        }
    }
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let restore_of = |i: usize| median(&rows[i].restores.iter().map(|r| r.1).collect::<Vec<_>>());
    for (i, what) in [(XP_EXACT, "xenprobe loop"), (CAMPAIGN, "campaign")] {
        if rows[i].restores.is_empty() {
            continue;
        }
        let q = restore_of(i) / raw_restore.max(1e-9);
        println!(
            "restore, {what}: {:.1} us a restore = {q:.2}x the raw loop's PEEK + copy ({raw_restore:.1} us)  target <= 1.2x ({})",
            restore_of(i),
            met(q <= 1.2)
        );
    }
    if !rows[CAMPAIGN].rates.is_empty() {
        let q = ratio(CAMPAIGN);
        println!(
            "campaign without input-to-state: {q:.2}x the raw exact loop  target >= 0.85x ({})",
            met(q >= 0.85)
        );
    }
    if !rows[RAW_DIRECT].rates.is_empty() {
        // xenprobe makes its log-dirty call past libxc; so can a raw loop.
        let direct = ratio(RAW_DIRECT).max(1e-9);
        let of = |i: usize| {
            if rows[i].rates.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}x", ratio(i) / direct)
            }
        };
        println!(
            "against the raw loop whose PEEK skips libxc's buffer as xenprobe's does ({:.2}x the raw exact loop): xenprobe loop {}, campaign {}, with input-to-state {}",
            ratio(RAW_DIRECT),
            of(XP_EXACT),
            of(CAMPAIGN),
            of(CAMPAIGN_I2S)
        );
    }
    if !rows[CAMPAIGN_I2S].rates.is_empty() {
        let q = ratio(CAMPAIGN_I2S);
        println!(
            "campaign with input-to-state: {q:.2}x the raw exact loop  target >= 0.7x ({})",
            met(q >= 0.7)
        );
        let on_off = ratio(CAMPAIGN_I2S) / ratio(CAMPAIGN).max(1e-9);
        let cov = |i: usize| {
            rows[i]
                .covered
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        let share = median(
            &rows[CAMPAIGN_I2S]
                .i2s
                .iter()
                .map(|x| x.0)
                .collect::<Vec<_>>(),
        );
        let (traced, cands) = rows[CAMPAIGN_I2S]
            .i2s
            .iter()
            .fold((0, 0), |a, x| (a.0 + x.1, a.1 + x.2));
        let more = rows[CAMPAIGN_I2S]
            .covered
            .iter()
            .zip(&rows[CAMPAIGN].covered)
            .any(|(a, b)| a > b);
        println!(
            "input-to-state on / off: {on_off:.2}x (stage {:.0}% of the time, {traced} traced runs and {cands} candidates in all; blocks covered {} against {})  target >= 0.8x unless it finds coverage ({})",
            share * 100.0,
            cov(CAMPAIGN_I2S),
            cov(CAMPAIGN),
            if on_off >= 0.8 {
                "met"
            } else if more {
                "below, but it found more coverage"
            } else {
                "NOT met"
            }
        );
    }
}

/// The first frames of a list, in hex (for a message).
/// What a reset check found different: frames (the first few) and CPU
/// fields.
fn differences(c: &SnapshotCheck) -> String {
    format!(
        "{} frames differ ({}), cpu fields {:?}",
        c.frames_differ.len(),
        gfn_list(&c.frames_differ),
        c.cpu_differ
    )
}

fn gfn_list(frames: &[u64]) -> String {
    let mut l: Vec<String> = frames
        .iter()
        .take(4)
        .map(|g| format!("gfn {g:#x}"))
        .collect();
    if frames.len() > 4 {
        l.push("...".into());
    }
    l.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_by_step_difference_splits_restore_and_wait_and_adds_up() {
        let raw = PerRun {
            restore: 80.0,
            peek: 70.0,
            input: 1.0,
            resume: 35.0,
            wait: 100.0,
            guest: 100.0,
            ..PerRun::default()
        };
        let xp = PerRun {
            restore: 95.0,
            peek: 72.0,
            input: 5.0,
            resume: 40.0,
            wait: 106.0,
            guest: 101.0,
            mutation: 4.0,
            feedback: 3.0,
            other: 6.0,
        };
        let text = xp.beyond(&raw);
        for part in [
            "log-dirty call +2.0",
            "rest of the restore +13.0",
            "input +4.0",
            "resume +5.0",
            "the guest's run +1.0",
            "event handling +5.0",
            "mutation +4.0",
            "feedback +3.0",
            "other +6.0",
        ] {
            assert!(text.contains(part), "{part:?} in {text:?}");
        }
        // The parts add up to the whole difference (the sub-phases are not
        // counted twice).
        assert!(text.ends_with("= +43.0 us a run"), "{text}");
        assert_eq!(xp.total() - raw.total(), 43.0);
    }

    #[test]
    fn each_busy_poll_setting_has_one_floor_that_leads_its_rows() {
        let spin = Duration::from_micros(500);
        let v = modes(spin);
        let floors: Vec<&Mode> = v.iter().filter(|m| m.is_floor()).collect();
        assert_eq!(
            floors.len(),
            2,
            "{:?}",
            floors.iter().map(|m| &m.name).collect::<Vec<_>>()
        );
        assert_eq!(floors[0].spin, Duration::ZERO);
        assert_eq!(floors[1].spin, spin);
        assert!(v[0].is_floor(), "the plain floor comes first");
        // Every row with a target is compared with the plain floor.
        assert!(v
            .iter()
            .filter(|m| m.min_ratio.is_some())
            .all(|m| m.spin.is_zero()));
        assert_eq!(
            modes(Duration::ZERO)
                .iter()
                .filter(|m| m.is_floor())
                .count(),
            1
        );
    }
}
