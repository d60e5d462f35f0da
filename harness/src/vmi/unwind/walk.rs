//! The ORC stack walk, on any memory reader (no Xen needed).

use std::fmt;

use super::orc::{find_entry, OrcEntry, OrcKind, OrcReg, OrcTable};
use crate::vmi::Registers;

/// Size of x86-64 `struct pt_regs`.
const PT_REGS_SIZE: usize = 21 * 8;
/// Size of the iret frame.
const IRET_SIZE: usize = 5 * 8;
/// Stack switches (exception, IRQ, task stacks) allowed in one walk.
const MAX_SWITCHES: usize = 8;

/// Word offsets in `struct pt_regs`.
mod pt {
    pub const R13: usize = 2;
    pub const BP: usize = 4;
    pub const R10: usize = 7;
    pub const DX: usize = 12;
    pub const DI: usize = 14;
    pub const IP: usize = 16;
    pub const CS: usize = 17;
    pub const SP: usize = 19;
}

/// The registers a walk starts from (the ones ORC entries can refer to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UnwindRegs {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rdx: u64,
    pub r10: u64,
    pub r13: u64,
}

impl From<&Registers> for UnwindRegs {
    fn from(r: &Registers) -> Self {
        Self {
            rip: r.rip,
            rsp: r.rsp,
            rbp: r.rbp,
            rdi: r.rdi,
            rdx: r.rdx,
            r10: r.r10,
            r13: r.r13,
        }
    }
}

/// How a frame's pc was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The pc the walk started from (frame #0).
    Current,
    /// A return address: the call is the instruction before it.
    Return,
    /// An exact pc from a `struct pt_regs` or iret frame: the instruction
    /// that was interrupted or faulted.
    Interrupted,
}

/// The register frame a pc was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegsFrame {
    /// Address of the `struct pt_regs` (`full`) or of the iret frame.
    pub addr: u64,
    /// A full `struct pt_regs`, not just the hardware iret frame.
    pub full: bool,
}

/// One frame of an ORC backtrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackFrame {
    /// The code address.
    pub pc: u64,
    /// The stack pointer in this frame (at `pc`).
    pub sp: u64,
    /// How `pc` was found.
    pub kind: FrameKind,
    /// Set when the frame was entered through saved registers.
    pub regs: Option<RegsFrame>,
}

impl StackFrame {
    /// The address to symbolize: a return address minus one (the call,
    /// which may be the last instruction of its function), else `pc`.
    pub fn lookup_pc(&self) -> u64 {
        match self.kind {
            FrameKind::Return => self.pc.wrapping_sub(1),
            FrameKind::Current | FrameKind::Interrupted => self.pc,
        }
    }
}

/// Why a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The ORC data marks the outermost frame (a task's or kernel
    /// thread's first frame).
    EndOfStack,
    /// A register frame from user mode: the kernel was entered from user
    /// space at `pc` (not a frame of its own).
    UserMode {
        /// The user-space pc.
        pc: u64,
        /// The user-space stack pointer.
        sp: u64,
    },
    /// No table covers `pc` (not kernel text, or code without ORC data:
    /// BPF programs, ftrace trampolines, a module without a table).
    NoEntry {
        /// The last frame's pc.
        pc: u64,
    },
    /// The ORC entry for `pc` has no unwind information.
    Undefined {
        /// The last frame's pc.
        pc: u64,
    },
    /// Stack memory at `addr` could not be read.
    Unreadable {
        /// The address.
        addr: u64,
    },
    /// The entry for `pc` cannot be followed (unknown register or type,
    /// or registers it needs are not known).
    BadEntry {
        /// The last frame's pc.
        pc: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The caller's stack pointer `sp` is not above the frame's (corrupt
    /// stack or table): stopped so a walk cannot loop.
    WrongDirection {
        /// The last frame's pc.
        pc: u64,
        /// The stack pointer the entry gave.
        sp: u64,
    },
    /// The frame limit was reached.
    Limit,
}

impl StopReason {
    /// The walk reached the bottom of the kernel stack (end of stack or the
    /// entry from user mode) rather than giving up.
    pub fn is_complete(&self) -> bool {
        matches!(self, Self::EndOfStack | Self::UserMode { .. })
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndOfStack => write!(f, "end of stack"),
            Self::UserMode { pc, sp } => {
                write!(f, "entered from user mode at {pc:#x} (sp {sp:#x})")
            }
            Self::NoEntry { pc } => write!(f, "no ORC data for {pc:#x}"),
            Self::Undefined { pc } => write!(f, "no unwind information at {pc:#x}"),
            Self::Unreadable { addr } => write!(f, "cannot read the stack at {addr:#x}"),
            Self::BadEntry { pc, why } => write!(f, "ORC entry for {pc:#x}: {why}"),
            Self::WrongDirection { pc, sp } => {
                write!(f, "stack going the wrong way at {pc:#x} (sp {sp:#x})")
            }
            Self::Limit => write!(f, "frame limit reached"),
        }
    }
}

/// The frames of a walk, innermost first, and why it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backtrace {
    /// Frame #0 is the starting pc.
    pub frames: Vec<StackFrame>,
    /// Why there are no more frames.
    pub stop: StopReason,
}

impl Backtrace {
    /// The frames' pcs.
    pub fn pcs(&self) -> Vec<u64> {
        self.frames.iter().map(|f| f.pc).collect()
    }
}

/// Walks a kernel stack by ORC data, starting from `start` (frame #0) and
/// reading stack memory with `read(addr, buf)` (false: unreadable). At most
/// `max` frames. Follows the kernel's own unwinder: call frames, `pt_regs`
/// and iret frames (exact pcs), stack switches through saved registers or
/// `SP_INDIRECT`; a user-mode register frame ends the walk.
pub fn unwind(
    tables: &[&OrcTable],
    start: &UnwindRegs,
    read: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    max: usize,
) -> Backtrace {
    let mut frames = Vec::new();
    if max == 0 {
        return Backtrace {
            frames,
            stop: StopReason::Limit,
        };
    }
    frames.push(StackFrame {
        pc: start.rip,
        sp: start.rsp,
        kind: FrameKind::Current,
        regs: None,
    });
    let mut w = Walker {
        tables,
        read,
        pc: start.rip,
        sp: start.rsp,
        bp: start.rbp,
        signal: true,
        full: Some(Saved {
            bp: start.rbp,
            r10: start.r10,
            r13: start.r13,
            di: start.rdi,
            dx: start.rdx,
        }),
        partial: false,
        prev: None,
        stack: start.rsp..start.rsp,
        left: Vec::new(),
    };
    let stop = loop {
        if frames.len() >= max {
            break StopReason::Limit;
        }
        match w.step() {
            Ok(f) => frames.push(f),
            Err(stop) => break stop,
        }
    };
    Backtrace { frames, stop }
}

/// Registers saved in a `struct pt_regs` (or the start registers) that ORC
/// entries can use.
#[derive(Debug, Clone, Copy)]
struct Saved {
    bp: u64,
    r10: u64,
    r13: u64,
    di: u64,
    dx: u64,
}

struct Walker<'a, 'r> {
    tables: &'a [&'a OrcTable],
    read: &'r mut dyn FnMut(u64, &mut [u8]) -> bool,
    pc: u64,
    sp: u64,
    bp: u64,
    /// `pc` is exact (look it up as is, not minus one).
    signal: bool,
    /// A full register set is in effect.
    full: Option<Saved>,
    /// An iret frame is in effect (registers come from `prev`).
    partial: bool,
    /// The full register set in effect before the iret frame.
    prev: Option<Saved>,
    /// Stack pointers seen on the current stack (lowest..highest).
    stack: std::ops::Range<u64>,
    /// The same for the stacks switched away from.
    left: Vec<std::ops::Range<u64>>,
}

/// Used for an exact pc of 0 (a call through a NULL pointer): return to
/// the caller, as the kernel does.
const NULL_CALL: OrcEntry = OrcEntry::FUNCTION_START;

impl Walker<'_, '_> {
    fn read_words<const N: usize>(&mut self, addr: u64) -> Result<[u64; N], StopReason> {
        let mut buf = vec![0u8; N * 8];
        if !(self.read)(addr, &mut buf) {
            return Err(StopReason::Unreadable { addr });
        }
        let mut out = [0u64; N];
        for (w, c) in out.iter_mut().zip(buf.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().unwrap_or_default());
        }
        Ok(out)
    }

    fn read_u64(&mut self, addr: u64) -> Result<u64, StopReason> {
        let [v] = self.read_words::<1>(addr)?;
        Ok(v)
    }

    /// A saved register: from a full register set, or the one before an
    /// iret frame.
    fn saved(&self, f: impl Fn(&Saved) -> u64) -> Option<u64> {
        match (&self.full, self.partial) {
            (Some(s), _) => Some(f(s)),
            (None, true) => self.prev.as_ref().map(f),
            (None, false) => None,
        }
    }

    fn step(&mut self) -> Result<StackFrame, StopReason> {
        let pc = self.pc;
        let entry = if self.signal && pc == 0 {
            NULL_CALL
        } else {
            // A return address may be past the end of its function (a call
            // to a noreturn function): look up the call itself.
            let at = if self.signal { pc } else { pc.wrapping_sub(1) };
            find_entry(self.tables, at).ok_or(StopReason::NoEntry { pc })?
        };
        match entry.kind {
            OrcKind::Undefined => return Err(StopReason::Undefined { pc }),
            OrcKind::EndOfStack => return Err(StopReason::EndOfStack),
            _ => {}
        }
        let bad = |why| StopReason::BadEntry { pc, why };
        let missing = bad("its base register was not saved");
        let off = i64::from(entry.sp_offset);
        // May this step leave the current stack?
        let mut switch = true;
        let cfa = match entry.sp_reg {
            OrcReg::Sp => {
                switch = false;
                self.sp.wrapping_add_signed(off)
            }
            OrcReg::Bp => {
                switch = false;
                self.bp.wrapping_add_signed(off)
            }
            OrcReg::SpIndirect => self.read_u64(self.sp)?.wrapping_add_signed(off),
            OrcReg::BpIndirect => self.read_u64(self.bp.wrapping_add_signed(off))?,
            OrcReg::R10 => self.saved(|s| s.r10).ok_or(missing)?,
            OrcReg::R13 => self.saved(|s| s.r13).ok_or(missing)?,
            OrcReg::Di => self.saved(|s| s.di).ok_or(missing)?,
            OrcReg::Dx => self.saved(|s| s.dx).ok_or(missing)?,
            OrcReg::Undefined | OrcReg::PrevSp | OrcReg::Other(_) => {
                return Err(bad("unknown sp base register"))
            }
        };
        let (new_pc, new_sp, regs) = match entry.kind {
            OrcKind::Call => {
                let ret = self.read_u64(cfa.wrapping_sub(8))?;
                self.full = None;
                self.partial = false;
                self.prev = None;
                (ret, cfa, None)
            }
            OrcKind::Regs => {
                let r = self.read_words::<{ PT_REGS_SIZE / 8 }>(cfa)?;
                if r[pt::CS] & 3 != 0 {
                    return Err(StopReason::UserMode {
                        pc: r[pt::IP],
                        sp: r[pt::SP],
                    });
                }
                self.full = Some(Saved {
                    bp: r[pt::BP],
                    r10: r[pt::R10],
                    r13: r[pt::R13],
                    di: r[pt::DI],
                    dx: r[pt::DX],
                });
                self.partial = false;
                self.prev = None;
                let regs = RegsFrame {
                    addr: cfa,
                    full: true,
                };
                (r[pt::IP], r[pt::SP], Some(regs))
            }
            OrcKind::RegsPartial => {
                let [ip, cs, _flags, sp, _ss] = self.read_words::<{ IRET_SIZE / 8 }>(cfa)?;
                if cs & 3 != 0 {
                    return Err(StopReason::UserMode { pc: ip, sp });
                }
                if let Some(full) = self.full.take() {
                    self.prev = Some(full);
                }
                self.partial = true;
                let regs = RegsFrame {
                    addr: cfa,
                    full: false,
                };
                (ip, sp, Some(regs))
            }
            OrcKind::Undefined | OrcKind::EndOfStack | OrcKind::Other(_) => {
                return Err(bad("unknown entry type"))
            }
        };
        if regs.is_some() {
            switch = true;
        }
        let bp_off = i64::from(entry.bp_offset);
        match entry.bp_reg {
            OrcReg::Undefined => {
                if let Some(bp) = self.saved(|s| s.bp) {
                    self.bp = bp;
                }
            }
            OrcReg::PrevSp => self.bp = self.read_u64(cfa.wrapping_add_signed(bp_off))?,
            OrcReg::Bp => self.bp = self.read_u64(self.bp.wrapping_add_signed(bp_off))?,
            _ => return Err(bad("unknown bp base register")),
        }
        self.check_direction(pc, new_sp, switch)?;
        self.pc = new_pc;
        self.sp = new_sp;
        self.signal = entry.signal;
        Ok(StackFrame {
            pc: new_pc,
            sp: new_sp,
            kind: if entry.signal {
                FrameKind::Interrupted
            } else {
                FrameKind::Return
            },
            regs,
        })
    }

    /// Callers are higher up the same stack. Going down is a switch to
    /// another stack (IRQ or exception stack to the interrupted one), only
    /// through saved registers or an indirect stack pointer, a bounded
    /// number of times, and never back onto a stack range already walked.
    fn check_direction(&mut self, pc: u64, sp: u64, switch: bool) -> Result<(), StopReason> {
        if sp > self.sp {
            self.stack.end = sp;
            return Ok(());
        }
        let wrong = StopReason::WrongDirection { pc, sp };
        let seen = |r: &std::ops::Range<u64>| (r.start..=r.end).contains(&sp);
        if !switch
            || self.left.len() >= MAX_SWITCHES
            || seen(&self.stack)
            || self.left.iter().any(seen)
        {
            return Err(wrong);
        }
        self.left.push(self.stack.clone());
        self.stack = sp..sp;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one text range
mod tests {
    use std::collections::BTreeMap;

    use super::super::orc::OrcFormat;
    use super::*;

    /// Registers at `rip` with stack pointer `rsp`, the others zero.
    fn at(rip: u64, rsp: u64) -> UnwindRegs {
        UnwindRegs {
            rip,
            rsp,
            ..UnwindRegs::default()
        }
    }

    /// Word-addressed fake memory.
    #[derive(Default)]
    struct Mem(BTreeMap<u64, u64>);

    impl Mem {
        fn put(&mut self, addr: u64, v: u64) {
            self.0.insert(addr, v);
        }
        fn reader(&self) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
            |addr, buf| {
                for (i, chunk) in buf.chunks_mut(8).enumerate() {
                    match self.0.get(&(addr + 8 * i as u64)) {
                        Some(v) => chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]),
                        None => return false,
                    }
                }
                true
            }
        }
    }

    const PUSH_BP: OrcEntry = OrcEntry {
        sp_offset: 16,
        bp_offset: -16,
        sp_reg: OrcReg::Sp,
        bp_reg: OrcReg::PrevSp,
        kind: OrcKind::Call,
        signal: false,
    };
    const BP_FRAME: OrcEntry = OrcEntry {
        sp_offset: 16,
        bp_offset: -16,
        sp_reg: OrcReg::Bp,
        bp_reg: OrcReg::PrevSp,
        kind: OrcKind::Call,
        signal: false,
    };
    const REGS: OrcEntry = OrcEntry {
        sp_offset: 0,
        bp_offset: 0,
        sp_reg: OrcReg::Sp,
        bp_reg: OrcReg::Undefined,
        kind: OrcKind::Regs,
        signal: true,
    };
    const IRET: OrcEntry = OrcEntry {
        kind: OrcKind::RegsPartial,
        ..REGS
    };
    const END: OrcEntry = OrcEntry {
        sp_offset: 0,
        bp_offset: 0,
        sp_reg: OrcReg::Undefined,
        bp_reg: OrcReg::Undefined,
        kind: OrcKind::EndOfStack,
        signal: false,
    };
    const UNDEF: OrcEntry = OrcEntry {
        kind: OrcKind::Undefined,
        ..END
    };

    // Code layout of the synthetic kernel (each function 0x100 bytes).
    const ENTRY: u64 = 0xffff_ffff_8100_0000; // asm entry: pt_regs at sp
    const THREAD: u64 = 0xffff_ffff_8100_0100; // kernel thread start
    const WORKER: u64 = 0xffff_ffff_8100_0200; // rbp frame
    const FAULTY: u64 = 0xffff_ffff_8100_0300; // faults at +0x20 (sp+8 there)
    const HANDLER: u64 = 0xffff_ffff_8100_0400; // exception handler
    const TEXT_END: u64 = 0xffff_ffff_8100_0500;

    /// A table in `format` for the layout above: each function starts with
    /// `sp+8`, has a body entry at +0x10, and a terminator after the text.
    fn table(format: OrcFormat) -> OrcTable {
        let fs = OrcEntry::FUNCTION_START;
        let pairs = vec![
            (ENTRY, REGS),
            (THREAD, fs),
            (THREAD + 0x10, END),
            (WORKER, fs),
            (WORKER + 0x4, PUSH_BP),
            (WORKER + 0x8, BP_FRAME),
            (FAULTY, fs),
            (HANDLER, fs),
            (HANDLER + 0x10, PUSH_BP),
            (TEXT_END, UNDEF),
        ];
        // Through the packed layout, as from a real image.
        let pairs = pairs
            .into_iter()
            .map(|(ip, e)| (ip, format.decode(format.encode(&e))))
            .collect();
        OrcTable::from_entries("test", format, pairs, vec![ENTRY..TEXT_END])
    }

    /// A stack, high to low: THREAD (end of stack) called WORKER (rbp
    /// frame) called FAULTY, which faulted; the entry code pushed pt_regs
    /// and called HANDLER, which pushed rbp and is running now.
    /// Returns the memory and the start registers.
    fn scene() -> (Mem, UnwindRegs) {
        let mut m = Mem::default();
        let top = 0xffff_c900_0000_4000u64;
        // THREAD's frame: it called WORKER from THREAD+0x15.
        let worker_ret_slot = top - 0x40;
        m.put(worker_ret_slot, THREAD + 0x15);
        // WORKER pushed rbp (THREAD's rbp = 0) and set rbp to its slot.
        let worker_bp = worker_ret_slot - 8;
        m.put(worker_bp, 0);
        // WORKER called FAULTY from WORKER+0x30; FAULTY faulted at +0x20
        // with sp = the return slot.
        let faulty_ret_slot = worker_bp - 0x20;
        m.put(faulty_ret_slot, WORKER + 0x30);
        // pt_regs pushed below (no gap), then a call to HANDLER.
        let regs = faulty_ret_slot - PT_REGS_SIZE as u64;
        for w in 0..(PT_REGS_SIZE / 8) as u64 {
            m.put(regs + 8 * w, 0x5a5a);
        }
        m.put(regs + 8 * pt::BP as u64, worker_bp);
        m.put(regs + 8 * pt::IP as u64, FAULTY + 0x20);
        m.put(regs + 8 * pt::CS as u64, 0x10);
        m.put(regs + 8 * pt::SP as u64, faulty_ret_slot);
        let handler_ret_slot = regs - 8;
        m.put(handler_ret_slot, ENTRY + 0x40);
        // HANDLER pushed rbp (the interrupted rbp, junk here).
        m.put(handler_ret_slot - 8, 0x1234);
        let start = UnwindRegs {
            rip: HANDLER + 0x18,
            rsp: handler_ret_slot - 8,
            rbp: 0x1234,
            ..UnwindRegs::default()
        };
        (m, start)
    }

    fn walk(t: &OrcTable, m: &Mem, start: &UnwindRegs, max: usize) -> Backtrace {
        unwind(&[t], start, &mut m.reader(), max)
    }

    #[test]
    fn walks_calls_and_an_exception_frame_to_the_end_of_stack() {
        for format in [OrcFormat::V1, OrcFormat::V2, OrcFormat::V3] {
            let t = table(format);
            let (m, start) = scene();
            let bt = walk(&t, &m, &start, 64);
            assert_eq!(bt.stop, StopReason::EndOfStack, "{format:?}");
            let got: Vec<(u64, FrameKind)> = bt.frames.iter().map(|f| (f.pc, f.kind)).collect();
            assert_eq!(
                got,
                vec![
                    (HANDLER + 0x18, FrameKind::Current),
                    (ENTRY + 0x40, FrameKind::Return),
                    (FAULTY + 0x20, FrameKind::Interrupted),
                    (WORKER + 0x30, FrameKind::Return),
                    (THREAD + 0x15, FrameKind::Return),
                ],
                "{format:?}"
            );
            let regs = bt.frames.get(2).and_then(|f| f.regs);
            assert_eq!(regs.map(|r| r.full), Some(true));
            assert!(bt.frames.windows(2).all(|w| w[0].sp < w[1].sp));
            assert_eq!(bt.frames[2].lookup_pc(), FAULTY + 0x20);
            assert_eq!(bt.frames[3].lookup_pc(), WORKER + 0x2f);
            assert!(bt.stop.is_complete());
        }
    }

    #[test]
    fn stops_at_the_frame_limit() {
        let t = table(OrcFormat::V1);
        let (m, start) = scene();
        let bt = walk(&t, &m, &start, 3);
        assert_eq!((bt.frames.len(), bt.stop), (3, StopReason::Limit));
        let bt = walk(&t, &m, &start, 0);
        assert_eq!((bt.frames.len(), bt.stop), (0, StopReason::Limit));
    }

    #[test]
    fn stops_at_unknown_code_and_unreadable_stack() {
        let t = table(OrcFormat::V3);
        let (m, mut start) = scene();
        start.rip = 0x40_1000; // user-space or unknown code
        let bt = walk(&t, &m, &start, 64);
        assert_eq!(bt.stop, StopReason::NoEntry { pc: 0x40_1000 });
        assert_eq!(bt.frames.len(), 1);

        let (_, start) = scene();
        let empty = Mem::default();
        let bt = walk(&t, &empty, &start, 64);
        assert_eq!(
            bt.stop,
            StopReason::Unreadable {
                addr: start.rsp + 8
            }
        );

        // A return address into code past the table's range.
        let (mut m, start) = scene();
        let slot = start.rsp + 8 + 8 + PT_REGS_SIZE as u64 + 0x28;
        m.put(slot, TEXT_END + 0x100);
        let bt = walk(&t, &m, &start, 64);
        assert_eq!(
            bt.stop,
            StopReason::NoEntry {
                pc: TEXT_END + 0x100
            }
        );
    }

    #[test]
    fn a_user_mode_register_frame_ends_the_walk() {
        let t = table(OrcFormat::V1);
        let (mut m, start) = scene();
        let regs = start.rsp + 16;
        m.put(regs + 8 * pt::CS as u64, 0x33);
        let bt = walk(&t, &m, &start, 64);
        assert_eq!(bt.frames.len(), 2);
        assert_eq!(
            bt.stop,
            StopReason::UserMode {
                pc: FAULTY + 0x20,
                sp: regs + PT_REGS_SIZE as u64
            }
        );
    }

    #[test]
    fn an_iret_frame_gives_an_exact_pc_and_keeps_earlier_registers() {
        // An interrupt at FAULTY+0x20 with only the iret frame saved; the
        // next entry (at the interrupted pc) needs rdi, which comes from the
        // full register set in effect before (the start registers).
        let t = OrcTable::from_entries(
            "iret",
            OrcFormat::V3,
            vec![
                (ENTRY, IRET),
                (
                    FAULTY,
                    OrcEntry {
                        sp_reg: OrcReg::Di,
                        sp_offset: 0,
                        ..OrcEntry::FUNCTION_START
                    },
                ),
                (THREAD, END),
            ],
            vec![ENTRY..TEXT_END],
        );
        let mut m = Mem::default();
        let sp = 0xffff_c900_0000_1000u64;
        for (i, v) in [FAULTY + 0x20, 0x10, 0x246, sp + 0x100, 0x18]
            .into_iter()
            .enumerate()
        {
            m.put(sp + 8 * i as u64, v);
        }
        // rdi = the CFA of FAULTY's frame; the return slot below it.
        let cfa = sp + 0x200;
        m.put(cfa - 8, THREAD + 5);
        let start = UnwindRegs {
            rip: ENTRY + 4,
            rsp: sp,
            rdi: cfa,
            ..UnwindRegs::default()
        };
        let bt = walk(&t, &m, &start, 64);
        assert_eq!(bt.pcs(), vec![ENTRY + 4, FAULTY + 0x20, THREAD + 5]);
        assert_eq!(bt.frames[1].kind, FrameKind::Interrupted);
        assert_eq!(
            bt.frames[1].regs,
            Some(RegsFrame {
                addr: sp,
                full: false
            })
        );
        assert_eq!(bt.stop, StopReason::EndOfStack);

        // After a call frame no registers are known: a DI-based entry stops.
        let start = UnwindRegs {
            rip: THREAD + 0x10,
            ..start
        };
        let t2 = OrcTable::from_entries(
            "di",
            OrcFormat::V3,
            vec![
                (THREAD, OrcEntry::FUNCTION_START),
                (FAULTY, t.find(FAULTY).unwrap_or(END)),
            ],
            vec![ENTRY..TEXT_END],
        );
        let mut m = Mem::default();
        m.put(sp, FAULTY + 0x21);
        let bt = walk(&t2, &m, &start, 64);
        assert_eq!(bt.pcs(), vec![THREAD + 0x10, FAULTY + 0x21]);
        assert!(matches!(bt.stop, StopReason::BadEntry { pc, .. } if pc == FAULTY + 0x21));
    }

    #[test]
    fn stack_switch_through_sp_indirect() {
        // A handler on an IRQ stack (above the task stack here: a switch
        // goes down). call_on_irqstack saved the task sp at the IRQ stack
        // top; the call site's entry is SP_INDIRECT + 8.
        let irq_top = 0xffff_c900_0010_0000u64;
        let task_sp = 0xffff_c900_0000_3f00u64;
        let t = OrcTable::from_entries(
            "irq",
            OrcFormat::V1,
            vec![
                (HANDLER, OrcEntry::FUNCTION_START),
                (
                    ENTRY,
                    OrcEntry {
                        sp_reg: OrcReg::SpIndirect,
                        ..OrcEntry::FUNCTION_START
                    },
                ),
                (THREAD, END),
            ],
            vec![ENTRY..TEXT_END],
        );
        let mut m = Mem::default();
        let handler_sp = irq_top - 16;
        m.put(handler_sp, ENTRY + 0x11); // return into the call site
        m.put(irq_top - 8, task_sp); // saved task sp
        m.put(task_sp, THREAD + 7); // the call site's caller
        let start = at(HANDLER + 3, handler_sp);
        let bt = walk(&t, &m, &start, 64);
        assert_eq!(bt.pcs(), vec![HANDLER + 3, ENTRY + 0x11, THREAD + 7]);
        assert_eq!(bt.frames[2].sp, task_sp + 8);
        assert_eq!(bt.stop, StopReason::EndOfStack);
    }

    #[test]
    fn corrupt_stacks_and_tables_stop_cleanly() {
        let fs = OrcEntry::FUNCTION_START;
        // A frame whose caller sp is not above it (sp-8 CFA).
        let down = OrcEntry {
            sp_offset: -8,
            ..fs
        };
        let t = OrcTable::from_entries("c", OrcFormat::V3, vec![(WORKER, down)], vec![]);
        let mut m = Mem::default();
        let sp = 0xffff_c900_0000_1000u64;
        m.put(sp - 16, WORKER + 1);
        let start = at(WORKER, sp);
        let bt = walk(&t, &m, &start, 64);
        assert!(
            matches!(bt.stop, StopReason::WrongDirection { .. }),
            "{:?}",
            bt.stop
        );
        assert_eq!(bt.frames.len(), 1);

        // A return address pointing at itself with sp+0: no progress.
        let zero = OrcEntry { sp_offset: 0, ..fs };
        let t = OrcTable::from_entries("c", OrcFormat::V3, vec![(WORKER, zero)], vec![]);
        let mut m = Mem::default();
        m.put(sp - 8, WORKER + 1);
        let bt = walk(&t, &m, &start, 64);
        assert!(matches!(bt.stop, StopReason::WrongDirection { .. }));

        // pt_regs frames that point back down into the same stack: a
        // loop of exception frames is refused, not followed.
        let t = OrcTable::from_entries("c", OrcFormat::V1, vec![(ENTRY, REGS)], vec![]);
        let mut m = Mem::default();
        for w in 0..(PT_REGS_SIZE / 8) as u64 {
            m.put(sp + 8 * w, 0);
        }
        m.put(sp + 8 * pt::IP as u64, ENTRY);
        m.put(sp + 8 * pt::SP as u64, sp);
        let start = at(ENTRY, sp);
        let bt = walk(&t, &m, &start, 1000);
        assert!(
            matches!(bt.stop, StopReason::WrongDirection { .. }),
            "{:?}",
            bt.stop
        );
        assert!(bt.frames.len() <= 2);

        // Ping-pong between two stacks through SP_INDIRECT: bounded.
        let ind = OrcEntry {
            sp_reg: OrcReg::SpIndirect,
            sp_offset: 0,
            ..fs
        };
        let t = OrcTable::from_entries("c", OrcFormat::V3, vec![(WORKER, ind)], vec![]);
        let (a, b) = (0xffff_c900_0000_2000u64, 0xffff_c900_0000_1000u64);
        let mut m = Mem::default();
        m.put(a, b + 8);
        m.put(b, WORKER + 1);
        m.put(b + 8, a);
        m.put(a - 8, WORKER + 1);
        let start = at(WORKER, a);
        let bt = walk(&t, &m, &start, 1000);
        assert!(
            bt.frames.len() < 2 + MAX_SWITCHES * 2,
            "{}",
            bt.frames.len()
        );
        assert!(!bt.stop.is_complete());

        // Undefined entries, unknown registers and types, garbage bytes.
        for (e, stop) in [
            (UNDEF, "Undefined"),
            (
                OrcEntry {
                    sp_reg: OrcReg::Other(12),
                    ..fs
                },
                "BadEntry",
            ),
            (
                OrcEntry {
                    bp_reg: OrcReg::Di,
                    ..fs
                },
                "BadEntry",
            ),
            (
                OrcEntry {
                    kind: OrcKind::Other(6),
                    ..fs
                },
                "BadEntry",
            ),
        ] {
            let t = OrcTable::from_entries("c", OrcFormat::V3, vec![(WORKER, e)], vec![]);
            let mut m = Mem::default();
            m.put(sp, THREAD);
            let start = at(WORKER, sp);
            let bt = walk(&t, &m, &start, 64);
            assert!(
                format!("{:?}", bt.stop).starts_with(stop),
                "{e:?}: {:?}",
                bt.stop
            );
        }
        for seed in 0u64..200 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for format in [OrcFormat::V1, OrcFormat::V2, OrcFormat::V3] {
                let pairs = (0..8)
                    .map(|i| {
                        let raw = next().to_le_bytes();
                        let mut e = [0u8; 6];
                        e.copy_from_slice(&raw[..6]);
                        (WORKER + 0x10 * i, format.decode(e))
                    })
                    .collect();
                let t = OrcTable::from_entries("r", format, pairs, vec![]);
                let mut mem = |addr: u64, buf: &mut [u8]| {
                    if addr >> 60 == 0 {
                        return false;
                    }
                    for (i, b) in buf.iter_mut().enumerate() {
                        let v = (addr.wrapping_add(i as u64) >> 3).wrapping_mul(0x2545_f491);
                        // Mostly addresses inside the table's code.
                        *b = if (addr >> 3) % 3 == 0 {
                            (WORKER + (v % 0x80)).to_le_bytes()[(addr as usize + i) % 8]
                        } else {
                            v.to_le_bytes()[i % 8]
                        };
                    }
                    true
                };
                let start = UnwindRegs {
                    rip: WORKER + next() % 0x80,
                    rsp: 0xffff_c900_0000_0000 | (next() & 0xffff),
                    rbp: next(),
                    rdi: next(),
                    rdx: next(),
                    r10: next(),
                    r13: next(),
                };
                let bt = unwind(&[&t], &start, &mut mem, 256);
                assert!(bt.frames.len() <= 256);
            }
        }
    }

    #[test]
    fn a_null_call_unwinds_to_the_caller() {
        let t = table(OrcFormat::V1);
        let mut m = Mem::default();
        let sp = 0xffff_c900_0000_1000u64;
        m.put(sp, WORKER + 0x30);
        m.put(sp + 8, 0);
        let start = UnwindRegs {
            rip: 0,
            rsp: sp,
            rbp: sp + 8,
            ..UnwindRegs::default()
        };
        let bt = walk(&t, &m, &start, 64);
        assert_eq!(bt.pcs().get(..2), Some(&[0, WORKER + 0x30][..]));
    }
}
