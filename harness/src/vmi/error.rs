//! Errors of the VMI engine.

use crate::xen::XenError;

/// Anything the VMI engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Xen library call failed (call name and errno inside).
    #[error(transparent)]
    Xen(#[from] XenError),
    /// No domain with that name or id.
    #[error("no such domain: {0}")]
    NoDomain(String),
    /// The hypervisor, CPU or guest type does not allow this.
    #[error("{feature} is not available: {why}")]
    Unsupported {
        /// What was asked for.
        feature: &'static str,
        /// Why it is missing and what would provide it.
        why: String,
    },
    /// A virtual address does not translate.
    #[error("cannot translate {va:#x}: {why}")]
    Translate {
        /// The address.
        va: u64,
        /// Which level failed and why.
        why: String,
    },
    /// No symbol with that name, or no symbols loaded.
    #[error("symbol: {0}")]
    Symbol(String),
    /// The operation does not fit the domain's current state.
    #[error("{0}")]
    State(String),
    /// A breakpoint problem (duplicate, unknown id...).
    #[error("breakpoint: {0}")]
    Breakpoint(String),
    /// Interrupted by SIGINT/SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// Journal or other file I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the VMI engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn unsupported(feature: &'static str, why: impl Into<String>) -> Self {
        Self::Unsupported {
            feature,
            why: why.into(),
        }
    }
}
