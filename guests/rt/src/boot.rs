//! Entry points: the 64-bit PV entry and the 32-bit PVH/HVM entry (with its own
//! GDT and identity page tables for the first 4 GiB), the Xen ELF notes, and the
//! Rust side of booting up to the guest's main function.

use crate::{console, hypercall, traps, xen};
use core::arch::global_asm;

// Xen ELF notes (XEN_ELFNOTE_*): PV loads the image at VIRT_BASE 0 (virtual ==
// pseudo-physical, like Mini-OS) and enters `_start_pv`; PVH and HVM enter
// `_start32` in 32-bit protected mode with paging off.
global_asm!(
    // A note's header; its description follows, ended by `2:`.
    ".macro xen_note_head type",
    ".p2align 2",
    ".long 4",
    ".long 2f - 1f",
    ".long \\type",
    ".asciz \"Xen\"",
    ".p2align 2",
    "1:",
    ".endm",
    ".macro xen_note type, kind, value",
    "xen_note_head \\type",
    "\\kind \\value",
    "2:",
    ".p2align 2",
    ".endm",
    ".macro xen_note_str type, value",
    "xen_note_head \\type",
    ".asciz \"\\value\"",
    "2:",
    ".p2align 2",
    ".endm",
    ".section .note.Xen, \"a\", @note",
    "xen_note_str 6, xenprobe",               // GUEST_OS
    "xen_note_str 7, 0.1",                    // GUEST_VERSION
    "xen_note_str 5, xen-3.0",                // XEN_VERSION
    "xen_note_str 8, generic",                // LOADER
    "xen_note 3, .quad, 0",                   // VIRT_BASE
    "xen_note 4, .quad, 0",                   // PADDR_OFFSET
    "xen_note 1, .quad, _start_pv",           // ENTRY
    "xen_note 2, .quad, hypercall_page",      // HYPERCALL_PAGE
    "xen_note_str 10, !writable_page_tables", // FEATURES
    "xen_note 18, .long, _start32",           // PHYS32_ENTRY
    ".previous",
);

// Entry code, boot GDT and identity page tables (PML4 -> PDPT -> 4 PDs of 2 MiB
// pages; the first 4 MiB through two page tables of 4 KiB pages so that page 0
// and the stack guard page can stay unmapped).
global_asm!(
    r#"
    .section .text.boot, "ax"; .cfi_sections .debug_frame
    .code64
    .global _start_pv
_start_pv: .cfi_startproc; .cfi_undefined rip // outermost frame: debuggers stop here
    lea __stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %rsi, %rdi
    call xenprobe_rt_pv_entry
1:  jmp 1b; .cfi_endproc

    .code32
    .global _start32
_start32:
    cli
    mov %ebx, %esi
    lgdt boot_gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    ljmp $0x08, $_start64

    .code64
_start64: .cfi_startproc; .cfi_undefined rip // outermost frame (no return address)
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $__stack_top, %rsp
    xor %ebp, %ebp
    mov %esi, %edi
    call xenprobe_rt_hvm_entry
1:  jmp 1b; .cfi_endproc

    .section .data.boot_pt, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x3
    .quad boot_pd + 0x1003
    .quad boot_pd + 0x2003
    .quad boot_pd + 0x3003
    .fill 508, 8, 0
boot_pd:
    .quad boot_pt + 0x3
    .quad boot_pt + 0x1003
    .set pde, 2
    .rept 2046
    .quad (pde << 21) + 0x83
    .set pde, pde + 1
    .endr
    .global boot_pt
boot_pt:
    .quad 0
    .set pte, 1
    .rept 1023
    .quad (pte << 12) + 0x3
    .set pte, pte + 1
    .endr

    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0
    .quad 0
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .previous
"#,
    options(att_syntax)
);

/// How the guest was booted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Pv,
    Pvh,
    Hvm,
}

impl Mode {
    /// `pv`, `pvh` or `hvm`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pv => "pv",
            Mode::Pvh => "pvh",
            Mode::Hvm => "hvm",
        }
    }
}

/// What the guest learnt at boot.
pub struct BootInfo {
    pub mode: Mode,
    /// The kernel command line (`extra=`/`cmdline=` in the xl config; PV and PVH).
    pub cmdline: &'static str,
}

impl BootInfo {
    /// The value of `key=value` on the command line.
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        self.cmdline.split(' ').find_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

static mut CMDLINE: [u8; 1024] = [0; 1024];
static mut IS_PV: bool = false;

/// True when the guest was booted as PV.
pub fn is_pv() -> bool {
    unsafe { IS_PV }
}

extern "C" {
    static __stack_guard: u8;
    static mut boot_pt: [u64; 1024];
}

extern "Rust" {
    fn xenprobe_guest_main(boot: &BootInfo) -> i32;
    static xenprobe_guest_name: &'static str;
}

/// Address of the page below the stack that stays unmapped.
pub fn stack_guard() -> usize {
    core::ptr::addr_of!(__stack_guard) as usize
}

/// Copies a NUL-terminated command line into static storage.
unsafe fn save_cmdline(src: *const u8, max: usize) -> &'static str {
    let dst = core::ptr::addr_of_mut!(CMDLINE) as *mut u8;
    let mut n = 0;
    while n < max.min(1023) {
        let c = src.add(n).read_volatile();
        if c == 0 {
            break;
        }
        dst.add(n).write(c);
        n += 1;
    }
    core::str::from_utf8(core::slice::from_raw_parts(dst, n)).unwrap_or("")
}

#[no_mangle]
unsafe extern "C" fn xenprobe_rt_pv_entry(si: *const xen::StartInfo) -> ! {
    IS_PV = true;
    traps::init_pv();
    // Page 0 and the stack guard page become not-present.
    for va in [0usize, stack_guard()] {
        hypercall::hypercall(xen::hc::UPDATE_VA_MAPPING, va, 0, xen::UVMF_INVLPG, 0, 0);
    }
    let si = &*si;
    let m2p = xen::MACH2PHYS_VIRT_START as *const u64;
    let pfn = m2p.add(si.console_mfn as usize).read_volatile();
    console::init((pfn << 12) as usize, si.console_evtchn);
    let cmdline = save_cmdline(si.cmd_line.as_ptr(), si.cmd_line.len());
    run(BootInfo {
        mode: Mode::Pv,
        cmdline,
    })
}

#[no_mangle]
unsafe extern "C" fn xenprobe_rt_hvm_entry(start_info: u32) -> ! {
    if !hypercall::install_page_hvm() {
        loop {
            core::hint::spin_loop();
        }
    }
    traps::init_hvm();
    let pt = core::ptr::addr_of_mut!(boot_pt) as *mut u64;
    pt.add(stack_guard() >> 12).write_volatile(0);
    core::arch::asm!("invlpg ({0})", in(reg) stack_guard(), options(att_syntax, nostack));

    let hvm_info = core::slice::from_raw_parts(xen::HVM_INFO_PADDR as *const u8, 8);
    let mode = if hvm_info == b"HVM INFO" {
        Mode::Hvm
    } else {
        Mode::Pvh
    };
    if let (Some(pfn), Some(port)) = (
        hvm_param(xen::HVM_PARAM_CONSOLE_PFN),
        hvm_param(xen::HVM_PARAM_CONSOLE_EVTCHN),
    ) {
        console::init((pfn << 12) as usize, port as u32);
    }
    let mut cmdline = "";
    let si = start_info as usize as *const xen::HvmStartInfo;
    if !si.is_null() && (*si).magic == xen::HVM_START_MAGIC && (*si).cmdline_paddr != 0 {
        cmdline = save_cmdline((*si).cmdline_paddr as usize as *const u8, 1024);
    }
    run(BootInfo { mode, cmdline })
}

/// Reads an HVM parameter of this domain.
pub fn hvm_param(index: u32) -> Option<u64> {
    let mut p = xen::HvmParam {
        domid: xen::DOMID_SELF,
        pad: 0,
        index,
        value: 0,
    };
    let rc = unsafe {
        hypercall::hypercall(
            xen::hc::HVM_OP,
            xen::HVMOP_GET_PARAM,
            &mut p as *mut _ as usize,
            0,
            0,
            0,
        )
    };
    (rc == 0).then_some(p.value)
}

fn run(boot: BootInfo) -> ! {
    let name = unsafe { xenprobe_guest_name };
    crate::println!(
        "xenprobe guest {} mode={} cmdline=\"{}\"",
        name,
        boot.mode.name(),
        boot.cmdline
    );
    let code = unsafe { xenprobe_guest_main(&boot) };
    crate::crash::xenprobe_exit(code)
}
