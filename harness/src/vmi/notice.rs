//! What a guest did to the engine's assumptions, found and dealt with by
//! the engine: breakpoint bytes it overwrote, copies of breakpoint bytes it
//! ran, vCPUs it brought up after a snapshot. Taken with
//! [`Domain::take_notices`]; the engine never reports these as breakpoint
//! hits.
//!
//! A guest reads its own code with the breakpoint bytes in it (nothing on
//! AMD hides them), so code it copies, or a page it maps again elsewhere,
//! carries them. When such a copy traps, the engine finds the breakpoint it
//! was copied from (the bytes around the trap equal the bytes around one
//! breakpoint, breakpoint bytes taken as either value), writes that
//! breakpoint's original byte into the copy and lets the guest go on: it
//! then runs what it would have run without a debugger. A restore brings
//! the copy's frame back like any frame xenprobe wrote.

use super::breakpoint::BreakpointId;
use super::domain::Domain;
use super::error::Result;
use crate::xen::{PAGE_SHIFT, PAGE_SIZE};

/// Something the guest did that the engine noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The guest replaced the byte of a planted breakpoint (found when a
    /// restore brought its frame back, which plants it again, or by
    /// [`Domain::overwritten_breakpoints`]): the guest did not stop there
    /// while the byte was its own.
    Overwritten {
        /// The breakpoint.
        id: BreakpointId,
        /// Its address.
        addr: u64,
        /// What the guest wrote over it.
        byte: u8,
    },
    /// The guest ran a copy of a breakpoint's byte (code it copied, or a
    /// page it mapped elsewhere, while the breakpoint was planted): the
    /// copy got the original byte back and the guest went on. Not a hit.
    CopyRepaired {
        /// The breakpoint the byte was copied from.
        id: BreakpointId,
        /// Its address.
        addr: u64,
        /// Where the copy ran (virtual).
        at: u64,
        /// The copy's physical address.
        pa: u64,
    },
    /// A vCPU that was down at the snapshot was up at a restore (the guest
    /// brought it up): the restore reset it to down.
    VcpuReset {
        /// The vCPU.
        vcpu: u32,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Overwritten { id, addr, byte } => write!(
                f,
                "the guest overwrote breakpoint {id} at {addr:#x} with {byte:#04x}: no stop there \
                 while its byte was the guest's (a restore plants it again)"
            ),
            Notice::CopyRepaired { id, addr, at, pa } => write!(
                f,
                "the guest ran a copy of breakpoint {id}'s byte ({addr:#x}) at {at:#x} (pa \
                 {pa:#x}): the copy got the original byte back; not a hit"
            ),
            Notice::VcpuReset { vcpu } => write!(
                f,
                "the guest brought up vCPU {vcpu}, down at the snapshot: reset to down"
            ),
        }
    }
}

/// Notices kept until taken; later ones are dropped until then.
pub(crate) const MAX_NOTICES: usize = 256;

/// A domain's notices, oldest first, until taken.
#[derive(Default)]
pub(crate) struct Notices {
    kept: Vec<Notice>,
}

impl Notices {
    /// Keeps `n` (up to [`MAX_NOTICES`]).
    pub(crate) fn push(&mut self, n: Notice) {
        if self.kept.len() < MAX_NOTICES {
            self.kept.push(n);
        } else {
            tracing::debug!(?n, "notice dropped: {MAX_NOTICES} are waiting to be taken");
        }
    }

    /// The notices kept so far, oldest first; none are kept afterwards.
    pub(crate) fn take(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.kept)
    }
}

/// Bytes compared on each side of a trap to recognise a copied breakpoint.
const WINDOW: usize = 16;
/// Fewest equal bytes (the trap's own excluded) that make a copy.
const MIN_MATCH: usize = 12;

/// Whether `copy` (bytes around a trap at `copy[center]`) is a copy of
/// `original` (bytes around a breakpoint at `original[ocenter]`): the bytes
/// on both sides of the trap equal the breakpoint's neighbours, as far as
/// they go without a difference (a copy of a short function ends where the
/// function does). `bps` lists the breakpoint positions in `original` with
/// their original bytes (the breakpoint at `ocenter` included): there the
/// copy may hold the opcode (copied while planted) or the original byte,
/// and `original` may hold either too. Returns how many bytes matched
/// besides the trap's own, if at least [`MIN_MATCH`].
pub(crate) fn copied_from(
    copy: &[u8],
    center: usize,
    original: &[u8],
    ocenter: usize,
    bps: &[(usize, u8)],
    opcode: u8,
) -> Option<usize> {
    let same = |c: usize, o: usize| {
        let (cb, ob) = (copy[c], original[o]);
        match bps.iter().find(|(at, _)| *at == o) {
            Some(&(_, orig)) => (cb == opcode || cb == orig) && (ob == opcode || ob == orig),
            None => cb == ob,
        }
    };
    let left = (1..=center.min(ocenter))
        .take_while(|&d| same(center - d, ocenter - d))
        .count();
    let right = (1..(copy.len() - center).min(original.len() - ocenter))
        .take_while(|&d| same(center + d, ocenter + d))
        .count();
    (left + right >= MIN_MATCH).then_some(left + right)
}

/// The bytes of `pa`'s frame within [`WINDOW`] of it, and `pa`'s index in them.
fn window(dom: &Domain, pa: u64) -> Option<(Vec<u8>, usize)> {
    let off = (pa as usize) & (PAGE_SIZE - 1);
    let start = off.saturating_sub(WINDOW);
    let end = (off + WINDOW + 1).min(PAGE_SIZE);
    let mut buf = vec![0u8; end - start];
    dom.mem
        .read_phys((pa & !(PAGE_SIZE as u64 - 1)) + start as u64, &mut buf)
        .ok()?;
    Some((buf, off - start))
}

impl Domain {
    /// What the guest did that the engine noticed since the last call (see
    /// [`Notice`]), oldest first.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        self.notices.take()
    }

    pub(crate) fn notice(&mut self, n: Notice) {
        tracing::info!(domid = self.domid, "{n}");
        self.notices.push(n);
    }

    /// Planted breakpoints whose byte in memory is not the breakpoint
    /// instruction any more (the guest wrote over it), with the byte found.
    /// Reads every planted breakpoint's byte.
    pub fn overwritten_breakpoints(&self) -> Result<Vec<(BreakpointId, u8)>> {
        let Some(op) = self.bps.opcode() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (id, b) in self.bps.planted() {
            let mut byte = [0u8];
            self.mem.read_phys(b.pa, &mut byte)?;
            if byte[0] != op {
                out.push((id, byte[0]));
            }
        }
        Ok(out)
    }

    /// Records the planted breakpoints of guest frame `gfn` whose byte the
    /// guest replaced (before a restore writes the frame back).
    pub(crate) fn note_overwritten_in(&mut self, gfn: u64, page: &[u8]) {
        let Some(op) = self.bps.opcode() else {
            return;
        };
        let found: Vec<Notice> = self
            .bps
            .planted_in_frame(gfn)
            .filter_map(|b| {
                let byte = page[b.pa as usize & (PAGE_SIZE - 1)];
                (byte != op).then_some((b.va, byte))
            })
            .filter_map(|(addr, byte)| {
                self.bps
                    .at(addr)
                    .map(|id| Notice::Overwritten { id, addr, byte })
            })
            .collect();
        for n in found {
            self.notice(n);
        }
    }

    /// A breakpoint instruction trapped at `addr` (physical `pa`) where no
    /// planted breakpoint of ours is: if the bytes there are a copy of one
    /// of our breakpoints, puts that breakpoint's original byte into the
    /// copy and returns the notice; None if it is not a copy we can tell
    /// (the guest's own instruction, or code that matches breakpoints with
    /// different original bytes).
    pub(crate) fn repair_copy(&mut self, addr: u64, pa: u64) -> Result<Option<Notice>> {
        let Some(op) = self.bps.opcode() else {
            return Ok(None);
        };
        let Some((copy, center)) = window(self, pa) else {
            return Ok(None);
        };
        if copy[center] != op {
            return Ok(None);
        }
        // Breakpoints planted now or earlier (a copy made before one was
        // removed still carries its byte): (id, address, pa, original byte).
        let mut candidates: Vec<(BreakpointId, u64, u64, u8)> = self
            .bps
            .all()
            .map(|(id, b)| (id, b.va, b.pa, b.orig))
            .collect();
        let live: std::collections::HashSet<u64> = candidates.iter().map(|c| c.2).collect();
        let mut gone_in: std::collections::HashMap<u64, Vec<(u64, u8)>> = Default::default();
        for (&p, &(id, va, orig)) in self.bps.removed() {
            if !live.contains(&p) {
                candidates.push((id, va, p, orig));
                gone_in.entry(p >> PAGE_SHIFT).or_default().push((p, orig));
            }
        }
        let mut found: Option<(BreakpointId, u64, u8)> = None;
        for (id, va, bpa, orig_byte) in candidates {
            if bpa == pa {
                continue;
            }
            let Some((original, ocenter)) = window(self, bpa) else {
                continue;
            };
            let base = bpa as usize & !(PAGE_SIZE - 1);
            let lo = (bpa as usize & (PAGE_SIZE - 1)) - ocenter;
            let at = |p: u64| {
                (p as usize)
                    .checked_sub(base + lo)
                    .filter(|&a| a < original.len())
            };
            let mut bps: Vec<(usize, u8)> = self
                .bps
                .in_frame(bpa >> PAGE_SHIFT)
                .filter_map(|x| Some((at(x.pa)?, x.orig)))
                .collect();
            bps.extend(
                gone_in
                    .get(&(bpa >> PAGE_SHIFT))
                    .into_iter()
                    .flatten()
                    .filter_map(|&(p, o)| Some((at(p)?, o))),
            );
            if copied_from(&copy, center, &original, ocenter, &bps, op).is_none() {
                continue;
            }
            match found {
                Some((_, _, orig)) if orig != orig_byte => {
                    tracing::debug!(addr, "code matching breakpoints with different bytes");
                    return Ok(None);
                }
                Some(_) => {}
                None => found = Some((id, va, orig_byte)),
            }
        }
        let Some((id, bp_addr, orig)) = found else {
            return Ok(None);
        };
        self.mem.write_phys(pa, &[orig])?;
        Ok(Some(Notice::CopyRepaired {
            id,
            addr: bp_addr,
            at: addr,
            pa,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: u8 = 0xf1;

    fn code() -> Vec<u8> {
        (0u8..40)
            .map(|i| i.wrapping_mul(37).wrapping_add(5))
            .collect()
    }

    #[test]
    fn a_copy_with_breakpoint_bytes_is_recognised() {
        let mut original = code();
        let orig20 = original[20];
        original[20] = OP; // planted
        let orig25 = original[25];
        original[25] = OP; // another planted breakpoint nearby
        let bps = [(20, orig20), (25, orig25)];
        // Copied while both were planted, at another offset in its page.
        let mut copy = vec![0xaa; 8];
        copy.extend_from_slice(&original);
        assert_eq!(
            copied_from(&copy, 28, &original, 20, &bps, OP),
            Some(39),
            "every byte the two share, the trap's excluded"
        );
        // The other breakpoint was not planted when the guest copied.
        copy[8 + 25] = orig25;
        assert!(copied_from(&copy, 28, &original, 20, &bps, OP).is_some());
        // The original's breakpoint was removed since: still a copy.
        let mut unplanted = original.clone();
        unplanted[25] = orig25;
        assert!(copied_from(&copy, 28, &unplanted, 20, &bps, OP).is_some());
    }

    #[test]
    fn other_code_is_not_a_copy() {
        let mut original = code();
        let orig = original[20];
        original[20] = OP;
        let bps = [(20, orig)];
        let mut copy = original.clone();
        copy[18] ^= 0xff;
        copy[22] ^= 0xff;
        assert_eq!(
            copied_from(&copy, 20, &original, 20, &bps, OP),
            None,
            "a byte apart on each side"
        );
        // A copy of a short function, zeroes after it: what it shares is enough.
        let mut short_copy = original[8..34].to_vec();
        short_copy.extend_from_slice(&[0; 16]);
        assert_eq!(
            copied_from(&short_copy, 12, &original, 20, &bps, OP),
            Some(12 + 13)
        );
        // Too little to compare: a trap at the start of a page whose
        // breakpoint is the last bytes of another.
        let short = [OP, 1, 2, 3];
        let tail = [9, 9, 9, OP];
        assert_eq!(
            copied_from(&short, 0, &tail, 3, &[(3, 0x55)], OP),
            None,
            "nothing after the breakpoint, nothing before the trap"
        );
        // A guest's own ICEBP among bytes that match nowhere.
        let own = [0x90u8; 33];
        assert_eq!(copied_from(&own, 16, &original, 20, &bps, OP), None);
    }
}
