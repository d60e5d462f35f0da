//! Our own x86-64 [`gdbstub::arch::Arch`]: general registers, segments,
//! FS/GS bases and control registers, served to GDB as a `target.xml` and to
//! LLDB through `qRegisterInfo`, both from one register table ([`REGS`]).
//!
//! The x87 and SSE registers are part of the layout only because GDB's amd64
//! architecture insists on them; the engine does not read FPU state, so they
//! read as zero and writes to them are ignored.

mod table;

pub use table::{target_xml, RegDef, RegKind, REGS};

use gdbstub::arch::lldb::{Encoding, Format, Generic, Register, RegisterInfo};
use gdbstub::arch::{Arch, RegId};
use std::num::NonZeroUsize;

use crate::vmi::Registers;

/// x86-64 as a Xen guest vCPU shows it.
#[derive(Debug)]
pub enum XenX86_64 {}

/// The register file of one vCPU in the layout of [`REGS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GdbRegisters(pub Registers);

/// A register number: the index in [`REGS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegNum(pub usize);

impl RegId for RegNum {
    fn from_raw_id(id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        let def = REGS.get(id)?;
        Some((RegNum(id), NonZeroUsize::new(def.bits / 8)))
    }
    fn to_raw_id(&self) -> Option<usize> {
        Some(self.0)
    }
}

impl gdbstub::arch::Registers for GdbRegisters {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.0.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        for def in REGS {
            let v = def.kind.get(&self.0);
            for b in &v.to_le_bytes()[..def.bits / 8] {
                write_byte(Some(*b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let mut off = 0;
        for def in REGS {
            let n = def.bits / 8;
            let Some(chunk) = bytes.get(off..off + n) else {
                // A shorter 'G' packet sets the registers it covers.
                return if off == 0 { Err(()) } else { Ok(()) };
            };
            def.kind.set(&mut self.0, le_value(chunk));
            off += n;
        }
        Ok(())
    }
}

/// Little-endian bytes (up to 16) as a number.
pub fn le_value(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    u128::from_le_bytes(b)
}

/// Byte offset of register `idx` in the 'g' packet.
pub fn offset_of(idx: usize) -> usize {
    REGS[..idx.min(REGS.len())].iter().map(|d| d.bits / 8).sum()
}

impl Arch for XenX86_64 {
    type Usize = u64;
    type Registers = GdbRegisters;
    type BreakpointKind = usize;
    type RegId = RegNum;

    fn target_description_xml() -> Option<&'static str> {
        Some(table::target_xml())
    }

    fn lldb_register_info(reg_id: usize) -> Option<RegisterInfo<'static>> {
        let Some(def) = REGS.get(reg_id) else {
            return Some(RegisterInfo::Done);
        };
        let (encoding, format) = match def.kind {
            RegKind::St(_) => (Encoding::IEEE754, Format::Float),
            RegKind::Xmm(_) => (Encoding::Vector, Format::VectorUInt8),
            _ => (Encoding::Uint, Format::Hex),
        };
        let generic = match def.name {
            "rip" => Some(Generic::Pc),
            "rsp" => Some(Generic::Sp),
            "rbp" => Some(Generic::Fp),
            "eflags" => Some(Generic::Flags),
            "rdi" => Some(Generic::Arg1),
            "rsi" => Some(Generic::Arg2),
            "rdx" => Some(Generic::Arg3),
            "rcx" => Some(Generic::Arg4),
            "r8" => Some(Generic::Arg5),
            "r9" => Some(Generic::Arg6),
            _ => None,
        };
        Some(RegisterInfo::Register(Register {
            name: def.name,
            alt_name: None,
            bitsize: def.bits,
            offset: offset_of(reg_id),
            encoding,
            format,
            set: def.set,
            gcc: def.dwarf,
            dwarf: def.dwarf,
            generic,
            container_regs: None,
            invalidate_regs: None,
        }))
    }
}

/// Looks a register up by name (`rax`, `eflags`/`rflags`, `cr3`...).
pub fn reg_by_name(name: &str) -> Option<&'static RegDef> {
    let name = name.trim_start_matches('$').to_ascii_lowercase();
    let name = match name.as_str() {
        "rflags" => "eflags",
        "pc" => "rip",
        "sp" => "rsp",
        "fp" => "rbp",
        n => n,
    };
    REGS.iter().find(|d| d.name == name && d.kind.is_real())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdbstub::arch::Registers as _;

    #[test]
    fn layout_round_trips_and_matches_offsets() {
        let mut r = Registers {
            rax: 0x1111,
            rbx: 0x2222,
            rsp: 0x8888,
            r15: 0xffff,
            rip: 0x10_2000,
            rflags: 0x246,
            cr3: 0x1000,
            efer: 0xd01,
            shadow_gs: 0x55,
            ..Default::default()
        };
        r.fs.base = 0x7f00;
        r.cs.selector = 0x10;
        let g = GdbRegisters(r);
        let mut bytes = Vec::new();
        g.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), offset_of(REGS.len()));
        let rip = REGS.iter().position(|d| d.name == "rip").unwrap();
        assert_eq!(
            le_value(&bytes[offset_of(rip)..offset_of(rip) + 8]),
            0x10_2000
        );
        let cr3 = REGS.iter().position(|d| d.name == "cr3").unwrap();
        assert_eq!(le_value(&bytes[offset_of(cr3)..offset_of(cr3) + 8]), 0x1000);
        let mut back = GdbRegisters::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, g);
        assert!(back.gdb_deserialize(&[]).is_err());
    }

    #[test]
    fn xml_lists_every_register_in_order() {
        let xml = table::target_xml();
        let mut pos = 0;
        for (i, d) in REGS.iter().enumerate() {
            let needle = format!("name=\"{}\" bitsize=\"{}\"", d.name, d.bits);
            let at = xml[pos..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{} missing or out of order", d.name));
            pos += at;
            assert!(xml[pos..].starts_with(&needle), "{i}");
        }
        assert!(xml.contains("org.gnu.gdb.i386.core"));
        assert!(xml.contains("org.gnu.gdb.i386.segments"));
    }

    #[test]
    fn lldb_info_ends_and_names() {
        assert!(matches!(
            XenX86_64::lldb_register_info(REGS.len()),
            Some(RegisterInfo::Done)
        ));
        match XenX86_64::lldb_register_info(16) {
            Some(RegisterInfo::Register(r)) => {
                assert_eq!(r.name, "rip");
                assert_eq!(r.offset, 128);
            }
            _ => panic!("rip"),
        }
        assert_eq!(reg_by_name("$RFLAGS").map(|d| d.name), Some("eflags"));
        assert!(
            reg_by_name("st0").is_none(),
            "FPU is not backed by the engine"
        );
    }
}
