//! xenprobe-rt: the tiny runtime shared by xenprobe's sample unikernel guests.
//!
//! One image boots as a PV guest (64-bit entry with `start_info`, Xen ELF notes,
//! hypercall page filled by Xen) and as a PVH or HVM guest (32-bit
//! `XEN_ELFNOTE_PHYS32_ENTRY`, own page tables, switch to long mode, hypercall
//! page installed through the Xen CPUID leaves and MSR). It offers console output
//! on the PV console ring, exit through `SCHEDOP_shutdown`, a panic handler and
//! exception handlers that report crashes through [`crash::xenprobe_crash`], and
//! the fuzz-target ABI of `guests/README.md` ([`fuzz`]).
//!
//! A guest binary is `#![no_std] #![no_main]` and uses [`entry!`] (or
//! [`fuzz_main!`]) to name its main function.
#![no_std]

pub mod boot;
pub mod console;
pub mod crash;
pub mod fuzz;
pub mod hw;
pub mod hypercall;
pub mod traps;
pub mod xen;

pub use boot::{BootInfo, Mode};

/// Declares the guest's name (printed in the banner) and its main function
/// `fn(&BootInfo) -> i32`; the value returned is the exit code.
#[macro_export]
macro_rules! entry {
    ($name:expr, $main:path) => {
        #[no_mangle]
        pub static xenprobe_guest_name: &str = $name;

        #[no_mangle]
        pub fn xenprobe_guest_main(boot: &$crate::BootInfo) -> i32 {
            $main(boot)
        }
    };
}

/// Prints to the guest console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the guest console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
