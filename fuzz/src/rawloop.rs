//! The floor of the stack: `xenprobe-rawloop`, a minimal exact-reset loop
//! written in C straight on Xen's libraries (`xtask/src/bench/rawloop.c`,
//! built by `cargo xtask bench fuzz` with the host's gcc). This module runs
//! it on a guest of a [`TargetSpec`] (a clone of the guest's xl config
//! under its own name), asks it for batches and reads its result lines.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xenprobe::vmi::Symbols;

use crate::session::TargetSpec;

/// How the raw loop resets the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// PEEK the log-dirty bitmap, CLEAN every 1000 runs, copy back the
    /// union of dirty frames; registers in the vm_event reply.
    Exact,
    /// [`RawMode::Exact`] with the PEEK or CLEAN issued as xenprobe issues
    /// it (privcmd's hypercall ioctl from a buffer kept across calls)
    /// instead of through libxc, which takes and zeroes a buffer page per
    /// call.
    ExactDirect,
    /// Registers in the reply and the top of the stack only.
    NoReset,
}

impl RawMode {
    fn arg(self) -> &'static str {
        match self {
            RawMode::Exact => "exact",
            RawMode::ExactDirect => "direct",
            RawMode::NoReset => "none",
        }
    }
}

/// Microseconds per run by phase, as the raw loop measured them (TSC).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RawPhases {
    /// Writing the input and its length.
    pub input: f64,
    /// The vm_event reply (response on the ring and the notify).
    pub resume: f64,
    /// Busy-polling (then blocking) until the next request.
    pub wait: f64,
    /// The log-dirty PEEK or CLEAN.
    pub peek: f64,
    /// Copying the dirty frames back.
    pub copy: f64,
    /// The loop's own bookkeeping.
    pub other: f64,
}

/// What one raw loop measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResult {
    /// Runs made.
    pub runs: u64,
    /// Runs per second.
    pub execs_per_s: f64,
    /// Frames copied back per run.
    pub dirty_per_run: f64,
    /// Phases.
    pub phases: RawPhases,
}

/// Options of the raw loop.
#[derive(Debug, Clone)]
pub struct RawOptions {
    /// The `xenprobe-rawloop` binary.
    pub bin: PathBuf,
    /// Busy-poll bound.
    pub spin: Duration,
    /// CLEAN every this many runs (exact mode).
    pub clean_every: u32,
}

/// Where the loop writes inputs and plants its breakpoints (addresses from
/// the guest's image).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    start: u64,
    end: u64,
    sinks: Vec<u64>,
    input: u64,
    input_size: usize,
    len: u64,
    len_width: usize,
    quiet: Option<u64>,
}

fn layout(t: &TargetSpec) -> Result<Layout> {
    if t.kernel.is_some() {
        bail!("the raw loop runs guests that follow the fuzz-target ABI, not kernel targets");
    }
    let syms =
        Symbols::load(&t.image).with_context(|| format!("symbols of {}", t.image.display()))?;
    let need = |n: &str| {
        syms.lookup(n)
            .with_context(|| format!("no symbol {n} in {}", t.image.display()))
    };
    let input = syms
        .get(&t.input_sym)
        .with_context(|| format!("no symbol {}", t.input_sym))?;
    let len = syms
        .get(&t.len_sym)
        .with_context(|| format!("no symbol {}", t.len_sym))?;
    let len_width =
        crate::abi::len_width(&t.len_sym, len.size, t.len_size).map_err(anyhow::Error::msg)?;
    Ok(Layout {
        start: need(&t.start_sym)?,
        end: need(&t.end_sym)?,
        sinks: t
            .sinks
            .iter()
            .map(|s| need(s))
            .collect::<Result<Vec<u64>>>()?,
        input: input.addr,
        input_size: (input.size as usize).min(crate::abi::len_max(len_width)),
        len: len.addr,
        len_width,
        quiet: syms.lookup(crate::session::QUIET_SYM),
    })
}

/// The inputs file: (u32 little-endian length, bytes) per input.
pub fn encode_inputs(inputs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in inputs {
        out.extend_from_slice(&(i.len() as u32).to_le_bytes());
        out.extend_from_slice(i);
    }
    out
}

/// The `k=v` fields of a result line that starts with `tag`.
fn fields<'a>(line: &'a str, tag: &str) -> Result<Vec<(&'a str, &'a str)>> {
    let Some(rest) = line
        .trim()
        .strip_prefix(tag)
        .and_then(|r| r.strip_prefix(' '))
    else {
        bail!("not a {tag} line: {line:?}");
    };
    Ok(rest.split(' ').filter_map(|f| f.split_once('=')).collect())
}

fn field<'a>(kv: &[(&str, &'a str)], k: &str) -> Result<&'a str> {
    kv.iter()
        .find(|(key, _)| *key == k)
        .map(|(_, v)| *v)
        .with_context(|| format!("no {k}= in the raw loop's line"))
}

fn number(kv: &[(&str, &str)], k: &str) -> Result<f64> {
    field(kv, k)?
        .parse::<f64>()
        .with_context(|| format!("{k}= is not a number"))
}

/// Parses a batch's `rawloop k=v ...` line.
pub fn parse_result(line: &str) -> Result<RawResult> {
    let kv = fields(line, "rawloop")?;
    let f = |k: &str| number(&kv, k);
    Ok(RawResult {
        runs: f("runs")? as u64,
        execs_per_s: f("execs_per_s")?,
        dirty_per_run: f("dirty_per_run")?,
        phases: RawPhases {
            input: f("input_us")?,
            resume: f("resume_us")?,
            wait: f("wait_us")?,
            peek: f("peek_us")?,
            copy: f("copy_us")?,
            other: f("other_us")?,
        },
    })
}

/// Parses a check's `rawcheck k=v ...` line: (exact, what it found).
pub fn parse_check(line: &str) -> Result<(bool, String)> {
    let kv = fields(line, "rawcheck")?;
    Ok((
        field(&kv, "exact")? == "yes",
        format!(
            "{} of {} frames differ, registers {}",
            field(&kv, "differ")?,
            field(&kv, "checked")?,
            field(&kv, "regs")?
        ),
    ))
}

/// The raw loop serving batches on a guest of its own (`--serve`): the
/// bench alternates its batches with xenprobe's. Dropping it ends the loop
/// (the guest is destroyed).
pub struct RawLoop {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
}

impl RawLoop {
    /// Starts the loop on a fresh guest made from `target`'s xl config under
    /// the name `name`, over `inputs` (in order, repeated).
    pub fn start(
        opts: &RawOptions,
        target: &TargetSpec,
        name: &str,
        inputs: &[Vec<u8>],
    ) -> Result<Self> {
        let l = layout(target)?;
        let dir =
            std::env::temp_dir().join(format!("xenprobe-rawloop-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg_text = std::fs::read_to_string(&target.cfg)
            .with_context(|| format!("reading {}", target.cfg.display()))?;
        let cfg = dir.join(format!("{name}.cfg"));
        std::fs::write(&cfg, crate::config::with_name(&cfg_text, name))?;
        let file = dir.join("inputs.bin");
        std::fs::write(&file, encode_inputs(inputs))?;
        let mut cmd = Command::new(&opts.bin);
        cmd.arg("--serve")
            .arg("--cfg")
            .arg(&cfg)
            .args(["--name", name])
            .args(["--start", &format!("{:#x}", l.start)])
            .args(["--end", &format!("{:#x}", l.end)])
            .args(["--input", &format!("{:#x}", l.input)])
            .args(["--input-size", &l.input_size.to_string()])
            .args(["--len", &format!("{:#x}", l.len)])
            .args(["--len-width", &l.len_width.to_string()])
            .arg("--inputs")
            .arg(&file)
            .args(["--spin-us", &opts.spin.as_micros().to_string()])
            .args(["--clean-every", &opts.clean_every.max(1).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for s in &l.sinks {
            cmd.args(["--sink", &format!("{s:#x}")]);
        }
        if let Some(q) = l.quiet {
            cmd.args(["--quiet", &format!("{q:#x}")]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", opts.bin.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to {}", opts.bin.display());
        };
        let mut raw = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            dir,
        };
        let ready = raw.line()?;
        if !ready.starts_with("rawready") {
            bail!("the raw loop did not start: {ready:?}");
        }
        Ok(raw)
    }

    /// The next line the loop prints (an error if it ended: it said why on
    /// stderr).
    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the raw loop ended ({status}); its error is above");
        }
        Ok(line)
    }

    fn command(&mut self, cmd: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.line()
    }

    /// Runs inputs for `time` with `mode`.
    pub fn batch(&mut self, mode: RawMode, time: Duration) -> Result<RawResult> {
        let line = self.command(&format!("{} {}", mode.arg(), time.as_secs_f64()))?;
        parse_result(&line)
    }

    /// Resets the guest, runs it into the start point and compares memory
    /// and registers with the snapshot: (exact, what it found).
    pub fn check(&mut self) -> Result<(bool, String)> {
        let line = self.command("check")?;
        parse_check(&line)
    }
}

impl Drop for RawLoop {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The raw loop binary next to the running one, or in `target/bench/`.
pub fn default_bin() -> Option<PathBuf> {
    let here = std::env::current_exe().ok()?;
    let dir = here.parent()?;
    [
        dir.join("xenprobe-rawloop"),
        dir.join("../bench/xenprobe-rawloop"),
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_result_lines() {
        let line = "rawloop mode=exact runs=15152 secs=4.984 execs_per_s=3040.3 ends=15152 \
                    crashes=0 dirty_per_run=5.00 frames=8192 input_us=1.4 resume_us=51.7 \
                    wait_us=158.4 peek_us=103.6 copy_us=13.1 other_us=0.5\n";
        let r = parse_result(line).expect("parsed");
        assert_eq!(r.runs, 15152);
        assert_eq!(r.execs_per_s, 3040.3);
        assert_eq!(r.dirty_per_run, 5.0);
        assert_eq!(r.phases.wait, 158.4);
        assert_eq!(r.phases.peek + r.phases.copy, 103.6 + 13.1);
        assert!(parse_result("xenprobe-rawloop: no event").is_err());
        assert!(parse_result("rawloopx runs=1").is_err());
        assert!(parse_result(&line.replace("wait_us=158.4 ", "")).is_err());
        assert!(parse_result(&line.replace("wait_us=158.4", "wait_us=x")).is_err());
        let (ok, what) =
            parse_check("rawcheck exact=yes differ=0 checked=8192 regs=ok\n").expect("check");
        assert!(ok);
        assert_eq!(what, "0 of 8192 frames differ, registers ok");
        let (ok, what) =
            parse_check("rawcheck exact=NO differ=2 checked=8192 regs=rip").expect("check");
        assert!(!ok);
        assert_eq!(what, "2 of 8192 frames differ, registers rip");
        assert!(parse_check(line).is_err());
    }

    #[test]
    fn inputs_are_length_prefixed() {
        let v = encode_inputs(&[vec![1, 2], vec![], vec![9]]);
        assert_eq!(v, [2, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 9]);
    }
}
