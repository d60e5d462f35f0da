//! Where an HVM/PVH snapshot keeps each saved guest frame: looked up for
//! every frame every restore copies back. Frames below the special-page
//! region (the guest's RAM under 4 GiB) are indexed by number in a flat
//! table, one load a lookup; the few special frames and RAM above 4 GiB
//! go to a hash map.

use rustc_hash::FxHashMap;

/// Where a saved frame's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The frame was all zero (nothing stored).
    Zero,
    /// Page `n` of the snapshot's data.
    Page(usize),
}

/// Table entry of a frame not saved.
const NONE: u32 = u32::MAX;
/// Table entry of an all-zero frame.
const ZERO: u32 = u32::MAX - 1;

/// Saved frames by guest frame number.
#[derive(Debug, Default)]
pub(crate) struct FrameSlots {
    /// Frames `0..flat_end`, indexed directly ([`NONE`], [`ZERO`] or a page).
    flat: Vec<u32>,
    flat_end: u64,
    /// Frames at or above `flat_end`, and pages past the table's range.
    other: FxHashMap<u64, Slot>,
    len: usize,
}

impl FrameSlots {
    /// An empty index whose flat table covers frames below `flat_end` (it
    /// grows only as far as the highest such frame inserted).
    pub(crate) fn new(flat_end: u64) -> Self {
        Self {
            flat_end,
            ..Self::default()
        }
    }

    /// Records where `gfn` is saved (replacing an earlier entry).
    pub(crate) fn insert(&mut self, gfn: u64, slot: Slot) {
        let entry = match slot {
            Slot::Zero => Some(ZERO),
            Slot::Page(n) => u32::try_from(n).ok().filter(|&n| n < ZERO),
        };
        match (entry, usize::try_from(gfn)) {
            (Some(e), Ok(i)) if gfn < self.flat_end => {
                if i >= self.flat.len() {
                    self.flat.resize(i + 1, NONE);
                }
                if self.flat[i] == NONE {
                    self.len += 1;
                }
                self.flat[i] = e;
            }
            _ => {
                if let Some(e) = usize::try_from(gfn).ok().and_then(|i| self.flat.get_mut(i)) {
                    if *e != NONE {
                        *e = NONE;
                        self.len -= 1;
                    }
                }
                if self.other.insert(gfn, slot).is_none() {
                    self.len += 1;
                }
            }
        }
    }

    /// Where `gfn` is saved, if it is.
    pub(crate) fn get(&self, gfn: u64) -> Option<Slot> {
        let flat = usize::try_from(gfn)
            .ok()
            .and_then(|i| self.flat.get(i))
            .copied();
        match flat {
            Some(ZERO) => Some(Slot::Zero),
            Some(NONE) | None => self.other.get(&gfn).copied(),
            Some(n) => Some(Slot::Page(n as usize)),
        }
    }

    /// Whether `gfn` is saved.
    pub(crate) fn contains(&self, gfn: u64) -> bool {
        self.get(gfn).is_some()
    }

    /// Frames saved.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every saved frame number (in no particular order).
    pub(crate) fn gfns(&self) -> impl Iterator<Item = u64> + '_ {
        let flat = self
            .flat
            .iter()
            .enumerate()
            .filter(|&(_, &e)| e != NONE)
            .map(|(i, _)| i as u64);
        flat.chain(self.other.keys().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_below_and_above_the_flat_range_are_found_and_counted_once() {
        let mut s = FrameSlots::new(100);
        s.insert(3, Slot::Page(0));
        s.insert(7, Slot::Zero);
        s.insert(0xfeff0, Slot::Page(1));
        s.insert(3, Slot::Page(2));
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(3), Some(Slot::Page(2)));
        assert_eq!(s.get(7), Some(Slot::Zero));
        assert_eq!(s.get(0xfeff0), Some(Slot::Page(1)));
        assert_eq!(s.get(4), None);
        assert_eq!(s.get(99), None);
        assert_eq!(s.get(u64::MAX), None);
        assert!(!s.contains(5) && s.contains(7));
        let mut g: Vec<u64> = s.gfns().collect();
        g.sort_unstable();
        assert_eq!(g, [3, 7, 0xfeff0]);
        // The flat table stops at the highest flat frame inserted.
        assert_eq!(s.flat.len(), 8);
    }

    #[test]
    fn a_page_index_too_big_for_the_table_goes_to_the_map() {
        let mut s = FrameSlots::new(100);
        s.insert(5, Slot::Page(1));
        s.insert(5, Slot::Page(u32::MAX as usize));
        assert_eq!(s.get(5), Some(Slot::Page(u32::MAX as usize)));
        assert_eq!(s.len(), 1);
    }
}
