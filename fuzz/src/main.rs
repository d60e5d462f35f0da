//! `xenprobe-fuzz`: runs a fuzz campaign (or replays a crash) against a
//! guest, from inside dom0. `cargo xtask fuzz` builds and starts it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use xenprobe_fuzz::campaign::{self, CampaignOptions};
use xenprobe_fuzz::session::TargetSpec;

/// Snapshot-driven, coverage-guided fuzzing of a Xen guest (run in dom0).
#[derive(Parser, Debug)]
#[command(name = "xenprobe-fuzz")]
struct Args {
    /// The guest's xl configuration (its name= is the domain name).
    #[arg(long)]
    cfg: PathBuf,
    /// The guest's ELF image.
    #[arg(long)]
    image: PathBuf,
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
    /// Per-run timeout in milliseconds (a run that takes longer is a hang).
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// Extra seed directory.
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Replay this crash input once and print its report.
    #[arg(long)]
    reproduce: Option<PathBuf>,
    /// Stop at the first crash of one of these kinds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    stop_on: Vec<String>,
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
    /// Busy-poll the vm_event ring this many microseconds before blocking.
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
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
    match num.parse::<u64>() {
        Ok(n) => Ok(Duration::from_secs(n * mul)),
        Err(_) => bail!("bad duration {s:?} (use e.g. 60s, 5m, 1h)"),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XENPROBE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xenprobe-fuzz: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main() -> Result<i32> {
    let a = Args::parse();
    let mut target = TargetSpec::sample(&a.krate, a.cfg.clone(), a.image.clone());
    if !a.cover.is_empty() {
        target.cover = a.cover.clone();
    }
    if !a.sinks.is_empty() {
        target.sinks = a.sinks.clone();
    }
    target.timeout = Duration::from_millis(a.timeout_ms);
    target.persistent = a.persistent.max(1);
    target.restore.strategy = a.restore;
    if a.full_context {
        target.restore.registers = xenprobe::vmi::RegisterReset::Context;
    }
    target.event_spin = Duration::from_micros(a.spin_us);
    if let Some(path) = &a.reproduce {
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
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/fuzz").join(&a.krate));
    let opts = CampaignOptions {
        target,
        dir: dir.clone(),
        time: parse_duration(&a.time)?,
        seeds: a.seeds.clone(),
        stop_on: a.stop_on.clone(),
        progress: true,
        rng_seed: None,
    };
    let summary = campaign::run(&opts)?;
    println!("campaign {}: {}", dir.display(), summary.render());
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
    }
}
