//! `xenprobe-fuzz-bench`: execution speed of one guest under each reset
//! strategy against the floor of the stack (run in dom0; `cargo xtask bench
//! fuzz` builds and starts it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use xenprobe_fuzz::bench::{self, BenchOptions, FloorOptions};
use xenprobe_fuzz::executor::XenExecutor;
use xenprobe_fuzz::session::{Session, TargetSpec, DEFAULT_SPIN_US};
use xenprobe_fuzz::{config, rawloop};

/// Measures execs/s of a fuzz-target guest: against the raw C loop
/// (`xenprobe-rawloop`) with campaigns, then the reset strategies against
/// xenprobe's own floor and LibAFL's share.
#[derive(Parser, Debug)]
#[command(name = "xenprobe-fuzz-bench")]
struct Args {
    /// The guest's xl configuration.
    #[arg(long, required_unless_present = "config")]
    cfg: Option<PathBuf>,
    /// The guest's ELF image.
    #[arg(long, required_unless_present = "config")]
    image: Option<PathBuf>,
    /// A guest described in TOML (as `xenprobe-fuzz --config`), instead of
    /// --cfg/--image/--krate.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The raw C loop (`xenprobe-rawloop`; default: next to this binary or
    /// in target/bench/). Without it the comparison is skipped.
    #[arg(long)]
    raw_loop: Option<PathBuf>,
    /// Seconds of each campaign of the comparison (0: no campaign rows).
    #[arg(long, default_value_t = 15)]
    campaign_secs: u64,
    /// RNG seed of the comparison's campaigns (the same every round).
    #[arg(long, default_value_t = 7)]
    rng_seed: u64,
    /// Skip the reset-strategy section (the comparison only).
    #[arg(long)]
    no_strategies: bool,
    /// Skip the comparison with the raw loop.
    #[arg(long)]
    no_floor: bool,
    /// Crate of the code under test.
    #[arg(long, default_value = "tlv")]
    krate: String,
    /// Executions per mode per round (at most).
    #[arg(long, default_value_t = 3000)]
    execs: usize,
    /// Seconds per mode per round (at most).
    #[arg(long, default_value_t = 3.0)]
    batch_secs: f64,
    /// Rounds (medians are printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Distinct inputs generated.
    #[arg(long, default_value_t = 200)]
    inputs: usize,
    /// Busy-poll bound in microseconds for the spin rows (0: no spin rows).
    #[arg(long, default_value_t = 2000)]
    spin_us: u64,
    /// Seconds of the LibAFL campaign row (0: skip it).
    #[arg(long, default_value_t = 10)]
    libafl_secs: u64,
    /// Only these rows (comma-separated indices, 0 = the floor).
    #[arg(long, value_delimiter = ',')]
    only: Vec<usize>,
    /// Skip the exactness check after each mode.
    #[arg(long)]
    no_check: bool,
    #[command(flatten)]
    engine: xenprobe::vmi::SettingsArgs,
}

fn main() {
    xenprobe::logging::init();
    if let Err(e) = real_main() {
        eprintln!("xenprobe-fuzz-bench: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<()> {
    let a = Args::parse();
    xenprobe::vmi::cleanup::restore_on_ctrl_c().context("installing the Ctrl-C handler")?;
    let work = std::env::temp_dir().join(format!("xenprobe-fuzz-bench-{}", std::process::id()));
    let (mut target, dictionary) = match &a.config {
        Some(path) => {
            let l = config::load(path, &work)?;
            (l.target, l.dictionary)
        }
        None => {
            let (Some(cfg), Some(image)) = (a.cfg.clone(), a.image.clone()) else {
                anyhow::bail!("give --cfg and --image, or --config");
            };
            (TargetSpec::sample(&a.krate, cfg, image), Vec::new())
        }
    };
    target.engine = a.engine.settings();
    let guest = target
        .cfg
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !a.no_floor {
        match a.raw_loop.clone().or_else(rawloop::default_bin) {
            Some(raw_bin) => {
                let fopts = FloorOptions {
                    raw_bin,
                    rounds: a.rounds.max(1),
                    batch: Duration::from_secs_f64(a.batch_secs.max(0.01)),
                    campaign: Duration::from_secs(a.campaign_secs),
                    spin: Duration::from_micros(DEFAULT_SPIN_US),
                    inputs: a.inputs,
                    rng_seed: a.rng_seed,
                    dictionary,
                };
                let (syscall, page) = bench::dom0_costs();
                let rows = bench::compare(&target, &fopts)?;
                bench::print_comparison(&guest, &rows);
                println!(
                    "dom0 here: a system call {syscall:.1} us; a page touched after one {page:.2} us (two system calls a run: each page a loop touches beyond another's costs about twice that)"
                );
            }
            None => eprintln!(
                "[bench] no xenprobe-rawloop (build it with `cargo xtask bench fuzz`, or give \
                 --raw-loop): the comparison with the raw loop is skipped"
            ),
        }
    }
    if a.no_strategies {
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    let opts = BenchOptions {
        target: target.clone(),
        execs: a.execs.max(1),
        batch: Duration::from_secs_f64(a.batch_secs.max(0.01)),
        rounds: a.rounds.max(1),
        inputs: a.inputs,
        spin: Duration::from_micros(a.spin_us),
        libafl_secs: a.libafl_secs,
        check: !a.no_check,
        only: a.only.clone(),
    };
    let rows = bench::run(&opts)?;
    let libafl = if a.libafl_secs > 0 {
        let session = Session::start(target.clone()).context("starting the guest")?;
        let mut ex = XenExecutor::new(session);
        let r = bench::libafl_share(&mut ex, &target.image, &target.cover, a.libafl_secs);
        let fin = ex.into_session().finish();
        let r = r?;
        fin.context("leaving the guest clean")?;
        Some(r)
    } else {
        None
    };
    bench::print_table(&guest, &rows, libafl);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
