//! Continue and single-step (`vCont`, `c`, `s`). The engine runs the whole
//! domain in both cases; a step is done right away and its stop is handed to
//! the event loop.

use gdbstub::common::{Signal, Tid};
use gdbstub::target::ext::base::multithread::{
    MultiThreadResume, MultiThreadSchedulerLocking, MultiThreadSchedulerLockingOps,
    MultiThreadSingleStep, MultiThreadSingleStepOps,
};

use crate::vmi::Error;

use super::backend::Debuggee;
use super::target::{vcpu_of, StubTarget};

impl<D: Debuggee> MultiThreadResume for StubTarget<D> {
    fn resume(&mut self) -> Result<(), Error> {
        if self.finished {
            return Ok(());
        }
        match self.step_vcpu.take() {
            Some(vcpu) => match self.debuggee.step(vcpu) {
                Ok(stop) => self.pending = Some(stop),
                Err(e) => {
                    // Report the failed step as a stop where it is rather
                    // than ending the session.
                    tracing::warn!("step failed: {e}");
                    self.pending = Some(super::backend::Stop::Trap { vcpu });
                }
            },
            None => self.debuggee.resume()?,
        }
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Error> {
        self.step_vcpu = None;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        _tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Error> {
        // Signals cannot be delivered to a Xen guest: ignored.
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl<D: Debuggee> MultiThreadSchedulerLocking for StubTarget<D> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Error> {
        // "Only the named threads run": the engine steps the whole domain
        // (see the engine's limits); other vCPUs stop again right after.
        Ok(())
    }
}

impl<D: Debuggee> MultiThreadSingleStep for StubTarget<D> {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), Error> {
        self.step_vcpu = Some(vcpu_of(tid));
        Ok(())
    }
}
