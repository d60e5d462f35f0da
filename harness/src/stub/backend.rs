//! What the stub needs from a debuggee: the seam between the protocol layer
//! and the Xen engine (the other implementation is the in-memory machine the
//! packet fuzz test drives).

use std::time::Duration;

use crate::vmi::{Error, Registers, Result, WatchKind};

/// Why the debuggee stopped, in debugger terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A vCPU reached one of the debugger's software breakpoints.
    Breakpoint {
        /// vCPU.
        vcpu: u32,
    },
    /// A single step finished.
    Step {
        /// vCPU.
        vcpu: u32,
    },
    /// A vCPU accessed a watched range (the access is done).
    Watch {
        /// vCPU.
        vcpu: u32,
        /// First byte of the watched range that was hit.
        addr: u64,
        /// The watchpoint's kind.
        kind: WatchKind,
    },
    /// A debug event the debugger did not ask for (SIGTRAP).
    Trap {
        /// vCPU.
        vcpu: u32,
    },
    /// Stopped on the debugger's request (Ctrl-C).
    Interrupted {
        /// vCPU reported as current.
        vcpu: u32,
    },
    /// The guest exited with this code.
    Exited(u8),
    /// The guest crashed (its crash handler ran, or Xen saw a crash).
    Crashed,
    /// The guest triple-faulted / asked for a reboot.
    Rebooted,
    /// The domain was destroyed from outside.
    Destroyed,
}

/// A debuggee the stub can drive: vCPUs, registers, memory, software
/// breakpoints and run control.
pub trait Debuggee {
    /// vCPU ids.
    fn vcpus(&mut self) -> Result<Vec<u32>>;
    /// Registers of `vcpu`.
    fn regs(&mut self, vcpu: u32) -> Result<Registers>;
    /// Writes the registers of `vcpu`.
    fn set_regs(&mut self, vcpu: u32, regs: &Registers) -> Result<()>;
    /// Reads virtual memory as `vcpu` sees it; breakpoint bytes are hidden.
    /// Returns how many bytes could be read from the start.
    fn read_mem(&mut self, vcpu: u32, va: u64, buf: &mut [u8]) -> Result<usize>;
    /// Writes virtual memory as `vcpu` sees it (breakpoints survive).
    fn write_mem(&mut self, vcpu: u32, va: u64, data: &[u8]) -> Result<()>;
    /// Plants a software breakpoint (false if one is there already).
    fn insert_breakpoint(&mut self, va: u64) -> Result<bool>;
    /// Removes a software breakpoint (false if none was there).
    fn remove_breakpoint(&mut self, va: u64) -> Result<bool>;
    /// Arms a hardware watchpoint (false if an identical one exists).
    fn insert_watchpoint(&mut self, va: u64, len: u64, kind: WatchKind) -> Result<bool> {
        let _ = (va, len, kind);
        Err(Error::Unsupported {
            feature: "watchpoints",
            why: "this debuggee has no watchpoints".into(),
        })
    }
    /// Disarms a hardware watchpoint (false if none matched).
    fn remove_watchpoint(&mut self, va: u64, len: u64, kind: WatchKind) -> Result<bool> {
        let _ = (va, len, kind);
        Ok(false)
    }
    /// Lets the debuggee run.
    fn resume(&mut self) -> Result<()>;
    /// Runs one instruction on `vcpu` (the debuggee is stopped).
    fn step(&mut self, vcpu: u32) -> Result<Stop>;
    /// Waits up to `timeout` for a stop while running.
    fn wait(&mut self, timeout: Duration) -> Result<Option<Stop>>;
    /// Stops a running debuggee.
    fn interrupt(&mut self) -> Result<()>;
    /// Removes breakpoints and lets the debuggee run free.
    fn detach(&mut self) -> Result<()>;
    /// Identifier of the debuggee (the domain id).
    fn pid(&self) -> u32;
    /// True once the debuggee no longer exists.
    fn gone(&mut self) -> bool {
        false
    }
    /// Entry point of the loaded image, when the stub knows the image.
    fn entry(&self) -> Option<u64> {
        None
    }
}
