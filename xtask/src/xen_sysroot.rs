//! `cargo xtask xen-sysroot <version>`: builds xenprobe against the headers and
//! libraries of another Xen release than the installed one, without touching
//! the host's. Debian's packages of that release (checked against the
//! archive's signed index) are unpacked into `target/xen-sysroot/<version>/`,
//! their pkg-config files pointed there, and cargo runs with
//! `PKG_CONFIG_LIBDIR`, `BINDGEN_EXTRA_CLANG_ARGS` and a target directory of
//! their own (`target/xen-<version>`).
//! See docs/xen-vmi.md#xen-versions

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::ws;

const MIRROR: &str = "http://deb.debian.org/debian";
const ARCH: &str = "amd64";
const MULTIARCH: &str = "x86_64-linux-gnu";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Xen releases this command can fetch: (version, Debian suite, libxenmisc package).
const RELEASES: &[(&str, &str, &str)] = &[
    ("4.17", "bookworm", "libxenmisc4.17"),
    ("4.20", "trixie", "libxenmisc4.20"),
];

/// Packages unpacked into the sysroot: headers and every library
/// libxenctrl and the others link.
const PACKAGES: &[&str] = &[
    "libxen-dev",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
];

#[derive(Args)]
pub struct XenSysrootArgs {
    /// Xen release to build against (4.17 or 4.20).
    version: String,
    /// Only prepare the sysroot and print the environment for cargo.
    #[arg(long)]
    fetch_only: bool,
    /// Download the packages again even when the sysroot exists.
    #[arg(long)]
    refresh: bool,
    /// A cargo command to run instead of the default ones (clippy, build
    /// --all-targets, the library's unit tests), after `--`.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn main(args: XenSysrootArgs) -> Result<i32> {
    let Some(&(version, suite, misc)) = RELEASES.iter().find(|r| r.0 == args.version) else {
        let known: Vec<&str> = RELEASES.iter().map(|r| r.0).collect();
        bail!(
            "no Debian packages known for Xen {}; known: {}",
            args.version,
            known.join(", ")
        );
    };
    let root = ws::target_dir().join("xen-sysroot").join(version);
    let stamp = root.join(".complete");
    if args.refresh || !stamp.is_file() {
        if root.exists() {
            fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
        }
        let mut packages = PACKAGES.to_vec();
        packages.push(misc);
        let installed = fetch(suite, &packages, &root)?;
        fs::write(&stamp, installed).context("writing the sysroot's stamp")?;
    }
    let env = cargo_env(&root, version);
    if args.fetch_only {
        for (k, v) in &env {
            println!("export {k}='{v}'");
        }
        return Ok(0);
    }
    let runs: Vec<Vec<String>> = if args.cargo_args.is_empty() {
        // The binaries start only where the release's libraries do (their
        // glibc); the library's unit tests link no Xen library and run here.
        [
            "clippy -p xenprobe -p xenprobe-fuzz --all-targets -- -D warnings",
            "build -p xenprobe -p xenprobe-fuzz --all-targets",
            "test -p xenprobe --lib",
        ]
        .iter()
        .map(|c| c.split_whitespace().map(String::from).collect())
        .collect()
    } else {
        vec![args.cargo_args.clone()]
    };
    for run in runs {
        eprintln!("xtask xen-sysroot: cargo {} (Xen {version})", run.join(" "));
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(&run)
            .current_dir(ws::root())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("PKG_CONFIG_PATH")
            .env_remove("PKG_CONFIG_SYSROOT_DIR")
            .status()
            .context("running cargo")?;
        if !status.success() {
            return Ok(status.code().unwrap_or(1));
        }
    }
    Ok(0)
}

/// The environment that points the build at the sysroot.
fn cargo_env(root: &Path, version: &str) -> Vec<(&'static str, String)> {
    let libdir = root.join("usr/lib").join(MULTIARCH);
    // Libraries that libxenctrl itself needs are looked up at link time
    // through -rpath-link, not -L: without it ld takes the host's.
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.is_empty() {
        rustflags.push(' ');
    }
    rustflags.push_str(&format!("-C link-arg=-Wl,-rpath-link,{}", libdir.display()));
    vec![
        (
            "PKG_CONFIG_LIBDIR",
            libdir.join("pkgconfig").display().to_string(),
        ),
        (
            "BINDGEN_EXTRA_CLANG_ARGS",
            format!("-I{}", root.join("usr/include").display()),
        ),
        (
            "CARGO_TARGET_DIR",
            ws::target_dir()
                .join(format!("xen-{version}"))
                .display()
                .to_string(),
        ),
        ("RUSTFLAGS", rustflags),
    ]
}

/// Downloads `packages` of `suite` (verified: signed `InRelease` → `Packages.xz`
/// → each `.deb`), unpacks them into `root` and rewrites their pkg-config
/// files to point there. Returns the list of what was installed.
fn fetch(suite: &str, packages: &[&str], root: &Path) -> Result<String> {
    let dl = PathBuf::from(format!("{}.download", root.display()));
    fs::create_dir_all(&dl)?;
    let dist = format!("{MIRROR}/dists/{suite}");
    let inrelease = dl.join("InRelease");
    curl(&format!("{dist}/InRelease"), &inrelease)?;
    let release = dl.join("Release");
    let out = Command::new("gpgv")
        .args(["--keyring", KEYRING, "--output"])
        .args([&release, &inrelease])
        .output()
        .context("running gpgv (apt-get install gpgv debian-archive-keyring)")?;
    if !out.status.success() {
        bail!(
            "{dist}/InRelease: bad signature:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let index_name = format!("main/binary-{ARCH}/Packages.xz");
    let index_sum = release_sha256(&fs::read_to_string(&release)?, &index_name)
        .with_context(|| format!("{index_name} is not listed in {suite}'s Release"))?;
    let index = dl.join("Packages.xz");
    curl(&format!("{dist}/{index_name}"), &index)?;
    check_sha256(&index, &index_sum)?;
    let out = Command::new("xz")
        .arg("-dc")
        .arg(&index)
        .output()
        .context("running xz")?;
    if !out.status.success() {
        bail!("xz -dc {} failed", index.display());
    }
    let stanzas = parse_packages(&String::from_utf8_lossy(&out.stdout));

    fs::create_dir_all(root)?;
    let mut installed = String::new();
    for &name in packages {
        let p = stanzas
            .get(name)
            .with_context(|| format!("{name} is not in {suite}'s {index_name}"))?;
        let (Some(file), Some(sum), Some(ver)) =
            (p.get("Filename"), p.get("SHA256"), p.get("Version"))
        else {
            bail!("{name}: incomplete entry in {suite}'s {index_name}");
        };
        let deb = dl.join(file.rsplit('/').next().unwrap_or(name));
        eprintln!("xtask xen-sysroot: {name} {ver}");
        curl(&format!("{MIRROR}/{file}"), &deb)?;
        check_sha256(&deb, sum)?;
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .args([&deb, &root.to_path_buf()])
            .status()
            .context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed", deb.display());
        }
        installed.push_str(&format!("{name} {ver}\n"));
    }
    relocate_pkgconfig(
        &root.join("usr/lib").join(MULTIARCH).join("pkgconfig"),
        root,
    )?;
    fs::remove_dir_all(&dl).ok();
    Ok(installed)
}

fn curl(url: &str, to: &Path) -> Result<()> {
    let status = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "-o"])
        .arg(to)
        .arg(url)
        .status()
        .context("running curl")?;
    if !status.success() {
        bail!("downloading {url} failed");
    }
    Ok(())
}

fn check_sha256(file: &Path, want: &str) -> Result<()> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let got = text.split_whitespace().next().unwrap_or_default();
    if !out.status.success() || !got.eq_ignore_ascii_case(want) {
        bail!("{}: SHA256 {got}, the archive says {want}", file.display());
    }
    Ok(())
}

/// The SHA256 of `name` in a Debian `Release` file.
fn release_sha256(release: &str, name: &str) -> Option<String> {
    let section = release.split("\nSHA256:").nth(1)?;
    section
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (sum, _size, file) = (w.next()?, w.next()?, w.next()?);
            (file == name).then(|| sum.to_string())
        })
}

/// The stanzas of a `Packages` index by package name (single-line fields only).
fn parse_packages(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out = HashMap::new();
    for stanza in text.split("\n\n") {
        let fields: HashMap<String, String> = stanza
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        if let Some(name) = fields.get("Package") {
            out.insert(name.clone(), fields);
        }
    }
    out
}

/// Rewrites `prefix=`, `includedir=` and `libdir=` of every `.pc` file in
/// `dir` from `/usr` to `root/usr`.
fn relocate_pkgconfig(dir: &Path, root: &Path) -> Result<()> {
    let usr = root.join("usr");
    let usr = usr.display();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "pc") {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        fs::write(&path, relocate_pc(&text, &usr.to_string()))?;
    }
    Ok(())
}

fn relocate_pc(text: &str, usr: &str) -> String {
    text.lines()
        .map(|l| match l.split_once('=') {
            Some((k @ ("prefix" | "includedir" | "libdir"), v)) if v.starts_with("/usr") => {
                format!("{k}={usr}{}\n", &v["/usr".len()..])
            }
            _ => format!("{l}\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_files_point_into_the_sysroot() {
        let pc = "prefix=/usr\nincludedir=/usr/include\nlibdir=/usr/lib/x86_64-linux-gnu\n\n\
                  Name: Xencontrol\nCflags: -I${includedir}\n";
        let out = relocate_pc(pc, "/s/usr");
        assert!(out.starts_with(
            "prefix=/s/usr\nincludedir=/s/usr/include\nlibdir=/s/usr/lib/x86_64-linux-gnu\n"
        ));
        assert!(out.ends_with("Name: Xencontrol\nCflags: -I${includedir}\n"));
    }

    #[test]
    fn reads_archive_indexes() {
        let release = "Codename: trixie\nMD5Sum:\n 0123 9 main/binary-amd64/Packages.xz\n\
                       SHA256:\n aaaa 10 main/binary-amd64/Packages\n bbbb 9 main/binary-amd64/Packages.xz\n";
        assert_eq!(
            release_sha256(release, "main/binary-amd64/Packages.xz").as_deref(),
            Some("bbbb")
        );
        assert_eq!(release_sha256(release, "contrib/x"), None);
        let packages =
            "Package: libxen-dev\nSource: xen\nVersion: 4.20.4-1\nDescription: d\n more\n\
                        Filename: pool/main/x/xen/libxen-dev_4.20.4-1_amd64.deb\nSHA256: cc\n\n\
                        Package: libxencall1\nVersion: 4.20.4-1\n";
        let p = parse_packages(packages);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p["libxen-dev"]["Filename"],
            "pool/main/x/xen/libxen-dev_4.20.4-1_amd64.deb"
        );
        assert_eq!(p["libxen-dev"]["SHA256"], "cc");
        assert_eq!(p["libxencall1"]["Version"], "4.20.4-1");
    }
}
