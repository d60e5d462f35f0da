//! Saved lab states: a booted lab, saved by QEMU, restored in about a second.
//!
//! A state is valid only for the same QEMU version and command line, hypervisor
//! and dom0 image, so it is stored under a key over all of them
//! (`target/xenlab/states/<flavour>-<key>.state`, with a `.json` beside it that
//! records its size). A state whose file does not match its record is damaged:
//! it is deleted and the lab boots cold.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::qmp::Qmp;

/// Bump when the way a lab is booted changes in a way the key cannot see.
const FORMAT: &str = "xenlab-state-v1";

/// What we record next to a state file.
#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    size: u64,
    /// The inputs of the key, for people reading the file.
    inputs: Vec<String>,
}

/// The saved states of the labs.
pub struct SavedStates {
    dir: PathBuf,
}

/// What a lookup found.
pub enum Lookup {
    /// A state for this key, whole.
    Found(PathBuf),
    /// No state for this key.
    Missing,
    /// A state for this key that is damaged (deleted now); the reason.
    Damaged(String),
}

/// A key over everything that makes a saved state invalid.
pub fn key(inputs: &[String]) -> String {
    let mut text = String::from(FORMAT);
    for i in inputs {
        text.push('\n');
        text.push_str(i);
    }
    format!("{:016x}", super::fnv1a(text.as_bytes()))
}

impl SavedStates {
    pub fn new(dir: PathBuf) -> Self {
        SavedStates { dir }
    }

    fn paths(&self, flavour: &str, key: &str) -> (PathBuf, PathBuf) {
        // Not `with_extension`: a flavour may have dots ("4.20").
        let base = format!("{flavour}-{key}");
        (
            self.dir.join(format!("{base}.state")),
            self.dir.join(format!("{base}.json")),
        )
    }

    /// Finds the state for `key`.
    pub fn lookup(&self, flavour: &str, key: &str) -> Lookup {
        let (state, record) = self.paths(flavour, key);
        let size = std::fs::metadata(&state).map(|m| m.len()).ok();
        let rec: Option<Record> = std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        match (size, rec) {
            (None, _) => Lookup::Missing,
            (Some(size), Some(r)) if r.size == size && r.key == key => {
                // Marks it used: pruning keeps the most recently used states.
                if let Ok(f) = std::fs::File::options().write(true).open(&state) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                Lookup::Found(state)
            }
            (Some(size), r) => {
                let why = match r {
                    Some(r) => format!(
                        "{} has {size} bytes, {} were saved (truncated or overwritten)",
                        state.display(),
                        r.size
                    ),
                    None => format!("{} has no record of a finished save", state.display()),
                };
                self.remove(flavour, key);
                Lookup::Damaged(why)
            }
        }
    }

    /// Deletes the state for `key`.
    pub fn remove(&self, flavour: &str, key: &str) {
        let (state, record) = self.paths(flavour, key);
        let _ = std::fs::remove_file(state);
        let _ = std::fs::remove_file(record);
    }

    /// Saves the stopped-or-running lab behind `qmp` as the state for `key`,
    /// then lets it run on. Older states of the same flavour are deleted.
    pub fn save(&self, qmp: &mut Qmp, flavour: &str, key: &str, inputs: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (state, record) = self.paths(flavour, key);
        let tmp = PathBuf::from(format!("{}.tmp", state.display()));
        let _ = std::fs::remove_file(&tmp);
        qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 100u64 << 30 }),
        )?;
        qmp.execute("stop", json!({}))?;
        let uri = format!("exec:cat > {}", shell_quote(&tmp));
        let saved = qmp
            .execute("migrate", json!({ "uri": uri }))
            .and_then(|_| qmp.wait_migration(Duration::from_secs(120)));
        // Run on whatever happened to the save.
        qmp.execute("cont", json!({}))?;
        saved.context("saving the lab's state")?;
        let size = std::fs::metadata(&tmp)?.len();
        std::fs::rename(&tmp, &state)?;
        let rec = Record {
            key: key.to_string(),
            size,
            inputs: inputs.to_vec(),
        };
        std::fs::write(&record, serde_json::to_string_pretty(&rec)?)?;
        self.prune(flavour, key);
        Ok(())
    }

    /// Keeps `keep` and the most recently saved or restored other state of
    /// `flavour` (two configurations in use at once, e.g. a test's own lab, do
    /// not evict each other); deletes the rest.
    fn prune(&self, flavour: &str, keep: &str) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut others: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name
                    .strip_prefix(&format!("{flavour}-"))?
                    .strip_suffix(".state")?
                    .to_string();
                let mtime = e.metadata().and_then(|m| m.modified()).ok()?;
                (key != keep).then_some((mtime, key))
            })
            .collect();
        others.sort();
        others.pop();
        for (_, key) in others {
            self.remove(flavour, &key);
        }
    }
}

/// `exec:` migration URIs go through /bin/sh.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

/// The `-incoming` argument that loads `state`.
pub fn incoming_uri(state: &Path) -> String {
    format!("exec:cat {}", shell_quote(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_any_input() {
        let a = key(&["qemu 10".into(), "xen abc".into()]);
        assert_eq!(a, key(&["qemu 10".into(), "xen abc".into()]));
        assert_ne!(a, key(&["qemu 10".into(), "xen abd".into()]));
        assert_ne!(a, key(&["qemu 10xen abc".into()]));
    }

    #[test]
    fn flavours_with_dots_keep_their_whole_name() {
        let s = SavedStates::new(PathBuf::from("/s"));
        let (state, record) = s.paths("4.20", "k1");
        assert_eq!(state, Path::new("/s/4.20-k1.state"));
        assert_eq!(record, Path::new("/s/4.20-k1.json"));
        assert_ne!(s.paths("4.21", "k1").0, state);
    }

    #[test]
    fn a_state_without_a_matching_record_is_damaged_and_deleted() {
        let dir = std::env::temp_dir().join(format!("xenlab-saved-{}", std::process::id()));
        let s = SavedStates::new(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        let (state, record) = s.paths("stock", "k1");
        assert!(matches!(s.lookup("stock", "k1"), Lookup::Missing));

        std::fs::write(&state, vec![0u8; 100]).unwrap();
        let rec = Record {
            key: "k1".into(),
            size: 100,
            inputs: vec![],
        };
        std::fs::write(&record, serde_json::to_string(&rec).unwrap()).unwrap();
        assert!(matches!(s.lookup("stock", "k1"), Lookup::Found(_)));

        std::fs::write(&state, vec![0u8; 60]).unwrap(); // truncated
        match s.lookup("stock", "k1") {
            Lookup::Damaged(why) => assert!(why.contains("60 bytes, 100 were saved"), "{why}"),
            _ => panic!("truncation not detected"),
        }
        assert!(!state.exists() && !record.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
