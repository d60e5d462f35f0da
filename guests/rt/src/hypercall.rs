//! Hypercalls through the hypercall page (filled by Xen for PV; installed with
//! the Xen MSR for PVH/HVM, see [`install_page_hvm`]).

use core::arch::{asm, global_asm};

global_asm!(
    ".section .text.hypercall_page, \"ax\"",
    ".balign 4096",
    ".global hypercall_page",
    "hypercall_page:",
    ".fill 4096, 1, 0xcc",
    ".previous",
);

extern "C" {
    static hypercall_page: u8;
}

/// Calls hypercall `nr` with up to five arguments; returns Xen's result.
///
/// # Safety
/// The arguments must be valid for that hypercall (pointers to live memory).
pub unsafe fn hypercall(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let entry = core::ptr::addr_of!(hypercall_page) as usize + nr * 32;
    let ret: isize;
    asm!(
        "call {entry}",
        entry = in(reg) entry,
        lateout("rax") ret,
        inout("rdi") a1 => _,
        inout("rsi") a2 => _,
        inout("rdx") a3 => _,
        inout("r10") a4 => _,
        inout("r8") a5 => _,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

/// Finds Xen's CPUID leaves and writes the hypercall MSR so that Xen fills
/// the hypercall page (PVH and HVM). Returns false when no Xen leaves exist.
pub fn install_page_hvm() -> bool {
    let mut base = 0x4000_0000u32;
    while base < 0x4001_0000 {
        let r = core::arch::x86_64::__cpuid(base);
        // "XenVMMXenVMM" in ebx, ecx, edx.
        if r.ebx == 0x566e_6558 && r.ecx == 0x65584d4d && r.edx == 0x4d4d_566e && r.eax - base >= 2
        {
            let l = core::arch::x86_64::__cpuid(base + 2);
            let msr = l.ebx;
            let addr = core::ptr::addr_of!(hypercall_page) as u64;
            unsafe {
                asm!("wrmsr", in("ecx") msr, in("eax") addr as u32, in("edx") (addr >> 32) as u32,
                     options(nostack));
            }
            return true;
        }
        base += 0x100;
    }
    false
}
