//! Minimal xenstore client (libxenstore): read a key.

use std::ffi::CString;
use std::ptr::NonNull;

use xen_sys as sys;

use super::error::{Result, XenError};

/// An open xenstore connection; closed on drop.
pub struct XenStore {
    h: NonNull<sys::xs_handle>,
}

impl std::fmt::Debug for XenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenStore").finish_non_exhaustive()
    }
}

impl XenStore {
    /// `xs_open(0)`.
    /// See docs/xen-vmi.md#xenstore
    pub fn open() -> Result<Self> {
        // SAFETY: flags 0.
        let p = unsafe { sys::xs_open(0) };
        let h = NonNull::new(p).ok_or_else(|| XenError::last("xs_open"))?;
        Ok(Self { h })
    }

    /// `xs_read`: the value at `path`, `None` if the key does not exist.
    /// See docs/xen-vmi.md#xenstore
    pub fn read(&self, path: &str) -> Result<Option<String>> {
        let cpath = CString::new(path).map_err(|_| XenError::invalid("xs_read", "NUL in path"))?;
        let mut len: libc::c_uint = 0;
        // SAFETY: valid handle and C string; the result is malloc'ed by the library.
        let p = unsafe { sys::xs_read(self.h.as_ptr(), sys::XBT_NULL, cpath.as_ptr(), &mut len) };
        if p.is_null() {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(XenError::Call {
                    call: "xs_read",
                    source: e,
                }),
            };
        }
        // SAFETY: p points to len bytes; freed right after copying.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }.to_vec();
        // SAFETY: allocated with malloc by libxenstore.
        unsafe { libc::free(p) };
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

impl Drop for XenStore {
    fn drop(&mut self) {
        // SAFETY: opened once, closed once.
        unsafe { sys::xs_close(self.h.as_ptr()) };
    }
}
