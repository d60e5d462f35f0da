//! A minimal ELF64 little-endian x86-64 writer for the tests: sections,
//! symbols, RELA relocations.

/// Advances the tests' xorshift64 generator `seed` (never 0).
pub(crate) fn xorshift(seed: &mut u64) {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
}

/// Section type and flags.
pub(crate) type Kind = (u32, u64);

const PROGBITS: u32 = 1;
const NOBITS: u32 = 8;
const ALLOC: u64 = 2;
pub(crate) const TEXT: Kind = (PROGBITS, ALLOC | 4);
pub(crate) const RODATA: Kind = (PROGBITS, ALLOC);
pub(crate) const DATA: Kind = (PROGBITS, ALLOC | 1);
pub(crate) const BSS: Kind = (NOBITS, ALLOC | 1);

pub(crate) const R_X86_64_64: u32 = 1;
pub(crate) const R_X86_64_PC32: u32 = 2;
pub(crate) const R_X86_64_PLT32: u32 = 4;
pub(crate) const R_X86_64_32S: u32 = 11;

struct Sec {
    name: String,
    kind: Kind,
    addr: u64,
    data: Vec<u8>,
}

struct Sym {
    name: String,
    /// User section index; `None`: undefined.
    section: Option<usize>,
    value: u64,
    size: u64,
    info: u8,
}

/// A relocation: offset, symbol, type, addend.
type Rela = (u64, usize, u32, i64);
/// A section header: name, type, flags, addr, offset, size, link, info,
/// entsize.
type Header = (u32, u32, u64, u64, u64, u64, u32, u32, u64);

pub(crate) struct Elf {
    etype: u16,
    sections: Vec<Sec>,
    symbols: Vec<Sym>,
    relas: Vec<(usize, Vec<Rela>)>,
}

fn put(out: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if out.len() < at + bytes.len() {
        out.resize(at + bytes.len(), 0);
    }
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

fn align(out: &mut Vec<u8>, to: usize) -> usize {
    while out.len() % to != 0 {
        out.push(0);
    }
    out.len()
}

impl Elf {
    /// An executable (ET_EXEC).
    pub fn exec() -> Self {
        Self::new(2)
    }

    /// A relocatable object (ET_REL), like a .ko.
    pub fn rel() -> Self {
        Self::new(1)
    }

    fn new(etype: u16) -> Self {
        Self {
            etype,
            sections: Vec::new(),
            symbols: Vec::new(),
            relas: Vec::new(),
        }
    }

    /// Adds a section; returns its index for [`Elf::symbol`].
    pub fn section(&mut self, name: &str, kind: Kind, addr: u64, data: Vec<u8>) -> usize {
        self.sections.push(Sec {
            name: name.into(),
            kind,
            addr,
            data,
        });
        self.sections.len() - 1
    }

    /// Adds a symbol (`section` None: undefined); returns its index for
    /// [`Elf::rela`]. Add local symbols before global ones.
    pub fn symbol(
        &mut self,
        name: &str,
        section: Option<usize>,
        value: u64,
        size: u64,
        func: bool,
        global: bool,
    ) -> usize {
        let info = (u8::from(global) << 4) | if func { 2 } else { u8::from(section.is_some()) };
        self.symbols.push(Sym {
            name: name.into(),
            section,
            value,
            size,
            info,
        });
        self.symbols.len() - 1
    }

    /// Adds the section symbol of `section`.
    pub fn section_symbol(&mut self, section: usize) -> usize {
        self.symbols.push(Sym {
            name: String::new(),
            section: Some(section),
            value: 0,
            size: 0,
            info: 3,
        });
        self.symbols.len() - 1
    }

    /// A RELA relocation in `section` at `offset` against `symbol`.
    pub fn rela(&mut self, section: usize, offset: u64, symbol: usize, r_type: u32, addend: i64) {
        match self.relas.iter_mut().find(|(s, _)| *s == section) {
            Some((_, v)) => v.push((offset, symbol, r_type, addend)),
            None => self
                .relas
                .push((section, vec![(offset, symbol, r_type, addend)])),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        let mut shstr = vec![0u8];
        let mut name = |n: &str| {
            let at = shstr.len() as u32;
            shstr.extend_from_slice(n.as_bytes());
            shstr.push(0);
            at
        };
        let mut headers: Vec<Header> = vec![(0, 0, 0, 0, 0, 0, 0, 0, 0)];
        for s in &self.sections {
            let off = align(&mut out, 16);
            if s.kind.0 != NOBITS {
                out.extend_from_slice(&s.data);
            }
            let n = name(&s.name);
            headers.push((
                n,
                s.kind.0,
                s.kind.1,
                s.addr,
                off as u64,
                s.data.len() as u64,
                0,
                0,
                0,
            ));
        }
        if !self.symbols.is_empty() {
            let symtab = headers.len() as u32;
            let mut strtab = vec![0u8];
            let mut syms = vec![0u8; 24];
            let locals = 1 + self.symbols.iter().take_while(|s| s.info >> 4 == 0).count();
            for s in &self.symbols {
                let n = if s.name.is_empty() {
                    0
                } else {
                    strtab.len() as u32
                };
                strtab.extend_from_slice(s.name.as_bytes());
                strtab.push(0);
                syms.extend_from_slice(&n.to_le_bytes());
                syms.push(s.info);
                syms.push(0);
                let shndx = s.section.map_or(0, |i| i as u16 + 1);
                syms.extend_from_slice(&shndx.to_le_bytes());
                syms.extend_from_slice(&s.value.to_le_bytes());
                syms.extend_from_slice(&s.size.to_le_bytes());
            }
            let off = align(&mut out, 8);
            out.extend_from_slice(&syms);
            let n = name(".symtab");
            headers.push((
                n,
                2,
                0,
                0,
                off as u64,
                syms.len() as u64,
                symtab + 1,
                locals as u32,
                24,
            ));
            let off = out.len();
            out.extend_from_slice(&strtab);
            let n = name(".strtab");
            headers.push((n, 3, 0, 0, off as u64, strtab.len() as u64, 0, 0, 0));
            for (sec, relas) in &self.relas {
                let off = align(&mut out, 8);
                for &(offset, sym, ty, addend) in relas {
                    out.extend_from_slice(&offset.to_le_bytes());
                    let info = ((sym as u64 + 1) << 32) | u64::from(ty);
                    out.extend_from_slice(&info.to_le_bytes());
                    out.extend_from_slice(&addend.to_le_bytes());
                }
                let n = name(&format!(".rela{}", self.sections[*sec].name));
                let size = 24 * relas.len() as u64;
                headers.push((n, 4, 0x40, 0, off as u64, size, symtab, *sec as u32 + 1, 24));
            }
        }
        let n = name(".shstrtab");
        let off = out.len();
        out.extend_from_slice(&shstr);
        headers.push((n, 3, 0, 0, off as u64, shstr.len() as u64, 0, 0, 0));
        let shoff = align(&mut out, 8);
        for (n, ty, flags, addr, off, size, link, info, entsize) in &headers {
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&link.to_le_bytes());
            out.extend_from_slice(&info.to_le_bytes());
            out.extend_from_slice(&16u64.to_le_bytes());
            out.extend_from_slice(&entsize.to_le_bytes());
        }
        put(&mut out, 0, b"\x7fELF\x02\x01\x01");
        put(&mut out, 16, &self.etype.to_le_bytes());
        put(&mut out, 18, &62u16.to_le_bytes());
        put(&mut out, 20, &1u32.to_le_bytes());
        put(&mut out, 40, &(shoff as u64).to_le_bytes());
        put(&mut out, 52, &64u16.to_le_bytes());
        put(&mut out, 54, &56u16.to_le_bytes());
        put(&mut out, 58, &64u16.to_le_bytes());
        put(&mut out, 60, &(headers.len() as u16).to_le_bytes());
        put(&mut out, 62, &(headers.len() as u16 - 1).to_le_bytes());
        out
    }
}
