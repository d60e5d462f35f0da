//! A domain's stop state: our pauses, the vCPUs stopped at an event, the
//! events queued for the next wait, and the event delivery they come from.
//!
//! [`Stops`] keeps the bookkeeping; `Domain` combines it with breakpoints,
//! registers and memory (resume, step, restore).

use std::collections::VecDeque;
use std::time::Duration;

use rustc_hash::FxHashSet;

use crate::xen::{VmEventRequest, XenCtrl};

use super::error::{Error, Result};
use super::events::{Event, Pending, StopReason};
use super::platform::Events;
use super::vcpumap::VcpuMap;

/// Who is stopped and why, and how events arrive.
pub(crate) struct Stops {
    /// Our outstanding `xc_domain_pause` calls (and gdbsx debugger pauses).
    pause_count: u32,
    /// vCPUs stopped at an event, waiting for a response / resume.
    pub(crate) pending: VcpuMap<Pending>,
    /// vCPUs whose registers were written since their pending event (the
    /// event's register copy is stale for them).
    regs_changed: FxHashSet<u32>,
    /// Where debug events come from (see [`super::platform`]).
    pub(crate) events: Events,
    /// Events seen while doing something else, delivered by the next `wait_event`.
    queued: VecDeque<Event>,
    /// How long `wait_event` busy-polls the vm_event ring before blocking.
    spin: Duration,
    /// The domain has a single vCPU (`max_vcpu_id == 0`).
    single_vcpu: bool,
    /// Stop a single-vCPU ring domain by holding its vCPU at the event
    /// instead of also pausing the domain (see `Domain::set_hold_stops`).
    hold: bool,
    /// The `cpuid` leaf reported as [`Event::Cpuid`].
    cpuid_marker: Option<u32>,
    /// Detach leaves one pause in place (`Domain::detach_paused`).
    keep_paused: bool,
    /// Time event waits spent waiting for the guest (see
    /// `Domain::time_waiting`).
    pub(crate) waited: Duration,
}

impl Stops {
    /// A running domain's (no stop, delivery not set up yet).
    pub(crate) fn new(events: Events, single_vcpu: bool) -> Self {
        Self {
            pause_count: 0,
            pending: Default::default(),
            regs_changed: Default::default(),
            events,
            queued: VecDeque::new(),
            spin: Duration::ZERO,
            single_vcpu,
            hold: false,
            cpuid_marker: None,
            keep_paused: false,
            waited: Duration::ZERO,
        }
    }

    /// True while the domain is stopped by us (pause or an event).
    pub(crate) fn is_stopped(&self) -> bool {
        self.pause_count > 0 || self.held()
    }

    /// The only vCPU waits for our vm_event reply and the domain is not
    /// paused (a held stop).
    pub(crate) fn held(&self) -> bool {
        self.pending.values().any(|p| p.held)
    }

    /// Pauses the domain unless one of our pauses holds it already.
    pub(crate) fn pause(&mut self, xc: &XenCtrl, domid: u32) -> Result<()> {
        if self.pause_count == 0 {
            xc.domain_pause(domid)?;
            self.pause_count = 1;
        }
        Ok(())
    }

    /// Undoes our pauses.
    pub(crate) fn unpause(&mut self, xc: &XenCtrl, domid: u32) -> Result<()> {
        while self.pause_count > 0 {
            xc.domain_unpause(domid)?;
            self.pause_count -= 1;
        }
        Ok(())
    }

    /// The domain paused itself for the debugger (PV): a pause that is ours
    /// to undo.
    pub(crate) fn debugger_paused(&mut self) {
        self.pause_count += 1;
    }

    /// One of our pauses holds the domain.
    pub(crate) fn paused(&self) -> bool {
        self.pause_count > 0
    }

    /// Takes over a pause someone else left on the domain as ours.
    pub(crate) fn adopt_pause(&mut self) {
        self.pause_count = 1;
    }

    /// Detach leaves one pause in place.
    pub(crate) fn keep_paused(&mut self) {
        self.keep_paused = true;
    }

    /// At detach: undoes our pauses but a kept one, going on after errors
    /// (each given to `note`). A kept pause is nobody's afterwards.
    pub(crate) fn unpause_for_detach(
        &mut self,
        xc: &XenCtrl,
        domid: u32,
        mut note: impl FnMut(Result<()>),
    ) {
        let keep = u32::from(self.keep_paused);
        while self.pause_count > keep {
            note(xc.domain_unpause(domid).map_err(Error::from));
            self.pause_count -= 1;
        }
        self.pause_count = 0;
    }

    /// Whether `vcpu`'s registers were written since its pending event.
    pub(crate) fn regs_changed(&self, vcpu: u32) -> bool {
        self.regs_changed.contains(&vcpu)
    }

    /// `vcpu`'s registers were written: its event's register copy is stale.
    pub(crate) fn regs_written(&mut self, vcpu: u32) {
        self.regs_changed.insert(vcpu);
    }

    /// Every stopped vCPU's registers were replaced (a restore, a reset):
    /// their events' register copies are stale.
    pub(crate) fn all_regs_written(&mut self) {
        self.regs_changed.extend(self.pending.keys().copied());
    }

    /// A register reset waits in a vm_event reply.
    pub(crate) fn register_reset_waiting(&self) -> bool {
        self.pending.values().any(|p| p.reset_regs.is_some())
    }

    /// Replies become plain: no register reset in them.
    pub(crate) fn drop_register_resets(&mut self) {
        for p in self.pending.values_mut() {
            p.reset_regs = None;
        }
    }

    /// vCPUs stopped at a `cpuid` whose registers were written since (no
    /// register reset waiting): resuming moves them past it by hand.
    pub(crate) fn changed_cpuid_stops(&self) -> Vec<u32> {
        self.pending
            .iter()
            .filter(|(v, p)| {
                matches!(p.reason, StopReason::Cpuid(_))
                    && p.reset_regs.is_none()
                    && self.regs_changed.contains(v)
            })
            .map(|(&v, _)| v)
            .collect()
    }

    /// Answers every pending event (with its register reset or cpuid
    /// completion), forgetting them. An answer that fails does not keep
    /// the others from going out (their vCPUs would wait on the ring for
    /// good); the first error is returned.
    pub(crate) fn answer_pending(&mut self) -> Result<()> {
        let mut first = Ok(());
        self.answer_all(|r| {
            if first.is_ok() {
                first = r;
            }
        });
        self.regs_changed.clear();
        first
    }

    /// Answers every pending event, going on after errors (each given to
    /// `note`). The emptied map keeps its allocation for the next stop.
    pub(crate) fn answer_all(&mut self, mut note: impl FnMut(Result<()>)) {
        let mut pending = std::mem::take(&mut self.pending);
        for (v, p) in pending.drain() {
            if let Some(rsp) = p.response(self.regs_changed.contains(&v)) {
                note(self.events.respond(&rsp));
            }
        }
        self.pending = pending;
    }

    /// Drops `vcpu`'s pending event, answered as it came (no register
    /// reset, no cpuid completion): the vCPU is reset or brought down.
    pub(crate) fn dismiss(&mut self, vcpu: u32) -> Result<()> {
        if let Some(p) = self.pending.remove(&vcpu) {
            if let Some(req) = &p.request {
                self.events.respond(&req.response())?;
            }
        }
        self.regs_changed.remove(&vcpu);
        Ok(())
    }

    /// Answers `vcpu`'s pending event, if any, and forgets it.
    pub(crate) fn answer(&mut self, vcpu: u32) -> Result<()> {
        if let Some(p) = self.pending.remove(&vcpu) {
            let changed = self.regs_changed.contains(&vcpu);
            if let Some(rsp) = p.response(changed) {
                self.events.respond(&rsp)?;
            }
        }
        Ok(())
    }

    /// Stops the domain (if not yet) and records a stopped vCPU.
    pub(crate) fn stop_vcpu(
        &mut self,
        xc: &XenCtrl,
        domid: u32,
        vcpu: u32,
        request: Option<VmEventRequest>,
        reason: StopReason,
        delivered: bool,
    ) -> Result<()> {
        // One vCPU waiting for our reply: nothing else runs (hold stops).
        let held =
            self.hold && self.single_vcpu && request.as_ref().is_some_and(|r| r.vcpu_paused());
        if !held {
            self.pause(xc, domid)?;
        }
        let held = held && self.pause_count == 0;
        self.insert_pending(vcpu, request, reason, delivered, held);
        self.regs_changed.remove(&vcpu);
        Ok(())
    }

    /// Records `vcpu` as stopped without pausing the domain: another
    /// event's vCPU kept waiting (unanswered) while stepping, or a PV step.
    pub(crate) fn record_stop(
        &mut self,
        vcpu: u32,
        request: Option<VmEventRequest>,
        reason: StopReason,
        delivered: bool,
    ) {
        self.insert_pending(vcpu, request, reason, delivered, false);
    }

    fn insert_pending(
        &mut self,
        vcpu: u32,
        request: Option<VmEventRequest>,
        reason: StopReason,
        delivered: bool,
        held: bool,
    ) {
        let p = Pending {
            request,
            reason,
            delivered,
            reset_regs: None,
            held,
        };
        self.pending.insert(vcpu, p);
    }

    /// Turns held stops on or off; turning them off while a stop is held
    /// pauses the domain.
    pub(crate) fn set_hold(&mut self, on: bool, xc: &XenCtrl, domid: u32) -> Result<()> {
        self.hold = on;
        if !on && self.held() {
            self.pause(xc, domid)?;
            for p in self.pending.values_mut() {
                p.held = false;
            }
        }
        Ok(())
    }

    /// The busy-poll bound of event waits.
    pub(crate) fn spin(&self) -> Duration {
        self.spin
    }

    /// Sets the busy-poll bound of event waits.
    pub(crate) fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// The `cpuid` leaf reported as an event.
    pub(crate) fn cpuid_marker(&self) -> Option<u32> {
        self.cpuid_marker
    }

    /// Sets the `cpuid` leaf reported as an event (the ring must be set up).
    pub(crate) fn set_cpuid_marker(&mut self, leaf: Option<u32>) -> Result<()> {
        let Some(ring) = self.events.ring() else {
            return Err(Error::State("no vm_event ring".into()));
        };
        // Xen refuses to switch an option on twice (EEXIST).
        if leaf.is_some() != self.cpuid_marker.is_some() {
            ring.set_cpuid(leaf.is_some())?;
        }
        self.cpuid_marker = leaf;
        Ok(())
    }

    /// Queues an event for the next wait.
    pub(crate) fn queue(&mut self, ev: Event) {
        self.queued.push_back(ev);
    }

    /// The oldest queued event.
    pub(crate) fn next_queued(&mut self) -> Option<Event> {
        self.queued.pop_front()
    }

    /// Drops the queued events.
    pub(crate) fn clear_queued(&mut self) {
        self.queued.clear();
    }

    /// A shutdown is queued.
    pub(crate) fn shutdown_queued(&self) -> bool {
        self.queued
            .iter()
            .any(|e| matches!(e, Event::Shutdown { .. }))
    }

    /// Forgets every stop and the delivery without asking Xen (the domain
    /// is gone).
    pub(crate) fn forget(&mut self) {
        self.pending.clear();
        self.queued.clear();
        self.events.forget();
        self.pause_count = 0;
    }
}
