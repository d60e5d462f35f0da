//! Memory sharing: VM forks (`xc_memshr_fork`, `xc_memshr_fork_reset`).
//! Xen 4.17 allows forks on Intel VT-x with HAP only.

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result, XenError};

impl XenCtrl {
    /// `xc_memshr_control`: enable memory sharing on a domain.
    /// See docs/xen-vmi.md#vm-forks
    pub fn memshr_control(&self, domid: u32, enable: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        check("xc_memshr_control", unsafe {
            sys::xc_memshr_control(self.raw(), domid, enable.into())
        })?;
        Ok(())
    }

    /// Creates an empty HVM domain shaped like `parent` (same vCPU count,
    /// PVH or HVM emulation) to receive a fork; returns its domid.
    /// See docs/xen-vmi.md#vm-forks
    pub fn fork_shell_create(&self, parent: &super::DomainInfo) -> Result<u32> {
        let mut cfg = sys::xen_domctl_createdomain {
            flags: sys::XEN_DOMCTL_CDF_hvm | sys::XEN_DOMCTL_CDF_hap,
            max_vcpus: parent.max_vcpu_id + 1,
            max_evtchn_port: 1023,
            max_grant_frames: 64,
            max_maptrack_frames: 1024,
            grant_opts: 1, // XEN_DOMCTL_GRANT_version(1)
            ..Default::default()
        };
        cfg.arch.emulation_flags = parent.emulation_flags;
        let mut domid = 0u32;
        // SAFETY: cfg is a complete createdomain structure; out pointer to a local.
        let rc = unsafe { sys::xc_domain_create(self.raw(), &mut domid, &mut cfg) };
        check("xc_domain_create", rc)?;
        if domid == 0 {
            return Err(XenError::invalid("xc_domain_create", "returned domid 0"));
        }
        Ok(domid)
    }

    /// `xc_memshr_fork`: make `child` (an empty shell) a fork of the paused `parent`.
    /// See docs/xen-vmi.md#vm-forks
    pub fn memshr_fork(&self, parent: u32, child: u32) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        check("xc_memshr_fork", unsafe {
            sys::xc_memshr_fork(self.raw(), parent, child, true, true)
        })?;
        Ok(())
    }

    /// `xc_memshr_fork_reset`: reset a fork's vCPU state and memory to the parent's.
    /// See docs/xen-vmi.md#vm-forks
    pub fn memshr_fork_reset(&self, child: u32) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        check("xc_memshr_fork_reset", unsafe {
            sys::xc_memshr_fork_reset(self.raw(), child, true, true)
        })?;
        Ok(())
    }
}
