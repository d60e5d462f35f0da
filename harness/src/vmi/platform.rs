//! The guest-type seam: what differs between PV and HVM/PVH guests, chosen
//! once at attach ([`Platform::of`]; the repair of a domain a killed
//! harness left chooses the same way).
//!
//! - Event delivery: [`Events`], the vm_event ring (HVM/PVH) or the gdbsx
//!   debugger pause (PV), set up on first use together with the breakpoint
//!   instruction that goes with it ([`Domain::ensure_debug`]).
//! - Register access: [`Platform::registers`] (the HVM CPU record or the
//!   PV vCPU context).
//! - Snapshot store: [`SnapshotStore`], by guest frame (HVM/PVH) or by
//!   machine frame (PV); a domain keeps one.
//! - Frame addressing: guest frames (HVM/PVH) or machine frames (PV):
//!   [`Domain::support_guest_frames`], [`Platform::dirty_bitmap_pages`].
//!
//! What a guest type may do on a host is for the capability rules
//! ([`super::caps`]); this module is how the engine does it.

use std::time::Duration;

use crate::xen::{DomainInfo, MonitorRing, Stamp, VmEventRequest, VmEventResponse, XenCtrl};

use super::breakpoint::{Icebp, Int3};
use super::caps::{BreakpointInsnKind, GuestKind};
use super::domain::Domain;
use super::error::{Error, Result};
use super::events::Deadline;
use super::memory::MemoryImage;
use super::regs::{HvmRegisters, PvRegisters, RegisterBackend};
use super::snapshot::{RestoreStats, Snapshot, SnapshotCheck, SnapshotInfo};
use super::snapshot_pv::PvSnapshot;

/// How the engine reaches a guest of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Platform {
    /// PV: machine frames, vCPU contexts, gdbsx debugger pauses.
    Pv,
    /// HVM and PVH: guest frames, the HVM save record, the vm_event ring.
    Hvm,
}

/// The guest type Xen reports for a domain.
pub(crate) fn kind_of(info: &DomainInfo) -> GuestKind {
    if !info.hvm {
        GuestKind::Pv
    } else if info.is_pvh() {
        GuestKind::Pvh
    } else {
        GuestKind::Hvm
    }
}

impl Platform {
    /// The platform of a `kind` guest.
    pub(crate) fn of(kind: GuestKind) -> Self {
        if kind.is_hvm_container() {
            Self::Hvm
        } else {
            Self::Pv
        }
    }

    /// Register access for domain `domid`.
    pub(crate) fn registers(self, xc: &XenCtrl, domid: u32) -> Result<Box<dyn RegisterBackend>> {
        Ok(match self {
            Self::Pv => Box::<PvRegisters>::default(),
            Self::Hvm => Box::new(HvmRegisters::new(xc.domain_info(domid)?.max_vcpu_id + 1)),
        })
    }

    /// Event delivery, not set up yet.
    pub(crate) fn events(self) -> Events {
        match self {
            Self::Pv => Events::Gdbsx(false),
            Self::Hvm => Events::Ring(None),
        }
    }

    /// Removing the last watchpoint of a guest without debug registers of
    /// its own leaves one slot parked (HVM/PVH: see `PARKED_SLOT_ENABLE` in
    /// `watchpoint.rs`).
    pub(crate) fn parks_debug_slot(self) -> bool {
        self == Self::Hvm
    }

    /// Memory is addressed by guest frame number (HVM/PVH), not by machine
    /// frame (PV).
    pub(crate) fn guest_frames(self) -> bool {
        self == Self::Hvm
    }

    /// Bits the log-dirty bitmap needs. A PV guest's p2m size comes from
    /// the guest (shared info max_pfn); bare-metal guests may leave it 0:
    /// then the allocation plus slack.
    pub(crate) fn dirty_bitmap_pages(self, xc: &XenCtrl, domid: u32) -> Result<u64> {
        Ok(match self {
            Self::Pv => {
                let n = xc.domain_nr_gpfns(domid)?;
                if n > 1 {
                    n
                } else {
                    xc.domain_info(domid)?.nr_pages + 4096
                }
            }
            Self::Hvm => xc.domain_maximum_gpfn(domid)? + 1,
        })
    }
}

/// Where debug events come from.
pub(crate) enum Events {
    /// The vm_event ring (HVM/PVH), once set up.
    Ring(Option<MonitorRing>),
    /// The domain pauses itself for the debugger (`xc_domain_setdebugging`
    /// on a gdbsx hypervisor, PV); true once switched on.
    Gdbsx(bool),
}

/// What one wait on the event delivery saw ([`Events::wait`]).
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub(crate) enum Waited {
    /// A vm_event request.
    Request(VmEventRequest),
    /// The domain paused itself for the debugger (a pause that is ours to undo).
    DebuggerPause,
    /// The domain no longer exists.
    Destroyed,
    /// Woken by the notification of a request taken already: wait again.
    Again,
    /// Nothing; `left` was the time left for this wait.
    Nothing { left: Duration },
}

/// Unanswered ring checks between two clock reads while busy-polling
/// (reading the clock is a system call in a PV dom0).
const SPIN_CHECKS: u32 = 32;

/// The longest single blocking wait on the event channel: a lost
/// notification costs at most this.
const MAX_BLOCK: Duration = Duration::from_millis(50);

impl Events {
    /// The vm_event ring, once set up.
    pub(crate) fn ring(&mut self) -> Option<&mut MonitorRing> {
        match self {
            Self::Ring(r) => r.as_mut(),
            Self::Gdbsx(_) => None,
        }
    }

    /// A vm_event ring is set up.
    pub(crate) fn has_ring(&self) -> bool {
        matches!(self, Self::Ring(Some(_)))
    }

    /// The ring reports descriptor-table accesses.
    pub(crate) fn sees_descriptors(&self) -> bool {
        matches!(self, Self::Ring(Some(r)) if r.descriptor_access())
    }

    /// Answers a vm_event request (nothing to answer without a ring).
    pub(crate) fn respond(&mut self, rsp: &VmEventResponse) -> Result<()> {
        if let Some(ring) = self.ring() {
            ring.put_response(rsp)?;
        }
        Ok(())
    }

    /// A request already on the ring, or one arriving while busy-polling
    /// for up to `spin` (bounded by the TSC: a clock read here would cost
    /// as much as the guest's whole run in a PV dom0).
    pub(crate) fn poll(
        &mut self,
        spin: Duration,
        deadline: &mut Deadline,
    ) -> Option<VmEventRequest> {
        let ring = self.ring()?;
        if let Some(req) = ring.get_request() {
            return Some(req);
        }
        if spin.is_zero() {
            return None;
        }
        let start = Stamp::now();
        let until = start.after(deadline.spin_bound(spin));
        loop {
            for _ in 0..SPIN_CHECKS {
                if let Some(req) = ring.get_request() {
                    return Some(req);
                }
                std::hint::spin_loop();
            }
            if Stamp::now() >= until {
                break;
            }
        }
        deadline.waited(start.elapsed());
        None
    }

    /// One wait for an event: a blocking wait on the ring's event channel
    /// (at most [`MAX_BLOCK`]), or one look at whether the PV domain paused
    /// for the debugger and a sleep of `poll` (doubled up to 2 ms).
    pub(crate) fn wait(
        &mut self,
        xc: &XenCtrl,
        domid: u32,
        deadline: &mut Deadline,
        poll: &mut Duration,
    ) -> Result<Waited> {
        match self {
            Self::Ring(Some(ring)) => {
                let left = deadline.left_lazy();
                let wait = left.min(MAX_BLOCK);
                let woken = ring.wait_notification(wait)?;
                if let Some(req) = ring.get_request() {
                    return Ok(Waited::Request(req));
                }
                if !woken {
                    deadline.waited(wait);
                }
                if woken && !left.is_zero() {
                    return Ok(Waited::Again);
                }
                Ok(Waited::Nothing { left })
            }
            Self::Gdbsx(true) => {
                let left = deadline.left();
                let info = match xc.domain_info(domid) {
                    Ok(i) => i,
                    Err(e) if e.raw_errno() == Some(libc::ESRCH) => return Ok(Waited::Destroyed),
                    Err(e) => return Err(e.into()),
                };
                if info.held_paused() {
                    return Ok(Waited::DebuggerPause);
                }
                std::thread::sleep((*poll).min(left));
                *poll = (*poll * 2).min(Duration::from_millis(2));
                Ok(Waited::Nothing { left })
            }
            Self::Ring(None) | Self::Gdbsx(false) => {
                let left = deadline.left();
                std::thread::sleep(left.min(Duration::from_millis(20)));
                Ok(Waited::Nothing { left })
            }
        }
    }

    /// Tears the delivery down (the ring: options off, disable, unmap; PV
    /// debugging off), back to not set up.
    pub(crate) fn close(&mut self, xc: &XenCtrl, domid: u32) -> Result<()> {
        match self {
            Self::Ring(ring) => *ring = None,
            Self::Gdbsx(on) => {
                if std::mem::take(on) {
                    xc.domain_set_debugging(domid, false)?;
                }
            }
        }
        Ok(())
    }

    /// Back to not set up, without asking Xen (the domain is gone).
    pub(crate) fn forget(&mut self) {
        match self {
            Self::Ring(ring) => *ring = None,
            Self::Gdbsx(on) => *on = false,
        }
    }
}

/// A domain's snapshot.
#[allow(clippy::large_enum_variant)] // one per domain
pub(crate) enum SnapshotStore {
    /// By guest frame, restored from log-dirty (HVM/PVH, `snapshot.rs`).
    Hvm(Snapshot),
    /// By machine frame (PV, `snapshot_pv.rs`).
    Pv(PvSnapshot),
}

impl SnapshotStore {
    /// Size and timing.
    pub(crate) fn info(&self) -> SnapshotInfo {
        match self {
            Self::Hvm(s) => s.info,
            Self::Pv(s) => s.info,
        }
    }

    /// The HVM/PVH snapshot, if that is what this is.
    pub(crate) fn hvm(&self) -> Option<&Snapshot> {
        match self {
            Self::Hvm(s) => Some(s),
            Self::Pv(_) => None,
        }
    }
}

/// Memory addressed by guest frame number: the HVM/PVH physmap (see
/// [`Domain::support_guest_frames`]).
pub struct GuestFrames<'a> {
    dom: &'a Domain,
}

impl GuestFrames<'_> {
    /// [`Domain::guest_memory_image`]: every guest frame, with the guest's
    /// own bytes where breakpoints are planted.
    pub fn memory_image(&self) -> Result<MemoryImage> {
        self.dom.guest_memory_image()
    }
}

impl Domain {
    /// Memory by guest frame number (HVM/PVH): whole-memory images,
    /// snapshot files, and snapshots that restore only the frames
    /// log-dirty reports. `None` for PV guests, whose frames are machine
    /// frames (their snapshot takes seconds and, without PV log-dirty,
    /// each restore compares all memory).
    pub fn support_guest_frames(&self) -> Option<GuestFrames<'_>> {
        self.platform
            .guest_frames()
            .then_some(GuestFrames { dom: self })
    }

    /// Sets up event delivery on first use: the vm_event ring with the
    /// debug-exception (and for int3 the software-breakpoint) monitor for
    /// HVM/PVH, `xc_domain_setdebugging` for PV on a gdbsx hypervisor.
    pub(crate) fn ensure_debug(&mut self) -> Result<()> {
        match &mut self.stops.events {
            Events::Ring(Some(_)) | Events::Gdbsx(true) => return Ok(()),
            Events::Gdbsx(on) => {
                self.caps.pv_debugging()?;
                self.journal.set_debugging(true)?;
                self.xen.xc.domain_set_debugging(self.domid, true)?;
                self.bps.set_insn(Box::new(Int3 { rip_after: true }));
                *on = true;
            }
            Events::Ring(slot) => {
                let kind = self.caps.breakpoint_insn()?;
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
                self.bps.set_insn(match kind {
                    BreakpointInsnKind::Int3 => Box::new(Int3 { rip_after: false }),
                    BreakpointInsnKind::Icebp => Box::new(Icebp),
                });
                *slot = Some(ring);
            }
        }
        tracing::debug!(domid = self.domid, "debugging set up");
        Ok(())
    }

    /// Saves the stopped domain's memory and vCPU state as the domain's
    /// snapshot (replacing an earlier one): by guest frame (see
    /// [`super::snapshot`]) or, for PV, by machine frame (see
    /// [`super::snapshot_pv`]).
    pub fn take_snapshot(&mut self) -> Result<SnapshotInfo> {
        if !self.is_stopped() {
            return Err(Error::State(
                "take_snapshot() needs a stopped domain: pause() first".into(),
            ));
        }
        match self.platform {
            Platform::Hvm => self.take_hvm_snapshot(),
            Platform::Pv => self.take_pv_snapshot(),
        }
    }

    /// Brings the stopped domain back to its snapshot: memory and vCPU state.
    /// With [`super::RegisterReset::EventReply`] the vCPU is reset when it
    /// resumes; reading or writing its registers before that loads the
    /// context first.
    pub fn restore_snapshot(&mut self) -> Result<RestoreStats> {
        if !self.is_stopped() {
            return Err(Error::State(
                "restore_snapshot() needs a stopped domain: pause() first".into(),
            ));
        }
        self.with_snapshot(|dom, store| match store {
            SnapshotStore::Hvm(snap) => dom.restore_hvm_snapshot(snap),
            SnapshotStore::Pv(snap) => dom.restore_pv_snapshot(snap),
        })
    }

    /// Resets the vCPU state to the snapshot's, and the page(s) holding the
    /// top of its stack ([`super::snapshot::STACK_KEEP`] bytes from the
    /// snapshot's RSP: a snapshot taken at a function's entry has its
    /// return address there, which the run's next call overwrites).
    /// Everything else keeps what the runs wrote (persistent mode). Same
    /// register paths as a restore. HVM/PVH only.
    pub fn restore_registers(&mut self) -> Result<RestoreStats> {
        if !self.is_stopped() {
            return Err(Error::State(
                "restore_registers() needs a stopped domain: pause() first".into(),
            ));
        }
        if !self.platform.guest_frames() {
            return Err(Error::unsupported(
                "register-only restore",
                "persistent mode restores HVM/PVH guests only; PV restores compare all memory anyway",
            ));
        }
        self.with_snapshot(|dom, store| match store {
            SnapshotStore::Hvm(snap) => dom.restore_hvm_registers(snap),
            SnapshotStore::Pv(_) => Err(no_snapshot()),
        })
    }

    /// Compares the stopped domain's memory (every saved frame) and vCPU 0's
    /// registers with the snapshot.
    pub fn check_snapshot(&mut self) -> Result<SnapshotCheck> {
        if !self.is_stopped() {
            return Err(Error::State(
                "check_snapshot() needs a stopped domain: pause() first".into(),
            ));
        }
        self.apply_register_reset()?;
        match self.snapshot.get().ok_or_else(no_snapshot)? {
            SnapshotStore::Hvm(snap) => self.check_hvm_snapshot(snap),
            SnapshotStore::Pv(snap) => self.check_pv_snapshot(snap),
        }
    }

    /// Runs `f` on the snapshot, taken out of the domain meanwhile.
    fn with_snapshot<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut SnapshotStore) -> Result<T>,
    ) -> Result<T> {
        let mut store = self.snapshot.take().ok_or_else(no_snapshot)?;
        let result = f(self, &mut store);
        self.snapshot.put(store);
        result
    }

    /// The current snapshot's size, if one was taken.
    pub fn snapshot_info(&self) -> Option<SnapshotInfo> {
        self.snapshot.info()
    }

    /// Forgets the snapshot (log-dirty off, mappings released).
    pub fn drop_snapshot(&mut self) {
        self.snapshot.clear();
        self.mem.unmap_all();
        if let Err(e) = self.journal.set_logdirty(false) {
            tracing::warn!(domid = self.domid, "journal: {e}");
        }
    }
}

fn no_snapshot() -> Error {
    Error::State("no snapshot taken".into())
}
