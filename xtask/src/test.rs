//! `cargo xtask test`: the whole test suite, live-guest tests included.
//!
//! Installs what is missing, builds the sample guests, boots the lab once per
//! hypervisor flavour and runs `cargo test` against it: the cargo runner
//! forwards the `live_*` test binaries into the lab's dom0, everything else
//! runs on the host. The stock pass runs every test; the debug pass (a
//! hypervisor with CONFIG_GDBSX and shadow paging) runs the PV tests of the
//! live suites and the debug stub again, where PV breakpoints, PV single-step
//! and PV log-dirty become available, and the Linux kernel-target suite
//! (Linux boots as PVH/HVM in the lab only with shadow paging). The 4.20
//! pass builds against Debian 13's Xen libraries and runs a live subset on
//! its hypervisor and tools.

use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::lab::xen::Flavour;
use crate::lab::Lab;
use crate::{deps, ws};

#[derive(Args)]
pub struct TestArgs {
    /// Run against one hypervisor flavour only (default: stock, debug, then 4.20).
    #[arg(long, value_enum)]
    xen: Option<Flavour>,
    /// Leave the labs running afterwards (default: stop those this command booted).
    #[arg(long)]
    keep_lab: bool,
    /// Extra arguments for the test binaries (after `--`, e.g. a name filter).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn main(args: TestArgs) -> Result<i32> {
    deps::ensure(deps::Need::Tests)?;
    if !xtask(&["guests", "build"])? || !xtask(&["guests", "build", "linux"])? {
        eprintln!("xtask test: building the sample guests failed");
        return Ok(1);
    }
    let flavours = match args.xen {
        Some(f) => vec![f],
        // A real dom0 has the one Xen it runs.
        None if deps::on_real_dom0() => vec![Flavour::Stock],
        None => vec![Flavour::Stock, Flavour::Debug, Flavour::Xen420],
    };
    let mut failed = vec![];
    for flavour in flavours {
        let lab = Lab::new(flavour);
        let booted_here = !deps::on_real_dom0() && lab.running().is_none();
        if !deps::on_real_dom0() && !xtask(&["lab", "--xen", flavour.name(), "up"])? {
            failed.push(format!("the {} lab did not start", flavour.name()));
            continue;
        }
        let runs: &[&str] = match flavour {
            // The binaries first: live tests run `xenprobe` (the REPL, the stub),
            // which `cargo test` builds only for tests of its own package.
            Flavour::Stock => &[
                "build --workspace --bins",
                "test --workspace --no-fail-fast",
            ],
            // What the debug hypervisor adds: PV breakpoints, stepping,
            // log-dirty (PV snapshots restore by it), the PV insta snapshots
            // of live_state and the debug stub on PV guests; and Linux as a
            // PVH/HVM guest, which boots in the lab only here (shadow
            // paging): the kernel-target suite and its debugger.
            Flavour::Debug => &[
                "build --workspace --bins",
                "test -p xenprobe-tests --test live_linux",
                "test -p xtask --test crash_debug -- --ignored linux",
                "test -p xenprobe-tests --test live_vmi --test live_suite --test live_snapshot \
                 --test live_watch --test live_state -- pv --skip pvh --skip hvm",
                "test -p xtask --test stub -- --ignored on_pv",
                "test -p xtask --test caps_table -- --ignored debug_table",
            ],
            // Debian 13's Xen: binaries built against its libraries
            // (target/xen-4.20), and a subset that covers the engine (events,
            // breakpoints, registers, memory, log-dirty), snapshots, the
            // fuzzer's exact reset, the stub with LLDB and the capability table.
            Flavour::Xen420 => &[
                "build -p xenprobe -p xenprobe-fuzz --bins",
                "test -p xenprobe-tests --test live_vmi --test live_snapshot --test live_fuzz_reset",
                "test -p xtask --test stub -- lldb_on_pvh",
                "test -p xtask --test caps_table -- --ignored xen_4_20",
            ],
        };
        let env = flavour.cargo_env()?;
        for run in runs {
            let run: Vec<&str> = run.split_whitespace().collect();
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            // Snapshot assertions (insta) must match what is committed:
            // never write or accept snapshots here.
            cmd.current_dir(ws::root())
                .envs(env.iter().cloned())
                .env("XENPROBE_XEN", flavour.name())
                .env("INSTA_UPDATE", "no")
                .args(&run);
            if !args.cargo_args.is_empty() && run[0] == "test" {
                if !run.contains(&"--") {
                    cmd.arg("--");
                }
                cmd.args(&args.cargo_args);
            }
            eprintln!(
                "xtask test: cargo {} (against the {} hypervisor)",
                run.join(" "),
                flavour.name()
            );
            let st = cmd.status().context("running cargo")?;
            if !st.success() {
                failed.push(format!(
                    "cargo {} against the {} hypervisor",
                    run.join(" "),
                    flavour.name()
                ));
            }
        }
        if booted_here && !args.keep_lab {
            lab.down()?;
        }
    }
    if failed.is_empty() {
        eprintln!("xtask test: all passed");
        Ok(0)
    } else {
        eprintln!("xtask test: FAILED: {}", failed.join("; "));
        Ok(1)
    }
}

/// Runs another xtask command as a child process; returns whether it succeeded.
fn xtask(args: &[&str]) -> Result<bool> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let st = Command::new(exe)
        .args(args)
        .status()
        .with_context(|| format!("running xtask {}", args.join(" ")))?;
    Ok(st.success())
}
