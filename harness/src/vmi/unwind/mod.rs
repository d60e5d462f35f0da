//! Backtraces of Linux kernel code by ORC data (kernels built with
//! `CONFIG_UNWINDER_ORC=y` and without frame pointers, like Debian's).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use xenprobe::vmi::unwind::OrcTable;
//! use xenprobe::vmi::Domain;
//!
//! # fn f(dom: &mut Domain) -> Result<(), Box<dyn std::error::Error>> {
//! let kernel = OrcTable::from_vmlinux("vmlinux-6.1.0-57-amd64", None, 0)?;
//! // A module: its section addresses from /sys/module/NAME/sections/.
//! let sections = BTreeMap::from([(".text".to_string(), 0xffff_ffff_c000_0000)]);
//! let module = OrcTable::from_module("af_key.ko", &sections, None)?;
//! let bt = dom.orc_walk(0, &[&kernel, &module], 64)?;
//! for (i, f) in bt.frames.iter().enumerate() {
//!     println!("#{i} {:#x} {:?}", f.pc, f.kind); // symbolize f.lookup_pc()
//! }
//! println!("({})", bt.stop);
//! # Ok(()) }
//! ```
//!
//! - Tables: [`OrcTable::from_vmlinux`] (KASLR slide), [`OrcTable::from_module`]
//!   (relocated with the module's section addresses); layouts of Linux
//!   4.14–6.2, 6.3 and 6.4+ ([`OrcFormat`]), detected from `.orc_header`.
//! - Walk: [`unwind`] on any memory reader, [`Domain::orc_walk`] on a vCPU.
//!   Frames entered through a `pt_regs` or iret frame carry the exact
//!   interrupted pc ([`FrameKind::Interrupted`]), e.g. the faulting
//!   instruction under an exception handler.
//!
//! Not followed (the walk stops there, [`StopReason::NoEntry`]): code
//! without ORC data (BPF programs, ftrace trampolines), where the kernel
//! guesses with frame pointers; return addresses rewritten by ftrace's
//! graph tracer or kretprobes are reported as they are on the stack.

mod orc;
mod walk;

pub use orc::{find_entry, OrcEntry, OrcError, OrcFormat, OrcKind, OrcReg, OrcTable, ENTRY_SIZE};
pub use walk::{unwind, Backtrace, FrameKind, RegsFrame, StackFrame, StopReason, UnwindRegs};

use super::domain::Domain;
use super::error::Result;

impl Domain {
    /// Backtrace of the kernel code `vcpu` is running, by ORC data, from its
    /// current registers, reading memory as `vcpu` sees it. At most `max`
    /// frames (frame #0 is the current pc). Fails only when the registers
    /// cannot be read; a walk that cannot go on ends with a
    /// [`StopReason`].
    pub fn orc_walk(&mut self, vcpu: u32, tables: &[&OrcTable], max: usize) -> Result<Backtrace> {
        let start = UnwindRegs::from(&self.regs(vcpu)?);
        Ok(self.orc_walk_from(vcpu, &start, tables, max))
    }

    /// [`Domain::orc_walk`] from given registers (e.g. a saved trap frame).
    pub fn orc_walk_from(
        &mut self,
        vcpu: u32,
        start: &UnwindRegs,
        tables: &[&OrcTable],
        max: usize,
    ) -> Backtrace {
        let mut read = |va: u64, buf: &mut [u8]| self.read_virt_on(vcpu, va, buf).is_ok();
        unwind(tables, start, &mut read, max)
    }
}
