//! A host model of a `tlv` campaign, to compare havoc stacking depths
//! ([`xenprobe_fuzz::campaign::HAVOC_STACK_POW`] against LibAFL's default).
//!
//! The campaign's LibAFL pieces (queue scheduler, max-map feedback on
//! one-shot block coverage, havoc + dictionary mutations, the campaign's own
//! input-to-state stage through its [`Traceable`] seam) run against a Rust
//! model of guests/tlv's parser with a coverage index per block, at millions
//! of executions a minute. It counts
//! executions until the first TLV-3 (a traced run counted as five, as in the
//! lab) over seeded runs and prints the median for each depth. A model, not
//! the guest: its figures rank settings; the lab's campaigns
//! (`cargo xtask bench fuzz-campaign`) give the times.
//!
//! `cargo run --release -p xenprobe-fuzz --example stacking_model -- [RUNS] [CAP]`

use std::cell::RefCell;
use std::time::Duration;

use libafl::corpus::InMemoryCorpus;
use libafl::events::SimpleEventManager;
use libafl::executors::{Executor, ExitKind, HasObservers};
use libafl::feedbacks::{CrashFeedback, MaxMapFeedback};
use libafl::fuzzer::{Evaluator, Fuzzer, StdFuzzer};
use libafl::inputs::{BytesInput, HasTargetBytes};
use libafl::monitors::NopMonitor;
use libafl::mutators::{havoc_mutations, tokens_mutations, HavocScheduledMutator, Tokens};
use libafl::observers::{MapObserver, StdMapObserver};
use libafl::schedulers::QueueScheduler;
use libafl::state::{HasExecutions, StdState};
use libafl::HasMetadata;
use libafl_bolts::rands::StdRand;
use libafl_bolts::tuples::{tuple_list, Merge, RefIndexable};
use xenprobe_fuzz::cmplog::CmpValues;
use xenprobe_fuzz::havoc::HavocStage;
use xenprobe_fuzz::i2s::{InputToStateStage, Traceable};

/// Blocks of the model.
const BLOCKS: usize = 40;
/// A traced run costs about five ordinary runs in the lab.
const TRACE_COST: u64 = 5;

thread_local! {
    /// Comparisons of the current run, when it is traced.
    static CMPS: RefCell<Option<Vec<CmpValues>>> = const { RefCell::new(None) };
}

fn cmp(size: usize, a: u64, b: u64) {
    CMPS.with(|l| {
        if let Some(v) = l.borrow_mut().as_mut() {
            v.push(CmpValues { size, a, b });
        }
    });
}

fn le32(v: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

/// guests/tlv's `parse`, with a block index per branch (`hit`), the
/// comparisons the guest's `cmp`s log, and the planted bug reached (1-3).
fn parse(input: &[u8], hit: &mut dyn FnMut(usize)) -> Option<u8> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Idle,
        Greeted,
        Authed,
        Closed,
    }
    let (mut st, mut msgs, mut bytes, mut pos) = (St::Idle, 0u64, 0u64, 0usize);
    hit(0);
    while pos + 2 <= input.len() && st != St::Closed {
        hit(1);
        let (ty, len) = (input[pos], input[pos + 1] as usize);
        let Some(value) = input.get(pos + 2..pos + 2 + len) else {
            hit(2);
            return None;
        };
        cmp(1, ty.into(), 0xee);
        cmp(1, ty.into(), 7);
        let ok = match (ty, st) {
            (1, St::Idle) => {
                hit(3);
                st = St::Greeted;
                true
            }
            (2, St::Greeted) => {
                hit(4);
                cmp(8, len as u64, 4);
                if len == 4 {
                    cmp(4, le32(value), le32(b"xp!k"));
                }
                let ok = value == b"xp!k";
                hit(if ok { 6 } else { 5 });
                if ok {
                    st = St::Authed;
                }
                ok
            }
            (3, St::Authed) => {
                hit(7);
                msgs += 1;
                bytes += len as u64;
                true
            }
            (4, St::Authed) => {
                hit(8);
                msgs = 0;
                true
            }
            (5, _) => {
                hit(9);
                cmp(8, len as u64, 4);
                if len != 4 {
                    hit(10);
                    false
                } else {
                    let off = (pos + 2) as u64 + le32(value);
                    if off as u32 as usize >= input.len() {
                        hit(11);
                        false
                    } else if off as usize >= input.len() {
                        return Some(2);
                    } else {
                        hit(12);
                        true
                    }
                }
            }
            (6, St::Authed) => {
                hit(13);
                if bytes > 0 && msgs == 0 {
                    return Some(3);
                }
                hit(if bytes > 0 { 14 } else { 15 });
                true
            }
            (7, _) => {
                hit(16);
                st = St::Closed;
                true
            }
            (0xee, _) => {
                hit(17);
                if value.first().is_none_or(|&v| v >= 4) {
                    return Some(1);
                }
                hit(18);
                true
            }
            (1..=7, s) => {
                hit(19);
                hit(30 + s as usize);
                false
            }
            _ => {
                hit(20);
                true
            }
        };
        if !ok {
            hit(21);
            return None;
        }
        pos += 2 + len;
    }
    hit(22);
    hit(30 + st as usize);
    None
}

/// Runs the model with one-shot coverage: the map shows blocks hit for the
/// first time in the campaign, as the guest's removed breakpoints do.
struct ModelExecutor {
    observers: (StdMapObserver<'static, u8, false>, ()),
    seen: [bool; BLOCKS],
    /// The cost of the runs so far: one per run, [`TRACE_COST`] per traced run.
    cost: u64,
    /// The cost when TLV-3 was first reached.
    found: Option<u64>,
}

impl HasObservers for ModelExecutor {
    type Observers = (StdMapObserver<'static, u8, false>, ());

    fn observers(&self) -> RefIndexable<&Self::Observers, Self::Observers> {
        RefIndexable::from(&self.observers)
    }

    fn observers_mut(&mut self) -> RefIndexable<&mut Self::Observers, Self::Observers> {
        RefIndexable::from(&mut self.observers)
    }
}

impl<EM, S: HasExecutions, Z> Executor<EM, BytesInput, S, Z> for ModelExecutor {
    fn run_target(
        &mut self,
        _fuzzer: &mut Z,
        state: &mut S,
        _mgr: &mut EM,
        input: &BytesInput,
    ) -> Result<ExitKind, libafl::Error> {
        *state.executions_mut() += 1;
        let traced = CMPS.with(|l| l.borrow().is_some());
        self.cost += if traced { TRACE_COST } else { 1 };
        let mut hits = [false; BLOCKS];
        let bug = parse(&input.target_bytes(), &mut |i| hits[i] = true);
        let map = &mut self.observers.0;
        map.reset_map()?;
        for (i, &h) in hits.iter().enumerate() {
            if h && !self.seen[i] {
                map.set(i, 1);
            }
            self.seen[i] |= h;
        }
        if bug == Some(3) && self.found.is_none() {
            self.found = Some(self.cost);
        }
        Ok(if bug.is_some() {
            ExitKind::Crash
        } else {
            ExitKind::Ok
        })
    }
}

/// The input-to-state stage's view: the clock counts the cost of runs, so
/// its time share is the share of executions (traced runs weighted).
impl Traceable for ModelExecutor {
    fn can_trace(&self) -> bool {
        true
    }

    fn trace_next_run(&mut self) {
        CMPS.with(|l| *l.borrow_mut() = Some(Vec::new()));
    }

    fn take_comparisons(&mut self) -> Vec<CmpValues> {
        CMPS.with(|l| l.borrow_mut().take()).unwrap_or_default()
    }

    fn clock(&self) -> Duration {
        Duration::from_micros(self.cost)
    }
}

/// Executions (traced runs weighted) until TLV-3, or None within `cap`.
fn campaign(seed: u64, stack_pow: usize, cap: u64) -> Result<Option<u64>, libafl::Error> {
    let mut executor = ModelExecutor {
        observers: (StdMapObserver::owned("blocks", vec![0u8; BLOCKS]), ()),
        seen: [false; BLOCKS],
        cost: 0,
        found: None,
    };
    let mut feedback = MaxMapFeedback::new(&executor.observers.0);
    let mut objective = CrashFeedback::new();
    let mut state = StdState::new(
        StdRand::with_seed(seed),
        InMemoryCorpus::<BytesInput>::new(),
        InMemoryCorpus::new(),
        &mut feedback,
        &mut objective,
    )?;
    // The tokens tokens_in_image finds in the tlv image.
    let tokens: Vec<Vec<u8>> = vec![
        vec![0x78],
        vec![2],
        vec![7],
        vec![0xee, 0, 0, 0],
        vec![4],
        b"xp!k".to_vec(),
        vec![0, 0x20, 0, 0],
        vec![3],
    ];
    let mut dict = Tokens::new();
    dict.add_tokens(tokens.iter());
    state.add_metadata(dict);
    let mut fuzzer = StdFuzzer::new(QueueScheduler::new(), feedback, objective);
    let mut mgr = SimpleEventManager::new(NopMonitor::new());
    for input in xenprobe_fuzz::campaign::default_seeds() {
        fuzzer.add_input(&mut state, &mut executor, &mut mgr, input)?;
    }
    let havoc = HavocScheduledMutator::with_max_stack_pow(
        havoc_mutations().merge(tokens_mutations()),
        stack_pow,
    );
    let i2s = InputToStateStage::new(
        HavocScheduledMutator::with_max_stack_pow(havoc_mutations(), stack_pow),
        true,
    );
    let mut stages = tuple_list!(HavocStage::new(havoc), i2s);
    while executor.found.is_none() && *state.executions() < cap {
        fuzzer.fuzz_one(&mut stages, &mut executor, &mut state, &mut mgr)?;
    }
    Ok(executor.found)
}

fn main() -> Result<(), libafl::Error> {
    let mut args = std::env::args().skip(1);
    let runs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let cap: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    println!("executions to TLV-3, {runs} seeded runs of at most {cap} executions");
    for pow in [7, xenprobe_fuzz::campaign::HAVOC_STACK_POW] {
        let mut n = Vec::new();
        for seed in 0..runs {
            n.push(campaign(1000 + seed, pow, cap)?.unwrap_or(u64::MAX));
        }
        n.sort_unstable();
        let found = n.iter().filter(|&&x| x != u64::MAX).count();
        let show = |x: u64| match x {
            u64::MAX => "-".to_string(),
            x => x.to_string(),
        };
        println!(
            "stack 2..{:<4} found {found}/{runs}  median {}  quartiles {} {}",
            1u32 << pow,
            show(n[n.len() / 2]),
            show(n[n.len() / 4]),
            show(n[3 * n.len() / 4])
        );
    }
    Ok(())
}
