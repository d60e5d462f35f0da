//! The `xc_interface` handle and domain enumeration.

use std::ptr::NonNull;
use std::sync::Arc;

use xen_sys as sys;

use super::error::{check, Result, XenError};

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

/// What Xen's domain info (`xc_domaininfo_t`) says about one domain.
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
    /// Shut down for a reason other than a crash (see `shutdown_reason`).
    pub shutdown: bool,
    /// Crashed (shut down with reason crash).
    pub crashed: bool,
    /// Being destroyed.
    pub dying: bool,
    /// `xc_domain_setdebugging` is on.
    pub debugged: bool,
    /// Uses hardware-assisted paging.
    pub hap: bool,
    /// `SHUTDOWN_*` reason, meaningful when `shutdown` or `crashed` is set.
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
    /// A controller pause holds a live guest: paused, and neither shut down
    /// nor dying (xl pauses a guest that shut down to destroy it).
    pub fn held_paused(&self) -> bool {
        self.paused && !self.shutdown && !self.crashed && !self.dying
    }

    /// Decodes `XEN_DOMCTL_getdomaininfo`'s record as 4.17's
    /// `xc_domain_getinfo` did: a crash is `crashed`, not `shutdown`.
    fn from_raw(i: &sys::xc_domaininfo_t) -> Self {
        let flag = |f: u32| i.flags & f != 0;
        let shutdown_reason =
            (i.flags >> sys::XEN_DOMINF_shutdownshift) & sys::XEN_DOMINF_shutdownmask;
        let down = flag(sys::XEN_DOMINF_shutdown);
        let crashed = down && shutdown_reason == sys::SHUTDOWN_crash;
        Self {
            domid: u32::from(i.domain),
            hvm: flag(sys::XEN_DOMINF_hvm_guest),
            emulation_flags: i.arch_config.emulation_flags,
            paused: flag(sys::XEN_DOMINF_paused),
            shutdown: down && !crashed,
            crashed,
            dying: flag(sys::XEN_DOMINF_dying),
            debugged: flag(sys::XEN_DOMINF_debugged),
            hap: flag(sys::XEN_DOMINF_hap),
            shutdown_reason,
            nr_pages: i.tot_pages,
            max_vcpu_id: i.max_vcpu_id,
            nr_online_vcpus: i.nr_online_vcpus,
            max_memkb: i.max_pages << (super::PAGE_SHIFT - 10),
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

    /// The domain info of exactly `domid` (`xc_domain_getinfo_single`; on
    /// 4.17, which lacks it, `xc_domain_getinfolist` from `domid`).
    /// See docs/xen-vmi.md#domain-info
    pub fn domain_info(&self, domid: u32) -> Result<DomainInfo> {
        let mut info = sys::xc_domaininfo_t::default();
        #[cfg(xen_4_18)]
        {
            // SAFETY: one xc_domaininfo_t to fill.
            let rc = unsafe { sys::xc_domain_getinfo_single(self.raw(), domid, &mut info) };
            check("xc_domain_getinfo_single", rc)?;
        }
        #[cfg(not(xen_4_18))]
        {
            // SAFETY: one xc_domaininfo_t of space for max_domains = 1.
            let n = unsafe { sys::xc_domain_getinfolist(self.raw(), domid, 1, &mut info) };
            // It answers with the first domain at or after `domid`.
            if check("xc_domain_getinfolist", n)? != 1 || u32::from(info.domain) != domid {
                return Err(XenError::errno("xc_domain_getinfolist", libc::ESRCH));
            }
        }
        Ok(DomainInfo::from_raw(&info))
    }

    /// All domains (`xc_domain_getinfolist` in batches), dom0 included.
    /// See docs/xen-vmi.md#domain-info
    pub fn domains(&self) -> Result<Vec<DomainInfo>> {
        const BATCH: usize = 64;
        let mut out = Vec::new();
        let mut next = 0u32;
        let mut buf = vec![sys::xc_domaininfo_t::default(); BATCH];
        loop {
            // SAFETY: buf has BATCH entries.
            let n = unsafe {
                sys::xc_domain_getinfolist(self.raw(), next, BATCH as u32, buf.as_mut_ptr())
            };
            let n = (check("xc_domain_getinfolist", n)? as usize).min(BATCH);
            out.extend(buf[..n].iter().map(DomainInfo::from_raw));
            match buf[..n].last() {
                Some(last) if n == BATCH => next = u32::from(last.domain) + 1,
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(flags: u32) -> sys::xc_domaininfo_t {
        let mut i = sys::xc_domaininfo_t {
            domain: 7,
            flags,
            tot_pages: 100,
            max_pages: 256,
            shared_info_frame: 0x1234,
            nr_online_vcpus: 2,
            max_vcpu_id: 1,
            ..Default::default()
        };
        i.arch_config.emulation_flags = sys::XEN_X86_EMU_LAPIC;
        i
    }

    #[test]
    fn a_pause_holds_only_a_live_guest() {
        let paused = sys::XEN_DOMINF_paused;
        assert!(DomainInfo::from_raw(&raw(paused)).held_paused());
        assert!(!DomainInfo::from_raw(&raw(0)).held_paused());
        // xl pauses a guest that powered off before destroying it.
        let off = DomainInfo::from_raw(&raw(paused | sys::XEN_DOMINF_shutdown));
        assert!(off.paused && !off.held_paused());
        let crash =
            (sys::SHUTDOWN_crash << sys::XEN_DOMINF_shutdownshift) | sys::XEN_DOMINF_shutdown;
        assert!(!DomainInfo::from_raw(&raw(paused | crash)).held_paused());
        assert!(!DomainInfo::from_raw(&raw(paused | sys::XEN_DOMINF_dying)).held_paused());
    }

    #[test]
    fn decodes_domain_info() {
        let d = DomainInfo::from_raw(&raw(sys::XEN_DOMINF_hvm_guest
            | sys::XEN_DOMINF_paused
            | sys::XEN_DOMINF_hap));
        assert_eq!(d.domid, 7);
        assert!(d.hvm && d.paused && d.hap && d.is_pvh());
        assert!(!d.shutdown && !d.crashed && !d.dying && !d.debugged);
        assert_eq!((d.nr_pages, d.max_memkb), (100, 1024));
        assert_eq!((d.nr_online_vcpus, d.max_vcpu_id), (2, 1));
        assert_eq!(d.shared_info_frame, 0x1234);
    }

    #[test]
    fn crash_is_not_shutdown() {
        let reason = |r: u32| sys::XEN_DOMINF_shutdown | (r << sys::XEN_DOMINF_shutdownshift);
        let crashed = DomainInfo::from_raw(&raw(reason(sys::SHUTDOWN_crash)));
        assert!(crashed.crashed && !crashed.shutdown);
        assert_eq!(crashed.shutdown_reason, sys::SHUTDOWN_crash);
        let off = DomainInfo::from_raw(&raw(reason(sys::SHUTDOWN_poweroff)));
        assert!(off.shutdown && !off.crashed);
        assert_eq!(off.shutdown_reason, sys::SHUTDOWN_poweroff);
    }
}
