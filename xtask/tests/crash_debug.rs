//! Live: from a crash to a debugger. `cargo xtask fuzz tlv --reproduce CRASH
//! --debug` replays a planted bug of the `tlv` sample guest (guests/BUGS.md),
//! stops the guest before the crash and serves the stub in dom0; Debian's
//! real `lldb` / `gdb` (on the host, through the lab's forwarded port, with
//! the command line the fuzzer printed) must find the guest at the crash
//! site with the crash's registers, and see the crash when continuing.
//!
//! - TLV-2 (page fault), PVH, LLDB: stopped on the faulting instruction
//!   (RIP and RSP/RBP equal the guest's own fault report), the backtrace's
//!   first frame is `xenprobe_target`; continue reports SIGSEGV.
//! - TLV-1 (panic), HVM, GDB: stopped at the crash sink's entry
//!   (`xenprobe_crash`, RDI = 1 = panic) with the panicking parser on the
//!   stack; continue reports SIGSEGV.
//!
//! - A failed guest test with `XENPROBE_DEBUG=1234` (tests/live_debug_demo.rs,
//!   which fails on purpose at `known_compute(3, 4)`), LLDB: stopped there,
//!   RDI = 3; continue runs the guest to its exit (25); the test still fails.
//!
//! Needs the lab, the sample guests, `lldb` and `gdb` on the host. Uses
//! dom0's port 1234 (the lab's forward), like tests/stub.rs.
//!
//! Run: `cargo test -p xtask --test crash_debug -- --nocapture --test-threads 1`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{have, text, workspace, xtask};

/// One stub at a time: there is one forwarded port.
static PORT_LOCK: Mutex<()> = Mutex::new(());

fn hex(s: &str) -> Vec<u8> {
    xenprobe_abi::hex::decode(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// `xtask fuzz --reproduce --debug` running; killed (and its guest
/// destroyed) on drop.
struct Replay {
    child: Child,
    guest: String,
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far.
    out: Vec<String>,
}

impl Replay {
    fn start(target: &str, mode: &str, input_hex: &str) -> Self {
        let dir = workspace().join("target/crash-debug-test");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let input = dir.join(format!("{target}-{mode}.input"));
        std::fs::write(&input, hex(input_hex)).expect("write the crash input");
        let mut child = xtask(&[
            "fuzz",
            target,
            "--mode",
            mode,
            "--debug-build",
            "--reproduce",
        ])
        .arg(&input)
        .arg("--debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("xtask fuzz starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("fuzz| {l}");
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Replay {
            child,
            guest: format!("{target}-{mode}"),
            lines,
            out: Vec::new(),
        }
    }

    /// Reads output until a line contains `what` (or the replay ends).
    fn wait_for(&mut self, what: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.out.push(l.clone());
                    if l.contains(what) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The value after `key: ` in the printed crash report.
    fn field(&self, key: &str) -> Option<String> {
        self.out
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_string))
    }

    /// The command line printed for `tool`.
    fn command(&mut self, tool: &str) -> String {
        let l = self
            .wait_for(&format!("  {tool} "), Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no {tool} command line printed:\n{}", self.out.join("\n")));
        l.trim().to_string()
    }

    /// Waits for the replay to end; returns its exit status and the rest of
    /// its output.
    fn finish(&mut self) -> (bool, String) {
        let _ = self.wait_for("was destroyed", Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return (st.success(), self.out.join("\n")),
                _ if Instant::now() > deadline => return (false, self.out.join("\n")),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // The stub gives up once its guest is gone.
            let _ = xtask(&["lab", "run", "--", "xl", "destroy", &self.guest])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The `HOST:PORT` in a printed debugger command line.
fn endpoint(cmd: &str) -> String {
    cmd.split(['\'', ' '])
        .rfind(|w| !w.is_empty())
        .expect("an address")
        .to_string()
}

/// A hex number after `key` (e.g. `rsp=0x...` in the fault message).
fn hex_after(s: &str, key: &str) -> Option<u64> {
    let rest = &s[s.find(key)? + key.len()..];
    let v: String = rest
        .trim_start_matches("0x")
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&v, 16).ok()
}

fn run_debugger(mut c: Command) -> String {
    let out = c.output().expect("debugger runs");
    let t = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("--- {:?}\n{t}", c.get_program());
    t
}

/// LLDB (for at most 120 s) with `image`'s symbols, connected to the stub
/// that the debugger command line `cmd` names, then running `cmds`; what it
/// printed.
fn lldb(image: &Path, cmd: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("timeout");
    c.args(["120", "lldb", "--batch", "--no-lldbinit"]);
    let connect = [
        format!("target create {}", image.display()),
        format!("gdb-remote {}", endpoint(cmd)),
    ];
    for o in connect
        .into_iter()
        .chain(cmds.iter().map(|c| c.to_string()))
    {
        c.arg("-o").arg(o);
    }
    run_debugger(c)
}

/// LLDB at a page fault (TLV-2) of a PVH guest.
#[test]
fn lldb_at_a_page_fault_on_pvh() {
    if !have("lldb") {
        eprintln!("SKIP: no lldb on the host (apt-get install lldb)");
        return;
    }
    let _lock = PORT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Replay::start("tlv", "pvh", "0504ffffffff");
    let cmd = r.command("lldb");
    let image = workspace().join("target/guests/tlv-pvh");
    assert!(
        cmd.starts_with(&format!(
            "lldb {} -o 'gdb-remote 127.0.0.1:",
            image.display()
        )),
        "{cmd}"
    );
    assert_eq!(r.field("kind").as_deref(), Some("page-fault"));
    let rip = r
        .field("rip")
        .and_then(|v| hex_after(&v, ""))
        .expect("crash rip");
    let message = r.field("message").expect("fault message");
    let (rsp, rbp) = (
        hex_after(&message, "rsp=").expect("rsp in the fault report"),
        hex_after(&message, "rbp=").expect("rbp in the fault report"),
    );
    assert!(
        r.out
            .iter()
            .any(|l| l.starts_with(&format!("stopped at {rip:#x} xenprobe_target+"))),
        "stopped on the faulting instruction:\n{}",
        r.out.join("\n")
    );
    let out = lldb(
        &image,
        &cmd,
        &["bt", "register read rip rsp rbp", "continue"],
    );
    let (ok, log) = r.finish();
    let frame0 = out
        .lines()
        .find(|l| l.contains("frame #0:"))
        .unwrap_or_default();
    assert!(
        frame0.contains(&format!("{rip:#018x}")) && frame0.contains("xenprobe_target"),
        "frame #0 is the crash site {rip:#x}:\n{out}"
    );
    assert!(out.contains(&format!("rip = {rip:#018x}")), "{out}");
    assert!(
        out.contains(&format!("rsp = {rsp:#018x}")),
        "rsp as at the fault:\n{out}"
    );
    assert!(
        out.contains(&format!("rbp = {rbp:#018x}")),
        "rbp as at the fault:\n{out}"
    );
    assert!(
        out.contains("exited with status = 11"),
        "continue runs into the crash (SIGSEGV):\n{out}"
    );
    assert!(ok, "the replay failed:\n{log}");
    assert!(
        log.contains("debugger session ended: the guest ended (SIGSEGV"),
        "{log}"
    );
}

/// GDB at a panic (TLV-1) of an HVM guest: stopped at the crash sink.
#[test]
fn gdb_at_a_panic_on_hvm() {
    if !have("gdb") {
        eprintln!("SKIP: no gdb on the host (apt-get install gdb)");
        return;
    }
    let _lock = PORT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Replay::start("tlv", "hvm", "ee01ff");
    let cmd = r.command("gdb");
    assert_eq!(r.field("kind").as_deref(), Some("panic"));
    let image = workspace().join("target/guests/tlv-hvm");
    let mut c = Command::new("timeout");
    c.args(["120", "gdb", "-batch", "-nx"]);
    for ex in [
        format!("file {}", image.display()),
        "set remotetimeout 30".into(),
        format!("target remote {}", endpoint(&cmd)),
        "bt 12".into(),
        "info registers rip rdi".into(),
        "continue".into(),
    ] {
        c.arg("-ex").arg(ex);
    }
    let out = run_debugger(c);
    let (ok, log) = r.finish();
    assert!(
        out.contains("<xenprobe_rt::crash::xenprobe_crash>"),
        "stopped at the crash sink's entry:\n{out}"
    );
    let rdi = out
        .lines()
        .find(|l| l.starts_with("rdi "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    assert_eq!(rdi, "0x1", "xenprobe_crash(1 = panic, ...):\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('#') && l.contains("xenprobe_target")),
        "the panicking parser is on the stack:\n{out}"
    );
    assert!(out.contains("signal SIGSEGV"), "{out}");
    assert!(ok, "the replay failed:\n{log}");
}

/// The newest build of the `live_debug_demo` test binary.
fn demo_binary() -> PathBuf {
    let deps = workspace().join("target/debug/deps");
    std::fs::read_dir(&deps)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("live_debug_demo-") && !n.contains('.'))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect(
            "no live_debug_demo test binary: \
             cargo test -p xenprobe-tests --test live_debug_demo --no-run",
        )
}

/// `XENPROBE_DEBUG`: a failed guest test is served to LLDB where it failed
/// (at `known_compute(3, 4)`), and reported as failed once LLDB leaves.
#[test]
fn lldb_at_a_failed_guest_test() {
    if !have("lldb") {
        eprintln!("SKIP: no lldb on the host (apt-get install lldb)");
        return;
    }
    let _lock = PORT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let bin = demo_binary();
    let mut child = xtask(&["lab", "run", "--"])
        .arg(&bin)
        .args(["--ignored", "--nocapture", "--test-threads", "1"])
        .env("XENPROBE_DEBUG", "1234")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo test starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("demo| {l}");
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let cmd = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.trim_start().starts_with("lldb ") => break l.trim().to_string(),
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("no debugger command line:\n{}", seen.join("\n"));
            }
        }
    };
    assert!(
        seen.iter()
            .any(|l| l.contains("fails_at_known_compute::pvh FAILED: on purpose")),
        "{}",
        seen.join("\n")
    );
    let image = workspace().join("target/guests/known-pvh");
    let out = lldb(&image, &cmd, &["register read rip rdi", "bt", "continue"]);
    let status = child.wait().expect("the demo test ends");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        out.lines()
            .any(|l| l.contains("frame #0:") && l.contains("known_compute(a=3, b=4)")),
        "stopped where the test failed:\n{out}"
    );
    assert!(out.contains("rdi = 0x0000000000000003"), "{out}");
    assert!(out.contains("exited with status = 25"), "{out}");
    assert!(!status.success(), "the failed test still fails");
    assert!(
        rest.iter().any(|l| l.contains("debugger left")),
        "{}",
        rest.join("\n")
    );
}

/// LLDB at a `BUG()` in the Linux sample module (LX-2 of guests/BUGS.md),
/// PVH on the debug hypervisor (`cargo xtask test` runs it in that pass:
/// Linux boots as PVH in the lab only with shadow paging). The printed
/// command line loads the stripped vmlinux and the module at its sections'
/// addresses; frame #0 must be the module function with its source line.
#[test]
#[ignore = "needs the debug hypervisor (Linux as PVH in the lab): run by cargo xtask test's debug pass"]
fn lldb_at_a_bug_in_a_linux_module() {
    if !have("lldb") {
        eprintln!("SKIP: no lldb on the host (apt-get install lldb)");
        return;
    }
    let _lock = PORT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // OPEN, then MODE 7 (of 4): BUG_ON(s->mode >= XP_MODES).
    let mut r = Replay::start("linux", "pvh", "010100070107");
    let cmd = r.command("lldb");
    assert_eq!(
        r.field("kind").as_deref(),
        Some("BUG"),
        "{}",
        r.out.join("\n")
    );
    assert!(
        cmd.contains("target modules load --file") && cmd.contains("xenprobe_sample.ko ."),
        "the module is loaded at its sections: {cmd}"
    );
    // The printed line is for a shell: run it as one, batch, with our commands.
    let args = cmd.strip_prefix("lldb ").expect("an lldb command line");
    let script = format!(
        "timeout 120 lldb --batch --no-lldbinit {args} -o 'bt' -o 'register read rip' -o 'detach'"
    );
    let mut c = Command::new("sh");
    c.args(["-c", &script]);
    let out = run_debugger(c);
    let (ok, log) = r.finish();
    // The last frame #0 is bt's: LLDB prints one at the stop, before the
    // module is loaded.
    let frame0 = out
        .lines()
        .rev()
        .find(|l| l.contains("frame #0:"))
        .unwrap_or_default();
    assert!(
        frame0.contains("xenprobe_sample.ko`xp_record") && frame0.contains("xenprobe_sample.c:"),
        "frame #0 is the module function with its source line:\n{out}"
    );
    assert!(
        out.contains("xenprobe_sample.ko`xenprobe_target"),
        "the caller in the module is in the backtrace:\n{out}"
    );
    assert!(ok, "the replay failed:\n{log}");
}
