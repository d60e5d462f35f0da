//! Ending the guest: [`xenprobe_exit`] (clean, with a code), and the crash sink
//! [`xenprobe_crash`] used by the panic handler and the exception handlers.
//!
//! Console protocol (the last line tells dom0 how the run ended):
//! `EXIT <code>` after a clean exit (then `SCHEDOP_shutdown(poweroff)`), or a
//! `PANIC ...`/`FAULT ...` line followed by `CRASH <kind>` (then
//! `SCHEDOP_shutdown(crash)`).

use crate::{console, hypercall::hypercall, traps::TrapFrame, xen};
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

/// `kind` arguments of [`xenprobe_crash`] (the fuzz-target ABI's).
pub use xenprobe_abi::target::{CRASH_FAULT, CRASH_PANIC, CRASH_STACK_OVERFLOW};

static CRASHING: AtomicBool = AtomicBool::new(false);
static mut MSG: [u8; 512] = [0; 512];

fn shutdown(reason: u32) -> ! {
    let r = reason;
    loop {
        unsafe {
            hypercall(
                xen::hc::SCHED_OP,
                xen::SCHEDOP_SHUTDOWN,
                &r as *const u32 as usize,
                0,
                0,
                0,
            )
        };
    }
}

/// Ends the guest cleanly: prints `EXIT <code>` and powers the domain off.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xenprobe_exit(code: i32) -> ! {
    crate::println!("EXIT {}", code);
    console::flush();
    shutdown(xen::SHUTDOWN_POWEROFF)
}

/// The crash sink (a stable symbol for debuggers and fuzzers): every panic and
/// every CPU exception ends here. `kind` is [`CRASH_PANIC`], [`CRASH_FAULT`] or
/// [`CRASH_STACK_OVERFLOW`]; `detail` is the vector (faults) or 0; `msg`/`len`
/// is the report already formatted. Prints the report and `CRASH <name>`, then
/// shuts the domain down as crashed.
///
/// # Safety
/// `msg` must point to `len` readable bytes.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn xenprobe_crash(kind: u64, detail: u64, msg: *const u8, len: usize) -> ! {
    let text = core::slice::from_raw_parts(msg, len);
    console::write_bytes(text);
    console::write_bytes(b"\n");
    crate::println!("CRASH {}", crash_name(kind, detail));
    console::flush();
    shutdown(xen::SHUTDOWN_CRASH)
}

/// The name printed after `CRASH` for a crash kind and detail.
pub use xenprobe_abi::target::crash_name;

fn vector_name(v: u64) -> &'static str {
    const N: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
        "#26", "#27", "#HV", "#VC", "#SX", "#31",
    ];
    N.get(v as usize).copied().unwrap_or("#??")
}

fn nested_crash() {
    if CRASHING.swap(true, Ordering::SeqCst) {
        console::emergency_write(b"xenprobe: fault while reporting a crash\n");
        shutdown(xen::SHUTDOWN_CRASH);
    }
}

/// Formats the report of a CPU exception and calls [`xenprobe_crash`].
pub fn report_fault(f: &TrapFrame) -> ! {
    nested_crash();
    let cr2 = if f.vector == 14 {
        crate::traps::read_cr2()
    } else {
        0
    };
    let guard = crate::boot::stack_guard() as u64;
    // CR2 in the guard page; or, where CR2 reads back as 0 (seen for PVH/HVM
    // guests of Xen nested in QEMU TCG), a faulting stack pointer at the guard.
    let overflow = f.vector == 14
        && ((cr2 >= guard && cr2 < guard + 4096) || (f.rsp >= guard && f.rsp < guard + 4096 + 512));
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(MSG) };
    let mut w = console::BufWriter::new(buf);
    let _ = write!(
        w,
        "FAULT {} vector={} error={:#x} rip={:#x} rsp={:#x} rbp={:#x}",
        vector_name(f.vector),
        f.vector,
        f.error,
        f.rip,
        f.rsp,
        f.rbp
    );
    if f.vector == 14 {
        let _ = write!(w, " cr2={:#x}", cr2);
    }
    if overflow {
        let _ = write!(w, " (stack guard page: stack overflow)");
    }
    let len = w.len();
    let kind = if overflow {
        CRASH_STACK_OVERFLOW
    } else {
        CRASH_FAULT
    };
    unsafe { xenprobe_crash(kind, f.vector, buf.as_ptr(), len) }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    nested_crash();
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(MSG) };
    let mut w = console::BufWriter::new(buf);
    let _ = write!(w, "PANIC");
    if let Some(l) = info.location() {
        let _ = write!(w, " at {}:{}:{}", l.file(), l.line(), l.column());
    }
    let _ = write!(w, ": {}", info.message());
    let len = w.len();
    unsafe { xenprobe_crash(CRASH_PANIC, 0, buf.as_ptr(), len) }
}
