//! `cargo xtask fuzz`: a fuzz campaign against a sample guest in the lab.
//!
//! Builds the fuzzer (`xenprobe-fuzz`, profile `fuzzer`: release with LTO)
//! and the sample guests, boots or reuses the lab, and runs the fuzzer
//! inside dom0; it creates the guest from
//! `target/guests/<target>-<mode>.cfg` itself. The campaign directory
//! `target/fuzz/<target>-<mode>/` (corpus/, crashes/, hangs/) is resumed by
//! the next run. `--reproduce CRASH` replays one crash input instead;
//! `--reproduce CRASH --debug` stops the guest before the crash and serves
//! the GDB/LLDB stub there, reached from the host through the lab's
//! forwarded port: GDB and LLDB are installed when possible (as for `cargo
//! xtask test`), and the command lines of those present are printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::guests::Mode;
use crate::{deps, guests, lab, ws};

/// The fuzz-target guests (see guests/BUGS.md).
const TARGETS: &[&str] = &["tlv", "bytecode", "imghdr", "linux"];

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Sample guest to fuzz: tlv, bytecode, imghdr, or linux (Debian's kernel
    /// with the sample module guests/linux/; PVH, HVM, or PV by breakpoints).
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
    /// With --reproduce: shrink the input while it crashes at the same site
    /// (saved as NAME.min.input).
    #[arg(long, requires = "reproduce")]
    minimize: bool,
    /// Fuzz your own guest described in TOML (see fuzz/examples/tlv.toml)
    /// instead of a sample target.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop at the first crash of these kinds (comma-separated, e.g. panic,hang).
    #[arg(long, value_delimiter = ',')]
    stop_on: Vec<String>,
    /// RNG seed of the campaign.
    #[arg(long)]
    rng_seed: Option<u64>,
    /// Parallel guests: an LLMP broker and N job processes, each with its
    /// own clone of the guest (NAME-jK), sharing corpus/ and crashes/.
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// Per-run timeout in milliseconds (longer runs are hangs; default 500
    /// or the config's).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Extra seed directory.
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Persistent mode: restore memory only every N runs (and after every
    /// crash, hang or new coverage; crashes are replayed before they count).
    #[arg(long, default_value_t = 1)]
    persistent: u32,
    /// Input format: `raw` (default) or a structured format whose
    /// `arbitrary` type the fuzzer's bytes build (`tlv-records` for tlv,
    /// `ximg` for imghdr; see fuzz/src/structured.rs). Its campaign
    /// directory is `target/fuzz/<target>-<mode>-<format>/`.
    #[arg(long)]
    input_format: Option<String>,
    /// Turn off the input-to-state stage (comparison operands logged at run
    /// time and written into inputs; on by default for raw inputs).
    #[arg(long)]
    no_cmplog: bool,
    /// Build the fuzzer unoptimised (faster to build, slower to fuzz).
    #[arg(long)]
    debug_build: bool,
    /// The lab's hypervisor: stock (default), debug, or 4.20 (Debian 13's;
    /// the fuzzer is then built against its libraries). See docs/lab.md.
    #[arg(long, value_enum)]
    xen: Option<lab::xen::Flavour>,
    /// With --reproduce: stop the guest before the crash (on the faulting
    /// instruction, or at the crash sink for panics) and serve the GDB/LLDB
    /// stub there until the debugger detaches.
    #[arg(long, requires = "reproduce")]
    debug: bool,
    /// dom0 port of the debug stub (default: the lab's forwarded dom0 port,
    /// 1234 unless the lab was booted with `--forward HOST:GUEST`).
    #[arg(long, requires = "debug")]
    port: Option<u16>,
    /// Further `xenprobe-fuzz` options, after `--`, passed on as they are
    /// (e.g. `-- --full-context --spin-us 0`; `xenprobe-fuzz --help` lists them).
    #[arg(last = true, value_name = "FUZZER_ARGS")]
    fuzzer_args: Vec<String>,
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

/// Builds `xenprobe-fuzz` for the lab of `XENPROBE_XEN` (see [`build_fuzz_bin`]).
pub(crate) fn build_fuzzer(release: bool) -> Result<PathBuf> {
    build_fuzz_bin("xenprobe-fuzz", release, lab::xen::Flavour::from_env())
}

/// Builds binary `bin` of the fuzz crate against the Xen of `flavour`'s lab
/// (the target directory is shared with dom0) and returns its path.
pub(crate) fn build_fuzz_bin(
    bin: &str,
    release: bool,
    flavour: lab::xen::Flavour,
) -> Result<PathBuf> {
    let target = flavour.target_dir();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(ws::root())
        .envs(flavour.cargo_env()?)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-p", "xenprobe-fuzz", "--bin", bin]);
    if release {
        // Cargo.toml's `fuzzer` profile: release, whole-program optimised.
        cmd.args(["--profile", "fuzzer"]);
    }
    let st = cmd
        .status()
        .with_context(|| format!("running cargo build for {bin}"))?;
    if !st.success() {
        bail!("building {bin} failed");
    }
    let profile = if release { "fuzzer" } else { "debug" };
    Ok(target.join(profile).join(bin))
}

/// The fuzzer arguments naming sample guest `target` in `mode` (`pv`,
/// `pvh`, `hvm`): its xl config, its image and its crate.
pub(crate) fn sample_args(target: &str, mode: &str) -> Vec<String> {
    let gdir = ws::guests_dir();
    let name = format!("{target}-{mode}");
    vec![
        "--cfg".into(),
        gdir.join(format!("{name}.cfg")).display().to_string(),
        "--image".into(),
        gdir.join(&name).display().to_string(),
        "--krate".into(),
        target.into(),
    ]
}

pub fn main(args: FuzzArgs) -> Result<i32> {
    if args.config.is_none() && !TARGETS.contains(&args.target.as_str()) {
        bail!(
            "unknown fuzz target {:?}: the sample targets are {} (or use --config FILE)",
            args.target,
            TARGETS.join(", ")
        );
    }
    if let Some(xen) = args.xen {
        // Read by every lab command this process runs; set before any thread starts.
        std::env::set_var("XENPROBE_XEN", xen.name());
    }
    let linux = args.config.is_none() && args.target == "linux";
    if linux {
        linux_flavour()?;
    }
    if args.config.is_none() && args.mode == Mode::Pv && !linux {
        eprintln!(
            "xtask fuzz: PV guests cannot be fuzzed yet. PV has no vm_event ring: breakpoints and \
             stops need the debug hypervisor's gdbsx path (`cargo xtask lab up --xen debug`) and \
             PV log-dirty needs its shadow paging; the fuzzer supports PVH and HVM. Use --mode pvh."
        );
        return Ok(1);
    }
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    deps::ensure(deps::Need::Lab)?;
    guests::build()?;
    let config = match &args.config {
        Some(c) => Some(absolute(c)),
        None if linux => {
            guests::linux::build()?;
            Some(guests::linux::fuzz_config(args.mode)?)
        }
        None => None,
    };
    let bin = build_fuzzer(!args.debug_build)?;
    let mut argv: Vec<String> = vec![bin.display().to_string()];
    let name = match &config {
        Some(c) if linux => {
            argv.extend(["--config".into(), c.display().to_string()]);
            format!("linux-{}", args.mode.name())
        }
        Some(c) => {
            let stem = c
                .file_stem()
                .map_or("guest".into(), |s| s.to_string_lossy().into_owned());
            argv.extend(["--config".into(), c.display().to_string()]);
            stem
        }
        None => {
            argv.extend(sample_args(&args.target, args.mode.name()));
            format!("{}-{}", args.target, args.mode.name())
        }
    };
    // Corpus files are the fuzzer's raw bytes: a structured format reads
    // them differently, so it gets a campaign directory of its own.
    let name = match args.input_format.as_deref() {
        Some(f) if f != "raw" => {
            argv.extend(["--input-format".into(), f.to_string()]);
            format!("{name}-{f}")
        }
        _ => name,
    };
    let dir = ws::target_dir().join("fuzz").join(&name);
    argv.extend([
        "--dir".into(),
        dir.display().to_string(),
        "--time".into(),
        args.time.clone(),
        "--persistent".into(),
        args.persistent.max(1).to_string(),
    ]);
    if let Some(ms) = args.timeout_ms {
        argv.extend(["--timeout-ms".into(), ms.to_string()]);
    }
    if let Some(s) = &args.seeds {
        argv.extend(["--seeds".into(), absolute(s).display().to_string()]);
    }
    if !args.stop_on.is_empty() {
        argv.extend(["--stop-on".into(), args.stop_on.join(",")]);
    }
    if args.jobs > 1 {
        argv.extend(["--jobs".into(), args.jobs.to_string()]);
    }
    if args.no_cmplog {
        argv.push("--no-cmplog".into());
    }
    if let Some(seed) = args.rng_seed {
        argv.extend(["--rng-seed".into(), seed.to_string()]);
    }
    argv.extend(args.fuzzer_args.iter().cloned());
    if let Some(c) = &args.reproduce {
        argv.extend(["--reproduce".into(), absolute(c).display().to_string()]);
        if args.debug {
            argv.extend(debug_args(args.port)?);
            // The stub prints the command lines of the debuggers found here.
            argv.extend(["--debuggers".into(), debuggers_arg(&deps::debuggers())]);
        }
        if args.minimize {
            argv.push("--minimize".into());
        }
    } else {
        eprintln!(
            "xtask fuzz: {name} for {} in the lab; campaign directory {} (reports: summary.md, coverage.svg, lcov.info)",
            args.time,
            dir.display()
        );
        // Measured on the default two emulated CPUs only; a lab given more
        // (`XENPROBE_LAB_CPUS`) may well gain from parallel guests.
        if args.jobs > 1 && !deps::on_real_dom0() && lab::instance::cpus() <= 2 {
            eprintln!(
                "xtask fuzz: note: in the QEMU lab every guest shares the lab's two emulated CPUs, so {} jobs \
                 make no more runs per second than one (docs/fuzzing.md, \"`--jobs` in the lab\"); on a Xen host, or a \
                 lab with more CPUs (XENPROBE_LAB_CPUS), they can add up",
                args.jobs
            );
        }
    }
    lab::run_in_dom0_from_ram(&argv)
}

/// Linux boots as PVH or HVM in the QEMU lab only on the debug hypervisor
/// (shadow paging: under QEMU's emulated nested paging the guest reads CR2
/// as 0 in its page-fault handler), and a PV kernel's harness needs its
/// breakpoints (gdbsx) and PV log-dirty: selects it unless `XENPROBE_XEN`
/// says otherwise. A real Xen host needs it for PV only.
fn linux_flavour() -> Result<()> {
    if deps::on_real_dom0() {
        return Ok(());
    }
    match std::env::var("XENPROBE_XEN").ok().as_deref() {
        Some("debug") => Ok(()),
        None | Some("") => {
            eprintln!(
                "xtask fuzz: Linux as a PVH/HVM guest needs the lab's debug hypervisor (shadow \
                 paging; see docs/linux.md): using it"
            );
            // Read by every lab command this process runs; set before any thread starts.
            std::env::set_var("XENPROBE_XEN", "debug");
            Ok(())
        }
        Some(other) => bail!(
            "XENPROBE_XEN={other}: the lab's {other} hypervisor cannot boot Linux as PVH or HVM \
             (no shadow paging, and nested paging under QEMU loses CR2); use XENPROBE_XEN=debug"
        ),
    }
}

/// The fuzzer's `--debuggers` value for the debuggers present.
fn debuggers_arg(present: &[&str]) -> String {
    if present.is_empty() {
        "none".into()
    } else {
        present.join(",")
    }
}

/// The fuzzer's `--debug` arguments: where the stub listens in dom0 and the
/// address the host's debugger uses (the lab's forwarded port).
fn debug_args(port: Option<u16>) -> Result<Vec<String>> {
    if deps::on_real_dom0() {
        let port = port.unwrap_or(1234);
        return Ok(vec![
            "--debug".into(),
            "--debug-bind".into(),
            format!("127.0.0.1:{port}"),
        ]);
    }
    let (host, guest) = lab_forward()?;
    let port = port.unwrap_or(guest);
    let connect = if port == guest {
        format!("127.0.0.1:{host}")
    } else {
        eprintln!(
            "xtask fuzz: note: the lab forwards 127.0.0.1:{host} -> dom0:{guest}, not \
             dom0:{port}; a host debugger cannot reach the stub (boot the lab with \
             `cargo xtask lab down; cargo xtask lab up --forward HOST:{port}`)"
        );
        format!("dom0:{port}")
    };
    Ok(vec![
        "--debug".into(),
        "--debug-bind".into(),
        format!("0.0.0.0:{port}"),
        "--debug-connect".into(),
        connect,
    ])
}

/// Boots (or reuses) the lab of `XENPROBE_XEN` and returns its port forward:
/// (host port on 127.0.0.1, dom0 port).
pub(crate) fn lab_forward() -> Result<(u16, u16)> {
    lab::run_in_dom0(&["true".into()])?;
    let flavour = lab::xen::Flavour::from_env();
    let state = lab::Lab::new(flavour)
        .running()
        .context("the lab is not running")?
        .state;
    Ok((state.forward_host, state.forward_guest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzzer_hears_which_debuggers_are_here() {
        assert_eq!(debuggers_arg(&[]), "none");
        assert_eq!(debuggers_arg(&["gdb"]), "gdb");
        assert_eq!(debuggers_arg(&["gdb", "lldb"]), "gdb,lldb");
    }
}
