//! `cargo xtask lab`: a real Xen host on any Linux machine.
//!
//! The lab is Debian's Xen 4.17 booted under QEMU with a small dom0 (Debian's
//! kernel, busybox, Xen's tools, the HVM device model and our agent). The
//! workspace is shared into dom0 at the same absolute path, so host-built
//! binaries and guest images run there as they are. On a machine that is
//! already a Xen dom0 every command runs locally instead.

pub mod client;
pub(crate) mod cpio;
mod debian;
pub(crate) mod image;
pub mod instance;
pub(crate) mod kernel;
mod qemu;
mod qmp;
mod root;
mod saved;
pub mod xen;

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use xenlab_proto::Request;

use crate::{deps, ws};
pub use instance::Lab;
pub use instance::UpOptions;
use xen::Flavour;

/// Options shared by every lab command.
#[derive(Args, Clone, Debug)]
pub struct LabOptions {
    /// Hypervisor: Debian's binary (stock) or rebuilt with CONFIG_GDBSX,
    /// CONFIG_SHADOW_PAGING and CONFIG_MEM_SHARING (debug).
    #[arg(
        long,
        value_enum,
        env = "XENPROBE_XEN",
        default_value = "stock",
        global = true
    )]
    pub xen: Flavour,
    /// Forward 127.0.0.1:HOST on the host to dom0's port GUEST (default: a free
    /// host port to dom0 port 1234, for the debug stub). Used when the lab boots.
    #[arg(long, value_name = "HOST[:GUEST]", global = true)]
    pub forward: Option<String>,
    /// Seconds to wait for dom0 to come up.
    #[arg(
        long,
        default_value_t = 300,
        env = "XENPROBE_LAB_TIMEOUT",
        global = true
    )]
    pub timeout: u64,
    /// Boot cold even if a saved state of this lab exists (and save a fresh one).
    #[arg(long, global = true)]
    pub cold: bool,
}

#[derive(Args)]
pub struct LabArgs {
    #[command(flatten)]
    opts: LabOptions,
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Boot the lab (or check that it is up); later commands reuse it.
    Up,
    /// Stop the lab.
    Down,
    /// Print whether the lab is up, its ports and its files.
    Status,
    /// Run a command in dom0 (booting the lab if needed); exits with its status.
    Run {
        /// Forward this process's stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Run the program from a copy in dom0's RAM (kept while the
        /// program does not change): a binary on the host share is paged in
        /// over 9p at every start.
        #[arg(long)]
        from_ram: bool,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
    /// An interactive shell in dom0.
    Shell,
}

/// Runs a `cargo xtask lab` command; returns the exit status.
pub fn main(args: LabArgs) -> Result<i32> {
    let opts = &args.opts;
    let lab = Lab::new(opts.xen);
    let local = deps::on_real_dom0();
    match args.cmd {
        LabCmd::Up => {
            if local {
                println!("lab: this machine is a Xen dom0; commands run here, no lab to boot");
                return Ok(0);
            }
            let r = lab.up(&up_options(opts)?)?;
            print_status(&lab, Some(&r.state));
            Ok(0)
        }
        LabCmd::Down => {
            if local {
                println!("lab: this machine is a Xen dom0; there is no lab to stop");
                return Ok(0);
            }
            if lab.down()? {
                println!("lab: {} lab stopped", opts.xen.name());
            } else {
                println!("lab: no {} lab was running", opts.xen.name());
            }
            Ok(0)
        }
        LabCmd::Status => {
            if local {
                println!("lab: this machine is a Xen dom0; commands run locally");
                return Ok(0);
            }
            let r = lab.running();
            print_status(&lab, r.as_ref().map(|r| &r.state));
            Ok(if r.is_some() { 0 } else { 1 })
        }
        LabCmd::Run {
            interactive,
            from_ram,
            argv,
        } => run(opts, &argv, interactive, from_ram),
        LabCmd::Shell => {
            if !std::io::stdin().is_terminal() {
                eprintln!("lab: note: stdin is not a terminal; reading commands from it");
            }
            run(opts, &["/bin/sh".into(), "-i".into()], true, false)
        }
    }
}

fn up_options(opts: &LabOptions) -> Result<UpOptions> {
    let forward = match &opts.forward {
        None => (None, 1234),
        Some(s) => {
            let (h, g) = s.split_once(':').unwrap_or((s.as_str(), "1234"));
            match (h.parse::<u16>(), g.parse::<u16>()) {
                (Ok(h), Ok(g)) => (Some(h), g),
                _ => bail!("--forward takes HOST[:GUEST] port numbers, not {s:?}"),
            }
        }
    };
    Ok(UpOptions {
        forward,
        timeout: Duration::from_secs(opts.timeout),
        cold: opts.cold,
        saved_states: std::env::var("XENPROBE_LAB_SAVE").as_deref() != Ok("0"),
    })
}

fn print_status(lab: &Lab, state: Option<&instance::State>) {
    let name = lab.flavour.name();
    match state {
        Some(s) => {
            println!("lab: {name}: up (QEMU pid {}, {})", s.pid, s.accel.name());
            println!("  booted in:     {:.1} s", s.boot_secs);
            println!("  agent:         127.0.0.1:{}", s.agent_port);
            println!(
                "  forwarded:     127.0.0.1:{} -> dom0:{}",
                s.forward_host, s.forward_guest
            );
        }
        None => println!("lab: {name}: down"),
    }
    println!("  serial log:    {}", lab.serial_log().display());
    println!("  guest consoles: {}", lab.consoles().display());
}

/// Environment variables passed on to commands in dom0.
fn forwarded_env() -> Vec<(String, String)> {
    const PREFIXES: &[&str] = &["RUST_", "CARGO_", "XENPROBE_", "INSTA_", "PROPTEST_"];
    const NAMES: &[&str] = &["NO_COLOR", "TERM", "CI"];
    std::env::vars()
        .filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)) || NAMES.contains(&k.as_str()))
        .collect()
}

/// Runs `argv` in dom0 (or locally on a real dom0) with this process's
/// working directory, streaming its output; returns its exit status.
/// `from_ram`: dom0 runs the program from a copy in its RAM
/// ([`xenlab_proto::builtin::FROM_RAM`]).
fn run(opts: &LabOptions, argv: &[String], interactive: bool, from_ram: bool) -> Result<i32> {
    if deps::on_real_dom0() {
        let st = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run `{}`: {e}", argv[0]))?;
        return Ok(st.code().unwrap_or(128));
    }
    let lab = Lab::new(opts.xen);
    let running = lab.up(&up_options(opts)?)?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let root = ws::root();
    let cwd = if cwd.starts_with(&root) {
        cwd.to_string_lossy().into_owned()
    } else {
        "/".to_string()
    };
    let mut argv = argv.to_vec();
    // A relative program path is relative to the cwd, which exists in dom0
    // only inside the workspace.
    if argv[0].contains('/') && !argv[0].starts_with('/') && cwd == "/" {
        let abs = std::env::current_dir()?.join(&argv[0]);
        if abs.starts_with(&root) {
            argv[0] = abs.to_string_lossy().into_owned();
        } else {
            bail!(
                "{} is outside the workspace ({}), which is all that dom0 sees",
                argv[0],
                root.display()
            );
        }
    } else if Path::new(&argv[0]).is_absolute()
        && Path::new(&argv[0]).exists()
        && !Path::new(&argv[0]).starts_with(&root)
        && !argv[0].starts_with("/usr")
        && !argv[0].starts_with("/bin")
        && !argv[0].starts_with("/sbin")
    {
        eprintln!(
            "lab: note: {} is outside the workspace ({}); dom0 sees only the workspace",
            argv[0],
            root.display()
        );
    }
    let mut env = forwarded_env();
    // Where xenconsoled writes guest consoles (the test API reads them).
    env.push((
        "XENPROBE_CONSOLE_DIR".into(),
        lab.consoles().to_string_lossy().into_owned(),
    ));
    // The port forward, for debug stubs that print the host's address.
    env.push((
        "XENPROBE_LAB_FORWARD".into(),
        format!(
            "{}:{}",
            running.state.forward_host, running.state.forward_guest
        ),
    ));
    if from_ram {
        argv.insert(0, xenlab_proto::builtin::FROM_RAM.into());
    }
    let req = Request {
        argv,
        env,
        cwd,
        stdin: interactive,
    };
    let stdin: Option<Box<dyn std::io::Read + Send>> = if interactive {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    client::forward_interrupts()?;
    running
        .agent
        .run(
            &req,
            stdin,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .map_err(|e| lost(&lab, &running.state, &req.argv, e))
}

/// The error of a command whose connection to dom0 broke: says whether the
/// lab's QEMU is gone (killed, or it died) or alive but not answering, with
/// the last serial lines; the next lab command recovers either way.
fn lost(lab: &Lab, state: &instance::State, argv: &[String], e: anyhow::Error) -> anyhow::Error {
    let cmd = argv.first().map_or("the command", |a| {
        Path::new(a)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(a)
    });
    let serial = lab.serial_log();
    let tail = instance::tail(&serial, 8);
    let tail = if tail.trim().is_empty() {
        format!("(nothing in {})", serial.display())
    } else {
        format!("last lines of {}:\n{tail}", serial.display())
    };
    let flavour = lab.flavour.name();
    let why = if !lab.qemu_alive(state.pid) {
        format!(
            "the {flavour} lab's QEMU (pid {}) is gone: it was killed or died while `{cmd}` ran in \
             dom0 ({e:#}). The next lab command cleans up and boots the lab again; {tail}",
            state.pid
        )
    } else if lab.running().is_none() {
        format!(
            "the {flavour} lab (QEMU pid {}) stopped answering while `{cmd}` ran in dom0 ({e:#}): \
             dom0 may have crashed. The next lab command stops it and boots it again; {tail}",
            state.pid
        )
    } else {
        return e;
    };
    // The command's last output may have ended mid-line (a progress line).
    eprintln!();
    anyhow::anyhow!(why)
}

/// Runs `argv` in dom0 with the default lab options (for other xtask commands).
pub fn run_in_dom0(argv: &[String]) -> Result<i32> {
    run(&default_options(), argv, false, false)
}

/// [`run_in_dom0`] with the program (a binary built on the host) run from
/// a copy in dom0's RAM: it starts faster than from the share.
pub fn run_in_dom0_from_ram(argv: &[String]) -> Result<i32> {
    run(&default_options(), argv, false, true)
}

fn default_options() -> LabOptions {
    LabOptions {
        xen: Flavour::from_env(),
        forward: None,
        timeout: boot_timeout(),
        cold: false,
    }
}

/// A file's modification time since the epoch (zero where it cannot be
/// told).
fn modified_since_epoch(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
}

/// Seconds to wait for dom0 when a command other than `lab` boots the lab:
/// `XENPROBE_LAB_TIMEOUT`, default 300 (`lab --timeout` has the same default).
pub fn boot_timeout() -> u64 {
    std::env::var("XENPROBE_LAB_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

pub use xenprobe_abi::fnv1a;
