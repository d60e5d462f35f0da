//! Covered blocks as an lcov tracefile (`lcov.info`): every instruction of
//! a block is mapped to its source line through the image's DWARF line
//! table; a line counts as hit when one of its blocks was reached.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use xenprobe::vmi::{SourceLine, Symbols};

use crate::blocks::{self, Block, Function};

/// Where each block's code comes from in the sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineMap {
    /// Per block (coverage map index): the (file, line) pairs of its instructions.
    block_lines: Vec<Vec<(usize, u32)>>,
    /// Source files (index into this from `block_lines`).
    files: Vec<String>,
    /// Per function: name, file, first line and its blocks.
    funcs: Vec<(String, usize, u32, Vec<usize>)>,
}

/// Errors building the line map.
#[derive(Debug, thiserror::Error)]
pub enum LcovError {
    /// Reading the image failed.
    #[error(transparent)]
    Blocks(#[from] blocks::BlocksError),
    /// The image's symbols or DWARF could not be read.
    #[error(transparent)]
    Symbols(#[from] xenprobe::vmi::Error),
}

impl LineMap {
    /// Maps `blocks` (sorted by address, as the session instruments them) of
    /// the functions `funcs` of `image` to source lines.
    pub fn build(image: &Path, funcs: &[Function], blocks: &[Block]) -> Result<Self, LcovError> {
        let elf = std::fs::read(image).map_err(|source| blocks::BlocksError::Io {
            path: image.display().to_string(),
            source,
        })?;
        let syms = Symbols::load(image)?;
        let code = funcs
            .iter()
            .map(|f| Ok((f.clone(), blocks::code_bytes(&elf, f.addr, f.size)?)))
            .collect::<Result<Vec<_>, blocks::BlocksError>>()?;
        Ok(Self::build_with(&code, blocks, |a| syms.line(a)))
    }

    /// Maps `blocks` (sorted by address) of the functions `funcs` (with
    /// their code) to source lines by `line` (address -> file and line).
    pub fn build_with(
        funcs: &[(Function, Vec<u8>)],
        blocks: &[Block],
        line: impl Fn(u64) -> Option<SourceLine>,
    ) -> Self {
        let mut map = LineMap {
            block_lines: vec![Vec::new(); blocks.len()],
            ..Default::default()
        };
        let mut file_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut file_id = |f: String, files: &mut Vec<String>| -> usize {
            *file_ids.entry(f.clone()).or_insert_with(|| {
                files.push(f);
                files.len() - 1
            })
        };
        for (f, code) in funcs {
            let end = f.addr + f.size;
            let first = blocks.partition_point(|b| b.addr < f.addr);
            let last = blocks.partition_point(|b| b.addr < end);
            let mut mine = Vec::new();
            for i in first..last {
                let start = blocks[i].addr;
                let stop = blocks.get(i + 1).map_or(end, |b| b.addr.min(end));
                let off = (start - f.addr) as usize;
                let len = (stop - start) as usize;
                let Some(bytes) = code.get(off..off + len) else {
                    continue;
                };
                let mut seen = BTreeSet::new();
                for insn in blocks::instructions(bytes, start) {
                    if let Some(l) = line(insn.ip()) {
                        if l.line > 0 && seen.insert((l.file.clone(), l.line)) {
                            let id = file_id(l.file, &mut map.files);
                            map.block_lines[i].push((id, l.line));
                        }
                    }
                }
                mine.push(i);
            }
            if let Some(l) = line(f.addr) {
                let id = file_id(l.file, &mut map.files);
                map.funcs.push((f.name.clone(), id, l.line, mine));
            }
        }
        map
    }

    /// Number of source lines that hold instrumented code.
    pub fn lines(&self) -> usize {
        self.block_lines
            .iter()
            .flatten()
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The tracefile; `covered(i)` tells whether block `i` was reached.
    pub fn render(&self, test_name: &str, covered: impl Fn(usize) -> bool) -> String {
        // file -> line -> hit
        let mut per_file: BTreeMap<usize, BTreeMap<u32, bool>> = BTreeMap::new();
        for (i, lines) in self.block_lines.iter().enumerate() {
            let hit = covered(i);
            for &(f, l) in lines {
                *per_file.entry(f).or_default().entry(l).or_insert(false) |= hit;
            }
        }
        let mut funcs_per_file: BTreeMap<usize, Vec<(&str, u32, bool)>> = BTreeMap::new();
        for (name, f, line, blocks) in &self.funcs {
            let hit = blocks.iter().any(|&b| covered(b));
            funcs_per_file
                .entry(*f)
                .or_default()
                .push((name, *line, hit));
            per_file.entry(*f).or_default();
        }
        let mut o = String::new();
        for (f, lines) in per_file {
            let _ = writeln!(o, "TN:{test_name}");
            let Some(file) = self.files.get(f) else {
                continue;
            };
            let _ = writeln!(o, "SF:{file}");
            let funcs = funcs_per_file.remove(&f).unwrap_or_default();
            for (name, line, _) in &funcs {
                let _ = writeln!(o, "FN:{line},{name}");
            }
            for (name, _, hit) in &funcs {
                let _ = writeln!(o, "FNDA:{},{name}", u8::from(*hit));
            }
            let _ = writeln!(o, "FNF:{}", funcs.len());
            let _ = writeln!(o, "FNH:{}", funcs.iter().filter(|f| f.2).count());
            for (l, hit) in &lines {
                let _ = writeln!(o, "DA:{l},{}", u8::from(*hit));
            }
            let _ = writeln!(o, "LF:{}", lines.len());
            let _ = writeln!(o, "LH:{}", lines.values().filter(|h| **h).count());
            o.push_str("end_of_record\n");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LineMap {
        LineMap {
            block_lines: vec![vec![(0, 10), (0, 11)], vec![(0, 11), (0, 12)], vec![(1, 3)]],
            files: vec!["/src/a.rs".into(), "/src/b.rs".into()],
            funcs: vec![
                ("fa".into(), 0, 10, vec![0, 1]),
                ("fb".into(), 1, 3, vec![2]),
            ],
        }
    }

    #[test]
    fn a_line_is_hit_when_one_of_its_blocks_is() {
        let t = sample().render("x", |i| i == 0);
        let a = t.split("end_of_record").next().expect("first record");
        assert!(a.contains("SF:/src/a.rs\n"));
        assert!(a.contains("DA:10,1\nDA:11,1\nDA:12,0\n"));
        assert!(a.contains("LF:3\nLH:2\n"));
        assert!(a.contains("FN:10,fa\nFNDA:1,fa\nFNF:1\nFNH:1\n"));
        assert!(t.contains("SF:/src/b.rs\nFN:3,fb\nFNDA:0,fb\nFNF:1\nFNH:0\nDA:3,0\nLF:1\nLH:0\n"));
        assert_eq!(t.matches("end_of_record").count(), 2);
        assert_eq!(sample().lines(), 4);
    }

    #[test]
    fn maps_this_test_binary() {
        // The test binary has DWARF line tables: its own functions map to lines.
        let exe = std::env::current_exe().expect("exe");
        let elf = std::fs::read(&exe).expect("read");
        let funcs = blocks::select_functions(&elf, &["lcov5tests6sample".into()]).expect("funcs");
        if funcs.is_empty() {
            panic!("no function lcov::tests::sample in the test binary");
        }
        let mut blocks = Vec::new();
        for f in &funcs {
            let code = blocks::code_bytes(&elf, f.addr, f.size).expect("code");
            blocks.extend(blocks::blocks_of(&code, f.addr));
        }
        let map = LineMap::build(&exe, &funcs, &blocks).expect("map");
        let t = map.render("self", |_| true);
        assert!(t.contains("lcov.rs"), "{t}");
        assert!(map.lines() > 0);
    }
}
