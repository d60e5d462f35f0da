//! The event loop: breakpoint hits, steps, guest shutdown, timeouts.
//!
//! HVM/PVH events come from the vm_event ring; PV events (gdbsx builds) are
//! the domain pausing itself for the debugger, found by polling.

use std::time::{Duration, Instant};

use crate::xen::{DebugEventType, MonitorRing, VmEventRegs, VmEventRequest, VmEventResponse};
use xen_sys as sys;

use super::breakpoint::{BreakpointId, Icebp, Int3};
use super::caps::{BreakpointInsnKind, GuestKind, BREAKPOINT_ENV};
use super::domain::Domain;
use super::error::{Error, Result};
use super::watchpoint::WatchpointId;

/// Why a domain shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// Powered off (clean exit).
    Poweroff,
    /// Reboot requested, or a triple fault.
    Reboot,
    /// Suspended.
    Suspend,
    /// Crashed.
    Crash,
    /// Watchdog fired.
    Watchdog,
    /// Soft reset.
    SoftReset,
    /// The domain no longer exists (destroyed).
    Destroyed,
    /// Another `SHUTDOWN_*` code.
    Other(u32),
}

impl ShutdownReason {
    fn from_code(c: u32) -> Self {
        match c {
            0 => Self::Poweroff,
            1 => Self::Reboot,
            2 => Self::Suspend,
            3 => Self::Crash,
            4 => Self::Watchdog,
            5 => Self::SoftReset,
            o => Self::Other(o),
        }
    }
}

/// What [`Domain::wait_event`] reports. After every variant except
/// `Timeout` and `Shutdown` the domain is stopped until [`Domain::resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A vCPU reached a breakpoint (RIP = `addr`, the instruction not yet run).
    Breakpoint {
        /// vCPU.
        vcpu: u32,
        /// Which breakpoint.
        id: BreakpointId,
        /// Its address.
        addr: u64,
        /// Hits so far, this one included.
        hits: u64,
    },
    /// A watched range was accessed; the access is done (RIP is past the
    /// instruction). `old`/`new` are the watched bytes before and after.
    Watchpoint {
        /// vCPU.
        vcpu: u32,
        /// Which watchpoint.
        id: WatchpointId,
        /// Its first byte.
        addr: u64,
        /// Hits so far, this one included.
        hits: u64,
        /// The watched bytes at the previous hit (or when armed).
        old: Vec<u8>,
        /// The watched bytes now.
        new: Vec<u8>,
    },
    /// A single step finished.
    Step {
        /// vCPU.
        vcpu: u32,
        /// RIP after the step.
        rip: u64,
    },
    /// A debug event that is not one of ours (the guest's own ICEBP, #DB,
    /// int3, or a pause by someone else).
    Debug {
        /// vCPU.
        vcpu: u32,
        /// RIP at the event.
        rip: u64,
        /// What it was.
        detail: String,
    },
    /// The guest shut down or disappeared.
    Shutdown {
        /// Why.
        reason: ShutdownReason,
    },
    /// Nothing happened before the timeout; the domain keeps running.
    Timeout,
}

impl Event {
    fn vcpu(&self) -> Option<u32> {
        match self {
            Event::Breakpoint { vcpu, .. }
            | Event::Watchpoint { vcpu, .. }
            | Event::Step { vcpu, .. }
            | Event::Debug { vcpu, .. } => Some(*vcpu),
            _ => None,
        }
    }
}

/// Where debug events come from.
pub(crate) enum Backend {
    /// Not set up yet.
    None,
    /// vm_event ring (HVM/PVH).
    Monitor(MonitorRing),
    /// `xc_domain_setdebugging` on a gdbsx hypervisor (PV).
    Gdbsx,
}

/// Why a vCPU is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Breakpoint(BreakpointId),
    Step,
    Other,
}

/// A vCPU stopped at an event.
pub(crate) struct Pending {
    /// The vm_event request to answer (HVM/PVH).
    pub request: Option<VmEventRequest>,
    pub reason: StopReason,
    /// The event was handed to the user (else it sits in `queued`).
    pub delivered: bool,
    /// Registers to load through the response (`VM_EVENT_FLAG_SET_REGISTERS`):
    /// a snapshot restore that resets the vCPU in the reply.
    pub reset_regs: Option<VmEventRegs>,
}

impl Pending {
    /// The response that resumes this vCPU (with its register reset, if any).
    pub fn response(&self) -> Option<VmEventResponse> {
        let req = self.request.as_ref()?;
        Some(match &self.reset_regs {
            Some(r) => req.response().set_registers(r),
            None => req.response(),
        })
    }
}

/// One raw thing observed while the guest runs.
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub(crate) enum Raw {
    Request(VmEventRequest),
    PvStopped,
    Shutdown(ShutdownReason),
}

/// A request sorted out.
pub(crate) enum Decision {
    /// Answered already; keep waiting.
    Ignore,
    /// Stop the vCPU and report this.
    Stop(StopReason, Event),
}

impl Domain {
    /// Sets up the debug backend on first use: the vm_event ring with the
    /// debug-exception (and for int3 the software-breakpoint) monitor for
    /// HVM/PVH, `xc_domain_setdebugging` for PV on a gdbsx hypervisor.
    pub(crate) fn ensure_debug(&mut self) -> Result<()> {
        if !matches!(self.backend, Backend::None) {
            return Ok(());
        }
        let env = std::env::var(BREAKPOINT_ENV).ok();
        match self.kind {
            GuestKind::Pv => {
                self.caps.pv_debugging()?;
                self.journal.set_debugging(true)?;
                self.xen.xc.domain_set_debugging(self.domid, true)?;
                self.bps.insn = Some(Box::new(Int3 { rip_after: true }));
                self.backend = Backend::Gdbsx;
            }
            GuestKind::Pvh | GuestKind::Hvm => {
                let kind = self.caps.breakpoint_insn(env.as_deref())?;
                self.journal.set_monitor(true)?;
                let mut ring = match MonitorRing::enable(&self.xen.xc, self.domid) {
                    Err(e) if e.raw_errno() == Some(libc::EBUSY) => {
                        tracing::warn!(domid = self.domid, "stale vm_event ring: replacing it");
                        super::cleanup::release_stale_ring(&self.xen, self.domid)?;
                        MonitorRing::enable(&self.xen.xc, self.domid)?
                    }
                    r => r?,
                };
                ring.set_debug_exceptions(true, true)?;
                if kind == BreakpointInsnKind::Int3 {
                    ring.set_software_breakpoint(true)?;
                }
                if self.caps.host.is_intel() {
                    match ring.set_singlestep(true) {
                        Ok(()) => self.caps.mtf = true,
                        Err(e) => tracing::info!("MTF single-step unavailable: {e}"),
                    }
                }
                self.bps.insn = Some(match kind {
                    BreakpointInsnKind::Int3 => Box::new(Int3 { rip_after: false }),
                    BreakpointInsnKind::Icebp => Box::new(Icebp),
                });
                self.backend = Backend::Monitor(ring);
            }
        }
        tracing::debug!(domid = self.domid, "debugging set up");
        Ok(())
    }

    fn shutdown_state(&self) -> Result<Option<ShutdownReason>> {
        match self.xen.xc.domain_info(self.domid) {
            Ok(i) if i.dying => Ok(Some(ShutdownReason::Destroyed)),
            // libxc reports a crash as `crashed` with `shutdown` cleared.
            Ok(i) if i.shutdown || i.crashed => {
                Ok(Some(ShutdownReason::from_code(i.shutdown_reason)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.raw_errno() == Some(libc::ESRCH) => Ok(Some(ShutdownReason::Destroyed)),
            Err(e) => Err(e.into()),
        }
    }

    /// Busy-polls the vm_event ring for up to `spin` before each blocking
    /// wait on its event channel (HVM/PVH). Zero (the default) always blocks.
    /// Spinning saves the wake-up latency of a blocked waiter when runs are
    /// short, at the price of a busy dom0 CPU while the guest runs.
    pub fn set_event_spin(&mut self, spin: Duration) {
        self.event_spin = spin;
    }

    /// The busy-poll bound set by [`Domain::set_event_spin`].
    pub fn event_spin(&self) -> Duration {
        self.event_spin
    }

    /// Next raw observation before `deadline` (the guest must be running).
    pub(crate) fn next_raw(&mut self, deadline: Instant) -> Result<Option<Raw>> {
        let mut poll = Duration::from_micros(200);
        if let (Backend::Monitor(ring), false) = (&mut self.backend, self.event_spin.is_zero()) {
            let until = Instant::now()
                + self
                    .event_spin
                    .min(deadline.saturating_duration_since(Instant::now()));
            loop {
                if let Some(req) = ring.get_request() {
                    return Ok(Some(Raw::Request(req)));
                }
                if Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            if super::cleanup::interrupted() {
                return Err(Error::Interrupted);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match &mut self.backend {
                Backend::Monitor(ring) => {
                    if let Some(req) = ring.wait_request(left.min(Duration::from_millis(100)))? {
                        return Ok(Some(Raw::Request(req)));
                    }
                }
                Backend::Gdbsx => {
                    let info = match self.xen.xc.domain_info(self.domid) {
                        Ok(i) => i,
                        Err(e) if e.raw_errno() == Some(libc::ESRCH) => {
                            return Ok(Some(Raw::Shutdown(ShutdownReason::Destroyed)))
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if info.paused && !info.shutdown && !info.crashed {
                        // The debugger pause is a controller pause: ours to undo.
                        self.pause_count += 1;
                        return Ok(Some(Raw::PvStopped));
                    }
                    std::thread::sleep(poll.min(left));
                    poll = (poll * 2).min(Duration::from_millis(2));
                }
                Backend::None => std::thread::sleep(left.min(Duration::from_millis(20))),
            }
            if let Some(r) = self.shutdown_state()? {
                return Ok(Some(Raw::Shutdown(r)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Stops the domain (if not yet) and records a stopped vCPU.
    pub(crate) fn stop_vcpu(
        &mut self,
        vcpu: u32,
        request: Option<VmEventRequest>,
        reason: StopReason,
        delivered: bool,
    ) -> Result<()> {
        if self.pause_count == 0 {
            self.xen.xc.domain_pause(self.domid)?;
            self.pause_count = 1;
        }
        self.pending.insert(
            vcpu,
            Pending {
                request,
                reason,
                delivered,
                reset_regs: None,
            },
        );
        self.regs_changed.remove(&vcpu);
        Ok(())
    }

    fn respond(&mut self, req: &VmEventRequest) -> Result<()> {
        if let Backend::Monitor(ring) = &mut self.backend {
            ring.put_response(&req.response())?;
        }
        Ok(())
    }

    /// Sorts out a vm_event request that is not the step being waited for.
    pub(crate) fn decide(&mut self, req: &VmEventRequest) -> Result<Decision> {
        let vcpu = req.vcpu();
        let rip = req.regs().rip;
        if let (sys::VM_EVENT_REASON_DEBUG_EXCEPTION, Some((DebugEventType::HwException, ..))) =
            (req.reason(), req.debug())
        {
            if let Some(h) = self.watch_hit(vcpu)? {
                return Ok(Decision::Stop(StopReason::Other, h.into_event(vcpu)));
            }
        }
        let insn_kind = self.bps.insn.as_ref().map(|i| i.kind());
        let bp_event = match (req.reason(), req.debug()) {
            (sys::VM_EVENT_REASON_DEBUG_EXCEPTION, Some((DebugEventType::PrivSwException, ..))) => {
                insn_kind == Some(BreakpointInsnKind::Icebp)
            }
            (sys::VM_EVENT_REASON_SOFTWARE_BREAKPOINT, _) => {
                insn_kind == Some(BreakpointInsnKind::Int3)
            }
            _ => false,
        };
        if bp_event {
            let addr = self.bps.insn.as_ref().map_or(rip, |i| i.bp_address(rip));
            if let Some(id) = self.bps.at(addr) {
                let hits = self.bps.list.get_mut(&id).map_or(0, |b| {
                    b.hits += 1;
                    b.hits
                });
                return Ok(Decision::Stop(
                    StopReason::Breakpoint(id),
                    Event::Breakpoint {
                        vcpu,
                        id,
                        addr,
                        hits,
                    },
                ));
            }
        }
        let detail = match (req.reason(), req.debug()) {
            (sys::VM_EVENT_REASON_DEBUG_EXCEPTION, Some((t, len, _))) => {
                format!("debug exception {t:?} (instruction length {len})")
            }
            (sys::VM_EVENT_REASON_SOFTWARE_BREAKPOINT, _) => {
                "int3 not planted by xenprobe".to_string()
            }
            (sys::VM_EVENT_REASON_SINGLESTEP, _) => "single-step event".to_string(),
            (r, _) => {
                tracing::debug!(reason = r, "ignoring vm_event");
                self.respond(req)?;
                return Ok(Decision::Ignore);
            }
        };
        Ok(Decision::Stop(
            StopReason::Other,
            Event::Debug { vcpu, rip, detail },
        ))
    }

    /// The domain paused itself for the debugger (PV): find the vCPU at a breakpoint.
    pub(crate) fn decide_pv_stop(&mut self) -> Result<(u32, Decision)> {
        let max = self.max_vcpu()?;
        for vcpu in 0..=max {
            if let Some(h) = self.watch_hit(vcpu)? {
                return Ok((vcpu, Decision::Stop(StopReason::Other, h.into_event(vcpu))));
            }
        }
        let mut first_rip = 0;
        for vcpu in 0..=max {
            let mut regs = match self.regs(vcpu) {
                Ok(r) => r,
                Err(_) => continue,
            };
            if vcpu == 0 {
                first_rip = regs.rip;
            }
            let addr = self
                .bps
                .insn
                .as_ref()
                .map_or(regs.rip, |i| i.bp_address(regs.rip));
            let Some(id) = self.bps.at(addr) else {
                continue;
            };
            if !self.bps.list.get(&id).is_some_and(|b| b.planted) {
                continue;
            }
            // int3 ran: point RIP back at the breakpoint.
            regs.rip = addr;
            self.set_regs(vcpu, &regs)?;
            let hits = self.bps.list.get_mut(&id).map_or(0, |b| {
                b.hits += 1;
                b.hits
            });
            return Ok((
                vcpu,
                Decision::Stop(
                    StopReason::Breakpoint(id),
                    Event::Breakpoint {
                        vcpu,
                        id,
                        addr,
                        hits,
                    },
                ),
            ));
        }
        Ok((
            0,
            Decision::Stop(
                StopReason::Other,
                Event::Debug {
                    vcpu: 0,
                    rip: first_rip,
                    detail: "domain paused, not at a xenprobe breakpoint".into(),
                },
            ),
        ))
    }

    /// Runs a breakpoint's condition; true when the stop should be reported.
    fn condition_holds(&mut self, vcpu: u32, reason: StopReason) -> Result<bool> {
        let StopReason::Breakpoint(id) = reason else {
            return Ok(true);
        };
        if self.bps.list.get(&id).is_none_or(|b| b.condition.is_none()) {
            return Ok(true);
        }
        let regs = self.regs(vcpu)?;
        Ok(self
            .bps
            .list
            .get_mut(&id)
            .and_then(|b| b.condition.as_mut())
            .is_none_or(|c| c(&regs)))
    }

    /// Waits up to `timeout` for the next event while the guest runs.
    /// Breakpoints whose condition is false are stepped over silently.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Event> {
        if let Some(ev) = self.queued.pop_front() {
            if let Some(p) = ev.vcpu().and_then(|v| self.pending.get_mut(&v)) {
                p.delivered = true;
            }
            if ev.vcpu().is_some() {
                self.pause()?;
            }
            return Ok(ev);
        }
        if self.is_stopped() {
            return Err(Error::State(
                "the domain is stopped: call resume() before wait_event()".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let (vcpu, request, decision) = match self.next_raw(deadline)? {
                None => return Ok(Event::Timeout),
                Some(Raw::Shutdown(reason)) => return Ok(Event::Shutdown { reason }),
                Some(Raw::Request(req)) => (req.vcpu(), Some(req), self.decide(&req)?),
                Some(Raw::PvStopped) => {
                    let (v, d) = self.decide_pv_stop()?;
                    (v, None, d)
                }
            };
            let Decision::Stop(reason, event) = decision else {
                continue;
            };
            self.stop_vcpu(vcpu, request, reason, true)?;
            if self.condition_holds(vcpu, reason)? {
                return Ok(event);
            }
            self.resume()?;
        }
    }

    /// Resumes and waits for the next event.
    pub fn cont(&mut self, timeout: Duration) -> Result<Event> {
        self.resume()?;
        self.wait_event(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_codes() {
        assert_eq!(ShutdownReason::from_code(0), ShutdownReason::Poweroff);
        assert_eq!(ShutdownReason::from_code(3), ShutdownReason::Crash);
        assert_eq!(ShutdownReason::from_code(1), ShutdownReason::Reboot);
        assert_eq!(ShutdownReason::from_code(42), ShutdownReason::Other(42));
    }

    #[test]
    fn events_name_their_vcpu() {
        assert_eq!(Event::Step { vcpu: 2, rip: 0 }.vcpu(), Some(2));
        assert_eq!(Event::Timeout.vcpu(), None);
    }
}
