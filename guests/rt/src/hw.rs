//! Raw CPU operations with C semantics, for the planted bugs: unlike Rust's `/`,
//! [`udiv`] traps (#DE) on a zero divisor, like C's division on x86.

use core::arch::asm;

/// Unsigned 64-bit division with the CPU's `div` instruction.
#[inline(never)]
pub fn udiv(a: u64, b: u64) -> u64 {
    let q: u64;
    unsafe {
        asm!("div {b}", b = in(reg) b, inout("rax") a => q, inout("rdx") 0u64 => _, options(nomem, nostack));
    }
    q
}

/// `__builtin_trap()`: executes `ud2` (#UD).
#[inline(never)]
pub fn trap() -> ! {
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}
