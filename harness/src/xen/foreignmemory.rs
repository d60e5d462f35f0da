//! Foreign memory mappings (libxenforeignmemory), released on drop.

use std::ptr::NonNull;
use std::sync::Arc;

use xen_sys as sys;

use super::error::{Result, XenError};
use super::PAGE_SIZE;

struct Handle(NonNull<sys::xenforeignmemory_handle>);

// SAFETY: the handle wraps a file descriptor; the library keeps no per-thread state.
unsafe impl Send for Handle {}
// SAFETY: map/unmap are independent ioctls on the descriptor.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: opened by xenforeignmemory_open, closed once; every Mapping
        // holds an Arc to this handle, so none outlives it.
        unsafe {
            sys::xenforeignmemory_close(self.0.as_ptr());
        }
    }
}

/// Access wanted on a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

impl Prot {
    fn raw(self) -> libc::c_int {
        match self {
            Prot::Read => libc::PROT_READ,
            Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// An open libxenforeignmemory handle. Cheap to clone.
#[derive(Clone)]
pub struct ForeignMemory {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for ForeignMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeignMemory").finish_non_exhaustive()
    }
}

impl ForeignMemory {
    /// `xenforeignmemory_open`.
    /// See docs/xen-vmi.md#handles
    pub fn open() -> Result<Self> {
        // SAFETY: NULL logger, flags 0.
        let p = unsafe { sys::xenforeignmemory_open(std::ptr::null_mut(), 0) };
        let h = NonNull::new(p).ok_or_else(|| XenError::last("xenforeignmemory_open"))?;
        Ok(Self {
            handle: Arc::new(Handle(h)),
        })
    }

    /// Maps guest frames `gfns` of `domid` contiguously (`xenforeignmemory_map`).
    /// Fails if any frame cannot be mapped, naming the first bad frame's errno.
    /// See docs/xen-vmi.md#guest-memory
    pub fn map(&self, domid: u32, prot: Prot, gfns: &[u64]) -> Result<Mapping> {
        let m = self.map_sparse(domid, prot, gfns)?;
        if let Some(e) = m.errs.iter().find(|&&e| e != 0) {
            // `m` is dropped (unmapped) here.
            return Err(XenError::errno("xenforeignmemory_map", e.abs()));
        }
        Ok(m)
    }

    /// Like [`ForeignMemory::map`], but frames that cannot be mapped (holes,
    /// MMIO) are only marked invalid ([`Mapping::page_valid`]); accesses to
    /// them fail.
    /// See docs/xen-vmi.md#guest-memory
    pub fn map_sparse(&self, domid: u32, prot: Prot, gfns: &[u64]) -> Result<Mapping> {
        if gfns.is_empty() {
            return Err(XenError::invalid("xenforeignmemory_map", "no frames"));
        }
        let mut errs = vec![0 as libc::c_int; gfns.len()];
        // SAFETY: gfns and errs both have gfns.len() entries.
        let p = unsafe {
            sys::xenforeignmemory_map(
                self.handle.0.as_ptr(),
                domid,
                prot.raw(),
                gfns.len(),
                gfns.as_ptr(),
                errs.as_mut_ptr(),
            )
        };
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| XenError::last("xenforeignmemory_map"))?;
        Ok(Mapping {
            fmem: self.clone(),
            ptr,
            pages: gfns.len(),
            writable: prot == Prot::ReadWrite,
            errs,
        })
    }
}

/// A mapping of guest frames into this process; unmapped on drop.
/// See docs/xen-vmi.md#guest-memory
pub struct Mapping {
    fmem: ForeignMemory,
    ptr: NonNull<u8>,
    pages: usize,
    writable: bool,
    /// Per-page error (0 = mapped).
    errs: Vec<libc::c_int>,
}

// SAFETY: the mapping is plain shared memory; access goes through &self/&mut self.
unsafe impl Send for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("pages", &self.pages)
            .field("writable", &self.writable)
            .finish()
    }
}

impl Mapping {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Never empty (a mapping has at least one page).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Whether page `i` of the mapping is backed by a guest frame.
    pub fn page_valid(&self, i: usize) -> bool {
        self.errs.get(i).is_some_and(|&e| e == 0)
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.len() => end,
            _ => {
                return Err(XenError::invalid(
                    "mapping access",
                    format!(
                        "{len} bytes at offset {offset:#x} outside {} bytes",
                        self.len()
                    ),
                ))
            }
        };
        if len == 0 {
            return Ok(());
        }
        let first = offset / PAGE_SIZE;
        let last = (end - 1) / PAGE_SIZE;
        if let Some(bad) = (first..=last).find(|&i| !self.page_valid(i)) {
            return Err(XenError::errno(
                "xenforeignmemory_map",
                self.errs[bad].abs().max(1),
            ));
        }
        Ok(())
    }

    /// Copies bytes out of the mapping. The guest may change them concurrently;
    /// the copy is a snapshot of whatever was there.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        // SAFETY: range checked; the mapping is live for self's lifetime.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies bytes into the mapping (needs [`Prot::ReadWrite`]).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(XenError::invalid("mapping write", "mapping is read-only"));
        }
        self.check_range(offset, data.len())?;
        // SAFETY: range checked; writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// Makes the bytes at `offset` equal `data`, storing only the
    /// [`CHANGED_CHUNK`]-byte pieces that differ; returns how many bytes it
    /// stored (see [`copy_changed`]). Under software emulation that is
    /// faster than a plain copy of a page, and the pieces that did not
    /// change are not stored (a store into a frame holding guest code makes
    /// the emulator drop the code it translated there).
    pub fn write_changed(&mut self, offset: usize, data: &[u8]) -> Result<usize> {
        if !self.writable {
            return Err(XenError::invalid("mapping write", "mapping is read-only"));
        }
        self.check_range(offset, data.len())?;
        // SAFETY: range checked; the mapping is live and writable for
        // self's lifetime, and `data` is process memory outside it.
        let live =
            unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), data.len()) };
        Ok(copy_changed(live, data))
    }

    /// Reads a little-endian u64 at `offset` with one 8-byte load (atomic for
    /// aligned offsets, as page-table walks need).
    pub fn read_u64(&self, offset: usize) -> Result<u64> {
        self.check_range(offset, 8)?;
        let p = self.ptr.as_ptr().wrapping_add(offset);
        if offset % 8 == 0 {
            // SAFETY: range checked and aligned; volatile keeps it a single load.
            Ok(unsafe { std::ptr::read_volatile(p.cast::<u64>()) })
        } else {
            // SAFETY: range checked.
            Ok(unsafe { std::ptr::read_unaligned(p.cast::<u64>()) })
        }
    }
}

/// Bytes compared (and, when they differ, copied) at once by
/// [`Mapping::write_changed`].
pub const CHANGED_CHUNK: usize = 64;

/// Makes `dst` equal `src` (same length), storing only the
/// [`CHANGED_CHUNK`]-byte pieces that differ; returns the bytes stored.
/// Words are compared and copied inline, eight at a time: no `memcmp` or
/// `memcpy` call per piece, and never the `rep movsb` that glibc's
/// `memcpy` uses for a whole page, which software emulation runs a byte
/// at a time (in the lab, 2026-12-07: glibc's copy of a page 5.6 us, this
/// 0.9-1.0 us; an inlined `rep movsq` 0.9 us, but it stores every byte).
pub(crate) fn copy_changed(dst: &mut [u8], src: &[u8]) -> usize {
    const W: usize = 8;
    let word = |b: &[u8], i: usize| {
        u64::from_ne_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ])
    };
    let mut stored = 0;
    let mut d_chunks = dst.chunks_exact_mut(CHANGED_CHUNK);
    let mut s_chunks = src.chunks_exact(CHANGED_CHUNK);
    for (d, s) in d_chunks.by_ref().zip(s_chunks.by_ref()) {
        let mut diff = 0;
        for i in (0..CHANGED_CHUNK).step_by(W) {
            diff |= word(d, i) ^ word(s, i);
        }
        if diff != 0 {
            for i in (0..CHANGED_CHUNK).step_by(W) {
                d[i..i + W].copy_from_slice(&s[i..i + W]);
            }
            stored += CHANGED_CHUNK;
        }
    }
    let (d, s) = (d_chunks.into_remainder(), s_chunks.remainder());
    if d != s {
        d.copy_from_slice(s);
        stored += s.len();
    }
    stored
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/pages came from xenforeignmemory_map on this handle.
        unsafe {
            sys::xenforeignmemory_unmap(
                self.fmem.handle.0.as_ptr(),
                self.ptr.as_ptr().cast(),
                self.pages,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_changed_stores_only_the_pieces_that_differ() {
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut dst = src.clone();
        assert_eq!(copy_changed(&mut dst, &src), 0, "equal: nothing stored");
        dst[5] ^= 1;
        dst[130] ^= 0xff;
        dst[4095] = !dst[4095];
        assert_eq!(copy_changed(&mut dst, &src), 3 * CHANGED_CHUNK);
        assert_eq!(dst, src);
        // A length that is not a multiple of the chunk: the tail is a chunk too.
        let (a, mut b) = (vec![1u8; 100], vec![2u8; 100]);
        assert_eq!(copy_changed(&mut b, &a), 100);
        assert_eq!(a, b);
        assert_eq!(copy_changed(&mut [], &[]), 0);
    }
}
