//! `cargo xtask`: build, lab, guests, fuzz, bench and Xen-sysroot commands for xenprobe.

mod archive;
mod bench;
mod deps;
mod fuzz;
mod guests;
mod lab;
mod sys;
mod test;
mod ws;
mod xen_sysroot;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "xenprobe's build, lab, guest, fuzz and bench commands"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage the Xen lab (Xen 4.17 + dom0 under QEMU, or the local dom0).
    Lab(lab::LabArgs),
    /// Build and run the sample guests.
    Guests(guests::GuestsArgs),
    /// Run the whole test suite, live-guest tests in the lab included.
    Test(test::TestArgs),
    /// Speed figures, each against a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// Fuzz a sample guest in the lab (snapshot-driven, coverage-guided, LibAFL).
    Fuzz(fuzz::FuzzArgs),
    /// Build xenprobe against another Xen release's headers and libraries
    /// (Debian's packages, unpacked under target/xen-sysroot/<version>).
    XenSysroot(xen_sysroot::XenSysrootArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XENPROBE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Lab(a) => lab::main(a)?,
        Cmd::Guests(a) => guests::main(a)?,
        Cmd::Test(a) => test::main(a)?,
        Cmd::Bench(a) => bench::main(a)?,
        Cmd::Fuzz(a) => fuzz::main(a)?,
        Cmd::XenSysroot(a) => xen_sysroot::main(a)?,
    };
    std::process::exit(code)
}
