//! A test's guest: the domain, attached, with helpers for the usual steps and
//! assertions.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::guest::GuestDomain;
use super::Mode;
use crate::vmi::{Domain, Event, Registers, ShutdownReason, Xen};

/// How long helpers wait for the guest by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// `SCHEDOP_shutdown`, the `sched_op` command a guest ends with.
const SCHEDOP_SHUTDOWN: u64 = 2;
/// `__HYPERVISOR_sched_op`: its stub is at `hypercall_page + 29 * 32`.
const HYPERCALL_SCHED_OP: u64 = 29;

/// A guest booted for one test (paused before its first instruction, or at
/// the test's start symbol), attached.
pub struct Session {
    // Field order matters: the engine detaches before the domain is destroyed.
    pub(crate) dom: Domain,
    pub(crate) guest: GuestDomain,
    mode: Mode,
    /// Console text from before the session's start point.
    pub(crate) console_prefix: String,
    /// Where this session's own output starts in the console log.
    pub(crate) console_from: u64,
    /// Hold the guest at its shutdown hypercall instead of letting it end
    /// (pooled sessions: the domain is restored for the next test).
    pub(crate) hold_ends: bool,
    /// How the guest ended (or was held at its end).
    pub(crate) ended: Option<ShutdownReason>,
    /// The test replaced the domain's snapshot (property tests).
    pub(crate) snapshot_replaced: bool,
    /// Set by the runner's watchdog when the test overran its timeout: from
    /// then on every call fails (register reads may be served from a cache
    /// and memory through a mapping that outlives the destroyed domain, so
    /// the engine alone would not notice).
    pub(crate) overrun: Arc<AtomicBool>,
}

impl Session {
    /// Fails once the runner's watchdog has ended the test.
    fn alive(&self) -> Result<()> {
        if self.overrun.load(Ordering::SeqCst) {
            bail!("the test overran its timeout: its guest was destroyed");
        }
        Ok(())
    }

    /// Attaches to `guest` and loads its symbols.
    pub(crate) fn attach(guest: GuestDomain, mode: Mode) -> Result<Self> {
        let settings = crate::vmi::SettingsArgs::from_env().map_err(anyhow::Error::msg)?;
        let xen = Xen::open()
            .context("opening Xen's interfaces")?
            .with_settings(settings);
        let mut dom = Domain::attach(&xen, guest.name.as_str())
            .with_context(|| format!("attaching to {}", guest.name))?;
        dom.load_symbols(guest.image())
            .with_context(|| format!("loading symbols of {}", guest.image().display()))?;
        // Take over the pause `xl create -p` left: stopped by us, not by xl.
        dom.pause()?;
        guest.unpause_from_toolstack()?;
        Ok(Session {
            dom,
            guest,
            mode,
            console_prefix: String::new(),
            console_from: 0,
            hold_ends: false,
            ended: None,
            snapshot_replaced: false,
            overrun: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The engine's handle, for everything the helpers do not cover.
    pub fn dom(&mut self) -> &mut Domain {
        &mut self.dom
    }

    /// The mode this instance of the test runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.guest.name
    }

    /// The address of `symbol`.
    pub fn symbol(&self, symbol: &str) -> Result<u64> {
        Ok(self.dom.symbol(symbol)?)
    }

    /// Runs until `symbol` is reached (a temporary breakpoint) and returns the
    /// registers there; the guest stays stopped.
    pub fn run_to(&mut self, symbol: &str) -> Result<Registers> {
        self.alive()?;
        let addr = self.dom.symbol(symbol)?;
        let existing = self
            .dom
            .breakpoints()
            .iter()
            .find(|b| b.addr == addr)
            .map(|b| b.id);
        let id = match existing {
            Some(id) => id,
            None => self.dom.add_breakpoint(addr)?,
        };
        let result =
            self.wait_for(|e| matches!(e, Event::Breakpoint { id: hit, .. } if *hit == id));
        if existing.is_none() {
            self.dom.remove_breakpoint(id)?;
        }
        let vcpu = match result? {
            Event::Breakpoint { vcpu, .. } => vcpu,
            other => bail!("expected {symbol}, got {other:?}"),
        };
        Ok(self.dom.regs(vcpu)?)
    }

    /// Resumes and waits for the next event (default timeout).
    pub fn cont(&mut self) -> Result<Event> {
        self.alive()?;
        Ok(self.dom.cont(DEFAULT_WAIT)?)
    }

    /// Resumes until `want` accepts an event; any other stop is an error.
    fn wait_for(&mut self, want: impl Fn(&Event) -> bool) -> Result<Event> {
        let e = self.dom.cont(DEFAULT_WAIT)?;
        if want(&e) {
            return Ok(e);
        }
        bail!("the guest stopped for {e:?}")
    }

    /// Single-steps vCPU 0; returns the new RIP.
    pub fn step(&mut self) -> Result<u64> {
        self.alive()?;
        match self.dom.step(0)? {
            Event::Step { rip, .. } => Ok(rip),
            other => bail!("step ended with {other:?}"),
        }
    }

    /// The registers of vCPU 0.
    pub fn regs(&self) -> Result<Registers> {
        self.alive()?;
        Ok(self.dom.regs(0)?)
    }

    /// Replaces the registers of vCPU 0.
    pub fn set_regs(&mut self, regs: &Registers) -> Result<()> {
        self.alive()?;
        Ok(self.dom.set_regs(0, regs)?)
    }

    /// Reads `len` bytes at `symbol`.
    pub fn read_bytes(&mut self, symbol: &str, len: usize) -> Result<Vec<u8>> {
        self.alive()?;
        let addr = self.dom.symbol(symbol)?;
        let mut buf = vec![0u8; len];
        self.dom.read_virt(addr, &mut buf)?;
        Ok(buf)
    }

    /// Reads the variable `symbol` as a `T` (a plain integer or byte array).
    pub fn read_var<T: Plain>(&mut self, symbol: &str) -> Result<T> {
        self.alive()?;
        self.check_size::<T>(symbol)?;
        let bytes = self.read_bytes(symbol, std::mem::size_of::<T>())?;
        Ok(T::from_le(&bytes))
    }

    /// Writes `value` into the variable `symbol`.
    pub fn write_var<T: Plain>(&mut self, symbol: &str, value: T) -> Result<()> {
        self.alive()?;
        self.check_size::<T>(symbol)?;
        let addr = self.dom.symbol(symbol)?;
        self.dom.write_virt(addr, &value.to_le())?;
        Ok(())
    }

    fn check_size<T>(&self, symbol: &str) -> Result<()> {
        let size = self.dom.symbols()?.get(symbol).map(|s| s.size).unwrap_or(0);
        let want = std::mem::size_of::<T>() as u64;
        ensure!(
            size == 0 || size == want,
            "{symbol} is {size} bytes, not {want} ({})",
            std::any::type_name::<T>()
        );
        Ok(())
    }

    /// The guest's console output since it booted.
    pub fn console(&self) -> String {
        let mut c = self.console_prefix.clone();
        c.push_str(&self.guest.console_from(self.console_from));
        c
    }

    /// Waits (the guest running) until the console contains `pattern`.
    pub fn wait_console(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.alive()?;
        if self.dom.is_stopped() {
            self.dom.resume()?;
        }
        let t0 = Instant::now();
        loop {
            let c = self.console();
            if c.contains(pattern) {
                return Ok(c);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{pattern:?} did not appear on the console within {:?}",
                    timeout
                );
            }
            match self.dom.info() {
                Ok(i) if i.shutdown || i.dying => {
                    bail!("the guest ended before {pattern:?} appeared on the console")
                }
                Ok(_) => {}
                Err(e) => bail!("the guest is gone before {pattern:?} appeared: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets the guest run to its end and checks it powered off with `code`
    /// (the runtime prints `EXIT <code>` before powering off).
    pub fn expect_exit(&mut self, code: i32) -> Result<()> {
        self.alive()?;
        match self.run_to_shutdown()? {
            // With on_poweroff="destroy" the toolstack may destroy the domain
            // before we see it powered off: the console tells the exit code.
            ShutdownReason::Poweroff | ShutdownReason::Destroyed => {}
            other => {
                bail!("expected a poweroff with exit code {code}, the guest ended by {other:?}")
            }
        }
        let want = format!("EXIT {code}");
        let console = self.wait_console_settled(&want)?;
        ensure!(
            console.lines().any(|l| l.trim() == want),
            "the console does not say {want:?}"
        );
        Ok(())
    }

    /// Lets the guest run to its end and checks it crashed with `kind`
    /// (`panic`, `page-fault`, ...: the runtime's `CRASH <kind>` line).
    pub fn expect_crash(&mut self, kind: &str) -> Result<String> {
        self.alive()?;
        let reason = self.run_to_shutdown()?;
        ensure!(
            matches!(reason, ShutdownReason::Crash | ShutdownReason::Reboot),
            "expected a crash ({kind}), the guest ended by {reason:?}"
        );
        let want = format!("CRASH {kind}");
        self.wait_console_settled(&want)
    }

    /// Runs the guest until it ends. A pooled session stops it at its
    /// shutdown hypercall (see [`Session::end_points`]) so that the domain can
    /// be restored for the next test; otherwise the domain really shuts down.
    fn run_to_shutdown(&mut self) -> Result<ShutdownReason> {
        if let Some(r) = self.ended {
            return Ok(r);
        }
        let reason = match self.end_points() {
            Some(points) if self.hold_ends => self.run_to_held_end(points)?,
            _ => self.run_to_real_end()?,
        };
        self.ended = Some(reason);
        Ok(reason)
    }

    /// `xenprobe_exit`, `xenprobe_crash` and the `sched_op` hypercall stub,
    /// if the guest has them (xenprobe's guest runtime) and breakpoints work.
    fn end_points(&self) -> Option<[u64; 3]> {
        let syms = self.dom.symbols().ok()?;
        self.dom.capabilities().breakpoint_insn().ok()?;
        Some([
            syms.lookup(xenprobe_abi::target::EXIT)?,
            syms.lookup(xenprobe_abi::target::CRASH)?,
            syms.lookup("hypercall_page")? + HYPERCALL_SCHED_OP * 32,
        ])
    }

    /// Runs to the guest's shutdown hypercall and stops there: first to
    /// `xenprobe_exit`/`xenprobe_crash` (the hypercall page is installed by
    /// then), then to `sched_op(SCHEDOP_shutdown, &reason)`.
    fn run_to_held_end(&mut self, [exit, crash, stub]: [u64; 3]) -> Result<ShutdownReason> {
        let t0 = Instant::now();
        let rip = self.dom.regs(0)?.rip;
        let inside = self
            .dom
            .symbols()
            .ok()
            .and_then(|s| s.symbolize(rip))
            .map(|(f, _)| f.addr);
        if !matches!(inside, Some(a) if a == exit || a == crash) {
            let ids = [
                self.dom.add_breakpoint(exit)?,
                self.dom.add_breakpoint(crash)?,
            ];
            let hit = self.cont_until(
                t0,
                |e| matches!(e, Event::Breakpoint { id, .. } if ids.contains(id)),
            );
            for id in ids {
                self.dom.remove_breakpoint(id)?;
            }
            if let Some(reason) = hit? {
                return Ok(reason);
            }
        }
        let id = self
            .dom
            .add_breakpoint_if(stub, |r| r.rdi == SCHEDOP_SHUTDOWN)?;
        let hit = self.cont_until(
            t0,
            |e| matches!(e, Event::Breakpoint { id: h, .. } if *h == id),
        );
        self.dom.remove_breakpoint(id)?;
        if let Some(reason) = hit? {
            return Ok(reason);
        }
        let rsi = self.dom.regs(0)?.rsi;
        let mut code = [0u8; 4];
        self.dom.read_virt(rsi, &mut code)?;
        let reason = match u32::from_le_bytes(code) {
            0 => ShutdownReason::Poweroff,
            1 => ShutdownReason::Reboot,
            2 => ShutdownReason::Suspend,
            3 => ShutdownReason::Crash,
            4 => ShutdownReason::Watchdog,
            5 => ShutdownReason::SoftReset,
            o => ShutdownReason::Other(o),
        };
        tracing::debug!(guest = %self.guest.name, ?reason, "guest held at its shutdown hypercall");
        Ok(reason)
    }

    /// Continues past other stops until `want` accepts an event (`None`) or
    /// the guest really shuts down (`Some(reason)`).
    fn cont_until(
        &mut self,
        t0: Instant,
        want: impl Fn(&Event) -> bool,
    ) -> Result<Option<ShutdownReason>> {
        loop {
            ensure!(
                t0.elapsed() < DEFAULT_WAIT,
                "the guest did not end within {DEFAULT_WAIT:?}"
            );
            let e = self.dom.cont(DEFAULT_WAIT)?;
            tracing::debug!(event = ?e, "waiting for the guest's end");
            match e {
                e if want(&e) => return Ok(None),
                Event::Shutdown { reason } => return Ok(Some(reason)),
                Event::Timeout => bail!("the guest did not end within {DEFAULT_WAIT:?}"),
                // Our own breakpoints on the way: go on.
                Event::Breakpoint { .. } => continue,
                other => bail!("the guest stopped for {other:?} before its end"),
            }
        }
    }

    /// Lets the guest run until the domain shuts down.
    fn run_to_real_end(&mut self) -> Result<ShutdownReason> {
        match self.cont_until(Instant::now(), |_| false)? {
            Some(reason) => Ok(reason),
            None => bail!("the guest did not end"),
        }
    }

    /// The console once `want` is in it (xenconsoled writes the log a few
    /// milliseconds after the guest).
    fn wait_console_settled(&self, want: &str) -> Result<String> {
        let t0 = Instant::now();
        loop {
            let c = self.console();
            if c.contains(want) {
                return Ok(c);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!(
                    "the console does not say {want:?}; it ends with:\n{}",
                    last_lines(&c, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Registers, code around RIP with symbols, and the last console lines:
    /// what a failure message shows.
    pub fn diagnostics(&mut self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "guest {} ({})", self.guest.name, self.mode.name());
        if !self.dom.is_stopped() {
            let _ = self.dom.pause();
        }
        match self.dom.regs(0) {
            Ok(r) => {
                let _ = writeln!(out, "registers (vCPU 0):\n{}", format_regs(&r));
                if let Ok(syms) = self.dom.symbols() {
                    if let Some((s, off)) = syms.symbolize(r.rip) {
                        let _ = write!(out, "rip {:#x} = {}+{off:#x}", r.rip, s.name);
                        if let Some(l) = syms.line(r.rip) {
                            let _ = write!(out, " at {}:{}", l.file, l.line);
                        }
                        out.push('\n');
                    }
                }
                match self.dom.disassemble(r.rip, 6) {
                    Ok(lines) => {
                        for (addr, _, text) in lines {
                            let mark = if addr == r.rip { "=>" } else { "  " };
                            let _ = writeln!(out, "{mark} {addr:#x}: {text}");
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(out, "(no disassembly: {e})");
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "(no registers: {e})");
            }
        }
        let _ = writeln!(
            out,
            "last console lines:\n{}",
            last_lines(&self.console(), 15)
        );
        out
    }
}

/// Plain values that can be read from and written to guest memory.
pub trait Plain: Sized {
    fn from_le(b: &[u8]) -> Self;
    fn to_le(&self) -> Vec<u8>;
}

macro_rules! plain_int {
    ($($t:ty),*) => {$(
        impl Plain for $t {
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..std::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(a)
            }
            fn to_le(&self) -> Vec<u8> {
                self.to_le_bytes().to_vec()
            }
        }
    )*};
}
plain_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl<const N: usize> Plain for [u8; N] {
    fn from_le(b: &[u8]) -> Self {
        let mut a = [0u8; N];
        a.copy_from_slice(&b[..N]);
        a
    }
    fn to_le(&self) -> Vec<u8> {
        self.to_vec()
    }
}

/// The registers as a stable, readable block (also used for snapshots).
pub fn format_regs(r: &Registers) -> String {
    let g = r.named();
    let mut s = String::new();
    for (i, (n, v)) in g.iter().enumerate() {
        let _ = write!(s, "{n:>6} {v:#018x}");
        s.push(if i % 4 == 3 { '\n' } else { ' ' });
    }
    s.trim_end().to_string()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("guest", &self.guest.name)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Error for an unexpected state, with the guest's diagnostics attached.
pub(crate) fn with_diagnostics(e: anyhow::Error, s: &mut Session) -> anyhow::Error {
    anyhow!("{e:#}\n\n{}", s.diagnostics())
}
