//! Snapshots: save a stopped HVM/PVH domain's memory and vCPU state once,
//! restore it many times by copying back only what changed.
//!
//! Take: log-dirty on, every guest frame copied once through a persistent
//! read-write mapping of all guest memory (kept for restores and for all
//! memory accesses while the snapshot exists; see
//! [`super::memory::WholeMap`]), the full HVM context saved, the dirty
//! bitmap cleaned. Frames that are all zero are not stored (a fresh
//! guest's memory is mostly zero), so a 1 GiB guest's snapshot takes little
//! more than the memory the guest really uses. Restore: the frames log-dirty reports plus the
//! frames xenprobe itself wrote through foreign mappings (log-dirty does not
//! see those) are copied back, breakpoints are planted again, and the HVM
//! context is loaded. Breakpoint bytes are kept out of the saved copy.
//!
//! PV guests: see [`super::snapshot_pv`] (by machine frame, restores by
//! comparing all memory).

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::time::Instant;

use crate::xen::{HvmContext, HvmCpu, Prot, VmEventRegs, PAGE_SHIFT, PAGE_SIZE};

use super::breakpoint::Breakpoints;
use super::domain::Domain;
use super::error::{Error, Result};
use super::events::StopReason;
use super::frame_slots::{FrameSlots, Slot};
use super::memory::{
    hvm_frame_ranges, DirtyTracking, WholeMap, HIGH_FIRST, SPECIAL_FIRST, WHOLE_CHUNK,
};
use super::platform::SnapshotStore;

/// Bytes from the snapshot's RSP up that [`Domain::restore_registers`] restores.
pub const STACK_KEEP: u64 = 512;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// How a restore finds the frames to copy back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreStrategy {
    /// CLEAN the dirty bitmap at every restore and copy back what it reports.
    /// Every CLEAN re-protects guest memory, so the next run takes a nested
    /// page fault per page it touches again.
    #[default]
    CleanEveryRun,
    /// PEEK the bitmap (it keeps accumulating, nothing is re-protected) and
    /// copy back every frame dirtied since the last CLEAN; CLEAN only every
    /// `n` restores. Equally exact; cheaper when runs dirty the same few pages.
    PeekCleanEvery(u32),
}

impl std::fmt::Display for RestoreStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CleanEveryRun => write!(f, "clean every run"),
            Self::PeekCleanEvery(n) => write!(f, "peek, clean every {n}"),
        }
    }
}

impl std::str::FromStr for RestoreStrategy {
    type Err = String;
    /// `clean` or `peek:N` (`peek` alone: N = 1000).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            None if s == "clean" => Ok(Self::CleanEveryRun),
            None if s == "peek" => Ok(Self::PeekCleanEvery(1000)),
            Some(("peek", n)) => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(Self::PeekCleanEvery)
                .ok_or_else(|| format!("bad CLEAN interval {n:?} (a number > 0)")),
            _ => Err(format!(
                "unknown restore strategy {s:?} (clean, peek or peek:N)"
            )),
        }
    }
}

/// How a restore brings the vCPU back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegisterReset {
    /// Load the snapshot's whole HVM context (`xc_domain_hvm_setcontext`).
    #[default]
    Context,
    /// Reset the vCPU in the reply to its pending vm_event
    /// (`VM_EVENT_FLAG_SET_REGISTERS`: general registers, RIP, RFLAGS), when
    /// every other register the event reports (control, debug, segment
    /// registers, CR2, EFER and the syscall MSRs) still equals the snapshot's;
    /// else, or on a domain with several vCPUs, the whole context is loaded.
    /// x87/SSE and local-APIC state are not in the event: they are reset only
    /// by a context load (guests that use them need [`RegisterReset::Context`]).
    EventReply,
}

/// Restore settings (see [`Domain::set_restore_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreOptions {
    /// Which frames are copied back.
    pub strategy: RestoreStrategy,
    /// How the vCPU state is reset.
    pub registers: RegisterReset,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    /// Frames reported dirty by log-dirty.
    pub dirty: usize,
    /// Frames written by xenprobe since the last take/restore.
    pub written: usize,
    /// Frames brought back to the snapshot (dirty, written by xenprobe, and
    /// the special frames outside log-dirty tracking; only the words that
    /// differ are stored).
    pub restored: usize,
    /// The dirty bitmap was cleaned (not only peeked).
    pub cleaned: bool,
    /// The vCPU is reset in the vm_event reply (no context load).
    pub regs_in_reply: bool,
    /// Time in the log-dirty hypercall (PEEK or CLEAN; zero for a
    /// register-only restore or a PV restore without log-dirty).
    pub log_dirty: std::time::Duration,
}

/// Size and timing of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Guest frames saved.
    pub frames: usize,
    /// Of these, frames that were all zero (not stored).
    pub zero_frames: usize,
    /// Time taken to take it.
    pub took: std::time::Duration,
}

/// The live domain compared with its snapshot ([`Domain::check_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCheck {
    /// Frames compared.
    pub frames: usize,
    /// Frames whose contents differ from the snapshot (breakpoint bytes
    /// compared as the original instruction bytes).
    pub frames_differ: Vec<u64>,
    /// PV page-table frames that differ from the snapshot only in the
    /// accessed/dirty bits the CPU sets as the guest runs (dom0 cannot
    /// write PV page tables; not in `frames_differ`, hashed as saved).
    pub frames_ad_only: Vec<u64>,
    /// Fields of vCPU 0's CPU record that differ (the TSC is not compared).
    pub cpu_differ: Vec<&'static str>,
    /// Hash (std's SipHash) of all saved frames as they are now, and at the
    /// snapshot.
    pub hash_now: u64,
    /// Hash at the snapshot.
    pub hash_snapshot: u64,
}

impl SnapshotCheck {
    /// Memory and registers equal the snapshot.
    pub fn exact(&self) -> bool {
        self.frames_differ.is_empty()
            && self.cpu_differ.is_empty()
            && self.hash_now == self.hash_snapshot
    }
}

/// A saved domain state (see the module docs).
pub(crate) struct Snapshot {
    /// Where each saved frame is in `data`.
    slot: FrameSlots,
    data: Vec<u8>,
    cpu: HvmContext,
    /// vCPU 0's registers as its vm_event reported them at the snapshot
    /// (single-vCPU domains stopped at an event only).
    event_regs: Option<VmEventRegs>,
    tracking: DirtyTracking,
    /// Frames holding the top of vCPU 0's stack at the snapshot (see
    /// [`Domain::restore_registers`]), sorted.
    stack_gfns: Vec<u64>,
    /// Restores since the last CLEAN.
    since_clean: u32,
    /// Saved frames beyond the log-dirty bitmap (special pages under
    /// 4 GiB): compared and restored by a full restore when Xen counted a
    /// dirty frame beyond the bitmap since the last CLEAN.
    untracked: Vec<u64>,
    /// The frames of a restore (kept to reuse its allocation).
    frames: Vec<u64>,
    /// Each vCPU's RIP in `cpu` (index = vCPU).
    rips: Vec<Option<u64>>,
    /// vCPUs that were down at the snapshot, with the CPU time they had run
    /// then or at their last reset (a restore resets a vCPU that is up or
    /// has run since: loading the context does not bring an up vCPU down,
    /// and one that went down by itself stays initialised).
    down: Vec<(u32, u64)>,
    /// Frames log-dirty reported at the last restore (see [`clean_now`]).
    last_dirty: usize,
    pub(crate) info: SnapshotInfo,
}

impl Snapshot {
    /// The saved contents of a frame, if it was saved.
    fn page(&self, gfn: u64) -> Option<&[u8]> {
        match self.slot.get(gfn)? {
            Slot::Zero => Some(&ZERO_PAGE),
            Slot::Page(s) => Some(&self.data[s * PAGE_SIZE..(s + 1) * PAGE_SIZE]),
        }
    }
}

/// The vCPU state a vm_event reports besides what the reply can set.
fn same_control_state(a: &VmEventRegs, b: &VmEventRegs) -> bool {
    let sel = |x: &xen_sys::vm_event_x86_selector_reg| (x.limit(), x.ar());
    a.cr0 == b.cr0
        && a.cr2 == b.cr2
        && a.cr3 == b.cr3
        && a.cr4 == b.cr4
        && a.dr6 == b.dr6
        && a.dr7 == b.dr7
        && a.msr_efer == b.msr_efer
        && a.msr_star == b.msr_star
        && a.msr_lstar == b.msr_lstar
        && a.sysenter_cs == b.sysenter_cs
        && a.sysenter_esp == b.sysenter_esp
        && a.sysenter_eip == b.sysenter_eip
        && a.fs_base == b.fs_base
        && a.gs_base == b.gs_base
        && a.shadow_gs == b.shadow_gs
        && a.gdtr_base == b.gdtr_base
        && a.gdtr_limit == b.gdtr_limit
        && (a.cs_sel, a.ss_sel, a.ds_sel, a.es_sel, a.fs_sel, a.gs_sel)
            == (b.cs_sel, b.ss_sel, b.ds_sel, b.es_sel, b.fs_sel, b.gs_sel)
        && (a.cs_base, a.ss_base, a.ds_base, a.es_base)
            == (b.cs_base, b.ss_base, b.ds_base, b.es_base)
        && [
            sel(&a.cs),
            sel(&a.ss),
            sel(&a.ds),
            sel(&a.es),
            sel(&a.fs),
            sel(&a.gs),
        ] == [
            sel(&b.cs),
            sel(&b.ss),
            sel(&b.ds),
            sel(&b.es),
            sel(&b.fs),
            sel(&b.gs),
        ]
}

/// Names of the CPU-record fields that differ (TSC excluded).
pub(crate) fn cpu_differences(a: &HvmCpu, b: &HvmCpu) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => { $( if a.$f != b.$f { out.push(stringify!($f)); } )* };
    }
    cmp!(
        fpu_regs,
        rax,
        rbx,
        rcx,
        rdx,
        rbp,
        rsi,
        rdi,
        rsp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip,
        rflags,
        cr0,
        cr2,
        cr3,
        cr4,
        dr0,
        dr1,
        dr2,
        dr3,
        dr6,
        dr7,
        cs_sel,
        ds_sel,
        es_sel,
        fs_sel,
        gs_sel,
        ss_sel,
        tr_sel,
        ldtr_sel,
        cs_limit,
        ds_limit,
        es_limit,
        fs_limit,
        gs_limit,
        ss_limit,
        tr_limit,
        ldtr_limit,
        idtr_limit,
        gdtr_limit,
        cs_base,
        ds_base,
        es_base,
        fs_base,
        gs_base,
        ss_base,
        tr_base,
        ldtr_base,
        idtr_base,
        gdtr_base,
        cs_arbytes,
        ds_arbytes,
        es_arbytes,
        fs_arbytes,
        gs_arbytes,
        ss_arbytes,
        tr_arbytes,
        ldtr_arbytes,
        sysenter_cs,
        sysenter_esp,
        sysenter_eip,
        shadow_gs,
        msr_flags,
        msr_lstar,
        msr_star,
        msr_cstar,
        msr_syscall_mask,
        msr_efer,
        msr_tsc_aux,
        error_code,
        flags
    );
    out
}

/// A PEEK that reported more dirty frames than this makes the next restore
/// a CLEAN (see [`clean_now`]).
const CLEAN_AFTER_DIRTY: usize = 1024;

/// Whether this restore CLEANs the dirty bitmap (else it PEEKs):
/// every run with [`RestoreStrategy::CleanEveryRun`]; every `n`th restore
/// with [`RestoreStrategy::PeekCleanEvery`], and also right after a restore
/// that found more than [`CLEAN_AFTER_DIRTY`] dirty frames. A PEEK reports
/// every frame dirtied since the last CLEAN, so a run that wrote all of
/// guest memory would otherwise make each of the next `n` restores copy it
/// all back.
fn clean_now(strategy: RestoreStrategy, since_clean: u32, last_dirty: usize) -> bool {
    match strategy {
        RestoreStrategy::CleanEveryRun => true,
        RestoreStrategy::PeekCleanEvery(n) => {
            since_clean + 1 >= n.max(1) || last_dirty > CLEAN_AFTER_DIRTY
        }
    }
}

/// Most special frames (under 4 GiB) left outside log-dirty tracking.
const MAX_UNTRACKED: usize = 64;

/// Shrinks `tracking` to the frames below the special-page region when the
/// snapshot's frames there are few and none lies above 4 GiB; returns the
/// saved frames left outside (restored by comparison instead), without
/// `backend` frames (ioreq pages, vm_event rings): Xen and dom0 write those,
/// never the guest, and a restore must not touch them (a ring enabled
/// after the snapshot lives in such a frame).
fn limit_tracking(
    tracking: &mut DirtyTracking,
    slot: &FrameSlots,
    backend: &[u64],
) -> Result<Vec<u64>> {
    if slot.gfns().any(|g| g >= HIGH_FIRST) {
        return Ok(Vec::new());
    }
    let mut above: Vec<u64> = slot
        .gfns()
        .filter(|&g| g >= SPECIAL_FIRST && !backend.contains(&g))
        .collect();
    if above.len() > MAX_UNTRACKED {
        return Ok(Vec::new());
    }
    let end = slot
        .gfns()
        .filter(|&g| g < SPECIAL_FIRST)
        .max()
        .map_or(1, |g| g + 1);
    tracking.limit(end)?;
    above.sort_unstable();
    tracing::debug!(
        tracked = end,
        untracked = above.len(),
        "log-dirty bitmap limited to RAM; special frames compared on restore"
    );
    Ok(above)
}

impl Domain {
    /// Saves the stopped HVM/PVH domain as its snapshot (see the module docs).
    pub(crate) fn take_hvm_snapshot(&mut self) -> Result<SnapshotInfo> {
        let t0 = Instant::now();
        self.settle_register_reset()?;
        self.snapshot.clear();
        let mut tracking = self.track_dirty()?;
        let max_gpfn = self.xen.xc.domain_maximum_gpfn(self.domid)?;
        self.mem.unmap_all();
        let mut chunks = Vec::new();
        let mut slot = FrameSlots::new(SPECIAL_FIRST);
        let mut data = Vec::new();
        let mut zero_frames = 0;
        for (from, to, stop_at_hole) in hvm_frame_ranges(max_gpfn) {
            let mut start = from;
            while start <= to {
                let n = WHOLE_CHUNK.min(to + 1 - start);
                let gfns: Vec<u64> = (start..start + n).collect();
                let map = self
                    .xen
                    .fmem
                    .map_sparse(self.domid, Prot::ReadWrite, &gfns)?;
                let mut page = [0u8; PAGE_SIZE];
                let mut any = false;
                for (i, &gfn) in gfns.iter().enumerate() {
                    if !map.page_valid(i) {
                        continue;
                    }
                    any = true;
                    map.read(i * PAGE_SIZE, &mut page)?;
                    if page == ZERO_PAGE {
                        slot.insert(gfn, Slot::Zero);
                        zero_frames += 1;
                    } else {
                        slot.insert(gfn, Slot::Page(data.len() / PAGE_SIZE));
                        data.extend_from_slice(&page);
                    }
                }
                if any {
                    chunks.push((start, map));
                } else if stop_at_hole {
                    break;
                }
                start += n;
            }
        }
        data.shrink_to_fit();
        self.mem.whole.replace(Some(WholeMap { chunks }));
        let info = self.info()?;
        let nr_pages = info.nr_pages as usize;
        // A vm_event ring's frame is out of the guest's physmap while the
        // ring is on, but still counts in the domain's pages.
        let ring_out = self.stops.events.has_ring()
            && self
                .xen
                .xc
                .hvm_param(self.domid, crate::xen::HVM_PARAM_MONITOR_RING_PFN)
                .is_ok_and(|pfn| pfn != 0 && !slot.contains(pfn));
        if slot.len() + usize::from(ring_out) < nr_pages {
            tracing::warn!(
                domid = self.domid,
                saved = slot.len(),
                nr_pages,
                "snapshot saved fewer frames than the domain has"
            );
        }
        // Keep breakpoint bytes out of the saved copy (a breakpoint's
        // frame is never all zero: it holds the breakpoint byte).
        for (_, b) in self.bps.planted() {
            if let Some(Slot::Page(s)) = slot.get(b.pa >> PAGE_SHIFT) {
                data[s * PAGE_SIZE + (b.pa as usize & (PAGE_SIZE - 1))] = b.orig;
            }
        }
        let cpu = self.xen.xc.hvm_context(self.domid)?;
        let rips = (0..=info.max_vcpu_id)
            .map(|v| {
                u16::try_from(v)
                    .ok()
                    .and_then(|v| cpu.cpu(v))
                    .map(|c| c.rip)
            })
            .collect();
        let mut down = Vec::new();
        for v in 1..=info.max_vcpu_id {
            let st = self.xen.xc.vcpu_state(self.domid, v)?;
            if !st.online {
                down.push((v, st.cpu_time));
            }
        }
        self.watch_descriptors();
        self.snapshot.descriptors_loaded();
        let event_regs = if info.max_vcpu_id == 0 && !self.stops.regs_changed(0) {
            self.stops
                .pending
                .get(&0)
                .and_then(|p| p.request.as_ref())
                .map(|r| r.regs())
        } else {
            None
        };
        let mut stack_gfns = Vec::new();
        if let Some(c) = cpu.cpu(0) {
            for va in [c.rsp, c.rsp.saturating_add(STACK_KEEP - 1)] {
                if let Ok(t) = self.translate(0, va) {
                    let gfn = t.frame() >> PAGE_SHIFT;
                    if !stack_gfns.contains(&gfn) {
                        stack_gfns.push(gfn);
                    }
                }
            }
        }
        stack_gfns.sort_unstable();
        let backend: Vec<u64> = crate::xen::HVM_PARAMS_BACKEND_FRAMES
            .iter()
            .filter_map(|&p| self.xen.xc.hvm_param(self.domid, p).ok())
            .filter(|&gfn| gfn != 0)
            .collect();
        let untracked = limit_tracking(&mut tracking, &slot, &backend)?;
        tracking.clean()?;
        self.mem.forget_writes();
        let info = SnapshotInfo {
            frames: slot.len(),
            zero_frames,
            took: t0.elapsed(),
        };
        self.snapshot.put(Box::new(SnapshotStore::Hvm(Snapshot {
            slot,
            data,
            cpu,
            event_regs,
            tracking,
            stack_gfns,
            since_clean: 0,
            untracked,
            frames: Vec::new(),
            rips,
            down,
            last_dirty: 0,
            info,
        })));
        tracing::debug!(domid = self.domid, ?info, "snapshot taken");
        Ok(info)
    }

    /// Chooses how later restores work (kept across snapshots).
    pub fn set_restore_options(&mut self, options: RestoreOptions) {
        self.snapshot.set_options(options);
    }

    /// The current restore settings.
    pub fn restore_options(&self) -> RestoreOptions {
        self.snapshot.options()
    }

    /// Brings the stopped HVM/PVH domain back to `snap`.
    pub(crate) fn restore_hvm_snapshot(&mut self, snap: &mut Snapshot) -> Result<RestoreStats> {
        let st = self.restore_memory(snap)?;
        self.restore_vcpus(snap, st)
    }

    /// The vCPU state and the top of the stack back to `snap` (see
    /// [`Domain::restore_registers`]).
    pub(crate) fn restore_hvm_registers(&mut self, snap: &mut Snapshot) -> Result<RestoreStats> {
        // Taken out and put back: no copy of the list per persistent-mode run.
        let gfns = std::mem::take(&mut snap.stack_gfns);
        let result = self
            .copy_back(snap, &gfns)
            .and_then(|restored| self.undo_windows(snap, &gfns).map(|()| restored));
        snap.stack_gfns = gfns;
        let restored = result?;
        let st = RestoreStats {
            dirty: 0,
            written: 0,
            restored,
            cleaned: false,
            regs_in_reply: false,
            log_dirty: std::time::Duration::ZERO,
        };
        self.restore_vcpus(snap, st)
    }

    fn restore_memory(&mut self, snap: &mut Snapshot) -> Result<RestoreStats> {
        let clean = clean_now(
            self.snapshot.options().strategy,
            snap.since_clean,
            snap.last_dirty,
        );
        if clean {
            snap.since_clean = 0;
        } else {
            snap.since_clean += 1;
        }
        // One list, reused: the frames log-dirty reports, those xenprobe
        // wrote, and the special frames beyond the bitmap when Xen counted
        // a dirty frame there (else they still hold what they held at the
        // last restore that compared them).
        let mut frames = std::mem::take(&mut snap.frames);
        frames.clear();
        let t = crate::xen::Stamp::now();
        let beyond = snap.tracking.fetch_into(clean, &mut frames)?;
        let log_dirty = t.elapsed();
        let dirty = frames.len();
        snap.last_dirty = dirty;
        self.note_overwritten(&frames)?;
        let written = self.mem.written_count();
        frames.extend(self.mem.drain_written());
        if beyond {
            frames.extend_from_slice(&snap.untracked);
        }
        frames.sort_unstable();
        frames.dedup();
        let restored = self
            .copy_back(snap, &frames)
            .and_then(|n| self.undo_windows(snap, &frames).map(|()| n));
        snap.frames = frames;
        let restored = restored?;
        self.mem.invalidate();
        Ok(RestoreStats {
            dirty,
            written,
            restored,
            cleaned: clean,
            regs_in_reply: false,
            log_dirty,
        })
    }

    /// Notes the planted breakpoints whose byte the guest replaced in the
    /// frames it dirtied ([`super::Notice::Overwritten`]), before a restore
    /// writes those frames back.
    fn note_overwritten(&mut self, dirty: &[u64]) -> Result<()> {
        let frames: Vec<u64> = dirty
            .iter()
            .copied()
            .filter(|&g| self.bps.planted_in_frame(g).next().is_some())
            .collect();
        if frames.is_empty() {
            // The usual case, on every restore: no page buffer (a 4 KiB
            // allocation and fill cost microseconds under emulation).
            return Ok(());
        }
        let mut page = vec![0u8; PAGE_SIZE];
        for gfn in frames {
            self.mem.read_phys(gfn << PAGE_SHIFT, &mut page)?;
            self.note_overwritten_in(gfn, &page);
        }
        Ok(())
    }

    /// Turns on descriptor-table events (HVM/PVH with a vm_event ring), so
    /// that a guest that moves its IDT, GDT, LDT or TR is seen: the
    /// vm_event registers the fast register reset loads do not carry them.
    /// Without them (a hypervisor that lacks the event) restores load the
    /// whole vCPU state.
    fn watch_descriptors(&mut self) {
        if let Some(ring) = self.stops.events.ring() {
            if !ring.descriptor_access() {
                if let Err(e) = ring.set_descriptor_access(true) {
                    tracing::info!(
                        domid = self.domid,
                        "descriptor-table events unavailable ({e}): restores load the whole vCPU state"
                    );
                }
            }
        }
    }

    /// Whether a restore may reset the vCPU in the vm_event reply: no
    /// descriptor-table register written since the last full load, and
    /// such writes are watched.
    fn descriptors_unchanged(&self) -> bool {
        !self.snapshot.descriptors_changed() && self.stops.events.sees_descriptors()
    }

    /// Before a restore loads the vCPUs: answers the requests still on the
    /// ring (their vCPUs get the snapshot's state; returns how many) and
    /// brings down the vCPUs the guest brought up since the snapshot.
    fn settle_vcpus(&mut self, down: &mut [(u32, u64)]) -> Result<usize> {
        // Events seen before this restore belong to the runs it undoes.
        self.stops.clear_queued();
        let stale = match self.stops.events.ring() {
            Some(ring) => ring.drain()?,
            None => 0,
        };
        for (v, ran) in down.iter_mut() {
            let v = *v;
            let st = self.xen.xc.vcpu_state(self.domid, v)?;
            if !st.online && st.cpu_time == *ran {
                continue;
            }
            self.stops.dismiss(v)?;
            self.xen.xc.vcpu_reset(self.domid, v)?;
            *ran = self.xen.xc.vcpu_state(self.domid, v)?.cpu_time;
            self.notice(super::notice::Notice::VcpuReset { vcpu: v });
        }
        Ok(stale)
    }

    /// Copies `frames` back from the snapshot and plants the breakpoints
    /// they hold again; returns how many were copied.
    fn copy_back(&mut self, snap: &mut Snapshot, frames: &[u64]) -> Result<usize> {
        let opcode = self.bps.opcode();
        let mut whole = self.mem.whole.borrow_mut();
        let Some(whole) = whole.as_mut() else {
            return Err(Error::State("the snapshot's memory mapping is gone".into()));
        };
        let mut restored = 0;
        for &gfn in frames {
            let Some(page) = snap.page(gfn) else {
                tracing::debug!(gfn, "dirty frame not in the snapshot: left as is");
                continue;
            };
            let Some((ci, off)) = whole.locate(gfn) else {
                continue;
            };
            let map = &mut whole.chunks[ci].1;
            map.write_changed(off, page)?;
            restored += 1;
            // Breakpoints live in memory, not in the snapshot: plant them again.
            replant_in_frame(&self.bps, map, off, gfn, 0..PAGE_SIZE, opcode)?;
        }
        Ok(restored)
    }

    /// Puts the bytes written through windows back to the snapshot's,
    /// except in `copied` (sorted): frames copied back whole already.
    fn undo_windows(&mut self, snap: &Snapshot, copied: &[u64]) -> Result<()> {
        let opcode = self.bps.opcode();
        let mut whole = self.mem.whole.borrow_mut();
        let Some(whole) = whole.as_mut() else {
            return Err(Error::State("the snapshot's memory mapping is gone".into()));
        };
        for (gfn, from, to) in self.mem.windows.take() {
            if copied.binary_search(&gfn).is_ok() {
                continue;
            }
            let (Some(page), Some((ci, off))) = (snap.page(gfn), whole.locate(gfn)) else {
                continue;
            };
            let map = &mut whole.chunks[ci].1;
            map.write(off + from, &page[from..to])?;
            replant_in_frame(&self.bps, map, off, gfn, from..to, opcode)?;
        }
        Ok(())
    }

    fn restore_vcpus(&mut self, snap: &mut Snapshot, mut st: RestoreStats) -> Result<RestoreStats> {
        let stale = self.settle_vcpus(&mut snap.down)?;
        let fast = stale == 0 && self.descriptors_unchanged();
        // A vCPU stopped on a breakpoint sits on it after the restore only
        // if the snapshot's RIP is that breakpoint: else nothing to step over
        // (and no register read to find out).
        for (&vcpu, p) in self.stops.pending.iter_mut() {
            p.reset_regs = None;
            if let StopReason::Breakpoint(id) = p.reason {
                let saved_rip = snap.rips.get(vcpu as usize).copied().flatten();
                if self.bps.get(id).map(|b| b.va) != saved_rip {
                    p.reason = StopReason::Other;
                }
            }
        }
        let reply = match (self.snapshot.options().registers, &snap.event_regs) {
            (RegisterReset::EventReply, Some(saved)) if fast && self.stops.pending.len() == 1 => {
                self.stops
                    .pending
                    .get_mut(&0)
                    .filter(|p| {
                        p.request
                            .as_ref()
                            .is_some_and(|r| same_control_state(&r.regs(), saved))
                    })
                    .map(|p| p.reset_regs = Some(*saved))
                    .is_some()
            }
            _ => false,
        };
        if !reply {
            self.regs_backend.forget();
            self.xen.xc.set_hvm_context(self.domid, &snap.cpu)?;
            self.snapshot.descriptors_loaded();
        }
        tracing::trace!(
            domid = self.domid,
            reply,
            pending = self.stops.pending.len(),
            event_regs = snap.event_regs.is_some(),
            "vCPU reset"
        );
        // Pending vm_event register copies no longer match the vCPUs.
        self.stops.all_regs_written();
        self.mem.invalidate();
        st.regs_in_reply = reply;
        Ok(st)
    }

    /// A register reset waiting in a vm_event reply is loaded now with the
    /// whole context (idempotent; the reply still resets the same values).
    pub(crate) fn apply_register_reset(&self) -> Result<()> {
        if self.stops.register_reset_waiting() {
            if let Some(snap) = self.snapshot.hvm() {
                self.regs_backend.forget();
                self.xen.xc.set_hvm_context(self.domid, &snap.cpu)?;
            }
        }
        Ok(())
    }

    /// Like [`Domain::apply_register_reset`], and the replies become plain
    /// (for callers about to change registers).
    pub(crate) fn settle_register_reset(&mut self) -> Result<()> {
        self.apply_register_reset()?;
        self.stops.drop_register_resets();
        Ok(())
    }

    /// Compares the stopped domain's memory (every saved frame) and vCPU 0's
    /// CPU record with `snap`.
    pub(crate) fn check_hvm_snapshot(&self, snap: &Snapshot) -> Result<SnapshotCheck> {
        let mut gfns: Vec<u64> = snap.slot.gfns().collect();
        gfns.sort_unstable();
        let mut page = vec![0u8; PAGE_SIZE];
        // One hash while every frame so far equals the snapshot's; two from
        // the first difference on. std's SipHash is built optimised even
        // in a debug build of xenprobe, which counts in an emulated dom0.
        let mut hash_now = DefaultHasher::new();
        let mut hash_snapshot: Option<DefaultHasher> = None;
        let mut frames_differ = Vec::new();
        let whole = self.mem.whole.borrow();
        let Some(whole) = whole.as_ref() else {
            return Err(Error::State("the snapshot's memory mapping is gone".into()));
        };
        for &gfn in &gfns {
            let (Some((ci, off)), Some(saved)) = (whole.locate(gfn), snap.page(gfn)) else {
                frames_differ.push(gfn);
                continue;
            };
            whole.chunks[ci].1.read(off, &mut page)?;
            for b in self.bps.planted_in_frame(gfn) {
                page[b.pa as usize & (PAGE_SIZE - 1)] = b.orig;
            }
            let same = page == saved;
            if !same {
                frames_differ.push(gfn);
            }
            match &mut hash_snapshot {
                None if same => hash_now.write(saved),
                None => {
                    let mut h = hash_now.clone();
                    h.write(saved);
                    hash_now.write(&page);
                    hash_snapshot = Some(h);
                }
                Some(h) => {
                    hash_now.write(&page);
                    h.write(saved);
                }
            }
        }
        let hash_now = hash_now.finish();
        let hash_snapshot = hash_snapshot.map_or(hash_now, |h| h.finish());
        let now = self.xen.xc.hvm_cpu(self.domid, 0)?;
        let mut cpu_differ = match snap.cpu.cpu(0) {
            Some(saved) => cpu_differences(&now, &saved),
            None => vec!["cpu record missing from the snapshot"],
        };
        for &(v, ran) in &snap.down {
            let st = self.xen.xc.vcpu_state(self.domid, v)?;
            if st.online {
                cpu_differ.push("a vCPU down at the snapshot is up");
            } else if st.cpu_time != ran {
                cpu_differ.push("a vCPU down at the snapshot has run since");
            }
        }
        Ok(SnapshotCheck {
            frames: gfns.len(),
            frames_differ,
            frames_ad_only: Vec::new(),
            cpu_differ,
            hash_now,
            hash_snapshot,
        })
    }
}

/// Writes the breakpoint instruction back at the planted breakpoints
/// of frame `gfn` whose byte lies in `within` (offsets in the frame);
/// the frame is at `off` in `map`.
fn replant_in_frame(
    bps: &Breakpoints,
    map: &mut crate::xen::Mapping,
    off: usize,
    gfn: u64,
    within: std::ops::Range<usize>,
    opcode: Option<u8>,
) -> Result<()> {
    let Some(op) = opcode else { return Ok(()) };
    for b in bps.planted_in_frame(gfn) {
        let at = b.pa as usize & (PAGE_SIZE - 1);
        if within.contains(&at) {
            map.write(off + at, &[op])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_strategies_parse() {
        assert_eq!("clean".parse(), Ok(RestoreStrategy::CleanEveryRun));
        assert_eq!("peek".parse(), Ok(RestoreStrategy::PeekCleanEvery(1000)));
        assert_eq!("peek:7".parse(), Ok(RestoreStrategy::PeekCleanEvery(7)));
        assert!("peek:0".parse::<RestoreStrategy>().is_err());
        assert!("dirty".parse::<RestoreStrategy>().is_err());
    }

    #[test]
    fn cpu_differences_name_fields_but_ignore_the_tsc() {
        let a = HvmCpu::default();
        let mut b = a;
        b.tsc = 12345;
        assert!(cpu_differences(&a, &b).is_empty());
        b.rip = 1;
        b.cr3 = 2;
        assert_eq!(cpu_differences(&a, &b), vec!["rip", "cr3"]);
    }

    #[test]
    fn the_reply_path_needs_the_same_control_state() {
        let a = VmEventRegs::default();
        let mut b = a;
        b.rax = 1;
        b.rip = 2;
        b.rflags = 3;
        assert!(same_control_state(&a, &b), "the reply sets these");
        b.cr2 = 0x1000;
        assert!(!same_control_state(&a, &b));
        let mut c = a;
        c.fs.set_limit(0xfff);
        assert!(!same_control_state(&a, &c));
    }

    #[test]
    fn a_big_dirty_set_cleans_at_the_next_restore() {
        let peek = RestoreStrategy::PeekCleanEvery(1000);
        assert!(!clean_now(peek, 0, 25), "a usual run: PEEK");
        assert!(clean_now(peek, 999, 25), "every 1000th restore CLEANs");
        assert!(
            clean_now(peek, 3, 8000),
            "after a run that wrote all memory, CLEAN at once"
        );
        assert!(!clean_now(peek, 0, CLEAN_AFTER_DIRTY));
        assert!(clean_now(RestoreStrategy::CleanEveryRun, 0, 0));
    }

    #[test]
    fn scan_ranges_follow_the_hvm_layout() {
        assert_eq!(hvm_frame_ranges(0x1fff), vec![(0, 0x1fff, true)]);
        assert_eq!(
            hvm_frame_ranges(0xfeffc),
            vec![(0, 0xfbfff, true), (0xfc000, 0xfeffc, false)]
        );
        assert_eq!(
            hvm_frame_ranges(0x12_0000),
            vec![
                (0, 0xfbfff, true),
                (0xfc000, 0xfefff, false),
                (0x100000, 0x12_0000, false)
            ]
        );
    }
}
