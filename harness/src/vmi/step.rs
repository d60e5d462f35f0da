//! Single-stepping: MTF where the CPU has it, else RFLAGS.TF reported by the
//! debug-exception monitor (HVM/PVH) or by the gdbsx debugger pause (PV).
//!
//! TF is hidden from the guest: it is set only for the step, cleared after,
//! and a `pushf` executed under it gets TF cleared in the pushed copy.

use std::time::Duration;

use iced_x86::{Code, Decoder, DecoderOptions};

use crate::xen::{DebugEventType, EventReason, VmEventRequest};

use super::breakpoint::BreakpointId;
use super::caps::StepMethod;
use super::domain::Domain;
use super::error::{Error, Result};
use super::events::{Deadline, Decision, Event, Raw, StopReason};
use super::regs::RFLAGS_TF;

/// How long a single step may take before it is reported as stuck.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `bytes` (at `rip`) start with a `pushf`, whose pushed RFLAGS
/// would reveal the trap flag.
pub(crate) fn is_pushf(bytes: &[u8], rip: u64) -> bool {
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    if !d.can_decode() {
        return false;
    }
    matches!(
        d.decode().code(),
        Code::Pushfq | Code::Pushfw | Code::Pushfd
    )
}

impl Domain {
    /// Executes one instruction on `vcpu` (the domain must be stopped) and
    /// stops again. A breakpoint at the current RIP is stepped over.
    pub fn step(&mut self, vcpu: u32) -> Result<Event> {
        if !self.is_stopped() {
            return Err(Error::State(
                "step() needs a stopped domain: pause() first".into(),
            ));
        }
        self.ensure_debug()?;
        self.settle_register_reset()?;
        if let Some(rip) = self.complete_cpuid(vcpu)? {
            // The cpuid has run: moving past it is the step.
            return Ok(Event::Step { vcpu, rip });
        }
        let rip = self.single_step(vcpu)?;
        Ok(Event::Step { vcpu, rip })
    }

    /// A vCPU stopped at a `cpuid` event whose RIP is still on it: moves RIP
    /// past the instruction (Xen put its results in the registers already)
    /// and returns the new RIP. `None` for any other vCPU. Resuming does
    /// this anyway; a snapshot taken at a marker needs it first.
    pub fn complete_cpuid(&mut self, vcpu: u32) -> Result<Option<u64>> {
        let Some((len, at)) = self.stops.pending.get(&vcpu).and_then(|p| match p.reason {
            StopReason::Cpuid(len) => p.request.as_ref().map(|r| (len, r.regs().rip)),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut regs = self.regs(vcpu)?;
        if let Some(p) = self.stops.pending.get_mut(&vcpu) {
            p.reason = StopReason::Other;
        }
        if regs.rip != at {
            return Ok(None);
        }
        regs.rip = regs.rip.wrapping_add(u64::from(len));
        self.set_regs(vcpu, &regs)?;
        Ok(Some(regs.rip))
    }

    /// Before resuming: vCPUs at a `cpuid` event whose registers were
    /// written meanwhile get RIP moved past it here (the others get it in
    /// their vm_event reply, see `Pending::response`).
    pub(crate) fn complete_cpuid_stops(&mut self) -> Result<()> {
        for vcpu in self.stops.changed_cpuid_stops() {
            self.complete_cpuid(vcpu)?;
        }
        Ok(())
    }

    /// Steps every vCPU that is stopped on a planted breakpoint over it.
    pub(crate) fn step_over_breakpoints(&mut self) -> Result<()> {
        let on_bp: Vec<(u32, BreakpointId, u64)> = self
            .stops
            .pending
            .iter()
            .filter(|(_, p)| p.delivered)
            .filter_map(|(&v, p)| match p.reason {
                StopReason::Breakpoint(id) => self
                    .bps
                    .get(id)
                    .filter(|b| b.planted)
                    .map(|b| (v, id, b.va)),
                _ => None,
            })
            .collect();
        for (vcpu, id, va) in on_bp {
            if !self.xen.settings().slow_step && self.fast_step_over(vcpu, id, va)? {
                continue;
            }
            if self.regs(vcpu)?.rip == va {
                self.single_step(vcpu)?;
            }
        }
        Ok(())
    }

    /// One instruction on `vcpu`; returns the new RIP. Leaves the domain
    /// stopped with `vcpu` pending as a step.
    pub(crate) fn single_step(&mut self, vcpu: u32) -> Result<u64> {
        let method = self.caps.step_method()?;
        let mut regs = self.regs(vcpu)?;
        let start_rip = regs.rip;
        let bp_here = self
            .bps
            .at(start_rip)
            .filter(|&id| self.bps.get(id).is_some_and(|b| b.planted));
        if let Some(id) = bp_here {
            self.unplant(id)?;
        }
        let mut insn = [0u8; 15];
        let pushf =
            self.read_virt_on(vcpu, start_rip, &mut insn).is_ok() && is_pushf(&insn, start_rip);
        let had_tf = regs.rflags & RFLAGS_TF != 0;
        let armed = match method {
            StepMethod::Mtf => self
                .xen
                .xc
                .domain_debug_single_step(self.domid, vcpu, true)
                .map_err(Error::from),
            StepMethod::TrapFlagMonitor | StepMethod::TrapFlagGdbsx => {
                if !had_tf {
                    regs.rflags |= RFLAGS_TF;
                    self.journal
                        .set_stepping(vcpu, true)
                        .and_then(|()| self.set_regs(vcpu, &regs))
                } else {
                    Ok(())
                }
            }
        };
        let result = armed.and_then(|_| self.run_until_step(vcpu));
        // Undo the stepping state whatever happened.
        let undo = (|| -> Result<()> {
            if self.stops.shutdown_queued() {
                return Ok(());
            }
            match method {
                StepMethod::Mtf => self
                    .xen
                    .xc
                    .domain_debug_single_step(self.domid, vcpu, false)?,
                StepMethod::TrapFlagMonitor | StepMethod::TrapFlagGdbsx => {
                    if !had_tf {
                        let mut r = self.regs(vcpu)?;
                        r.rflags &= !RFLAGS_TF;
                        self.set_regs(vcpu, &r)?;
                        self.journal.set_stepping(vcpu, false)?;
                        if pushf && r.rip != start_rip {
                            let mut top = [0u8; 8];
                            self.read_virt_on(vcpu, r.rsp, &mut top)?;
                            let v = u64::from_le_bytes(top) & !RFLAGS_TF;
                            self.write_virt_on(vcpu, r.rsp, &v.to_le_bytes())?;
                        }
                    }
                }
            }
            if let Some(id) = bp_here {
                self.replant(id)?;
            }
            Ok(())
        })();
        let rip = result?;
        undo?;
        Ok(rip)
    }

    /// Lets `vcpu` run until its step event; other events are recorded
    /// (their vCPUs stay stopped) and queued for `wait_event`. Leaves the
    /// domain stopped with `vcpu` pending as a step.
    fn run_until_step(&mut self, vcpu: u32) -> Result<u64> {
        self.stops.answer(vcpu)?;
        self.unpause_all()?;
        match self.wait_for_step(vcpu)? {
            Some(req) => {
                let rip = req.regs().rip;
                self.stop_vcpu(vcpu, Some(req), StopReason::Step, true)?;
                Ok(rip)
            }
            None => {
                // PV: the debugger pause stopped the domain.
                let rip = self.regs(vcpu)?.rip;
                self.stops.record_stop(vcpu, None, StopReason::Step, true);
                Ok(rip)
            }
        }
    }

    fn unpause_all(&mut self) -> Result<()> {
        self.mem.invalidate();
        self.regs_backend.forget();
        self.stops.unpause(&self.xen.xc, self.domid)
    }

    /// Waits (guest running) for `vcpu`'s step event: the vm_event request
    /// (HVM/PVH, left unanswered) or `None` when a PV domain paused for the
    /// debugger. Other events are recorded and queued.
    fn wait_for_step(&mut self, vcpu: u32) -> Result<Option<VmEventRequest>> {
        let mut deadline = Deadline::after(STEP_TIMEOUT);
        loop {
            match self.next_raw(&mut deadline)? {
                None => {
                    self.pause()?;
                    return Err(Error::State(format!(
                        "single step on vcpu {vcpu} did not finish within {STEP_TIMEOUT:?}"
                    )));
                }
                Some(Raw::Shutdown(reason)) => {
                    self.stops.queue(Event::Shutdown { reason });
                    return Err(Error::State(format!(
                        "the guest shut down ({reason:?}) during a step"
                    )));
                }
                Some(Raw::PvStopped) => return Ok(None),
                Some(Raw::Request(req)) => {
                    let is_step = req.vcpu() == vcpu
                        && matches!(
                            (req.reason(), req.debug()),
                            (
                                EventReason::DebugException,
                                Some((DebugEventType::HwException, ..))
                            ) | (EventReason::Singlestep, _)
                        );
                    if is_step {
                        return Ok(Some(req));
                    }
                    if let Decision::Stop(reason, event) = self.decide(&req)? {
                        // Keep that vCPU stopped (unanswered) without pausing the domain.
                        self.stops.record_stop(req.vcpu(), Some(req), reason, false);
                        self.stops.queue(event);
                    }
                }
            }
        }
    }

    /// Steps `vcpu` over the breakpoint at `va` without stopping again, using
    /// the registers carried by the vm_event requests (TF set and cleared in
    /// the responses): no context get/set and no extra pause. Only when the
    /// stop is a trap-flag-monitor breakpoint stop whose registers nobody
    /// changed; returns false when it does not apply.
    fn fast_step_over(&mut self, vcpu: u32, id: BreakpointId, va: u64) -> Result<bool> {
        if !self.stops.events.has_ring()
            || self.caps.step_method()? != StepMethod::TrapFlagMonitor
            || self.stops.regs_changed(vcpu)
        {
            return Ok(false);
        }
        let Some(req) = self.stops.pending.get(&vcpu).and_then(|p| p.request) else {
            return Ok(false);
        };
        let mut regs = req.regs();
        if regs.rip != va {
            return Ok(false);
        }
        let mut insn = [0u8; 15];
        let pushf = self.read_virt_on(vcpu, va, &mut insn).is_ok() && is_pushf(&insn, va);
        let had_tf = regs.rflags & RFLAGS_TF != 0;
        regs.rflags |= RFLAGS_TF;
        if !had_tf {
            self.journal.set_stepping(vcpu, true)?;
        }
        self.unplant(id)?;
        self.stops.pending.remove(&vcpu);
        self.stops
            .events
            .respond(&req.response().set_registers(&regs))?;
        self.unpause_all()?;
        let step = self.wait_for_step(vcpu);
        let replanted = self.replant(id);
        let Some(step) = step? else {
            return Err(Error::State("unexpected PV stop during an HVM step".into()));
        };
        replanted?;
        let mut after = step.regs();
        if !had_tf {
            after.rflags &= !RFLAGS_TF;
            if pushf && after.rip != va {
                let mut top = [0u8; 8];
                self.read_virt_on(vcpu, after.rsp, &mut top)?;
                let v = u64::from_le_bytes(top) & !RFLAGS_TF;
                self.write_virt_on(vcpu, after.rsp, &v.to_le_bytes())?;
            }
        }
        self.stops
            .events
            .respond(&step.response().set_registers(&after))?;
        if !had_tf {
            self.journal.set_stepping(vcpu, false)?;
        }
        self.mem.invalidate();
        self.regs_backend.forget();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_pushf() {
        assert!(is_pushf(&[0x9c, 0x90], 0x1000));
        assert!(is_pushf(&[0x66, 0x9c], 0x1000), "16-bit pushf");
        assert!(!is_pushf(&[0x9d], 0x1000), "popf");
        assert!(!is_pushf(&[0x48, 0x89, 0xe5], 0x1000), "mov rbp, rsp");
        assert!(!is_pushf(&[], 0x1000));
    }
}
