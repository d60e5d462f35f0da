//! HVM save records (`xc_domain_hvm_getcontext` / `setcontext` / `_partial`).
//!
//! A context is a list of records, each a `hvm_save_descriptor` (typecode,
//! instance, length) followed by `length` bytes, ended by typecode 0.

use std::mem::size_of;

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result, XenError};

/// `HVM_PARAM_MONITOR_RING_PFN`: the guest frame of the vm_event monitor
/// ring (taken out of the guest's physmap while a ring is enabled).
pub const HVM_PARAM_MONITOR_RING_PFN: u32 = sys::HVM_PARAM_MONITOR_RING_PFN;

/// HVM params naming frames that Xen or dom0 write and the guest never
/// does: ioreq pages and the paging, monitor and sharing vm_event rings.
pub const HVM_PARAMS_BACKEND_FRAMES: [u32; 5] = [
    sys::HVM_PARAM_IOREQ_PFN,
    sys::HVM_PARAM_BUFIOREQ_PFN,
    sys::HVM_PARAM_PAGING_RING_PFN,
    sys::HVM_PARAM_MONITOR_RING_PFN,
    sys::HVM_PARAM_SHARING_RING_PFN,
];

/// Typecode of the per-vCPU CPU record (`HVM_SAVE_CODE(CPU)`).
pub const HVM_SAVE_CODE_CPU: u16 = 2;
/// Typecode of the save header record, which a loaded context must start with.
const HVM_SAVE_CODE_HEADER: u16 = 1;
const HVM_SAVE_CODE_END: u16 = 0;
const DESC: usize = size_of::<sys::hvm_save_descriptor>();

/// The CPU save record of one vCPU (`struct hvm_hw_cpu`).
pub type HvmCpu = sys::hvm_hw_cpu;

/// A full HVM context blob, as returned by `xc_domain_hvm_getcontext`.
#[derive(Clone, PartialEq, Eq)]
pub struct HvmContext {
    buf: Vec<u8>,
}

impl std::fmt::Debug for HvmContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HvmContext")
            .field("len", &self.buf.len())
            .finish()
    }
}

/// One record's header within a context: (typecode, instance, data offset, data length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    typecode: u16,
    instance: u16,
    offset: usize,
    length: usize,
}

fn records(buf: &[u8]) -> impl Iterator<Item = Record> + '_ {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let hdr = buf.get(off..off + DESC)?;
        let typecode = u16::from_le_bytes([hdr[0], hdr[1]]);
        let instance = u16::from_le_bytes([hdr[2], hdr[3]]);
        let length = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        if typecode == HVM_SAVE_CODE_END {
            return None;
        }
        let data = off + DESC;
        if data + length > buf.len() {
            return None;
        }
        off = data + length;
        Some(Record {
            typecode,
            instance,
            offset: data,
            length,
        })
    })
}

impl HvmContext {
    /// Wraps a raw context blob.
    pub fn from_bytes(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// The raw blob.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn find(&self, typecode: u16, instance: u16) -> Option<Record> {
        records(&self.buf).find(|r| r.typecode == typecode && r.instance == instance)
    }

    /// The CPU record of `vcpu`, if present.
    pub fn cpu(&self, vcpu: u16) -> Option<HvmCpu> {
        let r = self.find(HVM_SAVE_CODE_CPU, vcpu)?;
        if r.length < size_of::<HvmCpu>() {
            return None;
        }
        let bytes = &self.buf[r.offset..r.offset + size_of::<HvmCpu>()];
        // SAFETY: `bytes` holds size_of::<HvmCpu>() bytes; HvmCpu is plain
        // old data (integers only), so any bit pattern is valid.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<HvmCpu>()) })
    }

    /// Replaces the CPU record of `vcpu`; false if the record is missing.
    pub fn set_cpu(&mut self, vcpu: u16, cpu: &HvmCpu) -> bool {
        let Some(r) = self.find(HVM_SAVE_CODE_CPU, vcpu) else {
            return false;
        };
        if r.length < size_of::<HvmCpu>() {
            return false;
        }
        let dst = &mut self.buf[r.offset..r.offset + size_of::<HvmCpu>()];
        // SAFETY: dst has room for one HvmCpu; unaligned write of plain data.
        unsafe { std::ptr::write_unaligned(dst.as_mut_ptr().cast::<HvmCpu>(), *cpu) };
        true
    }

    /// The save header record (descriptor and data), if present.
    pub fn header(&self) -> Option<Vec<u8>> {
        let r = self.find(HVM_SAVE_CODE_HEADER, 0)?;
        Some(self.buf[r.offset - DESC..r.offset + r.length].to_vec())
    }

    /// A context of `header` (from [`HvmContext::header`]) and the given CPU
    /// records only, ended by the END record: loading it with
    /// `xc_domain_hvm_setcontext` sets these vCPUs' CPU state and nothing
    /// else (Xen takes down every vCPU without a record in a loaded
    /// context, so include every vCPU that is up).
    pub fn with_cpus(header: &[u8], cpus: &[(u16, HvmCpu)]) -> Self {
        let rec = size_of::<HvmCpu>();
        let mut buf = Vec::with_capacity(header.len() + cpus.len() * (DESC + rec) + DESC);
        buf.extend_from_slice(header);
        for (vcpu, cpu) in cpus {
            buf.extend_from_slice(&HVM_SAVE_CODE_CPU.to_le_bytes());
            buf.extend_from_slice(&vcpu.to_le_bytes());
            buf.extend_from_slice(&(rec as u32).to_le_bytes());
            let at = buf.len();
            buf.resize(at + rec, 0);
            // SAFETY: buf[at..] has room for one HvmCpu; unaligned write of plain data.
            unsafe { std::ptr::write_unaligned(buf[at..].as_mut_ptr().cast::<HvmCpu>(), *cpu) };
        }
        buf.extend_from_slice(&[0u8; DESC]);
        Self { buf }
    }

    /// (typecode, instance, length) of every record, in order.
    pub fn record_list(&self) -> Vec<(u16, u16, usize)> {
        records(&self.buf)
            .map(|r| (r.typecode, r.instance, r.length))
            .collect()
    }
}

impl XenCtrl {
    /// `xc_domain_hvm_getcontext`: the whole HVM context of a domain.
    /// See docs/xen-vmi.md#hvm-registers
    pub fn hvm_context(&self, domid: u32) -> Result<HvmContext> {
        // SAFETY: NULL/0 asks for the size only.
        let size =
            unsafe { sys::xc_domain_hvm_getcontext(self.raw(), domid, std::ptr::null_mut(), 0) };
        let size = check("xc_domain_hvm_getcontext", size)?;
        if size == 0 {
            return Err(XenError::invalid(
                "xc_domain_hvm_getcontext",
                "empty context",
            ));
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has `size` bytes.
        let n = unsafe {
            sys::xc_domain_hvm_getcontext(self.raw(), domid, buf.as_mut_ptr(), size as u32)
        };
        let n = check("xc_domain_hvm_getcontext", n)?;
        buf.truncate(n as usize);
        Ok(HvmContext { buf })
    }

    /// `xc_domain_hvm_setcontext`: loads a whole HVM context.
    /// See docs/xen-vmi.md#hvm-registers
    pub fn set_hvm_context(&self, domid: u32, ctx: &HvmContext) -> Result<()> {
        let mut buf = ctx.buf.clone();
        // SAFETY: buf holds a context blob of the given length.
        let rc = unsafe {
            sys::xc_domain_hvm_setcontext(self.raw(), domid, buf.as_mut_ptr(), buf.len() as u32)
        };
        check("xc_domain_hvm_setcontext", rc)?;
        Ok(())
    }

    /// `xc_hvm_param_get`: one HVM parameter (`HVM_PARAM_*`) of a domain.
    /// See docs/xen-vmi.md#hvm-registers
    pub fn hvm_param(&self, domid: u32, param: u32) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_hvm_param_get(self.raw(), domid, param, &mut v) };
        check("xc_hvm_param_get", rc)?;
        Ok(v)
    }

    /// `xc_domain_hvm_getcontext_partial` for the CPU record of `vcpu`.
    /// See docs/xen-vmi.md#hvm-registers
    pub fn hvm_cpu(&self, domid: u32, vcpu: u16) -> Result<HvmCpu> {
        let mut cpu = HvmCpu::default();
        // SAFETY: cpu is one hvm_hw_cpu of the size passed.
        let rc = unsafe {
            sys::xc_domain_hvm_getcontext_partial(
                self.raw(),
                domid,
                HVM_SAVE_CODE_CPU,
                vcpu,
                (&mut cpu as *mut HvmCpu).cast(),
                size_of::<HvmCpu>() as u32,
            )
        };
        check("xc_domain_hvm_getcontext_partial", rc)?;
        Ok(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_record(buf: &mut Vec<u8>, typecode: u16, instance: u16, data: &[u8]) {
        buf.extend_from_slice(&typecode.to_le_bytes());
        buf.extend_from_slice(&instance.to_le_bytes());
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(data);
    }

    fn synthetic() -> HvmContext {
        let mut buf = Vec::new();
        push_record(&mut buf, 1, 0, &[0xaa; 24]); // header record
        let mut cpu0 = HvmCpu {
            rip: 0x1000,
            rax: 7,
            ..Default::default()
        };
        cpu0.cr3 = 0x5000;
        let cpu1 = HvmCpu {
            rip: 0x2000,
            ..Default::default()
        };
        for (i, c) in [cpu0, cpu1].iter().enumerate() {
            let mut bytes = vec![0u8; size_of::<HvmCpu>()];
            // SAFETY: test-only serialisation of plain data into a buffer of its size.
            unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<HvmCpu>(), *c) };
            push_record(&mut buf, HVM_SAVE_CODE_CPU, i as u16, &bytes);
        }
        push_record(&mut buf, 5, 0, &[1, 2, 3]);
        push_record(&mut buf, HVM_SAVE_CODE_END, 0, &[]);
        HvmContext::from_bytes(buf)
    }

    #[test]
    fn finds_cpu_records_by_instance() {
        let ctx = synthetic();
        let list = ctx.record_list();
        assert_eq!(list.len(), 4);
        assert_eq!(list[3], (5, 0, 3));
        let c0 = ctx.cpu(0).expect("cpu0");
        assert_eq!((c0.rip, c0.rax, c0.cr3), (0x1000, 7, 0x5000));
        assert_eq!(ctx.cpu(1).expect("cpu1").rip, 0x2000);
        assert!(ctx.cpu(2).is_none());
    }

    #[test]
    fn set_cpu_changes_only_that_record() {
        let mut ctx = synthetic();
        let before = ctx.clone();
        let mut c1 = ctx.cpu(1).expect("cpu1");
        c1.rip = 0xdead;
        assert!(ctx.set_cpu(1, &c1));
        assert_eq!(ctx.cpu(1).map(|c| c.rip), Some(0xdead));
        assert_eq!(ctx.cpu(0).map(|c| c.rip), Some(0x1000));
        assert_eq!(ctx.as_bytes().len(), before.as_bytes().len());
        assert!(!ctx.set_cpu(9, &c1));
    }

    #[test]
    fn a_cpu_only_context_keeps_the_header_and_the_records_given() {
        let ctx = synthetic();
        let header = ctx.header().expect("header");
        assert_eq!(header.len(), DESC + 24);
        let mut c1 = ctx.cpu(1).expect("cpu1");
        c1.rbx = 42;
        let small = HvmContext::with_cpus(&header, &[(1, c1)]);
        assert_eq!(
            small.record_list(),
            vec![(1, 0, 24), (HVM_SAVE_CODE_CPU, 1, size_of::<HvmCpu>())]
        );
        assert_eq!(small.cpu(1).map(|c| c.rbx), Some(42));
        assert!(small.cpu(0).is_none());
        assert!(small.as_bytes().ends_with(&[0u8; DESC]));
    }

    #[test]
    fn truncated_record_stops_iteration() {
        let mut buf = Vec::new();
        push_record(&mut buf, HVM_SAVE_CODE_CPU, 0, &[0; 16]);
        buf.truncate(buf.len() - 4);
        assert!(HvmContext::from_bytes(buf).record_list().is_empty());
    }
}
