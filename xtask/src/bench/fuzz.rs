//! `cargo xtask bench fuzz`: execution speed of the fuzzer on each sample
//! parser and on the C guest: xenprobe's own loop and its campaigns against
//! the raw exact-reset loop on Xen's C libraries (`xenprobe-rawloop`), then
//! every reset strategy against the floor of the stack, measured in the same
//! run on the same guest (`xenprobe-fuzz-bench`, run in dom0 of a lab of the
//! bench's own).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use xenlab_proto::Request;

use crate::guests::Mode;
use crate::lab::xen::Flavour;
use crate::lab::{Lab, UpOptions};
use crate::{deps, guests, ws};

/// The fuzz-target guests: the Rust samples, the C guest and the Linux
/// sample module (both by their configs).
const TARGETS: &[&str] = &["tlv", "bytecode", "imghdr", "cguest", "linux"];

/// Options of `bench fuzz` (the reset-strategy section).
#[derive(Args, Debug, Clone)]
pub struct FuzzBenchArgs {
    /// Guests to measure (comma-separated): tlv, bytecode, imghdr, cguest
    /// (the C guest, PVH only), linux (the sample module in Debian's kernel:
    /// its reset strategies against its own no-reset floor; PVH/HVM need
    /// `--xen debug` in the lab).
    #[arg(long, value_delimiter = ',', default_value = "tlv,cguest")]
    pub targets: Vec<String>,
    /// Guest type.
    #[arg(long, value_enum, default_value = "pvh")]
    pub mode: Mode,
    /// Rounds per strategy (the table shows medians).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per strategy per round.
    #[arg(long, default_value_t = 3.0)]
    pub batch_secs: f64,
    /// Busy-poll bound (microseconds) of the spin rows; 0: no spin rows.
    #[arg(long, default_value_t = 2000)]
    pub spin_us: u64,
    /// Seconds of the LibAFL-overhead row; 0: skip it.
    #[arg(long, default_value_t = 10)]
    pub libafl_secs: u64,
    #[arg(long, value_enum, default_value = "stock", env = "XENPROBE_XEN")]
    pub xen: Flavour,
}

/// The reset-strategy section: one table per target.
pub fn run(args: &FuzzBenchArgs) -> Result<i32> {
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target {t:?}: the sample targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    if args.mode == Mode::Pv {
        bail!("the fuzzer supports PVH and HVM guests (PV has no vm_event ring)");
    }
    deps::ensure(deps::Need::Lab)?;
    guests::build()?;
    if args.targets.iter().any(|t| t == "linux") {
        guests::linux::build()?;
    }
    let bin = crate::fuzz::build_fuzz_bin("xenprobe-fuzz-bench", true, args.xen)?;
    let raw_loop = super::rawloop::build(args.xen)?;
    let lab = if deps::on_real_dom0() {
        None
    } else {
        Some(Lab::at(
            args.xen,
            ws::lab_dir().join(format!("bench-fuzz-{}", args.xen.name())),
        ))
    };
    let running = match &lab {
        Some(l) => Some(l.up(&UpOptions {
            forward: (None, 1234),
            timeout: Duration::from_secs(crate::lab::boot_timeout()),
            cold: false,
            saved_states: true,
        })?),
        None => None,
    };
    let mut failed = 0;
    for t in &args.targets {
        let name = format!("{t}-{}", args.mode.name());
        let mut argv: Vec<String> = vec![bin.display().to_string()];
        if t == "cguest" {
            if args.mode != Mode::Pvh {
                eprintln!("bench fuzz: cguest skipped: the C guest boots as PVH only");
                continue;
            }
            let config = ws::root().join("fuzz/examples/cguest.toml");
            argv.extend(["--config".into(), config.display().to_string()]);
        } else if t == "linux" {
            // The raw loop knows the fuzz-target ABI's markers, not a
            // kernel's: the kernel row compares with its own floor.
            let config = guests::linux::fuzz_config(args.mode)?;
            argv.extend([
                "--config".into(),
                config.display().to_string(),
                "--no-floor".into(),
            ]);
        } else {
            argv.extend(crate::fuzz::sample_args(t, args.mode.name()));
        }
        argv.extend([
            "--raw-loop".into(),
            raw_loop.display().to_string(),
            "--rounds".into(),
            args.rounds.max(1).to_string(),
            "--batch-secs".into(),
            args.batch_secs.to_string(),
            "--spin-us".into(),
            args.spin_us.to_string(),
            "--libafl-secs".into(),
            args.libafl_secs.to_string(),
        ]);
        eprintln!("bench fuzz: {name} ({} rounds)", args.rounds);
        let code = match &running {
            Some(r) => {
                let req = Request {
                    argv,
                    env: vec![("XENPROBE_LOG".into(), "error".into())],
                    cwd: ws::root().display().to_string(),
                    stdin: false,
                };
                r.agent
                    .run(&req, None, &mut std::io::stdout(), &mut std::io::stderr())?
            }
            None => Command::new(&argv[0])
                .args(&argv[1..])
                .env("XENPROBE_LOG", "error")
                .status()?
                .code()
                .unwrap_or(1),
        };
        if code != 0 {
            eprintln!("bench fuzz: {name} failed (exit status {code})");
            failed += 1;
        }
    }
    if let Some(l) = &lab {
        l.down()?;
    }
    Ok(i32::from(failed > 0))
}
