//! One register set for PV and HVM/PVH vCPUs.
//!
//! Two sources fill it: the PV vCPU context (`xc_vcpu_getcontext`) and the
//! HVM CPU save record (`xc_domain_hvm_getcontext`). [`RegisterBackend`] is
//! the seam between them.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::xen::{HvmContext, HvmCpu, VcpuContext, XenCtrl};

use super::error::Result;

/// RFLAGS.TF, the trap flag used for single-stepping.
pub const RFLAGS_TF: u64 = 1 << 8;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NX: u64 = 1 << 11;
/// `VGCF_in_kernel`: a PV vCPU is in guest kernel mode.
const VGCF_IN_KERNEL: u64 = 1 << 2;

/// A segment register: selector and base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
}

/// The registers of one x86-64 vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub es: Segment,
    /// `fs.base` is FS_BASE.
    pub fs: Segment,
    /// `gs.base` is the active GS_BASE.
    pub gs: Segment,
    /// The inactive GS base (KERNEL_GS_BASE / swapgs shadow).
    pub shadow_gs: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// EFER. PV guests have no EFER of their own: reported as long mode
    /// with NX and SYSCALL on, writes are ignored.
    pub efer: u64,
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
}

impl Registers {
    /// Names of [`Registers::gprs`], in the same order.
    pub const GPR_NAMES: [&'static str; 16] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];

    /// The general registers, RIP, RFLAGS, CR0/2/3/4 and EFER with their
    /// names, in that order (for printing).
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> =
            Self::GPR_NAMES.iter().copied().zip(self.gprs()).collect();
        v.extend([
            ("rip", self.rip),
            ("rflags", self.rflags),
            ("cr0", self.cr0),
            ("cr2", self.cr2),
            ("cr3", self.cr3),
            ("cr4", self.cr4),
            ("efer", self.efer),
        ]);
        v
    }

    /// General-purpose registers in the order gdb's amd64 target uses
    /// (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15).
    pub fn gprs(&self) -> [u64; 16] {
        [
            self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.rsp,
            self.r8, self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15,
        ]
    }

    /// Reads the HVM CPU record.
    pub fn from_hvm(c: &HvmCpu) -> Self {
        Self {
            rax: c.rax,
            rbx: c.rbx,
            rcx: c.rcx,
            rdx: c.rdx,
            rsi: c.rsi,
            rdi: c.rdi,
            rbp: c.rbp,
            rsp: c.rsp,
            r8: c.r8,
            r9: c.r9,
            r10: c.r10,
            r11: c.r11,
            r12: c.r12,
            r13: c.r13,
            r14: c.r14,
            r15: c.r15,
            rip: c.rip,
            rflags: c.rflags,
            cs: Segment {
                selector: c.cs_sel as u16,
                base: c.cs_base,
            },
            ss: Segment {
                selector: c.ss_sel as u16,
                base: c.ss_base,
            },
            ds: Segment {
                selector: c.ds_sel as u16,
                base: c.ds_base,
            },
            es: Segment {
                selector: c.es_sel as u16,
                base: c.es_base,
            },
            fs: Segment {
                selector: c.fs_sel as u16,
                base: c.fs_base,
            },
            gs: Segment {
                selector: c.gs_sel as u16,
                base: c.gs_base,
            },
            shadow_gs: c.shadow_gs,
            cr0: c.cr0,
            cr2: c.cr2,
            cr3: c.cr3,
            cr4: c.cr4,
            efer: c.msr_efer,
            dr0: c.dr0,
            dr1: c.dr1,
            dr2: c.dr2,
            dr3: c.dr3,
            dr6: c.dr6,
            dr7: c.dr7,
        }
    }

    /// Writes into an HVM CPU record (fields not represented here are kept).
    pub fn apply_to_hvm(&self, c: &mut HvmCpu) {
        c.rax = self.rax;
        c.rbx = self.rbx;
        c.rcx = self.rcx;
        c.rdx = self.rdx;
        c.rsi = self.rsi;
        c.rdi = self.rdi;
        c.rbp = self.rbp;
        c.rsp = self.rsp;
        c.r8 = self.r8;
        c.r9 = self.r9;
        c.r10 = self.r10;
        c.r11 = self.r11;
        c.r12 = self.r12;
        c.r13 = self.r13;
        c.r14 = self.r14;
        c.r15 = self.r15;
        c.rip = self.rip;
        c.rflags = self.rflags;
        c.cs_sel = self.cs.selector.into();
        c.ss_sel = self.ss.selector.into();
        c.ds_sel = self.ds.selector.into();
        c.es_sel = self.es.selector.into();
        c.fs_sel = self.fs.selector.into();
        c.gs_sel = self.gs.selector.into();
        c.cs_base = self.cs.base;
        c.ss_base = self.ss.base;
        c.ds_base = self.ds.base;
        c.es_base = self.es.base;
        c.fs_base = self.fs.base;
        c.gs_base = self.gs.base;
        c.shadow_gs = self.shadow_gs;
        c.cr0 = self.cr0;
        c.cr2 = self.cr2;
        c.cr3 = self.cr3;
        c.cr4 = self.cr4;
        c.msr_efer = self.efer;
        c.dr0 = self.dr0;
        c.dr1 = self.dr1;
        c.dr2 = self.dr2;
        c.dr3 = self.dr3;
        c.dr6 = self.dr6;
        c.dr7 = self.dr7;
    }

    /// Reads a 64-bit PV vCPU context.
    pub fn from_pv(c: &VcpuContext) -> Self {
        let x = c.x64();
        let u = &x.user_regs;
        let in_kernel = x.flags & VGCF_IN_KERNEL != 0;
        let (gs_base, shadow_gs) = if in_kernel {
            (x.gs_base_kernel, x.gs_base_user)
        } else {
            (x.gs_base_user, x.gs_base_kernel)
        };
        let seg = |selector: u16| Segment { selector, base: 0 };
        Self {
            rax: c.rax(),
            rbx: c.rbx(),
            rcx: c.rcx(),
            rdx: c.rdx(),
            rsi: c.rsi(),
            rdi: c.rdi(),
            rbp: c.rbp(),
            rsp: c.rsp(),
            r8: c.r8(),
            r9: c.r9(),
            r10: c.r10(),
            r11: c.r11(),
            r12: c.r12(),
            r13: c.r13(),
            r14: c.r14(),
            r15: c.r15(),
            rip: c.rip(),
            rflags: c.rflags(),
            cs: seg(u.cs),
            ss: seg(u.ss),
            ds: seg(u.ds),
            es: seg(u.es),
            fs: Segment {
                selector: u.fs,
                base: x.fs_base,
            },
            gs: Segment {
                selector: u.gs,
                base: gs_base,
            },
            shadow_gs,
            cr0: x.ctrlreg[0],
            cr2: x.ctrlreg[2],
            cr3: x.ctrlreg[3],
            cr4: x.ctrlreg[4],
            efer: EFER_SCE | EFER_LME | EFER_LMA | EFER_NX,
            dr0: x.debugreg[0],
            dr1: x.debugreg[1],
            dr2: x.debugreg[2],
            dr3: x.debugreg[3],
            dr6: x.debugreg[6],
            dr7: x.debugreg[7],
        }
    }

    /// Writes into a 64-bit PV vCPU context.
    pub fn apply_to_pv(&self, c: &mut VcpuContext) {
        c.set_rax(self.rax);
        c.set_rbx(self.rbx);
        c.set_rcx(self.rcx);
        c.set_rdx(self.rdx);
        c.set_rsi(self.rsi);
        c.set_rdi(self.rdi);
        c.set_rbp(self.rbp);
        c.set_rsp(self.rsp);
        c.set_r8(self.r8);
        c.set_r9(self.r9);
        c.set_r10(self.r10);
        c.set_r11(self.r11);
        c.set_r12(self.r12);
        c.set_r13(self.r13);
        c.set_r14(self.r14);
        c.set_r15(self.r15);
        c.set_rip(self.rip);
        c.set_rflags(self.rflags);
        let x = c.x64_mut();
        let in_kernel = x.flags & VGCF_IN_KERNEL != 0;
        x.user_regs.cs = self.cs.selector;
        x.user_regs.ss = self.ss.selector;
        x.user_regs.ds = self.ds.selector;
        x.user_regs.es = self.es.selector;
        x.user_regs.fs = self.fs.selector;
        x.user_regs.gs = self.gs.selector;
        x.fs_base = self.fs.base;
        if in_kernel {
            x.gs_base_kernel = self.gs.base;
            x.gs_base_user = self.shadow_gs;
        } else {
            x.gs_base_user = self.gs.base;
            x.gs_base_kernel = self.shadow_gs;
        }
        x.ctrlreg[0] = self.cr0;
        x.ctrlreg[2] = self.cr2;
        x.ctrlreg[3] = self.cr3;
        x.ctrlreg[4] = self.cr4;
        x.debugreg[0] = self.dr0;
        x.debugreg[1] = self.dr1;
        x.debugreg[2] = self.dr2;
        x.debugreg[3] = self.dr3;
        x.debugreg[6] = self.dr6;
        x.debugreg[7] = self.dr7;
    }
}

/// Where a guest type keeps its vCPU registers.
///
/// While the domain is stopped (`stopped` = true) a backend may keep the
/// last context it read or wrote, so that a write after a read is one
/// hypercall; [`RegisterBackend::forget`] drops it (the guest ran, or its
/// state was loaded by another route).
pub(crate) trait RegisterBackend: Send {
    /// Reads the registers of `vcpu`.
    fn get(&self, xc: &XenCtrl, domid: u32, vcpu: u32, stopped: bool) -> Result<Registers>;
    /// Writes the registers of `vcpu`.
    fn set(
        &self,
        xc: &XenCtrl,
        domid: u32,
        vcpu: u32,
        regs: &Registers,
        stopped: bool,
    ) -> Result<()>;
    /// Drops cached vCPU state.
    fn forget(&self);
}

/// PV: `xc_vcpu_getcontext` / `xc_vcpu_setcontext`.
#[derive(Default)]
pub(crate) struct PvRegisters {
    cache: RefCell<HashMap<u32, VcpuContext>>,
}

impl PvRegisters {
    fn context(&self, xc: &XenCtrl, domid: u32, vcpu: u32, stopped: bool) -> Result<VcpuContext> {
        if let Some(c) = self.cache.borrow().get(&vcpu).filter(|_| stopped) {
            return Ok(*c);
        }
        let c = xc.vcpu_context(domid, vcpu)?;
        if stopped {
            self.cache.borrow_mut().insert(vcpu, c);
        }
        Ok(c)
    }
}

impl RegisterBackend for PvRegisters {
    fn get(&self, xc: &XenCtrl, domid: u32, vcpu: u32, stopped: bool) -> Result<Registers> {
        Ok(Registers::from_pv(&self.context(xc, domid, vcpu, stopped)?))
    }
    fn set(
        &self,
        xc: &XenCtrl,
        domid: u32,
        vcpu: u32,
        regs: &Registers,
        stopped: bool,
    ) -> Result<()> {
        let mut ctx = self.context(xc, domid, vcpu, stopped)?;
        regs.apply_to_pv(&mut ctx);
        let r = xc.set_vcpu_context(domid, vcpu, &ctx);
        let mut cache = self.cache.borrow_mut();
        match (&r, stopped) {
            (Ok(()), true) => cache.insert(vcpu, ctx),
            _ => cache.remove(&vcpu),
        };
        Ok(r?)
    }
    fn forget(&self) {
        self.cache.borrow_mut().clear();
    }
}

/// HVM and PVH: the CPU save record. Reads take the record alone
/// (`xc_domain_hvm_getcontext_partial`). Writes of a single-vCPU domain
/// load a context of the save header and the CPU record only (Xen loads
/// nothing else; about 2/3 of a whole context's cost); domains with
/// several vCPUs load the whole context with the record changed.
pub(crate) struct HvmRegisters {
    single_vcpu: bool,
    /// The save header record, fetched once (constant for a domain).
    header: RefCell<Option<Vec<u8>>>,
    /// CPU records read or written while stopped.
    cache: RefCell<HashMap<u32, HvmCpu>>,
}

impl HvmRegisters {
    /// Backend for a domain with `vcpus` vCPUs.
    pub(crate) fn new(vcpus: u32) -> Self {
        Self {
            single_vcpu: vcpus == 1,
            header: RefCell::new(None),
            cache: RefCell::new(HashMap::new()),
        }
    }

    fn cpu(&self, xc: &XenCtrl, domid: u32, vcpu: u32, stopped: bool) -> Result<HvmCpu> {
        if let Some(c) = self.cache.borrow().get(&vcpu).filter(|_| stopped) {
            return Ok(*c);
        }
        let c = xc.hvm_cpu(domid, vcpu_id(vcpu)?)?;
        if stopped {
            self.cache.borrow_mut().insert(vcpu, c);
        }
        Ok(c)
    }

    fn load(&self, xc: &XenCtrl, domid: u32, vcpu: u32, cpu: &HvmCpu) -> Result<()> {
        let id = vcpu_id(vcpu)?;
        let header = self.header.borrow().clone();
        let ctx = match header {
            Some(h) if self.single_vcpu && vcpu == 0 => HvmContext::with_cpus(&h, &[(id, *cpu)]),
            _ => {
                let mut ctx = xc.hvm_context(domid)?;
                if !ctx.set_cpu(id, cpu) {
                    return Err(crate::xen::XenError::Invalid {
                        call: "xc_domain_hvm_getcontext",
                        msg: format!("no CPU record for vcpu {vcpu}"),
                    }
                    .into());
                }
                if self.single_vcpu {
                    *self.header.borrow_mut() = ctx.header();
                }
                ctx
            }
        };
        Ok(xc.set_hvm_context(domid, &ctx)?)
    }
}

fn vcpu_id(vcpu: u32) -> Result<u16> {
    u16::try_from(vcpu).map_err(|_| {
        crate::xen::XenError::Invalid {
            call: "xc_domain_hvm_getcontext_partial",
            msg: format!("vcpu {vcpu} out of range"),
        }
        .into()
    })
}

impl RegisterBackend for HvmRegisters {
    fn get(&self, xc: &XenCtrl, domid: u32, vcpu: u32, stopped: bool) -> Result<Registers> {
        Ok(Registers::from_hvm(&self.cpu(xc, domid, vcpu, stopped)?))
    }
    fn set(
        &self,
        xc: &XenCtrl,
        domid: u32,
        vcpu: u32,
        regs: &Registers,
        stopped: bool,
    ) -> Result<()> {
        let mut cpu = self.cpu(xc, domid, vcpu, stopped)?;
        regs.apply_to_hvm(&mut cpu);
        let r = self.load(xc, domid, vcpu, &cpu);
        let mut cache = self.cache.borrow_mut();
        match (&r, stopped) {
            (Ok(()), true) => cache.insert(vcpu, cpu),
            _ => cache.remove(&vcpu),
        };
        r
    }
    fn forget(&self) {
        self.cache.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Registers {
        let mut r = Registers::default();
        let vals: Vec<u64> = (1..=16).map(|i| i * 0x1111).collect();
        [
            &mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.rbp,
            &mut r.rsp, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
            &mut r.r14, &mut r.r15,
        ]
        .into_iter()
        .zip(vals)
        .for_each(|(f, v)| *f = v);
        r.rip = 0xffff_8000_0000_1000;
        r.rflags = 0x246;
        r.cs = Segment {
            selector: 0x10,
            base: 0,
        };
        r.ss = Segment {
            selector: 0x18,
            base: 0,
        };
        r.fs = Segment {
            selector: 0,
            base: 0x7f00_0000,
        };
        r.gs = Segment {
            selector: 0,
            base: 0xffff_9000_0000_0000,
        };
        r.shadow_gs = 0x1234;
        r.cr0 = 0x8005_0033;
        r.cr2 = 0xdead;
        r.cr3 = 0x10_0000;
        r.cr4 = 0x20;
        r.dr0 = 1;
        r.dr3 = 3;
        r.dr6 = 0xffff_0ff0;
        r.dr7 = 0x400;
        r
    }

    #[test]
    fn gpr_order_follows_gdb() {
        let r = sample();
        let g = r.gprs();
        assert_eq!(g[0], r.rax);
        assert_eq!(g[1], r.rbx);
        assert_eq!(g[6], r.rbp);
        assert_eq!(g[7], r.rsp);
        assert_eq!(g[15], r.r15);
    }

    #[test]
    fn hvm_round_trip_and_field_mapping() {
        let mut r = sample();
        r.efer = 0xd01;
        let mut cpu = HvmCpu {
            idtr_base: 0x5555, // not represented: must survive
            ..Default::default()
        };
        r.apply_to_hvm(&mut cpu);
        assert_eq!(cpu.rbx, 0x2222);
        assert_eq!(cpu.rsp, 0x8888);
        assert_eq!(cpu.r15, 16 * 0x1111);
        assert_eq!(cpu.cs_sel, 0x10);
        assert_eq!(cpu.fs_base, 0x7f00_0000);
        assert_eq!(cpu.msr_efer, 0xd01);
        assert_eq!(cpu.idtr_base, 0x5555);
        assert_eq!(Registers::from_hvm(&cpu), r);
    }

    #[test]
    fn pv_round_trip_and_field_mapping() {
        let r0 = sample();
        let mut ctx = VcpuContextBuilder::kernel();
        r0.apply_to_pv(&mut ctx);
        assert_eq!(ctx.rax(), 0x1111);
        assert_eq!(ctx.r8(), 9 * 0x1111);
        assert_eq!(ctx.rip(), r0.rip);
        assert_eq!(ctx.x64().ctrlreg[3], r0.cr3);
        assert_eq!(ctx.x64().debugreg[7], 0x400);
        assert_eq!(
            ctx.x64().gs_base_kernel,
            r0.gs.base,
            "kernel mode: active GS is the kernel one"
        );
        assert_eq!(ctx.x64().gs_base_user, r0.shadow_gs);
        let back = Registers::from_pv(&ctx);
        let expect = Registers {
            efer: EFER_SCE | EFER_LME | EFER_LMA | EFER_NX,
            ..r0
        };
        assert_eq!(back, expect);
    }

    #[test]
    fn pv_user_mode_swaps_gs() {
        let mut ctx = VcpuContextBuilder::user();
        let r0 = sample();
        r0.apply_to_pv(&mut ctx);
        assert_eq!(ctx.x64().gs_base_user, r0.gs.base);
        assert_eq!(ctx.x64().gs_base_kernel, r0.shadow_gs);
        assert_eq!(Registers::from_pv(&ctx).gs.base, r0.gs.base);
    }

    /// Builds PV contexts for tests.
    struct VcpuContextBuilder;
    impl VcpuContextBuilder {
        fn kernel() -> VcpuContext {
            let mut c = VcpuContext::zeroed();
            c.x64_mut().flags = VGCF_IN_KERNEL;
            c
        }
        fn user() -> VcpuContext {
            VcpuContext::zeroed()
        }
    }
}
