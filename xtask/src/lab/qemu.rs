//! Starting QEMU: the accelerator probe and the command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// How QEMU runs the lab's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization (needs nested virtualization for Xen's HVM guests).
    Kvm,
    /// Software emulation (TCG, see [`tcg_threads`]); `-cpu max` emulates AMD SVM with NPT.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Marker left when KVM failed to boot the lab on this machine.
pub fn kvm_failed_marker(lab_dir: &Path) -> PathBuf {
    lab_dir.join("kvm-failed")
}

/// Picks the accelerator, with the reason for the choice.
pub fn choose_accel(lab_dir: &Path) -> (Accel, String) {
    match std::env::var("XENPROBE_ACCEL").ok().as_deref() {
        Some("kvm") => return (Accel::Kvm, "XENPROBE_ACCEL=kvm".into()),
        Some("tcg") => return (Accel::Tcg, "XENPROBE_ACCEL=tcg".into()),
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (
            Accel::Tcg,
            "software emulation: /dev/kvm is not usable".into(),
        );
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nested = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !nested {
        return (
            Accel::Tcg,
            "software emulation: the host CPU exposes neither vmx nor svm, so KVM cannot run Xen's guests"
                .into(),
        );
    }
    let marker = kvm_failed_marker(lab_dir);
    if marker.exists() {
        return (
            Accel::Tcg,
            format!(
                "software emulation: KVM failed to boot the lab here before (delete {} to retry)",
                marker.display()
            ),
        );
    }
    (Accel::Kvm, "KVM".into())
}

/// Everything that goes on QEMU's command line.
pub struct Machine<'a> {
    pub accel: Accel,
    pub xen_elf: &'a Path,
    pub xen_cmdline: &'a str,
    pub dom0_kernel: &'a Path,
    pub dom0_cmdline: &'a str,
    pub initramfs: &'a Path,
    pub share: &'a Path,
    pub serial_log: &'a Path,
    pub qmp_socket: &'a Path,
    pub pid_file: &'a Path,
    /// (host port, dom0 port) of the agent, forwarded on 127.0.0.1.
    pub agent: (u16, u16),
    /// (host port, dom0 port) forwarded for the user (the debug stub).
    pub forward: (u16, u16),
    pub memory: &'a str,
    pub cpus: u32,
    /// A saved state to start from (`-incoming`), instead of booting.
    pub incoming: Option<String>,
}

impl Machine<'_> {
    /// The QEMU command (daemonized: it returns once the machine is started).
    pub fn command(&self) -> Result<Command> {
        let qemu = find_qemu()?;
        let mut c = Command::new(qemu);
        c.args(["-M", "q35", "-m", self.memory, "-smp"])
            .arg(self.cpus.to_string());
        match self.accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => c.args([
                "-accel",
                &format!("tcg,thread={}", tcg_threads()),
                "-cpu",
                "max",
            ]),
        };
        c.args(["-display", "none", "-no-reboot", "-monitor", "none"]);
        c.arg("-serial")
            .arg(format!("file:{}", self.serial_log.display()));
        c.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            self.qmp_socket.display()
        ));
        c.arg("-kernel").arg(self.xen_elf);
        c.arg("-append").arg(self.xen_cmdline);
        // Multiboot modules: "kernel cmdline,initramfs"; commas inside doubled.
        c.arg("-initrd").arg(format!(
            "{} {},{}",
            self.dom0_kernel.display(),
            self.dom0_cmdline.replace(',', ",,"),
            self.initramfs.display()
        ));
        c.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=host0,security_model=none,id=host0",
            self.share.display()
        ));
        let mut netdev = String::from("user,id=n0");
        for (host, guest) in [self.agent, self.forward] {
            netdev += &format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}");
        }
        c.arg("-netdev").arg(netdev);
        c.args(["-device", "virtio-net-pci,netdev=n0"]);
        c.arg("-daemonize").arg("-pidfile").arg(self.pid_file);
        if let Some(uri) = &self.incoming {
            c.arg("-incoming").arg(uri);
        }
        Ok(c)
    }

    /// What of the machine a saved state depends on (not ports or file names:
    /// a restored lab gets its own).
    pub fn key_text(&self) -> String {
        format!(
            "accel={}{} mem={} cpus={} xen={} [{}] dom0={} [{}] initramfs={} share={}",
            self.accel.name(),
            match self.accel {
                Accel::Tcg => format!(" thread={}", tcg_threads()),
                Accel::Kvm => String::new(),
            },
            self.memory,
            self.cpus,
            self.xen_elf.display(),
            self.xen_cmdline,
            self.dom0_kernel.display(),
            self.dom0_cmdline,
            self.initramfs.display(),
            self.share.display()
        )
    }
}

/// TCG's threading: `single` (one thread runs every vCPU, holding QEMU's
/// big lock) unless `XENPROBE_TCG=multi` asks for a thread per vCPU. Single
/// is the default because multi-threaded TCG slowed to a crawl on a busy
/// 2-core host (docs/lab.md, "The lab's CPU configuration").
pub fn tcg_threads() -> &'static str {
    match std::env::var("XENPROBE_TCG").ok().as_deref() {
        Some("multi") => "multi",
        _ => "single",
    }
}

/// Path of `qemu-system-x86_64`, or an error saying what to install.
pub fn find_qemu() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("XENPROBE_QEMU") {
        if Path::new(&p).is_file() {
            return Ok(p.into());
        }
        bail!(
            "QEMU is not installed: XENPROBE_QEMU={p} does not exist; install Debian's \
             qemu-system-x86 from bookworm-backports (`apt-get install -t bookworm-backports \
             qemu-system-x86`)"
        );
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("qemu-system-x86_64");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "QEMU is not installed (qemu-system-x86_64 not found in PATH): install Debian's \
         qemu-system-x86 from bookworm-backports (`apt-get install -t bookworm-backports \
         qemu-system-x86`), or set XENPROBE_QEMU"
    )
}

/// QEMU's version line (part of the saved-state key).
pub fn version() -> Result<String> {
    let o = Command::new(find_qemu()?)
        .arg("--version")
        .output()
        .context("running qemu-system-x86_64 --version")?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}
