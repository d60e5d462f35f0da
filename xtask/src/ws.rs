//! Paths of the workspace and of its build outputs.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The main target directory (`CARGO_TARGET_DIR` is honoured only when it lies
/// inside the workspace, because only the workspace is shared with the lab).
pub fn target_dir() -> PathBuf {
    root().join("target")
}

/// Where the lab keeps its images (hypervisor, dom0) and its instances.
pub fn lab_dir() -> PathBuf {
    target_dir().join("xenlab")
}

/// The directory of one lab instance: `target/xenlab/<flavour>`, or
/// `XENPROBE_LAB_DIR` (tests use it to boot a lab of their own).
pub fn instance_dir(flavour: &str) -> PathBuf {
    match std::env::var_os("XENPROBE_LAB_DIR") {
        Some(d) => PathBuf::from(d),
        None => lab_dir().join(flavour),
    }
}

/// Where `cargo xtask guests build` puts guest images and their `xl` configs.
pub fn guests_dir() -> PathBuf {
    target_dir().join("guests")
}
