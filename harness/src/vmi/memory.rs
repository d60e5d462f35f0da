//! Guest memory: physical and virtual reads/writes of any length.
//!
//! Every access to guest frames goes through [`GuestMemory::with_frame`],
//! which maps one frame, uses it and unmaps it. A later persistent
//! read-write mapping of all guest memory (for snapshots and fuzzing) only
//! has to change that one function.
//!
//! "Physical" means what the guest's page tables contain: guest frame
//! numbers for HVM/PVH, machine frame numbers for PV (PV page tables hold
//! machine addresses, and foreign mappings of PV guests take them).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::xen::{ForeignMemory, Mapping, Prot, PAGE_SHIFT, PAGE_SIZE};

use super::domain::Domain;
use super::error::{Error, Result};
use super::pagewalk::{self, PagingMode, Translation, TranslationCache, WalkError};

/// Frame-level access to one domain's memory, plus the translation cache.
pub(crate) struct GuestMemory {
    fmem: ForeignMemory,
    domid: u32,
    cache: TranslationCache,
    /// Paging mode and CR3 per vCPU, valid until the guest runs again.
    paging: HashMap<u32, (PagingMode, u64)>,
    /// Frames written through foreign mappings since the last snapshot
    /// take/restore (log-dirty does not see these writes).
    pub(crate) written: HashSet<u64>,
    /// Cached single-frame mappings: (frame, writable) -> mapping.
    maps: RefCell<HashMap<(u64, bool), Mapping>>,
}

/// Frames kept mapped by [`GuestMemory`] before the cache is emptied.
const MAP_CACHE_FRAMES: usize = 512;

/// Splits `[addr, addr+len)` into per-page chunks: (page base, offset in page, chunk length).
pub(crate) fn chunks(addr: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let a = addr.wrapping_add(done as u64);
        let off = (a as usize) & (PAGE_SIZE - 1);
        let n = (PAGE_SIZE - off).min(len - done);
        let item = (a & !(PAGE_SIZE as u64 - 1), off, n);
        done += n;
        Some(item)
    })
}

impl GuestMemory {
    pub(crate) fn new(fmem: ForeignMemory, domid: u32) -> Self {
        Self {
            fmem,
            domid,
            cache: TranslationCache::default(),
            paging: HashMap::new(),
            written: HashSet::new(),
            maps: RefCell::new(HashMap::new()),
        }
    }

    /// Forgets translations and paging state (the guest ran or registers changed).
    pub(crate) fn invalidate(&mut self) {
        self.cache.invalidate();
        self.paging.clear();
    }

    /// Maps the frame holding `pa` (or reuses a cached mapping), runs `f` on
    /// it with the offset of `pa`.
    ///
    /// Mappings stay cached across guest runs: a foreign mapping keeps
    /// pointing at the same guest frame. Read-only and read-write mappings
    /// are cached separately (Xen refuses writable mappings of PV page-table
    /// pages, which the page walk reads).
    fn with_frame<T>(
        &self,
        pa: u64,
        prot: Prot,
        f: impl FnOnce(&mut crate::xen::Mapping, usize) -> crate::xen::Result<T>,
    ) -> Result<T> {
        let gfn = pa >> PAGE_SHIFT;
        let off = (pa as usize) & (PAGE_SIZE - 1);
        let mut maps = self.maps.borrow_mut();
        let writable = prot == Prot::ReadWrite;
        let key = if !writable && maps.contains_key(&(gfn, true)) {
            (gfn, true)
        } else {
            (gfn, writable)
        };
        if !maps.contains_key(&key) {
            if maps.len() >= MAP_CACHE_FRAMES {
                maps.clear();
            }
            let m = self.fmem.map(self.domid, prot, &[gfn])?;
            maps.insert(key, m);
        }
        match maps.get_mut(&key) {
            Some(m) => Ok(f(m, off)?),
            None => Err(Error::State(format!("mapping of frame {gfn:#x} vanished"))),
        }
    }

    /// Unmaps every cached frame.
    pub(crate) fn unmap_all(&self) {
        self.maps.borrow_mut().clear();
    }

    pub(crate) fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        for (page, off, n) in chunks(pa, buf.len()) {
            let dst = &mut buf[done..done + n];
            self.with_frame(page, Prot::Read, |m, _| m.read(off, dst))?;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn write_phys(&mut self, pa: u64, data: &[u8]) -> Result<()> {
        let mut done = 0;
        for (page, off, n) in chunks(pa, data.len()) {
            let src = &data[done..done + n];
            self.written.insert(page >> PAGE_SHIFT);
            self.with_frame(page, Prot::ReadWrite, |m, _| m.write(off, src))?;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn read_phys_u64(&self, pa: u64) -> Result<u64> {
        self.with_frame(pa, Prot::Read, |m, off| m.read_u64(off))
    }
}

impl Domain {
    /// Reads guest-physical memory (see the module docs for PV).
    pub fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read_phys(pa, buf)
    }

    /// Writes guest-physical memory.
    pub fn write_phys(&mut self, pa: u64, data: &[u8]) -> Result<()> {
        self.mem.write_phys(pa, data)
    }

    fn paging(&mut self, vcpu: u32) -> Result<(PagingMode, u64)> {
        if self.is_stopped() {
            if let Some(&p) = self.mem.paging.get(&vcpu) {
                return Ok(p);
            }
        }
        let r = self.regs(vcpu)?;
        let p = (PagingMode::from_regs(r.cr0, r.cr4, r.efer), r.cr3);
        if self.is_stopped() {
            self.mem.paging.insert(vcpu, p);
            self.mem.cache.note_cr3(vcpu, r.cr3);
        }
        Ok(p)
    }

    /// Translates a virtual address through `vcpu`'s page tables. Cached
    /// while the domain is stopped; dropped on resume and on CR3 change.
    pub fn translate(&mut self, vcpu: u32, va: u64) -> Result<Translation> {
        let (mode, cr3) = self.paging(vcpu)?;
        let stopped = self.is_stopped();
        if stopped {
            if let Some(t) = self.mem.cache.get(cr3, va) {
                return Ok(t);
            }
        }
        let mem = &self.mem;
        let t = pagewalk::walk(mode, cr3, va, |pa| mem.read_phys_u64(pa)).map_err(|e| match e {
            WalkError::Read(inner) => inner,
            other => Error::Translate {
                va,
                why: other.to_string(),
            },
        })?;
        if stopped {
            self.mem.cache.insert(cr3, va, t);
        }
        Ok(t)
    }

    /// Reads guest-virtual memory as seen by vCPU 0.
    pub fn read_virt(&mut self, va: u64, buf: &mut [u8]) -> Result<()> {
        self.read_virt_on(0, va, buf)
    }

    /// Writes guest-virtual memory as seen by vCPU 0 (ignores page protections).
    pub fn write_virt(&mut self, va: u64, data: &[u8]) -> Result<()> {
        self.write_virt_on(0, va, data)
    }

    /// Reads guest-virtual memory as seen by `vcpu`. Our breakpoints are
    /// hidden: their addresses read as the guest's original bytes (as in a
    /// debugger); `read_phys` shows what is really in memory.
    pub fn read_virt_on(&mut self, vcpu: u32, va: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        for (page, off, n) in chunks(va, buf.len()) {
            let t = self.translate(vcpu, page)?;
            self.mem
                .read_phys(t.frame() + off as u64, &mut buf[done..done + n])?;
            done += n;
        }
        for (addr, orig) in self.bps.original_bytes_in(va, buf.len() as u64) {
            buf[(addr - va) as usize] = orig;
        }
        Ok(())
    }

    /// Writes guest-virtual memory as seen by `vcpu`.
    pub fn write_virt_on(&mut self, vcpu: u32, va: u64, data: &[u8]) -> Result<()> {
        let mut done = 0;
        for (page, off, n) in chunks(va, data.len()) {
            let t = self.translate(vcpu, page)?;
            self.mem
                .write_phys(t.frame() + off as u64, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Reads a little-endian u64 at a virtual address (vCPU 0).
    pub fn read_u64(&mut self, va: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_virt(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Disassembles `count` instructions at `va` (vCPU 0), Intel syntax:
    /// (address, length, text).
    pub fn disassemble(&mut self, va: u64, count: usize) -> Result<Vec<(u64, usize, String)>> {
        use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
        let mut bytes = vec![0u8; count * 15];
        // Read what is mapped: stop at the first page that does not translate.
        let mut len = 0;
        for (page, off, n) in chunks(va, bytes.len()) {
            let Ok(t) = self.translate(0, page) else {
                break;
            };
            self.mem
                .read_phys(t.frame() + off as u64, &mut bytes[len..len + n])?;
            len += n;
        }
        bytes.truncate(len);
        let bps = self.bps.original_bytes_in(va, len as u64);
        for (addr, orig) in bps {
            bytes[(addr - va) as usize] = orig;
        }
        let mut dec = Decoder::with_ip(64, &bytes, va, DecoderOptions::NONE);
        let mut fmt = IntelFormatter::new();
        let mut out = Vec::new();
        while dec.can_decode() && out.len() < count {
            let insn = dec.decode();
            let mut text = String::new();
            fmt.format(&insn, &mut text);
            out.push((insn.ip(), insn.len(), text));
        }
        Ok(out)
    }
}

/// Log-dirty tracking of a domain's memory; switched off on drop.
pub struct DirtyTracking {
    xc: crate::xen::XenCtrl,
    domid: u32,
    bitmap: crate::xen::DirtyBitmap,
}

impl std::fmt::Debug for DirtyTracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyTracking")
            .field("domid", &self.domid)
            .field("pages", &self.bitmap.pages())
            .finish()
    }
}

impl DirtyTracking {
    /// Frames written since the last `clean` (and resets tracking).
    /// Indexed by guest frame number (pseudo-physical for PV). Writes made
    /// through foreign mappings (the harness's own) are not reported.
    pub fn clean(&mut self) -> Result<Vec<u64>> {
        self.bitmap.clean()?;
        Ok(self.bitmap.dirty_pfns())
    }

    /// Frames written since the last `clean`, without resetting.
    pub fn peek(&mut self) -> Result<Vec<u64>> {
        self.bitmap.peek()?;
        Ok(self.bitmap.dirty_pfns())
    }
}

impl Drop for DirtyTracking {
    fn drop(&mut self) {
        if let Err(e) = self.xc.logdirty_off(self.domid) {
            tracing::warn!(domid = self.domid, "log-dirty off: {e}");
        }
    }
}

impl Domain {
    /// Starts log-dirty tracking (HVM/PVH; PV needs shadow paging).
    pub fn track_dirty(&mut self) -> Result<DirtyTracking> {
        self.caps.log_dirty()?;
        let xc = &self.xen.xc;
        let pages = match self.kind {
            // A PV guest's p2m size comes from the guest (shared info
            // max_pfn); bare-metal guests may leave it 0: fall back to the
            // allocation plus slack.
            super::caps::GuestKind::Pv => {
                let n = xc.domain_nr_gpfns(self.domid)?;
                if n > 1 {
                    n
                } else {
                    xc.domain_info(self.domid)?.nr_pages + 4096
                }
            }
            _ => xc.domain_maximum_gpfn(self.domid)? + 1,
        };
        xc.logdirty_enable(self.domid)?;
        let bitmap = match crate::xen::DirtyBitmap::new(xc, self.domid, pages) {
            Ok(b) => b,
            Err(e) => {
                let _ = xc.logdirty_off(self.domid);
                return Err(e.into());
            }
        };
        Ok(DirtyTracking {
            xc: xc.clone(),
            domid: self.domid,
            bitmap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_at_page_boundaries() {
        let c: Vec<_> = chunks(0x1ffe, 5).collect();
        assert_eq!(c, vec![(0x1000, 0xffe, 2), (0x2000, 0, 3)]);
        let c: Vec<_> = chunks(0x3000, 2 * PAGE_SIZE + 1).collect();
        assert_eq!(
            c,
            vec![(0x3000, 0, 4096), (0x4000, 0, 4096), (0x5000, 0, 1)]
        );
        assert_eq!(chunks(0x10, 0).count(), 0);
        let total: usize = chunks(0xfff, 10_000).map(|(_, _, n)| n).sum();
        assert_eq!(total, 10_000);
    }
}
