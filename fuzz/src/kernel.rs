//! Linux kernel targets: the kernel's own error paths as crash sinks (as
//! KF/x does), and the crash report read where the kernel stops.
//!
//! A run of kernel code crashes when the kernel is about to report it: an
//! oops through the page-fault path (`page_fault_oops`), a trap it cannot
//! fix up (`die`, `die_addr`: divide error, invalid opcode from `BUG()`,
//! general protection), `panic`, a stack-protector failure, and KASAN,
//! KMSAN and UBSAN reports when the kernel has them. The first of these
//! functions a run reaches stops it, at its first instruction: the
//! arguments still name the faulting context (`struct pt_regs`), so the
//! report carries the faulting instruction, not the reporting code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xenprobe::vmi::{self, Domain, Symbols};

use crate::blocks::{parse_range, Function};
use crate::report::CrashReport;

/// Longest function taken from a symbol map without sizes (a kallsyms
/// symbol runs to the next one).
const MAX_UNSIZED: u64 = 0x4000;

/// The functions of a kernel and its loaded modules that `patterns` select:
/// `module:NAME` (every function of module NAME), an exact symbol name, a
/// substring of one, or a range `0xSTART-0xEND` (one code region).
pub fn select_kernel_functions(syms: &Symbols, patterns: &[String]) -> Vec<Function> {
    let all: Vec<&vmi::Symbol> = syms.iter().filter(|s| s.is_function).collect();
    let mut out = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let hit = patterns.iter().any(|p| match p.strip_prefix("module:") {
            Some(m) => s.module.as_deref() == Some(m),
            None => parse_range(p).is_none() && (s.name == *p || s.name.contains(p.as_str())),
        });
        if !hit {
            continue;
        }
        let size = match s.size {
            0 => all
                .get(i + 1)
                .map_or(MAX_UNSIZED, |n| n.addr.saturating_sub(s.addr))
                .min(MAX_UNSIZED),
            n => n,
        };
        if size > 0 {
            out.push(Function {
                name: s.name.clone(),
                addr: s.addr,
                size,
            });
        }
    }
    crate::blocks::add_ranges(&mut out, patterns.iter());
    out
}

/// The selected functions with their code as the guest has it now (after
/// the kernel's own patching: alternatives, static calls, ftrace).
pub fn functions_in_guest(
    dom: &mut Domain,
    patterns: &[String],
) -> Result<Vec<(Function, Vec<u8>)>, vmi::Error> {
    let funcs = select_kernel_functions(dom.symbols()?, patterns);
    let mut out = Vec::with_capacity(funcs.len());
    for f in funcs {
        let mut code = vec![0u8; f.size as usize];
        dom.read_virt(f.addr, &mut code)?;
        out.push((f, code));
    }
    Ok(out)
}

/// KF/x's harness marker: `cpuid` with EAX = 0x13371337 starts and ends a
/// run (its extended form passes the input buffer in RSI, its size in ECX).
pub const KFX_MAGIC: u32 = 0x1337_1337;

/// How long a booting vCPU may run within [`SPIN_SPAN`] bytes of code
/// before [`SpinWatch`] calls it stuck.
pub const SPIN_FOR: Duration = Duration::from_secs(15);

/// The code span a spinning vCPU stays in.
pub const SPIN_SPAN: u64 = 64;

/// Tells a boot that spins in place from one that makes progress: in the
/// QEMU lab a booting kernel now and then takes an interrupt with
/// interrupts disabled, and a one-vCPU kernel then spins on a lock forever
/// (measured: vCPU 0 at `native_queued_spin_lock_slowpath+0x69` for the
/// whole boot timeout). A halted vCPU (an idle guest) does not count: its
/// run time stops.
#[derive(Debug, Default)]
pub struct SpinWatch {
    /// Where the current span began: (wall time, RIP, vCPU run time).
    since: Option<(Duration, u64, Duration)>,
}

impl SpinWatch {
    /// Feeds one sample of vCPU 0 (`wall`: time since the boot began).
    /// Returns the RIP it has spun at, once it has stayed within
    /// [`SPIN_SPAN`] bytes of it for [`SPIN_FOR`], running a quarter of
    /// that time at least (the lab's emulated CPUs take turns, so a
    /// spinning vCPU may get half of the wall time; a halted one gets
    /// next to none).
    pub fn sample(&mut self, wall: Duration, rip: u64, ran: Duration) -> Option<u64> {
        match self.since {
            Some((w0, r0, c0)) if rip.abs_diff(r0) < SPIN_SPAN => {
                let (dw, dc) = (wall.saturating_sub(w0), ran.saturating_sub(c0));
                (dw >= SPIN_FOR && dc.as_secs_f64() >= 0.25 * dw.as_secs_f64()).then_some(r0)
            }
            _ => {
                self.since = Some((wall, rip, ran));
                None
            }
        }
    }
}

/// How a kernel harness marks the start and the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `cpuid` with this leaf (HVM and PVH: a CPUID vm_event).
    Cpuid(u32),
    /// Breakpoints at the target's start and end symbols (any guest type;
    /// the module is found when the kernel loads it).
    Symbols,
}

/// Linux kernel code as the target of a session.
#[derive(Debug, Clone)]
pub struct KernelTarget {
    /// The kernel's symbols: its vmlinux (stripped or not), a `System.map`
    /// or a copy of `/proc/kallsyms`.
    pub symbols: PathBuf,
    /// Modules the harness runs in (`.ko` with DWARF), found by name in the
    /// guest's module list when the harness starts.
    pub modules: Vec<PathBuf>,
    /// How start and end are marked.
    pub marker: Marker,
    /// How long the guest may take to boot to the start marker.
    pub boot_timeout: Duration,
}

impl KernelTarget {
    /// The default coverage: every function of every module.
    pub fn default_cover(&self) -> Vec<String> {
        self.modules
            .iter()
            .map(|m| format!("module:{}", vmi::kernel::module_name(m)))
            .collect()
    }
}

/// A booted Linux guest left paused at its harness's start point by a
/// finished session, for the next session of the same target to take over
/// instead of booting it again (a boot takes seconds to minutes; taking
/// over, one snapshot). Kept in dom0's xenprobe state directory, so it goes
/// with the lab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// The domain.
    pub domid: u32,
    /// vCPU 0's RIP at the start point (past the start marker).
    pub start_rip: u64,
    /// The input buffer the marker named (address, size).
    pub buffer: Option<(u64, usize)>,
    /// The target it was booted for ([`KernelTarget::fingerprint`]).
    pub fingerprint: u64,
}

impl Parked {
    fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.parked.json"))
    }

    /// The record for domain `name` in the state directory `dir`, removed:
    /// a guest is taken over once.
    pub fn take(dir: &Path, name: &str) -> Option<Self> {
        let path = Self::path(dir, name);
        let text = std::fs::read_to_string(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        serde_json::from_str(&text).ok()
    }

    /// Records in the state directory `dir` that domain `name` is parked.
    pub fn save(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = Self::path(dir, name);
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

impl KernelTarget {
    /// What a booted guest depends on: the xl config's text, and the
    /// kernel's and modules' files (size and modification time).
    pub fn fingerprint(&self, cfg: &std::path::Path) -> u64 {
        let mut key = std::fs::read(cfg).unwrap_or_default();
        for f in std::iter::once(&self.symbols).chain(&self.modules) {
            let meta = std::fs::metadata(f).ok();
            let mtime = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            key.extend(format!("{}:{}:{mtime};", f.display(), meta.map_or(0, |m| m.len())).bytes());
        }
        key.extend(format!("{:?}", self.marker).bytes());
        crate::report::fnv1a(&key)
    }
}

/// How a kernel sink's arguments describe the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// `page_fault_oops(regs, error_code, address)`.
    PageFaultOops,
    /// `die(str, regs, err)`.
    Die,
    /// `die_addr(str, regs, err, gp_addr)`.
    DieAddr,
    /// `panic(fmt, ...)`.
    Panic,
    /// `__stack_chk_fail()`.
    StackProtector,
    /// `kasan_report(addr, size, is_write, ip)`.
    Kasan,
    /// `kmsan_report(...)`.
    Kmsan,
    /// `ubsan_prologue(loc, reason)` or an `__ubsan_handle_*` handler.
    Ubsan,
    /// `oops_begin()`: any other oops.
    OopsBegin,
}

/// How sink `name` (one of [`vmi::kernel::CRASH_FUNCTIONS`]) describes a
/// crash.
pub fn sink_kind(name: &str) -> Option<SinkKind> {
    Some(match name {
        "page_fault_oops" => SinkKind::PageFaultOops,
        "die_addr" => SinkKind::DieAddr,
        "die" => SinkKind::Die,
        "__stack_chk_fail" => SinkKind::StackProtector,
        "kasan_report" => SinkKind::Kasan,
        "kmsan_report" => SinkKind::Kmsan,
        "ubsan_prologue" => SinkKind::Ubsan,
        "panic" => SinkKind::Panic,
        "oops_begin" => SinkKind::OopsBegin,
        _ => return None,
    })
}

/// Offsets in x86-64 `struct pt_regs` (arch/x86/include/asm/ptrace.h).
mod pt_regs {
    pub const BP: usize = 4 * 8;
    pub const IP: usize = 16 * 8;
    pub const CS: usize = 17 * 8;
    pub const SP: usize = 19 * 8;
    pub const SIZE: usize = 21 * 8;
}

/// The interrupted context a `struct pt_regs` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrapFrame {
    /// Faulting instruction.
    pub ip: u64,
    /// Stack pointer at the fault.
    pub sp: u64,
    /// Frame pointer at the fault.
    pub bp: u64,
    /// Code segment (its low two bits: the privilege level).
    pub cs: u64,
}

impl TrapFrame {
    /// Decodes a `struct pt_regs` image.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let q = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            ip: q(pt_regs::IP)?,
            sp: q(pt_regs::SP)?,
            bp: q(pt_regs::BP)?,
            cs: q(pt_regs::CS)?,
        })
    }

    /// The fault happened in user mode (CPL 3).
    pub fn user_mode(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// The crash kind of a `die()`/`die_addr()` message, as the kernel names
/// the trap ("divide error", "invalid opcode", "general protection
/// fault, ..."); `ud2` marks a `BUG()` (the invalid opcode the kernel
/// reports as "kernel BUG at FILE:LINE").
pub fn die_kind(message: &str, at_ud2: bool) -> String {
    let m = message.trim();
    if m.starts_with("invalid opcode") {
        return if at_ud2 { "BUG" } else { "invalid-opcode" }.into();
    }
    if m.starts_with("general protection fault") {
        return "general-protection".into();
    }
    // "divide error" -> "divide-error", "stack segment" -> "stack-segment".
    let head = m.split([',', ':']).next().unwrap_or(m).trim();
    let slug: String = head
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if slug.is_empty() {
        "oops".into()
    } else {
        slug
    }
}

/// `fmt` with its `%s`, `%d`, `%i`, `%u`, `%x`, `%p` ... conversions filled
/// from `args` (the integer argument registers after the format); `%s`
/// arguments are read with `read_str`. Width, precision and length
/// modifiers are skipped; unknown conversions are kept as written.
pub fn format_printk(
    fmt: &str,
    args: &[u64],
    mut read_str: impl FnMut(u64) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut next = args.iter().copied();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let mut spec = String::from("%");
        let conv = loop {
            match chars.next() {
                Some(c) if "-+ #0123456789.*lhzjt".contains(c) => spec.push(c),
                other => break other,
            }
        };
        let Some(conv) = conv else {
            out.push_str(&spec);
            break;
        };
        let long = spec.contains('l') || spec.contains('z');
        match conv {
            's' => {
                let v = next.next().unwrap_or(0);
                out.push_str(&read_str(v).unwrap_or_else(|| format!("({v:#x})")));
            }
            'd' | 'i' => {
                let v = next.next().unwrap_or(0);
                if long {
                    out.push_str(&(v as i64).to_string());
                } else {
                    out.push_str(&(v as u32 as i32).to_string());
                }
            }
            'u' => {
                let v = next.next().unwrap_or(0);
                out.push_str(&if long { v } else { u64::from(v as u32) }.to_string());
            }
            'x' | 'X' => {
                let v = next.next().unwrap_or(0);
                let v = if long { v } else { u64::from(v as u32) };
                out.push_str(&format!("{v:x}"));
            }
            'p' => {
                let v = next.next().unwrap_or(0);
                // %pS, %pB, ...: the extension letter follows.
                while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                    chars.next();
                }
                out.push_str(&format!("{v:#x}"));
            }
            'c' => {
                let v = next.next().unwrap_or(0);
                out.push(char::from(v as u8));
            }
            other => {
                spec.push(other);
                out.push_str(&spec);
            }
        }
    }
    out
}

/// Printable text of a NUL-terminated guest string (at most 200 bytes).
fn read_cstr(dom: &mut Domain, vcpu: u32, va: u64) -> Option<String> {
    if va == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut chunk = [0u8; 64];
    while out.len() < 200 {
        let a = va.checked_add(out.len() as u64)?;
        // Never read across a page boundary in one go: the next page may be unmapped.
        let n = chunk.len().min(0x1000 - (a & 0xfff) as usize);
        dom.read_virt_on(vcpu, a, &mut chunk[..n]).ok()?;
        match chunk[..n].iter().position(|&b| b == 0) {
            Some(end) => {
                out.extend_from_slice(&chunk[..end]);
                break;
            }
            None => out.extend_from_slice(&chunk[..n]),
        }
    }
    Some(printable(&out))
}

/// `bytes` as text without a leading kernel log level (`"\x01" LEVEL`)
/// and without control characters.
pub fn printable(bytes: &[u8]) -> String {
    let bytes = match bytes {
        [1, _, rest @ ..] => rest,
        b => b,
    };
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

fn read_frame(dom: &mut Domain, vcpu: u32, va: u64) -> Option<TrapFrame> {
    let mut b = [0u8; pt_regs::SIZE];
    dom.read_virt_on(vcpu, va, &mut b).ok()?;
    TrapFrame::parse(&b)
}

/// `function+0xoff [module]` of a code address, or the address.
pub fn where_is(dom: &Domain, addr: u64) -> String {
    let Ok(syms) = dom.symbols() else {
        return format!("{addr:#x}");
    };
    match syms.symbolize(addr) {
        Some((s, off)) => format!("{}+{off:#x}", s.name),
        None => format!("{addr:#x}"),
    }
}

/// The report of a vCPU stopped at the entry of kernel sink `kind` (its
/// arguments in the System V registers).
pub fn kernel_report(
    dom: &mut Domain,
    syms: &mut crate::report::Symbolizer,
    vcpu: u32,
    sink: &str,
    kind: SinkKind,
) -> Result<CrashReport, vmi::Error> {
    let regs = dom.regs(vcpu)?;
    let caller = dom.read_u64_on(vcpu, regs.rsp).unwrap_or(0);
    let (kind_name, trap, message, fault_address) = match kind {
        SinkKind::PageFaultOops => {
            let trap = read_frame(dom, vcpu, regs.rdi);
            let addr = regs.rdx;
            let what = if addr < 0x1000 {
                format!("BUG: kernel NULL pointer dereference, address: {addr:#018x}")
            } else {
                format!("BUG: unable to handle page fault for address: {addr:#018x}")
            };
            let msg = format!("{what} (error code {:#x})", regs.rsi);
            ("page-fault".to_string(), trap, msg, Some(addr))
        }
        SinkKind::Die | SinkKind::DieAddr => {
            let text = read_cstr(dom, vcpu, regs.rdi).unwrap_or_default();
            let trap = read_frame(dom, vcpu, regs.rsi);
            let mut ud2 = [0u8; 2];
            let at_ud2 = trap.is_some_and(|t| {
                dom.read_virt_on(vcpu, t.ip, &mut ud2).is_ok() && ud2 == [0x0f, 0x0b]
            });
            let fault = (kind == SinkKind::DieAddr).then_some(regs.rcx);
            let kind = die_kind(&text, at_ud2);
            // What the kernel prints for a BUG(): "kernel BUG at FILE:LINE!".
            let line = trap
                .filter(|_| kind == "BUG")
                .and_then(|t| dom.symbols().ok()?.line(t.ip));
            let text = match line {
                Some(l) => format!("kernel BUG at {}:{}! ({text})", l.file, l.line),
                None => text,
            };
            (kind, trap, text, fault)
        }
        SinkKind::Panic => {
            let fmt = read_cstr(dom, vcpu, regs.rdi).unwrap_or_default();
            let args = [regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9];
            let msg = format_printk(&fmt, &args, |va| read_cstr(dom, vcpu, va));
            (
                "panic".into(),
                None,
                format!("Kernel panic - not syncing: {msg}"),
                None,
            )
        }
        SinkKind::StackProtector => (
            "stack-protector".into(),
            None,
            "stack-protector: Kernel stack is corrupted".into(),
            None,
        ),
        SinkKind::Kasan => (
            "kasan".into(),
            None,
            format!(
                "KASAN: {} of size {} at {:#x} by {}",
                if regs.rdx != 0 { "write" } else { "read" },
                regs.rsi,
                regs.rdi,
                where_is(dom, regs.rcx)
            ),
            Some(regs.rdi),
        ),
        SinkKind::Kmsan => ("kmsan".into(), None, "KMSAN report".into(), None),
        SinkKind::Ubsan => ("ubsan".into(), None, format!("UBSAN: {sink}"), None),
        SinkKind::OopsBegin => ("oops".into(), None, "Oops".into(), None),
    };
    // The crash site: the faulting instruction of an oops, else the code
    // that called the sink (where a panic or a report was raised).
    let (rip, site_addr) = match trap {
        Some(t) if !t.user_mode() => (t.ip, t.ip),
        _ => (regs.rip, caller),
    };
    let frames = match trap {
        Some(t) if !t.user_mode() => dom.backtrace_from(vcpu, t.ip, t.sp, t.bp, 32),
        _ => dom.backtrace(vcpu, 32)?,
    };
    let backtrace = frames
        .iter()
        .map(|f| syms.frame(dom, f.pc, f.is_return))
        .collect();
    // Function and offset: stable under KASLR and across module loads. A
    // return address is looked up at the call (a call to a noreturn
    // function may end its caller).
    let place = match trap {
        Some(t) if !t.user_mode() => where_is(dom, site_addr),
        _ => syms
            .frame(dom, site_addr, true)
            .symbol
            .unwrap_or_else(|| format!("{site_addr:#x}")),
    };
    Ok(CrashReport {
        site: format!("{kind_name}@{place}"),
        kind: kind_name,
        rip,
        fault_address,
        message,
        backtrace,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vcpu_spinning_in_place_is_stuck_and_an_idle_or_moving_one_is_not() {
        let s = |n: u64| Duration::from_secs(n);
        let mut w = SpinWatch::default();
        assert_eq!(w.sample(s(0), 0x1000, s(0)), None);
        assert_eq!(w.sample(s(10), 0x1010, s(10)), None, "not long enough");
        assert_eq!(w.sample(s(16), 0x1020, s(16)), Some(0x1000));
        // Halted (idle): the run time stands still.
        let mut w = SpinWatch::default();
        w.sample(s(0), 0x1000, s(0));
        assert_eq!(w.sample(s(20), 0x1000, s(2)), None);
        // Spinning while another emulated CPU takes half the time.
        let mut w = SpinWatch::default();
        w.sample(s(0), 0x1000, s(0));
        assert_eq!(w.sample(s(16), 0x1000, s(8)), Some(0x1000));
        // Moving: every sample starts a new span.
        let mut w = SpinWatch::default();
        for t in 0..30 {
            assert_eq!(w.sample(s(t), 0x1000 + t * 0x100, s(t)), None);
        }
    }

    use super::*;

    #[test]
    fn trap_frames_decode_from_pt_regs() {
        let mut b = vec![0u8; pt_regs::SIZE];
        b[pt_regs::IP..pt_regs::IP + 8].copy_from_slice(&0xffff_ffff_c000_1234u64.to_le_bytes());
        b[pt_regs::CS..pt_regs::CS + 8].copy_from_slice(&0x10u64.to_le_bytes());
        b[pt_regs::SP..pt_regs::SP + 8].copy_from_slice(&0xffff_c900_0001_3e00u64.to_le_bytes());
        let t = TrapFrame::parse(&b).expect("frame");
        assert_eq!(t.ip, 0xffff_ffff_c000_1234);
        assert_eq!(t.sp, 0xffff_c900_0001_3e00);
        assert!(!t.user_mode());
        assert!(TrapFrame::parse(&b[..100]).is_none());
    }

    #[test]
    fn die_messages_name_the_trap() {
        assert_eq!(die_kind("divide error", false), "divide-error");
        assert_eq!(die_kind("invalid opcode", true), "BUG");
        assert_eq!(die_kind("invalid opcode", false), "invalid-opcode");
        assert_eq!(
            die_kind(
                "general protection fault, probably for non-canonical address 0xdead000000000000",
                false
            ),
            "general-protection"
        );
        assert_eq!(die_kind("stack segment", false), "stack-segment");
        assert_eq!(die_kind("", false), "oops");
    }

    #[test]
    fn printk_formats_fill_from_registers() {
        let s = format_printk(
            "sample: %s state %d of %u at %px (%lx) %%",
            &[
                0x1000,
                (-3i32) as u32 as u64,
                7,
                0xffff_8880_0000_0000,
                0xabc,
            ],
            |va| (va == 0x1000).then(|| "bad record".to_string()),
        );
        assert_eq!(
            s,
            "sample: bad record state -3 of 7 at 0xffff888000000000 (abc) %"
        );
        assert_eq!(format_printk("no args", &[], |_| None), "no args");
        assert_eq!(format_printk("%s", &[5], |_| None), "(0x5)");
        assert_eq!(format_printk("trailing %", &[], |_| None), "trailing %");
        assert_eq!(format_printk("%q", &[], |_| None), "%q");
    }

    #[test]
    fn log_levels_and_control_bytes_are_dropped() {
        assert_eq!(printable(b"\x013sample: bad\n"), "sample: bad");
        assert_eq!(printable(b"plain"), "plain");
    }

    #[test]
    fn every_crash_function_has_a_report() {
        let list = vmi::kernel::CRASH_FUNCTIONS;
        assert!(list.iter().all(|n| sink_kind(n).is_some()));
        let pos = |n: &str| list.iter().position(|s| *s == n).expect(n);
        assert!(pos("die") < pos("oops_begin"));
        assert!(pos("page_fault_oops") < pos("oops_begin"));
        assert!(pos("die_addr") < pos("die"));
        assert_eq!(sink_kind("schedule"), None);
    }
}
