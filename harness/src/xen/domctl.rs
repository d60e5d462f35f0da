//! Domctls issued straight through privcmd from one hypercall buffer kept
//! for many calls.
//!
//! libxc's `do_domctl` takes a hypercall buffer page for every call, zeroes
//! all 4 KiB of it and gives it back: under QEMU's emulation the zeroing
//! (`rep stosb`, a byte at a time) alone costs about 5 us, as much again as
//! the rest of the call's user-space work. A restore's log-dirty PEEK is a
//! domctl on every run of the fuzz loop, so it goes through here
//! ([`super::DirtyBitmap`]); everything else uses libxc.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{Result, XenError};

/// `privcmd_hypercall_t`: a hypercall number and its five arguments.
#[repr(C)]
struct PrivcmdHypercall {
    op: u64,
    arg: [u64; 5],
}

/// `_IOC(_IOC_NONE, 'P', 0, sizeof(privcmd_hypercall_t))`.
const IOCTL_PRIVCMD_HYPERCALL: libc::c_ulong =
    (b'P' as libc::c_ulong) << 8 | (size_of::<PrivcmdHypercall>() as libc::c_ulong) << 16;

/// `__HYPERVISOR_domctl`.
const HYPERVISOR_DOMCTL: u64 = 36;

/// A `xen_domctl` in hypercall-safe memory and a privcmd descriptor to
/// issue it with.
pub(crate) struct Domctl {
    xc: XenCtrl,
    buf: Box<sys::xc_hypercall_buffer_t>,
    dc: NonNull<sys::xen_domctl>,
    privcmd: OwnedFd,
}

// SAFETY: the buffer is process memory owned by this value.
unsafe impl Send for Domctl {}

impl Domctl {
    /// Allocates the buffer and opens `/dev/xen/privcmd`.
    pub(crate) fn new(xc: &XenCtrl) -> Result<Self> {
        let mut buf = Box::new(sys::xc_hypercall_buffer_t {
            hbuf: std::ptr::null_mut(),
            param_shadow: std::ptr::null_mut(),
            dir: 0,
            ubuf: usize::MAX as *mut libc::c_void, // HYPERCALL_BUFFER_INIT_NO_BOUNCE
            sz: 0,
        });
        let size = size_of::<sys::xen_domctl>();
        // SAFETY: buf is a fresh, unbounced hypercall buffer descriptor.
        let p = unsafe { sys::xc__hypercall_buffer_alloc(xc.raw(), &mut *buf, size) };
        let Some(dc) = NonNull::new(p.cast::<sys::xen_domctl>()) else {
            return Err(XenError::last("xc_hypercall_buffer_alloc"));
        };
        // From here on `Drop` frees the buffer.
        let path = c"/dev/xen/privcmd";
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let err = XenError::last("open(/dev/xen/privcmd)");
            // SAFETY: allocated above on this handle.
            unsafe { sys::xc__hypercall_buffer_free(xc.raw(), &mut *buf) };
            return Err(err);
        }
        Ok(Self {
            xc: xc.clone(),
            buf,
            dc,
            // SAFETY: fd was just opened and is owned by nothing else.
            privcmd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Issues domctl `cmd` on `domid` with the payload `fill` writes into
    /// the zeroed union, and returns the domctl as Xen left it (the call's
    /// results). `name` names the call in an error, which carries its errno.
    pub(crate) fn call(
        &mut self,
        name: &'static str,
        domid: u32,
        cmd: u32,
        fill: impl FnOnce(&mut sys::xen_domctl__bindgen_ty_1),
    ) -> Result<&sys::xen_domctl> {
        let domain = sys::domid_t::try_from(domid)
            .map_err(|_| XenError::invalid(name, format!("no such domain id: {domid}")))?;
        // SAFETY: dc points to the buffer's xen_domctl, owned by self and
        // not shared with anyone while this borrow lasts.
        let dc = unsafe {
            std::ptr::write_bytes(self.dc.as_ptr(), 0, 1);
            &mut *self.dc.as_ptr()
        };
        dc.cmd = cmd;
        dc.interface_version = sys::XEN_DOMCTL_INTERFACE_VERSION;
        dc.domain = domain;
        fill(&mut dc.u);
        let mut hc = PrivcmdHypercall {
            op: HYPERVISOR_DOMCTL,
            arg: [self.dc.as_ptr() as u64, 0, 0, 0, 0],
        };
        // SAFETY: privcmd's hypercall ioctl with a hypercall-safe argument.
        let rc = unsafe { libc::ioctl(self.privcmd.as_raw_fd(), IOCTL_PRIVCMD_HYPERCALL, &mut hc) };
        if rc < 0 {
            return Err(XenError::last(name));
        }
        // SAFETY: as above; Xen wrote its results into the same memory.
        Ok(unsafe { &*self.dc.as_ptr() })
    }
}

impl Drop for Domctl {
    fn drop(&mut self) {
        // SAFETY: allocated by xc__hypercall_buffer_alloc on this handle.
        unsafe { sys::xc__hypercall_buffer_free(self.xc.raw(), &mut *self.buf) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hypercall_ioctl_number_is_linux_privcmds() {
        // include/uapi/xen/privcmd.h: _IOC(_IOC_NONE, 'P', 0, 48).
        assert_eq!(IOCTL_PRIVCMD_HYPERCALL, 0x305000);
    }
}
