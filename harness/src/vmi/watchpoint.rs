//! Data watchpoints (write / read / access on a guest virtual range).
//!
//! The route is Xen's mem_access: restrict the p2m access of the frames
//! under the range (`xc_set_mem_access`), take `VM_EVENT_REASON_MEM_ACCESS`
//! events, filter them to the exact range, and re-arm after a hit by
//! single-stepping the access with the frame opened. Xen 4.17 offers
//! mem_access on x86 only for HVM/PVH guests with HAP on Intel VT-x
//! (`p2m_mem_access_sanity_check`); elsewhere `xc_set_mem_access` fails with
//! EINVAL. [`Domain::watchpoint_support`] probes exactly that call on the
//! guest, so the answer is this host's, not a guess.
//!
//! Status: the probe and the range arithmetic are implemented; the event
//! path (arming, hits, re-arming) is not, because no host available to this
//! project (AMD SVM under QEMU TCG) accepts mem_access: it could not be
//! tested. [`Domain::add_watchpoint`] therefore returns
//! [`Error::Unsupported`] with the measured reason on every host.

use crate::xen::MemAccess;

use super::domain::Domain;
use super::error::{Error, Result};

/// What a watchpoint reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// Writes (`watch`, GDB `Z2`).
    Write,
    /// Reads (`rwatch`, `Z3`).
    Read,
    /// Reads and writes (`awatch`, `Z4`).
    Access,
}

impl WatchKind {
    /// The page access that makes this kind of access trap.
    pub fn restricted_access(self) -> MemAccess {
        match self {
            WatchKind::Write => MemAccess::Rx,
            WatchKind::Read | WatchKind::Access => MemAccess::X,
        }
    }

    /// Whether an access (read, write) of the watched range is a hit.
    pub fn matches(self, read: bool, write: bool) -> bool {
        match self {
            WatchKind::Write => write,
            WatchKind::Read => read,
            WatchKind::Access => read || write,
        }
    }
}

/// The pages (virtual, 4 KiB aligned) that a watch on `[va, va + len)` covers.
pub fn pages_of(va: u64, len: u64) -> Vec<u64> {
    if len == 0 {
        return Vec::new();
    }
    let first = va & !0xfff;
    let last = va.saturating_add(len - 1) & !0xfff;
    (0..=((last - first) >> 12))
        .map(|i| first + (i << 12))
        .collect()
}

/// Whether an access at `addr` of `size` bytes touches `[va, va + len)`.
pub fn overlaps(addr: u64, size: u64, va: u64, len: u64) -> bool {
    addr < va.saturating_add(len) && va < addr.saturating_add(size.max(1))
}

impl Domain {
    /// Probes whether watchpoints can work on this guest and host: the
    /// guest type, the vm_event ring, and `xc_set_mem_access` itself on the
    /// frame of `va` (set to rwx, the default access: nothing changes).
    pub fn watchpoint_support(&mut self, va: u64) -> Result<()> {
        let caps = self.capabilities().clone();
        if !caps.kind.is_hvm_container() {
            return Err(Error::unsupported(
                "watchpoints",
                "Xen's mem_access (p2m access types) exists for HVM and PVH guests only; this \
                 guest is PV",
            ));
        }
        let gfn = self.translate(0, va)?.frame() >> 12;
        if let Err(e) = self
            .xen
            .xc
            .set_mem_access(self.domid, MemAccess::Rwx, gfn, 1)
        {
            let vendor = if caps.host.is_intel() {
                String::new()
            } else {
                format!("; this CPU is {}", caps.host.cpu_vendor)
            };
            return Err(Error::unsupported(
                "watchpoints",
                format!(
                    "{e}: Xen 4.17's x86 mem_access needs an HVM/PVH guest with HAP on Intel \
                     VT-x (EPT){vendor}"
                ),
            ));
        }
        Ok(())
    }

    /// A watchpoint on `[va, va + len)`. Always `Unsupported` for now: the
    /// reason is the host's (see [`Domain::watchpoint_support`]) or, where
    /// mem_access works, that the event path is not implemented.
    pub fn add_watchpoint(&mut self, va: u64, len: u64, kind: WatchKind) -> Result<()> {
        if len == 0 {
            return Err(Error::State(
                "a watchpoint needs a length of 1 or more".into(),
            ));
        }
        self.watchpoint_support(va)?;
        Err(Error::unsupported(
            "watchpoints",
            format!(
                "{kind:?} watch: mem_access works on this host, but xenprobe's watchpoint event \
                 path (MEM_ACCESS hits, re-arming by single step) is not implemented yet"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_their_pages() {
        assert_eq!(pages_of(0x1ff8, 16), vec![0x1000, 0x2000]);
        assert_eq!(pages_of(0x1000, 0x1000), vec![0x1000]);
        assert!(pages_of(0x1000, 0).is_empty());
        assert!(overlaps(0x1004, 4, 0x1000, 8));
        assert!(!overlaps(0x1008, 4, 0x1000, 8));
        assert!(overlaps(0xff8, 16, 0x1000, 1));
    }

    #[test]
    fn kinds_filter_accesses() {
        assert!(WatchKind::Write.matches(false, true));
        assert!(!WatchKind::Write.matches(true, false));
        assert!(WatchKind::Access.matches(true, false));
        assert_eq!(WatchKind::Write.restricted_access(), MemAccess::Rx);
    }
}
