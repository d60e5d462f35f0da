//! The register table: names, sizes, sets, DWARF numbers and where each
//! value lives in [`Registers`]. The 'g' packet, `target.xml` and
//! `qRegisterInfo` are all derived from it.

use std::sync::OnceLock;

use crate::vmi::Registers;

/// Where a register's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegKind {
    /// General-purpose register, index in gdb order (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15).
    Gpr(usize),
    /// RIP.
    Rip,
    /// RFLAGS (32 bits on the wire).
    Eflags,
    /// Segment selector: cs, ss, ds, es, fs, gs.
    Seg(usize),
    /// x87 stack register (not backed: zero).
    St(usize),
    /// x87 control/status register (not backed: zero).
    Fpu(usize),
    /// SSE register (not backed: zero).
    Xmm(usize),
    /// MXCSR (not backed: zero).
    Mxcsr,
    /// FS base.
    FsBase,
    /// Active GS base.
    GsBase,
    /// Inactive GS base (swapgs shadow).
    KGsBase,
    /// Control register CRn.
    Cr(u8),
    /// EFER.
    Efer,
}

impl RegKind {
    /// True when the engine provides the value (not an FPU/SSE placeholder).
    pub fn is_real(self) -> bool {
        !matches!(
            self,
            RegKind::St(_) | RegKind::Fpu(_) | RegKind::Xmm(_) | RegKind::Mxcsr
        )
    }

    /// The value in `r`.
    pub fn get(self, r: &Registers) -> u128 {
        let v: u64 = match self {
            RegKind::Gpr(i) => r.gprs()[i],
            RegKind::Rip => r.rip,
            RegKind::Eflags => r.rflags,
            RegKind::Seg(i) => [r.cs, r.ss, r.ds, r.es, r.fs, r.gs][i].selector.into(),
            RegKind::St(_) | RegKind::Fpu(_) | RegKind::Xmm(_) | RegKind::Mxcsr => 0,
            RegKind::FsBase => r.fs.base,
            RegKind::GsBase => r.gs.base,
            RegKind::KGsBase => r.shadow_gs,
            RegKind::Cr(0) => r.cr0,
            RegKind::Cr(2) => r.cr2,
            RegKind::Cr(3) => r.cr3,
            RegKind::Cr(4) => r.cr4,
            RegKind::Cr(_) => 0,
            RegKind::Efer => r.efer,
        };
        v.into()
    }

    /// Stores `v` into `r` (placeholders ignore it).
    pub fn set(self, r: &mut Registers, v: u128) {
        let v = v as u64;
        let slot: &mut u64 = match self {
            RegKind::Gpr(i) => match i {
                0 => &mut r.rax,
                1 => &mut r.rbx,
                2 => &mut r.rcx,
                3 => &mut r.rdx,
                4 => &mut r.rsi,
                5 => &mut r.rdi,
                6 => &mut r.rbp,
                7 => &mut r.rsp,
                8 => &mut r.r8,
                9 => &mut r.r9,
                10 => &mut r.r10,
                11 => &mut r.r11,
                12 => &mut r.r12,
                13 => &mut r.r13,
                14 => &mut r.r14,
                _ => &mut r.r15,
            },
            RegKind::Rip => &mut r.rip,
            RegKind::Eflags => {
                // The wire carries 32 bits; keep the (reserved) upper half.
                r.rflags = (r.rflags & !0xffff_ffff) | (v & 0xffff_ffff);
                return;
            }
            RegKind::Seg(i) => {
                let seg = match i {
                    0 => &mut r.cs,
                    1 => &mut r.ss,
                    2 => &mut r.ds,
                    3 => &mut r.es,
                    4 => &mut r.fs,
                    _ => &mut r.gs,
                };
                seg.selector = v as u16;
                return;
            }
            RegKind::St(_) | RegKind::Fpu(_) | RegKind::Xmm(_) | RegKind::Mxcsr => return,
            RegKind::FsBase => &mut r.fs.base,
            RegKind::GsBase => &mut r.gs.base,
            RegKind::KGsBase => &mut r.shadow_gs,
            RegKind::Cr(0) => &mut r.cr0,
            RegKind::Cr(2) => &mut r.cr2,
            RegKind::Cr(3) => &mut r.cr3,
            RegKind::Cr(4) => &mut r.cr4,
            RegKind::Cr(_) => return,
            RegKind::Efer => &mut r.efer,
        };
        *slot = v;
    }
}

/// One register of the table.
#[derive(Debug, Clone, Copy)]
pub struct RegDef {
    /// Name as GDB/LLDB know it.
    pub name: &'static str,
    /// Size in bits.
    pub bits: usize,
    /// Where the value lives.
    pub kind: RegKind,
    /// LLDB register set.
    pub set: &'static str,
    /// DWARF / eh_frame number.
    pub dwarf: Option<usize>,
}

const GPR: &str = "General Purpose Registers";
const FPU: &str = "Floating Point Registers";
const SYS: &str = "System Registers";

const fn r(
    name: &'static str,
    bits: usize,
    kind: RegKind,
    set: &'static str,
    dwarf: i32,
) -> RegDef {
    RegDef {
        name,
        bits,
        kind,
        set,
        dwarf: if dwarf < 0 {
            None
        } else {
            Some(dwarf as usize)
        },
    }
}

/// Every register, in wire order (= register number).
pub const REGS: &[RegDef] = &[
    r("rax", 64, RegKind::Gpr(0), GPR, 0),
    r("rbx", 64, RegKind::Gpr(1), GPR, 3),
    r("rcx", 64, RegKind::Gpr(2), GPR, 2),
    r("rdx", 64, RegKind::Gpr(3), GPR, 1),
    r("rsi", 64, RegKind::Gpr(4), GPR, 4),
    r("rdi", 64, RegKind::Gpr(5), GPR, 5),
    r("rbp", 64, RegKind::Gpr(6), GPR, 6),
    r("rsp", 64, RegKind::Gpr(7), GPR, 7),
    r("r8", 64, RegKind::Gpr(8), GPR, 8),
    r("r9", 64, RegKind::Gpr(9), GPR, 9),
    r("r10", 64, RegKind::Gpr(10), GPR, 10),
    r("r11", 64, RegKind::Gpr(11), GPR, 11),
    r("r12", 64, RegKind::Gpr(12), GPR, 12),
    r("r13", 64, RegKind::Gpr(13), GPR, 13),
    r("r14", 64, RegKind::Gpr(14), GPR, 14),
    r("r15", 64, RegKind::Gpr(15), GPR, 15),
    r("rip", 64, RegKind::Rip, GPR, 16),
    r("eflags", 32, RegKind::Eflags, GPR, 49),
    r("cs", 32, RegKind::Seg(0), GPR, 51),
    r("ss", 32, RegKind::Seg(1), GPR, 52),
    r("ds", 32, RegKind::Seg(2), GPR, 53),
    r("es", 32, RegKind::Seg(3), GPR, 50),
    r("fs", 32, RegKind::Seg(4), GPR, 54),
    r("gs", 32, RegKind::Seg(5), GPR, 55),
    r("st0", 80, RegKind::St(0), FPU, 33),
    r("st1", 80, RegKind::St(1), FPU, 34),
    r("st2", 80, RegKind::St(2), FPU, 35),
    r("st3", 80, RegKind::St(3), FPU, 36),
    r("st4", 80, RegKind::St(4), FPU, 37),
    r("st5", 80, RegKind::St(5), FPU, 38),
    r("st6", 80, RegKind::St(6), FPU, 39),
    r("st7", 80, RegKind::St(7), FPU, 40),
    r("fctrl", 32, RegKind::Fpu(0), FPU, -1),
    r("fstat", 32, RegKind::Fpu(1), FPU, -1),
    r("ftag", 32, RegKind::Fpu(2), FPU, -1),
    r("fiseg", 32, RegKind::Fpu(3), FPU, -1),
    r("fioff", 32, RegKind::Fpu(4), FPU, -1),
    r("foseg", 32, RegKind::Fpu(5), FPU, -1),
    r("fooff", 32, RegKind::Fpu(6), FPU, -1),
    r("fop", 32, RegKind::Fpu(7), FPU, -1),
    r("xmm0", 128, RegKind::Xmm(0), FPU, 17),
    r("xmm1", 128, RegKind::Xmm(1), FPU, 18),
    r("xmm2", 128, RegKind::Xmm(2), FPU, 19),
    r("xmm3", 128, RegKind::Xmm(3), FPU, 20),
    r("xmm4", 128, RegKind::Xmm(4), FPU, 21),
    r("xmm5", 128, RegKind::Xmm(5), FPU, 22),
    r("xmm6", 128, RegKind::Xmm(6), FPU, 23),
    r("xmm7", 128, RegKind::Xmm(7), FPU, 24),
    r("xmm8", 128, RegKind::Xmm(8), FPU, 25),
    r("xmm9", 128, RegKind::Xmm(9), FPU, 26),
    r("xmm10", 128, RegKind::Xmm(10), FPU, 27),
    r("xmm11", 128, RegKind::Xmm(11), FPU, 28),
    r("xmm12", 128, RegKind::Xmm(12), FPU, 29),
    r("xmm13", 128, RegKind::Xmm(13), FPU, 30),
    r("xmm14", 128, RegKind::Xmm(14), FPU, 31),
    r("xmm15", 128, RegKind::Xmm(15), FPU, 32),
    r("mxcsr", 32, RegKind::Mxcsr, FPU, 64),
    r("fs_base", 64, RegKind::FsBase, GPR, 58),
    r("gs_base", 64, RegKind::GsBase, GPR, 59),
    r("k_gs_base", 64, RegKind::KGsBase, SYS, -1),
    r("cr0", 64, RegKind::Cr(0), SYS, -1),
    r("cr2", 64, RegKind::Cr(2), SYS, -1),
    r("cr3", 64, RegKind::Cr(3), SYS, -1),
    r("cr4", 64, RegKind::Cr(4), SYS, -1),
    r("efer", 64, RegKind::Efer, SYS, -1),
];

/// GDB feature a register belongs to.
fn feature_of(kind: RegKind) -> &'static str {
    match kind {
        RegKind::Xmm(_) | RegKind::Mxcsr => "org.gnu.gdb.i386.sse",
        RegKind::FsBase | RegKind::GsBase => "org.gnu.gdb.i386.segments",
        RegKind::KGsBase | RegKind::Cr(_) | RegKind::Efer => "org.xenprobe.x86.system",
        _ => "org.gnu.gdb.i386.core",
    }
}

fn xml_type(def: &RegDef) -> &'static str {
    match def.kind {
        RegKind::Rip => "code_ptr",
        RegKind::Gpr(6) | RegKind::Gpr(7) => "data_ptr",
        RegKind::St(_) => "i387_ext",
        RegKind::Xmm(_) => "uint128",
        RegKind::Eflags | RegKind::Seg(_) | RegKind::Fpu(_) | RegKind::Mxcsr => "int32",
        _ => "int64",
    }
}

fn build_xml() -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n<architecture>i386:x86-64</architecture>\n",
    );
    let mut open: Option<&str> = None;
    for (i, def) in REGS.iter().enumerate() {
        let feat = feature_of(def.kind);
        if open != Some(feat) {
            if open.is_some() {
                s.push_str("</feature>\n");
            }
            s.push_str(&format!("<feature name=\"{feat}\">\n"));
            open = Some(feat);
        }
        let group = match def.kind {
            RegKind::St(_) | RegKind::Fpu(_) => " group=\"float\"",
            RegKind::Xmm(_) | RegKind::Mxcsr => " group=\"vector\"",
            RegKind::KGsBase | RegKind::Cr(_) | RegKind::Efer => " group=\"system\"",
            _ => " group=\"general\"",
        };
        s.push_str(&format!(
            "  <reg name=\"{}\" bitsize=\"{}\" type=\"{}\" regnum=\"{i}\"{group}/>\n",
            def.name,
            def.bits,
            xml_type(def)
        ));
    }
    s.push_str("</feature>\n</target>\n");
    s
}

/// The `target.xml` served to GDB (and LLDB, which reads it too).
pub fn target_xml() -> &'static str {
    static XML: OnceLock<String> = OnceLock::new();
    XML.get_or_init(build_xml)
}
