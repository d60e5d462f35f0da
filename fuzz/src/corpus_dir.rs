//! The campaign's `corpus/` directory: one file per corpus entry, named by
//! its content hash, written atomically after the entry joins the corpus.
//!
//! LibAFL's on-disk corpora drop an entry's bytes once its file is written
//! and read them back when it is scheduled. Their lock files count writers,
//! and a campaign killed between a lock and its file (or a `--jobs` client
//! that dies there) leaves a lock that makes the next writer of that entry
//! skip the file: the entry is then lost, and the read fails with ENOENT.
//! Here the corpus lives in memory and every file is written whole, through
//! a temporary name that is this process's own, so a kill at any point
//! leaves the previous state or the new one.

use std::path::{Path, PathBuf};

use libafl::corpus::{Corpus, CorpusId};
use libafl::inputs::{BytesInput, HasMutatorBytes, Input};

/// Persists the entries of an in-memory corpus into one directory.
#[derive(Debug)]
pub struct CorpusDir {
    dir: PathBuf,
    /// Entries `0..saved` of the corpus have their files.
    saved: usize,
}

impl CorpusDir {
    /// The directory `dir`, which must exist.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            saved: 0,
        }
    }

    /// The inputs the directory holds, in file-name order (files whose names
    /// start with a dot are LibAFL's or temporary and are skipped).
    pub fn inputs(&self) -> Vec<BytesInput> {
        read_inputs(&self.dir)
    }

    /// Writes the files of the entries added to `corpus` since the last
    /// call; an entry whose file exists (a resumed one) is not rewritten.
    pub fn save_new<C: Corpus<BytesInput>>(&mut self, corpus: &C) -> std::io::Result<()> {
        let count = corpus.count_all();
        while self.saved < count {
            let id = CorpusId(self.saved);
            if let Ok(cell) = corpus.get_from_all(id) {
                if let Some(input) = cell.borrow().input() {
                    let path = self.dir.join(input.generate_name(None));
                    if !path.exists() {
                        write_atomic(&path, input.mutator_bytes())?;
                    }
                }
            }
            self.saved += 1;
        }
        Ok(())
    }
}

/// The inputs in `dir` (see [`CorpusDir::inputs`]); none if it is unreadable.
pub fn read_inputs(dir: &Path) -> Vec<BytesInput> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".metadata"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(BytesInput::new)
        .collect()
}

/// Writes `bytes` to `path` through `.NAME.PID.tmp` and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fresh_tmp_dir;
    use libafl::corpus::{InMemoryCorpus, Testcase};

    #[test]
    fn saves_each_new_entry_once_and_reads_them_back() {
        let d = fresh_tmp_dir("corpus-save");
        let mut corpus = InMemoryCorpus::<BytesInput>::new();
        let mut cd = CorpusDir::new(&d);
        corpus
            .add(Testcase::new(BytesInput::new(b"one".to_vec())))
            .expect("add");
        cd.save_new(&corpus).expect("save");
        corpus
            .add(Testcase::new(BytesInput::new(b"two".to_vec())))
            .expect("add");
        cd.save_new(&corpus).expect("save");
        cd.save_new(&corpus).expect("save again");
        let mut got: Vec<Vec<u8>> = cd
            .inputs()
            .iter()
            .map(|i| i.mutator_bytes().to_vec())
            .collect();
        got.sort();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// What a campaign killed inside LibAFL's on-disk corpus left: a lock
    /// file for an entry whose file was never renamed into place. The entry
    /// is written when it is found again, and the leftovers are not inputs.
    #[test]
    fn a_killed_writers_leftovers_do_not_stop_the_entry_being_written() {
        let d = fresh_tmp_dir("corpus-leftover");
        let input = BytesInput::new(b"found again".to_vec());
        let name = input.generate_name(None);
        std::fs::write(d.join(format!(".{name}")), "1").expect("lock");
        std::fs::write(d.join(format!(".{name}.tmp")), b"found ag").expect("tmp");
        let mut cd = CorpusDir::new(&d);
        assert!(cd.inputs().is_empty());
        let mut corpus = InMemoryCorpus::<BytesInput>::new();
        corpus.add(Testcase::new(input)).expect("add");
        cd.save_new(&corpus).expect("save");
        assert_eq!(
            std::fs::read(d.join(&name)).expect("entry file"),
            b"found again"
        );
        assert_eq!(cd.inputs().len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
