//! mem_access: per-frame access permissions in the p2m (`xc_set_mem_access`,
//! `xc_get_mem_access`); violations arrive on the vm_event ring as
//! `VM_EVENT_REASON_MEM_ACCESS`. Xen 4.17 allows it for HVM/PVH guests with
//! HAP on Intel VT-x (EPT) only: elsewhere the calls fail with EOPNOTSUPP.

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result};

/// Access a guest may make to a frame (`xenmem_access_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemAccess {
    /// No access.
    None,
    /// Read only.
    R,
    /// Read and execute (writes trap).
    Rx,
    /// Execute only (reads and writes trap).
    X,
    /// Everything (the default).
    Rwx,
}

impl MemAccess {
    fn raw(self) -> sys::xenmem_access_t {
        match self {
            MemAccess::None => sys::xenmem_access_t_XENMEM_access_n,
            MemAccess::R => sys::xenmem_access_t_XENMEM_access_r,
            MemAccess::Rx => sys::xenmem_access_t_XENMEM_access_rx,
            MemAccess::X => sys::xenmem_access_t_XENMEM_access_x,
            MemAccess::Rwx => sys::xenmem_access_t_XENMEM_access_rwx,
        }
    }
}

/// What a `VM_EVENT_REASON_MEM_ACCESS` request reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccessHit {
    /// Guest frame.
    pub gfn: u64,
    /// Offset in the frame.
    pub offset: u64,
    /// Guest linear address, when `gla_valid`.
    pub gla: u64,
    /// The linear address is known.
    pub gla_valid: bool,
    /// The access read / wrote / executed.
    pub read: bool,
    /// See `read`.
    pub write: bool,
    /// See `read`.
    pub exec: bool,
}

impl MemAccessHit {
    /// Decodes the `mem_access` member of a vm_event request.
    pub(crate) fn from_raw(m: &sys::vm_event_mem_access) -> Self {
        Self {
            gfn: m.gfn,
            offset: m.offset,
            gla: m.gla,
            gla_valid: m.flags & sys::MEM_ACCESS_GLA_VALID != 0,
            read: m.flags & sys::MEM_ACCESS_R != 0,
            write: m.flags & sys::MEM_ACCESS_W != 0,
            exec: m.flags & sys::MEM_ACCESS_X != 0,
        }
    }
}

impl XenCtrl {
    /// `xc_set_mem_access`: sets the access of `nr` frames from `first_gfn`.
    /// Needs the monitor ring enabled for the domain to report violations.
    pub fn set_mem_access(
        &self,
        domid: u32,
        access: MemAccess,
        first_gfn: u64,
        nr: u32,
    ) -> Result<()> {
        // SAFETY: plain hypercall wrapper on a valid handle.
        let rc = unsafe { sys::xc_set_mem_access(self.raw(), domid, access.raw(), first_gfn, nr) };
        check("xc_set_mem_access", rc)?;
        Ok(())
    }
}

impl super::monitor::VmEventRequest {
    /// The mem_access details of a `VM_EVENT_REASON_MEM_ACCESS` request.
    pub fn mem_access(&self) -> Option<MemAccessHit> {
        (self.raw.reason == sys::VM_EVENT_REASON_MEM_ACCESS).then(|| {
            // SAFETY: for this reason Xen fills the mem_access member.
            MemAccessHit::from_raw(unsafe { &self.raw.u.mem_access })
        })
    }
}
