//! Domctls issued straight through privcmd from one hypercall buffer kept
//! for many calls.
//!
//! libxc's `do_domctl` takes a hypercall buffer page for every call, zeroes
//! all 4 KiB of it (`rep stosb`: a byte at a time under QEMU's emulation),
//! bounces the domctl through it and gives it back: 12-15 us of a PEEK's
//! 67-70 us in the lab. A restore's log-dirty PEEK is a domctl on every run
//! of the fuzz loop, so it goes through here ([`super::DirtyBitmap`]);
//! everything else uses libxc.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{Result, XenError};
use super::hcbuf::HypercallBuffer;

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
    /// One `xen_domctl`.
    buf: HypercallBuffer,
    privcmd: OwnedFd,
}

impl Domctl {
    /// Allocates the buffer and opens `/dev/xen/privcmd`.
    pub(crate) fn new(xc: &XenCtrl) -> Result<Self> {
        let buf = HypercallBuffer::new(xc, size_of::<sys::xen_domctl>())?;
        let path = c"/dev/xen/privcmd";
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(XenError::last("open(/dev/xen/privcmd)"));
        }
        Ok(Self {
            buf,
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
        let p = self.buf.as_ptr().cast::<sys::xen_domctl>();
        // SAFETY: the buffer holds one xen_domctl, owned by self and not
        // shared with anyone while this borrow lasts.
        let dc = unsafe {
            std::ptr::write_bytes(p, 0, 1);
            &mut *p
        };
        dc.cmd = cmd;
        dc.interface_version = sys::XEN_DOMCTL_INTERFACE_VERSION;
        dc.domain = domain;
        fill(&mut dc.u);
        let mut hc = PrivcmdHypercall {
            op: HYPERVISOR_DOMCTL,
            arg: [p as u64, 0, 0, 0, 0],
        };
        // SAFETY: privcmd's hypercall ioctl with a hypercall-safe argument.
        let rc = unsafe { libc::ioctl(self.privcmd.as_raw_fd(), IOCTL_PRIVCMD_HYPERCALL, &mut hc) };
        if rc < 0 {
            return Err(XenError::last(name));
        }
        // SAFETY: as above; Xen wrote its results into the same memory.
        Ok(unsafe { &*p })
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
