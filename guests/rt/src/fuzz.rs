//! The fuzz-target ABI of `guests/README.md`, implemented for Rust guests.
//!
//! Symbols: `xenprobe_input` (input buffer; capacity = its ELF symbol size),
//! `xenprobe_input_len` (u64, bytes used), `xenprobe_fuzz_start` (called once
//! after init: the harness snapshots there and writes the input),
//! `xenprobe_target` (the code under test, defined by [`fuzz_main!`]),
//! `xenprobe_fuzz_end` (reached after a run without crash) and the crash sink
//! `xenprobe_crash`.
//!
//! Standalone (no harness attached) the guest runs the input already in the
//! buffer: empty by default, or the bytes given as hex on the command line as
//! `xenprobe.input=HEX` (PV/PVH), or written into the image file beforehand.
#![allow(non_upper_case_globals)]

use crate::BootInfo;
use core::ptr::{addr_of, addr_of_mut};

/// Capacity of `xenprobe_input` in bytes.
pub const INPUT_CAP: usize = 4096;

/// The input buffer the harness writes (ABI symbol).
#[no_mangle]
#[used]
#[link_section = ".data.xenprobe_input"]
pub static mut xenprobe_input: [u8; INPUT_CAP] = [0; INPUT_CAP];

/// Number of valid bytes in `xenprobe_input` (ABI symbol, little-endian u64).
#[no_mangle]
#[used]
#[link_section = ".data.xenprobe_input_len"]
pub static mut xenprobe_input_len: u64 = 0;

/// Set to non-zero by a harness that discards the console output of its runs
/// (ABI symbol, optional): the runtime then drops `print!` output instead of
/// writing the console ring and notifying xenconsoled, which costs a hypercall
/// and a dom0 wake-up per print.
#[no_mangle]
#[used]
pub static mut xenprobe_quiet: u8 = 0;

/// Whether the harness asked for no console output ([`xenprobe_quiet`]).
pub fn quiet() -> bool {
    unsafe { addr_of!(xenprobe_quiet).read_volatile() != 0 }
}

/// Set when the guest was booted with `xenprobe.test=1` (see [`test_paths`]).
static mut TEST_PATHS: bool = false;

/// Whether test-only input paths are enabled (`xenprobe.test=1` on the
/// command line, PV/PVH), e.g. tlv's FILL record; fuzz campaigns with the
/// standard configs never reach them.
pub fn test_paths() -> bool {
    unsafe { addr_of!(TEST_PATHS).read_volatile() }
}

/// How many runs started (incremented by `xenprobe_fuzz_start`).
#[no_mangle]
pub static mut xenprobe_runs: u64 = 0;

/// How many runs ended without crash (incremented by `xenprobe_fuzz_end`).
#[no_mangle]
pub static mut xenprobe_runs_ok: u64 = 0;

/// Start of one run (ABI symbol): the harness stops here, takes its snapshot and
/// writes `xenprobe_input`/`xenprobe_input_len` before resuming.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xenprobe_fuzz_start() {
    unsafe {
        addr_of_mut!(xenprobe_runs).write_volatile(addr_of!(xenprobe_runs).read_volatile() + 1)
    };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

/// End of one run without crash (ABI symbol): the harness stops here and resets.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xenprobe_fuzz_end() {
    unsafe {
        addr_of_mut!(xenprobe_runs_ok)
            .write_volatile(addr_of!(xenprobe_runs_ok).read_volatile() + 1)
    };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `hex` into `out`; returns the number of bytes, or None if malformed.
pub fn decode_hex(hex: &str, out: &mut [u8]) -> Option<usize> {
    let b = hex.as_bytes();
    if !b.len().is_multiple_of(2) || b.len() / 2 > out.len() {
        return None;
    }
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(b.len() / 2)
}

/// Runs one fuzz-target iteration per the ABI and returns the exit code (0).
pub fn run(boot: &BootInfo, target: unsafe extern "C" fn(*const u8, usize)) -> i32 {
    let buf = unsafe { &mut *addr_of_mut!(xenprobe_input) };
    if boot.arg("xenprobe.test") == Some("1") {
        unsafe { addr_of_mut!(TEST_PATHS).write_volatile(true) };
    }
    if let Some(hex) = boot.arg("xenprobe.input") {
        match decode_hex(hex, buf) {
            Some(n) => unsafe { addr_of_mut!(xenprobe_input_len).write_volatile(n as u64) },
            None => crate::println!(
                "FUZZ ignoring malformed xenprobe.input (hex, at most {} bytes)",
                INPUT_CAP
            ),
        }
    }
    crate::println!(
        "FUZZ input={:#x} cap={} len={}",
        buf.as_ptr() as usize,
        INPUT_CAP,
        unsafe { addr_of!(xenprobe_input_len).read_volatile() }
    );
    xenprobe_fuzz_start();
    let len = (unsafe { addr_of!(xenprobe_input_len).read_volatile() } as usize).min(INPUT_CAP);
    let data = addr_of!(xenprobe_input) as *const u8;
    // SAFETY: `data` points to `xenprobe_input`, `len` is clamped to its size.
    unsafe { target(data, len) };
    xenprobe_fuzz_end();
    crate::println!("FUZZ done: no crash");
    0
}

/// Makes a fuzz-target guest: `fuzz_main!("name", parse)` with
/// `fn parse(input: &[u8])` defines `xenprobe_target` and the guest's main.
#[macro_export]
macro_rules! fuzz_main {
    ($name:expr, $parse:path) => {
        /// The code under test (fuzz-target ABI symbol).
        ///
        /// # Safety
        /// `data` must point to `len` readable bytes.
        #[no_mangle]
        #[inline(never)]
        pub unsafe extern "C" fn xenprobe_target(data: *const u8, len: usize) {
            let input = core::slice::from_raw_parts(data, len);
            $parse(input)
        }

        fn xenprobe_fuzz_main(boot: &$crate::BootInfo) -> i32 {
            $crate::fuzz::run(boot, xenprobe_target)
        }

        $crate::entry!($name, xenprobe_fuzz_main);
    };
}
