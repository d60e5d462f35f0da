//! Software breakpoints: planted instruction bytes, hit counts, conditions.
//!
//! The breakpoint instruction is a property of the host and guest type
//! ([`BreakpointInsnKind`]); [`BreakpointInsn`] is the seam between its two
//! implementations: int3 (0xCC) and ICEBP (0xF1).

use rustc_hash::FxHashMap;

use super::caps::BreakpointInsnKind;
use super::domain::Domain;
use super::error::{Error, Result};
use super::regs::Registers;
use crate::xen::PAGE_SHIFT;

/// Identifies a breakpoint of one [`Domain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BreakpointId(pub u32);

impl std::fmt::Display for BreakpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A condition evaluated at each hit: stop only when it returns true.
pub type Condition = Box<dyn FnMut(&Registers) -> bool + Send>;

/// The instruction planted at a breakpoint and how its hits are reported.
pub(crate) trait BreakpointInsn: Send {
    /// The opcode byte written over the first byte of the instruction.
    fn opcode(&self) -> u8;
    /// The breakpoint address, given the RIP reported at the hit.
    fn bp_address(&self, reported_rip: u64) -> u64;
    /// Which kind this is.
    fn kind(&self) -> BreakpointInsnKind;
}

/// int3 (0xCC). Reported with RIP = bp + 1 when the guest executed it (PV,
/// gdbsx) and with RIP = bp by the HVM software-breakpoint monitor.
pub(crate) struct Int3 {
    pub rip_after: bool,
}

impl BreakpointInsn for Int3 {
    fn opcode(&self) -> u8 {
        0xCC
    }
    fn bp_address(&self, rip: u64) -> u64 {
        if self.rip_after {
            rip.wrapping_sub(1)
        } else {
            rip
        }
    }
    fn kind(&self) -> BreakpointInsnKind {
        BreakpointInsnKind::Int3
    }
}

/// ICEBP (0xF1): reported by the debug-exception monitor with RIP = bp.
pub(crate) struct Icebp;

impl BreakpointInsn for Icebp {
    fn opcode(&self) -> u8 {
        0xF1
    }
    fn bp_address(&self, rip: u64) -> u64 {
        rip
    }
    fn kind(&self) -> BreakpointInsnKind {
        BreakpointInsnKind::Icebp
    }
}

/// One breakpoint.
pub(crate) struct Breakpoint {
    pub va: u64,
    pub pa: u64,
    pub orig: u8,
    pub hits: u64,
    /// The opcode is in guest memory (false while stepping over it).
    pub planted: bool,
    pub condition: Option<Condition>,
}

/// Public view of a breakpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakpointInfo {
    /// Id.
    pub id: BreakpointId,
    /// Virtual address.
    pub addr: u64,
    /// Physical address of the patched byte.
    pub phys: u64,
    /// Times the guest reached it.
    pub hits: u64,
    /// Has a condition.
    pub conditional: bool,
}

/// All breakpoints of a domain.
#[derive(Default)]
pub(crate) struct Breakpoints {
    next: u32,
    /// By id: slot `id - 1` (ids count up from 1 and are not reused), one
    /// contiguous block a lookup at every stop touches. Add and remove
    /// through [`Breakpoints::insert`] and [`Breakpoints::remove`] (they
    /// keep the indexes).
    list: Vec<Option<Breakpoint>>,
    /// The instruction planted, chosen when debugging starts.
    insn: Option<Box<dyn BreakpointInsn>>,
    by_va: FxHashMap<u64, BreakpointId>,
    by_frame: FxHashMap<u64, Vec<BreakpointId>>,
    /// Breakpoints removed since debugging started, by physical address:
    /// (id, address, original byte). Code the guest copied while one was
    /// planted still carries its byte (see [`super::notice`]).
    gone: FxHashMap<u64, (BreakpointId, u64, u8)>,
}

impl Breakpoints {
    /// Sets the breakpoint instruction (when debugging starts).
    pub fn set_insn(&mut self, insn: Box<dyn BreakpointInsn>) {
        self.insn = Some(insn);
    }

    /// The breakpoint instruction's opcode, once chosen.
    pub fn opcode(&self) -> Option<u8> {
        self.insn.as_ref().map(|i| i.opcode())
    }

    /// The breakpoint instruction's kind, once chosen.
    pub fn insn_kind(&self) -> Option<BreakpointInsnKind> {
        self.insn.as_ref().map(|i| i.kind())
    }

    /// The breakpoint address of a hit reported at `rip` (`rip` itself
    /// before an instruction is chosen).
    pub fn bp_address(&self, rip: u64) -> u64 {
        self.insn.as_ref().map_or(rip, |i| i.bp_address(rip))
    }

    /// One breakpoint.
    pub fn get(&self, id: BreakpointId) -> Option<&Breakpoint> {
        self.list.get(slot(id)?)?.as_ref()
    }

    fn get_mut(&mut self, id: BreakpointId) -> Option<&mut Breakpoint> {
        self.list.get_mut(slot(id)?)?.as_mut()
    }

    /// Every breakpoint, planted or not, by id.
    pub fn all(&self) -> impl Iterator<Item = (BreakpointId, &Breakpoint)> + '_ {
        (1..)
            .zip(&self.list)
            .filter_map(|(id, b)| Some((BreakpointId(id), b.as_ref()?)))
    }

    /// The planted breakpoints, by id.
    pub fn planted(&self) -> impl Iterator<Item = (BreakpointId, &Breakpoint)> + '_ {
        self.all().filter(|(_, b)| b.planted)
    }

    /// Breakpoints removed since debugging started, by physical address:
    /// (id, address, original byte).
    pub fn removed(&self) -> impl Iterator<Item = (&u64, &(BreakpointId, u64, u8))> + '_ {
        self.gone.iter()
    }

    /// Counts a hit of `id`; returns its hits so far (0 for no such breakpoint).
    pub fn count_hit(&mut self, id: BreakpointId) -> u64 {
        self.get_mut(id).map_or(0, |b| {
            b.hits += 1;
            b.hits
        })
    }

    /// Whether `id` has a condition.
    pub fn has_condition(&self, id: BreakpointId) -> bool {
        self.get(id).is_some_and(|b| b.condition.is_some())
    }

    /// Runs `id`'s condition on `regs`; true without one.
    pub fn condition_holds(&mut self, id: BreakpointId, regs: &Registers) -> bool {
        self.get_mut(id)
            .and_then(|b| b.condition.as_mut())
            .is_none_or(|c| c(regs))
    }

    pub fn at(&self, va: u64) -> Option<BreakpointId> {
        self.by_va.get(&va).copied()
    }

    pub fn insert(&mut self, id: BreakpointId, b: Breakpoint) {
        self.by_va.insert(b.va, id);
        self.by_frame
            .entry(b.pa >> PAGE_SHIFT)
            .or_default()
            .push(id);
        let Some(i) = slot(id) else { return };
        if self.list.len() <= i {
            self.list.resize_with(i + 1, || None);
        }
        self.list[i] = Some(b);
    }

    pub fn remove(&mut self, id: BreakpointId) -> Option<Breakpoint> {
        let b = self.list.get_mut(slot(id)?)?.take()?;
        self.by_va.remove(&b.va);
        self.gone.insert(b.pa, (id, b.va, b.orig));
        if let Some(v) = self.by_frame.get_mut(&(b.pa >> PAGE_SHIFT)) {
            v.retain(|&x| x != id);
            if v.is_empty() {
                self.by_frame.remove(&(b.pa >> PAGE_SHIFT));
            }
        }
        Some(b)
    }

    /// Planted breakpoints whose patched byte lies in guest frame `gfn`.
    pub fn planted_in_frame(&self, gfn: u64) -> impl Iterator<Item = &Breakpoint> + '_ {
        self.by_frame
            .get(&gfn)
            .into_iter()
            .flatten()
            .filter_map(|&id| self.get(id))
            .filter(|b| b.planted)
    }

    /// Every breakpoint (planted or not) whose byte lies in guest frame `gfn`.
    pub fn in_frame(&self, gfn: u64) -> impl Iterator<Item = &Breakpoint> + '_ {
        self.by_frame
            .get(&gfn)
            .into_iter()
            .flatten()
            .filter_map(|&id| self.get(id))
    }

    /// Original bytes of planted breakpoints in `[va, va+len)`.
    pub fn original_bytes_in(&self, va: u64, len: u64) -> Vec<(u64, u8)> {
        self.all()
            .map(|(_, b)| b)
            .filter(|b| b.planted && b.va >= va && b.va - va < len)
            .map(|b| (b.va, b.orig))
            .collect()
    }

    /// Times the guest reached breakpoint `id`.
    pub fn hits(&self, id: BreakpointId) -> Result<u64> {
        self.get(id)
            .map(|b| b.hits)
            .ok_or_else(|| Error::Breakpoint(format!("no breakpoint {id}")))
    }

    /// All breakpoints, described.
    pub fn infos(&self) -> Vec<BreakpointInfo> {
        self.all()
            .map(|(id, b)| BreakpointInfo {
                id,
                addr: b.va,
                phys: b.pa,
                hits: b.hits,
                conditional: b.condition.is_some(),
            })
            .collect()
    }

    fn next_id(&mut self) -> BreakpointId {
        self.next += 1;
        BreakpointId(self.next)
    }
}

/// The index of `id` in [`Breakpoints`]' list.
fn slot(id: BreakpointId) -> Option<usize> {
    usize::try_from(id.0.checked_sub(1)?).ok()
}

impl Domain {
    /// The breakpoint instruction in use (decided when debugging starts).
    pub fn breakpoint_kind(&mut self) -> Result<BreakpointInsnKind> {
        self.ensure_debug()?;
        self.bps
            .insn_kind()
            .ok_or_else(|| Error::State("no breakpoint instruction chosen".into()))
    }

    /// Plants a breakpoint at virtual address `va` (vCPU 0's page tables).
    pub fn add_breakpoint(&mut self, va: u64) -> Result<BreakpointId> {
        self.add_breakpoint_inner(va, None)
    }

    /// Plants a breakpoint that stops only when `condition` returns true
    /// (it runs at every hit with the vCPU's registers; hits count either way).
    pub fn add_breakpoint_if(
        &mut self,
        va: u64,
        condition: impl FnMut(&Registers) -> bool + Send + 'static,
    ) -> Result<BreakpointId> {
        self.add_breakpoint_inner(va, Some(Box::new(condition)))
    }

    /// Plants a breakpoint at a symbol of the loaded image.
    pub fn add_breakpoint_at(&mut self, symbol: &str) -> Result<BreakpointId> {
        let va = self.symbol(symbol)?;
        self.add_breakpoint(va)
    }

    fn add_breakpoint_inner(
        &mut self,
        va: u64,
        condition: Option<Condition>,
    ) -> Result<BreakpointId> {
        self.ensure_debug()?;
        if let Some(id) = self.bps.at(va) {
            return Err(Error::Breakpoint(format!("{id} is already at {va:#x}")));
        }
        let opcode = match &self.bps.insn {
            Some(i) => i.opcode(),
            None => return Err(Error::State("debugging is not set up".into())),
        };
        let pa = self.translate(0, va)?.pa;
        let mut orig = [0u8];
        self.mem.read_phys(pa, &mut orig)?;
        let id = self.bps.next_id();
        // Journal first: a crash after planting must find the original byte.
        self.journal.add_breakpoint(va, pa, orig[0], opcode)?;
        self.mem.write_phys(pa, &[opcode])?;
        self.bps.insert(
            id,
            Breakpoint {
                va,
                pa,
                orig: orig[0],
                hits: 0,
                planted: true,
                condition,
            },
        );
        tracing::debug!(domid = self.domid, %id, va = format_args!("{va:#x}"), "breakpoint planted");
        Ok(id)
    }

    /// Removes a breakpoint and restores the original byte.
    pub fn remove_breakpoint(&mut self, id: BreakpointId) -> Result<()> {
        let bp = self
            .bps
            .remove(id)
            .ok_or_else(|| Error::Breakpoint(format!("no breakpoint {id}")))?;
        if bp.planted {
            self.mem.write_phys(bp.pa, &[bp.orig])?;
        }
        self.journal.remove_breakpoint(bp.pa)?;
        Ok(())
    }

    /// Times the guest reached breakpoint `id`.
    pub fn breakpoint_hits(&self, id: BreakpointId) -> Result<u64> {
        self.bps.hits(id)
    }

    /// All breakpoints.
    pub fn breakpoints(&self) -> Vec<BreakpointInfo> {
        self.bps.infos()
    }

    /// Writes a breakpoint's original byte back and keeps it listed (and in
    /// the cleanup journal): the guest runs through it, and snapshot restores
    /// do not plant it again, until [`Domain::enable_breakpoint`]. Neither
    /// writes the journal, so toggling a breakpoint every run is cheap.
    pub fn disable_breakpoint(&mut self, id: BreakpointId) -> Result<()> {
        if self.bps.get(id).is_none() {
            return Err(Error::Breakpoint(format!("no breakpoint {id}")));
        }
        self.unplant(id)
    }

    /// Plants a disabled breakpoint again (see [`Domain::disable_breakpoint`]).
    pub fn enable_breakpoint(&mut self, id: BreakpointId) -> Result<()> {
        if self.bps.get(id).is_none() {
            return Err(Error::Breakpoint(format!("no breakpoint {id}")));
        }
        self.replant(id)
    }

    /// Writes the original byte back (temporarily, e.g. to step over it).
    pub(crate) fn unplant(&mut self, id: BreakpointId) -> Result<()> {
        if let Some(b) = self.bps.get_mut(id) {
            if b.planted {
                self.mem.write_phys(b.pa, &[b.orig])?;
                b.planted = false;
            }
        }
        Ok(())
    }

    /// Plants the opcode again after [`Domain::unplant`].
    pub(crate) fn replant(&mut self, id: BreakpointId) -> Result<()> {
        let opcode = self.bps.opcode();
        if let (Some(b), Some(op)) = (self.bps.get_mut(id), opcode) {
            if !b.planted {
                self.mem.write_phys(b.pa, &[op])?;
                b.planted = true;
            }
        }
        Ok(())
    }

    /// Restores every original byte (detach).
    pub(crate) fn unplant_all(&mut self) -> Result<()> {
        let ids: Vec<_> = self.bps.all().map(|(id, _)| id).collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.unplant(id) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insns_report_the_bp_address() {
        assert_eq!(Icebp.opcode(), 0xF1);
        assert_eq!(Icebp.bp_address(0x1000), 0x1000);
        let pv = Int3 { rip_after: true };
        assert_eq!(pv.opcode(), 0xCC);
        assert_eq!(pv.bp_address(0x1001), 0x1000);
        assert_eq!(Int3 { rip_after: false }.bp_address(0x1000), 0x1000);
    }

    #[test]
    fn finds_breakpoints_and_original_bytes() {
        let mut b = Breakpoints::default();
        for (va, planted) in [(0x1000u64, true), (0x1005, false), (0x2000, true)] {
            let id = b.next_id();
            b.insert(
                id,
                Breakpoint {
                    va,
                    pa: va + 0x10_0000,
                    orig: va as u8 ^ 0x55,
                    hits: 0,
                    planted,
                    condition: None,
                },
            );
        }
        assert_eq!(b.at(0x2000), Some(BreakpointId(3)));
        assert_eq!(b.at(0x2001), None);
        let in_frame =
            |b: &Breakpoints, gfn| b.planted_in_frame(gfn).map(|x| x.va).collect::<Vec<_>>();
        assert_eq!(
            in_frame(&b, 0x101),
            vec![0x1000],
            "unplanted 0x1005 left out"
        );
        assert_eq!(in_frame(&b, 0x102), vec![0x2000]);
        assert!(b.remove(BreakpointId(3)).is_some());
        assert_eq!(b.at(0x2000), None, "removal updates the address index");
        assert!(in_frame(&b, 0x102).is_empty(), "and the frame index");
        assert!(b.remove(BreakpointId(3)).is_none());
        let ids = |b: &Breakpoints| b.all().map(|(id, _)| id.0).collect::<Vec<_>>();
        assert_eq!(ids(&b), [1, 2], "by id, the removed one gone");
        assert!(b.get(BreakpointId(0)).is_none() && b.get(BreakpointId(99)).is_none());
        assert_eq!(b.count_hit(BreakpointId(2)), 1);
        assert_eq!(b.hits(BreakpointId(2)).ok(), Some(1));
        assert!(b.hits(BreakpointId(3)).is_err());
        assert_eq!(b.original_bytes_in(0x1000, 0x1000), vec![(0x1000, 0x55)]);
        assert_eq!(
            b.original_bytes_in(0x1001, 0xfff).len(),
            0,
            "unplanted bp hides nothing"
        );
    }
}
