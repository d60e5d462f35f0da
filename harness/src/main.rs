//! `xenprobe`: debug Xen guests from dom0.
//!
//! - `xenprobe list`: the domains.
//! - `xenprobe caps [DOMAIN] [--json]`: what this hypervisor allows, probed live.
//! - `xenprobe repl [DOMAIN] [--symbols ELF]`: the interactive debugger.
//! - `xenprobe gdbserver DOMAIN --port N [--bind ADDR] [--symbols ELF]`: a
//!   GDB/LLDB remote stub (binds 127.0.0.1 unless told otherwise; in the lab
//!   use `--bind 0.0.0.0 --port 1234` so the forwarded host port reaches it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xenprobe::stub::{self, SessionEnd};
use xenprobe::vmi::{cleanup, Domain, Xen};

#[derive(Parser)]
#[command(
    name = "xenprobe",
    version,
    about = "Look at Xen guests from the hypervisor's side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the domains.
    List,
    /// What this hypervisor allows: tries each feature on a throwaway guest
    /// of each type, or only on DOMAIN (left as found).
    Caps {
        /// Domain name or id to probe instead of throwaway guests.
        domain: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Interactive debugger (commands on stdin when it is not a terminal).
    Repl {
        /// Domain name or id to attach to right away.
        domain: Option<String>,
        /// Guest ELF image for symbols.
        #[arg(long)]
        symbols: Option<PathBuf>,
    },
    /// GDB/LLDB remote stub for one domain (serves one debugger, then detaches).
    Gdbserver {
        /// Domain name or id.
        domain: String,
        /// TCP port.
        #[arg(long)]
        port: u16,
        /// Address to bind (0.0.0.0 to be reachable from outside dom0).
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
        bind: IpAddr,
        /// Guest ELF image: lets the stub report the guest's exit code and
        /// crashes (the debugger loads the symbols itself).
        #[arg(long)]
        symbols: Option<PathBuf>,
    },
}

fn main() {
    xenprobe::logging::init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xenprobe: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::List => {
            let xen = Xen::open().context("opening Xen")?;
            for d in xen.domains()? {
                println!("{:>5}  {:<24} {}", d.domid, d.name, d.kind);
            }
            Ok(())
        }
        Cmd::Caps { domain, json } => {
            cleanup::restore_on_ctrl_c()?;
            let report = xenprobe::caps_report::probe(domain.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Cmd::Repl { domain, symbols } => {
            Ok(xenprobe::repl::run(domain.as_deref(), symbols.as_deref())?)
        }
        Cmd::Gdbserver {
            domain,
            port,
            bind,
            symbols,
        } => gdbserver(&domain, SocketAddr::new(bind, port), symbols),
    }
}

fn gdbserver(domain: &str, addr: SocketAddr, symbols: Option<PathBuf>) -> Result<()> {
    cleanup::restore_on_ctrl_c()?;
    let xen = Xen::open().context("opening Xen")?;
    let target = match domain.parse::<u32>() {
        Ok(id) => Domain::attach(&xen, id),
        Err(_) => Domain::attach(&xen, domain),
    }
    .with_context(|| format!("attaching to {domain}"))?;
    let what = format!("{} (id {}, {})", target.name(), target.id(), target.kind());
    let end = stub::serve_domain(target, addr, symbols.as_deref(), |bound| {
        eprintln!("xenprobe: gdbserver for {what} listening on {bound}");
    })?;
    match end {
        SessionEnd::ConnectionLost(why) => {
            eprintln!("xenprobe: connection lost ({why}); guest detached and running")
        }
        end => eprintln!("xenprobe: session ended: {end:?}; guest detached"),
    }
    Ok(())
}
