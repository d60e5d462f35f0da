//! Shared helpers for the live-guest suites.

mod domain;
mod guest;

use std::path::{Path, PathBuf};

use xenprobe::vmi::{SnapshotCheck, Xen};
use xenprobe_abi::xl::XlConfig;
use xenprobe_abi::GuestMode;

pub use domain::{same_memory, sym, wait_breakpoint, wait_shutdown, WAIT};
pub use guest::Guest;

/// One `#[test]` per guest mode, each calling `body(mode)`:
/// `mode_tests!(inspect: inspect_hvm = "hvm", inspect_pv = "pv");` declares
/// `inspect_hvm` (running `inspect("hvm")`) and `inspect_pv`.
#[macro_export]
macro_rules! mode_tests {
    ($body:ident: $($name:ident = $mode:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $body($mode);
            }
        )+
    };
}

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

/// The sample guest image `name` (e.g. `tlv-pvh`), which must have been built.
pub fn guest_image(name: &str) -> PathBuf {
    let image = guests_dir().join(name);
    assert!(
        image.exists(),
        "{} is missing: run cargo xtask guests build",
        image.display()
    );
    image
}

/// Writes `work/guest.cfg`, an xl config of the PVH guest `name` booting
/// `image` (32 MiB, one vCPU, kept after its end, a reboot or a crash), with
/// the config lines `extra` after the kernel's; returns its path.
pub fn write_pvh_cfg(work: &Path, name: &str, image: &Path, extra: &str) -> PathBuf {
    let cfg_path = work.join("guest.cfg");
    std::fs::write(&cfg_path, pvh_cfg(name, image, extra)).expect("write cfg");
    cfg_path
}

/// The text of [`write_pvh_cfg`]'s config (the project's one xl writer).
fn pvh_cfg(name: &str, image: &Path, extra: &str) -> String {
    let mut cfg = XlConfig::image(name, GuestMode::Pvh, image, 32);
    cfg.keep_on_poweroff = true;
    cfg.extra.extend(extra.lines().map(str::to_string));
    cfg.render()
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
    workspace_bin("xenprobe", "XENPROBE_BIN")
}

/// The binary `name` of the package `name`, next to the test binary (`cargo
/// xtask test` builds the workspace's binaries first), or the path in
/// `env_var`; the one next to the test binary must exist.
pub fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let bin = beside_test_binary(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p {name}` (or set {env_var})",
        bin.display()
    );
    bin
}

/// Where the workspace's binary `name` is built: next to the test binary's
/// `deps/` folder.
pub fn beside_test_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join(name))
        .expect("target dir")
}

/// The number in the environment variable `name`, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a reset check found different: frames (the first 8), CPU fields,
/// hashes.
pub fn reset_differences(c: &SnapshotCheck) -> String {
    format!(
        "{} of {} frames differ ({:x?}), CPU fields {:?}, hash {:#x} vs {:#x}",
        c.frames_differ.len(),
        c.frames,
        &c.frames_differ[..c.frames_differ.len().min(8)],
        c.cpu_differ,
        c.hash_now,
        c.hash_snapshot
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pvh_config_is_the_one_the_live_tests_always_wrote() {
        let image = Path::new("/w/target/guests/tlv-pvh");
        let extra = "cmdline=\"xenprobe.test=1\"\n";
        assert_eq!(
            pvh_cfg("t-1", image, extra),
            "name=\"t-1\"\ntype=\"pvh\"\nkernel=\"/w/target/guests/tlv-pvh\"\ncmdline=\"xenprobe.test=1\"\nmemory=32\nvcpus=1\non_poweroff=\"preserve\"\non_reboot=\"preserve\"\non_crash=\"preserve\"\n"
        );
        assert_eq!(
            pvh_cfg("t-2", image, ""),
            "name=\"t-2\"\ntype=\"pvh\"\nkernel=\"/w/target/guests/tlv-pvh\"\nmemory=32\nvcpus=1\non_poweroff=\"preserve\"\non_reboot=\"preserve\"\non_crash=\"preserve\"\n"
        );
    }
}
