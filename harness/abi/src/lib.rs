//! Facts shared by xenprobe's crates (harness, fuzzer, xtask, tests) that
//! need no Xen library, so that xtask can use them before libxen-dev is
//! installed: one stable hash and one hex decoder.

pub mod hash;
pub mod hex;

pub use hash::{fnv1a, Fnv1a};
