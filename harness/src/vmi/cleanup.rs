//! Detaching cleanly, and repairing domains left dirty by a killed xenprobe.
//!
//! While attached, a small journal in dom0 (`/run/xenprobe/<domid>.json`,
//! in the state directory of [`super::Settings`]) records every planted
//! breakpoint byte (physical address, original and planted byte), whether
//! a vm_event ring, PV debugging or log-dirty tracking is on, and the vCPUs
//! whose trap flag a step set. It is written *before* memory is
//! patched. Detach (explicit, on drop, or after Ctrl-C) restores the bytes,
//! tears the ring down and resumes the guest, then deletes the journal. The
//! next attach replays a journal it finds: restores bytes, disables the ring
//! (`xc_monitor_disable` from a fresh process releases waiting vCPUs),
//! switches PV debugging off, clears a trap flag set for a step that was cut
//! short, turns log-dirty tracking off and undoes stale pauses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::domain::{Domain, Xen};
use super::error::{Error, Result};
use super::platform::Platform;
use super::regs::RFLAGS_TF;
use super::watchpoint::SavedDebugRegs;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct JournalBreakpoint {
    va: u64,
    pa: u64,
    orig: u8,
    opcode: u8,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct JournalData {
    domid: u32,
    name: String,
    pid: u32,
    monitor: bool,
    debugging: bool,
    breakpoints: Vec<JournalBreakpoint>,
    /// The guest's own debug registers per vCPU while watchpoints are armed.
    #[serde(default)]
    debugregs: Vec<(u32, SavedDebugRegs)>,
    /// Log-dirty tracking was turned on (snapshots).
    #[serde(default)]
    logdirty: bool,
    /// vCPUs whose trap flag xenprobe set for a single step.
    #[serde(default)]
    stepping: Vec<u32>,
}

/// The on-disk record of what an attached xenprobe changed in a domain.
pub(crate) struct Journal {
    path: PathBuf,
    data: JournalData,
    written: bool,
}

impl Journal {
    pub(crate) fn new(dir: &Path, domid: u32, name: &str) -> Self {
        Self {
            path: dir.join(format!("{domid}.json")),
            data: JournalData {
                domid,
                name: name.into(),
                pid: std::process::id(),
                ..Default::default()
            },
            written: false,
        }
    }

    fn save(&mut self) -> Result<()> {
        let io = |what: &str| {
            let what = format!("{what} {}", self_path_display(&self.path));
            move |source| Error::Io { what, source }
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        }
        let text =
            serde_json::to_string(&self.data).map_err(|e| Error::State(format!("journal: {e}")))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io("writing"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("renaming into"))?;
        self.written = true;
        Ok(())
    }

    pub(crate) fn add_breakpoint(&mut self, va: u64, pa: u64, orig: u8, opcode: u8) -> Result<()> {
        self.data.breakpoints.push(JournalBreakpoint {
            va,
            pa,
            orig,
            opcode,
        });
        self.save()
    }

    pub(crate) fn remove_breakpoint(&mut self, pa: u64) -> Result<()> {
        self.data.breakpoints.retain(|b| b.pa != pa);
        self.save()
    }

    /// Records the guest's debug registers (empty: none of ours armed).
    pub(crate) fn set_debug_regs(&mut self, regs: Vec<(u32, SavedDebugRegs)>) -> Result<()> {
        self.data.debugregs = regs;
        self.save()
    }

    pub(crate) fn set_monitor(&mut self, on: bool) -> Result<()> {
        self.data.monitor = on;
        self.save()
    }

    pub(crate) fn set_debugging(&mut self, on: bool) -> Result<()> {
        self.data.debugging = on;
        self.save()
    }

    /// Records that log-dirty tracking is on (or off again).
    pub(crate) fn set_logdirty(&mut self, on: bool) -> Result<()> {
        if self.data.logdirty == on {
            return Ok(());
        }
        self.data.logdirty = on;
        self.save()
    }

    /// Records that xenprobe set `vcpu`'s trap flag for a step (or cleared it).
    pub(crate) fn set_stepping(&mut self, vcpu: u32, on: bool) -> Result<()> {
        if self.data.stepping.contains(&vcpu) == on {
            return Ok(());
        }
        if on {
            self.data.stepping.push(vcpu);
        } else {
            self.data.stepping.retain(|&v| v != vcpu);
        }
        self.save()
    }

    pub(crate) fn mark_attached(&mut self) -> Result<()> {
        self.save()
    }

    fn delete(&mut self) {
        if self.written {
            let _ = std::fs::remove_file(&self.path);
            self.written = false;
        }
    }
}

fn self_path_display(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Replays a journal left for `domid` by a xenprobe that did not detach.
/// Returns whether there was anything to repair.
pub fn recover(xen: &Xen, domid: u32, name: &str) -> Result<bool> {
    let path = xen.settings().state_dir().join(format!("{domid}.json"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let data: JournalData = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("ignoring unreadable journal {}: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            return Ok(false);
        }
    };
    if data.name != name || data.domid != domid {
        tracing::warn!(
            "journal {} is for {:?}, not {name:?}: ignored",
            path.display(),
            data.name
        );
        let _ = std::fs::remove_file(&path);
        return Ok(false);
    }
    if data.pid != std::process::id() && pid_alive(data.pid) {
        return Err(Error::State(format!(
            "domain {domid} ({name}) is attached by xenprobe pid {}; detach it first",
            data.pid
        )));
    }
    tracing::warn!(
        domid,
        "repairing a domain left attached by pid {}",
        data.pid
    );
    let xc = &xen.xc;
    xc.domain_pause(domid)?;
    let fixed = (|| -> Result<()> {
        let mut mem = super::memory::GuestMemory::new(xen.fmem.clone(), domid);
        for b in &data.breakpoints {
            let mut cur = [0u8];
            mem.read_phys(b.pa, &mut cur)?;
            if cur[0] == b.opcode {
                mem.write_phys(b.pa, &[b.orig])?;
            }
        }
        if !data.debugregs.is_empty() || !data.stepping.is_empty() {
            let platform = Platform::of(super::platform::kind_of(&xc.domain_info(domid)?));
            let backend = platform.registers(xc, domid)?;
            for (vcpu, saved) in &data.debugregs {
                let mut r = backend.get(xc, domid, *vcpu, true)?;
                saved.restore_into(&mut r, platform.parks_debug_slot());
                backend.set(xc, domid, *vcpu, &r, true)?;
                backend.forget();
            }
            // A step cut short: the trap flag is ours, not the guest's.
            for &vcpu in &data.stepping {
                let mut r = backend.get(xc, domid, vcpu, true)?;
                if r.rflags & RFLAGS_TF != 0 {
                    r.rflags &= !RFLAGS_TF;
                    backend.set(xc, domid, vcpu, &r, true)?;
                }
                backend.forget();
            }
        }
        if data.logdirty {
            if let Err(e) = xc.logdirty_off(domid) {
                tracing::debug!("log-dirty already off: {e}");
            }
        }
        if data.monitor {
            release_stale_ring(xen, domid)?;
        }
        if data.debugging {
            xc.domain_set_debugging(domid, false)?;
        }
        Ok(())
    })();
    xc.domain_unpause(domid)?;
    fixed?;
    // Pauses the dead process still held (explicit, event or debugger pauses).
    for _ in 0..16 {
        if !xc.domain_info(domid)?.paused {
            break;
        }
        xc.domain_unpause(domid)?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(true)
}

/// Tears down a vm_event ring left by another process and releases the
/// vCPUs it left waiting for responses: `xc_monitor_disable` frees the ring
/// but not those vCPUs, so a fresh ring answers for every vCPU once.
pub(crate) fn release_stale_ring(xen: &Xen, domid: u32) -> Result<()> {
    if let Err(e) = xen.xc.monitor_disable(domid) {
        tracing::debug!("no stale ring to disable: {e}");
    }
    let max_vcpu = xen.xc.domain_info(domid)?.max_vcpu_id;
    let mut ring = crate::xen::MonitorRing::enable(&xen.xc, domid)?;
    ring.release_stuck_vcpus(max_vcpu)?;
    drop(ring);
    Ok(())
}

static ATTACHED: Mutex<BTreeMap<u32, String>> = Mutex::new(BTreeMap::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Set once the program has been told of the interruption (it asked
/// [`interrupted`], or a wait returned [`Error::Interrupted`]).
static NOTICED: AtomicBool = AtomicBool::new(false);
static HANDLER: std::sync::Once = std::sync::Once::new();

/// How long the Ctrl-C handler lets a program that has not noticed the
/// interruption run before it repairs the attached domains itself.
const UNNOTICED_GRACE: Duration = Duration::from_secs(2);
/// How long a program that noticed it may take to stop in order (a fuzz
/// campaign writes its last report, then restores its guest to the snapshot;
/// a repair from the journal would only remove breakpoints). Below the lab
/// agent's 30 s between SIGTERM and SIGKILL.
const ORDERLY_GRACE: Duration = Duration::from_secs(20);

pub(crate) fn register(domid: u32, name: &str) {
    if let Ok(mut m) = ATTACHED.lock() {
        m.insert(domid, name.to_string());
    }
}

fn unregister(domid: u32) {
    if let Ok(mut m) = ATTACHED.lock() {
        m.remove(&domid);
    }
}

/// True once SIGINT/SIGTERM arrived (with [`restore_on_ctrl_c`] installed):
/// event waits then fail with [`Error::Interrupted`] so the caller unwinds
/// and drops (detaches) its domains. A true answer tells the handler that
/// the program is stopping in order (see [`restore_on_ctrl_c`]).
pub fn interrupted() -> bool {
    let hit = INTERRUPTED.load(Ordering::Relaxed);
    if hit {
        NOTICED.store(true, Ordering::SeqCst);
    }
    hit
}

/// Installs a SIGINT/SIGTERM handler: waits in progress return
/// [`Error::Interrupted`]. If the program has not exited 2 s later, or 20 s
/// later once it has noticed the interruption ([`interrupted`] returned
/// true), the handler repairs every domain still attached from its journal
/// and exits with 130.
pub fn restore_on_ctrl_c() -> Result<()> {
    let mut result = Ok(());
    HANDLER.call_once(|| {
        result = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, Ordering::SeqCst);
            let t0 = std::time::Instant::now();
            loop {
                let grace = if NOTICED.load(Ordering::SeqCst) {
                    ORDERLY_GRACE
                } else {
                    UNNOTICED_GRACE
                };
                if t0.elapsed() >= grace {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let left: Vec<(u32, String)> = ATTACHED
                .lock()
                .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
                .unwrap_or_default();
            if let Ok(xen) = Xen::open() {
                for (domid, name) in left {
                    if let Err(e) = recover_own(&xen, domid, &name) {
                        eprintln!("xenprobe: repairing domain {domid}: {e}");
                    }
                }
            }
            std::process::exit(130);
        })
        .map_err(|e| Error::State(format!("installing the Ctrl-C handler: {e}")));
    });
    result
}

/// Repairs a domain attached by this very process (from the signal handler).
fn recover_own(xen: &Xen, domid: u32, name: &str) -> Result<bool> {
    recover(xen, domid, name)
}

impl Domain {
    /// Detaches: restores breakpoint bytes, answers pending events, tears the
    /// vm_event ring and monitor options down (or PV debugging off), deletes
    /// the journal and lets the guest run. Also done on drop.
    pub fn detach(mut self) -> Result<()> {
        self.cleanup()
    }

    /// Detaches like [`Domain::detach`] but leaves the domain paused: one
    /// pause that nobody holds, for a later [`Domain::adopt_pause`] (or
    /// `xl unpause`). For keeping a booted guest at a known point between
    /// sessions.
    pub fn detach_paused(mut self) -> Result<()> {
        self.stops.keep_paused();
        self.cleanup()
    }

    /// Takes over a pause someone else left on the domain
    /// ([`Domain::detach_paused`], `xl pause`) as this attach's own, so that
    /// [`Domain::resume`] lifts it. Returns whether there was one.
    pub fn adopt_pause(&mut self) -> Result<bool> {
        if self.stops.paused() || !self.info()?.paused {
            return Ok(false);
        }
        self.stops.adopt_pause();
        Ok(true)
    }

    pub(crate) fn cleanup(&mut self) -> Result<()> {
        if self.detached {
            return Ok(());
        }
        self.detached = true;
        unregister(self.domid);
        if self.vanished() {
            self.forget_vanished();
            return Ok(());
        }
        let mut first_err: Option<Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        note(self.pause());
        note(self.unplant_all());
        note(self.remove_all_watchpoints());
        // Answer pending events, then drop the ring (options off, disable, unmap).
        self.stops.answer_all(&mut note);
        note(self.stops.events.close(&self.xen.xc, self.domid));
        self.snapshot.clear();
        self.stops.clear_queued();
        self.mem.invalidate();
        self.mem.unmap_all();
        // A kept pause is nobody's afterwards (see detach_paused).
        self.stops
            .unpause_for_detach(&self.xen.xc, self.domid, &mut note);
        if first_err.is_some() && self.vanished() {
            // The domain shut down or was destroyed while we detached:
            // nothing is left to repair (ESRCH from the calls above).
            self.forget_vanished();
            return Ok(());
        }
        if let Some(e) = &first_err {
            tracing::warn!(domid = self.domid, "detach: {e}");
        } else {
            self.journal.delete();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The domain no longer exists or is being destroyed: a detach has
    /// nothing to restore.
    fn vanished(&self) -> bool {
        match self.xen.xc.domain_info(self.domid) {
            Err(e) => e.raw_errno() == Some(libc::ESRCH),
            Ok(i) => i.dying,
        }
    }

    /// Drops every handle on a vanished domain without calling Xen on it.
    fn forget_vanished(&mut self) {
        tracing::debug!(domid = self.domid, "domain gone: detached without repairs");
        self.stops.forget();
        self.snapshot.clear();
        self.mem.invalidate();
        self.mem.unmap_all();
        self.journal.delete();
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::warn!(domid = self.domid, "detaching on drop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_tracks_breakpoints() {
        let dir = std::env::temp_dir().join(format!("xenprobe-journal-{}", std::process::id()));
        let mut j = Journal::new(&dir, 7, "guest");
        j.add_breakpoint(0x1000, 0x5000, 0x55, 0xf1).expect("add");
        j.add_breakpoint(0x2000, 0x6000, 0x48, 0xf1).expect("add");
        j.set_monitor(true).expect("monitor");
        j.remove_breakpoint(0x5000).expect("remove");
        let text = std::fs::read_to_string(&j.path).expect("journal file");
        let back: JournalData = serde_json::from_str(&text).expect("json");
        assert_eq!(back.domid, 7);
        assert_eq!(back.name, "guest");
        assert!(back.monitor && !back.debugging);
        assert_eq!(
            back.breakpoints,
            vec![JournalBreakpoint {
                va: 0x2000,
                pa: 0x6000,
                orig: 0x48,
                opcode: 0xf1
            }]
        );
        j.delete();
        assert!(!j.path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
