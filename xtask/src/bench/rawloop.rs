//! Builds `xenprobe-rawloop` (rawloop.c, the raw exact-reset loop on Xen's
//! C libraries) with the host's gcc into `target/bench/`, where
//! `xenprobe-fuzz-bench` looks for it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::ws;

/// The Xen libraries the loop links against (pkg-config names).
const LIBS: &[&str] = &["xencontrol", "xenevtchn", "xenforeignmemory"];

/// Builds the raw loop if its source is newer than the binary; its path.
pub fn build() -> Result<PathBuf> {
    let src = ws::root().join("xtask/src/bench/rawloop.c");
    let out_dir = ws::target_dir().join("bench");
    let bin = out_dir.join("xenprobe-rawloop");
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(b), Some(s)) = (modified(&bin), modified(&src)) {
        if b >= s {
            return Ok(bin);
        }
    }
    std::fs::create_dir_all(&out_dir)?;
    let libs = Command::new("pkg-config")
        .arg("--libs")
        .args(LIBS)
        .output()
        .context("running pkg-config (install it: apt-get install pkg-config)")?;
    ensure!(
        libs.status.success(),
        "pkg-config found no {} (install libxen-dev)",
        LIBS.join(", ")
    );
    let libs = String::from_utf8_lossy(&libs.stdout).into_owned();
    let st = Command::new("gcc")
        .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(libs.split_whitespace())
        .status()
        .context("running gcc for the raw loop (install it: apt-get install gcc)")?;
    ensure!(st.success(), "building {} failed", src.display());
    Ok(bin)
}
