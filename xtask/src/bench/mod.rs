//! `cargo xtask bench`: speed figures, each printed against a baseline
//! measured in the same run. One file per subject.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::lab::xen::Flavour;

mod fuzz;
mod lab;

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
    /// Fuzzing speed: each reset strategy against the floor of the stack.
    Fuzz(fuzz::FuzzBenchArgs),
}

pub fn main(args: BenchArgs) -> Result<i32> {
    match args.what {
        What::Lab { runs, xen } => lab::run(runs.max(1), xen),
        What::Fuzz(args) => {
            let code = fuzz::run(&args)?;
            // (campaign section: the lead adds `campaign::run(&args)` here)
            Ok(code)
        }
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
