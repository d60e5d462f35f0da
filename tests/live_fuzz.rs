//! Live tests of the fuzzer (fuzz/, `xenprobe-fuzz`) against the sample
//! guests, inside dom0 (the cargo runner forwards `live_*` binaries to the lab).
//!
//! - a short campaign against `tlv` (PVH) finds its shallowest planted bug
//!   (TLV-1, a panic) from generic seeds that do not contain it, the saved
//!   crash file replays to the same crash site, and the guest is left clean:
//!   after the campaign it runs on by itself to a clean exit, and its code
//!   bytes equal the ELF's (no breakpoint byte left);
//! - a timeout is a hang, not a crash (bytecode BC-3), and the next input
//!   runs normally after it; a triple fault (BC-5) is reported as one and
//!   the next input runs normally after it too.
//!
//! Guests run one at a time under unique names and are destroyed at the end.
//! Images come from `cargo xtask guests build`. Without `/dev/xen/privcmd`
//! every test fails with the reason, unless `XENPROBE_ALLOW_NO_XEN=1`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use xenprobe::vmi::{Domain, ShutdownReason, Xen};
use xenprobe_fuzz::blocks;
use xenprobe_fuzz::campaign::{self, CampaignOptions};
use xenprobe_fuzz::feedback::load_crash;
use xenprobe_fuzz::report::Outcome;
use xenprobe_fuzz::session::{destroy, Session, TargetSpec};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A copy of the sample guest's config under a unique name; clean exits are
/// preserved (`on_poweroff="preserve"`) so the test can inspect the guest.
fn guest(krate: &str, tag: &str) -> (TargetSpec, String, PathBuf) {
    let image = xenprobe_tests::root().join(format!("target/guests/{krate}-pvh"));
    assert!(
        image.exists(),
        "{} is missing: run cargo xtask guests build",
        image.display()
    );
    let work = xenprobe_tests::root().join(format!("target/live-fuzz/{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create work dir");
    let name = format!("live-fuzz-{tag}");
    let cfg = format!(
        "name=\"{name}\"\ntype=\"pvh\"\nkernel=\"{}\"\nmemory=32\nvcpus=1\non_poweroff=\"preserve\"\non_reboot=\"preserve\"\non_crash=\"preserve\"\n",
        image.display()
    );
    let cfg_path = work.join("guest.cfg");
    std::fs::write(&cfg_path, cfg).expect("write cfg");
    let mut spec = TargetSpec::sample(krate, cfg_path, image);
    spec.timeout = Duration::from_millis(400);
    (spec, name, work)
}

/// The guest's code bytes of the covered functions equal the image's.
fn assert_code_clean(name: &str, image: &Path, cover: &[String]) {
    let elf = std::fs::read(image).expect("read image");
    let funcs = blocks::select_functions(&elf, cover).expect("functions");
    assert!(!funcs.is_empty());
    let xen = Xen::open().expect("open Xen");
    let mut dom = Domain::attach(&xen, name).expect("attach");
    dom.pause().expect("pause");
    for f in funcs {
        let want = blocks::code_bytes(&elf, f.addr, f.size).expect("ELF bytes");
        let mut got = vec![0u8; want.len()];
        dom.read_virt(f.addr, &mut got).expect("read guest code");
        assert_eq!(got, want, "code of {} differs from the image", f.name);
    }
    dom.detach().expect("detach");
}

#[test]
fn tlv_campaign_finds_tlv1_replays_it_and_leaves_the_guest_clean() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("tlv", "tlv");
    let seeds = work.join("seeds");
    std::fs::create_dir_all(&seeds).expect("seeds dir");
    // Generic seeds: neither holds the 0xEE record type of TLV-1.
    std::fs::write(seeds.join("a"), [0u8; 4]).expect("seed");
    std::fs::write(seeds.join("b"), b"\x01\x00\x03\x02AB").expect("seed");
    let opts = CampaignOptions {
        target: spec.clone(),
        dir: work.join("campaign"),
        time: Duration::from_secs(150),
        seeds: Some(seeds),
        stop_on: vec!["panic".into()],
        progress: true,
        rng_seed: Some(1),
    };
    let summary = campaign::run(&opts).expect("campaign");
    eprintln!("campaign: {}", summary.render());
    assert!(summary.execs > 0);
    assert!(summary.covered > 0, "no coverage: {}", summary.render());
    let (panic_file, after) = summary
        .found
        .iter()
        .find(|(f, _)| load_crash(f).is_ok_and(|c| c.report.kind == "panic"))
        .cloned()
        .unwrap_or_else(|| panic!("TLV-1 (panic) not found: {}", summary.render()));
    eprintln!(
        "TLV-1 found after {:.1} s: {}",
        after.as_secs_f64(),
        panic_file.display()
    );
    let saved = load_crash(&panic_file).expect("crash report");
    assert!(
        saved.report.message.contains("PANIC") && saved.report.site.starts_with("panic@"),
        "{saved:?}"
    );
    let input = std::fs::read(&panic_file).expect("crash input");
    assert!(
        input.contains(&0xee),
        "a TLV-1 input holds a 0xEE record: {input:02x?}"
    );

    // The guest is left clean: it ran on to a clean exit, code bytes intact.
    let xen = Xen::open().expect("open Xen");
    let mut exited = false;
    for _ in 0..100 {
        let info = xen.find(name.as_str()).expect("guest still there").info;
        if info.shutdown {
            assert_eq!(
                info.shutdown_reason, 0,
                "guest did not exit cleanly: {info:?}"
            );
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        exited,
        "the guest did not run on after the campaign (left paused?)"
    );
    let _ = ShutdownReason::Poweroff;
    assert_code_clean(&name, &spec.image, &spec.cover);

    // The crash file replays to the same crash.
    let (report, saved_report) = campaign::reproduce(&spec, &panic_file).expect("reproduce");
    let report = report.expect("the replay crashed");
    assert_eq!(Some(report.site.clone()), saved_report.map(|r| r.site));
    assert_eq!(report.kind, "panic");
    destroy(&name);
}

#[test]
fn a_timeout_is_a_hang_and_a_triple_fault_a_crash() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, _) = guest("bytecode", "bytecode");
    let mut s = Session::start(spec).expect("start the guest");
    let hex = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let (hang, _) = s.run(&hex("5842433108fe")).expect("BC-3");
    match &hang {
        Outcome::Hang(r) => assert_eq!(r.kind, "hang"),
        other => panic!("BC-3 should hang, got {other:?}"),
    }
    let (ok, _) = s.run(&hex("5842433101020103040e00")).expect("BC-OK");
    assert_eq!(ok, Outcome::Ok, "a benign input after the hang");
    let (crash, _) = s.run(&hex("58424344")).expect("BC-1");
    match &crash {
        Outcome::Crash(r) => assert_eq!(r.kind, "invalid-opcode", "{r:?}"),
        other => panic!("BC-1 should crash, got {other:?}"),
    }
    // A triple fault (BC-5) sends no vm_event: the domain shuts down; the
    // session reports it and brings a fresh guest back for the next input.
    let (tf, _) = s
        .run(&hex("584243310c0df0dec00d1d010101000500"))
        .expect("BC-5");
    match &tf {
        Outcome::Crash(r) => assert_eq!(r.kind, "triple-fault", "{r:?}"),
        other => panic!("BC-5 should triple-fault, got {other:?}"),
    }
    assert_eq!(s.restarts(), 1);
    let (ok, _) = s
        .run(&hex("5842433101020103040e00"))
        .expect("BC-OK after BC-5");
    assert_eq!(ok, Outcome::Ok, "a benign input after the triple fault");
    s.finish().expect("finish");
    destroy(&name);
}
