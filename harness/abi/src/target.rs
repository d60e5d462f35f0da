//! The fuzz-target ABI (guests/README.md, "The fuzz-target ABI"): what a
//! guest exports so that xenprobe can run inputs in it and read how a run
//! ended. The runtime `guests/rt` exports these symbols with `#[no_mangle]`
//! and checks the console ring layout against [`console`] at compile time;
//! the harness and the fuzzer find them by these names.

/// The input buffer (bytes; its ELF size is the largest input).
pub const INPUT: &str = "xenprobe_input";
/// The input's length: an unsigned little-endian integer as wide as its
/// symbol (1, 2, 4 or 8 bytes).
pub const INPUT_LEN: &str = "xenprobe_input_len";
/// Optional byte: nonzero asks the guest not to print (a campaign discards
/// the console).
pub const QUIET: &str = "xenprobe_quiet";
/// Optional function: the code under test, called between [`START`] and
/// [`END`] (coverage filters, reports).
pub const TARGET: &str = "xenprobe_target";
/// Called when the input is in place: the snapshot point.
pub const START: &str = "xenprobe_fuzz_start";
/// Called when the run is over: the end point.
pub const END: &str = "xenprobe_fuzz_end";
/// Clean exit of the guest, `(code: i32) -> !`.
pub const EXIT: &str = "xenprobe_exit";
/// The crash sink, `(kind: u64, detail: u64, msg: *const u8, len: usize) -> !`.
pub const CRASH: &str = "xenprobe_crash";
/// Optional pointer-sized variable holding the virtual address of the
/// page the guest's console ring is in (0 before it is set up).
pub const CONSOLE_RING: &str = "xenprobe_console_ring";

/// [`CRASH`]'s `kind`: a panic (detail unused; the message in `msg`).
pub const CRASH_PANIC: u64 = 1;
/// [`CRASH`]'s `kind`: a CPU exception; detail = the vector.
pub const CRASH_FAULT: u64 = 2;
/// [`CRASH`]'s `kind`: a page fault in the stack's guard page.
pub const CRASH_STACK_OVERFLOW: u64 = 3;

/// Byte offsets in the console ring page (Xen's `struct xencons_interface`).
pub mod console {
    /// The guest-to-backend input ring.
    pub const IN: usize = 0;
    /// Its size.
    pub const IN_SIZE: usize = 1024;
    /// The guest's output ring.
    pub const OUT: usize = IN + IN_SIZE;
    /// Its size.
    pub const OUT_SIZE: usize = 2048;
    /// `in_cons`, then `in_prod`, `out_cons`, `out_prod`: u32 each.
    pub const IN_CONS: usize = OUT + OUT_SIZE;
    /// Producer index of the input ring.
    pub const IN_PROD: usize = IN_CONS + 4;
    /// Consumer index of the output ring (what the backend has read).
    pub const OUT_CONS: usize = IN_PROD + 4;
    /// Producer index of the output ring (what the guest has written).
    pub const OUT_PROD: usize = OUT_CONS + 4;
}

/// The crash kind's name for [`CRASH`]'s `kind` and `detail` arguments:
/// what the guest prints after `CRASH` and what crash reports call it.
pub fn crash_name(kind: u64, detail: u64) -> &'static str {
    match (kind, detail) {
        (CRASH_PANIC, _) => "panic",
        (CRASH_STACK_OVERFLOW, _) => "stack-overflow",
        (_, 0) => "divide-error",
        (_, 6) => "invalid-opcode",
        (_, 8) => "double-fault",
        (_, 13) => "general-protection",
        (_, 14) => "page-fault",
        _ => "exception",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_names_follow_kind_then_vector() {
        assert_eq!(crash_name(CRASH_PANIC, 14), "panic");
        assert_eq!(crash_name(CRASH_STACK_OVERFLOW, 14), "stack-overflow");
        assert_eq!(crash_name(CRASH_FAULT, 14), "page-fault");
        assert_eq!(crash_name(CRASH_FAULT, 0), "divide-error");
        assert_eq!(crash_name(CRASH_FAULT, 3), "exception");
    }

    #[test]
    fn the_console_ring_is_xens_layout() {
        assert_eq!(console::OUT, 1024);
        assert_eq!(console::OUT_CONS, 1024 + 2048 + 8);
        assert_eq!(console::OUT_PROD, 1024 + 2048 + 12);
    }
}
