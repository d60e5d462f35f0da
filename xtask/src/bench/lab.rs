//! `cargo xtask bench lab`: lab start (cold and restored) and a warm
//! command's round trip.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use xenlab_proto::Request;

use super::{stats, Stats};
use crate::lab::xen::Flavour;
use crate::lab::{Lab, UpOptions};
use crate::ws;

pub fn run(runs: usize, flavour: Flavour) -> Result<i32> {
    if crate::deps::on_real_dom0() {
        bail!("bench lab measures the QEMU lab; this machine is a Xen dom0");
    }
    // A lab of the bench's own, so that the shared one is left alone.
    let lab = Lab::at(
        flavour,
        ws::lab_dir().join(format!("bench-{}", flavour.name())),
    );
    lab.down()?;
    let opts = |cold, saved_states| UpOptions {
        forward: (None, 1234),
        timeout: Duration::from_secs(crate::lab::boot_timeout()),
        cold,
        saved_states,
    };
    // `runs` starts of the lab (`what`: cold boots without saved states, or
    // restored starts), and each one's boot time.
    let starts = |what: &str, cold: bool| -> Result<Vec<f64>> {
        let mut secs = vec![];
        for i in 0..runs {
            eprintln!("bench: {what} {}/{runs}", i + 1);
            let r = lab.up(&opts(cold, !cold))?;
            secs.push(r.state.boot_secs);
            lab.down()?;
        }
        Ok(secs)
    };
    let cold = starts("cold boot", true)?;
    // One cold boot that saves the state, then restores.
    lab.up(&opts(true, true))?;
    lab.down()?;
    let restored = starts("restored start", false)?;
    let r = lab.up(&opts(false, true))?;
    let ping_req = Request {
        argv: vec![xenlab_proto::builtin::PING.into()],
        ..Default::default()
    };
    let true_req = Request {
        argv: vec!["true".into()],
        ..Default::default()
    };
    let time = |req: &Request| -> Result<Vec<f64>> {
        let mut v = vec![];
        for _ in 0..30 {
            let t = Instant::now();
            let code = r
                .agent
                .run(req, None, &mut std::io::sink(), &mut std::io::sink())?;
            if code != 0 {
                bail!("{:?} failed in dom0 ({code})", req.argv);
            }
            v.push(t.elapsed().as_secs_f64());
        }
        Ok(v)
    };
    let ping = stats(time(&ping_req)?);
    let cmd = stats(time(&true_req)?);
    let mut cli = vec![];
    let exe = std::env::current_exe()?;
    for _ in 0..10 {
        let t = Instant::now();
        let st = std::process::Command::new(&exe)
            .env("XENPROBE_LAB_DIR", &lab.dir)
            .args(["lab", "--xen", flavour.name(), "run", "--", "true"])
            .status()?;
        if !st.success() {
            bail!("`xtask lab run -- true` failed");
        }
        cli.push(t.elapsed().as_secs_f64());
    }
    let cli = stats(cli);
    lab.down()?;
    let cold = stats(cold);
    let restored = stats(restored);

    println!();
    println!(
        "lab ({} hypervisor, {} runs of each start; medians, min..max)",
        flavour.name(),
        runs
    );
    println!(
        "{:<44} {:>10} {:>19} {:>12}  target",
        "measure", "median", "min..max", "ratio"
    );
    let row = |name: &str, s: &Stats, unit: f64, u: &str, ratio: String, target: &str| {
        println!(
            "{name:<44} {:>8.2}{u} {:>8.2}..{:<8.2} {ratio:>12}  {target}",
            s.median * unit,
            s.min * unit,
            s.max * unit
        )
    };
    row(
        "cold boot to dom0 ready (baseline)",
        &cold,
        1.0,
        " s",
        "1.00x".into(),
        "<= 10 s",
    );
    row(
        "restored start to dom0 ready",
        &restored,
        1.0,
        " s",
        format!("{:.1}x faster", cold.median / restored.median),
        "<= 1 s, >= 8x faster",
    );
    row(
        "agent ping, no process (baseline)",
        &ping,
        1e3,
        "ms",
        "1.00x".into(),
        "",
    );
    row(
        "warm command `true` through the agent",
        &cmd,
        1e3,
        "ms",
        format!("{:.2}x", cmd.median / ping.median),
        "<= 500 ms",
    );
    row(
        "warm `cargo xtask lab run -- true` (process)",
        &cli,
        1e3,
        "ms",
        format!("{:.2}x", cli.median / ping.median),
        "<= 500 ms",
    );
    Ok(0)
}
