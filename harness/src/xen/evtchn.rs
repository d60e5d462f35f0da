//! Event channels (libxenevtchn): bind, notify, wait with a timeout.

use std::ptr::NonNull;
use std::time::Duration;

use xen_sys as sys;

use super::error::{check, Result, XenError};

/// An open libxenevtchn handle; closed (and its ports unbound) on drop.
/// See docs/xen-vmi.md#event-channels
pub struct EventChannel {
    h: NonNull<sys::xenevtchn_handle>,
}

// SAFETY: the handle wraps a file descriptor usable from any thread.
unsafe impl Send for EventChannel {}

impl std::fmt::Debug for EventChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventChannel")
            .field("fd", &self.fd())
            .finish()
    }
}

impl EventChannel {
    /// `xenevtchn_open`.
    pub fn open() -> Result<Self> {
        // SAFETY: NULL logger, flags 0.
        let p = unsafe { sys::xenevtchn_open(std::ptr::null_mut(), 0) };
        let h = NonNull::new(p).ok_or_else(|| XenError::last("xenevtchn_open"))?;
        Ok(Self { h })
    }

    /// The descriptor that becomes readable when a bound port fires.
    pub fn fd(&self) -> i32 {
        // SAFETY: valid handle.
        unsafe { sys::xenevtchn_fd(self.h.as_ptr()) }
    }

    /// `xenevtchn_bind_interdomain`: returns the local port.
    pub fn bind_interdomain(&self, domid: u32, remote_port: u32) -> Result<u32> {
        // SAFETY: valid handle.
        let p = unsafe { sys::xenevtchn_bind_interdomain(self.h.as_ptr(), domid, remote_port) };
        Ok(check("xenevtchn_bind_interdomain", p)? as u32)
    }

    /// `xenevtchn_bind_virq`: returns the local port.
    pub fn bind_virq(&self, virq: u32) -> Result<u32> {
        // SAFETY: valid handle.
        let p = unsafe { sys::xenevtchn_bind_virq(self.h.as_ptr(), virq) };
        Ok(check("xenevtchn_bind_virq", p)? as u32)
    }

    /// `xenevtchn_unbind`.
    pub fn unbind(&self, port: u32) -> Result<()> {
        // SAFETY: valid handle.
        check("xenevtchn_unbind", unsafe {
            sys::xenevtchn_unbind(self.h.as_ptr(), port)
        })?;
        Ok(())
    }

    /// `xenevtchn_notify`.
    pub fn notify(&self, port: u32) -> Result<()> {
        // SAFETY: valid handle.
        check("xenevtchn_notify", unsafe {
            sys::xenevtchn_notify(self.h.as_ptr(), port)
        })?;
        Ok(())
    }

    /// Waits up to `timeout` for a port to fire; returns it (already unmasked),
    /// or `None` on timeout.
    pub fn wait(&self, timeout: Duration) -> Result<Option<u32>> {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up: a sub-millisecond rest must not become a busy poll(0).
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(None);
            }
            return Err(XenError::Call {
                call: "poll",
                source: e,
            });
        }
        if rc == 0 {
            return Ok(None);
        }
        // SAFETY: valid handle.
        let port = unsafe { sys::xenevtchn_pending(self.h.as_ptr()) };
        let port = check("xenevtchn_pending", port)? as u32;
        // SAFETY: valid handle.
        check("xenevtchn_unmask", unsafe {
            sys::xenevtchn_unmask(self.h.as_ptr(), port)
        })?;
        Ok(Some(port))
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: opened once, closed once.
        unsafe {
            sys::xenevtchn_close(self.h.as_ptr());
        }
    }
}
