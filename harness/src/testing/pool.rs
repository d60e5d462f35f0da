//! Booted guests shared by tests: snapshot isolation (see the `testing`
//! module docs). A guest is lent to one test at a time; after a passing test
//! it is restored to its snapshot and waits for the next test with the same
//! key; anything else destroys it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::guest::{GuestDomain, GuestImages};
use super::session::Session;
use super::{GuestTest, Mode};

/// `XENPROBE_ISOLATION=fresh`: boot a new domain for every test.
pub const ISOLATION_ENV: &str = "XENPROBE_ISOLATION";

/// Idle guests kept at most (the oldest is destroyed beyond that).
const MAX_IDLE: usize = 8;

/// What makes two tests' guests interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    guest: String,
    mode: Mode,
    memory_mb: Option<u32>,
    start_at: Option<String>,
}

impl Key {
    pub(crate) fn of(t: &GuestTest, mode: Mode) -> Self {
        Key {
            guest: t.guest.clone(),
            mode,
            memory_mb: t.memory_mb,
            start_at: t.start_at.clone(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.guest, self.mode.name())?;
        if let Some(mb) = self.memory_mb {
            write!(f, " ({mb} MiB)")?;
        }
        if let Some(s) = &self.start_at {
            write!(f, " at {s}")?;
        }
        Ok(())
    }
}

/// A guest restored to its snapshot, waiting for a test.
struct Idle {
    key: Key,
    session: Session,
    console_at_start: String,
}

/// A session lent to one test.
pub(crate) struct Lease {
    pub(crate) session: Session,
    /// The guest was restored from a snapshot (not booted for this test).
    pub(crate) restored: bool,
    /// Set when the guest goes back to the pool after a passing test: its
    /// key and the console text at its snapshot.
    pooled: Option<(Key, String)>,
}

/// The booted guests of one test binary.
pub(crate) struct Pool {
    images: std::result::Result<GuestImages, String>,
    idle: Mutex<Vec<Idle>>,
    /// Keys whose guests cannot be snapshotted, and why.
    no_snapshot: Mutex<HashMap<Key, String>>,
    /// How many tests use each key (a guest used by one test is not snapshotted).
    uses: HashMap<Key, usize>,
    fresh_only: bool,
}

impl Pool {
    pub(crate) fn new(
        tests: &[GuestTest],
        images: std::result::Result<GuestImages, String>,
    ) -> Self {
        let mut uses = HashMap::new();
        for t in tests {
            for &m in &t.modes {
                *uses.entry(Key::of(t, m)).or_insert(0) += 1;
            }
        }
        Pool {
            images,
            idle: Mutex::new(vec![]),
            no_snapshot: Mutex::new(HashMap::new()),
            uses,
            fresh_only: std::env::var(ISOLATION_ENV).as_deref() == Ok("fresh"),
        }
    }

    /// A session for test `name`: a pooled guest restored to its snapshot,
    /// or a new one.
    pub(crate) fn lease(&self, t: &GuestTest, mode: Mode, name: &str) -> Result<Lease> {
        let key = Key::of(t, mode);
        let images = self.images.as_ref().map_err(|e| anyhow!("{e}"))?;
        let fresh_because = if t.fresh_boot {
            Some("the test asks for a fresh boot".to_string())
        } else if self.fresh_only {
            Some(format!("{ISOLATION_ENV}=fresh"))
        } else if self.uses.get(&key).copied().unwrap_or(0) < 2 {
            Some("no other test uses this guest".to_string())
        } else {
            lock(&self.no_snapshot).get(&key).cloned()
        };
        if let Some(why) = fresh_because {
            tracing::debug!(test = name, "fresh boot of {key}: {why}");
            return Ok(Lease {
                session: boot(images, &key)?,
                restored: false,
                pooled: None,
            });
        }
        let found = {
            let mut idle = lock(&self.idle);
            idle.iter()
                .position(|i| i.key == key)
                .map(|p| idle.remove(p))
        };
        if let Some(i) = found {
            tracing::debug!(test = name, "{key}: restored from its snapshot");
            return Ok(Lease {
                session: i.session,
                restored: true,
                pooled: Some((i.key, i.console_at_start)),
            });
        }
        let mut session = boot(images, &key)?;
        // PV snapshots work (by machine frame) but cost seconds to take
        // and a comparison of all memory per restore: a fresh boot is faster.
        let taken = if session.dom.support_guest_frames().is_some() {
            session.dom.take_snapshot()
        } else {
            Err(crate::vmi::Error::unsupported(
                "pooled PV guests",
                "a PV snapshot takes seconds and each restore compares all memory; a fresh boot is faster",
            ))
        };
        match taken {
            Ok(info) => {
                tracing::debug!(
                    test = name,
                    "{key}: booted and snapshotted ({} frames in {:?})",
                    info.frames,
                    info.took
                );
                let console_at_start = if key.start_at.is_some() {
                    session.console()
                } else {
                    String::new()
                };
                session.hold_ends = true;
                Ok(Lease {
                    session,
                    restored: false,
                    pooled: Some((key, console_at_start)),
                })
            }
            Err(e) => {
                tracing::debug!(
                    test = name,
                    "fresh boot of {key} for each test: no snapshot ({e})"
                );
                lock(&self.no_snapshot).insert(key, e.to_string());
                Ok(Lease {
                    session,
                    restored: false,
                    pooled: None,
                })
            }
        }
    }

    /// Takes the session back after test `name`: restored and kept when the
    /// test passed and the guest can be restored, destroyed otherwise.
    pub(crate) fn give_back(&self, lease: Lease, passed: bool, name: &str) {
        let Lease {
            mut session,
            pooled,
            ..
        } = lease;
        let Some((key, console_at_start)) = pooled else {
            return;
        };
        if !passed {
            tracing::debug!(
                test = name,
                "{key}: destroyed after the failed test; the next test boots a new one"
            );
            return;
        }
        match reset(&mut session, &console_at_start) {
            Ok(()) => {
                let evicted = {
                    let mut idle = lock(&self.idle);
                    idle.push(Idle {
                        key,
                        session,
                        console_at_start,
                    });
                    (idle.len() > MAX_IDLE).then(|| idle.remove(0))
                };
                if let Some(old) = evicted {
                    tracing::debug!("{}: destroyed (more than {MAX_IDLE} idle guests)", old.key);
                }
            }
            Err(e) => tracing::debug!(
                test = name,
                "{key}: destroyed ({e:#}); the next test boots a new one"
            ),
        }
    }

    /// Destroys every idle guest.
    pub(crate) fn clear(&self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        drop(idle);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new domain, attached, stopped at its first instruction or at the
/// key's start symbol.
fn boot(images: &GuestImages, key: &Key) -> Result<Session> {
    let guest = GuestDomain::create(images, &key.guest, key.mode, key.memory_mb)?;
    let mut s = Session::attach(guest, key.mode)?;
    if let Some(sym) = &key.start_at {
        s.run_to(sym)
            .with_context(|| format!("running {} to its start point {sym}", s.name()))?;
        // What the guest printed on the way is in the log before the test starts.
        s.guest
            .settle_console(Duration::from_millis(300), Duration::from_secs(3));
    }
    Ok(s)
}

/// Brings a session back to its snapshot: no breakpoints, memory and vCPUs
/// restored, the console as it was at the snapshot.
fn reset(s: &mut Session, console_at_start: &str) -> Result<()> {
    ensure!(
        !s.snapshot_replaced,
        "the test replaced the guest's snapshot"
    );
    let info = s.dom.info().context("the domain is gone")?;
    if info.shutdown || info.dying {
        bail!("the guest shut down (reason {})", info.shutdown_reason);
    }
    if !s.dom.is_stopped() {
        // A breakpoint hit nobody waited for would stay on the vm_event ring.
        ensure!(
            s.dom.breakpoints().is_empty(),
            "the test left the guest running with breakpoints"
        );
        s.dom.pause()?;
    }
    for b in s.dom.breakpoints() {
        s.dom.remove_breakpoint(b.id)?;
    }
    let console_len = s
        .guest
        .settle_console(Duration::from_millis(20), Duration::from_millis(500));
    let stats = s.dom.restore_snapshot()?;
    tracing::trace!(guest = s.name(), ?stats, "restored");
    s.console_prefix = console_at_start.to_string();
    s.console_from = console_len;
    s.ended = None;
    Ok(())
}
