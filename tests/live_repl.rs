//! Live: the `xenprobe repl` binary driven by a scripted session (commands
//! on stdin) against the known guest (PVH, and HVM), inside dom0; `cont`
//! while `xl create -p`'s pause still holds the guest says so at once; a
//! PV guest's snapshot (the engine's, one per domain) brings memory back.
//!
//! The binary is `$XENPROBE_BIN`, else `xenprobe` next to this test's
//! `deps/` directory (build it first: `cargo build -p xenprobe`).
//! Run: `cargo build -p xenprobe && cargo test -p xenprobe-tests --test live_repl`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use xenprobe_tests::{mode_tests, Guest};

/// A paused `known` guest; `xl create` is tried three times (a leftover of
/// a failed try destroyed, 1 s between tries).
fn create_guest(mode: &str) -> Guest {
    create_guest_with(mode, &[])
}

/// [`create_guest`] with xl config overrides.
fn create_guest_with(mode: &str, overrides: &[&str]) -> Guest {
    let g = Guest::new("repl", mode, overrides);
    let mut err = String::new();
    for _ in 0..3 {
        match g.try_xl_create() {
            Ok(()) => return g,
            Err(e) => err = e,
        }
        let _ = g.destroy();
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("xl create {} failed: {err}", g.name());
}

/// Runs the REPL on `g`: `first` commands, then `xl unpause` (the guest was
/// created paused; the REPL holds its own pause), then `rest`.
fn session(g: &Guest, first: &[&str], rest: &[&str]) -> String {
    let mut child = Command::new(xenprobe_tests::xenprobe_bin())
        .args(["repl", g.name(), "--symbols"])
        .arg(g.image())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xenprobe repl starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    for c in first {
        writeln!(stdin, "{c}").expect("write command");
    }
    writeln!(stdin, "# unpause-marker").expect("write");
    stdin.flush().expect("flush");
    // Wait until the REPL has run the first commands.
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("REPL output before the marker");
        if line.contains("unpause-marker") {
            break;
        }
    }
    let st = Command::new("xl")
        .args(["unpause", g.name()])
        .status()
        .expect("xl");
    assert!(st.success(), "xl unpause");
    for c in rest {
        writeln!(stdin, "{c}").expect("write command");
    }
    drop(stdin);
    let status = child.wait().expect("repl exits");
    let out = reader.join().expect("reader");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    eprintln!("--- repl stdout\n{out}\n--- stderr\n{err}");
    assert!(status.success(), "the REPL exits cleanly: {status}");
    out
}

/// The output between the echo of command `cmd` and the next echo.
fn answer<'a>(out: &'a str, cmd: &str) -> &'a str {
    let start = out
        .find(&format!("> {cmd}\n"))
        .unwrap_or_else(|| panic!("command {cmd:?} not echoed"))
        + cmd.len()
        + 3;
    let end = out[start..]
        .find("\n> ")
        .map_or(out.len(), |e| start + e + 1);
    &out[start..end]
}

fn scripted(mode: &str) {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let g = create_guest(mode);
    let first = [
        "info",
        "break known_tick if rdi == 3",
        "break known_compute",
        "breakpoints",
        "rwatch &known_counter",
        "bogus command",
        "print 1 +",
        "x/4xg 0xdead00000000",
        // xl's own pause (the guest was created paused) still holds it.
        "cont",
    ];
    let rest = [
        "continue 60",
        "print $rdi",
        "print *(u64*)&known_counter",
        "x/2xg $rsp",
        "bt",
        "delete 1",
        "continue 60",
        "print $rdi * 100 + $rsi",
        "regs",
        "disas known_compute 3",
        "sym known_counter",
        "sym $rip",
        "snapshot take s1",
        "print *(u64*)&known_counter * 1",
        "stepi",
        "set $rsi = 10",
        "print $rsi",
        "finish",
        "set *(u64*)&known_counter = 77",
        "snapshot restore s1",
        "print *(u64*)&known_counter * 2",
        "print $rsi",
        "set $rsi = 10",
        "set *(u64*)&known_counter = 42",
        "x/1ug &known_counter",
        "continue 60",
    ];
    let out = session(&g, &first, &rest);

    assert!(answer(&out, "info").contains("breakpoints: "), "{out}");
    assert!(answer(&out, "breakpoints").contains("if rdi == 3"));
    // Read-only watchpoints do not exist on x86 debug registers: one line why.
    let a = answer(&out, "rwatch &known_counter");
    assert!(
        a.starts_with("error: not supported: ") && a.contains("reads") && a.lines().count() == 1,
        "rwatch: {a:?}"
    );
    for bad in ["bogus command", "print 1 +", "x/4xg 0xdead00000000"] {
        let a = answer(&out, bad);
        assert!(
            a.starts_with("error: ") && a.lines().count() == 1,
            "{bad}: {a:?}"
        );
    }
    let held = answer(&out, "cont");
    assert!(
        held.starts_with("error: ")
            && held.contains("still paused")
            && held.contains(&format!("xl unpause {}", g.name())),
        "cont under xl's pause: {held:?}"
    );
    // The conditional breakpoint stops at the 4th tick: rdi = 3, counter = 3.
    let first_stop = answer(&out, "continue 60");
    assert!(first_stop.contains("breakpoint 1 at"), "{first_stop}");
    assert!(first_stop.contains("<known_tick>"), "{first_stop}");
    assert!(answer(&out, "print $rdi").starts_with("0x3 (3)"));
    assert!(answer(&out, "print *(u64*)&known_counter").starts_with("0x3 (3)"));
    assert!(answer(&out, "x/2xg $rsp").contains(':'));
    assert!(answer(&out, "bt").contains("#1"), "a caller frame");
    // known_compute(3, 4).
    assert!(out.contains("breakpoint 2 at"), "{out}");
    assert!(answer(&out, "print $rdi * 100 + $rsi").starts_with("0x130 (304)"));
    assert!(answer(&out, "regs").contains("cr3"));
    assert!(answer(&out, "disas known_compute 3").contains("<known_compute>"));
    assert!(answer(&out, "sym known_counter").contains("known_counter = 0x"));
    assert!(answer(&out, "sym $rip").contains("known_compute+0x"));
    assert!(answer(&out, "snapshot take s1").contains("snapshot s1:"));
    assert!(answer(&out, "print $rsi").starts_with("0xa (10)"));
    // finish: 3 * 7 + 10 = 31.
    let fin = answer(&out, "finish");
    assert!(fin.contains("rax = 0x1f (31)"), "{fin}");
    // Restoring brings rsi (and everything else) back.
    let restored = out
        .split("> snapshot restore s1\n")
        .nth(1)
        .unwrap_or_default();
    assert!(restored.contains("restored s1"), "{restored}");
    assert!(
        restored.contains("> print $rsi\n0x4 (4)"),
        "rsi back to 4 after restore: {restored}"
    );
    // Memory too: the counter written after the snapshot is back.
    let at_take = number(answer(&out, "print *(u64*)&known_counter * 1"));
    let after = number(answer(&out, "print *(u64*)&known_counter * 2"));
    assert_eq!(after, 2 * at_take, "known_counter back after restore");
    assert_ne!(at_take, 77);
    let rewritten = answer(&out, "snapshot restore s1");
    assert!(
        !rewritten.contains("restored s1: 0 pages"),
        "the counter's page at least: {rewritten}"
    );
    assert!(answer(&out, "x/1ug &known_counter").contains(" 42"));
    let tail = out.rsplit("> continue 60\n").next().unwrap_or_default();
    assert!(tail.contains("the guest shut down"), "{tail}");
}

mode_tests!(scripted: scripted_repl_on_pvh = "pvh", scripted_repl_on_hvm = "hvm");

/// Watchpoints through the REPL: a write watch on `known_counter` stops at
/// each tick with the old and new value, the list shows the hits, refused
/// shapes answer in one line, and the guest runs to its end after `unwatch`.
fn watch_session(mode: &str) {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let g = create_guest(mode);
    let rest = [
        "continue 60",
        "watch known_counter",
        "delete 1",
        "continue 60",
        "print $rip",
        "continue 60",
        "watchpoints",
        "rwatch known_counter",
        "watch known_buffer 64",
        "awatch known_state 4",
        "unwatch all",
        "watchpoints",
        "continue 60",
    ];
    let out = session(&g, &["break known_tick"], &rest);
    let a = answer(&out, "watch known_counter");
    assert!(
        a.starts_with("watchpoint 1: ") && a.contains("<known_counter>") && a.contains("len 8 w"),
        "{a:?}"
    );
    let hits: Vec<&str> = out.split("> continue 60\n").skip(2).take(2).collect();
    assert!(
        hits[0].contains("watchpoint 1 at ") && hits[0].contains("hit 1): old 0x0 new 0x1"),
        "{hits:?}"
    );
    assert!(hits[1].contains("hit 2): old 0x1 new 0x2"), "{hits:?}");
    assert!(
        answer(&out, "print $rip").contains("known_tick+0x"),
        "stopped in known_tick"
    );
    assert!(answer(&out, "watchpoints").contains("(hits 2, debug registers [0])"));
    let a = answer(&out, "rwatch known_counter");
    assert!(
        a.starts_with("error: not supported: ") && a.lines().count() == 1,
        "{a:?}"
    );
    let a = answer(&out, "watch known_buffer 64");
    assert!(
        a.starts_with("error: ") && a.contains("debug registers"),
        "{a:?}"
    );
    assert!(answer(&out, "awatch known_state 4").contains("len 4 rw"));
    let a = answer(&out, "unwatch all");
    assert!(
        a.contains("deleted watchpoint 1") && a.contains("deleted watchpoint 2"),
        "{a:?}"
    );
    let tail = out.rsplit("> continue 60\n").next().unwrap_or_default();
    assert!(tail.contains("the guest shut down"), "{tail}");
}

mode_tests!(watch_session: repl_watchpoints_on_pvh = "pvh", repl_watchpoints_on_hvm = "hvm");

/// A number printed as `0x.. (N)`.
fn number(a: &str) -> u64 {
    a.split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {a:?}"))
}

/// PV: no breakpoints on the stock hypervisor, but snapshots work (by
/// machine frame, the engine's PV snapshot): memory written after `take`
/// is back after `restore`; a second `take` replaces the first.
#[test]
fn repl_snapshots_on_pv() {
    if !xenprobe_tests::have_xen() {
        return;
    }
    let g = create_guest_with("pv", &["extra=\"known.spin=1\""]);
    let rest = [
        "pause",
        "snapshot take a",
        "print *(u64*)&known_counter * 1",
        "set *(u64*)&known_counter = 77",
        "print *(u64*)&known_counter * 3",
        "snapshot restore a",
        "print *(u64*)&known_counter * 2",
        "snapshot take b",
        "snapshot list",
        "snapshot drop b",
        "snapshot restore b",
    ];
    let out = session(&g, &["info"], &rest);
    let _ = g.destroy();
    assert!(
        answer(&out, "snapshot take a").contains("snapshot a: "),
        "{out}"
    );
    assert_eq!(number(answer(&out, "print *(u64*)&known_counter * 3")), 231);
    let at_take = number(answer(&out, "print *(u64*)&known_counter * 1"));
    let after = number(answer(&out, "print *(u64*)&known_counter * 2"));
    assert_eq!(after, 2 * at_take, "known_counter back after restore");
    let restored = answer(&out, "snapshot restore a");
    assert!(
        restored.contains("restored a: ") && !restored.contains("restored a: 0 pages"),
        "{restored}"
    );
    assert!(
        answer(&out, "snapshot take b").contains("(replaces snapshot a"),
        "{out}"
    );
    let list = answer(&out, "snapshot list");
    assert!(list.contains("b: ") && !list.contains("a: "), "{list}");
    assert!(answer(&out, "snapshot restore b").starts_with("error: "));
}
