//! The C sample guest (`guests/cguest/`), built with the host's gcc the way
//! a user would build a guest of their own: `target/guests/cguest-pvh` and
//! its xl config (PVH only: its boot code has the 32-bit PVH entry alone).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use super::{xl_config, Mode};
use crate::ws;

/// Image name (domain name of its xl config too).
pub const NAME: &str = "cguest-pvh";

/// gcc options: freestanding x86-64 code for 1 MiB without SSE (the guest
/// never enables it), frame pointers for the fuzzer's backtraces, DWARF for
/// lcov.info, and the guest's own linker script.
const CFLAGS: &[&str] = &[
    "-m64",
    "-std=gnu11",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fcf-protection=none",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-omit-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-nostdlib",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
];

/// The gcc command that builds the guest from `src` into `out`.
fn gcc(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("gcc");
    cmd.args(CFLAGS)
        .arg("-T")
        .arg(src.join("cguest.ld"))
        .arg("-o")
        .arg(out)
        .arg(src.join("boot.S"))
        .arg(src.join("cguest.c"));
    cmd
}

/// Builds `guests/cguest` into `out_dir/cguest-pvh` (written whole, then
/// renamed) and writes its xl config next to it. Returns the image path.
pub fn build_into(out_dir: &Path) -> Result<PathBuf> {
    let src = ws::root().join("guests/cguest");
    let image = out_dir.join(NAME);
    let tmp = out_dir.join(format!(".{NAME}.{}", std::process::id()));
    let status = gcc(&src, &tmp)
        .status()
        .context("running gcc for the C guest guests/cguest (install it: apt-get install gcc)")?;
    ensure!(
        status.success(),
        "building the C guest guests/cguest failed"
    );
    std::fs::rename(&tmp, &image)
        .with_context(|| format!("rename {} to {}", tmp.display(), image.display()))?;
    std::fs::write(
        image.with_extension("cfg"),
        xl_config(NAME, Mode::Pvh, &image),
    )?;
    Ok(image)
}

/// Builds the C guest into `target/guests`.
pub fn build() -> Result<()> {
    let out = ws::guests_dir();
    std::fs::create_dir_all(&out)?;
    build_into(&out)?;
    println!("built cguest (gcc): {}/{NAME}[.cfg]", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{patch_input, symbol_bytes};
    use super::*;

    fn have_gcc() -> bool {
        let ok = Command::new("gcc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("gcc not found: skipped");
        }
        ok
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-cguest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    /// File offset and size of `name` in the ELF file `path`.
    fn at(path: &Path, name: &str) -> (Vec<u8>, usize, usize) {
        let data = std::fs::read(path).expect("ELF file");
        let (off, size) = {
            let f = object::File::parse(&*data).expect("ELF");
            symbol_bytes(&f, name).expect("symbol")
        };
        (data, off, size)
    }

    /// `source` compiled into an object file.
    fn object(d: &Path, tag: &str, source: &str) -> PathBuf {
        let c = d.join(format!("{tag}.c"));
        std::fs::write(&c, source).expect("source");
        let o = d.join(format!("{tag}.o"));
        let st = Command::new("gcc")
            .args(["-c", "-o"])
            .arg(&o)
            .arg(&c)
            .status()
            .expect("gcc");
        assert!(st.success(), "gcc -c {}", c.display());
        o
    }

    #[test]
    fn the_c_guest_has_a_4_byte_length_with_flags_after_it() {
        if !have_gcc() {
            return;
        }
        let d = tmp("build");
        let image = build_into(&d).expect("build");
        let (data, len, len_size) = at(&image, "xenprobe_input_len");
        assert_eq!(len_size, 4);
        assert_eq!(at(&image, "flags").1, len + 4);
        assert_eq!(at(&image, "xenprobe_input").2, 4096);
        let cfg = std::fs::read_to_string(image.with_extension("cfg")).expect("cfg");
        assert!(cfg.contains("name=\"cguest-pvh\"\ntype=\"pvh\""), "{cfg}");

        // patch_input writes 4 bytes: `flags` after them keeps its value.
        let out = d.join("patched");
        patch_input(&image, &[1, 2, 3], &out).expect("patch");
        let (patched, _, _) = at(&out, "xenprobe_input_len");
        assert_eq!(&patched[len..len + 4], &[3, 0, 0, 0]);
        assert_eq!(&patched[len + 4..len + 8], &data[len + 4..len + 8]);
        assert_eq!(&data[len + 4..len + 8], &[0x01, 0x00, 0xa6, 0xc6]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn patch_input_follows_the_length_symbol_size() {
        if !have_gcc() {
            return;
        }
        let d = tmp("widths");
        for (ty, width) in [
            ("unsigned char", 1),
            ("unsigned short", 2),
            ("unsigned int", 4),
            ("unsigned long long", 8),
        ] {
            let src = format!(
                "unsigned char xenprobe_input[16] = {{1}};\n{ty} xenprobe_input_len = 1;\n\
                 unsigned char after[8] = {{0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa}};\n"
            );
            let o = object(&d, &format!("w{width}"), &src);
            let out = d.join(format!("w{width}.patched"));
            patch_input(&o, &[7; 5], &out).expect("patched");
            let (data, off, size) = at(&out, "xenprobe_input_len");
            assert_eq!(size, width);
            let mut want = vec![0u8; width];
            want[0] = 5;
            assert_eq!(&data[off..off + width], &want[..], "{ty}");
            let (_, after, _) = at(&out, "after");
            assert_eq!(
                &data[after..after + 8],
                &[0xaa; 8],
                "{ty}: neighbour clobbered"
            );
        }
        // A 3-byte length is refused, naming the symbol.
        let odd = object(
            &d,
            "odd",
            "unsigned char xenprobe_input[16] = {1};\nunsigned char xenprobe_input_len[3] = {1};\n",
        );
        let e = patch_input(&odd, &[1], &d.join("odd.patched"))
            .expect_err("3 bytes refused")
            .to_string();
        assert!(e.contains("xenprobe_input_len is 3 bytes"), "{e}");
        // A 1-byte length holds at most 255 bytes of a 300-byte buffer.
        let big = object(
            &d,
            "big",
            "unsigned char xenprobe_input[300] = {1};\nunsigned char xenprobe_input_len = 1;\n",
        );
        assert!(patch_input(&big, &[0; 255], &d.join("big.patched")).is_ok());
        let e = patch_input(&big, &[0; 256], &d.join("big.patched"))
            .expect_err("256 > 255")
            .to_string();
        assert!(e.contains("at most 255"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
