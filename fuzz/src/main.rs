//! `xenprobe-fuzz`: runs a fuzz campaign (or replays a crash) against a
//! guest, from inside dom0. `cargo xtask fuzz` builds and starts it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use xenprobe_fuzz::campaign::{self, CampaignOptions, Job};
use xenprobe_fuzz::session::TargetSpec;
use xenprobe_fuzz::{config, jobs, minimize};

mod debug;

/// Snapshot-driven, coverage-guided fuzzing of a Xen guest (run in dom0).
#[derive(Parser, Debug)]
#[command(name = "xenprobe-fuzz")]
struct Args {
    /// The guest's xl configuration (its name= is the domain name).
    #[arg(long, required_unless_present = "config")]
    cfg: Option<PathBuf>,
    /// The guest's ELF image.
    #[arg(long, required_unless_present = "config")]
    image: Option<PathBuf>,
    /// A guest described in TOML (image, mode or xl config, ABI symbols,
    /// sinks, coverage, timeout, seeds, dictionary; see fuzz/src/config.rs);
    /// other options given on the command line override it.
    #[arg(long, conflicts_with_all = ["cfg", "image"])]
    config: Option<PathBuf>,
    /// Crate of the code under test (its functions get coverage breakpoints).
    #[arg(long, default_value = "tlv")]
    krate: String,
    /// Functions to cover instead (exact name, substring, or crate:NAME); repeatable.
    #[arg(long = "cover")]
    cover: Vec<String>,
    /// Crash sink symbols instead of xenprobe_crash; repeatable.
    #[arg(long = "sink")]
    sinks: Vec<String>,
    /// Campaign directory (corpus/, crashes/, hangs/).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Campaign duration (e.g. 60s, 5m, 1h, or seconds).
    #[arg(long, default_value = "60s")]
    time: String,
    /// Per-run timeout in milliseconds (a run that takes longer is a hang;
    /// default 500, or the config's).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Extra seed directory.
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Replay this crash input once and print its report.
    #[arg(long)]
    reproduce: Option<PathBuf>,
    /// With --reproduce: shrink the input while it crashes at the same site
    /// and save it as NAME.min.input (and NAME.min.json).
    #[arg(long, requires = "reproduce")]
    minimize: bool,
    /// RNG seed of the campaign (default: from the clock).
    #[arg(long)]
    rng_seed: Option<u64>,
    /// Guests fuzzing in parallel (LLMP broker + N job processes; see
    /// fuzz/src/jobs.rs).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// TCP port of the LLMP broker with --jobs.
    #[arg(long, default_value_t = 1337)]
    broker_port: u16,
    /// With --jobs: connect this campaign's broker to another host's
    /// broker (HOST:PORT; that broker must be built with the
    /// `public-broker` feature).
    #[arg(long)]
    remote_broker: Option<std::net::SocketAddr>,
    /// Internal: this process is job K of a --jobs campaign.
    #[arg(long, hide = true)]
    job: Option<usize>,
    /// Stop at the first crash of one of these kinds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    stop_on: Vec<String>,
    /// Stop once a crash of each of these is found: KIND or KIND@SITE (a
    /// crash of that kind whose site contains SITE), comma-separated.
    #[arg(long, value_delimiter = ',')]
    stop_when_found: Vec<String>,
    /// With --reproduce: stop the guest before the crash and serve the
    /// GDB/LLDB stub there (see debug.rs).
    #[arg(long, requires = "reproduce")]
    debug: bool,
    /// Address the debug stub listens on.
    #[arg(long, default_value = "0.0.0.0:1234")]
    debug_bind: std::net::SocketAddr,
    /// HOST:PORT the debugger uses, printed in the command lines (the
    /// host side of the lab's port forward).
    #[arg(long)]
    debug_connect: Option<String>,
    /// With --debug: the debuggers installed where the debugger runs
    /// (comma-separated: lldb, gdb, or none); only their command lines are
    /// printed, and a line says which one is missing (default: both printed).
    #[arg(long, value_delimiter = ',', requires = "debug")]
    debuggers: Option<Vec<String>>,
    /// Persistent mode: restore memory only every N runs (and after every
    /// crash, hang or new coverage); crashes are replayed from the snapshot.
    #[arg(long, default_value_t = 1)]
    persistent: u32,
    /// Memory restore: `clean` (CLEAN the dirty bitmap every run) or
    /// `peek:N` (PEEK every run, CLEAN every N).
    #[arg(long, default_value = "peek:1000")]
    restore: xenprobe::vmi::RestoreStrategy,
    /// Load the whole vCPU context at each restore instead of resetting the
    /// registers in the vm_event reply (needed for guests that use x87/SSE).
    #[arg(long)]
    full_context: bool,
    /// Input format: `raw` bytes, or a structured format whose `arbitrary`
    /// type is built from the fuzzer's bytes and serialised into the guest
    /// (`tlv-records`, `ximg`; see fuzz/src/structured.rs). Corpus and crash files
    /// stay raw bytes: replay them with the same format.
    #[arg(long)]
    input_format: Option<String>,
    /// Busy-poll the vm_event ring this many microseconds before blocking
    /// (default: 2000, with --jobs too: in the lab two busy-polling jobs on
    /// dom0's one vCPU still ran twice as fast as two blocking ones; 0 turns
    /// it off).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Turn off the input-to-state stage (on by default for raw inputs):
    /// operands of the target's `cmp` instructions, logged at breakpoints on
    /// a traced run, written into inputs (fuzz/src/i2s.rs).
    #[arg(long)]
    no_cmplog: bool,
    #[command(flatten)]
    engine: xenprobe::vmi::SettingsArgs,
}

/// Parses `90`, `90s`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mul)) {
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => bail!("bad duration {s:?} (use e.g. 60s, 5m, 1h)"),
    }
}

fn main() {
    xenprobe::logging::init();
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xenprobe-fuzz: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main() -> Result<i32> {
    tracing::debug!("started");
    let a = Args::parse();
    let default_dir = |name: &str| PathBuf::from("target/fuzz").join(name);
    let (mut target, mut seeds, dictionary, name) = match &a.config {
        Some(path) => {
            let stem = path
                .file_stem()
                .map_or("guest".into(), |s| s.to_string_lossy().into_owned());
            let work = a.dir.clone().unwrap_or_else(|| default_dir(&stem));
            let l = config::load(path, &work)?;
            (l.target, l.seeds, l.dictionary, stem)
        }
        None => {
            let (Some(cfg), Some(image)) = (a.cfg.clone(), a.image.clone()) else {
                bail!("give --cfg and --image, or --config");
            };
            let mut t = TargetSpec::sample(&a.krate, cfg, image);
            t.timeout = Duration::from_millis(500);
            (t, None, Vec::new(), a.krate.clone())
        }
    };
    if !a.cover.is_empty() {
        target.cover = a.cover.clone();
    }
    if !a.sinks.is_empty() {
        target.sinks = a.sinks.clone();
    }
    if let Some(ms) = a.timeout_ms {
        target.timeout = Duration::from_millis(ms.max(1));
    }
    if a.seeds.is_some() {
        seeds = a.seeds.clone();
    }
    target.engine = a.engine.settings();
    target.persistent = a.persistent.max(1);
    target.restore.strategy = a.restore;
    if a.full_context {
        target.restore.registers = xenprobe::vmi::RegisterReset::Context;
    }
    if let Some(f) = &a.input_format {
        target.input_format = xenprobe_fuzz::structured::by_name(f).map_err(anyhow::Error::msg)?;
    }
    target.event_spin =
        Duration::from_micros(a.spin_us.unwrap_or(xenprobe_fuzz::session::DEFAULT_SPIN_US));
    if let (Some(path), true) = (&a.reproduce, a.debug) {
        let opts = debug::DebugOptions {
            bind: a.debug_bind,
            connect: a.debug_connect.clone(),
            debuggers: a
                .debuggers
                .as_deref()
                .map(debug::parse_debuggers)
                .transpose()?,
        };
        return debug::run(&target, path, &opts);
    }
    if let (Some(path), true) = (&a.reproduce, a.minimize) {
        let m = minimize::minimize(&target, path, minimize::Budget::default())?;
        print!("{}", m.report.render());
        println!(
            "minimized {} -> {} bytes in {} runs: {}",
            m.original,
            m.input.len(),
            m.runs,
            m.saved.display()
        );
        return Ok(0);
    }
    if let Some(path) = &a.reproduce {
        if let Some(f) = &target.input_format {
            let raw = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            println!("input ({}): {}", f.name(), f.describe(&raw));
        }
        let (report, saved) = campaign::reproduce(&target, path)?;
        return Ok(match (report, saved) {
            (None, _) => {
                println!("no crash: the input ran to the end point");
                1
            }
            (Some(r), saved) => {
                print!("{}", r.render());
                match saved {
                    Some(s) if s.site == r.site => {
                        println!("reproduced: same crash site as the saved report");
                        0
                    }
                    Some(s) => {
                        println!("DIFFERENT from the saved report (saved site {})", s.site);
                        1
                    }
                    None => 0,
                }
            }
        });
    }
    let dir = a.dir.clone().unwrap_or_else(|| default_dir(&name));
    if a.jobs > 1 && a.job.is_none() {
        xenprobe::vmi::cleanup::restore_on_ctrl_c()?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut args = jobs::child_args(&args);
        if a.dir.is_none() {
            args.extend(["--dir".into(), dir.display().to_string()]);
        }
        let time = parse_duration(&a.time)?;
        let out = jobs::run(&args, a.jobs, a.broker_port, a.remote_broker, &dir, time)?;
        let restarted = match out.restarts.len() {
            0 => String::new(),
            n => format!(" ({n} restarts of jobs that died, see summary.md)"),
        };
        println!(
            "campaign {} ({} jobs): {}{restarted}",
            dir.display(),
            a.jobs,
            if out.failed == 0 {
                "all jobs ended normally".to_string()
            } else {
                format!("{} jobs failed", out.failed)
            }
        );
        return Ok(i32::from(out.failed > 0));
    }
    let mut job = None;
    if let Some(k) = a.job {
        target.cfg = jobs::job_cfg(&target.cfg, &dir, k)?;
        job = Some(Job {
            index: k,
            broker_port: a.broker_port,
        });
    }
    let opts = CampaignOptions {
        target,
        dir: dir.clone(),
        time: parse_duration(&a.time)?,
        seeds,
        stop_on: a.stop_on.clone(),
        stop_when_found: a.stop_when_found.clone(),
        progress: job.is_none(),
        rng_seed: a
            .rng_seed
            .map(|s| s.wrapping_add(a.job.unwrap_or(0) as u64)),
        dictionary,
        job,
        cmplog: !a.no_cmplog,
    };
    let summary = campaign::run(&opts)?;
    match a.job {
        Some(k) => println!("job {k}: {}", summary.render()),
        None => println!("campaign {}: {}", dir.display(), summary.render()),
    }
    for (f, t) in &summary.found {
        println!("  found after {:.1} s: {}", t.as_secs_f64(), f.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
