//! Serializable views of guest state for snapshot assertions (`insta`).
//!
//! Every view is stable from one boot of the same image to the next: values
//! that change between boots are replaced by `[redacted: WHY]`, and nothing
//! that moves when the image is rebuilt is shown as an address:
//!
//! - registers: a PV guest's `cr3` (a machine address);
//! - backtraces and memory: functions and variables by symbol and offset
//!   (Rust names without their hash), source files relative to their crate (`known/src/main.rs`), no addresses;
//! - console: the lines as printed (the sample guests print the same on every
//!   boot); redact guest-specific values with insta's own redactions.

use std::fmt::Write as _;

use anyhow::Result;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{Mode, Session};
use crate::vmi::Registers;

/// The registers of vCPU 0, in a fixed order, as hex strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegsView(pub Vec<(&'static str, String)>);

impl RegsView {
    /// The view of `r` for a guest in `mode` (with its redactions).
    pub fn new(r: &Registers, mode: Mode) -> Self {
        let hex = |v: u64| format!("{v:#x}");
        let mut v = vec![];
        // cr2 (the last page-fault address) is not part of the view.
        for (n, x) in r.named().into_iter().filter(|(n, _)| *n != "cr2") {
            v.push((n, hex(x)));
        }
        v.push(("cs", hex(r.cs.selector.into())));
        v.push(("ss", hex(r.ss.selector.into())));
        if mode == Mode::Pv {
            for (n, val) in &mut v {
                if *n == "cr3" {
                    *val = "[redacted: PV cr3 is a machine address]".into();
                }
            }
        }
        RegsView(v)
    }

    /// One register's shown value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Serialize for RegsView {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A memory region as a hex dump (offsets from its symbol).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemoryView {
    /// The symbol the region starts at.
    pub symbol: String,
    /// Its length in bytes.
    pub len: usize,
    /// `OFFSET  HEX BYTES  |ASCII|`, 16 bytes a line.
    pub dump: Vec<String>,
}

impl MemoryView {
    /// The view of `bytes` read at `symbol`.
    pub fn new(symbol: &str, bytes: &[u8]) -> Self {
        let dump = bytes
            .chunks(16)
            .enumerate()
            .map(|(i, c)| {
                let mut l = format!("{:04x} ", i * 16);
                for b in c {
                    let _ = write!(l, " {b:02x}");
                }
                l.push_str(&"   ".repeat(16 - c.len()));
                let ascii: String = c
                    .iter()
                    .map(|&b| {
                        if (0x20..0x7f).contains(&b) {
                            b as char
                        } else {
                            '.'
                        }
                    })
                    .collect();
                let _ = write!(l, "  |{ascii}|");
                l
            })
            .collect();
        MemoryView {
            symbol: symbol.to_string(),
            len: bytes.len(),
            dump,
        }
    }
}

/// The console output of the guest since it booted, line by line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsoleView {
    /// The lines (without line ends).
    pub lines: Vec<String>,
}

/// One frame of a backtrace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    /// The function (`?` when no symbol covers the address).
    pub function: String,
    /// Offset into it.
    pub offset: String,
    /// `crate/src/file.rs:LINE`, when the image has line tables.
    pub line: Option<String>,
}

/// A Rust legacy-mangled name as its path without the hash
/// (`_ZN11xenprobe_rt4boot3run17h0123456789abcdefE` -> `xenprobe_rt::boot::run`:
/// the hash changes with the compiler); other names as they are.
pub fn demangle(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN") else {
        return name.to_string();
    };
    let mut parts = vec![];
    while let Some(d) = rest.find(|c: char| !c.is_ascii_digit()).filter(|&d| d > 0) {
        let Ok(n) = rest[..d].parse::<usize>() else {
            break;
        };
        let Some(part) = rest.get(d..).and_then(|r| r.get(..n)) else {
            return name.to_string();
        };
        parts.push(part);
        rest = &rest[d + n..];
    }
    if rest != "E" || parts.is_empty() {
        return name.to_string();
    }
    if parts.len() > 1
        && parts[parts.len() - 1].len() == 17
        && parts[parts.len() - 1].starts_with('h')
    {
        parts.pop();
    }
    parts.join("::")
}

/// A source path relative to its crate: the component before the last
/// `src` on (`/work/x/guests/known/src/main.rs` -> `known/src/main.rs`).
pub fn crate_relative(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.iter().rposition(|p| *p == "src") {
        Some(i) if i > 0 => parts[i - 1..].join("/"),
        _ => parts.last().copied().unwrap_or(path).to_string(),
    }
}

impl Session {
    /// The registers of vCPU 0 as a stable view.
    pub fn regs_view(&self) -> Result<RegsView> {
        Ok(RegsView::new(&self.regs()?, self.mode()))
    }

    /// `len` bytes at `symbol` as a hex dump.
    pub fn memory_view(&mut self, symbol: &str, len: usize) -> Result<MemoryView> {
        let bytes = self.read_bytes(symbol, len)?;
        Ok(MemoryView::new(symbol, &bytes))
    }

    /// The console output since boot.
    pub fn console_view(&self) -> ConsoleView {
        ConsoleView {
            lines: self.console().lines().map(str::to_string).collect(),
        }
    }

    /// The call stack of vCPU 0 by frame pointers (the sample guests keep
    /// them): the current function, then its callers. At a function's first
    /// instruction the caller comes from the return address on the stack.
    pub fn backtrace(&mut self) -> Result<Vec<Frame>> {
        let r = self.regs()?;
        let mut pcs = vec![r.rip];
        let at_entry = self
            .dom
            .symbols()
            .ok()
            .and_then(|s| s.symbolize(r.rip))
            .is_some_and(|(_, off)| off == 0);
        if at_entry {
            let mut b = [0u8; 8];
            self.dom.read_virt(r.rsp, &mut b)?;
            pcs.push(u64::from_le_bytes(b));
        }
        let callers = self.dom.frame_pointer_walk(0, r.rbp, 64 - pcs.len());
        pcs.extend(callers);
        let syms = self.dom.symbols()?;
        Ok(pcs
            .into_iter()
            .enumerate()
            .map(|(i, pc)| {
                // A return address points after the call: look up the call.
                let at = if i == 0 { pc } else { pc.saturating_sub(1) };
                let (function, offset) = match syms.symbolize(at) {
                    Some((s, _)) => (demangle(&s.name), format!("{:#x}", pc - s.addr)),
                    None => ("?".into(), "?".into()),
                };
                Frame {
                    function,
                    offset,
                    line: syms
                        .line(at)
                        .map(|l| format!("{}:{}", crate_relative(&l.file), l.line)),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_paths_become_crate_relative() {
        assert_eq!(
            crate_relative("/work/wt/x/guests/known/src/main.rs"),
            "known/src/main.rs"
        );
        assert_eq!(
            crate_relative("/rustc/abc/library/core/src/fmt/mod.rs"),
            "core/src/fmt/mod.rs"
        );
        assert_eq!(crate_relative("main.rs"), "main.rs");
    }

    #[test]
    fn legacy_rust_names_lose_their_hash() {
        assert_eq!(
            demangle("_ZN11xenprobe_rt4boot3run17h8a7c3c6da44ba82dE"),
            "xenprobe_rt::boot::run"
        );
        assert_eq!(demangle("known_tick"), "known_tick");
        assert_eq!(demangle("_ZN3foo"), "_ZN3foo");
    }

    #[test]
    fn pv_cr3_is_redacted_and_others_are_not() {
        let r = Registers {
            cr3: 0x1234000,
            rip: 0x102010,
            ..Default::default()
        };
        let pv = RegsView::new(&r, Mode::Pv);
        assert!(pv.get("cr3").is_some_and(|v| v.starts_with("[redacted")));
        assert_eq!(pv.get("rip"), Some("0x102010"));
        assert_eq!(RegsView::new(&r, Mode::Pvh).get("cr3"), Some("0x1234000"));
    }

    #[test]
    fn memory_dump_lines() {
        let v = MemoryView::new("buf", b"xenprobe known buffer: 01");
        assert_eq!(v.len, 25);
        assert_eq!(
            v.dump[0],
            "0000  78 65 6e 70 72 6f 62 65 20 6b 6e 6f 77 6e 20 62  |xenprobe known b|"
        );
        assert!(v.dump[1].starts_with("0010  75 66 66 65 72 3a 20 30 31"));
        assert!(v.dump[1].ends_with("|uffer: 01|"));
    }
}
