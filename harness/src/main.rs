//! `xenprobe`: debug Xen guests from dom0.
//!
//! - `xenprobe list`: the domains.
//! - `xenprobe caps [DOMAIN] [--json]`: what this hypervisor allows, probed live.
//! - `xenprobe repl [DOMAIN] [--symbols FILE] [--module KO]...`: the
//!   interactive debugger (FILE: an ELF image, or a Linux kernel's vmlinux,
//!   System.map or kallsyms; KO: its modules, found where they are loaded).
//! - `xenprobe gdbserver DOMAIN --port N [--bind ADDR] [--symbols ELF]`: a
//!   GDB/LLDB remote stub (binds 127.0.0.1 unless told otherwise; in the lab
//!   use `--bind 0.0.0.0 --port 1234` so the forwarded host port reaches it).
//! - `xenprobe kallsyms VMLINUX`: the symbols of a kernel image, also of a
//!   stripped Linux vmlinux (from its kallsyms tables), as `/proc/kallsyms`
//!   lines (a `System.map`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xenprobe::stub::{self, SessionEnd};
use xenprobe::vmi::{cleanup, Domain, Symbols, Xen};

#[derive(Parser)]
#[command(
    name = "xenprobe",
    version,
    about = "Look at Xen guests from the hypervisor's side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    engine: xenprobe::vmi::SettingsArgs,
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
        /// The guest's symbols: its ELF image, or a Linux kernel's vmlinux
        /// (stripped or not), System.map or /proc/kallsyms copy.
        #[arg(long)]
        symbols: Option<PathBuf>,
        /// A Linux kernel module (.ko) to load at its address in the guest
        /// (found by name in the kernel's module list); repeatable.
        #[arg(long = "module", requires = "symbols")]
        modules: Vec<PathBuf>,
        /// Where the prompt's history is kept (default: ~/.xenprobe_history).
        #[arg(long, env = "XENPROBE_HISTORY")]
        history: Option<PathBuf>,
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
    /// Print the symbols of a kernel image in /proc/kallsyms format (a
    /// System.map), recovered from its kallsyms tables if it is stripped.
    Kallsyms {
        /// vmlinux ELF (e.g. extracted from /boot/vmlinuz), or a symbol map.
        image: PathBuf,
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
    let settings = cli.engine.settings();
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
        Cmd::Repl {
            domain,
            symbols,
            modules,
            history,
        } => {
            let history = history.or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".xenprobe_history"))
            });
            Ok(xenprobe::repl::run(
                domain.as_deref(),
                symbols.as_deref(),
                &modules,
                history.as_deref(),
                settings,
            )?)
        }
        Cmd::Gdbserver {
            domain,
            port,
            bind,
            symbols,
        } => gdbserver(&domain, SocketAddr::new(bind, port), symbols, settings),
        Cmd::Kallsyms { image } => kallsyms(&image),
    }
}

fn kallsyms(image: &Path) -> Result<()> {
    let syms = Symbols::load(image)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match syms.write_map(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn gdbserver(
    domain: &str,
    addr: SocketAddr,
    symbols: Option<PathBuf>,
    settings: xenprobe::vmi::Settings,
) -> Result<()> {
    cleanup::restore_on_ctrl_c()?;
    let xen = Xen::open().context("opening Xen")?.with_settings(settings);
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
