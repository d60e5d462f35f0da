//! Live tests of the VMI engine against the known-behaviour guest in PV, PVH
//! and HVM form. They run inside dom0 (the cargo runner forwards `live_*`
//! binaries to the lab); each test creates its own guest with `xl create`
//! (paused, under a unique name) and destroys it at the end.
//!
//! Without `/dev/xen/privcmd` every test fails with the reason, unless
//! `XENPROBE_ALLOW_NO_XEN=1`, in which case it prints `SKIP` and returns.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use xenprobe::vmi::{
    BreakpointInsnKind, Domain, Error, Event, GuestKind, MemoryImage, Registers, ShutdownReason,
    Xen, RFLAGS_TF,
};
use xenprobe_tests::{guests_dir, mode_tests, same_memory, sym, wait_shutdown, xen, Guest, WAIT};

/// `known_buffer` in guests/known/src/main.rs.
const KNOWN_BUFFER: &[u8; 64] =
    b"xenprobe known buffer: 0123456789 abcdefghijklmnopqrstuvwxyz!!!\n";

fn expected_kind(mode: &str) -> GuestKind {
    match mode {
        "pv" => GuestKind::Pv,
        "pvh" => GuestKind::Pvh,
        _ => GuestKind::Hvm,
    }
}

/// The guest powered off (seen before or after `on_poweroff="destroy"` removed it).
fn assert_clean_exit(reason: ShutdownReason) {
    assert!(
        matches!(reason, ShutdownReason::Poweroff | ShutdownReason::Destroyed),
        "expected a clean exit, got {reason:?}"
    );
}

#[test]
fn host_caps_and_domain_list() {
    let Some(xen) = xen() else { return };
    let caps = xen.host_caps().expect("host caps");
    eprintln!("host: {caps:?}");
    assert!(caps.xen_version.starts_with("4."), "{caps:?}");
    assert!(caps.hvm && caps.pv, "{caps:?}");
    let doms = xen.domains().expect("domains");
    let dom0 = doms.iter().find(|d| d.domid == 0).expect("dom0 listed");
    assert_eq!(dom0.name, "Domain-0");
    assert!(matches!(
        Domain::attach(&xen, "no-such-domain-xyz"),
        Err(Error::NoDomain(_))
    ));
    assert!(Domain::attach(&xen, 0u32).is_err(), "dom0 must be refused");
}

/// Registers, memory and page walks on a freshly created (paused) guest.
fn inspect(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", mode);
    let mut dom = g.attach(&xen);
    assert_eq!(dom.kind(), expected_kind(mode));
    assert_eq!(dom.name(), g.name());
    // By id too.
    let by_id = xen.find(dom.id()).expect("find by id");
    assert_eq!(by_id.name, g.name());
    eprintln!("{mode}: {}", dom.capabilities().summary());

    dom.pause().expect("pause");
    assert!(dom.info().expect("info").paused);
    let regs = dom.regs(0).expect("regs");
    let syms = dom.symbols().expect("symbols");
    let entries = [Some(syms.entry()), syms.lookup("_start32")];
    assert!(
        entries.contains(&Some(regs.rip)),
        "{mode}: fresh guest should sit at its entry point, rip={:#x} entries={entries:x?}",
        regs.rip
    );

    // Register write and read-back, then restore.
    let mut changed = regs;
    changed.r15 = 0xdead_beef_cafe_1234;
    changed.rbx = 0x1111_2222_3333_4444;
    dom.set_regs(0, &changed).expect("set_regs");
    let back = dom.regs(0).expect("regs again");
    assert_eq!(back.r15, changed.r15);
    assert_eq!(back.rbx, changed.rbx);
    assert_eq!(back.rip, regs.rip);
    dom.set_regs(0, &regs).expect("restore regs");
    assert_eq!(dom.regs(0).expect("regs").r15, regs.r15);

    // Virtual read of a buffer with known contents.
    let buf_va = sym(&dom, "known_buffer");
    let mut buf = [0u8; 64];
    dom.read_virt(buf_va, &mut buf).expect("read known_buffer");
    assert_eq!(&buf, KNOWN_BUFFER);
    let counter_va = sym(&dom, "known_counter");
    assert_eq!(
        dom.read_u64(counter_va).expect("known_counter"),
        0,
        "not run yet"
    );

    // Our translation agrees with libxenctrl's page walk (where it has one:
    // libxenctrl refuses HVM vCPUs without paging).
    let t = dom.translate(0, buf_va).expect("translate");
    match xen.ctrl().translate_foreign_address(dom.id(), 0, buf_va) {
        Ok(frame) => assert_eq!(frame, t.pa >> 12, "frame of known_buffer"),
        Err(e) => eprintln!("{mode}: xc_translate_foreign_address: {e} (not compared)"),
    }
    let mut phys = [0u8; 64];
    dom.read_phys(t.pa, &mut phys).expect("read_phys");
    assert_eq!(&phys, KNOWN_BUFFER);

    // Write across a page boundary inside the image, read back, restore.
    let start = syms_image_boundary(&mut dom);
    let mut orig = [0u8; 16];
    dom.read_virt(start, &mut orig)
        .expect("read across boundary");
    let pattern: Vec<u8> = (0..16u8).map(|i| i ^ 0xa5).collect();
    dom.write_virt(start, &pattern)
        .expect("write across boundary");
    let mut again = [0u8; 16];
    dom.read_virt(start, &mut again).expect("read back");
    assert_eq!(&again[..], &pattern[..]);
    // Each half through its own translation.
    let lo = dom.translate(0, start).expect("lo").pa;
    let hi = dom.translate(0, start + 8).expect("hi").pa;
    let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
    dom.read_phys(lo, &mut a).expect("lo phys");
    dom.read_phys(hi, &mut b).expect("hi phys");
    assert_eq!(&a[..], &pattern[..8]);
    assert_eq!(&b[..], &pattern[8..]);
    dom.write_virt(start, &orig).expect("restore");

    // Disassembly of a known function starts at it.
    let tick = sym(&dom, "known_tick");
    let insns = dom.disassemble(tick, 3).expect("disassemble");
    assert_eq!(insns.len(), 3);
    assert_eq!(insns[0].0, tick);

    // The guest runs to its end once resumed (and released from `xl create -p`).
    dom.resume().expect("resume");
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    assert_clean_exit(wait_shutdown(&mut dom));
}

/// A virtual address 8 bytes before a page boundary, with both pages mapped
/// (inside the guest's data, which is mapped contiguously).
fn syms_image_boundary(dom: &mut Domain) -> u64 {
    let counter = sym(dom, "known_counter");
    let buffer = sym(dom, "known_buffer");
    for base in [counter, buffer] {
        for cand in [(base & !0xfff) + 0x1000, base & !0xfff] {
            if cand > 0x100000
                && dom.translate(0, cand - 8).is_ok()
                && dom.translate(0, cand).is_ok()
            {
                return cand - 8;
            }
        }
    }
    panic!("no mapped page boundary near known_counter/known_buffer");
}

mode_tests!(inspect: inspect_hvm = "hvm", inspect_pvh = "pvh", inspect_pv = "pv");

/// Breakpoints: hit counts, arguments, stepping, register changes that alter
/// the guest's result, conditions, and a clean run to the end.
fn breakpoints(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", mode);
    let mut dom = g.attach(&xen);
    let tick = sym(&dom, "known_tick");
    let bp = match dom.add_breakpoint_at("known_tick") {
        Ok(bp) => bp,
        Err(e @ Error::Unsupported { .. }) if mode == "pv" => {
            let host = xen.host_caps().expect("caps");
            assert!(!host.gdbsx, "gdbsx hypervisor but: {e}");
            let text = e.to_string();
            assert!(
                text.contains("CONFIG_GDBSX") && text.contains("--xen debug"),
                "{text}"
            );
            eprintln!("SKIP pv breakpoints: {text}");
            return;
        }
        Err(e) => panic!("add_breakpoint_at(known_tick): {e}"),
    };
    let kind = dom.breakpoint_kind().expect("kind");
    eprintln!("{mode}: breakpoint instruction {kind:?}");
    let opcode = match kind {
        BreakpointInsnKind::Int3 => 0xCC,
        BreakpointInsnKind::Icebp => 0xF1,
    };
    // The planted byte is in memory; virtual reads and the disassembler hide it.
    let pa = dom.translate(0, tick).expect("translate").frame() + (tick & 0xfff);
    let mut byte = [0u8];
    dom.read_phys(pa, &mut byte).expect("read bp byte");
    assert_eq!(byte[0], opcode);
    let mut seen = [0u8];
    dom.read_virt(tick, &mut seen)
        .expect("read through the breakpoint");
    assert_ne!(seen[0], opcode, "read_virt shows the original byte");
    let dis = dom.disassemble(tick, 1).expect("disasm");
    assert!(
        !dis[0].2.contains("int") && !dis[0].2.contains("icebp"),
        "{dis:?}"
    );

    let compute = sym(&dom, "known_compute");
    let bp_compute = dom.add_breakpoint(compute).expect("bp known_compute");
    let counter_va = sym(&dom, "known_counter");

    // The guest was created paused: let it go.
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");

    let mut started = Instant::now();
    for i in 0..10u64 {
        if i == 1 {
            started = Instant::now(); // after boot and the 3 steps
        }
        let ev = dom.wait_event(WAIT).expect("wait");
        let Event::Breakpoint {
            vcpu,
            id,
            addr,
            hits,
        } = ev
        else {
            panic!("{mode}: expected known_tick hit {i}, got {ev:?}");
        };
        assert_eq!((id, addr, hits), (bp, tick, i + 1));
        let r = dom.regs(vcpu).expect("regs at hit");
        assert_eq!(r.rip, tick, "RIP is the breakpoint address");
        assert_eq!(r.rdi, i, "known_tick(i) argument");
        assert_eq!(
            dom.read_u64(counter_va).expect("counter"),
            i,
            "counter before the call"
        );
        if i == 0 {
            step_three(&mut dom, vcpu, tick);
        }
        dom.resume().expect("resume");
    }
    eprintln!(
        "{mode}: {:?} a hit (stop, read registers and memory, step over, resume)",
        started.elapsed() / 9
    );
    assert_eq!(dom.breakpoint_hits(bp).expect("hits"), 10);
    dom.remove_breakpoint(bp).expect("remove");
    dom.read_virt(tick, &mut byte).expect("read restored");
    assert_ne!(byte[0], opcode, "original byte restored");

    // known_compute(3, 4): change a to 5 -> 5 * 7 + 4 = 39.
    let ev = dom.wait_event(WAIT).expect("wait compute");
    assert!(
        matches!(ev, Event::Breakpoint { id, .. } if id == bp_compute),
        "{ev:?}"
    );
    let mut r = dom.regs(0).expect("regs");
    assert_eq!((r.rdi, r.rsi), (3, 4));
    r.rdi = 5;
    dom.set_regs(0, &r).expect("set rdi");
    let check = dom
        .add_breakpoint_at("known_checkpoint")
        .expect("bp checkpoint");
    dom.resume().expect("resume");
    let ev = dom.wait_event(WAIT).expect("wait checkpoint");
    assert!(
        matches!(ev, Event::Breakpoint { id, .. } if id == check),
        "{ev:?}"
    );
    let result = dom.read_u64(sym(&dom, "known_result")).expect("result");
    assert_eq!(result, 39, "the register change reached the guest");
    assert_eq!(dom.read_u64(counter_va).expect("counter"), 10);
    dom.resume().expect("resume");
    assert_clean_exit(wait_shutdown(&mut dom));
    let log = g.console_after("EXIT");
    assert!(
        log.contains("result=39") && log.contains("EXIT 39"),
        "console of {}:\n{log}",
        g.name()
    );
}

/// Three single steps from the breakpoint at the start of `known_tick`.
fn step_three(dom: &mut Domain, vcpu: u32, tick: u64) {
    let mut last = tick;
    for n in 0..3 {
        let before = dom.regs(vcpu).expect("regs");
        let ev = dom.step(vcpu).expect("step");
        let Event::Step { rip, .. } = ev else {
            panic!("expected a step, got {ev:?}");
        };
        let after: Registers = dom.regs(vcpu).expect("regs after step");
        assert_eq!(after.rip, rip);
        assert_ne!(rip, last, "step {n} moved RIP");
        assert_eq!(after.rflags & RFLAGS_TF, 0, "TF hidden after step {n}");
        let len = dom.disassemble(before.rip, 1).expect("disasm")[0].1 as u64;
        let (func, _) = dom
            .symbols()
            .expect("syms")
            .symbolize(rip)
            .map(|(s, o)| (s.name.clone(), o))
            .unwrap_or_default();
        // Straight-line code at the start of known_tick: RIP advances by the
        // instruction length (or leaves through a call/jump).
        if func == "known_tick" {
            assert!(rip == before.rip + len || rip != before.rip, "step {n}");
        }
        last = rip;
    }
}

mode_tests!(breakpoints: breakpoints_hvm = "hvm", breakpoints_pvh = "pvh", breakpoints_pv = "pv");

/// A condition filters stops; hits still count every call.
#[test]
fn conditional_breakpoint_hvm() {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", "hvm");
    let mut dom = g.attach(&xen);
    let bp = dom
        .add_breakpoint_if(sym(&dom, "known_tick"), |r| r.rdi == 7)
        .expect("conditional bp");
    xen.ctrl().domain_unpause(dom.id()).expect("unpause");
    let ev = dom.wait_event(WAIT).expect("wait");
    assert!(matches!(ev, Event::Breakpoint { hits: 8, .. }), "{ev:?}");
    assert_eq!(dom.regs(0).expect("regs").rdi, 7);
    dom.resume().expect("resume");
    assert_clean_exit(wait_shutdown(&mut dom));
    assert_eq!(dom.breakpoint_hits(bp).expect("hits"), 10);
}

/// Adds a breakpoint at `known_tick`; false (the test `what` is skipped,
/// with a SKIP line) where the hypervisor has no PV breakpoints.
fn tick_breakpoint(dom: &mut Domain, mode: &str, what: &str) -> bool {
    let Err(e) = dom.add_breakpoint_at("known_tick") else {
        return true;
    };
    assert!(
        mode == "pv" && matches!(e, Error::Unsupported { .. }),
        "{e}"
    );
    eprintln!("SKIP {mode} {what}: {e}");
    false
}

/// A harness that vanishes without detaching (HVM: ring active with a vCPU
/// waiting for an answer; PV: debugger pause and debugging on; both:
/// breakpoint bytes planted, domain paused) is repaired by the next attach,
/// and the guest then runs to its normal end.
fn recovers_from_abandoned_attach(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", mode);
    let opcode;
    {
        let mut dom = g.attach(&xen);
        if !tick_breakpoint(&mut dom, mode, "recovery") {
            return;
        }
        opcode = match dom.breakpoint_kind().expect("kind") {
            BreakpointInsnKind::Int3 => 0xCC,
            BreakpointInsnKind::Icebp => 0xF1,
        };
        dom.add_breakpoint_at("known_checkpoint")
            .expect("bp checkpoint");
        xen.ctrl()
            .domain_unpause(dom.id())
            .expect("unpause created guest");
        let ev = dom.wait_event(WAIT).expect("run to bp");
        assert!(matches!(ev, Event::Breakpoint { .. }), "{ev:?}");
        // Vanish: no detach, no Drop.
        std::mem::forget(dom);
    }
    let info = xen.find(g.name()).expect("still there").info;
    assert!(info.paused, "abandoned domain is left paused");
    assert_eq!(
        attach_raw_peek(&xen, &g),
        opcode,
        "breakpoint left planted by the abandoned attach"
    );

    // The next attach repairs the domain: bytes restored, ring replaced and
    // the waiting vCPU released (HVM) or debugging off (PV), stale pauses
    // undone. The guest finishes.
    let mut dom = g.attach(&xen);
    assert_clean_exit(wait_shutdown(&mut dom));
    g.assert_known_finished("guest did not finish normally after recovery");
}

mode_tests!(recovers_from_abandoned_attach:
    recovers_from_abandoned_attach_hvm = "hvm",
    recovers_from_abandoned_attach_pv = "pv",
);

/// First byte of known_tick read through libxenforeignmemory directly,
/// without attaching (attaching would repair the domain).
fn attach_raw_peek(xen: &Xen, g: &Guest) -> u8 {
    let syms = xenprobe::vmi::Symbols::load(g.image()).expect("symbols");
    let tick = syms.require("known_tick").expect("known_tick");
    let domid = xen.find(g.name()).expect("find").domid;
    raw_peek(xen, domid, tick, 1)[0]
}

/// Detaching while stopped (on a breakpoint, mid-step) restores the bytes,
/// answers the pending event, drops the ring and lets the guest finish.
fn detach_while_stopped(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", mode);
    let mut dom = g.attach(&xen);
    if !tick_breakpoint(&mut dom, mode, "detach") {
        return;
    }
    dom.add_breakpoint_at("known_compute").expect("bp compute");
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    let ev = dom.wait_event(WAIT).expect("wait");
    assert!(matches!(ev, Event::Breakpoint { hits: 1, .. }), "{ev:?}");
    dom.step(0).expect("step");
    dom.detach().expect("detach");
    g.assert_known_finished("guest did not finish normally after detach");
}

mode_tests!(detach_while_stopped: detach_while_stopped_pvh = "pvh", detach_while_stopped_pv = "pv");

/// Log-dirty reports the page the guest writes (known_counter) and not a
/// page it only reads (known_buffer).
fn log_dirty(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", mode);
    let mut dom = g.attach(&xen);
    let mut track = match dom.track_dirty() {
        Ok(t) => t,
        Err(e @ Error::Unsupported { .. }) => {
            assert!(
                mode == "pv" && !xen.host_caps().expect("caps").shadow,
                "{e}"
            );
            assert!(e.to_string().contains("shadow paging"), "{e}");
            eprintln!("SKIP {mode} log-dirty: {e}");
            return;
        }
        Err(e) => panic!("track_dirty: {e}"),
    };
    let frame_of = |dom: &mut Domain, name: &str| -> u64 {
        let va = sym(dom, name);
        if mode == "pv" {
            va >> 12 // PV bitmap is by pseudo-physical frame; the guest has virtual == pseudo-physical
        } else {
            dom.translate(0, va).expect("translate").pa >> 12
        }
    };
    let counter = frame_of(&mut dom, "known_counter");
    let buffer = frame_of(&mut dom, "known_buffer");
    track.clean().expect("clean");
    let bp = dom.add_breakpoint_at("known_checkpoint");
    let bp_ok = bp.is_ok();
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    if bp_ok {
        let ev = dom.wait_event(WAIT).expect("wait checkpoint");
        assert!(matches!(ev, Event::Breakpoint { .. }), "{ev:?}");
    } else {
        // PV on a hypervisor without gdbsx: stop it by pausing a little later.
        std::thread::sleep(Duration::from_millis(200));
        dom.pause().expect("pause");
    }
    let dirty = track.peek().expect("peek");
    assert!(
        dirty.contains(&counter),
        "counter frame {counter:#x} not in {dirty:x?}"
    );
    assert!(
        !dirty.contains(&buffer),
        "read-only buffer frame {buffer:#x} reported dirty"
    );
    drop(track);
    dom.resume().expect("resume");
    assert_clean_exit(wait_shutdown(&mut dom));
}

mode_tests!(log_dirty: log_dirty_hvm = "hvm", log_dirty_pv = "pv");

/// Helper process for `ctrl_c_restores_guest`: attaches, stops at a
/// breakpoint and sleeps until interrupted.
#[test]
#[ignore = "helper run by ctrl_c_restores_guest in a child process"]
fn ctrl_c_child() {
    let Ok(name) = std::env::var("XENPROBE_TEST_GUEST") else {
        eprintln!("ctrl_c_child is a helper of ctrl_c_restores_guest: nothing to do on its own");
        return;
    };
    let xen = Xen::open().expect("open");
    xenprobe::vmi::cleanup::restore_on_ctrl_c().expect("handler");
    let mut dom = Domain::attach(&xen, name.as_str()).expect("attach");
    dom.load_symbols(guests_dir().join("known-hvm"))
        .expect("symbols");
    dom.add_breakpoint_at("known_tick").expect("bp");
    ready_at_breakpoint(&xen, dom)
}

/// A child test's end: unpauses the created guest, waits for a breakpoint
/// of `dom`, prints READY (what [`spawn_child`] waits for) and sleeps until
/// the parent stops the process.
fn ready_at_breakpoint(xen: &Xen, mut dom: Domain) -> ! {
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    let ev = dom.wait_event(WAIT).expect("wait");
    assert!(matches!(ev, Event::Breakpoint { .. }), "{ev:?}");
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts this binary's ignored test `test` in a child process with the
/// environment `envs`, and reads its output until it prints READY (false:
/// it ended without).
fn spawn_child(test: &str, envs: &[(&str, &str)]) -> (Child, bool) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", test, "--ignored", "--nocapture"])
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.contains("READY"));
    (child, ready)
}

/// SIGINT to a process stopped at a breakpoint: the handler repairs the
/// domain (bytes, ring, waiting vCPU, pauses) and the guest finishes.
#[test]
fn ctrl_c_restores_guest() {
    let Some(_xen) = xen() else { return };
    let g = Guest::create("vmi", "hvm");
    let (mut child, ready) = spawn_child("ctrl_c_child", &[("XENPROBE_TEST_GUEST", g.name())]);
    assert!(ready, "child did not reach the breakpoint");
    let t0 = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("child exit");
    eprintln!("child exited {status:?} {:?} after SIGINT", t0.elapsed());
    assert_eq!(status.code(), Some(130), "handler exits with 130");
    g.assert_known_finished("guest did not finish normally after Ctrl-C");
}

/// Snapshot at the first `known_tick`, run to `known_checkpoint`, restore,
/// three times: memory (guest writes and the harness's own), registers and
/// breakpoint bytes come back; afterwards the guest still finishes normally.
fn snapshot_restore(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("vmi", mode);
    let mut dom = g.attach(&xen);
    if mode == "pv" {
        // PV snapshots (by machine frame): restore rounds with guest runs
        // are in live_snapshot::restore_rounds_pv; here take, restore, check.
        dom.pause().expect("pause");
        let info = dom.take_snapshot().expect("PV snapshot");
        assert!(info.frames >= 8000, "a 32 MiB guest: {info:?}");
        dom.restore_snapshot().expect("PV restore");
        let check = dom.check_snapshot().expect("check");
        assert!(check.exact(), "{check:?}");
        return;
    }
    let tick = sym(&dom, "known_tick");
    let mut orig = [0u8];
    dom.read_virt(tick, &mut orig).expect("orig byte");
    let bp_tick = dom.add_breakpoint(tick).expect("bp tick");
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    let ev = dom.wait_event(WAIT).expect("wait tick");
    assert!(
        matches!(ev, Event::Breakpoint { id, .. } if id == bp_tick),
        "{ev:?}"
    );
    let info = dom.take_snapshot().expect("take snapshot");
    eprintln!(
        "{mode}: snapshot of {} frames in {:?}",
        info.frames, info.took
    );
    assert!(info.frames >= 8000, "a 32 MiB guest has about 8192 frames");
    let regs0 = dom.regs(0).expect("regs at snapshot");
    assert_eq!(regs0.rip, tick);
    dom.remove_breakpoint(bp_tick).expect("remove tick bp");
    let check = dom
        .add_breakpoint_at("known_checkpoint")
        .expect("bp checkpoint");
    let counter = sym(&dom, "known_counter");
    let result = sym(&dom, "known_result");
    for round in 0..3 {
        dom.resume().expect("resume");
        let ev = dom.wait_event(WAIT).expect("wait checkpoint");
        assert!(
            matches!(ev, Event::Breakpoint { id, .. } if id == check),
            "round {round}: {ev:?}"
        );
        assert_eq!(dom.read_u64(counter).expect("counter"), 10);
        assert_eq!(dom.read_u64(result).expect("result"), 25);
        dom.write_virt(result, &777u64.to_le_bytes())
            .expect("harness write");
        let t0 = Instant::now();
        let stats = dom.restore_snapshot().expect("restore");
        eprintln!(
            "{mode}: round {round}: restore {stats:?} in {:?}",
            t0.elapsed()
        );
        assert!(stats.written >= 1 && stats.dirty >= 1, "{stats:?}");
        assert_eq!(dom.read_u64(counter).expect("counter"), 0, "round {round}");
        assert_eq!(dom.read_u64(result).expect("result"), 0, "round {round}");
        assert_eq!(
            dom.regs(0).expect("regs"),
            regs0,
            "round {round}: registers"
        );
        let mut b = [0u8];
        dom.read_virt(tick, &mut b).expect("tick byte");
        assert_eq!(b[0], orig[0], "removed breakpoint stays removed");
    }
    assert_eq!(dom.breakpoint_hits(check).expect("hits"), 3);
    dom.remove_breakpoint(check).expect("remove");
    dom.resume().expect("resume");
    assert_clean_exit(wait_shutdown(&mut dom));
    g.assert_known_finished("guest did not finish normally after restores");
}

mode_tests!(snapshot_restore:
    snapshot_restore_hvm = "hvm",
    snapshot_restore_pvh = "pvh",
    snapshot_restore_pv = "pv",
);

/// Bytes of the guest image at virtual address `va` (from its ELF program
/// headers: the code as built, without any breakpoint).
fn elf_bytes(image: &std::path::Path, va: u64, len: usize) -> Vec<u8> {
    use object::{Object, ObjectSegment};
    let data = std::fs::read(image).expect("read guest image");
    let file = object::File::parse(&*data).expect("parse guest image");
    for seg in file.segments() {
        let (start, size) = (seg.address(), seg.size());
        if va >= start && va + len as u64 <= start + size {
            let bytes = seg
                .data_range(va, len as u64)
                .expect("segment data")
                .expect("in segment");
            return bytes.to_vec();
        }
    }
    panic!("{va:#x} is in no segment of {}", image.display());
}

/// `len` bytes at virtual address `va` of a guest read through
/// libxenforeignmemory directly, without attaching (attaching repairs).
fn raw_peek(xen: &Xen, domid: u32, va: u64, len: usize) -> Vec<u8> {
    let frame = xen
        .ctrl()
        .translate_foreign_address(domid, 0, va)
        .expect("translate");
    let fmem = xenprobe::xen::ForeignMemory::open().expect("fmem");
    let map = fmem
        .map(domid, xenprobe::xen::Prot::Read, &[frame])
        .expect("map");
    let mut b = vec![0u8; len];
    map.read((va & 0xfff) as usize, &mut b).expect("read");
    b
}

/// Helper process for `sigkill_*`: attaches, plants breakpoints on
/// `known_tick` and `known_checkpoint`, stops at the first hit (domain
/// paused, vCPU waiting on the vm_event ring or the debugger pause) and
/// sleeps until killed.
#[test]
#[ignore = "helper run by the sigkill_* tests in a child process"]
fn sigkill_child() {
    let (Ok(name), Ok(mode)) = (
        std::env::var("XENPROBE_TEST_GUEST"),
        std::env::var("XENPROBE_TEST_MODE"),
    ) else {
        eprintln!("sigkill_child is a helper of the sigkill_* tests: nothing to do on its own");
        return;
    };
    let xen = Xen::open().expect("open");
    let mut dom = Domain::attach(&xen, name.as_str()).expect("attach");
    dom.load_symbols(guests_dir().join(format!("known-{mode}")))
        .expect("symbols");
    dom.add_breakpoint_at("known_tick").expect("bp tick");
    dom.add_breakpoint_at("known_checkpoint")
        .expect("bp checkpoint");
    ready_at_breakpoint(&xen, dom)
}

/// SIGKILL a harness process that holds breakpoints, the vm_event ring (PV:
/// debugging on) and the guest paused at a hit; the next attach must leave
/// the guest clean: unpaused, code bytes equal to the ELF's, no ring behind
/// (a new monitor can be enabled) or PV debugging off, and the guest runs
/// to its normal exit. The guest is created with `on_poweroff="preserve"`
/// so that its memory can still be read after it exits.
fn sigkill_then_attach(mode: &str) {
    let Some(xen) = xen() else { return };
    if mode == "pv" {
        let caps =
            xenprobe::vmi::Capabilities::new(GuestKind::Pv, xen.host_caps().expect("host caps"));
        if let Err(e) = caps.pv_debugging() {
            eprintln!("SKIP pv sigkill: {e}");
            return;
        }
    }
    let g = Guest::create_with("vmi", mode, &["on_poweroff=\"preserve\""]);
    let syms = xenprobe::vmi::Symbols::load(g.image()).expect("symbols");
    let code: Vec<(u64, Vec<u8>)> = ["known_tick", "known_checkpoint"]
        .iter()
        .map(|s| {
            let va = syms.require(s).expect("symbol");
            (va, elf_bytes(g.image(), va, 16))
        })
        .collect();
    let (mut child, ready) = spawn_child(
        "sigkill_child",
        &[
            ("XENPROBE_TEST_GUEST", g.name()),
            ("XENPROBE_TEST_MODE", mode),
        ],
    );
    assert!(ready, "{mode}: child did not reach the breakpoint");
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL
    let status = child.wait().expect("child exit");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc_sigkill()), "{status:?}");

    // What the killed process left behind.
    let domid = xen.find(g.name()).expect("still there").domid;
    let info = xen.ctrl().domain_info(domid).expect("info");
    assert!(info.paused, "{mode}: killed harness left the domain paused");
    let (tick, tick_code) = &code[0];
    let left = raw_peek(&xen, domid, *tick, 1)[0];
    assert_ne!(left, tick_code[0], "{mode}: breakpoint byte left planted");
    if mode == "pv" {
        assert!(info.debugged, "{mode}: PV debugging left on");
    } else {
        let e = xenprobe::xen::MonitorRing::enable(xen.ctrl(), domid)
            .expect_err("the killed harness's ring is still there");
        assert_eq!(e.raw_errno(), Some(libc_ebusy()), "{mode}: {e}");
    }

    // The next attach repairs it.
    let mut dom = g.attach(&xen);
    let info = dom.info().expect("info after attach");
    assert!(
        !info.paused || info.shutdown,
        "{mode}: still paused after recovery: {info:?}"
    );
    let reason = wait_shutdown(&mut dom);
    assert_eq!(reason, ShutdownReason::Poweroff, "{mode}: normal exit");
    for (va, want) in &code {
        assert_eq!(
            &raw_peek(&xen, domid, *va, want.len()),
            want,
            "{mode}: code at {va:#x} equals the ELF's"
        );
    }
    let info = xen.ctrl().domain_info(domid).expect("info after exit");
    if mode == "pv" {
        assert!(!info.debugged, "{mode}: PV debugging still on");
    } else {
        let ring = xenprobe::xen::MonitorRing::enable(xen.ctrl(), domid);
        assert!(
            ring.is_ok(),
            "{mode}: a new monitor ring cannot be enabled: {:?}",
            ring.err()
        );
    }
    dom.detach().expect("detach");
    g.assert_known_finished(&format!(
        "{mode}: guest did not finish normally after the SIGKILL"
    ));
}

fn libc_sigkill() -> i32 {
    9
}

fn libc_ebusy() -> i32 {
    16
}

mode_tests!(sigkill_then_attach:
    sigkill_then_attach_hvm = "hvm",
    sigkill_then_attach_pvh = "pvh",
    sigkill_then_attach_pv = "pv",
);

/// PV: hash of the guest image's loaded segments (code, read-only data,
/// data, bss with the boot stack) as they are in the running guest's
/// memory, read page by page through libxenforeignmemory without pausing it.
fn image_hash(xen: &Xen, domid: u32, image: &std::path::Path) -> (u64, usize) {
    use object::{Object, ObjectSegment};
    let data = std::fs::read(image).expect("read guest image");
    let file = object::File::parse(&*data).expect("parse guest image");
    let fmem = xenprobe::xen::ForeignMemory::open().expect("fmem");
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut pages = 0;
    for seg in file.segments() {
        let (start, end) = (seg.address() & !0xfff, seg.address() + seg.size());
        let mut va = start;
        while va < end {
            // The stack guard page (and page 0) are left unmapped by the guest.
            if let Ok(frame) = xen.ctrl().translate_foreign_address(domid, 0, va) {
                let map = fmem
                    .map(domid, xenprobe::xen::Prot::Read, &[frame])
                    .expect("map");
                let mut page = vec![0u8; 4096];
                map.read(0, &mut page).expect("read");
                h = (h ^ va).wrapping_mul(0x100_0000_01b3);
                for b in page {
                    h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
                pages += 1;
            }
            va += 4096;
        }
    }
    (h, pages)
}

/// A running guest's memory as the caps test compares it.
enum Memory {
    /// PVH/HVM: every guest frame ([`Domain::memory_image`]).
    All(MemoryImage),
    /// PV: the guest image's frames ([`image_hash`]).
    Image((u64, usize)),
}

/// Copies a running guest's memory: PVH/HVM all of it, paused for the copy
/// (attach, pause, copy, resume, detach); PV its image, without pausing.
fn memory_of(xen: &Xen, g: &Guest, domid: u32) -> Memory {
    if g.mode() == "pv" {
        return Memory::Image(image_hash(xen, domid, g.image()));
    }
    let mut dom = g.attach(xen);
    dom.pause().expect("pause");
    let image = dom.memory_image().expect("memory image");
    dom.resume().expect("resume");
    dom.detach().expect("detach");
    eprintln!("{}: {} guest frames copied", g.mode(), image.frames());
    Memory::All(image)
}

/// `xenprobe caps DOMAIN` on a running guest (the `known` guest idling in
/// its `known_spin` loop, which writes nothing): the guest stays unpaused,
/// its memory is unchanged, and it still runs: released from the loop it
/// finishes with its normal exit. PVH/HVM: every guest frame is compared,
/// as live_snapshot does (a frame changed outside the guest's image would
/// be something else writing guest memory: the lab's two-vCPU dom0 did,
/// see docs/lab.md "The lab's CPU configuration"). PV: only the image is hashed:
/// `memory_image` cannot copy PV guests (machine frames, no p2m), and the
/// PV snapshot, which covers every frame the domain owns, switches log-dirty
/// on where the hypervisor has it, which `caps` itself probes (switching it
/// on and off); the image holds everything the guest itself writes.
fn caps_on_running_guest(mode: &str) {
    let Some(xen) = xen() else { return };
    let spin_arg = ["extra=\"known.spin=1\""];
    let g = Guest::create_with("vmi", mode, if mode == "hvm" { &[] } else { &spin_arg });
    let domid = xen.find(g.name()).expect("find").domid;
    if mode == "hvm" {
        // No command line for HVM: set the variable before it runs.
        let mut dom = g.attach(&xen);
        dom.write_virt(sym(&dom, "known_spin"), &1u64.to_le_bytes())
            .expect("set known_spin");
        dom.detach().expect("detach");
    }
    xen.ctrl()
        .domain_unpause(domid)
        .expect("unpause created guest");
    let deadline = Instant::now() + 2 * WAIT;
    while !g.console().contains("KNOWN spinning") {
        assert!(
            Instant::now() < deadline,
            "{mode}: guest never started spinning"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300)); // console drained
    let before = memory_of(&xen, &g, domid);
    assert!(!xen.ctrl().domain_info(domid).expect("info").paused);

    let out = Command::new(xenprobe_tests::xenprobe_bin())
        .args(["caps", g.name(), "--json"])
        .output()
        .expect("run xenprobe caps");
    assert!(
        out.status.success(),
        "{mode}: xenprobe caps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("caps JSON");
    let left = &report["left"];
    assert_eq!(left["paused_before"], false, "{left}");
    assert_eq!(left["paused_after"], false, "{left}");
    assert_eq!(left["hash_before"], left["hash_after"], "{left}");
    let rows = report["guests"][0]["features"]
        .as_array()
        .expect("features");
    assert!(rows.len() >= 8, "{mode}: {rows:?}");

    let info = xen.ctrl().domain_info(domid).expect("info");
    assert!(!info.paused && !info.shutdown, "{mode}: {info:?}");
    let mut dom = match before {
        Memory::All(image) => {
            let mut dom = g.attach(&xen);
            dom.pause().expect("pause");
            same_memory(&dom, &image, &format!("{mode}: after xenprobe caps"));
            dom.resume().expect("resume");
            dom
        }
        Memory::Image(hash) => {
            assert_eq!(
                image_hash(&xen, domid, g.image()),
                hash,
                "{mode}: the guest image in memory changed"
            );
            g.attach(&xen)
        }
    };
    // Still alive: let it leave the loop and finish.
    dom.write_virt(sym(&dom, "known_spin"), &0u64.to_le_bytes())
        .expect("clear known_spin");
    assert_clean_exit(wait_shutdown(&mut dom));
    let log = g.console_after("EXIT");
    assert!(log.contains("EXIT 25"), "{mode}: after caps:\n{log}");
}

mode_tests!(caps_on_running_guest:
    caps_on_running_guest_hvm = "hvm",
    caps_on_running_guest_pvh = "pvh",
    caps_on_running_guest_pv = "pv",
);
