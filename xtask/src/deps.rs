//! What the lab and the builds need from the machine, and installing it.
//!
//! On Debian, as root, missing packages are installed (QEMU and its Xen device
//! model from `bookworm-backports`). Anywhere else the command stops with one
//! message that lists exactly what to install.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A Debian package the project needs.
struct Package {
    name: &'static str,
    /// Installed from `bookworm-backports` (QEMU 10 and the Xen device model).
    backports: bool,
    why: &'static str,
}

const fn pkg(name: &'static str, why: &'static str) -> Package {
    Package {
        name,
        backports: false,
        why,
    }
}

const fn bpo(name: &'static str, why: &'static str) -> Package {
    Package {
        name,
        backports: true,
        why,
    }
}

/// Packages for building the workspace (bindgen over the Xen headers).
const BUILD: &[Package] = &[
    pkg("libxen-dev", "Xen headers and libraries (libxenctrl & co.)"),
    pkg("libclang-dev", "bindgen for the Xen bindings"),
    pkg("pkg-config", "locating the Xen libraries"),
    pkg("gcc", "the C sample guest (guests/cguest)"),
    // Debian 13's Xen packages for the 4.20 lab and `xen-sysroot`, checked
    // against the archive's signature.
    pkg("curl", "downloading Debian 13's Xen packages"),
    pkg("gpgv", "checking the Debian archive's signed index"),
    pkg("debian-archive-keyring", "the Debian archive's keys"),
    pkg("xz-utils", "unpacking the Debian archive's index"),
];

/// Packages for booting the lab.
const LAB: &[Package] = &[
    pkg("xen-hypervisor-4.17-amd64", "the hypervisor the lab boots"),
    pkg("xen-utils-4.17", "xl and the Xen daemons for dom0"),
    pkg("linux-image-amd64", "the dom0 kernel"),
    pkg("busybox-static", "dom0's userland"),
    pkg("xz-utils", "decompressing the dom0 kernel ahead of boot"),
    bpo("qemu-system-x86", "QEMU that runs Xen (needs QEMU >= 8)"),
    bpo("qemu-system-xen", "the HVM device model inside dom0"),
];

/// Debuggers the stub's tests drive.
const DEBUGGERS: &[Package] = &[
    pkg("gdb", "GDB client for the debug stub"),
    pkg("lldb", "LLDB client for the debug stub"),
];

/// Which set of tools a command needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Booting the lab (implies `Build`: the dom0 image carries our binaries).
    Lab,
    /// Running the whole test suite (lab plus debuggers).
    Tests,
}

/// Makes sure everything `need` requires is installed, installing it when possible.
pub fn ensure(need: Need) -> Result<()> {
    let mut wanted: Vec<&Package> = BUILD.iter().collect();
    if matches!(need, Need::Lab | Need::Tests) && !on_real_dom0() {
        wanted.extend(LAB);
    }
    if matches!(need, Need::Tests) {
        wanted.extend(DEBUGGERS);
    }
    let missing: Vec<&Package> = wanted.into_iter().filter(|p| !installed(p.name)).collect();
    if !missing.is_empty() {
        install(&missing)?;
    }
    if matches!(need, Need::Lab | Need::Tests) {
        ensure_rust_target("x86_64-unknown-none")?;
    }
    Ok(())
}

/// Makes sure the Linux sample guest can be built against kernel `kver` (the
/// lab's dom0 kernel, `/boot/vmlinuz-KVER`): that kernel's exact headers
/// (`linux-headers-KVER`), make and a C compiler for the module, busybox for
/// the initramfs, xz for extracting the kernel ELF.
pub fn ensure_linux_guest(kver: &str) -> Result<()> {
    let headers = format!("linux-headers-{kver}");
    let wanted = [
        Package {
            // One name per run: leaking it keeps `Package` a table of constants.
            name: Box::leak(headers.clone().into_boxed_str()),
            backports: false,
            why: "headers of the guest kernel, for building the sample module",
        },
        pkg("make", "building the sample module"),
        pkg("gcc", "building the sample module"),
        pkg("busybox-static", "the Linux guest's userland"),
        pkg("xz-utils", "extracting the guest kernel's ELF"),
    ];
    let missing: Vec<&Package> = wanted.iter().filter(|p| !installed(p.name)).collect();
    if missing.iter().any(|p| p.name == headers) && !apt_knows(&headers) {
        bail!(
            "the headers of the guest kernel {kver} are not installed, and apt knows no \
             package {headers} (run `apt-get update`; if the package is still missing, \
             Debian no longer serves this kernel version: upgrade linux-image-amd64 \
             so that /boot holds a kernel whose headers exist)"
        );
    }
    if !missing.is_empty() {
        install(&missing)?;
    }
    Ok(())
}

/// Whether apt can install `name` (it is in the package lists).
fn apt_knows(name: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

/// The debugger clients (`gdb`, `lldb`) on this machine's `PATH`, after
/// installing the missing ones when possible (root on Debian, as
/// `ensure(Need::Tests)` does). Best effort: a failed install is a warning.
pub fn debuggers() -> Vec<&'static str> {
    let missing: Vec<&Package> = DEBUGGERS.iter().filter(|p| !on_path(p.name)).collect();
    if !missing.is_empty() && is_root() && is_debian() {
        if let Err(e) = install(&missing) {
            eprintln!("xtask: installing the debuggers failed: {e:#}");
        }
    }
    DEBUGGERS
        .iter()
        .filter(|p| on_path(p.name))
        .map(|p| p.name)
        .collect()
}

/// Whether `cmd` is a file in a directory of `PATH`.
fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Whether this machine is itself a Xen dom0 (then the lab runs commands locally).
pub fn on_real_dom0() -> bool {
    Path::new("/dev/xen/privcmd").exists() && Path::new("/proc/xen").exists()
}

fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    crate::sys::is_root()
}

fn is_debian() -> bool {
    std::fs::read_to_string("/etc/os-release")
        .map(|s| s.lines().any(|l| l == "ID=debian"))
        .unwrap_or(false)
}

fn install(missing: &[&Package]) -> Result<()> {
    let plain: Vec<&str> = missing
        .iter()
        .filter(|p| !p.backports)
        .map(|p| p.name)
        .collect();
    let backports: Vec<&str> = missing
        .iter()
        .filter(|p| p.backports)
        .map(|p| p.name)
        .collect();
    if !(is_root() && is_debian()) {
        let mut msg = String::from("xenprobe needs these Debian 12 packages, which are missing:\n");
        for p in missing {
            msg += &format!("  {:28} {}\n", p.name, p.why);
        }
        msg += "Install them as root with:\n";
        if !plain.is_empty() {
            msg += &format!("  apt-get install {}\n", plain.join(" "));
        }
        if !backports.is_empty() {
            msg += "  # with bookworm-backports in your apt sources:\n";
            msg += &format!(
                "  apt-get install -t bookworm-backports {}\n",
                backports.join(" ")
            );
        }
        bail!(msg.trim_end().to_string());
    }
    eprintln!(
        "xtask: installing missing packages: {}",
        missing.iter().map(|p| p.name).collect::<Vec<_>>().join(" ")
    );
    if !backports.is_empty() {
        enable_backports()?;
    }
    apt(&["update", "-q"])?;
    if !plain.is_empty() {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&plain);
        apt(&args)?;
    }
    if !backports.is_empty() {
        let mut args = vec![
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
        ];
        args.extend(&backports);
        apt(&args)?;
    }
    Ok(())
}

/// The file we add to enable `bookworm-backports`.
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/xenprobe-backports.sources";

/// Adds `bookworm-backports` by copying the stanza of the machine's own Debian
/// sources that lists `bookworm-updates` (same mirror, same key).
fn enable_backports() -> Result<()> {
    let has = |text: &str| {
        text.lines()
            .any(|l| l.contains("bookworm-backports") && !l.trim_start().starts_with('#'))
    };
    let mut sources = vec![];
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                sources.push(e.path());
            }
        }
    }
    sources.push("/etc/apt/sources.list".into());
    let texts: Vec<(std::path::PathBuf, String)> = sources
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect();
    if texts.iter().any(|(_, t)| has(t)) {
        return Ok(());
    }
    // deb822 stanza with bookworm-updates.
    for (_, text) in &texts {
        for stanza in text.split("\n\n") {
            if stanza
                .lines()
                .any(|l| l.starts_with("Suites:") && l.contains("bookworm-updates"))
            {
                let new: Vec<String> = stanza
                    .lines()
                    .map(|l| {
                        if l.starts_with("Suites:") {
                            "Suites: bookworm-backports".to_string()
                        } else {
                            l.to_string()
                        }
                    })
                    .collect();
                std::fs::write(BACKPORTS_LIST, new.join("\n") + "\n")
                    .with_context(|| format!("writing {BACKPORTS_LIST}"))?;
                return Ok(());
            }
        }
        // one-line format: deb URI bookworm-updates main
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() == Some(&"deb") && f.contains(&"bookworm-updates") {
                let line = l.replace("bookworm-updates", "bookworm-backports");
                let path = "/etc/apt/sources.list.d/xenprobe-backports.list";
                std::fs::write(path, line + "\n").with_context(|| format!("writing {path}"))?;
                return Ok(());
            }
        }
    }
    bail!(
        "cannot enable bookworm-backports: no apt source lists bookworm-updates; \
         add bookworm-backports to your apt sources and run again"
    )
}

fn apt(args: &[&str]) -> Result<()> {
    let st = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !st.success() {
        bail!("apt-get {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Installs a rustup target if it is missing.
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == target) =>
        {
            Ok(())
        }
        Ok(_) => {
            eprintln!("xtask: installing the Rust target {target}");
            let st = Command::new("rustup")
                .args(["target", "add", target])
                .status()
                .context("running rustup")?;
            if !st.success() {
                bail!("`rustup target add {target}` failed; run it yourself and try again");
            }
            Ok(())
        }
        Err(_) => bail!(
            "rustup is not available; install the Rust target {target} for your toolchain \
             (with rustup: `rustup target add {target}`)"
        ),
    }
}
