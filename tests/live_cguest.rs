//! Live tests of the fuzzer against a guest that is not written on
//! xenprobe's runtime: the C sample guest (guests/cguest/, built with the
//! host's gcc by `cargo xtask guests build`), fuzzed through its config
//! fuzz/examples/cguest.toml, inside dom0.
//!
//! - its input length is a `uint32_t` with the guest's `flags` word right
//!   after it: runs of every length leave `flags` intact (the guest checks
//!   it every run and would call `cg_crash(100)`; the test also reads it
//!   back) and the length holds the last input's size in its 4 bytes;
//! - a crash at the guest's own sink `cg_crash` is reported under that
//!   name with its code and caller (site `cg_crash(9)@cg_rec_options+0x..`),
//!   without a message, for each planted bug (CG-1..3);
//! - a short seeded campaign finds CG-1 and CG-2 (codes 1 and 9) as two
//!   `cg_crash` sites, none with a message, and a crash file replays to the
//!   same site through the library and through `xenprobe-fuzz --config
//!   --reproduce`, whose output has no message line and no NUL byte; the
//!   guest is left running and powers itself off.
//!
//! Without `/dev/xen/privcmd` every test fails with the reason, unless
//! `XENPROBE_ALLOW_NO_XEN=1`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use xenprobe::vmi::Xen;
use xenprobe_fuzz::campaign::{self, CampaignOptions};
use xenprobe_fuzz::config;
use xenprobe_fuzz::feedback::load_crash;
use xenprobe_fuzz::report::{CrashReport, Outcome};
use xenprobe_fuzz::session::{destroy, Session};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The guest's `flags` at boot (guests/cguest/cguest.c).
const FLAGS: u32 = 0xc6a6_0001;

/// fuzz/examples/cguest.toml copied into a fresh work directory with the
/// image path made absolute and the domain named `live-cguest-TAG`.
/// Returns the copy's path and the work directory.
fn example_config(tag: &str) -> (PathBuf, PathBuf) {
    let root = xenprobe_tests::root();
    let image = xenprobe_tests::guest_image("cguest-pvh");
    let work = root.join(format!("target/live-cguest/{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let text = std::fs::read_to_string(root.join("fuzz/examples/cguest.toml")).expect("example");
    let text: String = text
        .lines()
        .map(|l| match l.split_once('=').map(|(k, _)| k.trim()) {
            Some("image") => format!("image = {:?}", image.display().to_string()),
            Some("name") => format!("name = \"live-cguest-{tag}\""),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = work.join("cguest.toml");
    std::fs::write(&path, text).expect("write config");
    (path, work)
}

/// A guest sink's report: named after the sink, with code `code`, called
/// from `caller`, and no message.
fn assert_cg_crash(r: &CrashReport, code: u64, caller: &str) {
    assert_eq!(r.kind, "cg_crash", "{r:?}");
    assert!(
        r.site.starts_with(&format!("cg_crash({code})@{caller}+0x")),
        "site {:?} is not cg_crash({code})@{caller}+OFF",
        r.site
    );
    assert_eq!(r.message, "", "a user's sink has no message: {r:?}");
    assert!(
        r.backtrace.len() >= 2
            && r.backtrace[0]
                .symbol
                .as_deref()
                .is_some_and(|s| s.starts_with("cg_crash+0x0")),
        "{:?}",
        r.backtrace
    );
}

/// The crash a run must end with: the sink's code and its caller.
type Expected = (u64, &'static str);

#[test]
fn the_length_is_written_as_a_uint32_and_flags_after_it_stay_intact() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (path, work) = example_config("width");
    let loaded = config::load(&path, &work).expect("load the config");
    let mut s = Session::start(loaded.target.clone()).expect("start the guest");
    assert_eq!(s.input_len_width(), 4);
    assert_eq!(s.input_capacity(), 4096);
    // COUNT records (02 04 + 4 bytes) fill any length decodably.
    let records = |n: usize| -> Vec<u8> {
        let mut v: Vec<u8> = [2u8, 4, 1, 2, 3, 4]
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect();
        v.truncate(n - n % 6);
        v
    };
    // Clean runs of every length and the planted bugs of guests/README.md
    // (expected crash: code and caller) in between: `flags` must survive
    // them and their restores.
    let cg1: Vec<u8> = [&[1u8, 9][..], b"123456789"].concat();
    let inputs: [(Vec<u8>, Option<Expected>); 8] = [
        (Vec::new(), None),
        (vec![7, 1, 0], None),
        (records(300), None),
        (cg1, Some((1, "cg_rec_name"))),
        (vec![7, 1, 0xa5], Some((9, "cg_rec_options"))),
        (records(4096), None),
        (
            vec![1, 1, 0x41, 4, 2, 0x37, 0x13],
            Some((3, "cg_rec_version")),
        ),
        (vec![4, 2, 2, 0], None),
    ];
    let mut last = 0;
    for (input, want) in &inputs {
        let (outcome, _) = s.run(input).expect("run");
        match (outcome, want) {
            (Outcome::Crash(r), Some((code, caller))) => assert_cg_crash(&r, *code, caller),
            (Outcome::Ok, None) => {}
            (other, _) => panic!("input {input:02x?}: {other:?}, expected {want:?}"),
        }
        last = input.len();
    }
    let name = s.name().to_string();
    let mut dom = s.into_domain().expect("the guest");
    let mut len = [0u8; 4];
    let mut flags = [0u8; 4];
    dom.read_virt(dom.symbol("xenprobe_input_len").expect("len"), &mut len)
        .expect("read the length");
    dom.read_virt(dom.symbol("flags").expect("flags"), &mut flags)
        .expect("read flags");
    assert_eq!(u32::from_le_bytes(len) as usize, last);
    assert_eq!(
        u32::from_le_bytes(flags),
        FLAGS,
        "the word after the length was overwritten"
    );
    drop(dom);
    destroy(&name);
}

/// `xenprobe-fuzz` next to this test binary (`cargo xtask test` builds the
/// workspace's binaries first), or `XENPROBE_FUZZ_BIN`.
fn fuzz_bin() -> PathBuf {
    xenprobe_tests::workspace_bin("xenprobe-fuzz", "XENPROBE_FUZZ_BIN")
}

/// The guest `name` (on_poweroff="destroy") is gone within 10 s: left
/// running after the campaign, it ran its own input to the end and
/// powered off.
fn assert_powered_off(name: &str) {
    let xen = Xen::open().expect("open Xen");
    for _ in 0..100 {
        if xen.find(name).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    destroy(name);
    panic!("{name} did not run on to its end after the campaign (left paused?)");
}

fn seed_dir(work: &Path) -> PathBuf {
    let d = work.join("seeds");
    std::fs::create_dir_all(&d).expect("seeds");
    // Benign: an 8-byte NAME then an OPTIONS record; a VERSION record.
    std::fs::write(d.join("name"), b"\x01\x08cguest!!\x07\x01\x00").expect("seed");
    std::fs::write(d.join("version"), b"\x04\x02\x02\x00").expect("seed");
    d
}

#[test]
fn a_campaign_reports_the_guests_sink_by_name_and_code_and_its_crashes_replay() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (path, work) = example_config("campaign");
    let loaded = config::load(&path, &work).expect("load the config");
    let name = "live-cguest-campaign";
    let opts = CampaignOptions {
        target: loaded.target.clone(),
        dir: work.join("campaign"),
        time: Duration::from_secs(60),
        seeds: Some(seed_dir(&work)),
        stop_on: Vec::new(),
        stop_when_found: vec![
            "cg_crash@cg_crash(1)@".into(),
            "cg_crash@cg_crash(9)@".into(),
        ],
        progress: true,
        rng_seed: Some(5),
        dictionary: loaded.dictionary.clone(),
        job: None,
        cmplog: true,
    };
    let summary = campaign::run(&opts).expect("campaign");
    eprintln!("campaign: {}", summary.render());
    assert_powered_off(name);
    let crashes: Vec<(PathBuf, CrashReport)> = summary
        .found
        .iter()
        .map(|(f, _)| (f.clone(), load_crash(f).expect("crash report").report))
        .collect();
    for (file, r) in &crashes {
        let json = std::fs::read_to_string(file.with_extension("json")).expect("json");
        assert!(
            !json.contains("\\u0000"),
            "NUL in {}: {json}",
            file.display()
        );
        assert_eq!(r.kind, "cg_crash", "{r:?}");
        assert_eq!(r.message, "", "{r:?}");
        assert!(
            !r.site.starts_with("cg_crash(100)@"),
            "the word after the length was overwritten: {r:?}"
        );
    }
    let find = |code: u64, caller: &str| {
        let (f, r) = crashes
            .iter()
            .find(|(_, r)| r.site.starts_with(&format!("cg_crash({code})@")))
            .unwrap_or_else(|| panic!("cg_crash({code}) not found: {}", summary.render()));
        assert_cg_crash(r, code, caller);
        f.clone()
    };
    find(1, "cg_rec_name");
    let cg2 = find(9, "cg_rec_options");

    // The crash file replays to the same site ...
    let (again, saved) = campaign::reproduce(&loaded.target, &cg2).expect("reproduce");
    let again = again.expect("the replay crashed");
    assert_eq!(Some(again.site.clone()), saved.map(|r| r.site));
    assert_cg_crash(&again, 9, "cg_rec_options");
    // ... and so through the fuzzer binary with the config.
    let out = std::process::Command::new(fuzz_bin())
        .arg("--config")
        .arg(&path)
        .arg("--dir")
        .arg(work.join("replay"))
        .arg("--reproduce")
        .arg(&cg2)
        .output()
        .expect("run xenprobe-fuzz --reproduce");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("kind: cg_crash\nsite: cg_crash(9)@cg_rec_options+0x"));
    assert!(stdout.contains("reproduced: same crash site"));
    assert!(!stdout.contains("message:") && !stdout.contains('\0'));
    destroy(name);
}
