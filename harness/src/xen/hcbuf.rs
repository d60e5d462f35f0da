//! Hypercall-safe memory from libxc (`xc_hypercall_buffer_alloc`): pages
//! locked for the hypervisor to read and write during a hypercall.

use std::ptr::NonNull;

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{Result, XenError};

/// A zeroed hypercall buffer of at least `size` bytes, freed on drop.
pub(crate) struct HypercallBuffer {
    xc: XenCtrl,
    desc: Box<sys::xc_hypercall_buffer_t>,
    ptr: NonNull<u8>,
}

// SAFETY: the buffer is process memory owned by this value.
unsafe impl Send for HypercallBuffer {}

impl HypercallBuffer {
    /// Allocates `size` bytes (at least one).
    pub(crate) fn new(xc: &XenCtrl, size: usize) -> Result<Self> {
        let mut desc = Box::new(sys::xc_hypercall_buffer_t {
            hbuf: std::ptr::null_mut(),
            param_shadow: std::ptr::null_mut(),
            dir: 0,
            ubuf: usize::MAX as *mut libc::c_void, // HYPERCALL_BUFFER_INIT_NO_BOUNCE
            sz: 0,
        });
        // SAFETY: desc is a fresh, unbounced hypercall buffer descriptor.
        let p = unsafe { sys::xc__hypercall_buffer_alloc(xc.raw(), &mut *desc, size.max(1)) };
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| XenError::last("xc_hypercall_buffer_alloc"))?;
        Ok(Self {
            xc: xc.clone(),
            desc,
            ptr,
        })
    }

    /// The buffer's first byte (libxc zeroed it at allocation).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for HypercallBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by xc__hypercall_buffer_alloc on this handle.
        unsafe { sys::xc__hypercall_buffer_free(self.xc.raw(), &mut *self.desc) };
    }
}
