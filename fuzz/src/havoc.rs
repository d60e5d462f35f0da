//! The campaign's havoc stage: LibAFL's `StdMutationalStage` (1 to
//! [`MAX_ITERATIONS`] mutants of the current corpus entry a turn), with
//! every mutant made in one buffer kept across runs instead of a fresh copy
//! of the entry each time. A run then allocates nothing on its way through
//! the stage (no copy, no growth when a mutation inserts bytes), and the
//! allocator's code and heap pages stay out of the pages a run touches
//! (each costs a TLB refill after every system call in a PV dom0).

use std::borrow::Cow;
use std::num::NonZeroUsize;

use libafl::corpus::HasCurrentCorpusId;
use libafl::fuzzer::Evaluator;
use libafl::inputs::{BytesInput, HasMutatorBytes};
use libafl::mutators::{MutationResult, Mutator};
use libafl::stages::mutational::DEFAULT_MUTATIONAL_MAX_ITERATIONS;
use libafl::stages::{Restartable, Stage};
use libafl::state::{HasCurrentTestcase, HasRand};
use libafl::Error;
use libafl_bolts::rands::Rand;
use libafl_bolts::Named;

/// Mutants a turn, at most (LibAFL's default for its mutational stage).
pub const MAX_ITERATIONS: NonZeroUsize = libafl::nonzero!(DEFAULT_MUTATIONAL_MAX_ITERATIONS);

/// The stage (see the module documentation).
#[derive(Debug)]
pub struct HavocStage<M> {
    mutator: M,
    /// The current corpus entry's bytes, for this turn.
    base: Vec<u8>,
    /// The mutant being made and run.
    mutant: BytesInput,
}

impl<M> HavocStage<M> {
    /// A stage making its mutants with `mutator`.
    pub fn new(mutator: M) -> Self {
        Self {
            mutator,
            base: Vec::new(),
            mutant: BytesInput::new(Vec::new()),
        }
    }

    /// The mutator.
    pub fn mutator(&self) -> &M {
        &self.mutator
    }
}

impl<M> Named for HavocStage<M> {
    fn name(&self) -> &Cow<'static, str> {
        static NAME: Cow<'static, str> = Cow::Borrowed("havoc");
        &NAME
    }
}

impl<S, M> Restartable<S> for HavocStage<M> {
    fn should_restart(&mut self, _state: &mut S) -> Result<bool, Error> {
        Ok(true)
    }

    fn clear_progress(&mut self, _state: &mut S) -> Result<(), Error> {
        Ok(())
    }
}

impl<E, EM, M, S, Z> Stage<E, EM, S, Z> for HavocStage<M>
where
    M: Mutator<BytesInput, S>,
    S: HasRand + HasCurrentTestcase<BytesInput> + HasCurrentCorpusId,
    Z: Evaluator<E, EM, BytesInput, S>,
{
    fn perform(
        &mut self,
        fuzzer: &mut Z,
        executor: &mut E,
        state: &mut S,
        manager: &mut EM,
    ) -> Result<(), Error> {
        let turns = 1 + state.rand_mut().below(MAX_ITERATIONS);
        {
            let entry = state.current_testcase()?;
            let Some(input) = entry.input() else {
                return Ok(());
            };
            self.base.clear();
            self.base.extend_from_slice(input.mutator_bytes());
        }
        for _ in 0..turns {
            let bytes = self.mutant.as_mut();
            bytes.clear();
            bytes.extend_from_slice(&self.base);
            if self.mutator.mutate(state, &mut self.mutant)? == MutationResult::Skipped {
                continue;
            }
            let (_, id) = fuzzer.evaluate_filtered(state, executor, manager, &self.mutant)?;
            self.mutator.post_exec(state, id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libafl::corpus::{Corpus, InMemoryCorpus, Testcase};
    use libafl::events::NopEventManager;
    use libafl::executors::{Executor, ExitKind, HasObservers};
    use libafl::feedbacks::ConstFeedback;
    use libafl::fuzzer::StdFuzzer;
    use libafl::schedulers::QueueScheduler;
    use libafl::state::{HasCorpus, HasExecutions, StdState};
    use libafl_bolts::rands::StdRand;
    use libafl_bolts::tuples::RefIndexable;

    /// Records every input it is given.
    struct Recorder {
        inputs: Vec<Vec<u8>>,
        observers: (),
    }

    impl HasObservers for Recorder {
        type Observers = ();
        fn observers(&self) -> RefIndexable<&(), ()> {
            RefIndexable::from(&self.observers)
        }
        fn observers_mut(&mut self) -> RefIndexable<&mut (), ()> {
            RefIndexable::from(&mut self.observers)
        }
    }

    impl<EM, S: HasExecutions, Z> Executor<EM, BytesInput, S, Z> for Recorder {
        fn run_target(
            &mut self,
            _fuzzer: &mut Z,
            state: &mut S,
            _mgr: &mut EM,
            input: &BytesInput,
        ) -> Result<ExitKind, Error> {
            *state.executions_mut() += 1;
            self.inputs.push(input.mutator_bytes().to_vec());
            Ok(ExitKind::Ok)
        }
    }

    /// Appends one byte: a mutant made from the previous mutant instead of
    /// the entry would grow run by run.
    struct Append;

    impl Named for Append {
        fn name(&self) -> &Cow<'static, str> {
            static NAME: Cow<'static, str> = Cow::Borrowed("append");
            &NAME
        }
    }

    impl<S> Mutator<BytesInput, S> for Append {
        fn mutate(
            &mut self,
            _state: &mut S,
            input: &mut BytesInput,
        ) -> Result<MutationResult, Error> {
            input.as_mut().push(0xaa);
            Ok(MutationResult::Mutated)
        }

        fn post_exec(
            &mut self,
            _state: &mut S,
            _new_corpus_id: Option<libafl::corpus::CorpusId>,
        ) -> Result<(), Error> {
            Ok(())
        }
    }

    #[test]
    fn every_mutant_is_made_from_the_corpus_entry() {
        let mut feedback = ConstFeedback::new(false);
        let mut objective = ConstFeedback::new(false);
        let mut state = StdState::new(
            StdRand::with_seed(3),
            InMemoryCorpus::<BytesInput>::new(),
            InMemoryCorpus::<BytesInput>::new(),
            &mut feedback,
            &mut objective,
        )
        .expect("state");
        let id = state
            .corpus_mut()
            .add(Testcase::new(BytesInput::new(b"entry".to_vec())))
            .expect("add");
        state.set_corpus_id(id).expect("current entry");
        let mut fuzzer = StdFuzzer::new(QueueScheduler::new(), feedback, objective);
        let mut executor = Recorder {
            inputs: Vec::new(),
            observers: (),
        };
        let mut stage = HavocStage::new(Append);
        for _ in 0..4 {
            stage
                .perform(
                    &mut fuzzer,
                    &mut executor,
                    &mut state,
                    &mut NopEventManager::new(),
                )
                .expect("stage");
        }
        assert!(
            executor.inputs.len() >= 4,
            "each turn runs 1 to 128 mutants"
        );
        assert!(executor.inputs.len() <= 4 * MAX_ITERATIONS.get());
        assert_eq!(*state.executions() as usize, executor.inputs.len());
        for input in &executor.inputs {
            assert_eq!(input.as_slice(), b"entry\xaa");
        }
    }
}
