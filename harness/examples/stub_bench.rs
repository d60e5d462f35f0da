//! The dom0 half of `cargo xtask bench stub` (see xtask/src/bench/stub.rs):
//! raw engine figures on one `known` guest, then the stub served twice on a
//! second guest (one session for the host's raw RSP client, one for LLDB).
//!
//! Prints `raw_read BYTES SECONDS`, `raw_bp_ms MS...`, and `READY N ADDR`
//! when stub session N listens.
//!
//! Usage (in dom0): `stub_bench --cfg CFG --image ELF --port PORT --pages N --rounds R`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xenprobe::vmi::{BreakpointId, Domain, Event, Xen};

struct Args {
    cfg: PathBuf,
    image: PathBuf,
    port: u16,
    pages: u64,
    rounds: u32,
}

fn args() -> Result<Args> {
    let mut a = Args {
        cfg: PathBuf::new(),
        image: PathBuf::new(),
        port: 1234,
        pages: 32,
        rounds: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--cfg" => a.cfg = v.into(),
            "--image" => a.image = v.into(),
            "--port" => a.port = v.parse()?,
            "--pages" => a.pages = v.parse()?,
            "--rounds" => a.rounds = v.parse()?,
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

fn xl(args: &[&str]) -> Result<()> {
    let st = Command::new("xl").args(args).status()?;
    if !st.success() {
        bail!("xl {} failed", args.join(" "));
    }
    Ok(())
}

/// A guest created paused under its own name; destroyed on drop.
struct Guest(String);

impl Guest {
    fn create(cfg: &std::path::Path, tag: &str) -> Result<Self> {
        let name = format!("bench-{tag}-{}", std::process::id());
        xl(&[
            "create",
            "-q",
            "-p",
            &cfg.display().to_string(),
            &format!("name=\"{name}\""),
        ])?;
        Ok(Guest(name))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("xl")
            .args(["destroy", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Attaches to the created (paused) guest `g`, unpauses it and returns it
/// stopped at its first `known_tick`, with that breakpoint.
fn to_first_tick(xen: &Xen, g: &Guest, image: &Path) -> Result<(Domain, BreakpointId)> {
    let mut dom = Domain::attach(xen, g.0.as_str())?;
    dom.load_symbols(image)?;
    let tick = dom.add_breakpoint_at("known_tick")?;
    xl(&["unpause", &g.0])?;
    match dom.wait_event(Duration::from_secs(30))? {
        Event::Breakpoint { id, .. } if id == tick => {}
        other => bail!("the guest did not reach known_tick: {other:?}"),
    }
    Ok((dom, tick))
}

/// Raw engine: 4 KiB reads of the image's pages, and breakpoint round trips
/// at `known_tick`.
fn raw(a: &Args, xen: &Xen) -> Result<()> {
    let g = Guest::create(&a.cfg, "raw")?;
    let (mut dom, tick) = to_first_tick(xen, &g, &a.image)?;
    let base = dom.symbols()?.entry() & !0xfff;
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    for _ in 0..a.rounds {
        for p in 0..a.pages {
            dom.read_virt(base + p * 4096, &mut buf)?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("raw_read {} {secs}", u64::from(a.rounds) * a.pages * 4096);
    let mut times = Vec::new();
    loop {
        let t = Instant::now();
        match dom.cont(Duration::from_secs(10))? {
            Event::Breakpoint { id, .. } if id == tick => {
                times.push(t.elapsed().as_secs_f64() * 1e3)
            }
            _ => break,
        }
    }
    let v: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!("raw_bp_ms {}", v.join(" "));
    println!("raw_base {base:#x}");
    drop(dom);
    drop(g);
    Ok(())
}

fn serve(a: &Args, xen: &Xen, g: &Guest, n: u32, unpause: bool) -> Result<()> {
    let dom = Domain::attach(xen, g.0.as_str())?;
    let addr = SocketAddr::from(([0, 0, 0, 0], a.port));
    let name = g.0.clone();
    let end = xenprobe::stub::serve_domain(dom, addr, Some(&a.image), |bound| {
        if unpause {
            // The stub holds its own pause; drop xl's.
            let _ = Command::new("xl").args(["unpause", &name]).status();
        }
        println!("READY {n} {bound}");
    })?;
    println!("SESSION {n} {end:?}");
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    // The host side ends `lab run` (SIGTERM here) when it gives up, e.g.
    // without LLDB: the guests go too, instead of staying paused in the lab.
    let pid = std::process::id();
    ctrlc::set_handler(move || {
        for tag in ["raw", "stub"] {
            let _ = Command::new("xl")
                .args(["destroy", &format!("bench-{tag}-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
        std::process::exit(130);
    })
    .context("installing the SIGTERM handler")?;
    let xen = Xen::open()?;
    raw(&a, &xen)?;
    let g = Guest::create(&a.cfg, "stub")?;
    {
        // Boot it to its first known_tick (paging on, as for the raw
        // reads), then leave it paused by the toolstack between sessions.
        let (mut dom, tick) = to_first_tick(&xen, &g, &a.image)?;
        dom.remove_breakpoint(tick)?;
        xl(&["pause", &g.0])?;
        // The stub's memory path without the protocol.
        let mut d = xenprobe::stub::XenDebuggee::new(dom, Some(&a.image))?;
        let base = d.domain()?.symbols()?.entry() & !0xfff;
        let mut buf = vec![0u8; 4096];
        let t = Instant::now();
        for _ in 0..a.rounds {
            for p in 0..a.pages {
                xenprobe::stub::Debuggee::read_mem(&mut d, 0, base + p * 4096, &mut buf)?;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "backend_read {} {secs}",
            u64::from(a.rounds) * a.pages * 4096
        );
        xenprobe::stub::Debuggee::detach(&mut d)?;
    }
    serve(&a, &xen, &g, 1, false)?;
    serve(&a, &xen, &g, 2, true)?;
    Ok(())
}
