//! Live tests of a guest that fights its harness (guests/hostile, inside
//! dom0): each behaviour of the `hostile` guest, selected by byte 0 of its
//! input, runs through the fuzzer's own session (`xenprobe_fuzz::session`,
//! what a campaign runs) on PVH and HVM. For each the harness neither
//! panics nor hangs, the run ends as the guest made it end (the guest
//! checks what its tricks compute and panics if the harness changed it), what
//! the engine noticed comes in one line, and the reset after it is exact:
//! memory hash and vCPU state equal the snapshot (`Session::check_reset`),
//! and an ordinary run works after it.
//!
//! | test | the guest | the harness |
//! |---|---|---|
//! | `patch` | `ret` over a coverage breakpoint's byte, an immediate patched, a code page rewritten with what it read | no hit there; notices the overwritten byte; the next restore plants it again (a later call is a hit) |
//! | `patch_end` | `ret` over the end marker's breakpoint byte | the run's power-off is reported with that note, taken back in place |
//! | `patch_end_destroyed` | the same, the toolstack destroying the domain | the guest booted again |
//! | `copy` | runs a copy of covered code (breakpoint bytes included) | repairs the copy, no hit, a notice |
//! | `remap` | maps a covered code page onto a copy of it | the same: the breakpoint's address from another frame is no hit |
//! | `pt_zero`, `triple` | triple faults | `triple-fault`, taken back in place (no reboot) |
//! | `pt_loop` | page tables that loop or point past memory, then a fault with RBP there | the crash report's walk ends |
//! | `cli_spin` | spins with interrupts off | a hang |
//! | `dirty_all` | writes every page of its RAM | all restored |
//! | `overflow` | writes past the input buffer, the length, `xenprobe_quiet` | nothing more to do |
//! | `stack`, `cr3`, `idt` | moves its stack, CR3, IDT (and faults through the moved IDT) | the next reset loads the whole vCPU state where the fast path would miss it |
//! | `vcpu` | brings up vCPU 1 mid-run (2-vCPU config), also one that goes down again by itself | the restore resets it to down and uninitialised |
//!
//! Guests are booted once per mode (and vCPU count) and shared by the tests;
//! a test that fails drops its guest. One test at a time; each is stopped
//! (and the binary fails) after [`CASE_LIMIT`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use xenprobe_fuzz::report::Outcome;
use xenprobe_fuzz::session::{destroy, Session, TargetSpec};

/// The longest a test may take before the binary gives up on it.
const CASE_LIMIT: Duration = Duration::from_secs(180);

/// Per-run timeout: a run longer than this is a hang.
const RUN_TIMEOUT: Duration = Duration::from_millis(1500);

/// Mode, vCPUs, and whether the toolstack keeps the domain after a
/// power-off (`on_poweroff="preserve"`, else `"destroy"`).
type Key = (&'static str, u32, bool);

/// The booted guests, by mode and vCPU count.
static POOL: Mutex<BTreeMap<Key, Session>> = Mutex::new(BTreeMap::new());

fn name_of((mode, vcpus, keep): Key) -> String {
    let tail = if keep { "" } else { "-d" };
    format!("live-hostile-{mode}-{vcpus}{tail}")
}

/// A config of the hostile guest whose exits, reboots and crashes the
/// toolstack keeps (so that the session takes them back in place).
fn spec(key: Key) -> Result<TargetSpec> {
    let (mode, vcpus, keep) = key;
    let root = xenprobe_tests::root();
    let image = root.join(format!("target/guests/hostile-{mode}"));
    ensure!(
        image.exists(),
        "{} is missing: run cargo xtask guests build",
        image.display()
    );
    let work: PathBuf = root.join("target/live-hostile");
    std::fs::create_dir_all(&work)?;
    let name = name_of(key);
    let mut cfg = xenprobe_abi::XlConfig::image(&name, mode.parse()?, &image, 32);
    cfg.vcpus = vcpus;
    cfg.keep_on_poweroff = keep;
    let cfg = cfg.render();
    let path = work.join(format!("{name}.cfg"));
    std::fs::write(&path, cfg)?;
    let mut spec = TargetSpec::sample("hostile", path, image);
    // The asm and `#[no_mangle]` functions are named hostile_*.
    spec.cover.push("hostile_".into());
    spec.timeout = RUN_TIMEOUT;
    Ok(spec)
}

/// One run and what came of it, in one line.
struct Ran {
    outcome: Outcome,
    blocks: Vec<usize>,
    line: String,
}

fn outcome_line(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "ended at its end point".into(),
        Outcome::Crash(r) => format!("crash {} at {}: {}", r.kind, r.site, r.message),
        Outcome::Hang(r) => format!("hang at {} {}", r.site, r.message),
    }
}

/// Runs `input`, then proves the reset exact; prints one line: the outcome
/// and what the harness noticed (notices come from the run and from the
/// restore after it).
fn run(s: &mut Session, what: &str, input: &[u8]) -> Result<Ran> {
    let (outcome, blocks) = s.run(input).with_context(|| format!("{what}: run"))?;
    let c = s
        .check_reset()
        .with_context(|| format!("{what}: check_reset"))?;
    let mut notices = s.take_notices();
    // A run that found coverage is run twice: the same notice twice.
    notices.dedup();
    let mut line = outcome_line(&outcome);
    for n in &notices {
        if !line.contains(n.as_str()) {
            line += "; noticed: ";
            line += n;
        }
    }
    eprintln!("hostile {what} {}: {line}", hex(input));
    ensure!(
        c.exact(),
        "{what}: the reset after it is not exact: {}",
        xenprobe_tests::reset_differences(&c)
    );
    ensure!(c.frames > 1000, "{what}: only {} frames compared", c.frames);
    Ok(Ran {
        outcome,
        blocks,
        line,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn expect_ok(r: &Ran, what: &str) -> Result<()> {
    ensure!(
        matches!(r.outcome, Outcome::Ok),
        "{what}: expected a normal end: {}",
        r.line
    );
    Ok(())
}

fn expect_crash<'a>(
    r: &'a Ran,
    what: &str,
    kind: &str,
) -> Result<&'a xenprobe_fuzz::report::CrashReport> {
    match &r.outcome {
        Outcome::Crash(c) if c.kind == kind => Ok(c),
        _ => bail!("{what}: expected a {kind} crash: {}", r.line),
    }
}

/// The coverage index of the block at `symbol`'s address.
fn block_at(s: &Session, symbol: &str) -> Result<usize> {
    let addr = s
        .domain()
        .context("no guest")?
        .symbol(symbol)
        .with_context(|| format!("symbol {symbol}"))?;
    s.blocks
        .iter()
        .position(|b| b.addr == addr)
        .with_context(|| format!("no coverage block at {symbol}"))
}

fn noticed(r: &Ran, what: &str, want: &str) -> Result<()> {
    ensure!(
        r.line.contains("noticed:") && r.line.contains(want),
        "{what}: the harness did not say {want:?}: {}",
        r.line
    );
    Ok(())
}

fn benign(s: &mut Session, what: &str) -> Result<()> {
    expect_ok(&run(s, what, &[0x00, 0x05])?, what)
}

/// After a hostile run and its exact reset: an ordinary input runs to its
/// end (not checked again: the reset before it was).
fn then_ordinary(s: &mut Session, what: &str) -> Result<()> {
    let (o, _) = s
        .run(&[0x00, 0x05])
        .with_context(|| format!("{what}: ordinary run"))?;
    ensure!(
        matches!(o, Outcome::Ok),
        "{what}: an ordinary input after it: {}",
        outcome_line(&o)
    );
    Ok(())
}

fn patch(s: &mut Session, what: &str) -> Result<()> {
    let patched = block_at(s, "hostile_patched")?;
    let r = run(s, what, &[0x01, 0x00])?;
    expect_ok(&r, what)?;
    ensure!(
        !r.blocks.contains(&patched),
        "{what}: a breakpoint byte the guest overwrote was reported as a hit"
    );
    noticed(
        &r,
        what,
        "overwrote xenprobe's breakpoint at hostile_patched+0x0",
    )?;
    // The restore planted it again: the code as built is a hit now.
    let r = run(s, what, &[0x01, 0x02])?;
    expect_ok(&r, what)?;
    ensure!(
        r.blocks.contains(&patched),
        "{what}: hostile_patched was not covered after the restore ({:?})",
        r.blocks
    );
    Ok(())
}

fn patch_end(s: &mut Session, what: &str) -> Result<()> {
    let before = (s.revivals(), s.restarts());
    let r = run(s, what, &[0x01, 0x03])?;
    let c = expect_crash(&r, what, "exited")?;
    ensure!(
        c.message.contains("xenprobe_fuzz_end (the end point)"),
        "{what}: the report does not say that the end point was overwritten: {}",
        r.line
    );
    ensure!(
        s.revivals() > before.0 && s.restarts() == before.1,
        "{what}: the power-off was not taken back in place (revivals, restarts: {before:?} -> {:?})",
        (s.revivals(), s.restarts())
    );
    then_ordinary(s, what)
}

/// The same power-off on a domain the toolstack destroys: nothing to take
/// back, the session boots the guest again.
fn patch_end_destroyed(s: &mut Session, what: &str) -> Result<()> {
    let before = (s.revivals(), s.restarts());
    let (o, _) = s
        .run(&[0x01, 0x03])
        .with_context(|| format!("{what}: run"))?;
    eprintln!("hostile {what} 0103: {}", outcome_line(&o));
    ensure!(
        matches!(&o, Outcome::Crash(c) if c.kind == "exited"),
        "{what}: expected the power-off: {}",
        outcome_line(&o)
    );
    ensure!(
        s.restarts() > before.1 && s.revivals() == before.0,
        "{what}: the destroyed guest was not booted again (revivals, restarts: {before:?} -> {:?})",
        (s.revivals(), s.restarts())
    );
    benign(s, what)
}

fn copy(s: &mut Session, what: &str) -> Result<()> {
    let r = run(s, what, &[0x02])?;
    expect_ok(&r, what)?;
    noticed(&r, what, "ran a copy of the code at hostile_leaf")?;
    // The original runs between the copy and the copy's run: its coverage
    // breakpoints are hit and removed first, the copy still carries them.
    let leaf = block_at(s, "hostile_leaf")?;
    let r = run(s, what, &[0x02, 0x01])?;
    expect_ok(&r, what)?;
    ensure!(r.blocks.contains(&leaf), "{what}: the original was no hit");
    noticed(&r, what, "ran a copy of the code at hostile_leaf")
}

fn remap(s: &mut Session, what: &str) -> Result<()> {
    let remapped = block_at(s, "hostile_remapped")?;
    let r = run(s, what, &[0x03])?;
    expect_ok(&r, what)?;
    ensure!(
        !r.blocks.contains(&remapped),
        "{what}: a breakpoint's address run from another frame was reported as a hit"
    );
    noticed(&r, what, "ran a copy of the code at hostile_remapped+0x0")
}

fn triple_fault(s: &mut Session, what: &str, input: &[u8]) -> Result<()> {
    let before = (s.revivals(), s.restarts());
    let r = run(s, what, input)?;
    expect_crash(&r, what, "triple-fault")?;
    ensure!(
        s.revivals() > before.0 && s.restarts() == before.1,
        "{what}: the triple fault was not taken back in place (revivals, restarts: {before:?} -> {:?})",
        (s.revivals(), s.restarts())
    );
    then_ordinary(s, what)
}

fn pt_loop(s: &mut Session, what: &str) -> Result<()> {
    for variant in [0u8, 1] {
        let r = run(s, what, &[0x05, variant])?;
        let c = expect_crash(&r, what, "invalid-opcode")?;
        ensure!(!c.backtrace.is_empty(), "{what}: no backtrace");
    }
    then_ordinary(s, what)
}

fn cli_spin(s: &mut Session, what: &str) -> Result<()> {
    let r = run(s, what, &[0x06])?;
    ensure!(
        matches!(r.outcome, Outcome::Hang(_)),
        "{what}: expected a hang: {}",
        r.line
    );
    then_ordinary(s, what)
}

fn dirty_all(s: &mut Session, what: &str) -> Result<()> {
    let r = run(s, what, &[0x08])?;
    expect_ok(&r, what)?;
    // check_reset's restore copied back what the run wrote: every page.
    let st = s.last_restore().context("no restore")?;
    ensure!(
        st.dirty >= 7000,
        "{what}: only {} frames dirty after a run that wrote all of its RAM ({st:?})",
        st.dirty
    );
    then_ordinary(s, what)
}

fn overflow(s: &mut Session, what: &str) -> Result<()> {
    expect_ok(&run(s, what, &[0x09])?, what)?;
    then_ordinary(s, what)
}

fn stack(s: &mut Session, what: &str) -> Result<()> {
    expect_ok(&run(s, what, &[0x0a, 0x00])?, what)?;
    let r = run(s, what, &[0x0a, 0x01])?;
    let c = expect_crash(&r, what, "panic")?;
    ensure!(c.message.contains("moved stack"), "{what}: {}", r.line);
    then_ordinary(s, what)
}

fn cr3(s: &mut Session, what: &str) -> Result<()> {
    expect_ok(&run(s, what, &[0x0b])?, what)?;
    then_ordinary(s, what)
}

fn idt(s: &mut Session, what: &str) -> Result<()> {
    expect_ok(&run(s, what, &[0x0c, 0x00])?, what)?;
    let r = run(s, what, &[0x0c, 0x01])?;
    expect_crash(&r, what, "invalid-opcode")?;
    then_ordinary(s, what)
}

fn vcpu(s: &mut Session, what: &str) -> Result<()> {
    // Up during the run twice, then up and down again by itself (halted
    // with interrupts off) before the run ends: reset all the same.
    for input in [[0x0d, 0x00], [0x0d, 0x00], [0x0d, 0x01], [0x0d, 0x00]] {
        let r = run(s, what, &input)?;
        expect_ok(&r, what)?;
        noticed(&r, what, "brought up vCPU 1")?;
    }
    then_ordinary(s, what)
}

fn vcpu_single(s: &mut Session, what: &str) -> Result<()> {
    // One vCPU in the config: the guest is told no, and says so.
    expect_ok(&run(s, what, &[0x0d])?, what)?;
    then_ordinary(s, what)
}

type Body = fn(&mut Session, &str) -> Result<()>;

/// Runs `body` on the pooled guest of `mode` with `vcpus`; a failure drops
/// (destroys) that guest, so the next test boots a fresh one.
fn with_guest(key: Key, what: &str, body: Body) -> Result<()> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let s = match pool.entry(key) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(Session::start(spec(key)?).context("starting the hostile guest")?)
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(s, what)))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(anyhow::anyhow!("panicked: {msg}"))
        });
    if result.is_err() {
        if let Some(s) = pool.remove(&key) {
            let _ = s.finish();
        }
        destroy(&name_of(key));
    }
    result
}

/// Stops the binary if a test runs longer than [`CASE_LIMIT`] (a hang of
/// the harness): the guests are destroyed and the test named.
fn watchdog(what: String) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(CASE_LIMIT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!("live_hostile: {what} ran longer than {CASE_LIMIT:?}: the harness hangs");
            for mode in ["pvh", "hvm"] {
                for v in [1, 2] {
                    for keep in [true, false] {
                        destroy(&name_of((mode, v, keep)));
                    }
                }
            }
            std::process::exit(101);
        }
    });
    tx
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // One guest per mode is shared: one test at a time.
    args.test_threads = Some(1);
    let cases: &[(&str, u32, Body)] = &[
        ("benign", 1, benign),
        ("patch", 1, patch),
        ("patch_end", 1, patch_end),
        ("patch_end_destroyed", 1, patch_end_destroyed),
        ("copy", 1, copy),
        ("remap", 1, remap),
        ("pt_zero", 1, |s, w| triple_fault(s, w, &[0x04])),
        ("triple", 1, |s, w| triple_fault(s, w, &[0x07])),
        ("pt_loop", 1, pt_loop),
        ("cli_spin", 1, cli_spin),
        ("overflow", 1, overflow),
        ("stack", 1, stack),
        ("cr3", 1, cr3),
        ("idt", 1, idt),
        ("vcpu_single", 1, vcpu_single),
        ("dirty_all", 1, dirty_all),
        ("vcpu", 2, vcpu),
    ];
    let mut trials = Vec::new();
    for mode in ["pvh", "hvm"] {
        for &(name, vcpus, body) in cases {
            let what = format!("{name}::{mode}");
            trials.push(Trial::test(what.clone(), move || {
                if !xenprobe_tests::have_xen() {
                    return Ok(());
                }
                let t0 = Instant::now();
                let _dog = watchdog(what.clone());
                let keep = name != "patch_end_destroyed";
                let r = with_guest((mode, vcpus, keep), &what, body);
                eprintln!("hostile {what}: {:.1} s", t0.elapsed().as_secs_f64());
                r.map_err(|e| Failed::from(format!("{e:#}")))
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    for (key, s) in std::mem::take(&mut *pool) {
        if let Err(e) = s.finish() {
            eprintln!("live_hostile: finishing the {} guest: {e}", key.0);
        }
        destroy(&name_of(key));
    }
    conclusion.exit_code()
}
