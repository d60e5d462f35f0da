//! Basic blocks of the code under test, found by disassembling the guest's
//! ELF image with iced-x86: one coverage breakpoint goes on each block start.

use std::collections::BTreeSet;
use std::path::Path;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// A basic block: its first instruction's address and first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    /// Address of the first instruction.
    pub addr: u64,
    /// The original first byte (what a removed breakpoint writes back).
    pub first_byte: u8,
}

/// A function chosen for coverage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Symbol name (mangled).
    pub name: String,
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Errors reading the image.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a usable ELF image.
    #[error("{0}")]
    Elf(String),
}

/// Whether a (mangled) symbol name belongs to crate `krate` (legacy `_ZN`
/// or v0 `_R` mangling), e.g. `_ZN3tlv6record17h..E` for `tlv`.
pub fn in_crate(name: &str, krate: &str) -> bool {
    let tag = format!("{}{}", krate.len(), krate);
    (name.starts_with("_ZN") && name[3..].starts_with(&tag))
        || (name.starts_with("_R") && name.contains(&format!("_{tag}")))
}

/// An address range pattern `0xSTART-0xEND` (end exclusive).
pub fn parse_range(p: &str) -> Option<(u64, u64)> {
    let (a, b) = p.split_once('-')?;
    let num = |s: &str| u64::from_str_radix(s.trim().strip_prefix("0x")?, 16).ok();
    let (a, b) = (num(a)?, num(b)?);
    (b > a).then_some((a, b))
}

/// Selects functions of the image: each pattern is an exact symbol name,
/// `crate:NAME` (every function of that crate), a substring of the name,
/// or an address range `0xSTART-0xEND` (taken as one code region).
pub fn select_functions(elf: &[u8], patterns: &[String]) -> Result<Vec<Function>, BlocksError> {
    let obj = object::File::parse(elf).map_err(|e| BlocksError::Elf(e.to_string()))?;
    let (ranges, patterns): (Vec<&String>, Vec<&String>) =
        patterns.iter().partition(|p| parse_range(p).is_some());
    let mut out: Vec<Function> = obj
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            let hit = patterns.iter().any(|p| match p.strip_prefix("crate:") {
                Some(k) => in_crate(name, k),
                None => name == p.as_str() || name.contains(p.as_str()),
            });
            hit.then(|| Function {
                name: name.to_string(),
                addr: s.address(),
                size: s.size(),
            })
        })
        .collect();
    add_ranges(&mut out, ranges.into_iter());
    Ok(out)
}

/// Adds the address-range patterns (`0xSTART-0xEND`) to the functions
/// selected by name, each as one code region (functions wholly inside a
/// range keep their names; the range covers the rest), and sorts.
pub fn add_ranges<'a>(out: &mut Vec<Function>, patterns: impl Iterator<Item = &'a String>) {
    for r in patterns {
        if let Some((a, b)) = parse_range(r) {
            out.retain(|f| !(f.addr >= a && f.addr.saturating_add(f.size) <= b));
            out.push(Function {
                name: format!("range@{a:#x}"),
                addr: a,
                size: b - a,
            });
        }
    }
    out.sort_by_key(|f| f.addr);
    out.dedup_by_key(|f| f.addr);
}

/// Bytes of the image at `[addr, addr+len)` (from the section holding them).
pub fn code_bytes(elf: &[u8], addr: u64, len: u64) -> Result<Vec<u8>, BlocksError> {
    let obj = object::File::parse(elf).map_err(|e| BlocksError::Elf(e.to_string()))?;
    for sec in obj.sections() {
        let (start, size) = (sec.address(), sec.size());
        if addr >= start && addr.saturating_add(len) <= start.saturating_add(size) {
            let data = sec.data().map_err(|e| BlocksError::Elf(e.to_string()))?;
            let off = (addr - start) as usize;
            return data
                .get(off..off + len as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| BlocksError::Elf(format!("{addr:#x} has no file bytes")));
        }
    }
    Err(BlocksError::Elf(format!(
        "no section holds {len} bytes at {addr:#x}"
    )))
}

/// The instructions of `code` (which starts at `addr`), up to the first
/// byte that does not decode.
pub fn instructions(code: &[u8], addr: u64) -> impl Iterator<Item = Instruction> + '_ {
    let mut dec = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    std::iter::from_fn(move || {
        if !dec.can_decode() {
            return None;
        }
        let insn = dec.decode();
        (!insn.is_invalid()).then_some(insn)
    })
}

/// Basic-block starts of one function's code (`code` starts at `addr`):
/// the entry, every branch target inside the function and every
/// instruction that follows a branch, call or return.
pub fn blocks_of(code: &[u8], addr: u64) -> Vec<Block> {
    let end = addr + code.len() as u64;
    let mut starts = BTreeSet::from([addr]);
    let mut insns = BTreeSet::new();
    let mut after_branch = false;
    for insn in instructions(code, addr) {
        insns.insert(insn.ip());
        if after_branch {
            starts.insert(insn.ip());
        }
        after_branch = false;
        match insn.flow_control() {
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                let t = insn.near_branch_target();
                if t >= addr && t < end {
                    starts.insert(t);
                }
                after_branch = true;
            }
            FlowControl::Return
            | FlowControl::IndirectBranch
            | FlowControl::Call
            | FlowControl::IndirectCall
            | FlowControl::Interrupt
            | FlowControl::Exception => after_branch = true,
            _ => {}
        }
    }
    starts
        .into_iter()
        .filter(|a| insns.contains(a))
        .map(|a| Block {
            addr: a,
            first_byte: code[(a - addr) as usize],
        })
        .collect()
}

/// Magic values the code compares against (`cmp`/`test`/`sub` with an
/// immediate), as little-endian byte strings of the compared width: a cheap
/// dictionary for the mutator.
pub fn comparison_tokens(code: &[u8], addr: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for insn in instructions(code, addr) {
        if !matches!(
            insn.mnemonic(),
            Mnemonic::Cmp | Mnemonic::Sub | Mnemonic::Test
        ) {
            continue;
        }
        for i in 0..insn.op_count() {
            let width = match insn.op_kind(i) {
                OpKind::Immediate8 => 1,
                OpKind::Immediate16 => 2,
                OpKind::Immediate32 | OpKind::Immediate32to64 => 4,
                OpKind::Immediate64 => 8,
                OpKind::Immediate8to16 | OpKind::Immediate8to32 | OpKind::Immediate8to64 => 1,
                _ => continue,
            };
            let v = insn.immediate(i);
            let bytes = v.to_le_bytes()[..width].to_vec();
            // 0, 1 and all-ones bytes are what havoc tries anyway.
            if bytes.iter().all(|&b| b == 0 || b == 0xff) || (width == 1 && bytes[0] < 2) {
                continue;
            }
            if !out.contains(&bytes) {
                out.push(bytes);
            }
        }
    }
    out
}

/// The selected functions of the image at `path`, each with its code bytes.
pub fn functions_in_image(
    path: &Path,
    patterns: &[String],
) -> Result<Vec<(Function, Vec<u8>)>, BlocksError> {
    let elf = std::fs::read(path).map_err(|source| BlocksError::Io {
        path: path.display().to_string(),
        source,
    })?;
    select_functions(&elf, patterns)?
        .into_iter()
        .map(|f| {
            let code = code_bytes(&elf, f.addr, f.size)?;
            Ok((f, code))
        })
        .collect()
}

/// Comparison tokens of the selected functions of the image at `path`.
pub fn tokens_in_image(path: &Path, patterns: &[String]) -> Result<Vec<Vec<u8>>, BlocksError> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (f, code) in functions_in_image(path, patterns)? {
        for t in comparison_tokens(&code, f.addr) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// All blocks of the selected functions of the image at `path`.
pub fn blocks_in_image(
    path: &Path,
    patterns: &[String],
) -> Result<(Vec<Function>, Vec<Block>), BlocksError> {
    let mut funcs = Vec::new();
    let mut blocks = Vec::new();
    for (f, code) in functions_in_image(path, patterns)? {
        blocks.extend(blocks_of(&code, f.addr));
        funcs.push(f);
    }
    blocks.sort();
    blocks.dedup_by_key(|b| b.addr);
    Ok((funcs, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_match_both_manglings() {
        assert!(in_crate("_ZN3tlv6record17h0123456789abcdefE", "tlv"));
        assert!(!in_crate("_ZN4core3fmt5write17h0E", "tlv"));
        assert!(!in_crate("_ZN4tlvx3foo17h0E", "tlv"));
        assert!(in_crate("_RNvCs1234_3tlv6record", "tlv"));
    }

    #[test]
    fn finds_branch_targets_and_fallthroughs() {
        // 0: test edi, edi; 2: je +3 (-> 7); 4: mov eax, 1 (5 bytes) ... laid out:
        // 0x1000: 85 ff          test edi, edi
        // 0x1002: 74 05          je 0x1009
        // 0x1004: b8 01 00 00 00 mov eax, 1
        // 0x1009: c3             ret
        let code = [0x85, 0xff, 0x74, 0x05, 0xb8, 0x01, 0, 0, 0, 0xc3];
        let b: Vec<u64> = blocks_of(&code, 0x1000).iter().map(|b| b.addr).collect();
        assert_eq!(b, vec![0x1000, 0x1004, 0x1009]);
        assert_eq!(blocks_of(&code, 0x1000)[2].first_byte, 0xc3);
    }

    #[test]
    fn collects_compared_immediates() {
        // cmp al, 0xee ; cmp dword [rdi], 0x44434258 ; cmp eax, 1
        let code = [
            0x3c, 0xee, 0x81, 0x3f, 0x58, 0x42, 0x43, 0x44, 0x83, 0xf8, 0x01,
        ];
        let t = comparison_tokens(&code, 0x1000);
        assert_eq!(t, vec![vec![0xee], b"XBCD".to_vec()]);
    }

    /// A function of this test binary comparing against magic values.
    #[inline(never)]
    fn magic_compare(x: u32, y: u16) -> bool {
        std::hint::black_box(x) == 0x4443_4258 || std::hint::black_box(y) == 0x7a79
    }

    #[test]
    fn gathers_tokens_from_a_function_of_a_real_elf() {
        // The test binary is the sample ELF: its `magic_compare` compares
        // against "XBCD" and "yz"; the dictionary of that function holds both.
        assert!(magic_compare(0x4443_4258, 0));
        let exe = std::env::current_exe().expect("exe");
        let pattern = vec!["blocks5tests13magic_compare".to_string()];
        let funcs = select_functions(&std::fs::read(&exe).expect("read"), &pattern).expect("funcs");
        assert_eq!(funcs.len(), 1, "{funcs:?}");
        let t = tokens_in_image(&exe, &pattern).expect("tokens");
        assert!(t.contains(&b"XBCD".to_vec()), "{t:02x?}");
        assert!(t.contains(&b"yz".to_vec()), "{t:02x?}");
        // Nothing selected, nothing gathered.
        assert!(tokens_in_image(&exe, &["no-such-function-xyz".into()])
            .expect("tokens")
            .is_empty());
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0x1000-0x1200"), Some((0x1000, 0x1200)));
        assert_eq!(parse_range("0x1200-0x1000"), None);
        assert_eq!(parse_range("tlv-record"), None);
        assert_eq!(parse_range("crate:tlv"), None);
    }

    #[test]
    fn targets_outside_the_function_are_ignored() {
        // jmp 0x2000 (e9 rel32) then ret
        let code = [0xe9, 0xfb, 0x0f, 0, 0, 0xc3];
        let b: Vec<u64> = blocks_of(&code, 0x1000).iter().map(|b| b.addr).collect();
        assert_eq!(b, vec![0x1000, 0x1005]);
    }
}
