//! [`Debuggee`] for a Xen domain through the VMI engine.
//!
//! When the guest image is given, the stub also watches the sample guests'
//! runtime: `xenprobe_exit(code)` and `xenprobe_crash(...)` get hidden
//! breakpoints, so that the debugger sees the real exit code (`W19` for 25)
//! and a crash as a crash, while the domain still exists.

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::vmi::{
    BreakpointId, Domain, Error, Event, Registers, Result, ShutdownReason, WatchKind, WatchpointId,
};

use super::backend::{Debuggee, Stop};

const EXIT_SYMBOL: &str = xenprobe_abi::target::EXIT;
const CRASH_SYMBOL: &str = xenprobe_abi::target::CRASH;

/// What a hidden breakpoint watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Exit,
    Crash,
}

/// One breakpoint planted in the guest.
#[derive(Debug, Clone, Copy)]
struct Planted {
    id: BreakpointId,
    /// Set by the debugger.
    user: bool,
    /// Set by the stub itself.
    watch: Option<Watch>,
}

/// How the stub holds the domain it serves: owned (`xenprobe gdbserver`,
/// the fuzzer's crash replay: detached at the end) or borrowed (a failed
/// guest test: its owner destroys the guest afterwards).
pub trait Attached: BorrowMut<Domain> {
    /// Lets the guest go once the debugger has left (the stub's breakpoints
    /// are already removed).
    fn release(self) -> Result<()>;
}

impl Attached for Domain {
    fn release(self) -> Result<()> {
        self.detach()
    }
}

impl Attached for &mut Domain {
    fn release(self) -> Result<()> {
        if self.is_stopped() {
            self.resume()?;
        }
        Ok(())
    }
}

/// A Xen domain being debugged.
pub struct XenDebuggee<A: Attached = Domain> {
    dom: Option<A>,
    domid: u32,
    planted: BTreeMap<u64, Planted>,
    /// The debugger's watchpoints by (address, length, kind).
    watches: Vec<((u64, u64, WatchKind), WatchpointId)>,
}

impl<A: Attached> std::fmt::Debug for XenDebuggee<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenDebuggee")
            .field("domid", &self.domid)
            .field("breakpoints", &self.planted.len())
            .finish_non_exhaustive()
    }
}

impl<A: Attached> XenDebuggee<A> {
    /// Takes an attached domain and stops it. With `elf` (the guest image),
    /// the runtime's exit and crash functions are watched.
    pub fn new(mut dom: A, elf: Option<&Path>) -> Result<Self> {
        dom.borrow_mut().pause()?;
        let mut me = Self {
            domid: dom.borrow_mut().id(),
            dom: Some(dom),
            planted: BTreeMap::new(),
            watches: Vec::new(),
        };
        let dom = me.dom()?;
        if let Some(elf) = elf {
            dom.load_symbols(elf)?;
        }
        if dom.symbols().is_ok() {
            // A Linux kernel reports crashes through its error paths; a
            // guest of the fuzz-target ABI through its crash sink.
            let watch: Vec<(u64, Watch)> = if dom.kernel_info().is_some() {
                crate::vmi::kernel::CRASH_FUNCTIONS
                    .iter()
                    .filter_map(|s| dom.symbol(s).ok().map(|va| (va, Watch::Crash)))
                    .collect()
            } else {
                [(EXIT_SYMBOL, Watch::Exit), (CRASH_SYMBOL, Watch::Crash)]
                    .into_iter()
                    .filter_map(|(s, w)| dom.symbol(s).ok().map(|va| (va, w)))
                    .collect()
            };
            for (va, w) in watch {
                if let Err(e) = me.plant(va, false, Some(w)) {
                    tracing::warn!("cannot watch {w:?} at {va:#x}: {e}");
                }
            }
        }
        Ok(me)
    }

    /// The attached domain.
    pub fn domain(&mut self) -> Result<&mut Domain> {
        self.dom()
    }

    fn dom(&mut self) -> Result<&mut Domain> {
        self.dom
            .as_mut()
            .map(|d| d.borrow_mut())
            .ok_or_else(|| Error::State("the domain is detached".into()))
    }

    fn plant(&mut self, va: u64, user: bool, watch: Option<Watch>) -> Result<()> {
        let id = self.dom()?.add_breakpoint(va)?;
        self.planted.insert(va, Planted { id, user, watch });
        Ok(())
    }

    fn stop_of(&mut self, ev: Event) -> Result<Option<Stop>> {
        Ok(Some(match ev {
            Event::Timeout => return Ok(None),
            Event::Breakpoint { vcpu, addr, .. } => match self.planted.get(&addr).copied() {
                Some(Planted { user: true, .. }) | None => Stop::Breakpoint { vcpu },
                Some(Planted {
                    watch: Some(Watch::Exit),
                    ..
                }) => Stop::Exited(self.dom()?.regs(vcpu)?.rdi as u8),
                Some(Planted { .. }) => Stop::Crashed,
            },
            Event::Step { vcpu, .. } => Stop::Step { vcpu },
            Event::Watchpoint { vcpu, id, addr, .. } => Stop::Watch {
                vcpu,
                addr,
                kind: self
                    .watches
                    .iter()
                    .find(|(_, w)| *w == id)
                    .map_or(WatchKind::Write, |((_, _, k), _)| *k),
            },
            Event::Debug { vcpu, .. } | Event::Cpuid { vcpu, .. } => Stop::Trap { vcpu },
            Event::Shutdown { reason } => match reason {
                ShutdownReason::Poweroff => Stop::Exited(0),
                ShutdownReason::Crash => Stop::Crashed,
                ShutdownReason::Reboot => Stop::Rebooted,
                _ => Stop::Destroyed,
            },
        }))
    }
}

impl<A: Attached> Debuggee for XenDebuggee<A> {
    fn vcpus(&mut self) -> Result<Vec<u32>> {
        Ok((0..=self.dom()?.max_vcpu()?).collect())
    }

    fn regs(&mut self, vcpu: u32) -> Result<Registers> {
        self.dom()?.regs(vcpu)
    }

    fn set_regs(&mut self, vcpu: u32, regs: &Registers) -> Result<()> {
        self.dom()?.set_regs(vcpu, regs)
    }

    fn read_mem(&mut self, vcpu: u32, va: u64, buf: &mut [u8]) -> Result<usize> {
        let dom = self.dom()?;
        let n = match dom.read_virt_on(vcpu, va, buf) {
            Ok(()) => buf.len(),
            Err(first) => {
                // Read what is mapped, page by page, up to the first hole.
                let mut done = 0usize;
                while done < buf.len() {
                    let at = va.wrapping_add(done as u64);
                    let n = (0x1000 - (at & 0xfff) as usize).min(buf.len() - done);
                    if dom
                        .read_virt_on(vcpu, at, &mut buf[done..done + n])
                        .is_err()
                    {
                        break;
                    }
                    done += n;
                }
                if done == 0 {
                    return Err(first);
                }
                done
            }
        };
        // The engine's virtual reads already show the guest's own bytes
        // under our breakpoints.
        Ok(n)
    }

    fn write_mem(&mut self, vcpu: u32, va: u64, data: &[u8]) -> Result<()> {
        let end = va.saturating_add(data.len() as u64);
        let hit: Vec<(u64, Planted)> = self.planted.range(va..end).map(|(&a, &p)| (a, p)).collect();
        // Lift the breakpoints under the write, write, plant them again over
        // the new bytes.
        for (a, p) in &hit {
            self.dom()?.remove_breakpoint(p.id)?;
            self.planted.remove(a);
        }
        let written = self.dom()?.write_virt_on(vcpu, va, data);
        for (a, p) in hit {
            self.plant(a, p.user, p.watch)?;
        }
        written
    }

    fn insert_breakpoint(&mut self, va: u64) -> Result<bool> {
        match self.planted.get_mut(&va) {
            Some(p) if p.user => Ok(false),
            Some(p) => {
                p.user = true;
                Ok(true)
            }
            None => self.plant(va, true, None).map(|()| true),
        }
    }

    fn remove_breakpoint(&mut self, va: u64) -> Result<bool> {
        let Some(p) = self.planted.get_mut(&va) else {
            return Ok(false);
        };
        if !p.user {
            return Ok(false);
        }
        if p.watch.is_some() {
            p.user = false;
            return Ok(true);
        }
        let id = p.id;
        self.planted.remove(&va);
        self.dom()?.remove_breakpoint(id)?;
        Ok(true)
    }

    fn insert_watchpoint(&mut self, va: u64, len: u64, kind: WatchKind) -> Result<bool> {
        if self.watches.iter().any(|(k, _)| *k == (va, len, kind)) {
            return Ok(false);
        }
        let id = self.dom()?.add_watchpoint(va, len, kind)?;
        self.watches.push(((va, len, kind), id));
        Ok(true)
    }

    fn remove_watchpoint(&mut self, va: u64, len: u64, kind: WatchKind) -> Result<bool> {
        let Some(i) = self.watches.iter().position(|(k, _)| *k == (va, len, kind)) else {
            return Ok(false);
        };
        let (_, id) = self.watches.remove(i);
        self.dom()?.remove_watchpoint(id)?;
        Ok(true)
    }

    fn resume(&mut self) -> Result<()> {
        let dom = self.dom()?;
        dom.resume()?;
        // The debugger would wait for a stop that never comes: say why in
        // the stub's log (the protocol has no way to).
        if dom.paused_elsewhere().unwrap_or(false) {
            tracing::warn!(
                "{} is still paused by a pause of its own (created with `xl create -p`, or \
                 `xl pause`d): it runs after `xl unpause {}` in dom0",
                dom.name(),
                dom.name()
            );
        }
        Ok(())
    }

    fn step(&mut self, vcpu: u32) -> Result<Stop> {
        let dom = self.dom()?;
        dom.pause()?;
        match dom.step(vcpu) {
            Ok(ev) => Ok(self.stop_of(ev)?.unwrap_or(Stop::Step { vcpu })),
            // A shutdown during the step is queued for the next wait.
            Err(Error::State(msg)) if msg.contains("shut down") => {
                match self.dom()?.wait_event(Duration::ZERO)? {
                    Event::Timeout => Err(Error::State(msg)),
                    ev => Ok(self.stop_of(ev)?.unwrap_or(Stop::Destroyed)),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<Stop>> {
        let ev = self.dom()?.wait_event(timeout)?;
        self.stop_of(ev)
    }

    fn interrupt(&mut self) -> Result<()> {
        self.dom()?.pause()
    }

    fn detach(&mut self) -> Result<()> {
        let planted = std::mem::take(&mut self.planted);
        let watches = std::mem::take(&mut self.watches);
        match self.dom.take() {
            Some(mut dom) => {
                if !watches.is_empty() {
                    dom.borrow_mut().pause()?;
                }
                for (_, id) in watches {
                    if let Err(e) = dom.borrow_mut().remove_watchpoint(id) {
                        tracing::warn!("removing {id}: {e}");
                    }
                }
                for p in planted.values() {
                    if let Err(e) = dom.borrow_mut().remove_breakpoint(p.id) {
                        tracing::warn!("removing breakpoint {}: {e}", p.id);
                    }
                }
                dom.release()
            }
            None => Ok(()),
        }
    }

    fn pid(&self) -> u32 {
        self.domid
    }

    fn gone(&mut self) -> bool {
        match self.dom.as_ref().map(|d| d.borrow().info()) {
            None => true,
            Some(Ok(i)) => i.dying,
            Some(Err(e)) => {
                tracing::debug!("domain info: {e}");
                matches!(e, Error::Xen(ref x) if x.raw_errno() == Some(libc::ESRCH))
            }
        }
    }

    fn entry(&self) -> Option<u64> {
        let syms = self.dom.as_ref()?.borrow().symbols().ok()?;
        Some(syms.entry())
    }
}
