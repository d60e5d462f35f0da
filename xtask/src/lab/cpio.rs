//! A tiny writer for the `newc` cpio format that Linux unpacks as an initramfs.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// One entry of the archive.
enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// An initramfs being assembled in memory; parent directories appear by themselves.
#[derive(Default)]
pub struct Archive {
    nodes: BTreeMap<PathBuf, Node>,
}

impl Archive {
    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: impl AsRef<Path>) {
        let mut cur = PathBuf::new();
        for c in path.as_ref().components() {
            if let Component::Normal(n) = c {
                cur.push(n);
                self.nodes.entry(cur.clone()).or_insert(Node::Dir);
            }
        }
    }

    /// Adds a file with `data` and permission bits `mode`.
    pub fn file(&mut self, path: impl AsRef<Path>, data: Vec<u8>, mode: u32) {
        let p = rel(path.as_ref());
        if let Some(parent) = p.parent() {
            self.dir(parent);
        }
        self.nodes.insert(p, Node::File { data, mode });
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: impl AsRef<Path>, target: &str) {
        let p = rel(path.as_ref());
        if let Some(parent) = p.parent() {
            self.dir(parent);
        }
        self.nodes.insert(p, Node::Symlink(target.to_string()));
    }

    /// Whether `path` is already in the archive.
    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.nodes.contains_key(&rel(path.as_ref()))
    }

    /// Serialises the archive (uncompressed: Linux unpacks it faster than
    /// gzip under emulation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let name = path.to_string_lossy();
            let (mode, data): (u32, &[u8]) = match node {
                Node::Dir => (0o040755, &[]),
                Node::File { data, mode } => (0o100000 | mode, data),
                Node::Symlink(t) => (0o120777, t.as_bytes()),
            };
            header(&mut out, ino as u32 + 1, mode, data.len() as u32, &name);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 0, "TRAILER!!!");
        out
    }
}

fn rel(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: u32, name: &str) {
    let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_newc() {
        let mut a = Archive::default();
        a.file("/bin/hello", b"hi".to_vec(), 0o755);
        a.symlink("/bin/sh", "hello");
        let bytes = a.to_bytes();
        // Entries in path order: bin, bin/hello, bin/sh, trailer.
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let names: Vec<&str> = ["bin\0", "bin/hello\0", "bin/sh\0", "TRAILER!!!\0"].to_vec();
        let mut pos = 0;
        for n in names {
            let at = text[pos..].find(n).expect(n) + pos;
            assert!(at > pos || pos == 0);
            pos = at + n.len();
        }
        // The file's mode field (second field) is a regular file 0755.
        let hello = text.find("bin/hello\0").unwrap();
        let hdr = &text[hello - 110..hello];
        assert_eq!(&hdr[14..22], "000081ed");
        assert_eq!(&hdr[54..62], "00000002", "size field");
    }
}
