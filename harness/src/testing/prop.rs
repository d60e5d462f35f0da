//! Property tests over guest state (proptest): mutate registers, memory and
//! the fuzz-target input at a stop, run the guest, check a property; the
//! guest is restored to a snapshot of the stop between cases, and a failing
//! case is shrunk to a minimal one, printed as code that reproduces it.
//!
//! ```no_run
//! use proptest::prelude::*;
//! use xenprobe::testing::prop::{self, Mutation, Reg};
//! use xenprobe::testing::Session;
//!
//! fn compute_is_linear(s: &mut Session) -> anyhow::Result<()> {
//!     s.run_to("known_compute")?;
//!     let strategy = prop::regs(&[Reg::Rdi, Reg::Rsi], 0u64..1000);
//!     s.check_property(prop::Config::cases(32), strategy, |s, m| {
//!         s.run_to("known_checkpoint")?;
//!         let (a, b) = (m.reg_value(Reg::Rdi).unwrap_or(0), m.reg_value(Reg::Rsi).unwrap_or(0));
//!         anyhow::ensure!(s.read_var::<u64>("known_result")? == a * 7 + b);
//!         Ok(())
//!     })?;
//!     Ok(())
//! }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context, Result};
use proptest::collection::vec;
use proptest::strategy::{BoxedStrategy, Strategy};
use proptest::test_runner::{RngSeed, TestCaseError, TestError, TestRunner};

use super::Session;
use crate::vmi::Registers;
use xenprobe_abi::target;

/// `XENPROBE_PROPTEST_SEED`: the RNG seed (default fixed, so runs repeat).
pub const SEED_ENV: &str = "XENPROBE_PROPTEST_SEED";
const DEFAULT_SEED: u64 = 0x005e_ed0f_7e57;

/// A general-purpose register (or rip/rflags) a mutation may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Reg {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rflags,
}

impl Reg {
    fn slot(self, r: &mut Registers) -> &mut u64 {
        match self {
            Reg::Rax => &mut r.rax,
            Reg::Rbx => &mut r.rbx,
            Reg::Rcx => &mut r.rcx,
            Reg::Rdx => &mut r.rdx,
            Reg::Rsi => &mut r.rsi,
            Reg::Rdi => &mut r.rdi,
            Reg::Rbp => &mut r.rbp,
            Reg::Rsp => &mut r.rsp,
            Reg::R8 => &mut r.r8,
            Reg::R9 => &mut r.r9,
            Reg::R10 => &mut r.r10,
            Reg::R11 => &mut r.r11,
            Reg::R12 => &mut r.r12,
            Reg::R13 => &mut r.r13,
            Reg::R14 => &mut r.r14,
            Reg::R15 => &mut r.r15,
            Reg::Rip => &mut r.rip,
            Reg::Rflags => &mut r.rflags,
        }
    }
}

/// One change to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set a register of vCPU 0.
    Reg(Reg, u64),
    /// Write bytes at a symbol plus an offset.
    Mem {
        /// The symbol.
        symbol: String,
        /// Offset from it.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The fuzz-target input: `xenprobe_input` and `xenprobe_input_len`.
    Input(Vec<u8>),
}

/// Changes applied at a stop; its `Debug` form is the Rust expression that
/// rebuilds it (what a failure prints).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Mutation {
    /// The changes, in order.
    pub changes: Vec<Change>,
}

impl Mutation {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets register `r` to `value`.
    pub fn reg(mut self, r: Reg, value: u64) -> Self {
        self.changes.push(Change::Reg(r, value));
        self
    }

    /// Writes `bytes` at `symbol + offset`.
    pub fn mem(mut self, symbol: &str, offset: u64, bytes: &[u8]) -> Self {
        self.changes.push(Change::Mem {
            symbol: symbol.to_string(),
            offset,
            bytes: bytes.to_vec(),
        });
        self
    }

    /// Sets the fuzz-target input (`xenprobe_input`, `xenprobe_input_len`).
    pub fn input(mut self, bytes: &[u8]) -> Self {
        self.changes.push(Change::Input(bytes.to_vec()));
        self
    }

    /// Both mutations' changes.
    pub fn and(mut self, other: Mutation) -> Self {
        self.changes.extend(other.changes);
        self
    }

    /// The value this mutation gives `r`, if it sets it.
    pub fn reg_value(&self, r: Reg) -> Option<u64> {
        self.changes.iter().rev().find_map(|c| match c {
            Change::Reg(x, v) if *x == r => Some(*v),
            _ => None,
        })
    }

    /// The input this mutation sets, if any.
    pub fn input_bytes(&self) -> Option<&[u8]> {
        self.changes.iter().rev().find_map(|c| match c {
            Change::Input(b) => Some(b.as_slice()),
            _ => None,
        })
    }

    /// Applies the changes to the stopped guest.
    pub fn apply(&self, s: &mut Session) -> Result<()> {
        let regs: Vec<(Reg, u64)> = self
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Reg(r, v) => Some((*r, *v)),
                _ => None,
            })
            .collect();
        if !regs.is_empty() {
            let mut r = s.regs()?;
            for (reg, v) in regs {
                *reg.slot(&mut r) = v;
            }
            s.set_regs(&r)?;
        }
        for c in &self.changes {
            match c {
                Change::Reg(..) => {}
                Change::Mem {
                    symbol,
                    offset,
                    bytes,
                } => {
                    let addr = s.symbol(symbol)?.wrapping_add(*offset);
                    s.dom().write_virt(addr, bytes)?;
                }
                Change::Input(bytes) => {
                    let cap = s
                        .dom()
                        .symbols()?
                        .get(target::INPUT)
                        .map(|x| x.size)
                        .unwrap_or(0);
                    if cap > 0 && bytes.len() as u64 > cap {
                        bail!("input of {} bytes, the buffer holds {cap}", bytes.len());
                    }
                    let addr = s.symbol(target::INPUT)?;
                    s.dom().write_virt(addr, bytes)?;
                    s.write_var(target::INPUT_LEN, bytes.len() as u64)?;
                }
            }
        }
        Ok(())
    }
}

fn bytes_literal(b: &[u8]) -> String {
    let items: Vec<String> = b.iter().map(|x| format!("{x:#04x}")).collect();
    format!("&[{}]", items.join(", "))
}

impl fmt::Debug for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mutation::new()")?;
        for c in &self.changes {
            match c {
                Change::Reg(r, v) => write!(f, ".reg(Reg::{r:?}, {v:#x})")?,
                Change::Mem {
                    symbol,
                    offset,
                    bytes,
                } => write!(f, ".mem({symbol:?}, {offset:#x}, {})", bytes_literal(bytes))?,
                Change::Input(b) => write!(f, ".input({})", bytes_literal(b))?,
            }
        }
        Ok(())
    }
}

/// Registers `regs` set to values from `values` (each shrinks toward the
/// low end of `values`).
pub fn regs(
    regs: &[Reg],
    values: impl Strategy<Value = u64> + Clone + 'static,
) -> BoxedStrategy<Mutation> {
    let regs = regs.to_vec();
    vec(values, regs.len())
        .prop_map(move |vals| {
            regs.iter()
                .zip(vals)
                .fold(Mutation::new(), |m, (r, v)| m.reg(*r, v))
        })
        .boxed()
}

/// `len` bytes (from `len` = a range of lengths) from `byte` written at `symbol`.
pub fn memory(
    symbol: &str,
    byte: impl Strategy<Value = u8> + 'static,
    len: std::ops::Range<usize>,
) -> BoxedStrategy<Mutation> {
    let symbol = symbol.to_string();
    vec(byte, len)
        .prop_map(move |b| Mutation::new().mem(&symbol, 0, &b))
        .boxed()
}

/// A fuzz-target input of `len` bytes from `byte` (shrinks toward shorter
/// inputs and smaller bytes).
pub fn input(
    byte: impl Strategy<Value = u8> + 'static,
    len: std::ops::Range<usize>,
) -> BoxedStrategy<Mutation> {
    vec(byte, len)
        .prop_map(|b| Mutation::new().input(&b))
        .boxed()
}

/// How many cases to run and how hard to shrink.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Cases to try.
    pub cases: u32,
    /// Shrinking steps at most.
    pub max_shrink_iters: u32,
}

impl Config {
    /// `cases` cases, up to 256 shrinking steps.
    pub fn cases(cases: u32) -> Self {
        Config {
            cases,
            max_shrink_iters: 256,
        }
    }
}

/// What a passing property check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    /// Cases run.
    pub cases: u32,
}

/// A property that failed, shrunk.
#[derive(Debug, Clone)]
pub struct Falsified {
    /// The first failing mutation found.
    pub first: Mutation,
    /// The minimal failing mutation after shrinking.
    pub minimal: Mutation,
    /// Why the minimal case failed.
    pub reason: String,
    /// Runs of the property in all (cases and shrinking steps).
    pub runs: u32,
    /// The seed (`XENPROBE_PROPTEST_SEED`) that repeats the search.
    pub seed: u64,
    /// A test that reproduces the minimal case, to paste into a suite.
    pub reproduction: String,
}

impl fmt::Display for Falsified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "property falsified after {} runs (seed {}); minimal case:\n    {:?}\nfailing with: {}\n(first failing case: {:?})\nreproduce with:\n{}",
            self.runs, self.seed, self.minimal, self.reason, self.first, self.reproduction
        )
    }
}

impl std::error::Error for Falsified {}

impl Session {
    /// Checks `property` on mutations drawn from `strategy`, applied at the
    /// guest's current stop: the stop is snapshotted, and before every case
    /// (and every shrinking step) the guest is restored to it. A failure is
    /// shrunk and returned as a [`Falsified`] error (downcast it to inspect
    /// it) whose message holds the minimal case as code. HVM and PVH guests
    /// (snapshots); the session is not reused by later tests afterwards.
    pub fn check_property(
        &mut self,
        config: Config,
        strategy: impl Strategy<Value = Mutation>,
        property: impl Fn(&mut Session, &Mutation) -> Result<()>,
    ) -> Result<Passed> {
        anyhow::ensure!(
            self.dom.is_stopped(),
            "check_property needs the guest stopped (run_to a symbol first)"
        );
        let stop = self.regs()?.rip;
        self.snapshot_replaced = true;
        self.dom
            .take_snapshot()
            .context("snapshotting the stop for the property's cases")?;
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SEED);
        let mut runner = TestRunner::new(proptest::test_runner::Config {
            cases: config.cases,
            max_shrink_iters: config.max_shrink_iters,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            ..Default::default()
        });
        let this = RefCell::new(&mut *self);
        let runs = RefCell::new(0u32);
        let first: RefCell<Option<Mutation>> = RefCell::new(None);
        let outcome = runner.run(&strategy, |m| {
            *runs.borrow_mut() += 1;
            let mut s = this.borrow_mut();
            let r = run_case(&mut s, &m, &property);
            if r.is_err() && first.borrow().is_none() {
                *first.borrow_mut() = Some(m.clone());
            }
            r.map_err(|e| TestCaseError::fail(format!("{e:#}")))
        });
        // Leave the guest as it was at the stop.
        if self.dom.is_stopped() || self.dom.pause().is_ok() {
            for b in self.dom.breakpoints() {
                let _ = self.dom.remove_breakpoint(b.id);
            }
            let _ = self.dom.restore_snapshot();
        }
        let runs = runs.into_inner();
        match outcome {
            Ok(()) => Ok(Passed {
                cases: config.cases,
            }),
            Err(TestError::Fail(reason, minimal)) => {
                let at = self
                    .dom
                    .symbols()
                    .ok()
                    .and_then(|s| s.symbolize(stop))
                    .filter(|(_, off)| *off == 0)
                    .map(|(s, _)| s.name.clone());
                let reproduction = reproduction(at.as_deref(), &minimal);
                Err(anyhow!(Falsified {
                    first: first.into_inner().unwrap_or_else(|| minimal.clone()),
                    minimal,
                    reason: reason.message().to_string(),
                    runs,
                    seed,
                    reproduction,
                }))
            }
            Err(TestError::Abort(why)) => bail!("the property check stopped: {why}"),
        }
    }
}

/// Restores the stop, applies `m`, runs `property`.
fn run_case(
    s: &mut Session,
    m: &Mutation,
    property: &impl Fn(&mut Session, &Mutation) -> Result<()>,
) -> Result<()> {
    if !s.dom.is_stopped() {
        s.dom.pause()?;
    }
    for b in s.dom.breakpoints() {
        s.dom.remove_breakpoint(b.id)?;
    }
    s.dom.restore_snapshot()?;
    s.ended = None;
    m.apply(s)?;
    property(s, m)
}

fn reproduction(at: Option<&str>, m: &Mutation) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "fn reproduce(s: &mut Session) -> anyhow::Result<()> {{");
    match at {
        Some(sym) => {
            let _ = writeln!(t, "    s.run_to({sym:?})?;");
        }
        None => {
            let _ = writeln!(t, "    // (stop where the property test stopped)");
        }
    }
    let _ = writeln!(t, "    let m = {m:?};");
    let _ = writeln!(t, "    m.apply(s)?;");
    let _ = writeln!(t, "    property(s, &m) // the property that failed");
    t.push('}');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutation_prints_as_the_code_that_builds_it() {
        let m = Mutation::new()
            .reg(Reg::Rdi, 5)
            .mem("known_counter", 8, &[1, 0xff])
            .input(&[0xee, 0]);
        assert_eq!(
            format!("{m:?}"),
            "Mutation::new().reg(Reg::Rdi, 0x5).mem(\"known_counter\", 0x8, &[0x01, 0xff]).input(&[0xee, 0x00])"
        );
        assert_eq!(m.reg_value(Reg::Rdi), Some(5));
        assert_eq!(m.reg_value(Reg::Rsi), None);
        assert_eq!(m.input_bytes(), Some(&[0xee, 0][..]));
    }

    #[test]
    fn the_reproduction_runs_to_the_stop_and_applies_the_case() {
        let t = reproduction(Some("xenprobe_fuzz_start"), &Mutation::new().input(&[7]));
        assert!(t.contains("s.run_to(\"xenprobe_fuzz_start\")?;"), "{t}");
        assert!(t.contains("let m = Mutation::new().input(&[0x07]);"), "{t}");
    }

    #[test]
    fn register_strategies_shrink_toward_small_values() {
        let mut runner = TestRunner::deterministic();
        let r = runner.run(&regs(&[Reg::Rdi, Reg::Rsi], 0u64..1000), |m| {
            let a = m.reg_value(Reg::Rdi).unwrap_or(0);
            if a >= 10 {
                return Err(TestCaseError::fail("big"));
            }
            Ok(())
        });
        match r {
            Err(TestError::Fail(_, m)) => {
                assert_eq!(m.reg_value(Reg::Rdi), Some(10));
                assert_eq!(m.reg_value(Reg::Rsi), Some(0));
            }
            other => panic!("{other:?}"),
        }
    }
}
