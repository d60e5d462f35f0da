//! Snapshots of PV guests.
//!
//! A PV guest's memory is machine frames; the sample guests, like other
//! bare-metal kernels, publish no p2m table. So a PV snapshot is kept by
//! machine frame: take finds the frames the domain owns (candidates from
//! Xen's machine-to-phys table, owner checked with
//! `XEN_DOMCTL_getpageframeinfo3`),
//! keeps one read-only mapping of them, saves the non-zero ones and every
//! vCPU's context. Restore writes back frames (through a read-write mapping
//! made for them only: a persistent writable mapping would stop the guest
//! from turning those frames into page tables) and loads every vCPU's
//! context (`xc_vcpu_setcontext`). Which frames, by hypervisor:
//! - with PV log-dirty (shadow paging: the lab's debug build), the frames
//!   log-dirty reports (by pfn, turned into machine frames with the
//!   machine-to-phys table read at take) plus the frames xenprobe wrote;
//! - without (the stock build), every frame is compared with the snapshot
//!   and the differing ones are written: exact, about one read of all guest
//!   memory per restore.
//!
//! Left out: the shared-info page (Xen writes its clocks and event bits).
//! Page-table frames cannot be mapped writable from dom0: a difference in
//! their accessed/dirty bits (set as the guest runs) is left alone; any
//! other change in them fails the restore with the frame named (rewriting
//! PV page tables needs `mmu_update`, not done here). Snapshot files are
//! HVM/PVH only (a new domain has other machine frames).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::xen::{
    Mapping, Prot, PvFrameType, VcpuContext, DOMID_XEN, FRAME_TYPE_BATCH, PAGE_SHIFT, PAGE_SIZE,
};

use super::domain::Domain;
use super::error::{Error, Result};
use super::events::StopReason;
use super::memory::DirtyTracking;
use super::platform::SnapshotStore;
use super::regs::Registers;
use super::snapshot::{RestoreStats, SnapshotCheck, SnapshotInfo};

/// Frames per read-only mapping of the domain's frames.
const SCAN_CHUNK: u64 = 4096;
/// Slot of a frame that was all zero (not stored).
const ZERO: usize = usize::MAX;
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
/// `VGCF_online`: the vCPU is up.
const VGCF_ONLINE: u64 = 1 << 5;
/// Accessed and dirty bits of a page-table entry.
const PTE_AD: u64 = (1 << 5) | (1 << 6);

/// A PV domain's saved state (see the module docs).
pub(crate) struct PvSnapshot {
    /// (machine frames, read-only mapping of them), in frame order.
    chunks: Vec<(Vec<u64>, Mapping)>,
    /// mfn -> index into `data` pages, or [`ZERO`].
    slot: HashMap<u64, usize>,
    data: Vec<u8>,
    /// Context of every vCPU that was up.
    vcpus: Vec<(u32, VcpuContext)>,
    /// Log-dirty tracking and the guest's pfn -> mfn (from the M2P), where
    /// the hypervisor has PV log-dirty (shadow paging).
    tracking: Option<(DirtyTracking, HashMap<u64, u64>)>,
    pub(crate) info: SnapshotInfo,
}

impl PvSnapshot {
    fn page(&self, mfn: u64) -> Option<&[u8]> {
        match *self.slot.get(&mfn)? {
            ZERO => Some(&ZERO_PAGE),
            s => Some(&self.data[s * PAGE_SIZE..(s + 1) * PAGE_SIZE]),
        }
    }
}

/// True if two page-table pages differ in nothing but accessed/dirty bits.
fn only_ad_bits_differ(a: &[u8], b: &[u8]) -> bool {
    a.chunks_exact(8).zip(b.chunks_exact(8)).all(|(x, y)| {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        (x ^ y) & !PTE_AD == 0
    })
}

/// Names of the register fields that differ.
fn register_differences(a: &Registers, b: &Registers) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = a
        .named()
        .iter()
        .zip(b.named())
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0)
        .collect();
    let segs = [
        ("cs", a.cs, b.cs),
        ("ss", a.ss, b.ss),
        ("ds", a.ds, b.ds),
        ("es", a.es, b.es),
        ("fs", a.fs, b.fs),
        ("gs", a.gs, b.gs),
    ];
    out.extend(segs.iter().filter(|(_, x, y)| x != y).map(|(n, _, _)| *n));
    let dr = [
        ("dr0", a.dr0, b.dr0),
        ("dr1", a.dr1, b.dr1),
        ("dr2", a.dr2, b.dr2),
        ("dr3", a.dr3, b.dr3),
        ("dr6", a.dr6, b.dr6),
        ("dr7", a.dr7, b.dr7),
        ("shadow_gs", a.shadow_gs, b.shadow_gs),
    ];
    out.extend(dr.iter().filter(|(_, x, y)| x != y).map(|(n, _, _)| *n));
    out
}

impl Domain {
    /// The machine frames this PV domain owns (shared-info page left out),
    /// with the guest frame number of each (pfn -> mfn). Candidates come
    /// from Xen's machine-to-phys table (M2P: every machine frame whose
    /// pfn is within the domain's range); their owner is then asked of Xen
    /// (`XEN_DOMCTL_getpageframeinfo3`, 1024 frames a call). Asking for
    /// every machine frame of RAM instead took 10-80 s in the lab.
    fn pv_owned_frames(&self) -> Result<(Vec<u64>, HashMap<u64, u64>)> {
        const PER_EXTENT: u64 = 1 << 18;
        let info = self.info()?;
        let max_mfn = self.xen.xc.maximum_ram_page()?;
        let pfn_bound = (info.max_memkb / 4)
            .max(info.nr_pages)
            .max(self.xen.xc.domain_nr_gpfns(self.domid).unwrap_or(0))
            + 4096;
        let mut candidates = Vec::new();
        for (k, &first) in self.xen.xc.machphys_mfn_list()?.iter().enumerate() {
            let frames: Vec<u64> = (first..first + 512).collect();
            let map = self.xen.fmem.map(DOMID_XEN, Prot::Read, &frames)?;
            let mut raw = vec![0u8; 512 * PAGE_SIZE];
            map.read(0, &mut raw)?;
            let base = k as u64 * PER_EXTENT;
            for (i, e) in raw.chunks_exact(8).enumerate() {
                let mfn = base + i as u64;
                if mfn > max_mfn {
                    break;
                }
                let pfn = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
                if pfn < pfn_bound && mfn != info.shared_info_frame {
                    candidates.push((mfn, pfn));
                }
            }
        }
        let mut owned = Vec::new();
        let mut p2m = HashMap::new();
        for batch in candidates.chunks(FRAME_TYPE_BATCH) {
            let mfns: Vec<u64> = batch.iter().map(|&(m, _)| m).collect();
            let types = self.xen.xc.pv_frame_types(self.domid, &mfns)?;
            for (&(mfn, pfn), t) in batch.iter().zip(types) {
                if t != PvFrameType::Absent {
                    owned.push(mfn);
                    p2m.insert(pfn, mfn);
                }
            }
        }
        Ok((owned, p2m))
    }

    /// Saves the stopped PV domain as its snapshot (see the module docs).
    pub(crate) fn take_pv_snapshot(&mut self) -> Result<SnapshotInfo> {
        let t0 = Instant::now();
        self.snapshot.clear();
        let (owned, p2m) = self.pv_owned_frames()?;
        let nr_pages = self.info()?.nr_pages as usize;
        let mut chunks = Vec::new();
        let mut slot = HashMap::new();
        let mut data = Vec::new();
        let mut zero_frames = 0;
        let mut page = [0u8; PAGE_SIZE];
        for mfns in owned.chunks(SCAN_CHUNK as usize) {
            let map = self.xen.fmem.map(self.domid, Prot::Read, mfns)?;
            for (i, &mfn) in mfns.iter().enumerate() {
                map.read(i * PAGE_SIZE, &mut page)?;
                if page == ZERO_PAGE {
                    slot.insert(mfn, ZERO);
                    zero_frames += 1;
                } else {
                    slot.insert(mfn, data.len() / PAGE_SIZE);
                    data.extend_from_slice(&page);
                }
            }
            chunks.push((mfns.to_vec(), map));
        }
        // Keep breakpoint bytes out of the saved copy.
        for (_, b) in self.bps.planted() {
            if let Some(&s) = slot.get(&(b.pa >> PAGE_SHIFT)).filter(|&&s| s != ZERO) {
                data[s * PAGE_SIZE + (b.pa as usize & (PAGE_SIZE - 1))] = b.orig;
            }
        }
        data.shrink_to_fit();
        let mut vcpus = Vec::new();
        for v in 0..=self.info()?.max_vcpu_id {
            let ctx = self.xen.xc.vcpu_context(self.domid, v)?;
            if ctx.x64().flags & VGCF_ONLINE != 0 {
                vcpus.push((v, ctx));
            }
        }
        let tracking = if self.caps.log_dirty().is_ok() {
            let mut t = self.track_dirty()?;
            t.clean()?;
            Some((t, p2m))
        } else {
            None
        };
        if slot.len() + 1 < nr_pages {
            tracing::warn!(
                domid = self.domid,
                saved = slot.len(),
                nr_pages,
                "PV snapshot saved fewer frames than the domain has (besides shared info)"
            );
        }
        let info = SnapshotInfo {
            frames: slot.len(),
            zero_frames,
            took: t0.elapsed(),
        };
        self.snapshot.put(Box::new(SnapshotStore::Pv(PvSnapshot {
            chunks,
            slot,
            data,
            vcpus,
            tracking,
            info,
        })));
        self.mem.forget_writes();
        tracing::debug!(domid = self.domid, ?info, "PV snapshot taken");
        Ok(info)
    }

    /// Frames whose contents differ from the snapshot (planted breakpoint
    /// bytes read as the original bytes).
    fn pv_differing(&self, snap: &PvSnapshot) -> Result<Vec<u64>> {
        let planted: Vec<(u64, u8)> = self.bps.planted().map(|(_, b)| (b.pa, b.orig)).collect();
        let mut out = Vec::new();
        let mut page = [0u8; PAGE_SIZE];
        for (mfns, map) in &snap.chunks {
            for (i, &mfn) in mfns.iter().enumerate() {
                let Some(saved) = snap.page(mfn) else {
                    continue;
                };
                map.read(i * PAGE_SIZE, &mut page)?;
                for &(pa, orig) in planted.iter().filter(|(pa, _)| pa >> PAGE_SHIFT == mfn) {
                    page[pa as usize & (PAGE_SIZE - 1)] = orig;
                }
                if page[..] != *saved {
                    out.push(mfn);
                }
            }
        }
        Ok(out)
    }

    /// Brings the stopped PV domain back to `snap`.
    pub(crate) fn restore_pv_snapshot(&mut self, snap: &mut PvSnapshot) -> Result<RestoreStats> {
        let written = self.mem.written_count();
        let cleaned = snap.tracking.is_some();
        let mut log_dirty = std::time::Duration::ZERO;
        let differ = match &mut snap.tracking {
            // Log-dirty: the frames the guest wrote, plus ours.
            Some((t, p2m)) => {
                let mut frames = BTreeSet::new();
                let mut unknown = 0;
                let t0 = crate::xen::Stamp::now();
                let dirty = t.clean()?;
                log_dirty = t0.elapsed();
                for pfn in dirty {
                    match p2m.get(&pfn) {
                        Some(&mfn) => {
                            frames.insert(mfn);
                        }
                        None => unknown += 1,
                    }
                }
                if unknown > 0 {
                    return Err(Error::State(format!(
                        "PV restore: {unknown} dirty frames have no machine frame in the snapshot (the guest changed its memory map)"
                    )));
                }
                frames.extend(self.mem.written_frames());
                frames
                    .into_iter()
                    .filter(|m| snap.slot.contains_key(m))
                    .collect()
            }
            None => self.pv_differing(snap)?,
        };
        let mut restored = 0;
        if !differ.is_empty() {
            let mut map = self
                .xen
                .fmem
                .map_sparse(self.domid, Prot::ReadWrite, &differ)?;
            let opcode = self.bps.opcode();
            let ro = self.xen.fmem.map_sparse(self.domid, Prot::Read, &differ)?;
            let mut now = [0u8; PAGE_SIZE];
            for (i, &mfn) in differ.iter().enumerate() {
                let saved = snap.page(mfn).unwrap_or(&ZERO_PAGE);
                if !map.page_valid(i) {
                    // Not mappable writable: a page-table frame (or a frame
                    // the domain gave up since the snapshot).
                    if !ro.page_valid(i) {
                        return Err(Error::State(format!(
                            "PV restore: machine frame {mfn:#x} is no longer the domain's"
                        )));
                    }
                    ro.read(i * PAGE_SIZE, &mut now)?;
                    if only_ad_bits_differ(&now, saved) {
                        continue;
                    }
                    return Err(Error::unsupported(
                        "PV snapshot restore",
                        format!(
                            "page-table frame {mfn:#x} changed since the snapshot; rewriting PV page tables needs mmu_update, which xenprobe does not do"
                        ),
                    ));
                }
                map.write(i * PAGE_SIZE, saved)?;
                restored += 1;
                if let Some(op) = opcode {
                    for b in self
                        .bps
                        .planted()
                        .map(|(_, b)| b)
                        .filter(|b| b.pa >> PAGE_SHIFT == mfn)
                    {
                        map.write(i * PAGE_SIZE + (b.pa as usize & (PAGE_SIZE - 1)), &[op])?;
                    }
                }
            }
        }
        self.mem.forget_writes();
        for (&vcpu, p) in self.stops.pending.iter_mut() {
            if let StopReason::Breakpoint(id) = p.reason {
                let saved_rip = snap
                    .vcpus
                    .iter()
                    .find(|(v, _)| *v == vcpu)
                    .map(|(_, c)| c.rip());
                if self.bps.get(id).map(|b| b.va) != saved_rip {
                    p.reason = StopReason::Other;
                }
            }
        }
        self.regs_backend.forget();
        for (v, ctx) in &snap.vcpus {
            self.xen.xc.set_vcpu_context(self.domid, *v, ctx)?;
        }
        self.stops.all_regs_written();
        self.mem.invalidate();
        Ok(RestoreStats {
            dirty: differ.len(),
            written,
            restored,
            cleaned,
            regs_in_reply: false,
            log_dirty,
        })
    }

    /// Splits differing frames into (really differ, page-table frames
    /// differing only in accessed/dirty bits).
    fn pv_split_ad_only(
        &self,
        snap: &PvSnapshot,
        differ: Vec<u64>,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        if differ.is_empty() {
            return Ok((differ, Vec::new()));
        }
        let rw = self
            .xen
            .fmem
            .map_sparse(self.domid, Prot::ReadWrite, &differ)?;
        let ro = self.xen.fmem.map_sparse(self.domid, Prot::Read, &differ)?;
        let (mut real, mut ad) = (Vec::new(), Vec::new());
        let mut now = [0u8; PAGE_SIZE];
        for (i, &mfn) in differ.iter().enumerate() {
            let saved = snap.page(mfn).unwrap_or(&ZERO_PAGE);
            if !rw.page_valid(i) && ro.page_valid(i) {
                ro.read(i * PAGE_SIZE, &mut now)?;
                if only_ad_bits_differ(&now, saved) {
                    ad.push(mfn);
                    continue;
                }
            }
            real.push(mfn);
        }
        Ok((real, ad))
    }

    /// Compares the stopped PV domain with `snap`.
    pub(crate) fn check_pv_snapshot(&self, snap: &PvSnapshot) -> Result<SnapshotCheck> {
        let differ = self.pv_differing(snap)?;
        let (frames_differ, frames_ad_only) = self.pv_split_ad_only(snap, differ)?;
        // SipHash (std's, optimised even in debug builds: a byte loop here
        // takes seconds for 32 MiB in the emulated lab).
        use std::hash::Hasher;
        let mut hash_now = std::collections::hash_map::DefaultHasher::new();
        let mut hash_snapshot = std::collections::hash_map::DefaultHasher::new();
        let mut page = [0u8; PAGE_SIZE];
        for (mfns, map) in &snap.chunks {
            for (i, &mfn) in mfns.iter().enumerate() {
                let saved = snap.page(mfn).unwrap_or(&ZERO_PAGE);
                if frames_ad_only.binary_search(&mfn).is_ok() {
                    page.copy_from_slice(saved);
                } else {
                    map.read(i * PAGE_SIZE, &mut page)?;
                }
                for b in self
                    .bps
                    .planted()
                    .map(|(_, b)| b)
                    .filter(|b| b.pa >> PAGE_SHIFT == mfn)
                {
                    page[b.pa as usize & (PAGE_SIZE - 1)] = b.orig;
                }
                hash_now.write(&page);
                hash_snapshot.write(saved);
            }
        }
        let now = Registers::from_pv(&self.xen.xc.vcpu_context(self.domid, 0)?);
        let cpu_differ = match snap.vcpus.iter().find(|(v, _)| *v == 0) {
            Some((_, saved)) => register_differences(&now, &Registers::from_pv(saved)),
            None => vec!["vCPU 0 missing from the snapshot"],
        };
        Ok(SnapshotCheck {
            frames: snap.slot.len(),
            frames_differ,
            frames_ad_only,
            cpu_differ,
            hash_now: hash_now.finish(),
            hash_snapshot: hash_snapshot.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_may_differ_in_accessed_and_dirty_bits_only() {
        let a = [0u8; PAGE_SIZE];
        let mut b = a;
        b[8] = 0x60; // A and D of the second entry
        assert!(only_ad_bits_differ(&a, &b));
        b[16] = 0x02; // R/W of the third entry
        assert!(!only_ad_bits_differ(&a, &b));
    }

    #[test]
    fn register_differences_name_the_fields() {
        let a = Registers::default();
        let mut b = a;
        b.rip = 1;
        b.fs.base = 2;
        b.dr7 = 3;
        assert_eq!(register_differences(&a, &b), vec!["rip", "fs", "dr7"]);
    }
}
