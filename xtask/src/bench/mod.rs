//! `cargo xtask bench`: speed figures, each printed against a baseline
//! measured in the same run. One file per subject.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::lab::xen::Flavour;

mod campaign;
mod fuzz;
mod lab;
mod rawloop;
mod stub;
mod tests;
mod vmi;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Lab start (cold boot and restored state) and a warm command's round trip.
    Lab {
        /// Starts of each kind to measure.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, value_enum, default_value = "stock", env = "XENPROBE_XEN")]
        xen: Flavour,
    },
    /// The debug stub against the raw engine: memory read throughput (`m`
    /// packets of 4 KiB) and the breakpoint-continue round trip through LLDB.
    Stub,
    /// Fuzz campaigns: execs/s with one guest and two, time to find each
    /// planted bug up to depth 3 (median of seeded runs).
    FuzzCampaign {
        /// Sample targets (default: all three).
        #[arg(long, value_delimiter = ',', default_value = "tlv,bytecode,imghdr")]
        targets: Vec<String>,
        /// Seeded runs per target for the time-to-find table.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Length of each execs/s campaign, seconds.
        #[arg(long, default_value_t = 30)]
        rate_secs: u64,
        /// Budget of each time-to-find campaign, seconds.
        #[arg(long, default_value_t = 600)]
        find_secs: u64,
    },
    /// Time per guest test: snapshot isolation against a fresh boot per test.
    Tests {
        /// Tests in each run.
        #[arg(long, default_value_t = 8)]
        tests: usize,
        #[arg(long, value_enum, default_value = "stock", env = "XENPROBE_XEN")]
        xen: Flavour,
    },
    /// Fuzzing speed: each reset strategy against the floor of the stack.
    Fuzz(fuzz::FuzzBenchArgs),
    /// VMI engine operations against the raw libxc calls (runs in dom0).
    Vmi {
        /// Batches per median (each batch repeats a call for >= 250 ms).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Size of the small guest in MiB.
        #[arg(long, default_value_t = 128)]
        small_mib: u64,
        /// Size of the big guest in MiB (the 1 GiB: snapshots keep
        /// only non-zero frames, so they fit beside dom0's 1 GiB).
        #[arg(long, default_value_t = 1024)]
        big_mib: u64,
        #[arg(long, value_enum, default_value = "stock", env = "XENPROBE_XEN")]
        xen: Flavour,
        /// Measure a debug build (faster to build, slower to run).
        #[arg(long)]
        debug_build: bool,
    },
}

pub fn main(args: BenchArgs) -> Result<i32> {
    match args.what {
        What::Lab { runs, xen } => lab::run(runs.max(1), xen),
        What::Stub => stub::run(),
        What::FuzzCampaign {
            targets,
            runs,
            rate_secs,
            find_secs,
        } => campaign::run(&targets, runs.max(1), rate_secs, find_secs).map(|()| 0),
        What::Tests { tests, xen } => tests::run(tests.max(2), xen),
        What::Fuzz(args) => fuzz::run(&args),
        What::Vmi {
            runs,
            small_mib,
            big_mib,
            xen,
            debug_build,
        } => vmi::run(&vmi::VmiOptions {
            runs: runs.max(1),
            small_mib,
            big_mib,
            xen,
            debug_build,
        }),
    }
}

/// Median, min and max of a sample.
pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Statistics of a non-empty sample.
pub(crate) fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}
