//! Safe Rust layer over Xen's C libraries (libxenctrl, libxenforeignmemory,
//! libxenevtchn, vm_event). This module tree is the only place in xenprobe
//! that contains `unsafe`.
//!
//! It mirrors the libraries rather than inventing abstractions: [`XenCtrl`]
//! is an `xc_interface` handle and its methods (split by topic over
//! `domain.rs`, `vcpu.rs`, `hvm.rs`, `logdirty.rs`, `memshr.rs`, `cap.rs`)
//! are thin wrappers over the `xc_*` calls of the same name (the log-dirty
//! PEEK and CLEAN, on every restore's path, are issued as domctls of their
//! own from a buffer kept across calls: `domctl.rs`). Resources with a
//! lifetime (foreign mappings, event channels, the vm_event ring, dirty
//! bitmaps) are RAII types that release themselves on drop.
//!
//! It builds against Xen 4.17 and 4.20: `build.rs` reads the installed
//! headers and sets the `xen_4_18` cfg used by the few wrappers whose C calls
//! differ ([`BUILT_FOR`] says which release). See docs/xen-vmi.md#xen-versions

mod cap;
mod ctrl;
mod domain;
mod domctl;
mod error;
mod evtchn;
mod foreignmemory;
mod hcbuf;
mod hvm;
mod logdirty;
mod memaccess;
mod memshr;
mod monitor;
mod tsc;
mod vcpu;
// Read by build.rs; compiled here only for its unit tests.
#[cfg(test)]
mod version;
mod xenstore;

/// The Xen release whose headers and libraries xenprobe was built against
/// (`"4.17"` or `"4.20"`), as `build.rs` found them.
pub const BUILT_FOR: &str = env!("XENPROBE_XEN_RELEASE");

pub use cap::{HostCaps, MonitorCaps};
pub use ctrl::{DomainInfo, XenCtrl};
pub use domain::{PvFrameType, FRAME_TYPE_BATCH};

/// `DOMID_XEN`: the hypervisor as a domain (owner of the M2P table).
pub const DOMID_XEN: u32 = 0x7FF2;
pub use error::{Result, XenError};
pub use evtchn::EventChannel;
pub use foreignmemory::{ForeignMemory, Mapping, Prot};
pub use hvm::{
    HvmContext, HvmCpu, HVM_PARAMS_BACKEND_FRAMES, HVM_PARAM_MONITOR_RING_PFN, HVM_SAVE_CODE_CPU,
};
pub use logdirty::{DirtyBitmap, LogDirtyStats};
pub use memaccess::{MemAccess, MemAccessHit};
pub use monitor::{
    CpuidEvent, DebugEventType, EventReason, MonitorRing, VmEventRegs, VmEventRequest,
    VmEventResponse,
};
pub use tsc::{ticks_per_us, Stamp};
pub use vcpu::{VcpuContext, VcpuState};
pub use xenstore::XenStore;

/// Size of a guest page frame.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

#[cfg(test)]
mod tests {
    #[test]
    fn built_for_matches_the_api_cfg() {
        assert!(super::BUILT_FOR == "4.17" || super::BUILT_FOR == "4.20");
        assert_eq!(cfg!(xen_4_18), super::BUILT_FOR != "4.17");
    }
}
