//! Software breakpoints (`Z0`/`z0`), planted by the engine (int3 or ICEBP,
//! whichever the host reports to Xen), and hardware watchpoints (`Z2`/`Z4`,
//! gdbstub's `HwWatchpoint`) on the guest's debug registers (see
//! [`crate::vmi::watchpoint`]). Read watchpoints (`Z3`) are refused: x86
//! debug registers cannot trap reads alone; GDB then says it cannot set them.

use gdbstub::target::ext::breakpoints::{
    Breakpoints, HwWatchpoint, HwWatchpointOps, SwBreakpoint, SwBreakpointOps,
    WatchKind as GdbWatchKind,
};
use gdbstub::target::TargetResult;

use crate::vmi::WatchKind;

use super::backend::Debuggee;
use super::target::{non_fatal, StubTarget};

impl<D: Debuggee> Breakpoints for StubTarget<D> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
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

fn kind_of(k: GdbWatchKind) -> WatchKind {
    match k {
        GdbWatchKind::Write => WatchKind::Write,
        GdbWatchKind::Read => WatchKind::Read,
        GdbWatchKind::ReadWrite => WatchKind::Access,
    }
}

impl<D: Debuggee> HwWatchpoint for StubTarget<D> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: GdbWatchKind,
    ) -> TargetResult<bool, Self> {
        match self.debuggee.insert_watchpoint(addr, len, kind_of(kind)) {
            Ok(_) => Ok(true),
            Err(e) => {
                tracing::info!("watchpoint at {addr:#x} ({len} bytes, {kind:?}): {e}");
                Ok(false)
            }
        }
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: GdbWatchKind,
    ) -> TargetResult<bool, Self> {
        self.debuggee
            .remove_watchpoint(addr, len, kind_of(kind))
            .map_err(non_fatal)
    }
}
