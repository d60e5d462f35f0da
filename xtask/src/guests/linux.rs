//! The Linux sample guest: Debian's kernel (the lab's dom0 kernel, same
//! version) with a busybox initramfs whose `/init` loads the sample module
//! `guests/linux/xenprobe_sample.c`; the module's init is the fuzz harness.
//!
//! `cargo xtask guests build linux` writes into `target/guests/linux/`:
//! `xenprobe_sample.ko` (built against `/usr/src/linux-headers-KVER`, with
//! symbols and DWARF), `initramfs.cpio`, `vmlinux-KVER` (the kernel ELF PV and
//! PVH boot, a link to the lab's cached copy), `vmlinuz-KVER` (the bzImage HVM
//! boots), `linux-{pv,pvh,hvm}.cfg` and `kernel.toml` (the paths a fuzzer needs).
//! `cargo xtask guests run linux --mode M` boots one and reports how it ended.

use super::{quoted_args, script_start, Mode, CONSOLE_VERDICT, STATE_VERDICT};
use crate::lab::xen::Flavour;
use crate::{deps, ws};
use anyhow::{bail, ensure, Context, Result};
use object::{Object, ObjectSection};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The module's name (`/sys/module/NAME`).
pub const MODULE: &str = "xenprobe_sample";
/// Guest memory in MiB: with 80, PV and PVH run out of memory while booting
/// ("System is deadlocked on memory") and HVM stayed in real mode (one try);
/// 88 boots PV, 96 every mode.
const MEMORY_MB: u32 = 96;
/// The kernel command line (the input is appended as `xenprobe.input=HEX`).
/// `panic=-1`: a panic ends the domain at once (PV, PVH: as a crash, through
/// Xen's panic notifier; HVM: as a reboot).
const CMDLINE: &str = "console=hvc0 quiet panic=-1";
/// HVM adds `edd=off`: the setup code's BIOS disk probing (int 13h through
/// SeaBIOS) did not finish within 5 minutes in the lab; and `reboot=t`: the
/// restart after a panic is a triple fault, which Xen turns into a reboot
/// at once. The default (ACPI, then the keyboard controller) left the vCPU
/// spinning in real mode now and then (RIP 0xff53), seen as a boot that
/// never reaches its harness.
const CMDLINE_HVM: &str = "console=hvc0 quiet panic=-1 edd=off reboot=t";

fn cmdline(mode: Mode) -> &'static str {
    if mode == Mode::Hvm {
        CMDLINE_HVM
    } else {
        CMDLINE
    }
}
/// The module's sources, copied into the build directory (kbuild builds in `M=`).
const SOURCES: &[(&str, &str)] = &[
    ("Kbuild", include_str!("../../../guests/linux/Kbuild")),
    (
        "xenprobe_sample.c",
        include_str!("../../../guests/linux/xenprobe_sample.c"),
    ),
];
const INIT: &str = include_str!("../../../guests/linux/init");

/// Where the Linux guest's files go.
pub fn dir() -> PathBuf {
    ws::guests_dir().join("linux")
}

/// The fuzzer config of the Linux sample guest in `mode`, written next to
/// the guest (`fuzz-MODE.toml`, by the build): the kernel ELF and the module
/// for symbols, KF/x's cpuid markers, or for PV breakpoints on the
/// harness's symbols (fuzz/examples/linux-sample.toml explains each key).
pub fn fuzz_config(mode: Mode) -> Result<PathBuf> {
    let kver = crate::lab::image::kernel_version()?;
    let out = dir();
    let l = Layout::new(&out, &kver);
    let path = out.join(format!("fuzz-{}.toml", mode.name()));
    // A PV guest's cpuid does not reach Xen: its harness is found by symbol
    // (breakpoints, the debug hypervisor's gdbsx).
    let marker = if mode == Mode::Pv { "symbols" } else { "cpuid" };
    let text = format!(
        "# Written by `cargo xtask fuzz linux --mode {m}` (see fuzz/examples/linux-sample.toml).\n\
         xl_cfg = \"{cfg}\"\nkernel = \"{k}\"\nmodules = [\"{ko}\"]\nmarker = \"{marker}\"\n\
         input_len = \"xenprobe_input_len\"\ntimeout_ms = 2000\nboot_timeout_s = 150\n\
         # The module's benign sessions (guests/linux/seeds/).\nseeds = \"{seeds}\"\n",
        m = mode.name(),
        cfg = out.join(format!("linux-{}.cfg", mode.name())).display(),
        k = l.vmlinux.display(),
        ko = l.module.display(),
        seeds = ws::root().join("guests/linux/seeds").display(),
    );
    write_if_changed(&path, text.as_bytes())?;
    Ok(path)
}

/// The paths of one built Linux guest.
struct Layout {
    kver: String,
    /// The kernel ELF (PV, PVH).
    vmlinux: PathBuf,
    /// The bzImage (HVM direct kernel boot).
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    module: PathBuf,
}

impl Layout {
    fn new(dir: &Path, kver: &str) -> Layout {
        Layout {
            kver: kver.to_string(),
            vmlinux: dir.join(format!("vmlinux-{kver}")),
            vmlinuz: dir.join(format!("vmlinuz-{kver}")),
            initramfs: dir.join("initramfs.cpio"),
            module: dir.join(format!("{MODULE}.ko")),
        }
    }
}

/// Builds the module, the initramfs and the configs into `target/guests/linux/`.
pub fn build() -> Result<()> {
    let kver = crate::lab::image::kernel_version()?;
    deps::ensure_linux_guest(&kver)?;
    let out = dir();
    std::fs::create_dir_all(&out)?;
    let l = Layout::new(&out, &kver);

    // The kernel: the bzImage (HVM boots it; dom0 sees only the workspace)
    // and its ELF payload, decompressed once into the lab's cache (PV, PVH).
    let bzimage = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
    let image = std::fs::read(&bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    let image_version = bzimage_version(&image)
        .with_context(|| format!("{} has no kernel version string", bzimage.display()))?;
    copy_if_changed(&bzimage, &l.vmlinuz)?;
    let elf = crate::lab::kernel::dom0_kernel(&ws::lab_dir().join("dom0"), &bzimage);
    // `vmlinux` too, for configs that outlive a kernel update
    // (fuzz/examples/linux-sample.toml).
    for link in [l.vmlinux.clone(), out.join("vmlinux")] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&elf, &link)
            .with_context(|| format!("link {} to {}", link.display(), elf.display()))?;
    }

    // The module, built out of tree against the headers of that kernel.
    let headers = PathBuf::from(format!("/usr/src/linux-headers-{kver}"));
    ensure!(
        headers.join("Makefile").exists(),
        "{} is missing although linux-headers-{kver} is installed",
        headers.display()
    );
    let build = out.join("build");
    std::fs::create_dir_all(&build)?;
    for (name, text) in SOURCES {
        write_if_changed(&build.join(name), text.as_bytes())?;
    }
    let status = Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", build.display()))
        .arg("modules")
        // xtask's own environment must not leak into kbuild.
        .env_remove("CC")
        .env_remove("CFLAGS")
        .env_remove("MAKEFLAGS")
        .status()
        .context("run make (package make)")?;
    ensure!(status.success(), "building the sample module failed");
    // Files are written only when they change: a parked guest is taken over
    // only while its module and configs keep their modification times.
    let ko = build.join(format!("{MODULE}.ko"));
    write_if_changed(
        &l.module,
        &std::fs::read(&ko).with_context(|| format!("read {}", ko.display()))?,
    )?;
    let magic = vermagic(&std::fs::read(&l.module)?)?;
    check_versions(&magic, &image_version)?;

    // The initramfs: busybox, /init, the module (debug info stripped).
    let mut a = crate::lab::cpio::Archive::default();
    for d in ["proc", "sys", "dev"] {
        a.dir(d);
    }
    a.file(
        "bin/busybox",
        std::fs::read("/bin/busybox").context("read /bin/busybox (package busybox-static)")?,
        0o755,
    );
    for applet in busybox_applets()? {
        if applet != "busybox" {
            a.symlink(format!("bin/{applet}"), "busybox");
        }
    }
    a.file("init", INIT.as_bytes().to_vec(), 0o755);
    a.file(
        format!("lib/modules/{MODULE}.ko"),
        stripped_module(&l.module, &build)?,
        0o644,
    );
    write_if_changed(&l.initramfs, &a.to_bytes())?;

    let real = deps::on_real_dom0();
    for mode in Mode::ALL {
        let cfg = xl_config(mode, &l, real);
        write_if_changed(
            &out.join(format!("linux-{}.cfg", mode.name())),
            cfg.as_bytes(),
        )?;
    }
    write_if_changed(&out.join("kernel.toml"), kernel_toml(&l, &elf).as_bytes())?;
    for mode in Mode::ALL {
        fuzz_config(mode)?;
    }
    println!(
        "built linux (kernel {kver}): {}/{{linux-{{pv,pvh,hvm}}.cfg,{MODULE}.ko,initramfs.cpio,kernel.toml}}",
        out.display()
    );
    Ok(())
}

/// The `xl` config of the Linux guest in `mode`. `real_dom0`: a real Xen host,
/// where the lab's workarounds (`hap=0`, `tsc_mode`) are left out.
fn xl_config(mode: Mode, l: &Layout, real_dom0: bool) -> String {
    let kernel = match mode {
        Mode::Pv | Mode::Pvh => &l.vmlinux,
        Mode::Hvm => &l.vmlinuz,
    };
    let boot = xenprobe_abi::xl::Boot::Linux {
        kernel: kernel.clone(),
        ramdisk: l.initramfs.clone(),
        cmdline: cmdline(mode).to_string(),
    };
    let name = format!("linux-{}", mode.name());
    let mut c = xenprobe_abi::XlConfig::new(&name, mode, boot, MEMORY_MB);
    c.comment = Some(format!(
        "Linux sample guest (kernel {}): cargo xtask guests build linux",
        l.kver
    ));
    if mode != Mode::Pv && !real_dom0 {
        c.extra.extend(
            [
                "# The lab's QEMU (TCG emulating AMD SVM) gives guests CR2 = 0 in their #PF",
                "# handler under nested paging, and Linux cannot boot then: shadow paging",
                "# instead (needs the debug hypervisor, XENPROBE_XEN=debug).",
                "hap=0",
                "# QEMU reports RDTSCP as an RDTSC intercept, whose emulation fails in Xen",
                "# and crashes the domain: no TSC emulation.",
                "tsc_mode=\"native\"",
                "# Even so the guest sometimes dies while booting in the lab (an interrupt",
                "# taken with interrupts disabled, see guests/BUGS.md): boot it again.",
            ]
            .map(String::from),
        );
    }
    c.render()
}

/// The `xl create` override that sets the kernel command line with `input`.
fn cmdline_override(mode: Mode, input: &[u8]) -> String {
    let key = if mode == Mode::Hvm {
        "cmdline"
    } else {
        "extra"
    };
    let mut line = cmdline(mode).to_string();
    if !input.is_empty() {
        line.push_str(" xenprobe.input=");
        for b in input {
            let _ = write!(line, "{b:02x}");
        }
    }
    format!("{key}=\"{line}\"")
}

/// `kernel.toml`: the files a fuzzer or debugger of the Linux guest needs.
fn kernel_toml(l: &Layout, elf: &Path) -> String {
    format!(
        "# Written by `cargo xtask guests build linux`.\n\
         kernel_version = \"{kver}\"\n\
         # The kernel ELF PV and PVH boot (linked at its link address, no KASLR there);\n\
         # stripped: symbols come from /proc/kallsyms or kallsyms recovery.\n\
         vmlinux = \"{vmlinux}\"\n\
         vmlinux_target = \"{elf}\"\n\
         # The bzImage HVM boots (its decompressor applies KASLR).\n\
         vmlinuz = \"{vmlinuz}\"\n\
         # Debian ships a placeholder System.map (the real one is in linux-image-{kver}-dbg).\n\
         system_map = \"/boot/System.map-{kver}\"\n\
         system_map_placeholder = true\n\
         module = \"{module}\"\n\
         module_name = \"{MODULE}\"\n\
         initramfs = \"{initramfs}\"\n\
         # /init prints one line per module section: `{SECTION_PREFIX} {MODULE} NAME ADDR`.\n\
         section_prefix = \"{SECTION_PREFIX}\"\n",
        kver = l.kver,
        vmlinux = l.vmlinux.display(),
        elf = elf.display(),
        vmlinuz = l.vmlinuz.display(),
        module = l.module.display(),
        initramfs = l.initramfs.display(),
    )
}

/// The prefix of /init's module section lines.
pub const SECTION_PREFIX: &str = "XENPROBE-SECTION";

/// One `XENPROBE-SECTION MODULE NAME ADDR` console line: (module, section, address).
#[allow(dead_code)] // for readers of the console (fuzzer, tests)
pub fn parse_section_line(line: &str) -> Option<(&str, &str, u64)> {
    let rest = line.trim_end_matches('\r').trim();
    let rest = rest.get(rest.find(SECTION_PREFIX)?..)?;
    let mut f = rest.split_whitespace();
    (f.next()? == SECTION_PREFIX).then_some(())?;
    let (module, section, addr) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() {
        return None;
    }
    let addr = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
    Some((module, section, addr))
}

/// The version string of a bzImage (setup header `kernel_version`), e.g.
/// `6.1.0-57-amd64 (debian-kernel@...) #1 SMP ...`; its first word is KVER.
fn bzimage_version(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes(image.get(0x20e..0x210)?.try_into().ok()?) as usize + 0x200;
    let s = image.get(off..)?;
    let end = s.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// The `vermagic=` of a kernel module (its `.modinfo` section).
fn vermagic(ko: &[u8]) -> Result<String> {
    let file = object::File::parse(ko).context("the module is not an ELF file")?;
    let sec = file
        .section_by_name(".modinfo")
        .context("the module has no .modinfo")?;
    sec.data()?
        .split(|&b| b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok())
        .find_map(|f| f.strip_prefix("vermagic="))
        .map(|v| v.trim().to_string())
        .context("the module has no vermagic")
}

/// Fails when the module's vermagic names another kernel than the image.
fn check_versions(vermagic: &str, image_version: &str) -> Result<()> {
    let m = vermagic.split_whitespace().next().unwrap_or_default();
    let k = image_version.split_whitespace().next().unwrap_or_default();
    ensure!(
        !m.is_empty() && m == k,
        "the module was built for kernel {m:?} (vermagic \"{vermagic}\"), the guest \
         kernel is {k:?}: the kernel would refuse it; rebuild with \
         `cargo xtask guests build linux`"
    );
    Ok(())
}

/// The module without debug info (`strip --strip-debug`), or as it is when
/// strip is missing.
fn stripped_module(ko: &Path, build: &Path) -> Result<Vec<u8>> {
    let out = build.join(format!("{MODULE}.stripped.ko"));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(ko)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    Ok(std::fs::read(if ok { &out } else { ko })?)
}

fn busybox_applets() -> Result<Vec<String>> {
    let o = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("run /bin/busybox (package busybox-static)")?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .map(str::to_string)
        .collect())
}

fn write_if_changed(path: &Path, data: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return Ok(());
    }
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))
}

fn copy_if_changed(src: &Path, dst: &Path) -> Result<()> {
    let same = match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(a), Ok(b)) => a.len() == b.len() && a.modified().ok() <= b.modified().ok(),
        _ => false,
    };
    if !same {
        std::fs::copy(src, dst)
            .with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// Boots the Linux guest in `mode` in the lab; exit status as `guests run`.
pub fn run(mode: Mode, input: Option<&str>, timeout: u32) -> Result<i32> {
    let out = dir();
    let cfg = out.join(format!("linux-{}.cfg", mode.name()));
    ensure!(
        cfg.exists(),
        "{} missing: run `cargo xtask guests build linux` first",
        cfg.display()
    );
    if mode != Mode::Pv && !deps::on_real_dom0() && Flavour::from_env() != Flavour::Debug {
        bail!(
            "the {} lab cannot boot {} Linux: under the lab's QEMU (TCG emulating AMD SVM) \
             a guest reads CR2 = 0 in its page-fault handler with nested paging (HAP), so \
             Linux cannot map its early page faults and halts; the config uses shadow paging \
             (hap=0), which only the debug hypervisor has. Run it on the debug lab: \
             XENPROBE_XEN=debug cargo xtask guests run linux --mode {} (PV boots on all)",
            Flavour::from_env().name(),
            mode.name().to_uppercase(),
            mode.name()
        );
    }
    // The module must match the kernel the configs boot.
    let text = std::fs::read_to_string(&cfg)?;
    let kernel = text
        .lines()
        .find_map(|l| l.strip_prefix("kernel=\""))
        .and_then(|l| l.strip_suffix('"'))
        .context("the config has no kernel=")?;
    let kver = Path::new(kernel)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('-').map(|(_, v)| v.to_string()))
        .unwrap_or_default();
    let module = Layout::new(&out, &kver).module;
    let magic =
        vermagic(&std::fs::read(&module).with_context(|| format!("read {}", module.display()))?)?;
    check_versions(&magic, &kver)?;
    let bytes = match input {
        Some(hex) => super::decode_hex(hex)?,
        None => vec![],
    };
    let dom = format!("linux-{}", mode.name());
    let script = dom0_script(&dom, &cfg, &[cmdline_override(mode, &bytes)], timeout);
    crate::lab::run_in_dom0(&["sh".to_string(), "-c".to_string(), script])
}

/// Shell script (busybox sh in dom0) that boots the Linux guest, waits for its
/// end, prints its console, the times from `xl create` to the harness and to
/// the end, and how it ended (exit status as documented on `guests run`).
fn dom0_script(dom: &str, cfg: &Path, overrides: &[String], timeout: u32) -> String {
    let args = quoted_args(overrides);
    let start = script_start(dom);
    format!(
        r#"
{start}read -r t0 _ </proc/uptime
xl create "{cfg}"{args} || exit 2
read -r tc _ </proc/uptime
state=""; th=""; te=""
# Wall-clock times (dom0's) at which the harness and end lines reach the console.
marks() {{
  if [ -z "$th" ] && grep -q '^XENPROBE-LINUX harness' "$LOG" 2>/dev/null; then th=$now; fi
  if [ -z "$te" ] && grep -qE '^(EXIT|CRASH) |Kernel panic - not syncing' "$LOG" 2>/dev/null; then te=$now; fi
}}
while :; do
  read -r now _ </proc/uptime
  marks
  line=$(xl list "$N" 2>/dev/null | tail -n +2)
  if [ -z "$line" ]; then state=gone; break; fi
  st=$(echo "$line" | awk '{{print $5}}')
  case "$st" in *s*) state="$st"; break;; esac
  awk "BEGIN {{ exit !($now - $tc >= {timeout}) }}" && break
  sleep 0.2
done
sleep 1
marks
echo "--- console ($LOG)"
clean=$(tr -d '\r' < "$LOG" 2>/dev/null) || clean="(no console log: is xenconsoled running with --log=guest?)"
echo "$clean"
last=$(echo "$clean" | grep -E '^(EXIT|CRASH) ' | tail -n 1)
panic=$(echo "$clean" | grep -m 1 -o 'Kernel panic - not syncing.*')
[ "$state" != gone ] && xl destroy "$N" >/dev/null 2>&1
echo "---"
# Times from the start of xl create (dom0's clock, polled: +-0.5 s), and the
# guest's own uptime at the harness and at the end.
uh=$(echo "$clean" | sed -n 's/^XENPROBE-LINUX harness uptime=//p' | head -n 1)
ue=$(echo "$clean" | sed -n 's/^XENPROBE-LINUX insmod status=[0-9]* uptime=//p' | head -n 1)
[ -z "$ue" ] && ue=$(echo "$clean" | sed -n 's/^\[ *\([0-9.]*\)\] Kernel panic.*/\1/p' | head -n 1)
at() {{ [ -n "$1" ] && awk "BEGIN {{ printf \"%.1f s\", $1 - $t0 }}" || echo "-"; }}
echo "$N: from xl create: created $(at "$tc"), harness $(at "$th"), end $(at "$te"); guest uptime: harness ${{uh:--}} s, end ${{ue:--}} s"
if [ -z "$uh" ]; then
  echo "$N: NOTE: the kernel did not reach the harness: not the input's doing. In the QEMU lab, PVH and"
  echo "$N: HVM Linux sometimes takes an interrupt with interrupts disabled and dies during boot (PVH: a"
  echo "$N: page-fault storm, 'Fatal exception in interrupt'; HVM: a hang); see guests/BUGS.md. Run it again."
fi
{CONSOLE_VERDICT}if [ -n "$panic" ]; then echo "$N: crashed (panic, domain state ${{state:-running}}): $panic"; exit 125; fi
{STATE_VERDICT}echo "$N: still running after {timeout} s (hang); destroyed"
exit 124
"#,
        cfg = cfg.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(Path::new("/w/linux"), "6.1.0-57-amd64")
    }

    fn has(cfg: &str, line: &str) -> bool {
        cfg.lines().any(|l| l == line)
    }

    #[test]
    fn pv_config_boots_the_elf_with_the_initramfs() {
        let c = xl_config(Mode::Pv, &layout(), false);
        for line in [
            "name=\"linux-pv\"",
            "type=\"pv\"",
            "kernel=\"/w/linux/vmlinux-6.1.0-57-amd64\"",
            "ramdisk=\"/w/linux/initramfs.cpio\"",
            "extra=\"console=hvc0 quiet panic=-1\"",
            "vcpus=1",
            "on_crash=\"preserve\"",
        ] {
            assert!(has(&c, line), "{line} missing in {c}");
        }
        assert!(!c.contains("hap="), "PV has no paging mode to choose");
    }

    #[test]
    fn pvh_and_hvm_configs_carry_the_lab_workarounds_only_in_the_lab() {
        for mode in [Mode::Pvh, Mode::Hvm] {
            let lab = xl_config(mode, &layout(), false);
            assert!(
                has(&lab, "hap=0") && has(&lab, "tsc_mode=\"native\""),
                "{lab}"
            );
            assert!(has(&lab, "on_reboot=\"preserve\""));
            let real = xl_config(mode, &layout(), true);
            assert!(
                !real.contains("hap=") && !real.contains("tsc_mode"),
                "{real}"
            );
        }
        let hvm = xl_config(Mode::Hvm, &layout(), false);
        for line in [
            "type=\"hvm\"",
            "kernel=\"/w/linux/vmlinuz-6.1.0-57-amd64\"",
            "cmdline=\"console=hvc0 quiet panic=-1 edd=off reboot=t\"",
            "device_model_version=\"qemu-xen\"",
            "serial=\"pty\"",
        ] {
            assert!(has(&hvm, line), "{line} missing in {hvm}");
        }
        let pvh = xl_config(Mode::Pvh, &layout(), false);
        assert!(has(&pvh, "kernel=\"/w/linux/vmlinux-6.1.0-57-amd64\""));
    }

    #[test]
    fn input_goes_on_the_command_line() {
        assert_eq!(
            cmdline_override(Mode::Pv, &[0x06, 0x00]),
            "extra=\"console=hvc0 quiet panic=-1 xenprobe.input=0600\""
        );
        assert_eq!(
            cmdline_override(Mode::Hvm, &[]),
            "cmdline=\"console=hvc0 quiet panic=-1 edd=off reboot=t\""
        );
    }

    #[test]
    fn section_lines_parse() {
        assert_eq!(
            parse_section_line("XENPROBE-SECTION xenprobe_sample .text 0xffffffffc0a01000\r"),
            Some(("xenprobe_sample", ".text", 0xffff_ffff_c0a0_1000))
        );
        assert_eq!(
            parse_section_line("[    3.1] x XENPROBE-SECTION m .bss 0x10"),
            Some(("m", ".bss", 0x10))
        );
        assert_eq!(parse_section_line("XENPROBE-SECTION m .bss"), None);
        assert_eq!(parse_section_line("XENPROBE-SECTION m .bss 1234"), None);
        assert_eq!(parse_section_line("XENPROBE-SECTIONS m .bss 0x1"), None);
        assert_eq!(parse_section_line("EXIT 0"), None);
    }

    #[test]
    fn versions_are_compared_by_release() {
        assert!(check_versions(
            "6.1.0-57-amd64 SMP preempt mod_unload modversions ",
            "6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP"
        )
        .is_ok());
        let e = check_versions("6.1.0-56-amd64 SMP", "6.1.0-57-amd64 #1").unwrap_err();
        assert!(e.to_string().contains("6.1.0-56-amd64"), "{e}");
        assert!(check_versions("", "6.1.0-57-amd64").is_err());
    }

    #[test]
    fn bzimage_version_from_the_setup_header() {
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x30e].copy_from_slice(b"6.1.0-57-amd64");
        assert_eq!(bzimage_version(&img).as_deref(), Some("6.1.0-57-amd64"));
        img[0x202] = 0;
        assert_eq!(bzimage_version(&img), None);
    }

    #[test]
    fn init_reports_in_the_documented_form() {
        assert!(INIT.contains("XENPROBE-SECTION $M ${f##*/} $addr"));
        assert!(INIT.contains(&format!("M={MODULE}")));
        for kind in [
            "page-fault",
            "BUG",
            "invalid-opcode",
            "divide-error",
            "general-protection",
        ] {
            assert!(INIT.contains(&format!("kind={kind}")), "{kind}");
        }
    }
}
