//! Snapshots: save a stopped HVM/PVH domain's memory and vCPU state once,
//! restore it many times by copying back only what changed.
//!
//! Take: log-dirty on, every guest frame copied once through a persistent
//! read-write mapping of all guest memory, the full HVM context saved, the
//! dirty bitmap cleaned. Restore: the frames log-dirty reports plus the
//! frames xenprobe itself wrote through foreign mappings (log-dirty does not
//! see those) are copied back, breakpoints are planted again, and the HVM
//! context is loaded. Breakpoint bytes are kept out of the saved copy.
//!
//! PV guests are not supported: their frames are machine frames and a
//! snapshot would need the guest's p2m table.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::xen::{HvmContext, Mapping, Prot, PAGE_SHIFT, PAGE_SIZE};

use super::caps::GuestKind;
use super::domain::Domain;
use super::error::{Error, Result};
use super::memory::DirtyTracking;

/// Frames per persistent mapping chunk.
const CHUNK: u64 = 4096;

/// Guest-frame ranges to save: (first, last, stop at the first empty chunk).
///
/// Scanning every frame up to the highest one costs about 5 us per hole in
/// the emulated lab (seconds for the 4 GiB an HVM p2m spans), so the scan
/// follows the x86 HVM/PVH layout libxl builds: RAM from frame 0 up to the
/// first empty 16 MiB chunk, the special/ACPI frames just below 4 GiB
/// (0xfc000-0xfefff), and RAM above 4 GiB if the guest has any.
pub(crate) fn scan_ranges(max_gpfn: u64) -> Vec<(u64, u64, bool)> {
    const SPECIAL_FIRST: u64 = 0xfc000;
    const SPECIAL_LAST: u64 = 0xfefff;
    const HIGH_FIRST: u64 = 0x100000;
    let mut r = vec![(0, max_gpfn.min(SPECIAL_FIRST - 1), true)];
    if max_gpfn >= SPECIAL_FIRST {
        r.push((SPECIAL_FIRST, max_gpfn.min(SPECIAL_LAST), false));
    }
    if max_gpfn >= HIGH_FIRST {
        r.push((HIGH_FIRST, max_gpfn, false));
    }
    r
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    /// Frames reported dirty by log-dirty.
    pub dirty: usize,
    /// Frames written by xenprobe since the last take/restore.
    pub written: usize,
    /// Frames copied back.
    pub restored: usize,
}

/// Size and timing of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Guest frames saved.
    pub frames: usize,
    /// Time taken to take it.
    pub took: std::time::Duration,
}

/// A saved domain state (see the module docs).
pub(crate) struct Snapshot {
    /// Persistent read-write mappings: (first gfn, mapping of CHUNK frames).
    chunks: Vec<(u64, Mapping)>,
    /// gfn -> index into `data` pages.
    slot: HashMap<u64, usize>,
    data: Vec<u8>,
    cpu: HvmContext,
    tracking: DirtyTracking,
    info: SnapshotInfo,
}

impl Snapshot {
    fn chunk_of(&mut self, gfn: u64) -> Option<(&mut Mapping, usize)> {
        let start = gfn - gfn % CHUNK;
        let i = self.chunks.binary_search_by_key(&start, |(s, _)| *s).ok()?;
        let (s, m) = &mut self.chunks[i];
        Some((m, ((gfn - *s) as usize) * PAGE_SIZE))
    }
}

impl Domain {
    /// Saves the stopped domain's memory and vCPU state as the domain's
    /// snapshot (replacing an earlier one). HVM and PVH only.
    pub fn take_snapshot(&mut self) -> Result<SnapshotInfo> {
        if self.kind == GuestKind::Pv {
            return Err(Error::unsupported(
                "snapshots",
                "PV snapshots are not implemented (PV frames are machine frames; a snapshot needs the guest's p2m)",
            ));
        }
        if !self.is_stopped() {
            return Err(Error::State(
                "take_snapshot() needs a stopped domain: pause() first".into(),
            ));
        }
        let t0 = Instant::now();
        self.snapshot = None;
        let mut tracking = self.track_dirty()?;
        let max_gpfn = self.xen.xc.domain_maximum_gpfn(self.domid)?;
        let mut chunks = Vec::new();
        let mut slot = HashMap::new();
        let mut data = Vec::new();
        for (from, to, stop_at_hole) in scan_ranges(max_gpfn) {
            let mut start = from;
            while start <= to {
                let n = CHUNK.min(to + 1 - start);
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
                    slot.insert(gfn, data.len() / PAGE_SIZE);
                    data.extend_from_slice(&page);
                }
                if any {
                    chunks.push((start, map));
                } else if stop_at_hole {
                    break;
                }
                start += n;
            }
        }
        let nr_pages = self.info()?.nr_pages as usize;
        if slot.len() < nr_pages {
            tracing::warn!(
                domid = self.domid,
                saved = slot.len(),
                nr_pages,
                "snapshot saved fewer frames than the domain has"
            );
        }
        // Keep breakpoint bytes out of the saved copy.
        for b in self.bps.list.values().filter(|b| b.planted) {
            if let Some(&s) = slot.get(&(b.pa >> PAGE_SHIFT)) {
                data[s * PAGE_SIZE + (b.pa as usize & (PAGE_SIZE - 1))] = b.orig;
            }
        }
        let cpu = self.xen.xc.hvm_context(self.domid)?;
        tracking.clean()?;
        self.mem.written.clear();
        let info = SnapshotInfo {
            frames: slot.len(),
            took: t0.elapsed(),
        };
        self.snapshot = Some(Snapshot {
            chunks,
            slot,
            data,
            cpu,
            tracking,
            info,
        });
        tracing::debug!(domid = self.domid, ?info, "snapshot taken");
        Ok(info)
    }

    /// Brings the stopped domain back to its snapshot: memory and vCPU state.
    pub fn restore_snapshot(&mut self) -> Result<RestoreStats> {
        if !self.is_stopped() {
            return Err(Error::State(
                "restore_snapshot() needs a stopped domain: pause() first".into(),
            ));
        }
        let mut snap = self
            .snapshot
            .take()
            .ok_or_else(|| Error::State("no snapshot taken".into()))?;
        let result = self.restore_from(&mut snap);
        self.snapshot = Some(snap);
        result
    }

    fn restore_from(&mut self, snap: &mut Snapshot) -> Result<RestoreStats> {
        let dirty = snap.tracking.clean()?;
        let written: Vec<u64> = self.mem.written.drain().collect();
        let frames: BTreeSet<u64> = dirty.iter().chain(written.iter()).copied().collect();
        let mut restored = 0;
        for &gfn in &frames {
            let Some(&s) = snap.slot.get(&gfn) else {
                tracing::debug!(gfn, "dirty frame not in the snapshot: left as is");
                continue;
            };
            let page = snap.data[s * PAGE_SIZE..(s + 1) * PAGE_SIZE].to_vec();
            let Some((map, off)) = snap.chunk_of(gfn) else {
                continue;
            };
            map.write(off, &page)?;
            restored += 1;
            // Breakpoints live in memory, not in the snapshot: plant them again.
            let opcode = self.bps.insn.as_ref().map(|i| i.opcode());
            for b in self
                .bps
                .list
                .values()
                .filter(|b| b.planted && b.pa >> PAGE_SHIFT == gfn)
            {
                if let Some(op) = opcode {
                    map.write(off + (b.pa as usize & (PAGE_SIZE - 1)), &[op])?;
                }
            }
        }
        self.xen.xc.set_hvm_context(self.domid, &snap.cpu)?;
        // Pending vm_event register copies no longer match the vCPUs.
        let pending: Vec<u32> = self.pending.keys().copied().collect();
        self.regs_changed.extend(pending);
        self.mem.invalidate();
        self.mem.written.clear();
        Ok(RestoreStats {
            dirty: dirty.len(),
            written: written.len(),
            restored,
        })
    }

    /// The current snapshot's size, if one was taken.
    pub fn snapshot_info(&self) -> Option<SnapshotInfo> {
        self.snapshot.as_ref().map(|s| s.info)
    }

    /// Forgets the snapshot (log-dirty off, mappings released).
    pub fn drop_snapshot(&mut self) {
        self.snapshot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_ranges_follow_the_hvm_layout() {
        assert_eq!(scan_ranges(0x1fff), vec![(0, 0x1fff, true)]);
        assert_eq!(
            scan_ranges(0xfeffc),
            vec![(0, 0xfbfff, true), (0xfc000, 0xfeffc, false)]
        );
        assert_eq!(
            scan_ranges(0x12_0000),
            vec![
                (0, 0xfbfff, true),
                (0xfc000, 0xfefff, false),
                (0x100000, 0x12_0000, false)
            ]
        );
    }
}
