//! Comparison logging ("input-to-state", as in Redqueen and AFL++'s
//! CmpLog): the `cmp` instructions of the code under test whose operands are
//! both computed at run time, their operand values read at a breakpoint on
//! each, and the inputs made by writing one operand's bytes where the
//! other's occur in the input. A checksum the input carries is solved this
//! way: the computed sum replaces the stored one.
//!
//! Comparisons against an immediate are logged too: the static dictionary
//! ([`crate::blocks::comparison_tokens`]) has their constants, but only the
//! run-time value says where in the input the compared bytes sit.

use std::path::Path;

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use xenprobe::vmi::Registers;

use crate::blocks::{functions_in_image, instructions, BlocksError};

/// One operand of a logged comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// A general-purpose register (any width, AH..BH included).
    Reg(Register),
    /// Memory at `base + index * scale + disp` (RIP-relative: `disp` is
    /// the absolute address and `base` is `Register::None`).
    Mem {
        /// Base register or `Register::None`.
        base: Register,
        /// Index register or `Register::None`.
        index: Register,
        /// Index scale (1, 2, 4 or 8).
        scale: u32,
        /// Displacement (sign-extended).
        disp: u64,
    },
    /// An immediate (sign-extended to 64 bits).
    Imm(u64),
}

/// A `cmp` whose two operands are computed at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmpSite {
    /// Address of the instruction.
    pub addr: u64,
    /// Width of the comparison in bytes (1, 2, 4 or 8).
    pub size: usize,
    /// The two operands, in instruction order.
    pub ops: [Operand; 2],
}

/// The operand values of one comparison, as the guest compared them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmpValues {
    /// Width in bytes.
    pub size: usize,
    /// First operand.
    pub a: u64,
    /// Second operand.
    pub b: u64,
}

fn operand(insn: &Instruction, i: u32) -> Option<Operand> {
    match insn.op_kind(i) {
        OpKind::Register => {
            let r = insn.op_register(i);
            gpr_index(r.full_register()).map(|_| Operand::Reg(r))
        }
        OpKind::Memory => {
            // FS/GS-relative data (thread locals) has a base we do not read.
            if matches!(insn.memory_segment(), Register::FS | Register::GS) {
                return None;
            }
            let (base, index) = (insn.memory_base(), insn.memory_index());
            if base == Register::RIP {
                return Some(Operand::Mem {
                    base: Register::None,
                    index: Register::None,
                    scale: 1,
                    disp: insn.memory_displacement64(),
                });
            }
            let ok = |r: Register| r == Register::None || gpr_index(r.full_register()).is_some();
            (ok(base) && ok(index)).then(|| Operand::Mem {
                base,
                index,
                scale: insn.memory_index_scale(),
                disp: insn.memory_displacement64(),
            })
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Some(Operand::Imm(insn.immediate(i))),
        _ => None,
    }
}

/// Comparison sites of one function's code (`code` starts at `addr`):
/// every `cmp` of general-purpose registers, memory and immediates.
pub fn sites_of(code: &[u8], addr: u64) -> Vec<CmpSite> {
    let mut out = Vec::new();
    for insn in instructions(code, addr) {
        if insn.mnemonic() != Mnemonic::Cmp || insn.op_count() != 2 {
            continue;
        }
        let (Some(a), Some(b)) = (operand(&insn, 0), operand(&insn, 1)) else {
            continue;
        };
        if a == b {
            continue;
        }
        let size = match a {
            Operand::Reg(r) => r.size(),
            Operand::Mem { .. } => insn.memory_size().size(),
            Operand::Imm(_) => continue,
        };
        if matches!(size, 1 | 2 | 4 | 8) {
            out.push(CmpSite {
                addr: insn.ip(),
                size,
                ops: [a, b],
            });
        }
    }
    out
}

/// Comparison sites of the selected functions of the image at `path`
/// (the same patterns as the coverage, [`crate::blocks::select_functions`]).
pub fn sites_in_image(path: &Path, patterns: &[String]) -> Result<Vec<CmpSite>, BlocksError> {
    let mut out = Vec::new();
    for (f, code) in functions_in_image(path, patterns)? {
        out.extend(sites_of(&code, f.addr));
    }
    out.sort_by_key(|s| s.addr);
    out.dedup_by_key(|s| s.addr);
    Ok(out)
}

/// Index of a 64-bit general-purpose register in [`Registers::gprs`] order
/// (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15).
fn gpr_index(full: Register) -> Option<usize> {
    const ORDER: [Register; 16] = [
        Register::RAX,
        Register::RBX,
        Register::RCX,
        Register::RDX,
        Register::RSI,
        Register::RDI,
        Register::RBP,
        Register::RSP,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    ORDER.iter().position(|&r| r == full)
}

fn mask(v: u64, size: usize) -> u64 {
    if size >= 8 {
        v
    } else {
        v & ((1u64 << (size * 8)) - 1)
    }
}

/// The value of a register (any width) in `regs`.
pub fn reg_value(regs: &Registers, r: Register) -> Option<u64> {
    let full = regs.gprs()[gpr_index(r.full_register())?];
    Some(match r {
        Register::AH | Register::BH | Register::CH | Register::DH => (full >> 8) & 0xff,
        _ => mask(full, r.size()),
    })
}

/// The values a site compares, given the vCPU's registers at the `cmp`
/// (before it runs) and a reader of guest-virtual memory. None when an
/// operand cannot be read.
pub fn evaluate(
    site: &CmpSite,
    regs: &Registers,
    mut read: impl FnMut(u64, &mut [u8]) -> bool,
) -> Option<CmpValues> {
    let mut value = |op: &Operand| -> Option<u64> {
        match *op {
            Operand::Imm(v) => Some(mask(v, site.size)),
            Operand::Reg(r) => reg_value(regs, r),
            Operand::Mem {
                base,
                index,
                scale,
                disp,
            } => {
                let part = |r: Register| {
                    if r == Register::None {
                        Some(0)
                    } else {
                        reg_value(regs, r)
                    }
                };
                let va = part(base)?
                    .wrapping_add(part(index)?.wrapping_mul(u64::from(scale)))
                    .wrapping_add(disp);
                let mut buf = [0u8; 8];
                read(va, &mut buf[..site.size]).then(|| u64::from_le_bytes(buf))
            }
        }
    };
    let a = value(&site.ops[0])?;
    let b = value(&site.ops[1])?;
    Some(CmpValues {
        size: site.size,
        a,
        b,
    })
}

/// The widths worth trying for a value pair: the compared width and, when
/// both values fit, the narrower ones (a 16-bit field compared after a
/// zero-extension to 32 bits sits in the input as 2 bytes).
fn widths(c: &CmpValues) -> Vec<usize> {
    let mut out = vec![c.size];
    for w in [4, 2, 1] {
        if w < c.size && mask(c.a, w) == c.a && mask(c.b, w) == c.b {
            out.push(w);
        }
    }
    out
}

/// Bytes needed to hold the wider of the two operands: a checksum or a key
/// needs 4 or 8, a record type or a small count 1.
fn significance(c: &CmpValues) -> usize {
    let bytes = |v: u64| (64 - v.leading_zeros() as usize).div_ceil(8);
    bytes(c.a).max(bytes(c.b))
}

/// Inputs made from `input` by writing one operand of a logged comparison
/// where the bytes of the other occur (little- and big-endian, at most a
/// few places per pattern), at most `max` of them, without duplicates and
/// without `input` itself. Distinct comparisons are taken widest first
/// ([`significance`]), then in the order they ran: a parser's dispatch on
/// small values logs many comparisons before the checksum of its last
/// record, and must not use up `max` before it.
pub fn candidates(input: &[u8], logs: &[CmpValues], max: usize) -> Vec<Vec<u8>> {
    const PER_PATTERN: usize = 4;
    let mut seen = std::collections::HashSet::new();
    let mut distinct: Vec<&CmpValues> = logs
        .iter()
        .filter(|c| c.a != c.b && seen.insert(**c))
        .collect();
    distinct.sort_by_key(|c| std::cmp::Reverse(significance(c)));
    let mut out: Vec<Vec<u8>> = Vec::new();
    'logs: for c in distinct {
        for w in widths(c) {
            for (from, to) in [(c.a, c.b), (c.b, c.a)] {
                let le = (from.to_le_bytes(), to.to_le_bytes());
                let (fl, tl) = (&le.0[..w], &le.1[..w]);
                let be = (
                    fl.iter().rev().copied().collect::<Vec<u8>>(),
                    tl.iter().rev().copied().collect::<Vec<u8>>(),
                );
                let mut orders = vec![(fl.to_vec(), tl.to_vec())];
                if w > 1 {
                    orders.push(be);
                }
                for (pat, rep) in orders {
                    let mut found = 0;
                    let mut at = 0;
                    while at + w <= input.len() && found < PER_PATTERN {
                        if input[at..at + w] == pat[..] {
                            found += 1;
                            let mut cand = input.to_vec();
                            cand[at..at + w].copy_from_slice(&rep);
                            if cand != input && !out.contains(&cand) {
                                out.push(cand);
                                if out.len() >= max {
                                    break 'logs;
                                }
                            }
                        }
                        at += 1;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of a last record is fixed even after many small
    /// comparisons (a dispatch on record types) that match the input too.
    #[test]
    fn a_checksum_logged_after_many_small_comparisons_gets_its_candidate() {
        let mut input: Vec<u8> = (0..40).map(|i| (i % 8) as u8).collect();
        input.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        let mut logs: Vec<CmpValues> = (0..8u64)
            .flat_map(|t| {
                (0..8u64).map(move |k| CmpValues {
                    size: 1,
                    a: t,
                    b: k,
                })
            })
            .collect();
        logs.push(CmpValues {
            size: 4,
            a: 0xcafe_f00d,
            b: 0x1234_5678,
        });
        let c = candidates(&input, &logs, 16);
        let mut fixed = input.clone();
        fixed[40..].copy_from_slice(&0xcafe_f00du32.to_le_bytes());
        assert!(
            c.contains(&fixed),
            "{} candidates, none fixes the checksum",
            c.len()
        );
        assert_eq!(c[0], fixed, "the widest comparison comes first");
    }

    #[test]
    fn finds_register_memory_and_immediate_comparisons() {
        // The sites, and one that is not (a register with itself).
        let code = [
            0x66, 0x3b, 0x47, 0x0c, // cmp ax, [rdi+0xc]
            0x39, 0xc8, // cmp eax, ecx
            0x80, 0x7f, 0x04, 0x02, // cmp byte [rdi+4], 2
            0x48, 0x3b, 0x05, 0x10, 0x00, 0x00, 0x00, // cmp rax, [rip+0x10]
            0x39, 0xc0, // cmp eax, eax
        ];
        let s = sites_of(&code, 0x1000);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].addr, 0x1000);
        assert_eq!(s[0].size, 2);
        assert_eq!(
            s[0].ops,
            [
                Operand::Reg(Register::AX),
                Operand::Mem {
                    base: Register::RDI,
                    index: Register::None,
                    scale: 1,
                    disp: 0xc
                }
            ]
        );
        assert_eq!(s[1].addr, 0x1004);
        assert_eq!(
            (s[1].size, s[1].ops),
            (
                4,
                [Operand::Reg(Register::EAX), Operand::Reg(Register::ECX)]
            )
        );
        assert_eq!(
            (s[2].addr, s[2].size, s[2].ops[1]),
            (0x1006, 1, Operand::Imm(2))
        );
        // RIP-relative: the absolute address (end of the insn + 0x10).
        assert_eq!(s[3].addr, 0x100a);
        assert_eq!(
            s[3].ops[1],
            Operand::Mem {
                base: Register::None,
                index: Register::None,
                scale: 1,
                disp: 0x1011 + 0x10
            }
        );
    }

    #[test]
    fn evaluates_registers_of_every_width_and_memory() {
        let mut regs = Registers {
            rax: 0x1122_3344_5566_7788,
            rdi: 0x2000,
            rcx: 3,
            ..Registers::default()
        };
        assert_eq!(reg_value(&regs, Register::AX), Some(0x7788));
        assert_eq!(reg_value(&regs, Register::AH), Some(0x77));
        assert_eq!(reg_value(&regs, Register::AL), Some(0x88));
        assert_eq!(reg_value(&regs, Register::EAX), Some(0x5566_7788));
        assert_eq!(reg_value(&regs, Register::RIP), None);
        let mem = |va: u64, buf: &mut [u8]| {
            // Guest memory: byte at va is its low address byte.
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (va as u8).wrapping_add(i as u8);
            }
            va >= 0x2000
        };
        let site = CmpSite {
            addr: 0,
            size: 2,
            ops: [
                Operand::Reg(Register::AX),
                Operand::Mem {
                    base: Register::RDI,
                    index: Register::RCX,
                    scale: 4,
                    disp: 0xc,
                },
            ],
        };
        // va = 0x2000 + 3*4 + 0xc = 0x2018: bytes 0x18, 0x19.
        assert_eq!(
            evaluate(&site, &regs, mem),
            Some(CmpValues {
                size: 2,
                a: 0x7788,
                b: 0x1918
            })
        );
        regs.rdi = 0;
        assert_eq!(evaluate(&site, &regs, mem), None, "unreadable memory");
        let imm = CmpSite {
            addr: 0,
            size: 1,
            ops: [Operand::Reg(Register::AH), Operand::Imm(u64::MAX - 1)],
        };
        assert_eq!(
            evaluate(&imm, &regs, mem),
            Some(CmpValues {
                size: 1,
                a: 0x77,
                b: 0xfe
            }),
            "a sign-extended immediate, at the compared width"
        );
    }

    #[test]
    fn writes_the_computed_checksum_over_the_stored_one() {
        // imghdr's shape: a 16-bit sum over the payload compared with the
        // header's field (bytes 12..14), here compared zero-extended to 32 bits.
        let mut input = b"XIMG\x02\x80\x01\x00\x01\x00\x08\x00\x34\x12\x07\x00".to_vec();
        input.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80]);
        let sum: u64 = input[16..].iter().map(|&b| u64::from(b)).sum();
        let logs = [CmpValues {
            size: 4,
            a: sum,
            b: 0x1234,
        }];
        let c = candidates(&input, &logs, 32);
        let fixed = c
            .iter()
            .find(|c| u16::from_le_bytes([c[12], c[13]]) as u64 == sum)
            .expect("a candidate with the checksum written");
        assert_eq!(fixed[..12], input[..12]);
        assert_eq!(fixed[14..], input[14..]);
        assert!(!c.contains(&input));
        assert!(candidates(&input, &logs, 1).len() == 1, "max respected");
        let same = [CmpValues {
            size: 2,
            a: 5,
            b: 5,
        }];
        assert!(candidates(&input, &same, 32).is_empty(), "equal operands");
    }

    #[test]
    fn tries_big_endian_and_narrow_widths() {
        let input = [0xaa, 0x12, 0x34, 0xbb];
        let logs = [CmpValues {
            size: 8,
            a: 0x1234,
            b: 0x5678,
        }];
        let c = candidates(&input, &logs, 32);
        assert!(c.contains(&vec![0xaa, 0x56, 0x78, 0xbb]), "{c:x?}");
    }

    #[test]
    fn finds_sites_in_a_real_elf() {
        // This test binary itself: some function of it compares two registers.
        let exe = std::env::current_exe().expect("test binary");
        let s = sites_in_image(&exe, &["cmplog".into()]).expect("sites");
        assert!(!s.is_empty());
        assert!(s.windows(2).all(|w| w[0].addr < w[1].addr));
    }
}
