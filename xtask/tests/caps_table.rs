//! Live: `xenprobe caps` on the lab's hypervisors.
//!
//! - The capability tables in `docs/xen-vmi.md` (between the
//!   `<!-- caps:stock:begin -->` / `<!-- caps:debug:begin -->` /
//!   `<!-- caps:4.20:begin -->` markers and
//!   their `end` markers) are what `xenprobe caps --json` measures now; the
//!   test fails with a diff otherwise. `XENPROBE_UPDATE_CAPS=1` rewrites them.
//! - `xenprobe caps DOMAIN` leaves a guest as it found it: same pause state,
//!   same bytes in the frames it touched, and the guest, run afterwards,
//!   produces its normal result.
//!
//! Needs the sample guests (`cargo xtask guests build`) and the `xenprobe`
//! binary (`cargo build --workspace --bins`, which `cargo xtask test` runs
//! first; `XENPROBE_BIN` points elsewhere). The debug table needs the debug
//! hypervisor: that test is ignored unless run with `--ignored` (the debug
//! pass of `cargo xtask test` does).
//!
//! Run: `cargo test -p xtask --test caps_table` (and `-- --ignored` for the
//! debug table).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{run, text, workspace, xtask};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Feature {
    feature: String,
    works: bool,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Guest {
    kind: String,
    features: Vec<Feature>,
}

#[derive(Debug, Deserialize)]
struct Left {
    paused_before: bool,
    paused_after: bool,
    hash_before: String,
    hash_after: String,
    frames: usize,
}

#[derive(Debug, Deserialize)]
struct Report {
    xen_version: String,
    cpu_vendor: String,
    cpu_model: String,
    hap: bool,
    shadow: bool,
    gdbsx: bool,
    guests: Vec<Guest>,
    left: Option<Left>,
}

fn doc_path() -> PathBuf {
    workspace().join("docs/xen-vmi.md")
}

/// The prebuilt `xenprobe` binary (dom0 runs it from the same path).
fn xenprobe_bin() -> String {
    // The build's own target directory: `target/xen-4.20` for the 4.20 lab.
    let p = std::env::var_os("XENPROBE_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug/xenprobe"))
        })
        .unwrap_or_else(|| PathBuf::from("target/debug/xenprobe"));
    let p = if p.is_absolute() {
        p
    } else {
        workspace().join(p)
    };
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace --bins` first (or set XENPROBE_BIN)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// `xtask lab --xen FLAVOUR run -- argv...`.
fn in_dom0(flavour: &str, argv: &[&str]) -> std::process::Output {
    let mut args = vec!["lab", "--xen", flavour, "run", "--"];
    args.extend_from_slice(argv);
    run(xtask(&args))
}

fn caps(flavour: &str, domain: Option<&str>) -> Report {
    let bin = xenprobe_bin();
    let mut argv = vec![bin.as_str(), "caps", "--json"];
    argv.extend(domain);
    let out = in_dom0(flavour, &argv);
    assert!(out.status.success(), "xenprobe caps failed");
    serde_json::from_str(&text(&out.stdout)).expect("xenprobe caps --json prints a report")
}

fn cell(f: &Feature) -> String {
    let s = match (&f.reason, f.works) {
        (None, true) => "works".to_string(),
        (Some(r), true) => format!("works ({r})"),
        (r, false) => format!("not available: {}", r.as_deref().unwrap_or("")),
    };
    s.replace('|', "\\|")
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The markdown the doc embeds: a host line, then one row per feature and
/// one column per guest type. Deterministic fields only (no timings, no ids).
fn render(r: &Report) -> String {
    let mut s = format!(
        "Measured on Xen {}, CPU {} ({}); HAP {}, shadow paging {}, gdbsx {}.\n\n",
        r.xen_version,
        r.cpu_model,
        r.cpu_vendor,
        yn(r.hap),
        yn(r.shadow),
        yn(r.gdbsx)
    );
    s.push_str("| feature |");
    for g in &r.guests {
        s.push_str(&format!(" {} |", g.kind));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(r.guests.len()));
    s.push('\n');
    let Some(first) = r.guests.first() else {
        return s;
    };
    for (i, f) in first.features.iter().enumerate() {
        s.push_str(&format!("| {} |", f.feature));
        for g in &r.guests {
            let c = g.features.get(i).map(cell).unwrap_or_default();
            s.push_str(&format!(" {c} |"));
        }
        s.push('\n');
    }
    s
}

fn markers(flavour: &str) -> (String, String) {
    (
        format!("<!-- caps:{flavour}:begin -->\n"),
        format!("<!-- caps:{flavour}:end -->"),
    )
}

/// The table between the markers of `flavour`, and its byte range.
fn embedded(doc: &str, flavour: &str) -> (String, std::ops::Range<usize>) {
    let (begin, end) = markers(flavour);
    let b = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/xen-vmi.md has no {begin:?} marker"))
        + begin.len();
    let e = doc[b..]
        .find(&end)
        .unwrap_or_else(|| panic!("docs/xen-vmi.md has no {end:?} marker"))
        + b;
    (doc[b..e].to_string(), b..e)
}

fn diff(old: &str, new: &str) -> String {
    let (o, n): (Vec<_>, Vec<_>) = (old.lines().collect(), new.lines().collect());
    let mut out = String::new();
    for l in &o {
        if !n.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &n {
        if !o.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    out
}

fn check_table(flavour: &str, report: &Report) {
    let table = render(report);
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/xen-vmi.md is readable");
    let (committed, range) = embedded(&doc, flavour);
    if committed == table {
        return;
    }
    if std::env::var_os("XENPROBE_UPDATE_CAPS").is_some_and(|v| v == "1") {
        let mut new = doc.clone();
        new.replace_range(range, &table);
        std::fs::write(&path, new).expect("docs/xen-vmi.md is writable");
        eprintln!("rewrote the {flavour} table in {}", path.display());
        return;
    }
    panic!(
        "the {flavour} capability table in docs/xen-vmi.md differs from what `xenprobe caps` \
         measures (- committed, + measured); rerun with XENPROBE_UPDATE_CAPS=1 to update it:\n{}",
        diff(&committed, &table)
    );
}

fn feature<'a>(r: &'a Report, kind: &str, name: &str) -> &'a Feature {
    r.guests
        .iter()
        .find(|g| g.kind == kind)
        .and_then(|g| g.features.iter().find(|f| f.feature == name))
        .unwrap_or_else(|| panic!("no {name:?} row for {kind}"))
}

#[test]
fn stock_table_matches_the_doc() {
    let r = caps("stock", None);
    let pv_bp = feature(&r, "PV", "int3 breakpoints");
    assert!(!pv_bp.works, "PV int3 works on the stock hypervisor?");
    assert!(
        pv_bp
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("CONFIG_GDBSX"),
        "{pv_bp:?}"
    );
    for kind in ["PVH", "HVM"] {
        assert!(feature(&r, kind, "vm_event (monitor ring)").works);
        assert!(feature(&r, kind, "ICEBP breakpoints").works);
    }
    check_table("stock", &r);
}

#[test]
#[ignore = "needs the debug hypervisor: run by the debug pass of cargo xtask test"]
fn debug_table_matches_the_doc() {
    let r = caps("debug", None);
    assert!(r.gdbsx, "the debug hypervisor answers gdbsx");
    assert!(feature(&r, "PV", "int3 breakpoints").works);
    assert!(feature(&r, "PV", "trap-flag stepping").works);
    check_table("debug", &r);
}

#[test]
#[ignore = "needs the 4.20 lab and a build against Xen 4.20: run by the 4.20 pass of cargo xtask test"]
fn xen_4_20_table_matches_the_doc() {
    let r = caps("4.20", None);
    assert!(
        r.xen_version.starts_with("4.20"),
        "the 4.20 lab runs Xen {}",
        r.xen_version
    );
    for kind in ["PVH", "HVM"] {
        assert!(feature(&r, kind, "vm_event (monitor ring)").works);
        assert!(feature(&r, kind, "ICEBP breakpoints").works);
        assert!(feature(&r, kind, "log-dirty").works);
    }
    check_table("4.20", &r);
}

#[test]
fn caps_on_a_named_guest_leaves_it_as_found() {
    let name = format!("capslive-{}", std::process::id());
    let cfg = workspace().join("target/guests/known-hvm.cfg");
    assert!(
        cfg.exists(),
        "{} missing: run `cargo xtask guests build`",
        cfg.display()
    );
    let cfg = cfg.to_string_lossy().into_owned();
    let created = in_dom0(
        "stock",
        &["xl", "create", "-p", &cfg, &format!("name=\"{name}\"")],
    );
    assert!(created.status.success(), "xl create failed");
    let r = caps("stock", Some(&name));
    let left = r
        .left
        .as_ref()
        .expect("a named probe reports the guest's state");
    assert_eq!(left.paused_before, left.paused_after, "pause state changed");
    assert!(left.frames > 0, "no frames hashed");
    assert_eq!(left.hash_before, left.hash_after, "guest memory changed");
    assert!(feature(&r, "HVM", "memory (read, write back)").works);
    assert!(feature(&r, "HVM", "vm_event (monitor ring)").works);
    // Independent check: run the guest; unmodified, it prints its normal result.
    let unpaused = in_dom0("stock", &["xl", "unpause", &name]);
    assert!(unpaused.status.success(), "xl unpause failed");
    let log = workspace().join(format!("target/xenlab/stock/consoles/guest-{name}.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut console = String::new();
    while Instant::now() < deadline {
        console = std::fs::read_to_string(&log).unwrap_or_default();
        if console.contains("EXIT") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = in_dom0(
        "stock",
        &["sh", "-c", &format!("xl destroy {name} || true")],
    );
    assert!(
        console.contains("KNOWN counter=10 state=3 result=25"),
        "the guest did not run normally after the probe; console:\n{console}"
    );
}

/// GitHub's anchor for a markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn rustdoc_links_point_at_sections_of_the_doc() {
    let doc = std::fs::read_to_string(doc_path()).expect("docs/xen-vmi.md is readable");
    let anchors: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let dir = workspace().join("harness/src/xen");
    let mut links = 0;
    for entry in std::fs::read_dir(&dir).expect("harness/src/xen is readable") {
        let path = entry.expect("directory entry").path();
        let src = std::fs::read_to_string(&path).expect("source is readable");
        for (i, _) in src.match_indices("docs/xen-vmi.md#") {
            let a: String = src[i + "docs/xen-vmi.md#".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                anchors.contains(&a),
                "{}: no section #{a} in docs/xen-vmi.md",
                path.display()
            );
            links += 1;
        }
    }
    assert!(links > 20, "only {links} rustdoc links to docs/xen-vmi.md");
}
