//! The input-to-state stage: each fuzzing iteration runs up to
//! [`TRACES_PER_ITERATION`] inputs traced ([`crate::cmplog`]), and after
//! each, the inputs made by writing its logged comparison operands into it
//! are run as ordinary inputs. The first traced input is the current corpus
//! entry itself the first time it is picked; the others are havoc mutants of
//! it. Tracing a mutant, not only the corpus entry, is what solves a
//! checksum over data the mutation just changed: the entry's own checksum
//! already matches, the mutant's does not, and the candidate writes the sum
//! the guest computed over the stored one. The stage sits out while it has
//! used more than [`MAX_SHARE`] of the campaign's time, or more than
//! [`IDLE_SHARE`] once [`IDLE_AFTER`] of its turns in a row added nothing
//! to the corpus: a campaign with it then runs at about 0.9x the rate of
//! one without it.

use std::collections::HashSet;
use std::time::Duration;

use libafl::corpus::{CorpusId, HasCurrentCorpusId};
use libafl::fuzzer::Evaluator;
use libafl::inputs::{BytesInput, HasTargetBytes};
use libafl::mutators::Mutator;
use libafl::stages::{Restartable, Stage};
use libafl::state::HasCurrentTestcase;
use libafl::Error;

use crate::cmplog::{self, CmpValues};

/// Candidate inputs run per traced input, at most.
pub const MAX_CANDIDATES: usize = 16;

/// Traced inputs per fuzzing iteration (the havoc stage before it runs
/// 1-128 mutants), at most.
pub const TRACES_PER_ITERATION: usize = 4;

/// The stage skips its turn while it has used more than this share of the
/// campaign's time (a traced run and its candidates cost about five ordinary
/// runs in the lab; targets with many comparisons make many candidates).
pub const MAX_SHARE: f64 = 0.25;

/// The share it keeps to once it stopped finding: its last [`IDLE_AFTER`]
/// turns added no corpus entry.
pub const IDLE_SHARE: f64 = 0.10;

/// Turns in a row without a new corpus entry after which the stage keeps
/// to [`IDLE_SHARE`] (until one of its runs finds something again).
pub const IDLE_AFTER: u64 = 8;

/// An executor whose runs can log the target's comparisons: what the stage
/// needs of it. The campaign's [`crate::confirm::ConfirmingExecutor`] is one;
/// the host model in `fuzz/examples/stacking_model.rs` is the other.
pub trait Traceable {
    /// Whether the target has comparisons to log at all.
    fn can_trace(&self) -> bool;
    /// Makes the next run a traced one.
    fn trace_next_run(&mut self);
    /// The comparisons logged by the last traced run.
    fn take_comparisons(&mut self) -> Vec<CmpValues>;
    /// The campaign's clock (any origin): the stage's time share and its
    /// time counters are measured on it.
    fn clock(&self) -> Duration;
}

/// The stage (see the module documentation).
#[derive(Debug)]
pub struct InputToStateStage<M> {
    mutator: M,
    enabled: bool,
    /// Corpus entries traced as they are.
    seen: HashSet<CorpusId>,
    /// Traced runs so far.
    pub traced: u64,
    /// Candidate inputs run so far.
    pub candidates: u64,
    /// Time spent in traced runs and in candidate runs.
    pub time: [Duration; 2],
    /// Corpus entries its runs added.
    pub found: u64,
    /// Its turns since one of its runs last added a corpus entry.
    idle_turns: u64,
    /// The executor's clock at the stage's first turn.
    started: Option<Duration>,
}

impl<M> InputToStateStage<M> {
    /// A stage that makes its mutants with `mutator` (a disabled stage
    /// does nothing).
    pub fn new(mutator: M, enabled: bool) -> Self {
        Self {
            mutator,
            enabled,
            seen: HashSet::new(),
            traced: 0,
            candidates: 0,
            time: [Duration::ZERO; 2],
            found: 0,
            idle_turns: 0,
            started: None,
        }
    }

    /// The share of the campaign's time the stage may use now.
    pub fn share(&self) -> f64 {
        share_limit(self.idle_turns)
    }
}

/// [`MAX_SHARE`], or [`IDLE_SHARE`] after `idle_turns` >= [`IDLE_AFTER`].
fn share_limit(idle_turns: u64) -> f64 {
    if idle_turns >= IDLE_AFTER {
        IDLE_SHARE
    } else {
        MAX_SHARE
    }
}

impl<M> InputToStateStage<M> {
    /// The mutator that makes the traced mutants.
    pub fn mutator(&self) -> &M {
        &self.mutator
    }
}

impl<E, M, EM, S, Z> Stage<E, EM, S, Z> for InputToStateStage<M>
where
    E: Traceable,
    M: Mutator<BytesInput, S>,
    S: HasCurrentTestcase<BytesInput> + HasCurrentCorpusId,
    Z: Evaluator<E, EM, BytesInput, S>,
{
    fn perform(
        &mut self,
        fuzzer: &mut Z,
        executor: &mut E,
        state: &mut S,
        manager: &mut EM,
    ) -> Result<(), Error> {
        if !self.enabled || !executor.can_trace() {
            return Ok(());
        }
        let now = executor.clock();
        let started = *self.started.get_or_insert(now);
        let spent = (self.time[0] + self.time[1]).as_secs_f64();
        if spent > self.share() * (now - started).as_secs_f64() {
            return Ok(());
        }
        let found_before = self.found;
        let mut first = match state.current_corpus_id()? {
            Some(id) => self.seen.insert(id),
            None => false,
        };
        let entry = state.current_input_cloned()?;
        for _ in 0..TRACES_PER_ITERATION {
            let mut input = entry.clone();
            if !std::mem::take(&mut first) {
                // A skipped mutation traces the entry again, which is harmless.
                self.mutator.mutate(state, &mut input)?;
            }
            let t = executor.clock();
            executor.trace_next_run();
            let (_, id) = fuzzer.evaluate_input(state, executor, manager, &input)?;
            self.found += u64::from(id.is_some());
            let logs = executor.take_comparisons();
            self.traced += 1;
            let t2 = executor.clock();
            self.time[0] += t2 - t;
            let bytes = input.target_bytes().to_vec();
            for c in cmplog::candidates(&bytes, &logs, MAX_CANDIDATES) {
                let (_, id) =
                    fuzzer.evaluate_input(state, executor, manager, &BytesInput::new(c))?;
                self.found += u64::from(id.is_some());
                self.candidates += 1;
            }
            self.time[1] += executor.clock() - t2;
        }
        if self.found > found_before {
            self.idle_turns = 0;
        } else {
            self.idle_turns += 1;
        }
        Ok(())
    }
}

impl<M, S> Restartable<S> for InputToStateStage<M> {
    fn should_restart(&mut self, _state: &mut S) -> Result<bool, Error> {
        Ok(true)
    }

    fn clear_progress(&mut self, _state: &mut S) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use libafl::corpus::Corpus;
    use libafl::corpus::{InMemoryCorpus, Testcase};
    use libafl::events::NopEventManager;
    use libafl::executors::{Executor, ExitKind, HasObservers};
    use libafl::feedbacks::ConstFeedback;
    use libafl::fuzzer::{Fuzzer, StdFuzzer};
    use libafl::mutators::{havoc_mutations, HavocScheduledMutator};
    use libafl::schedulers::QueueScheduler;
    use libafl::state::{HasCorpus, StdState};
    use libafl_bolts::rands::StdRand;
    use libafl_bolts::tuples::{tuple_list, RefIndexable};

    use super::*;

    const MAGIC: u32 = 0xdead_beef;

    /// A target that compares its first four bytes with [`MAGIC`]; each run
    /// costs 1 on the clock, a traced run `trace_cost`.
    struct Target {
        observers: (),
        trace_cost: u64,
        tracing: bool,
        logs: Vec<CmpValues>,
        cost: u64,
        runs: u64,
        solved: bool,
    }

    impl Target {
        fn new(trace_cost: u64) -> Self {
            Self {
                observers: (),
                trace_cost,
                tracing: false,
                logs: Vec::new(),
                cost: 0,
                runs: 0,
                solved: false,
            }
        }
    }

    impl HasObservers for Target {
        type Observers = ();
        fn observers(&self) -> RefIndexable<&(), ()> {
            RefIndexable::from(&self.observers)
        }
        fn observers_mut(&mut self) -> RefIndexable<&mut (), ()> {
            RefIndexable::from(&mut self.observers)
        }
    }

    impl<EM, S, Z> Executor<EM, BytesInput, S, Z> for Target {
        fn run_target(
            &mut self,
            _: &mut Z,
            _: &mut S,
            _: &mut EM,
            input: &BytesInput,
        ) -> Result<ExitKind, Error> {
            let bytes = input.target_bytes();
            let head = bytes
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            self.runs += 1;
            self.cost += if self.tracing { self.trace_cost } else { 1 };
            if std::mem::take(&mut self.tracing) {
                if let Some(h) = head {
                    self.logs.push(CmpValues {
                        size: 4,
                        a: h.into(),
                        b: MAGIC.into(),
                    });
                }
            }
            self.solved |= head == Some(MAGIC);
            Ok(ExitKind::Ok)
        }
    }

    impl Traceable for Target {
        fn can_trace(&self) -> bool {
            true
        }
        fn trace_next_run(&mut self) {
            self.tracing = true;
        }
        fn take_comparisons(&mut self) -> Vec<CmpValues> {
            std::mem::take(&mut self.logs)
        }
        fn clock(&self) -> Duration {
            Duration::from_micros(self.cost)
        }
    }

    /// Runs `iterations` of the stage alone on a one-entry corpus.
    fn run(target: &mut Target, iterations: usize) -> InputToStateStage<impl Sized> {
        run_between(target, iterations, 0)
    }

    /// [`run`], with `between` added to the clock after each iteration (the
    /// time the campaign's other stages would take).
    fn run_between(
        target: &mut Target,
        iterations: usize,
        between: u64,
    ) -> InputToStateStage<impl Sized> {
        let mut feedback = ConstFeedback::new(false);
        let mut objective = ConstFeedback::new(false);
        let mut state = StdState::new(
            StdRand::with_seed(7),
            InMemoryCorpus::<BytesInput>::new(),
            InMemoryCorpus::new(),
            &mut feedback,
            &mut objective,
        )
        .unwrap();
        state
            .corpus_mut()
            .add(Testcase::new(BytesInput::new(b"AAAAxyz".to_vec())))
            .unwrap();
        let mut fuzzer = StdFuzzer::new(QueueScheduler::new(), feedback, objective);
        let mut stages = tuple_list!(InputToStateStage::new(
            HavocScheduledMutator::new(havoc_mutations()),
            true
        ));
        let mut mgr = NopEventManager::new();
        for _ in 0..iterations {
            fuzzer
                .fuzz_one(&mut stages, target, &mut state, &mut mgr)
                .unwrap();
            target.cost += between;
        }
        stages.0
    }

    #[test]
    fn writes_a_compared_operand_into_the_input() {
        let mut t = Target::new(5);
        let stage = run(&mut t, 1);
        assert!(t.solved, "no candidate carried the compared value");
        assert_eq!(stage.traced, TRACES_PER_ITERATION as u64);
        assert!(stage.candidates >= 1);
        assert_eq!(t.runs, stage.traced + stage.candidates);
    }

    #[test]
    fn keeps_to_a_smaller_share_once_it_stops_finding() {
        assert_eq!(share_limit(0), MAX_SHARE);
        assert_eq!(share_limit(IDLE_AFTER - 1), MAX_SHARE);
        assert_eq!(share_limit(IDLE_AFTER), IDLE_SHARE);
        // Nothing this stage runs is ever new (the feedback is constant),
        // and the rest of the campaign keeps its share low: after
        // IDLE_AFTER turns it keeps to the idle share.
        let mut t = Target::new(1);
        let stage = run_between(&mut t, IDLE_AFTER as usize + 2, 1_000_000);
        assert_eq!(stage.found, 0);
        assert_eq!(stage.traced, (IDLE_AFTER + 2) * TRACES_PER_ITERATION as u64);
        assert_eq!(stage.share(), IDLE_SHARE);
    }

    #[test]
    fn sits_out_beyond_its_share_of_the_clock() {
        // Traced runs so dear that the stage is over its share after its
        // first turn, and nothing else runs to bring the share down.
        let mut t = Target::new(1000);
        let stage = run(&mut t, 5);
        assert_eq!(stage.traced, TRACES_PER_ITERATION as u64);
        assert!(stage.time[0] >= Duration::from_micros(1000 * stage.traced));
    }
}
