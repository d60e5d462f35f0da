//! The known-behaviour guest: a deterministic program with named symbols for the
//! engine's and test suites' breakpoints and memory reads (see guests/README.md).
//!
//! Default run: `known_tick` is called `KNOWN_TICKS` (10) times, `known_counter`
//! ends at 10, the state machine `known_step` walks IDLE -> ARMED -> RUNNING ->
//! DONE on the bytes of "go!", `known_compute(3, 4)` returns 3 * 7 + 4 = 25, which
//! becomes `known_result` and the exit code (`EXIT 25`). A debugger that changes
//! `rdi`/`rsi` at `known_compute` changes the result and the exit code.
//!
//! Idle option: with `known.spin=1` on the command line (PV/PVH:
//! `extra="known.spin=1"`) or `known_spin` set non-zero before it runs, the
//! guest prints `KNOWN spinning` and loops, writing nothing, until
//! `known_spin` is 0 (for probing a running guest, e.g. `xenprobe caps DOMAIN`).
#![no_std]
#![no_main]
#![allow(non_upper_case_globals)]

use core::hint::black_box;
use core::ptr::{addr_of, addr_of_mut};
use xenprobe_rt::println;

/// How many times `known_tick` is called.
#[no_mangle]
#[used]
pub static known_ticks: u64 = 10;

/// Incremented by every `known_tick` call.
#[no_mangle]
pub static mut known_counter: u64 = 0;

/// 64 bytes of known contents.
#[no_mangle]
pub static known_buffer: [u8; 64] =
    *b"xenprobe known buffer: 0123456789 abcdefghijklmnopqrstuvwxyz!!!\n";

/// Current state of the state machine (0 IDLE, 1 ARMED, 2 RUNNING, 3 DONE, 0xff ERROR).
#[no_mangle]
pub static mut known_state: u32 = 0;

/// Result of `known_compute`, also the exit code (mod 256).
#[no_mangle]
pub static mut known_result: u64 = 0;

pub const IDLE: u32 = 0;
pub const ARMED: u32 = 1;
pub const RUNNING: u32 = 2;
pub const DONE: u32 = 3;
pub const ERROR: u32 = 0xff;

/// Non-zero: the guest idles in a loop at the start of `main` (reading only
/// this variable) until a debugger writes 0; then it runs as usual. Set by
/// `known.spin=1` on the command line (`extra="known.spin=1"` in the xl
/// config, PV and PVH) or by writing it before the guest runs (any mode).
#[no_mangle]
pub static mut known_spin: u64 = 0;

/// Called `known_ticks` times with 0, 1, 2, ...; returns the new counter value.
#[no_mangle]
#[inline(never)]
pub extern "C" fn known_tick(i: u64) -> u64 {
    unsafe {
        let c = addr_of!(known_counter).read_volatile() + 1;
        addr_of_mut!(known_counter).write_volatile(c);
        black_box(i);
        c
    }
}

/// One transition: IDLE -'g'-> ARMED -'o'-> RUNNING -'!'-> DONE; anything else -> ERROR.
#[no_mangle]
#[inline(never)]
pub extern "C" fn known_step(state: u32, input: u8) -> u32 {
    match (state, input) {
        (IDLE, b'g') => ARMED,
        (ARMED, b'o') => RUNNING,
        (RUNNING, b'!') => DONE,
        _ => ERROR,
    }
}

/// Returns `a * 7 + b`: its result depends only on rdi and rsi at entry.
#[no_mangle]
#[inline(never)]
pub extern "C" fn known_compute(a: u64, b: u64) -> u64 {
    a.wrapping_mul(7).wrapping_add(b)
}

/// Marker reached once, after all results are stored and before they are printed.
#[no_mangle]
#[inline(never)]
pub extern "C" fn known_checkpoint() {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    black_box(());
}

fn main(boot: &xenprobe_rt::BootInfo) -> i32 {
    if boot.arg("known.spin") == Some("1") {
        unsafe { addr_of_mut!(known_spin).write_volatile(1) };
    }
    if unsafe { addr_of!(known_spin).read_volatile() } != 0 {
        println!("KNOWN spinning (write 0 to known_spin to go on)");
        while unsafe { addr_of!(known_spin).read_volatile() } != 0 {
            core::hint::spin_loop();
        }
    }
    for i in 0..black_box(known_ticks) {
        known_tick(i);
    }
    for &c in black_box(b"go!") {
        let s = known_step(unsafe { addr_of!(known_state).read_volatile() }, c);
        unsafe { addr_of_mut!(known_state).write_volatile(s) };
    }
    let r = known_compute(black_box(3), black_box(4));
    unsafe { addr_of_mut!(known_result).write_volatile(r) };
    known_checkpoint();
    let sum: u32 = black_box(&known_buffer).iter().map(|&b| b as u32).sum();
    unsafe {
        println!(
            "KNOWN counter={} state={} result={} buffer_sum={}",
            addr_of!(known_counter).read_volatile(),
            addr_of!(known_state).read_volatile(),
            addr_of!(known_result).read_volatile(),
            sum
        );
    }
    (r & 0xff) as i32
}

xenprobe_rt::entry!("known", main);
