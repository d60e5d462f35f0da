//! The `xl` config of a guest: one writer for the sample guests, the Linux
//! guests, the fuzzer's configs and the tests.
//!
//! Crashes and triple faults (which Xen turns into a reboot) are preserved,
//! so that they can be inspected and a fuzzer can take the domain back.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::GuestMode;

/// What the guest boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A unikernel ELF: `kernel=` for PV and PVH, hvmloader's
    /// `firmware_override=` for HVM.
    Image(PathBuf),
    /// A Linux kernel with an initramfs and a command line (`extra=` for PV
    /// and PVH, `cmdline=` for HVM's direct kernel boot).
    Linux {
        kernel: PathBuf,
        ramdisk: PathBuf,
        cmdline: String,
    },
}

/// An `xl` guest config.
#[derive(Debug, Clone)]
pub struct XlConfig {
    /// A comment line at the top.
    pub comment: Option<String>,
    pub name: String,
    pub mode: GuestMode,
    pub boot: Boot,
    pub memory_mb: u32,
    pub vcpus: u32,
    /// `on_poweroff`: `destroy` (the default) or `preserve`.
    pub keep_on_poweroff: bool,
    /// Lines added as they are (settings with their comments).
    pub extra: Vec<String>,
}

impl XlConfig {
    /// A one-vCPU guest of `memory_mb` booting `boot`.
    pub fn new(name: &str, mode: GuestMode, boot: Boot, memory_mb: u32) -> Self {
        Self {
            comment: None,
            name: name.to_string(),
            mode,
            boot,
            memory_mb,
            vcpus: 1,
            keep_on_poweroff: false,
            extra: Vec::new(),
        }
    }

    /// A unikernel guest from its image.
    pub fn image(name: &str, mode: GuestMode, image: &Path, memory_mb: u32) -> Self {
        Self::new(name, mode, Boot::Image(image.to_path_buf()), memory_mb)
    }

    /// The config's text.
    pub fn render(&self) -> String {
        let mut c = String::new();
        if let Some(comment) = &self.comment {
            let _ = writeln!(c, "# {comment}");
        }
        let _ = writeln!(c, "name=\"{}\"\ntype=\"{}\"", self.name, self.mode.name());
        let hvm = self.mode == GuestMode::Hvm;
        match &self.boot {
            Boot::Image(image) if hvm => {
                let _ = writeln!(c, "firmware_override=\"{}\"", image.display());
            }
            Boot::Image(image) => {
                let _ = writeln!(c, "kernel=\"{}\"", image.display());
            }
            Boot::Linux {
                kernel,
                ramdisk,
                cmdline,
            } => {
                let key = if hvm { "cmdline" } else { "extra" };
                let _ = writeln!(
                    c,
                    "kernel=\"{}\"\nramdisk=\"{}\"\n{key}=\"{cmdline}\"",
                    kernel.display(),
                    ramdisk.display()
                );
            }
        }
        if hvm {
            c.push_str("device_model_version=\"qemu-xen\"\nvnc=0\nvga=\"none\"\nserial=\"pty\"\n");
        }
        for line in &self.extra {
            let _ = writeln!(c, "{line}");
        }
        let poweroff = if self.keep_on_poweroff {
            "preserve"
        } else {
            "destroy"
        };
        let _ = writeln!(
            c,
            "memory={}\nvcpus={}\non_poweroff=\"{poweroff}\"\non_reboot=\"preserve\"\non_crash=\"preserve\"",
            self.memory_mb, self.vcpus
        );
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unikernel_configs() {
        let pv = XlConfig::image("t-pv", GuestMode::Pv, Path::new("/w/t-pv"), 32).render();
        assert_eq!(
            pv,
            "name=\"t-pv\"\ntype=\"pv\"\nkernel=\"/w/t-pv\"\nmemory=32\nvcpus=1\n\
             on_poweroff=\"destroy\"\non_reboot=\"preserve\"\non_crash=\"preserve\"\n"
        );
        let mut hvm = XlConfig::image("t", GuestMode::Hvm, Path::new("/w/t-hvm"), 64);
        hvm.vcpus = 2;
        hvm.keep_on_poweroff = true;
        let hvm = hvm.render();
        for line in [
            "type=\"hvm\"",
            "firmware_override=\"/w/t-hvm\"",
            "device_model_version=\"qemu-xen\"",
            "vcpus=2",
            "on_poweroff=\"preserve\"",
        ] {
            assert!(hvm.lines().any(|l| l == line), "{line} in {hvm}");
        }
        assert!(!hvm.contains("kernel="));
    }

    #[test]
    fn linux_configs() {
        let boot = |k: &str| Boot::Linux {
            kernel: k.into(),
            ramdisk: "/i".into(),
            cmdline: "console=hvc0".into(),
        };
        let mut pvh = XlConfig::new("l", GuestMode::Pvh, boot("/vmlinux"), 256);
        pvh.comment = Some("Linux".into());
        pvh.extra.push("hap=0".into());
        let pvh = pvh.render();
        assert!(pvh.starts_with("# Linux\nname=\"l\"\ntype=\"pvh\"\nkernel=\"/vmlinux\"\n"));
        assert!(pvh.contains("ramdisk=\"/i\"\nextra=\"console=hvc0\"\n"));
        assert!(pvh.contains("hap=0\nmemory=256\n"));
        let hvm = XlConfig::new("l", GuestMode::Hvm, boot("/vmlinuz"), 256).render();
        assert!(hvm.contains("kernel=\"/vmlinuz\"\nramdisk=\"/i\"\ncmdline=\"console=hvc0\"\n"));
    }
}
