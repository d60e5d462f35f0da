//! Facts shared by xenprobe's crates (harness, fuzzer, xtask, tests) that
//! need no Xen library, so that xtask can use them before libxen-dev is
//! installed: the guest mode, the fuzz-target ABI, the `xl` config writer,
//! one stable hash and one hex decoder.
//!
//! Without its default `std` feature it is `no_std` and holds the parts a
//! guest uses: [`target`] and [`hash`] (the sample guests' runtime).

#![cfg_attr(not(feature = "std"), no_std)]

pub mod hash;
#[cfg(feature = "std")]
pub mod hex;
#[cfg(feature = "std")]
pub mod mode;
pub mod target;
#[cfg(feature = "std")]
pub mod xl;

pub use hash::{fnv1a, Fnv1a};
#[cfg(feature = "std")]
pub use mode::GuestMode;
#[cfg(feature = "std")]
pub use xl::XlConfig;
