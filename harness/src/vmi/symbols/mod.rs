//! Symbols and DWARF line tables of a guest image.
//!
//! [`Symbols::load`] reads, by content:
//! - an ELF with a symbol table (and its DWARF line tables, if any);
//! - a Linux kernel ELF without one (Debian's stripped vmlinux): the
//!   kernel's own compressed symbol table (kallsyms) is recovered from its
//!   `.rodata` ([`image`]);
//! - a `System.map` or `/proc/kallsyms` text ([`kallsyms`]).
//!
//! Linux modules (.ko) are added at their load addresses with
//! [`Symbols::add_module`]; [`ModuleLayout`] says where their sections are
//! (from sysfs text, from a kallsyms text, or found in guest memory).

mod elf;
mod image;
mod kallsyms;
mod locate;
mod module;
#[cfg(test)]
mod testelf;

use std::path::Path;

use super::error::{Error, Result};

pub(crate) use locate::{find_module, UNFORMED};
pub use module::ModuleLayout;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;
type Lines = addr2line::Context<Reader>;

/// One symbol: name, address, size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Symbol name as in the ELF file (mangled for Rust unless `#[no_mangle]`).
    pub name: String,
    /// Address: link-time, plus the slide for the main image, or where a
    /// module was loaded.
    pub addr: u64,
    /// Size in bytes (0 if unknown: the symbol extends to the next one).
    pub size: u64,
    /// Function (text) symbol.
    pub is_function: bool,
    /// `nm`-style type letter: `T`/`t` text, `D`/`d` data, `B`/`b` bss,
    /// `R`/`r` read-only, `W`/`V` weak, `A` absolute (upper case: global).
    pub kind: char,
    /// The kernel module it belongs to; `None` for the main image.
    pub module: Option<String>,
}

impl Symbol {
    /// An absolute value rather than an address (Linux per-CPU offsets).
    pub fn is_absolute(&self) -> bool {
        matches!(self.kind, 'A' | 'a')
    }
}

/// A source location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLine {
    /// Source file path as recorded in DWARF.
    pub file: String,
    /// Line number.
    pub line: u32,
}

/// Where the main image's symbols came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An ELF symbol table.
    Elf,
    /// A `System.map` / `/proc/kallsyms` text.
    Map,
    /// The kallsyms tables inside a Linux kernel image.
    Kallsyms,
}

fn name_hash(name: &str) -> u64 {
    xenprobe_abi::fnv1a(name.as_bytes())
}

/// A module added by [`Symbols::add_module`].
struct LoadedModule {
    name: String,
    /// Load address ranges of its sections, `[start, end)`.
    ranges: Vec<(u64, u64)>,
    lines: Option<Lines>,
}

impl LoadedModule {
    fn contains(&self, addr: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= addr && addr < b)
    }
}

/// Symbols and line tables of one image, and of the modules added to it.
pub struct Symbols {
    /// Name hashes and indices into `sorted`, ordered by (hash, index): a
    /// kernel's 90k names are indexed without an allocation each.
    by_name: Vec<(u64, u32)>,
    /// All symbols (main image and modules), sorted by address.
    sorted: Vec<Symbol>,
    lines: Option<Lines>,
    modules: Vec<LoadedModule>,
    entry: u64,
    slide: i64,
    origin: Origin,
    /// End of the main image's last symbol (an unsized one covers only its
    /// own address): nothing past it belongs to the main image.
    main_end: u64,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("origin", &self.origin)
            .field("symbols", &self.sorted.len())
            .field("line_tables", &self.lines.is_some())
            .field("modules", &self.modules.len())
            .field("slide", &self.slide)
            .finish()
    }
}

impl Symbols {
    /// Reads an ELF image, a stripped Linux kernel or a symbol map (see the
    /// module docs); errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Self::parse(&data).map_err(|e| Error::Symbol(format!("{}: {e}", path.display())))
    }

    /// [`Symbols::load`], keeping what it recovers from a stripped Linux
    /// kernel's kallsyms tables in `cache_dir` (a map file keyed by the
    /// image's path, size and modification time): the recovery takes
    /// seconds in an emulated dom0, a cached map a fraction of that. A cache
    /// that cannot be read or written is passed over.
    pub fn load_cached(path: impl AsRef<Path>, cache_dir: &Path) -> Result<Self> {
        let path = path.as_ref();
        let cache = kallsyms::cache_file(path, cache_dir);
        if let Some(syms) = cache.as_deref().and_then(kallsyms::read_cache) {
            return Ok(syms);
        }
        let syms = Self::load(path)?;
        if let (Some(c), Origin::Kallsyms) = (&cache, syms.origin) {
            if let Err(e) = kallsyms::write_cache(&syms, c) {
                tracing::debug!("not cached in {}: {e}", c.display());
            }
        }
        Ok(syms)
    }

    /// Parses an image or a symbol map held in memory.
    pub fn parse(data: &[u8]) -> std::result::Result<Self, String> {
        if data.starts_with(b"\x7fELF") {
            return elf::parse(data);
        }
        if data.get(0x202..0x206) == Some(b"HdrS") {
            return Err(
                "a compressed kernel (bzImage, /boot/vmlinuz): extract the vmlinux \
                        ELF first (the kernel's scripts/extract-vmlinux)"
                    .into(),
            );
        }
        match std::str::from_utf8(data) {
            Ok(text) if kallsyms::looks_like_map(text) => {
                let syms = kallsyms::parse(text)?;
                Ok(Self::new(syms, None, 0, Origin::Map))
            }
            _ => Err("not an ELF image or a symbol map (System.map, /proc/kallsyms)".into()),
        }
    }

    fn new(symbols: Vec<Symbol>, lines: Option<Lines>, entry: u64, origin: Origin) -> Self {
        let mut s = Self {
            by_name: Vec::new(),
            sorted: symbols,
            lines,
            modules: Vec::new(),
            entry,
            slide: 0,
            origin,
            main_end: 0,
        };
        s.reindex();
        s
    }

    /// Sorts by address (stable: equal addresses keep their table order)
    /// and rebuilds the name index (the lowest address wins a name).
    fn reindex(&mut self) {
        self.sorted
            .sort_by_key(|s| (s.addr, std::cmp::Reverse(s.size)));
        self.by_name = (0u32..)
            .zip(&self.sorted)
            .map(|(i, s)| (name_hash(&s.name), i))
            .collect();
        self.by_name.sort_unstable();
        self.main_end = self
            .sorted
            .iter()
            .filter(|s| s.module.is_none() && !s.is_absolute())
            .map(|s| s.addr.saturating_add(s.size.max(1)))
            .max()
            .unwrap_or(0);
    }

    /// Where the main image's symbols came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// ELF entry point (plus the slide); 0 for a symbol map.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Address of the symbol called `name`.
    pub fn lookup(&self, name: &str) -> Option<u64> {
        self.get(name).map(|s| s.addr)
    }

    /// Address of `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<u64> {
        self.lookup(name)
            .ok_or_else(|| Error::Symbol(format!("no symbol named {name:?}")))
    }

    /// The symbol with this exact name.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        let h = name_hash(name);
        let from = self.by_name.partition_point(|&(x, _)| x < h);
        // Equal hashes are in index order: the lowest address wins a name.
        self.by_name[from..]
            .iter()
            .take_while(|&&(x, _)| x == h)
            .filter_map(|&(_, i)| self.sorted.get(i as usize))
            .find(|s| s.name == name)
    }

    /// The symbol covering `addr` and the offset into it. A symbol of unknown
    /// size covers addresses up to the next symbol. Inside a module added
    /// with [`Symbols::add_module`] only that module's symbols count;
    /// absolute symbols never match.
    pub fn symbolize(&self, addr: u64) -> Option<(&Symbol, u64)> {
        if let Some(m) = self.modules.iter().find(|m| m.contains(addr)) {
            let floor = m
                .ranges
                .iter()
                .filter(|&&(a, b)| a <= addr && addr < b)
                .map(|&(a, _)| a)
                .min()
                .unwrap_or(addr);
            let mine = |s: &Symbol| s.module.as_deref() == Some(m.name.as_str());
            return self.symbolize_where(addr, floor, mine);
        }
        let loaded = |s: &Symbol| {
            s.module
                .as_deref()
                .is_some_and(|n| self.modules.iter().any(|m| m.name == n))
        };
        let found = self.symbolize_where(addr, 0, |s| !loaded(s))?;
        // Past the main image's end only a map's module symbols can match.
        (addr < self.main_end || found.0.module.is_some()).then_some(found)
    }

    fn symbolize_where(
        &self,
        addr: u64,
        floor: u64,
        keep: impl Fn(&Symbol) -> bool,
    ) -> Option<(&Symbol, u64)> {
        let i = self.sorted.partition_point(|s| s.addr <= addr);
        let below = self.sorted.get(..i)?;
        let mut first = None;
        for (j, s) in below.iter().enumerate().rev() {
            if s.addr < floor {
                break;
            }
            if s.is_absolute() || !keep(s) {
                continue;
            }
            // A sized symbol that ends before addr: keep looking only at
            // symbols starting at the same place.
            if first.is_some_and(|a| a != s.addr) {
                break;
            }
            let off = addr - s.addr;
            if s.size > 0 && off < s.size {
                return Some((s, off));
            }
            if s.size == 0 {
                // Of several unsized aliases, the first in table order (the
                // one the kernel prints).
                let alias = below.get(..j).unwrap_or(&[]).iter().rev();
                let first_alias = alias
                    .take_while(|x| x.addr == s.addr)
                    .filter(|x| x.size == 0 && !x.is_absolute() && keep(x))
                    .last();
                return Some((first_alias.unwrap_or(s), off));
            }
            first = Some(s.addr);
        }
        None
    }

    /// File and line of `addr` from the DWARF line tables (of the module
    /// covering it, else of the main image).
    pub fn line(&self, addr: u64) -> Option<SourceLine> {
        let (lines, at) = match self.modules.iter().find(|m| m.contains(addr)) {
            Some(m) => (m.lines.as_ref()?, addr),
            None => (self.lines.as_ref()?, addr.wrapping_sub(self.slide as u64)),
        };
        let loc = lines.find_location(at).ok()??;
        Some(SourceLine {
            file: loc.file?.to_string(),
            line: loc.line?,
        })
    }

    /// All symbols, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.sorted.iter()
    }

    /// Moves the main image by `delta` bytes (a KASLR slide): every
    /// main-image symbol except absolute ones, the entry point and the
    /// line-table lookups. Module symbols stay. Slides add up.
    pub fn slide(&mut self, delta: i64) {
        for s in &mut self.sorted {
            if s.module.is_none() && !s.is_absolute() {
                s.addr = s.addr.wrapping_add_signed(delta);
            }
        }
        self.entry = self.entry.wrapping_add_signed(delta);
        self.slide = self.slide.wrapping_add(delta);
        self.reindex();
    }

    /// The total slide applied by [`Symbols::slide`].
    pub fn slid(&self) -> i64 {
        self.slide
    }

    /// Adds the symbols and line tables of a kernel module (.ko) loaded at
    /// `layout`. Sections the layout does not place are left out. Adding a
    /// module of the same name again replaces it.
    pub fn add_module(&mut self, ko: &Path, layout: &ModuleLayout) -> Result<()> {
        let data = std::fs::read(ko).map_err(|source| Error::Io {
            what: format!("reading {}", ko.display()),
            source,
        })?;
        self.add_module_data(&data, layout)
            .map_err(|e| Error::Symbol(format!("{}: {e}", ko.display())))
    }

    fn add_module_data(
        &mut self,
        data: &[u8],
        layout: &ModuleLayout,
    ) -> std::result::Result<(), String> {
        let (symbols, ranges, lines) = module::load(data, layout)?;
        let name = layout.name.as_str();
        self.sorted.retain(|s| s.module.as_deref() != Some(name));
        self.modules.retain(|m| m.name != name);
        self.sorted.extend(symbols);
        self.modules.push(LoadedModule {
            name: name.to_string(),
            ranges,
            lines,
        });
        self.reindex();
        Ok(())
    }

    /// Names of the modules added with [`Symbols::add_module`].
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|m| m.name.as_str())
    }
}

#[cfg(test)]
// Named functions in the test binary to look up (`no_mangle` counts as unsafe).
#[allow(unsafe_code)]
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
        assert_eq!(s.origin(), Origin::Elf);
        let a = s.require("xenprobe_symbols_marker_a").expect("a");
        let b = s.require("xenprobe_symbols_marker_b").expect("b");
        // The binary is position independent: compare distances, which the
        // loader preserves.
        let run_a = xenprobe_symbols_marker_a as *const () as usize as i128;
        let run_b = xenprobe_symbols_marker_b as *const () as usize as i128;
        assert_eq!(b as i128 - a as i128, run_b - run_a);
        let sym = s.get("xenprobe_symbols_marker_a").expect("a");
        assert!(sym.is_function && sym.size > 0 && sym.kind == 'T');
        assert_eq!(sym.module, None);
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
        assert!(line.file.ends_with("mod.rs"), "{line:?}");
        let here = line!();
        assert!(line.line > 100 && line.line < here, "{line:?}");
    }

    #[test]
    fn slide_moves_main_image_symbols_and_lines() {
        let mut s = me();
        let a = s.require("xenprobe_symbols_marker_a").expect("a");
        let line = s.line(a).expect("line");
        let entry = s.entry();
        s.slide(0x20_0000);
        s.slide(-0x1000);
        assert_eq!(s.slid(), 0x1f_f000);
        assert_eq!(s.lookup("xenprobe_symbols_marker_a"), Some(a + 0x1f_f000));
        assert_eq!(s.entry(), entry + 0x1f_f000);
        assert_eq!(s.line(a + 0x1f_f000), Some(line));
        let (sym, off) = s.symbolize(a + 0x1f_f001).expect("inside a");
        assert_eq!((sym.name.as_str(), off), ("xenprobe_symbols_marker_a", 1));
    }

    #[test]
    fn rejects_non_elf() {
        assert!(Symbols::parse(b"not an elf").is_err());
        assert!(Symbols::parse(b"").is_err());
        assert!(Symbols::parse(&[0xff, 0xfe, 0x00, 0x12]).is_err());
        let mut bzimage = vec![0u8; 0x400];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        let e = Symbols::parse(&bzimage).expect_err("bzImage");
        assert!(e.contains("extract-vmlinux"), "{e}");
        assert!(matches!(
            Symbols::load("/nonexistent/xyz"),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("xenprobe-syms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("junk.map");
        std::fs::write(&f, "hello world\n").expect("write");
        let e = Symbols::load(&f).expect_err("junk").to_string();
        assert!(e.contains("junk.map"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
