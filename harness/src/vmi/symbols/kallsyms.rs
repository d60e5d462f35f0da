//! Text symbol maps: `System.map` and `/proc/kallsyms`
//! (`ffffffff81000000 T _text`, module symbols with a `\t[module]` column).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Origin, Symbol, Symbols};

/// Debian's `/boot/System.map-*` holds only this sentence.
const DEBIAN_PLACEHOLDER: &str = "The real System.map is in";

/// Whether the first non-empty line reads `HEX WORD ...`.
pub(super) fn looks_like_map(text: &str) -> bool {
    let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
        return false;
    };
    let mut words = line.split_whitespace();
    let addr = words.next().unwrap_or("");
    (1..=16).contains(&addr.len())
        && addr.bytes().all(|b| b.is_ascii_hexdigit())
        && words.next().is_some()
}

/// Parses a map. Symbols have no sizes; undefined (`U`) and debugging
/// (`N`) entries are skipped.
pub(super) fn parse(text: &str) -> Result<Vec<Symbol>, String> {
    // Lines of a kernel's map average about 40 bytes.
    let mut out = Vec::with_capacity(text.len() / 40);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let mut words = line.split_ascii_whitespace();
        let (Some(addr), Some(ty), Some(name)) = (words.next(), words.next(), words.next()) else {
            return Err(bad("expected ADDRESS TYPE NAME [[MODULE]]"));
        };
        if let Some(at) = (name == "The")
            .then(|| line.find(DEBIAN_PLACEHOLDER))
            .flatten()
        {
            return Err(format!(
                "a placeholder System.map (\"{}\"); recover the symbols from the \
                 kernel image instead: xenprobe kallsyms VMLINUX > System.map",
                line.get(at..).unwrap_or(DEBIAN_PLACEHOLDER).trim()
            ));
        }
        let module = match words.next() {
            None => None,
            Some(m) => match m.strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
                Some(m) if !m.is_empty() => Some(m.to_string()),
                _ => return Err(bad("the 4th column must be [MODULE]")),
            },
        };
        if words.next().is_some() {
            return Err(bad("expected ADDRESS TYPE NAME [[MODULE]]"));
        }
        if addr.len() > 16 {
            return Err(bad("address longer than 64 bits"));
        }
        let addr = u64::from_str_radix(addr, 16).map_err(|_| bad("bad hex address"))?;
        let mut chars = ty.chars();
        let (Some(kind), None) = (chars.next(), chars.next()) else {
            return Err(bad("the type must be one letter"));
        };
        if !kind.is_ascii_graphic() {
            return Err(bad("bad type letter"));
        }
        if matches!(kind, 'U' | 'u' | 'N' | 'n') {
            continue;
        }
        out.push(Symbol {
            name: name.to_string(),
            addr,
            size: 0,
            is_function: matches!(kind, 'T' | 't' | 'W' | 'w'),
            kind,
            module,
        });
    }
    if out.is_empty() {
        return Err("no symbols in the map".into());
    }
    if out.iter().all(|s| s.addr == 0) {
        return Err(format!(
            "all addresses are 0 ({} symbols): read /proc/kallsyms as root \
             (with kernel.kptr_restrict below 2)",
            out.len()
        ));
    }
    Ok(out)
}

/// Where [`Symbols::load_cached`] keeps the symbols recovered from the
/// kernel image `image`: a name made of the image's canonical path, size
/// and modification time (None when it has none of those).
pub(super) fn cache_file(image: &Path, dir: &Path) -> Option<PathBuf> {
    let canon = image.canonicalize().ok()?;
    let meta = std::fs::metadata(&canon).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let mut h = xenprobe_abi::Fnv1a::new();
    h.update(canon.to_string_lossy().as_bytes());
    h.update(&meta.len().to_le_bytes());
    h.update(&mtime.as_nanos().to_le_bytes());
    Some(dir.join(format!("kallsyms-{:016x}.map", h.finish())))
}

/// The symbols a cache file holds: the image's entry point on the first
/// line (`# entry 0x...`), then the map; None when it is missing or bad.
pub(super) fn read_cache(file: &Path) -> Option<Symbols> {
    let text = std::fs::read_to_string(file).ok()?;
    let (head, map) = text.split_once('\n')?;
    let entry = u64::from_str_radix(head.strip_prefix("# entry 0x")?, 16).ok()?;
    let syms = parse(map).ok()?;
    Some(Symbols::new(syms, None, entry, Origin::Kallsyms))
}

/// Writes `syms` (recovered from a kernel image) as a cache file, through a
/// temporary name and a rename.
pub(super) fn write_cache(syms: &Symbols, file: &Path) -> std::io::Result<()> {
    if let Some(d) = file.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut text = format!("# entry {:#x}\n", syms.entry).into_bytes();
    syms.write_map(&mut text)?;
    let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

impl Symbols {
    /// Writes every symbol as a `/proc/kallsyms` line (also a valid
    /// `System.map`), in address order.
    pub fn write_map(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for s in self.iter() {
            match &s.module {
                None => writeln!(out, "{:016x} {} {}", s.addr, s.kind, s.name)?,
                Some(m) => writeln!(out, "{:016x} {} {}\t[{m}]", s.addr, s.kind, s.name)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmi::symbols::testelf;

    const MAP: &str = "\
0000000000000000 A fixed_percpu_data
0000000000001000 A cpu_debug_store
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000070 t secondary_startup_64_no_verify
ffffffff81001000 W arch_weak_fn
ffffffff82000000 D some_data
ffffffff83000000 b some_bss
ffffffffc0a00000 t af_key_init\t[af_key]
ffffffffc0a00040 T pfkey_send\t[af_key]
";

    #[test]
    fn parses_kallsyms_text_with_modules_and_absolute_symbols() {
        let s = Symbols::parse(MAP.as_bytes()).expect("map");
        assert_eq!(s.origin(), Origin::Map);
        assert_eq!(s.iter().count(), 10);
        assert_eq!(s.lookup("_text"), Some(0xffffffff81000000));
        let k = s.get("pfkey_send").expect("module symbol");
        assert_eq!(k.module.as_deref(), Some("af_key"));
        assert!(k.is_function && k.size == 0 && k.kind == 'T');
        assert!(s.get("arch_weak_fn").is_some_and(|x| x.is_function));
        assert!(s.get("some_data").is_some_and(|x| !x.is_function));
        let (sym, off) = s.symbolize(0xffffffff81000080).expect("in text");
        assert_eq!(
            (sym.name.as_str(), off),
            ("secondary_startup_64_no_verify", 0x10)
        );
        let (sym, off) = s.symbolize(0xffffffff81000000).expect("_text");
        assert_eq!((sym.name.as_str(), off), ("_text", 0));
        // Per-CPU offsets are values, not addresses.
        assert_eq!(s.lookup("cpu_debug_store"), Some(0x1000));
        assert!(s.symbolize(0x1008).is_none());
        assert_eq!(named(&s, 0xffffffffc0a00050), Some(("pfkey_send", 0x10)));
    }

    /// The symbol `addr` is in, by name, and the offset into it.
    fn named(s: &Symbols, addr: u64) -> Option<(&str, u64)> {
        s.symbolize(addr).map(|(x, o)| (x.name.as_str(), o))
    }

    #[test]
    fn a_name_at_several_addresses_finds_the_lowest() {
        // Static functions of one name in several files, as kallsyms has
        // them (listed out of address order here).
        let map = "\
ffffffff81003000 t cleanup
ffffffff81001000 t cleanup
ffffffff81002000 T other
ffffffff81000500 t cleanup\t[m]
";
        let s = Symbols::parse(map.as_bytes()).expect("map");
        assert_eq!(s.lookup("cleanup"), Some(0xffffffff81000500));
        assert_eq!(s.lookup("other"), Some(0xffffffff81002000));
        assert_eq!(s.lookup("clean"), None);
        assert_eq!(s.lookup(""), None);
    }

    #[test]
    fn writes_back_what_it_read() {
        let s = Symbols::parse(MAP.as_bytes()).expect("map");
        let mut out = Vec::new();
        s.write_map(&mut out).expect("write");
        assert_eq!(String::from_utf8(out).expect("utf8"), MAP);
    }

    #[test]
    fn slide_leaves_modules_and_absolute_symbols() {
        let mut s = Symbols::parse(MAP.as_bytes()).expect("map");
        s.slide(0x1e00000);
        assert_eq!(s.slid(), 0x1e00000);
        assert_eq!(s.lookup("_text"), Some(0xffffffff82e00000));
        assert_eq!(s.lookup("pfkey_send"), Some(0xffffffffc0a00040));
        assert_eq!(s.lookup("cpu_debug_store"), Some(0x1000));
        assert_eq!(
            named(&s, 0xffffffff82e00071),
            Some(("secondary_startup_64_no_verify", 1))
        );
    }

    #[test]
    fn system_map_and_windows_line_ends() {
        let s = Symbols::parse(b"ffffffff81000000 T _text\r\n\r\nffffffff81000100 t x\r\n")
            .expect("map");
        assert_eq!(s.lookup("x"), Some(0xffffffff81000100));
    }

    #[test]
    fn clear_errors() {
        let err = |t: &str| Symbols::parse(t.as_bytes()).expect_err(t);
        let e = err("ffffffffffffffff B The real System.map is in the linux-image-6.1.0-57-amd64-dbg package\n");
        assert!(
            e.contains("placeholder") && e.contains("-dbg package"),
            "{e}"
        );
        let e = err("0000000000000000 T _text\n0000000000000000 t foo\t[mod]\n");
        assert!(
            e.contains("all addresses are 0") && e.contains("as root"),
            "{e}"
        );
        let e = err("ffffffff81000000 T _text\nffffffff8100zz00 T bad\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("ffffffff81000000 T _text\nffffffff81000000 T a b c\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("ffffffff81000000 T _text extra\n");
        assert!(e.contains("[MODULE]"), "{e}");
        let e = err("ffffffff81000000 TT _text\n");
        assert!(e.contains("one letter"), "{e}");
        let e = err("11111111111111111 T _text\n");
        assert!(e.contains("ELF") || e.contains("64 bits"), "{e}");
        let e = err("ffffffff81000000 U undefined_only\n");
        assert!(e.contains("no symbols"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            testelf::xorshift(&mut seed);
            seed
        };
        let alphabet = b"0123456789abcdefTtDd []\t\n\r xyz_\xc3\xa9";
        for _ in 0..2000 {
            let len = (next() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = Symbols::parse(&bytes);
            let mut good = MAP.as_bytes().to_vec();
            let cut = (next() as usize) % good.len();
            good.truncate(cut);
            let _ = Symbols::parse(&good);
        }
    }

    /// What a cache file holds comes back as it was: entry point, origin,
    /// every symbol; a file that is not one is no cache.
    #[test]
    fn recovered_symbols_round_trip_through_the_cache() {
        let syms = Symbols::new(
            parse(MAP).expect("map"),
            None,
            0xffff_ffff_8100_0000,
            Origin::Kallsyms,
        );
        let dir = std::env::temp_dir().join(format!("xenprobe-kcache-{}", std::process::id()));
        let file = dir.join("k.map");
        write_cache(&syms, &file).expect("write");
        let back = read_cache(&file).expect("read back");
        assert_eq!(back.origin(), Origin::Kallsyms);
        assert_eq!(back.entry, syms.entry);
        let names = |s: &Symbols| {
            s.iter()
                .map(|x| (x.addr, x.kind, x.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&back), names(&syms));
        std::fs::write(&file, "ffffffff81000000 T _text\n").expect("junk");
        assert!(read_cache(&file).is_none(), "no entry line: not a cache");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The cache is keyed by the image: another size or time, another file.
    #[test]
    fn the_cache_file_follows_the_image() {
        let dir = std::env::temp_dir().join(format!("xenprobe-kkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let img = dir.join("vmlinux");
        std::fs::write(&img, b"one").expect("image");
        let a = cache_file(&img, &dir).expect("key");
        std::fs::write(&img, b"other").expect("image");
        let b = cache_file(&img, &dir).expect("key");
        assert_ne!(a, b);
        assert!(cache_file(&dir.join("missing"), &dir).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
