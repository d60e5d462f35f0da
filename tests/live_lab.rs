//! The lab's memory integrity: a Xen host whose memory changes behind its
//! owners' backs makes every other live test flaky, so this checks it
//! directly. For `XENPROBE_LAB_CHECK_SECS` seconds (default 40), at once:
//! - dom0 memory: a buffer (`XENPROBE_LAB_CHECK_MIB`, default 64 MiB) filled
//!   with a pattern that depends on each word's index, checked over and over;
//! - guests coming and going: `known` PVH and HVM guests created with `xl`,
//!   held in their `known_spin` loop (which writes no memory), all their RAM
//!   copied twice a few seconds apart and compared frame by frame, then
//!   destroyed;
//! - a fuzz campaign on the `tlv` sample (`xenprobe-fuzz`, thousands of
//!   vm_events and context switches a second), which must end normally
//!   (`XENPROBE_LAB_CHECK_FUZZ=0` leaves it out).
//!
//! Every difference is printed with its place and its first differing
//! lines as hex and text, enough to tell whose data landed there. With Xen's
//! lazy FPU switching (`XENPROBE_XEN_CMDLINE=spec-ctrl=eager-fpu=0`) this
//! finds idle guests' frames that read back with 16-byte pieces of the
//! fuzzer's vm_event data within seconds: dom0 processes lost SSE register
//! contents (docs/lab.md, "The lab's CPU configuration"). A longer soak:
//! `XENPROBE_LAB_CHECK_SECS=600 cargo test -p xenprobe-tests --test live_lab -- --nocapture`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenprobe::vmi::{Domain, Xen};
use xenprobe::xen::{ForeignMemory, Prot, PAGE_SIZE};
use xenprobe_tests::{env_num, Guest};

const GUEST_MIB: u64 = 32;

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_1234_dead_beef
}

/// Fills a buffer and checks it until `stop`: (bad words, full passes).
fn dom0_memcheck(mib: usize, stop: &AtomicBool, t0: Instant) -> (u64, u64) {
    let words = mib * 1024 * 1024 / 8;
    let mut buf: Vec<u64> = (0..words).map(pattern).collect();
    let (mut bad, mut passes) = (0u64, 0u64);
    let mut last_page = usize::MAX;
    while !stop.load(Ordering::Relaxed) {
        for (i, w) in buf.iter_mut().enumerate() {
            if *w == pattern(i) {
                continue;
            }
            bad += 1;
            let page = (w as *const u64 as usize) / PAGE_SIZE;
            if page != last_page {
                last_page = page;
                println!(
                    "dom0 memory at t={:.1}s, page {page:#x}: word {i} is {:#018x}, \
                     written {:#018x}",
                    t0.elapsed().as_secs_f64(),
                    *w,
                    pattern(i)
                );
            }
            *w = pattern(i);
        }
        passes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    (bad, passes)
}

/// All frames of a domain's RAM (absent ones as None).
fn ram(fmem: &ForeignMemory, domid: u32) -> Vec<Option<Vec<u8>>> {
    let frames = GUEST_MIB * 256;
    let mut out = Vec::with_capacity(frames as usize);
    let mut start = 0;
    while start < frames {
        let n = 512.min(frames - start);
        let gfns: Vec<u64> = (start..start + n).collect();
        let map = fmem
            .map_sparse(domid, Prot::Read, &gfns)
            .expect("map guest frames");
        for i in 0..n as usize {
            out.push(map.page_valid(i).then(|| {
                let mut page = vec![0u8; PAGE_SIZE];
                map.read(i * PAGE_SIZE, &mut page).expect("read frame");
                page
            }));
        }
        start += n;
    }
    out
}

/// Frames that differ, printed with their first changed bytes.
fn diff_frames(name: &str, a: &[Option<Vec<u8>>], b: &[Option<Vec<u8>>]) -> u64 {
    let mut found = 0;
    for (gfn, (x, y)) in a.iter().zip(b).enumerate() {
        let (Some(x), Some(y)) = (x, y) else { continue };
        if x == y {
            continue;
        }
        found += 1;
        let diff = (0..PAGE_SIZE).filter(|&i| x[i] != y[i]).count();
        println!("{name}: frame {gfn:#x} changed ({diff} bytes differ):");
        // The first two 32-byte lines that differ, before and after, as
        // hex and text: enough to recognise whose data it is.
        for line in (0..PAGE_SIZE / 32)
            .filter(|l| x[l * 32..l * 32 + 32] != y[l * 32..l * 32 + 32])
            .take(2)
        {
            let at = line * 32;
            println!("  {at:#05x} before {}", dump(&x[at..at + 32]));
            println!("  {at:#05x} after  {}", dump(&y[at..at + 32]));
        }
    }
    found
}

/// Bytes as hex, then as text ('.' for anything unprintable).
fn dump(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|v| format!("{v:02x}")).collect();
    let text: String = b
        .iter()
        .map(|&v| if v.is_ascii_graphic() { v as char } else { '.' })
        .collect();
    format!("{} |{text}|", hex.join(""))
}

/// One idle guest: created, spinning, RAM compared; Err on a lab failure.
fn idle_guest(xen: &Xen, fmem: &ForeignMemory, mode: &str) -> Result<u64, String> {
    let memory = format!("memory={GUEST_MIB}");
    let mut overrides = vec![memory.as_str()];
    if mode != "hvm" {
        overrides.push("extra=\"known.spin=1\"");
    }
    let g = Guest::try_create_with("labcheck", mode, &overrides)?;
    let name = g.name();
    let result = (|| -> Result<u64, String> {
        let e = |e: xenprobe::vmi::Error| format!("{name}: {e}");
        let domid = xen.find(name).map_err(e)?.domid;
        if mode == "hvm" {
            // No command line for HVM: set the variable before it runs.
            let mut dom = Domain::attach(xen, domid).map_err(e)?;
            dom.load_symbols(g.image()).map_err(e)?;
            let spin = dom.symbol("known_spin").map_err(e)?;
            dom.write_virt(spin, &1u64.to_le_bytes()).map_err(e)?;
            dom.detach().map_err(e)?;
        }
        xen.ctrl()
            .domain_unpause(domid)
            .map_err(|x| format!("{name}: unpause: {x}"))?;
        std::thread::sleep(Duration::from_millis(1500));
        let before = ram(fmem, domid);
        std::thread::sleep(Duration::from_secs(2));
        let after = ram(fmem, domid);
        let info = xen
            .ctrl()
            .domain_info(domid)
            .map_err(|x| format!("{name}: {x}"))?;
        if info.shutdown || info.crashed {
            return Err(format!("{name}: stopped while idling: {info:?}"));
        }
        Ok(diff_frames(name, &before, &after))
    })();
    let destroyed = g.destroy();
    let changed = result?;
    destroyed?;
    Ok(changed)
}

/// `xenprobe-fuzz` next to this test binary (`cargo xtask test` builds the
/// workspace's binaries first), or `XENPROBE_FUZZ_BIN`.
fn fuzz_bin() -> PathBuf {
    std::env::var_os("XENPROBE_FUZZ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| xenprobe_tests::beside_test_binary("xenprobe-fuzz"))
}

/// Starts a `secs`-second campaign on the tlv sample under a name of its own.
fn start_campaign(secs: u64) -> (Child, PathBuf) {
    let bin = fuzz_bin();
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p xenprobe-fuzz` (or set XENPROBE_FUZZ_BIN, \
         or XENPROBE_LAB_CHECK_FUZZ=0)",
        bin.display()
    );
    let guests = xenprobe_tests::guests_dir();
    let dir =
        xenprobe_tests::root().join(format!("target/tmp/labcheck-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("campaign directory");
    let cfg = std::fs::read_to_string(guests.join("tlv-pvh.cfg"))
        .expect("tlv-pvh.cfg (cargo xtask guests build)");
    let name = format!("labcheck-fuzz-{}", std::process::id());
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.trim_start().starts_with("name"))
        .chain(std::iter::once(format!("name=\"{name}\"").as_str()))
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg_path = dir.join("guest.cfg");
    std::fs::write(&cfg_path, cfg).expect("write the campaign's xl config");
    let child = Command::new(bin)
        .arg("--cfg")
        .arg(&cfg_path)
        .arg("--image")
        .arg(guests.join("tlv-pvh"))
        .args(["--krate", "tlv", "--time", &format!("{secs}s"), "--dir"])
        .arg(dir.join("campaign"))
        .env("XENPROBE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xenprobe-fuzz");
    (child, dir)
}

#[test]
fn memory_stays_intact_while_guests_come_and_go() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let secs = env_num("XENPROBE_LAB_CHECK_SECS", 40);
    let mib = env_num("XENPROBE_LAB_CHECK_MIB", 64) as usize;
    let xen = Xen::open().expect("open Xen handles");
    let fmem = ForeignMemory::open().expect("open foreign memory");
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let checker = {
        let stop = stop.clone();
        std::thread::spawn(move || dom0_memcheck(mib, &stop, t0))
    };
    let campaign = (std::env::var("XENPROBE_LAB_CHECK_FUZZ").as_deref() != Ok("0"))
        .then(|| start_campaign(secs));
    let (mut guests, mut changed, mut failures) = (0u32, 0u64, Vec::new());
    while t0.elapsed() < Duration::from_secs(secs) || guests < 2 {
        for mode in ["pvh", "hvm"] {
            match idle_guest(&xen, &fmem, mode) {
                Ok(c) => changed += c,
                Err(e) => failures.push(e),
            }
            guests += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (bad_words, passes) = checker.join().expect("memory checker thread");
    let fuzzed = campaign.map(|(child, dir)| {
        let out = child.wait_with_output().expect("wait for xenprobe-fuzz");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::remove_dir_all(dir);
        (out.status, text)
    });
    if let Some((status, text)) = &fuzzed {
        let summary = text.lines().rfind(|l| l.contains("execs in"));
        println!(
            "campaign beside the checks: {status}; {}",
            summary.unwrap_or("no summary")
        );
    }
    println!(
        "{guests} guests in {:.0} s; dom0 buffer checked {passes} times",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        passes >= 2,
        "the dom0 buffer was checked only {passes} times"
    );
    assert_eq!(
        bad_words, 0,
        "dom0 memory changed behind its owner ({bad_words} words; pages above)"
    );
    assert_eq!(
        changed, 0,
        "idle guests' RAM changed ({changed} frames above)"
    );
    assert!(failures.is_empty(), "lab failures: {failures:#?}");
    if let Some((status, text)) = fuzzed {
        assert!(
            status.success() && text.contains("execs in"),
            "the campaign beside the checks did not end normally ({status}):\n{text}"
        );
    }
}
