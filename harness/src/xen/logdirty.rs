//! Log-dirty tracking (`xc_shadow_control`; the bitmap's PEEK and CLEAN
//! as a domctl of their own, see [`super::domctl`]).
//!
//! HVM/PVH with HAP works on the stock hypervisor; PV needs shadow paging
//! (`XEN_SYSCTL_PHYSCAP_shadow`, the lab's debug build).

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::domctl::Domctl;
use super::error::{check, Result};
use super::hcbuf::HypercallBuffer;

/// Counters returned with a CLEAN/PEEK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogDirtyStats {
    /// Faults taken since the last CLEAN.
    pub fault_count: u32,
    /// Pages made dirty since the last CLEAN: all of the domain's, also
    /// those beyond the bitmap's size (Xen counts each page once, when it
    /// first marks it).
    pub dirty_count: u32,
}

impl XenCtrl {
    fn shadow_op(&self, domid: u32, op: u32, name: &'static str) -> Result<()> {
        // SAFETY: NULL mb is allowed for ops that do not take an allocation.
        let rc = unsafe { sys::xc_shadow_control(self.raw(), domid, op, std::ptr::null_mut(), 0) };
        check(name, rc)?;
        Ok(())
    }

    /// `XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY`.
    /// See docs/xen-vmi.md#log-dirty
    pub fn logdirty_enable(&self, domid: u32) -> Result<()> {
        self.shadow_op(
            domid,
            sys::XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY,
            "xc_shadow_control(ENABLE_LOGDIRTY)",
        )
    }

    /// `XEN_DOMCTL_SHADOW_OP_OFF`.
    /// See docs/xen-vmi.md#log-dirty
    pub fn logdirty_off(&self, domid: u32) -> Result<()> {
        self.shadow_op(
            domid,
            sys::XEN_DOMCTL_SHADOW_OP_OFF,
            "xc_shadow_control(OFF)",
        )
    }
}

/// A dirty bitmap in hypercall-safe memory, one bit per guest frame.
/// See docs/xen-vmi.md#log-dirty
pub struct DirtyBitmap {
    domid: u32,
    /// `div_ceil(pages, 64)` words (at least one).
    buf: HypercallBuffer,
    pages: u64,
    /// The PEEK and CLEAN calls.
    domctl: Domctl,
}

impl std::fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyBitmap")
            .field("domid", &self.domid)
            .field("pages", &self.pages)
            .finish()
    }
}

impl DirtyBitmap {
    /// Allocates a bitmap for frames `0..pages` of `domid`.
    pub fn new(xc: &XenCtrl, domid: u32, pages: u64) -> Result<Self> {
        let bytes = (pages.div_ceil(64) as usize).max(1) * 8;
        Ok(Self {
            domid,
            buf: HypercallBuffer::new(xc, bytes)?,
            pages,
            domctl: Domctl::new(xc)?,
        })
    }

    /// Number of frames covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    fn op(&mut self, sop: u32, name: &'static str) -> Result<LogDirtyStats> {
        let (bitmap, pages) = (self.buf.as_ptr(), self.pages);
        let dc = self
            .domctl
            .call(name, self.domid, sys::XEN_DOMCTL_shadow_op, |u| {
                // SAFETY: writing the union's shadow_op member, whose
                // fields are plain integers and a pointer.
                let op = unsafe { &mut u.shadow_op };
                op.op = sop;
                op.dirty_bitmap.p = bitmap;
                op.pages = pages;
            })?;
        // SAFETY: Xen answered a shadow_op; its results are in that member.
        let stats = unsafe { dc.u.shadow_op.stats };
        Ok(LogDirtyStats {
            fault_count: stats.fault_count,
            dirty_count: stats.dirty_count,
        })
    }

    /// `SHADOW_OP_CLEAN`: fetch the bitmap and reset tracking.
    /// See docs/xen-vmi.md#log-dirty
    pub fn clean(&mut self) -> Result<LogDirtyStats> {
        self.op(sys::XEN_DOMCTL_SHADOW_OP_CLEAN, "domctl shadow_op(CLEAN)")
    }

    /// `SHADOW_OP_PEEK`: fetch the bitmap without resetting.
    /// See docs/xen-vmi.md#log-dirty
    pub fn peek(&mut self) -> Result<LogDirtyStats> {
        self.op(sys::XEN_DOMCTL_SHADOW_OP_PEEK, "domctl shadow_op(PEEK)")
    }

    fn words(&self) -> &[u64] {
        // SAFETY: the buffer holds div_ceil(pages, 64) words (at least one).
        unsafe {
            std::slice::from_raw_parts(
                self.buf.as_ptr().cast::<u64>(),
                (self.pages.div_ceil(64) as usize).max(1),
            )
        }
    }

    /// Whether frame `pfn` was dirty in the last CLEAN/PEEK.
    pub fn is_dirty(&self, pfn: u64) -> bool {
        pfn < self.pages && self.words()[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    /// Frames marked dirty in the last CLEAN/PEEK.
    pub fn dirty_pfns(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.dirty_pfns_into(&mut out);
        out
    }

    /// Appends the frames marked dirty in the last CLEAN/PEEK to `out`
    /// (no allocation when `out` has room).
    pub fn dirty_pfns_into(&self, out: &mut Vec<u64>) {
        for (i, &w) in self.words().iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = w.trailing_zeros() as u64;
                let pfn = i as u64 * 64 + bit;
                if pfn < self.pages {
                    out.push(pfn);
                }
                w &= w - 1;
            }
        }
    }
}
