//! `cargo xtask fuzz`: a fuzz campaign against a sample guest in the lab.
//!
//! Builds the fuzzer (`xenprobe-fuzz`, release) and the sample guests, boots
//! or reuses the lab, and runs the fuzzer inside dom0; it creates the guest
//! from `target/guests/<target>-<mode>.cfg` itself. The campaign directory
//! `target/fuzz/<target>-<mode>/` (corpus/, crashes/, hangs/) is resumed by
//! the next run. `--reproduce CRASH` replays one crash input instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::guests::Mode;
use crate::{deps, guests, lab, ws};

/// The fuzz-target guests (see guests/BUGS.md).
const TARGETS: &[&str] = &["tlv", "bytecode", "imghdr"];

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Sample guest to fuzz: tlv, bytecode or imghdr.
    #[arg(default_value = "tlv")]
    target: String,
    /// Campaign duration (e.g. 60s, 5m, 1h).
    #[arg(long, default_value = "60s")]
    time: String,
    /// Guest type.
    #[arg(long, value_enum, default_value = "pvh")]
    mode: Mode,
    /// Replay this crash input (a `.input` file under crashes/) and print its report.
    #[arg(long)]
    reproduce: Option<PathBuf>,
    /// Parallel guests (only 1 for now).
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// Per-run timeout in milliseconds (longer runs are hangs).
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// Extra seed directory.
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Persistent mode: restore memory only every N runs (and after every
    /// crash, hang or new coverage; crashes are replayed before they count).
    #[arg(long, default_value_t = 1)]
    persistent: u32,
    /// Build the fuzzer unoptimised (faster to build, slower to fuzz).
    #[arg(long)]
    debug_build: bool,
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Builds `xenprobe-fuzz` into the main target directory (shared with dom0).
fn build_fuzzer(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(ws::root())
        .env("CARGO_TARGET_DIR", ws::target_dir())
        .args(["build", "-p", "xenprobe-fuzz", "--bin", "xenprobe-fuzz"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd
        .status()
        .context("running cargo build for xenprobe-fuzz")?;
    if !st.success() {
        bail!("building xenprobe-fuzz failed");
    }
    let profile = if release { "release" } else { "debug" };
    Ok(ws::target_dir().join(profile).join("xenprobe-fuzz"))
}

pub fn main(args: FuzzArgs) -> Result<i32> {
    if !TARGETS.contains(&args.target.as_str()) {
        bail!(
            "unknown fuzz target {:?}: the sample targets are {}",
            args.target,
            TARGETS.join(", ")
        );
    }
    if args.mode == Mode::Pv {
        eprintln!(
            "xtask fuzz: PV guests cannot be fuzzed yet. PV has no vm_event ring: breakpoints and \
             stops need the debug hypervisor's gdbsx path (`cargo xtask lab up --xen debug`) and \
             PV log-dirty needs its shadow paging; the fuzzer supports PVH and HVM. Use --mode pvh."
        );
        return Ok(1);
    }
    if args.jobs != 1 {
        eprintln!(
            "xtask fuzz: --jobs {} is not implemented yet (one guest per campaign for now)",
            args.jobs
        );
        return Ok(1);
    }
    deps::ensure(deps::Need::Lab)?;
    guests::build()?;
    let bin = build_fuzzer(!args.debug_build)?;
    let name = format!("{}-{}", args.target, args.mode.name());
    let gdir = ws::guests_dir();
    let dir = ws::target_dir().join("fuzz").join(&name);
    let mut argv: Vec<String> = vec![
        bin.display().to_string(),
        "--cfg".into(),
        gdir.join(format!("{name}.cfg")).display().to_string(),
        "--image".into(),
        gdir.join(&name).display().to_string(),
        "--krate".into(),
        args.target.clone(),
        "--dir".into(),
        dir.display().to_string(),
        "--time".into(),
        args.time.clone(),
        "--timeout-ms".into(),
        args.timeout_ms.to_string(),
        "--persistent".into(),
        args.persistent.max(1).to_string(),
    ];
    if let Some(s) = &args.seeds {
        argv.extend(["--seeds".into(), absolute(s).display().to_string()]);
    }
    if let Some(c) = &args.reproduce {
        argv.extend(["--reproduce".into(), absolute(c).display().to_string()]);
    } else {
        eprintln!(
            "xtask fuzz: {name} for {} in the lab; campaign directory {}",
            args.time,
            dir.display()
        );
    }
    lab::run_in_dom0(&argv)
}
