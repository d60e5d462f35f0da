//! x86 page-table walks (pure logic) and a translation cache.
//!
//! The walker reads page-table entries through a caller-supplied
//! "read physical u64" function, so it runs the same over live guest memory
//! and over synthetic tables in a byte buffer (see the tests).

use rustc_hash::FxHashMap;

/// Paging mode of a vCPU, from CR0/CR4/EFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: virtual = physical.
    Disabled,
    /// 32-bit paging without PAE (2 levels, 4 MiB pages with PSE).
    Legacy,
    /// PAE paging (3 levels).
    Pae,
    /// 4-level long-mode paging.
    Long4,
    /// 5-level paging (CR4.LA57).
    Long5,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

impl PagingMode {
    /// Decodes the mode from control registers.
    pub fn from_regs(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & CR0_PG == 0 {
            Self::Disabled
        } else if efer & EFER_LMA != 0 {
            if cr4 & CR4_LA57 != 0 {
                Self::Long5
            } else {
                Self::Long4
            }
        } else if cr4 & CR4_PAE != 0 {
            Self::Pae
        } else {
            Self::Legacy
        }
    }
}

/// Result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte at the virtual address.
    pub pa: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
}

impl Translation {
    /// Physical address of the start of the 4 KiB frame holding `pa`.
    pub fn frame(&self) -> u64 {
        self.pa & !0xfff
    }
}

/// Why a walk failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError<E> {
    /// An entry on the way is not present.
    NotPresent {
        /// 4 = PML4 ... 1 = PT.
        level: u8,
        /// The entry's value.
        entry: u64,
    },
    /// The address is not canonical for 48-bit addressing.
    NonCanonical,
    /// This paging mode is not implemented.
    UnsupportedMode(PagingMode),
    /// Reading a table entry failed.
    Read(E),
}

impl<E: std::fmt::Display> std::fmt::Display for WalkError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotPresent { level, entry } => {
                write!(f, "level-{level} entry {entry:#x} not present")
            }
            Self::NonCanonical => write!(f, "non-canonical address"),
            Self::UnsupportedMode(m) => write!(f, "paging mode {m:?} not supported"),
            Self::Read(e) => write!(f, "reading page table: {e}"),
        }
    }
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
/// Physical address bits 12..51 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Walks the page tables rooted at `cr3` for `va`.
pub fn walk<E>(
    mode: PagingMode,
    cr3: u64,
    va: u64,
    mut read_u64: impl FnMut(u64) -> Result<u64, E>,
) -> Result<Translation, WalkError<E>> {
    match mode {
        PagingMode::Disabled => Ok(Translation {
            pa: va,
            page_size: 4096,
            writable: true,
            user: true,
        }),
        PagingMode::Long4 => {
            let top = va >> 47;
            if top != 0 && top != 0x1_ffff {
                return Err(WalkError::NonCanonical);
            }
            walk_levels(cr3 & ADDR_MASK, va, 4, &mut read_u64)
        }
        PagingMode::Pae => {
            let va = va & 0xffff_ffff;
            let pdpte_pa = (cr3 & 0xffff_ffe0) + ((va >> 30) & 3) * 8;
            let pdpte = read_u64(pdpte_pa).map_err(WalkError::Read)?;
            if pdpte & P == 0 {
                return Err(WalkError::NotPresent {
                    level: 3,
                    entry: pdpte,
                });
            }
            // PDPTEs carry no R/W or U/S bits in PAE mode.
            let mut t = walk_levels(pdpte & ADDR_MASK, va, 2, &mut read_u64)?;
            t.pa &= 0x000f_ffff_ffff_ffff;
            Ok(t)
        }
        m @ (PagingMode::Legacy | PagingMode::Long5) => Err(WalkError::UnsupportedMode(m)),
    }
}

/// Walks `levels` 512-entry levels starting with the table at `table`.
fn walk_levels<E>(
    mut table: u64,
    va: u64,
    levels: u8,
    read_u64: &mut impl FnMut(u64) -> Result<u64, E>,
) -> Result<Translation, WalkError<E>> {
    let mut writable = true;
    let mut user = true;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let index = (va >> shift) & 0x1ff;
        let entry = read_u64(table + index * 8).map_err(WalkError::Read)?;
        if entry & P == 0 {
            return Err(WalkError::NotPresent { level, entry });
        }
        writable &= entry & RW != 0;
        user &= entry & US != 0;
        // PS means a large page at levels 2 (2 MiB) and 3 (1 GiB).
        if level == 1 || ((level == 2 || level == 3) && entry & PS != 0) {
            let page_size = 1u64 << shift;
            let base = entry & ADDR_MASK & !(page_size - 1);
            return Ok(Translation {
                pa: base | (va & (page_size - 1)),
                page_size,
                writable,
                user,
            });
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 always returns")
}

/// Caches translations per (CR3, virtual page). Cleared when a vCPU's CR3
/// changes and whenever the guest runs again.
#[derive(Debug, Default)]
pub struct TranslationCache {
    map: FxHashMap<(u64, u64), Translation>,
    cr3: FxHashMap<u32, u64>,
}

impl TranslationCache {
    /// Cached translation of `va` under `cr3`.
    pub fn get(&self, cr3: u64, va: u64) -> Option<Translation> {
        let t = self.map.get(&(cr3, va >> 12))?;
        Some(Translation {
            pa: (t.pa & !0xfff) | (va & 0xfff),
            ..*t
        })
    }

    /// Remembers a translation.
    pub fn insert(&mut self, cr3: u64, va: u64, t: Translation) {
        self.map.insert((cr3, va >> 12), t);
    }

    /// Records the CR3 seen on `vcpu`; a change drops the whole cache.
    pub fn note_cr3(&mut self, vcpu: u32, cr3: u64) {
        if self.cr3.insert(vcpu, cr3).is_some_and(|old| old != cr3) {
            self.map.clear();
        }
    }

    /// Drops everything (on resume: the guest may rewrite its tables).
    pub fn invalidate(&mut self) {
        self.map.clear();
        self.cr3.clear();
    }

    /// Number of cached pages.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic physical memory: a byte buffer with page tables in it.
    struct Mem(Vec<u8>);

    impl Mem {
        fn new(pages: usize) -> Self {
            Self(vec![0; pages * 4096])
        }
        fn set(&mut self, pa: u64, v: u64) {
            let pa = pa as usize;
            self.0[pa..pa + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn read(&self, pa: u64) -> Result<u64, String> {
            let pa = pa as usize;
            let b = self
                .0
                .get(pa..pa + 8)
                .ok_or(format!("pa {pa:#x} outside"))?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short")?))
        }
        fn entry(&mut self, table: u64, index: u64, v: u64) {
            self.set(table + index * 8, v);
        }
    }

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;

    fn idx(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * (level - 1))) & 0x1ff
    }

    /// Tables mapping: 4 KiB page at va4k, 2 MiB page at va2m, 1 GiB page at va1g.
    fn tables(va4k: u64, va2m: u64, va1g: u64) -> Mem {
        let mut m = Mem::new(8);
        for va in [va4k, va2m, va1g] {
            m.entry(PML4, idx(va, 4), PDPT | P | RW | US);
        }
        m.entry(PDPT, idx(va4k, 3), PD | P | RW | US);
        m.entry(PD, idx(va4k, 2), PT | P | RW | US);
        m.entry(PT, idx(va4k, 1), 0x7000 | P | (1 << 63)); // read-only, NX set
        m.entry(PD, idx(va2m, 2), 0x4060_0000 | P | RW | PS);
        m.entry(PDPT, idx(va1g, 3), 0x8000_0000 | P | RW | US | PS);
        m
    }

    const VA4K: u64 = 0xffff_8000_0010_1234;
    const VA2M: u64 = 0xffff_8000_0060_0000 + 0x12_3456;
    const VA1G: u64 = 0xffff_8000_4000_0000 + 0x1234_5678;

    #[test]
    fn walks_4k_page_and_masks_nx() {
        let m = tables(VA4K, VA2M, VA1G);
        let t = walk(PagingMode::Long4, PML4, VA4K, |pa| m.read(pa)).expect("4k");
        assert_eq!(t.pa, 0x7234);
        assert_eq!(t.page_size, 4096);
        assert!(!t.writable, "PT entry is read-only");
        assert!(!t.user, "PT entry is supervisor");
        assert_eq!(t.frame(), 0x7000);
    }

    #[test]
    fn walks_2m_and_1g_pages() {
        let m = tables(VA4K, VA2M, VA1G);
        let t = walk(PagingMode::Long4, PML4, VA2M, |pa| m.read(pa)).expect("2m");
        assert_eq!(t.page_size, 2 << 20);
        assert_eq!(t.pa, 0x4060_0000 + 0x12_3456);
        assert!(!t.user);
        let t = walk(PagingMode::Long4, PML4 | 0x18, VA1G, |pa| m.read(pa)).expect("1g");
        assert_eq!(t.page_size, 1 << 30);
        assert_eq!(t.pa, 0x8000_0000 + 0x1234_5678);
        assert!(t.user && t.writable);
    }

    #[test]
    fn reports_missing_level() {
        let m = tables(VA4K, VA2M, VA1G);
        let e = walk(PagingMode::Long4, PML4, VA4K + 0x1000, |pa| m.read(pa)).unwrap_err();
        assert_eq!(e, WalkError::NotPresent { level: 1, entry: 0 });
        let e = walk(PagingMode::Long4, PML4, 0x1000, |pa| m.read(pa)).unwrap_err();
        assert_eq!(e, WalkError::NotPresent { level: 4, entry: 0 });
        assert_eq!(e.to_string(), "level-4 entry 0x0 not present");
    }

    #[test]
    fn rejects_non_canonical_and_propagates_read_errors() {
        let m = tables(VA4K, VA2M, VA1G);
        let e = walk(PagingMode::Long4, PML4, 0x0000_8000_0000_0000, |pa| {
            m.read(pa)
        });
        assert_eq!(e.unwrap_err(), WalkError::NonCanonical);
        let e = walk(PagingMode::Long4, 0x100_0000, VA4K, |pa| m.read(pa)).unwrap_err();
        assert!(
            matches!(e, WalkError::Read(ref s) if s.contains("outside")),
            "{e:?}"
        );
    }

    #[test]
    fn paging_disabled_is_identity() {
        let t = walk::<String>(PagingMode::Disabled, 0, 0x1234_5678, |_| {
            Err("no reads".into())
        });
        assert_eq!(t.expect("identity").pa, 0x1234_5678);
    }

    #[test]
    fn walks_pae() {
        let mut m = Mem::new(8);
        let va = 0xc012_3456u64; // PDPT index 3, PD index 0, PT index 0x123
        m.set(0x1000 + 3 * 8, PD | P);
        m.entry(PD, (va >> 21) & 0x1ff, PT | P | RW);
        m.entry(PT, (va >> 12) & 0x1ff, 0x6000 | P | RW);
        let t = walk(PagingMode::Pae, 0x1000, va, |pa| m.read(pa)).expect("pae");
        assert_eq!(t.pa, 0x6456);
    }

    #[test]
    fn decodes_mode() {
        assert_eq!(PagingMode::from_regs(0x11, 0, 0), PagingMode::Disabled);
        assert_eq!(
            PagingMode::from_regs(CR0_PG | 1, CR4_PAE, 0x500),
            PagingMode::Long4
        );
        assert_eq!(
            PagingMode::from_regs(CR0_PG, CR4_PAE | CR4_LA57, EFER_LMA),
            PagingMode::Long5
        );
        assert_eq!(PagingMode::from_regs(CR0_PG, CR4_PAE, 0), PagingMode::Pae);
        assert_eq!(PagingMode::from_regs(CR0_PG, 0, 0), PagingMode::Legacy);
        let e = walk::<String>(PagingMode::Long5, 0, 0, |_| Ok(0)).unwrap_err();
        assert_eq!(e, WalkError::UnsupportedMode(PagingMode::Long5));
    }

    #[test]
    fn cache_invalidates_on_cr3_change_and_resume() {
        let mut c = TranslationCache::default();
        let t = Translation {
            pa: 0x7abc,
            page_size: 4096,
            writable: true,
            user: false,
        };
        c.note_cr3(0, 0x1000);
        c.insert(0x1000, 0xffff_8000_0000_0abc, t);
        assert_eq!(
            c.get(0x1000, 0xffff_8000_0000_0010).map(|t| t.pa),
            Some(0x7010)
        );
        assert!(c.get(0x2000, 0xffff_8000_0000_0010).is_none());
        c.note_cr3(0, 0x1000);
        assert_eq!(c.len(), 1, "same CR3 keeps the cache");
        c.note_cr3(0, 0x2000);
        assert!(c.is_empty(), "CR3 change drops the cache");
        c.insert(0x2000, 0, t);
        c.invalidate();
        assert!(c.is_empty());
    }
}
