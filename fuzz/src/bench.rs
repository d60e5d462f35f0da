//! Execution-speed measurement of one guest (`xenprobe-fuzz-bench`, run
//! in dom0 by `cargo xtask bench fuzz`): the floor of the stack (no memory
//! reset, vCPU reset in the vm_event reply, no LibAFL), each reset strategy
//! on the same inputs, and LibAFL's own share of a campaign's time.
//!
//! Every mode runs the same fixed list of inputs (generated from a seed,
//! kept only if they end normally once coverage breakpoints are gone), in
//! rounds interleaved across modes so that load drifts hit every mode alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libafl::corpus::{Corpus, InMemoryCorpus};
use libafl::events::NopEventManager;
use libafl::feedbacks::MaxMapFeedback;
use libafl::fuzzer::{Evaluator, Fuzzer, StdFuzzer};
use libafl::inputs::BytesInput;
use libafl::mutators::{havoc_mutations, tokens_mutations, HavocScheduledMutator, Tokens};
use libafl::schedulers::QueueScheduler;
use libafl::stages::StdMutationalStage;
use libafl::state::{HasCorpus, HasExecutions, StdState};
use libafl::HasMetadata;
use libafl_bolts::rands::StdRand;
use libafl_bolts::tuples::{tuple_list, Merge};
use xenprobe::vmi::{RegisterReset, RestoreOptions, RestoreStrategy};

use crate::executor::XenExecutor;
use crate::feedback::OutcomeFeedback;
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
    let peek = RestoreStrategy::PeekCleanEvery(1000);
    let mut v = vec![
        Mode {
            name: "floor: no memory reset, vCPU in the reply".into(),
            restore: opts(peek, RegisterReset::EventReply),
            persistent: u32::MAX,
            spin: Duration::ZERO,
            target: "1.00x (baseline)",
            exact: false,
            min_ratio: None,
            min_rate: None,
        },
        Mode {
            name: "no memory reset, setcontext".into(),
            restore: opts(peek, RegisterReset::Context),
            persistent: u32::MAX,
            spin: Duration::ZERO,
            target: "",
            exact: false,
            min_ratio: None,
            min_rate: None,
        },
        Mode {
            name: "clean every run + setcontext (session 1)".into(),
            restore: opts(RestoreStrategy::CleanEveryRun, RegisterReset::Context),
            persistent: 1,
            spin: Duration::ZERO,
            target: "",
            exact: true,
            min_ratio: None,
            min_rate: None,
        },
        Mode {
            name: "clean every run + vCPU in the reply".into(),
            restore: opts(RestoreStrategy::CleanEveryRun, RegisterReset::EventReply),
            persistent: 1,
            spin: Duration::ZERO,
            target: "",
            exact: true,
            min_ratio: None,
            min_rate: None,
        },
        Mode {
            name: "peek, clean every 1000 + setcontext".into(),
            restore: opts(peek, RegisterReset::Context),
            persistent: 1,
            spin: Duration::ZERO,
            target: "",
            exact: true,
            min_ratio: None,
            min_rate: None,
        },
        Mode {
            name: "peek, clean every 1000 + vCPU in reply".into(),
            restore: opts(peek, RegisterReset::EventReply),
            persistent: 1,
            spin: Duration::ZERO,
            target: ">= 0.5x and >= 2500/s",
            exact: true,
            min_ratio: Some(0.5),
            min_rate: Some(2500.0),
        },
        Mode {
            name: "persistent 100 (peek + reply)".into(),
            restore: opts(peek, RegisterReset::EventReply),
            persistent: 100,
            spin: Duration::ZERO,
            target: ">= 0.85x",
            exact: false,
            min_ratio: Some(0.85),
            min_rate: None,
        },
    ];
    if !spin.is_zero() {
        let us = spin.as_micros();
        v.push(Mode {
            name: format!("floor + spin {us} us"),
            spin,
            target: "",
            min_ratio: None,
            min_rate: None,
            ..v[0].clone()
        });
        v.push(Mode {
            name: format!("peek + reply + spin {us} us"),
            spin,
            target: "",
            min_ratio: None,
            min_rate: None,
            ..v[5].clone()
        });
        v.push(Mode {
            name: format!("persistent 100 + spin {us} us"),
            spin,
            target: "",
            min_ratio: None,
            min_rate: None,
            ..v[6].clone()
        });
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
    let all = generate_inputs(opts.inputs.max(1), 0x5eed);
    let exact_default = modes(Duration::ZERO)[5].restore;
    s.set_mode(exact_default, 1, Duration::ZERO);
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
    eprintln!(
        "[bench] {}: {} of {} inputs end normally; up to {} execs or {:?} per mode per round, {} rounds",
        s.name(),
        inputs.len(),
        all.len(),
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
            row.counters = Counters {
                full_restores: after.full_restores - before.full_restores,
                register_resets: after.register_resets - before.register_resets,
                regs_in_reply: after.regs_in_reply - before.regs_in_reply,
                replays: after.replays - before.replays,
                unstable: after.unstable - before.unstable,
            };
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
                    eprintln!(
                        "[bench] {}: NOT EXACT: {} frames differ, cpu fields {:?}",
                        m.name,
                        c.frames_differ.len(),
                        c.cpu_differ
                    );
                }
                row.exact = Some(c.exact());
            }
        }
    }
    Ok(rows)
}

/// LibAFL's share of a campaign: a campaign-like loop (havoc + tokens,
/// queue scheduler, map feedback) over `executor` for `secs`; returns
/// (execs/s, fraction of the wall time spent outside the guest runs).
pub fn libafl_share(
    executor: &mut XenExecutor,
    image: &std::path::Path,
    cover: &[String],
    secs: u64,
) -> Result<(f64, f64)> {
    let mut feedback = MaxMapFeedback::new(executor.coverage_observer());
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
    let mut stages = tuple_list!(StdMutationalStage::new(mutator));
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

#[cfg(test)]
mod tests {
    use super::*;

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
