//! Running guest tests with libtest's command line and output (libtest-mimic).

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

use super::guest::GuestImages;
use super::pool::Pool;
use super::session::with_diagnostics;
use super::{GuestTest, Mode};
use crate::vmi::caps::Capabilities;
use crate::vmi::Xen;

/// Runs `tests` as a libtest-compatible test binary (`harness = false`);
/// returns the process's exit code.
pub fn main(tests: Vec<GuestTest>) -> ExitCode {
    let args = Arguments::from_args();
    // Engine logs on stderr, filtered by XENPROBE_LOG (e.g. `xenprobe=debug`).
    crate::logging::init();
    let host = probe_host();
    let images = GuestImages::locate().map_err(|e| format!("{e:#}"));
    let pool = Arc::new(Pool::new(&tests, images));
    let mut trials = vec![];
    let mut skipped: Vec<(String, Vec<String>)> = vec![];
    for t in &tests {
        for &mode in &t.modes {
            let name = format!("{}::{}", t.name, mode.name());
            let test = t.clone();
            let pool = pool.clone();
            let host_err = host.as_ref().err().cloned();
            let mut trial = Trial::test(name.clone(), move || {
                if let Some(e) = host_err {
                    return Err(e.into());
                }
                run_one(&test, mode, &pool, &name)
            });
            let skip = host.as_ref().ok().and_then(|(h, settings)| {
                let mut caps = Capabilities::new(mode, h.clone());
                caps.forced_breakpoint = settings.breakpoint;
                t.needs.iter().find_map(|n| n.check(&caps).err())
            });
            if let Some(why) = skip {
                trial = trial.with_kind("skip").with_ignored_flag(true);
                match skipped.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, names)) => names.push(format!("{}::{}", t.name, mode.name())),
                    None => skipped.push((why, vec![format!("{}::{}", t.name, mode.name())])),
                }
            } else if t.ignored {
                trial = trial.with_ignored_flag(true);
            }
            trials.push(trial);
        }
    }
    if !args.list {
        for (why, names) in &skipped {
            println!("skipped ({why}):\n    {}", names.join("\n    "));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    pool.clear();
    conclusion.exit_code()
}

/// What the running hypervisor offers and the engine settings (from the
/// environment: a test binary's command line is libtest's), or why not.
fn probe_host() -> Result<(crate::xen::HostCaps, crate::vmi::Settings), String> {
    let settings = crate::vmi::SettingsArgs::from_env()?;
    if !std::path::Path::new("/dev/xen/privcmd").exists() {
        return Err(
            "this test needs a Xen dom0 (/dev/xen/privcmd is missing): run it with \
                    `cargo test` at the workspace root, whose runner forwards it to the lab, \
                    or with `cargo xtask test`"
                .into(),
        );
    }
    Xen::open()
        .and_then(|x| x.host_caps())
        .map(|h| (h, settings))
        .map_err(|e| format!("cannot query the hypervisor: {e}"))
}

/// Gets a guest from the pool, runs the body with a watchdog, and gives the
/// guest back (kept after a pass, destroyed otherwise).
fn run_one(t: &GuestTest, mode: Mode, pool: &Pool, test: &str) -> Result<(), Failed> {
    let t0 = std::time::Instant::now();
    let mut lease = pool.lease(t, mode, test).map_err(|e| format!("{e:#}"))?;
    let session = &mut lease.session;
    let name = session.name().to_string();

    // The watchdog ends a test that overruns: every later session call
    // fails, and the domain is destroyed, so that an engine call the body is
    // blocked in fails too.
    let (done, watch) = mpsc::channel::<()>();
    let timeout = t.timeout;
    let overrun = session.overrun.clone();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            overrun.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::process::Command::new("xl")
                .args(["destroy", &name])
                .output();
            return true;
        }
        false
    });
    let body = t.body;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(session)));
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let result = match outcome {
        Ok(Ok(())) if !timed_out => Ok(()),
        Ok(Ok(())) => Err(anyhow::anyhow!("timed out after {timeout:?}")),
        Ok(Err(e)) if timed_out => Err(e.context(format!("timed out after {timeout:?}"))),
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(anyhow::anyhow!("panicked: {}", panic_message(&panic))),
    };
    if let Err(e) = &result {
        let image = lease.session.guest.image().to_path_buf();
        super::debug::serve_on_failure(
            &mut lease.session,
            &format!("{}::{}", t.name, mode.name()),
            &image,
            e,
        );
    }
    let result =
        result.map_err(|e| Failed::from(format!("{:#}", with_diagnostics(e, &mut lease.session))));
    let restored = lease.restored;
    pool.give_back(lease, result.is_ok(), test);
    record_time(test, t0.elapsed(), restored);
    result
}

/// `XENPROBE_TEST_TIMES=FILE`: each test appends `NAME<TAB>SECONDS<TAB>restored|booted`
/// (its whole time: guest, body and clean-up; `cargo xtask bench tests` reads it).
pub const TIMES_ENV: &str = "XENPROBE_TEST_TIMES";

fn record_time(test: &str, took: std::time::Duration, restored: bool) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os(TIMES_ENV) else {
        return;
    };
    let how = if restored { "restored" } else { "booted" };
    let line = format!("{test}\t{:.6}\t{how}\n", took.as_secs_f64());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(
            "cannot append to {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}
