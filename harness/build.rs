//! Picks the Xen release to build for from the headers bindgen reads
//! (libxen-sys generates its bindings from them): sets
//! `XENPROBE_XEN_RELEASE` (`xen::BUILT_FOR`) and the `xen_4_18` cfg
//! (libxenctrl's 4.18+ API), and stops on headers of unsupported releases.
//! See docs/xen-vmi.md#xen-versions

use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[path = "src/xen/version.rs"]
mod version;

/// Variables through which bindgen (in libxen-sys) takes extra clang flags.
fn bindgen_arg_vars() -> Vec<String> {
    let target = std::env::var("TARGET").unwrap_or_default();
    vec![
        "BINDGEN_EXTRA_CLANG_ARGS".to_string(),
        format!("BINDGEN_EXTRA_CLANG_ARGS_{target}"),
        format!("BINDGEN_EXTRA_CLANG_ARGS_{}", target.replace('-', "_")),
    ]
}

/// Include directories in the order clang searches them for bindgen: `-I`
/// and `-isystem` from `BINDGEN_EXTRA_CLANG_ARGS*`, then the system ones.
/// pkg-config's include path comes before the system ones too, for setups
/// whose headers are found only through it.
fn include_dirs(pkg_includes: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in bindgen_arg_vars() {
        println!("cargo:rerun-if-env-changed={var}");
        let Ok(args) = std::env::var(&var) else {
            continue;
        };
        let mut words = args.split_whitespace();
        while let Some(w) = words.next() {
            let dir = match w {
                "-I" | "-isystem" => words.next(),
                _ => w.strip_prefix("-I"),
            };
            if let Some(d) = dir.filter(|d| !d.is_empty()) {
                dirs.push(PathBuf::from(d));
            }
        }
    }
    dirs.extend(pkg_includes.iter().cloned());
    dirs.extend(["/usr/local/include", "/usr/include"].map(PathBuf::from));
    dirs
}

fn read(path: &Path) -> Result<String, String> {
    println!("cargo:rerun-if-changed={}", path.display());
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn run() -> Result<(), String> {
    // libxen-sys links through pkg-config; only its version and include path are wanted here.
    let pkg = pkg_config::Config::new()
        .cargo_metadata(false)
        .probe("xencontrol")
        .ok();
    let pkg_includes = pkg.as_ref().map_or(&[][..], |l| &l.include_paths[..]);
    let dirs = include_dirs(pkg_includes);
    let dir = dirs
        .iter()
        .find(|d| d.join("xen/xen-compat.h").is_file())
        .ok_or_else(|| {
            format!(
                "no xen/xen-compat.h in {dirs:?}: install libxen-dev, or run \
                 `cargo xtask xen-sysroot <version>` for another Xen"
            )
        })?;
    let release = version::classify(
        &read(&dir.join("xen/xen-compat.h"))?,
        &read(&dir.join("xen/domctl.h"))?,
    )
    .map_err(|e| format!("{e} (headers in {})", dir.display()))?;

    // Headers and libraries of different releases compile but do not link
    // (or worse, link): refuse the mix.
    if let Some(lib) = &pkg {
        if version::major_minor(&lib.version) != Some(release.as_str()) {
            return Err(format!(
                "the Xen headers in {} are {}'s but pkg-config finds libxenctrl {}: point \
                 BINDGEN_EXTRA_CLANG_ARGS (-I) and PKG_CONFIG_LIBDIR at the same Xen \
                 (`cargo xtask xen-sysroot` does)",
                dir.display(),
                release.as_str(),
                lib.version
            ));
        }
    }

    println!("cargo::rustc-check-cfg=cfg(xen_4_18)");
    if release.has_4_18_api() {
        println!("cargo::rustc-cfg=xen_4_18");
    }
    println!("cargo::rustc-env=XENPROBE_XEN_RELEASE={}", release.as_str());
    Ok(())
}

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=src/xen/version.rs");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
