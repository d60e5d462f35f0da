//! How a run ended, and the crash report saved with each crash (read from
//! the stopped guest: the sink's message, trap frame, backtrace, symbols).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use xenprobe::vmi::{self, Domain};

/// One frame of a backtrace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Code address.
    pub addr: u64,
    /// `symbol+0xoff`, if known.
    pub symbol: Option<String>,
    /// `file:line`, if known.
    pub line: Option<String>,
}

/// What the guest did wrong, with where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashReport {
    /// `panic`, `page-fault`, `divide-error`, ..., `triple-fault`, `hang`
    /// (from the ABI's sink `xenprobe_crash` and the domain state), or the
    /// name of a guest's own sink (`cg_crash`).
    pub kind: String,
    /// Deduplication key: the kind and the crash site.
    pub site: String,
    /// RIP of the faulting instruction (faults), of the crash sink (panics),
    /// or where the vCPU was spinning (hangs).
    pub rip: u64,
    /// Faulting data address (page faults), if known.
    pub fault_address: Option<u64>,
    /// The guest's own report line (`PANIC at ...`, `FAULT #PF ...`) passed
    /// to `xenprobe_crash`, printable text only; empty if none.
    pub message: String,
    /// Innermost first.
    pub backtrace: Vec<Frame>,
}

impl CrashReport {
    /// True for a timeout (the target did not reach its end).
    pub fn is_hang(&self) -> bool {
        self.kind == "hang"
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "kind: {}\nsite: {}\nrip: {:#x}\n",
            self.kind, self.site, self.rip
        );
        match self.fault_address {
            Some(a) => s += &format!("fault address: {a:#x}\n"),
            None => s += "fault address: -\n",
        }
        if !self.message.is_empty() {
            s += &format!("message: {}\n", self.message);
        }
        s += "backtrace:\n";
        for (i, f) in self.backtrace.iter().enumerate() {
            s += &format!(
                "  #{i} {:#x} {}{}\n",
                f.addr,
                f.symbol.as_deref().unwrap_or("?"),
                f.line
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            );
        }
        s
    }
}

/// How one execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the end point.
    Ok,
    /// Reached a crash sink, faulted, or shut down unexpectedly.
    Crash(CrashReport),
    /// Did not reach the end within the timeout.
    Hang(CrashReport),
}

/// The fuzz-target ABI's crash sink: its arguments are the runtime's crash
/// kind, detail and message (guests/README.md). Any other sink is a guest's
/// own, reported under its name.
pub const ABI_SINK: &str = xenprobe_abi::target::CRASH;

/// Longest message read from the ABI sink's arguments.
const MESSAGE_MAX: usize = 512;

/// Crash kind name from the ABI's `xenprobe_crash(kind, detail, ..)`
/// arguments.
pub use xenprobe_abi::target::crash_name as crash_kind;

/// A message from guest memory as printable text: NUL bytes dropped, tabs
/// and line breaks made spaces, other control bytes and invalid UTF-8
/// escaped as `\xNN`, surrounding blanks trimmed (empty: no message).
pub fn sanitize_message(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\0' => {}
                '\t' | '\n' | '\r' => out.push(' '),
                c if c.is_control() => out += &format!("\\x{:02x}", u32::from(c)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out += &format!("\\x{b:02x}");
        }
    }
    out.trim().to_string()
}

/// A sink argument in a crash site: decimal below 65536 (error codes read
/// as written), hexadecimal above (addresses, magic values).
pub fn sink_arg(v: u64) -> String {
    if v < 0x1_0000 {
        v.to_string()
    } else {
        format!("{v:#x}")
    }
}

/// The crash site of a guest's own sink: `NAME(ARG0)@CALLER`, with the
/// sink's first argument and where it was called from (the return address
/// as `function+0xoffset`, or the bare address without a symbol). Stable
/// across runs of one image; two calls with different codes, or from
/// different places, are different sites.
pub fn user_sink_site(sink: &str, arg0: u64, caller: &str) -> String {
    format!("{sink}({})@{caller}", sink_arg(arg0))
}

/// A `key=0x...` value in a guest report line.
pub fn hex_field(message: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}=0x");
    let start = message.find(&pat)? + pat.len();
    let digits: String = message[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&digits, 16).ok()
}

/// The `FILE:LINE:COL` of a `PANIC at FILE:LINE:COL: msg` line.
pub fn panic_location(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("PANIC at ")?;
    // FILE:LINE:COL ends at the first ": " after it.
    Some(rest.split(": ").next().unwrap_or(rest))
}

/// 64-bit FNV-1a (stable names for crash files).
pub use xenprobe_abi::fnv1a;

/// Symbol and line of a frame. Return addresses (every frame but the
/// first) are looked up at `addr - 1`: a call that never returns is often
/// the last instruction of its function.
fn symbolize(dom: &Domain, addr: u64, is_return: bool) -> Frame {
    let syms = dom.symbols().ok();
    let at = if is_return {
        addr.saturating_sub(1)
    } else {
        addr
    };
    Frame {
        addr,
        symbol: syms
            .and_then(|s| s.symbolize(at))
            .map(|(s, off)| format!("{}+{:#x}", s.name, off + (addr - at))),
        line: syms
            .and_then(|s| s.line(at))
            .map(|l| format!("{}:{}", l.file, l.line)),
    }
}

/// Symbolizes the frames of crash reports, keeping what it found: a
/// campaign's crashes mostly repeat a few sites, and a frame's symbol and
/// DWARF line cost more than the rest of its report. Valid for one set of
/// symbols: [`Symbolizer::forget`] when the guest's symbols change (a
/// reboot under KASLR).
#[derive(Debug, Default)]
pub struct Symbolizer {
    known: FxHashMap<(u64, bool), Frame>,
}

/// Frames kept at most (a guest that crashes everywhere does not grow it
/// without bound).
const SYMBOLIZER_FRAMES: usize = 4096;

impl Symbolizer {
    /// The frame at `addr` (`is_return`: a return address, looked up at
    /// `addr - 1`).
    pub fn frame(&mut self, dom: &Domain, addr: u64, is_return: bool) -> Frame {
        self.remembered(addr, is_return, || symbolize(dom, addr, is_return))
    }

    /// The kept frame of (`addr`, `is_return`), else `find`'s, kept.
    fn remembered(&mut self, addr: u64, is_return: bool, find: impl FnOnce() -> Frame) -> Frame {
        if let Some(f) = self.known.get(&(addr, is_return)) {
            return f.clone();
        }
        let f = find();
        if self.known.len() >= SYMBOLIZER_FRAMES {
            self.known.clear();
        }
        self.known.insert((addr, is_return), f.clone());
        f
    }

    /// The frames of a backtrace: the first address is where the code
    /// stopped, the others are return addresses.
    fn frames(&mut self, dom: &Domain, addrs: Vec<u64>) -> Vec<Frame> {
        addrs
            .into_iter()
            .enumerate()
            .map(|(i, a)| self.frame(dom, a, i > 0))
            .collect()
    }

    /// Forgets every frame (the guest's symbols changed).
    pub fn forget(&mut self) {
        self.known.clear();
    }
}

/// The registers a report reads at a stop: a sink's arguments, the frame.
struct StopRegs {
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rsp: u64,
    rbp: u64,
}

impl StopRegs {
    /// From the stop's vm_event when it carries them (no hypercall: a
    /// context read costs more than the rest of a report), else read.
    fn read(dom: &Domain, vcpu: u32) -> Result<Self, vmi::Error> {
        // The same fields of two register types.
        macro_rules! pick {
            ($r:expr) => {
                Self {
                    rdi: $r.rdi,
                    rsi: $r.rsi,
                    rdx: $r.rdx,
                    rcx: $r.rcx,
                    rsp: $r.rsp,
                    rbp: $r.rbp,
                }
            };
        }
        Ok(match dom.event_regs(vcpu) {
            Some(r) => pick!(r),
            None => {
                let r = dom.regs(vcpu)?;
                pick!(r)
            }
        })
    }
}

/// The report of a guest stopped at the entry of crash sink `name` (at
/// `sink`). The ABI's [`ABI_SINK`]: its arguments (kind, detail, message),
/// the faulting RIP of a fault's trap frame, a backtrace by frame pointers.
/// Any other sink: see [`user_sink_report`].
pub fn sink_report(
    dom: &mut Domain,
    syms: &mut Symbolizer,
    vcpu: u32,
    sink: u64,
    name: &str,
) -> Result<CrashReport, vmi::Error> {
    if name != ABI_SINK {
        return user_sink_report(dom, syms, vcpu, sink, name);
    }
    let regs = StopRegs::read(dom, vcpu)?;
    let len = (regs.rcx as usize).min(MESSAGE_MAX);
    let mut msg = vec![0u8; len];
    let message = match dom.read_virt_on(vcpu, regs.rdx, &mut msg) {
        Ok(()) => sanitize_message(&msg),
        Err(_) => String::new(),
    };
    let kind = crash_kind(regs.rdi, regs.rsi).to_string();
    let mut addrs = Vec::new();
    let (rip, site) = match hex_field(&message, "rip") {
        Some(fault_rip) if regs.rdi != 1 => {
            // A fault: the trap frame's RIP and RBP are the faulting code's.
            addrs.push(fault_rip);
            let rbp = hex_field(&message, "rbp").unwrap_or(0);
            addrs.extend(dom.frame_pointer_walk(vcpu, rbp, 32));
            (fault_rip, format!("{kind}@{fault_rip:#x}"))
        }
        _ => {
            addrs.push(sink);
            let ret = dom.read_u64_on(vcpu, regs.rsp).unwrap_or(0);
            if ret != 0 {
                addrs.push(ret);
            }
            addrs.extend(dom.frame_pointer_walk(vcpu, regs.rbp, 32));
            let site = match panic_location(&message) {
                Some(loc) => format!("{kind}@{loc}"),
                None => format!("{kind}@{ret:#x}"),
            };
            (sink, site)
        }
    };
    let fault_address = (kind == "page-fault" || kind == "stack-overflow")
        .then(|| hex_field(&message, "cr2"))
        .flatten();
    Ok(CrashReport {
        kind,
        site,
        rip,
        fault_address,
        message,
        backtrace: syms.frames(dom, addrs),
    })
}

/// The report of a guest stopped at the entry of its own crash sink `name`
/// (not the ABI's): kind `name`, site [`user_sink_site`] (first argument,
/// caller), no message (the guest's arguments follow no known ABI), and the
/// backtrace from the sink through its caller.
fn user_sink_report(
    dom: &mut Domain,
    syms: &mut Symbolizer,
    vcpu: u32,
    sink: u64,
    name: &str,
) -> Result<CrashReport, vmi::Error> {
    let regs = StopRegs::read(dom, vcpu)?;
    let mut addrs = vec![sink];
    let ret = dom.read_u64_on(vcpu, regs.rsp).unwrap_or(0);
    if ret != 0 {
        addrs.push(ret);
    }
    // At the entry RBP is still the caller's frame.
    addrs.extend(dom.frame_pointer_walk(vcpu, regs.rbp, 32));
    let backtrace = syms.frames(dom, addrs);
    let caller = match backtrace.get(1) {
        Some(Frame {
            symbol: Some(s), ..
        }) if ret != 0 => s.clone(),
        _ => format!("{ret:#x}"),
    };
    Ok(CrashReport {
        kind: name.to_string(),
        site: user_sink_site(name, regs.rdi, &caller),
        rip: sink,
        fault_address: None,
        message: String::new(),
        backtrace,
    })
}

/// The report of a crash that stopped `vcpu` at `rip` outside the sinks (a
/// debug trap, a hang), deduplicated by function.
pub fn report_at(
    dom: &mut Domain,
    syms: &mut Symbolizer,
    kind: &str,
    vcpu: u32,
    rip: u64,
    message: String,
) -> Result<CrashReport, vmi::Error> {
    let rbp = StopRegs::read(dom, vcpu)?.rbp;
    let mut addrs = vec![rip];
    addrs.extend(dom.frame_pointer_walk(vcpu, rbp, 32));
    let func = syms
        .frame(dom, rip, false)
        .symbol
        .map(|s| s.split('+').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| format!("{rip:#x}"));
    Ok(CrashReport {
        kind: kind.into(),
        site: format!("{kind}@{func}"),
        rip,
        fault_address: None,
        message,
        backtrace: syms.frames(dom, addrs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_symbolizer_looks_each_frame_up_once_until_told_to_forget() {
        let mut s = Symbolizer::default();
        let mut lookups = 0;
        let mut look = |s: &mut Symbolizer, addr: u64, ret: bool| {
            s.remembered(addr, ret, || {
                lookups += 1;
                Frame {
                    addr,
                    symbol: Some(format!("f{lookups}")),
                    line: None,
                }
            })
        };
        let first = look(&mut s, 0x1000, false);
        assert_eq!(look(&mut s, 0x1000, false), first);
        // A return address is looked up at addr - 1: another frame.
        assert_ne!(look(&mut s, 0x1000, true).symbol, first.symbol);
        s.forget();
        assert_ne!(look(&mut s, 0x1000, false).symbol, first.symbol);
        for a in 0..SYMBOLIZER_FRAMES as u64 + 1 {
            look(&mut s, 0x2000 + a, false);
        }
        assert!(s.known.len() <= SYMBOLIZER_FRAMES, "bounded");
        assert_eq!(lookups, 3 + SYMBOLIZER_FRAMES + 1);
    }

    #[test]
    fn parses_guest_report_lines() {
        let m =
            "FAULT #PF vector=14 error=0x2 rip=0x102345 rsp=0x1ff000 rbp=0x1ff010 cr2=0xdead000";
        assert_eq!(hex_field(m, "rip"), Some(0x102345));
        assert_eq!(hex_field(m, "cr2"), Some(0xdead000));
        assert_eq!(hex_field(m, "rbx"), None);
        let p = "PANIC at tlv/src/main.rs:76:26: index out of bounds: the len is 4";
        assert_eq!(panic_location(p), Some("tlv/src/main.rs:76:26"));
        assert_eq!(panic_location("FAULT #DE"), None);
    }

    #[test]
    fn kinds_follow_the_abi() {
        assert_eq!(crash_kind(1, 0), "panic");
        assert_eq!(crash_kind(2, 0), "divide-error");
        assert_eq!(crash_kind(2, 14), "page-fault");
        assert_eq!(crash_kind(3, 14), "stack-overflow");
    }

    #[test]
    fn messages_are_printable_text_only() {
        // A user's sink read as the ABI's: rdx/rcx pointed at zeroes.
        assert_eq!(sanitize_message(&[0u8; 75]), "");
        assert_eq!(
            sanitize_message(b"PANIC at a.rs:1:2: x\0\0"),
            "PANIC at a.rs:1:2: x"
        );
        assert_eq!(sanitize_message(b"a\tb\r\nc\n"), "a b  c");
        assert_eq!(sanitize_message(b"\x01x\x7f"), "\\x01x\\x7f");
        assert_eq!(sanitize_message(b"ok \xff\xfe"), "ok \\xff\\xfe");
        assert_eq!(
            sanitize_message("d\u{e9}j\u{e0}".as_bytes()),
            "d\u{e9}j\u{e0}"
        );
        let fault = b"FAULT #PF vector=14 error=0x2 rip=0x102345 rsp=0x1 rbp=0x2 cr2=0x0";
        assert_eq!(hex_field(&sanitize_message(fault), "rip"), Some(0x102345));
    }

    #[test]
    fn a_user_sink_is_named_with_its_argument_and_caller() {
        assert_eq!(
            user_sink_site("cg_crash", 9, "cg_rec_opt+0x2e"),
            "cg_crash(9)@cg_rec_opt+0x2e"
        );
        assert_eq!(
            user_sink_site("cg_crash", 1, "0x101234"),
            "cg_crash(1)@0x101234"
        );
        assert_ne!(
            user_sink_site("cg_crash", 1, "f+0x10"),
            user_sink_site("cg_crash", 9, "f+0x10")
        );
        assert_eq!(sink_arg(65_535), "65535");
        assert_eq!(sink_arg(0xdead_beef), "0xdeadbeef");
        assert_eq!(sink_arg(u64::MAX), "0xffffffffffffffff");
    }

    #[test]
    fn renders_every_field() {
        let r = CrashReport {
            kind: "panic".into(),
            site: "panic@a.rs:1:2".into(),
            rip: 0x10,
            fault_address: None,
            message: "PANIC at a.rs:1:2: x".into(),
            backtrace: vec![Frame {
                addr: 0x10,
                symbol: Some("f+0x0".into()),
                line: None,
            }],
        };
        let t = r.render();
        assert!(t.contains("kind: panic\nsite: panic@a.rs:1:2\n"));
        assert!(t.contains("#0 0x10 f+0x0"));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
