//! The event loop: breakpoint hits, steps, guest shutdown, timeouts.
//!
//! HVM/PVH events come from the vm_event ring; PV events (gdbsx builds) are
//! the domain pausing itself for the debugger, found by polling.

use std::time::{Duration, Instant};

use crate::xen::{
    DebugEventType, EventReason, Stamp, VmEventRegs, VmEventRequest, VmEventResponse,
};

use super::breakpoint::BreakpointId;
use super::caps::BreakpointInsnKind;
use super::domain::Domain;
use super::error::{Error, Result};
use super::pagewalk::{self, PagingMode};
use super::platform::Waited;
use super::watchpoint::WatchpointId;
use crate::xen::PAGE_SHIFT;

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
    /// A `cpuid` with a leaf asked for by [`Domain::set_cpuid_marker`] (a
    /// harness marker such as KF/x's 0x13371337). RIP is on the
    /// instruction, which has run: its results are in RAX..RDX; resuming
    /// moves RIP past it (unless the registers were set elsewhere).
    Cpuid {
        /// vCPU.
        vcpu: u32,
        /// Address of the `cpuid`.
        rip: u64,
        /// EAX at the instruction.
        leaf: u32,
        /// ECX at the instruction (KF/x's extended harness passes the
        /// input buffer's size here and its address in RSI).
        subleaf: u32,
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
            | Event::Cpuid { vcpu, .. }
            | Event::Debug { vcpu, .. } => Some(*vcpu),
            _ => None,
        }
    }
}

/// Why a vCPU is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Breakpoint(BreakpointId),
    Step,
    /// At a `cpuid` of this length, which resuming completes.
    Cpuid(u32),
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
    /// The stop holds the domain's only vCPU at this event without a domain
    /// pause ([`Domain::set_hold_stops`]): answering it lets the guest run.
    pub held: bool,
}

impl Pending {
    /// The response that resumes this vCPU: with its register reset, if
    /// any; else past a `cpuid` it stopped at (`regs_changed`: the
    /// registers were written since the event, and the write stands).
    pub fn response(&self, regs_changed: bool) -> Option<VmEventResponse> {
        let req = self.request.as_ref()?;
        Some(match (&self.reset_regs, self.reason) {
            (Some(r), _) => req.response().set_registers(r),
            (None, StopReason::Cpuid(len)) if !regs_changed => {
                let mut r = req.regs();
                r.rip = r.rip.wrapping_add(u64::from(len));
                req.response().set_registers(&r)
            }
            _ => req.response(),
        })
    }
}

/// A timeout that becomes a deadline only when it is needed: an event
/// already on the ring, or announced during the first blocking wait, is
/// taken without reading the clock. A wait woken early by a stale
/// notification may end up to one blocking wait late.
pub(crate) struct Deadline {
    timeout: Duration,
    at: Option<Instant>,
    /// Time known to have passed before the clock was first read.
    passed: Duration,
    /// The first wait went without the clock.
    lazy_used: bool,
}

impl Deadline {
    /// `timeout` from now (the clock is read when first needed).
    pub fn after(timeout: Duration) -> Self {
        Self {
            timeout,
            at: None,
            passed: Duration::ZERO,
            lazy_used: false,
        }
    }

    /// Time left at `now` (starts the deadline on first use).
    fn left_at(&mut self, now: Instant) -> Duration {
        let at = *self
            .at
            .get_or_insert(now + self.timeout.saturating_sub(self.passed));
        at.saturating_duration_since(now)
    }

    /// Time left now.
    pub(crate) fn left(&mut self) -> Duration {
        self.left_at(Instant::now())
    }

    /// Time left, without the clock the first time (the whole timeout).
    pub(crate) fn left_lazy(&mut self) -> Duration {
        if self.at.is_none() && !self.lazy_used {
            self.lazy_used = true;
            return self.timeout;
        }
        self.left()
    }

    /// How long to busy-poll at most: `spin`, bounded by the time left
    /// (without reading the clock while the deadline has not started).
    pub(crate) fn spin_bound(&mut self, spin: Duration) -> Duration {
        match self.at {
            None => spin.min(self.timeout.saturating_sub(self.passed)),
            Some(_) => spin.min(self.left()),
        }
    }

    /// A wait before the first clock read took (at least) `d`.
    pub(crate) fn waited(&mut self, d: Duration) {
        if self.at.is_none() {
            self.passed += d;
        }
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

    /// Reports `cpuid` instructions with EAX = `leaf` as [`Event::Cpuid`]
    /// (HVM/PVH: Xen's CPUID monitor; every other `cpuid` of the guest then
    /// costs a round trip through the ring too). `None` turns it off.
    /// PV guests have no ring: their `cpuid` does not reach Xen unless the
    /// CPU faults on it, so a harness marker there needs a breakpoint.
    /// See docs/xen-vmi.md#cpuid-events
    pub fn set_cpuid_marker(&mut self, leaf: Option<u32>) -> Result<()> {
        if self.caps.vm_event().is_err() {
            return Err(Error::unsupported(
                "cpuid events",
                "they need the vm_event ring, which Xen offers HVM and PVH guests only: \
                 mark a PV harness with a breakpoint (a start symbol) instead",
            ));
        }
        self.ensure_debug()?;
        self.stops.set_cpuid_marker(leaf)
    }

    /// Busy-polls the vm_event ring for up to `spin` before each blocking
    /// wait on its event channel (HVM/PVH). Zero (the default) always blocks.
    /// Spinning saves the wake-up latency of a blocked waiter when runs are
    /// short, at the price of a busy dom0 CPU while the guest runs.
    pub fn set_event_spin(&mut self, spin: Duration) {
        self.stops.set_spin(spin);
    }

    /// Stops at events without pausing the domain when it has one vCPU and
    /// a vm_event ring (HVM/PVH): the vCPU already waits for the reply, so
    /// the `xc_domain_pause`/`unpause` pair around every event is left out.
    /// The engine treats the domain as stopped all the same; only Xen's
    /// domain flags differ (`xl list` shows it running). Off by default;
    /// the fuzzer turns it on. Turning it off while a stop is held pauses
    /// the domain.
    pub fn set_hold_stops(&mut self, on: bool) -> Result<()> {
        self.stops.set_hold(on, &self.xen.xc, self.domid)
    }

    /// Time [`Domain::wait_event`] has spent waiting for the guest since
    /// attach: busy-polling the ring or blocked on its event channel until
    /// an event came (or the timeout), without sorting the event out. For
    /// a fuzzer, the guest's own run as dom0 sees it. Two TSC reads a wait.
    pub fn time_waiting(&self) -> Duration {
        self.stops.waited
    }

    /// The busy-poll bound set by [`Domain::set_event_spin`].
    pub fn event_spin(&self) -> Duration {
        self.stops.spin()
    }

    /// Next raw observation before `deadline` (the guest must be running).
    /// A request already on the ring is taken without any system call; then
    /// the ring is busy-polled for up to the spin bound, then the event
    /// channel is waited on.
    pub(crate) fn next_raw(&mut self, deadline: &mut Deadline) -> Result<Option<Raw>> {
        let spin = self.stops.spin();
        if let Some(req) = self.stops.events.poll(spin, deadline) {
            return Ok(Some(Raw::Request(req)));
        }
        let mut poll = Duration::from_micros(200);
        loop {
            if super::cleanup::interrupted() {
                return Err(Error::Interrupted);
            }
            let left =
                match self
                    .stops
                    .events
                    .wait(&self.xen.xc, self.domid, deadline, &mut poll)?
                {
                    Waited::Request(req) => return Ok(Some(Raw::Request(req))),
                    Waited::DebuggerPause => {
                        // The debugger pause is a controller pause: ours to undo.
                        self.stops.debugger_paused();
                        return Ok(Some(Raw::PvStopped));
                    }
                    Waited::Destroyed => return Ok(Some(Raw::Shutdown(ShutdownReason::Destroyed))),
                    Waited::Again => continue,
                    Waited::Nothing { left } => left,
                };
            if let Some(r) = self.shutdown_state()? {
                return Ok(Some(Raw::Shutdown(r)));
            }
            if left.is_zero() || deadline.left().is_zero() {
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
        self.stops
            .stop_vcpu(&self.xen.xc, self.domid, vcpu, request, reason, delivered)
    }

    fn respond(&mut self, req: &VmEventRequest) -> Result<()> {
        self.stops.events.respond(&req.response())
    }

    /// Sorts out a vm_event request that is not the step being waited for.
    pub(crate) fn decide(&mut self, req: &VmEventRequest) -> Result<Decision> {
        let vcpu = req.vcpu();
        let rip = req.regs().rip;
        if let (EventReason::DebugException, Some((DebugEventType::HwException, ..))) =
            (req.reason(), req.debug())
        {
            if let Some(h) = self.watch_hit(vcpu)? {
                return Ok(Decision::Stop(StopReason::Other, h.into_event(vcpu)));
            }
        }
        if let Some((_, write)) = req.descriptor_access() {
            // The guest moved (or read) a descriptor table: the vm_event's
            // registers do not carry IDTR, LDTR or TR, so a restore must load
            // the whole vCPU state. Xen emulates the instruction on reply.
            self.snapshot.descriptors_accessed(write);
            self.stops.events.respond(&req.response().emulate())?;
            return Ok(Decision::Ignore);
        }
        if let Some(c) = req.cpuid() {
            if self.stops.cpuid_marker() == Some(c.leaf) {
                return Ok(Decision::Stop(
                    StopReason::Cpuid(c.insn_length),
                    Event::Cpuid {
                        vcpu,
                        rip,
                        leaf: c.leaf,
                        subleaf: c.subleaf,
                    },
                ));
            }
            // Someone else's cpuid: Xen put the results in the registers;
            // only RIP has to move.
            let mut r = req.regs();
            r.rip = r.rip.wrapping_add(u64::from(c.insn_length));
            self.stops
                .events
                .respond(&req.response().set_registers(&r))?;
            return Ok(Decision::Ignore);
        }
        let insn_kind = self.bps.insn_kind();
        let bp_event = match (req.reason(), req.debug()) {
            (EventReason::DebugException, Some((DebugEventType::PrivSwException, ..))) => {
                insn_kind == Some(BreakpointInsnKind::Icebp)
            }
            (EventReason::SoftwareBreakpoint, _) => insn_kind == Some(BreakpointInsnKind::Int3),
            _ => false,
        };
        let mut foreign = None;
        if bp_event {
            let addr = self.bps.bp_address(rip);
            // Where the vCPU really fetched the instruction: a breakpoint's
            // address run from another frame (a page the guest mapped
            // there, or code it copied) is not the breakpoint.
            let pa = self.event_pa(req, addr);
            // (Not necessarily planted now: another vCPU may be stepping
            // over it since this one trapped.)
            let ours = self.bps.at(addr).filter(|&id| {
                self.bps
                    .get(id)
                    .is_some_and(|b| pa.is_none_or(|pa| pa >> PAGE_SHIFT == b.pa >> PAGE_SHIFT))
            });
            if let Some(id) = ours {
                let hits = self.bps.count_hit(id);
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
            if let Some(pa) = pa {
                if let Some(n) = self.repair_copy(addr, pa)? {
                    self.notice(n);
                    // The vCPU runs the instruction again, now the original.
                    self.respond(req)?;
                    return Ok(Decision::Ignore);
                }
                foreign = Some(pa);
            }
        }
        let detail = match (req.reason(), req.debug()) {
            (EventReason::DebugException, Some((t, len, _))) => match foreign {
                Some(pa) => format!(
                    "debug exception {t:?} (instruction length {len}): a breakpoint instruction \
                     xenprobe did not plant (pa {pa:#x}), or a copy of one that matches none"
                ),
                None => format!("debug exception {t:?} (instruction length {len})"),
            },
            (EventReason::SoftwareBreakpoint, _) => "int3 not planted by xenprobe".to_string(),
            (EventReason::Singlestep, _) => "single-step event".to_string(),
            (r, _) => {
                tracing::debug!(reason = ?r, "ignoring vm_event");
                self.respond(req)?;
                return Ok(Decision::Ignore);
            }
        };
        Ok(Decision::Stop(
            StopReason::Other,
            Event::Debug { vcpu, rip, detail },
        ))
    }

    /// The physical address `va` (the breakpoint the event's RIP stands
    /// for) translates to at the event: from the frame Xen reports for the
    /// RIP when `va` lies in that page (no page walk), else by walking the
    /// page tables in the registers the event carried (None if that fails).
    fn event_pa(&self, req: &VmEventRequest, va: u64) -> Option<u64> {
        let regs = req.regs();
        if let Some(gfn) = req.rip_gfn() {
            if regs.rip >> PAGE_SHIFT == va >> PAGE_SHIFT {
                return Some(gfn << PAGE_SHIFT | (va & ((1 << PAGE_SHIFT) - 1)));
            }
        }
        let mode = PagingMode::from_regs(regs.cr0, regs.cr4, regs.msr_efer);
        pagewalk::walk(mode, regs.cr3, va, |pa| self.mem.read_phys_u64(pa))
            .ok()
            .map(|t| t.pa)
    }

    /// Takes back the shutdown of a domain the toolstack kept
    /// (`on_poweroff`/`on_reboot`/`on_crash="preserve"`): a triple fault, a
    /// crash or a power-off the guest did on its own. The domain is left
    /// stopped where its vCPUs stopped, for [`Domain::restore_snapshot`] to
    /// bring it back; returns why it had shut down. Fails if it was not
    /// shut down or is gone.
    /// See docs/xen-vmi.md#crashes-and-triple-faults
    pub fn undo_shutdown(&mut self) -> Result<ShutdownReason> {
        let reason = self
            .shutdown_state()?
            .ok_or_else(|| Error::State(format!("domain {} is not shut down", self.domid)))?;
        if reason == ShutdownReason::Destroyed {
            return Err(Error::State(format!(
                "domain {} was destroyed (on_poweroff/on_reboot/on_crash=\"destroy\"?)",
                self.domid
            )));
        }
        self.pause()?;
        self.xen.xc.domain_resume(self.domid)?;
        self.regs_backend.forget();
        self.mem.invalidate();
        tracing::debug!(domid = self.domid, ?reason, "shutdown taken back");
        Ok(reason)
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
            let addr = self.bps.bp_address(regs.rip);
            let Some(id) = self.bps.at(addr) else {
                continue;
            };
            if !self.bps.get(id).is_some_and(|b| b.planted) {
                continue;
            }
            // int3 ran: point RIP back at the breakpoint.
            regs.rip = addr;
            self.set_regs(vcpu, &regs)?;
            let hits = self.bps.count_hit(id);
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
        if !self.bps.has_condition(id) {
            return Ok(true);
        }
        let regs = self.regs(vcpu)?;
        Ok(self.bps.condition_holds(id, &regs))
    }

    /// Waits up to `timeout` for the next event while the guest runs.
    /// Breakpoints whose condition is false are stepped over silently.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Event> {
        if let Some(ev) = self.stops.next_queued() {
            if let Some(p) = ev.vcpu().and_then(|v| self.stops.pending.get_mut(&v)) {
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
        let mut deadline = Deadline::after(timeout);
        loop {
            let t = Stamp::now();
            let raw = self.next_raw(&mut deadline);
            self.stops.waited += t.elapsed();
            let raw = raw?;
            let (vcpu, request, decision) = match raw {
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
    fn a_deadline_reads_the_clock_only_when_needed() {
        let mut d = Deadline::after(Duration::from_millis(500));
        assert_eq!(
            d.left_lazy(),
            Duration::from_millis(500),
            "first wait: no clock"
        );
        assert!(d.at.is_none());
        d.waited(Duration::from_millis(50));
        let left = d.left();
        assert!(d.at.is_some());
        assert!(left <= Duration::from_millis(450), "{left:?}");
        assert!(left > Duration::from_millis(300), "{left:?}");
        assert!(d.left_lazy() <= left, "later waits use the clock");
        let mut z = Deadline::after(Duration::ZERO);
        assert!(z.left_lazy().is_zero());
        assert!(z.left().is_zero());
    }

    #[test]
    fn events_name_their_vcpu() {
        assert_eq!(Event::Step { vcpu: 2, rip: 0 }.vcpu(), Some(2));
        assert_eq!(Event::Timeout.vcpu(), None);
    }
}
