//! The dom0 kernel, decompressed ahead of time.
//!
//! Debian's `vmlinuz` is a bzImage whose payload is an XZ-compressed ELF.
//! Xen can boot it as it is, but then decompresses it itself before building
//! dom0, which takes about 3 s under software emulation: a third of a cold
//! boot. Xen boots the ELF payload just as well, so the lab decompresses it
//! once on the host (with `xz`) and caches it next to the dom0 image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Offset and length of the compressed payload of a bzImage, from its setup
/// header (`setup_sects`, `payload_offset`, `payload_length`).
fn payload(image: &[u8]) -> Option<(usize, usize)> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let start = (setup_sects + 1) * 512 + word(0x248)?;
    let len = word(0x24c)?;
    (start + len <= image.len()).then_some((start, len))
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

/// The ELF kernel inside `bzimage`, decompressed into `dir` (cached there,
/// keyed on the image's size and mtime). Falls back to `bzimage` itself,
/// with the reason printed, when its payload is not XZ or `xz` fails.
pub fn dom0_kernel(dir: &Path, bzimage: &Path) -> PathBuf {
    match decompress(dir, bzimage) {
        Ok(elf) => elf,
        Err(e) => {
            eprintln!(
                "lab: booting {} compressed (Xen decompresses it, about 3 s slower): {e:#}",
                bzimage.display()
            );
            bzimage.to_path_buf()
        }
    }
}

fn decompress(dir: &Path, bzimage: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(bzimage).with_context(|| format!("{}", bzimage.display()))?;
    let mtime = super::modified_since_epoch(&meta).as_secs();
    let name = bzimage
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("vmlinuz")
        .replacen("vmlinuz", "vmlinux", 1);
    let out = dir.join(&name);
    let stamp_file = dir.join(format!("{name}.stamp"));
    let stamp = format!("{} {} {mtime}\n", bzimage.display(), meta.len());
    if out.exists() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return Ok(out);
    }
    let image = std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let (start, len) = payload(&image).context("not a bzImage (no setup header)")?;
    let data = &image[start..start + len];
    if !data.starts_with(XZ_MAGIC) {
        bail!("its payload is not XZ-compressed");
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&tmp)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("running xz (package xz-utils)")?;
    // xz reads while we write; a separate thread avoids a pipe deadlock.
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let done = child.wait_with_output()?;
    let _ = writer.join();
    if !done.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "xz failed: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&tmp)?, &mut magic)?;
    if &magic != b"\x7fELF" {
        let _ = std::fs::remove_file(&tmp);
        bail!("the decompressed payload is not an ELF file");
    }
    std::fs::rename(&tmp, &out)?;
    std::fs::write(&stamp_file, stamp)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_payload_from_the_setup_header() {
        let mut img = vec![0u8; 4096];
        img[0x1f1] = 2; // setup sectors: payload area starts at 3 * 512
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&50u32.to_le_bytes());
        assert_eq!(payload(&img), Some((1636, 50)));
        img[0x24c..0x250].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(payload(&img), None, "a payload past the end is refused");
        img[0x202] = b'X';
        assert_eq!(payload(&img), None);
    }
}
