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

    /// Makes the bytes at `offset` equal `data`, storing only the 8-byte
    /// words that differ; returns how many it stored. Under software
    /// emulation a load is much cheaper than a store (and far cheaper than
    /// the `rep movsb` a large `memcpy` becomes), and a restored page
    /// usually differs from its saved copy in a few words.
    pub fn write_changed(&mut self, offset: usize, data: &[u8]) -> Result<usize> {
        if !self.writable {
            return Err(XenError::invalid("mapping write", "mapping is read-only"));
        }
        self.check_range(offset, data.len())?;
        let base = self.ptr.as_ptr().wrapping_add(offset);
        let mut stored = 0;
        let mut words = data.chunks_exact(8);
        for (i, w) in words.by_ref().enumerate() {
            let want = u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
            let p = base.wrapping_add(i * 8).cast::<u64>();
            // SAFETY: range checked; unaligned word access inside the mapping.
            unsafe {
                if p.read_unaligned() != want {
                    p.write_unaligned(want);
                    stored += 1;
                }
            }
        }
        let tail = data.len() - words.remainder().len();
        for (i, &b) in words.remainder().iter().enumerate() {
            let p = base.wrapping_add(tail + i);
            // SAFETY: range checked.
            unsafe {
                if p.read() != b {
                    p.write(b);
                    stored += 1;
                }
            }
        }
        Ok(stored)
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
