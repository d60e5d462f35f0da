//! Snapshot-driven, coverage-guided fuzzing of code inside Xen guests, on
//! the VMI engine and LibAFL.
//!
//! - [`session::Session`]: the guest stopped at the fuzz-target ABI's start
//!   point with a snapshot; [`session::Session::run`] runs one input.
//! - [`blocks`]: basic blocks of the code under test (iced-x86), one
//!   one-shot coverage breakpoint each.
//! - [`executor::XenExecutor`]: the LibAFL executor; [`feedback`]: the
//!   outcome observer and the crash-site objective that saves crash files.
//! - [`campaign`]: a whole campaign (corpus directory, progress line,
//!   resume) and crash replay; [`progress`]: its report files (summary,
//!   coverage plot via [`plot`], [`lcov`] tracefile).
//! - [`cmplog`]: comparison logging at breakpoints on `cmp` instructions,
//!   and the input-to-state stage that writes logged operands into inputs
//!   (checksums, magic values computed at run time); [`i2s`]: that stage.
//! - [`kernel`]: Linux kernel targets: the kernel's error paths as crash
//!   sinks and the report read there.
//! - [`structured`]: structured inputs (a type deriving `arbitrary::Arbitrary`
//!   serialised into the guest).
//! - [`bench`]: execution speed against the floor of the stack, and
//!   [`rawloop`]: that floor, a raw C loop on Xen's libraries; [`timed`]:
//!   LibAFL parts that time themselves.

pub mod abi;
pub mod bench;
pub mod blocks;
pub mod campaign;
pub mod cmplog;
pub mod config;
pub mod confirm;
pub mod corpus_dir;
pub mod executor;
pub mod feedback;
pub mod havoc;
pub mod i2s;
pub mod jobs;
pub mod kernel;
pub mod lcov;
pub mod minimize;
pub mod plot;
pub mod progress;
pub mod rawloop;
pub mod report;
mod reporter;
pub mod session;
pub mod structured;
pub mod timed;

/// Helpers of the unit tests.
#[cfg(test)]
mod testutil {
    use std::path::PathBuf;

    /// An empty directory of the test's own: `xenprobe-NAME-PID` in the
    /// system's temporary directory, emptied first.
    pub(crate) fn fresh_tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xenprobe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }
}
