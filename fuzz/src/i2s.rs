//! The input-to-state stage: each fuzzing iteration runs up to
//! [`TRACES_PER_ITERATION`] inputs traced ([`crate::cmplog`]), and after
//! each, the inputs made by writing its logged comparison operands into it
//! are run as ordinary inputs. The first traced input is the current corpus
//! entry itself the first time it is picked; the others are havoc mutants of
//! it. Tracing a mutant, not only the corpus entry, is what solves a
//! checksum over data the mutation just changed: the entry's own checksum
//! already matches, the mutant's does not, and the candidate writes the sum
//! the guest computed over the stored one. The stage sits out while it has
//! used more than [`MAX_SHARE`] of the campaign's time.

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
            started: None,
        }
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
        if spent > MAX_SHARE * (now - started).as_secs_f64() {
            return Ok(());
        }
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
            fuzzer.evaluate_input(state, executor, manager, &input)?;
            let logs = executor.take_comparisons();
            self.traced += 1;
            let t2 = executor.clock();
            self.time[0] += t2 - t;
            let bytes = input.target_bytes().to_vec();
            for c in cmplog::candidates(&bytes, &logs, MAX_CANDIDATES) {
                fuzzer.evaluate_input(state, executor, manager, &BytesInput::new(c))?;
                self.candidates += 1;
            }
            self.time[1] += executor.clock() - t2;
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
