//! `cargo xtask bench vmi`: the VMI engine's operations against the raw
//! libxc calls they wrap, measured in the same run in the lab's dom0.
//!
//! Builds the measuring program (`harness/examples/bench_vmi.rs`, release)
//! and the sample guests, boots the lab if needed and runs the program
//! there; it prints medians, the raw floor, the ratio and the issue's
//! targets.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::lab::xen::Flavour;
use crate::{deps, guests, ws};

pub struct VmiOptions {
    pub runs: usize,
    pub small_mib: u64,
    pub big_mib: u64,
    pub xen: Flavour,
    pub debug_build: bool,
}

pub fn run(o: &VmiOptions) -> Result<i32> {
    deps::ensure(deps::Need::Lab)?;
    guests::build()?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    let target = o.xen.target_dir();
    cmd.current_dir(ws::root())
        .envs(o.xen.cargo_env()?)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-p", "xenprobe", "--example", "bench_vmi"]);
    if !o.debug_build {
        cmd.arg("--release");
    }
    if !cmd.status().context("running cargo build")?.success() {
        bail!("building the bench_vmi example failed");
    }
    let profile = if o.debug_build { "debug" } else { "release" };
    let bin = target.join(profile).join("examples").join("bench_vmi");
    std::env::set_var("XENPROBE_XEN", o.xen.name());
    let argv: Vec<String> = vec![
        bin.display().to_string(),
        "--guests".into(),
        ws::guests_dir().display().to_string(),
        "--runs".into(),
        o.runs.to_string(),
        "--small-mib".into(),
        o.small_mib.to_string(),
        "--big-mib".into(),
        o.big_mib.to_string(),
    ];
    eprintln!(
        "bench vmi: {} hypervisor, guests of {} and {} MiB, {} batches per median",
        o.xen.name(),
        o.small_mib,
        o.big_mib,
        o.runs
    );
    crate::lab::run_in_dom0(&argv)
}
