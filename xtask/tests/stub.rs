//! Live: Debian's real `gdb` and `lldb` (on the host) against `xenprobe
//! gdbserver` (in the lab's dom0, reached through the lab's forwarded port)
//! on the `known` sample guest: break at a symbol, continue, read registers
//! and a variable, step, write memory (checked on the guest's console),
//! continue to the exit code.
//!
//! Needs: the sample guests (`cargo xtask guests build`), `gdb` and `lldb`
//! on the host. The stub binary is built here with `cargo build -p xenprobe`
//! (into `$CARGO_TARGET_DIR` or `target/`), or taken from `XENPROBE_BIN`.
//! PV needs the gdbsx (debug) hypervisor: its test is ignored (with that
//! reason) unless run with `--ignored` and `XENPROBE_XEN=debug`, which the
//! debug pass of `cargo xtask test` does. Tests share dom0's port 1234, so
//! they run one at a time.
//!
//! Run: `cargo test -p xtask --test stub -- --nocapture --test-threads 1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{have, run, text, workspace, xtask};

/// `xtask lab [--xen debug] ARGS...`: PV guests need the debug hypervisor's lab.
fn lab(debug: bool, args: &[&str]) -> std::process::Output {
    let mut all = vec!["lab"];
    if debug {
        all.extend(["--xen", "debug"]);
    }
    all.extend_from_slice(args);
    run(xtask(&all))
}

fn in_dom0(debug: bool, argv: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--"];
    args.extend_from_slice(argv);
    lab(debug, &args)
}

/// The value after `key` in `xtask lab [--xen debug] status`.
fn status_field(debug: bool, key: &str) -> Option<String> {
    let out = lab(debug, &["status"]);
    text(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
}

/// One stub session at a time: there is one forwarded port.
static PORT_LOCK: Mutex<()> = Mutex::new(());

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target"),
    }
}

/// Builds the `xenprobe` binary once (the dom0 runs it from the same path).
fn xenprobe_bin() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("XENPROBE_BIN") {
        // A prebuilt binary under the workspace (dom0 sees the same path).
        let p = PathBuf::from(p);
        let p = if p.is_absolute() {
            p
        } else {
            workspace().join(p)
        };
        *built = Some(p.clone());
        return p;
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "xenprobe", "--bin", "xenprobe"])
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .expect("cargo build runs");
    assert!(status.success(), "cargo build -p xenprobe failed");
    let bin = target_dir().join("debug/xenprobe");
    assert!(bin.exists(), "{} missing", bin.display());
    *built = Some(bin.clone());
    bin
}

/// A private copy of a sample guest image and config (others rebuild
/// target/guests/ while tests run).
fn guest_copy(name: &str) -> (PathBuf, PathBuf) {
    let src = workspace().join("target/guests");
    let img = src.join(name);
    assert!(
        img.exists(),
        "{} missing: run `cargo xtask guests build`",
        img.display()
    );
    let dir = target_dir().join("stub-test");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dst = dir.join(name);
    std::fs::copy(&img, &dst).expect("copy guest image");
    let cfg = std::fs::read_to_string(src.join(format!("{name}.cfg"))).expect("guest cfg");
    let cfg = cfg.replace(&img.display().to_string(), &dst.display().to_string());
    let cfg_path = dir.join(format!("{name}.cfg"));
    std::fs::write(&cfg_path, cfg).expect("write cfg");
    (dst, cfg_path)
}

/// A guest with the stub attached in dom0; destroyed on drop.
struct Served {
    /// In the debug hypervisor's lab (PV guests).
    debug: bool,
    name: String,
    log: PathBuf,
    port: u16,
    image: PathBuf,
}

impl Served {
    fn start(guest: &str, client: &str) -> Self {
        let bin = xenprobe_bin();
        let (image, cfg) = guest_copy(guest);
        let name = format!("stubtest-{client}-{guest}-{}", std::process::id());
        let log = target_dir().join(format!("stub-test/{name}.log"));
        let _ = std::fs::remove_file(&log);
        let script = format!(
            "ok=0; for i in 1 2 3; do xl create -p {cfg} 'name=\"{name}\"' && {{ ok=1; break; }}; \
             xl destroy {name} >/dev/null 2>&1; sleep 2; done; [ $ok = 1 ] || exit 3; \
             setsid {bin} gdbserver {name} --port 1234 --bind 0.0.0.0 --symbols {img} \
             > {log} 2>&1 < /dev/null & echo $! > {log}.pid",
            cfg = cfg.display(),
            bin = bin.display(),
            img = image.display(),
            log = log.display()
        );
        // From here on, dropping `served` (also on a failed assertion) kills
        // the stub and destroys the guest.
        let debug = guest.ends_with("-pv");
        let mut served = Served {
            debug,
            name: name.clone(),
            log: log.clone(),
            port: 0,
            image,
        };
        let out = in_dom0(debug, &["sh", "-c", &script]);
        assert!(out.status.success(), "starting {name} failed");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            if t.contains("listening on") {
                break;
            }
            // Complete lines only: the log is written while we read it.
            let failed = t
                .lines()
                .take(t.matches('\n').count())
                .any(|l| l.starts_with("xenprobe: ") && !l.contains("gdbserver for"));
            assert!(
                Instant::now() < deadline && !failed,
                "the stub did not start: {t}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The guest was created paused by xl; the stub holds its own pause.
        let out = in_dom0(debug, &["xl", "unpause", &name]);
        assert!(out.status.success(), "xl unpause failed");
        let port = status_field(debug, "forwarded:")
            .and_then(|v| {
                v.split_whitespace()
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
            })
            .expect("forwarded port in `xtask lab status`");
        served.port = port;
        served
    }

    /// Waits for the stub to finish and returns its log.
    fn finish(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = std::fs::read_to_string(&self.log).unwrap_or_default();
            // The stub's last line ends with "detached" (or "... and running").
            let done = t.lines().take(t.matches('\n').count()).any(|l| {
                (l.contains("session ended") || l.contains("connection lost"))
                    && l.contains("detached")
            });
            if done || Instant::now() > deadline {
                return t;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The guest's console (xenconsoled log on the host).
    fn console(&self) -> String {
        let dir = status_field(self.debug, "guest consoles:").expect("consoles dir in lab status");
        let path = Path::new(&dir).join(format!("guest-{}.log", self.name));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = std::fs::read_to_string(&path).unwrap_or_default();
            if t.contains("EXIT ") || Instant::now() > deadline {
                return t;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let mut args = vec!["lab"];
        if self.debug {
            args.extend(["--xen", "debug"]);
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .args(["run", "--", "sh", "-c"])
            .arg(format!(
                "kill $(cat {}.pid) 2>/dev/null; xl destroy {} >/dev/null 2>&1; true",
                self.log.display(),
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run_client(mut c: Command) -> String {
    let out = c.output().expect("debugger runs");
    let t = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("--- {:?}\n{t}", c.get_program());
    t
}

/// Hex value of register `reg` in gdb's `info registers` output.
fn gdb_reg(out: &str, reg: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(reg))
                .then(|| w.next())
                .flatten()
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        })
        .collect()
}

/// A host debugger in batch mode.
#[derive(Clone, Copy)]
enum Debugger {
    Gdb,
    Lldb,
}

impl Debugger {
    fn tool(self) -> &'static str {
        match self {
            Debugger::Gdb => "gdb",
            Debugger::Lldb => "lldb",
        }
    }

    /// The debugger (at most 180 s) connected to `s`'s stub, then running
    /// `cmds`.
    fn command(self, s: &Served, cmds: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        let (flag, connect) = match self {
            Debugger::Gdb => {
                c.args(["180", "gdb", "-batch", "-nx"]);
                let connect = vec![
                    format!("file {}", s.image.display()),
                    // GDB's default 2 s reply timeout is too short on a loaded 2-core
                    // host (replies then arrive late and desynchronise the session).
                    "set remotetimeout 30".into(),
                    format!("target remote 127.0.0.1:{}", s.port),
                ];
                ("-ex", connect)
            }
            Debugger::Lldb => {
                c.args(["180", "lldb", "--batch", "--no-lldbinit"]);
                let connect = vec![
                    format!("target create {}", s.image.display()),
                    format!("gdb-remote 127.0.0.1:{}", s.port),
                ];
                ("-o", connect)
            }
        };
        for cmd in connect
            .into_iter()
            .chain(cmds.iter().map(|c| c.to_string()))
        {
            c.arg(flag).arg(cmd);
        }
        c
    }
}

/// One debugger session against the stub on `guest`: what the debugger
/// printed, the stub's log, and the guest (destroyed on drop, before the
/// port is free again).
struct Session {
    out: String,
    log: String,
    served: Served,
    _port: MutexGuard<'static, ()>,
}

impl Session {
    /// Runs `cmds` in `debugger` (`what` names the test in a SKIP line, and
    /// `client` the guest) against a fresh stub on `guest`; None (skipped)
    /// without the debugger on the host.
    fn run(
        debugger: Debugger,
        what: &str,
        guest: &str,
        client: &str,
        cmds: &[&str],
    ) -> Option<Self> {
        let tool = debugger.tool();
        if !have(tool) {
            eprintln!("SKIP {what} {guest}: no {tool} on the host (apt-get install {tool})");
            return None;
        }
        let port = PORT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let served = Served::start(guest, client);
        let out = run_client(debugger.command(&served, cmds));
        let log = served.finish();
        eprintln!("--- stub log\n{log}");
        Some(Session {
            out,
            log,
            served,
            _port: port,
        })
    }

    /// The guest's console shows the counter at `counter` and exit code 25;
    /// else panics with `failure` and the console.
    fn assert_console(&self, counter: u32, failure: &str) {
        let console = self.served.console();
        assert!(
            console.contains(&format!("KNOWN counter={counter} ")) && console.contains("EXIT 25"),
            "{failure}: {console}"
        );
    }
}

fn gdb_session(guest: &str) {
    let cmds = [
        "info registers rip cr0 cr3 fs_base gs_base",
        "break known_compute",
        "continue",
        "info registers rdi rsi rip",
        "print known::known_counter",
        "stepi",
        "info registers rip",
        "set var known::known_counter = 77",
        "print known::known_counter",
        "info threads",
        "delete",
        "continue",
    ];
    let Some(s) = Session::run(Debugger::Gdb, "gdb", guest, "gdb", &cmds) else {
        return;
    };
    let (out, log) = (&s.out, &s.log);
    assert!(out.contains("Breakpoint 1, "), "breakpoint not hit:\n{out}");
    assert_eq!(gdb_reg(out, "rdi"), vec![3], "rdi at known_compute(3, 4)");
    assert_eq!(gdb_reg(out, "rsi"), vec![4]);
    assert!(!gdb_reg(out, "cr0").is_empty(), "control registers served");
    assert!(!gdb_reg(out, "fs_base").is_empty(), "fs_base served");
    let rips = gdb_reg(out, "rip");
    assert_eq!(rips.len(), 3, "{rips:?}");
    assert_ne!(rips[1], rips[2], "stepi moved rip");
    assert!(
        rips[2] > rips[1] && rips[2] - rips[1] < 16,
        "one instruction: {rips:x?}"
    );
    assert!(
        out.contains("= 10"),
        "known_counter is 10 after the ticks:\n{out}"
    );
    assert!(out.contains("= 77"), "the write reads back:\n{out}");
    assert!(out.contains("vcpu 0"), "vCPUs as threads:\n{out}");
    assert!(out.contains("exited with code 031"), "exit code 25:\n{out}");
    s.assert_console(77, "the guest saw the write and exited");
    assert!(log.contains("Exited(25)"), "{log}");
}

fn lldb_session(guest: &str) {
    let cmds = [
        "register read rip cr0 cr3 fs_base gs_base efer",
        "breakpoint set -n known_compute",
        "continue",
        "register read rdi rsi",
        "target variable known_counter",
        "thread step-inst",
        "memory write -s 8 &known_counter 0x4e",
        "memory read -s 8 -c 1 -f x &known_counter",
        "thread list",
        "breakpoint delete -f",
        "continue",
    ];
    let Some(s) = Session::run(Debugger::Lldb, "lldb", guest, "lldb", &cmds) else {
        return;
    };
    let out = &s.out;
    assert!(
        out.contains("stop reason = breakpoint 1.1"),
        "breakpoint not hit:\n{out}"
    );
    assert!(out.contains("rdi = 0x0000000000000003"), "{out}");
    assert!(out.contains("rsi = 0x0000000000000004"), "{out}");
    for r in ["cr0 = ", "cr3 = ", "fs_base = ", "gs_base = ", "efer = "] {
        assert!(out.contains(r), "{r} served:\n{out}");
    }
    assert!(out.contains("known_counter = 10"), "{out}");
    assert!(out.contains("stop reason = instruction step into"), "{out}");
    assert!(
        out.contains("0x000000000000004e"),
        "memory write reads back:\n{out}"
    );
    assert!(out.contains("exited with status = 25"), "{out}");
    s.assert_console(78, "the guest saw the write and exited");
}

/// GDB `watch` on the guest's counter: hardware watchpoints (Z2) on the
/// guest's debug registers, two hits with old and new values, then a clean
/// run to the exit code.
fn gdb_watch_session(guest: &str) {
    let cmds = [
        "break known_tick",
        "continue",
        "delete",
        "watch known::known_counter",
        "continue",
        "continue",
        "info registers rip",
        "bt",
        "delete",
        "continue",
    ];
    let Some(s) = Session::run(Debugger::Gdb, "gdb watch", guest, "gdbw", &cmds) else {
        return;
    };
    let out = &s.out;
    assert!(
        out.contains("Hardware watchpoint 2: known::known_counter"),
        "a hardware watchpoint:\n{out}"
    );
    assert!(
        out.contains("Old value = 0\nNew value = 1")
            && out.contains("Old value = 1\nNew value = 2"),
        "two hits with old and new values:\n{out}"
    );
    assert!(out.contains("exited with code 031"), "exit code 25:\n{out}");
    // The backtrace ends at the guest's entry (its CFI marks the outermost frame).
    let frames: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        frames.first().is_some_and(|f| f.contains("known_tick"))
            && frames
                .last()
                .is_some_and(|f| f.contains(entry_symbol(guest)))
            && !frames.iter().any(|f| f.contains("??")),
        "backtrace from known_tick to {}: {frames:#?}",
        entry_symbol(guest)
    );
    s.assert_console(10, "the guest ran to its end without a #DB");
}

/// The guest's 64-bit entry: the outermost frame of every backtrace.
fn entry_symbol(guest: &str) -> &'static str {
    if guest.ends_with("-pv") {
        "_start_pv"
    } else {
        "_start64"
    }
}

/// LLDB `watchpoint set variable`: the same through LLDB's gdb-remote.
fn lldb_watch_session(guest: &str) {
    let cmds = [
        "breakpoint set -n known_tick",
        "continue",
        "breakpoint delete -f",
        "watchpoint set variable known_counter",
        "continue",
        "continue",
        "thread backtrace",
        "watchpoint list",
        "watchpoint delete -f",
        "continue",
    ];
    let Some(s) = Session::run(Debugger::Lldb, "lldb watch", guest, "lldbw", &cmds) else {
        return;
    };
    let out = &s.out;
    assert!(out.contains("Watchpoint created"), "{out}");
    assert!(out.contains("stop reason = watchpoint 1"), "{out}");
    assert!(
        out.contains("old value: 0") && out.contains("new value: 1"),
        "first hit with values:\n{out}"
    );
    assert!(out.contains("new value: 2"), "second hit:\n{out}");
    let frames: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.trim_start()
                .trim_start_matches("* ")
                .starts_with("frame #")
        })
        .collect();
    assert!(
        frames
            .last()
            .is_some_and(|f| f.contains(entry_symbol(guest))),
        "backtrace ends at {}: {frames:#?}",
        entry_symbol(guest)
    );
    assert!(out.contains("exited with status = 25"), "{out}");
    s.assert_console(10, "the guest ran to its end without a #DB");
}

#[test]
fn gdb_watch_on_pvh() {
    gdb_watch_session("known-pvh");
}

#[test]
fn gdb_watch_on_hvm() {
    gdb_watch_session("known-hvm");
}

#[test]
fn lldb_watch_on_pvh() {
    lldb_watch_session("known-pvh");
}

#[test]
fn lldb_watch_on_hvm() {
    lldb_watch_session("known-hvm");
}

#[test]
fn gdb_on_pvh() {
    gdb_session("known-pvh");
}

#[test]
fn gdb_on_hvm() {
    gdb_session("known-hvm");
}

#[test]
fn lldb_on_pvh() {
    lldb_session("known-pvh");
}

#[test]
fn lldb_on_hvm() {
    lldb_session("known-hvm");
}

#[test]
#[ignore = "PV debugging needs the gdbsx (debug) hypervisor: run by the debug pass of \
            `cargo xtask test`, or with XENPROBE_STUB_PV=1 and `--ignored` on a debug lab"]
fn gdb_and_lldb_on_pv() {
    gdb_session("known-pv");
    lldb_session("known-pv");
    gdb_watch_session("known-pv");
    lldb_watch_session("known-pv");
}
