//! Per-domain control calls: pause, unpause, destroy, debugging, memory size.

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result, XenError};

extern "C" {
    // Exported by libxenctrl 4.17 and 4.20 (XEN_DOMCTL_getpageframeinfo3)
    // but declared only in its private header.
    fn xc_get_pfn_type_batch(
        xch: *mut sys::xc_interface,
        dom: u32,
        num: libc::c_uint,
        arr: *mut sys::xen_pfn_t,
    ) -> libc::c_int;
}

/// What a machine frame is to a PV domain ([`XenCtrl::pv_frame_types`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvFrameType {
    /// Not the domain's (or broken / allocate-only).
    Absent,
    /// An ordinary page of the domain.
    Normal,
    /// One of the domain's page tables (dom0 may map it read-only only).
    PageTable,
}

/// Frames per `XEN_DOMCTL_getpageframeinfo3` call (Xen's limit).
pub const FRAME_TYPE_BATCH: usize = 1024;

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

    /// `XEN_DOMCTL_resumedomain` (what `xc_domain_resume` issues for HVM
    /// guests): takes back a shutdown (power-off, reboot, triple fault,
    /// crash) of a domain the toolstack kept (`on_*="preserve"`). Its vCPUs
    /// come back where they stopped and run once nobody holds a pause.
    /// See docs/xen-vmi.md#crashes-and-triple-faults
    pub fn domain_resume(&self, domid: u32) -> Result<()> {
        // SAFETY: an all-zero xen_domctl is a valid value (plain integers and unions).
        let mut dc: sys::xen_domctl = unsafe { std::mem::zeroed() };
        dc.cmd = sys::XEN_DOMCTL_resumedomain;
        dc.interface_version = sys::XEN_DOMCTL_INTERFACE_VERSION;
        dc.domain = u16::try_from(domid)
            .map_err(|_| XenError::invalid("xc_domctl(resumedomain)", "domid out of range"))?;
        // SAFETY: dc is a complete domctl; libxenctrl bounces it for the call.
        check("xc_domctl(resumedomain)", unsafe {
            sys::xc_domctl(self.raw(), &mut dc)
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

    /// `xc_maximum_ram_page`: the highest machine frame of RAM.
    /// See docs/xen-vmi.md#guest-memory
    pub fn maximum_ram_page(&self) -> Result<u64> {
        let mut max: libc::c_ulong = 0;
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_maximum_ram_page(self.raw(), &mut max) };
        check("xc_maximum_ram_page", rc)?;
        Ok(max as u64)
    }

    /// `XEN_DOMCTL_getpageframeinfo3` (`xc_get_pfn_type_batch`): the type of
    /// each machine frame in `mfns` (at most [`FRAME_TYPE_BATCH`]) for the
    /// PV domain `domid`; frames it does not own are [`PvFrameType::Absent`].
    /// See docs/xen-vmi.md#guest-memory
    pub fn pv_frame_types(&self, domid: u32, mfns: &[u64]) -> Result<Vec<PvFrameType>> {
        if mfns.len() > FRAME_TYPE_BATCH {
            return Err(XenError::invalid(
                "xc_get_pfn_type_batch",
                "more than 1024 frames",
            ));
        }
        let mut arr: Vec<sys::xen_pfn_t> = mfns.to_vec();
        // SAFETY: arr holds mfns.len() entries, read and written in place.
        let rc = unsafe {
            xc_get_pfn_type_batch(
                self.raw(),
                domid,
                arr.len() as libc::c_uint,
                arr.as_mut_ptr(),
            )
        };
        check("xc_get_pfn_type_batch", rc)?;
        const SHIFT: u64 = 28;
        Ok(arr
            .iter()
            .map(|&t| match (t >> SHIFT) & 0xf {
                0 => PvFrameType::Normal,
                1..=4 | 8..=12 => PvFrameType::PageTable,
                _ => PvFrameType::Absent,
            })
            .collect())
    }

    /// `xc_machphys_mfn_list`: the machine frames of the machine-to-phys
    /// table (M2P), one per 2 MiB extent; map each extent's 512 frames from
    /// `DOMID_XEN` to read it (`xc_map_m2p` does the same).
    /// See docs/xen-vmi.md#guest-memory
    pub fn machphys_mfn_list(&self) -> Result<Vec<u64>> {
        let max_mfn = self.maximum_ram_page()?;
        // One extent holds 2 MiB / 8 bytes = 2^18 entries; libxenctrl
        // fails unless asked for exactly as many as Xen has (as xc_map_m2p).
        let extents = (max_mfn * 8).div_ceil(1 << 21).max(1);
        let mut list: Vec<sys::xen_pfn_t> = vec![0; extents as usize];
        // SAFETY: list has `extents` entries.
        let rc = unsafe {
            sys::xc_machphys_mfn_list(self.raw(), extents as libc::c_ulong, list.as_mut_ptr())
        };
        check("xc_machphys_mfn_list", rc)?;
        Ok(list)
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
