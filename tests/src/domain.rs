//! Waits and checks on an attached [`Domain`] shared by the live suites.

use std::time::{Duration, Instant};

use xenprobe::vmi::{Domain, Event, MemoryImage, ShutdownReason};

/// How long a wait for a guest event may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// The address of symbol `name`; panics if the image lacks it.
pub fn sym(dom: &Domain, name: &str) -> u64 {
    dom.symbol(name).expect(name)
}

/// Waits (up to [`WAIT`]) for the next event and asserts it is a breakpoint.
pub fn wait_breakpoint(dom: &mut Domain, what: &str) {
    let ev = dom.wait_event(WAIT).expect("wait");
    assert!(
        matches!(ev, Event::Breakpoint { .. }),
        "{what}: expected a breakpoint, got {ev:?}"
    );
}

/// Waits (up to [`WAIT`]) for the guest to shut down; panics on any other
/// event.
pub fn wait_shutdown(dom: &mut Domain) -> ShutdownReason {
    let deadline = Instant::now() + WAIT;
    loop {
        match dom.wait_event(WAIT).expect("wait for shutdown") {
            Event::Shutdown { reason } => return reason,
            Event::Timeout if Instant::now() < deadline => continue,
            other => panic!("expected shutdown, got {other:?}"),
        }
    }
}

/// Asserts that `dom`'s memory equals `want` frame for frame, all of it. A
/// difference is described as inside the guest's image (code, data, bss with
/// its stack and page tables: all the memory the `known` guest uses;
/// guest-physical = virtual for PVH/HVM) or outside it (RAM the guest never
/// touches: there, only something outside the guest can have written; in a
/// lab whose dom0 had two vCPUs it happened, see docs/lab.md "The lab's CPU
/// configuration").
pub fn same_memory(dom: &Domain, want: &MemoryImage, what: &str) {
    let now = dom.memory_image().expect("memory image");
    if &now == want {
        return;
    }
    let first = sym(dom, "__image_start") >> 12;
    let last = (sym(dom, "__image_end") - 1) >> 12;
    let (inside, outside): (Vec<u64>, Vec<u64>) = now
        .diff(want)
        .into_iter()
        .partition(|f| (first..=last).contains(f));
    // Where in the first frames, and the bytes before -> after.
    let describe = |frames: &[u64]| {
        let mut detail = String::new();
        for &f in frames.iter().take(4) {
            if let (Some(a), Some(b)) = (now.frame(f), want.frame(f)) {
                let offs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
                let sym = dom.symbols().ok().and_then(|s| {
                    s.symbolize(f << 12)
                        .map(|(s, o)| format!("{}+{o:#x}", s.name))
                });
                let bytes: Vec<String> = offs
                    .iter()
                    .take(8)
                    .map(|&i| format!("{i:#x}: {:02x}->{:02x}", b[i], a[i]))
                    .collect();
                detail += &format!(
                    "\n  frame {f:#x} ({}): {} bytes differ [{}]",
                    sym.unwrap_or_default(),
                    offs.len(),
                    bytes.join(", ")
                );
            }
        }
        detail
    };
    if !outside.is_empty() {
        panic!(
            "{what}: {} frames outside the guest image changed behind the engine \
             (not written by the guest): {:x?}{}",
            outside.len(),
            &outside[..outside.len().min(32)],
            describe(&outside)
        );
    }
    if !inside.is_empty() {
        panic!(
            "{what}: memory differs in {} frames of the guest image ({} vs {} frames): {:x?}{}",
            inside.len(),
            now.frames(),
            want.frames(),
            &inside[..inside.len().min(32)],
            describe(&inside)
        );
    }
}
