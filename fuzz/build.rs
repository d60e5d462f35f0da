//! Links the fuzzer's programs with their hot code packed together: the
//! functions `hot-code.ld` names (a campaign's steady state, sampled with
//! perf) go into one output section ahead of `.text`, so that a run
//! touches fewer code pages. In a PV dom0 every system call leaves the TLB
//! to be refilled and each page touched afterwards costs a page walk; see
//! docs/benchmarks.md#hot-code.
//!
//! The script is written for LLD (`INSERT BEFORE` beside its default
//! layout): it is passed when the toolchain links with LLD by default
//! (Rust 1.90 and later on x86_64 Linux) and no other linker is
//! configured; otherwise the layout is the linker's own.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=hot-code.ld");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if !links_with_lld() {
        println!("cargo:warning=hot-code.ld not used: the linker is not Rust's default LLD");
        return;
    }
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let script = dir.join("hot-code.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}

/// Rust 1.90+ on x86_64 Linux links with its own LLD unless a linker (or
/// linker flavour) is set.
fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || std::env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("link-self-contained") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
