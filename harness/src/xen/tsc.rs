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
    scale().per_us
}

/// The calibrated rate, also as fixed-point factors (40 fraction bits): conversions on
/// hot paths use integer arithmetic only (floating point is emulated in
/// software under QEMU's TCG, which made each conversion cost microseconds).
struct Scale {
    per_us: f64,
    /// Nanoseconds per tick, times 2^FRACTION.
    ns_per_tick: u128,
    /// Ticks per nanosecond, times 2^FRACTION.
    ticks_per_ns: u128,
}

/// Fraction bits of [`Scale`]'s factors: an hour's worth of ticks converts
/// within nanoseconds.
const FRACTION: u32 = 40;

fn scale() -> &'static Scale {
    static SCALE: OnceLock<Scale> = OnceLock::new();
    SCALE.get_or_init(|| {
        let (t0, k0) = (Instant::now(), ticks());
        std::thread::sleep(CALIBRATION);
        let (k1, dt) = (ticks(), t0.elapsed());
        Scale::new(rate(k1.wrapping_sub(k0), dt))
    })
}

impl Scale {
    fn new(per_us: f64) -> Self {
        let fixed = |x: f64| (x * (1u64 << FRACTION) as f64) as u128;
        Self {
            per_us,
            ns_per_tick: fixed(1e3 / per_us),
            ticks_per_ns: fixed(per_us / 1e3),
        }
    }

    fn duration_of(&self, ticks: u64) -> Duration {
        let ns = (u128::from(ticks) * self.ns_per_tick) >> FRACTION;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn ticks_in(&self, d: Duration) -> u64 {
        let t = (d.as_nanos().saturating_mul(self.ticks_per_ns)) >> FRACTION;
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// Ticks per microsecond from `ticks` counted over `over` (at least 1).
fn rate(ticks: u64, over: Duration) -> f64 {
    let us = over.as_secs_f64() * 1e6;
    if us <= 0.0 {
        return 1.0;
    }
    (ticks as f64 / us).max(1e-3)
}

impl Stamp {
    /// Now.
    pub fn now() -> Self {
        Self(ticks())
    }

    /// Time from `earlier` to this stamp (zero if `earlier` is later).
    pub fn since(self, earlier: Stamp) -> Duration {
        scale().duration_of(self.0.saturating_sub(earlier.0))
    }

    /// Time since this stamp.
    pub fn elapsed(self) -> Duration {
        Self::now().since(self)
    }

    /// This stamp moved `d` later.
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(scale().ticks_in(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let s = Scale::new(1722.3);
        let d = Duration::from_micros(2000);
        let t = s.ticks_in(d);
        assert!(t.abs_diff(3_444_600) <= 1, "{t}");
        let back = s.duration_of(t);
        assert!(back.abs_diff(d) < Duration::from_nanos(5), "{back:?}");
        let long = Duration::from_secs(3600);
        assert!(s.duration_of(s.ticks_in(long)).abs_diff(long) < Duration::from_micros(1));
        assert_eq!(s.ticks_in(Duration::MAX), u64::MAX, "saturates");
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
