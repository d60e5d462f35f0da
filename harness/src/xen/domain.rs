//! Per-domain control calls: pause, unpause, destroy, debugging, memory size.

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result, XenError};

impl XenCtrl {
    /// `xc_domain_pause`: the domain stops until a matching unpause (counted).
    /// See docs/xen-vmi.md#pause-and-unpause
    pub fn domain_pause(&self, domid: u32) -> Result<()> {
        // SAFETY: plain hypercall wrapper on a valid handle.
        check("xc_domain_pause", unsafe {
            sys::xc_domain_pause(self.raw(), domid)
        })?;
        Ok(())
    }

    /// `xc_domain_unpause`.
    /// See docs/xen-vmi.md#pause-and-unpause
    pub fn domain_unpause(&self, domid: u32) -> Result<()> {
        // SAFETY: plain hypercall wrapper on a valid handle.
        check("xc_domain_unpause", unsafe {
            sys::xc_domain_unpause(self.raw(), domid)
        })?;
        Ok(())
    }

    /// `xc_domain_destroy`.
    /// See docs/xen-vmi.md#pause-and-unpause
    pub fn domain_destroy(&self, domid: u32) -> Result<()> {
        // SAFETY: plain hypercall wrapper on a valid handle.
        check("xc_domain_destroy", unsafe {
            sys::xc_domain_destroy(self.raw(), domid)
        })?;
        Ok(())
    }

    /// `xc_domain_setdebugging`: with it on, a PV guest's int3 and trap-flag
    /// traps pause the domain instead of reaching the guest (hypervisors built
    /// with `CONFIG_GDBSX` only).
    /// See docs/xen-vmi.md#pv-debugging-gdbsx
    pub fn domain_set_debugging(&self, domid: u32, enable: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper on a valid handle.
        let rc = unsafe { sys::xc_domain_setdebugging(self.raw(), domid, u32::from(enable)) };
        check("xc_domain_setdebugging", rc)?;
        Ok(())
    }

    /// `xc_domain_debug_control` with `SINGLE_STEP_ON/OFF` (HVM, Intel only).
    /// See docs/xen-vmi.md#single-stepping
    pub fn domain_debug_single_step(&self, domid: u32, vcpu: u32, on: bool) -> Result<()> {
        let op = if on {
            sys::XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_ON
        } else {
            sys::XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_OFF
        };
        // SAFETY: plain hypercall wrapper on a valid handle.
        let rc = unsafe { sys::xc_domain_debug_control(self.raw(), domid, op, vcpu) };
        check("xc_domain_debug_control", rc)?;
        Ok(())
    }

    /// `xc_domain_maximum_gpfn`: the highest guest frame number in the p2m.
    /// See docs/xen-vmi.md#guest-memory
    pub fn domain_maximum_gpfn(&self, domid: u32) -> Result<u64> {
        let mut gpfn: sys::xen_pfn_t = 0;
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_domain_maximum_gpfn(self.raw(), domid, &mut gpfn) };
        check("xc_domain_maximum_gpfn", rc)?;
        Ok(gpfn)
    }

    /// `xc_domain_nr_gpfns`: size of the guest's physical address space in frames.
    /// See docs/xen-vmi.md#guest-memory
    pub fn domain_nr_gpfns(&self, domid: u32) -> Result<u64> {
        let mut n: sys::xen_pfn_t = 0;
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_domain_nr_gpfns(self.raw(), domid, &mut n) };
        check("xc_domain_nr_gpfns", rc)?;
        Ok(n)
    }

    /// `xc_translate_foreign_address`: libxenctrl's own page walk (used to
    /// cross-check xenprobe's). Returns the guest frame number.
    /// See docs/xen-vmi.md#guest-memory
    pub fn translate_foreign_address(&self, domid: u32, vcpu: u32, va: u64) -> Result<u64> {
        // SAFETY: plain library call.
        let mfn = unsafe {
            sys::xc_translate_foreign_address(self.raw(), domid, vcpu as libc::c_int, va)
        };
        if mfn == 0 {
            return Err(XenError::last("xc_translate_foreign_address"));
        }
        Ok(mfn)
    }
}
