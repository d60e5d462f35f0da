//! Live tests of the fuzzer's snapshot resets (inside dom0):
//!
//! - after many runs (crashes included) under each restore strategy and
//!   register path, a reset brings memory (every saved frame, and their
//!   hash) and vCPU 0's CPU record back to the snapshot exactly, checked
//!   where the reset guest stops: a breakpoint at the snapshot's RIP;
//! - a guest that writes hundreds of pages per run (tlv's FILL record, 510
//!   pages) is reset exactly by every strategy;
//! - a crash found in persistent mode is replayed from the snapshot before
//!   it is reported, and persistent mode's memory is reset exactly too.
//!
//! Runs per strategy: `XENPROBE_RESET_RUNS` (default 300; the issue asks for
//! 10,000: run this binary with `--release` then, about a minute per strategy
//! in the emulated lab; the debug build takes several times longer).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use xenprobe::vmi::{RegisterReset, RestoreOptions, RestoreStrategy};
use xenprobe_fuzz::bench::generate_inputs;
use xenprobe_fuzz::report::Outcome;
use xenprobe_fuzz::session::{destroy, Session, TargetSpec};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// TLV-1: a vendor record with an out-of-range vendor id panics.
const TLV1: &[u8] = &[0xee, 0x01, 0xff];
/// A FILL record over 510 pages.
const FILL: &[u8] = &[0x08, 0x01, 0xff];

fn runs() -> usize {
    std::env::var("XENPROBE_RESET_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn spec(tag: &str) -> (TargetSpec, String) {
    let image = xenprobe_tests::guest_image("tlv-pvh");
    let work: PathBuf = xenprobe_tests::root().join(format!("target/live-fuzz-reset/{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create work dir");
    let name = format!("live-reset-{tag}");
    let cfg_path =
        xenprobe_tests::write_pvh_cfg(&work, &name, &image, "cmdline=\"xenprobe.test=1\"\n");
    let mut spec = TargetSpec::sample("tlv", cfg_path, image);
    spec.timeout = Duration::from_millis(2000);
    (spec, name)
}

fn strategies() -> Vec<(RestoreOptions, u32)> {
    let o = |strategy, registers| RestoreOptions {
        strategy,
        registers,
    };
    vec![
        (o(RestoreStrategy::CleanEveryRun, RegisterReset::Context), 1),
        (
            o(RestoreStrategy::CleanEveryRun, RegisterReset::EventReply),
            1,
        ),
        (
            o(
                RestoreStrategy::PeekCleanEvery(1000),
                RegisterReset::Context,
            ),
            1,
        ),
        (
            o(
                RestoreStrategy::PeekCleanEvery(7),
                RegisterReset::EventReply,
            ),
            1,
        ),
        (
            o(
                RestoreStrategy::PeekCleanEvery(1000),
                RegisterReset::EventReply,
            ),
            1,
        ),
        (
            o(
                RestoreStrategy::PeekCleanEvery(1000),
                RegisterReset::EventReply,
            ),
            50,
        ),
    ]
}

/// Runs `body` on a session of the guest [`spec`]`(tag)` (changed by
/// `setup`), one test at a time; the session is finished and the guest
/// destroyed also when `body` panics (the panic goes on after that).
fn with_session(tag: &str, setup: impl FnOnce(&mut TargetSpec), body: impl FnOnce(&mut Session)) {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut spec, name) = spec(tag);
    setup(&mut spec);
    let mut s = Session::start(spec).expect("start the guest");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut s)));
    let fin = s.finish();
    destroy(&name);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    fin.expect("finish");
}

fn assert_exact(s: &mut Session, what: &str) {
    let c = s.check_reset().expect("check_reset");
    assert!(
        c.exact(),
        "{what}: not reset exactly: {}",
        xenprobe_tests::reset_differences(&c)
    );
    assert!(c.frames > 1000, "{what}: only {} frames compared", c.frames);
}

#[test]
fn every_strategy_resets_exactly_after_many_runs() {
    with_session(
        "many",
        |_| {},
        |s| {
            let mut inputs = vec![TLV1.to_vec(), FILL.to_vec()];
            inputs.extend(generate_inputs(30, 42));
            let n = runs();
            for (opts, persistent) in strategies() {
                let what = format!("{:?}, persistent {persistent}", opts);
                s.set_mode(opts, persistent, Duration::ZERO);
                let before = s.counters;
                let mut crashes = 0;
                for i in 0..n {
                    let (o, _) = s.run(&inputs[i % inputs.len()]).expect("run");
                    crashes += usize::from(matches!(o, Outcome::Crash(_)));
                }
                assert!(crashes > 0, "{what}: TLV-1 never crashed in {n} runs");
                if opts.registers == RegisterReset::EventReply {
                    assert!(
                        s.counters.regs_in_reply > before.regs_in_reply,
                        "{what}: the vm_event-reply register reset was never used"
                    );
                }
                eprintln!("{what}: {n} runs, {crashes} crashes, {:?}", s.counters);
                assert_exact(s, &what);
            }
        },
    );
}

#[test]
fn hundreds_of_dirty_pages_are_reset_exactly() {
    with_session(
        "pages",
        |_| {},
        |s| {
            for (opts, persistent) in strategies() {
                let what = format!("{:?}, persistent {persistent}", opts);
                s.set_mode(opts, persistent, Duration::ZERO);
                for _ in 0..3 {
                    let (o, _) = s.run(FILL).expect("run");
                    assert!(matches!(o, Outcome::Ok), "{what}: FILL crashed: {o:?}");
                    let (o, _) = s.run(b"\x01\x00").expect("run");
                    assert!(matches!(o, Outcome::Ok), "{what}: {o:?}");
                }
                // The run before this one wrote 510 pages: a full restore copies them back.
                let (o, _) = s.run(FILL).expect("run");
                assert!(matches!(o, Outcome::Ok));
                s.run(b"\x01\x00").expect("run");
                if persistent == 1 {
                    let st = s.last_restore().expect("a restore");
                    assert!(
                        st.restored >= 510,
                        "{what}: only {} frames restored after a FILL run ({st:?})",
                        st.restored
                    );
                }
                s.run(FILL).expect("run");
                assert_exact(s, &what);
            }
        },
    );
}

#[test]
fn a_persistent_mode_crash_is_replayed_from_the_snapshot() {
    with_session(
        "persistent",
        |spec| spec.persistent = 100,
        |s| {
            // Coverage first (new coverage forces full restores), then steady state.
            for _ in 0..3 {
                for inp in [&b"\x01\x00\x02\x04xp!k\x03\x01A"[..], b"\x01\x00", FILL] {
                    s.run(inp).expect("run");
                }
            }
            let before = s.counters;
            for _ in 0..10 {
                let (o, _) = s.run(b"\x01\x00").expect("run");
                assert!(matches!(o, Outcome::Ok));
            }
            assert!(
                s.counters.register_resets >= before.register_resets + 9,
                "persistent mode did not skip memory restores: {:?}",
                s.counters
            );
            let before = s.counters;
            let (o, _) = s.run(TLV1).expect("run");
            let Outcome::Crash(r) = o else {
                panic!("TLV-1 did not crash in persistent mode: {o:?}")
            };
            assert_eq!(r.kind, "panic", "{r:?}");
            assert_eq!(
                s.counters.replays,
                before.replays + 1,
                "the crash was not replayed from the snapshot: {:?}",
                s.counters
            );
            assert_eq!(s.counters.unstable, before.unstable);
            assert!(s.counters.full_restores > before.full_restores);
            // The crash forces a full restore before the next run.
            let before = s.counters;
            s.run(b"\x01\x00").expect("run");
            assert_eq!(s.counters.full_restores, before.full_restores + 1);
            assert_exact(s, "persistent 100");
        },
    );
}
