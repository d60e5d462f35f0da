//! Puts the guest linker script on the library search path, so that every guest
//! binary linking this crate finds it through `-Txenprobe-guest.ld`.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(
        out.join("xenprobe-guest.ld"),
        include_str!("xenprobe-guest.ld"),
    )
    .expect("write linker script");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=xenprobe-guest.ld");
}
