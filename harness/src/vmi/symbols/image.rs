//! The kallsyms tables of a Linux kernel image, for kernels shipped without
//! a symbol table.
//!
//! `scripts/kallsyms.c` emits into `.rodata`, each table at an 8-byte
//! aligned label (64-bit):
//! - `kallsyms_num_syms` (u32);
//! - `kallsyms_names`: per symbol a length (ULEB128, one or two bytes) and
//!   that many token indices; the first expanded character is the type;
//! - `kallsyms_markers` (u32 per 256 symbols): offsets into the names;
//! - `kallsyms_token_table`: 256 NUL-terminated tokens;
//! - `kallsyms_token_index`: 256 u16 offsets into the token table;
//! - `kallsyms_offsets` (s32 per symbol) and `kallsyms_relative_base`
//!   (a pointer), or `kallsyms_addresses` (a pointer per symbol).
//!
//! Up to 6.3 the addresses come first: offsets, relative_base, num_syms,
//! names, markers, [seqs_of_names,] token_table, token_index, where
//! `kallsyms_seqs_of_names` (6.2: u32, 6.3 and Debian's 6.1: 3 bytes per
//! symbol, a permutation) may sit between the markers and the token table.
//! From 6.4 the addresses follow the token index (then seqs_of_names).
//!
//! The token table is found by content: used characters are their own
//! one-character token, so "0" .. "9" sit consecutively at 0x30 .. 0x39.
//! Everything after is checked against it: the index, the markers, the
//! name lengths, the sort order of the addresses.

use std::ops::RangeInclusive;

use object::{Object, ObjectSection, SectionFlags, SectionKind};

use super::Symbol;

/// The longest symbol name the kernel allows (KSYM_NAME_LEN).
const MAX_NAME: usize = 512;
/// More symbols than any kernel has.
const MAX_SYMS: usize = 1 << 24;

/// Recovers the symbols of a kernel ELF from its non-executable allocated
/// sections (the whole file if it has none). `Ok(None)`: no token table.
pub(super) fn recover_from_elf(
    obj: &object::File,
    data: &[u8],
) -> Result<Option<Vec<Symbol>>, String> {
    let big = !obj.is_little_endian();
    let word = if obj.is_64() { 8 } else { 4 };
    let mut regions: Vec<&[u8]> = obj
        .sections()
        .filter(|s| s.kind() != SectionKind::Text && is_alloc(s.flags()))
        .filter_map(|s| s.data().ok())
        .filter(|d| !d.is_empty())
        .collect();
    if regions.is_empty() {
        regions.push(data);
    }
    let mut failure = None;
    for r in regions {
        match recover(r, big, word) {
            Ok(Some(syms)) => return Ok(Some(syms)),
            Ok(None) => {}
            Err(e) => failure = Some(e),
        }
    }
    failure.map_or(Ok(None), Err)
}

fn is_alloc(flags: SectionFlags) -> bool {
    match flags {
        SectionFlags::Elf { sh_flags } => sh_flags & u64::from(object::elf::SHF_ALLOC) != 0,
        _ => true,
    }
}

/// Recovers the symbols from one region holding the tables; `word` is the
/// pointer size (and label alignment). `Ok(None)`: no token table.
pub(super) fn recover(
    region: &[u8],
    big_endian: bool,
    word: usize,
) -> Result<Option<Vec<Symbol>>, String> {
    let r = Bytes {
        d: region,
        big: big_endian,
    };
    let tables: Vec<Tokens> = digit_runs(region).filter_map(|p| tokens_at(r, p)).collect();
    if tables.is_empty() {
        return Ok(None);
    }
    let mut why = String::new();
    for t in &tables {
        match recover_with(r, t, word) {
            Ok(syms) => return Ok(Some(syms)),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// Little reader of fixed-width integers that never panics.
#[derive(Clone, Copy)]
struct Bytes<'a> {
    d: &'a [u8],
    big: bool,
}

impl<'a> Bytes<'a> {
    fn get<const N: usize>(self, at: usize) -> Option<[u8; N]> {
        let end = at.checked_add(N)?;
        self.d.get(at..end)?.try_into().ok()
    }
    /// The `N` bytes at `at` in little-endian order (reversed where the
    /// image is big-endian).
    fn le<const N: usize>(self, at: usize) -> Option<[u8; N]> {
        let mut b = self.get::<N>(at)?;
        if self.big {
            b.reverse();
        }
        Some(b)
    }
    fn u16(self, at: usize) -> Option<u16> {
        self.le(at).map(u16::from_le_bytes)
    }
    fn u32(self, at: usize) -> Option<u32> {
        self.le(at).map(u32::from_le_bytes)
    }
    fn u64(self, at: usize) -> Option<u64> {
        self.le(at).map(u64::from_le_bytes)
    }
    fn word(self, at: usize, word: usize) -> Option<u64> {
        if word == 8 {
            self.u64(at)
        } else {
            self.u32(at).map(u64::from)
        }
    }
    /// The NUL-terminated string at `at` (without the NUL), at most `max` long.
    fn cstr(self, at: usize, max: usize) -> Option<&'a [u8]> {
        let rest = self.d.get(at..)?;
        let rest = rest.get(..rest.len().min(max + 1))?;
        let n = rest.iter().position(|&b| b == 0)?;
        rest.get(..n)
    }
}

/// Positions of "0\0" "1\0" ... "9\0".
fn digit_runs(d: &[u8]) -> impl Iterator<Item = usize> + '_ {
    const RUN: &[u8; 20] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(rel) = d.get(from..)?.iter().position(|&b| b == b'0') {
            let p = from + rel;
            from = p + 1;
            if d.get(p..p + RUN.len()) == Some(RUN.as_slice()) {
                return Some(p);
            }
        }
        None
    })
}

/// A validated token table and index.
struct Tokens<'a> {
    tokens: Vec<&'a [u8]>,
    /// Start of the token table.
    table: usize,
    /// Start of the token index.
    index: usize,
}

/// The token table whose token 0x30 ("0") is at `p`, with its index.
fn tokens_at(r: Bytes, p: usize) -> Option<Tokens> {
    // Walk to the end of token 0xff; the index follows, aligned.
    let mut end = p;
    for _ in 0x30..=0xff {
        end += r.cstr(end, MAX_NAME)?.len() + 1;
    }
    (end..end + 8).find_map(|q| tokens_with_index(r, p, end, q))
}

fn tokens_with_index(r: Bytes, p: usize, end: usize, q: usize) -> Option<Tokens> {
    let idx: Vec<usize> = (0..256)
        .map(|i| r.u16(q + 2 * i).map(usize::from))
        .collect::<Option<_>>()?;
    let table = p.checked_sub(*idx.get(0x30)?)?;
    if idx.first() != Some(&0) {
        return None;
    }
    let mut tokens = Vec::with_capacity(256);
    let mut next = 0;
    for &at in &idx {
        if at != next {
            return None;
        }
        let t = r.cstr(table + at, MAX_NAME)?;
        tokens.push(t);
        next = at + t.len() + 1;
    }
    (table + next == end).then_some(Tokens {
        tokens,
        table,
        index: q,
    })
}

/// Finds markers, names and addresses around a token table. The markers
/// end right before the token table, or before a `seqs_of_names` block
/// (3 or 4 bytes per symbol) that does.
fn recover_with(r: Bytes, t: &Tokens, word: usize) -> Result<Vec<Symbol>, String> {
    let floor = t.table.saturating_sub(4 * MAX_SYMS + 2 * word).max(4);
    let mut why = String::from("no kallsyms_markers before the token table");
    let mut here = t.table;
    while here >= floor {
        let candidate = markers_before(r, here);
        let seqs = here.next_multiple_of(word);
        here -= 4;
        let Some((ms, markers)) = candidate else {
            continue;
        };
        let Some(gap) = t.table.checked_sub(seqs) else {
            continue;
        };
        for (width, counts) in counts_for(gap, markers.len(), word) {
            let Some(names) = names_before(r, ms, &markers, counts, word) else {
                why = "no kallsyms_names and kallsyms_num_syms before the markers".into();
                continue;
            };
            if width > 0 && !is_permutation(r, seqs, width, names.count) {
                why = "kallsyms_seqs_of_names is not a permutation".into();
                continue;
            }
            let found =
                decode_names(r, t, &names).and_then(|e| Ok((e, addresses(r, t, &names, word)?)));
            let (entries, addrs) = match found {
                Ok(found) => found,
                Err(e) => {
                    why = e;
                    continue;
                }
            };
            return Ok(entries
                .into_iter()
                .zip(addrs)
                .map(|((kind, name), addr)| Symbol {
                    name,
                    addr,
                    size: 0,
                    is_function: matches!(kind, 'T' | 't' | 'W' | 'w'),
                    kind,
                    module: None,
                })
                .collect());
        }
    }
    Err(why)
}

/// Symbol counts that fit `k` markers and a `gap` of `seqs_of_names`
/// entries between the markers and the token table: (entry width, counts).
fn counts_for(gap: usize, k: usize, word: usize) -> Vec<(usize, RangeInclusive<usize>)> {
    let (lo, hi) = (256 * k.saturating_sub(1) + 1, 256 * k);
    if gap == 0 {
        return vec![(0, lo..=hi)];
    }
    [3, 4]
        .into_iter()
        .filter_map(|w| {
            // gap is w * count rounded up to the word.
            let from = (gap.saturating_sub(word) / w + 1).max(lo);
            let to = (gap / w).min(hi);
            (from <= to).then_some((w, from..=to))
        })
        .collect()
}

/// Whether the `n` entries at `at` (big-endian 3-byte or native 4-byte)
/// hold each of 0 .. n once.
fn is_permutation(r: Bytes, at: usize, width: usize, n: usize) -> bool {
    let mut seen = vec![false; n];
    (0..n).all(|i| {
        let p = at + width * i;
        let v = if width == 3 {
            r.get::<3>(p)
                .map(|[a, b, c]| usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
        } else {
            r.u32(p).map(|v| v as usize)
        };
        v.and_then(|v| seen.get_mut(v))
            .is_some_and(|s| !std::mem::replace(s, true))
    })
}

/// The markers array ending at `end`: increasing u32s back to a 0.
fn markers_before(r: Bytes, end: usize) -> Option<(usize, Vec<u32>)> {
    let mut out: Vec<u32> = Vec::new();
    let mut at = end;
    loop {
        at = at.checked_sub(4)?;
        let v = r.u32(at)?;
        if let Some(&next) = out.last() {
            // 256 names take 512 .. 256 * (2 + MAX_NAME) bytes.
            let gap = next.checked_sub(v)? as usize;
            if !(512..=256 * (2 + MAX_NAME)).contains(&gap) {
                return None;
            }
        }
        out.push(v);
        if v == 0 {
            break;
        }
        if out.len() > MAX_SYMS / 256 {
            return None;
        }
    }
    out.reverse();
    Some((at, out))
}

/// Where `kallsyms_num_syms` and `kallsyms_names` are.
struct Names {
    /// `kallsyms_num_syms`.
    num_syms: usize,
    count: usize,
    /// `kallsyms_names`.
    start: usize,
}

/// Finds `num_syms` (a word before the names, one of `counts`) and the
/// names, which end right before the markers at `ms` and agree with every
/// marker.
fn names_before(
    r: Bytes,
    ms: usize,
    markers: &[u32],
    counts: RangeInclusive<usize>,
    word: usize,
) -> Option<Names> {
    let last = *markers.last()? as usize;
    // The names end within `word` bytes of the markers; the last block of up
    // to 256 names after the last marker takes 2 .. 2 + MAX_NAME bytes each.
    let newest = ms.checked_sub(last + 2 + word)?;
    let oldest = ms.saturating_sub(last + 256 * (2 + MAX_NAME) + 2 * word);
    let mut s = ms.checked_sub((ms - newest).next_multiple_of(word))?;
    while s >= oldest {
        if let Some(n) = r.u32(s).map(|n| n as usize) {
            if counts.contains(&n) && names_fit(r, s + word, n, markers, ms, word) {
                return Some(Names {
                    num_syms: s,
                    count: n,
                    start: s + word,
                });
            }
        }
        s = s.checked_sub(word)?;
    }
    None
}

/// Whether `n` names from `start` pass every marker and end at `ms`.
fn names_fit(r: Bytes, start: usize, n: usize, markers: &[u32], ms: usize, word: usize) -> bool {
    let mut off = 0usize;
    for i in 0..n {
        if i % 256 == 0 && markers.get(i / 256).map(|&m| m as usize) != Some(off) {
            return false;
        }
        let Some((len, hdr)) = name_len(r, start + off) else {
            return false;
        };
        off += hdr + len;
        if start + off > ms {
            return false;
        }
    }
    ms - (start + off) < word
}

/// A name's compressed length and the bytes the length takes.
fn name_len(r: Bytes, at: usize) -> Option<(usize, usize)> {
    let b0 = usize::from(*r.d.get(at)?);
    if b0 & 0x80 == 0 {
        return (b0 != 0).then_some((b0, 1));
    }
    let b1 = usize::from(*r.d.get(at + 1)?);
    if b1 & 0x80 != 0 {
        return None;
    }
    Some(((b0 & 0x7f) | (b1 << 7), 2))
}

/// Expands every name: (type letter, name).
fn decode_names(r: Bytes, t: &Tokens, names: &Names) -> Result<Vec<(char, String)>, String> {
    let mut out = Vec::with_capacity(names.count);
    let mut at = names.start;
    let mut buf = Vec::with_capacity(64);
    for i in 0..names.count {
        let bad = |why: &str| format!("kallsyms name {i} (at {at:#x}): {why}");
        let (len, hdr) = name_len(r, at).ok_or_else(|| bad("bad length"))?;
        let codes =
            r.d.get(at + hdr..at + hdr + len)
                .ok_or_else(|| bad("truncated"))?;
        buf.clear();
        for &c in codes {
            let tok = t
                .tokens
                .get(usize::from(c))
                .ok_or_else(|| bad("bad token"))?;
            buf.extend_from_slice(tok);
        }
        let (&kind, name) = buf.split_first().ok_or_else(|| bad("empty"))?;
        if !kind.is_ascii_alphabetic() {
            return Err(bad("the type is not a letter"));
        }
        if name.is_empty() || name.len() >= MAX_NAME || !name.iter().all(u8::is_ascii_graphic) {
            return Err(bad("not a printable name"));
        }
        // Checked ASCII just above.
        let name = String::from_utf8_lossy(name).into_owned();
        out.push((char::from(kind), name));
        at += hdr + len;
    }
    Ok(out)
}

/// The addresses, from whichever layout is consistent: before
/// `num_syms` (up to 6.1) or after the token index (6.4 on).
fn addresses(r: Bytes, t: &Tokens, names: &Names, word: usize) -> Result<Vec<u64>, String> {
    let n = names.count;
    let offsets_len = (4 * n).next_multiple_of(word);
    let pointers_len = word * n;
    let after_index = (t.index + 512).next_multiple_of(word);
    let mut layouts = Vec::new();
    // Up to 6.1: offsets, relative_base, num_syms.
    if let Some(base) = names.num_syms.checked_sub(word) {
        if let Some(offsets) = base.checked_sub(offsets_len) {
            layouts.push((offsets, Some(base)));
        }
    }
    // 6.4 on: offsets, relative_base after the token index.
    layouts.push((after_index, Some(after_index + offsets_len)));
    // Without CONFIG_KALLSYMS_BASE_RELATIVE: addresses instead.
    if let Some(addrs) = names.num_syms.checked_sub(pointers_len) {
        layouts.push((addrs, None));
    }
    layouts.push((after_index, None));
    for (at, base) in layouts {
        let found = match base {
            Some(base) => r
                .word(base, word)
                .and_then(|base| relative_addresses(r, at, n, base)),
            None => absolute_addresses(r, at, n, word),
        };
        if let Some(a) = found {
            return Ok(a);
        }
    }
    Err(format!(
        "no sorted kallsyms_offsets or kallsyms_addresses for {n} symbols"
    ))
}

/// `kallsyms_offsets` against `relative_base`: negative offsets are
/// `base - 1 - offset` with absolute per-CPU symbols (the offsets of the
/// others are non-negative), else all are unsigned offsets from the base.
/// The base is the lowest relative address, so one offset is -1 or 0.
fn relative_addresses(r: Bytes, at: usize, n: usize, base: u64) -> Option<Vec<u64>> {
    let offsets: Vec<i32> = (0..n)
        .map(|i| r.u32(at + 4 * i).map(|v| v as i32))
        .collect::<Option<_>>()?;
    if base == 0 {
        return None;
    }
    if offsets.iter().filter(|&&o| o < 0).max() == Some(&-1) {
        let percpu: Option<Vec<u64>> = offsets
            .iter()
            .map(|&o| {
                if o >= 0 {
                    Some(o as u64)
                } else {
                    base.checked_sub(1)?.checked_add(o.unsigned_abs().into())
                }
            })
            .collect();
        if let Some(a) = percpu.filter(|a| is_sorted(a)) {
            return Some(a);
        }
    }
    if offsets.iter().map(|&o| o as u32).min() != Some(0) {
        return None;
    }
    let plain: Vec<u64> = offsets
        .iter()
        .map(|&o| base.checked_add(u64::from(o as u32)))
        .collect::<Option<_>>()?;
    is_sorted(&plain).then_some(plain)
}

/// `kallsyms_addresses`: a pointer per symbol.
fn absolute_addresses(r: Bytes, at: usize, n: usize, word: usize) -> Option<Vec<u64>> {
    let a: Vec<u64> = (0..n)
        .map(|i| r.word(at + word * i, word))
        .collect::<Option<_>>()?;
    is_sorted(&a).then_some(a)
}

/// Non-decreasing, and not all equal (as zeros would be).
fn is_sorted(a: &[u64]) -> bool {
    a.windows(2).all(|w| w.first() <= w.get(1)) && (a.len() < 2 || a.first() != a.last())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::vmi::symbols::{testelf, Origin, Symbols};

    /// The kernel's encoding of a symbol table, for tests.
    pub(crate) struct Encoder {
        /// Token per byte value.
        pub tokens: Vec<Vec<u8>>,
    }

    impl Encoder {
        /// Printable characters are their own token; the other slots hold
        /// `extra` (an empty token where `extra` runs out).
        pub fn new(extra: &[&str]) -> Self {
            let mut extra = extra.iter();
            let tokens = (0u8..=255)
                .map(|b| {
                    if b.is_ascii_graphic() {
                        vec![b]
                    } else {
                        extra
                            .next()
                            .map(|s| s.as_bytes().to_vec())
                            .unwrap_or_default()
                    }
                })
                .collect();
            Self { tokens }
        }

        /// Greedy longest-token encoding of `s`.
        fn encode(&self, s: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < s.len() {
                let (code, len) = (0..=255u8)
                    .filter_map(|c| {
                        let t = &self.tokens[usize::from(c)];
                        (!t.is_empty() && s[i..].starts_with(t)).then_some((c, t.len()))
                    })
                    .max_by_key(|&(_, l)| l)
                    .expect("every character has a token");
                out.push(code);
                i += len;
            }
            out
        }

        fn names(&self, syms: &[(char, &str, u64)]) -> (Vec<u8>, Vec<u32>) {
            let mut names = Vec::new();
            let mut markers = Vec::new();
            for (i, (kind, name, _)) in syms.iter().enumerate() {
                if i % 256 == 0 {
                    markers.push(names.len() as u32);
                }
                let mut full = vec![*kind as u8];
                full.extend_from_slice(name.as_bytes());
                let code = self.encode(&full);
                if code.len() < 0x80 {
                    names.push(code.len() as u8);
                } else {
                    names.push((code.len() & 0x7f) as u8 | 0x80);
                    names.push((code.len() >> 7) as u8);
                }
                names.extend_from_slice(&code);
            }
            (names, markers)
        }

        fn token_table(&self) -> (Vec<u8>, Vec<u8>) {
            let mut table = Vec::new();
            let mut index = Vec::new();
            for t in &self.tokens {
                index.extend_from_slice(&(table.len() as u16).to_le_bytes());
                table.extend_from_slice(t);
                table.push(0);
            }
            (table, index)
        }

        /// The tables in `layout`, 8-byte aligned, after `junk` bytes.
        /// Absolute per-CPU symbols are those typed 'A'.
        pub fn rodata(&self, syms: &[(char, &str, u64)], layout: Layout, junk: usize) -> Vec<u8> {
            let base = syms
                .iter()
                .filter(|s| s.0 != 'A')
                .map(|s| s.2)
                .min()
                .expect("a relative symbol");
            let offsets: Vec<u8> = syms
                .iter()
                .flat_map(|&(k, _, a)| {
                    let o = if k == 'A' {
                        a as i32
                    } else {
                        (base as i64 - a as i64 - 1) as i32
                    };
                    o.to_le_bytes()
                })
                .collect();
            let (names, markers) = self.names(syms);
            let markers: Vec<u8> = markers.iter().flat_map(|m| m.to_le_bytes()).collect();
            let (table, index) = self.token_table();
            let num = (syms.len() as u32).to_le_bytes().to_vec();
            let base = base.to_le_bytes().to_vec();
            let mut by_name: Vec<u32> = (0..syms.len() as u32).collect();
            by_name.sort_by_key(|&i| syms[i as usize].1);
            let seqs3: Vec<u8> = by_name
                .iter()
                .flat_map(|i| i.to_be_bytes()[1..].to_vec())
                .collect();
            let seqs4: Vec<u8> = by_name.iter().flat_map(|i| i.to_le_bytes()).collect();
            let mut out: Vec<u8> = (0..junk).map(|i| (i * 7 + 3) as u8).collect();
            let label = |out: &mut Vec<u8>, bytes: &[u8]| {
                while out.len() % 8 != 0 {
                    out.push(0);
                }
                out.extend_from_slice(bytes);
            };
            let parts: Vec<&[u8]> = match layout {
                Layout::V61 => vec![&offsets, &base, &num, &names, &markers, &table, &index],
                Layout::V62 => vec![
                    &offsets, &base, &num, &names, &markers, &seqs4, &table, &index,
                ],
                Layout::V63 => vec![
                    &offsets, &base, &num, &names, &markers, &seqs3, &table, &index,
                ],
                Layout::V64 => {
                    vec![
                        &num, &names, &markers, &table, &index, &offsets, &base, &seqs3,
                    ]
                }
            };
            for part in parts {
                label(&mut out, part);
            }
            label(&mut out, b"trailing rodata\0");
            out
        }
    }

    /// The orders the kernel has emitted its tables in.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Layout {
        V61,
        V62,
        V63,
        V64,
    }

    pub(crate) const LAYOUTS: [Layout; 4] = [Layout::V61, Layout::V62, Layout::V63, Layout::V64];

    /// A table shaped like a kernel's: per-CPU symbols first, long names,
    /// duplicate addresses, more than 256 symbols.
    pub(crate) fn sample() -> Vec<(char, String, u64)> {
        let mut s = vec![
            ('A', "fixed_percpu_data".to_string(), 0),
            ('A', "cpu_debug_store".to_string(), 0x1000),
            ('T', "_text".to_string(), 0xffff_ffff_8100_0000),
            ('T', "startup_64".to_string(), 0xffff_ffff_8100_0000),
        ];
        for i in 0..700u64 {
            let kind = ['t', 'T', 'd', 'D', 'b', 'r', 'W'][i as usize % 7];
            s.push((
                kind,
                format!("fn_{i}_x86_init"),
                0xffff_ffff_8100_1000 + 0x40 * i,
            ));
        }
        s.push((
            't',
            format!("very_{}_long", "x".repeat(300)),
            0xffff_ffff_8200_0000,
        ));
        s.push(('D', "_end".to_string(), 0xffff_ffff_8300_0000));
        s
    }

    fn as_refs(s: &[(char, String, u64)]) -> Vec<(char, &str, u64)> {
        s.iter().map(|(k, n, a)| (*k, n.as_str(), *a)).collect()
    }

    pub(crate) const EXTRA: &[&str] = &["fn_", "_x86_", "init", "", "startup", "very_xxxx", "xx"];

    fn check(got: &[Symbol], want: &[(char, String, u64)]) {
        assert_eq!(got.len(), want.len());
        for (g, (k, n, a)) in got.iter().zip(want) {
            assert_eq!((g.kind, g.name.as_str(), g.addr), (*k, n.as_str(), *a));
            assert_eq!(g.is_function, matches!(k, 'T' | 't' | 'W'));
        }
    }

    #[test]
    fn decodes_every_table_order() {
        let want = sample();
        let enc = Encoder::new(EXTRA);
        for layout in LAYOUTS {
            for junk in [0, 3, 20, 4096] {
                let data = enc.rodata(&as_refs(&want), layout, junk);
                let got = recover(&data, false, 8).expect("tables").expect("found");
                check(&got, &want);
            }
        }
    }

    #[test]
    fn decodes_small_and_exactly_256_symbol_tables() {
        let enc = Encoder::new(EXTRA);
        for n in [1usize, 2, 255, 256, 257, 512] {
            let want: Vec<(char, String, u64)> = (0..n as u64)
                .map(|i| {
                    (
                        't',
                        format!("s{i}_0123456789"),
                        0xffff_ffff_c000_0000 + i * 16,
                    )
                })
                .collect();
            for layout in LAYOUTS {
                let data = enc.rodata(&as_refs(&want), layout, 8);
                let got = recover(&data, false, 8).expect("tables").expect("found");
                check(&got, &want);
            }
        }
    }

    #[test]
    fn no_token_table_is_none_and_broken_tables_are_errors() {
        assert!(matches!(
            recover(b"just some bytes 0123", false, 8),
            Ok(None)
        ));
        let want = sample();
        let enc = Encoder::new(EXTRA);
        let data = enc.rodata(&as_refs(&want), Layout::V61, 16);
        // Break the markers: the token table is found, the rest is not.
        let mut broken = data.clone();
        let p = digit_runs(&broken).next().expect("digits");
        let r = Bytes {
            d: &data,
            big: false,
        };
        let table = tokens_at(r, p).expect("token table").table;
        for b in broken.iter_mut().take(table).skip(table - 16) {
            *b = 0xee;
        }
        assert!(recover(&broken, false, 8).is_err());
    }

    #[test]
    fn truncated_and_corrupted_tables_never_panic() {
        let want = sample();
        let enc = Encoder::new(EXTRA);
        for layout in LAYOUTS {
            let data = enc.rodata(&as_refs(&want), layout, 8);
            for cut in (0..data.len()).step_by(211) {
                let _ = recover(&data[..cut], false, 8);
                let _ = recover(&data[cut..], false, 8);
            }
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..150 {
                testelf::xorshift(&mut seed);
                let mut d = data.clone();
                let at = (seed as usize) % d.len();
                d[at] ^= (seed >> 32) as u8 | 1;
                if let Ok(Some(got)) = recover(&d, false, 8) {
                    assert_eq!(got.len(), want.len());
                }
            }
        }
    }

    #[test]
    fn loads_a_stripped_kernel_elf() {
        let want = sample();
        let enc = Encoder::new(EXTRA);
        let rodata = enc.rodata(&as_refs(&want), Layout::V63, 100);
        let mut elf = testelf::Elf::exec();
        elf.section(
            ".text",
            testelf::TEXT,
            0xffff_ffff_8100_0000,
            vec![0xc3; 64],
        );
        elf.section(".rodata", testelf::RODATA, 0xffff_ffff_8200_0000, rodata);
        let s = Symbols::parse(&elf.build()).expect("recovered");
        assert_eq!(s.origin(), Origin::Kallsyms);
        assert_eq!(s.iter().count(), want.len());
        assert_eq!(s.lookup("startup_64"), Some(0xffff_ffff_8100_0000));
        assert_eq!(s.lookup("cpu_debug_store"), Some(0x1000));
        let (sym, off) = s.symbolize(0xffff_ffff_8100_1005).expect("fn_0");
        assert_eq!((sym.name.as_str(), off), ("fn_0_x86_init", 5));

        let mut empty = testelf::Elf::exec();
        empty.section(
            ".rodata",
            testelf::RODATA,
            0xffff_ffff_8200_0000,
            vec![1; 64],
        );
        let e = Symbols::parse(&empty.build()).expect_err("nothing");
        assert!(e.contains("kallsyms"), "{e}");
    }

    /// The real Debian kernel against `/proc/kallsyms` read in a guest
    /// running it, when both files are present.
    #[test]
    fn recovers_the_real_kernel_symbols() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let image = std::env::var_os("XENPROBE_TEST_VMLINUX").map_or_else(
            || root.join("target/xenlab/dom0/vmlinux-6.1.0-57-amd64"),
            Into::into,
        );
        let truth = std::env::var_os("XENPROBE_TEST_KALLSYMS")
            .map_or_else(|| root.join("target/exp/linux/kallsyms.txt"), Into::into);
        for f in [&image, &truth] {
            if !f.exists() {
                println!("skipped: {} is missing", f.display());
                return;
            }
        }
        let got = Symbols::load(&image).expect("recover");
        assert_eq!(got.origin(), Origin::Kallsyms);
        let text = std::fs::read_to_string(&truth).expect("ground truth");
        let want: Vec<(u64, char, &str)> = text
            .lines()
            .filter(|l| !l.contains('['))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let a = u64::from_str_radix(w.next()?, 16).ok()?;
                Some((a, w.next()?.chars().next()?, w.next()?))
            })
            .collect();
        let got: Vec<(u64, char, &str)> = got
            .iter()
            .map(|s| (s.addr, s.kind, s.name.as_str()))
            .collect();
        let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        println!(
            "recovered {} symbols, /proc/kallsyms has {}, {differ} differ",
            got.len(),
            want.len()
        );
        assert_eq!(got.len(), want.len());
        assert_eq!(
            differ,
            0,
            "first: {:?}",
            got.iter().zip(&want).find(|(g, w)| g != w)
        );
    }
}
