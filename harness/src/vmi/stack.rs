//! Backtraces: ORC unwinding for a Linux kernel whose tables are loaded
//! ([`Domain::load_kernel_symbols`]), else the saved frame pointers (the
//! sample guests, and kernels built with frame pointers, keep `rbp`
//! chained).

use super::domain::Domain;
use super::error::Result;
use super::unwind::{FrameKind, OrcTable, UnwindRegs};

/// One frame of a backtrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFrame {
    /// Code address: where the vCPU is (frame #0), where an exception
    /// interrupted it, or a return address.
    pub pc: u64,
    /// `pc` is a return address: the call is the instruction before it.
    pub is_return: bool,
}

impl CodeFrame {
    /// The address to look up for this frame's function and line (a call
    /// that never returns is often the last instruction of its function).
    pub fn lookup_pc(&self) -> u64 {
        if self.is_return {
            self.pc.saturating_sub(1)
        } else {
            self.pc
        }
    }
}

impl Domain {
    /// Return addresses found by following the saved-RBP chain from `rbp`,
    /// reading memory as `vcpu` sees it: at each frame `[rbp]` holds the
    /// caller's RBP and `[rbp+8]` the return address. Stops after `max`
    /// addresses, at a misaligned or unreadable frame, at a zero return
    /// address, or where the chain does not go up the stack (so a corrupt
    /// stack cannot loop).
    pub fn frame_pointer_walk(&mut self, vcpu: u32, mut rbp: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < max && rbp != 0 && rbp % 8 == 0 {
            let mut b = [0u8; 16];
            if self.read_virt_on(vcpu, rbp, &mut b).is_err() {
                break;
            }
            let (next, ret) = b.split_at(8);
            let next = u64::from_le_bytes(next.try_into().unwrap_or_default());
            let ret = u64::from_le_bytes(ret.try_into().unwrap_or_default());
            if ret == 0 {
                break;
            }
            out.push(ret);
            if next <= rbp {
                break;
            }
            rbp = next;
        }
        out
    }

    /// The frames of `vcpu` from its current registers, innermost first,
    /// at most `max`.
    pub fn backtrace(&mut self, vcpu: u32, max: usize) -> Result<Vec<CodeFrame>> {
        let r = self.regs(vcpu)?;
        Ok(self.backtrace_from(vcpu, r.rip, r.rsp, r.rbp, max))
    }

    /// The frames of a context given by its RIP, RSP and RBP (a saved trap
    /// frame, say), read as `vcpu` sees memory. Kernel code covered by
    /// loaded ORC tables is unwound by them; other code by frame pointers,
    /// with the caller taken from the stack when `rip` is a function's
    /// first instruction (its frame is not set up yet).
    pub fn backtrace_from(
        &mut self,
        vcpu: u32,
        rip: u64,
        rsp: u64,
        rbp: u64,
        max: usize,
    ) -> Vec<CodeFrame> {
        if max == 0 {
            return Vec::new();
        }
        let by_orc = self
            .symbols
            .kernel_mut()
            .is_some_and(|k| k.orc_tables().iter().any(|t| t.covers(rip)));
        if by_orc {
            let start = UnwindRegs {
                rip,
                rsp,
                rbp,
                ..Default::default()
            };
            // The tables stay with the kernel; the walk reads memory through self.
            let mut kernel = self.symbols.take_kernel();
            let tables: Vec<&OrcTable> = kernel
                .iter_mut()
                .flat_map(|k| k.orc_tables().iter())
                .collect();
            let bt = self.orc_walk_from(vcpu, &start, &tables, max);
            drop(tables);
            self.symbols.put_kernel(kernel);
            return bt
                .frames
                .iter()
                .map(|f| CodeFrame {
                    pc: f.pc,
                    is_return: f.kind == FrameKind::Return,
                })
                .collect();
        }
        let mut out = vec![CodeFrame {
            pc: rip,
            is_return: false,
        }];
        let at_entry = self
            .symbols
            .get()
            .and_then(|s| s.symbolize(rip))
            .is_some_and(|(_, off)| off == 0);
        if at_entry {
            if let Ok(ret) = self.read_u64_on(vcpu, rsp) {
                if ret != 0 {
                    out.push(CodeFrame {
                        pc: ret,
                        is_return: true,
                    });
                }
            }
        }
        let left = max.saturating_sub(out.len());
        out.extend(
            self.frame_pointer_walk(vcpu, rbp, left)
                .into_iter()
                .map(|pc| CodeFrame {
                    pc,
                    is_return: true,
                }),
        );
        out.truncate(max);
        out
    }
}
