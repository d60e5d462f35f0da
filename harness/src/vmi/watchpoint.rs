//! Data watchpoints (write / read-write on a guest virtual range).
//!
//! Two routes exist in Xen; xenprobe implements the first:
//! - **Debug registers** (the default, every HVM/PVH guest, and PV guests on a
//!   gdbsx hypervisor): DR0-DR3 hold up to four aligned 1/2/4/8-byte ranges,
//!   DR7 enables them for writes or for reads and writes. The CPU raises #DB
//!   after the access (a trap: RIP is past the instruction); Xen intercepts #DB
//!   (SVM always does, `HVM_TRAP_MASK`) and reports it through the
//!   debug-exception monitor as a hardware exception, DR6 telling which slot
//!   hit. No page-granular faults. Xen writes the DRs we put in the vCPU
//!   context (`hvm_setcontext` / `vcpu_setcontext`), and QEMU's TCG raises
//!   the data breakpoint (measured in the lab, AMD SVM under TCG).
//! - **mem_access** (page permissions, `xc_set_mem_access`): Xen 4.17 offers
//!   it only for HVM/PVH with HAP on Intel VT-x. [`Domain::mem_access_support`]
//!   probes it; the event path is not implemented (no such host to test on).
//!
//! Hiding: the guest's own DR0-3/DR6/DR7 are saved at the first watchpoint
//! and written back when the last one goes (and on detach); our slots are
//! chosen among those the guest's DR7 leaves disabled, and DR6's hit bits are
//! cleared after each of our hits. A guest that reads DR7 while a watchpoint
//! is armed sees our enable bits (Xen does not intercept DR reads once the
//! guest's DRs are loaded). On HVM/PVH a guest without breakpoints of its
//! own keeps one "parked" enable bit after the last removal (see
//! `PARKED_SLOT_ENABLE` in the source for the Xen behaviour that forces it).
//!
//! Limits: x86 debug registers have no read-only condition (GDB's `rwatch`
//! is refused, as on native x86 Linux); a range is split into aligned pieces,
//! at most four slots in all; a single step over a watched write reports the
//! step, not the watchpoint.

use std::collections::BTreeMap;
use std::fmt;

use crate::xen::MemAccess;

use super::domain::Domain;
use super::error::{Error, Result};
use super::regs::Registers;

/// What a watchpoint reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// Writes (`watch`, GDB `Z2`).
    Write,
    /// Reads (`rwatch`, `Z3`): not expressible with x86 debug registers.
    Read,
    /// Reads and writes (`awatch`, `Z4`).
    Access,
}

impl WatchKind {
    /// The page access that makes this kind of access trap (mem_access route).
    pub fn restricted_access(self) -> MemAccess {
        match self {
            WatchKind::Write => MemAccess::Rx,
            WatchKind::Read | WatchKind::Access => MemAccess::X,
        }
    }

    /// Whether an access (read, write) of the watched range is a hit.
    pub fn matches(self, read: bool, write: bool) -> bool {
        match self {
            WatchKind::Write => write,
            WatchKind::Read => read,
            WatchKind::Access => read || write,
        }
    }

    /// DR7's R/W field for this kind (01 write, 11 read or write).
    fn dr7_rw(self) -> Result<u64> {
        match self {
            WatchKind::Write => Ok(0b01),
            WatchKind::Access => Ok(0b11),
            WatchKind::Read => Err(Error::unsupported(
                "read watchpoints",
                "x86 debug registers trap writes or reads-and-writes, never reads alone: use an \
                 access watchpoint (awatch)",
            )),
        }
    }
}

/// Which mechanism arms a watchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRoute {
    /// DR0-DR3/DR7 with #DB through the debug-exception monitor.
    DebugRegisters,
}

/// A watchpoint handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchpointId(pub u32);

impl fmt::Display for WatchpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "watchpoint {}", self.0)
    }
}

/// A watchpoint as listed by [`Domain::watchpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchpointInfo {
    /// Handle.
    pub id: WatchpointId,
    /// First watched byte (guest virtual).
    pub va: u64,
    /// Watched length in bytes.
    pub len: u64,
    /// Writes, or reads and writes.
    pub kind: WatchKind,
    /// How it is armed.
    pub route: WatchRoute,
    /// Debug-register slots used.
    pub slots: Vec<u8>,
    /// Hits so far.
    pub hits: u64,
}

/// One armed watchpoint.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    va: u64,
    len: u64,
    kind: WatchKind,
    /// (slot, address, length) per debug register.
    pieces: Vec<(u8, u64, u64)>,
    hits: u64,
    /// The watched bytes at the last hit (or when armed).
    last: Vec<u8>,
}

/// A vCPU's debug registers as the guest had them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedDebugRegs {
    dr: [u64; 4],
    dr6: u64,
    dr7: u64,
}

impl SavedDebugRegs {
    /// Writes these (the guest's) debug registers into `r`. With `park`
    /// (HVM/PVH), a guest without enabled breakpoints gets slot 0 parked
    /// (see [`PARKED_SLOT_ENABLE`]) so that Xen reloads the hardware's DR7.
    pub(crate) fn restore_into(&self, r: &mut Registers, park: bool) {
        [r.dr0, r.dr1, r.dr2, r.dr3] = self.dr;
        r.dr6 = self.dr6;
        r.dr7 = self.dr7;
        if park && self.dr7 & DR7_ENABLES == 0 {
            r.dr0 = 0;
            r.dr7 |= PARKED_SLOT_ENABLE;
        }
    }
}

/// The watchpoints of a domain.
#[derive(Debug, Default)]
pub(crate) struct Watchpoints {
    next: u32,
    list: BTreeMap<WatchpointId, Watch>,
    /// The guest's own debug registers, per vCPU, while any watch is armed.
    saved: BTreeMap<u32, SavedDebugRegs>,
}

impl Watchpoints {
    /// The armed watchpoints, described.
    fn infos(&self) -> Vec<WatchpointInfo> {
        self.list
            .iter()
            .map(|(&id, w)| WatchpointInfo {
                id,
                va: w.va,
                len: w.len,
                kind: w.kind,
                route: WatchRoute::DebugRegisters,
                slots: w.pieces.iter().map(|p| p.0).collect(),
                hits: w.hits,
            })
            .collect()
    }

    fn used_slots(&self) -> u8 {
        self.list
            .values()
            .flat_map(|w| w.pieces.iter().map(|p| p.0))
            .fold(0, |m, s| m | (1 << s))
    }
}

/// Splits `[va, va + len)` into naturally aligned pieces of 8, 4, 2 or 1
/// bytes, the shapes a debug register can watch.
pub fn dr_pieces(va: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut a, end) = (va, va.saturating_add(len));
    while a < end {
        let size = [8u64, 4, 2, 1]
            .into_iter()
            .find(|&s| a % s == 0 && a + s <= end)
            .unwrap_or(1);
        out.push((a, size));
        a += size;
    }
    out
}

/// DR7's LEN field for a piece of `len` bytes.
fn dr7_len(len: u64) -> u64 {
    match len {
        1 => 0b00,
        2 => 0b01,
        8 => 0b10,
        _ => 0b11,
    }
}

/// DR7 bits of `slot`: local enable, R/W and LEN fields.
pub fn dr7_bits(slot: u8, rw: u64, len: u64) -> u64 {
    let s = u64::from(slot);
    (1 << (2 * s)) | (rw << (16 + 4 * s)) | (dr7_len(len) << (18 + 4 * s))
}

/// DR7's enable (L and G) bits of `slot`, and all its fields.
fn dr7_slot_mask(slot: u8) -> u64 {
    let s = u64::from(slot);
    (0b11 << (2 * s)) | (0b1111 << (16 + 4 * s))
}

/// Slots the guest itself enabled in `dr7`.
fn guest_slots(dr7: u64) -> u8 {
    (0..4)
        .filter(|s| dr7 & (0b11 << (2 * s)) != 0)
        .fold(0, |m, s| m | (1 << s))
}

/// DR7's "local exact" bit, recommended with data breakpoints.
const DR7_LE: u64 = 1 << 8;

/// DR7's enable bits (L0-L3, G0-G3).
const DR7_ENABLES: u64 = 0xff;

/// Enable bit of the parked slot 0 (local, execute breakpoint at address 0).
///
/// Xen 4.17 (SVM measured; the VMX path has the same structure) writes the
/// guest's DR7 into the VMCB only when loading an *active* DR7 (at context
/// switch, `svm_restore_dr`) or when the guest touches a debug register. A
/// DR7 without enable bits written through `hvm_setcontext` therefore never
/// reaches the VMCB: our last watchpoint stays armed in hardware and, once
/// the monitor is gone, the guest takes a #DB it never asked for (measured:
/// the known guest crashed with `FAULT #DB` after detach). So when the guest
/// had no breakpoints of its own, the last removal leaves slot 0 enabled as
/// an execute breakpoint at linear address 0 (DR0 = 0): Xen then reloads DR7
/// and DR0-3, and the only trace is that bit in DR7 (a guest that jumps to
/// address 0 gets #DB instead of a page fault).
const PARKED_SLOT_ENABLE: u64 = 1;

/// The pages (virtual, 4 KiB aligned) that a watch on `[va, va + len)` covers.
pub fn pages_of(va: u64, len: u64) -> Vec<u64> {
    if len == 0 {
        return Vec::new();
    }
    let first = va & !0xfff;
    let last = va.saturating_add(len - 1) & !0xfff;
    (0..=((last - first) >> 12))
        .map(|i| first + (i << 12))
        .collect()
}

/// Whether an access at `addr` of `size` bytes touches `[va, va + len)`.
pub fn overlaps(addr: u64, size: u64, va: u64, len: u64) -> bool {
    addr < va.saturating_add(len) && va < addr.saturating_add(size.max(1))
}

/// A watchpoint hit, as [`super::Event::Watchpoint`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchHit {
    pub id: WatchpointId,
    pub va: u64,
    pub len: u64,
    pub kind: WatchKind,
    pub hits: u64,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

impl WatchHit {
    pub(crate) fn into_event(self, vcpu: u32) -> super::Event {
        super::Event::Watchpoint {
            vcpu,
            id: self.id,
            addr: self.va,
            hits: self.hits,
            old: self.old,
            new: self.new,
        }
    }
}

impl Domain {
    /// Probes whether Xen's mem_access works on this guest and host (the
    /// other watchpoint route, not used by [`Domain::add_watchpoint`]): the
    /// guest type and `xc_set_mem_access` itself on the frame of `va` (set to
    /// rwx, the default access: nothing changes).
    pub fn mem_access_support(&mut self, va: u64) -> Result<()> {
        let caps = self.capabilities().clone();
        caps.mem_access()?;
        let gfn = self.translate(0, va)?.frame() >> 12;
        if let Err(e) = self
            .xen
            .xc
            .set_mem_access(self.domid, MemAccess::Rwx, gfn, 1)
        {
            let vendor = if caps.host.is_intel() {
                String::new()
            } else {
                format!("; this CPU is {}", caps.host.cpu_vendor)
            };
            return Err(Error::unsupported(
                "mem_access",
                format!(
                    "{e}: Xen 4.17's x86 mem_access needs an HVM/PVH guest with HAP on Intel \
                     VT-x (EPT){vendor}"
                ),
            ));
        }
        Ok(())
    }

    /// Whether debug-register watchpoints can work on this guest: HVM/PVH
    /// (debug-exception monitor) or PV on a gdbsx hypervisor.
    pub fn watchpoint_support(&mut self) -> Result<WatchRoute> {
        self.caps.watchpoints()?;
        Ok(WatchRoute::DebugRegisters)
    }

    /// Arms a watchpoint on `[va, va + len)` for `kind` accesses on every
    /// vCPU (the domain must be stopped). The range is split into aligned
    /// 1/2/4/8-byte pieces, one debug register each; at most the slots the
    /// guest does not use itself.
    pub fn add_watchpoint(&mut self, va: u64, len: u64, kind: WatchKind) -> Result<WatchpointId> {
        if len == 0 {
            return Err(Error::State(
                "a watchpoint needs a length of 1 or more".into(),
            ));
        }
        // Four debug registers of at most 8 bytes each: nothing longer can be
        // watched, and the length sizes a buffer below.
        if len > 32 || va.checked_add(len - 1).is_none() {
            return Err(Error::State(format!(
                "a watch on {len} bytes at {va:#x} cannot fit the 4 debug registers \
                 (aligned pieces of at most 8 bytes, 32 bytes in all)"
            )));
        }
        if !self.is_stopped() {
            return Err(Error::State(
                "add_watchpoint() needs a stopped domain: pause() first".into(),
            ));
        }
        let rw = kind.dr7_rw()?;
        self.watchpoint_support()?;
        self.ensure_debug()?;
        let mut last = vec![0u8; len as usize];
        self.read_virt(va, &mut last)?;
        let max = self.max_vcpu()?;
        let first = self.watches.list.is_empty();
        let mut guest_used = 0u8;
        let mut regs = Vec::new();
        for vcpu in 0..=max {
            let r = self.regs(vcpu)?;
            let saved = match self.watches.saved.get(&vcpu) {
                Some(s) if !first => *s,
                _ => SavedDebugRegs {
                    dr: [r.dr0, r.dr1, r.dr2, r.dr3],
                    dr6: r.dr6,
                    dr7: r.dr7,
                },
            };
            guest_used |= guest_slots(saved.dr7);
            regs.push((vcpu, r, saved));
        }
        let busy = guest_used | self.watches.used_slots();
        let free: Vec<u8> = (0..4u8).filter(|s| busy & (1 << s) == 0).collect();
        let pieces = dr_pieces(va, len);
        if pieces.len() > free.len() {
            return Err(Error::State(format!(
                "a watch on {len} bytes at {va:#x} needs {} debug registers (aligned 1/2/4/8-byte \
                 pieces); {} of 4 are free",
                pieces.len(),
                free.len()
            )));
        }
        let pieces: Vec<(u8, u64, u64)> = free
            .iter()
            .zip(&pieces)
            .map(|(&s, &(a, l))| (s, a, l))
            .collect();
        if first {
            self.journal
                .set_debug_regs(regs.iter().map(|&(v, _, s)| (v, s)).collect())?;
        }
        for (vcpu, mut r, saved) in regs {
            for &(slot, addr, plen) in &pieces {
                set_dr(&mut r, slot, addr);
                r.dr7 = (r.dr7 & !dr7_slot_mask(slot)) | dr7_bits(slot, rw, plen) | DR7_LE;
            }
            self.set_regs(vcpu, &r)?;
            self.watches.saved.entry(vcpu).or_insert(saved);
        }
        self.watches.next += 1;
        let id = WatchpointId(self.watches.next);
        self.watches.list.insert(
            id,
            Watch {
                va,
                len,
                kind,
                pieces,
                hits: 0,
                last,
            },
        );
        tracing::debug!(domid = self.domid, %id, va, len, ?kind, "watchpoint armed");
        Ok(id)
    }

    /// Disarms a watchpoint (the domain must be stopped). When the last one
    /// goes, the guest's own debug registers are written back.
    pub fn remove_watchpoint(&mut self, id: WatchpointId) -> Result<()> {
        if !self.is_stopped() {
            return Err(Error::State(
                "remove_watchpoint() needs a stopped domain: pause() first".into(),
            ));
        }
        let w = self
            .watches
            .list
            .remove(&id)
            .ok_or_else(|| Error::State(format!("no {id}")))?;
        let saved = self.watches.saved.clone();
        let park = self.platform.parks_debug_slot();
        for (&vcpu, s) in &saved {
            let mut r = self.regs(vcpu)?;
            if self.watches.list.is_empty() {
                s.restore_into(&mut r, park);
            } else {
                for &(slot, ..) in &w.pieces {
                    set_dr(&mut r, slot, s.dr[usize::from(slot)]);
                    r.dr7 = (r.dr7 & !dr7_slot_mask(slot)) | (s.dr7 & dr7_slot_mask(slot));
                }
            }
            self.set_regs(vcpu, &r)?;
        }
        if self.watches.list.is_empty() {
            self.watches.saved.clear();
            self.journal.set_debug_regs(Vec::new())?;
        }
        Ok(())
    }

    /// Disarms every watchpoint, restoring the guest's debug registers (detach).
    pub(crate) fn remove_all_watchpoints(&mut self) -> Result<()> {
        let ids: Vec<WatchpointId> = self.watches.list.keys().copied().collect();
        for id in ids {
            self.remove_watchpoint(id)?;
        }
        Ok(())
    }

    /// The armed watchpoints.
    pub fn watchpoints(&self) -> Vec<WatchpointInfo> {
        self.watches.infos()
    }

    /// Whether a hardware #DB on `vcpu` is one of our watchpoints: reads DR6,
    /// clears our hit bits in it (stopping the domain first), and returns the
    /// hit with the watched bytes before and after.
    pub(crate) fn watch_hit(&mut self, vcpu: u32) -> Result<Option<WatchHit>> {
        if self.watches.list.is_empty() {
            return Ok(None);
        }
        let mut r = self.regs(vcpu)?;
        let ours = self.watches.used_slots();
        let hit_slots = (r.dr6 & 0xf) as u8 & ours;
        if hit_slots == 0 {
            return Ok(None);
        }
        self.stops.pause(&self.xen.xc, self.domid)?;
        r.dr6 &= !u64::from(hit_slots);
        self.set_regs(vcpu, &r)?;
        let Some((&id, w)) = self
            .watches
            .list
            .iter()
            .find(|(_, w)| w.pieces.iter().any(|p| hit_slots & (1 << p.0) != 0))
        else {
            return Ok(None);
        };
        let (va, len, kind) = (w.va, w.len, w.kind);
        let mut new = vec![0u8; len as usize];
        self.read_virt_on(vcpu, va, &mut new)?;
        let Some(w) = self.watches.list.get_mut(&id) else {
            return Ok(None);
        };
        w.hits += 1;
        let old = std::mem::replace(&mut w.last, new.clone());
        Ok(Some(WatchHit {
            id,
            va,
            len,
            kind,
            hits: w.hits,
            old,
            new,
        }))
    }
}

fn set_dr(r: &mut Registers, slot: u8, v: u64) {
    match slot {
        0 => r.dr0 = v,
        1 => r.dr1 = v,
        2 => r.dr2 = v,
        _ => r.dr3 = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_their_pages() {
        assert_eq!(pages_of(0x1ff8, 16), vec![0x1000, 0x2000]);
        assert_eq!(pages_of(0x1000, 0x1000), vec![0x1000]);
        assert!(pages_of(0x1000, 0).is_empty());
        assert!(overlaps(0x1004, 4, 0x1000, 8));
        assert!(!overlaps(0x1008, 4, 0x1000, 8));
        assert!(overlaps(0xff8, 16, 0x1000, 1));
    }

    #[test]
    fn kinds_filter_accesses() {
        assert!(WatchKind::Write.matches(false, true));
        assert!(!WatchKind::Write.matches(true, false));
        assert!(WatchKind::Access.matches(true, false));
        assert_eq!(WatchKind::Write.restricted_access(), MemAccess::Rx);
        assert!(WatchKind::Read.dr7_rw().is_err());
        assert_eq!(WatchKind::Access.dr7_rw().ok(), Some(0b11));
    }

    #[test]
    fn ranges_split_into_aligned_pieces() {
        assert_eq!(dr_pieces(0x1000, 8), vec![(0x1000, 8)]);
        assert_eq!(dr_pieces(0x1001, 3), vec![(0x1001, 1), (0x1002, 2)]);
        assert_eq!(
            dr_pieces(0x1003, 8),
            vec![(0x1003, 1), (0x1004, 4), (0x1008, 2), (0x100a, 1)]
        );
        assert_eq!(dr_pieces(0x1000, 16), vec![(0x1000, 8), (0x1008, 8)]);
        assert!(dr_pieces(0x1000, 0).is_empty());
    }

    #[test]
    fn restoring_parks_slot_0_only_without_guest_breakpoints() {
        let mut r = Registers {
            dr0: 0x1000,
            dr7: 0x400 | dr7_bits(0, 0b01, 8),
            ..Default::default()
        };
        let guest = SavedDebugRegs {
            dr: [0x55, 0, 0, 0],
            dr6: 0xffff_0ff0,
            dr7: 0x400,
        };
        guest.restore_into(&mut r, false);
        assert_eq!(
            (r.dr0, r.dr6, r.dr7),
            (0x55, 0xffff_0ff0, 0x400),
            "PV: exact"
        );
        guest.restore_into(&mut r, true);
        assert_eq!(
            (r.dr0, r.dr7),
            (0, 0x401),
            "HVM: slot 0 parked at address 0"
        );
        let busy = SavedDebugRegs {
            dr7: 0x400 | (1 << 6),
            ..guest
        };
        busy.restore_into(&mut r, true);
        assert_eq!(
            (r.dr0, r.dr7),
            (0x55, 0x440),
            "the guest's own enables: exact"
        );
        let json = serde_json::to_string(&busy).expect("serialize");
        let back: SavedDebugRegs = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, busy);
    }

    #[test]
    fn dr7_fields() {
        // Slot 0, write, 8 bytes: L0 | RW0=01 | LEN0=10 (as measured in the lab probe
        // with LEN0=11 for 4 bytes).
        assert_eq!(dr7_bits(0, 0b01, 8), 1 | (0b01 << 16) | (0b10 << 18));
        assert_eq!(dr7_bits(3, 0b11, 4), (1 << 6) | (0b11 << 28) | (0b11 << 30));
        assert_eq!(dr7_bits(1, 0b01, 1), (1 << 2) | (0b01 << 20));
        assert_eq!(guest_slots(0x400), 0);
        assert_eq!(guest_slots(0x400 | (1 << 3) | (1 << 6)), 0b1010);
        assert_eq!(
            dr7_slot_mask(0) & dr7_bits(0, 0b11, 8),
            dr7_bits(0, 0b11, 8)
        );
    }
}
