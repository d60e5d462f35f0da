//! Linux kernel modules (.ko): where their sections were loaded, and their
//! symbols and line tables at those addresses.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use object::{Object, ObjectKind, ObjectSection, ObjectSymbol, SectionIndex, SymbolKind};

use super::elf::{line_tables, type_letter};
use super::{Lines, Symbol, Symbols};
use crate::vmi::error::{Error, Result};

/// Where a loaded module's sections are: section name -> load address, as
/// in `/sys/module/NAME/sections/*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleLayout {
    /// Module name as the kernel spells it (`-` becomes `_`).
    pub name: String,
    /// Section name -> load address.
    pub sections: BTreeMap<String, u64>,
}

impl ModuleLayout {
    /// Parses section addresses, one per line, in any of these forms:
    /// `.text 0xffffffffc0000000`, `.text=0xffffffffc0000000`, or
    /// `/sys/module/NAME/sections/.text:0xffffffffc0000000` (the output of
    /// `grep . /sys/module/NAME/sections/.*`). `#` starts a comment.
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let mut sections = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| {
                Error::Symbol(format!(
                    "module {name} layout, line {}: {why}: {line:?}",
                    n + 1
                ))
            };
            let (section, addr) = if let Some(rest) = line.split_once("/sections/").map(|x| x.1) {
                rest.rsplit_once(':')
                    .ok_or_else(|| bad("expected PATH:ADDRESS"))?
            } else if let Some(pair) = line.split_once('=') {
                pair
            } else {
                let mut w = line.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some(s), Some(a), None) => (s, a),
                    _ => return Err(bad("expected SECTION ADDRESS")),
                }
            };
            let (section, addr) = (section.trim(), addr.trim());
            if section.is_empty() || section.contains(char::is_whitespace) {
                return Err(bad("bad section name"));
            }
            let hex = addr
                .strip_prefix("0x")
                .or_else(|| addr.strip_prefix("0X"))
                .unwrap_or(addr);
            let addr = u64::from_str_radix(hex, 16).map_err(|_| bad("bad hex address"))?;
            sections.insert(section.to_string(), addr);
        }
        if sections.is_empty() {
            return Err(Error::Symbol(format!("module {name} layout: no sections")));
        }
        if sections.values().all(|&a| a == 0) {
            return Err(Error::Symbol(format!(
                "module {name} layout: all addresses are 0: read /sys/module/{name}/sections as root"
            )));
        }
        Ok(Self {
            name: normalize(name),
            sections,
        })
    }

    /// Derives the layout of the module `ko` from a symbol map that lists
    /// its symbols (a `/proc/kallsyms` text with `[module]` columns): per
    /// section, map address minus the .ko's symbol value, which must agree
    /// for every symbol of the section.
    pub fn from_kallsyms(symbols: &Symbols, ko: &Path) -> Result<Self> {
        let data = std::fs::read(ko).map_err(|source| Error::Io {
            what: format!("reading {}", ko.display()),
            source,
        })?;
        let stem = ko
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.split('.').next())
            .unwrap_or("");
        from_kallsyms_data(symbols, &data, stem)
            .map_err(|e| Error::Symbol(format!("{}: {e}", ko.display())))
    }
}

/// Module names use `_` where file names may have `-`.
pub(super) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses a .ko: a relocatable ELF.
pub(super) fn parse_ko(data: &[u8]) -> std::result::Result<object::File<'_>, String> {
    let packer = [
        (&b"\xfd7zXZ\0"[..], "xz -d"),
        (b"\x28\xb5\x2f\xfd", "zstd -d"),
        (b"\x1f\x8b", "gunzip"),
    ];
    if let Some((_, tool)) = packer.iter().find(|(magic, _)| data.starts_with(magic)) {
        return Err(format!("a compressed module: decompress it first ({tool})"));
    }
    let obj = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    if obj.kind() != ObjectKind::Relocatable {
        return Err("not a relocatable ELF (a kernel module .ko)".into());
    }
    Ok(obj)
}

/// The module name in `.modinfo` (`name=...`).
pub(super) fn modinfo_name(obj: &object::File) -> Option<String> {
    let info = obj.section_by_name(".modinfo")?.data().ok()?;
    info.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"name="))
        .and_then(|n| std::str::from_utf8(n).ok())
        .map(normalize)
}

/// Whether a .ko symbol names code or data in a section.
fn is_real_symbol(s: &object::Symbol) -> bool {
    !s.is_undefined()
        && s.section_index().is_some()
        && !matches!(s.kind(), SymbolKind::Section | SymbolKind::File)
        && s.name().is_ok_and(|n| !n.is_empty())
}

/// A module's symbols, load ranges and line tables at `layout`.
pub(super) type Loaded = (Vec<Symbol>, Vec<(u64, u64)>, Option<Lines>);

/// Loads a .ko at `layout`.
pub(super) fn load(data: &[u8], layout: &ModuleLayout) -> std::result::Result<Loaded, String> {
    let obj = parse_ko(data)?;
    let mut bases: HashMap<SectionIndex, u64> = HashMap::new();
    let mut ranges = Vec::new();
    let mut missing: Vec<&str> = layout.sections.keys().map(String::as_str).collect();
    for sec in obj.sections() {
        let Ok(name) = sec.name() else { continue };
        let Some(&base) = layout.sections.get(name) else {
            continue;
        };
        missing.retain(|&m| m != name);
        bases.insert(sec.index(), base);
        if sec.size() > 0 {
            ranges.push((base, base.saturating_add(sec.size())));
        }
    }
    if bases.is_empty() {
        return Err(format!(
            "none of the sections of module {}'s layout ({}) is in this .ko",
            layout.name,
            missing.join(", ")
        ));
    }
    if !missing.is_empty() {
        return Err(format!(
            "module {}'s layout places sections this .ko does not have ({}): another build?",
            layout.name,
            missing.join(", ")
        ));
    }
    let symbols = obj
        .symbols()
        .filter(is_real_symbol)
        .filter_map(|s| {
            let base = *bases.get(&s.section_index()?)?;
            Some(Symbol {
                name: s.name().ok()?.to_string(),
                addr: base.wrapping_add(s.address()),
                size: s.size(),
                is_function: s.kind() == SymbolKind::Text,
                kind: type_letter(&obj, &s),
                module: Some(layout.name.clone()),
            })
        })
        .collect();
    let base = |i: SectionIndex| bases.get(&i).copied().unwrap_or(0);
    let lines = line_tables(&obj, Some(&base)).map_err(|e| format!("DWARF: {e}"))?;
    Ok((symbols, ranges, lines))
}

fn from_kallsyms_data(
    symbols: &Symbols,
    data: &[u8],
    stem: &str,
) -> std::result::Result<ModuleLayout, String> {
    let obj = parse_ko(data)?;
    let name = modinfo_name(&obj).unwrap_or_else(|| normalize(stem));
    let mut listed: HashMap<&str, Vec<u64>> = HashMap::new();
    for s in symbols
        .iter()
        .filter(|s| s.module.as_deref() == Some(&name))
    {
        listed.entry(&s.name).or_default().push(s.addr);
    }
    if listed.is_empty() {
        return Err(format!(
            "the symbol map lists no symbols of module {name} (is it loaded, and is the map \
             a /proc/kallsyms read as root while it was?)"
        ));
    }
    let mut in_ko: HashMap<&str, usize> = HashMap::new();
    for s in obj.symbols().filter(is_real_symbol) {
        if let Ok(n) = s.name() {
            *in_ko.entry(n).or_default() += 1;
        }
    }
    // Per section: (base, symbol) of each name both sides have once.
    let mut votes: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for s in obj.symbols().filter(is_real_symbol) {
        let (Ok(n), Some(i)) = (s.name(), s.section_index()) else {
            continue;
        };
        let (Some([addr]), Some(1)) = (listed.get(n).map(Vec::as_slice), in_ko.get(n)) else {
            continue;
        };
        let Some(sec) = obj
            .section_by_index(i)
            .ok()
            .and_then(|x| x.name().ok().map(String::from))
        else {
            continue;
        };
        votes
            .entry(sec)
            .or_default()
            .push((addr.wrapping_sub(s.address()), n.to_string()));
    }
    let mut sections = BTreeMap::new();
    for (sec, v) in votes {
        let Some((base, first)) = v.first() else {
            continue;
        };
        if let Some((other, sym)) = v.iter().find(|(b, _)| b != base) {
            return Err(format!(
                "section {sec}: {first} puts it at {base:#x} but {sym} at {other:#x} \
                 (the map and the .ko do not match)"
            ));
        }
        sections.insert(sec, *base);
    }
    if sections.is_empty() {
        return Err(format!(
            "no symbol of module {name} in the map is also in this .ko"
        ));
    }
    Ok(ModuleLayout { name, sections })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::vmi::symbols::testelf::{self, Elf};

    /// A small module: .text with two functions, .data, .init.text.
    pub(crate) fn sample_ko() -> Elf {
        let mut e = Elf::rel();
        let mut text = vec![0x90u8; 0x100];
        text[0x40] = 0xc3;
        let t = e.section(".text", testelf::TEXT, 0, text);
        let d = e.section(".data", testelf::DATA, 0, vec![7; 0x40]);
        let i = e.section(".init.text", testelf::TEXT, 0, vec![0xc3; 0x10]);
        e.section(
            ".modinfo",
            testelf::RODATA,
            0,
            b"license=GPL\0name=my_mod\0".to_vec(),
        );
        e.section(".bss", testelf::BSS, 0, vec![0; 0x20]);
        e.symbol("helper", Some(t), 0x40, 0x10, true, false);
        e.symbol("counter", Some(d), 0x8, 8, false, false);
        e.symbol("my_init", Some(i), 0, 0x10, true, false);
        e.symbol("my_entry", Some(t), 0, 0x40, true, true);
        e.symbol("printk", None, 0, 0, false, true);
        e
    }

    fn layout(text: &str) -> ModuleLayout {
        ModuleLayout::parse("my-mod", text).expect("layout")
    }

    #[test]
    fn parses_layout_forms() {
        let want: BTreeMap<String, u64> = [
            (".data", 0xffffffffc0002000u64),
            (".text", 0xffffffffc0000000),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for text in [
            ".text 0xffffffffc0000000\n.data 0xffffffffc0002000\n",
            ".text=0xffffffffc0000000\n# comment\n\n.data=ffffffffc0002000\n",
            "/sys/module/my_mod/sections/.text:0xffffffffc0000000\n\
             /sys/module/my_mod/sections/.data:0xffffffffc0002000\n",
        ] {
            let l = layout(text);
            assert_eq!(l.name, "my_mod");
            assert_eq!(l.sections, want);
        }
        for bad in [
            "",
            ".text\n",
            ".text 0xzz\n",
            ".text 1 2\n",
            ".text 0\n.data 0\n",
        ] {
            let e = ModuleLayout::parse("m", bad).expect_err(bad).to_string();
            assert!(e.contains("module m"), "{e}");
        }
        let e = ModuleLayout::parse("m", ".text 0x0\n")
            .expect_err("zeros")
            .to_string();
        assert!(e.contains("as root"), "{e}");
    }

    #[test]
    fn adds_module_symbols_at_their_load_addresses() {
        let s = Symbols::parse(b"ffffffff81000000 T _text\nffffffff83000000 B _end\n");
        let mut s = s.expect("map");
        let l =
            layout(".text 0xffffffffc0000000\n.data 0xffffffffc0002000\n.bss 0xffffffffc0003000\n");
        s.add_module_data(&sample_ko().build(), &l).expect("add");
        assert_eq!(s.modules().collect::<Vec<_>>(), ["my_mod"]);
        assert_eq!(s.lookup("my_entry"), Some(0xffffffffc0000000));
        assert_eq!(s.lookup("helper"), Some(0xffffffffc0000040));
        assert_eq!(s.lookup("counter"), Some(0xffffffffc0002008));
        // .init.text has no address: its symbols are left out.
        assert_eq!(s.lookup("my_init"), None);
        assert_eq!(s.lookup("printk"), None);
        let h = s.get("helper").expect("helper");
        assert_eq!(
            (h.module.as_deref(), h.kind, h.is_function),
            (Some("my_mod"), 't', true)
        );
        assert_eq!(s.get("my_entry").map(|x| x.kind), Some('T'));
        let at = |a| s.symbolize(a).map(|(x, o)| (x.name.clone(), o));
        assert_eq!(at(0xffffffffc0000045), Some(("helper".into(), 5)));
        // Inside the module but past its last sized symbol: nothing, and
        // never the kernel's last symbol.
        assert_eq!(at(0xffffffffc0000080), None);
        assert_eq!(at(0xffffffff81000010), Some(("_text".into(), 0x10)));
        // Sliding the kernel leaves the module.
        s.slide(0x100000);
        assert_eq!(s.lookup("helper"), Some(0xffffffffc0000040));
        assert_eq!(s.lookup("_text"), Some(0xffffffff81100000));
        // Adding it again replaces it.
        let l2 = layout(".text 0xffffffffc1000000\n");
        s.add_module_data(&sample_ko().build(), &l2).expect("again");
        assert_eq!(s.lookup("helper"), Some(0xffffffffc1000040));
        assert_eq!(s.lookup("counter"), None);
        assert_eq!(s.iter().filter(|x| x.module.is_some()).count(), 2);
    }

    #[test]
    fn rejects_mismatched_modules() {
        let mut s = Symbols::parse(b"ffffffff81000000 T _text\n").expect("map");
        let e = s
            .add_module_data(&sample_ko().build(), &layout(".nope 0xffffffffc0000000\n"))
            .expect_err("no such section");
        assert!(e.contains(".nope"), "{e}");
        let e = s
            .add_module_data(
                &sample_ko().build(),
                &layout(".text 0xffffffffc0000000\n.extra 0xffffffffc0001000\n"),
            )
            .expect_err("extra section");
        assert!(e.contains(".extra"), "{e}");
        let e = s
            .add_module_data(b"\x7fELF garbage", &layout(".text 0xffffffffc0000000\n"))
            .expect_err("garbage");
        assert!(e.contains("ELF"), "{e}");
        let e = s
            .add_module_data(b"\xfd7zXZ\0rest", &layout(".text 0xffffffffc0000000\n"))
            .expect_err("xz");
        assert!(e.contains("xz -d"), "{e}");
        let mut exec = Elf::exec();
        exec.section(".text", testelf::TEXT, 0x1000, vec![0; 16]);
        let e = s
            .add_module_data(&exec.build(), &layout(".text 0xffffffffc0000000\n"))
            .expect_err("not relocatable");
        assert!(e.contains("relocatable"), "{e}");
        let e = s
            .add_module(Path::new("/nonexistent/x.ko"), &layout(".text 0x1\n"))
            .expect_err("missing file")
            .to_string();
        assert!(e.contains("/nonexistent/x.ko"), "{e}");
    }

    #[test]
    fn derives_layout_from_kallsyms() {
        let map = "ffffffff81000000 T _text\n\
                   ffffffffc0000000 T my_entry\t[my_mod]\n\
                   ffffffffc0000040 t helper\t[my_mod]\n\
                   ffffffffc0002008 d counter\t[my_mod]\n\
                   ffffffffc0009000 t helper\t[other]\n";
        let s = Symbols::parse(map.as_bytes()).expect("map");
        let l = from_kallsyms_data(&s, &sample_ko().build(), "whatever").expect("layout");
        assert_eq!(l.name, "my_mod");
        assert_eq!(l.sections.get(".text"), Some(&0xffffffffc0000000));
        assert_eq!(l.sections.get(".data"), Some(&0xffffffffc0002000));
        assert_eq!(l.sections.len(), 2);

        let bad = map.replace("ffffffffc0000040 t helper", "ffffffffc0000050 t helper");
        let s = Symbols::parse(bad.as_bytes()).expect("map");
        let e = from_kallsyms_data(&s, &sample_ko().build(), "x").expect_err("inconsistent");
        assert!(e.contains(".text"), "{e}");

        let s = Symbols::parse(b"ffffffff81000000 T _text\n").expect("map");
        let e = from_kallsyms_data(&s, &sample_ko().build(), "x").expect_err("not listed");
        assert!(e.contains("my_mod"), "{e}");
    }

    /// A relocatable object from the C compiler stands in for a .ko with
    /// DWARF: its line tables must follow the layout.
    #[test]
    fn relocates_module_line_tables() {
        let dir = std::env::temp_dir().join(format!("xenprobe-ko-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let src = dir.join("m.c");
        std::fs::write(
            &src,
            "int counter;\n\nint helper(int x)\n{\n\treturn x * 3 + counter;\n}\n\n\
             int entry(int y)\n{\n\tcounter++;\n\treturn helper(y) + 1;\n}\n",
        )
        .expect("write");
        let obj = dir.join("m.o");
        let built = std::process::Command::new("cc")
            .args(["-g", "-O0", "-fno-common", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            println!("skipped: no working C compiler (cc) to build a relocatable object");
            return;
        }
        let data = std::fs::read(&obj).expect("object");
        std::fs::remove_dir_all(&dir).ok();
        for text in [0xffff_ffff_c010_0000u64, 0xffff_ffff_c020_4000] {
            let mut s = Symbols::parse(b"ffffffff81000000 T _text\n").expect("map");
            let l = layout(&format!(".text {text:#x}\n.bss {:#x}\n", text + 0x1000));
            s.add_module_data(&data, &l).expect("add");
            assert_eq!(s.lookup("helper"), Some(text));
            assert_eq!(s.lookup("counter"), Some(text + 0x1000));
            let entry = s.lookup("entry").expect("entry");
            let at = |a| s.line(a).map(|l| (l.file.ends_with("m.c"), l.line));
            assert_eq!(at(text), Some((true, 4)));
            assert_eq!(at(entry), Some((true, 9)));
            assert_eq!(s.line(0xffff_ffff_8100_0000), None);
        }
    }

    #[test]
    fn garbage_kos_never_panic() {
        let good = sample_ko().build();
        let l = layout(".text 0xffffffffc0000000\n.data 0xffffffffc0002000\n");
        let mut s = Symbols::parse(b"ffffffff81000000 T _text\n").expect("map");
        for cut in (0..good.len()).step_by(7) {
            let _ = s.add_module_data(&good[..cut], &l);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..500 {
            testelf::xorshift(&mut seed);
            let mut d = good.clone();
            let at = (seed as usize) % d.len();
            d[at] = (seed >> 40) as u8;
            let _ = s.add_module_data(&d, &l);
            let _ = from_kallsyms_data(&s, &d, "x");
        }
    }
}
