//! LibAFL parts wrapped to time themselves (with the TSC, which costs no
//! system call): where a campaign's time goes besides the guest runs.

use std::borrow::Cow;
use std::time::Duration;

use libafl::corpus::{CorpusId, Testcase};
use libafl::executors::ExitKind;
use libafl::feedbacks::{Feedback, StateInitializer};
use libafl::mutators::{MutationResult, Mutator};
use libafl::Error;
use libafl_bolts::Named;
use xenprobe::xen::Stamp;

/// A mutator or feedback that adds the time of its calls to [`Timed::time`].
#[derive(Debug)]
pub struct Timed<T> {
    /// The wrapped part.
    pub inner: T,
    /// Time spent in it.
    pub time: Duration,
}

impl<T> Timed<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            time: Duration::ZERO,
        }
    }

    fn timed<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        let t = Stamp::now();
        let r = f(&mut self.inner);
        self.time += t.elapsed();
        r
    }
}

impl<T> std::ops::Deref for Timed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for Timed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: Named> Named for Timed<T> {
    fn name(&self) -> &Cow<'static, str> {
        self.inner.name()
    }
}

impl<I, S, M: Mutator<I, S>> Mutator<I, S> for Timed<M> {
    fn mutate(&mut self, state: &mut S, input: &mut I) -> Result<MutationResult, Error> {
        self.timed(|m| m.mutate(state, input))
    }

    fn post_exec(&mut self, state: &mut S, new_corpus_id: Option<CorpusId>) -> Result<(), Error> {
        self.timed(|m| m.post_exec(state, new_corpus_id))
    }
}

impl<S, F: StateInitializer<S>> StateInitializer<S> for Timed<F> {
    fn init_state(&mut self, state: &mut S) -> Result<(), Error> {
        self.inner.init_state(state)
    }
}

impl<EM, I, OT, S, F: Feedback<EM, I, OT, S>> Feedback<EM, I, OT, S> for Timed<F> {
    fn is_interesting(
        &mut self,
        state: &mut S,
        manager: &mut EM,
        input: &I,
        observers: &OT,
        exit_kind: &ExitKind,
    ) -> Result<bool, Error> {
        self.timed(|f| f.is_interesting(state, manager, input, observers, exit_kind))
    }

    fn append_metadata(
        &mut self,
        state: &mut S,
        manager: &mut EM,
        observers: &OT,
        testcase: &mut Testcase<I>,
    ) -> Result<(), Error> {
        self.timed(|f| f.append_metadata(state, manager, observers, testcase))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libafl::inputs::BytesInput;
    use libafl::mutators::BitFlipMutator;
    use libafl::state::NopState;

    #[test]
    fn a_timed_mutator_mutates_and_counts_its_time() {
        let mut state: NopState<BytesInput> = NopState::new();
        let mut m = Timed::new(BitFlipMutator::new());
        let mut input = BytesInput::new(vec![0u8; 16]);
        for _ in 0..100 {
            m.mutate(&mut state, &mut input).expect("mutate");
        }
        assert_ne!(input, BytesInput::new(vec![0u8; 16]), "bits flipped");
        assert!(m.time > Duration::ZERO);
        assert_eq!(m.name(), BitFlipMutator::new().name());
    }
}
