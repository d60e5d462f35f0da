//! Windows: guest-virtual ranges whose frames are found once and written
//! many times (a fuzzer's input buffer). Every restore, full or registers
//! only, puts the bytes written through a window back to the snapshot's.

use crate::xen::{PAGE_SHIFT, PAGE_SIZE};

use super::domain::Domain;
use super::error::{Error, Result};
use super::memory::chunks;

/// A guest-virtual range whose frames [`Domain::window`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    va: u64,
    len: usize,
    /// The physical frame of each page, from the page holding `va` on.
    frames: Vec<u64>,
}

impl Window {
    /// First byte's virtual address.
    pub fn va(&self) -> u64 {
        self.va
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The physical pieces of `[offset, offset + n)`: (frame, offset in the
    /// frame, offset in the range, length).
    fn pieces(
        &self,
        offset: usize,
        n: usize,
    ) -> Result<impl Iterator<Item = (u64, usize, usize, usize)> + '_> {
        if offset.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(Error::State(format!(
                "{n} bytes at offset {offset} do not fit the {}-byte window at {:#x}",
                self.len, self.va
            )));
        }
        let first = self.va & !(PAGE_SIZE as u64 - 1);
        let start = self.va.wrapping_add(offset as u64);
        let mut done = 0;
        Ok(chunks(start, n).map(move |(page, off, len)| {
            let index = (page.wrapping_sub(first) >> PAGE_SHIFT) as usize;
            let piece = (self.frames[index], off, done, len);
            done += len;
            piece
        }))
    }
}

/// The byte ranges written through windows since the last snapshot take
/// or restore: (frame, from, to), one entry per frame.
#[derive(Debug, Default)]
pub(crate) struct WindowWrites(Vec<(u64, usize, usize)>);

impl WindowWrites {
    fn note(&mut self, frame: u64, from: usize, to: usize) {
        match self.0.iter_mut().find(|(f, _, _)| *f == frame) {
            Some((_, a, b)) => {
                *a = (*a).min(from);
                *b = (*b).max(to);
            }
            None => self.0.push((frame, from, to)),
        }
    }

    /// The ranges noted; the list is left empty.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        self.0.drain(..)
    }

    /// The frames written.
    pub(crate) fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|&(f, _, _)| f)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

impl Domain {
    /// Finds the frames of `[va, va + len)` through vCPU 0's page tables,
    /// once: writes through the window need no translation. The range must
    /// stay mapped where it is (a buffer of a kernel module or a static
    /// variable does).
    pub fn window(&mut self, va: u64, len: usize) -> Result<Window> {
        let end = va.checked_add(len as u64).ok_or_else(|| {
            Error::State(format!(
                "a {len}-byte window at {va:#x} ends beyond the address space"
            ))
        })?;
        let first = va & !(PAGE_SIZE as u64 - 1);
        let mut frames = Vec::new();
        let mut page = Some(first);
        while let Some(p) = page.filter(|&p| p < end.max(va.saturating_add(1))) {
            frames.push(self.translate(0, p)?.frame() >> PAGE_SHIFT);
            page = p.checked_add(PAGE_SIZE as u64);
        }
        Ok(Window { va, len, frames })
    }

    /// Writes `data` at `offset` into window `w`. The next restore puts
    /// these bytes back to the snapshot's (log-dirty does not see writes
    /// made from dom0).
    pub fn write_window(&mut self, w: &Window, offset: usize, data: &[u8]) -> Result<()> {
        for (frame, off, at, n) in w.pieces(offset, data.len())? {
            self.mem
                .write_phys_untracked((frame << PAGE_SHIFT) + off as u64, &data[at..at + n])?;
            self.mem.windows.note(frame, off, off + n);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` of window `w`.
    pub fn read_window(&self, w: &Window, offset: usize, buf: &mut [u8]) -> Result<()> {
        for (frame, off, at, n) in w.pieces(offset, buf.len())? {
            self.mem
                .read_phys((frame << PAGE_SHIFT) + off as u64, &mut buf[at..at + n])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(va: u64, len: usize, pages: u64) -> Window {
        Window {
            va,
            len,
            frames: (0..pages).map(|i| 0x100 + i * 7).collect(),
        }
    }

    #[test]
    fn pieces_follow_the_pages_of_the_range() {
        let w = window(0x1ff0, 0x30, 2);
        let p: Vec<_> = w.pieces(0, 0x30).expect("fits").collect();
        assert_eq!(p, vec![(0x100, 0xff0, 0, 0x10), (0x107, 0, 0x10, 0x20)]);
        let p: Vec<_> = w.pieces(0x12, 4).expect("fits").collect();
        assert_eq!(p, vec![(0x107, 2, 0, 4)]);
        assert!(w.pieces(0x2f, 2).is_err(), "past the end");
        assert!(w.pieces(usize::MAX, 2).is_err(), "overflow");
        assert_eq!(w.pieces(0x30, 0).expect("empty").count(), 0);
    }

    #[test]
    fn writes_merge_per_frame() {
        let mut ww = WindowWrites::default();
        ww.note(5, 10, 20);
        ww.note(6, 0, 4);
        ww.note(5, 2, 12);
        ww.note(5, 30, 31);
        assert_eq!(ww.frames().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(ww.take().collect::<Vec<_>>(), vec![(5, 2, 31), (6, 0, 4)]);
        assert_eq!(ww.frames().count(), 0);
    }
}
