//! `cargo xtask bench`: speed figures, each printed against a baseline
//! measured in the same run. One file per subject.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::lab::xen::Flavour;

mod lab;
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
        #[arg(long, value_enum, default_value = "stock")]
        xen: Flavour,
    },
    /// VMI engine operations against the raw libxc calls (runs in dom0).
    Vmi {
        /// Batches per median (each batch repeats a call for >= 250 ms).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Size of the small guest in MiB.
        #[arg(long, default_value_t = 128)]
        small_mib: u64,
        /// Size of the big guest in MiB. The issue asks for 1 GiB, but the
        /// lab's dom0 has 1 GiB and a snapshot keeps a copy of all guest
        /// memory in dom0: 512 MiB is the largest that fits beside dom0's
        /// own use.
        #[arg(long, default_value_t = 512)]
        big_mib: u64,
        #[arg(long, value_enum, default_value = "stock")]
        xen: Flavour,
        /// Measure a debug build (faster to build, slower to run).
        #[arg(long)]
        debug_build: bool,
    },
}

pub fn main(args: BenchArgs) -> Result<i32> {
    match args.what {
        What::Lab { runs, xen } => lab::run(runs.max(1), xen),
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
