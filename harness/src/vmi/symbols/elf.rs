//! ELF symbol tables and DWARF line tables (with relocations applied for
//! relocatable objects).

use std::borrow::Cow;
use std::sync::Arc;

use object::{
    Object, ObjectSection, ObjectSymbol, RelocationKind, RelocationTarget, SectionIndex,
    SectionKind, SymbolKind, SymbolSection,
};

use super::{image, Lines, Origin, Symbol, Symbols};

/// Parses an ELF image: its symbol table, else the kallsyms tables of a
/// Linux kernel; and its line tables.
pub(super) fn parse(data: &[u8]) -> Result<Symbols, String> {
    let obj = object::File::parse(data).map_err(|e| e.to_string())?;
    let symbols = symbols(&obj);
    let lines = line_tables(&obj, None)?;
    if !symbols.is_empty() {
        return Ok(Symbols::new(symbols, lines, obj.entry(), Origin::Elf));
    }
    match image::recover_from_elf(&obj, data) {
        Ok(Some(symbols)) => Ok(Symbols::new(symbols, lines, obj.entry(), Origin::Kallsyms)),
        Ok(None) if lines.is_some() => {
            Ok(Symbols::new(Vec::new(), lines, obj.entry(), Origin::Elf))
        }
        Ok(None) => {
            Err("ELF image without a symbol table, line tables or Linux kallsyms tables".into())
        }
        Err(e) => Err(format!(
            "ELF image without a symbol table; its Linux kallsyms tables are unusable: {e}"
        )),
    }
}

/// The defined, named, non-zero symbols of an ELF image.
fn symbols(obj: &object::File) -> Vec<Symbol> {
    obj.symbols()
        .filter(|s| matches!(s.section(), SymbolSection::Section(_)) && s.address() != 0)
        .filter(|s| {
            matches!(
                s.kind(),
                SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown
            )
        })
        .filter_map(|s| {
            Some(Symbol {
                name: s.name().ok()?.to_string(),
                addr: s.address(),
                size: s.size(),
                is_function: s.kind() == SymbolKind::Text,
                kind: type_letter(obj, &s),
                module: None,
            })
        })
        .filter(|s| !s.name.is_empty())
        .collect()
}

/// The `nm` letter of a symbol.
pub(super) fn type_letter<'a>(obj: &object::File<'a>, s: &object::Symbol<'a, '_>) -> char {
    let section = s
        .section_index()
        .and_then(|i| obj.section_by_index(i).ok())
        .map(|sec| sec.kind());
    let c = match (s.kind(), section) {
        (SymbolKind::Text, _) | (_, Some(SectionKind::Text)) => 't',
        (
            _,
            Some(
                SectionKind::UninitializedData
                | SectionKind::UninitializedTls
                | SectionKind::Common,
            ),
        ) => 'b',
        (
            _,
            Some(
                SectionKind::ReadOnlyData
                | SectionKind::ReadOnlyString
                | SectionKind::ReadOnlyDataWithRel,
            ),
        ) => 'r',
        _ => 'd',
    };
    if s.is_weak() {
        if c == 't' {
            'W'
        } else {
            'V'
        }
    } else if s.is_global() {
        c.to_ascii_uppercase()
    } else {
        c
    }
}

/// Load address of a section, for relocating a relocatable object's DWARF.
pub(super) type SectionBase<'f> = &'f dyn Fn(SectionIndex) -> u64;

/// The DWARF line tables, `None` without `.debug_line`. With `base`, the
/// `.rela.debug_*` relocations are applied with each section at its base.
pub(super) fn line_tables(
    obj: &object::File,
    base: Option<SectionBase>,
) -> Result<Option<Lines>, String> {
    if obj.section_by_name(".debug_line").is_none() {
        return Ok(None);
    }
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<super::Reader, String> {
        let bytes: Cow<[u8]> = match obj.section_by_name(id.name()) {
            None => Cow::Borrowed(&[]),
            Some(sec) => {
                let data = sec.uncompressed_data().unwrap_or(Cow::Borrowed(&[]));
                match base {
                    Some(base) => Cow::Owned(relocated(obj, &sec, data.into_owned(), base)?),
                    None => data,
                }
            }
        };
        Ok(gimli::EndianArcSlice::new(Arc::from(&*bytes), endian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    let lines = addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string())?;
    Ok(Some(lines))
}

/// `data` (a section's contents) with its absolute relocations applied:
/// each target symbol at its value plus its section's base.
fn relocated(
    obj: &object::File,
    sec: &object::Section,
    mut data: Vec<u8>,
    base: SectionBase,
) -> Result<Vec<u8>, String> {
    let little = obj.is_little_endian();
    for (offset, r) in sec.relocations() {
        if r.kind() != RelocationKind::Absolute {
            continue;
        }
        let RelocationTarget::Symbol(index) = r.target() else {
            continue;
        };
        let Ok(sym) = obj.symbol_by_index(index) else {
            continue;
        };
        let s = match sym.section_index() {
            Some(i) => base(i).wrapping_add(sym.address()),
            None => sym.address(),
        };
        let width = usize::from(r.size() / 8);
        let at = usize::try_from(offset).map_err(|e| e.to_string())?;
        let Some(field) = at.checked_add(width).and_then(|end| data.get_mut(at..end)) else {
            return Err(format!(
                "{}: relocation at {offset:#x} is outside the section",
                sec.name().unwrap_or("?")
            ));
        };
        let addend = if r.has_implicit_addend() {
            read_field(field, little)
        } else {
            r.addend() as u64
        };
        let value = s.wrapping_add(addend);
        match width {
            8 if little => field.copy_from_slice(&value.to_le_bytes()),
            8 => field.copy_from_slice(&value.to_be_bytes()),
            4 if little => field.copy_from_slice(&(value as u32).to_le_bytes()),
            4 => field.copy_from_slice(&(value as u32).to_be_bytes()),
            _ => {}
        }
    }
    Ok(data)
}

/// A 4- or 8-byte field (sign-extended from 4), else 0.
fn read_field(field: &[u8], little: bool) -> u64 {
    match (<[u8; 8]>::try_from(field), <[u8; 4]>::try_from(field)) {
        (Ok(b), _) if little => u64::from_le_bytes(b),
        (Ok(b), _) => u64::from_be_bytes(b),
        (_, Ok(b)) if little => i32::from_le_bytes(b) as i64 as u64,
        (_, Ok(b)) => i32::from_be_bytes(b) as i64 as u64,
        _ => 0,
    }
}
