//! Console output on the PV console ring (drained by xenconsoled), with the
//! `console_io` hypercall as the emergency fallback when no ring is known.

use crate::{hypercall::hypercall, xen};
use core::fmt::{self, Write};
use core::sync::atomic::{fence, Ordering};

/// The console ring page's address, exported for the harness under the
/// fuzz-target ABI's name ([`xenprobe_abi::target::CONSOLE_RING`]).
#[no_mangle]
#[used]
pub static mut xenprobe_console_ring: usize = 0;

// The ring as the harness reads it (xenprobe_abi::target::console).
const _: () = {
    use core::mem::offset_of;
    use xenprobe_abi::target::console as abi;
    assert!(offset_of!(xen::XenconsInterface, output) == abi::OUT);
    assert!(offset_of!(xen::XenconsInterface, in_cons) == abi::IN_CONS);
    assert!(offset_of!(xen::XenconsInterface, out_cons) == abi::OUT_CONS);
    assert!(offset_of!(xen::XenconsInterface, out_prod) == abi::OUT_PROD);
};
static mut EVTCHN: u32 = 0;

/// Uses the console ring page at `ring_va` with event channel `evtchn`.
pub fn init(ring_va: usize, evtchn: u32) {
    unsafe {
        xenprobe_console_ring = ring_va;
        EVTCHN = evtchn;
    }
}

fn notify() {
    let port = unsafe { EVTCHN };
    unsafe {
        hypercall(
            xen::hc::EVENT_CHANNEL_OP,
            xen::EVTCHNOP_SEND,
            &port as *const u32 as usize,
            0,
            0,
            0,
        )
    };
}

fn yield_cpu() {
    unsafe { hypercall(xen::hc::SCHED_OP, xen::SCHEDOP_YIELD, 0, 0, 0, 0) };
}

/// Writes bytes to the console and tells xenconsoled.
pub fn write_bytes(b: &[u8]) {
    if crate::fuzz::quiet() {
        return;
    }
    if put_bytes(b) {
        notify();
    }
}

/// Puts bytes on the console ring without telling xenconsoled unless the
/// ring is full (each notification is a hypercall, and a `println!` writes
/// its pieces one by one). Returns true when a notification is due.
fn put_bytes(mut b: &[u8]) -> bool {
    let ring = unsafe { xenprobe_console_ring } as *mut xen::XenconsInterface;
    if ring.is_null() {
        emergency_write(b);
        return false;
    }
    let out = unsafe { core::ptr::addr_of_mut!((*ring).output) } as *mut u8;
    let prod_p = unsafe { core::ptr::addr_of_mut!((*ring).out_prod) };
    let cons_p = unsafe { core::ptr::addr_of_mut!((*ring).out_cons) };
    let mut spins = 0u32;
    while !b.is_empty() {
        let prod = unsafe { prod_p.read_volatile() };
        let cons = unsafe { cons_p.read_volatile() };
        let free = 2048 - prod.wrapping_sub(cons).min(2048);
        if free == 0 {
            notify();
            yield_cpu();
            spins += 1;
            if spins > 2_000_000 {
                return false; // nobody drains the ring: drop output rather than hang
            }
            continue;
        }
        let n = (free as usize).min(b.len());
        for (i, &c) in b[..n].iter().enumerate() {
            let idx = (prod.wrapping_add(i as u32) & 2047) as usize;
            unsafe { out.add(idx).write_volatile(c) };
        }
        fence(Ordering::SeqCst);
        unsafe { prod_p.write_volatile(prod.wrapping_add(n as u32)) };
        b = &b[n..];
    }
    true
}

/// Waits (bounded) until xenconsoled has read everything written so far.
pub fn flush() {
    let ring = unsafe { xenprobe_console_ring } as *mut xen::XenconsInterface;
    if ring.is_null() {
        return;
    }
    for _ in 0..2_000_000u32 {
        let prod = unsafe { core::ptr::addr_of!((*ring).out_prod).read_volatile() };
        let cons = unsafe { core::ptr::addr_of!((*ring).out_cons).read_volatile() };
        if prod == cons {
            return;
        }
        notify();
        yield_cpu();
    }
}

/// `HYPERVISOR_console_io(CONSOLEIO_write)`: reaches Xen's own console when the
/// hypervisor allows it (debug builds); used before the ring is known.
pub fn emergency_write(b: &[u8]) {
    unsafe {
        hypercall(
            xen::hc::CONSOLE_IO,
            xen::CONSOLEIO_WRITE,
            b.len(),
            b.as_ptr() as usize,
            0,
            0,
        )
    };
}

/// Formatting sink of one `print!`: collects whether anything was written.
struct Console {
    due: bool,
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.due |= put_bytes(s.as_bytes());
        Ok(())
    }
}

/// One `print!`: its pieces go on the ring, then one notification.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    if crate::fuzz::quiet() {
        return;
    }
    let mut c = Console { due: false };
    let _ = c.write_fmt(args);
    if c.due {
        notify();
    }
}

/// A `fmt::Write` into a fixed buffer (truncates silently).
pub struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BufWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        BufWriter { buf, len: 0 }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
