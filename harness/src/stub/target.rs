//! The core `gdbstub` target: vCPUs as threads, registers and memory.

use gdbstub::common::Tid;
use gdbstub::target::ext::auxv::AuxvOps;
use gdbstub::target::ext::base::multithread::{MultiThreadBase, MultiThreadResumeOps};
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccessOps;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::BreakpointsOps;
use gdbstub::target::ext::host_info::HostInfoOps;
use gdbstub::target::ext::process_info::ProcessInfoOps;
use gdbstub::target::ext::section_offsets::SectionOffsetsOps;
use gdbstub::target::ext::thread_extra_info::ThreadExtraInfoOps;
use gdbstub::target::{Target, TargetError, TargetResult};

use crate::arch::{GdbRegisters, XenX86_64};
use crate::vmi::Error;

use super::backend::{Debuggee, Stop};

/// The `gdbstub` target over a [`Debuggee`].
#[derive(Debug)]
pub struct StubTarget<D: Debuggee> {
    pub(crate) debuggee: D,
    /// vCPU to single-step at the next resume (None: continue).
    pub(crate) step_vcpu: Option<u32>,
    /// A stop that happened while resuming (a finished step).
    pub(crate) pending: Option<Stop>,
    /// The debuggee is gone or exited: resume actions only report that.
    pub(crate) finished: bool,
}

impl<D: Debuggee> StubTarget<D> {
    /// Wraps a stopped debuggee.
    pub fn new(debuggee: D) -> Self {
        Self {
            debuggee,
            step_vcpu: None,
            pending: None,
            finished: false,
        }
    }

    /// Gives the debuggee back.
    pub fn into_inner(self) -> D {
        self.debuggee
    }
}

/// Thread id of a vCPU (thread ids start at 1).
pub(crate) fn tid_of(vcpu: u32) -> Tid {
    Tid::new(vcpu as usize + 1).unwrap_or(Tid::MIN)
}

/// vCPU of a thread id.
pub(crate) fn vcpu_of(tid: Tid) -> u32 {
    (tid.get() - 1).min(u32::MAX as usize) as u32
}

/// Maps an engine error to a non-fatal protocol error (an `E` reply): the
/// debugger reports it and the session goes on.
pub(crate) fn non_fatal(e: Error) -> TargetError<Error> {
    tracing::debug!("stub request failed: {e}");
    TargetError::Errno(match e {
        Error::Translate { .. } => 14, // EFAULT
        Error::Unsupported { .. } => 95,
        _ => 5, // EIO
    })
}

impl<D: Debuggee> Target for StubTarget<D> {
    type Arch = XenX86_64;
    type Error = Error;

    fn base_ops(&mut self) -> BaseOps<'_, XenX86_64, Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_host_info(&mut self) -> Option<HostInfoOps<'_, Self>> {
        Some(self)
    }

    fn support_process_info(&mut self) -> Option<ProcessInfoOps<'_, Self>> {
        Some(self)
    }

    fn support_auxv(&mut self) -> Option<AuxvOps<'_, Self>> {
        // Only with a known image and a vCPU that is not sitting on its entry
        // point: LLDB's loader treats a SIGTRAP at AT_ENTRY as its own entry
        // breakpoint and continues on its own (PV guests start there).
        let entry = self.debuggee.entry()?;
        let at_entry = self
            .debuggee
            .regs(0)
            .map(|r| r.rip == entry)
            .unwrap_or(true);
        (!at_entry).then_some(self)
    }

    fn support_section_offsets(&mut self) -> Option<SectionOffsetsOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl<D: Debuggee> MultiThreadBase for StubTarget<D> {
    fn read_registers(&mut self, regs: &mut GdbRegisters, tid: Tid) -> TargetResult<(), Self> {
        regs.0 = self.debuggee.regs(vcpu_of(tid)).map_err(non_fatal)?;
        Ok(())
    }

    fn write_registers(&mut self, regs: &GdbRegisters, tid: Tid) -> TargetResult<(), Self> {
        self.debuggee
            .set_regs(vcpu_of(tid), &regs.0)
            .map_err(non_fatal)
    }

    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        self.debuggee
            .read_mem(vcpu_of(tid), start, data)
            .map_err(non_fatal)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        self.debuggee
            .write_mem(vcpu_of(tid), start, data)
            .map_err(non_fatal)
    }

    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), Error> {
        match self.debuggee.vcpus() {
            Ok(v) => v.into_iter().for_each(|c| active(tid_of(c))),
            // A domain that disappeared still has the vCPU the debugger knows.
            Err(_) => active(tid_of(0)),
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}
