//! `cargo xtask guests`: build the sample guests (guests/, target
//! `x86_64-unknown-none`) into `target/guests/NAME-MODE` images with an `xl`
//! config each, and boot one in the lab.

use crate::ws;
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use object::{Object, ObjectSection, ObjectSymbol};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

mod cguest;
pub mod linux;

/// The sample guests (binaries of the guests workspace).
pub const GUESTS: &[&str] = &["known", "tlv", "bytecode", "imghdr", "hostile"];
const TARGET: &str = "x86_64-unknown-none";
/// Guest memory in MiB.
const MEMORY_MB: u32 = 32;

#[derive(Args)]
pub struct GuestsArgs {
    #[command(subcommand)]
    cmd: GuestsCmd,
}

#[derive(Subcommand)]
enum GuestsCmd {
    /// Build every sample guest in every mode: target/guests/NAME-MODE and NAME-MODE.cfg.
    /// `build linux`: the Linux guest (kernel module, initramfs, configs) in target/guests/linux/.
    Build {
        /// `linux` for the Linux guest; nothing for the Rust guests.
        name: Option<String>,
    },
    /// Boot one guest in the lab, print its console and how it ended.
    ///
    /// Exit status: the guest's exit code after a clean exit, 125 after a reported
    /// crash (panic or exception), 126 when Xen ended the domain without a report
    /// (triple fault, or a PV guest without a usable handler), 124 when it was
    /// still running at the timeout (hang).
    Run {
        /// Guest name (known, tlv, bytecode, imghdr, linux).
        name: String,
        /// How to boot it.
        #[arg(long, value_enum)]
        mode: Mode,
        /// Fuzz-target input, as hex: passed as `xenprobe.input=` on the kernel
        /// command line (pv, pvh) or written into a copy of the image (hvm).
        #[arg(long)]
        input: Option<String>,
        /// Seconds to wait for the guest to end (default 20; linux: 120, counted
        /// from the end of `xl create`).
        #[arg(long)]
        timeout: Option<u32>,
    },
}

/// Guest type.
pub use xenprobe_abi::GuestMode as Mode;

pub fn main(args: GuestsArgs) -> Result<i32> {
    match args.cmd {
        GuestsCmd::Build { name } => {
            match name.as_deref() {
                None => build()?,
                Some("linux") => linux::build()?,
                Some(n) => bail!("`guests build` takes no name or `linux`, not {n:?}"),
            }
            Ok(0)
        }
        GuestsCmd::Run {
            name,
            mode,
            input,
            timeout,
        } if name == "linux" => linux::run(mode, input.as_deref(), timeout.unwrap_or(120)),
        GuestsCmd::Run {
            name,
            mode,
            input,
            timeout,
        } => run(&name, mode, input.as_deref(), timeout.unwrap_or(20)),
    }
}

fn ensure_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = &out {
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == TARGET)
        {
            return Ok(());
        }
    }
    eprintln!("installing the {TARGET} target with rustup");
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ensure!(
        ok,
        "could not install the guest target; install it with: rustup target add {TARGET}"
    );
    Ok(())
}

/// Builds every guest and writes images and xl configs into target/guests.
pub fn build() -> Result<()> {
    ensure_target()?;
    let root = ws::root();
    let build_dir = ws::target_dir().join("guests-build");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root.join("guests"))
        .args(["build", "--release", "--bins"])
        .env("CARGO_TARGET_DIR", &build_dir)
        // The guests' own .cargo/config.toml carries their rustflags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("run cargo build for guests/")?;
    ensure!(status.success(), "building the guests failed");
    let out = ws::guests_dir();
    std::fs::create_dir_all(&out)?;
    for g in GUESTS {
        let bin = build_dir.join(TARGET).join("release").join(g);
        for mode in Mode::ALL {
            let image = out.join(format!("{g}-{}", mode.name()));
            std::fs::copy(&bin, &image)
                .with_context(|| format!("copy {} to {}", bin.display(), image.display()))?;
            let cfg = xl_config(&format!("{g}-{}", mode.name()), mode, &image);
            std::fs::write(image.with_extension("cfg"), cfg)?;
        }
        println!("built {g}: {}/{g}-{{pv,pvh,hvm}}[.cfg]", out.display());
    }
    cguest::build()
}

/// The `xl` config of a guest image. Crashes (and triple faults, which Xen
/// turns into a reboot) are preserved so that they can be inspected.
pub fn xl_config(name: &str, mode: Mode, image: &Path) -> String {
    xenprobe_abi::XlConfig::image(name, mode, image, MEMORY_MB).render()
}

/// Decodes a hex string (whitespace allowed).
pub fn decode_hex(s: &str) -> Result<Vec<u8>> {
    Ok(xenprobe_abi::hex::decode(s)?)
}

/// File offset and size of a symbol's bytes in an ELF image.
fn symbol_bytes(file: &object::File, name: &str) -> Result<(usize, usize)> {
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .with_context(|| format!("symbol {name} not found"))?;
    let index = sym
        .section_index()
        .with_context(|| format!("{name} is not in a section"))?;
    let sec = file.section_by_index(index)?;
    let (off, _) = sec
        .file_range()
        .with_context(|| format!("{name} has no bytes in the file (in .bss?)"))?;
    Ok((
        (off + sym.address() - sec.address()) as usize,
        sym.size() as usize,
    ))
}

/// Writes a copy of a fuzz-target image with `input` in `xenprobe_input` and its
/// length in `xenprobe_input_len`, as wide as that symbol (1, 2, 4 or 8 bytes,
/// little-endian; the fuzz-target ABI of guests/README.md).
pub fn patch_input(image: &Path, input: &[u8], out: &Path) -> Result<()> {
    let mut data = std::fs::read(image).with_context(|| format!("read {}", image.display()))?;
    let (buf, cap, len_at, len_size) = {
        let file = object::File::parse(&*data)?;
        let (buf, cap) = symbol_bytes(&file, xenprobe_abi::target::INPUT)?;
        let (len_at, len_size) = symbol_bytes(&file, xenprobe_abi::target::INPUT_LEN)?;
        ensure!(
            matches!(len_size, 1 | 2 | 4 | 8),
            "xenprobe_input_len is {len_size} bytes (its ELF symbol size): the input length \
             must be 1, 2, 4 or 8 bytes"
        );
        (buf, cap, len_at, len_size)
    };
    let max = u64::MAX >> (64 - 8 * len_size);
    ensure!(
        input.len() <= cap,
        "input is {} bytes, capacity {cap}",
        input.len()
    );
    ensure!(
        input.len() as u64 <= max,
        "input is {} bytes; the {len_size}-byte xenprobe_input_len holds at most {max}",
        input.len()
    );
    data.get_mut(buf..buf + input.len())
        .context("xenprobe_input lies outside the file")?
        .copy_from_slice(input);
    data.get_mut(len_at..len_at + len_size)
        .context("xenprobe_input_len lies outside the file")?
        .copy_from_slice(&(input.len() as u64).to_le_bytes()[..len_size]);
    std::fs::write(out, data).with_context(|| format!("write {}", out.display()))
}

fn run(name: &str, mode: Mode, input: Option<&str>, timeout: u32) -> Result<i32> {
    if !GUESTS.contains(&name) {
        bail!("unknown guest {name}; the guests are {}", GUESTS.join(", "));
    }
    let dom = format!("{name}-{}", mode.name());
    let dir = ws::guests_dir();
    let cfg = dir.join(format!("{dom}.cfg"));
    ensure!(
        cfg.exists(),
        "{} missing: run `cargo xtask guests build` first",
        cfg.display()
    );
    let mut overrides = Vec::new();
    if let Some(hex) = input {
        let bytes = decode_hex(hex)?;
        match mode {
            Mode::Pv | Mode::Pvh => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                overrides.push(format!("extra=\"xenprobe.input={hex}\""));
            }
            Mode::Hvm => {
                let run_dir = dir.join("run");
                std::fs::create_dir_all(&run_dir)?;
                let image: PathBuf = run_dir.join(&dom);
                patch_input(&dir.join(&dom), &bytes, &image)?;
                overrides.push(format!("firmware_override=\"{}\"", image.display()));
            }
        }
    }
    let script = dom0_script(&dom, &cfg, &overrides, timeout);
    crate::lab::run_in_dom0(&["sh".to_string(), "-c".to_string(), script])
}

/// Shell lines (busybox sh in dom0) that set `LOG` to the console log of
/// guest `$N`, from where `xenconsoled --log-dir` writes (the lab's, or
/// Xen's default directory).
pub(super) const FIND_CONSOLE_LOG: &str = r#"LOGDIR=/var/log/xen/console
for p in /proc/[0-9]*; do
  [ "$(cat $p/comm 2>/dev/null)" = xenconsoled ] || continue
  for a in $(tr '\0' ' ' < $p/cmdline); do
    case "$a" in --log-dir=*) LOGDIR="${a#--log-dir=}";; esac
  done
done
LOG="$LOGDIR/guest-$N.log"
"#;

/// Shell lines that end a run script with the verdict of the guest's last
/// `EXIT CODE` or `CRASH ...` console line (`$last`), if it printed one.
pub(super) const CONSOLE_VERDICT: &str = r#"case "$last" in
  EXIT*) code=${last#EXIT }; echo "$N: exited with code $code"; exit $code;;
  CRASH*) echo "$N: crashed (${last#CRASH })"; exit 125;;
esac
"#;

/// Shell lines that end a run script by the domain's state (`$state`: `xl
/// list`'s, or `gone`) when the console said nothing.
pub(super) const STATE_VERDICT: &str = r#"case "$state" in
  *sr*) echo "$N: rebooted without a report (a triple fault ends this way)"; exit 126;;
  *sc*) echo "$N: crashed by Xen without a report"; exit 126;;
  *s*) echo "$N: shut down ($state) without EXIT line"; exit 126;;
  gone) echo "$N: ended without EXIT line"; exit 126;;
esac
"#;

/// Shell lines that start a run script: the guest's name `$N`, its console
/// log `$LOG`, a guest and a log left by an earlier run removed.
pub(super) fn script_start(dom: &str) -> String {
    format!(
        r#"N="{dom}"
{FIND_CONSOLE_LOG}xl destroy "$N" >/dev/null 2>&1
rm -f "$LOG"
"#
    )
}

/// `overrides` as `xl create` arguments, each quoted and after a space.
pub(super) fn quoted_args(overrides: &[String]) -> String {
    let mut args = String::new();
    for o in overrides {
        let _ = write!(args, " '{o}'");
    }
    args
}

/// Shell script (busybox sh in dom0) that boots a guest, waits for its end and
/// prints its console and status; exit status as documented on `guests run`.
fn dom0_script(dom: &str, cfg: &Path, overrides: &[String], timeout: u32) -> String {
    let args = format!("'name=\"{dom}\"'{}", quoted_args(overrides));
    let start = script_start(dom);
    format!(
        r#"
{start}xl create "{cfg}" {args} || exit 2
state=""; i=0
while [ $i -lt {timeout} ]; do
  line=$(xl list "$N" 2>/dev/null | tail -n +2)
  if [ -z "$line" ]; then state=gone; break; fi
  st=$(echo "$line" | awk '{{print $5}}')
  case "$st" in *s*) state="$st"; break;; esac
  sleep 1; i=$((i+1))
done
sleep 1
echo "--- console ($LOG)"
cat "$LOG" 2>/dev/null || echo "(no console log: is xenconsoled running with --log=guest?)"
last=$(grep -E '^(EXIT|CRASH) ' "$LOG" 2>/dev/null | tail -n 1)
[ "$state" != gone ] && xl destroy "$N" >/dev/null 2>&1
echo "---"
{CONSOLE_VERDICT}{STATE_VERDICT}echo "$N: still running after {timeout} s (hang); destroyed"
exit 124
"#,
        cfg = cfg.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_carry_the_contract() {
        let pv = xl_config("t-pv", Mode::Pv, Path::new("/w/t-pv"));
        assert!(pv.contains("type=\"pv\"\nkernel=\"/w/t-pv\""));
        let hvm = xl_config("t-hvm", Mode::Hvm, Path::new("/w/t-hvm"));
        for line in [
            "name=\"t-hvm\"",
            "type=\"hvm\"",
            "firmware_override=\"/w/t-hvm\"",
            "device_model_version=\"qemu-xen\"",
            "vnc=0",
            "vga=\"none\"",
            "serial=\"pty\"",
            "vcpus=1",
            "on_crash=\"preserve\"",
            "on_poweroff=\"destroy\"",
        ] {
            assert!(hvm.lines().any(|l| l == line), "{line} missing in {hvm}");
        }
        assert!(!hvm.contains("kernel="));
    }

    #[test]
    fn hex_decodes_and_rejects() {
        assert_eq!(decode_hex("0a ff").unwrap(), vec![0x0a, 0xff]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
    }
}
