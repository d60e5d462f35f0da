//! `cargo test` against live guests.
//!
//! A guest test is an ordinary Rust function that receives a [`Session`]: a
//! guest booted with `xl` (paused at its first instruction), attached by the
//! VMI engine, with its symbols loaded. A test binary (with `harness = false`)
//! lists its tests and hands them to [`main`], which runs them like libtest
//! does (name filters, `--exact`, `--list`, `--ignored`, `--nocapture`,
//! `--test-threads`, the summary line and the exit status):
//!
//! ```no_run
//! use xenprobe::testing::{GuestTest, Mode, Need, Session};
//!
//! fn counter_reaches_ten(s: &mut Session) -> anyhow::Result<()> {
//!     s.run_to("known_checkpoint")?;
//!     anyhow::ensure!(s.read_var::<u64>("known_counter")? == 10);
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     xenprobe::testing::main(vec![GuestTest::new("counter_reaches_ten", counter_reaches_ten)
//!         .guest("known")
//!         .modes(&Mode::ALL)
//!         .needs(&[Need::Breakpoints])])
//! }
//! ```
//!
//! One test declared for several modes appears once per mode
//! (`counter_reaches_ten::pvh`). A test whose [`Need`]s this hypervisor lacks
//! for a mode is reported as ignored with the tag `[skip]`, and the reason is
//! printed before the run (`skipped (PV breakpoints need a hypervisor built
//! with CONFIG_GDBSX ...): name::pv`).
//! A failure prints the registers, the code around RIP with its symbol and
//! source line, and the guest's last console lines.
//!
//! # Isolation
//!
//! Tests that share a guest image, mode, memory size and start point share a
//! booted guest: the first boots it, stops it at its first instruction (or at
//! [`GuestTest::start_at`]) and takes a snapshot; every later test gets the
//! guest restored to that snapshot (memory and vCPUs, no breakpoints, the
//! console as it was), which it cannot tell from a fresh boot. A pooled
//! guest's end (`xenprobe_exit`, `xenprobe_crash`) is held at its shutdown
//! hypercall, so that [`Session::expect_exit`] and [`Session::expect_crash`]
//! leave a domain that can be restored. After a failure, a panic or a
//! timeout, when the guest really shut down, or where snapshots are not
//! available (PV guests), the domain is destroyed and the next test boots a
//! new one (`XENPROBE_LOG=xenprobe=debug` says why). Each test thread has its
//! own guests. [`GuestTest::fresh_boot`] opts a test out;
//! `XENPROBE_ISOLATION=fresh` boots a new domain for every test.
//!
//! # Snapshot assertions and property tests
//!
//! [`Session::regs_view`], [`Session::memory_view`], [`Session::console_view`]
//! and [`Session::backtrace`] return serializable views, stable from boot to
//! boot, for `insta` snapshots (redactions listed in [`RegsView`]'s module:
//! PV `cr3`, no addresses, crate-relative source paths). [`prop`] runs
//! proptest strategies over registers, memory and fuzz inputs at a stop,
//! restoring a snapshot between cases, and prints a shrunk failure as code.
//!
//! With `XENPROBE_DEBUG=PORT`, a failed test's guest is first served to a
//! debugger where it failed (see [`debug`]).

pub mod debug;
mod guest;
mod pool;
pub mod prop;
mod runner;
mod session;
mod view;

pub use guest::GuestImages;
pub use pool::ISOLATION_ENV;
pub use runner::{main, TIMES_ENV};
pub use session::Session;
pub use view::{crate_relative, demangle, ConsoleView, Frame, MemoryView, RegsView};

use std::time::Duration;

use crate::vmi::caps::Capabilities;

/// The body of a guest test.
pub type TestFn = fn(&mut Session) -> anyhow::Result<()>;

/// How a guest boots (the engine's [`crate::vmi::GuestKind`], one type).
pub use xenprobe_abi::GuestMode as Mode;

/// A capability a test needs; missing ones turn the test into a skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Software breakpoints.
    Breakpoints,
    /// Single-stepping.
    Step,
    /// The vm_event ring.
    VmEvent,
    /// Log-dirty tracking (snapshot restore).
    LogDirty,
    /// VM forks.
    VmForks,
}

impl Need {
    /// `Err(reason)` if `caps` lack this.
    pub fn check(self, caps: &Capabilities) -> Result<(), String> {
        let r = match self {
            Need::Breakpoints => caps.breakpoint_insn().map(|_| ()),
            Need::Step => caps.step_method().map(|_| ()),
            Need::VmEvent => caps.vm_event(),
            Need::LogDirty => caps.log_dirty(),
            Need::VmForks => caps.vm_forks(),
        };
        r.map_err(|e| e.to_string())
    }
}

/// One guest test, declared once for one or more modes.
#[derive(Clone)]
pub struct GuestTest {
    pub(crate) name: String,
    pub(crate) body: TestFn,
    pub(crate) guest: String,
    pub(crate) modes: Vec<Mode>,
    pub(crate) memory_mb: Option<u32>,
    pub(crate) needs: Vec<Need>,
    pub(crate) timeout: Duration,
    pub(crate) ignored: bool,
    pub(crate) fresh_boot: bool,
    pub(crate) start_at: Option<String>,
}

impl GuestTest {
    /// A test called `name` running `body` (defaults: guest "known", every
    /// mode, the image's memory size, no needs, 120 s timeout).
    pub fn new(name: &str, body: TestFn) -> Self {
        GuestTest {
            name: name.to_string(),
            body,
            guest: "known".into(),
            modes: Mode::ALL.to_vec(),
            memory_mb: None,
            needs: vec![],
            timeout: Duration::from_secs(120),
            ignored: false,
            fresh_boot: false,
            start_at: None,
        }
    }

    /// The guest image's name (`target/guests/NAME-MODE`).
    pub fn guest(mut self, name: &str) -> Self {
        self.guest = name.to_string();
        self
    }

    /// The modes to run in (the test appears once per mode).
    pub fn modes(mut self, modes: &[Mode]) -> Self {
        self.modes = modes.to_vec();
        self
    }

    /// Guest memory in MiB (default: the image's config).
    pub fn memory(mut self, mb: u32) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// Capabilities the test needs; without them it is skipped with the reason.
    pub fn needs(mut self, needs: &[Need]) -> Self {
        self.needs = needs.to_vec();
        self
    }

    /// Fail the test (and destroy its guest) after this long.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Run only with `--ignored` / `--include-ignored`.
    pub fn ignore(mut self) -> Self {
        self.ignored = true;
        self
    }

    /// Boot a new domain for this test instead of restoring a pooled guest's
    /// snapshot (for tests that need a genuinely new domain).
    pub fn fresh_boot(mut self) -> Self {
        self.fresh_boot = true;
        self
    }

    /// Start the test at `symbol` (the guest runs there before the test
    /// gets it; pooled guests are snapshotted there) instead of at the
    /// guest's first instruction. Needs breakpoints.
    pub fn start_at(mut self, symbol: &str) -> Self {
        self.start_at = Some(symbol.to_string());
        self
    }
}
