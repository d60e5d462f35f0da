//! Running guest tests with libtest's command line and output (libtest-mimic).

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::mpsc;

use libtest_mimic::{Arguments, Failed, Trial};

use super::guest::{GuestDomain, GuestImages};
use super::session::{with_diagnostics, Session};
use super::{GuestTest, Mode};
use crate::vmi::caps::Capabilities;
use crate::vmi::Xen;

/// Runs `tests` as a libtest-compatible test binary (`harness = false`);
/// returns the process's exit code.
pub fn main(tests: Vec<GuestTest>) -> ExitCode {
    let args = Arguments::from_args();
    // Engine logs on stderr, filtered by XENPROBE_LOG (e.g. `xenprobe=debug`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XENPROBE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let host = probe_host();
    let images = GuestImages::locate();
    let mut trials = vec![];
    let mut skipped: Vec<(String, Vec<String>)> = vec![];
    for t in &tests {
        for &mode in &t.modes {
            let name = format!("{}::{}", t.name, mode.name());
            let test = t.clone();
            let imgs = images.as_ref().map_err(|e| format!("{e:#}")).cloned();
            let host_err = host.as_ref().err().cloned();
            let mut trial = Trial::test(name, move || {
                if let Some(e) = host_err {
                    return Err(e.into());
                }
                run_one(&test, mode, &imgs?)
            });
            let skip = host.as_ref().ok().and_then(|h| {
                let caps = Capabilities::new(mode.kind(), h.clone());
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
    libtest_mimic::run(&args, trials).exit_code()
}

/// What the running hypervisor offers, or why we cannot ask it.
fn probe_host() -> Result<crate::xen::HostCaps, String> {
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
        .map_err(|e| format!("cannot query the hypervisor: {e}"))
}

/// Boots the guest, runs the body with a watchdog, and cleans up.
fn run_one(t: &GuestTest, mode: Mode, images: &GuestImages) -> Result<(), Failed> {
    let guest =
        GuestDomain::create(images, &t.guest, mode, t.memory_mb).map_err(|e| format!("{e:#}"))?;
    let name = guest.name.clone();
    let mut session = Session::attach(guest, mode).map_err(|e| format!("{e:#}"))?;

    // The watchdog destroys the domain when the test overruns: every engine
    // call the body is blocked in then fails, and the test ends.
    let (done, watch) = mpsc::channel::<()>();
    let timeout = t.timeout;
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = std::process::Command::new("xl")
                .args(["destroy", &name])
                .output();
            return true;
        }
        false
    });
    let body = t.body;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(&mut session)));
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
        let image = images.image(&t.guest, mode);
        super::debug::serve_on_failure(
            &mut session,
            &format!("{}::{}", t.name, mode.name()),
            &image,
            e,
        );
    }
    result.map_err(|e| Failed::from(format!("{:#}", with_diagnostics(e, &mut session))))
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
