//! Linux kernels in a guest: symbols from a stripped `vmlinux`, a
//! `System.map` or `/proc/kallsyms`, the KASLR slide found on attach, and
//! modules (`.ko`, with DWARF) found at their load address.
//!
//! The slide comes from a register the kernel sets up early: LSTAR (its
//! `syscall` entry, `entry_SYSCALL_64`) on HVM and PVH guests, else the
//! page-fault gate of the IDT (`asm_exc_page_fault`). PV kernels run at
//! their link address (no decompressor randomises them). Either way the
//! result is checked: `linux_banner` must read `Linux version`, and when the
//! symbols came from the image itself, the image's banner.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::domain::Domain;
use super::error::{Error, Result};
use super::symbols::{ModuleLayout, Origin, Symbols};
use super::unwind::OrcTable;

/// What to load for a Linux guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSymbols {
    /// A vmlinux (stripped: its kallsyms tables are read), a `System.map`
    /// or a copy of `/proc/kallsyms`.
    pub kernel: PathBuf,
    /// Modules to find in the guest's module list by name (the `.ko`
    /// file's stem, `-` read as `_`) and load at their addresses.
    pub modules: Vec<PathBuf>,
}

/// What [`Domain::load_kernel_symbols`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// Load address minus link address of the kernel (0 without KASLR).
    pub slide: i64,
    /// How the slide was found.
    pub slide_from: &'static str,
    /// The running kernel's `linux_banner`.
    pub banner: String,
    /// Modules found, with their section addresses.
    pub modules: Vec<ModuleLayout>,
}

/// The functions a Linux kernel reports a crash through, in the order a
/// crash reaches them: an oops through the page-fault path, a trap it
/// cannot fix up (`die`, `die_addr`: divide error, `BUG()`'s invalid
/// opcode, general protection), a stack-protector failure, KASAN, KMSAN
/// and UBSAN reports, `panic`, and `oops_begin` for any other oops (`die`
/// calls it, so the specific one comes first). Kernels lack some of them.
pub const CRASH_FUNCTIONS: &[&str] = &[
    "page_fault_oops",
    "die_addr",
    "die",
    "__stack_chk_fail",
    "kasan_report",
    "kmsan_report",
    "ubsan_prologue",
    "panic",
    "oops_begin",
];

/// A Linux guest's kernel as the engine keeps it: what was found, and the
/// ORC tables its backtraces use.
pub(crate) struct Kernel {
    pub info: KernelInfo,
    /// The image's table (when the symbols came from the image) and each
    /// module's.
    orc: Vec<OrcTable>,
    /// The image whose table is read at the first backtrace (path, slide):
    /// half a second in an emulated dom0 that a campaign without a crash
    /// never needs.
    image_orc: Option<(PathBuf, i64)>,
}

impl Kernel {
    /// Keeps a module's ORC table (if it has one) and layout.
    pub(crate) fn add_module(&mut self, ko: &Path, layout: &ModuleLayout) {
        if let Ok(t) = OrcTable::from_module(ko, &layout.sections, None) {
            self.orc.push(t);
        }
        self.info.modules.push(layout.clone());
    }

    /// The ORC tables, the image's read now if it has not been.
    pub fn orc_tables(&mut self) -> &[OrcTable] {
        if let Some((path, slide)) = self.image_orc.take() {
            match OrcTable::from_vmlinux(&path, None, slide) {
                Ok(t) => self.orc.push(t),
                Err(e) => tracing::info!(
                    "{}: no ORC data, backtraces by frame pointer: {e}",
                    path.display()
                ),
            }
        }
        &self.orc
    }
}

/// The kernel's text is placed at a multiple of this (`CONFIG_PHYSICAL_ALIGN`
/// is at least 2 MiB on x86-64).
const SLIDE_ALIGN: i64 = 0x20_0000;

/// Whether `s` are a Linux kernel's symbols (names every x86-64 kernel
/// has).
pub fn is_linux(s: &Symbols) -> bool {
    s.lookup("linux_banner").is_some() && s.lookup("startup_64").is_some()
}

/// The name a module has in the kernel's list (`foo-bar.ko` -> `foo_bar`).
pub fn module_name(ko: &Path) -> String {
    ko.file_stem()
        .map(|s| s.to_string_lossy().replace('-', "_"))
        .unwrap_or_default()
}

/// The slide that maps `linked` (a symbol's address in the map) onto
/// `running` (where the guest has it), if it is a plausible KASLR slide.
pub fn slide_between(linked: u64, running: u64) -> Option<i64> {
    let d = running.wrapping_sub(linked) as i64;
    (d % SLIDE_ALIGN == 0 && d.unsigned_abs() < 1 << 32).then_some(d)
}

/// The handler address of a 16-byte x86-64 IDT gate.
pub fn gate_target(g: &[u8; 16]) -> u64 {
    let lo = u64::from(u16::from_le_bytes([g[0], g[1]]));
    let mid = u64::from(u16::from_le_bytes([g[6], g[7]]));
    let hi = u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]]));
    lo | mid << 16 | hi << 32
}

impl Domain {
    /// Loads a Linux guest's symbols: the kernel's (slid by KASLR, checked
    /// against the running kernel) and its modules' at their load
    /// addresses. The guest must have booted far enough to have set up its
    /// `syscall` entry or IDT (any time after early boot), and the modules
    /// must be loaded. Errors name the file that does not fit.
    pub fn load_kernel_symbols(&mut self, spec: &KernelSymbols) -> Result<KernelInfo> {
        let t = std::time::Instant::now();
        let syms = Symbols::load_cached(&spec.kernel, &self.xen.settings().state_dir())?;
        tracing::debug!(took = ?t.elapsed(), "kernel symbols read");
        if !is_linux(&syms) {
            return Err(Error::Symbol(format!(
                "{} is not a Linux kernel's symbols (no linux_banner and startup_64)",
                spec.kernel.display()
            )));
        }
        self.adopt_kernel(syms, spec)
    }

    /// [`Domain::load_kernel_symbols`] with the kernel's symbols already
    /// read (from `spec.kernel`): reading a vmlinux takes seconds in an
    /// emulated dom0, so a caller racing a booting guest reads it first.
    pub fn load_kernel_symbols_from(
        &mut self,
        syms: Symbols,
        spec: &KernelSymbols,
    ) -> Result<KernelInfo> {
        self.adopt_kernel(syms, spec)
    }

    /// The KASLR slide of the running kernel against `syms` and how it was
    /// found; an error while the kernel has not set up its syscall entry or
    /// IDT yet (early boot), or when `syms` are another kernel's.
    pub fn kaslr_slide_of(&mut self, syms: &Symbols) -> Result<(i64, &'static str)> {
        self.kaslr_slide(syms, "the kernel's symbols")
    }

    /// Slides `syms` (a Linux kernel's) onto the running kernel, checks
    /// them, finds `spec.modules` and keeps it all.
    pub(crate) fn adopt_kernel(
        &mut self,
        mut syms: Symbols,
        spec: &KernelSymbols,
    ) -> Result<KernelInfo> {
        let file = spec.kernel.display().to_string();
        let t = std::time::Instant::now();
        let (slide, slide_from) = self.kaslr_slide(&syms, &file)?;
        syms.slide(slide);
        let image_banner = match syms.origin() {
            Origin::Kallsyms => image_banner(&spec.kernel, &syms, slide),
            _ => None,
        };
        let banner = self.check_banner(&syms, &file, image_banner.as_deref())?;
        tracing::debug!(took = ?t.elapsed(), "kernel slide and banner checked");
        let image_orc = (syms.origin() == Origin::Kallsyms).then(|| (spec.kernel.clone(), slide));
        let mut orc = Vec::new();
        let mut modules = Vec::new();
        for ko in &spec.modules {
            let name = module_name(ko);
            let head = syms.require("modules").map_err(|_| {
                Error::Symbol(format!(
                    "{file} has no `modules` symbol: cannot find module {name} (load it with its sections instead)"
                ))
            })?;
            let layout = ModuleLayout::find_in_guest(
                |va, buf| self.read_virt_on(0, va, buf),
                head,
                &name,
                ko,
            )?;
            syms.add_module(ko, &layout)?;
            match OrcTable::from_module(ko, &layout.sections, None) {
                Ok(t) => orc.push(t),
                Err(e) => tracing::info!("{}: no ORC data: {e}", ko.display()),
            }
            modules.push(layout);
            tracing::debug!(took = ?t.elapsed(), module = %name, "module found and read");
        }
        let info = KernelInfo {
            slide,
            slide_from,
            banner,
            modules,
        };
        self.symbols.set_kernel(
            syms,
            Kernel {
                info: info.clone(),
                orc,
                image_orc,
            },
        );
        Ok(info)
    }

    /// What [`Domain::load_kernel_symbols`] found, if it ran.
    pub fn kernel_info(&self) -> Option<&KernelInfo> {
        self.symbols.kernel_info()
    }

    /// Finds module `ko` in the running kernel's module list (by its name)
    /// and loads its symbols and line tables there, after the kernel's.
    pub fn load_module(&mut self, ko: &Path) -> Result<ModuleLayout> {
        let head = self
            .symbols
            .kernel_symbols()
            .ok_or_else(|| Error::Symbol("load the kernel's symbols before a module's".into()))?
            .require("modules")?;
        let name = module_name(ko);
        let layout =
            ModuleLayout::find_in_guest(|va, buf| self.read_virt_on(0, va, buf), head, &name, ko)?;
        self.load_module_symbols(ko, &layout)?;
        Ok(layout)
    }

    /// Whether module `name` (`-` read as `_`) is in the running kernel's
    /// module list, formed (its sections in place), after the kernel's
    /// symbols are loaded. A few memory reads: cheap to poll.
    pub fn module_loaded(&mut self, name: &str) -> Result<bool> {
        let head = self
            .symbols
            .kernel_symbols()
            .ok_or_else(|| Error::Symbol("load the kernel's symbols first".into()))?
            .require("modules")?;
        let mut read = |va: u64, buf: &mut [u8]| self.read_virt_on(0, va, buf);
        match super::symbols::find_module(&mut read, head, name) {
            Ok((_, state)) => Ok(state != super::symbols::UNFORMED),
            Err(Error::Symbol(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Loads one more module at a known layout (e.g. from
    /// `/sys/module/NAME/sections/`), after [`Domain::load_kernel_symbols`].
    pub fn load_module_symbols(&mut self, ko: &Path, layout: &ModuleLayout) -> Result<()> {
        self.symbols.add_module(ko, layout)
    }

    /// The KASLR slide of the running kernel against `syms` (link
    /// addresses), and where it was read.
    fn kaslr_slide(&mut self, syms: &Symbols, file: &str) -> Result<(i64, &'static str)> {
        if self.caps.kaslr().is_err() {
            return Ok((0, "PV: loaded at its link address"));
        }
        let cpu = self.xen.xc.hvm_cpu(self.domid, 0)?;
        let mut tried = Vec::new();
        if cpu.msr_lstar != 0 {
            if let Some(entry) = syms.lookup("entry_SYSCALL_64") {
                if let Some(d) = slide_between(entry, cpu.msr_lstar) {
                    return Ok((d, "LSTAR = entry_SYSCALL_64"));
                }
                tried.push(format!(
                    "LSTAR {:#x} is not entry_SYSCALL_64 ({entry:#x}) slid",
                    cpu.msr_lstar
                ));
            }
        } else {
            tried.push("LSTAR is 0 (no syscall entry yet)".to_string());
        }
        if cpu.idtr_base != 0 {
            let mut gate = [0u8; 16];
            let pf = self
                .read_virt_on(0, cpu.idtr_base.wrapping_add(14 * 16), &mut gate)
                .ok()
                .map(|()| gate_target(&gate));
            if let (Some(pf), Some(handler)) = (pf, syms.lookup("asm_exc_page_fault")) {
                if let Some(d) = slide_between(handler, pf) {
                    return Ok((d, "IDT #PF gate = asm_exc_page_fault"));
                }
                tried.push(format!(
                    "the #PF gate {pf:#x} is not asm_exc_page_fault ({handler:#x}) slid"
                ));
            }
        }
        Err(Error::Symbol(format!(
            "{file} does not match the running kernel: no KASLR slide found ({})",
            if tried.is_empty() {
                "neither LSTAR nor an IDT is set up yet".to_string()
            } else {
                tried.join("; ")
            }
        )))
    }

    /// Reads `linux_banner` where `syms` puts it; it must be the kernel's
    /// version string (and equal the image's, when the symbols came from
    /// the image).
    fn check_banner(
        &mut self,
        syms: &Symbols,
        file: &str,
        image_banner: Option<&str>,
    ) -> Result<String> {
        let at = syms.require("linux_banner").map_err(|_| {
            Error::Symbol(format!(
                "{file} has no linux_banner: is it a Linux kernel's?"
            ))
        })?;
        let mut buf = [0u8; 160];
        let text = match self.read_virt_on(0, at, &mut buf) {
            Ok(()) => {
                let end = buf.iter().position(|&b| b == 0 || b == b'\n').unwrap_or(buf.len());
                String::from_utf8_lossy(&buf[..end]).into_owned()
            }
            Err(e) => {
                return Err(Error::Symbol(format!(
                    "{file} does not match the running kernel: linux_banner at {at:#x} is not readable ({e})"
                )))
            }
        };
        if !text.starts_with("Linux version ") {
            return Err(Error::Symbol(format!(
                "{file} does not match the running kernel: linux_banner at {at:#x} reads {:?}, not \"Linux version ...\"",
                text.chars().take(40).collect::<String>()
            )));
        }
        if let Some(image_banner) = image_banner {
            if image_banner != text {
                return Err(Error::Symbol(format!(
                    "{file} is another kernel: it says {image_banner:?}, the guest runs {text:?}"
                )));
            }
        }
        Ok(text)
    }
}

/// The `linux_banner` string of a vmlinux image (link addresses: `syms`
/// is slid by `slide`).
fn image_banner(path: &Path, syms: &Symbols, slide: i64) -> Option<String> {
    use object::read::ReadRef;
    let at = syms.lookup("linux_banner")?.wrapping_sub(slide as u64);
    // Only the headers and the banner's bytes are read, not the whole image
    // (tens of megabytes, most of a second in an emulated dom0).
    let file = object::ReadCache::new(std::fs::File::open(path).ok()?);
    let obj = object::File::parse(&file).ok()?;
    let sec = obj
        .sections()
        .find(|s| at >= s.address() && at < s.address().saturating_add(s.size()))?;
    let (offset, size) = sec.file_range()?;
    let from = at - sec.address();
    let len = size.saturating_sub(from).min(160);
    let rest = file.read_bytes_at(offset + from, len).ok()?;
    let end = rest.iter().position(|&b| b == 0 || b == b'\n')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides_are_aligned_and_bounded() {
        assert_eq!(
            slide_between(0xffff_ffff_81c0_0080, 0xffff_ffff_9ec0_0080),
            Some(0x1d00_0000)
        );
        assert_eq!(
            slide_between(0xffff_ffff_81c0_0080, 0xffff_ffff_81c0_0080),
            Some(0)
        );
        assert_eq!(
            slide_between(0xffff_ffff_81c0_0080, 0xffff_ffff_81c0_1080),
            None
        );
        assert_eq!(slide_between(0xffff_ffff_81c0_0080, 0x1000), None);
    }

    #[test]
    fn idt_gates_decode() {
        let h: u64 = 0xffff_ffff_81e0_0ab0;
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&(h as u16).to_le_bytes());
        g[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        g[5] = 0x8e;
        g[6..8].copy_from_slice(&((h >> 16) as u16).to_le_bytes());
        g[8..12].copy_from_slice(&((h >> 32) as u32).to_le_bytes());
        assert_eq!(gate_target(&g), h);
    }

    #[test]
    fn module_names_follow_the_kernel() {
        assert_eq!(
            module_name(Path::new("/x/xenprobe-sample.ko")),
            "xenprobe_sample"
        );
        assert_eq!(module_name(Path::new("a.ko")), "a");
    }
}
