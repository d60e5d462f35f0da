//! Builds `xenprobe-rawloop` (rawloop.c, the raw exact-reset loop on Xen's
//! C libraries) with the host's gcc into `target/bench/` (for the 4.20 lab:
//! against Debian 13's libraries, into `target/xen-4.20/bench/`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::lab::xen::Flavour;
use crate::ws;

/// The Xen libraries the loop links against (pkg-config names).
const LIBS: &[&str] = &["xencontrol", "xenevtchn", "xenforeignmemory"];

/// Builds the raw loop for `xen`'s lab (against its Xen libraries) if its
/// source is newer than the binary; its path.
pub fn build(xen: Flavour) -> Result<PathBuf> {
    let src = ws::root().join("xtask/src/bench/rawloop.c");
    let out_dir = xen.target_dir().join("bench");
    let env = xen.cargo_env()?;
    let bin = out_dir.join("xenprobe-rawloop");
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(b), Some(s)) = (modified(&bin), modified(&src)) {
        if b >= s {
            return Ok(bin);
        }
    }
    std::fs::create_dir_all(&out_dir)?;
    let libs = Command::new("pkg-config")
        .args(["--cflags", "--libs"])
        .args(LIBS)
        .envs(env.iter().cloned())
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
        .envs(env)
        .status()
        .context("running gcc for the raw loop (install it: apt-get install gcc)")?;
    ensure!(st.success(), "building {} failed", src.display());
    Ok(bin)
}
