//! The vm_event monitor ring (`xc_monitor_*`), HVM and PVH only.
//!
//! Xen's `SHARED_RING_INIT` / `BACK_RING_INIT` / `RING_*` helpers are C macros
//! that bindgen does not translate; the index arithmetic is done here with
//! the `vm_event_sring` layout from the bindings and explicit fences where
//! the C macros put `xen_rmb()` / `xen_wmb()`.

use std::mem::{offset_of, size_of};
use std::ptr::{addr_of, addr_of_mut, NonNull};
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result, XenError};
use super::evtchn::EventChannel;
use super::PAGE_SIZE;

/// Register block carried by a vm_event (`struct vm_event_regs_x86`).
pub type VmEventRegs = sys::vm_event_regs_x86;

/// x86 event type of a debug event (`X86_EVENTTYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugEventType {
    /// Hardware exception: #DB from RFLAGS.TF or a debug register.
    HwException,
    /// Software interrupt (`int n`).
    SwInterrupt,
    /// Privileged software exception: ICEBP (0xF1).
    PrivSwException,
    /// Software exception: int3 (0xCC) or into.
    SwException,
    /// Anything else (raw value).
    Other(u8),
}

impl DebugEventType {
    /// Decodes `X86_EVENTTYPE_*`.
    pub fn from_raw(v: u8) -> Self {
        match v {
            3 => Self::HwException,
            4 => Self::SwInterrupt,
            5 => Self::PrivSwException,
            6 => Self::SwException,
            o => Self::Other(o),
        }
    }
}

/// A `cpuid` the guest executed (`VM_EVENT_REASON_CPUID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidEvent {
    /// Length of the instruction (RIP must move past it).
    pub insn_length: u32,
    /// EAX at the instruction.
    pub leaf: u32,
    /// ECX at the instruction.
    pub subleaf: u32,
}

/// Why a vCPU stopped: a `VM_EVENT_REASON_*`, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReason {
    /// A software breakpoint (int3).
    SoftwareBreakpoint,
    /// A debug exception (ICEBP, a hardware #DB).
    DebugException,
    /// A single-step (monitor trap flag).
    Singlestep,
    /// A `cpuid`.
    Cpuid,
    /// A mem_access violation.
    MemAccess,
    /// A descriptor-table register access.
    DescriptorAccess,
    /// Any other reason, by number.
    Other(u32),
}

impl EventReason {
    fn from_raw(reason: u32) -> Self {
        match reason {
            sys::VM_EVENT_REASON_SOFTWARE_BREAKPOINT => Self::SoftwareBreakpoint,
            sys::VM_EVENT_REASON_DEBUG_EXCEPTION => Self::DebugException,
            sys::VM_EVENT_REASON_SINGLESTEP => Self::Singlestep,
            sys::VM_EVENT_REASON_CPUID => Self::Cpuid,
            sys::VM_EVENT_REASON_MEM_ACCESS => Self::MemAccess,
            sys::VM_EVENT_REASON_DESCRIPTOR_ACCESS => Self::DescriptorAccess,
            n => Self::Other(n),
        }
    }
}

/// A request read from the ring, with the union decoded by `reason`.
#[derive(Clone, Copy)]
pub struct VmEventRequest {
    pub(super) raw: sys::vm_event_request_t,
}

impl std::fmt::Debug for VmEventRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmEventRequest")
            .field("reason", &self.reason())
            .field("vcpu", &self.vcpu())
            .field("flags", &self.flags())
            .field("rip", &format_args!("{:#x}", self.regs().rip))
            .field("debug", &self.debug())
            .field("cpuid", &self.cpuid())
            .finish()
    }
}

impl VmEventRequest {
    /// Why the vCPU stopped.
    pub fn reason(&self) -> EventReason {
        EventReason::from_raw(self.raw.reason)
    }
    /// vCPU that raised the event.
    pub fn vcpu(&self) -> u32 {
        self.raw.vcpu_id
    }
    /// `VM_EVENT_FLAG_*`.
    pub fn flags(&self) -> u32 {
        self.raw.flags
    }
    /// Whether the vCPU waits for our response.
    pub fn vcpu_paused(&self) -> bool {
        self.raw.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED != 0
    }
    /// The vCPU's registers at the event.
    pub fn regs(&self) -> VmEventRegs {
        // SAFETY: x86 requests always carry the x86 register block (plain data).
        unsafe { self.raw.data.regs.x86 }
    }
    /// (event type, instruction length, gfn) for software-breakpoint and
    /// debug-exception events.
    pub fn debug(&self) -> Option<(DebugEventType, u32, u64)> {
        match self.raw.reason {
            sys::VM_EVENT_REASON_SOFTWARE_BREAKPOINT | sys::VM_EVENT_REASON_DEBUG_EXCEPTION => {
                // SAFETY: for these reasons Xen fills the vm_event_debug member.
                let d = unsafe { self.raw.u.debug_exception };
                Some((DebugEventType::from_raw(d.type_), d.insn_length, d.gfn))
            }
            _ => None,
        }
    }
    /// The guest frame Xen found the event's RIP in (software-breakpoint
    /// and debug-exception events; None where its translation failed).
    pub fn rip_gfn(&self) -> Option<u64> {
        // Xen's INVALID_GFN: `gfn_of_rip` could not translate the RIP.
        const INVALID_GFN: u64 = !0;
        self.debug()
            .map(|(_, _, gfn)| gfn)
            .filter(|&g| g != INVALID_GFN)
    }
    /// The executed `cpuid` of a CPUID event: (instruction length, leaf,
    /// subleaf as EAX and ECX held them). Xen has already put the results
    /// in the request's registers but left RIP on the instruction.
    pub fn cpuid(&self) -> Option<CpuidEvent> {
        (self.raw.reason == sys::VM_EVENT_REASON_CPUID).then(|| {
            // SAFETY: for this reason Xen fills the vm_event_cpuid member.
            let c = unsafe { self.raw.u.cpuid };
            CpuidEvent {
                insn_length: c.insn_length,
                leaf: c.leaf,
                subleaf: c.subleaf,
            }
        })
    }
    /// A descriptor-table access (`VM_EVENT_REASON_DESCRIPTOR_ACCESS`):
    /// (which table, `VM_EVENT_DESC_*`; a write: `lidt`, `lgdt`, `lldt`, `ltr`).
    pub fn descriptor_access(&self) -> Option<(u8, bool)> {
        (self.raw.reason == sys::VM_EVENT_REASON_DESCRIPTOR_ACCESS).then(|| {
            // SAFETY: for this reason Xen fills the desc_access member.
            let d = unsafe { self.raw.u.desc_access };
            (d.descriptor, d.is_write != 0)
        })
    }
    /// Builds the matching response (same vCPU/reason, resumes the vCPU).
    pub fn response(&self) -> VmEventResponse {
        let mut raw = sys::vm_event_response_t::default();
        raw.version = sys::VM_EVENT_INTERFACE_VERSION;
        raw.vcpu_id = self.raw.vcpu_id;
        raw.reason = self.raw.reason;
        raw.flags = self.raw.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED;
        VmEventResponse { raw }
    }
}

/// A response to put on the ring.
#[derive(Clone, Copy)]
pub struct VmEventResponse {
    raw: sys::vm_event_response_t,
}

impl VmEventResponse {
    /// Ask Xen to load these registers into the vCPU (`VM_EVENT_FLAG_SET_REGISTERS`).
    /// See docs/xen-vmi.md#vm_event-ring
    pub fn set_registers(mut self, regs: &VmEventRegs) -> Self {
        self.raw.flags |= sys::VM_EVENT_FLAG_SET_REGISTERS;
        self.raw.data.regs.x86 = *regs;
        self
    }
    /// Ask Xen to emulate the instruction the event stopped at
    /// (`VM_EVENT_FLAG_EMULATE`; descriptor-table accesses need it, or the
    /// vCPU traps on the same instruction again).
    /// See docs/xen-vmi.md#descriptor-table-events
    pub fn emulate(mut self) -> Self {
        self.raw.flags |= sys::VM_EVENT_FLAG_EMULATE;
        self
    }
    /// Toggle MTF single-stepping for the vCPU (`VM_EVENT_FLAG_TOGGLE_SINGLESTEP`).
    /// See docs/xen-vmi.md#single-stepping
    pub fn toggle_singlestep(mut self) -> Self {
        self.raw.flags |= sys::VM_EVENT_FLAG_TOGGLE_SINGLESTEP;
        self
    }
}

/// Number of ring entries that fit a page, rounded down to a power of two (`__RD32`).
pub(crate) fn ring_entries(page: usize, header: usize, entry: usize) -> u32 {
    let n = ((page - header) / entry) as u32;
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

/// Back-ring bookkeeping (`vm_event_back_ring_t` without the pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackRing {
    pub rsp_prod_pvt: u32,
    pub req_cons: u32,
    pub nr_ents: u32,
}

impl BackRing {
    /// Requests produced but not yet consumed, bounded by free response slots
    /// (`RING_HAS_UNCONSUMED_REQUESTS`).
    pub fn unconsumed(&self, req_prod: u32) -> u32 {
        let req = req_prod.wrapping_sub(self.req_cons);
        let rsp = self
            .nr_ents
            .wrapping_sub(self.req_cons.wrapping_sub(self.rsp_prod_pvt));
        req.min(rsp)
    }
    pub fn slot(&self, idx: u32) -> usize {
        (idx & (self.nr_ents - 1)) as usize
    }
}

/// Monitor options that were switched on through this ring (switched off on drop).
#[derive(Debug, Default, Clone, Copy)]
struct Options {
    debug_exceptions: bool,
    singlestep: bool,
    software_breakpoint: bool,
    cpuid: bool,
    descriptor_access: bool,
}

/// An enabled vm_event monitor ring for one domain. Dropping it switches off
/// the monitor options it enabled, unbinds the event channel, disables the
/// ring (`xc_monitor_disable`, which also releases vCPUs still waiting for a
/// response) and unmaps the ring page.
/// See docs/xen-vmi.md#vm_event-ring
pub struct MonitorRing {
    xc: XenCtrl,
    domid: u32,
    sring: NonNull<sys::vm_event_sring_t>,
    evtchn: EventChannel,
    port: u32,
    ring: BackRing,
    options: Options,
}

// SAFETY: the ring page is process memory shared with Xen; all access goes
// through &mut self.
unsafe impl Send for MonitorRing {}

impl std::fmt::Debug for MonitorRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorRing")
            .field("domid", &self.domid)
            .field("port", &self.port)
            .field("ring", &self.ring)
            .finish()
    }
}

impl XenCtrl {
    /// `xc_monitor_disable` without a ring in hand: tears down a ring left by
    /// another (e.g. killed) process.
    /// See docs/xen-vmi.md#vm_event-ring
    pub fn monitor_disable(&self, domid: u32) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        check("xc_monitor_disable", unsafe {
            sys::xc_monitor_disable(self.raw(), domid)
        })?;
        Ok(())
    }
}

impl MonitorRing {
    /// `xc_monitor_enable` + event channel bind + ring init. Fails with EBUSY
    /// when a ring already exists and EINVAL/EOPNOTSUPP on PV guests.
    /// See docs/xen-vmi.md#vm_event-ring
    pub fn enable(xc: &XenCtrl, domid: u32) -> Result<Self> {
        let mut remote_port = 0u32;
        // SAFETY: out pointer to a local.
        let page = unsafe { sys::xc_monitor_enable(xc.raw(), domid, &mut remote_port) };
        let sring = NonNull::new(page.cast::<sys::vm_event_sring_t>())
            .ok_or_else(|| XenError::last("xc_monitor_enable"))?;
        let cleanup = |xc: &XenCtrl| {
            // SAFETY: page was mapped by xc_monitor_enable with one page.
            unsafe {
                sys::xc_monitor_disable(xc.raw(), domid);
                libc::munmap(page, PAGE_SIZE);
            }
        };
        let evtchn = match EventChannel::open() {
            Ok(e) => e,
            Err(e) => {
                cleanup(xc);
                return Err(e);
            }
        };
        let port = match evtchn.bind_interdomain(domid, remote_port) {
            Ok(p) => p,
            Err(e) => {
                cleanup(xc);
                return Err(e);
            }
        };
        let header = offset_of!(sys::vm_event_sring_t, ring);
        let nr_ents = ring_entries(PAGE_SIZE, header, size_of::<sys::vm_event_sring_entry>());
        let s = sring.as_ptr();
        // SHARED_RING_INIT: indices to 0, event thresholds to 1, private bytes cleared.
        // SAFETY: s points to the mapped ring page.
        unsafe {
            addr_of_mut!((*s).req_prod).write_volatile(0);
            addr_of_mut!((*s).rsp_prod).write_volatile(0);
            addr_of_mut!((*s).req_event).write_volatile(1);
            addr_of_mut!((*s).rsp_event).write_volatile(1);
            std::ptr::write_bytes(
                addr_of_mut!((*s).pvt).cast::<u8>(),
                0,
                size_of_val(&(*s).pvt),
            );
            std::ptr::write_bytes(addr_of_mut!((*s).__pad).cast::<u8>(), 0, 44);
        }
        fence(Ordering::SeqCst);
        Ok(Self {
            xc: xc.clone(),
            domid,
            sring,
            evtchn,
            port,
            ring: BackRing {
                rsp_prod_pvt: 0,
                req_cons: 0,
                nr_ents,
            },
            options: Options::default(),
        })
    }

    /// Domain this ring belongs to.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    fn entry(&self, slot: usize) -> *mut sys::vm_event_sring_entry {
        // SAFETY: slot < nr_ents, and nr_ents entries fit in the page after the header.
        unsafe {
            addr_of_mut!((*self.sring.as_ptr()).ring)
                .cast::<sys::vm_event_sring_entry>()
                .add(slot)
        }
    }

    /// Takes the next request if one is waiting (never blocks).
    pub fn get_request(&mut self) -> Option<VmEventRequest> {
        let s = self.sring.as_ptr();
        // SAFETY: s is the mapped ring page; Xen writes req_prod concurrently.
        let req_prod = unsafe { addr_of!((*s).req_prod).read_volatile() };
        fence(Ordering::SeqCst); // xen_rmb: see the request after its index
        if self.ring.unconsumed(req_prod) == 0 {
            return None;
        }
        let idx = self.ring.req_cons;
        // SAFETY: the slot lies in the page; the request is plain data.
        let raw = unsafe { addr_of!((*self.entry(self.ring.slot(idx))).req).read_volatile() };
        self.ring.req_cons = idx.wrapping_add(1);
        // SAFETY: as above; tells Xen when to notify us next.
        unsafe { addr_of_mut!((*s).req_event).write_volatile(self.ring.req_cons.wrapping_add(1)) };
        fence(Ordering::SeqCst);
        Some(VmEventRequest { raw })
    }

    /// Puts a response on the ring and notifies Xen (`RING_PUSH_RESPONSES`).
    /// See docs/xen-vmi.md#vm_event-ring
    pub fn put_response(&mut self, rsp: &VmEventResponse) -> Result<()> {
        let idx = self.ring.rsp_prod_pvt;
        // SAFETY: the slot lies in the page; writing plain data.
        unsafe { addr_of_mut!((*self.entry(self.ring.slot(idx))).rsp).write_volatile(rsp.raw) };
        self.ring.rsp_prod_pvt = idx.wrapping_add(1);
        fence(Ordering::SeqCst); // xen_wmb: response before its index
                                 // SAFETY: the mapped ring page.
        unsafe {
            addr_of_mut!((*self.sring.as_ptr()).rsp_prod).write_volatile(self.ring.rsp_prod_pvt)
        };
        fence(Ordering::SeqCst);
        self.evtchn.notify(self.port)
    }

    /// Waits up to `timeout` for a request; `None` on timeout.
    pub fn wait_request(&mut self, timeout: Duration) -> Result<Option<VmEventRequest>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.get_request() {
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Wake at least every 50 ms so a lost notification costs little.
            self.evtchn.wait(left.min(Duration::from_millis(50)))?;
        }
    }

    /// Blocks up to `timeout` on the ring's event channel; true when a
    /// notification came (the request it announced may already be taken).
    pub fn wait_notification(&mut self, timeout: Duration) -> Result<bool> {
        Ok(self.evtchn.wait(timeout)?.is_some())
    }

    /// `xc_monitor_debug_exceptions(enable, sync)`.
    /// See docs/xen-vmi.md#debug-exceptions-and-breakpoints
    pub fn set_debug_exceptions(&mut self, enable: bool, sync: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        let rc =
            unsafe { sys::xc_monitor_debug_exceptions(self.xc.raw(), self.domid, enable, sync) };
        check("xc_monitor_debug_exceptions", rc)?;
        self.options.debug_exceptions = enable;
        Ok(())
    }

    /// `xc_monitor_singlestep` (MTF; Intel VT-x only).
    /// See docs/xen-vmi.md#single-stepping
    pub fn set_singlestep(&mut self, enable: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        let rc = unsafe { sys::xc_monitor_singlestep(self.xc.raw(), self.domid, enable) };
        check("xc_monitor_singlestep", rc)?;
        self.options.singlestep = enable;
        Ok(())
    }

    /// `xc_monitor_software_breakpoint` (int3 interception).
    /// See docs/xen-vmi.md#debug-exceptions-and-breakpoints
    pub fn set_software_breakpoint(&mut self, enable: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        let rc = unsafe { sys::xc_monitor_software_breakpoint(self.xc.raw(), self.domid, enable) };
        check("xc_monitor_software_breakpoint", rc)?;
        self.options.software_breakpoint = enable;
        Ok(())
    }

    /// `xc_monitor_cpuid`: every `cpuid` the guest runs becomes a
    /// synchronous event; Xen computes the results but leaves RIP on the
    /// instruction, so the reply must move it (see [`CpuidEvent`]).
    /// See docs/xen-vmi.md#cpuid-events
    pub fn set_cpuid(&mut self, enable: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        let rc = unsafe { sys::xc_monitor_cpuid(self.xc.raw(), self.domid, enable) };
        check("xc_monitor_cpuid", rc)?;
        self.options.cpuid = enable;
        Ok(())
    }

    /// `xc_monitor_descriptor_access`: every `lidt`, `lgdt`, `lldt`, `ltr`
    /// (and their `s*` reads) becomes a synchronous event; the reply must
    /// ask for emulation ([`VmEventResponse::emulate`]).
    /// See docs/xen-vmi.md#descriptor-table-events
    pub fn set_descriptor_access(&mut self, enable: bool) -> Result<()> {
        // SAFETY: plain hypercall wrapper.
        let rc = unsafe { sys::xc_monitor_descriptor_access(self.xc.raw(), self.domid, enable) };
        check("xc_monitor_descriptor_access", rc)?;
        self.options.descriptor_access = enable;
        Ok(())
    }

    /// Whether descriptor-table events are on (see [`Self::set_descriptor_access`]).
    pub fn descriptor_access(&self) -> bool {
        self.options.descriptor_access
    }

    /// `xc_monitor_get_capabilities`: bitmask of `1 << XEN_DOMCTL_MONITOR_EVENT_*`.
    /// See docs/xen-vmi.md#host-capabilities
    pub fn capabilities(&self) -> Result<u32> {
        let mut caps = 0u32;
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_monitor_get_capabilities(self.xc.raw(), self.domid, &mut caps) };
        check("xc_monitor_get_capabilities", rc)?;
        Ok(caps)
    }

    /// Sends a "resume" response for every vCPU `0..=max_vcpu` without a
    /// request. Xen unpauses a vCPU for such a response only while it is
    /// paused by vm_event, so this releases vCPUs left waiting by a ring that
    /// was torn down (`xc_monitor_disable` does not release them) and is a
    /// no-op for the others.
    /// See docs/xen-vmi.md#vm_event-ring
    pub fn release_stuck_vcpus(&mut self, max_vcpu: u32) -> Result<()> {
        for vcpu in 0..=max_vcpu {
            let raw = sys::vm_event_response_t {
                version: sys::VM_EVENT_INTERFACE_VERSION,
                vcpu_id: vcpu,
                flags: sys::VM_EVENT_FLAG_VCPU_PAUSED,
                ..Default::default()
            };
            self.put_response(&VmEventResponse { raw })?;
        }
        Ok(())
    }

    /// Answers every request still on the ring with a plain "resume".
    pub fn drain(&mut self) -> Result<usize> {
        let mut n = 0;
        while let Some(req) = self.get_request() {
            self.put_response(&req.response())?;
            n += 1;
        }
        Ok(n)
    }
}

impl Drop for MonitorRing {
    fn drop(&mut self) {
        if self.options.debug_exceptions {
            let _ = self.set_debug_exceptions(false, false);
        }
        if self.options.singlestep {
            let _ = self.set_singlestep(false);
        }
        if self.options.software_breakpoint {
            let _ = self.set_software_breakpoint(false);
        }
        if self.options.cpuid {
            let _ = self.set_cpuid(false);
        }
        if self.options.descriptor_access {
            let _ = self.set_descriptor_access(false);
        }
        if let Err(e) = self.drain() {
            if e.raw_errno() != Some(libc::ESRCH) {
                tracing::warn!(domid = self.domid, "draining vm_event ring: {e}");
            }
        }
        let _ = self.evtchn.unbind(self.port);
        // SAFETY: the ring is ours; the page was mapped by xc_monitor_enable.
        unsafe {
            if sys::xc_monitor_disable(self.xc.raw(), self.domid) < 0 {
                let e = std::io::Error::last_os_error();
                // ESRCH: the domain is gone, and its ring with it.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    tracing::warn!(domid = self.domid, "xc_monitor_disable: {e}");
                }
            }
            libc::munmap(self.sring.as_ptr().cast(), PAGE_SIZE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_is_power_of_two_that_fits() {
        let header = offset_of!(sys::vm_event_sring_t, ring);
        let entry = size_of::<sys::vm_event_sring_entry>();
        assert_eq!(header, 64);
        let n = ring_entries(PAGE_SIZE, header, entry);
        assert!(n.is_power_of_two());
        assert!(header + n as usize * entry <= PAGE_SIZE);
        assert!(header + 2 * n as usize * entry > PAGE_SIZE);
        assert_eq!(ring_entries(100, 0, 30), 2);
        assert_eq!(ring_entries(10, 0, 30), 0);
    }

    #[test]
    fn unconsumed_counts_and_wraps() {
        let mut r = BackRing {
            rsp_prod_pvt: 0,
            req_cons: 0,
            nr_ents: 8,
        };
        assert_eq!(r.unconsumed(0), 0);
        assert_eq!(r.unconsumed(3), 3);
        // consumed 3 without responding: only 5 more may be in flight.
        r.req_cons = 3;
        assert_eq!(r.unconsumed(20), 5);
        // indices wrap at u32::MAX.
        r = BackRing {
            rsp_prod_pvt: u32::MAX - 1,
            req_cons: u32::MAX - 1,
            nr_ents: 8,
        };
        assert_eq!(r.unconsumed(1), 3);
        assert_eq!(r.slot(u32::MAX), 7);
        assert_eq!(r.slot(u32::MAX.wrapping_add(1)), 0);
    }

    #[test]
    fn debug_event_types_decode() {
        assert_eq!(DebugEventType::from_raw(5), DebugEventType::PrivSwException);
        assert_eq!(DebugEventType::from_raw(3), DebugEventType::HwException);
        assert_eq!(DebugEventType::from_raw(6), DebugEventType::SwException);
        assert_eq!(DebugEventType::from_raw(9), DebugEventType::Other(9));
    }
}
