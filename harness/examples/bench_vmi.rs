//! VMI engine benchmark, run in dom0 by `cargo xtask bench vmi`: each
//! engine operation is timed (median of many runs) next to the raw libxc
//! call(s) it wraps, measured in the same run, and the ratio is printed
//! with the targets.
//!
//! Usage: `bench_vmi --guests DIR [--runs N] [--small-mib 128] [--big-mib 1024]`
//! (`--runs`: batches per median; each batch runs for at least 250 ms).
//! It creates `known` PVH guests (idling in their `known_spin` loop) of the
//! two sizes with `xl create`, and destroys them at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xenprobe::vmi::{Domain, Event, Xen};
use xenprobe::xen::{Prot, PAGE_SIZE};

struct Args {
    guests: PathBuf,
    runs: usize,
    small_mib: u64,
    big_mib: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        guests: PathBuf::from("target/guests"),
        runs: 5,
        small_mib: 128,
        big_mib: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--guests" => a.guests = v.into(),
            "--runs" => a.runs = v.parse()?,
            "--small-mib" => a.small_mib = v.parse()?,
            "--big-mib" => a.big_mib = v.parse()?,
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Time per call of `f`: median over `batches` of the mean of a batch that
/// repeats `f` until at least 250 ms passed. dom0's clock in the emulated
/// lab advances in coarse, irregular steps (4 ms and more under load), so
/// single calls cannot be timed.
fn time(batches: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut v = Vec::new();
    for _ in 0..batches.max(1) {
        let t = Instant::now();
        let mut n = 0u32;
        while t.elapsed() < Duration::from_millis(250) || n == 0 {
            f()?;
            n += 1;
        }
        v.push(t.elapsed() / n);
    }
    Ok(median(v))
}

/// Like [`time`] for an engine call and its raw floor, their batches
/// alternated so that both see the same load (the lab's load drifts by
/// several times within seconds when other work shares the machine).
fn time2(
    batches: usize,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(Duration, Duration)> {
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    for _ in 0..batches.max(1) {
        va.push(time(1, &mut a)?);
        vb.push(time(1, &mut b)?);
    }
    Ok((median(va), median(vb)))
}

fn us(d: Duration) -> String {
    format!("{:>10.1} us", d.as_secs_f64() * 1e6)
}

/// One output line: engine time, floor, ratio, target.
fn row(what: &str, engine: Duration, floor: Option<Duration>, target: &str) {
    let (f, r) = match floor {
        Some(f) => (
            us(f),
            format!("{:>6.2}x", engine.as_secs_f64() / f.as_secs_f64().max(1e-9)),
        ),
        None => (format!("{:>13}", "-"), format!("{:>7}", "-")),
    };
    println!("{what:<40} {} {f} {r}  {target}", us(engine));
}

/// A `known` PVH guest of `mib` MiB idling in its spin loop; destroyed on drop.
struct Guest(String);

impl Guest {
    fn create(dir: &Path, mib: u64) -> Result<Self> {
        let name = format!("bench-vmi-{mib}-{}", std::process::id());
        let st = Command::new("xl")
            .arg("create")
            .arg(dir.join("known-pvh.cfg"))
            .arg(format!("name=\"{name}\""))
            .arg(format!("memory={mib}"))
            .arg("extra=\"known.spin=1\"")
            .status()?;
        if !st.success() {
            bail!("xl create of a {mib} MiB guest failed (xl info: free_memory?)");
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(name))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("xl").arg("destroy").arg(&self.0).status();
    }
}

/// Frames of RAM the benchmark dirties: from 16 MiB up, above the image.
fn frames(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| 0x1000 + i).collect()
}

fn basics(xen: &Xen, dom: &mut Domain, runs: usize) -> Result<()> {
    let xc = xen.ctrl();
    let id = dom.id();
    let fmem = xenprobe::xen::ForeignMemory::open()?;
    let (pr, pr_raw) = time2(
        runs,
        || {
            dom.pause()?;
            dom.resume()?;
            Ok(())
        },
        || {
            xc.domain_pause(id)?;
            xc.domain_unpause(id)?;
            Ok(())
        },
    )?;
    row("pause + resume", pr, Some(pr_raw), "<= 1.2x");
    dom.pause()?;
    // Cold: the first read after the guest ran (cached reads are free).
    let (rr, rr_raw) = time2(
        runs,
        || {
            dom.forget_registers();
            dom.regs(0)?;
            Ok(())
        },
        || Ok(xc.hvm_cpu(id, 0).map(drop)?),
    )?;
    row("register read", rr, Some(rr_raw), "<= 1.2x");
    let regs = dom.regs(0)?;
    let ctx = xc.hvm_context(id)?;
    // The least a write can load: the save header and the one CPU record.
    let header = ctx.header().context("HVM context without a header")?;
    let small = xenprobe::xen::HvmContext::with_cpus(&header, &[(0, xc.hvm_cpu(id, 0)?)]);
    for (what, floor) in [
        ("register write (floor: setcontext)", &ctx),
        ("register write (floor: CPU record only)", &small),
    ] {
        let (rw, rw_floor) = time2(
            runs,
            || Ok(dom.set_regs(0, &regs)?),
            || Ok(xc.set_hvm_context(id, floor)?),
        )?;
        row(what, rw, Some(rw_floor), "<= 1.2x");
    }
    // A stop's usual pattern: read (not cached yet), change, write.
    let (rrw, rrw_raw) = time2(
        runs,
        || {
            dom.forget_registers();
            let mut r = dom.regs(0)?;
            r.rax = regs.rax;
            Ok(dom.set_regs(0, &r)?)
        },
        || {
            let cpu = xc.hvm_cpu(id, 0)?;
            let mut ctx = ctx.clone();
            ctx.set_cpu(0, &cpu);
            Ok(xc.set_hvm_context(id, &ctx)?)
        },
    )?;
    row(
        "register read + write (floor: get + set)",
        rrw,
        Some(rrw_raw),
        "<= 1.2x",
    );
    let pa = 0x1000u64 << 12;
    let mut page = vec![0u8; PAGE_SIZE];
    let p1 = time(runs, || Ok(dom.read_phys(pa, &mut page)?))?;
    let p1_raw = time(runs, || {
        let m = fmem.map(id, Prot::Read, &[pa >> 12])?;
        m.read(0, &mut page)?;
        Ok(())
    })?;
    row("read one page", p1, Some(p1_raw), "<= 1.2x");
    let mut mib = vec![0u8; 1 << 20];
    let gfns: Vec<u64> = (0..256).map(|i| (pa >> 12) + i).collect();
    let pm = time(runs, || Ok(dom.read_phys(pa, &mut mib)?))?;
    let pm_raw = time(runs, || {
        let m = fmem.map(id, Prot::Read, &gfns)?;
        m.read(0, &mut mib)?;
        Ok(())
    })?;
    row("read 1 MiB", pm, Some(pm_raw), "<= 1.2x");
    let va = dom.symbol("known_buffer")?;
    // Cold: the cache is emptied by resume; pause+resume alone is subtracted.
    let cycle = time(runs, || {
        dom.resume()?;
        dom.pause()?;
        Ok(())
    })?;
    let cold_and_cycle = time(runs, || {
        dom.resume()?;
        dom.pause()?;
        dom.translate(0, va)?;
        Ok(())
    })?;
    let cold = cold_and_cycle.saturating_sub(cycle);
    let tc_raw = time(runs, || {
        Ok(xc.translate_foreign_address(id, 0, va).map(drop)?)
    })?;
    row("translate VA, cold", cold, Some(tc_raw), "<= 1.2x");
    let tw = time(runs, || Ok(dom.translate(0, va).map(drop)?))?;
    row("translate VA, cached", tw, Some(tc_raw), "(cache: < 1x)");
    // Breakpoint round trip and steps inside the spin loop.
    let rip = dom.regs(0)?.rip;
    let bp = dom.add_breakpoint(rip)?;
    dom.resume()?;
    fn hit(dom: &mut Domain) -> Result<()> {
        match dom.wait_event(Duration::from_secs(10))? {
            Event::Breakpoint { .. } => Ok(()),
            e => bail!("expected a breakpoint hit, got {e:?}"),
        }
    }
    hit(dom)?;
    let hits = runs * 4;
    let t = Instant::now();
    for _ in 0..hits {
        dom.resume()?;
        hit(dom)?;
    }
    let bp_rt = t.elapsed() / hits as u32;
    row("breakpoint round trip", bp_rt, None, "");
    dom.remove_breakpoint(bp)?;
    let n = runs * 4;
    let t = Instant::now();
    for _ in 0..n {
        dom.step(0)?;
    }
    let per = t.elapsed() / n as u32;
    println!(
        "{:<40} {:>10.0} /s  ({} a step)",
        "single steps",
        1.0 / per.as_secs_f64(),
        us(per).trim()
    );
    Ok(())
}

/// Snapshot take and restores with 1..4096 dirty pages, plus the floor
/// (raw: map the same frames, copy them, setcontext) and the full-memory
/// baseline (every frame copied back through foreign mappings + setcontext).
/// Returns (restore with 16 dirty pages, full-memory restore).
fn snapshots(xen: &Xen, dom: &mut Domain, mib: u64, runs: usize) -> Result<(Duration, Duration)> {
    let xc = xen.ctrl();
    let id = dom.id();
    let fmem = xenprobe::xen::ForeignMemory::open()?;
    dom.pause()?;
    let info = dom.take_snapshot()?;
    row(
        &format!(
            "{mib} MiB: snapshot take ({} frames, {} zero)",
            info.frames, info.zero_frames
        ),
        info.took,
        None,
        "",
    );
    let ctx = xc.hvm_context(id)?;
    let page = vec![0x5au8; PAGE_SIZE];
    let mut r16 = Duration::ZERO;
    for n in [1usize, 16, 256, 4096] {
        let fr = frames(n);
        let runs = if n >= 256 { runs.min(5) } else { runs };
        let mut copied = n;
        let dirty = |dom: &mut Domain| -> Result<()> {
            for &f in &fr {
                dom.write_phys(f << 12, &page[..8])?;
            }
            Ok(())
        };
        let writes = time(runs, || dirty(dom))?;
        let both = time(runs, || {
            dirty(dom)?;
            copied = copied.min(dom.restore_snapshot()?.restored);
            Ok(())
        })?;
        if copied < n {
            bail!("restore copied {copied} frames, {n} were dirty");
        }
        let floor = time(runs, || {
            let mut m = fmem.map(id, Prot::ReadWrite, &fr)?;
            for i in 0..n {
                m.write(i * PAGE_SIZE, &page)?;
            }
            xc.set_hvm_context(id, &ctx)?;
            Ok(())
        })?;
        // The floor wrote the frames: put the snapshot back.
        for &f in &fr {
            dom.write_phys(f << 12, &page[..8])?;
        }
        dom.restore_snapshot()?;
        let e = both.saturating_sub(writes);
        if n == 16 {
            r16 = e;
        }
        row(
            &format!("{mib} MiB: restore, {n} dirty pages"),
            e,
            Some(floor),
            "<= 1.2x",
        );
    }
    let max_gpfn = xc.domain_maximum_gpfn(id)?;
    let full = time(1, || {
        let mut buf = vec![0u8; PAGE_SIZE * 1024];
        let mut start = 0u64;
        let ram = (mib << 8).min(max_gpfn + 1);
        while start < ram {
            let n = 1024.min(ram - start);
            let gfns: Vec<u64> = (start..start + n).collect();
            let mut m = fmem.map_sparse(id, Prot::ReadWrite, &gfns)?;
            for i in 0..n as usize {
                if m.page_valid(i) {
                    let b = &mut buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                    m.read(i * PAGE_SIZE, b)?;
                    m.write(i * PAGE_SIZE, b)?;
                }
            }
            start += n;
        }
        xc.set_hvm_context(id, &ctx)?;
        Ok(())
    })?;
    row(
        &format!("{mib} MiB: full-memory restore (baseline)"),
        full,
        None,
        "",
    );
    println!(
        "{:<40} {:>10.0}x  (target >= 100x)",
        format!("{mib} MiB: full / 16-dirty restore"),
        full.as_secs_f64() / r16.as_secs_f64().max(1e-9)
    );
    dom.drop_snapshot();
    dom.resume()?;
    Ok((r16, full))
}

fn main() -> Result<()> {
    let a = args()?;
    let xen = Xen::open()?;
    println!(
        "{:<40} {:>13} {:>13} {:>7}  target",
        "operation (median)", "xenprobe", "raw libxc", "ratio"
    );
    let small = Guest::create(&a.guests, a.small_mib)?;
    let mut dom = Domain::attach(&xen, small.0.as_str())?;
    dom.load_symbols(a.guests.join("known-pvh"))?;
    basics(&xen, &mut dom, a.runs)?;
    let (s16, _) = snapshots(&xen, &mut dom, a.small_mib, a.runs)?;
    dom.detach()?;
    drop(small);
    let big = match Guest::create(&a.guests, a.big_mib) {
        Ok(g) => g,
        Err(e) => {
            println!("{} MiB guest: {e:#}", a.big_mib);
            return Ok(());
        }
    };
    let mut dom = Domain::attach(&xen, big.0.as_str())?;
    let (b16, _) = snapshots(&xen, &mut dom, a.big_mib, a.runs)?;
    dom.detach()?;
    println!(
        "{:<40} {:>10.2}x  (target <= 1.5x)",
        format!("16-dirty restore {} / {} MiB", a.big_mib, a.small_mib),
        b16.as_secs_f64() / s16.as_secs_f64().max(1e-9)
    );
    Ok(())
}
