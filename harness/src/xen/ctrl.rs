//! The `xc_interface` handle and domain enumeration.

use std::ptr::NonNull;
use std::sync::Arc;

use xen_sys as sys;

use super::error::{Result, XenError};

struct Handle(NonNull<sys::xc_interface>);

// SAFETY: libxenctrl handles may be used from any thread; calls on one handle
// are serialised by the library where needed (hypercall buffers are per call).
unsafe impl Send for Handle {}
// SAFETY: see above; xenprobe never relies on per-thread state of the handle.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from xc_interface_open and is closed once.
        unsafe {
            sys::xc_interface_close(self.0.as_ptr());
        }
    }
}

/// An open `xc_interface` (libxenctrl). Cheap to clone (shared handle).
#[derive(Clone)]
pub struct XenCtrl {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for XenCtrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenCtrl").finish_non_exhaustive()
    }
}

/// What `xc_domain_getinfo` says about one domain.
/// See docs/xen-vmi.md#domain-info
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u32,
    /// HVM container (HVM or PVH).
    pub hvm: bool,
    /// Emulation flags of the domain (`XEN_X86_EMU_*`); PVH has only the LAPIC.
    pub emulation_flags: u32,
    /// Paused by the toolstack/debugger (not just blocked).
    pub paused: bool,
    /// Shut down (see `shutdown_reason`).
    pub shutdown: bool,
    /// Crashed (shut down with reason crash).
    pub crashed: bool,
    /// Being destroyed.
    pub dying: bool,
    /// `xc_domain_setdebugging` is on.
    pub debugged: bool,
    /// Uses hardware-assisted paging.
    pub hap: bool,
    /// `SHUTDOWN_*` reason, meaningful when `shutdown` is set.
    pub shutdown_reason: u32,
    /// Pages currently allocated.
    pub nr_pages: u64,
    /// Highest vCPU id.
    pub max_vcpu_id: u32,
    /// Online vCPUs.
    pub nr_online_vcpus: u32,
    /// Memory limit in KiB.
    pub max_memkb: u64,
    /// Machine frame of the domain's shared-info page (written by Xen).
    pub shared_info_frame: u64,
}

impl DomainInfo {
    fn from_raw(i: &sys::xc_dominfo_t) -> Self {
        Self {
            domid: i.domid,
            hvm: i.hvm() != 0,
            emulation_flags: i.arch_config.emulation_flags,
            paused: i.paused() != 0,
            shutdown: i.shutdown() != 0,
            crashed: i.crashed() != 0,
            dying: i.dying() != 0,
            debugged: i.debugged() != 0,
            hap: i.hap() != 0,
            shutdown_reason: i.shutdown_reason,
            nr_pages: i.nr_pages,
            max_vcpu_id: i.max_vcpu_id,
            nr_online_vcpus: i.nr_online_vcpus,
            max_memkb: i.max_memkb,
            shared_info_frame: i.shared_info_frame,
        }
    }

    /// PVH: an HVM container that emulates nothing but the local APIC.
    pub fn is_pvh(&self) -> bool {
        self.hvm && self.emulation_flags & sys::XEN_X86_EMU_ALL == sys::XEN_X86_EMU_LAPIC
    }
}

impl XenCtrl {
    /// Opens libxenctrl (`xc_interface_open`). Needs `/dev/xen/privcmd` and root.
    /// See docs/xen-vmi.md#handles
    pub fn open() -> Result<Self> {
        // SAFETY: NULL loggers select the library defaults; flags 0.
        let p = unsafe { sys::xc_interface_open(std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        let handle = NonNull::new(p).ok_or_else(|| XenError::last("xc_interface_open"))?;
        Ok(Self {
            handle: Arc::new(Handle(handle)),
        })
    }

    pub(crate) fn raw(&self) -> *mut sys::xc_interface {
        self.handle.0.as_ptr()
    }

    /// `xc_domain_getinfo` for exactly `domid`.
    /// See docs/xen-vmi.md#domain-info
    pub fn domain_info(&self, domid: u32) -> Result<DomainInfo> {
        let mut info = sys::xc_dominfo_t::default();
        // SAFETY: one xc_dominfo_t of space for max_doms = 1.
        let n = unsafe { sys::xc_domain_getinfo(self.raw(), domid, 1, &mut info) };
        if n < 0 {
            return Err(XenError::last("xc_domain_getinfo"));
        }
        if n != 1 || info.domid != domid {
            return Err(XenError::errno("xc_domain_getinfo", libc::ESRCH));
        }
        Ok(DomainInfo::from_raw(&info))
    }

    /// All domains (`xc_domain_getinfo` in batches), dom0 included.
    /// See docs/xen-vmi.md#domain-info
    pub fn domains(&self) -> Result<Vec<DomainInfo>> {
        const BATCH: usize = 64;
        let mut out = Vec::new();
        let mut next = 0u32;
        loop {
            let mut buf = vec![sys::xc_dominfo_t::default(); BATCH];
            // SAFETY: buf has BATCH entries.
            let n =
                unsafe { sys::xc_domain_getinfo(self.raw(), next, BATCH as u32, buf.as_mut_ptr()) };
            if n < 0 {
                return Err(XenError::last("xc_domain_getinfo"));
            }
            let n = n as usize;
            out.extend(buf[..n].iter().map(DomainInfo::from_raw));
            match buf[..n].last() {
                Some(last) if n == BATCH => next = last.domid + 1,
                _ => break,
            }
        }
        Ok(out)
    }
}
