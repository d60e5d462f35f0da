//! Finds where a loaded Linux module's sections are, from guest memory and
//! the module's .ko, without knowing `struct module`'s layout.
//!
//! 1. Walk the kernel's `modules` list to the entry with that name
//!    (`state` at +0, `list` at +8, `char name[56]` at +24: stable since
//!    2.6).
//! 2. Every page-aligned pointer into the module area inside the struct is
//!    a candidate `.text` address; the one whose memory matches the .ko's
//!    `.text` (bytes under relocations and runtime patch sites aside) wins.
//! 3. Every other section referenced from `.text` follows from the
//!    relocated values in guest memory: for a PC32 relocation at `r`
//!    against a symbol at `v` in section X with addend A, memory holds
//!    `S + A - P` (P = text + r), so X is at `S - v`. Majority per section.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex,
    SectionKind,
};

use super::module::{normalize, parse_ko, ModuleLayout};
use crate::vmi::error::{Error, Result};

/// `struct module` offsets.
const LIST: u64 = 8;
const NAME: u64 = 24;
const NAME_LEN: usize = 56;
/// `MODULE_STATE_LIVE`: init sections are freed.
const LIVE: u32 = 0;
/// `MODULE_STATE_UNFORMED`: not set up yet.
pub(crate) const UNFORMED: u32 = 3;
/// x86-64 module area (with and without KASLR).
const MODULES: std::ops::Range<u64> = 0xffff_ffff_a000_0000..0xffff_ffff_ff00_0000;
/// More modules than any kernel loads.
const MAX_MODULES: usize = 16384;
/// `.text` must match on this share of the compared bytes...
const MATCH_PERCENT: usize = 90;
/// ... and on at least this many bytes.
const MIN_COMPARED: usize = 64;

/// x86-64 relocation types.
const R_64: u32 = 1;
const R_PC32: u32 = 2;
const R_PLT32: u32 = 4;
const R_32S: u32 = 11;

/// Sections listing `.text` places the kernel rewrites at load time, and
/// how many bytes each rewrite may change (0: read from the entry).
const PATCH_SITES: &[(&str, usize)] = &[
    ("__mcount_loc", 5),
    ("__patchable_function_entries", 16),
    (".retpoline_sites", 6),
    (".return_sites", 5),
    (".call_sites", 5),
    (".ibt_endbr_seal", 4),
    (".cfi_sites", 16),
    (".smp_locks", 1),
    ("__jump_table", 5),
    (".static_call_sites", 5),
    (".altinstructions", 0),
    (".parainstructions", 0),
];
/// Bytes ignored at a site whose length cannot be read.
const DEFAULT_SITE: usize = 16;

/// Reads guest virtual memory.
pub(super) type ReadMem<'r> = &'r mut dyn FnMut(u64, &mut [u8]) -> Result<()>;

impl ModuleLayout {
    /// Finds module `name`'s layout in a running guest: `read` reads guest
    /// virtual memory, `modules` is the address of the kernel's `modules`
    /// list head, `ko` the module's file.
    pub fn find_in_guest<R>(mut read: R, modules: u64, name: &str, ko: &Path) -> Result<Self>
    where
        R: FnMut(u64, &mut [u8]) -> Result<()>,
    {
        let data = std::fs::read(ko).map_err(|source| Error::Io {
            what: format!("reading {}", ko.display()),
            source,
        })?;
        find(&mut read, modules, name, &data).map_err(|e| match e {
            Error::Symbol(m) => Error::Symbol(format!("{m} ({})", ko.display())),
            e => e,
        })
    }
}

fn sym_err(msg: String) -> Error {
    Error::Symbol(msg)
}

fn read_u64(read: ReadMem, va: u64, what: &str) -> Result<u64> {
    let mut b = [0u8; 8];
    read(va, &mut b).map_err(|e| sym_err(format!("reading {what} at {va:#x}: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// The `struct module` of module `name`, and its state.
pub(crate) fn find_module(read: ReadMem, head: u64, name: &str) -> Result<(u64, u32)> {
    let want = normalize(name);
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    let mut node = read_u64(read, head, "the modules list head")?;
    while node != head {
        if !seen.insert(node) {
            return Err(sym_err(format!(
                "the kernel's module list loops at {node:#x} without returning to {head:#x}"
            )));
        }
        if seen.len() > MAX_MODULES {
            return Err(sym_err(format!(
                "the kernel's module list has over {MAX_MODULES} entries: is {head:#x} `modules`?"
            )));
        }
        let module = node.wrapping_sub(LIST);
        let mut raw = [0u8; NAME_LEN];
        read(module.wrapping_add(NAME), &mut raw)
            .map_err(|e| sym_err(format!("reading a module name at {module:#x}: {e}")))?;
        let len = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        let got = String::from_utf8_lossy(raw.get(..len).unwrap_or(&[])).into_owned();
        if got == want {
            let mut state = [0u8; 4];
            read(module, &mut state)
                .map_err(|e| sym_err(format!("reading module {want}'s state: {e}")))?;
            return Ok((module, u32::from_le_bytes(state)));
        }
        names.push(got);
        node = read_u64(read, node, "a module list entry")?;
    }
    names.sort();
    let shown = names.iter().take(40).cloned().collect::<Vec<_>>().join(" ");
    Err(sym_err(format!(
        "no module named {want} in the kernel's module list ({} modules: {shown}{})",
        names.len(),
        if names.len() > 40 { " ..." } else { "" }
    )))
}

/// A `.text` relocation, to read a section address back from memory.
struct TextReloc {
    offset: usize,
    r_type: u32,
    addend: i64,
    /// Section of the target symbol and the symbol's value in it.
    target: Option<(SectionIndex, u64)>,
}

/// What the .ko says about its `.text`.
struct Ko {
    text: Vec<u8>,
    /// Bytes under relocations.
    relocated: Vec<bool>,
    /// Bytes the kernel may rewrite at load time.
    patched: Vec<bool>,
    relocs: Vec<TextReloc>,
    /// Offset of `.text` in the module's text allocation.
    text_offset: u64,
    /// Size of `struct module` (`.gnu.linkonce.this_module`).
    module_size: usize,
    /// Section names by index.
    names: HashMap<SectionIndex, String>,
}

fn mark(mask: &mut [bool], from: usize, len: usize) {
    let end = from.saturating_add(len).min(mask.len());
    if let Some(m) = mask.get_mut(from.min(end)..end) {
        m.fill(true);
    }
}

fn read_ko(data: &[u8]) -> std::result::Result<Ko, String> {
    let obj = parse_ko(data)?;
    let text_sec = obj
        .section_by_name(".text")
        .ok_or("the .ko has no .text section")?;
    let text_index = text_sec.index();
    let text = text_sec.data().map_err(|e| format!(".text: {e}"))?.to_vec();
    let mut relocated = vec![false; text.len()];
    let mut relocs = Vec::new();
    for (offset, r) in text_sec.relocations() {
        let RelocationFlags::Elf { r_type } = r.flags() else {
            continue;
        };
        let Ok(offset) = usize::try_from(offset) else {
            continue;
        };
        mark(&mut relocated, offset, usize::from(r.size() / 8).max(4));
        let target = match r.target() {
            RelocationTarget::Symbol(i) => obj
                .symbol_by_index(i)
                .ok()
                .and_then(|s| Some((s.section_index()?, s.address()))),
            _ => None,
        };
        relocs.push(TextReloc {
            offset,
            r_type,
            addend: r.addend(),
            target,
        });
    }
    let mut patched = vec![false; text.len()];
    for sec in obj.sections() {
        let Some(&(_, width)) = PATCH_SITES.iter().find(|(n, _)| sec.name() == Ok(*n)) else {
            continue;
        };
        let data = sec.data().unwrap_or(&[]);
        let sites: Vec<(usize, usize)> = sec
            .relocations()
            .filter_map(|(at, r)| {
                let RelocationTarget::Symbol(i) = r.target() else {
                    return None;
                };
                let s = obj.symbol_by_index(i).ok()?;
                (s.section_index()? == text_index).then_some(())?;
                let site = s.address().checked_add_signed(r.addend())?;
                Some((usize::try_from(at).ok()?, usize::try_from(site).ok()?))
            })
            .collect();
        // Entry size of the length-carrying tables: one .text site each.
        let stride = match sites.len() {
            0 => 0,
            n if data.len() % n == 0 => data.len() / n,
            _ => 0,
        };
        for (entry, site) in sites {
            let len = match (width, sec.name()) {
                (0, Ok(".altinstructions")) if stride >= 4 => data.get(entry + stride - 2),
                (0, Ok(".parainstructions")) if stride == 16 => data.get(entry + 9),
                (0, _) => None,
                (w, _) => {
                    mark(&mut patched, site, w);
                    continue;
                }
            };
            let len = len.map_or(DEFAULT_SITE, |&l| usize::from(l).clamp(1, 64));
            mark(&mut patched, site, len);
        }
    }
    // The kernel lays out executable sections in file order, each aligned.
    let mut text_offset = 0u64;
    for sec in obj.sections() {
        if sec.index() == text_index {
            break;
        }
        let exec = sec.kind() == SectionKind::Text;
        if exec && !sec.name().is_ok_and(|n| n.starts_with(".init")) {
            text_offset = align_up(text_offset, sec.align()).saturating_add(sec.size());
        }
    }
    text_offset = align_up(text_offset, text_sec.align());
    let module_size = obj
        .section_by_name(".gnu.linkonce.this_module")
        .and_then(|s| usize::try_from(s.size()).ok())
        .unwrap_or(0x1000)
        .clamp(0x100, 0x1000);
    let names = obj
        .sections()
        .filter_map(|s| Some((s.index(), s.name().ok()?.to_string())))
        .collect();
    Ok(Ko {
        text,
        relocated,
        patched,
        relocs,
        text_offset,
        module_size,
        names,
    })
}

fn align_up(v: u64, align: u64) -> u64 {
    v.checked_next_multiple_of(align.max(1)).unwrap_or(v)
}

/// Matching bytes and compared bytes of `mem` against the .ko's `.text`.
fn score(ko: &Ko, mem: &[u8]) -> (usize, usize) {
    let mut matched = 0;
    let mut compared = 0;
    for (i, (&a, &b)) in ko.text.iter().zip(mem).enumerate() {
        if ko.relocated.get(i) == Some(&true) || ko.patched.get(i) == Some(&true) {
            continue;
        }
        compared += 1;
        matched += usize::from(a == b);
    }
    (matched, compared)
}

/// Where `.text` is: the best matching page-aligned pointer in the struct.
fn find_text(read: ReadMem, module: u64, ko: &Ko, name: &str) -> Result<(u64, Vec<u8>)> {
    let mut raw = vec![0u8; ko.module_size];
    read(module, &mut raw).map_err(|e| {
        sym_err(format!(
            "reading module {name}'s struct at {module:#x}: {e}"
        ))
    })?;
    let mut candidates = Vec::new();
    for w in raw.chunks_exact(8) {
        let v = u64::from_le_bytes(w.try_into().unwrap_or_default());
        if MODULES.contains(&v) && v % 4096 == 0 {
            for c in [v, v.wrapping_add(ko.text_offset)] {
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
        }
    }
    let mut best: Option<(u64, Vec<u8>, usize, usize)> = None;
    for &c in &candidates {
        let mut mem = vec![0u8; ko.text.len()];
        if read(c, &mut mem).is_err() {
            continue;
        }
        let (matched, compared) = score(ko, &mem);
        let better = best
            .as_ref()
            .is_none_or(|b| matched * b.3 > b.2 * compared.max(1));
        if better {
            best = Some((c, mem, matched, compared));
        }
    }
    match best {
        Some((c, mem, matched, compared))
            if compared >= MIN_COMPARED && matched * 100 >= compared * MATCH_PERCENT =>
        {
            Ok((c, mem))
        }
        Some((c, _, matched, compared)) => Err(sym_err(format!(
            "module {name}: no candidate address matches the .ko's .text ({} candidates; \
             best {c:#x}: {matched} of {compared} bytes)",
            candidates.len()
        ))),
        None => Err(sym_err(format!(
            "module {name}: no candidate address matches the .ko's .text ({} readable \
             candidates in struct module at {module:#x})",
            candidates.len()
        ))),
    }
}

fn field<const N: usize>(mem: &[u8], at: usize) -> Option<[u8; N]> {
    mem.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Section bases from the relocated `.text` in memory (majority per section).
fn derive_sections(ko: &Ko, text: u64, mem: &[u8]) -> HashMap<SectionIndex, u64> {
    let mut votes: HashMap<SectionIndex, HashMap<u64, usize>> = HashMap::new();
    for r in &ko.relocs {
        let Some((section, value)) = r.target else {
            continue;
        };
        let width = if r.r_type == R_64 { 8 } else { 4 };
        let end = r.offset.saturating_add(width).min(ko.patched.len());
        if ko
            .patched
            .get(r.offset..end)
            .is_none_or(|p| p.iter().any(|&x| x))
        {
            continue;
        }
        let p = text.wrapping_add(r.offset as u64);
        let s = match r.r_type {
            R_PC32 | R_PLT32 => field::<4>(mem, r.offset)
                .map(|f| p.wrapping_add_signed(i64::from(i32::from_le_bytes(f)))),
            R_32S => field::<4>(mem, r.offset).map(|f| i64::from(i32::from_le_bytes(f)) as u64),
            R_64 => field::<8>(mem, r.offset).map(u64::from_le_bytes),
            _ => None,
        };
        let Some(s) = s else { continue };
        let base = s
            .wrapping_add_signed(r.addend.wrapping_neg())
            .wrapping_sub(value);
        *votes.entry(section).or_default().entry(base).or_default() += 1;
    }
    let mut out = HashMap::new();
    for (section, counts) in votes {
        let total: usize = counts.values().sum();
        let Some((&base, &n)) = counts.iter().max_by_key(|(_, &n)| n) else {
            continue;
        };
        if 2 * n > total {
            out.insert(section, base);
        } else {
            tracing::warn!(
                section = ko.names.get(&section).map(String::as_str).unwrap_or("?"),
                total,
                "module section address: no majority among the relocations; left out"
            );
        }
    }
    out
}

/// Where a module that is still initialising has its `.init.text`: the
/// struct's `init` pointer is `init_module` (the module's init function),
/// found as the pointer whose memory matches `.init.text` there.
fn find_init_text(read: ReadMem, module: u64, module_size: usize, data: &[u8]) -> Option<u64> {
    let obj = parse_ko(data).ok()?;
    let sec = obj.section_by_name(".init.text")?;
    let code = sec.data().ok()?;
    let init = obj
        .symbols()
        .find(|s| s.name() == Ok("init_module") && s.section_index() == Some(sec.index()))?
        .address();
    let mut relocated = vec![false; code.len()];
    for (offset, r) in sec.relocations() {
        if let Ok(offset) = usize::try_from(offset) {
            mark(&mut relocated, offset, usize::from(r.size() / 8).max(4));
        }
    }
    let mut raw = vec![0u8; module_size];
    read(module, &mut raw).ok()?;
    let mut seen = HashSet::new();
    for w in raw.chunks_exact(8) {
        let p = u64::from_le_bytes(w.try_into().unwrap_or_default());
        if !MODULES.contains(&p) || !seen.insert(p) {
            continue;
        }
        let base = p.wrapping_sub(init);
        let mut mem = vec![0u8; code.len()];
        if read(base, &mut mem).is_err() {
            continue;
        }
        let (mut matched, mut compared) = (0usize, 0usize);
        for (i, (&a, &b)) in code.iter().zip(&mem).enumerate() {
            if relocated.get(i) == Some(&false) {
                compared += 1;
                matched += usize::from(a == b);
            }
        }
        // ftrace and alternatives may rewrite a few bytes of init code too.
        if compared >= 16 && matched * 100 >= compared * MATCH_PERCENT {
            return Some(base);
        }
    }
    None
}

/// Finds module `name` (the .ko `data`) through the `modules` list at `head`.
pub(super) fn find(read: ReadMem, head: u64, name: &str, data: &[u8]) -> Result<ModuleLayout> {
    let name = normalize(name);
    let ko = read_ko(data).map_err(|e| sym_err(format!("module {name}: {e}")))?;
    let (module, state) = find_module(read, head, &name)?;
    if state == UNFORMED {
        return Err(sym_err(format!("module {name} is still being loaded")));
    }
    let (text, mem) = find_text(read, module, &ko, &name)?;
    let mut sections = BTreeMap::new();
    for (index, base) in derive_sections(&ko, text, &mem) {
        let Some(sec) = ko.names.get(&index) else {
            continue;
        };
        if state == LIVE && sec.starts_with(".init") {
            continue; // freed after init
        }
        sections.insert(sec.clone(), base);
    }
    if sections.get(".text").is_some_and(|&t| t != text) {
        return Err(sym_err(format!(
            "module {name}: .text matches at {text:#x} but its relocations say {:#x}",
            sections.get(".text").copied().unwrap_or(0)
        )));
    }
    sections.insert(".text".into(), text);
    if state != LIVE {
        // Still in its init function: `.init.text` is there too.
        if let Some(init) = find_init_text(read, module, ko.module_size, data) {
            sections.insert(".init.text".into(), init);
        }
    }
    if ko.names.values().any(|n| n == ".gnu.linkonce.this_module") {
        sections.insert(".gnu.linkonce.this_module".into(), module);
    }
    Ok(ModuleLayout { name, sections })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmi::symbols::testelf::{self, Elf};
    use crate::vmi::symbols::Symbols;

    const HEAD: u64 = 0xffff_ffff_8260_0000;
    const TEXT: u64 = 0xffff_ffff_c001_0000;
    const RODATA: u64 = 0xffff_ffff_c001_3000;
    const DATA: u64 = 0xffff_ffff_c001_4000;
    const BSS: u64 = 0xffff_ffff_c001_5000;
    const MODULE: u64 = 0xffff_ffff_c001_6000;
    const OTHER: u64 = 0xffff_ffff_c002_0000;
    const DECOY: u64 = 0xffff_ffff_c003_0000;

    /// Guest memory: regions of bytes.
    #[derive(Default)]
    struct Mem(Vec<(u64, Vec<u8>)>);

    impl Mem {
        fn put(&mut self, at: u64, bytes: &[u8]) {
            for (start, data) in &mut self.0 {
                if at >= *start && at + bytes.len() as u64 <= *start + data.len() as u64 {
                    let o = (at - *start) as usize;
                    data[o..o + bytes.len()].copy_from_slice(bytes);
                    return;
                }
            }
            self.0.push((at, bytes.to_vec()));
        }
        fn read(&self, at: u64, buf: &mut [u8]) -> Result<()> {
            for (start, data) in &self.0 {
                if at >= *start && at + buf.len() as u64 <= *start + data.len() as u64 {
                    let o = (at - *start) as usize;
                    buf.copy_from_slice(&data[o..o + buf.len()]);
                    return Ok(());
                }
            }
            Err(Error::Translate {
                va: at,
                why: "not mapped".into(),
            })
        }
    }

    fn code(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678u32;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect()
    }

    /// A .ko whose .text references .rodata, .data, .bss and the kernel,
    /// with an ftrace site and an alternative.
    fn ko() -> Elf {
        let mut e = Elf::rel();
        let t = e.section(".text", testelf::TEXT, 0, code(0x200));
        let ro = e.section(".rodata", testelf::RODATA, 0, vec![1; 0x40]);
        let d = e.section(".data", testelf::DATA, 0, vec![2; 0x40]);
        let b = e.section(".bss", testelf::BSS, 0, vec![0; 0x40]);
        let mc = e.section("__mcount_loc", testelf::RODATA, 0, vec![0; 8]);
        let alt = e.section(".altinstructions", testelf::RODATA, 0, {
            let mut a = vec![0u8; 12];
            a[10] = 6; // instrlen
            a
        });
        let rep = e.section(".altinstr_replacement", testelf::TEXT, 0, vec![0x90; 6]);
        e.section(
            ".gnu.linkonce.this_module",
            testelf::DATA,
            0,
            vec![0; 0x380],
        );
        let ts = e.section_symbol(t);
        let ros = e.section_symbol(ro);
        let ds = e.section_symbol(d);
        let reps = e.section_symbol(rep);
        let counter = e.symbol("counter", Some(b), 0x18, 8, false, false);
        e.symbol("f", Some(t), 0, 0x200, true, true);
        let printk = e.symbol("printk", None, 0, 0, false, true);
        e.rela(t, 0x10, ds, testelf::R_X86_64_PC32, 0x8 - 4);
        e.rela(t, 0x20, printk, testelf::R_X86_64_PLT32, -4);
        e.rela(t, 0x30, counter, testelf::R_X86_64_PC32, -4);
        e.rela(t, 0x40, ros, testelf::R_X86_64_32S, 0x10);
        e.rela(t, 0x80, ds, testelf::R_X86_64_64, 0x20);
        e.rela(t, 0x90, ros, testelf::R_X86_64_PC32, -4);
        e.rela(mc, 0, ts, testelf::R_X86_64_64, 0x50);
        e.rela(alt, 0, ts, testelf::R_X86_64_PC32, 0x60);
        e.rela(alt, 4, reps, testelf::R_X86_64_PC32, 0);
        e
    }

    /// The module loaded as the kernel would, in a list after "other".
    fn guest() -> Mem {
        let mut m = Mem::default();
        let mut text = code(0x200);
        let pc32 = |text: &mut Vec<u8>, at: usize, s: u64, a: i64| {
            let v = s.wrapping_add_signed(a).wrapping_sub(TEXT + at as u64) as u32;
            text[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        pc32(&mut text, 0x10, DATA, 0x8 - 4);
        pc32(&mut text, 0x20, 0xffff_ffff_8110_0000, -4);
        pc32(&mut text, 0x30, BSS + 0x18, -4);
        text[0x40..0x44].copy_from_slice(&((RODATA + 0x10) as u32).to_le_bytes());
        text[0x80..0x88].copy_from_slice(&(DATA + 0x20).to_le_bytes());
        // An alternative rewrote 0x90 (a relocation under it is ignored).
        pc32(&mut text, 0x90, RODATA, -4);
        text[0x50..0x55].copy_from_slice(&[0x0f, 0x1f, 0x44, 0, 0]); // ftrace nop
        text[0x60..0x66].copy_from_slice(&[0xcc; 6]); // alternative
        text[0x100] ^= 0xff; // a stray difference
        m.put(TEXT, &text);
        m.put(
            DECOY,
            &code(0x1000).iter().map(|b| b ^ 0x5a).collect::<Vec<_>>(),
        );
        let mut module = vec![0u8; 0x380];
        module[8..16].copy_from_slice(&(HEAD).to_le_bytes()); // list.next
        module[24..30].copy_from_slice(b"my_mod");
        module[0x100..0x108].copy_from_slice(&DECOY.to_le_bytes());
        module[0x108..0x110].copy_from_slice(&0xffff_ffff_c00f_0000u64.to_le_bytes());
        module[0x140..0x148].copy_from_slice(&TEXT.to_le_bytes());
        m.put(MODULE, &module);
        let mut other = vec![0u8; 0x380];
        other[8..16].copy_from_slice(&(MODULE + 8).to_le_bytes());
        other[24..29].copy_from_slice(b"other");
        m.put(OTHER, &other);
        m.put(HEAD, &(OTHER + 8).to_le_bytes());
        m
    }

    fn run(mem: &Mem, name: &str) -> Result<ModuleLayout> {
        let mut read = |va: u64, buf: &mut [u8]| mem.read(va, buf);
        find(&mut read, HEAD, name, &ko().build())
    }

    #[test]
    fn finds_a_module_layout_in_memory() {
        let l = run(&guest(), "my-mod").expect("found");
        assert_eq!(l.name, "my_mod");
        let want: BTreeMap<String, u64> = [
            (".text", TEXT),
            (".rodata", RODATA),
            (".data", DATA),
            (".bss", BSS),
            (".gnu.linkonce.this_module", MODULE),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(l.sections, want);
        // The layout loads the module's symbols where they are.
        let mut s = Symbols::parse(b"ffffffff81000000 T _text\n").expect("map");
        s.add_module_data(&ko().build(), &l).expect("add");
        assert_eq!(s.lookup("counter"), Some(BSS + 0x18));
        assert_eq!(s.lookup("f"), Some(TEXT));
    }

    #[test]
    fn clear_errors_for_missing_modules_and_text() {
        let e = run(&guest(), "nope").expect_err("missing").to_string();
        assert!(
            e.contains("no module named nope") && e.contains("my_mod other"),
            "{e}"
        );

        let mut m = guest();
        m.put(TEXT + 0x100, &[0xee; 0x100]);
        let e = run(&m, "my_mod").expect_err("no text").to_string();
        assert!(e.contains("no candidate address matches"), "{e}");

        let mut m = guest();
        m.put(MODULE + 8, &(OTHER + 8).to_le_bytes()); // my_mod -> other -> my_mod
        let e = run(&m, "absent").expect_err("loop").to_string();
        assert!(e.contains("loops"), "{e}");

        let mut m = guest();
        m.put(MODULE + 8, &0xffff_ffff_c0ff_0008u64.to_le_bytes());
        let e = run(&m, "absent").expect_err("unmapped").to_string();
        assert!(e.contains("0xffffffffc0ff0000"), "{e}");

        let mut read = |va: u64, buf: &mut [u8]| guest().read(va, buf);
        let e = find(&mut read, HEAD, "my_mod", b"not a ko")
            .expect_err("ko")
            .to_string();
        assert!(e.contains("my_mod"), "{e}");
    }

    /// A real module, loaded here the way the kernel would (relocations
    /// applied, patch sites rewritten), when the host has one.
    #[test]
    fn finds_a_real_module() {
        let ko = std::env::var_os("XENPROBE_TEST_KO")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::fs::read_dir("/usr/lib/modules")
                    .ok()?
                    .flatten()
                    .find_map(|d| {
                        let p = d.path().join("kernel/net/key/af_key.ko");
                        p.exists().then_some(p)
                    })
            });
        let Some(ko) = ko else {
            println!("skipped: no af_key.ko under /usr/lib/modules (set XENPROBE_TEST_KO)");
            return;
        };
        let data = std::fs::read(&ko).expect("ko");
        let obj = parse_ko(&data).expect("relocatable");
        let info = read_ko(&data).expect("ko");
        let text_index = obj.section_by_name(".text").expect("text").index();
        // Every allocated section on its own pages; .text first.
        let mut bases = HashMap::new();
        let mut next = TEXT;
        for sec in obj.sections().filter(|s| s.address() == 0 && s.size() > 0) {
            let object::SectionFlags::Elf { sh_flags } = sec.flags() else {
                continue;
            };
            if sh_flags & u64::from(object::elf::SHF_ALLOC) == 0 {
                continue;
            }
            let base = if sec.index() == text_index {
                TEXT
            } else {
                next + 0x10_0000
            };
            bases.insert(sec.index(), base);
            next = base + sec.size().next_multiple_of(4096);
        }
        let text_base = bases[&text_index];
        let kernel = |name: &str| {
            let h = name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
            0xffff_ffff_8100_0000 + (h % 0x100_0000)
        };
        let mut text = info.text.clone();
        let sec = obj.section_by_index(text_index).expect("text");
        for (off, r) in sec.relocations() {
            let object::RelocationTarget::Symbol(i) = r.target() else {
                continue;
            };
            let sym = obj.symbol_by_index(i).expect("symbol");
            let s = match sym.section_index() {
                Some(x) => bases.get(&x).copied().unwrap_or(0) + sym.address(),
                None => kernel(sym.name().unwrap_or("")),
            };
            let object::RelocationFlags::Elf { r_type } = r.flags() else {
                continue;
            };
            let v = s.wrapping_add_signed(r.addend());
            let off = off as usize;
            match r_type {
                R_PC32 | R_PLT32 => text[off..off + 4].copy_from_slice(
                    &(v.wrapping_sub(text_base + off as u64) as u32).to_le_bytes(),
                ),
                R_32S | 10 => text[off..off + 4].copy_from_slice(&(v as u32).to_le_bytes()),
                R_64 => text[off..off + 8].copy_from_slice(&v.to_le_bytes()),
                other => panic!("relocation type {other}"),
            }
        }
        for (b, &p) in text.iter_mut().zip(&info.patched) {
            if p {
                *b ^= 0xa5;
            }
        }
        let mut m = Mem::default();
        m.put(text_base, &text);
        let mut module = vec![0u8; info.module_size];
        module[8..16].copy_from_slice(&HEAD.to_le_bytes());
        module[24..30].copy_from_slice(b"af_key");
        module[0x150..0x158].copy_from_slice(&text_base.to_le_bytes());
        m.put(MODULE, &module);
        m.put(HEAD, &(MODULE + 8).to_le_bytes());
        let mut read = |va: u64, buf: &mut [u8]| m.read(va, buf);
        let l = find(&mut read, HEAD, "af_key", &data).expect("found");
        let (matched, compared) = score(&info, &text);
        println!(
            "{}: .text {matched}/{compared} bytes compared, {} sections: {:?}",
            ko.display(),
            l.sections.len(),
            l.sections.keys().collect::<Vec<_>>()
        );
        assert!(l.sections.len() > 3);
        for (name, &addr) in &l.sections {
            if name == ".gnu.linkonce.this_module" {
                assert_eq!(addr, MODULE);
                continue;
            }
            let sec = obj.section_by_name(name).expect("section");
            assert_eq!(Some(&addr), bases.get(&sec.index()), "{name}");
        }
    }

    #[test]
    fn garbage_kos_and_memory_never_panic() {
        let good = ko().build();
        let mem = guest();
        let mut read = |va: u64, buf: &mut [u8]| mem.read(va, buf);
        for cut in (0..good.len()).step_by(5) {
            let _ = find(&mut read, HEAD, "my_mod", &good[..cut]);
        }
        let mut seed = 0x0123_4567_89ab_cdefu64;
        for _ in 0..500 {
            testelf::xorshift(&mut seed);
            let mut d = good.clone();
            let at = (seed as usize) % d.len();
            d[at] = (seed >> 48) as u8;
            let _ = find(&mut read, HEAD, "my_mod", &d);
            let mut m = guest();
            let va = TEXT - 0x40 + (seed >> 20) % 0x300;
            m.put(va, &seed.to_le_bytes());
            let va = MODULE + (seed >> 30) % 0x378;
            m.put(va, &(seed.rotate_left(17)).to_le_bytes());
            let mut read = |va: u64, buf: &mut [u8]| m.read(va, buf);
            let _ = find(&mut read, HEAD, "my_mod", &good);
        }
    }

    #[test]
    fn inconsistent_relocations_leave_the_section_out() {
        let mut m = guest();
        // The 32S reference to .rodata now disagrees with the PC32 one:
        // no majority.
        m.put(TEXT + 0x40, &0x1234_5678u32.to_le_bytes());
        let l = run(&m, "my_mod").expect("found");
        assert_eq!(l.sections.get(".rodata"), None);
        assert_eq!(l.sections.get(".data"), Some(&DATA));
    }
}
