//! Errors from Xen's libraries: the failing call's name plus the errno it set.

use std::io;

/// An error from a Xen library call.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// A library call failed and set `errno`.
    #[error("{call} failed: {source}")]
    Call {
        /// Name of the C function that failed.
        call: &'static str,
        /// The OS error (errno) it reported.
        #[source]
        source: io::Error,
    },
    /// A call returned data that does not make sense (short buffer, missing record...).
    #[error("{call}: {msg}")]
    Invalid {
        /// Name of the C function whose result was unusable.
        call: &'static str,
        /// What was wrong.
        msg: String,
    },
}

/// Result alias for this module tree.
pub type Result<T> = std::result::Result<T, XenError>;

impl XenError {
    /// Builds an error from the current thread's `errno`.
    pub(crate) fn last(call: &'static str) -> Self {
        Self::Call {
            call,
            source: io::Error::last_os_error(),
        }
    }

    /// Builds an error from an explicit errno value (positive).
    pub(crate) fn errno(call: &'static str, errno: i32) -> Self {
        Self::Call {
            call,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    pub(crate) fn invalid(call: &'static str, msg: impl Into<String>) -> Self {
        Self::Invalid {
            call,
            msg: msg.into(),
        }
    }

    /// The errno carried by this error, if any.
    pub fn raw_errno(&self) -> Option<i32> {
        match self {
            Self::Call { source, .. } => source.raw_os_error(),
            Self::Invalid { .. } => None,
        }
    }

    /// The name of the C call that failed.
    pub fn call(&self) -> &'static str {
        match self {
            Self::Call { call, .. } | Self::Invalid { call, .. } => call,
        }
    }

    /// True when the hypervisor refused the operation as unsupported
    /// (`EOPNOTSUPP`, `ENOSYS`, or `EINVAL` from an interface that exists
    /// only for other guest types).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.raw_errno(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        )
    }
}

/// Maps a C return code (`< 0` means failure with `errno` set) to a `Result`.
pub(crate) fn check(call: &'static str, rc: libc::c_int) -> Result<libc::c_int> {
    if rc < 0 {
        Err(XenError::last(call))
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_call_and_errno() {
        let e = XenError::errno("xc_monitor_enable", libc::EINVAL);
        assert_eq!(e.raw_errno(), Some(libc::EINVAL));
        assert_eq!(e.call(), "xc_monitor_enable");
        let text = e.to_string();
        assert!(text.starts_with("xc_monitor_enable failed: "), "{text}");
        assert!(text.contains("Invalid argument"), "{text}");
        assert!(!e.is_unsupported());
        assert!(XenError::errno("xc_monitor_singlestep", libc::EOPNOTSUPP).is_unsupported());
        assert!(XenError::invalid("x", "y").raw_errno().is_none());
    }

    #[test]
    fn check_maps_negative_to_error() {
        assert_eq!(check("ok", 3).ok(), Some(3));
        assert!(check("bad", -1).is_err());
    }
}
