//! `cargo xtask bench stub`: the debug stub against the raw engine, in the
//! same run.
//!
//! - Memory reads: the engine's `read_virt` of 4 KiB pages (in dom0) against
//!   `m ADDR,1000` packets from a small raw RSP client on the host, through
//!   the lab's forwarded port (so the stub figure includes QEMU's user-mode
//!   network).
//! - Breakpoint round trip: the engine's `cont` from one hit of
//!   `known_tick` to the next (in dom0) against LLDB's `continue` to the
//!   next hit through the stub (time between LLDB's stop reports, under a
//!   pseudo-terminal so that LLDB prints each stop as it happens).
//!
//! The dom0 half is `harness/examples/stub_bench.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::stats;
use crate::{deps, guests, ws};

/// Pages read per round, rounds.
const PAGES: u64 = 16;
const ROUNDS: u32 = 16;

/// Builds the dom0 half.
fn build_example() -> Result<std::path::PathBuf> {
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(ws::root())
        .env("CARGO_TARGET_DIR", ws::target_dir())
        .args([
            "build",
            "--release",
            "-p",
            "xenprobe",
            "--example",
            "stub_bench",
        ])
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("building the stub_bench example failed");
    }
    Ok(ws::target_dir().join("release/examples/stub_bench"))
}

/// A minimal GDB remote protocol client (no-ack mode).
struct Rsp {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Rsp {
    fn connect(port: u16) -> Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port)).context("connecting to the stub")?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        let mut me = Rsp { s, buf: Vec::new() };
        me.send("QStartNoAckMode")?;
        let reply = me.recv()?;
        if reply != "OK" {
            bail!("QStartNoAckMode: {reply:?}");
        }
        me.s.write_all(b"+")?;
        Ok(me)
    }

    fn send(&mut self, body: &str) -> Result<()> {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        self.s.write_all(format!("${body}#{sum:02x}").as_bytes())?;
        Ok(())
    }

    /// The next packet's body (acks skipped).
    fn recv(&mut self) -> Result<String> {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$') {
                if let Some(end) = self.buf[start..].iter().position(|&b| b == b'#') {
                    let end = start + end;
                    if self.buf.len() >= end + 3 {
                        let body = String::from_utf8_lossy(&self.buf[start + 1..end]).into_owned();
                        self.buf.drain(..end + 3);
                        return Ok(body);
                    }
                }
            }
            let mut chunk = [0u8; 16384];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("the stub closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Reads `PAGES` x `ROUNDS` pages from `base` with `m` packets; returns
/// (bytes, seconds).
fn stub_reads(port: u16, base: u64) -> Result<(u64, f64)> {
    let mut c = Rsp::connect(port)?;
    let mut bytes = 0u64;
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for p in 0..PAGES {
            c.send(&format!("m{:x},1000", base + p * 4096))?;
            let r = c.recv()?;
            if r.starts_with('E') {
                bail!("m at {:#x}: {r}", base + p * 4096);
            }
            // Replies may be run-length encoded: count what was asked.
            bytes += 4096;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    c.send("D")?;
    let _ = c.recv();
    Ok((bytes, secs))
}

/// LLDB's `continue` from one `known_tick` hit to the next: the time
/// between consecutive stop reports (ms).
fn lldb_round_trips(port: u16, image: &std::path::Path) -> Result<Vec<f64>> {
    let mut cmd = format!(
        "lldb --no-lldbinit --batch -o 'target create {}' -o 'gdb-remote 127.0.0.1:{port}' \
         -o 'breakpoint set -n known_tick'",
        image.display()
    );
    // The guest ticks 10 times; the first tick is behind it.
    for _ in 0..8 {
        cmd.push_str(" -o continue");
    }
    cmd.push_str(" -o 'breakpoint delete -f' -o continue");
    // A pseudo-terminal: LLDB then prints each stop when it happens.
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running lldb under script(1)")?;
    let out = child.stdout.take().context("lldb stdout")?;
    let mut stops = Vec::new();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if line.contains("stop reason = breakpoint") {
            stops.push(Instant::now());
        }
    }
    let status = child.wait().context("waiting for lldb")?;
    if stops.is_empty() {
        bail!("LLDB stopped at no breakpoint (`{cmd}` under script(1) ended with {status})");
    }
    Ok(stops
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect())
}

fn fmt(s: &super::Stats) -> String {
    format!(
        "median {:.2} (min {:.2}, max {:.2})",
        s.median, s.min, s.max
    )
}

/// The dom0 half's client process, killed if the bench gives up early (so
/// that neither it nor the stub waiting for a debugger in dom0 stays behind).
struct DomHalf(Child);

impl Drop for DomHalf {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run() -> Result<i32> {
    if deps::on_real_dom0() {
        bail!("bench stub drives the lab's port forward; run it on the host of a lab");
    }
    // The lab, and LLDB for the round trips.
    deps::ensure(deps::Need::Tests)?;
    guests::build()?;
    let bin = build_example()?;
    let (host_port, dom0_port) = crate::fuzz::lab_forward()?;
    let gdir = ws::guests_dir();
    let image = gdir.join("known-pvh");
    let exe = std::env::current_exe().context("locating xtask")?;
    let mut child = DomHalf(
        Command::new(exe)
            .args(["lab", "run", "--"])
            .arg(&bin)
            .arg("--cfg")
            .arg(gdir.join("known-pvh.cfg"))
            .arg("--image")
            .arg(&image)
            .args(["--port", &dom0_port.to_string()])
            .args(["--pages", &PAGES.to_string()])
            .args(["--rounds", &ROUNDS.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the dom0 half")?,
    );
    let stdout = child.0.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let wait_for = |prefix: &str| -> Result<String> {
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(120))
                .with_context(|| format!("the dom0 half did not print {prefix:?}"))?;
            if let Some(rest) = l.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
            eprintln!("dom0| {l}");
        }
    };
    let raw_read = wait_for("raw_read ")?;
    let (raw_bytes, raw_secs) = raw_read
        .split_once(' ')
        .and_then(|(b, s)| Some((b.parse::<u64>().ok()?, s.parse::<f64>().ok()?)))
        .context("raw_read line")?;
    let raw_bp: Vec<f64> = wait_for("raw_bp_ms")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let base = u64::from_str_radix(wait_for("raw_base ")?.trim_start_matches("0x"), 16)
        .context("raw_base line")?;
    let backend = wait_for("backend_read ")?;
    let (be_bytes, be_secs) = backend
        .split_once(' ')
        .and_then(|(b, s)| Some((b.parse::<u64>().ok()?, s.parse::<f64>().ok()?)))
        .context("backend_read line")?;
    wait_for("READY 1")?;
    let (stub_bytes, stub_secs) = stub_reads(host_port, base)?;
    wait_for("SESSION 1")?;
    wait_for("READY 2")?;
    let lldb_bp = lldb_round_trips(host_port, &image)?;
    let _ = wait_for("SESSION 2");
    let _ = child.0.wait();
    if raw_bp.is_empty() || lldb_bp.is_empty() {
        bail!("no breakpoint round trips measured (raw {raw_bp:?}, lldb {lldb_bp:?})");
    }
    let raw_mbs = raw_bytes as f64 / raw_secs / 1e6;
    let stub_mbs = stub_bytes as f64 / stub_secs / 1e6;
    let (rb, lb) = (stats(raw_bp.clone()), stats(lldb_bp.clone()));
    println!(
        "stub bench (known-pvh, {} KiB read {ROUNDS} times):",
        PAGES * 4
    );
    println!("  memory read, 4 KiB at a time:");
    println!("    raw engine (read_virt, dom0):             {raw_mbs:8.2} MB/s");
    let be_mbs = be_bytes as f64 / be_secs / 1e6;
    println!("    stub backend (no protocol, dom0):         {be_mbs:8.2} MB/s");
    println!(
        "    stub (`m` packets, host via the forward): {stub_mbs:8.2} MB/s  ({:.2} ms a packet)",
        stub_secs * 1e3 / (stub_bytes / 4096) as f64
    );
    println!(
        "    ratio stub / raw:                         {:8.3}",
        stub_mbs / raw_mbs
    );
    println!("  breakpoint-continue round trip (known_tick to known_tick), ms:");
    println!(
        "    raw engine (cont, dom0):  {} over {} hits",
        fmt(&rb),
        raw_bp.len()
    );
    println!(
        "    LLDB through the stub:    {} over {} hits",
        fmt(&lb),
        lldb_bp.len()
    );
    println!(
        "    ratio LLDB / raw (medians): {:.1}",
        lb.median / rb.median
    );
    Ok(0)
}
