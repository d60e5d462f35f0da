//! Live: watchpoints on debug registers (DR0-DR3/DR7, #DB through Xen's
//! debug-exception monitor) against the known guest: write watches with hit
//! counts and old/new values, access watches, refused shapes, and the
//! guest's debug registers restored on removal and on detach. PVH and HVM on
//! the stock hypervisor; PV on the debug (gdbsx) hypervisor, skipped with the
//! reason elsewhere.
//!
//! Run: `cargo test -p xenprobe-tests --test live_watch` (add `XENPROBE_XEN=debug`
//! for PV).

use std::time::Instant;

use xenprobe::vmi::{BreakpointId, Domain, Error, Event, ShutdownReason, WatchKind, Xen};
use xenprobe_tests::{mode_tests, wait_shutdown, xen, Guest, WAIT};

/// The guest stays (shut down, inspectable) after its end: once the harness
/// lets go, a fast guest may finish before the test looks at its registers.
const KEEP: &[&str] = &["on_poweroff=\"preserve\""];

fn u64_of(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(v)
}

/// Lets the created (paused) guest run to the breakpoint `bp` at
/// `known_tick`, removes it, and returns the guest's own debug registers.
fn run_to_tick(xen: &Xen, dom: &mut Domain, bp: BreakpointId) -> [u64; 5] {
    dom.resume().expect("resume");
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    match dom.wait_event(WAIT).expect("wait") {
        Event::Breakpoint { id, .. } if id == bp => {}
        other => panic!("expected the known_tick breakpoint, got {other:?}"),
    }
    dom.remove_breakpoint(bp).expect("remove breakpoint");
    drs(dom)
}

/// Debug registers of vCPU 0 (DR0-3, DR7).
fn drs(dom: &Domain) -> [u64; 5] {
    let r = dom.regs(0).expect("regs");
    [r.dr0, r.dr1, r.dr2, r.dr3, r.dr7]
}

/// The guest's debug registers are back, except on HVM/PVH for one parked
/// execute breakpoint at address 0 (see `PARKED_SLOT_ENABLE` in the engine).
fn assert_restored(mode: &str, dom: &Domain, guest: [u64; 5]) {
    let now = drs(dom);
    assert_eq!(now[..4], guest[..4], "DR0-3 back ({mode})");
    if mode == "pv" || guest[4] & 0xff != 0 {
        assert_eq!(now[4], guest[4], "DR7 back ({mode})");
    } else {
        let extra = now[4] ^ guest[4];
        assert!(
            extra.count_ones() == 1 && extra & 0x55 != 0,
            "DR7 {:#x}: the guest's {:#x} plus one local enable bit (parked execute breakpoint at 0)",
            now[4],
            guest[4]
        );
    }
}

fn watchpoints(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create_with("watch", mode, KEEP);
    let mut dom = g.attach(&xen);
    let counter = dom.symbol("known_counter").expect("known_counter");
    let state = dom.symbol("known_state").expect("known_state");
    let tick = dom.symbol("known_tick").expect("known_tick");
    let step = dom.symbol("known_step").expect("known_step");
    let bp = match dom.add_breakpoint_at("known_tick") {
        Ok(bp) => bp,
        Err(e @ Error::Unsupported { .. }) if mode == "pv" => {
            eprintln!("SKIP pv watchpoints: {e}");
            assert!(
                dom.add_watchpoint(counter, 8, WatchKind::Write).is_err(),
                "a PV watchpoint without gdbsx"
            );
            return;
        }
        Err(e) => panic!("add_breakpoint_at(known_tick): {e}"),
    };
    let guest_drs = run_to_tick(&xen, &mut dom, bp);

    // Refused shapes leave the debug registers as they were.
    let e = dom
        .add_watchpoint(counter, 8, WatchKind::Read)
        .expect_err("read-only watch");
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let buffer = dom.symbol("known_buffer").expect("known_buffer");
    let e = dom
        .add_watchpoint(buffer, 64, WatchKind::Write)
        .expect_err("64 bytes need 8 slots");
    assert!(e.to_string().contains("debug registers"), "{e}");
    // A length from a debugger packet (`Z2,ADDR,LEN`) is refused before it
    // sizes anything.
    for len in [1 << 40, u64::MAX] {
        let e = dom
            .add_watchpoint(buffer, len, WatchKind::Write)
            .expect_err("huge watch");
        assert!(e.to_string().contains("debug registers"), "{e}");
    }
    assert_eq!(drs(&dom), guest_drs);

    // Writes of known_counter: one hit per tick, old and new values.
    let w = dom
        .add_watchpoint(counter, 8, WatchKind::Write)
        .expect("write watchpoint");
    let armed = drs(&dom);
    assert_eq!(armed[0], counter, "DR0 holds the address");
    assert_eq!(armed[4] & 0b11, 0b01, "L0 set");
    assert_eq!(
        (armed[4] >> 16) & 0xf,
        0b1001,
        "RW0=01 (write) LEN0=10 (8 bytes)"
    );
    let start = Instant::now();
    for n in 1..=4u64 {
        match dom.cont(WAIT).expect("cont") {
            Event::Watchpoint {
                id,
                addr,
                hits,
                old,
                new,
                vcpu,
            } => {
                assert_eq!((id, addr, hits), (w, counter, n));
                assert_eq!((u64_of(&old), u64_of(&new)), (n - 1, n), "hit {n}");
                let rip = dom.regs(vcpu).expect("regs").rip;
                let (s, _) = dom
                    .symbols()
                    .expect("symbols")
                    .symbolize(rip)
                    .expect("rip has a symbol");
                assert_eq!(s.addr, tick, "the write is in known_tick (rip {rip:#x})");
            }
            other => panic!("hit {n}: expected the watchpoint, got {other:?}"),
        }
    }
    eprintln!("{mode}: 4 write-watch hits in {:?}", start.elapsed());
    assert_eq!(dom.watchpoints().len(), 1);
    assert_eq!(dom.watchpoints()[0].hits, 4);
    dom.remove_watchpoint(w).expect("remove watchpoint");
    assert_restored(mode, &dom, guest_drs);
    // Nothing stale stays armed (Xen keeps an inactive DR7 out of the VMCB:
    // see PARKED_SLOT_ENABLE): the other ticks run without an event.
    let at_step = dom.add_breakpoint(step).expect("breakpoint at known_step");
    match dom.cont(WAIT).expect("cont") {
        Event::Breakpoint { id, .. } if id == at_step => {}
        other => panic!("an event after the watchpoint was removed: {other:?}"),
    }
    dom.remove_breakpoint(at_step).expect("remove breakpoint");
    let ticks = dom.read_u64(counter).expect("read known_counter");
    assert_eq!(ticks, 10, "the guest ran all its ticks without stopping");

    // known_state: read and written by the state machine loop (access watch).
    let a = dom
        .add_watchpoint(state, 4, WatchKind::Access)
        .expect("access watchpoint");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match dom.cont(WAIT).expect("cont") {
            Event::Watchpoint { id, old, new, .. } if id == a => {
                seen.push((u64_of(&old), u64_of(&new)));
            }
            other => panic!("expected the access watchpoint, got {other:?}"),
        }
    }
    eprintln!("{mode}: known_state accesses (old, new): {seen:?}");
    assert!(
        seen.iter().any(|(o, n)| o == n),
        "a read (value unchanged) was reported: {seen:?}"
    );
    assert!(seen.contains(&(0, 1)), "the write IDLE -> ARMED: {seen:?}");

    // Detach with the watch armed: the guest's registers come back, the
    // guest runs to its clean end without seeing a #DB.
    dom.detach().expect("detach");
    let dom = Domain::attach(&xen, g.name()).expect("attach again");
    runs_to_clean_end(mode, dom, guest_drs, "");
}

/// A freshly attached `dom` has the guest's debug registers `guest_drs`
/// back, and the guest runs to a clean exit (`when` ends the message).
fn runs_to_clean_end(mode: &str, mut dom: Domain, guest_drs: [u64; 5], when: &str) {
    dom.pause().expect("pause");
    assert_restored(mode, &dom, guest_drs);
    dom.resume().expect("resume");
    let reason = wait_shutdown(&mut dom);
    assert!(
        matches!(reason, ShutdownReason::Poweroff | ShutdownReason::Destroyed),
        "expected a clean exit{when}, got {reason:?}"
    );
}

mode_tests!(watchpoints: watchpoints_pvh = "pvh", watchpoints_hvm = "hvm", watchpoints_pv = "pv");

/// A harness that vanishes with a watchpoint armed (no detach, no drop) is
/// repaired by the next attach: the guest's debug registers come back from
/// the journal and the guest runs to its normal end without a #DB.
fn recovers_from_abandoned_watch(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create_with("watch", mode, KEEP);
    let guest_drs;
    {
        let mut dom = g.attach(&xen);
        let bp = dom.add_breakpoint_at("known_tick").expect("breakpoint");
        guest_drs = run_to_tick(&xen, &mut dom, bp);
        let counter = dom.symbol("known_counter").expect("known_counter");
        dom.add_watchpoint(counter, 8, WatchKind::Write)
            .expect("watchpoint");
        match dom.cont(WAIT).expect("cont") {
            Event::Watchpoint { hits: 1, .. } => {}
            other => panic!("expected the first hit, got {other:?}"),
        }
        // Vanish: the watchpoint stays armed, a vCPU waits for its answer.
        std::mem::forget(dom);
    }
    let dom = Domain::attach(&xen, g.name()).expect("attach repairs");
    runs_to_clean_end(mode, dom, guest_drs, " after the repair");
}

mode_tests!(recovers_from_abandoned_watch:
    recovers_from_abandoned_watch_pvh = "pvh",
    recovers_from_abandoned_watch_hvm = "hvm",
);
