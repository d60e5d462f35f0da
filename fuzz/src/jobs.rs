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
//! A job that dies before the campaign's time is up (a signal, a failed
//! guest) is started again, up to [`MAX_RESTARTS`] times, with the time
//! left: it resumes from the shared corpus, like LibAFL's restarting event
//! manager does for its clients; the restarts are printed and listed in
//! `summary.md`. A job that dies for good has its guest repaired from the
//! job's journal (breakpoint bytes, vm_event ring, pauses).
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

/// The arguments of this process without `--jobs`, `--broker-port`,
/// `--remote-broker` and `--time` (and their values): each job gets its own
/// `--time` (the time left when it starts).
pub fn child_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        // The parent's own options: the jobs get --job/--broker-port instead.
        if ["--jobs", "--broker-port", "--remote-broker", "--time"].contains(&a.as_str()) {
            skip = true;
            continue;
        }
        if ["--jobs=", "--broker-port=", "--remote-broker=", "--time="]
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

/// Times a job is started again after it died before the campaign's end.
pub const MAX_RESTARTS: u32 = 3;

/// A job that died and was started again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// Job number.
    pub job: usize,
    /// How it ended (e.g. `signal: 11 (SIGSEGV) (core dumped)`).
    pub status: String,
    /// Campaign time when it ended.
    pub after: Duration,
}

/// How the jobs of a parallel campaign ended.
#[derive(Debug, Clone, Default)]
pub struct JobsOutcome {
    /// Jobs that did not end normally in the end (restarts used up, or too
    /// little time left to start again).
    pub failed: usize,
    /// Jobs that died and were started again.
    pub restarts: Vec<Restart>,
}

/// What to do with a job that ended with `success` after its start number
/// `restarts`, with `left` campaign time remaining.
fn after_exit(success: bool, restarts: u32, left: Duration) -> JobEnd {
    if success {
        JobEnd::Done
    } else if restarts < MAX_RESTARTS && left >= MIN_TIME_TO_RESTART {
        JobEnd::Restart
    } else {
        JobEnd::Failed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobEnd {
    Done,
    Restart,
    Failed,
}

/// A job is not started again with less campaign time than this left.
const MIN_TIME_TO_RESTART: Duration = Duration::from_secs(5);

/// `--time` for a job started with `left` campaign time remaining.
fn time_arg(left: Duration) -> String {
    format!("{}s", left.as_secs_f64().ceil().max(1.0) as u64)
}

/// Runs the broker and `jobs` clients (this executable with `args`,
/// `--time` and `--job K --broker-port PORT`) for `time`, until every
/// client has ended; a client that dies early is started again (see the
/// module documentation).
pub fn run(
    args: &[String],
    jobs: usize,
    port: u16,
    remote: Option<SocketAddr>,
    dir: &Path,
    time: Duration,
) -> Result<JobsOutcome> {
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
    let start = Instant::now();
    let spawn = |k: usize| -> Result<Child> {
        let left = time.saturating_sub(start.elapsed());
        Command::new(&exe)
            .args(args)
            .args(["--time", &time_arg(left)])
            .args(["--job", &k.to_string(), "--broker-port", &port.to_string()])
            .spawn()
            .with_context(|| format!("starting job {k}"))
    };
    // (job, process, restarts so far); None once the job has ended for good.
    let mut running: Vec<(usize, Option<Child>, u32)> = Vec::new();
    for k in 1..=jobs {
        running.push((k, Some(spawn(k)?), 0));
        // Guests boot one after the other (xl create holds a lock anyway).
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut outcome = JobsOutcome::default();
    while running.iter().any(|(_, c, _)| c.is_some()) {
        std::thread::sleep(Duration::from_millis(200));
        for (k, slot, restarts) in running.iter_mut() {
            let Some(child) = slot.as_mut() else { continue };
            let status = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(st)) => st,
                Err(e) => {
                    eprintln!("[xenprobe-fuzz] job {k}: {e}");
                    outcome.failed += 1;
                    *slot = None;
                    continue;
                }
            };
            // After Ctrl-C/SIGTERM the jobs stop too: none is started again.
            let left = if xenprobe::vmi::cleanup::interrupted() {
                Duration::ZERO
            } else {
                time.saturating_sub(start.elapsed())
            };
            match after_exit(status.success(), *restarts, left) {
                JobEnd::Done => *slot = None,
                JobEnd::Failed => {
                    eprintln!("[xenprobe-fuzz] job {k} ended with {status}");
                    outcome.failed += 1;
                    *slot = None;
                    repair_guest(dir, *k);
                }
                JobEnd::Restart => {
                    *restarts += 1;
                    eprintln!(
                        "[xenprobe-fuzz] job {k} ended with {status} after {:.1} s; starting it again ({} of {MAX_RESTARTS}, {} left)",
                        start.elapsed().as_secs_f64(),
                        *restarts,
                        time_arg(left)
                    );
                    outcome.restarts.push(Restart {
                        job: *k,
                        status: status.to_string(),
                        after: start.elapsed(),
                    });
                    *slot = Some(spawn(*k)?);
                }
            }
        }
    }
    if let Err(e) = write_overview(dir, jobs, &outcome.restarts) {
        tracing::warn!("writing {}/summary.md: {e}", dir.display());
    }
    Ok(outcome)
}

/// Leaves the guest of a job that died clean: replays the journal the job
/// kept of its breakpoints and vm_event ring (original bytes back, ring torn
/// down, vCPUs released, pauses undone; see `xenprobe::vmi::cleanup`).
fn repair_guest(dir: &Path, index: usize) {
    let cfg = dir.join(format!("job-{index}/guest.cfg"));
    let Some(name) = std::fs::read_to_string(&cfg)
        .ok()
        .and_then(|t| cfg_name(&t))
    else {
        return;
    };
    let repaired = xenprobe::vmi::Xen::open().and_then(|xen| {
        let dom = xen.find(name.as_str())?;
        xenprobe::vmi::cleanup::recover(&xen, dom.domid, &name)
    });
    match repaired {
        Ok(true) => eprintln!("[xenprobe-fuzz] repaired the guest {name} the dead job left behind"),
        Ok(false) => {}
        Err(e) => eprintln!("[xenprobe-fuzz] repairing the guest {name} of job {index}: {e}"),
    }
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
fn write_overview(dir: &Path, jobs: usize, restarts: &[Restart]) -> std::io::Result<()> {
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
    if !restarts.is_empty() {
        let _ = writeln!(o, "\nJobs started again after they died:\n");
        for r in restarts {
            let _ = writeln!(
                o,
                "- job {} ended with {} at {:.1} s",
                r.job,
                r.status,
                r.after.as_secs_f64()
            );
        }
    }
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
        assert_eq!(child_args(&a), vec!["--cfg", "x"]);
        let b: Vec<String> = ["--time=9s", "--krate", "tlv"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(child_args(&b), vec!["--krate", "tlv"]);
    }

    #[test]
    fn a_dead_job_is_restarted_while_time_and_restarts_are_left() {
        let lots = Duration::from_secs(60);
        assert_eq!(after_exit(true, 0, lots), JobEnd::Done);
        assert_eq!(after_exit(true, 0, Duration::ZERO), JobEnd::Done);
        assert_eq!(after_exit(false, 0, lots), JobEnd::Restart);
        assert_eq!(after_exit(false, MAX_RESTARTS - 1, lots), JobEnd::Restart);
        assert_eq!(after_exit(false, MAX_RESTARTS, lots), JobEnd::Failed);
        assert_eq!(after_exit(false, 0, Duration::from_secs(2)), JobEnd::Failed);
        assert_eq!(time_arg(Duration::from_millis(12_300)), "13s");
        assert_eq!(time_arg(Duration::ZERO), "1s");
    }

    #[test]
    fn the_overview_lists_restarts() {
        let d = std::env::temp_dir().join(format!("xenprobe-overview-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("job-1")).expect("tmp");
        std::fs::write(
            d.join("job-1/summary.md"),
            "| executions | 300 |\n| execs/s | 150.0 |\n",
        )
        .expect("job summary");
        let r = Restart {
            job: 2,
            status: "signal: 11 (SIGSEGV)".into(),
            after: Duration::from_millis(4500),
        };
        write_overview(&d, 2, &[r]).expect("overview");
        let o = std::fs::read_to_string(d.join("summary.md")).expect("summary");
        assert!(o.contains("| 1 | ? | 300 | 150.0 |"), "{o}");
        assert!(o.contains("| 2 | no report |"), "{o}");
        assert!(
            o.contains("- job 2 ended with signal: 11 (SIGSEGV) at 4.5 s"),
            "{o}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn job_configs_get_distinct_names() {
        let d = crate::testutil::fresh_tmp_dir("jobs");
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
