//! `cargo xtask xen-sysroot <version>`: builds xenprobe against the headers and
//! libraries of another Xen release than the installed one, without touching
//! the host's. Debian's packages of that release (checked against the
//! archive's signed index) are unpacked into `target/xen-sysroot/<version>/`,
//! their pkg-config files pointed there, and cargo runs with
//! `PKG_CONFIG_LIBDIR`, `BINDGEN_EXTRA_CLANG_ARGS` and a target directory of
//! their own (`target/xen-<version>`).
//! See docs/xen-vmi.md#xen-versions

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::archive::Index;
use crate::ws;

const MULTIARCH: &str = "x86_64-linux-gnu";

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
    let env = prepare(&args.version, args.refresh)?;
    let version = args.version.as_str();
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

/// Makes the sysroot of Xen `version` unless it is there (or `refresh`), and
/// returns the environment that points cargo at it, with a target
/// directory of its own (`target/xen-<version>`).
pub fn prepare(version: &str, refresh: bool) -> Result<Vec<(&'static str, String)>> {
    let Some(&(version, suite, misc)) = RELEASES.iter().find(|r| r.0 == version) else {
        let known: Vec<&str> = RELEASES.iter().map(|r| r.0).collect();
        bail!(
            "no Debian packages known for Xen {version}; known: {}",
            known.join(", ")
        );
    };
    let root = ws::target_dir().join("xen-sysroot").join(version);
    let stamp = root.join(".complete");
    if refresh || !stamp.is_file() {
        if root.exists() {
            fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
        }
        let mut packages = PACKAGES.to_vec();
        packages.push(misc);
        let installed = fetch(suite, &packages, &root)?;
        fs::write(&stamp, installed).context("writing the sysroot's stamp")?;
    }
    Ok(cargo_env(&root, version))
}

/// The target directory of builds against Xen `version`'s sysroot.
pub fn target_dir(version: &str) -> PathBuf {
    ws::target_dir().join(format!("xen-{version}"))
}

/// The environment that points the build at the sysroot.
fn cargo_env(root: &Path, version: &str) -> Vec<(&'static str, String)> {
    let libdir = root.join("usr/lib").join(MULTIARCH);
    // Libraries that libxenctrl itself needs are looked up at link time
    // not through -L but (among others) LD_LIBRARY_PATH: without it ld
    // takes the host's. (Not `-C link-arg=-Wl,-rpath-link`: a RUSTFLAGS of
    // its own would make every cargo run beside it, xtask's through the
    // test runner included, rebuild from scratch.) The directory holds Xen's
    // libraries only, so no host program loads anything else from it.
    let mut ld_path = libdir.display().to_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
        ld_path = format!("{ld_path}:{}", old.to_string_lossy());
    }
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
            target_dir(version).display().to_string(),
        ),
        ("LD_LIBRARY_PATH", ld_path),
    ]
}

/// Unpacks `packages` of `suite` into `root` (see [`crate::archive`]) and
/// rewrites their pkg-config files to point there. Returns the list of what
/// was installed.
fn fetch(suite: &str, packages: &[&str], root: &Path) -> Result<String> {
    let index = Index::fetch(
        suite,
        &PathBuf::from(format!("{}.download", root.display())),
    )?;
    let names: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    let installed = index.unpack(&names, root)?;
    index.done();
    relocate_pkgconfig(
        &root.join("usr/lib").join(MULTIARCH).join("pkgconfig"),
        root,
    )?;
    Ok(installed)
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
}
