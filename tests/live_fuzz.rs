//! Live tests of the fuzzer (fuzz/, `xenprobe-fuzz`) against the sample
//! guests, inside dom0 (the cargo runner forwards `live_*` binaries to the lab).
//!
//! - a short campaign against `tlv` (PVH) finds its shallowest planted bug
//!   (TLV-1, a panic) from generic seeds that do not contain it, the saved
//!   crash file replays to the same crash site, and the guest is left clean:
//!   after the campaign it runs on by itself to a clean exit, and its code
//!   bytes equal the ELF's (no breakpoint byte left);
//! - a timeout is a hang, not a crash (bytecode BC-3), and the next input
//!   runs normally after it; a triple fault (BC-5) is reported as one,
//!   taken back in place (no new boot), and the next input runs normally
//!   after it too.
//!
//! - a campaign's runs keep the guest quiet (`xenprobe_quiet` set, nothing
//!   put on the console ring), a replay's runs print as usual;
//! - a campaign with a hanging seed saves it under hangs/ as a `hang`, never
//!   under crashes/ (BC-3);
//! - short campaigns against `bytecode` and `imghdr` find their shallowest
//!   planted bugs (BC-1, IMG-1/IMG-2) from benign seeds (BUGS.md's `*-OK`
//!   rows); the imghdr one is `#[ignore]`d (minutes to an hour in a debug
//!   test binary; see its reason);
//! - the example guest config (fuzz/examples/tlv.toml) drives a campaign that
//!   finds TLV-1 and writes summary.md, coverage.svg and lcov.info;
//! - `--minimize` shrinks a padded BC-2 input to fewer bytes that still crash
//!   at the same site, and the minimised file replays;
//! - a campaign killed with SIGKILL resumes from its corpus (every entry
//!   resumed, none lost, no default seeds) and leaves the guest clean;
//! - SIGTERM stops a campaign in order: exit 0, a final report, the guest
//!   back at its snapshot and running on to a clean exit;
//! - structured inputs (`tlv-records`, fuzz/src/structured.rs): a campaign
//!   finds TLV-1, and `xenprobe-fuzz --input-format tlv-records --reproduce`
//!   replays its raw crash file to the same site; `ximg` (imghdr) turns a
//!   raw byte stream into IMG-3 (version 2, EXT, a negative offset and the
//!   right checksum), which `--reproduce --input-format ximg` replays as a
//!   general-protection fault every time (and without the format, no crash),
//!   and a campaign with it finds IMG-3 from benign seeds;
//! - comparison logging (fuzz/src/cmplog.rs, fuzz/src/i2s.rs): a traced run
//!   of an IMG-3 image with a wrong checksum logs the sum the guest computed
//!   and the stored one; the input-to-state candidate with the sum written
//!   crashes as IMG-3, the reset after traced runs is exact, and the guest's
//!   code is clean afterwards; a raw-byte campaign from that image finds
//!   IMG-3 (the checksum is 2 bytes no havoc mutation guesses in a short run);
//! - `--jobs 2` (the `xenprobe-fuzz` binary) runs two guests under distinct
//!   names connected to one LLMP broker, each with its report, both left
//!   clean; a job that died would be started again and listed.
//!
//! Guests run one at a time under unique names and are destroyed at the end.
//! Images come from `cargo xtask guests build`. Without `/dev/xen/privcmd`
//! every test fails with the reason, unless `XENPROBE_ALLOW_NO_XEN=1`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xenprobe::vmi::{Domain, Xen};
use xenprobe_fuzz::blocks;
use xenprobe_fuzz::campaign::{self, CampaignOptions, CampaignSummary};
use xenprobe_fuzz::feedback::load_crash;
use xenprobe_fuzz::report::Outcome;
use xenprobe_fuzz::session::{destroy, Session, TargetSpec};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A copy of the sample guest's config under a unique name; clean exits are
/// preserved (`on_poweroff="preserve"`) so the test can inspect the guest.
fn guest(krate: &str, tag: &str) -> (TargetSpec, String, PathBuf) {
    let work = xenprobe_tests::root().join(format!("target/live-fuzz/{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    spec_for(krate, tag)
}

/// Like [`guest`], keeping what the work directory holds.
fn spec_for(krate: &str, tag: &str) -> (TargetSpec, String, PathBuf) {
    let image = xenprobe_tests::guest_image(&format!("{krate}-pvh"));
    let work = xenprobe_tests::root().join(format!("target/live-fuzz/{tag}"));
    std::fs::create_dir_all(&work).expect("create work dir");
    let name = format!("live-fuzz-{tag}");
    let cfg_path = xenprobe_tests::write_pvh_cfg(&work, &name, &image, "");
    let mut spec = TargetSpec::sample(krate, cfg_path, image);
    spec.timeout = Duration::from_millis(400);
    (spec, name, work)
}

fn hex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A seed directory under `work` holding these hex inputs.
fn seed_dir(work: &Path, inputs: &[&str]) -> PathBuf {
    let d = work.join("seeds");
    std::fs::create_dir_all(&d).expect("seeds dir");
    for (i, h) in inputs.iter().enumerate() {
        std::fs::write(d.join(format!("seed{i}")), hex(h)).expect("seed");
    }
    d
}

/// A campaign in `work/campaign` that stops at the first crash of a kind in `stop_on`.
fn short_campaign(
    spec: &TargetSpec,
    work: &Path,
    seeds: Option<PathBuf>,
    stop_on: &[&str],
    secs: u64,
) -> CampaignSummary {
    let opts = CampaignOptions {
        target: spec.clone(),
        dir: work.join("campaign"),
        time: Duration::from_secs(secs),
        seeds,
        stop_on: stop_on.iter().map(|s| s.to_string()).collect(),
        stop_when_found: Vec::new(),
        progress: true,
        rng_seed: Some(7),
        dictionary: Vec::new(),
        job: None,
        cmplog: true,
    };
    let summary = campaign::run(&opts).expect("campaign");
    eprintln!("campaign: {}", summary.render());
    summary
}

/// The kinds of the crash files this campaign found.
fn found_kinds(summary: &CampaignSummary) -> Vec<String> {
    summary
        .found
        .iter()
        .filter_map(|(f, _)| load_crash(f).ok())
        .map(|c| c.report.kind)
        .collect()
}

/// The first crash file of `kind` this campaign found, and when; panics
/// naming `bug` when there is none.
fn found_crash(summary: &CampaignSummary, kind: &str, bug: &str) -> (PathBuf, Duration) {
    let found = summary
        .found
        .iter()
        .find(|(f, _)| load_crash(f).is_ok_and(|c| c.report.kind == kind))
        .cloned()
        .unwrap_or_else(|| panic!("{bug} ({kind}) not found: {}", summary.render()));
    eprintln!(
        "{bug} found after {:.1} s: {}",
        found.1.as_secs_f64(),
        found.0.display()
    );
    found
}

/// The guest (created with `on_poweroff="preserve"`) shuts down with the
/// poweroff reason within 10 s: it was left unpaused and ran its snapshot's
/// input on to a clean exit.
fn assert_ran_on_to_a_clean_exit(name: &str) {
    let xen = Xen::open().expect("open Xen");
    for _ in 0..100 {
        let info = xen.find(name).expect("guest still there").info;
        if info.shutdown {
            // SHUTDOWN_poweroff is 0.
            assert_eq!(
                info.shutdown_reason, 0,
                "the guest did not exit cleanly: {info:?}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the guest did not run on after the campaign (left paused?)");
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
        stop_when_found: Vec::new(),
        progress: true,
        rng_seed: Some(1),
        dictionary: Vec::new(),
        job: None,
        cmplog: true,
    };
    let summary = campaign::run(&opts).expect("campaign");
    eprintln!("campaign: {}", summary.render());
    assert!(summary.execs > 0);
    assert!(summary.covered > 0, "no coverage: {}", summary.render());
    let (panic_file, _) = found_crash(&summary, "panic", "TLV-1");
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
    assert_ran_on_to_a_clean_exit(&name);
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
    // session reports it and, the domain being kept (on_reboot="preserve"),
    // takes the shutdown back in place for the next input: no new boot.
    let (tf, _) = s
        .run(&hex("584243310c0df0dec00d1d010101000500"))
        .expect("BC-5");
    match &tf {
        Outcome::Crash(r) => assert_eq!(r.kind, "triple-fault", "{r:?}"),
        other => panic!("BC-5 should triple-fault, got {other:?}"),
    }
    assert_eq!(s.restarts(), 0, "booted again instead of restored in place");
    assert!(s.revivals() >= 1, "the triple fault was not taken back");
    let (ok, _) = s
        .run(&hex("5842433101020103040e00"))
        .expect("BC-OK after BC-5");
    assert_eq!(ok, Outcome::Ok, "a benign input after the triple fault");
    s.finish().expect("finish");
    destroy(&name);
}

/// The last `n` bytes the guest put on its console ring, read where a run
/// left it (stopped at `xenprobe_fuzz_end`, not yet reset).
fn console_tail(dom: &mut Domain, n: u32) -> String {
    use xenprobe_abi::target::{console, CONSOLE_RING};
    let (out, out_prod) = (console::OUT as u64, console::OUT_PROD as u64);
    let sym = dom
        .symbols()
        .expect("symbols")
        .iter()
        .find(|s| s.name == CONSOLE_RING)
        .map(|s| s.addr)
        .expect("the runtime's xenprobe_console_ring symbol");
    let ring = dom.read_u64(sym).expect("read xenprobe_console_ring");
    assert_ne!(ring, 0, "the guest has no console ring");
    let mut prod = [0u8; 4];
    dom.read_virt(ring + out_prod, &mut prod).expect("out_prod");
    let prod = u32::from_le_bytes(prod);
    let mut tail = Vec::new();
    for i in (1..=n.min(prod)).rev() {
        let mut b = [0u8];
        let at = u64::from(prod.wrapping_sub(i) & 2047);
        dom.read_virt(ring + out + at, &mut b).expect("ring byte");
        tail.push(b[0]);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// A run of a campaign (console discarded) sets the guest's `xenprobe_quiet`
/// and prints nothing; a replay (console kept) prints the run's report line.
fn run_and_read_console(discard: bool, tag: &str) -> (u8, String) {
    let (mut spec, name, _) = guest("tlv", tag);
    spec.discard_console = discard;
    let mut s = Session::start(spec).expect("start the guest");
    let (o, _) = s.run(b"").expect("run the empty input");
    assert_eq!(o, Outcome::Ok, "the empty input ends normally");
    let mut dom = s.into_domain().expect("the session's domain");
    let quiet = dom.symbol("xenprobe_quiet").expect("xenprobe_quiet symbol");
    let mut q = [0u8];
    dom.read_virt(quiet, &mut q).expect("read xenprobe_quiet");
    let tail = console_tail(&mut dom, 96);
    drop(dom);
    destroy(&name);
    (q[0], tail)
}

#[test]
fn a_campaign_run_keeps_the_guest_quiet_and_a_replay_does_not() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (q, tail) = run_and_read_console(false, "loud");
    assert_eq!(q, 0, "a replay must leave xenprobe_quiet alone");
    assert!(
        tail.contains("tlv: 0 records"),
        "a replay's run prints its report line; the ring ends with {tail:?}"
    );
    let (q, tail) = run_and_read_console(true, "quiet");
    assert_eq!(q, 1, "a campaign sets xenprobe_quiet");
    assert!(
        !tail.contains("tlv:"),
        "a quiet run printed; the ring ends with {tail:?}"
    );
}

#[test]
fn a_hanging_seed_is_saved_as_a_hang_not_a_crash() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("bytecode", "hang");
    // BC-OK and BC-3 (`JMP -2` loops forever).
    let seeds = seed_dir(&work, &["5842433101020103040e00", "5842433108fe"]);
    let s = short_campaign(&spec, &work, Some(seeds), &["hang"], 60);
    assert!(s.hang_sites >= 1, "no hang: {}", s.render());
    let kinds = found_kinds(&s);
    assert!(kinds.contains(&"hang".to_string()), "{kinds:?}");
    for (f, _) in &s.found {
        let c = load_crash(f).expect("report");
        let under_hangs = f.parent().is_some_and(|p| p.ends_with("hangs"));
        assert_eq!(
            c.report.kind == "hang",
            under_hangs,
            "{} is a {} saved in the wrong directory",
            f.display(),
            c.report.kind
        );
    }
    let summary = std::fs::read_to_string(work.join("campaign/summary.md")).expect("summary.md");
    assert!(summary.contains("Final report."), "{summary}");
    assert!(!summary.contains("## Hangs (0 sites)"), "{summary}");
    destroy(&name);
}

/// Seeds that all hang leave LibAFL no corpus entry: the campaign goes on
/// from the generic seeds instead of failing with "No entries in corpus".
#[test]
fn a_campaign_whose_seeds_all_hang_fuzzes_from_the_generic_seeds() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("bytecode", "allhang");
    // BC-3 (`JMP -2` loops forever) alone.
    let seeds = seed_dir(&work, &["5842433108fe"]);
    let s = short_campaign(&spec, &work, Some(seeds), &[], 8);
    assert!(
        s.hang_sites >= 1,
        "the seed's hang is saved: {}",
        s.render()
    );
    assert!(
        s.corpus >= 1,
        "a corpus from the generic seeds: {}",
        s.render()
    );
    assert!(s.execs > 100, "it fuzzed on: {}", s.render());
    destroy(&name);
}

#[test]
fn bytecode_campaign_finds_bc1_from_a_benign_seed() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("bytecode", "bc1");
    // BC-OK and the bare magic XBC1 (benign); BC-1 is the magic XBCD, a
    // comparison immediate, so in the dictionary: one token replacement at
    // offset 0 of the short seed.
    let seeds = seed_dir(&work, &["58424331", "5842433101020103040e00"]);
    let s = short_campaign(&spec, &work, Some(seeds), &["invalid-opcode"], 240);
    let kinds = found_kinds(&s);
    assert!(
        kinds.contains(&"invalid-opcode".to_string()),
        "BC-1 not found: {kinds:?} {}",
        s.render()
    );
    destroy(&name);
}

#[test]
#[ignore = "slow: IMG-1/IMG-2 need one exact 16-bit value or bit, found after 2k-60k runs (docs/benchmarks.md); \
            the debug test binary runs about 80 execs/s (its restore is unoptimised), \
            so that is up to 10 minutes per hypervisor pass (run with --ignored, or measure \
            the release fuzzer with cargo xtask bench fuzz-campaign --targets imghdr)"]
fn imghdr_campaign_finds_img2_from_benign_seeds() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("imghdr", "img2");
    // IMG-OK and IMG-OK2: valid images; IMG-2 needs width*height to wrap in
    // 16 bits (e.g. a height of 0x8000, one of havoc's interesting values).
    let seeds = seed_dir(
        &work,
        &[
            "58494d4701000200020008000000000001020304",
            "58494d470201020001000800680100000233221100665544000001",
        ],
    );
    let s = short_campaign(
        &spec,
        &work,
        Some(seeds),
        &["panic", "page-fault", "general-protection"],
        900,
    );
    let kinds = found_kinds(&s);
    assert!(
        kinds
            .iter()
            .any(|k| ["panic", "page-fault", "general-protection"].contains(&k.as_str())),
        "no imghdr bug found: {kinds:?} {}",
        s.render()
    );
    destroy(&name);
}

#[test]
fn the_example_config_finds_tlv1_and_writes_reports() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let example = xenprobe_tests::root().join("fuzz/examples/tlv.toml");
    let work = xenprobe_tests::root().join("target/live-fuzz/config");
    let _ = std::fs::remove_dir_all(&work);
    let loaded = xenprobe_fuzz::config::load(&example, &work).expect("load the example");
    assert_eq!(loaded.name, "fuzz-example-tlv");
    assert!(
        loaded.dictionary.contains(&vec![0xee]),
        "{:?}",
        loaded.dictionary
    );
    let opts = CampaignOptions {
        target: loaded.target.clone(),
        dir: work.clone(),
        time: Duration::from_secs(120),
        seeds: loaded.seeds.clone(),
        stop_on: vec!["panic".into()],
        stop_when_found: Vec::new(),
        progress: true,
        rng_seed: Some(3),
        dictionary: loaded.dictionary.clone(),
        job: None,
        cmplog: true,
    };
    let s = campaign::run(&opts).expect("campaign");
    eprintln!("campaign: {}", s.render());
    assert!(
        found_kinds(&s).contains(&"panic".to_string()),
        "TLV-1 not found: {}",
        s.render()
    );
    let summary = std::fs::read_to_string(work.join("summary.md")).expect("summary.md");
    assert!(
        summary.contains(&format!("| executions | {} |", s.execs)),
        "{summary}"
    );
    assert!(summary.contains("By kind: panic"), "{summary}");
    let svg = std::fs::read_to_string(work.join("coverage.svg")).expect("coverage.svg");
    assert!(svg.contains("<polyline class=\"series\""), "{svg}");
    let lcov = std::fs::read_to_string(work.join("lcov.info")).expect("lcov.info");
    assert!(
        lcov.contains("SF:") && lcov.contains("tlv/src/main.rs"),
        "{lcov}"
    );
    let hit = lcov
        .lines()
        .filter(|l| l.starts_with("DA:") && l.ends_with(",1"))
        .count();
    assert!(hit > 0, "no covered line in lcov.info:\n{lcov}");
    destroy(&loaded.name);
}

#[test]
fn minimize_shrinks_a_crash_and_keeps_its_site() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("bytecode", "minimize");
    // BC-2 (PUSH 1, PUSH 0, DIV) padded with bytes the VM never reaches.
    let mut input = hex("58424331010101000500");
    input.extend_from_slice(&[0x0e; 24]);
    let crash = work.join("crash.input");
    std::fs::write(&crash, &input).expect("crash file");
    let m = xenprobe_fuzz::minimize::minimize(
        &spec,
        &crash,
        xenprobe_fuzz::minimize::Budget::default(),
    )
    .expect("minimize");
    eprintln!(
        "minimized {} -> {} bytes in {} runs: {:02x?}",
        m.original,
        m.input.len(),
        m.runs,
        m.input
    );
    assert_eq!(m.report.kind, "divide-error");
    assert!(m.input.len() < 12, "not shrunk: {:02x?}", m.input);
    assert_eq!(std::fs::read(&m.saved).expect("min file"), m.input);
    let (report, saved) = campaign::reproduce(&spec, &m.saved).expect("replay");
    let report = report.expect("the minimised input crashes");
    assert_eq!(Some(report.site.clone()), saved.map(|r| r.site));
    assert_eq!(report.site, m.report.site);
    destroy(&name);
}

/// A built-in structured input format by name.
fn structured_format(name: &str) -> xenprobe_fuzz::structured::InputFormat {
    xenprobe_fuzz::structured::by_name(name)
        .expect("a known format")
        .expect("a structured format")
}

#[test]
fn structured_tlv_records_find_tlv1_and_the_crash_file_replays() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut spec, name, work) = guest("tlv", "structured");
    let format = structured_format("tlv-records");
    spec.input_format = Some(format);
    // Raw seeds that decode to benign record lists (no VENDOR record).
    let seeds = seed_dir(&work, &["00000000", "0100030241"]);
    for seed in ["00000000", "0100030241"] {
        let guest = format.encode(&hex(seed));
        assert!(!guest.contains(&0xee), "{seed} -> {guest:02x?}");
    }
    let s = short_campaign(&spec, &work, Some(seeds), &["panic"], 150);
    let (file, _) = found_crash(&s, "panic", "TLV-1 with structured inputs");
    // The crash file holds the fuzzer's raw bytes; they decode to a record
    // list with a VENDOR record, which is what the guest got.
    let raw = std::fs::read(&file).expect("crash input");
    let value = format.describe(&raw);
    assert!(value.contains("Vendor"), "{value}");
    let saved = load_crash(&file).expect("report");
    assert_eq!(saved.input_len, raw.len());
    assert!(saved.report.site.starts_with("panic@"), "{saved:?}");

    // The binary replays it with the same format and says so.
    let (code, stdout) = reproduce_with(&spec, "tlv", &file, Some("tlv-records"));
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("input (tlv-records): Records(["),
        "{stdout}"
    );
    assert!(
        stdout.contains("reproduced: same crash site as the saved report"),
        "{stdout}"
    );
    // An unknown format is refused before any guest is touched.
    let bad = std::process::Command::new(fuzz_bin())
        .arg("--cfg")
        .arg(&spec.cfg)
        .arg("--image")
        .arg(&spec.image)
        .args(["--input-format", "nope", "--reproduce"])
        .arg(&file)
        .output()
        .expect("run xenprobe-fuzz");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown input format \"nope\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_code_clean(&name, &spec.image, &spec.cover);
    destroy(&name);
}

/// Raw bytes that `ximg` reads as BUGS.md's IMG-3 image (the `arbitrary`
/// stream of fuzz/src/structured.rs's `ximg::Image`, field by field).
const XIMG_IMG3_RAW: &str = concat!(
    "00000060",         // version: a u32 variant index, 0x60 on top picks V2 (of 3)
    "00",               // extra flag bits
    "01000100",         // width 1, height 1
    "00000000",         // bpp variant: 8
    "00",               // reserved
    "00000000",         // checksum variant: the sum
    "0000",             // reserved2
    "00",               // no palette (even byte)
    "01",               // an extension (odd byte) ...
    "0000000000000080", // ... with offset i64::MIN; no pixels
);
/// BUGS.md's IMG-3 input.
const IMG3: &str = "58494d470280010001000800800000000000000000000080";

/// `xenprobe-fuzz --reproduce FILE` against `spec`'s guest, with
/// `--input-format FORMAT` when given: exit code and stdout.
fn reproduce_with(
    spec: &TargetSpec,
    krate: &str,
    file: &Path,
    format: Option<&str>,
) -> (i32, String) {
    let mut cmd = std::process::Command::new(fuzz_bin());
    cmd.arg("--cfg")
        .arg(&spec.cfg)
        .arg("--image")
        .arg(&spec.image)
        .args(["--krate", krate]);
    if let Some(f) = format {
        cmd.args(["--input-format", f]);
    }
    let out = cmd
        .arg("--reproduce")
        .arg(file)
        .output()
        .expect("run xenprobe-fuzz --reproduce");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn structured_ximg_replays_img3_as_a_general_protection_fault() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("imghdr", "ximg-replay");
    let format = structured_format("ximg");
    let raw = hex(XIMG_IMG3_RAW);
    // The guest gets IMG-3 (checksum included); the raw bytes are no XIMG file.
    assert_eq!(format.encode(&raw), hex(IMG3));
    assert_ne!(&raw[..4], b"XIMG");
    let file = work.join("img3.input");
    std::fs::write(&file, &raw).expect("input file");
    for _ in 0..2 {
        let (code, stdout) = reproduce_with(&spec, "imghdr", &file, Some("ximg"));
        assert_eq!(code, 0, "{stdout}");
        assert!(
            stdout.contains("input (ximg): Image { version: V2,")
                && stdout.contains("extension: Some(-9223372036854775808)"),
            "{stdout}"
        );
        assert!(stdout.contains("kind: general-protection\n"), "{stdout}");
        // In the target's code (decode() is inlined into it).
        assert!(
            stdout.contains("#0 0x") && stdout.contains(" xenprobe_target+"),
            "{stdout}"
        );
    }
    // The same file without the format: the guest rejects it, no crash.
    let (code, stdout) = reproduce_with(&spec, "imghdr", &file, None);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("no crash"), "{stdout}");
    assert_code_clean(&name, &spec.image, &spec.cover);
    destroy(&name);
}

#[test]
fn structured_ximg_campaign_finds_img3() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut spec, name, work) = guest("imghdr", "ximg-campaign");
    let format = structured_format("ximg");
    spec.input_format = Some(format);
    // Raw seeds of benign images without an extension: an empty version 1
    // image and IMG-OK2 (version 2, a palette of 2, 2x1).
    let ok2 = concat!(
        "00000060",               // version: V2
        "00",                     // extra flag bits
        "02000100",               // width 2, height 1
        "00000000",               // bpp: 8
        "00",                     // reserved
        "00000000",               // checksum: the sum
        "0000",                   // reserved2
        "01",                     // a palette: ...
        "0133221100016655440000", // ... 2 entries, a go-on byte before each
        "00",                     // no extension
        "0001",                   // pixels
    );
    assert_eq!(
        format.encode(&hex(ok2)),
        hex("58494d470201020001000800680100000233221100665544000001")
    );
    for seed in ["00000000", ok2] {
        assert_eq!(format.encode(&hex(seed))[5] & 0x80, 0, "{seed}");
    }
    let seeds = seed_dir(&work, &["00000000", ok2]);
    let s = short_campaign(&spec, &work, Some(seeds), &["general-protection"], 150);
    let (file, _) = found_crash(&s, "general-protection", "IMG-3 with ximg");
    // What the guest got: version 2, EXT, and a checksum it accepted.
    let raw = std::fs::read(&file).expect("crash input");
    let (g, value) = (format.encode(&raw), format.describe(&raw));
    assert!(g.len() >= 24 && g[4] == 2 && g[5] & 0x80 != 0, "{value}");
    let sum = g[16..].iter().fold(0u16, |a, &b| a.wrapping_add(b.into()));
    assert_eq!(u16::from_le_bytes([g[12], g[13]]), sum, "{value}");
    destroy(&name);
}

/// IMG-3 (guests/BUGS.md) with a data offset whose bytes sum to 0x37d, and a
/// checksum field of 0: version 2, EXT, 1x1 pixels, bpp 8.
const IMG3_BAD_SUM: &str = "58494d4702800100010008000000000000000000ffffff80";

#[test]
fn a_traced_run_logs_the_checksum_and_its_candidate_crashes_as_img3() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, _work) = guest("imghdr", "cmplog-trace");
    let (image, cover) = (spec.image.clone(), spec.cover.clone());
    let mut s = Session::start(spec).expect("start imghdr");
    assert!(s.comparison_sites() > 0, "imghdr has comparisons");
    let input = hex(IMG3_BAD_SUM);
    let sum: u64 = input[16..].iter().map(|&b| u64::from(b)).sum();
    assert_eq!(sum, 0x37d);
    let (outcome, _, log) = s.run_traced(&input).expect("traced run");
    assert!(matches!(outcome, Outcome::Ok), "bad checksum: rejected");
    assert!(
        log.iter().any(|c| c.size == 2 && c.a == sum && c.b == 0),
        "the checksum comparison (sum {sum:#x} vs 0) is not in the log: {log:x?}"
    );
    let cands = xenprobe_fuzz::cmplog::candidates(&input, &log, 16);
    let fixed = cands
        .iter()
        .find(|c| c[12..14] == [0x7d, 0x03])
        .unwrap_or_else(|| panic!("no candidate writes the sum: {cands:x?}"));
    match s.run(fixed).expect("run the candidate").0 {
        Outcome::Crash(r) => assert_eq!(r.kind, "general-protection", "{r:?}"),
        other => panic!("the candidate did not crash as IMG-3: {other:?}"),
    }
    // A second traced run logs again (the sites are re-enabled), and the
    // reset after traced runs is exact.
    let (_, _, again) = s.run_traced(&input).expect("second traced run");
    assert!(
        again.iter().any(|c| c.size == 2 && c.a == sum),
        "{again:x?}"
    );
    let c = s.check_reset().expect("check_reset");
    assert!(
        c.exact(),
        "not reset exactly after traced runs: frames {:x?}, CPU fields {:?}",
        c.frames_differ,
        c.cpu_differ
    );
    s.finish().expect("finish");
    assert_code_clean(&name, &image, &cover);
    destroy(&name);
}

#[test]
fn a_raw_campaign_solves_the_imghdr_checksum_by_input_to_state() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("imghdr", "cmplog-campaign");
    let seeds = seed_dir(&work, &[IMG3_BAD_SUM]);
    let s = short_campaign(&spec, &work, Some(seeds), &["general-protection"], 150);
    let (file, _) = found_crash(&s, "general-protection", "IMG-3 from raw bytes");
    let raw = std::fs::read(&file).expect("crash input");
    let sum = raw[16..]
        .iter()
        .fold(0u16, |a, &b| a.wrapping_add(b.into()));
    assert!(
        raw.len() >= 24 && raw[4] == 2 && raw[5] & 0x80 != 0,
        "{raw:x?}"
    );
    assert_eq!(u16::from_le_bytes([raw[12], raw[13]]), sum, "{raw:x?}");
    assert_code_clean(&name, &spec.image, &spec.cover);
    destroy(&name);
}

/// Set in the child process of [`a_killed_campaign_resumes_from_its_corpus`].
const CHILD_ENV: &str = "XENPROBE_LIVE_FUZZ_CHILD";

/// Not a test of its own: the campaign that the parent test kills.
#[test]
#[ignore = "run by a_killed_campaign_resumes_from_its_corpus in a child process"]
fn killed_campaign_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let (spec, _, work) = spec_for("tlv", "killed");
    let _ = short_campaign(&spec, &work, None, &[], 300);
}

fn corpus_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    !n.starts_with('.') && !n.ends_with(".metadata")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits (at most 120 s) until the running campaign `child` has `n` corpus
/// entries in `corpus`; panics if it ends first.
fn wait_for_corpus(child: &mut std::process::Child, corpus: &Path, n: usize) {
    let t = Instant::now();
    while corpus_files(corpus) < n && t.elapsed() < Duration::from_secs(120) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the campaign ended by itself: {st}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_campaign_resumes_from_its_corpus() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("tlv", "killed");
    let corpus = work.join("campaign/corpus");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "killed_campaign_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .spawn()
        .expect("spawn the campaign");
    wait_for_corpus(&mut child, &corpus, 4);
    child.kill().expect("SIGKILL the campaign");
    let _ = child.wait();
    let before = corpus_files(&corpus);
    assert!(before >= 4, "the campaign grew no corpus in 120 s");
    let interim = std::fs::read_to_string(work.join("campaign/summary.md")).expect("summary.md");
    assert!(interim.contains("Interim report"), "{interim}");

    // The same campaign again: every corpus entry is resumed, none lost; no
    // default seeds are added to a non-empty corpus.
    let s = short_campaign(&spec, &work, None, &[], 8);
    assert_eq!(s.resumed, before, "{}", s.render());
    assert!(s.corpus >= before, "{}", s.render());
    assert!(corpus_files(&corpus) >= before);
    assert_eq!(
        s.seeded,
        0,
        "seeds added to a resumed corpus: {}",
        s.render()
    );
    // The guest the killed process left behind was replaced, and the
    // resumed campaign left its own guest clean.
    assert_code_clean(&name, &spec.image, &spec.cover);
    destroy(&name);
}

/// SIGTERM (what the lab agent sends when a `cargo xtask fuzz` client goes
/// away, or a service manager sends) stops a campaign in order: exit status
/// 0, a final report, and the guest restored to its snapshot and running on
/// to a clean exit with its code bytes intact (not merely repaired from the
/// journal, which would let it run on with a fuzzed input).
#[test]
fn sigterm_stops_a_campaign_in_order_and_leaves_the_guest_clean() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("tlv", "sigterm");
    let dir = work.join("campaign");
    let mut child = std::process::Command::new(fuzz_bin())
        .arg("--cfg")
        .arg(&spec.cfg)
        .arg("--image")
        .arg(&spec.image)
        .args(["--krate", "tlv", "--time", "300s", "--rng-seed", "9"])
        .arg("--dir")
        .arg(&dir)
        .spawn()
        .expect("run xenprobe-fuzz");
    wait_for_corpus(&mut child, &dir.join("corpus"), 4);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let t0 = Instant::now();
    let status = child.wait().expect("campaign exit");
    eprintln!(
        "campaign exited {status:?} {:?} after SIGTERM",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(0), "not an orderly stop");
    let summary = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    assert!(summary.contains("Final report."), "{summary}");
    assert_ran_on_to_a_clean_exit(&name);
    assert_code_clean(&name, &spec.image, &spec.cover);
    destroy(&name);
}

/// `xenprobe-fuzz` next to this test binary (`cargo xtask test` builds the
/// workspace's binaries first), or `XENPROBE_FUZZ_BIN`.
fn fuzz_bin() -> PathBuf {
    xenprobe_tests::workspace_bin("xenprobe-fuzz", "XENPROBE_FUZZ_BIN")
}

#[test]
fn two_jobs_share_one_campaign_through_llmp() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("tlv", "jobs");
    let dir = work.join("campaign");
    let out = std::process::Command::new(fuzz_bin())
        .arg("--cfg")
        .arg(&spec.cfg)
        .arg("--image")
        .arg(&spec.image)
        .args(["--krate", "tlv", "--time", "25s", "--timeout-ms", "400"])
        .args(["--jobs", "2", "--broker-port", "1441", "--rng-seed", "5"])
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run xenprobe-fuzz --jobs 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A job that dies is a bug (ours, or the lab's: see live_lab); the
    // restart path itself is tested by killing a job on purpose below.
    let died: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ended with"))
        .collect();
    assert!(died.is_empty(), "a job died: {died:?}\n{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Both jobs connected to the broker.
    assert!(stderr.contains("clients: 2"), "{stderr}");
    let overview = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    let restarts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("starting it again"))
        .collect();
    if !restarts.is_empty() {
        assert!(
            overview.contains("Jobs started again after they died"),
            "{overview}"
        );
        assert!(stdout.contains("restarts of jobs that died"), "{stdout}");
    }
    for k in 1..=2 {
        let s = std::fs::read_to_string(dir.join(format!("job-{k}/summary.md")))
            .unwrap_or_else(|e| panic!("job-{k}/summary.md: {e}"));
        assert!(s.contains("Final report."), "{s}");
        assert!(!s.contains("| executions | 0 |"), "{s}");
        // Each job's guest ran under its own name and was left clean.
        let jname = format!("{name}-j{k}");
        assert_code_clean(&jname, &spec.image, &spec.cover);
        destroy(&jname);
    }
    assert!(
        overview.contains("Parallel fuzz campaign (2 jobs, LLMP)"),
        "{overview}"
    );
    assert!(corpus_files(&dir.join("corpus")) > 0);
}

/// The pid of the `--jobs` client `--job K` whose campaign directory is `dir`.
fn job_pid(dir: &std::path::Path, k: usize) -> Option<u32> {
    let want_dir = dir.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_job = args
            .windows(2)
            .any(|w| w[0] == "--job" && w[1] == k.to_string());
        (is_job && args.iter().any(|a| a == &want_dir)).then_some(pid)
    })
}

/// `--jobs`: a client killed mid-campaign (SIGKILL, as by the OOM killer) is
/// started again with the time left, resumes on its guest (left with
/// breakpoints planted: the new client's attach repairs it), and the
/// campaign reports the restart.
#[test]
fn a_killed_job_is_started_again() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, name, work) = guest("tlv", "restart");
    let dir = work.join("campaign");
    let child = std::process::Command::new(fuzz_bin())
        .arg("--cfg")
        .arg(&spec.cfg)
        .arg("--image")
        .arg(&spec.image)
        .args(["--krate", "tlv", "--time", "50s", "--timeout-ms", "400"])
        .args(["--jobs", "2", "--broker-port", "1442", "--rng-seed", "9"])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run xenprobe-fuzz --jobs 2");
    // Kill job 1 once it has run for a while (its guest is attached then).
    let deadline = Instant::now() + Duration::from_secs(35);
    let pid = loop {
        let ran = std::fs::read_to_string(dir.join("job-1/summary.md"))
            .is_ok_and(|s| !s.contains("| executions | 0 |"));
        if let (true, Some(pid)) = (ran, job_pid(&dir, 1)) {
            break pid;
        }
        assert!(Instant::now() < deadline, "job 1 never ran");
        std::thread::sleep(Duration::from_millis(500));
    };
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("campaign output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("job 1 ended with signal: 9") && l.contains("starting it again")),
        "{stderr}"
    );
    assert!(!stderr.contains("job 2 ended with"), "{stderr}");
    let overview = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    assert!(
        overview.contains("Jobs started again after they died"),
        "{overview}"
    );
    for k in 1..=2 {
        let s = std::fs::read_to_string(dir.join(format!("job-{k}/summary.md")))
            .unwrap_or_else(|e| panic!("job-{k}/summary.md: {e}"));
        assert!(s.contains("Final report."), "job {k}: {s}");
        let jname = format!("{name}-j{k}");
        assert_code_clean(&jname, &spec.image, &spec.cover);
        destroy(&jname);
    }
}
