//! Guests for tests: images on disk, and domains made and destroyed with `xl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Mode;

/// Where guest images and their `xl` configs are (`target/guests`).
#[derive(Clone, Debug)]
pub struct GuestImages {
    dir: PathBuf,
}

impl GuestImages {
    /// `XENPROBE_GUESTS_DIR`, else the `guests` directory of the `target`
    /// directory this test binary was built in.
    pub fn locate() -> Result<Self> {
        if let Some(d) = std::env::var_os("XENPROBE_GUESTS_DIR") {
            return Ok(GuestImages { dir: d.into() });
        }
        let exe = std::env::current_exe().context("locating the test binary")?;
        let target = exe
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "target"))
            .context(
                "the test binary is not under a `target` directory; set XENPROBE_GUESTS_DIR",
            )?;
        Ok(GuestImages {
            dir: target.join("guests"),
        })
    }

    /// The ELF image of `guest` in `mode`.
    pub fn image(&self, guest: &str, mode: Mode) -> PathBuf {
        self.dir.join(format!("{guest}-{}", mode.name()))
    }

    /// Its `xl` config.
    pub fn config(&self, guest: &str, mode: Mode) -> PathBuf {
        self.dir.join(format!("{guest}-{}.cfg", mode.name()))
    }
}

/// Directory where `xenconsoled` logs guest consoles (`guest-NAME.log`).
pub fn console_dir() -> PathBuf {
    std::env::var_os("XENPROBE_CONSOLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/log/xen/console"))
}

/// A domain created for one test; destroyed when dropped.
pub struct GuestDomain {
    pub name: String,
    pub image: PathBuf,
    pub console_log: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl GuestDomain {
    /// Creates `guest` in `mode`, paused before its first instruction, under a
    /// name no other test uses.
    pub fn create(
        images: &GuestImages,
        guest: &str,
        mode: Mode,
        memory_mb: Option<u32>,
    ) -> Result<Self> {
        let cfg = images.config(guest, mode);
        let image = images.image(guest, mode);
        if !cfg.exists() || !image.exists() {
            bail!(
                "no guest image {} (or its config): build the guests with `cargo xtask guests build`",
                image.display()
            );
        }
        let name = format!(
            "t{}-{}-{guest}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            mode.name()
        );
        let console_log = console_dir().join(format!("guest-{name}.log"));
        let mut cmd = Command::new("xl");
        cmd.arg("create")
            .arg("-p")
            .arg(&cfg)
            .arg(format!("name=\"{name}\""));
        if let Some(mb) = memory_mb {
            cmd.arg(format!("memory={mb}"));
        }
        let mut out = cmd
            .output()
            .context("running `xl create` (is this a Xen dom0?)")?;
        if !out.status.success() && !crate::xl::out_of_memory(&String::from_utf8_lossy(&out.stderr))
        {
            // `xl create` has been seen to crash now and then in the emulated
            // lab (heap corruption in its forked monitor, before the lab switched
            // FPU state eagerly): once more.
            tracing::warn!(
                "xl create {name} failed, retrying once: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = Command::new("xl").args(["destroy", &name]).output();
            out = cmd.output().context("running `xl create`")?;
        }
        if !out.status.success() {
            let text = std::fs::read_to_string(&cfg).unwrap_or_default();
            let mem = memory_mb.map(|mb| format!("memory={mb}"));
            let overrides: Vec<&str> = mem.iter().map(String::as_str).collect();
            bail!(
                "{}",
                crate::xl::create_failed(
                    &cfg.display().to_string(),
                    &text,
                    &overrides,
                    &String::from_utf8_lossy(&out.stderr),
                )
            );
        }
        Ok(GuestDomain {
            name,
            image,
            console_log,
        })
    }

    /// Drops the pause `xl create -p` holds (the domain runs once nobody
    /// else holds one).
    pub fn unpause_from_toolstack(&self) -> Result<()> {
        let out = Command::new("xl")
            .args(["unpause", &self.name])
            .output()
            .context("running `xl unpause`")?;
        if !out.status.success() {
            bail!(
                "xl unpause {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The console output from byte `offset` of the log on.
    pub fn console_from(&self, offset: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut buf = vec![];
        if let Ok(mut f) = std::fs::File::open(&self.console_log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Bytes in the console log so far.
    pub fn console_len(&self) -> u64 {
        std::fs::metadata(&self.console_log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Waits until xenconsoled has stopped writing the log (no growth for
    /// `quiet`, at most `max`); returns its length.
    pub fn settle_console(&self, quiet: Duration, max: Duration) -> u64 {
        let t0 = std::time::Instant::now();
        let mut len = self.console_len();
        let mut since = std::time::Instant::now();
        while t0.elapsed() < max {
            std::thread::sleep(Duration::from_millis(5));
            let now = self.console_len();
            if now != len {
                len = now;
                since = std::time::Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        len
    }

    /// Path of the guest's ELF image.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Drop for GuestDomain {
    fn drop(&mut self) {
        let _ = Command::new("xl").args(["destroy", &self.name]).output();
        let _ = std::fs::remove_file(&self.console_log);
    }
}
