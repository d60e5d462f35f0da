//! Software breakpoints (`Z0`/`z0`), planted by the engine (int3 or ICEBP,
//! whichever the host reports to Xen).
//!
//! Watchpoints (`Z2`-`Z4`, gdbstub's `HwWatchpoint`) are not offered: they
//! need Xen's mem_access, which Xen 4.17 allows on Intel VT-x only (see
//! [`crate::vmi::watchpoint`]); debuggers then fall back to saying the
//! target does not support them.

use gdbstub::target::ext::breakpoints::{Breakpoints, SwBreakpoint, SwBreakpointOps};
use gdbstub::target::TargetResult;

use super::backend::Debuggee;
use super::target::{non_fatal, StubTarget};

impl<D: Debuggee> Breakpoints for StubTarget<D> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl<D: Debuggee> SwBreakpoint for StubTarget<D> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.debuggee.insert_breakpoint(addr).map_err(non_fatal)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.debuggee.remove_breakpoint(addr).map_err(non_fatal)
    }
}
