//! ELF symbols and DWARF line tables of a guest image.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind, SymbolSection};

use super::error::{Error, Result};

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// One symbol: name, address, size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Symbol name as in the ELF file (mangled for Rust unless `#[no_mangle]`).
    pub name: String,
    /// Link-time address.
    pub addr: u64,
    /// Size in bytes (0 if unknown).
    pub size: u64,
    /// Function (text) symbol.
    pub is_function: bool,
}

/// A source location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLine {
    /// Source file path as recorded in DWARF.
    pub file: String,
    /// Line number.
    pub line: u32,
}

/// Symbols and line tables of one ELF image.
pub struct Symbols {
    by_name: HashMap<String, usize>,
    /// Sorted by address.
    sorted: Vec<Symbol>,
    lines: Option<addr2line::Context<Reader>>,
    entry: u64,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("symbols", &self.sorted.len())
            .field("line_tables", &self.lines.is_some())
            .finish()
    }
}

impl Symbols {
    /// Reads an ELF file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Self::parse(&data).map_err(|e| Error::Symbol(format!("{}: {e}", path.display())))
    }

    /// Parses an ELF image held in memory.
    pub fn parse(data: &[u8]) -> std::result::Result<Self, String> {
        let obj = object::File::parse(data).map_err(|e| e.to_string())?;
        let mut sorted: Vec<Symbol> = obj
            .symbols()
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
                })
            })
            .filter(|s| !s.name.is_empty())
            .collect();
        sorted.sort_by_key(|s| (s.addr, std::cmp::Reverse(s.size)));
        let mut by_name = HashMap::new();
        for (i, s) in sorted.iter().enumerate() {
            by_name.entry(s.name.clone()).or_insert(i);
        }
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let load = |id: gimli::SectionId| -> std::result::Result<Reader, gimli::Error> {
            let bytes: Cow<[u8]> = obj
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .unwrap_or(Cow::Borrowed(&[]));
            Ok(gimli::EndianArcSlice::new(Arc::from(&*bytes), endian))
        };
        let has_lines = obj.section_by_name(".debug_line").is_some();
        let lines = if has_lines {
            let dwarf = gimli::Dwarf::load(load).map_err(|e| e.to_string())?;
            Some(addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Self {
            by_name,
            sorted,
            lines,
            entry: obj.entry(),
        })
    }

    /// ELF entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Address of the symbol called `name`.
    pub fn lookup(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|&i| self.sorted[i].addr)
    }

    /// Address of `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<u64> {
        self.lookup(name)
            .ok_or_else(|| Error::Symbol(format!("no symbol named {name:?}")))
    }

    /// The symbol with this exact name.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.by_name.get(name).map(|&i| &self.sorted[i])
    }

    /// The symbol covering `addr` and the offset into it. A symbol of unknown
    /// size covers addresses up to the next symbol.
    pub fn symbolize(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let i = self.sorted.partition_point(|s| s.addr <= addr);
        let candidates = self.sorted[..i].iter().rev();
        for s in candidates {
            let off = addr - s.addr;
            if s.size == 0 || off < s.size {
                return Some((s, off));
            }
            // A sized symbol that ends before addr: keep looking only at
            // symbols starting at the same place.
            if s.addr != self.sorted[i - 1].addr {
                break;
            }
        }
        None
    }

    /// File and line of `addr` from the DWARF line table.
    pub fn line(&self, addr: u64) -> Option<SourceLine> {
        let loc = self.lines.as_ref()?.find_location(addr).ok()??;
        Some(SourceLine {
            file: loc.file?.to_string(),
            line: loc.line?,
        })
    }

    /// All symbols, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.sorted.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn xenprobe_symbols_marker_a() -> u32 {
        std::hint::black_box(41) + 1
    }

    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn xenprobe_symbols_marker_b() -> u32 {
        std::hint::black_box(7) * 3
    }

    fn me() -> Symbols {
        let exe = std::env::current_exe().expect("current_exe");
        Symbols::load(&exe).expect("parse test binary")
    }

    #[test]
    fn finds_functions_by_name_and_matches_runtime_layout() {
        assert_eq!(
            xenprobe_symbols_marker_a() + xenprobe_symbols_marker_b(),
            63
        );
        let s = me();
        let a = s.require("xenprobe_symbols_marker_a").expect("a");
        let b = s.require("xenprobe_symbols_marker_b").expect("b");
        // The binary is position independent: compare distances, which the
        // loader preserves.
        let run_a = xenprobe_symbols_marker_a as *const () as usize as i128;
        let run_b = xenprobe_symbols_marker_b as *const () as usize as i128;
        assert_eq!(b as i128 - a as i128, run_b - run_a);
        assert!(s
            .get("xenprobe_symbols_marker_a")
            .is_some_and(|x| x.is_function && x.size > 0));
        assert!(s.lookup("no_such_symbol_xyz").is_none());
        assert!(matches!(
            s.require("no_such_symbol_xyz"),
            Err(Error::Symbol(_))
        ));
    }

    #[test]
    fn symbolizes_addresses_inside_functions() {
        let s = me();
        let a = s.require("xenprobe_symbols_marker_a").expect("a");
        let (sym, off) = s.symbolize(a + 1).expect("inside a");
        assert_eq!(off, 1);
        assert!(s.lookup(&sym.name) == Some(a), "{} at {a:#x}", sym.name);
        let size = s
            .get("xenprobe_symbols_marker_a")
            .map(|x| x.size)
            .unwrap_or(0);
        let past = s.symbolize(a + size).map(|(x, _)| x.name.clone());
        assert_ne!(past.as_deref(), Some("xenprobe_symbols_marker_a"));
    }

    #[test]
    fn maps_addresses_to_source_lines() {
        let s = me();
        let a = s.require("xenprobe_symbols_marker_a").expect("a");
        let line = s.line(a).expect("line table for test binary");
        assert!(line.file.ends_with("symbols.rs"), "{line:?}");
        let here = line!();
        assert!(line.line > 100 && line.line < here, "{line:?}");
    }

    #[test]
    fn rejects_non_elf() {
        assert!(Symbols::parse(b"not an elf").is_err());
        assert!(matches!(
            Symbols::load("/nonexistent/xyz"),
            Err(Error::Io { .. })
        ));
    }
}
