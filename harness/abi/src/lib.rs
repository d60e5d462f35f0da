//! Facts shared by xenprobe's crates (harness, fuzzer, xtask, tests) that
//! need no Xen library, so that xtask can use them before libxen-dev is
//! installed: the guest mode, the `xl` config writer, one stable hash and
//! one hex decoder.

pub mod hash;
pub mod hex;
pub mod mode;
pub mod xl;

pub use hash::{fnv1a, Fnv1a};
pub use mode::GuestMode;
pub use xl::XlConfig;
