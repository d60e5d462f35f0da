//! Exception handling: an IDT (with IST stacks for #PF and #DF) on PVH/HVM, the
//! PV trap table (`HYPERVISOR_set_trap_table`) on PV. Every CPU exception is
//! reported through [`crate::crash::report_fault`].

use crate::{hypercall::hypercall, xen};
use core::arch::{asm, global_asm};

// Stubs per vector. PV frames carry the guest's %rcx and %r11 on top (Xen saved
// them), so the PV stubs pop those first; afterwards both kinds of stubs push
// (error code, vector) so that `trap_common` sees one frame layout.
global_asm!(
    r#"
    .macro push_vector n, err
    .if \err == 0
    push $0
    .endif
    push $\n
    .endm
    .macro hvm_stub n, err
trap_hvm_\n:
    push_vector \n, \err
    jmp trap_common
    .endm
    .macro pv_stub n, err
trap_pv_\n:
    pop %rcx
    pop %r11
    push_vector \n, \err
    jmp trap_common
    .endm

    .text
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    hvm_stub \n, 0
    pv_stub \n, 0
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    hvm_stub \n, 1
    pv_stub \n, 1
    .endr

trap_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    and $-16, %rsp
    call xenprobe_rt_trap
1:  jmp 1b

    .section .rodata
    .balign 8
    .global trap_hvm_table
trap_hvm_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_hvm_\n
    .endr
    .global trap_pv_table
trap_pv_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_pv_\n
    .endr
    .previous
"#,
    options(att_syntax)
);

extern "C" {
    static trap_hvm_table: [u64; 32];
    static trap_pv_table: [u64; 32];
    static mut boot_gdt: [u64; 5];
}

/// The registers saved by the stubs, then the CPU's exception frame.
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[repr(C, align(16))]
struct Idt([u64; 64]);
static mut IDT: Idt = Idt([0; 64]);

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap: u16,
}
static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap: 104,
};

#[repr(C, align(16))]
struct IstStack([u8; 16384]);
static mut IST_PF: IstStack = IstStack([0; 16384]);
static mut IST_DF: IstStack = IstStack([0; 16384]);

#[repr(C, packed)]
struct DescPtr {
    limit: u16,
    base: u64,
}

/// PVH/HVM: loads the TSS (IST1 for #PF, IST2 for #DF) and an IDT for vectors 0-31.
pub fn init_hvm() {
    unsafe {
        let tss = core::ptr::addr_of_mut!(TSS);
        (*tss).ist[0] = core::ptr::addr_of!(IST_PF) as u64 + 16384;
        (*tss).ist[1] = core::ptr::addr_of!(IST_DF) as u64 + 16384;
        let base = tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89u64 << 40)
            | (((base >> 24) & 0xff) << 56);
        let gdt = core::ptr::addr_of_mut!(boot_gdt) as *mut u64;
        gdt.add(3).write_volatile(low);
        gdt.add(4).write_volatile(base >> 32);
        asm!("ltr {0:x}", in(reg) 0x18u16, options(nostack));

        let idt = core::ptr::addr_of_mut!(IDT) as *mut u64;
        let table = &*core::ptr::addr_of!(trap_hvm_table);
        for (v, &h) in table.iter().enumerate() {
            let ist = match v {
                14 => 1u64,
                8 => 2,
                _ => 0,
            };
            let lo = (h & 0xffff)
                | (0x08 << 16)
                | (ist << 32)
                | (0x8eu64 << 40)
                | (((h >> 16) & 0xffff) << 48);
            idt.add(2 * v).write_volatile(lo);
            idt.add(2 * v + 1).write_volatile(h >> 32);
        }
        let ptr = DescPtr {
            limit: (32 * 16 - 1) as u16,
            base: idt as u64,
        };
        asm!("lidt [{0}]", in(reg) &ptr, options(nostack));
    }
}

/// PV: registers the trap table for vectors 0-31.
pub fn init_pv() {
    static mut TABLE: [xen::TrapInfo; 33] = [xen::TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        address: 0,
    }; 33];
    unsafe {
        let t = core::ptr::addr_of_mut!(TABLE) as *mut xen::TrapInfo;
        let stubs = &*core::ptr::addr_of!(trap_pv_table);
        for (v, &h) in stubs.iter().enumerate() {
            // DPL 3 for #BP and #OF so that int3/into work as on hardware.
            let dpl = if v == 3 || v == 4 { 3 } else { 0 };
            t.add(v).write(xen::TrapInfo {
                vector: v as u8,
                flags: dpl,
                cs: xen::FLAT_KERNEL_CS64,
                address: h,
            });
        }
        hypercall(xen::hc::SET_TRAP_TABLE, t as usize, 0, 0, 0, 0);
    }
}

/// Removes every exception handler: PVH/HVM load an empty IDT, PV clears the
/// trap table. The next exception then ends the domain without any report
/// (a triple fault on PVH/HVM; on PV, Xen crashes the domain).
pub fn drop_exception_handlers() {
    unsafe {
        if crate::boot::is_pv() {
            hypercall(xen::hc::SET_TRAP_TABLE, 0, 0, 0, 0, 0);
        } else {
            let ptr = DescPtr { limit: 0, base: 0 };
            asm!("lidt [{0}]", in(reg) &ptr, options(nostack));
        }
    }
}

/// Reads CR2 (emulated by Xen for PV guests).
pub fn read_cr2() -> u64 {
    let v: u64;
    unsafe { asm!("mov {0}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

#[no_mangle]
extern "C" fn xenprobe_rt_trap(frame: &TrapFrame) -> ! {
    crate::crash::report_fault(frame)
}
