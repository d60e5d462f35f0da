//! The hypervisor images the lab boots: Debian's stock Xen, or Debian's Xen source
//! rebuilt with the options that PV debugging needs (gdbsx, shadow paging, ...).
//!
//! Both are uncompressed multiboot ELF files (what QEMU's `-kernel` takes), kept in a
//! cache directory and made again only when their inputs change. The debug build uses a
//! private apt configuration (under the cache directory) with `deb-src` entries derived
//! from the machine's own Debian sources ([`super::debian`]), so the system's apt setup
//! is left untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use super::debian::{dsc_name, installed_version, parse_showsrc, source_candidates, PrivateApt};

/// Which hypervisor the lab boots.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// Debian's binary hypervisor (`/boot/xen-*-amd64.gz`).
    #[default]
    Stock,
    /// Debian's hypervisor source rebuilt with [`DEBUG_FRAGMENT`] (gdbsx, shadow paging,
    /// memory sharing): PV breakpoints, single-step and PV log-dirty work.
    Debug,
    /// Debian 13's Xen 4.20: its hypervisor, and a dom0 whose Xen tools,
    /// libraries and device model are Debian 13's ([`super::root`]).
    #[value(name = "4.20")]
    #[serde(rename = "4.20")]
    Xen420,
}

impl Flavour {
    /// The flavour's name as used on the command line and in paths.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Stock => "stock",
            Flavour::Debug => "debug",
            Flavour::Xen420 => "4.20",
        }
    }

    /// The flavour commands use when none is given: `XENPROBE_XEN`, else stock.
    pub fn from_env() -> Self {
        std::env::var("XENPROBE_XEN")
            .ok()
            .and_then(|v| <Self as clap::ValueEnum>::from_str(&v, true).ok())
            .unwrap_or_default()
    }

    /// The Xen release whose libraries dom0 has when it is not the
    /// machine's own: binaries for this lab are built against them.
    pub fn foreign_release(self) -> Option<&'static str> {
        match self {
            Flavour::Stock | Flavour::Debug => None,
            Flavour::Xen420 => Some("4.20"),
        }
    }

    /// The environment for cargo builds of binaries that run in this lab's
    /// dom0 (empty: the machine's own Xen), see [`crate::xen_sysroot`].
    pub fn cargo_env(self) -> Result<Vec<(&'static str, String)>> {
        match self.foreign_release() {
            None => Ok(vec![]),
            Some(v) => crate::xen_sysroot::prepare(v, false),
        }
    }

    /// Where cargo puts binaries for this lab's dom0.
    pub fn target_dir(self) -> PathBuf {
        match self.foreign_release() {
            None => crate::ws::target_dir(),
            Some(v) => crate::xen_sysroot::target_dir(v),
        }
    }

    /// The root holding the flavour's hypervisor (`boot/`) and dom0 userland:
    /// the machine's own, or the Debian 13 root made for the 4.20 lab.
    pub fn root(self) -> Result<PathBuf> {
        match self {
            Flavour::Stock | Flavour::Debug => Ok(PathBuf::from("/")),
            Flavour::Xen420 => super::root::ensure(),
        }
    }
}

/// A hypervisor image ready to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenImage {
    /// The uncompressed multiboot ELF.
    pub elf: PathBuf,
    /// Identifies the image for cache keys: `<flavour>-<FNV-1a 64 of the ELF, hex>`.
    pub id: String,
}

/// Kconfig options added to Debian's hypervisor configuration for the debug flavour.
pub const DEBUG_FRAGMENT: &str = "\
CONFIG_EXPERT=y
CONFIG_UNSUPPORTED=y
CONFIG_GDBSX=y
CONFIG_SHADOW_PAGING=y
CONFIG_MEM_SHARING=y
";

/// Bump when the way the debug image is built changes, to force a rebuild.
const RECIPE_REVISION: u32 = 3;

/// Debian packages the hypervisor build needs (`apt-get source` + `make -C xen`).
const BUILD_PACKAGES: &[&str] = &[
    "dpkg-dev",
    "xz-utils",
    "gcc",
    "libc6-dev",
    "binutils",
    "make",
    "bison",
    "flex",
    "python3",
];

/// Returns an uncompressed multiboot Xen ELF for `flavour`, extracting or building it
/// into `cache_dir` when it is missing or stale. Prints progress of the (minutes long)
/// debug build to stderr; holds a lock on `cache_dir` so that concurrent callers wait.
pub fn hypervisor(flavour: Flavour, cache_dir: &Path) -> Result<XenImage> {
    fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let _lock = DirLock::acquire(cache_dir)?;
    let boot = BootXen::find(&flavour.root()?.join("boot"))?;
    let dir = cache_dir.join(flavour.name());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let elf = match flavour {
        Flavour::Stock | Flavour::Xen420 => stock(&boot, &dir)?,
        Flavour::Debug => debug(&boot, &dir)?,
    };
    let bytes = fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
    check_multiboot_elf(&bytes).with_context(|| format!("checking {}", elf.display()))?;
    Ok(XenImage {
        id: format!("{}-{:016x}", flavour.name(), xenprobe_abi::fnv1a(&bytes)),
        elf,
    })
}

/// Debian's installed hypervisor: `/boot/xen-<series>-amd64.gz` and its `.config`.
#[derive(Debug)]
struct BootXen {
    gz: PathBuf,
    config: PathBuf,
    /// The Xen series in the file name, e.g. `4.17`.
    series: String,
}

impl BootXen {
    fn find(boot: &Path) -> Result<Self> {
        let mut found: Vec<(Vec<u64>, String)> = Vec::new();
        for entry in fs::read_dir(boot).with_context(|| format!("listing {}", boot.display()))? {
            let name = entry?.file_name();
            let Some(series) = name
                .to_str()
                .and_then(|n| n.strip_prefix("xen-"))
                .and_then(|n| n.strip_suffix("-amd64.gz"))
            else {
                continue;
            };
            let Some(key) = series
                .split('.')
                .map(|p| p.parse::<u64>().ok())
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            found.push((key, series.to_owned()));
        }
        let Some((_, series)) = found.into_iter().max() else {
            bail!(
                "no Xen hypervisor in {} (xen-*-amd64.gz); install it with: \
                 apt-get install xen-hypervisor-4.17-amd64",
                boot.display()
            );
        };
        Ok(Self {
            gz: boot.join(format!("xen-{series}-amd64.gz")),
            config: boot.join(format!("xen-{series}-amd64.config")),
            series,
        })
    }

    /// The Debian package that ships this hypervisor.
    fn package(&self) -> String {
        format!("xen-hypervisor-{}-amd64", self.series)
    }
}

/// `zcat` Debian's hypervisor into `dir/xen.elf` unless the cached copy came from the
/// same compressed file.
fn stock(boot: &BootXen, dir: &Path) -> Result<PathBuf> {
    let elf = dir.join("xen.elf");
    let stamp = dir.join("stamp");
    let gz = fs::read(&boot.gz).with_context(|| format!("reading {}", boot.gz.display()))?;
    let key = format!(
        "source={}\nfnv={:016x}\n",
        boot.gz.display(),
        xenprobe_abi::fnv1a(&gz)
    );
    if elf.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        return Ok(elf);
    }
    let tmp = dir.join("xen.elf.tmp");
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let status = Command::new("zcat")
        .arg(&boot.gz)
        .stdout(out)
        .status()
        .context("running zcat")?;
    if !status.success() {
        bail!("zcat {} failed: {status}", boot.gz.display());
    }
    fs::rename(&tmp, &elf)?;
    fs::write(&stamp, key)?;
    Ok(elf)
}

/// What the debug image depends on; the image is rebuilt when any of it changes.
#[derive(Debug, PartialEq, Eq)]
struct DebugKey {
    /// Version of the installed hypervisor package (the source version follows from it).
    installed: String,
    base_config: u64,
    fragment: u64,
    recipe: u32,
}

impl DebugKey {
    fn render(&self) -> String {
        format!(
            "installed={}\nbase-config={:016x}\nfragment={:016x}\nrecipe={}\n",
            self.installed, self.base_config, self.fragment, self.recipe
        )
    }

    /// Whether `stamp` (a rendered key followed by other lines) was written for `self`.
    fn matches(&self, stamp: &str) -> bool {
        stamp.starts_with(&self.render())
    }
}

/// Build (or reuse) the debug hypervisor in `dir`; returns the path of its ELF.
fn debug(boot: &BootXen, dir: &Path) -> Result<PathBuf> {
    let elf = dir.join("xen.elf");
    let stamp_path = dir.join("stamp");
    let base_config = fs::read_to_string(&boot.config)
        .with_context(|| format!("reading {}", boot.config.display()))?;
    let key = DebugKey {
        installed: installed_version(&boot.package())?,
        base_config: xenprobe_abi::fnv1a(base_config.as_bytes()),
        fragment: xenprobe_abi::fnv1a(DEBUG_FRAGMENT.as_bytes()),
        recipe: RECIPE_REVISION,
    };
    if elf.is_file()
        && fs::read_to_string(&stamp_path)
            .map(|s| key.matches(&s))
            .unwrap_or(false)
    {
        return Ok(elf);
    }

    let log_path = dir.join("build.log");
    let mut build = Build::start(&log_path)?;
    eprintln!(
        "xenlab: building the debug hypervisor (Xen {}); log: {}",
        boot.series,
        log_path.display()
    );
    let result = build_debug(&mut build, boot, dir, &base_config);
    match result {
        Ok((source_version, built)) => {
            let tmp = dir.join("xen.elf.tmp");
            fs::copy(&built, &tmp)?;
            fs::rename(&tmp, &elf)?;
            fs::write(
                &stamp_path,
                format!("{}source={source_version}\n", key.render()),
            )?;
            eprintln!(
                "xenlab: debug hypervisor built from xen {source_version} in {:.0} s: {}",
                build.started.elapsed().as_secs_f64(),
                elf.display()
            );
            Ok(elf)
        }
        Err(e) => {
            let _ = fs::remove_file(&stamp_path);
            eprintln!(
                "xenlab: the debug hypervisor build failed; last lines of {}:",
                log_path.display()
            );
            eprint!("{}", tail(&log_path, 30));
            Err(e)
        }
    }
}

/// Runs the steps of the debug build; returns the source version used and the built ELF.
fn build_debug(
    build: &mut Build,
    boot: &BootXen,
    dir: &Path,
    base_config: &str,
) -> Result<(String, PathBuf)> {
    ensure_packages(build, BUILD_PACKAGES)?;

    let apt = PrivateApt::setup(&dir.join("apt"))?;
    build.step("updating the private deb-src package lists", |b| {
        b.run(apt.command("apt-get").arg("update"))
    })?;
    let installed = installed_version(&boot.package())?;
    let listing = build.output(apt.command("apt-cache").args(["showsrc", "xen"]))?;
    let candidates = source_candidates(&parse_showsrc(&listing, "xen"), &installed, &boot.series)?;
    if candidates.is_empty() {
        bail!(
            "no xen {} source package is listed by the deb-src entries",
            boot.series
        );
    }

    let downloads = dir.join("downloads");
    fs::create_dir_all(&downloads)?;
    let mut chosen = None;
    for version in &candidates {
        let dsc = downloads.join(dsc_name("xen", version));
        if dsc.is_file() {
            chosen = Some((version.clone(), dsc));
            break;
        }
        let ok = build.step(&format!("downloading the xen {version} source"), |b| {
            b.run(
                apt.command("apt-get")
                    .args(["source", "--download-only"])
                    .arg(format!("xen={version}"))
                    .current_dir(&downloads),
            )
        });
        if ok.is_ok() && dsc.is_file() {
            chosen = Some((version.clone(), dsc));
            break;
        }
        let msg =
            format!("the xen {version} source could not be downloaded; trying the next candidate");
        eprintln!("xenlab:   {msg}");
        build.note(&msg)?;
    }
    let Some((version, dsc)) = chosen else {
        bail!("none of the xen source versions {candidates:?} could be downloaded");
    };
    if version != installed {
        eprintln!(
            "xenlab: the xen {installed} source is not served; using {version} \
             (its hypervisor runs with the installed tools)"
        );
    }

    let src = dir.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    build.step("unpacking and patching the source", |b| {
        b.run(
            Command::new("dpkg-source")
                .args(["--no-copy", "-x"])
                .arg(&dsc)
                .arg(&src),
        )
    })?;

    let stamp = BuildStamp::from_changelog(build, &src, &version)?;
    let xen_dir = src.join("xen");
    let config_path = xen_dir.join(".config");
    fs::write(&config_path, merge_config(base_config, DEBUG_FRAGMENT))?;
    build.step("configuring (make olddefconfig)", |b| {
        b.run(make(&xen_dir, &stamp).arg("olddefconfig"))
    })?;
    let merged = fs::read_to_string(&config_path)?;
    let missing = missing_options(&merged, DEBUG_FRAGMENT);
    if !missing.is_empty() {
        bail!("make olddefconfig dropped {missing:?} from the hypervisor configuration");
    }
    fs::copy(&config_path, dir.join("xen.config"))?;

    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    build.step(&format!("compiling the hypervisor (make -j{jobs})"), |b| {
        b.run(make(&xen_dir, &stamp).arg(format!("-j{jobs}")))
    })?;
    let built = xen_dir.join("xen");
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    check_multiboot_elf(&bytes).with_context(|| format!("checking {}", built.display()))?;
    Ok((version, built))
}

/// `make -C xen_dir` with the environment Debian's packaging uses for the hypervisor
/// (no user CFLAGS, no downloads), made reproducible: `stamp` fixes the build date, user
/// and host, and source paths are mapped to `.`, so the same inputs give the same ELF.
fn make(xen_dir: &Path, stamp: &BuildStamp) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(xen_dir);
    for var in [
        "CFLAGS",
        "CXXFLAGS",
        "CPPFLAGS",
        "LDFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let src = xen_dir.parent().unwrap_or(xen_dir).display().to_string();
    cmd.env("WGET", "/bin/false")
        .env("GIT", "/bin/false")
        .env("SOURCE_DATE_EPOCH", &stamp.epoch)
        .env("XEN_BUILD_DATE", &stamp.date)
        .env("XEN_BUILD_TIME", &stamp.time)
        .env("XEN_WHOAMI", "xenprobe")
        .env("XEN_DOMAIN", "lab")
        .env("XEN_BUILD_HOST", "xenprobe")
        .env("DEB_VERSION", &stamp.version)
        .env("DEB_MAINTAINER", "xenprobe <xenprobe@lab>")
        .arg(format!(
            "EXTRA_CFLAGS_XEN_CORE=-ffile-prefix-map={src}=. -fdebug-prefix-map={src}=."
        ));
    cmd
}

/// What Xen embeds about its build: the version banner (Debian's patches print
/// `DEB_VERSION`; ours ends in `+xenprobe-debug`) and the date, taken from the source
/// package's changelog as Debian does.
struct BuildStamp {
    version: String,
    epoch: String,
    date: String,
    time: String,
}

impl BuildStamp {
    fn from_changelog(build: &mut Build, src: &Path, source_version: &str) -> Result<Self> {
        let changelog = src.join("debian/changelog");
        let epoch = build
            .output(
                Command::new("dpkg-parsechangelog")
                    .arg("-l")
                    .arg(&changelog)
                    .args(["-S", "Timestamp"]),
            )?
            .trim()
            .to_owned();
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
            bail!("unexpected timestamp {epoch:?} in {}", changelog.display());
        }
        let mut date = |format: Option<&str>| -> Result<String> {
            let mut cmd = Command::new("date");
            cmd.env("LC_ALL", "C")
                .args(["-u", "-d"])
                .arg(format!("@{epoch}"));
            cmd.args(format);
            Ok(build.output(&mut cmd)?.trim().to_owned())
        };
        Ok(Self {
            version: format!("{source_version}+xenprobe-debug"),
            date: date(None)?,
            time: date(Some("+%T"))?,
            epoch,
        })
    }
}

/// Installs the missing `packages` when running as root on Debian; otherwise fails with
/// the command to run.
fn ensure_packages(build: &mut Build, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${db:Status-Abbrev}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).starts_with("ii"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    let root = crate::sys::is_root();
    if !root || !Path::new("/etc/debian_version").exists() {
        bail!(
            "building the debug hypervisor needs these packages: {list}\n\
             install them with: sudo apt-get install --no-install-recommends {list}"
        );
    }
    build.step(&format!("installing {list}"), |b| {
        let install = || {
            let mut cmd = Command::new("apt-get");
            cmd.args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        if b.run(&mut install()).is_ok() {
            return Ok(());
        }
        b.run(Command::new("apt-get").arg("update"))?;
        b.run(&mut install())
    })
}

/// The Kconfig symbol a `.config` line sets or unsets (`CONFIG_X=...` or
/// `# CONFIG_X is not set`).
fn config_symbol(line: &str) -> Option<&str> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        return rest
            .strip_suffix(" is not set")
            .filter(|s| s.starts_with("CONFIG_"));
    }
    line.split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| k.starts_with("CONFIG_"))
}

/// `base` with every symbol of `fragment` replaced by the fragment's setting.
fn merge_config(base: &str, fragment: &str) -> String {
    let overridden: Vec<&str> = fragment.lines().filter_map(config_symbol).collect();
    let mut out = String::new();
    for line in base.lines() {
        if config_symbol(line).is_some_and(|s| overridden.contains(&s)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("# xenprobe debug flavour\n");
    for line in fragment.lines().filter(|l| config_symbol(l).is_some()) {
        out.push_str(line.trim());
        out.push('\n');
    }
    out
}

/// The fragment lines that `config` does not contain verbatim.
fn missing_options<'a>(config: &str, fragment: &'a str) -> Vec<&'a str> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| config_symbol(l).is_some())
        .filter(|l| !config.lines().any(|c| c.trim() == *l))
        .collect()
}

/// Checks that `bytes` is an ELF file with a multiboot (v1) header in its first 8 KiB,
/// which is what QEMU's `-kernel` needs to boot Xen.
fn check_multiboot_elf(bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(b"\x7fELF") {
        bail!("not an ELF file");
    }
    const MAGIC: u32 = 0x1bad_b002;
    let window = &bytes[..bytes.len().min(8192)];
    let found = window.chunks_exact(4).enumerate().any(|(i, w)| {
        let word = |k: usize| -> Option<u32> {
            let o = (i + k) * 4;
            Some(u32::from_le_bytes(window.get(o..o + 4)?.try_into().ok()?))
        };
        u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == MAGIC
            && matches!((word(1), word(2)), (Some(f), Some(c)) if MAGIC.wrapping_add(f).wrapping_add(c) == 0)
    });
    if !found {
        bail!("no multiboot header in the first 8 KiB (QEMU -kernel cannot boot it)");
    }
    Ok(())
}

/// The last `n` lines of the file at `path` (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// A build in progress: its log file and timing.
struct Build {
    log: File,
    started: Instant,
}

impl Build {
    fn start(path: &Path) -> Result<Self> {
        let log = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            log,
            started: Instant::now(),
        })
    }

    fn note(&mut self, msg: &str) -> io::Result<()> {
        writeln!(self.log, "### {msg}")
    }

    /// Runs one named step, reporting it and its duration on stderr.
    fn step<T>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        eprintln!("xenlab:   {what}...");
        self.note(what)?;
        let t = Instant::now();
        let r = f(self).with_context(|| format!("debug hypervisor build: {what}"));
        let secs = t.elapsed().as_secs_f64();
        self.note(&format!(
            "{what}: {} after {secs:.1} s",
            if r.is_ok() { "done" } else { "FAILED" }
        ))?;
        if r.is_ok() {
            eprintln!("xenlab:   {what}: {secs:.1} s");
        }
        r
    }

    /// Runs `cmd` with its output appended to the log; fails on a non-zero exit.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        writeln!(self.log, "$ {cmd:?}")?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(self.log.try_clone()?)
            .stderr(self.log.try_clone()?)
            .status()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        if !status.success() {
            bail!("{:?} failed: {status}", cmd.get_program());
        }
        Ok(())
    }

    /// Runs `cmd` and returns its stdout; stderr goes to the log.
    fn output(&mut self, cmd: &mut Command) -> Result<String> {
        writeln!(self.log, "$ {cmd:?}")?;
        let out = cmd
            .stdin(Stdio::null())
            .stderr(self.log.try_clone()?)
            .output()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        if !out.status.success() {
            bail!("{:?} failed: {}", cmd.get_program(), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// An exclusive `flock` on `<dir>/.lock`, released when dropped (or when the process dies).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let locked = crate::sys::flock_exclusive(&file, false)
            .with_context(|| format!("locking {}", path.display()))?;
        if !locked {
            eprintln!(
                "xenlab: waiting for another command that is preparing {}",
                dir.display()
            );
            crate::sys::flock_exclusive(&file, true)
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_settings_of_fragment_symbols() {
        let base = "# comment\nCONFIG_PV=y\n# CONFIG_SHADOW_PAGING is not set\nCONFIG_GDBSX=n\n\
                    # CONFIG_EXPERT is not set\nCONFIG_HVM=y\n";
        let merged = merge_config(base, DEBUG_FRAGMENT);
        assert!(merged.contains("# comment\nCONFIG_PV=y\n"));
        assert!(merged.contains("CONFIG_HVM=y\n"));
        assert!(!merged.contains("is not set"));
        assert!(!merged.contains("CONFIG_GDBSX=n"));
        for line in DEBUG_FRAGMENT.lines() {
            assert_eq!(merged.lines().filter(|l| *l == line).count(), 1, "{line}");
        }
        assert!(missing_options(&merged, DEBUG_FRAGMENT).is_empty());
        assert_eq!(
            missing_options(base, DEBUG_FRAGMENT),
            DEBUG_FRAGMENT.lines().collect::<Vec<_>>()
        );
    }

    #[test]
    fn config_symbol_forms() {
        assert_eq!(config_symbol("CONFIG_A=y"), Some("CONFIG_A"));
        assert_eq!(config_symbol("# CONFIG_B is not set"), Some("CONFIG_B"));
        assert_eq!(config_symbol("# Xen/x86 4.17 Configuration"), None);
        assert_eq!(config_symbol("FOO=1"), None);
    }

    #[test]
    fn debug_key_changes_with_each_input() {
        let key = DebugKey {
            installed: "4.17.7-1".into(),
            base_config: 1,
            fragment: 2,
            recipe: 1,
        };
        let stamp = format!("{}source=4.17.5-1\n", key.render());
        assert!(key.matches(&stamp));
        let others = [
            DebugKey {
                installed: "4.17.8-1".into(),
                ..key_clone(&key)
            },
            DebugKey {
                base_config: 3,
                ..key_clone(&key)
            },
            DebugKey {
                fragment: 3,
                ..key_clone(&key)
            },
            DebugKey {
                recipe: 2,
                ..key_clone(&key)
            },
        ];
        for other in others {
            assert!(!other.matches(&stamp), "{other:?}");
        }
        assert!(!key.matches(""));
    }

    fn key_clone(k: &DebugKey) -> DebugKey {
        DebugKey {
            installed: k.installed.clone(),
            ..*k
        }
    }

    #[test]
    fn multiboot_check() {
        let mut image = vec![0u8; 4096];
        image[..4].copy_from_slice(b"\x7fELF");
        assert!(check_multiboot_elf(&image).is_err());
        let (magic, flags) = (0x1bad_b002u32, 0x0001_0003u32);
        let checksum = 0u32.wrapping_sub(magic).wrapping_sub(flags);
        for (i, w) in [magic, flags, checksum].iter().enumerate() {
            image[64 + 4 * i..68 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        assert!(check_multiboot_elf(&image).is_ok());
        image[72] ^= 1; // bad checksum
        assert!(check_multiboot_elf(&image).is_err());
        image[72] ^= 1;
        image[0] = 0;
        assert!(check_multiboot_elf(&image).is_err());
    }
}
