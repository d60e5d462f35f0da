//! Hang confirmation: a run that timed out is run again before it counts as
//! a hang. Under load (the lab's dom0 shares two CPUs with the emulated
//! guests) a run that reached its end can miss the per-run timeout because
//! the event arrives late; a real hang times out every time.

use std::time::Duration;

use xenprobe::xen::Stamp;

use libafl::executors::{Executor, ExitKind, HasObservers};
use libafl::inputs::BytesInput;
use libafl::Error;
use libafl_bolts::tuples::RefIndexable;

use crate::cmplog::CmpValues;
use crate::executor::{Observers, XenExecutor};
use crate::i2s::Traceable;
use crate::report::Outcome;
use crate::session::{Result, Session};

/// Runs `input`, running it again (up to `retries` times) while it hangs.
pub fn run_confirmed(session: &mut Session, input: &[u8], retries: u32) -> Result<Outcome> {
    let (mut outcome, _) = session.run(input)?;
    for _ in 0..retries {
        if !matches!(outcome, Outcome::Hang(_)) {
            break;
        }
        tracing::debug!("a run timed out; running it again to confirm the hang");
        outcome = session.run(input)?.0;
    }
    Ok(outcome)
}

/// A [`XenExecutor`] that re-runs an input that timed out (up to `retries`
/// times) and reports a timeout only if every run timed out.
#[derive(Debug)]
pub struct ConfirmingExecutor {
    inner: XenExecutor,
    retries: u32,
    /// Timeouts that did not repeat (not reported as hangs).
    pub dismissed: u64,
    created: Stamp,
}

impl ConfirmingExecutor {
    /// Wraps `inner`.
    pub fn new(inner: XenExecutor, retries: u32) -> Self {
        Self {
            inner,
            retries,
            dismissed: 0,
            created: Stamp::now(),
        }
    }

    /// The wrapped executor.
    pub fn inner(&self) -> &XenExecutor {
        &self.inner
    }

    /// The wrapped executor, mutably.
    pub fn inner_mut(&mut self) -> &mut XenExecutor {
        &mut self.inner
    }

    /// Gives the wrapped executor back.
    pub fn into_inner(self) -> XenExecutor {
        self.inner
    }
}

impl HasObservers for ConfirmingExecutor {
    type Observers = Observers;

    fn observers(&self) -> RefIndexable<&Self::Observers, Self::Observers> {
        self.inner.observers()
    }

    fn observers_mut(&mut self) -> RefIndexable<&mut Self::Observers, Self::Observers> {
        self.inner.observers_mut()
    }
}

impl<EM, S, Z> Executor<EM, BytesInput, S, Z> for ConfirmingExecutor
where
    XenExecutor: Executor<EM, BytesInput, S, Z>,
{
    fn run_target(
        &mut self,
        fuzzer: &mut Z,
        state: &mut S,
        mgr: &mut EM,
        input: &BytesInput,
    ) -> std::result::Result<ExitKind, Error> {
        let mut kind = self.inner.run_target(fuzzer, state, mgr, input)?;
        for _ in 0..self.retries {
            if kind != ExitKind::Timeout {
                break;
            }
            kind = self.inner.run_target(fuzzer, state, mgr, input)?;
            if kind != ExitKind::Timeout {
                self.dismissed += 1;
            }
        }
        Ok(kind)
    }
}

impl Traceable for ConfirmingExecutor {
    fn can_trace(&self) -> bool {
        self.inner.session().comparison_sites() > 0
    }

    fn trace_next_run(&mut self) {
        self.inner.trace_next_run();
    }

    fn take_comparisons(&mut self) -> Vec<CmpValues> {
        self.inner.take_comparisons()
    }

    /// Wall time since the executor was made (the TSC: no system call).
    fn clock(&self) -> Duration {
        self.created.elapsed()
    }
}
