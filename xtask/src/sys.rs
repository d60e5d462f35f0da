//! The few libc calls xtask makes, behind safe functions: the only unsafe
//! code in xtask.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Takes an exclusive `flock` on `file`: `Ok(false)` when `wait` is false
/// and another process holds it.
pub fn flock_exclusive(file: &impl AsRawFd, wait: bool) -> io::Result<bool> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: the descriptor is open and owned by `file` for the whole call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if !wait && err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err)
}

/// Sends `signal` to `pid` (errors ignored: the process may be gone).
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory preconditions; callers name a pid they own.
    unsafe { libc::kill(pid, signal) };
}
