//! Fuzz target `hostile`: a guest that fights its harness. Byte 0 of the
//! input selects a behaviour, byte 1 a variant (see [`Behaviour`] and
//! guests/README.md); standalone runs take the input from
//! `xenprobe.input=HEX` like every sample fuzz target. Each behaviour checks
//! its own result where it has one and panics if the harness changed what
//! the guest computes, so a harness that is not transparent shows up as a
//! crash report.
//!
//! With `hostile.loop=1` on the command line the guest does not run an
//! input: it calls `hostile_tick` forever (`hostile_ticks` counts the calls),
//! a target for debugger sessions that are killed and attached again.
#![no_std]
#![no_main]
#![allow(non_upper_case_globals)]

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU64, Ordering};

use xenprobe_rt::boot::is_pv;
use xenprobe_rt::hypercall::hypercall;
use xenprobe_rt::{println, BootInfo};

/// What byte 0 of the input asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    /// 0x00: ordinary work (the baseline).
    Benign,
    /// 0x01: overwrites its own code: `ret` over the first (breakpointed)
    /// byte of `hostile_patched`, a new immediate in `hostile_imm`, and a
    /// code page rewritten with the bytes it reads there (variant 2: only
    /// calls `hostile_patched` as built; variant 3: `ret` over the first
    /// byte of the ABI's end marker `xenprobe_fuzz_end`).
    Patch,
    /// 0x02: copies `hostile_leaf` into a data page and runs the copy
    /// (variant 1: runs the original in between).
    Copy,
    /// 0x03: maps the code page of `hostile_remapped` onto a copy of it,
    /// calls it, maps the original back (PVH/HVM).
    Remap,
    /// 0x04: zeroes its top-level page table and reloads CR3: the next
    /// fetch faults with nothing mapped, a triple fault (PVH/HVM).
    PtZero,
    /// 0x05: makes its page tables loop (a PML4 entry pointing at the PML4,
    /// another at a frame far beyond its memory), reads through the loop,
    /// then faults with RBP inside it (variant 1: RBP beyond memory) (PVH/HVM).
    PtLoop,
    /// 0x06: `cli`, then spins forever (a hang).
    CliSpin,
    /// 0x07: drops its exception handlers and executes `ud2` (a triple
    /// fault; on PV, Xen kills the domain).
    Triple,
    /// 0x08: writes every page of its RAM (PVH/HVM: the E820 map; PV: its
    /// image), most with the byte already there, 64 pages with new bytes.
    DirtyAll,
    /// 0x09: writes past the input buffer to the end of the ABI pages, the
    /// input length to `u64::MAX` and `xenprobe_quiet` to 0.
    Overflow,
    /// 0x0a: runs covered code on a stack of its own (variant 1: panics there).
    Stack,
    /// 0x0b: switches CR3 to a copy of its top-level page table and runs on
    /// with it (PVH/HVM).
    Cr3,
    /// 0x0c: moves its IDT to a copy (variant 1: then faults through it) (PVH/HVM).
    Idt,
    /// 0x0d: brings up vCPU 1 (needs `vcpus` >= 2), which runs covered code
    /// until it has counted to 1000 (PVH/HVM).
    Vcpu,
}

impl Behaviour {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x00 => Self::Benign,
            0x01 => Self::Patch,
            0x02 => Self::Copy,
            0x03 => Self::Remap,
            0x04 => Self::PtZero,
            0x05 => Self::PtLoop,
            0x06 => Self::CliSpin,
            0x07 => Self::Triple,
            0x08 => Self::DirtyAll,
            0x09 => Self::Overflow,
            0x0a => Self::Stack,
            0x0b => Self::Cr3,
            0x0c => Self::Idt,
            0x0d => Self::Vcpu,
            _ => return None,
        })
    }

    /// Needs the guest's own page tables and IDT (PVH/HVM).
    fn hvm_only(self) -> bool {
        matches!(
            self,
            Self::Remap | Self::PtZero | Self::PtLoop | Self::Cr3 | Self::Idt | Self::Vcpu
        )
    }
}

// Code whose bytes the behaviours copy, patch or remap: written in assembly so
// that its length and layout are known. `hostile_leaf` is position
// independent (relative jumps only): it returns 1 + 2 + ... + rdi.
global_asm!(
    r#"
    .text
    .balign 16
    .global hostile_leaf
    .type hostile_leaf, @function
hostile_leaf:
    xor %eax, %eax
1:  test %rdi, %rdi
    jz 2f
    add %rdi, %rax
    dec %rdi
    jmp 1b
2:  ret
3:
    .size hostile_leaf, . - hostile_leaf
    .section .rodata
    .balign 8
    .global hostile_leaf_len
hostile_leaf_len:
    .quad 3b - hostile_leaf
    .text

    .balign 16
    .global hostile_patched
    .type hostile_patched, @function
hostile_patched:
    mov $1, %eax
    ret
    .size hostile_patched, . - hostile_patched

    .balign 16
    .global hostile_imm
    .type hostile_imm, @function
hostile_imm:
    mov $0x11111111, %eax
    ret
    .size hostile_imm, . - hostile_imm

    .balign 4096
    .global hostile_remapped
    .type hostile_remapped, @function
hostile_remapped:
    test %rdi, %rdi
    jz 1f
    mov $0x5a, %eax
    ret
1:  mov $0xa5, %eax
    ret
    .size hostile_remapped, . - hostile_remapped
    .balign 4096

    .global hostile_ap_entry
    .type hostile_ap_entry, @function
hostile_ap_entry:
    xor %ebp, %ebp
    call hostile_ap_main
1:  hlt
    jmp 1b
    .size hostile_ap_entry, . - hostile_ap_entry
    "#,
    options(att_syntax)
);

extern "C" {
    fn hostile_leaf(n: u64) -> u64;
    static hostile_leaf_len: u64;
    fn hostile_patched() -> u64;
    fn hostile_imm() -> u64;
    fn hostile_remapped(which: u64) -> u64;
    fn hostile_ap_entry();
    static mut boot_pml4: [u64; 512];
    static mut boot_pt: [u64; 1024];
    static __image_start: u8;
    static __image_end: u8;
    static __xenprobe_abi_end: u8;
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut COPY_PAGE: Page = Page([0; 4096]);
static mut REMAP_PAGE: Page = Page([0; 4096]);
static mut CODE_BACKUP: Page = Page([0; 4096]);
static mut NEW_PML4: Page = Page([0; 4096]);
static mut NEW_IDT: Page = Page([0; 4096]);
/// Pages written with new bytes by `DirtyAll`.
const DIRTY_PAGES: usize = 64;
static mut DIRTY_BUF: [u8; DIRTY_PAGES * 4096] = [0; DIRTY_PAGES * 4096];

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut MOVED_STACK: Stack = Stack([0; 16384]);
static mut AP_STACK: Stack = Stack([0; 16384]);

/// Calls of `hostile_tick` in loop mode.
#[no_mangle]
pub static mut hostile_ticks: u64 = 0;

/// What the last behaviour computed (for a debugger to look at).
#[no_mangle]
pub static mut hostile_result: u64 = 0;

/// Iterations of vCPU 1's loop (`Vcpu`).
#[no_mangle]
pub static hostile_ap_count: AtomicU64 = AtomicU64::new(0);
/// The count at which vCPU 1 halts with interrupts off (and so goes down).
static HOSTILE_AP_LIMIT: AtomicU64 = AtomicU64::new(1_000_000);

fn set_result(v: u64) {
    unsafe { addr_of_mut!(hostile_result).write_volatile(v) };
}

/// A covered function with two paths, called by several behaviours.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hostile_victim(x: u64) -> u64 {
    if core::hint::black_box(x) & 1 == 0 {
        x / 2
    } else {
        3 * x + 1
    }
}

/// The loop mode's function: one call per iteration.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hostile_tick(n: u64) -> u64 {
    let v = hostile_victim(n);
    unsafe { addr_of_mut!(hostile_ticks).write_volatile(n) };
    v
}

/// vCPU 1's covered work (`Vcpu`).
#[no_mangle]
#[inline(never)]
pub extern "C" fn hostile_ap_work(n: u64) -> u64 {
    if n.is_multiple_of(100) {
        hostile_victim(n)
    } else {
        n
    }
}

/// vCPU 1's main loop (entered from `hostile_ap_entry` with no IDT and
/// interrupts off): counts until vCPU 0 has seen 1000, then halts.
#[no_mangle]
pub extern "C" fn hostile_ap_main() -> ! {
    loop {
        let n = hostile_ap_count.fetch_add(1, Ordering::SeqCst) + 1;
        hostile_ap_work(n);
        if n >= HOSTILE_AP_LIMIT.load(Ordering::SeqCst) {
            loop {
                unsafe { asm!("hlt", options(nomem, nostack)) };
            }
        }
    }
}

/// Writes `v` into `*p` with a volatile store.
unsafe fn poke<T>(p: *mut T, v: T) {
    p.write_volatile(v)
}

fn invlpg(va: usize) {
    unsafe { asm!("invlpg [{0}]", in(reg) va, options(nostack)) };
}

fn read_cr3() -> u64 {
    let v: u64;
    unsafe { asm!("mov {0}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_cr3(v: u64) {
    unsafe { asm!("mov cr3, {0}", in(reg) v, options(nostack)) };
}

/// `ret` over the first byte of `hostile_patched` (a block start, so a
/// coverage breakpoint of the harness sits there, not yet hit), a new
/// immediate in `hostile_imm`, and the page holding `hostile_imm` rewritten
/// with what it reads there (breakpoint bytes included); then calls both and
/// checks what they return. Variant 2 only calls `hostile_patched` as built.
fn patch(variant: u8) -> u64 {
    if variant == 2 {
        let r = unsafe { hostile_patched() };
        if r != 1 {
            panic!("hostile: hostile_patched returned {} (not 1)", r);
        }
        return r;
    }
    if variant == 3 {
        // The run's end marker returns at once: the run goes on to exit.
        let end = xenprobe_rt::fuzz::xenprobe_fuzz_end as *const () as usize as *mut u8;
        unsafe { poke(end, 0xc3) };
        return 3;
    }
    let p = hostile_patched as *const () as usize as *mut u8;
    let imm = (hostile_imm as *const () as usize + 1) as *mut u32;
    let page = (hostile_imm as *const () as usize & !0xfff) as *mut u8;
    unsafe {
        let backup = addr_of_mut!(CODE_BACKUP) as *mut u8;
        core::ptr::copy_nonoverlapping(page, backup, 4096);
        for i in 0..4096 {
            poke(page.add(i), backup.add(i).read_volatile());
        }
        poke(p, 0xc3);
        poke(imm, 0x2222_2222);
    }
    // `ret` at once: rax is what it was before the call.
    let after: u64;
    unsafe {
        asm!("mov eax, 2", "call {f}", f = sym hostile_patched, out("rax") after,
             clobber_abi("C"));
    }
    let new_imm = unsafe { hostile_imm() };
    if after != 2 || new_imm != 0x2222_2222 {
        panic!(
            "hostile: patched code ran wrong: hostile_patched {} hostile_imm {:#x}",
            after, new_imm
        );
    }
    after + new_imm
}

/// Copies `hostile_leaf` (breakpoint bytes and all, as the guest reads
/// them) into a data page and runs the copy (variant 1: runs the original
/// between the copy and the copy's run, so that a harness that removes a
/// breakpoint at its first hit has removed it by then).
fn copy(variant: u8) -> u64 {
    let src = hostile_leaf as *const () as usize as *const u8;
    let len = unsafe { addr_of!(hostile_leaf_len).read_volatile() } as usize;
    let dst = addr_of_mut!(COPY_PAGE) as *mut u8;
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len.min(4096)) };
    if variant == 1 {
        let r = unsafe { hostile_leaf(core::hint::black_box(4)) };
        if r != 10 {
            panic!("hostile: hostile_leaf computed {} (not 10)", r);
        }
    }
    // SAFETY: the page now holds hostile_leaf's position-independent code.
    let f: extern "C" fn(u64) -> u64 = unsafe { core::mem::transmute(dst) };
    let r = f(core::hint::black_box(10));
    if r != 55 {
        panic!("hostile: the copy of hostile_leaf computed {} (not 55)", r);
    }
    r
}

/// Maps the page of `hostile_remapped` onto a copy of it (same virtual
/// address, another frame), calls it, maps the original back.
fn remap() -> u64 {
    let va = hostile_remapped as *const () as usize;
    if va >= 4 << 20 {
        println!("hostile: remap: code above the 4 KiB-mapped 4 MiB");
        return 0;
    }
    let copy = addr_of_mut!(REMAP_PAGE) as *mut u8;
    unsafe { core::ptr::copy_nonoverlapping((va & !0xfff) as *const u8, copy, 4096) };
    let pte = unsafe { (addr_of_mut!(boot_pt) as *mut u64).add(va >> 12) };
    let old = unsafe { pte.read_volatile() };
    unsafe { poke(pte, copy as u64 | 0x3) };
    invlpg(va);
    let r = unsafe { hostile_remapped(1) };
    unsafe { poke(pte, old) };
    invlpg(va);
    if r != 0x5a {
        panic!("hostile: remapped code returned {:#x} (not 0x5a)", r);
    }
    r
}

fn pt_zero() -> ! {
    let pml4 = addr_of_mut!(boot_pml4) as *mut u64;
    unsafe { poke(pml4, 0) };
    write_cr3(read_cr3());
    // Not reached: the fetch after the CR3 load faults, and so does the
    // delivery of that fault.
    loop {
        core::hint::spin_loop();
    }
}

/// The address whose walk uses PML4 entry 2 at every level.
const LOOP_VA: u64 = (2 << 39) | (2 << 30) | (2 << 21) | (2 << 12);
/// The address whose walk leads to a frame far beyond the guest's memory.
const BEYOND_VA: u64 = 3 << 39;

fn pt_loop(variant: u8) -> ! {
    let pml4 = addr_of_mut!(boot_pml4) as *mut u64;
    unsafe {
        poke(pml4.add(2), pml4 as u64 | 0x3);
        poke(pml4.add(3), 0x7f_ffff_f000 | 0x3);
    }
    write_cr3(read_cr3());
    // Through the loop, PML4 entry 2's "page" is the PML4 itself.
    let seen = unsafe { (LOOP_VA as *const u64).read_volatile() };
    let want = unsafe { pml4.read_volatile() };
    if seen != want {
        panic!(
            "hostile: read {:#x} through the loop, not {:#x}",
            seen, want
        );
    }
    let rbp = if variant == 1 { BEYOND_VA } else { LOOP_VA };
    // A fault whose report carries RBP inside the loop: the harness walks
    // the frame pointers from there.
    unsafe { asm!("mov rbp, {0}", "ud2", in(reg) rbp, options(noreturn)) }
}

fn cli_spin() -> ! {
    unsafe { asm!("cli", "2: jmp 2b", options(noreturn, nomem, nostack)) }
}

fn triple() -> ! {
    xenprobe_rt::traps::drop_exception_handlers();
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// `struct xen_memory_map` (XENMEM_memory_map).
#[repr(C)]
struct MemoryMap {
    nr_entries: u32,
    pad: u32,
    buffer: u64,
}

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct E820 {
    addr: u64,
    size: u64,
    ty: u32,
}

const MEMORY_OP: usize = 12;
const XENMEM_MEMORY_MAP: usize = 9;
const VCPU_OP: usize = 24;
const VCPUOP_INITIALISE: usize = 0;
const VCPUOP_UP: usize = 1;
const VCPUOP_IS_UP: usize = 3;

/// Reads the byte at `p` and writes it back.
unsafe fn touch(p: *mut u8) {
    poke(p, p.read_volatile());
}

fn dirty_all() -> u64 {
    let mut pages = 0u64;
    let guard = xenprobe_rt::boot::stack_guard() as u64;
    let mut map = [E820 {
        addr: 0,
        size: 0,
        ty: 0,
    }; 32];
    let mut mm = MemoryMap {
        nr_entries: map.len() as u32,
        pad: 0,
        buffer: map.as_mut_ptr() as u64,
    };
    let rc = if is_pv() {
        -1
    } else {
        unsafe {
            hypercall(
                MEMORY_OP,
                XENMEM_MEMORY_MAP,
                &mut mm as *mut MemoryMap as usize,
                0,
                0,
                0,
            )
        }
    };
    if rc == 0 {
        for e in &map[..(mm.nr_entries as usize).min(map.len())] {
            let (addr, size, ty) = (e.addr, e.size, e.ty);
            if ty != 1 {
                continue;
            }
            let mut p = (addr + 0xfff) & !0xfff;
            while p + 4096 <= addr + size && p < 1 << 32 {
                if p != 0 && p != guard {
                    unsafe { touch((p + 0x7f8) as *mut u8) };
                    pages += 1;
                }
                p += 4096;
            }
        }
    } else {
        let (start, end) = (addr_of!(__image_start) as u64, addr_of!(__image_end) as u64);
        let mut p = start;
        while p < end {
            if p != guard {
                unsafe { touch((p + 0x7f8) as *mut u8) };
                pages += 1;
            }
            p += 4096;
        }
    }
    let buf = addr_of_mut!(DIRTY_BUF) as *mut u8;
    for i in 0..DIRTY_PAGES {
        unsafe { poke(buf.add(i * 4096 + i), i as u8 ^ 0x5a) };
    }
    println!("hostile: dirtied {} pages", pages);
    pages
}

fn overflow() -> u64 {
    use xenprobe_rt::fuzz::{xenprobe_input, xenprobe_input_len, xenprobe_quiet, INPUT_CAP};
    let start = unsafe { (addr_of_mut!(xenprobe_input) as *mut u8).add(INPUT_CAP) };
    let end = addr_of!(__xenprobe_abi_end) as usize;
    let n = end.saturating_sub(start as usize);
    for i in 0..n {
        unsafe { poke(start.add(i), 0xa5) };
    }
    unsafe {
        poke(addr_of_mut!(xenprobe_input_len), u64::MAX);
        poke(addr_of_mut!(xenprobe_quiet), 0);
    }
    println!("hostile: wrote {} bytes past the input buffer", n);
    n as u64
}

extern "C" fn on_moved_stack(variant: u64) -> u64 {
    let sp: u64;
    unsafe { asm!("mov {0}, rsp", out(reg) sp, options(nomem, nostack)) };
    if variant == 1 {
        panic!("hostile: panic on a moved stack (rsp {:#x})", sp);
    }
    hostile_victim(sp)
}

fn stack(variant: u8) -> u64 {
    let top = addr_of_mut!(MOVED_STACK) as u64 + 16384;
    let r: u64;
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = sym on_moved_stack,
            in("rdi") u64::from(variant),
            out("r12") _,
            lateout("rax") r,
            clobber_abi("C"),
        );
    }
    r
}

fn cr3() -> u64 {
    let new = addr_of_mut!(NEW_PML4) as *mut u64;
    let old = addr_of!(boot_pml4) as *const u64;
    for i in 0..512 {
        unsafe { poke(new.add(i), old.add(i).read_volatile()) };
    }
    write_cr3(new as u64);
    hostile_victim(read_cr3())
}

#[repr(C, packed)]
struct DescPtr {
    limit: u16,
    base: u64,
}

fn idt(variant: u8) -> u64 {
    let mut cur = DescPtr { limit: 0, base: 0 };
    unsafe { asm!("sidt [{0}]", in(reg) &mut cur, options(nostack)) };
    let (limit, base) = (cur.limit, cur.base);
    let len = (usize::from(limit) + 1).min(4096);
    let new = addr_of_mut!(NEW_IDT) as *mut u8;
    unsafe { core::ptr::copy_nonoverlapping(base as *const u8, new, len) };
    let ptr = DescPtr {
        limit,
        base: new as u64,
    };
    unsafe { asm!("lidt [{0}]", in(reg) &ptr, options(nostack)) };
    if variant == 1 {
        // Reported through the moved IDT.
        unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
    }
    new as u64
}

/// `struct vcpu_hvm_context` with its 64-bit register block (the union is
/// as large as the 32-bit one: 120 bytes).
#[repr(C)]
struct VcpuHvmContext {
    mode: u32,
    pad: u32,
    regs: [u64; 15],
}

/// Brings up vCPU 1 and waits until it has counted 1000 (variant 0), or
/// until it has counted to the end and halted with interrupts off, which
/// takes it down again (variant 1: up and down within the run).
fn vcpu(variant: u8) -> u64 {
    let (cr0, cr4): (u64, u64);
    unsafe {
        asm!("mov {0}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov {0}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    let (lo, hi): (u32, u32);
    unsafe {
        asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") lo, out("edx") hi,
             options(nomem, nostack));
    }
    let efer = u64::from(hi) << 32 | u64::from(lo);
    let limit = if variant == 1 { 2000 } else { 1_000_000 };
    HOSTILE_AP_LIMIT.store(limit, Ordering::SeqCst);
    let mut ctx = VcpuHvmContext {
        mode: 1, // VCPU_HVM_MODE_64B
        pad: 0,
        regs: [0; 15],
    };
    // rax rcx rdx rbx rsp rbp rsi rdi rip rflags cr0 cr3 cr4 efer
    ctx.regs[4] = addr_of_mut!(AP_STACK) as u64 + 16384 - 8;
    ctx.regs[8] = hostile_ap_entry as *const () as usize as u64;
    ctx.regs[9] = 0x2;
    ctx.regs[10] = cr0;
    ctx.regs[11] = read_cr3();
    ctx.regs[12] = cr4;
    ctx.regs[13] = efer;
    let rc = unsafe {
        hypercall(
            VCPU_OP,
            VCPUOP_INITIALISE,
            1,
            &mut ctx as *mut VcpuHvmContext as usize,
            0,
            0,
        )
    };
    if rc != 0 {
        println!("hostile: no second vCPU: VCPUOP_initialise returned {}", rc);
        return 0;
    }
    let rc = unsafe { hypercall(VCPU_OP, VCPUOP_UP, 1, 0, 0, 0) };
    if rc != 0 {
        println!("hostile: VCPUOP_up returned {}", rc);
        return 0;
    }
    let mut spins = 0u64;
    while hostile_ap_count.load(Ordering::SeqCst) < 1000 && spins < 500_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    if variant == 1 {
        let mut spins = 0u64;
        // SAFETY: VCPUOP_is_up reads nothing of ours.
        while unsafe { hypercall(VCPU_OP, VCPUOP_IS_UP, 1, 0, 0, 0) } > 0 && spins < 100_000 {
            core::hint::spin_loop();
            spins += 1;
        }
    }
    let n = hostile_ap_count.load(Ordering::SeqCst);
    println!("hostile: vCPU 1 counted {}", n);
    n
}

fn parse(input: &[u8]) {
    let Some(&first) = input.first() else {
        set_result(hostile_victim(7));
        return;
    };
    let variant = input.get(1).copied().unwrap_or(0);
    let Some(b) = Behaviour::from_byte(first) else {
        set_result(hostile_victim(u64::from(first)));
        return;
    };
    println!("hostile: {:?} (variant {})", b, variant);
    if b.hvm_only() && is_pv() {
        println!("hostile: {:?} needs PVH or HVM", b);
        return;
    }
    let r = match b {
        Behaviour::Benign => hostile_victim(u64::from(variant)),
        Behaviour::Patch => patch(variant),
        Behaviour::Copy => copy(variant),
        Behaviour::Remap => remap(),
        Behaviour::PtZero => pt_zero(),
        Behaviour::PtLoop => pt_loop(variant),
        Behaviour::CliSpin => cli_spin(),
        Behaviour::Triple => triple(),
        Behaviour::DirtyAll => dirty_all(),
        Behaviour::Overflow => overflow(),
        Behaviour::Stack => stack(variant),
        Behaviour::Cr3 => cr3(),
        Behaviour::Idt => idt(variant),
        Behaviour::Vcpu => vcpu(variant),
    };
    set_result(r);
}

/// The code under test (fuzz-target ABI symbol).
///
/// # Safety
/// `data` must point to `len` readable bytes.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn xenprobe_target(data: *const u8, len: usize) {
    parse(core::slice::from_raw_parts(data, len))
}

fn main(boot: &BootInfo) -> i32 {
    if boot.arg("hostile.loop") == Some("1") {
        println!("hostile: looping");
        let mut n = 0u64;
        loop {
            n += 1;
            hostile_tick(n);
        }
    }
    xenprobe_rt::fuzz::run(boot, xenprobe_target)
}

xenprobe_rt::entry!("hostile", main);
