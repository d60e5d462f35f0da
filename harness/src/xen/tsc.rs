//! A cheap clock for hot paths: the CPU's time-stamp counter.
//!
//! Reading the system clock (`clock_gettime`, what [`std::time::Instant`]
//! uses) is a system call in a PV dom0: 25-70 us each in the QEMU lab,
//! about as much as a whole vm_event reply. `rdtsc` stays in user space
//! (0.07 us there). The counter's rate is calibrated once against the
//! system clock, on first use (a 20 ms sleep). Use it to bound busy-polls
//! and to time phases; deadlines that must hold across a sleeping host keep
//! using [`std::time::Instant`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time as a TSC reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The raw counter.
#[cfg(target_arch = "x86_64")]
fn ticks() -> u64 {
    // SAFETY: rdtsc has no preconditions; x86-64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Elsewhere: nanoseconds since the first call (the rate is then 1000/us).
#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// How long the calibration measures.
const CALIBRATION: Duration = Duration::from_millis(20);

/// Counter ticks per microsecond (calibrated once).
pub fn ticks_per_us() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let (t0, k0) = (Instant::now(), ticks());
        std::thread::sleep(CALIBRATION);
        let (k1, dt) = (ticks(), t0.elapsed());
        rate(k1.wrapping_sub(k0), dt)
    })
}

/// Ticks per microsecond from `ticks` counted over `over` (at least 1).
fn rate(ticks: u64, over: Duration) -> f64 {
    let us = over.as_secs_f64() * 1e6;
    if us <= 0.0 {
        return 1.0;
    }
    (ticks as f64 / us).max(1e-3)
}

/// Ticks in `d` at rate `per_us`.
fn ticks_in(d: Duration, per_us: f64) -> u64 {
    (d.as_secs_f64() * 1e6 * per_us) as u64
}

/// `ticks` as a duration at rate `per_us`.
fn duration_of(ticks: u64, per_us: f64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / per_us / 1e6)
}

impl Stamp {
    /// Now.
    pub fn now() -> Self {
        Self(ticks())
    }

    /// Time from `earlier` to this stamp (zero if `earlier` is later).
    pub fn since(self, earlier: Stamp) -> Duration {
        duration_of(self.0.saturating_sub(earlier.0), ticks_per_us())
    }

    /// Time since this stamp.
    pub fn elapsed(self) -> Duration {
        Self::now().since(self)
    }

    /// This stamp moved `d` later.
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(ticks_in(d, ticks_per_us())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let per_us = 1722.3;
        let d = Duration::from_micros(2000);
        let t = ticks_in(d, per_us);
        assert_eq!(t, 3_444_600);
        let back = duration_of(t, per_us);
        assert!(
            (back.as_secs_f64() - d.as_secs_f64()).abs() < 1e-9,
            "{back:?}"
        );
        assert_eq!(rate(1_722_300, Duration::from_millis(1)), 1722.3);
        assert_eq!(rate(5, Duration::ZERO), 1.0, "no time: a sane rate");
    }

    #[test]
    fn stamps_move_forward_with_the_clock() {
        let a = Stamp::now();
        std::thread::sleep(Duration::from_millis(5));
        let b = Stamp::now();
        assert!(b > a);
        let d = b.since(a);
        assert!(d >= Duration::from_millis(3), "{d:?}");
        assert!(d < Duration::from_secs(2), "{d:?}");
        assert_eq!(a.since(b), Duration::ZERO);
        assert!(a.after(Duration::from_millis(1)) > a);
    }
}
