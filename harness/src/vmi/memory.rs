//! Guest memory: physical and virtual reads/writes of any length.
//!
//! Every access to guest frames goes through [`GuestMemory::with_frame`]:
//! while a snapshot exists, through its persistent read-write mapping of
//! all guest RAM ([`WholeMap`]); otherwise through cached single-frame
//! mappings.
//!
//! "Physical" means what the guest's page tables contain: guest frame
//! numbers for HVM/PVH, machine frame numbers for PV (PV page tables hold
//! machine addresses, and foreign mappings of PV guests take them).

use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::RefCell;

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
    paging: FxHashMap<u32, (PagingMode, u64)>,
    /// Frames written through foreign mappings since the last snapshot
    /// take/restore (log-dirty does not see these writes).
    written: FxHashSet<u64>,
    /// Byte ranges written through windows since then (restored as ranges).
    pub(crate) windows: super::window::WindowWrites,
    /// Cached single-frame mappings: (frame, writable) -> mapping.
    maps: RefCell<FxHashMap<(u64, bool), Mapping>>,
    /// Persistent read-write mappings of all guest RAM (HVM/PVH, while a
    /// snapshot exists).
    pub(crate) whole: RefCell<Option<WholeMap>>,
}

/// Persistent read-write mappings of a guest's frames, [`WHOLE_CHUNK`]
/// frames each (frames absent from the guest are holes in them).
pub(crate) struct WholeMap {
    /// (first gfn, mapping), sorted by gfn.
    pub(crate) chunks: Vec<(u64, Mapping)>,
}

/// Frames per persistent mapping of a [`WholeMap`].
pub(crate) const WHOLE_CHUNK: u64 = 4096;

impl WholeMap {
    /// Chunk index and byte offset of `gfn`, if it is mapped.
    pub(crate) fn locate(&self, gfn: u64) -> Option<(usize, usize)> {
        let start = gfn - gfn % WHOLE_CHUNK;
        let i = self.chunks.binary_search_by_key(&start, |(s, _)| *s).ok()?;
        let page = (gfn - start) as usize;
        self.chunks[i]
            .1
            .page_valid(page)
            .then_some((i, page * PAGE_SIZE))
    }
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
    /// Forgets the frames and ranges written since the last snapshot take
    /// or restore (a new snapshot holds them).
    pub(crate) fn forget_writes(&mut self) {
        self.written.clear();
        self.windows.clear();
    }

    /// How many frames were written through foreign mappings since.
    pub(crate) fn written_count(&self) -> usize {
        self.written.len()
    }

    /// Takes the frames written through foreign mappings since.
    pub(crate) fn drain_written(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.written.drain()
    }

    /// Frames written since, through foreign mappings or windows (a frame
    /// may come twice).
    pub(crate) fn written_frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.written.iter().copied().chain(self.windows.frames())
    }

    /// Frame `gfn` was written behind the guest's back.
    pub(crate) fn note_written(&mut self, gfn: u64) {
        self.written.insert(gfn);
    }

    pub(crate) fn new(fmem: ForeignMemory, domid: u32) -> Self {
        Self {
            fmem,
            domid,
            cache: TranslationCache::default(),
            paging: FxHashMap::default(),
            written: FxHashSet::default(),
            windows: Default::default(),
            maps: RefCell::new(FxHashMap::default()),
            whole: RefCell::new(None),
        }
    }

    /// Forgets translations and paging state (the guest ran or registers changed).
    pub(crate) fn invalidate(&mut self) {
        self.cache.invalidate();
        self.paging.clear();
    }

    /// Maps the frame holding `pa` (or reuses the whole-memory mapping or a
    /// cached one), runs `f` on the mapping with the offset of `pa` in it.
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
        if let Some(w) = self.whole.borrow_mut().as_mut() {
            if let Some((ci, base)) = w.locate(gfn) {
                return Ok(f(&mut w.chunks[ci].1, base + off)?);
            }
        }
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

    /// Unmaps every cached frame and the whole-memory mapping.
    pub(crate) fn unmap_all(&self) {
        self.maps.borrow_mut().clear();
        self.whole.replace(None);
    }

    pub(crate) fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        for (page, off, n) in chunks(pa, buf.len()) {
            let dst = &mut buf[done..done + n];
            self.with_frame(page, Prot::Read, |m, at| m.read(at + off, dst))?;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn write_phys(&mut self, pa: u64, data: &[u8]) -> Result<()> {
        for (page, _, _) in chunks(pa, data.len()) {
            self.written.insert(page >> PAGE_SHIFT);
        }
        self.write_phys_untracked(pa, data)
    }

    /// [`GuestMemory::write_phys`] without noting the frames: the caller
    /// notes what a restore must undo.
    pub(crate) fn write_phys_untracked(&mut self, pa: u64, data: &[u8]) -> Result<()> {
        let mut done = 0;
        for (page, off, n) in chunks(pa, data.len()) {
            let src = &data[done..done + n];
            self.with_frame(page, Prot::ReadWrite, |m, at| m.write(at + off, src))?;
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
        // At an event, its register copy has the paging registers.
        let (cr0, cr3, cr4, efer) = match self.event_regs(vcpu) {
            Some(e) => (e.cr0, e.cr3, e.cr4, e.msr_efer),
            None => {
                let r = self.regs(vcpu)?;
                (r.cr0, r.cr3, r.cr4, r.efer)
            }
        };
        let p = (PagingMode::from_regs(cr0, cr4, efer), cr3);
        if self.is_stopped() {
            self.mem.paging.insert(vcpu, p);
            self.mem.cache.note_cr3(vcpu, cr3);
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
        self.read_u64_on(0, va)
    }

    /// Reads a little-endian u64 at a virtual address as seen by `vcpu`.
    pub fn read_u64_on(&mut self, vcpu: u32, va: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_virt_on(vcpu, va, &mut b)?;
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

/// A copy of all of a domain's memory (see [`Domain::memory_image`]), to
/// compare two states of a guest exactly.
#[derive(Clone, PartialEq, Eq)]
pub struct MemoryImage {
    gfns: Vec<u64>,
    data: Vec<u8>,
}

impl std::fmt::Debug for MemoryImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryImage")
            .field("frames", &self.gfns.len())
            .field("hash", &format_args!("{:016x}", self.hash()))
            .finish()
    }
}

impl MemoryImage {
    /// Frames copied.
    pub fn frames(&self) -> usize {
        self.gfns.len()
    }

    /// Frame numbers copied, in order.
    pub fn gfns(&self) -> &[u64] {
        &self.gfns
    }

    /// The contents of frame `gfn`, if it was copied.
    pub fn frame(&self, gfn: u64) -> Option<&[u8]> {
        let i = self.gfns.binary_search(&gfn).ok()?;
        Some(&self.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])
    }

    /// Frames whose presence or contents differ between two images.
    pub fn diff(&self, other: &MemoryImage) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .gfns
            .iter()
            .filter(|&&g| self.frame(g) != other.frame(g))
            .copied()
            .collect();
        out.extend(other.gfns.iter().filter(|g| self.frame(**g).is_none()));
        out.sort_unstable();
        out
    }

    fn frame_mut(&mut self, gfn: u64) -> Option<&mut [u8]> {
        let i = self.gfns.binary_search(&gfn).ok()?;
        Some(&mut self.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])
    }

    /// A 64-bit hash of frame numbers and contents (for printing; compare
    /// images with `==`).
    pub fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.gfns.hash(&mut h);
        self.data.hash(&mut h);
        h.finish()
    }
}

/// Guest-frame ranges of an HVM/PVH guest: (first, last, stop at the first
/// empty chunk). Scanning every frame up to the highest one costs about 5 us
/// per hole in the emulated lab (seconds for the 4 GiB an HVM p2m spans), so
/// this follows the x86 layout libxl builds: RAM from frame 0 up to the first
/// empty chunk, the special/ACPI frames just below 4 GiB (0xfc000-0xfefff),
/// and RAM above 4 GiB if the guest has any. Snapshots and memory images
/// both scan these.
pub(crate) fn hvm_frame_ranges(max_gpfn: u64) -> Vec<(u64, u64, bool)> {
    let mut r = vec![(0, max_gpfn.min(SPECIAL_FIRST - 1), true)];
    if max_gpfn >= SPECIAL_FIRST {
        r.push((SPECIAL_FIRST, max_gpfn.min(SPECIAL_LAST), false));
    }
    if max_gpfn >= HIGH_FIRST {
        r.push((HIGH_FIRST, max_gpfn, false));
    }
    r
}

/// First frame of the region under 4 GiB where Xen puts HVM/PVH special
/// pages (console, xenstore, vm_event rings, ...).
pub(crate) const SPECIAL_FIRST: u64 = 0xfc000;
/// Last frame of that region.
pub(crate) const SPECIAL_LAST: u64 = 0xfefff;
/// First frame above 4 GiB.
pub(crate) const HIGH_FIRST: u64 = 0x100000;

/// Present frames among `ranges`, found by mapping them `chunk` at a time.
/// Calls `f(gfn, page)` for each, in order.
pub(crate) fn for_each_frame(
    fmem: &ForeignMemory,
    domid: u32,
    ranges: &[(u64, u64, bool)],
    mut f: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut page = vec![0u8; PAGE_SIZE];
    for &(from, to, stop_at_hole) in ranges {
        let mut start = from;
        while start <= to {
            let n = DIGEST_CHUNK.min(to + 1 - start);
            let gfns: Vec<u64> = (start..start + n).collect();
            let map = fmem.map_sparse(domid, Prot::Read, &gfns)?;
            let mut any = false;
            for (i, &gfn) in gfns.iter().enumerate() {
                if !map.page_valid(i) {
                    continue;
                }
                any = true;
                map.read(i * PAGE_SIZE, &mut page)?;
                f(gfn, &page)?;
            }
            if !any && stop_at_hole {
                break;
            }
            start += n;
        }
    }
    Ok(())
}

/// Frames mapped at once when walking all guest memory.
const DIGEST_CHUNK: u64 = 1024;

impl Domain {
    /// Copies every guest frame (HVM/PVH: by the x86 layout libxl builds:
    /// RAM from 0, the special frames below 4 GiB, RAM above 4 GiB), as the
    /// bytes are in memory, planted breakpoints included. The vm_event
    /// monitor ring's frame is left out (Xen takes it out of the guest's
    /// physmap while a ring is on). Stop the domain first for a consistent
    /// copy. PV: unsupported (machine frames).
    pub fn memory_image(&self) -> Result<MemoryImage> {
        let xc = &self.xen.xc;
        if !self.platform.guest_frames() {
            return Err(Error::unsupported(
                "memory image",
                "PV guest frames are machine frames; copying them needs the guest's p2m",
            ));
        }
        let ranges = hvm_frame_ranges(xc.domain_maximum_gpfn(self.domid)?);
        let ring = xc
            .hvm_param(self.domid, crate::xen::HVM_PARAM_MONITOR_RING_PFN)
            .unwrap_or(u64::MAX);
        let mut img = MemoryImage {
            gfns: Vec::new(),
            data: Vec::new(),
        };
        for_each_frame(&self.xen.fmem, self.domid, &ranges, |gfn, page| {
            if gfn != ring {
                img.gfns.push(gfn);
                img.data.extend_from_slice(page);
            }
            Ok(())
        })?;
        Ok(img)
    }
}

impl Domain {
    /// Like [`Domain::memory_image`], with the guest's own bytes where
    /// breakpoints are planted: what [`Domain::restore_memory_image`] puts
    /// back whichever breakpoints are set by then.
    pub fn guest_memory_image(&self) -> Result<MemoryImage> {
        let mut img = self.memory_image()?;
        for (_, b) in self.bps.planted() {
            if let Some(page) = img.frame_mut(b.pa >> PAGE_SHIFT) {
                page[b.pa as usize & (PAGE_SIZE - 1)] = b.orig;
            }
        }
        Ok(img)
    }

    /// Writes back every frame of `img` whose contents differ from the
    /// stopped guest's (only the words that differ), then plants the
    /// breakpoints set now into the frames it rewrote. Frames the image
    /// does not hold are left alone. Returns the frames rewritten.
    pub fn restore_memory_image(&mut self, img: &MemoryImage) -> Result<usize> {
        if !self.is_stopped() {
            return Err(Error::State(
                "restore_memory_image() needs a stopped domain: pause() first".into(),
            ));
        }
        let opcode = self.bps.opcode();
        let mut rewritten = 0;
        let mut page = vec![0u8; PAGE_SIZE];
        for (gfns, data) in img
            .gfns
            .chunks(DIGEST_CHUNK as usize)
            .zip(img.data.chunks(DIGEST_CHUNK as usize * PAGE_SIZE))
        {
            let mut map = self.xen.fmem.map(self.domid, Prot::ReadWrite, gfns)?;
            for (i, &gfn) in gfns.iter().enumerate() {
                let off = i * PAGE_SIZE;
                let want = &data[off..off + PAGE_SIZE];
                // Most frames are unchanged: one copy and compare finds them.
                map.read(off, &mut page)?;
                if page == want || map.write_changed(off, want)? == 0 {
                    continue;
                }
                rewritten += 1;
                self.mem.note_written(gfn);
                if let Some(op) = opcode {
                    for b in self.bps.planted_in_frame(gfn) {
                        map.write(off + (b.pa as usize & (PAGE_SIZE - 1)), &[op])?;
                    }
                }
            }
        }
        self.mem.invalidate();
        Ok(rewritten)
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

    /// [`DirtyTracking::clean`] (`clean`) or [`DirtyTracking::peek`] into
    /// `out` (appended; no allocation when it has room). Also returns
    /// whether frames beyond the bitmap ([`DirtyTracking::limit`]) were
    /// made dirty since the last clean: Xen counts every dirty frame of
    /// the domain, the bitmap reports those below its size.
    pub(crate) fn fetch_into(&mut self, clean: bool, out: &mut Vec<u64>) -> Result<bool> {
        let st = if clean {
            self.bitmap.clean()?
        } else {
            self.bitmap.peek()?
        };
        let before = out.len();
        self.bitmap.dirty_pfns_into(out);
        Ok(beyond_bitmap(st.dirty_count, out.len() - before))
    }

    /// Reports only frames `0..pages` from now on (a smaller bitmap). Xen
    /// fills every word of the bitmap on each call, zeroing the ranges with
    /// no dirty frame one by one: for an HVM/PVH guest whose bitmap reaches
    /// its special pages just under 4 GiB, that costs more than the whole
    /// rest of a restore.
    pub fn limit(&mut self, pages: u64) -> Result<()> {
        if pages < self.bitmap.pages() {
            self.bitmap = crate::xen::DirtyBitmap::new(&self.xc, self.domid, pages.max(1))?;
        }
        Ok(())
    }
}

/// Whether Xen's count of dirty frames (`dirty_count`, the whole domain)
/// exceeds the `in_bitmap` frames a limited bitmap reported.
pub(crate) fn beyond_bitmap(dirty_count: u32, in_bitmap: usize) -> bool {
    dirty_count as usize > in_bitmap
}

impl Drop for DirtyTracking {
    fn drop(&mut self) {
        match self.xc.logdirty_off(self.domid) {
            // ESRCH: the domain is gone, and its tracking with it.
            Err(e) if e.raw_errno() != Some(libc::ESRCH) => {
                tracing::warn!(domid = self.domid, "log-dirty off: {e}");
            }
            _ => {}
        }
    }
}

impl Domain {
    /// Starts log-dirty tracking (HVM/PVH; PV needs shadow paging).
    pub fn track_dirty(&mut self) -> Result<DirtyTracking> {
        self.caps.log_dirty()?;
        let xc = &self.xen.xc;
        let pages = self.platform.dirty_bitmap_pages(xc, self.domid)?;
        // Journal first: a killed harness's tracking is turned off by the
        // next attach.
        self.journal.set_logdirty(true)?;
        let xc = &self.xen.xc;
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
    fn images_compare_and_diff_by_frame() {
        let page = |b: u8| vec![b; PAGE_SIZE];
        let a = MemoryImage {
            gfns: vec![1, 2, 3],
            data: [page(1), page(2), page(3)].concat(),
        };
        let mut b = a.clone();
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash());
        b.data[PAGE_SIZE + 7] = 9;
        assert_ne!(a, b);
        assert_eq!(a.diff(&b), vec![2]);
        let c = MemoryImage {
            gfns: vec![1, 3, 4],
            data: [page(1), page(3), page(4)].concat(),
        };
        assert_eq!(a.diff(&c), vec![2, 4]);
        assert_eq!(a.frame(3), Some(&page(3)[..]));
        assert_eq!(a.frame(5), None);
    }

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
