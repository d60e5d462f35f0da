//! `--reproduce CRASH --debug`: from a crash to a debugger.
//!
//! Replays the crash input once to get its report, then runs it again from
//! the snapshot and stops the guest where a debugger is useful:
//! - a fault (`page-fault`, `divide-error`, ...): on the faulting instruction,
//!   not yet run. The instruction may run many times before it faults, so a
//!   counting run first finds how often it is reached before the crash sink,
//!   and the stopping run stops at that hit;
//! - a panic (the report's RIP is the crash sink): at the sink's entry, with
//!   the panicking code on the stack;
//! - a hang: where the vCPU spins; a debug trap: where it trapped;
//! - a crash without a site (triple fault, shutdown): at the start point with
//!   the input written (continuing runs into the crash).
//!
//! Then every fuzzer breakpoint is removed and the GDB/LLDB stub serves the
//! guest ([`xenprobe::stub::serve_domain`], which also watches the guest's
//! exit and crash functions, so that continuing reports the crash). After
//! the debugger leaves, the guest (created by the fuzzer for the replay) is
//! destroyed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xenprobe::stub::SessionEnd;
use xenprobe::vmi::{BreakpointId, Domain, Event};
use xenprobe_fuzz::report::{CrashReport, Outcome};
use xenprobe_fuzz::session::{destroy, InputLayout, Session, TargetSpec};

/// Where and how to serve the stub.
#[derive(Debug, Clone)]
pub struct DebugOptions {
    /// Address the stub listens on (in the lab: 0.0.0.0 and the forwarded port).
    pub bind: SocketAddr,
    /// `HOST:PORT` the debugger connects to, when it differs from `bind`
    /// (the host side of the lab's port forward).
    pub connect: Option<String>,
    /// The debuggers installed where the debugger runs (None: unknown, print
    /// every command line).
    pub debuggers: Option<Vec<Debugger>>,
}

/// A debugger client whose command line is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debugger {
    /// LLDB (`gdb-remote`).
    Lldb,
    /// GDB (`target remote`).
    Gdb,
}

impl Debugger {
    /// In the order they are printed.
    pub const ALL: [Debugger; 2] = [Debugger::Lldb, Debugger::Gdb];

    /// The command (and Debian package) name.
    pub fn name(self) -> &'static str {
        match self {
            Debugger::Lldb => "lldb",
            Debugger::Gdb => "gdb",
        }
    }
}

/// The `--debuggers` list (`lldb`, `gdb`, or `none`, comma-separated).
pub fn parse_debuggers(items: &[String]) -> Result<Vec<Debugger>> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()) {
        match Debugger::ALL.iter().find(|d| d.name() == item) {
            Some(d) => out.push(*d),
            None if item == "none" || item.is_empty() => {}
            None => bail!("--debuggers: unknown debugger {item:?} (lldb, gdb or none)"),
        }
    }
    Ok(out)
}

/// A kernel module to load into the debugger at its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    /// The `.ko`.
    pub ko: std::path::PathBuf,
    /// Section name -> load address.
    pub sections: Vec<(String, u64)>,
}

impl ModuleLoad {
    /// LLDB commands that load the module at its sections' addresses.
    fn lldb(&self) -> String {
        let ko = self.ko.display();
        let secs: Vec<String> = self
            .sections
            .iter()
            .map(|(n, a)| format!("{n} {a:#x}"))
            .collect();
        format!(
            " -o 'target modules add {ko}' -o 'target modules load --file {ko} {}'",
            secs.join(" ")
        )
    }

    /// The GDB command that loads the module at its sections' addresses.
    fn gdb(&self) -> String {
        let text = self
            .sections
            .iter()
            .find(|(n, _)| n == ".text")
            .map_or(String::new(), |(_, a)| format!(" {a:#x}"));
        let others: Vec<String> = self
            .sections
            .iter()
            .filter(|(n, _)| n != ".text")
            .map(|(n, a)| format!(" -s {n} {a:#x}"))
            .collect();
        format!(
            " -ex 'add-symbol-file {}{text}{}'",
            self.ko.display(),
            others.concat()
        )
    }
}

/// The lines printed under "connect with": the command line of each
/// debugger in `present` (all when unknown), one line for each missing one;
/// `modules` are loaded at their addresses after connecting.
pub fn debugger_lines(
    present: Option<&[Debugger]>,
    image: &Path,
    target: &str,
    modules: &[ModuleLoad],
) -> Vec<String> {
    Debugger::ALL
        .iter()
        .map(|&d| match (d, present.is_none_or(|p| p.contains(&d))) {
            (Debugger::Lldb, true) => format!(
                "  lldb {} -o 'gdb-remote {target}'{}",
                image.display(),
                modules.iter().map(ModuleLoad::lldb).collect::<String>()
            ),
            (Debugger::Gdb, true) => format!(
                "  gdb {} -ex 'target remote {target}'{}",
                image.display(),
                modules.iter().map(ModuleLoad::gdb).collect::<String>()
            ),
            (d, false) => format!(
                "  ({0} is not installed on this machine: apt-get install {0})",
                d.name()
            ),
        })
        .collect()
}

/// The loaded modules of a kernel target, for the debugger.
pub fn module_loads(dom: &Domain, spec: &TargetSpec) -> Vec<ModuleLoad> {
    let (Some(k), Some(info)) = (&spec.kernel, dom.kernel_info()) else {
        return Vec::new();
    };
    k.modules
        .iter()
        .filter_map(|ko| {
            let name = xenprobe::vmi::kernel::module_name(ko);
            let layout = info.modules.iter().find(|m| m.name == name)?;
            Some(ModuleLoad {
                ko: ko.clone(),
                sections: layout
                    .sections
                    .iter()
                    // The struct itself is no section a debugger loads code from.
                    .filter(|(n, _)| n.as_str() != ".gnu.linkonce.this_module")
                    .map(|(n, &a)| (n.clone(), a))
                    .collect(),
            })
        })
        .collect()
}

/// Where the guest was stopped for the debugger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopPoint {
    /// On the faulting instruction, before it runs (its `hit`-th execution).
    Fault {
        /// Address of the instruction.
        rip: u64,
        /// Which execution of it faults (1 = the first).
        hit: u64,
    },
    /// At the crash sink's entry (panics).
    Sink {
        /// The sink's address.
        rip: u64,
    },
    /// Where the run was stopped (a hang or a debug trap).
    AsStopped,
    /// At the start point with the input written (no crash site to stop at).
    Start,
}

impl StopPoint {
    /// One-line description for the user.
    pub fn describe(&self) -> String {
        match self {
            StopPoint::Fault { hit, .. } => {
                format!("the faulting instruction, not yet run (its execution #{hit})")
            }
            StopPoint::Sink { .. } => {
                "the crash sink's entry (the crashing code is its caller)".to_string()
            }
            StopPoint::AsStopped => "where the run stopped".to_string(),
            StopPoint::Start => {
                "the start point with the input written (the crash has no instruction to stop \
                 before: continue to see it)"
                    .to_string()
            }
        }
    }
}

/// Time allowed for one positioning run.
fn run_timeout(spec: &TargetSpec) -> Duration {
    spec.timeout.max(Duration::from_secs(10))
}

/// Replays `input_path` against `target`, stops the guest before the crash
/// and serves the debug stub there until the debugger leaves. Returns the
/// process exit code.
pub fn run(target: &TargetSpec, input_path: &Path, opts: &DebugOptions) -> Result<i32> {
    xenprobe::vmi::cleanup::restore_on_ctrl_c().context("installing the Ctrl-C handler")?;
    let input =
        std::fs::read(input_path).with_context(|| format!("reading {}", input_path.display()))?;
    let mut spec = target.clone();
    spec.discard_console = false;
    let guest_len =
        xenprobe_fuzz::structured::guest_bytes(spec.input_format.as_ref(), &input).len();
    let mut session = Session::start(spec.clone()).context("starting the guest")?;
    let layout = session.input_layout();
    if guest_len > session.input_capacity() {
        let cap = session.input_capacity();
        session.finish().context("leaving the guest clean")?;
        bail!(
            "{} makes {guest_len} bytes of guest input; the guest's buffer holds {cap}",
            input_path.display(),
        );
    }
    let (outcome, _) = session.run(&input).context("replaying the input")?;
    let report = match outcome {
        Outcome::Ok => {
            session.finish().context("leaving the guest clean")?;
            println!("no crash: the input ran to the end point; nothing to debug");
            return Ok(1);
        }
        Outcome::Crash(r) | Outcome::Hang(r) => r,
    };
    print!("{}", report.render());
    let name = session.name().to_string();
    let image = session.image().to_path_buf();
    let mut dom = session
        .into_domain()
        .context("the replay left no attached guest")?;
    let served = position(&mut dom, &spec, &layout, &input, &report)
        .and_then(|at| serve(dom, &spec, &image, &at, opts).map(|end| (at, end)));
    let result = match served {
        Ok((_, end)) => {
            println!("debugger session ended: {}", describe_end(&end));
            Ok(0)
        }
        Err(e) => Err(e),
    };
    destroy(&name);
    println!("the replay guest {name} was destroyed");
    result
}

fn describe_end(end: &SessionEnd) -> String {
    match end {
        SessionEnd::Detached => "the debugger detached".into(),
        SessionEnd::Killed => "the debugger killed the session".into(),
        SessionEnd::Exited(c) => format!("the guest exited with code {c}"),
        SessionEnd::Terminated(s) => format!("the guest ended ({s})"),
        SessionEnd::ConnectionLost(e) => format!("connection lost ({e})"),
    }
}

/// Removes every breakpoint of the domain (the fuzzer's and ours).
fn remove_all_breakpoints(dom: &mut Domain) -> Result<()> {
    for b in dom.breakpoints() {
        dom.remove_breakpoint(b.id)?;
    }
    Ok(())
}

/// Restores the snapshot, writes the input and lets the guest run.
fn start_run(dom: &mut Domain, layout: &InputLayout, input: &[u8]) -> Result<()> {
    dom.restore_snapshot()?;
    layout.write(dom, input)?;
    dom.resume()?;
    Ok(())
}

/// The crash sinks' addresses: the kernel's error paths for a kernel
/// target, else the target's sinks.
fn sink_addresses(dom: &Domain, spec: &TargetSpec) -> Vec<u64> {
    let names: Vec<&str> = match spec.kernel {
        Some(_) => xenprobe::vmi::kernel::CRASH_FUNCTIONS.to_vec(),
        None => spec.sinks.iter().map(String::as_str).collect(),
    };
    names.iter().filter_map(|s| dom.symbol(s).ok()).collect()
}

/// Runs until breakpoint `want` (or a sink when `sinks` is given) stops the
/// guest; other stops are resumed over. Returns the id that stopped it.
fn run_until(
    dom: &mut Domain,
    want: &[BreakpointId],
    timeout: Duration,
) -> Result<(BreakpointId, u32)> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match dom.wait_event(left)? {
            Event::Breakpoint { id, vcpu, .. } if want.contains(&id) => return Ok((id, vcpu)),
            Event::Breakpoint { .. }
            | Event::Step { .. }
            | Event::Watchpoint { .. }
            | Event::Cpuid { .. } => dom.resume()?,
            Event::Debug { rip, detail, .. } => {
                bail!("the replay stopped on a debug event at {rip:#x} ({detail}) first")
            }
            Event::Shutdown { reason } => {
                bail!("the guest shut down ({reason:?}) before reaching the crash site")
            }
            Event::Timeout => bail!("the replay did not reach the crash site within {timeout:?}"),
        }
    }
}

/// Brings the guest (stopped where the replay ended) to the place to debug;
/// `width` is the input length's width in bytes. Leaves it stopped there
/// with no breakpoint planted and no snapshot.
pub fn position(
    dom: &mut Domain,
    spec: &TargetSpec,
    layout: &InputLayout,
    input: &[u8],
    report: &CrashReport,
) -> Result<StopPoint> {
    let sinks = sink_addresses(dom, spec);
    remove_all_breakpoints(dom)?;
    let at = if report.is_hang() || report.kind == "debug-trap" {
        // Already stopped where it spins / trapped.
        if !dom.is_stopped() {
            dom.pause()?;
        }
        StopPoint::AsStopped
    } else if report.rip == 0 {
        // The guest was recreated at the start point after the shutdown.
        if !dom.is_stopped() {
            dom.pause()?;
        }
        dom.restore_snapshot()?;
        layout.write(dom, input)?;
        StopPoint::Start
    } else if sinks.contains(&report.rip) {
        let id = dom.add_breakpoint(report.rip)?;
        start_run(dom, layout, input)?;
        run_until(dom, &[id], run_timeout(spec))?;
        StopPoint::Sink { rip: report.rip }
    } else {
        match fault_hits(dom, spec, layout, input, report.rip, &sinks)? {
            Some(hits) => {
                // Stop at that execution (earlier ones are stepped over:
                // they do not fault).
                let mut seen = 0u64;
                let id = dom.add_breakpoint_if(report.rip, move |_| {
                    seen += 1;
                    seen == hits
                })?;
                start_run(dom, layout, input)?;
                run_until(dom, &[id], run_timeout(spec))?;
                StopPoint::Fault {
                    rip: report.rip,
                    hit: hits,
                }
            }
            None => {
                let sink = *sinks.first().context("no crash sink symbol in the image")?;
                let id = dom.add_breakpoint(sink)?;
                start_run(dom, layout, input)?;
                run_until(dom, &[id], run_timeout(spec))?;
                StopPoint::Sink { rip: sink }
            }
        }
    };
    remove_all_breakpoints(dom)?;
    dom.drop_snapshot();
    Ok(at)
}

/// How many times the instruction at `rip` runs in a replay, the faulting
/// execution included, before a crash sink is reached. None when it cannot
/// be counted (a control-flow instruction) or was never reached.
///
/// The engine cannot step over a breakpoint on an instruction that faults
/// (the exception is delivered instead of the step's trap), so the count
/// steps over by hand: after a hit the breakpoint moves to the next
/// instruction, and back once that is reached; a sink reached instead means
/// that execution faulted.
fn fault_hits(
    dom: &mut Domain,
    spec: &TargetSpec,
    layout: &InputLayout,
    input: &[u8],
    rip: u64,
    sinks: &[u64],
) -> Result<Option<u64>> {
    let Some((_, len, text)) = dom.disassemble(rip, 1)?.into_iter().next() else {
        return Ok(None);
    };
    let mnemonic = text.split_whitespace().next().unwrap_or_default();
    let branches = [
        "j", "call", "ret", "loop", "iret", "syscall", "sysret", "int",
    ];
    if branches.iter().any(|b| mnemonic.starts_with(b)) {
        tracing::info!("{text} at {rip:#x} is a control-flow instruction: not counted");
        return Ok(None);
    }
    let next = rip + len as u64;
    let mut sink_ids = Vec::new();
    for &s in sinks {
        sink_ids.push(dom.add_breakpoint(s)?);
    }
    let mut at = dom.add_breakpoint(rip)?;
    let mut after: Option<BreakpointId> = None;
    let mut hits = 0u64;
    start_run(dom, layout, input)?;
    let deadline = std::time::Instant::now() + run_timeout(spec);
    loop {
        let mut want = sink_ids.clone();
        want.push(at);
        want.extend(after);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (id, _) = run_until(dom, &want, left)?;
        if id == at {
            hits += 1;
            dom.remove_breakpoint(at)?;
            after = Some(dom.add_breakpoint(next)?);
        } else if Some(id) == after {
            dom.remove_breakpoint(id)?;
            after = None;
            at = dom.add_breakpoint(rip)?;
        } else {
            break;
        }
        dom.resume()?;
    }
    remove_all_breakpoints(dom)?;
    Ok((hits > 0).then_some(hits))
}

/// Serves the stub on the stopped guest; prints where it stopped and the
/// debugger command lines once it listens.
fn serve(
    dom: Domain,
    spec: &TargetSpec,
    image: &Path,
    at: &StopPoint,
    opts: &DebugOptions,
) -> Result<SessionEnd> {
    let rip = dom.regs(0)?.rip;
    let place = dom
        .symbols()
        .ok()
        .and_then(|s| {
            let func = s
                .symbolize(rip)
                .map(|(sym, off)| format!("{}+{off:#x}", sym.name));
            let line = s.line(rip).map(|l| format!(" ({}:{})", l.file, l.line));
            func.map(|f| f + &line.unwrap_or_default())
        })
        .unwrap_or_else(|| "?".into());
    println!("stopped at {rip:#x} {place}: {}", at.describe());
    let connect = opts.connect.clone();
    let debuggers = opts.debuggers.clone();
    let modules = module_loads(&dom, spec);
    // A kernel's symbols are loaded already (with its modules, slid).
    let elf = spec.kernel.is_none().then_some(image);
    let end = xenprobe::stub::serve_domain(dom, opts.bind, elf, |bound| {
        let target = connect.unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                format!("127.0.0.1:{}", bound.port())
            } else {
                bound.to_string()
            }
        });
        println!("debug stub listening on {bound}; connect with one of:");
        for line in debugger_lines(debuggers.as_deref(), image, &target, &modules) {
            println!("{line}");
        }
    })?;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_present_debuggers_get_a_command_line() {
        let image = Path::new("target/guests/cguest-pvh");
        let all = debugger_lines(None, image, "127.0.0.1:38945", &[]);
        assert_eq!(
            all,
            [
                "  lldb target/guests/cguest-pvh -o 'gdb-remote 127.0.0.1:38945'",
                "  gdb target/guests/cguest-pvh -ex 'target remote 127.0.0.1:38945'",
            ]
        );
        let gdb_only = debugger_lines(Some(&[Debugger::Gdb]), image, "h:1", &[]);
        assert_eq!(gdb_only.len(), 2);
        assert!(!gdb_only.iter().any(|l| l.contains("gdb-remote")));
        assert_eq!(
            gdb_only[0],
            "  (lldb is not installed on this machine: apt-get install lldb)"
        );
        assert!(gdb_only[1].starts_with("  gdb target/guests/cguest-pvh -ex"));
        let parse =
            |s: &[&str]| parse_debuggers(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(parse(&["gdb"]).ok(), Some(vec![Debugger::Gdb]));
        assert_eq!(parse(&["lldb", "gdb"]).ok(), Some(Debugger::ALL.to_vec()));
        assert_eq!(parse(&["none"]).ok(), Some(vec![]));
        assert!(parse(&["ddd"]).is_err());
        let none = debugger_lines(Some(&[]), image, "h:1", &[]);
        assert!(
            none.iter().all(|l| l.contains("is not installed")),
            "{none:?}"
        );
        assert_eq!(
            debugger_lines(Some(&Debugger::ALL), image, "h:1", &[]).len(),
            2
        );
    }

    #[test]
    fn kernel_modules_load_at_their_sections() {
        let m = ModuleLoad {
            ko: "/x/m.ko".into(),
            sections: vec![(".data".into(), 0xc000_3000), (".text".into(), 0xc000_1000)],
        };
        let lines = debugger_lines(None, Path::new("vmlinux"), "h:1", &[m]);
        assert_eq!(
            lines[0],
            "  lldb vmlinux -o 'gdb-remote h:1' -o 'target modules add /x/m.ko' \
             -o 'target modules load --file /x/m.ko .data 0xc0003000 .text 0xc0001000'"
        );
        assert_eq!(
            lines[1],
            "  gdb vmlinux -ex 'target remote h:1' -ex 'add-symbol-file /x/m.ko 0xc0001000 -s .data 0xc0003000'"
        );
    }
}
