//! `xenprobe-fuzz-bench`: execution speed of one guest under each reset
//! strategy against the floor of the stack (run in dom0; `cargo xtask bench
//! fuzz` builds and starts it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use xenprobe_fuzz::bench::{self, BenchOptions};
use xenprobe_fuzz::executor::XenExecutor;
use xenprobe_fuzz::session::{Session, TargetSpec};

/// Measures execs/s of a fuzz-target guest: floor, reset strategies, LibAFL share.
#[derive(Parser, Debug)]
#[command(name = "xenprobe-fuzz-bench")]
struct Args {
    /// The guest's xl configuration.
    #[arg(long)]
    cfg: PathBuf,
    /// The guest's ELF image.
    #[arg(long)]
    image: PathBuf,
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
    let target = TargetSpec::sample(&a.krate, a.cfg.clone(), a.image.clone());
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
    let guest = target
        .cfg
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    bench::print_table(&guest, &rows, libafl);
    Ok(())
}
