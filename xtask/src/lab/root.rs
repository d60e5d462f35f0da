//! The Debian 13 root of the Xen 4.20 lab: Debian 13's hypervisor, Xen
//! tools, `xenstore` clients and HVM device model with every library they
//! link (Debian 13's glibc included), unpacked from the trixie archive into
//! `target/xenlab/root-4.20` (see [`crate::archive`]). The dom0 image takes
//! its Xen userland from here and the hypervisor from `boot/`; the kernel,
//! busybox and firmware stay the machine's own.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::archive::Index;
use crate::ws;

/// The suite and the packages the root is made of (and their libraries).
const SUITE: &str = "trixie";
const PACKAGES: &[&str] = &[
    "xen-hypervisor-4.20-amd64",
    "xen-utils-4.20",
    "xen-utils-common",
    "xenstore-utils",
    "qemu-system-xen",
    "libc6",
    "libgcc-s1",
];

/// Bump when the way the root is made changes, to make it again.
const RECIPE_REVISION: u32 = 1;

/// Makes the root unless it is complete already; its path.
pub fn ensure() -> Result<PathBuf> {
    let root = ws::lab_dir().join("root-4.20");
    let stamp = root.join(".complete");
    let recipe = format!("recipe {RECIPE_REVISION}: {SUITE} {}\n", PACKAGES.join(" "));
    if fs::read_to_string(&stamp).is_ok_and(|s| s.starts_with(&recipe)) {
        return Ok(root);
    }
    eprintln!(
        "lab: making the Debian 13 root of the 4.20 lab in {}",
        root.display()
    );
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let index = Index::fetch(SUITE, &ws::lab_dir().join("root-4.20.download"))?;
    // Libraries only: maintainer scripts' interpreters (python3, perl) and
    // services are not what dom0 runs here.
    let names = index.closure(PACKAGES, |dep| dep.starts_with("lib") || dep == "zlib1g")?;
    let installed = index.unpack(&names, &root)?;
    index.done();
    fs::write(&stamp, format!("{recipe}{installed}")).context("writing the root's stamp")?;
    eprintln!("lab: the 4.20 root holds {} packages", names.len());
    Ok(root)
}
