//! One guest under the fuzzer: started from its config, stopped at the
//! ABI start point, snapshotted, then run once per input.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustc_hash::FxHashMap;

use xenprobe::vmi::{
    BreakpointId, Domain, Event, RestoreOptions, ShutdownReason, SnapshotCheck, Window, Xen,
};
use xenprobe_abi::target;

use crate::blocks::{self, Block, Function};
use crate::cmplog::{self, CmpSite, CmpValues};
use crate::kernel::{self, KernelTarget, Marker};
use crate::report::{self, CrashReport, Outcome};
use crate::structured::InputFormat;

/// Reads of a running guest's module list in a row that may fail (see
/// `reach_kernel_start_symbol`) before the error counts.
const MODULE_READ_RETRIES: u32 = 50;

/// Errors of a fuzzing session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The VMI engine failed.
    #[error(transparent)]
    Vmi(#[from] xenprobe::vmi::Error),
    /// Reading the guest image failed.
    #[error(transparent)]
    Blocks(#[from] blocks::BlocksError),
    /// `xl` failed or the configuration is unusable.
    #[error("{0}")]
    Setup(String),
    /// The guest type cannot be fuzzed here.
    #[error("{0}")]
    Unsupported(String),
    /// The guest did not boot to its start point (died or hung on the way).
    #[error("{0}")]
    Boot(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, SessionError>;

/// Which guest to fuzz and how (the fuzz-target ABI's symbols by default).
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// `xl` configuration file; its `name=` is the domain name.
    pub cfg: PathBuf,
    /// The guest's ELF image (symbols, code for coverage).
    pub image: PathBuf,
    /// Input buffer symbol (capacity = its size).
    pub input_sym: String,
    /// Input length symbol (unsigned, little-endian).
    pub len_sym: String,
    /// Width of the input length in bytes (1, 2, 4 or 8); None: its
    /// symbol's ELF size (see [`crate::abi::len_width`]).
    pub len_size: Option<usize>,
    /// Start point: the snapshot is taken here.
    pub start_sym: String,
    /// End point: a run without crash reaches it.
    pub end_sym: String,
    /// Crash sinks (panic and fault handlers).
    pub sinks: Vec<String>,
    /// Functions to cover (see [`blocks::select_functions`]).
    pub cover: Vec<String>,
    /// Time a run may take between two events before it is a hang.
    pub timeout: Duration,
    /// Discard the guest's console output between runs (see [`Session`]),
    /// and ask a guest that defines `xenprobe_quiet` not to print at all.
    pub discard_console: bool,
    /// How the snapshot is restored (frames and registers).
    pub restore: RestoreOptions,
    /// Persistent mode: memory is restored only every this many runs (1:
    /// every run), and always after a crash, a hang or new coverage; the
    /// registers are reset every run. Crashes found on a memory that was not
    /// restored are replayed from the snapshot before they count.
    pub persistent: u32,
    /// Busy-poll bound of the vm_event ring before blocking (see
    /// [`Domain::set_event_spin`]).
    pub event_spin: Duration,
    /// Structured inputs: the fuzzer's bytes are decoded into this format's
    /// type and serialised into the guest (None: raw bytes; see
    /// [`crate::structured`]).
    pub input_format: Option<InputFormat>,
    /// Linux kernel code instead of an image following the fuzz-target ABI
    /// (see [`crate::kernel`]): symbols from the kernel and its modules,
    /// the kernel's error paths as sinks, the harness's markers.
    pub kernel: Option<KernelTarget>,
    /// The engine's settings (the breakpoint instruction forced, slow
    /// step-over), from the fuzzer's command line.
    pub engine: xenprobe::vmi::Settings,
}

impl TargetSpec {
    /// The defaults of the fuzz-target ABI for a sample guest named `krate`.
    pub fn sample(krate: &str, cfg: PathBuf, image: PathBuf) -> Self {
        Self {
            cfg,
            image,
            input_sym: target::INPUT.into(),
            len_sym: target::INPUT_LEN.into(),
            len_size: None,
            start_sym: target::START.into(),
            end_sym: target::END.into(),
            sinks: vec![target::CRASH.into()],
            cover: vec![target::TARGET.into(), format!("crate:{krate}")],
            timeout: Duration::from_millis(500),
            discard_console: true,
            restore: RestoreOptions {
                strategy: xenprobe::vmi::RestoreStrategy::PeekCleanEvery(1000),
                registers: xenprobe::vmi::RegisterReset::EventReply,
            },
            persistent: 1,
            event_spin: Duration::ZERO,
            input_format: None,
            kernel: None,
            engine: Default::default(),
        }
    }
}

/// A guest at its start point, with the input buffer a kernel harness's
/// marker named (address, size).
type Started = (Domain, Option<(u64, usize)>);

/// The `name="..."` of an `xl` configuration.
pub fn cfg_name(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

/// Whether `xl` keeps a domain of config `cfg` that shut down for
/// `reason`: its `on_poweroff`, `on_reboot`, `on_crash` or `on_watchdog` is
/// `"preserve"` (xl's defaults destroy or restart it). Only such a domain
/// may be taken back in place: xl acts on the others itself, at a moment
/// of its choosing.
pub fn kept_after(cfg: &str, reason: ShutdownReason) -> bool {
    let key = match reason {
        ShutdownReason::Poweroff => "on_poweroff",
        ShutdownReason::Reboot => "on_reboot",
        ShutdownReason::Crash => "on_crash",
        ShutdownReason::Watchdog => "on_watchdog",
        _ => return false,
    };
    cfg.lines()
        .rev()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
        })
        .is_some_and(|v| v == "preserve")
}

fn xl(args: &[&str]) -> Result<()> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .map_err(|e| SessionError::Setup(format!("running xl {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(SessionError::Setup(format!(
            "xl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Destroys the domain `name` if it exists.
pub fn destroy(name: &str) {
    let _ = Command::new("xl")
        .args(["destroy", name])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The optional guest byte that turns the guest's console output off while
/// a campaign discards it (guests/README.md, "The fuzz-target ABI").
pub const QUIET_SYM: &str = target::QUIET;

/// Busy-poll bound (microseconds) of a campaign, with one guest or several
/// jobs: a run of a sample parser ends within it, so the result is picked up
/// from the ring without a blocking wait, its wake-up and its system calls.
pub const DEFAULT_SPIN_US: u64 = 2000;

/// Boots of a Linux guest tried before a session gives up: in the QEMU lab
/// a PVH or HVM Linux boot now and then dies or hangs before userspace
/// (docs/linux.md), PV boots do not.
pub const KERNEL_BOOT_ATTEMPTS: u32 = 3;

/// How often a booting Linux guest's vCPU 0 is sampled for
/// [`kernel::SpinWatch`].
const SPIN_SAMPLE: Duration = Duration::from_secs(2);

/// One run in this many is run twice to measure stability
/// ([`Session::stability`]), besides every run that found new coverage.
pub const STABILITY_SAMPLE: u64 = 1000;

/// Where a run's input goes in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLayout {
    /// The input buffer.
    pub buffer: u64,
    /// Bytes a run passes at most.
    pub capacity: usize,
    /// The length variable and its width in bytes, if the target has one.
    pub len: Option<(u64, usize)>,
}

impl InputLayout {
    /// Writes `input` and its length through the engine (so that the next
    /// restore undoes them).
    pub fn write(&self, dom: &mut Domain, input: &[u8]) -> xenprobe::vmi::Result<()> {
        let input = &input[..input.len().min(self.capacity)];
        dom.write_virt(self.buffer, input)?;
        if let Some((va, width)) = self.len {
            dom.write_virt(va, &crate::abi::len_bytes(input.len(), width))?;
        }
        Ok(())
    }
}

/// Where a session's runs spend their time (timed runs only; see
/// [`Session::timings`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunTimings {
    /// Restoring memory and registers to the snapshot.
    pub restore: Duration,
    /// Of `restore`: the log-dirty hypercall (PEEK or CLEAN).
    pub log_dirty: Duration,
    /// Writing the input and its length into the guest.
    pub input: Duration,
    /// From the resume to the run's end event (resume and wait below are
    /// parts of it).
    pub run: Duration,
    /// Replying to the start event and notifying Xen.
    pub resume: Duration,
    /// Waiting for the guest's next event.
    pub wait: Duration,
    /// Of `wait`: the guest running until its event came (busy-polling or
    /// blocked, see [`xenprobe::vmi::Domain::time_waiting`]); the rest is
    /// the event's handling.
    pub guest: Duration,
}

impl std::ops::Sub for RunTimings {
    type Output = RunTimings;
    fn sub(self, o: RunTimings) -> RunTimings {
        RunTimings {
            restore: self.restore.saturating_sub(o.restore),
            log_dirty: self.log_dirty.saturating_sub(o.log_dirty),
            input: self.input.saturating_sub(o.input),
            run: self.run.saturating_sub(o.run),
            resume: self.resume.saturating_sub(o.resume),
            wait: self.wait.saturating_sub(o.wait),
            guest: self.guest.saturating_sub(o.guest),
        }
    }
}

/// What the session did besides running inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Memory and registers restored.
    pub full_restores: u64,
    /// Registers only (persistent mode).
    pub register_resets: u64,
    /// Restores whose registers were reset in the vm_event reply.
    pub regs_in_reply: u64,
    /// Crashes or hangs of persistent runs replayed from the snapshot.
    pub replays: u64,
    /// ... that did not happen again from the snapshot (not reported).
    pub unstable: u64,
    /// Guest runs (replays and stability runs included).
    pub guest_runs: u64,
    /// Guest runs that ended in a crash sink, a fault or a shutdown.
    pub crashed: u64,
    /// Guest runs that hung.
    pub hung: u64,
    /// Input bytes written into the guest, all runs together.
    pub input_bytes: u64,
    /// Frames the full restores brought back, all together.
    pub frames_restored: u64,
}

/// Applies `op` to each pair of fields of two sets of counters.
macro_rules! counters_op {
    ($a:expr, $b:expr, $op:ident) => {
        Counters {
            full_restores: $a.full_restores.$op($b.full_restores),
            register_resets: $a.register_resets.$op($b.register_resets),
            regs_in_reply: $a.regs_in_reply.$op($b.regs_in_reply),
            replays: $a.replays.$op($b.replays),
            unstable: $a.unstable.$op($b.unstable),
            guest_runs: $a.guest_runs.$op($b.guest_runs),
            crashed: $a.crashed.$op($b.crashed),
            hung: $a.hung.$op($b.hung),
            input_bytes: $a.input_bytes.$op($b.input_bytes),
            frames_restored: $a.frames_restored.$op($b.frames_restored),
        }
    };
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        counters_op!(self, o, saturating_sub)
    }
}

impl std::ops::Add for Counters {
    type Output = Counters;
    fn add(self, o: Counters) -> Counters {
        counters_op!(self, o, saturating_add)
    }
}

impl Counters {
    /// What the guest runs were like: how many crashed and hung, and the
    /// mean input length (what makes one campaign's runs slower than
    /// another's on the same guest).
    pub fn runs_text(&self) -> String {
        let n = self.guest_runs.max(1) as f64;
        format!(
            "{} guest runs: {:.1}% crashed, {:.1}% hung, inputs of {:.0} bytes and {:.1} frames a full restore on average",
            self.guest_runs,
            100.0 * self.crashed as f64 / n,
            100.0 * self.hung as f64 / n,
            self.input_bytes as f64 / n,
            self.frames_restored as f64 / self.full_restores.max(1) as f64
        )
    }
}

enum Role {
    End,
    /// A crash sink (index in [`TargetSpec::sinks`]).
    Sink(usize),
    /// One of the kernel's error paths.
    KernelSink(&'static str, kernel::SinkKind),
    Cover(usize),
    /// A comparison site's own breakpoint (traced runs only).
    Cmp,
}

/// A traced run's comparison logging (see [`Session::run_traced`]).
#[derive(Default)]
struct Trace {
    /// Sites not logged yet in this run, by address (index in `cmp_sites`).
    pending: HashMap<u64, usize>,
    /// Operand values, one entry per site reached (its first hit).
    log: Vec<CmpValues>,
}

/// A guest stopped at its start point with a snapshot, ready to run inputs.
pub struct Session {
    spec: TargetSpec,
    name: String,
    /// The covered functions with their code (from the image, or for a
    /// kernel from the guest at the start marker).
    funcs: Vec<(Function, Vec<u8>)>,
    /// Blocks of the covered functions (index = coverage map index).
    pub blocks: Vec<Block>,
    /// Comparisons of the covered functions (see [`crate::cmplog`]).
    cmp_sites: Vec<CmpSite>,
    /// Their breakpoints, planted at boot and disabled: enabled for a
    /// traced run only.
    cmp_bps: Vec<BreakpointId>,
    trace: Option<Trace>,
    covered: BTreeSet<usize>,
    roles: FxHashMap<BreakpointId, Role>,
    input_va: u64,
    /// Bytes a run passes at most: the buffer's size, at most what the
    /// length variable holds.
    input_cap: usize,
    /// The input length variable (a kernel harness may have none: it then
    /// reads its whole buffer).
    len_va: Option<u64>,
    /// Where the snapshot's vCPU 0 resumes (the start point).
    start_rip: u64,
    /// The `cpuid` leaf that ends a run (a kernel harness's marker).
    end_marker: Option<u32>,
    /// The input buffer is the one the start marker named.
    marker_buffer: bool,
    /// Width of the length variable in bytes.
    len_width: usize,
    /// The input buffer and the length variable, written each run through
    /// the engine's windows (every restore puts their bytes back).
    input_win: Option<Window>,
    len_win: Option<Window>,
    /// The guest's PV console ring, while output is discarded.
    console: Option<Window>,
    fresh: bool,
    /// Unexpected shutdowns taken back in place ([`Session::revivals`]).
    revivals: u32,
    /// What the engine noticed the guest do, one line each, not yet taken
    /// ([`Session::take_notices`]), and every line logged so far.
    notices: Vec<String>,
    noticed: BTreeSet<String>,
    /// Runs since memory was last at the snapshot.
    since_reset: u32,
    /// The next run must start from a full restore.
    reset_next: bool,
    restarts: u32,
    /// Restore and replay counters.
    pub counters: Counters,
    /// What the last restore did.
    last_restore: Option<xenprobe::vmi::RestoreStats>,
    /// Time spent restoring, writing inputs, running, resuming and waiting
    /// (for the summary), on every run but traced ones; measured with the
    /// TSC ([`xenprobe::xen::Stamp`]: a clock read is a system call in a
    /// PV dom0, as dear as a vm_event reply).
    pub timings: RunTimings,
    /// Runs so far (picks the runs whose stability is checked).
    runs: u64,
    /// Runs checked for determinism, and those that repeated.
    stability: (u64, u64),
    /// This run's phases are timed.
    timed: bool,
    /// Crash reports' frames, symbolized once per address (forgotten at
    /// every boot: a new kernel may sit elsewhere).
    symbolizer: report::Symbolizer,
    dom: Option<Domain>,
    xen: Xen,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Creates the guest from its config (paused), stops it at the start
    /// point, plants end, sink and coverage breakpoints, takes the snapshot.
    pub fn start(spec: TargetSpec) -> Result<Self> {
        let text = std::fs::read_to_string(&spec.cfg)
            .map_err(|e| SessionError::Setup(format!("reading {}: {e}", spec.cfg.display())))?;
        let name = cfg_name(&text)
            .ok_or_else(|| SessionError::Setup(format!("{}: no name=", spec.cfg.display())))?;
        // A kernel's code is read from the guest once the harness starts.
        let funcs = match spec.kernel {
            None => blocks::functions_in_image(&spec.image, &spec.cover)?,
            Some(_) => Vec::new(),
        };
        let xen = Xen::open()?.with_settings(spec.engine.clone());
        let mut s = Self {
            spec,
            name,
            funcs,
            blocks: Vec::new(),
            cmp_sites: Vec::new(),
            cmp_bps: Vec::new(),
            trace: None,
            covered: BTreeSet::new(),
            roles: FxHashMap::default(),
            input_va: 0,
            input_cap: 0,
            len_va: None,
            start_rip: 0,
            end_marker: None,
            marker_buffer: false,
            len_width: 8,
            input_win: None,
            len_win: None,
            console: None,
            fresh: true,
            revivals: 0,
            notices: Vec::new(),
            noticed: BTreeSet::new(),
            since_reset: 0,
            reset_next: false,
            restarts: 0,
            counters: Counters::default(),
            last_restore: None,
            timings: RunTimings::default(),
            runs: 0,
            stability: (0, 0),
            timed: false,
            symbolizer: report::Symbolizer::default(),
            dom: None,
            xen,
        };
        if s.spec.kernel.is_none() {
            s.derive_code()?;
        }
        s.boot()?;
        Ok(s)
    }

    /// Blocks and comparison sites of the covered functions' code.
    fn derive_code(&mut self) -> Result<()> {
        let mut blocks: Vec<Block> = self
            .funcs
            .iter()
            .flat_map(|(f, code)| blocks::blocks_of(code, f.addr))
            .collect();
        blocks.sort();
        blocks.dedup_by_key(|b| b.addr);
        if blocks.is_empty() {
            return Err(SessionError::Setup(format!(
                "no code to cover: no function of {} matches {:?}",
                self.code_source(),
                self.spec.cover
            )));
        }
        if !self.blocks.is_empty() && self.blocks.len() != blocks.len() {
            // Coverage indices must keep their meaning across reboots.
            return Err(SessionError::Setup(format!(
                "the covered code changed across a reboot ({} blocks, now {})",
                self.blocks.len(),
                blocks.len()
            )));
        }
        self.blocks = blocks;
        let mut sites: Vec<CmpSite> = self
            .funcs
            .iter()
            .flat_map(|(f, code)| cmplog::sites_of(code, f.addr))
            .collect();
        sites.sort_by_key(|s| s.addr);
        sites.dedup_by_key(|s| s.addr);
        self.cmp_sites = sites;
        Ok(())
    }

    /// Where the covered code comes from, for messages.
    fn code_source(&self) -> String {
        match &self.spec.kernel {
            None => self.spec.image.display().to_string(),
            Some(k) => format!("the kernel ({})", k.symbols.display()),
        }
    }

    /// Magic values the covered code compares against (`cmp`/`test`/`sub`
    /// immediates), for the mutator's dictionary.
    pub fn comparison_tokens(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for (f, code) in &self.funcs {
            for t in blocks::comparison_tokens(code, f.addr) {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// The covered functions and their code.
    pub fn functions(&self) -> &[(Function, Vec<u8>)] {
        &self.funcs
    }

    /// The target is Linux kernel code.
    pub fn is_kernel(&self) -> bool {
        self.spec.kernel.is_some()
    }

    /// The attached guest, for reading symbols and lines.
    pub fn domain(&self) -> Option<&Domain> {
        self.dom.as_ref()
    }

    /// Domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of blocks reached so far.
    pub fn covered(&self) -> usize {
        self.covered.len()
    }

    /// How often the guest had to be recreated (unexpected shutdowns of a
    /// domain the toolstack did not keep).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Unexpected shutdowns (triple faults, crashes or power-offs outside the
    /// crash sinks) taken back in place: the domain was kept
    /// (`on_*="preserve"`) and restored from the snapshot, no reboot.
    pub fn revivals(&self) -> u32 {
        self.revivals
    }

    /// What the guest did to the harness that the engine noticed and dealt
    /// with since the last call, one line each: breakpoint bytes it
    /// overwrote, copies of breakpoint bytes it ran, vCPUs it brought up
    /// (see [`xenprobe::vmi::Notice`]). The first time a line comes up it
    /// is also logged as a warning.
    pub fn take_notices(&mut self) -> Vec<String> {
        self.collect_notices();
        std::mem::take(&mut self.notices)
    }

    /// Takes the engine's notices, in words, with the sites by symbol.
    fn collect_notices(&mut self) {
        let Some(dom) = self.dom.as_mut() else {
            return;
        };
        let found = dom.take_notices();
        if found.is_empty() {
            return;
        }
        let lines: Vec<String> = found
            .iter()
            .map(|n| describe_notice(dom, &self.roles, n))
            .collect();
        for line in lines {
            if self.noticed.insert(line.clone()) {
                tracing::warn!("{line}");
            }
            if self.notices.len() < 256 {
                self.notices.push(line);
            }
        }
    }

    /// After a run that did not end at its end point: the end point's and
    /// sinks' breakpoints the guest overwrote, as a note for the report
    /// (empty if none): the outcome may then be the harness's blindness.
    fn overwritten_exits(&mut self) -> String {
        let Some(dom) = self.dom.as_ref() else {
            return String::new();
        };
        let Ok(over) = dom.overwritten_breakpoints() else {
            return String::new();
        };
        let names: Vec<String> = over
            .iter()
            .filter_map(|(id, _)| match self.roles.get(id) {
                Some(Role::End) => Some(format!("{} (the end point)", self.spec.end_sym)),
                Some(&Role::Sink(i)) => Some(format!("{} (a crash sink)", self.spec.sinks[i])),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return String::new();
        }
        format!(
            "; the guest overwrote xenprobe's breakpoint at {}: the run may have passed it unseen",
            names.join(", ")
        )
    }

    /// Number of comparison sites a traced run logs.
    pub fn comparison_sites(&self) -> usize {
        self.cmp_sites.len()
    }

    /// Input capacity in bytes: the buffer's size, at most the largest
    /// value of the length variable.
    pub fn input_capacity(&self) -> usize {
        self.input_cap
    }

    /// Width of the input length variable in bytes (1, 2, 4 or 8).
    pub fn input_len_width(&self) -> usize {
        self.len_width
    }

    /// Where a run's input goes.
    pub fn input_layout(&self) -> InputLayout {
        InputLayout {
            buffer: self.input_va,
            capacity: self.input_cap,
            len: self.len_va.map(|va| (va, self.len_width)),
        }
    }

    fn dom(&mut self) -> Result<&mut Domain> {
        self.dom
            .as_mut()
            .ok_or_else(|| SessionError::Setup("the guest is not attached".into()))
    }

    /// A crash report `f` reads from the stopped guest, its frames
    /// symbolized through the session's [`report::Symbolizer`].
    fn crash_report(
        &mut self,
        f: impl FnOnce(
            &mut Domain,
            &mut report::Symbolizer,
        ) -> std::result::Result<CrashReport, xenprobe::vmi::Error>,
    ) -> Result<CrashReport> {
        // Taken out while the domain is borrowed (an empty map: no allocation).
        let mut syms = std::mem::take(&mut self.symbolizer);
        let report = self.dom().and_then(|d| Ok(f(d, &mut syms)?));
        self.symbolizer = syms;
        report
    }

    fn boot(&mut self) -> Result<()> {
        self.symbolizer.forget();
        let (mut dom, buffer) = match self.take_parked()? {
            Some(parked) => parked,
            None => self.create()?,
        };
        self.start_rip = dom.regs(0)?.rip;
        self.plant(&mut dom)?;
        self.find_input(&mut dom, buffer)?;
        self.console = None;
        if self.spec.discard_console {
            // A kernel prints through its own console driver, not the
            // runtime's ring.
            if self.spec.kernel.is_none() {
                self.console = self.map_console(&mut dom)?;
            }
            // A guest that offers the optional ABI byte skips its output
            // altogether: no ring writes, no notification, no dom0 wake-up.
            if let Ok(quiet) = dom.symbol(QUIET_SYM) {
                dom.write_virt(quiet, &[1])?;
            }
            // What the guest printed so far counts as read before the
            // snapshot: restores then leave the ring page alone unless the
            // guest writes it (xenprobe's writes to it are not tracked).
            self.drain_console()?;
        }
        let info = dom.take_snapshot()?;
        tracing::info!(frames = info.frames, took = ?info.took, "snapshot taken");
        self.dom = Some(dom);
        self.fresh = true;
        self.since_reset = 0;
        self.reset_next = false;
        Ok(())
    }

    fn configure(&self, dom: &mut Domain) -> Result<()> {
        dom.set_restore_options(self.spec.restore);
        dom.set_event_spin(self.spec.event_spin);
        // One vCPU stopped at its vm_event needs no domain pause on top.
        dom.set_hold_stops(true)?;
        Ok(())
    }

    /// Creates the guest and lets it run to its start point; returns it
    /// with the input buffer a kernel harness's marker named.
    fn create(&mut self) -> Result<Started> {
        let attempts = if self.spec.kernel.is_some() {
            KERNEL_BOOT_ATTEMPTS
        } else {
            1
        };
        let mut attempt = 1;
        loop {
            match self.create_once() {
                Err(SessionError::Boot(why)) if attempt < attempts => {
                    tracing::warn!("boot {attempt} of {attempts} failed ({why}): booting again");
                    attempt += 1;
                }
                Err(SessionError::Boot(why)) if attempts > 1 => {
                    return Err(SessionError::Boot(format!("{why} (in {attempts} boots)")))
                }
                other => return other,
            }
        }
    }

    fn create_once(&mut self) -> Result<Started> {
        destroy(&self.name);
        let cfg = self.spec.cfg.display().to_string();
        let out = Command::new("xl")
            .args(["create", "-q", "-p", &cfg])
            .output()
            .map_err(|e| SessionError::Setup(format!("running xl create {cfg}: {e}")))?;
        if !out.status.success() {
            // xl leaves no domain behind when it fails, but a half-built one
            // would hold memory.
            destroy(&self.name);
            let text = std::fs::read_to_string(&self.spec.cfg).unwrap_or_default();
            return Err(SessionError::Setup(xenprobe::xl::create_failed(
                &cfg,
                &text,
                &[],
                &String::from_utf8_lossy(&out.stderr),
            )));
        }
        let mut dom = Domain::attach(&self.xen, self.name.as_str())?;
        self.configure(&mut dom)?;
        let buffer = match self.spec.kernel.clone() {
            None => {
                self.reach_abi_start(&mut dom)?;
                None
            }
            Some(k) => {
                let buffer = match self.reach_kernel_start(&mut dom, &k) {
                    Ok(b) => b,
                    Err(e) => {
                        drop(dom);
                        destroy(&self.name);
                        return Err(e);
                    }
                };
                if let Err(e) = self.kernel_setup(&mut dom, &k) {
                    // The guest is fine at its start point (the symbols are
                    // not): kept for the next session.
                    self.park(dom, &k, buffer);
                    return Err(e);
                }
                buffer
            }
        };
        Ok((dom, buffer))
    }

    /// Leaves a Linux guest paused at its start point for the next session
    /// ([`kernel::Parked`]); on failure it is destroyed.
    fn park(&self, dom: Domain, k: &KernelTarget, buffer: Option<(u64, usize)>) {
        let start_rip = match dom.regs(0) {
            Ok(r) => r.rip,
            Err(e) => {
                tracing::warn!("keeping the booted guest: {e}");
                drop(dom);
                destroy(&self.name);
                return;
            }
        };
        let parked = kernel::Parked {
            domid: dom.id(),
            start_rip,
            buffer,
            fingerprint: k.fingerprint(&self.spec.cfg),
        };
        let kept = dom
            .detach_paused()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                parked
                    .save(&self.xen.settings().state_dir(), &self.name)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = kept {
            tracing::warn!("keeping the booted guest for the next session: {e}");
            destroy(&self.name);
        }
    }

    /// Takes over the Linux guest a finished session left paused at its
    /// start point ([`kernel::Parked`]), if it is there, unchanged and
    /// still at that point; None otherwise (the guest is booted anew). An
    /// error of the setup there (symbols, code) leaves it parked.
    fn take_parked(&mut self) -> Result<Option<Started>> {
        let Some(k) = self.spec.kernel.clone() else {
            return Ok(None);
        };
        let Some(parked) = kernel::Parked::take(&self.xen.settings().state_dir(), &self.name)
        else {
            return Ok(None);
        };
        if parked.fingerprint != k.fingerprint(&self.spec.cfg) {
            tracing::info!("the parked guest was booted for another build: booting anew");
            return Ok(None);
        }
        let Ok(mut dom) = Domain::attach(&self.xen, parked.domid) else {
            return Ok(None);
        };
        let at_start = dom.name() == self.name
            && dom.adopt_pause().unwrap_or(false)
            && dom.regs(0).is_ok_and(|r| r.rip == parked.start_rip);
        if !at_start {
            return Ok(None);
        }
        self.start_rip = parked.start_rip;
        match self
            .configure(&mut dom)
            .and_then(|()| self.kernel_setup(&mut dom, &k))
        {
            Ok(()) => {
                tracing::info!(domid = parked.domid, "took over the parked guest");
                Ok(Some((dom, parked.buffer)))
            }
            Err(e) => {
                // The guest is fine at its start point (what failed is the
                // symbols or the code to cover): kept for the next session.
                self.park(dom, &k, parked.buffer);
                Err(e)
            }
        }
    }

    /// Lets a guest built on the fuzz-target ABI run to its start symbol.
    fn reach_abi_start(&mut self, dom: &mut Domain) -> Result<()> {
        if dom.capabilities().vm_event().is_err() {
            destroy(&self.name);
            return Err(SessionError::Unsupported(
                "fuzzing PV guests is not supported yet: PV has no vm_event ring, so breakpoints \
                 and stops need the debug hypervisor's gdbsx path (cargo xtask lab up --xen debug) \
                 and PV log-dirty needs shadow paging; use --mode pvh or hvm"
                    .into(),
            ));
        }
        dom.load_symbols(&self.spec.image)?;
        let start = dom.add_breakpoint_at(&self.spec.start_sym)?;
        xl(&["unpause", &self.name])?;
        match dom.wait_event(Duration::from_secs(30))? {
            Event::Breakpoint { id, .. } if id == start => {}
            other => {
                return Err(SessionError::Setup(format!(
                    "the guest did not reach {} ({other:?})",
                    self.spec.start_sym
                )))
            }
        }
        dom.remove_breakpoint(start)?;
        Ok(())
    }

    /// Boots a Linux guest to its harness's start marker, loads the
    /// kernel's and the modules' symbols there and reads the covered code.
    /// Returns the input buffer the marker named (address, size), if any.
    fn reach_kernel_start(
        &mut self,
        dom: &mut Domain,
        k: &KernelTarget,
    ) -> Result<Option<(u64, usize)>> {
        let Marker::Cpuid(leaf) = k.marker else {
            return self.reach_kernel_start_symbol(dom, k);
        };
        if dom.capabilities().vm_event().is_err() {
            return Err(SessionError::Unsupported(format!(
                "a PV guest's cpuid does not reach Xen, so the harness's marker (cpuid {leaf:#x}) \
                 cannot be seen: boot the kernel as a PVH or HVM guest"
            )));
        }
        dom.set_cpuid_marker(Some(leaf))?;
        xl(&["unpause", &self.name])?;
        let began = std::time::Instant::now();
        let mut spin = kernel::SpinWatch::default();
        let (vcpu, subleaf) = loop {
            let left = k.boot_timeout.saturating_sub(began.elapsed());
            match dom.wait_event(left.min(SPIN_SAMPLE))? {
                Event::Timeout if !left.is_zero() => {
                    let (rip, ran) = (dom.regs(0)?.rip, dom.vcpu_time(0)?);
                    tracing::debug!(rip = format_args!("{rip:#x}"), ?ran, "booting");
                    if let Some(at) = spin.sample(began.elapsed(), rip, ran) {
                        return Err(SessionError::Boot(format!(
                            "vCPU 0 has spun at {at:#x} for {} s before the harness's start \
                             marker (cpuid {leaf:#x}): a deadlock while booting?",
                            kernel::SPIN_FOR.as_secs()
                        )));
                    }
                }
                Event::Cpuid {
                    vcpu,
                    leaf: l,
                    subleaf,
                    ..
                } if l == leaf => break (vcpu, subleaf),
                Event::Timeout => {
                    return Err(SessionError::Boot(format!(
                        "the guest's harness did not reach its start marker (cpuid {leaf:#x}) \
                         within {} s: is the harness's module loaded, does it run?",
                        k.boot_timeout.as_secs()
                    )))
                }
                Event::Shutdown { reason } => {
                    return Err(SessionError::Boot(format!(
                        "the guest shut down ({reason:?}) before its harness reached the start \
                         marker (cpuid {leaf:#x}): an oops or panic outside the harness? See its \
                         console"
                    )))
                }
                // Anything else before the harness is not ours to judge.
                _ => dom.resume()?,
            }
        };
        if vcpu != 0 || dom.max_vcpu()? != 0 {
            return Err(SessionError::Unsupported(
                "the kernel harness must run on a guest with one vCPU (vcpus=1)".into(),
            ));
        }
        let regs = dom.regs(vcpu)?;
        dom.complete_cpuid(vcpu)?;
        Ok((regs.rsi != 0 && subleaf != 0).then_some((regs.rsi, subleaf as usize)))
    }

    /// Boots a Linux guest to its harness's start symbol: a breakpoint, so
    /// any guest type (PV through the debug hypervisor's gdbsx), planted
    /// once the target's module is loaded (found by polling the kernel's
    /// module list).
    fn reach_kernel_start_symbol(
        &mut self,
        dom: &mut Domain,
        k: &KernelTarget,
    ) -> Result<Option<(u64, usize)>> {
        let ko = k.modules.first().ok_or_else(|| {
            SessionError::Setup(
                "a harness marked by symbols needs its module (modules = [...])".into(),
            )
        })?;
        let wanted = xenprobe::vmi::kernel::module_name(ko);
        let timed_out = |what: &str| {
            SessionError::Boot(format!(
                "the guest did not {what} within {} s",
                k.boot_timeout.as_secs()
            ))
        };
        let only_kernel = xenprobe::vmi::KernelSymbols {
            kernel: k.symbols.clone(),
            modules: Vec::new(),
        };
        // Read before the guest runs: it takes seconds in an emulated dom0,
        // and the guest must not get to its module meanwhile.
        let syms =
            xenprobe::vmi::Symbols::load_cached(&k.symbols, &self.xen.settings().state_dir())?;
        if dom.capabilities().kaslr().is_err() {
            // At its link address, in memory as Xen loaded it.
            dom.load_kernel_symbols_from(syms, &only_kernel)?;
            xl(&["unpause", &self.name])?;
        } else {
            xl(&["unpause", &self.name])?;
            // An HVM kernel's slide shows once it has set up its syscall entry.
            let deadline = std::time::Instant::now() + k.boot_timeout;
            while let Err(e) = dom.kaslr_slide_of(&syms) {
                if std::time::Instant::now() >= deadline
                    || dom
                        .info()
                        .map_or(true, |i| i.shutdown || i.crashed || i.dying)
                {
                    return Err(timed_out(&format!("set up its syscall entry ({e})")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            dom.load_kernel_symbols_from(syms, &only_kernel)?;
        }
        // Breakpoints only once the module is there: a debugger's
        // breakpoints take every int3 of the guest (PV: gdbsx), and the
        // kernel's boot self-test and its text patching use int3. So the
        // harness must wait a moment after its module loads (the sample's
        // /init holds it a second on PV).
        let deadline = std::time::Instant::now() + k.boot_timeout;
        // The guest runs while its module list is read: a frame it frees or
        // remaps between two reads cannot be mapped (EPERM) or translated.
        // Such a read is tried again; only an error that persists counts.
        let mut failed_reads = 0;
        loop {
            match dom.module_loaded(&wanted) {
                Ok(true) => break,
                Ok(false) => failed_reads = 0,
                Err(
                    e @ (xenprobe::vmi::Error::Xen(_) | xenprobe::vmi::Error::Translate { .. }),
                ) if failed_reads < MODULE_READ_RETRIES => {
                    failed_reads += 1;
                    tracing::debug!("reading the running guest's module list: {e}; reading again");
                }
                Err(e) => return Err(e.into()),
            }
            if dom
                .info()
                .map_or(true, |i| i.shutdown || i.crashed || i.dying)
            {
                return Err(SessionError::Boot(format!(
                    "the guest shut down before loading module {wanted}: an oops or panic \
                     outside the harness? See its console"
                )));
            }
            if std::time::Instant::now() >= deadline {
                return Err(timed_out(&format!("load module {wanted}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        dom.load_module(ko)?;
        let start = dom.add_breakpoint_at(&self.spec.start_sym)?;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match dom.wait_event(left)? {
                Event::Breakpoint { id, .. } if id == start => break,
                Event::Timeout => {
                    return Err(timed_out(&format!(
                        "reach {} (in module {wanted}) after loading the module: does the \
                         harness wait for the fuzzer?",
                        self.spec.start_sym
                    )))
                }
                Event::Shutdown { reason } => {
                    return Err(SessionError::Boot(format!(
                        "the guest shut down ({reason:?}) before its harness reached {}: an \
                         oops or panic outside the harness? See its console",
                        self.spec.start_sym
                    )))
                }
                _ => dom.resume()?,
            }
        }
        dom.remove_breakpoint(start)?;
        Ok(None)
    }

    /// At the start point: the end marker, the kernel's and the modules'
    /// symbols, the covered code read from the guest.
    fn kernel_setup(&mut self, dom: &mut Domain, k: &KernelTarget) -> Result<()> {
        self.end_marker = match k.marker {
            Marker::Cpuid(leaf) => {
                dom.set_cpuid_marker(Some(leaf))?;
                Some(leaf)
            }
            Marker::Symbols => None,
        };
        // The symbol route has loaded them on the way to the start point.
        let loaded = dom.kernel_info().is_some_and(|i| {
            k.modules.iter().all(|m| {
                let name = xenprobe::vmi::kernel::module_name(m);
                i.modules.iter().any(|l| l.name == name)
            })
        });
        let info = match (loaded, dom.kernel_info()) {
            (true, Some(i)) => i.clone(),
            _ => dom.load_kernel_symbols(&xenprobe::vmi::KernelSymbols {
                kernel: k.symbols.clone(),
                modules: k.modules.clone(),
            })?,
        };
        tracing::info!(
            slide = format_args!("{:#x}", info.slide),
            from = info.slide_from,
            banner = %info.banner,
            modules = info.modules.len(),
            "kernel symbols"
        );
        self.funcs = kernel::functions_in_guest(dom, &self.spec.cover)?;
        self.derive_code()?;
        Ok(())
    }

    /// Plants the end point, the sinks, the coverage and the comparison
    /// breakpoints.
    fn plant(&mut self, dom: &mut Domain) -> Result<()> {
        self.roles.clear();
        if self.end_marker.is_none() {
            let end = dom.add_breakpoint_at(&self.spec.end_sym)?;
            self.roles.insert(end, Role::End);
        }
        if self.spec.kernel.is_some() {
            let mut planted = Vec::new();
            for &name in xenprobe::vmi::kernel::CRASH_FUNCTIONS {
                let (Some(addr), Some(kind)) =
                    (dom.symbols()?.lookup(name), kernel::sink_kind(name))
                else {
                    continue;
                };
                match dom.add_breakpoint(addr) {
                    Ok(id) => {
                        self.roles.insert(id, Role::KernelSink(name, kind));
                        planted.push(name);
                    }
                    // Two names of one function (an alias): one breakpoint.
                    Err(xenprobe::vmi::Error::Breakpoint(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            tracing::info!(?planted, "kernel crash sinks");
        }
        for (i, sink) in self.spec.sinks.iter().enumerate() {
            let id = dom.add_breakpoint_at(sink)?;
            self.roles.insert(id, Role::Sink(i));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if self.covered.contains(&i) {
                continue;
            }
            match dom.add_breakpoint(b.addr) {
                Ok(id) => {
                    self.roles.insert(id, Role::Cover(i));
                }
                // Blocks that are also the end point or a sink are covered by those.
                Err(xenprobe::vmi::Error::Breakpoint(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Comparison sites: planted (journalled) once and disabled, so that a
        // traced run only toggles bytes. A site that starts a block shares the
        // coverage breakpoint, which becomes the site's once it is hit.
        self.cmp_bps.clear();
        for site in &self.cmp_sites {
            match dom.add_breakpoint(site.addr) {
                Ok(id) => {
                    dom.disable_breakpoint(id)?;
                    self.roles.insert(id, Role::Cmp);
                    self.cmp_bps.push(id);
                }
                Err(xenprobe::vmi::Error::Breakpoint(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Finds the input buffer (`buffer`: the one a kernel harness's marker
    /// named, else the input symbol) and the length variable, and maps
    /// their pages.
    fn find_input(&mut self, dom: &mut Domain, buffer: Option<(u64, usize)>) -> Result<()> {
        let syms = dom.symbols()?;
        let len = syms.get(&self.spec.len_sym).cloned();
        self.marker_buffer = buffer.is_some();
        let (addr, size) = match (buffer, syms.get(&self.spec.input_sym)) {
            (Some(b), _) => b,
            (None, Some(s)) => (s.addr, s.size as usize),
            (None, None) => {
                return Err(SessionError::Setup(format!(
                    "no symbol {} in {}",
                    self.spec.input_sym,
                    self.code_source()
                )))
            }
        };
        self.len_va = match len {
            Some(l) => {
                self.len_width =
                    crate::abi::len_width(&self.spec.len_sym, l.size, self.spec.len_size)
                        .map_err(SessionError::Setup)?;
                Some(l.addr)
            }
            // A kernel harness without a length variable reads its whole buffer.
            None if self.spec.kernel.is_some() => None,
            None => {
                return Err(SessionError::Setup(format!(
                    "no symbol {} in {}",
                    self.spec.len_sym,
                    self.code_source()
                )))
            }
        };
        self.input_va = addr;
        self.input_cap = match self.len_va {
            Some(_) => size.min(crate::abi::len_max(self.len_width)),
            None => size,
        };
        self.input_win = Some(dom.window(self.input_va, self.input_cap)?);
        self.len_win = match self.len_va {
            Some(va) => Some(dom.window(va, self.len_width)?),
            None => None,
        };
        Ok(())
    }

    /// What the last restore (full or registers only) did.
    pub fn last_restore(&self) -> Option<xenprobe::vmi::RestoreStats> {
        self.last_restore
    }

    /// Changes the restore options, the persistent interval and the
    /// busy-poll bound; the next run starts from a full restore.
    pub fn set_mode(&mut self, restore: RestoreOptions, persistent: u32, spin: Duration) {
        self.spec.restore = restore;
        self.spec.persistent = persistent.max(1);
        self.spec.event_spin = spin;
        if let Some(d) = self.dom.as_mut() {
            d.set_restore_options(restore);
            d.set_event_spin(spin);
        }
        self.reset_next = true;
    }

    /// Brings the guest to the snapshot before a run, fully or (persistent
    /// mode) registers only. Returns whether memory is at the snapshot.
    /// Timed runs count its time (every restore of the run, a stability
    /// re-run's included) as `restore`.
    fn prepare(&mut self) -> Result<bool> {
        let t0 = self.clock();
        let (full, log_dirty) = self.reset_to_snapshot()?;
        self.add_time(|t| &mut t.restore, t0);
        if self.timed {
            self.timings.log_dirty += log_dirty;
        }
        Ok(full)
    }

    /// [`Session::prepare`]'s work; also returns the time of its log-dirty
    /// call (zero without one).
    fn reset_to_snapshot(&mut self) -> Result<(bool, Duration)> {
        if self.fresh {
            self.fresh = false;
            self.since_reset = 0;
            self.reset_next = false;
            return Ok((true, Duration::ZERO));
        }
        let full = self.reset_next || self.since_reset + 1 >= self.spec.persistent.max(1);
        let st = if full {
            let st = self.dom()?.restore_snapshot()?;
            self.counters.full_restores += 1;
            self.counters.frames_restored += st.restored as u64;
            self.since_reset = 0;
            self.reset_next = false;
            st
        } else {
            let st = self.dom()?.restore_registers()?;
            self.counters.register_resets += 1;
            self.since_reset += 1;
            st
        };
        if st.regs_in_reply {
            self.counters.regs_in_reply += 1;
        }
        self.last_restore = Some(st);
        Ok((full, st.log_dirty))
    }

    /// Writes a run's input and its length.
    fn write_input(&mut self, data: &[u8]) -> Result<()> {
        let (Some(dom), Some(input)) = (self.dom.as_mut(), self.input_win.as_ref()) else {
            return Err(SessionError::Setup("the input buffer is not set up".into()));
        };
        dom.write_window(input, 0, data)?;
        if let Some(len) = &self.len_win {
            dom.write_window(len, 0, &crate::abi::len_bytes(data.len(), self.len_width))?;
        }
        Ok(())
    }

    /// The console ring the guest writes to (the ABI's
    /// `xenprobe_console_ring` variable holds its address), if there is one.
    fn map_console(&self, dom: &mut Domain) -> Result<Option<Window>> {
        let sym = dom
            .symbols()?
            .iter()
            .find(|s| s.name == target::CONSOLE_RING)
            .map(|s| s.addr);
        let Some(sym) = sym else { return Ok(None) };
        let ring = dom.read_u64(sym)?;
        if ring == 0 {
            return Ok(None);
        }
        Ok(Some(dom.window(ring, target::console::OUT_PROD + 4)?))
    }

    /// Marks everything the guest printed as read (`out_cons = out_prod`):
    /// xenconsoled rate-limits a domain that notifies it often, and a full
    /// ring makes the guest wait, which would look like a hang.
    fn drain_console(&mut self) -> Result<()> {
        if let (Some(dom), Some(ring)) = (self.dom.as_mut(), self.console.as_ref()) {
            // OUT_CONS, then OUT_PROD.
            let mut idx = [0u8; 8];
            dom.read_window(ring, target::console::OUT_CONS, &mut idx)?;
            let (cons, prod) = idx.split_at(4);
            // Usually equal (the snapshot's ring was read to the end): no
            // write, so nothing for the next restore to put back.
            if prod != cons {
                dom.write_window(ring, target::console::OUT_CONS, prod)?;
            }
        }
        Ok(())
    }

    /// Runs one input from the snapshot (see [`TargetSpec::persistent`]).
    /// Returns the outcome and the indices of blocks reached for the first
    /// time. In persistent mode a crash or hang is replayed from a full
    /// restore; if it does not happen again it is counted as unstable
    /// ([`Counters::unstable`]) and reported as [`Outcome::Ok`].
    pub fn run(&mut self, input: &[u8]) -> Result<(Outcome, Vec<usize>)> {
        let encoded = crate::structured::guest_bytes(self.spec.input_format.as_ref(), input);
        let input: &[u8] = &encoded;
        self.timed = true;
        self.runs += 1;
        let clean = self.prepare()?;
        let (outcome, mut blocks) = self.run_prepared(input)?;
        if clean && (!blocks.is_empty() || self.runs % STABILITY_SAMPLE == 0) {
            self.check_stability(input, &outcome)?;
        }
        if !matches!(outcome, Outcome::Ok) || !blocks.is_empty() {
            self.reset_next = true;
        }
        self.collect_notices();
        if clean || matches!(outcome, Outcome::Ok) {
            return Ok((outcome, blocks));
        }
        self.counters.replays += 1;
        self.prepare()?;
        let (again, more) = self.run_prepared(input)?;
        blocks.extend(more);
        self.reset_next = true;
        let same = matches!(
            (&outcome, &again),
            (Outcome::Crash(_), Outcome::Crash(_)) | (Outcome::Hang(_), Outcome::Hang(_))
        );
        if same {
            Ok((again, blocks))
        } else {
            self.counters.unstable += 1;
            tracing::info!("a persistent-mode crash did not replay from the snapshot: unstable");
            Ok((Outcome::Ok, blocks))
        }
    }

    /// Where a run ended, for comparing two runs of one input: the outcome
    /// (its crash site) and vCPU 0's general registers, RIP and RFLAGS
    /// there. A deterministic target ends both runs in the same state.
    fn end_state(&mut self, outcome: &Outcome) -> Result<(String, [u64; 18])> {
        let what = match outcome {
            Outcome::Ok => "end".to_string(),
            Outcome::Crash(r) => format!("crash {}", r.site),
            Outcome::Hang(r) => format!("hang {}", r.site),
        };
        let r = self.dom()?.regs(0)?;
        let mut regs = [0u64; 18];
        regs[..16].copy_from_slice(&r.gprs());
        regs[16] = r.rip;
        regs[17] = r.rflags;
        Ok((what, regs))
    }

    /// Runs `input` once more from the snapshot and counts whether it ends
    /// where the run just made ended ([`Session::stability`]). The guest is
    /// stopped at the end of that run; hangs are not compared (their stop
    /// is wherever the timeout found the vCPU).
    fn check_stability(&mut self, input: &[u8], outcome: &Outcome) -> Result<()> {
        if matches!(outcome, Outcome::Hang(_)) || self.dom.as_ref().is_none_or(|d| !d.is_stopped())
        {
            return Ok(());
        }
        let first = self.end_state(outcome)?;
        self.reset_next = true;
        self.prepare()?;
        let (again, _) = self.run_prepared(input)?;
        let second = self.end_state(&again)?;
        self.stability.0 += 1;
        if first == second {
            self.stability.1 += 1;
        } else {
            tracing::info!(?first, ?second, "an input ended differently when run again");
        }
        self.reset_next = true;
        Ok(())
    }

    /// Runs checked for determinism (each input that found new coverage and
    /// one run in [`STABILITY_SAMPLE`], run twice from the snapshot) and how
    /// many ended both times in the same state.
    pub fn stability(&self) -> (u64, u64) {
        self.stability
    }

    /// Runs one input from a full restore with a breakpoint on every
    /// comparison site, and also returns the operand values at each site's
    /// first hit. Costs one event per site reached; the next run starts from
    /// a full restore again.
    pub fn run_traced(&mut self, input: &[u8]) -> Result<(Outcome, Vec<usize>, Vec<CmpValues>)> {
        let encoded = crate::structured::guest_bytes(self.spec.input_format.as_ref(), input);
        self.timed = false;
        self.runs += 1;
        self.reset_next = true;
        self.prepare()?;
        self.trace = Some(Trace {
            pending: self
                .cmp_sites
                .iter()
                .enumerate()
                .map(|(i, s)| (s.addr, i))
                .collect(),
            log: Vec::new(),
        });
        let run = self
            .set_comparisons(true)
            .and_then(|()| self.run_prepared(&encoded));
        let off = self.set_comparisons(false);
        let log = self.trace.take().map(|t| t.log).unwrap_or_default();
        self.reset_next = true;
        let (outcome, blocks) = run?;
        off?;
        Ok((outcome, blocks, log))
    }

    /// Enables or disables every comparison breakpoint.
    fn set_comparisons(&mut self, on: bool) -> Result<()> {
        let ids = self.cmp_bps.clone();
        let dom = self.dom()?;
        for id in ids {
            if on {
                dom.enable_breakpoint(id)?;
            } else {
                dom.disable_breakpoint(id)?;
            }
        }
        Ok(())
    }

    /// Logs the comparison at `addr` if it is a site not logged yet this run.
    fn log_comparison(&mut self, vcpu: u32, addr: u64) -> Result<()> {
        let Some(i) = self.trace.as_mut().and_then(|t| t.pending.remove(&addr)) else {
            return Ok(());
        };
        let site = self.cmp_sites[i];
        let dom = self.dom()?;
        let regs = dom.regs(vcpu)?;
        let values = cmplog::evaluate(&site, &regs, |va, buf| {
            dom.read_virt_on(vcpu, va, buf).is_ok()
        });
        tracing::debug!(
            site = format_args!("{:#x}", site.addr),
            ?values,
            "comparison"
        );
        if let (Some(v), Some(t)) = (values, self.trace.as_mut()) {
            t.log.push(v);
        }
        Ok(())
    }

    /// Now, on a timed run.
    fn clock(&self) -> Option<xenprobe::xen::Stamp> {
        self.timed.then(xenprobe::xen::Stamp::now)
    }

    /// Adds the time since `since` (a timed run) to `phase`.
    fn add_time(
        &mut self,
        phase: fn(&mut RunTimings) -> &mut Duration,
        since: Option<xenprobe::xen::Stamp>,
    ) {
        if let Some(t) = since {
            *phase(&mut self.timings) += t.elapsed();
        }
    }

    fn run_prepared(&mut self, input: &[u8]) -> Result<(Outcome, Vec<usize>)> {
        let t1 = self.clock();
        let input = &input[..input.len().min(self.input_cap)];
        self.write_input(input)?;
        self.drain_console()?;
        self.add_time(|t| &mut t.input, t1);
        let t2 = self.clock();
        let result = self.run_to_stop();
        self.add_time(|t| &mut t.run, t2);
        let c = &mut self.counters;
        c.guest_runs += 1;
        c.input_bytes += input.len() as u64;
        match &result {
            Ok((Outcome::Crash(_), _)) => c.crashed += 1,
            Ok((Outcome::Hang(_), _)) => c.hung += 1,
            _ => {}
        }
        result
    }

    /// Proves the reset exact: resets the guest the way the next run would
    /// (a full restore, registers as configured), lets it run into a
    /// temporary breakpoint at the start point (the snapshot's RIP) and
    /// compares memory and vCPU 0 there with the snapshot.
    pub fn check_reset(&mut self) -> Result<SnapshotCheck> {
        let start = format!("the start point ({:#x})", self.start_rip);
        let rip = self.start_rip;
        self.reset_next = true;
        // Planted after the reset: the guest's last run may have left page
        // tables that do not map the start point (or nothing at all).
        self.prepare()?;
        let id = self.dom()?.add_breakpoint(rip)?;
        let result = (|| -> Result<SnapshotCheck> {
            let wait = self.spec.timeout.max(Duration::from_secs(5));
            let dom = self.dom()?;
            dom.resume()?;
            match dom.wait_event(wait)? {
                Event::Breakpoint { id: hit, .. } if hit == id => {}
                other => {
                    return Err(SessionError::Setup(format!(
                        "after a reset the guest did not stop at {start}: {other:?}"
                    )))
                }
            }
            Ok(dom.check_snapshot()?)
        })();
        let removed = self.dom()?.remove_breakpoint(id);
        self.reset_next = true;
        self.collect_notices();
        let check = result?;
        removed?;
        Ok(check)
    }

    fn run_to_stop(&mut self) -> Result<(Outcome, Vec<usize>)> {
        let timeout = self.spec.timeout;
        let mut new_blocks = Vec::new();
        let t = self.clock();
        self.dom()?.resume()?;
        self.add_time(|t| &mut t.resume, t);
        loop {
            let t = self.clock();
            let dom = self.dom()?;
            let waited = dom.time_waiting();
            let ev = dom.wait_event(timeout);
            let guest = dom.time_waiting().saturating_sub(waited);
            let ev = ev?;
            self.add_time(|t| &mut t.wait, t);
            if self.timed {
                self.timings.guest += guest;
            }
            tracing::trace!(?ev, "event");
            match ev {
                Event::Breakpoint { id, vcpu, addr, .. } => {
                    if self.trace.is_some() {
                        self.log_comparison(vcpu, addr)?;
                    }
                    match self.roles.get(&id) {
                        Some(Role::End) => return Ok((Outcome::Ok, new_blocks)),
                        Some(&Role::Sink(i)) => {
                            let sink = self.spec.sinks[i].clone();
                            let r = self.crash_report(|d, s| {
                                report::sink_report(d, s, vcpu, addr, &sink)
                            })?;
                            return Ok((Outcome::Crash(r), new_blocks));
                        }
                        Some(&Role::KernelSink(name, kind)) => {
                            let r = self.crash_report(|d, s| {
                                kernel::kernel_report(d, s, vcpu, name, kind)
                            })?;
                            return Ok((Outcome::Crash(r), new_blocks));
                        }
                        Some(&Role::Cover(i)) => {
                            self.covered.insert(i);
                            new_blocks.push(i);
                            // Removed from the live guest; the snapshot holds no
                            // breakpoint bytes and restores re-plant only planted ones.
                            if self
                                .cmp_sites
                                .binary_search_by_key(&addr, |s| s.addr)
                                .is_ok()
                            {
                                // Kept, disabled, as the comparison site's.
                                self.roles.insert(id, Role::Cmp);
                                self.cmp_bps.push(id);
                                self.dom()?.disable_breakpoint(id)?;
                            } else {
                                self.roles.remove(&id);
                                self.dom()?.remove_breakpoint(id)?;
                            }
                            self.dom()?.resume()?;
                        }
                        Some(Role::Cmp) => {
                            // Logged at its first hit: off for the rest of the run.
                            let dom = self.dom()?;
                            dom.disable_breakpoint(id)?;
                            dom.resume()?;
                        }
                        None => self.dom()?.resume()?,
                    }
                }
                Event::Cpuid { leaf, .. } if Some(leaf) == self.end_marker => {
                    return Ok((Outcome::Ok, new_blocks))
                }
                Event::Step { .. } | Event::Watchpoint { .. } | Event::Cpuid { .. } => {
                    self.dom()?.resume()?
                }
                Event::Debug { vcpu, rip, detail } => {
                    let r = self.crash_report(|d, s| {
                        report::report_at(d, s, "debug-trap", vcpu, rip, detail)
                    })?;
                    return Ok((Outcome::Crash(r), new_blocks));
                }
                Event::Timeout => {
                    let dom = self.dom()?;
                    dom.pause()?;
                    let rip = dom.regs(0)?.rip;
                    let note = self.overwritten_exits();
                    let mut r = self.crash_report(|d, s| {
                        report::report_at(d, s, "hang", 0, rip, String::new())
                    })?;
                    r.message = note.trim_start_matches("; ").to_string();
                    return Ok((Outcome::Hang(r), new_blocks));
                }
                Event::Shutdown { reason } => {
                    let kind = match reason {
                        ShutdownReason::Reboot => "triple-fault",
                        ShutdownReason::Crash => "crashed",
                        ShutdownReason::Poweroff => "exited",
                        _ => "shutdown",
                    };
                    let mut message = format!("the domain shut down ({reason:?})");
                    // A domain the toolstack keeps is taken back in place and
                    // restored from the snapshot by the next run; else booted anew.
                    let cfg = std::fs::read_to_string(&self.spec.cfg).unwrap_or_default();
                    let undone = if kept_after(&cfg, reason) {
                        self.dom()?.undo_shutdown()
                    } else {
                        Err(xenprobe::vmi::Error::State(format!(
                            "{} does not keep the domain after {reason:?}",
                            self.spec.cfg.display()
                        )))
                    };
                    match undone {
                        Ok(_) => {
                            self.revivals += 1;
                            self.reset_next = true;
                            message += &self.overwritten_exits();
                        }
                        Err(e) => {
                            tracing::debug!("booting the guest again: {e}");
                            self.restart()?;
                        }
                    }
                    let r = CrashReport {
                        kind: kind.into(),
                        site: kind.into(),
                        rip: 0,
                        fault_address: None,
                        message,
                        backtrace: Vec::new(),
                    };
                    return Ok((Outcome::Crash(r), new_blocks));
                }
            }
        }
    }

    /// Recreates the guest after an unexpected shutdown of a domain the
    /// toolstack did not keep (coverage breakpoints already hit stay removed).
    fn restart(&mut self) -> Result<()> {
        self.restarts += 1;
        self.input_win = None;
        self.len_win = None;
        self.console = None;
        if let Some(d) = self.dom.take() {
            let _ = d.detach();
        }
        self.boot()
    }

    /// Ends the session and leaves the guest clean: memory and vCPUs back at
    /// the start point (the snapshot's input), every breakpoint removed,
    /// vm_event and log-dirty off, the domain running.
    pub fn finish(mut self) -> Result<()> {
        let fresh = self.fresh;
        self.console = None;
        if let Some(mut dom) = self.dom.take() {
            if !dom.is_stopped() {
                dom.pause()?;
            }
            if !fresh {
                dom.restore_snapshot()?;
            }
            dom.drop_snapshot();
            match &self.spec.kernel {
                // A booted Linux guest stays at its start point, paused, for
                // the next session to take over.
                Some(k) => {
                    let parked = kernel::Parked {
                        domid: dom.id(),
                        start_rip: self.start_rip,
                        buffer: Some((self.input_va, self.input_cap))
                            .filter(|_| self.marker_buffer),
                        fingerprint: k.fingerprint(&self.spec.cfg),
                    };
                    dom.detach_paused()?;
                    if let Err(e) = parked.save(&self.xen.settings().state_dir(), &self.name) {
                        tracing::warn!("recording the parked guest: {e}");
                    }
                }
                None => dom.detach()?,
            }
        }
        Ok(())
    }

    /// The guest's image path.
    pub fn image(&self) -> &Path {
        &self.spec.image
    }

    /// Hands the attached guest over as it is (stopped where the last run
    /// ended, snapshot and breakpoints kept), releasing the session's own
    /// mappings: for a debugger that takes over after a run.
    pub fn into_domain(mut self) -> Option<Domain> {
        self.input_win = None;
        self.len_win = None;
        self.console = None;
        let mut dom = self.dom.take()?;
        // The comparison sites' breakpoints are the fuzzer's business.
        for id in self.cmp_bps.drain(..) {
            if let Err(e) = dom.remove_breakpoint(id) {
                tracing::warn!("removing a comparison breakpoint: {e}");
            }
        }
        Some(dom)
    }
}

/// `symbol+0xoff` of an address, or the bare address.
fn site_name(dom: &Domain, addr: u64) -> String {
    dom.symbols()
        .ok()
        .and_then(|s| s.symbolize(addr))
        .map(|(s, off)| format!("{}+{off:#x}", s.name))
        .unwrap_or_else(|| format!("{addr:#x}"))
}

/// A [`xenprobe::vmi::Notice`] in words, the breakpoint named by symbol and
/// by what it is to the session.
fn describe_notice(
    dom: &Domain,
    roles: &FxHashMap<BreakpointId, Role>,
    n: &xenprobe::vmi::Notice,
) -> String {
    use xenprobe::vmi::Notice;
    let what = |id: &BreakpointId| match roles.get(id) {
        Some(Role::End) => "the end point",
        Some(Role::Sink(_) | Role::KernelSink(..)) => "a crash sink",
        Some(Role::Cover(_)) => "a coverage block",
        Some(Role::Cmp) => "a comparison site",
        None => "a breakpoint",
    };
    match n {
        Notice::Overwritten { id, addr, byte } => format!(
            "the guest overwrote xenprobe's breakpoint at {} ({}) with {byte:#04x}: not seen \
             while the byte was the guest's; the restore planted it again",
            site_name(dom, *addr),
            what(id)
        ),
        Notice::CopyRepaired { id, addr, at, .. } => format!(
            "the guest ran a copy of the code at {} ({}, its breakpoint byte included) at \
             {at:#x}: the copy got the original byte back; not counted as a hit",
            site_name(dom, *addr),
            what(id)
        ),
        Notice::VcpuReset { vcpu } => {
            format!("the guest brought up vCPU {vcpu} during a run: the restore put it down again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_preserved_domain_is_taken_back() {
        let cfg =
            "name=\"g\"\non_poweroff=\"destroy\"\non_reboot = \"preserve\"\non_crash='preserve'\n";
        assert!(kept_after(cfg, ShutdownReason::Reboot));
        assert!(kept_after(cfg, ShutdownReason::Crash));
        assert!(!kept_after(cfg, ShutdownReason::Poweroff));
        assert!(
            !kept_after("name=\"g\"\n", ShutdownReason::Reboot),
            "xl restarts it by default"
        );
        assert!(!kept_after(cfg, ShutdownReason::Destroyed));
    }

    #[test]
    fn reads_the_domain_name() {
        let cfg = "type=\"pvh\"\nname = \"tlv-pvh\"\nmemory=32\n";
        assert_eq!(cfg_name(cfg).as_deref(), Some("tlv-pvh"));
        assert_eq!(cfg_name("memory=1"), None);
    }
}
