//! LLDB's host and process queries (`qHostInfo`, `qProcessInfo`) and the
//! thread descriptions (`qThreadExtraInfo`).

use gdbstub::common::{Endianness, Pid, Tid};
use gdbstub::target::ext::auxv::Auxv;
use gdbstub::target::ext::host_info::{HostInfo, HostInfoResponse};
use gdbstub::target::ext::process_info::{ProcessInfo, ProcessInfoResponse};
use gdbstub::target::ext::section_offsets::{Offsets, SectionOffsets};
use gdbstub::target::ext::thread_extra_info::ThreadExtraInfo;

use gdbstub::target::TargetResult;

use crate::vmi::Error;

use super::backend::Debuggee;
use super::target::{vcpu_of, StubTarget};

// No triple is reported: LLDB reads a bare-metal guest ELF as
// `x86_64-*-linux`, and any other triple from the stub makes it drop the
// loaded image (no symbols, no breakpoints). Without one, LLDB keeps the
// image's architecture.

impl<D: Debuggee> HostInfo for StubTarget<D> {
    fn host_info(&self, write: &mut dyn FnMut(&HostInfoResponse<'_>)) -> Result<(), Error> {
        write(&HostInfoResponse::Endianness(Endianness::Little));
        write(&HostInfoResponse::PointerSize(8));
        Ok(())
    }
}

impl<D: Debuggee> ProcessInfo for StubTarget<D> {
    fn process_info(&self, write: &mut dyn FnMut(&ProcessInfoResponse<'_>)) -> Result<(), Error> {
        // gdbstub names threads `p1.N` in multiprocess mode: the process id
        // must be 1 too, or LLDB drops the threads as another process's.
        write(&ProcessInfoResponse::Pid(Pid::MIN));
        write(&ProcessInfoResponse::Endianness(Endianness::Little));
        write(&ProcessInfoResponse::PointerSize(8));
        Ok(())
    }
}

impl<D: Debuggee> ThreadExtraInfo for StubTarget<D> {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Error> {
        let text = format!("domain {} vcpu {}", self.debuggee.pid(), vcpu_of(tid));
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

/// `AT_ENTRY` in an ELF auxiliary vector.
const AT_ENTRY: u64 = 9;

impl<D: Debuggee> Auxv for StubTarget<D> {
    /// A two-entry auxiliary vector, `AT_ENTRY` = the image's entry point:
    /// LLDB's dynamic loader then places the image at its link address
    /// (without it, breakpoints stay unresolved until the user runs
    /// `target modules load --file IMAGE --slide 0`).
    fn get_auxv(&self, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        let entry = self.debuggee.entry().unwrap_or(0);
        let mut v = Vec::with_capacity(32);
        for word in [AT_ENTRY, entry, 0, 0] {
            v.extend_from_slice(&word.to_le_bytes());
        }
        let start = (offset as usize).min(v.len());
        let n = length.min(buf.len()).min(v.len() - start);
        buf[..n].copy_from_slice(&v[start..start + n]);
        Ok(n)
    }
}

impl<D: Debuggee> SectionOffsets for StubTarget<D> {
    /// Guest images run at their link addresses (`qOffsets`: no relocation).
    fn get_section_offsets(&mut self) -> Result<Offsets<u64>, Error> {
        Ok(Offsets::Sections {
            text: 0,
            data: 0,
            bss: None,
        })
    }
}
