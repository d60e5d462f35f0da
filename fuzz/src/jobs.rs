//! `--jobs N`: one campaign on N guests in parallel, through LibAFL's own
//! multi-process event manager (LLMP).
//!
//! This process becomes the LLMP broker (a thread listening on
//! `--broker-port`) and starts N copies of itself with `--job K`; each copy
//! clones the guest's xl config under a distinct domain name
//! (`NAME-jK`), creates its guest, and fuzzes with an
//! [`libafl::events::LlmpEventManager`] connected to the broker: every new
//! corpus entry and crash one job finds goes to the others through shared
//! memory, and all jobs share `corpus/`, `crashes/` and `hangs/` of the
//! campaign directory (a later run resumes from them, with any number of
//! jobs). Each job writes its reports into `job-K/`; this process prints
//! the broker's totals and writes a `summary.md` over the jobs.
//!
//! LibAFL's `Launcher` does the same with `fork()`; forking a process that
//! holds Xen handles is not something to rely on, so the jobs are fresh
//! processes and the broker is started directly. Across hosts: a broker
//! started with `--remote-broker HOST:PORT` connects to the broker of
//! another host's campaign (LLMP broker-to-broker over TCP) and the two
//! exchange their jobs' inputs. The listening broker must accept remote
//! connections, which LibAFL allows only when built with its
//! `llmp_bind_public` feature (this crate's `public-broker` feature);
//! without it the broker binds 127.0.0.1.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libafl::events::StdLlmpEventHook;
use libafl::inputs::BytesInput;
use libafl::monitors::SimpleMonitor;
use libafl_bolts::llmp::LlmpBroker;
use libafl_bolts::shmem::{ShMemProvider, StdShMemProvider};
use libafl_bolts::tuples::tuple_list;

use crate::config::with_name;
use crate::session::cfg_name;

/// The arguments of this process without `--jobs`, `--broker-port` and
/// `--remote-broker` (and their values).
pub fn child_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        // The parent's own options: the jobs get --job/--broker-port instead.
        if ["--jobs", "--broker-port", "--remote-broker"].contains(&a.as_str()) {
            skip = true;
            continue;
        }
        if ["--jobs=", "--broker-port=", "--remote-broker="]
            .iter()
            .any(|p| a.starts_with(p))
        {
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// Writes `job-K/guest.cfg`: the guest's xl config under the name
/// `NAME-jK`; returns its path.
pub fn job_cfg(cfg: &Path, dir: &Path, index: usize) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(cfg).with_context(|| format!("reading {}", cfg.display()))?;
    let name = cfg_name(&text).with_context(|| format!("{}: no name=", cfg.display()))?;
    let jdir = dir.join(format!("job-{index}"));
    std::fs::create_dir_all(&jdir).with_context(|| format!("creating {}", jdir.display()))?;
    let path = jdir.join("guest.cfg");
    std::fs::write(&path, with_name(&text, &format!("{name}-j{index}")))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs the broker and `jobs` clients (this executable with `args` and
/// `--job K --broker-port PORT`) until every client has ended; returns the
/// number of clients that failed.
pub fn run(
    args: &[String],
    jobs: usize,
    port: u16,
    remote: Option<SocketAddr>,
    dir: &Path,
) -> Result<usize> {
    if jobs < 2 {
        bail!("--jobs needs at least 2 (got {jobs})");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
    // The broker loops for the life of this process; it ends with it.
    std::thread::Builder::new()
        .name("llmp-broker".into())
        .spawn(move || {
            let mut last = Instant::now();
            let monitor = SimpleMonitor::new(move |s: &str| {
                if last.elapsed() >= Duration::from_secs(2) {
                    last = Instant::now();
                    eprintln!("[xenprobe-fuzz broker] {s}");
                }
            });
            let broker = StdShMemProvider::new()
                .map_err(|e| e.to_string())
                .and_then(|shmem| {
                    let hook = StdLlmpEventHook::<BytesInput, _>::new(monitor)
                        .map_err(|e| e.to_string())?;
                    LlmpBroker::create_attach_to_tcp(shmem, tuple_list!(hook), port)
                        .map_err(|e| e.to_string())
                });
            let mut broker = match broker {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if let Some(addr) = remote {
                if let Err(e) = broker.inner_mut().connect_b2b(addr) {
                    let _ = ready_tx.send(Err(format!("connecting to broker {addr}: {e}")));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            broker.loop_with_timeouts(Duration::from_secs(30), Some(Duration::from_millis(5)));
        })
        .context("starting the broker thread")?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("LLMP broker on port {port}: {e}"),
        Err(_) => bail!("the LLMP broker on port {port} did not start"),
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    eprintln!(
        "[xenprobe-fuzz] LLMP broker on 127.0.0.1:{port}; starting {jobs} jobs (guests NAME-j1..NAME-j{jobs}), reports in {}/job-K/",
        dir.display()
    );
    let mut children: Vec<(usize, Child)> = Vec::new();
    for k in 1..=jobs {
        let child = Command::new(&exe)
            .args(args)
            .args(["--job", &k.to_string(), "--broker-port", &port.to_string()])
            .spawn()
            .with_context(|| format!("starting job {k}"))?;
        children.push((k, child));
        // Guests boot one after the other (xl create holds a lock anyway).
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut failed = 0;
    for (k, mut c) in children {
        match c.wait() {
            Ok(st) if st.success() => {}
            Ok(st) => {
                eprintln!("[xenprobe-fuzz] job {k} ended with {st}");
                failed += 1;
            }
            Err(e) => {
                eprintln!("[xenprobe-fuzz] job {k}: {e}");
                failed += 1;
            }
        }
    }
    if let Err(e) = write_overview(dir, jobs) {
        tracing::warn!("writing {}/summary.md: {e}", dir.display());
    }
    Ok(failed)
}

/// A value in a job's `summary.md` table (`| key | value |`).
fn field<'a>(summary: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("| {key} | ");
    summary
        .lines()
        .find_map(|l| l.strip_prefix(&pat))
        .map(|v| v.trim_end_matches(" |"))
}

/// `summary.md` of a parallel campaign: one row per job, totals.
fn write_overview(dir: &Path, jobs: usize) -> std::io::Result<()> {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Parallel fuzz campaign ({jobs} jobs, LLMP)\n\nEach job's own report: job-K/summary.md, coverage.svg, lcov.info. Shared: corpus/, crashes/, hangs/.\n"
    );
    let _ = writeln!(
        o,
        "| job | duration | executions | execs/s | coverage | corpus |\n|---|---|---|---|---|---|"
    );
    let mut execs = 0u64;
    let mut rate = 0f64;
    for k in 1..=jobs {
        let Ok(s) = std::fs::read_to_string(dir.join(format!("job-{k}/summary.md"))) else {
            let _ = writeln!(o, "| {k} | no report | | | | |");
            continue;
        };
        let get = |key: &str| field(&s, key).unwrap_or("?").to_string();
        execs += get("executions").parse::<u64>().unwrap_or(0);
        rate += get("execs/s").parse::<f64>().unwrap_or(0.0);
        let _ = writeln!(
            o,
            "| {k} | {} | {} | {} | {} | {} |",
            get("duration"),
            get("executions"),
            get("execs/s"),
            get("coverage"),
            get("corpus")
        );
    }
    let _ = writeln!(
        o,
        "\nTotal: {execs} executions, {rate:.1} execs/s (sum of the jobs' rates)."
    );
    let count = |sub: &str| {
        std::fs::read_dir(dir.join(sub)).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".input") && !n.ends_with(".min.input")
                })
                .count()
        })
    };
    let _ = writeln!(
        o,
        "Unique crash sites: {}; hang sites: {} (crashes/, hangs/).",
        count("crashes"),
        count("hangs")
    );
    std::fs::write(dir.join("summary.md"), o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_args_drop_jobs() {
        let a: Vec<String> = [
            "--cfg",
            "x",
            "--jobs",
            "3",
            "--broker-port",
            "1400",
            "--time",
            "5s",
            "--jobs=2",
            "--remote-broker=h:1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(child_args(&a), vec!["--cfg", "x", "--time", "5s"]);
    }

    #[test]
    fn job_configs_get_distinct_names() {
        let d = std::env::temp_dir().join(format!("xenprobe-jobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        let cfg = d.join("g.cfg");
        std::fs::write(&cfg, "name=\"tlv-pvh\"\ntype=\"pvh\"\n").expect("cfg");
        let p1 = job_cfg(&cfg, &d, 1).expect("job 1");
        let p2 = job_cfg(&cfg, &d, 2).expect("job 2");
        let n = |p: &Path| cfg_name(&std::fs::read_to_string(p).expect("read"));
        assert_eq!(n(&p1).as_deref(), Some("tlv-pvh-j1"));
        assert_eq!(n(&p2).as_deref(), Some("tlv-pvh-j2"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reads_job_summaries() {
        let s = "| executions | 300 |\n| execs/s | 150.0 |\n";
        assert_eq!(field(s, "executions"), Some("300"));
        assert_eq!(field(s, "execs/s"), Some("150.0"));
        assert_eq!(field(s, "corpus"), None);
    }
}
