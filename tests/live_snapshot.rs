//! Live tests of snapshots through the engine's public API: many restore
//! rounds compared with the snapshot (all guest frames and
//! registers; memory is compared as a full copy of all guest frames, which
//! is stronger than a hash and, in the unoptimised test build, much
//! faster), snapshots saved to a file and loaded into a recreated
//! domain, and the VM-fork backend (skipped with its reason where the
//! hypervisor cannot fork). Run inside dom0 (the cargo runner forwards
//! `live_*` binaries to the lab).
//!
//! `XENPROBE_SNAPSHOT_ROUNDS` sets the number of restore rounds (default
//! 50, see [`DEFAULT_ROUNDS`]; 1000 for the full count); `XENPROBE_SNAPSHOT_COMPARE_EVERY` how often all of memory is
//! compared (default every 25 rounds, and always after the last).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xenprobe::vmi::{fork, Domain, Error, MemoryImage, Registers, ShutdownReason, Xen};
use xenprobe_tests::{
    env_num, mode_tests, same_memory, sym, wait_breakpoint, wait_shutdown, xen, Guest,
};

/// Restore rounds by default: 1,000 take minutes in the emulated lab under
/// load (~0.1-0.4 s a round); `XENPROBE_SNAPSHOT_ROUNDS=1000` runs the full count.
const DEFAULT_ROUNDS: u64 = 50;

/// Runs a fresh guest to the first `known_tick` (breakpoint removed there)
/// and returns it stopped, with a breakpoint on `known_checkpoint`.
fn to_first_tick(xen: &Xen, g: &Guest) -> Domain {
    let mut dom = g.attach(xen);
    let tick = dom.add_breakpoint_at("known_tick").expect("bp tick");
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    wait_breakpoint(&mut dom, "first known_tick");
    dom.remove_breakpoint(tick).expect("remove tick bp");
    dom
}

/// Snapshot at the first `known_tick`, then `rounds` times: run to
/// `known_checkpoint` (the guest wrote its counter, state, result and
/// stack), restore. Registers of every vCPU are compared with the snapshot's
/// after every restore, all guest frames every `compare_every`
/// rounds and after the last one; the guest then still finishes normally.
fn restore_rounds(mode: &str) {
    let Some(xen) = xen() else { return };
    let rounds = env_num("XENPROBE_SNAPSHOT_ROUNDS", DEFAULT_ROUNDS);
    let compare_every = env_num("XENPROBE_SNAPSHOT_COMPARE_EVERY", 25).max(1);
    let g = Guest::create("snap", mode);
    if mode == "pv" {
        pv_restore_rounds(&xen, &g, env_num("XENPROBE_SNAPSHOT_ROUNDS", PV_ROUNDS));
        return;
    }
    let mut dom = to_first_tick(&xen, &g);
    let info = dom.take_snapshot().expect("take snapshot");
    let check = dom
        .add_breakpoint_at("known_checkpoint")
        .expect("bp checkpoint");
    let vcpus = dom.max_vcpu().expect("vcpus") + 1;
    let regs0: Vec<Registers> = (0..vcpus).map(|v| dom.regs(v).expect("regs")).collect();
    let t = Instant::now();
    let mem0: MemoryImage = dom.memory_image().expect("memory");
    let hash_time = t.elapsed();
    eprintln!(
        "{mode}: snapshot of {} frames in {:?}; memory copy of {} frames in {hash_time:?}",
        info.frames,
        info.took,
        mem0.frames()
    );
    assert!(
        mem0.frames() as u64 >= dom.info().expect("info").nr_pages - 64,
        "the copy covers the guest's frames: {mem0:?}"
    );
    let counter = sym(&dom, "known_counter");
    let t0 = Instant::now();
    let mut hashed = 0;
    let mut dirty_max = 0;
    for round in 1..=rounds {
        dom.resume().expect("resume");
        wait_breakpoint(&mut dom, "known_checkpoint");
        if round == 1 {
            assert_eq!(dom.read_u64(counter).expect("counter"), 10, "guest ran");
            assert!(!dom.memory_image().expect("memory").diff(&mem0).is_empty());
        }
        let stats = dom.restore_snapshot().expect("restore");
        dirty_max = dirty_max.max(stats.restored);
        for (v, r0) in regs0.iter().enumerate() {
            let r = dom.regs(v as u32).expect("regs");
            assert_eq!(&r, r0, "{mode}: round {round}: registers of vCPU {v}");
        }
        if round % compare_every == 0 || round == rounds {
            same_memory(&dom, &mem0, &format!("{mode}: round {round}"));
            hashed += 1;
        }
    }
    let took = t0.elapsed();
    eprintln!(
        "{mode}: {rounds} rounds in {took:?} ({:?} a round; at most {dirty_max} frames restored; memory compared {hashed} times)",
        took / rounds.max(1) as u32
    );
    assert_eq!(dom.breakpoint_hits(check).expect("hits"), rounds);
    dom.remove_breakpoint(check).expect("remove");
    dom.resume().expect("resume");
    let reason = wait_shutdown(&mut dom);
    assert!(
        matches!(reason, ShutdownReason::Poweroff | ShutdownReason::Destroyed),
        "{reason:?}"
    );
    g.assert_known_finished("guest did not finish normally after the restores");
}

/// A snapshot saves every frame the domain owns: all of them without a
/// vm_event ring, all but the ring's frame (which Xen takes out of the
/// guest's physmap, but which still counts in the domain's pages) with one.
fn snapshot_frame_count(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("snap", mode);
    let mut dom = g.attach(&xen);
    dom.pause().expect("pause");
    let nr_pages = dom.info().expect("info").nr_pages as usize;
    let without = dom.take_snapshot().expect("take without a ring");
    let bp = dom.add_breakpoint_at("known_tick").expect("bp (ring on)");
    let with = dom.take_snapshot().expect("take with a ring");
    eprintln!(
        "{mode}: {nr_pages} pages; snapshot without a ring {} frames ({} zero), with a ring {}",
        without.frames, without.zero_frames, with.frames
    );
    assert_eq!(
        without.frames, nr_pages,
        "{mode}: every frame without a ring"
    );
    assert_eq!(
        with.frames + 1,
        nr_pages,
        "{mode}: all but the ring's frame"
    );
    assert!(
        without.zero_frames > without.frames / 2,
        "{mode}: a fresh guest is mostly zero pages: {without:?}"
    );
    dom.remove_breakpoint(bp).expect("remove");
    dom.drop_snapshot();
}

mode_tests!(snapshot_frame_count:
    snapshot_frame_count_pvh = "pvh",
    snapshot_frame_count_hvm = "hvm",
);

/// PV restore rounds by default (each checks all guest memory twice: about
/// 10 s a round in the loaded lab); `XENPROBE_SNAPSHOT_ROUNDS` overrides.
const PV_ROUNDS: u64 = 3;

/// PV snapshots work by machine frame and need no breakpoints, so this runs
/// on every hypervisor: the guest boots and spins (`known_spin`), the
/// snapshot is taken there; each round the guest runs a while, then the
/// harness scribbles over its data and stack and changes its registers
/// (the spinning guest itself writes nothing), the domain is restored, and
/// memory (every frame the domain owns) and registers are checked against
/// the snapshot. Finally the guest goes on from the snapshot and finishes
/// normally.
fn pv_restore_rounds(xen: &Xen, g: &Guest, rounds: u64) {
    let mut dom = g.attach(xen);
    dom.pause().expect("pause");
    let spin = sym(&dom, "known_spin");
    dom.write_virt(spin, &1u64.to_le_bytes())
        .expect("set known_spin");
    // Drop `xl create -p`'s pause: ours keeps the domain stopped.
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    dom.resume().expect("resume");
    let log = g.console_after("KNOWN spinning");
    assert!(log.contains("KNOWN spinning"), "guest did not boot:\n{log}");
    dom.pause().expect("pause");
    let regs0 = dom.regs(0).expect("regs");
    let info = dom.take_snapshot().expect("take PV snapshot");
    let nr_pages = dom.info().expect("info").nr_pages as usize;
    eprintln!(
        "pv: snapshot of {} frames ({} zero) of {nr_pages} in {:?}",
        info.frames, info.zero_frames, info.took
    );
    // Xen-heap frames shared with the guest (grant table) are the domain's
    // but not counted in its pages; shared info is left out.
    assert!(
        info.frames + 1 >= nr_pages,
        "every frame but shared info: {info:?}"
    );
    let check = dom.check_snapshot().expect("check");
    assert!(check.exact(), "fresh snapshot: {check:?}");
    let counter = sym(&dom, "known_counter");
    let result = sym(&dom, "known_result");
    let log_dirty = dom.capabilities().log_dirty().is_ok();
    eprintln!(
        "pv: restores by {}",
        if log_dirty {
            "log-dirty"
        } else {
            "comparing all frames (no PV log-dirty on this hypervisor)"
        }
    );
    let t0 = Instant::now();
    let mut restore_time = Duration::ZERO;
    // Where PV breakpoints work (gdbsx: the debug build), each run also
    // lets the guest itself write: it leaves its spin loop and runs to
    // `known_checkpoint` (counter, state, result, stack).
    let checkpoint = dom.add_breakpoint_at("known_checkpoint").ok();
    eprintln!(
        "pv: runs {}",
        if checkpoint.is_some() {
            "to known_checkpoint"
        } else {
            "in the spin loop (no PV breakpoints on this hypervisor)"
        }
    );
    for round in 1..=rounds {
        if checkpoint.is_some() {
            dom.write_virt(spin, &0u64.to_le_bytes())
                .expect("clear spin");
            dom.resume().expect("resume");
            wait_breakpoint(&mut dom, "known_checkpoint");
            assert_eq!(dom.read_u64(counter).expect("counter"), 10, "guest ran");
        } else {
            dom.resume().expect("resume");
            std::thread::sleep(Duration::from_millis(100));
            dom.pause().expect("pause");
        }
        dom.write_virt(counter, &round.to_le_bytes())
            .expect("scribble");
        dom.write_virt(result, &[0xa5; 8]).expect("scribble");
        dom.write_virt(regs0.rsp - 256, &[0x5a; 256])
            .expect("scribble on the stack");
        let mut r = dom.regs(0).expect("regs");
        r.rax ^= 0xdead;
        r.r12 = round;
        r.rip = regs0.rip + 1;
        dom.set_regs(0, &r).expect("set regs");
        let t = Instant::now();
        let stats = dom.restore_snapshot().expect("restore");
        restore_time += t.elapsed();
        assert_eq!(
            stats.cleaned, log_dirty,
            "round {round}: log-dirty restores where the hypervisor has it: {stats:?}"
        );
        assert!(
            stats.restored >= 2,
            "round {round}: the scribbled frames are restored: {stats:?}"
        );
        let check = dom.check_snapshot().expect("check");
        assert!(check.exact(), "pv: round {round}: {check:?}");
        assert_eq!(dom.regs(0).expect("regs"), regs0, "pv: round {round}");
        if round == 1 {
            eprintln!(
                "pv: round 1 restored {} frames; {} page-table frames differ in A/D bits only",
                stats.restored,
                check.frames_ad_only.len()
            );
        }
    }
    eprintln!(
        "pv: {rounds} rounds in {:?} ({:?} a round, incl. 100 ms of guest run; restore {:?})",
        t0.elapsed(),
        t0.elapsed() / rounds.max(1) as u32,
        restore_time / rounds.max(1) as u32
    );
    if let Some(bp) = checkpoint {
        assert_eq!(dom.breakpoint_hits(bp).expect("hits"), rounds);
        dom.remove_breakpoint(bp).expect("remove");
    }
    // The guest goes on from the snapshot, to the end.
    dom.write_virt(spin, &0u64.to_le_bytes())
        .expect("clear known_spin");
    dom.detach().expect("detach (resumes the guest)");
    g.assert_known_finished("guest did not finish normally after the restores");
}

mode_tests!(restore_rounds:
    restore_rounds_hvm = "hvm",
    restore_rounds_pvh = "pvh",
    restore_rounds_pv = "pv",
);

/// Save a snapshot file at the first `known_tick`, let the guest finish,
/// destroy it, recreate the domain from the same config, load the file:
/// registers and memory equal the saved ones, the guest reaches
/// `known_checkpoint` with the same memory as the original had there,
/// an in-memory restore brings it back, and it finishes with the same exit.
fn file_round_trip(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("snap", mode);
    let file = TempFile(std::env::temp_dir().join(format!("{}.xpsnap", g.name())));
    let path = &file.0;
    if mode == "pv" {
        let mut dom = g.attach(&xen);
        dom.pause().expect("pause");
        let e = dom.save_snapshot_file(path).expect_err("PV snapshot files");
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        eprintln!("SKIP pv snapshot files: {e}");
        return;
    }
    // Original domain: save at the first tick, then run to the checkpoint.
    let mut dom = to_first_tick(&xen, &g);
    let t = Instant::now();
    let meta = dom.save_snapshot_file(path).expect("save");
    eprintln!(
        "{mode}: saved {} frames to {} in {:?}",
        meta.frames,
        path.display(),
        t.elapsed()
    );
    let regs0 = dom.regs(0).expect("regs");
    let mem0 = dom.memory_image().expect("memory");
    dom.add_breakpoint_at("known_checkpoint").expect("bp");
    let mem0_bp = dom.memory_image().expect("memory");
    dom.resume().expect("resume");
    wait_breakpoint(&mut dom, "known_checkpoint (original)");
    let mem_check = dom.memory_image().expect("memory");
    dom.detach().expect("detach");
    // Detached, it may already have run to its end (on_poweroff="destroy").
    let _ = g.destroy();
    if let Some(p) = g.console_path() {
        let _ = std::fs::remove_file(p);
    }

    // A domain of another size or type is refused, nothing written.
    let other = Guest::create("snap", if mode == "hvm" { "pvh" } else { "hvm" });
    let mut od = other.attach(&xen);
    od.pause().expect("pause");
    let e = od
        .load_snapshot_file_renamed(path)
        .expect_err("other guest type");
    assert!(e.to_string().contains("refusing to load"), "{e}");
    drop(od);
    drop(other);

    // Recreated domain: load, compare, run.
    g.xl_create();
    let mut dom = g.attach(&xen);
    dom.pause().expect("pause");
    let t = Instant::now();
    let info = dom.load_snapshot_file(path).expect("load");
    eprintln!(
        "{mode}: loaded and took an in-memory snapshot of {} frames in {:?}",
        info.frames,
        t.elapsed()
    );
    assert_eq!(dom.regs(0).expect("regs"), regs0, "registers after load");
    same_memory(&dom, &mem0, "memory after load");
    dom.add_breakpoint_at("known_checkpoint").expect("bp");
    same_memory(&dom, &mem0_bp, "memory with the breakpoint");
    dom.resume().expect("resume");
    xen.ctrl()
        .domain_unpause(dom.id())
        .expect("unpause created guest");
    wait_breakpoint(&mut dom, "known_checkpoint (loaded)");
    same_memory(
        &dom,
        &mem_check,
        "the loaded guest reaches the checkpoint with the original's memory",
    );
    // Fast in-memory restores work on the loaded domain.
    dom.restore_snapshot().expect("restore");
    assert_eq!(dom.regs(0).expect("regs"), regs0);
    same_memory(&dom, &mem0_bp, "memory with the breakpoint");
    dom.resume().expect("resume");
    wait_breakpoint(&mut dom, "known_checkpoint (after restore)");
    let bps: Vec<_> = dom.breakpoints().into_iter().map(|b| b.id).collect();
    for id in bps {
        dom.remove_breakpoint(id).expect("remove");
    }
    dom.resume().expect("resume");
    let reason = wait_shutdown(&mut dom);
    assert!(
        matches!(reason, ShutdownReason::Poweroff | ShutdownReason::Destroyed),
        "{reason:?}"
    );
    g.assert_known_finished("loaded guest did not finish like the original");
}

/// A file removed on drop (snapshot files live in dom0's tmpfs, i.e. RAM).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

mode_tests!(file_round_trip:
    snapshot_file_round_trip_hvm = "hvm",
    snapshot_file_round_trip_pvh = "pvh",
    snapshot_file_round_trip_pv = "pv",
);

/// The two ways back to a saved state: log-dirty restore always, VM
/// forks where the hypervisor forks (Intel VT-x; elsewhere skipped with the
/// rule and Xen's own answer to a real fork attempt). Each brings the
/// workload's domain back to the snapshot's registers and memory.
fn backends(mode: &str) {
    let Some(xen) = xen() else { return };
    let g = Guest::create("snap", mode);
    let mut dom = to_first_tick(&xen, &g);
    dom.add_breakpoint_at("known_checkpoint").expect("bp");
    let regs0 = dom.regs(0).expect("regs");

    dom.take_snapshot().expect("take");
    exercise_backend("log-dirty", &mut restore_in_place, &mut dom, regs0);

    match fork::VmForkBackend::probe(&xen, &dom) {
        Err(e @ Error::Unsupported { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("Xen answered") || text.contains("PV"),
                "{text}"
            );
            eprintln!("SKIP {mode} VM-fork backend: {text}");
        }
        Err(e) => panic!("VM-fork probe failed unexpectedly: {e}"),
        Ok(()) => {
            let mut vf = fork::VmForkBackend::new(&xen);
            let child = vf.take(&mut dom).expect("fork");
            let mut cd = Domain::attach(&xen, child).expect("attach fork");
            cd.load_symbols(g.image()).expect("symbols");
            cd.add_breakpoint_at("known_checkpoint").expect("bp");
            exercise_backend("vm-fork", &mut |d| vf.restore(d), &mut cd, regs0);
        }
    }
    let bps: Vec<_> = dom.breakpoints().into_iter().map(|b| b.id).collect();
    for id in bps {
        dom.remove_breakpoint(id).expect("remove");
    }
    dom.resume().expect("resume");
    wait_shutdown(&mut dom);
}

/// The domain's own snapshot as the log-dirty backend restores it.
fn restore_in_place(dom: &mut Domain) -> Result<(), Error> {
    dom.pause()?;
    dom.restore_snapshot().map(|_| ())
}

fn exercise_backend(
    name: &str,
    restore: &mut dyn FnMut(&mut Domain) -> Result<(), Error>,
    dom: &mut Domain,
    regs0: Registers,
) {
    let mem0 = dom.memory_image().expect("memory");
    for round in 0..3 {
        dom.resume().expect("resume");
        wait_breakpoint(dom, "known_checkpoint");
        restore(dom).expect("restore");
        assert_eq!(dom.regs(0).expect("regs"), regs0, "{name}: round {round}");
        same_memory(dom, &mem0, &format!("{name}: round {round}"));
    }
}

mode_tests!(backends: snapshot_backends_hvm = "hvm", snapshot_backends_pvh = "pvh");
