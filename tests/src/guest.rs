//! The `known` guest of the live suites: created paused with `xl create -p`
//! under a unique name, destroyed on drop (also when the test panics).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xenprobe::vmi::{Domain, Xen};

/// How long [`Guest::console_after`] waits for its text.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A `known` guest (`target/guests/known-MODE`), named
/// `PREFIX-MODE-PID-N`; `xl destroy`ed on drop.
#[derive(Debug)]
pub struct Guest {
    name: String,
    mode: String,
    cfg: PathBuf,
    image: PathBuf,
    overrides: Vec<String>,
}

impl Guest {
    /// Names a guest of `mode` ("pv", "pvh", "hvm") with extra `key=value`
    /// config overrides, without creating it (see [`Guest::try_xl_create`]).
    pub fn new(prefix: &str, mode: &str, overrides: &[&str]) -> Guest {
        let dir = crate::guests_dir();
        Guest {
            name: format!(
                "{prefix}-{mode}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::SeqCst)
            ),
            mode: mode.to_string(),
            cfg: dir.join(format!("known-{mode}.cfg")),
            image: dir.join(format!("known-{mode}")),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Creates a paused guest; panics with xl's error.
    pub fn create(prefix: &str, mode: &str) -> Guest {
        Self::create_with(prefix, mode, &[])
    }

    /// Creates a paused guest with `key=value` config overrides; panics with
    /// xl's error.
    pub fn create_with(prefix: &str, mode: &str, overrides: &[&str]) -> Guest {
        let g = Self::new(prefix, mode, overrides);
        g.xl_create();
        g
    }

    /// Creates a paused guest; Err with xl's error (the name is then free).
    pub fn try_create_with(prefix: &str, mode: &str, overrides: &[&str]) -> Result<Guest, String> {
        let g = Self::new(prefix, mode, overrides);
        g.try_xl_create()?;
        Ok(g)
    }

    /// (Re)creates the domain under this guest's name, paused; panics with
    /// xl's error.
    pub fn xl_create(&self) {
        if let Err(e) = self.try_xl_create() {
            panic!("{e}");
        }
    }

    /// (Re)creates the domain under this guest's name, paused.
    pub fn try_xl_create(&self) -> Result<(), String> {
        if !self.cfg.exists() {
            return Err(format!(
                "{} missing: run `cargo xtask guests build`",
                self.cfg.display()
            ));
        }
        let mut args = vec![
            "create".to_string(),
            "-p".to_string(),
            self.cfg.display().to_string(),
            format!("name=\"{}\"", self.name),
        ];
        args.extend(self.overrides.iter().cloned());
        xl(&args)
    }

    /// `xl destroy`: Err with xl's error (e.g. no such domain).
    pub fn destroy(&self) -> Result<(), String> {
        xl(&["destroy".to_string(), self.name.clone()])
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// "pv", "pvh" or "hvm".
    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// The guest's ELF image (symbols).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The xl config it is created from.
    pub fn cfg(&self) -> &Path {
        &self.cfg
    }

    /// Attaches by name, symbols loaded; panics on failure.
    pub fn attach(&self, xen: &Xen) -> Domain {
        let mut dom = Domain::attach(xen, self.name.as_str()).expect("attach by name");
        dom.load_symbols(&self.image).expect("load guest symbols");
        dom
    }

    /// The guest's console log as written by xenconsoled: in
    /// `XENPROBE_CONSOLE_DIR` if set, else the lab's console directories,
    /// then xenconsoled's default `/var/log/xen/console`.
    pub fn console_path(&self) -> Option<PathBuf> {
        console_dirs()
            .into_iter()
            .map(|d| d.join(format!("guest-{}.log", self.name)))
            .find(|p| p.exists())
    }

    /// The console log as it is now ("" if there is none yet).
    pub fn console(&self) -> String {
        self.console_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The console log once it contains `want`, or as it is after 10 s.
    pub fn console_after(&self, want: &str) -> String {
        let deadline = Instant::now() + CONSOLE_WAIT;
        loop {
            let text = self.console();
            if text.contains(want) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `known` sample ran to its normal end: its result line and
    /// `EXIT 25` on the console (read once `EXIT` shows); else panics with
    /// `failure` and the console.
    #[track_caller]
    pub fn assert_known_finished(&self, failure: &str) {
        let log = self.console_after("EXIT");
        assert!(
            log.contains("KNOWN counter=10 state=3 result=25") && log.contains("EXIT 25"),
            "{failure}:\n{log}"
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}

fn console_dirs() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("XENPROBE_CONSOLE_DIR") {
        return vec![PathBuf::from(d)];
    }
    let labs = crate::root().join("target/xenlab");
    vec![
        labs.join("stock/consoles"),
        labs.join("debug/consoles"),
        PathBuf::from("/var/log/xen/console"),
    ]
}

/// Runs `xl ARGS`; Err with the command and xl's error output.
fn xl(args: &[String]) -> Result<(), String> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .map_err(|e| format!("run xl {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "xl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_paths_follow_the_mode() {
        let a = Guest::new("t", "pvh", &["memory=64"]);
        let b = Guest::new("t", "pvh", &[]);
        assert_ne!(a.name(), b.name());
        let pid = std::process::id();
        assert!(a.name().starts_with(&format!("t-pvh-{pid}-")), "{a:?}");
        assert_eq!(a.mode(), "pvh");
        assert!(a.image().ends_with("target/guests/known-pvh"), "{a:?}");
        assert!(a.cfg().ends_with("target/guests/known-pvh.cfg"), "{a:?}");
        assert_eq!(a.overrides, ["memory=64"]);
    }
}
