//! The dom0 image: Debian's kernel plus an initramfs with busybox, Xen's tools,
//! the HVM device model, the kernel modules dom0 needs and the lab agent.
//!
//! The image is rebuilt only when one of its inputs changes (a stamp of every
//! source file's path, size and modification time sits next to it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cpio::Archive;

/// The agent's port inside dom0.
pub const AGENT_PORT: u16 = 7000;

/// A built dom0 image.
pub struct Dom0 {
    /// The dom0 kernel (Debian's `vmlinuz`, decompressed: see `kernel.rs`).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Identifies the image's contents (for cache keys).
    pub id: String,
}

/// Modules dom0 loads, in this order after their dependencies.
const MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-privcmd",
    "xenfs",
    "xen-gntdev",
    "xen-gntalloc",
    "virtio_pci",
    "virtio_net",
    "9pnet_virtio",
    "9p",
];

/// dom0's boot script (run once by busybox init).
const RC: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:@XENBIN@
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/xen /run/xenstored /var/lib/xen /var/log/xen /var/run
echo "XENLAB: init start uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m; do insmod "$m" || echo "XENLAB: insmod $m failed"; done < /etc/xenlab/modules
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /run/xenstored.pid || echo "XENLAB: xenstored failed"
xen-init-dom0 || echo "XENLAB: xen-init-dom0 failed"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
  || echo "XENLAB: network setup failed"
echo "XENLAB: xen tools up uptime=$(cut -d' ' -f1 /proc/uptime)"
"#;

/// busybox init's table: run the boot script, then keep the agent running.
const INITTAB: &str = "::sysinit:/etc/xenlab/rc\n\
::respawn:/usr/bin/xenlab-agent --port @PORT@\n\
::ctrlaltdel:/bin/poweroff -f\n";

/// Mounts the host's workspace at the same path and starts the console
/// daemon logging into it. Run by the host once per boot (after a restored
/// snapshot too: a mounted share would block QEMU from saving the lab).
const ATTACH: &str = r#"#!/bin/sh
# usage: xenlab-attach WORKSPACE CONSOLE_LOG_DIR
set -e
if ! grep -q " $1 9p " /proc/mounts; then
  mkdir -p "$1"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 "$1"
fi
mkdir -p "$2"
if ! pidof xenconsoled >/dev/null; then
  xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir="$2"
fi
"#;

/// Builds (or reuses) the dom0 image in `dir`, with `agent` as the lab agent
/// and the Xen userland (tools, libraries, device model) of `root`: `/` or
/// the Debian 13 root of the 4.20 lab. The kernel, its modules, busybox and
/// the guests' firmware are always the machine's own.
pub fn build(dir: &Path, agent: &Path, root: &Path) -> Result<Dom0> {
    let kver = kernel_version()?;
    let kernel = super::kernel::dom0_kernel(dir, Path::new(&format!("/boot/vmlinuz-{kver}")));
    let r = Root(root);
    let xen_lib = xen_lib_dir(root)?;
    let mut inputs = Inputs::default();

    inputs.add("/bin/busybox", "bin/busybox", 0o755);
    inputs.add(agent, "usr/bin/xenlab-agent", 0o755);
    for e in read_dir(&xen_lib.join("bin"))? {
        let name = file_name(&e);
        inputs.add(
            r.file(&e),
            &format!("{}/bin/{name}", r.rel(&xen_lib)),
            0o755,
        );
    }
    // From xen_lib/boot only hvmloader (HVM guests without firmware_override,
    // e.g. Linux booted with `kernel=`), not the PVH shim (6 MB, `pvshim` guests).
    let hvmloader = xen_lib.join("boot/hvmloader");
    if hvmloader.exists() {
        inputs.add(r.file(&hvmloader), &r.rel(&hvmloader), 0o644);
    }
    for e in read_dir(&root.join("usr/bin"))? {
        if file_name(&e).starts_with("xenstore") {
            inputs.add(r.file(&e), &format!("usr/bin/{}", file_name(&e)), 0o755);
        }
    }
    let dm = root.join("usr/libexec/xen-qemu-system-i386");
    if dm.exists() {
        inputs.add(r.file(&dm), "usr/libexec/xen-qemu-system-i386", 0o755);
        for e in walk(Path::new("/usr/share/qemu/keymaps"))? {
            inputs.add(&e, &rel(&e), 0o644);
        }
        for f in [
            "/usr/share/seabios/bios-256k.bin",
            "/usr/share/seabios/bios.bin",
            // The option ROM of HVM direct kernel boot (`kernel=` in an HVM config).
            "/usr/share/qemu/linuxboot_dma.bin",
        ] {
            if Path::new(f).exists() {
                inputs.add(Path::new(f), &rel(Path::new(f)), 0o644);
            }
        }
    }
    let xl_conf = root.join("etc/xen/xl.conf");
    if xl_conf.exists() {
        inputs.add(r.file(&xl_conf), "etc/xen/xl.conf", 0o644);
    }
    // Every Xen library (test binaries link more of them than xl does),
    // plus what each binary needs, and libgcc_s for Rust's unwinder.
    let mut libs = vec![];
    for e in read_dir(&root.join("usr/lib/x86_64-linux-gnu"))? {
        let n = file_name(&e);
        if n.starts_with("libxen") && n.contains(".so.") {
            libs.push(e);
        }
    }
    let elf_inputs: Vec<PathBuf> = inputs.files.iter().map(|(s, _, _)| s.clone()).collect();
    let mut needed = vec![];
    for f in elf_inputs.iter().chain(libs.iter()) {
        needed.extend(r.shared_libs(f)?);
    }
    libs.extend(needed);
    libs.push(r.find(&[
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
        "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    ])?);
    libs.sort();
    libs.dedup();
    for l in &libs {
        inputs.add(r.file(l), &r.rel(l), 0o755);
    }
    let ld_so = r.find(LD_SO)?;
    inputs.add(r.file(&ld_so), "lib64/ld-linux-x86-64.so.2", 0o755);
    let modules = module_paths(&kver)?;
    for m in &modules {
        inputs.add(m, &rel(m), 0o644);
    }

    let rc = RC.replace("@XENBIN@", &format!("/{}/bin", r.rel(&xen_lib)));
    let inittab = INITTAB.replace("@PORT@", &AGENT_PORT.to_string());
    let module_list: String = modules
        .iter()
        .map(|m| format!("{}\n", m.display()))
        .collect();
    // This file's own text is an input too: a change to the layout rebuilds.
    let stamp = inputs.stamp(&[
        &kver,
        &rc,
        &inittab,
        ATTACH,
        &module_list,
        include_str!("image.rs"),
    ])?;

    let initramfs = dir.join("dom0.cpio");
    let stamp_file = dir.join("dom0.stamp");
    let id = format!("{:016x}", super::fnv1a(stamp.as_bytes()));
    if initramfs.exists() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return Ok(Dom0 {
            kernel,
            initramfs,
            id,
        });
    }
    eprintln!("lab: building the dom0 image (kernel {kver})");
    let mut a = Archive::default();
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "mnt",
        "etc/xen",
        "var/lib/xen",
        "var/log/xen",
    ] {
        a.dir(d);
    }
    for (src, dst, mode) in &inputs.files {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        a.file(dst, data, *mode);
    }
    for applet in busybox_applets()? {
        let taken = ["bin", "sbin", "usr/bin", "usr/sbin"]
            .iter()
            .any(|d| a.contains(format!("{d}/{applet}")));
        if !taken {
            a.symlink(format!("bin/{applet}"), "busybox");
        }
    }
    // Xen's tools on every PATH (the agent's too), like Debian's wrapper does.
    for (_, dst, _) in inputs
        .files
        .iter()
        .filter(|(_, d, _)| d.starts_with(&format!("{}/bin/", r.rel(&xen_lib))))
    {
        let name = dst.rsplit('/').next().unwrap_or_default();
        if !a.contains(format!("usr/sbin/{name}")) {
            a.symlink(format!("usr/sbin/{name}"), &format!("/{dst}"));
        }
    }
    a.symlink("init", "bin/busybox");
    a.symlink("sbin/init", "../bin/busybox");
    a.symlink("var/run", "../run");
    a.file("etc/inittab", inittab.into_bytes(), 0o644);
    a.file("etc/xenlab/rc", rc.into_bytes(), 0o755);
    a.file("etc/xenlab/modules", module_list.into_bytes(), 0o644);
    a.file("usr/sbin/xenlab-attach", ATTACH.as_bytes().to_vec(), 0o755);
    a.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    );
    a.file("etc/group", b"root:x:0:\n".to_vec(), 0o644);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("dom0.cpio.tmp");
    std::fs::write(&tmp, a.to_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &initramfs)?;
    std::fs::write(&stamp_file, &stamp)?;
    Ok(Dom0 {
        kernel,
        initramfs,
        id,
    })
}

#[derive(Default)]
struct Inputs {
    files: Vec<(PathBuf, String, u32)>,
}

impl Inputs {
    fn add(&mut self, src: impl AsRef<Path>, dst: &str, mode: u32) {
        let src = src.as_ref();
        if !self.files.iter().any(|(_, d, _)| d == dst) {
            self.files.push((src.to_path_buf(), dst.to_string(), mode));
        }
    }

    /// A text naming every input by path, size and modification time.
    fn stamp(&self, extra: &[&str]) -> Result<String> {
        let mut s = String::new();
        for (src, dst, mode) in &self.files {
            let m = std::fs::metadata(src).with_context(|| format!("{}", src.display()))?;
            let mtime = super::modified_since_epoch(&m).as_nanos();
            writeln!(s, "{} {dst} {mode:o} {} {mtime}", src.display(), m.len())?;
        }
        for e in extra {
            writeln!(s, "{:016x}", super::fnv1a(e.as_bytes()))?;
        }
        Ok(s)
    }
}

/// The newest kernel in /boot that has its modules installed.
pub fn kernel_version() -> Result<String> {
    let mut versions: Vec<String> = read_dir(Path::new("/boot"))
        .unwrap_or_default()
        .iter()
        .filter_map(|p| file_name(p).strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| Path::new("/lib/modules").join(v).is_dir())
        .collect();
    versions.sort_by_key(|v| natural_key(v));
    versions.pop().context(
        "no dom0 kernel: /boot has no vmlinuz-* with modules in /lib/modules \
         (install linux-image-amd64)",
    )
}

/// Sort key that compares digit runs as numbers ("6.1.0-56" > "6.1.0-9").
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut out = vec![];
    let mut num = String::new();
    let mut txt = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !txt.is_empty() {
                out.push((0, std::mem::take(&mut txt)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(u64::MAX), String::new()));
                num.clear();
            }
            txt.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !txt.is_empty() {
        out.push((0, txt));
    }
    out
}

/// `root/usr/lib/xen-4.17` or whichever version is installed there.
fn xen_lib_dir(root: &Path) -> Result<PathBuf> {
    let lib = root.join("usr/lib");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| file_name(p).starts_with("xen-4.") && p.join("bin/xl").exists())
        .collect();
    dirs.sort_by_key(|p| natural_key(&file_name(p)));
    dirs.pop()
        .context("Xen's tools are not installed (/usr/lib/xen-4.*/bin/xl): install xen-utils-4.17")
}

/// The module files to load, dependencies first.
fn module_paths(kver: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = vec![];
    for m in MODULES {
        add_module(kver, m, &mut out, 0)?;
    }
    Ok(out)
}

fn add_module(kver: &str, name: &str, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 16 {
        bail!("module dependencies of {name} are too deep");
    }
    let field = |f: &str| -> Result<String> {
        let o = Command::new("modinfo")
            .args(["-k", kver, "-F", f, name])
            .output()
            .context("running modinfo (package kmod)")?;
        if !o.status.success() {
            bail!(
                "modinfo {name} for kernel {kver}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let file = field("filename")?;
    if file.is_empty() || file.starts_with('(') {
        return Ok(()); // built into the kernel
    }
    for dep in field("depends")?.split(',').filter(|d| !d.is_empty()) {
        add_module(kver, dep, out, depth + 1)?;
    }
    let p = PathBuf::from(file);
    if !out.contains(&p) {
        out.push(p);
    }
    Ok(())
}

/// Where a root may keep the dynamic loader (merged `/usr` or not).
const LD_SO: &[&str] = &[
    "lib64/ld-linux-x86-64.so.2",
    "usr/lib64/ld-linux-x86-64.so.2",
    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
];

/// A root holding a Xen userland: `/`, or a root unpacked from Debian's
/// archive (whose symbolic links are resolved inside it, not on the host).
struct Root<'a>(&'a Path);

impl Root<'_> {
    fn is_host(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// `path` (below the root) with its symbolic links followed inside the root.
    fn file(&self, path: &Path) -> PathBuf {
        let mut p = path.to_path_buf();
        for _ in 0..40 {
            let Ok(target) = std::fs::read_link(&p) else {
                break;
            };
            p = if target.is_absolute() {
                self.0.join(target.strip_prefix("/").unwrap_or(&target))
            } else {
                p.parent().unwrap_or(self.0).join(target)
            };
        }
        p
    }

    /// The first of `candidates` (relative to the root) that exists.
    fn find(&self, candidates: &[&str]) -> Result<PathBuf> {
        candidates
            .iter()
            .map(|c| self.0.join(c))
            .find(|p| self.file(p).is_file())
            .with_context(|| format!("none of {candidates:?} in {}", self.0.display()))
    }

    /// `root/usr/lib/x` -> `usr/lib/x`.
    fn rel(&self, p: &Path) -> String {
        rel(p.strip_prefix(self.0).unwrap_or(p))
    }

    /// The shared libraries an ELF file needs (empty for static files and
    /// non-ELF): by `ldd` on the host's root, by the root's own dynamic
    /// loader (`--list`, its libraries first) on another.
    fn shared_libs(&self, path: &Path) -> Result<Vec<PathBuf>> {
        let mut head = [0u8; 4];
        use std::io::Read;
        let ok = std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok();
        if !ok || &head != b"\x7fELF" {
            return Ok(vec![]);
        }
        let o = if self.is_host() {
            Command::new("ldd")
                .arg(path)
                .output()
                .context("running ldd")?
        } else {
            let ld_so = self.file(&self.find(LD_SO)?);
            let dirs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
                .map(|d| self.0.join(d).display().to_string())
                .join(":");
            Command::new(&ld_so)
                .args(["--library-path", &dirs, "--list"])
                .arg(path)
                .output()
                .with_context(|| format!("running {} --list", ld_so.display()))?
        };
        let text = String::from_utf8_lossy(&o.stdout);
        let mut out = vec![];
        for l in text.lines().map(str::trim) {
            let p = match l.split_once("=>") {
                Some((lib, r)) if r.trim_start().starts_with("not found") => {
                    bail!(
                        "{}: {} is not in {}",
                        path.display(),
                        lib.trim(),
                        self.0.display()
                    )
                }
                Some((_, r)) => r.split_whitespace().next(),
                None => l.split_whitespace().next(),
            };
            let Some(p) = p.filter(|p| p.starts_with('/')).map(PathBuf::from) else {
                continue;
            };
            if !self.is_host() && !p.starts_with(self.0) {
                if p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
                {
                    continue; // the loader itself: placed by `build`
                }
                bail!(
                    "{}: {} comes from the host, not from {}",
                    path.display(),
                    p.display(),
                    self.0.display()
                );
            }
            out.push(p);
        }
        Ok(out)
    }
}

fn busybox_applets() -> Result<Vec<String>> {
    let o = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("running /bin/busybox (install busybox-static)")?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `/usr/lib/x` -> `usr/lib/x`.
fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::natural_key;

    #[test]
    fn natural_order_of_kernel_versions() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }
}
