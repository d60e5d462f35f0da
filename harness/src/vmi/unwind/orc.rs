//! ORC tables: the `.orc_unwind_ip` / `.orc_unwind` sections of a Linux
//! kernel image or module, decoded into one entry format for all kernel
//! versions.
//!
//! `.orc_unwind_ip` holds one `s32` per entry, relative to the entry's own
//! address (`ip = &entry + value`); `.orc_unwind` holds the packed 6-byte
//! `struct orc_entry` of the same index. In a module (`.ko`, relocatable)
//! the ip words are `R_X86_64_PC32` relocations against the module's
//! sections, resolved here with the sections' load addresses.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use object::elf::{R_X86_64_PC32, SHF_ALLOC, SHF_EXECINSTR};
use object::read::{ReadCache, ReadRef};
use object::{
    Architecture, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget,
    SectionFlags, SymbolSection,
};

/// Size of one packed `struct orc_entry`.
pub const ENTRY_SIZE: usize = 6;

/// `.orc_header` of the 6.3 layout (backported to 6.3.10; earlier 6.3
/// kernels have no header).
const HASH_6_3: [u8; 20] = [
    0xdb, 0x84, 0xae, 0xd4, 0x10, 0x3b, 0x31, 0xdd, 0x51, 0xe0, 0x17, 0xf8, 0xf7, 0x97, 0x83, 0xca,
    0x98, 0x5c, 0x2c, 0x51,
];
/// `.orc_header` of Linux 6.4+ (sha1 of the `orc_types.h` definitions,
/// checked against the 6.4 header).
const HASH_6_4: [u8; 20] = [
    0xfe, 0x5d, 0x32, 0xbf, 0x58, 0x1b, 0xd6, 0x3b, 0x2c, 0xa9, 0xa5, 0xc6, 0x5b, 0xa5, 0xa6, 0x25,
    0xea, 0xb3, 0xfe, 0x24,
];

/// Why ORC tables could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OrcError {
    /// The file could not be opened.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a readable ELF file.
    #[error("ELF: {0}")]
    Elf(#[from] object::Error),
    /// Not an x86-64 little-endian ELF file.
    #[error("not an x86-64 ELF file ({0})")]
    NotX86_64(String),
    /// A section the tables need is missing (kernel built without ORC?).
    #[error("no {0} section (kernel built without CONFIG_UNWINDER_ORC?)")]
    Missing(&'static str),
    /// The two sections do not describe the same number of entries.
    #[error(
        ".orc_unwind_ip ({ip_bytes} bytes) and .orc_unwind ({entry_bytes} bytes) do not match"
    )]
    Size {
        /// Size of `.orc_unwind_ip`.
        ip_bytes: u64,
        /// Size of `.orc_unwind`.
        entry_bytes: u64,
    },
    /// A relocation of `.orc_unwind_ip` that is not what kernel modules use.
    #[error(".orc_unwind_ip relocation at {offset:#x}: {why}")]
    Relocation {
        /// Offset in `.orc_unwind_ip`.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
}

/// The layout of `struct orc_entry`'s bit fields, by kernel version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrcFormat {
    /// Linux 4.14 to 6.2: `sp_reg:4, bp_reg:4, type:2, end:1`; types
    /// CALL=0, REGS=1, REGS_PARTIAL=2; `sp_reg` UNDEFINED marks end of stack
    /// (with `end`) or no information (without).
    V1,
    /// Linux 6.3: `sp_reg:4, bp_reg:4, type:2, signal:1, end:1`.
    V2,
    /// Linux 6.4 and later: `sp_reg:4, bp_reg:4, type:3, signal:1`; types
    /// UNDEFINED=0, END_OF_STACK=1, CALL=2, REGS=3, REGS_PARTIAL=4.
    V3,
}

/// A base register of an ORC entry (`ORC_REG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum OrcReg {
    /// Not changed in this frame (bp) / no information (sp).
    Undefined,
    /// The previous frame's stack pointer (the CFA).
    PrevSp,
    Dx,
    Di,
    Bp,
    Sp,
    R10,
    R13,
    /// The value stored at `bp + offset`.
    BpIndirect,
    /// The value stored at `sp`, plus the offset (stack switches).
    SpIndirect,
    /// A number the kernel does not define.
    Other(u8),
}

impl OrcReg {
    /// The register for a 4-bit `ORC_REG_*` number.
    pub fn from_bits(bits: u8) -> Self {
        match bits {
            0 => Self::Undefined,
            1 => Self::PrevSp,
            2 => Self::Dx,
            3 => Self::Di,
            4 => Self::Bp,
            5 => Self::Sp,
            6 => Self::R10,
            7 => Self::R13,
            8 => Self::BpIndirect,
            9 => Self::SpIndirect,
            n => Self::Other(n & 0xf),
        }
    }

    /// The 4-bit `ORC_REG_*` number.
    pub fn bits(self) -> u8 {
        match self {
            Self::Undefined => 0,
            Self::PrevSp => 1,
            Self::Dx => 2,
            Self::Di => 3,
            Self::Bp => 4,
            Self::Sp => 5,
            Self::R10 => 6,
            Self::R13 => 7,
            Self::BpIndirect => 8,
            Self::SpIndirect => 9,
            Self::Other(n) => n & 0xf,
        }
    }
}

/// What an ORC entry says about its code range (types of the 6.4 layout;
/// older layouts are mapped onto them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrcKind {
    /// No unwind information (a "terminator" or code objtool skipped).
    Undefined,
    /// The outermost frame of a stack: unwinding ends here.
    EndOfStack,
    /// A normal call frame: the return address is below the CFA.
    Call,
    /// A full `struct pt_regs` is at the CFA.
    Regs,
    /// Only the hardware iret frame (ip, cs, flags, sp, ss) is at the CFA.
    RegsPartial,
    /// A type number the kernel does not define.
    Other(u8),
}

/// One decoded `struct orc_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrcEntry {
    /// Offset added to `sp_reg` to get the CFA.
    pub sp_offset: i16,
    /// Offset of the saved rbp from `bp_reg`.
    pub bp_offset: i16,
    /// Base of the CFA.
    pub sp_reg: OrcReg,
    /// Where the caller's rbp is: `PrevSp` (saved at CFA + offset), `Bp`
    /// (saved at rbp + offset) or `Undefined` (unchanged).
    pub bp_reg: OrcReg,
    /// The frame type.
    pub kind: OrcKind,
    /// The pc this entry unwinds to is exact (an interrupted instruction),
    /// not a return address. In the 6.1 layout: the REGS types.
    pub signal: bool,
}

impl OrcEntry {
    /// The usual entry at a function's first instruction: CFA = rsp + 8,
    /// rbp unchanged.
    pub const FUNCTION_START: OrcEntry = OrcEntry {
        sp_offset: 8,
        bp_offset: 0,
        sp_reg: OrcReg::Sp,
        bp_reg: OrcReg::Undefined,
        kind: OrcKind::Call,
        signal: false,
    };
}

impl OrcFormat {
    /// The format named by an `.orc_header` (20-byte hash), if known.
    pub fn from_header(header: &[u8]) -> Option<Self> {
        if header == HASH_6_4 {
            Some(Self::V3)
        } else if header == HASH_6_3 {
            Some(Self::V2)
        } else {
            None
        }
    }

    /// Decodes one packed entry.
    pub fn decode(self, raw: [u8; ENTRY_SIZE]) -> OrcEntry {
        let [s0, s1, b0, b1, f0, f1] = raw;
        let flags = u16::from_le_bytes([f0, f1]);
        let sp_bits = (flags & 0xf) as u8;
        let sp_reg = OrcReg::from_bits(sp_bits);
        let bp_reg = OrcReg::from_bits(((flags >> 4) & 0xf) as u8);
        let (kind, signal) = match self {
            Self::V3 => {
                let kind = match (flags >> 8) & 7 {
                    0 => OrcKind::Undefined,
                    1 => OrcKind::EndOfStack,
                    2 => OrcKind::Call,
                    3 => OrcKind::Regs,
                    4 => OrcKind::RegsPartial,
                    n => OrcKind::Other(n as u8),
                };
                (kind, flags & 0x800 != 0)
            }
            Self::V1 | Self::V2 => {
                let (signal_bit, end_bit) = if self == Self::V1 {
                    (None, 0x400)
                } else {
                    (Some(0x400), 0x800)
                };
                let kind = if sp_bits == 0 {
                    if flags & end_bit != 0 {
                        OrcKind::EndOfStack
                    } else {
                        OrcKind::Undefined
                    }
                } else {
                    match (flags >> 8) & 3 {
                        0 => OrcKind::Call,
                        1 => OrcKind::Regs,
                        2 => OrcKind::RegsPartial,
                        n => OrcKind::Other(n as u8),
                    }
                };
                let signal = match signal_bit {
                    Some(bit) => flags & bit != 0,
                    None => matches!(kind, OrcKind::Regs | OrcKind::RegsPartial),
                };
                (kind, signal)
            }
        };
        OrcEntry {
            sp_offset: i16::from_le_bytes([s0, s1]),
            bp_offset: i16::from_le_bytes([b0, b1]),
            sp_reg,
            bp_reg,
            kind,
            signal,
        }
    }

    /// Packs an entry (for synthetic tables). In the 6.1 layout `signal`
    /// is implied by the type and not stored.
    pub fn encode(self, e: &OrcEntry) -> [u8; ENTRY_SIZE] {
        let mut flags = u16::from(e.sp_reg.bits()) | u16::from(e.bp_reg.bits()) << 4;
        match self {
            Self::V3 => {
                let kind: u16 = match e.kind {
                    OrcKind::Undefined => 0,
                    OrcKind::EndOfStack => 1,
                    OrcKind::Call => 2,
                    OrcKind::Regs => 3,
                    OrcKind::RegsPartial => 4,
                    OrcKind::Other(n) => u16::from(n & 7),
                };
                flags |= kind << 8;
                if e.signal {
                    flags |= 0x800;
                }
            }
            Self::V1 | Self::V2 => {
                let end_bit = if self == Self::V1 { 0x400 } else { 0x800 };
                let kind: u16 = match e.kind {
                    OrcKind::Undefined => {
                        flags &= !0xf;
                        0
                    }
                    OrcKind::EndOfStack => {
                        flags &= !0xf;
                        flags |= end_bit;
                        0
                    }
                    OrcKind::Call => 0,
                    OrcKind::Regs => 1,
                    OrcKind::RegsPartial => 2,
                    OrcKind::Other(n) => u16::from(n & 3),
                };
                flags |= kind << 8;
                if self == Self::V2 && e.signal {
                    flags |= 0x400;
                }
            }
        }
        let [s0, s1] = e.sp_offset.to_le_bytes();
        let [b0, b1] = e.bp_offset.to_le_bytes();
        let [f0, f1] = flags.to_le_bytes();
        [s0, s1, b0, b1, f0, f1]
    }
}

/// The ORC entries of one kernel image or module, sorted by ip, with the
/// code ranges they describe.
#[derive(Debug, Clone)]
pub struct OrcTable {
    name: String,
    format: OrcFormat,
    ips: Vec<u64>,
    entries: Vec<OrcEntry>,
    text: Vec<Range<u64>>,
    unresolved: usize,
}

impl OrcTable {
    /// A table from decoded entries (any order) and the code ranges it
    /// covers (empty: from the first to the last entry's ip). Entries with
    /// equal ips keep the kernel's order: an `Undefined` terminator first,
    /// so a lookup finds the real entry.
    pub fn from_entries(
        name: impl Into<String>,
        format: OrcFormat,
        entries: Vec<(u64, OrcEntry)>,
        text: Vec<Range<u64>>,
    ) -> Self {
        let mut pairs = entries;
        pairs.sort_by_key(|(ip, e)| (*ip, e.kind != OrcKind::Undefined));
        let (ips, entries) = pairs.into_iter().unzip();
        Self {
            name: name.into(),
            format,
            ips,
            entries,
            text,
            unresolved: 0,
        }
    }

    /// Loads the tables of a kernel image (`vmlinux`, stripped or not).
    /// `format`: `None` detects it (`.orc_header` present: its version,
    /// else the 6.1 layout; give `Some(V2)` for a 6.3 kernel without that
    /// section). `slide`: the KASLR offset added to every address.
    pub fn from_vmlinux(
        path: impl AsRef<Path>,
        format: Option<OrcFormat>,
        slide: i64,
    ) -> Result<Self, OrcError> {
        let path = path.as_ref();
        with_object(path, |obj| vmlinux(obj, file_name(path), format, slide))
    }

    /// [`OrcTable::from_vmlinux`] on the bytes of the image.
    pub fn parse_vmlinux(
        data: &[u8],
        format: Option<OrcFormat>,
        slide: i64,
    ) -> Result<Self, OrcError> {
        let obj = object::File::parse(data)?;
        vmlinux(&obj, "vmlinux".into(), format, slide)
    }

    /// Loads the tables of a kernel module (`.ko`) loaded with its sections
    /// at `sections` (name -> load address, as in
    /// `/sys/module/NAME/sections/`). Entries in sections without an address
    /// are left out ([`OrcTable::unresolved`]).
    pub fn from_module(
        path: impl AsRef<Path>,
        sections: &BTreeMap<String, u64>,
        format: Option<OrcFormat>,
    ) -> Result<Self, OrcError> {
        let path = path.as_ref();
        with_object(path, |obj| module(obj, module_name(path), sections, format))
    }

    /// [`OrcTable::from_module`] on the bytes of the `.ko`.
    pub fn parse_module(
        data: &[u8],
        name: &str,
        sections: &BTreeMap<String, u64>,
        format: Option<OrcFormat>,
    ) -> Result<Self, OrcError> {
        let obj = object::File::parse(data)?;
        module(&obj, name.to_owned(), sections, format)
    }

    /// The image or module name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry layout the table was decoded with.
    pub fn format(&self) -> OrcFormat {
        self.format
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// The entries' ips, sorted.
    pub fn ips(&self) -> &[u64] {
        &self.ips
    }

    /// The entries, in the order of [`OrcTable::ips`].
    pub fn entries(&self) -> &[OrcEntry] {
        &self.entries
    }

    /// The code ranges the table describes (executable sections).
    pub fn text(&self) -> &[Range<u64>] {
        &self.text
    }

    /// Module entries left out because their section had no load address.
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }

    /// Whether `addr` is code this table describes.
    pub fn covers(&self, addr: u64) -> bool {
        if self.text.is_empty() {
            match (self.ips.first(), self.ips.last()) {
                (Some(&lo), Some(&hi)) => (lo..=hi).contains(&addr),
                _ => false,
            }
        } else {
            self.text.iter().any(|r| r.contains(&addr))
        }
    }

    /// The entry in effect at `addr`: the last one with ip <= `addr`
    /// (whether or not the table covers `addr`), with its ip.
    pub fn lookup(&self, addr: u64) -> Option<(u64, OrcEntry)> {
        let i = self.ips.partition_point(|&ip| ip <= addr).checked_sub(1)?;
        Some((*self.ips.get(i)?, *self.entries.get(i)?))
    }

    /// [`OrcTable::lookup`] for an address the table covers.
    pub fn find(&self, addr: u64) -> Option<OrcEntry> {
        if self.covers(addr) {
            self.lookup(addr).map(|(_, e)| e)
        } else {
            None
        }
    }
}

/// The entry for `addr` in the first of `tables` that covers it.
pub fn find_entry(tables: &[&OrcTable], addr: u64) -> Option<OrcEntry> {
    tables.iter().find(|t| t.covers(addr))?.find(addr)
}

/// The object file at `path` (read as it is parsed), handed to `f`.
fn with_object<T>(
    path: &Path,
    f: impl FnOnce(&object::File<'_, &ReadCache<File>>) -> Result<T, OrcError>,
) -> Result<T, OrcError> {
    let cache = open(path)?;
    let obj = object::File::parse(&cache)?;
    f(&obj)
}

fn open(path: &Path) -> Result<ReadCache<File>, OrcError> {
    File::open(path)
        .map(ReadCache::new)
        .map_err(|source| OrcError::Io {
            path: path.display().to_string(),
            source,
        })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `foo-bar.ko` -> `foo_bar` (the name in the kernel's module list).
fn module_name(path: &Path) -> String {
    let name = file_name(path);
    let stem = name.split_once(".ko").map_or(name.as_str(), |(s, _)| s);
    stem.replace('-', "_")
}

fn check_arch<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> Result<(), OrcError> {
    if obj.architecture() == Architecture::X86_64 && obj.is_little_endian() {
        Ok(())
    } else {
        Err(OrcError::NotX86_64(format!("{:?}", obj.architecture())))
    }
}

fn detect<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> OrcFormat {
    match obj.section_by_name(".orc_header") {
        // A newer header than 6.4's: assume the newest layout.
        Some(s) => s
            .data()
            .ok()
            .and_then(OrcFormat::from_header)
            .unwrap_or(OrcFormat::V3),
        None => OrcFormat::V1,
    }
}

/// The two sections, checked to hold the same number of entries, and
/// their format.
struct Sections<'d, 'f, R: ReadRef<'d>> {
    format: OrcFormat,
    ip_sec: object::Section<'d, 'f, R>,
    ip_data: &'d [u8],
    ent_data: &'d [u8],
}

/// The tables of an x86-64 object; `format`: `None` detects it.
fn sections<'d, 'f, R: ReadRef<'d>>(
    obj: &'f object::File<'d, R>,
    format: Option<OrcFormat>,
) -> Result<Sections<'d, 'f, R>, OrcError> {
    check_arch(obj)?;
    let format = format.unwrap_or_else(|| detect(obj));
    let ip_sec = obj
        .section_by_name(".orc_unwind_ip")
        .ok_or(OrcError::Missing(".orc_unwind_ip"))?;
    let ent_sec = obj
        .section_by_name(".orc_unwind")
        .ok_or(OrcError::Missing(".orc_unwind"))?;
    let ip_data = ip_sec.data()?;
    let ent_data = ent_sec.data()?;
    if ip_data.len() % 4 != 0
        || ent_data.len() % ENTRY_SIZE != 0
        || ip_data.len() / 4 != ent_data.len() / ENTRY_SIZE
    {
        return Err(OrcError::Size {
            ip_bytes: ip_data.len() as u64,
            entry_bytes: ent_data.len() as u64,
        });
    }
    Ok(Sections {
        format,
        ip_sec,
        ip_data,
        ent_data,
    })
}

fn decode_all(format: OrcFormat, data: &[u8]) -> impl Iterator<Item = OrcEntry> + '_ {
    data.chunks_exact(ENTRY_SIZE).map(move |c| {
        let mut raw = [0u8; ENTRY_SIZE];
        raw.copy_from_slice(c);
        format.decode(raw)
    })
}

/// A little-endian `i32` from 4 bytes (0 if `c` is shorter).
fn le_i32(c: &[u8]) -> i32 {
    i32::from_le_bytes(
        c.get(..4)
            .and_then(|c| c.try_into().ok())
            .unwrap_or_default(),
    )
}

fn is_exec(flags: SectionFlags) -> bool {
    let want = u64::from(SHF_ALLOC | SHF_EXECINSTR);
    matches!(flags, SectionFlags::Elf { sh_flags } if sh_flags & want == want)
}

fn vmlinux<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
    name: String,
    format: Option<OrcFormat>,
    slide: i64,
) -> Result<OrcTable, OrcError> {
    let orc = sections(obj, format)?;
    let base = orc.ip_sec.address();
    let ips = orc.ip_data.chunks_exact(4).enumerate().map(|(i, c)| {
        let rel = le_i32(c);
        base.wrapping_add(4 * i as u64)
            .wrapping_add_signed(i64::from(rel))
            .wrapping_add_signed(slide)
    });
    let entries = ips.zip(decode_all(orc.format, orc.ent_data)).collect();
    let text = obj
        .sections()
        .filter(|s| is_exec(s.flags()) && s.address() != 0 && s.size() != 0)
        .map(|s| {
            let lo = s.address().wrapping_add_signed(slide);
            lo..lo.wrapping_add(s.size())
        })
        .collect();
    Ok(OrcTable::from_entries(name, orc.format, entries, text))
}

fn module<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
    name: String,
    loaded: &BTreeMap<String, u64>,
    format: Option<OrcFormat>,
) -> Result<OrcTable, OrcError> {
    let orc = sections(obj, format)?;
    let n = orc.ip_data.len() / 4;
    let mut ips: Vec<Option<u64>> = vec![None; n];
    for (offset, rel) in orc.ip_sec.relocations() {
        let bad = |why: &str| OrcError::Relocation {
            offset,
            why: why.to_owned(),
        };
        if rel.flags()
            != (RelocationFlags::Elf {
                r_type: R_X86_64_PC32,
            })
        {
            return Err(bad(&format!(
                "{:?} where R_X86_64_PC32 was expected",
                rel.flags()
            )));
        }
        let Some(slot) = usize::try_from(offset)
            .ok()
            .filter(|o| o % 4 == 0)
            .and_then(|o| ips.get_mut(o / 4))
        else {
            return Err(bad("outside the section or misaligned"));
        };
        let RelocationTarget::Symbol(sym) = rel.target() else {
            return Err(bad("no symbol"));
        };
        let sym = obj.symbol_by_index(sym).map_err(|e| bad(&e.to_string()))?;
        let SymbolSection::Section(sec) = sym.section() else {
            continue; // undefined or absolute: no code address
        };
        let Some(&load) = obj
            .section_by_index(sec)
            .ok()
            .and_then(|s| s.name().ok().and_then(|n| loaded.get(n)))
        else {
            continue;
        };
        let mut addend = rel.addend();
        if rel.has_implicit_addend() {
            let o = offset as usize;
            if let Some(c) = orc.ip_data.get(o..o.saturating_add(4)) {
                addend = addend.wrapping_add(i64::from(le_i32(c)));
            }
        }
        // PC32: value = S + A - P and ip = P + value, so ip = S + A.
        *slot = Some(load.wrapping_add(sym.address()).wrapping_add_signed(addend));
    }
    let mut entries = Vec::with_capacity(n);
    let mut unresolved = 0;
    for (ip, e) in ips.into_iter().zip(decode_all(orc.format, orc.ent_data)) {
        match ip {
            Some(ip) => entries.push((ip, e)),
            None => unresolved += 1,
        }
    }
    let text = obj
        .sections()
        .filter(|s| is_exec(s.flags()) && s.size() != 0)
        .filter_map(|s| {
            let lo = *loaded.get(s.name().ok()?)?;
            Some(lo..lo.wrapping_add(s.size()))
        })
        .collect();
    let mut table = OrcTable::from_entries(name, orc.format, entries, text);
    table.unresolved = unresolved;
    Ok(table)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one text range
mod tests {
    use super::*;

    const VMLINUX: &str = "target/xenlab/dom0/vmlinux-6.1.0-57-amd64";
    const KALLSYMS: &str = "target/exp/linux/kallsyms.txt";
    const MODULE: &str = "/usr/lib/modules/6.1.0-57-amd64/kernel/net/key/af_key.ko";

    /// A path under the workspace root (tests run in `harness/`).
    fn workspace(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
    }

    fn entry(sp_reg: OrcReg, sp_offset: i16, bp_reg: OrcReg, kind: OrcKind) -> OrcEntry {
        OrcEntry {
            sp_offset,
            bp_offset: if bp_reg == OrcReg::PrevSp { -16 } else { 0 },
            sp_reg,
            bp_reg,
            kind,
            signal: matches!(kind, OrcKind::Regs | OrcKind::RegsPartial),
        }
    }

    #[test]
    fn decodes_the_61_layout() {
        // Bytes from the 6.1.0-57 image: `sp+8` call entry, `bp+16 bp=prevsp-16`,
        // an end-of-stack entry and a terminator.
        let f = OrcFormat::V1;
        assert_eq!(f.decode([8, 0, 0, 0, 0x05, 0x00]), OrcEntry::FUNCTION_START);
        let e = f.decode([16, 0, 0xf0, 0xff, 0x14, 0x00]);
        assert_eq!(
            (e.sp_reg, e.sp_offset, e.bp_reg, e.bp_offset),
            (OrcReg::Bp, 16, OrcReg::PrevSp, -16)
        );
        assert_eq!(f.decode([0, 0, 0, 0, 0, 0x04]).kind, OrcKind::EndOfStack);
        assert_eq!(f.decode([0, 0, 0, 0, 0, 0]).kind, OrcKind::Undefined);
        let regs = f.decode([0, 0, 0, 0, 0x05, 0x01]);
        assert_eq!((regs.kind, regs.signal), (OrcKind::Regs, true));
        let iret = f.decode([0, 0, 0, 0, 0x02, 0x02]);
        assert_eq!((iret.sp_reg, iret.kind), (OrcReg::Dx, OrcKind::RegsPartial));
    }

    #[test]
    fn decodes_the_64_layout() {
        let f = OrcFormat::V3;
        assert_eq!(f.decode([8, 0, 0, 0, 0x05, 0x02]), OrcEntry::FUNCTION_START);
        assert_eq!(f.decode([0, 0, 0, 0, 0, 0x01]).kind, OrcKind::EndOfStack);
        assert_eq!(f.decode([0, 0, 0, 0, 0x05, 0]).kind, OrcKind::Undefined);
        let regs = f.decode([0, 0, 0, 0, 0x05, 0x0b]);
        assert_eq!((regs.kind, regs.signal), (OrcKind::Regs, true));
        assert_eq!(f.decode([0, 0, 0, 0, 0x05, 0x07]).kind, OrcKind::Other(7));
        // The 6.3 layout moves `end` up for the signal bit.
        let v2 = OrcFormat::V2;
        assert_eq!(v2.decode([0, 0, 0, 0, 0, 0x08]).kind, OrcKind::EndOfStack);
        let s = v2.decode([8, 0, 0, 0, 0x05, 0x04]);
        assert_eq!((s.kind, s.signal), (OrcKind::Call, true));
    }

    #[test]
    fn encode_round_trips() {
        let samples = [
            OrcEntry::FUNCTION_START,
            entry(OrcReg::Bp, 16, OrcReg::PrevSp, OrcKind::Call),
            entry(OrcReg::Sp, 0, OrcReg::Undefined, OrcKind::Regs),
            entry(OrcReg::SpIndirect, 8, OrcReg::Undefined, OrcKind::Call),
            entry(OrcReg::Sp, 40, OrcReg::Undefined, OrcKind::RegsPartial),
            entry(OrcReg::Undefined, 0, OrcReg::Undefined, OrcKind::EndOfStack),
            entry(OrcReg::Undefined, 0, OrcReg::Undefined, OrcKind::Undefined),
        ];
        for f in [OrcFormat::V1, OrcFormat::V2, OrcFormat::V3] {
            for e in samples {
                assert_eq!(f.decode(f.encode(&e)), e, "{f:?} {e:?}");
            }
        }
    }

    #[test]
    fn header_hashes() {
        assert_eq!(OrcFormat::from_header(&HASH_6_4), Some(OrcFormat::V3));
        assert_eq!(OrcFormat::from_header(&HASH_6_3), Some(OrcFormat::V2));
        assert_eq!(OrcFormat::from_header(&[0; 20]), None);
        assert_eq!(OrcFormat::from_header(&[]), None);
    }

    #[test]
    fn lookup_takes_the_last_entry_at_or_below_and_prefers_real_entries() {
        let undef = entry(OrcReg::Undefined, 0, OrcReg::Undefined, OrcKind::Undefined);
        let frame = entry(OrcReg::Bp, 16, OrcReg::PrevSp, OrcKind::Call);
        // Out of order, with a terminator sharing an ip with a real entry.
        let t = OrcTable::from_entries(
            "t",
            OrcFormat::V1,
            vec![
                (0x1010, frame),
                (0x1000, OrcEntry::FUNCTION_START),
                (0x1020, OrcEntry::FUNCTION_START),
                (0x1020, undef),
                (0x1040, undef),
            ],
            vec![0x1000..0x1040],
        );
        assert!(t.ips().windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(t.find(0xfff), None);
        assert_eq!(t.find(0x1000), Some(OrcEntry::FUNCTION_START));
        assert_eq!(t.find(0x100f), Some(OrcEntry::FUNCTION_START));
        assert_eq!(t.find(0x1010), Some(frame));
        assert_eq!(t.find(0x1025), Some(OrcEntry::FUNCTION_START));
        assert_eq!(t.find(0x1040), None, "not covered");
        assert_eq!(
            t.lookup(0x1040).map(|(_, e)| e.kind),
            Some(OrcKind::Undefined)
        );
        let empty = OrcTable::from_entries("e", OrcFormat::V3, vec![], vec![]);
        assert!(empty.is_empty() && empty.find(0).is_none() && !empty.covers(0));
        assert_eq!(find_entry(&[&empty, &t], 0x1012), Some(frame));
    }

    #[test]
    fn rejects_files_without_tables() {
        assert!(OrcTable::parse_vmlinux(b"not an elf", None, 0).is_err());
        // This test binary is x86-64 ELF without ORC sections.
        let exe = std::env::current_exe().expect("test binary path");
        match OrcTable::from_vmlinux(&exe, None, 0) {
            Err(OrcError::Missing(".orc_unwind_ip")) => {}
            other => panic!("{other:?}"),
        }
        match OrcTable::from_vmlinux("/nonexistent/vmlinux", None, 0) {
            Err(OrcError::Io { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// `/proc/kallsyms` lines `ADDR TYPE NAME`: the address of `name`.
    fn kallsyms(text: &str, name: &str) -> Option<u64> {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            let (addr, _, n) = (it.next()?, it.next()?, it.next()?);
            (n == name).then(|| u64::from_str_radix(addr, 16).ok())?
        })
    }

    #[test]
    fn real_debian_61_image() {
        let (image, syms) = (workspace(VMLINUX), workspace(KALLSYMS));
        if !image.exists() {
            println!(
                "skipped: {} not found (built by the xenlab dom0 setup)",
                image.display()
            );
            return;
        }
        let t = OrcTable::from_vmlinux(&image, None, 0).expect("load tables");
        assert_eq!(t.format(), OrcFormat::V1, "6.1 has no .orc_header");
        // readelf: .orc_unwind_ip 0x177d44 bytes, .orc_unwind 0x233be6 bytes.
        assert_eq!(t.len(), 0x177d44 / 4);
        assert_eq!(t.len(), 0x233be6 / ENTRY_SIZE);
        assert!(t.ips().windows(2).all(|w| w[0] <= w[1]), "sorted");
        assert!(t.covers(0xffff_ffff_8100_0000) && !t.covers(0xffff_ffff_c000_0000));
        let ends = t
            .entries()
            .iter()
            .filter(|e| e.kind == OrcKind::EndOfStack)
            .count();
        let regs = t
            .entries()
            .iter()
            .filter(|e| e.kind == OrcKind::Regs)
            .count();
        let calls = t
            .entries()
            .iter()
            .filter(|e| e.kind == OrcKind::Call)
            .count();
        println!(
            "{} entries: {calls} call, {regs} regs, {ends} end of stack, text {:x?}",
            t.len(),
            t.text()
        );
        assert!(ends > 0 && regs > 0 && calls > t.len() / 2);
        // No 6.4-only types or stray bits in a 6.1 image.
        assert!(t
            .entries()
            .iter()
            .all(|e| !matches!(e.kind, OrcKind::Other(_))));

        let Ok(text) = std::fs::read_to_string(&syms) else {
            println!(
                "skipped: {} not found (the function-start check)",
                syms.display()
            );
            return;
        };
        let stext = kallsyms(&text, "_stext").expect("_stext in kallsyms");
        let slide = stext.wrapping_sub(0xffff_ffff_8100_0000) as i64;
        let t = if slide == 0 {
            t
        } else {
            OrcTable::from_vmlinux(&image, None, slide).expect("load with slide")
        };
        for f in ["panic", "schedule", "do_sys_open", "vfs_read"] {
            let addr = kallsyms(&text, f).unwrap_or_else(|| panic!("{f} in kallsyms"));
            let e = t.find(addr).unwrap_or_else(|| panic!("no entry for {f}"));
            assert_eq!(
                (e.kind, e.sp_reg, e.sp_offset),
                (OrcKind::Call, OrcReg::Sp, 8),
                "{f}"
            );
            assert_eq!(e.bp_reg, OrcReg::Undefined, "{f}");
        }
        // Entry code (facts of this build, seen with readelf and a live
        // walk): the page fault entry starts on the iret frame above the
        // error code, then describes the full pt_regs; a new task's first
        // frame is the end of the stack; the timer interrupt switches to
        // the IRQ stack with an SP_INDIRECT entry.
        let at = |f: &str| kallsyms(&text, f).unwrap_or_else(|| panic!("{f} in kallsyms"));
        let pf = at("asm_exc_page_fault");
        let e = t.find(pf).expect("entry for asm_exc_page_fault");
        assert_eq!(
            (e.kind, e.sp_reg, e.sp_offset, e.signal),
            (OrcKind::RegsPartial, OrcReg::Sp, 8, true)
        );
        let e = t.find(pf + 0x10).expect("entry in asm_exc_page_fault");
        assert_eq!(
            (e.kind, e.sp_reg, e.sp_offset),
            (OrcKind::Regs, OrcReg::Sp, 0)
        );
        assert_eq!(
            t.find(at("ret_from_fork")).map(|e| e.kind),
            Some(OrcKind::EndOfStack)
        );
        let irq = at("sysvec_apic_timer_interrupt");
        assert!(t
            .ips()
            .iter()
            .zip(t.entries())
            .any(|(ip, e)| (irq..irq + 0x80).contains(ip) && e.sp_reg == OrcReg::SpIndirect));
    }

    #[test]
    fn real_debian_61_module() {
        let ko = Path::new(MODULE);
        if !ko.exists() {
            println!("skipped: {MODULE} not found (host without Debian 6.1.0-57 modules)");
            return;
        }
        let base = 0xffff_ffff_c000_0000u64;
        let loaded: BTreeMap<String, u64> = [
            (".text", base),
            (".text.unlikely", base + 0x7000),
            (".exit.text", base + 0x8000),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a))
        .collect();
        let t = OrcTable::from_module(ko, &loaded, None).expect("load module tables");
        assert_eq!(t.name(), "af_key");
        assert_eq!(t.format(), OrcFormat::V1);
        // readelf: 682 relocations, 4 of them against .init.text (not loaded).
        assert_eq!(t.len() + t.unresolved(), 682);
        assert_eq!(t.unresolved(), 4);
        assert!(t.ips().windows(2).all(|w| w[0] <= w[1]));
        assert!(t.ips().iter().all(|ip| (base..base + 0x9000).contains(ip)));
        // The first entry is the start of .text: a function entry.
        assert_eq!(t.find(base), Some(OrcEntry::FUNCTION_START));
        assert!(t.covers(base + 0x7000) && !t.covers(base + 0x6000));
    }
}
