//! PV vCPU context (`xc_vcpu_getcontext` / `xc_vcpu_setcontext`), 64-bit guests.

use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::error::{check, Result};

/// A 64-bit PV vCPU context (`vcpu_guest_context_x86_64`).
#[derive(Clone, Copy)]
pub struct VcpuContext(sys::vcpu_guest_context_any_t);

/// What `xc_vcpu_getinfo` says of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuState {
    /// Up (initialised and not brought down).
    pub online: bool,
    /// Nanoseconds it has run.
    pub cpu_time: u64,
}

impl std::fmt::Debug for VcpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuContext")
            .field("rip", &self.rip())
            .field("rsp", &self.rsp())
            .field("rflags", &self.rflags())
            .finish_non_exhaustive()
    }
}

macro_rules! user_regs {
    ($($get:ident $set:ident $anon:ident;)*) => {
        $(
            #[doc = concat!("`user_regs.", stringify!($get), "`.")]
            pub fn $get(&self) -> u64 {
                // SAFETY: every bit pattern is a valid u64 in these unions.
                unsafe { self.x64().user_regs.$anon.$get }
            }
            #[doc = concat!("Sets `user_regs.", stringify!($get), "`.")]
            pub fn $set(&mut self, v: u64) {
                self.x64_mut().user_regs.$anon.$get = v;
            }
        )*
    };
}

impl VcpuContext {
    /// An all-zero context (to build one from scratch).
    pub fn zeroed() -> Self {
        Self(sys::vcpu_guest_context_any_t::default())
    }

    /// The 64-bit view of the context.
    pub fn x64(&self) -> &sys::vcpu_guest_context_x86_64 {
        // SAFETY: the union holds plain integers; any bit pattern is valid.
        unsafe { &self.0.x64 }
    }

    /// The 64-bit view of the context, mutable.
    pub fn x64_mut(&mut self) -> &mut sys::vcpu_guest_context_x86_64 {
        // SAFETY: as above; writing integers keeps the union valid.
        unsafe { &mut self.0.x64 }
    }

    user_regs! {
        r15 set_r15 __bindgen_anon_1;
        r14 set_r14 __bindgen_anon_2;
        r13 set_r13 __bindgen_anon_3;
        r12 set_r12 __bindgen_anon_4;
        rbp set_rbp __bindgen_anon_5;
        rbx set_rbx __bindgen_anon_6;
        r11 set_r11 __bindgen_anon_7;
        r10 set_r10 __bindgen_anon_8;
        r9 set_r9 __bindgen_anon_9;
        r8 set_r8 __bindgen_anon_10;
        rax set_rax __bindgen_anon_11;
        rcx set_rcx __bindgen_anon_12;
        rdx set_rdx __bindgen_anon_13;
        rsi set_rsi __bindgen_anon_14;
        rdi set_rdi __bindgen_anon_15;
        rip set_rip __bindgen_anon_16;
        rflags set_rflags __bindgen_anon_17;
        rsp set_rsp __bindgen_anon_18;
    }
}

impl XenCtrl {
    /// `xc_vcpu_getcontext`.
    /// See docs/xen-vmi.md#pv-registers
    pub fn vcpu_context(&self, domid: u32, vcpu: u32) -> Result<VcpuContext> {
        let mut ctx = sys::vcpu_guest_context_any_t::default();
        // SAFETY: ctx is a full vcpu_guest_context_any_t.
        let rc = unsafe { sys::xc_vcpu_getcontext(self.raw(), domid, vcpu, &mut ctx) };
        check("xc_vcpu_getcontext", rc)?;
        Ok(VcpuContext(ctx))
    }

    /// `xc_vcpu_setcontext`.
    /// See docs/xen-vmi.md#pv-registers
    pub fn set_vcpu_context(&self, domid: u32, vcpu: u32, ctx: &VcpuContext) -> Result<()> {
        let mut c = ctx.0;
        // SAFETY: c is a full vcpu_guest_context_any_t the library only reads.
        let rc = unsafe { sys::xc_vcpu_setcontext(self.raw(), domid, vcpu, &mut c) };
        check("xc_vcpu_setcontext", rc)?;
        Ok(())
    }

    /// `xc_vcpu_getinfo`: whether `vcpu` is up (initialised and not
    /// brought down).
    /// See docs/xen-vmi.md#vcpus-the-guest-brings-up
    pub fn vcpu_online(&self, domid: u32, vcpu: u32) -> Result<bool> {
        Ok(self.vcpu_state(domid, vcpu)?.online)
    }

    /// `xc_vcpu_getinfo`: whether `vcpu` is up, and the CPU time it has run
    /// (unchanged while it stays down: a vCPU that was brought up and went
    /// down again since is told by its time).
    pub fn vcpu_state(&self, domid: u32, vcpu: u32) -> Result<VcpuState> {
        let mut info = sys::xc_vcpuinfo_t::default();
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_vcpu_getinfo(self.raw(), domid, vcpu, &mut info) };
        check("xc_vcpu_getinfo", rc)?;
        Ok(VcpuState {
            online: info.online != 0,
            cpu_time: info.cpu_time,
        })
    }

    /// `xc_vcpu_setcontext` with no context (`XEN_DOMCTL_setvcpucontext`
    /// with a null handle): resets `vcpu` to down and uninitialised, as
    /// before the guest brought it up. The domain must be paused.
    /// See docs/xen-vmi.md#vcpus-the-guest-brings-up
    pub fn vcpu_reset(&self, domid: u32, vcpu: u32) -> Result<()> {
        // SAFETY: libxenctrl passes a null context through as a null handle.
        let rc = unsafe { sys::xc_vcpu_setcontext(self.raw(), domid, vcpu, std::ptr::null_mut()) };
        check("xc_vcpu_setcontext(NULL)", rc)?;
        Ok(())
    }
}
