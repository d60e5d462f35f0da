//! Live tests of faults, counted (inside dom0):
//!
//! - SIGKILL of the harness at [`kills`] random points (20 by default) of
//!   each of: a fuzz campaign (`xenprobe-fuzz`, tlv PVH), a REPL session
//!   and a GDB-stub session (`xenprobe repl` / `xenprobe gdbserver` on one
//!   `hostile` PVH guest that loops, `hostile.loop=1`). After each kill a
//!   clean attach repairs the guest from the journal and nothing is left
//!   behind: no pause, no breakpoint byte (code equals the ELF's), no
//!   vm_event ring (a new one can be enabled), no log-dirty tracking (it can
//!   be turned on), no trap flag of a cut-short step, no journal after the
//!   detach; the REPL's and stub's guest then runs on. Kill times come
//!   from a fixed-seed generator over a short window after the session
//!   started working; each test prints what the journals held at the kills.
//! - `xl create` of a guest that wants more memory than Xen has: the fuzzer
//!   and the test API say so, with the memory asked for and free.
//!
//! `XENPROBE_KILLS=N` changes the number of kill points. The binaries
//! `xenprobe` and `xenprobe-fuzz` come from next to this test's `deps/`
//! directory (`cargo build --workspace` first).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use xenprobe::vmi::{Domain, Xen, RFLAGS_TF};

/// Kill points per session kind.
fn kills() -> usize {
    std::env::var("XENPROBE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// The window after a session started working in which it is killed.
const KILL_WINDOW_MS: u64 = 1500;

/// xorshift64*: kill times that repeat from run to run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn root() -> PathBuf {
    xenprobe_tests::root()
}

/// Where this run keeps its copies of the binaries.
fn bin_dir() -> PathBuf {
    std::env::temp_dir().join(format!("xenprobe-live-faults-{}", std::process::id()))
}

/// `name` from next to this test's `deps/` directory, copied into a local
/// directory: in the lab the workspace is a network share that dom0 pages
/// a program in from on every start, seconds for a debug build, and each
/// kill point starts one.
fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join(name))
        .context("target dir")?;
    ensure!(
        p.exists(),
        "{} missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    let local = bin_dir().join(name);
    if !local.exists() {
        std::fs::create_dir_all(bin_dir())?;
        std::fs::copy(&p, &local).with_context(|| format!("copying {}", p.display()))?;
    }
    Ok(local)
}

/// Writes an xl config for `image` (PVH) named `name` that keeps the
/// domain after it exits or crashes; returns its path.
fn pvh_cfg(name: &str, image: &Path, cmdline: &str) -> Result<PathBuf> {
    let dir = root().join("target/live-faults");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &path,
        format!(
            "name=\"{name}\"\ntype=\"pvh\"\nkernel=\"{}\"\ncmdline=\"{cmdline}\"\nmemory=32\nvcpus=1\n\
             on_poweroff=\"preserve\"\non_reboot=\"preserve\"\non_crash=\"preserve\"\n",
            image.display()
        ),
    )?;
    Ok(path)
}

fn xl(args: &[&str]) -> Result<()> {
    let out = Command::new("xl").args(args).output()?;
    ensure!(
        out.status.success(),
        "xl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn destroy(name: &str) {
    let _ = Command::new("xl")
        .args(["destroy", name])
        .stderr(Stdio::null())
        .status();
}

/// What a killed harness's journal held, added up over the kills.
#[derive(Default, Debug)]
struct Left {
    kills: usize,
    journals: usize,
    breakpoints: usize,
    rings: usize,
    logdirty: usize,
    stepping: usize,
}

impl Left {
    fn add_journal(&mut self, domid: u32) {
        let Ok(text) = std::fs::read_to_string(journal_path(domid)) else {
            return;
        };
        let Ok(j) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        self.journals += 1;
        let n = |k: &str| j[k].as_array().map_or(0, Vec::len);
        let on = |k: &str| usize::from(j[k].as_bool() == Some(true));
        self.breakpoints += usize::from(n("breakpoints") > 0);
        self.rings += on("monitor");
        self.logdirty += on("logdirty");
        self.stepping += usize::from(n("stepping") > 0);
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: {} SIGKILLs, {} clean attaches with nothing left behind; the journal had \
             planted breakpoints {} times, a vm_event ring {}, log-dirty {}, a step's trap flag {}",
            self.kills, self.kills, self.breakpoints, self.rings, self.logdirty, self.stepping
        )
    }
}

/// Where the sessions under test keep the journal of `domid` (the test
/// binary's engine settings, as its children get them).
fn journal_path(domid: u32) -> PathBuf {
    xenprobe::vmi::SettingsArgs::from_env()
        .unwrap_or_default()
        .state_dir()
        .join(format!("{domid}.json"))
}

/// The clean attach after a kill, and the proof that nothing is left:
/// not paused, code bytes equal the ELF's, a vm_event ring and log-dirty
/// can be turned on (none left), no trap flag, no journal after detach.
fn clean_attach(
    xen: &Xen,
    name: &str,
    code: &[(u64, Vec<u8>)],
    counter: Option<u64>,
    left: &mut Left,
) -> Result<()> {
    let domid = xen.find(name).context("the guest is still there")?.domid;
    left.add_journal(domid);
    let mut dom = Domain::attach(xen, name).context("the clean attach")?;
    let info = dom.info()?;
    ensure!(
        !info.paused || info.shutdown || info.crashed,
        "still paused after the attach that repairs it: {info:?}"
    );
    dom.pause()?;
    for (addr, want) in code {
        let mut now = vec![0u8; want.len()];
        dom.read_phys(*addr, &mut now)?;
        if let Some(i) = now.iter().zip(want).position(|(a, b)| a != b) {
            bail!(
                "a breakpoint byte is left at {:#x}: {:#04x}, the ELF has {:#04x}",
                addr + i as u64,
                now[i],
                want[i]
            );
        }
    }
    let r = dom.regs(0)?;
    ensure!(
        r.rflags & RFLAGS_TF == 0,
        "the trap flag of a step is left set (rip {:#x})",
        r.rip
    );
    let ring = xenprobe::xen::MonitorRing::enable(xen.ctrl(), domid)
        .context("a vm_event ring is left behind (a new one cannot be enabled)")?;
    drop(ring);
    drop(
        dom.track_dirty()
            .context("log-dirty tracking is left on (it cannot be turned on)")?,
    );
    if let Some(at) = counter {
        // The guest runs on: its loop counter moves.
        dom.resume()?;
        let mut first = [0u8; 8];
        dom.read_phys(at, &mut first)?;
        let t0 = Instant::now();
        loop {
            let mut now = [0u8; 8];
            dom.read_phys(at, &mut now)?;
            if now != first {
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(20),
                "the guest does not run on after the clean attach"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    dom.detach()?;
    ensure!(
        !journal_path(domid).exists(),
        "a journal is left after a clean detach"
    );
    let info = xen.ctrl().domain_info(domid)?;
    ensure!(
        !info.paused || info.shutdown || info.crashed,
        "paused after the detach: {info:?}"
    );
    left.kills += 1;
    Ok(())
}

/// The code of `funcs` (names) in `image`: (address, ELF bytes).
fn code_of(image: &Path, funcs: &[&str]) -> Result<Vec<(u64, Vec<u8>)>> {
    let pats: Vec<String> = funcs.iter().map(|s| s.to_string()).collect();
    let f = xenprobe_fuzz::blocks::functions_in_image(image, &pats)?;
    ensure!(!f.is_empty(), "no code of {funcs:?} in {}", image.display());
    Ok(f.into_iter().map(|(f, code)| (f.addr, code)).collect())
}

fn kill(child: &mut Child) -> Result<()> {
    if let Some(st) = child.try_wait()? {
        bail!("the harness ended by itself before its kill point: {st}");
    }
    child.kill()?; // SIGKILL
    let st = child.wait()?;
    use std::os::unix::process::ExitStatusExt;
    ensure!(st.signal() == Some(9), "not killed by SIGKILL: {st}");
    Ok(())
}

/// Reads `child`'s stderr until a line contains `what` (or `limit` passes).
fn wait_line(child: &mut Child, what: &'static str, limit: Duration) -> Result<()> {
    let err = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).split(b'\n').map_while(Result::ok) {
            if String::from_utf8_lossy(&l).contains(what) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(limit)
        .map_err(|_| anyhow::anyhow!("no {what:?} from the harness within {limit:?}"))
}

fn fuzz_campaign() -> Result<()> {
    let xen = Xen::open()?;
    let image = root().join("target/guests/tlv-pvh");
    let name = "faults-fuzz";
    let cfg = pvh_cfg(name, &image, "")?;
    let dir = root().join("target/live-faults/campaign");
    let _ = std::fs::remove_dir_all(&dir);
    let code = code_of(
        &image,
        &["xenprobe_target", "crate:tlv", "xenprobe_fuzz_end"],
    )?;
    let fuzz = bin("xenprobe-fuzz")?;
    let mut rng = Rng(0x5eed_f022);
    kill_rounds(name, "fuzz campaign", |i, left| {
        let mut child = Command::new(&fuzz)
            .arg("--cfg")
            .arg(&cfg)
            .arg("--image")
            .arg(&image)
            .args(["--krate", "tlv", "--time", "600s", "--timeout-ms", "500"])
            .args(["--rng-seed", &i.to_string()])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        wait_line(&mut child, "blocks instrumented", Duration::from_secs(120))
            .with_context(|| format!("campaign {i}"))?;
        std::thread::sleep(Duration::from_millis(rng.below(KILL_WINDOW_MS)));
        kill(&mut child)?;
        clean_attach(&xen, name, &code, None, left)
            .with_context(|| format!("after the kill of campaign {i}"))?;
        Ok(())
    })
}

/// Runs `round` at each kill point (`kills()`, numbered, adding what the
/// killed harness left to the count), then destroys the guest `name`, also
/// after a failed round, and prints the count for the session kind `what`.
fn kill_rounds(
    name: &str,
    what: &str,
    mut round: impl FnMut(usize, &mut Left) -> Result<()>,
) -> Result<()> {
    let mut left = Left::default();
    let result = (0..kills()).try_for_each(|i| round(i, &mut left));
    destroy(name);
    result?;
    eprintln!("{}", left.line(what));
    Ok(())
}

/// The looping `hostile` guest, created and running: its covered code,
/// the addresses of `hostile_tick` and `hostile_victim`, and of its loop
/// counter (virtual = physical in the sample guests).
struct Looping {
    code: Vec<(u64, Vec<u8>)>,
    tick: u64,
    victim: u64,
    counter: u64,
}

fn looping_guest(name: &str) -> Result<Looping> {
    let image = root().join("target/guests/hostile-pvh");
    let cfg = pvh_cfg(name, &image, "hostile.loop=1")?;
    destroy(name);
    xl(&["create", "-q", &cfg.display().to_string()])?;
    let syms = xenprobe::vmi::Symbols::load(&image)?;
    Ok(Looping {
        code: code_of(&image, &["hostile_tick", "hostile_victim"])?,
        tick: syms.require("hostile_tick")?,
        victim: syms.require("hostile_victim")?,
        counter: syms.require("hostile_ticks")?,
    })
}

fn repl() -> Result<()> {
    let xen = Xen::open()?;
    let name = "faults-repl";
    let g = looping_guest(name)?;
    let xenprobe = bin("xenprobe")?;
    // Addresses, not symbols: loading the image's DWARF costs seconds in an
    // emulated dom0, every session.
    let mut script = format!("break {:#x}\nbreak {:#x}\n", g.tick, g.victim);
    for _ in 0..400 {
        script += "continue 5\nstepi\nregs\nx/2xg $rsp\nbt\n";
    }
    let mut rng = Rng(0x5eed_4e91);
    kill_rounds(name, "REPL session", |i, left| {
        let mut child = Command::new(&xenprobe)
            .args(["repl", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                if String::from_utf8_lossy(&l).contains("breakpoint") {
                    let _ = tx.send(());
                }
            }
        });
        let text = script.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        rx.recv_timeout(Duration::from_secs(120))
            .map_err(|_| anyhow::anyhow!("REPL {i} never stopped at its breakpoint"))?;
        std::thread::sleep(Duration::from_millis(rng.below(KILL_WINDOW_MS)));
        kill(&mut child)?;
        clean_attach(&xen, name, &g.code, Some(g.counter), left)
            .with_context(|| format!("after the kill of REPL {i}"))?;
        Ok(())
    })
}

/// A GDB remote-protocol client as small as it gets (acks, checksums).
struct Rsp(TcpStream);

impl Rsp {
    fn send(&mut self, body: &str) -> std::io::Result<String> {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.0, "${body}#{sum:02x}")?;
        self.0.flush()?;
        self.recv()
    }

    fn recv(&mut self) -> std::io::Result<String> {
        let mut byte = [0u8];
        loop {
            self.0.read_exact(&mut byte)?;
            if byte[0] == b'$' {
                break;
            }
        }
        let mut body = Vec::new();
        loop {
            self.0.read_exact(&mut byte)?;
            if byte[0] == b'#' {
                break;
            }
            body.push(byte[0]);
        }
        let mut sum = [0u8; 2];
        self.0.read_exact(&mut sum)?;
        self.0.write_all(b"+")?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Drives a stub session until the connection breaks: a breakpoint on
/// `hostile_tick`, continue, registers, memory, steps, the breakpoint
/// removed and planted again. Sends `()` at the first stop.
fn stub_client(port: u16, bp: u64, started: std::sync::mpsc::Sender<()>) {
    let t0 = Instant::now();
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(120) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => return,
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut c = Rsp(stream);
    let z = format!("Z0,{bp:x},1");
    let unz = format!("z0,{bp:x},1");
    let mut go = || -> std::io::Result<()> {
        c.send("qSupported:swbreak+;hwbreak+")?;
        c.send("?")?;
        c.send(&z)?;
        loop {
            c.send("c")?;
            let _ = started.send(());
            c.send("g")?;
            c.send(&format!("m{bp:x},8"))?;
            c.send("s")?;
            c.send(&unz)?;
            c.send("s")?;
            c.send(&z)?;
        }
    };
    let _ = go();
}

fn stub() -> Result<()> {
    let xen = Xen::open()?;
    let name = "faults-stub";
    let g = looping_guest(name)?;
    let bp = g.tick;
    let xenprobe = bin("xenprobe")?;
    let mut rng = Rng(0x5eed_57b0);
    kill_rounds(name, "stub session", |i, left| {
        let port = 17_400 + i as u16;
        let mut child = Command::new(&xenprobe)
            .args(["gdbserver", name, "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || stub_client(port, bp, tx));
        rx.recv_timeout(Duration::from_secs(120))
            .map_err(|_| anyhow::anyhow!("stub session {i} never stopped at its breakpoint"))?;
        std::thread::sleep(Duration::from_millis(rng.below(KILL_WINDOW_MS)));
        kill(&mut child)?;
        let _ = client.join();
        clean_attach(&xen, name, &g.code, Some(g.counter), left)
            .with_context(|| format!("after the kill of stub {i}"))?;
        Ok(())
    })
}

/// A guest that wants far more memory than the lab has, through the fuzzer.
fn fuzzer_out_of_memory() -> Result<()> {
    let image = root().join("target/guests/tlv-pvh");
    let name = "faults-oom";
    let cfg = pvh_cfg(name, &image, "")?;
    let text = std::fs::read_to_string(&cfg)?.replace("memory=32", "memory=1000000");
    std::fs::write(&cfg, text)?;
    let spec = xenprobe_fuzz::session::TargetSpec::sample("tlv", cfg, image);
    let err = match xenprobe_fuzz::session::Session::start(spec) {
        Ok(s) => {
            let _ = s.finish();
            destroy(name);
            bail!("a 1,000,000 MiB guest started");
        }
        Err(e) => e.to_string(),
    };
    eprintln!("fuzzer: {err}");
    ensure!(
        err.contains("not enough free memory") && err.contains("asks for 1000000 MiB"),
        "the fuzzer does not say that Xen lacks the memory: {err}"
    );
    ensure!(
        Xen::open()?.find(name).is_err(),
        "a domain is left after the failed create"
    );
    Ok(())
}

/// Set in the child run of [`test_api_out_of_memory`].
const OOM_CHILD_ENV: &str = "XENPROBE_FAULTS_OOM_CHILD";

/// The same through the test API: a guest test whose guest cannot be
/// created fails with that reason (this binary run again as a child).
fn test_api_out_of_memory() -> Result<()> {
    let out = Command::new(std::env::current_exe()?)
        .env(OOM_CHILD_ENV, "1")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!out.status.success(), "the guest test passed:\n{text}");
    // Only the error line is echoed: the child's own "test ... FAILED"
    // lines are expected and would read as this suite failing.
    let said = text
        .lines()
        .find(|l| l.contains("not enough free memory") && l.contains("asks for 1000000 MiB"));
    let Some(said) = said else {
        bail!("the test API does not say that Xen lacks the memory:\n{text}");
    };
    eprintln!("test API (its guest test fails, as it should): {said}");
    Ok(())
}

/// A test's body.
type Body = fn() -> Result<()>;

fn main() -> std::process::ExitCode {
    if std::env::var_os(OOM_CHILD_ENV).is_some() {
        use xenprobe::testing::{GuestTest, Mode};
        return xenprobe::testing::main(vec![GuestTest::new("too_big", |_| Ok(()))
            .guest("known")
            .modes(&[Mode::Pvh])
            .memory(1_000_000)
            .fresh_boot()]);
    }
    let mut args = Arguments::from_args();
    // The sessions share the lab's two CPUs with their guests: one at a time.
    args.test_threads = Some(1);
    let tests: [(&str, Body); 5] = [
        ("sigkill_fuzz_campaign_then_clean_attach", fuzz_campaign),
        ("sigkill_repl_session_then_clean_attach", repl),
        ("sigkill_stub_session_then_clean_attach", stub),
        (
            "xl_out_of_memory_is_named_by_the_fuzzer",
            fuzzer_out_of_memory,
        ),
        (
            "xl_out_of_memory_is_named_by_the_test_api",
            test_api_out_of_memory,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                if !xenprobe_tests::have_xen() {
                    return Ok(());
                }
                let t0 = Instant::now();
                let r = f().map_err(|e| Failed::from(format!("{e:#}")));
                eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64());
                r
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let _ = std::fs::remove_dir_all(bin_dir());
    conclusion.exit_code()
}
