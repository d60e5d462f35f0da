//! Shared helpers for the live-guest suites.

mod domain;
mod guest;

use std::path::{Path, PathBuf};

use xenprobe::vmi::Xen;

pub use domain::{same_memory, sym, wait_breakpoint, wait_shutdown, WAIT};
pub use guest::Guest;

/// True in a Xen dom0. Elsewhere the test fails with the reason, or, when
/// `XENPROBE_ALLOW_NO_XEN=1`, prints `SKIP` and returns false.
pub fn have_xen() -> bool {
    if Path::new("/dev/xen/privcmd").exists() {
        return true;
    }
    let why = "/dev/xen/privcmd is absent: not running in a Xen dom0 (run through the lab: \
               `cargo test` at the workspace root forwards live_* tests there)";
    if std::env::var("XENPROBE_ALLOW_NO_XEN").as_deref() == Ok("1") {
        eprintln!("SKIP: {why}");
        return false;
    }
    panic!("{why}; set XENPROBE_ALLOW_NO_XEN=1 to skip");
}

/// Xen's handles in a dom0; None (test skipped) where [`have_xen`] says so.
pub fn xen() -> Option<Xen> {
    have_xen().then(|| Xen::open().expect("open Xen handles"))
}

/// Where `cargo xtask guests build` puts the sample guests.
pub fn guests_dir() -> PathBuf {
    root().join("target/guests")
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `xenprobe` binary next to the test binary (`XENPROBE_BIN` overrides).
pub fn xenprobe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XENPROBE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join("xenprobe"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p xenprobe` (or set XENPROBE_BIN)",
        bin.display()
    );
    bin
}
