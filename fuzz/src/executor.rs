//! The LibAFL executor: one input = restore the snapshot, write the input,
//! run to the end point, a crash sink or the timeout.

use libafl::executors::{Executor, ExitKind, HasObservers};
use libafl::inputs::{BytesInput, HasTargetBytes};
use libafl::observers::{MapObserver, StdMapObserver};
use libafl::state::HasExecutions;
use libafl::Error;
use libafl_bolts::tuples::RefIndexable;

use crate::cmplog::CmpValues;
use crate::feedback::OutcomeObserver;
use crate::report::Outcome;
use crate::session::Session;

/// Name of the block-coverage map observer.
pub const COVERAGE_MAP: &str = "blocks";

/// The observers this executor fills: block coverage and the run's outcome.
pub type Observers = (StdMapObserver<'static, u8, false>, (OutcomeObserver, ()));

/// Runs inputs in a guest through a [`Session`].
pub struct XenExecutor {
    session: Session,
    observers: Observers,
    in_runs: std::time::Duration,
    /// The next run logs comparisons ([`Session::run_traced`]).
    trace_next: bool,
    comparisons: Vec<CmpValues>,
}

impl std::fmt::Debug for XenExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenExecutor")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl XenExecutor {
    /// Wraps a started session; the coverage map has one entry per block.
    pub fn new(session: Session) -> Self {
        let map = StdMapObserver::owned(COVERAGE_MAP, vec![0u8; session.blocks.len().max(1)]);
        Self {
            session,
            observers: (map, (OutcomeObserver::default(), ())),
            in_runs: std::time::Duration::ZERO,
            trace_next: false,
            comparisons: Vec::new(),
        }
    }

    /// Makes the next run a traced one: it also logs the operands of the
    /// comparisons it reaches (see [`XenExecutor::take_comparisons`]).
    pub fn trace_next_run(&mut self) {
        self.trace_next = true;
    }

    /// The comparisons logged by the last traced run.
    pub fn take_comparisons(&mut self) -> Vec<CmpValues> {
        std::mem::take(&mut self.comparisons)
    }

    /// The session (coverage counters, finish).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Wall time spent inside [`Session::run`] (the rest of a campaign is
    /// LibAFL's own work: mutation, feedback, corpus), timed with the TSC.
    pub fn time_in_runs(&self) -> std::time::Duration {
        self.in_runs
    }

    /// Gives the session back (to finish it).
    pub fn into_session(self) -> Session {
        self.session
    }
}

impl HasObservers for XenExecutor {
    type Observers = Observers;

    fn observers(&self) -> RefIndexable<&Self::Observers, Self::Observers> {
        RefIndexable::from(&self.observers)
    }

    fn observers_mut(&mut self) -> RefIndexable<&mut Self::Observers, Self::Observers> {
        RefIndexable::from(&mut self.observers)
    }
}

impl<EM, S, Z> Executor<EM, BytesInput, S, Z> for XenExecutor
where
    S: HasExecutions,
{
    fn run_target(
        &mut self,
        _fuzzer: &mut Z,
        state: &mut S,
        _mgr: &mut EM,
        input: &BytesInput,
    ) -> Result<ExitKind, Error> {
        // After Ctrl-C or SIGTERM the rest of the current stage is skipped
        // (no run, nothing new, not counted): the campaign loop then stops
        // at once and restores the guest in order, well within the signal
        // handler's grace (see `xenprobe::vmi::cleanup::restore_on_ctrl_c`).
        if xenprobe::vmi::cleanup::interrupted() {
            self.trace_next = false;
            self.comparisons.clear();
            self.observers.1 .0.set(Outcome::Ok);
            return Ok(ExitKind::Ok);
        }
        *state.executions_mut() += 1;
        let bytes = input.target_bytes();
        // The TSC: a clock read is a system call in a PV dom0.
        let t = xenprobe::xen::Stamp::now();
        let run = if std::mem::take(&mut self.trace_next) {
            self.session.run_traced(&bytes).map(|(o, b, log)| {
                self.comparisons = log;
                (o, b)
            })
        } else {
            self.session.run(&bytes)
        };
        self.in_runs += t.elapsed();
        let (outcome, new_blocks) =
            run.map_err(|e| Error::unknown(format!("running the guest: {e}")))?;
        for i in new_blocks {
            self.observers.0.set(i, 1);
        }
        let kind = match &outcome {
            Outcome::Ok => ExitKind::Ok,
            Outcome::Crash(_) => ExitKind::Crash,
            Outcome::Hang(_) => ExitKind::Timeout,
        };
        self.observers.1 .0.set(outcome);
        Ok(kind)
    }
}
