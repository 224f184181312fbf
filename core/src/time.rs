//! Time as a value: the core never reads a clock.
//!
//! `std::time::Instant` cannot be created on `wasm32-unknown-unknown`, and a
//! clock read inside the core would make tests depend on wall time. Drivers
//! therefore translate their own clock (Tokio's `Instant`, the browser's
//! `performance.now()`, or a test's fake clock) into this [`Instant`], which is
//! just a count of nanoseconds since an epoch the driver picks.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, as nanoseconds since a driver-chosen epoch.
///
/// Only differences between instants mean anything, so every driver keeps one
/// epoch for the lifetime of the machines it drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant { nanos: 0 };

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant { nanos }
    }

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Instant {
            nanos: millis.saturating_mul(1_000_000),
        }
    }

    /// An instant from fractional milliseconds, as the browser's
    /// `performance.now()` reports them; negative or non-finite values map to
    /// the epoch.
    pub fn from_millis_f64(millis: f64) -> Self {
        if millis.is_finite() && millis > 0.0 {
            // `as` saturates for floats, which is the behaviour we want.
            Instant {
                nanos: (millis * 1_000_000.0) as u64,
            }
        } else {
            Instant::ZERO
        }
    }

    /// An instant `d` after the epoch.
    pub fn from_duration(d: Duration) -> Self {
        Instant {
            nanos: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.nanos)
    }

    /// How long after `earlier` this instant is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the far future instead of overflowing: a huge TTL means
    /// "never", not a panic.
    fn add(self, rhs: Duration) -> Instant {
        let d = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Instant {
            nanos: self.nanos.saturating_add(d),
        }
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// Keeps the latest `now` a machine has seen, so that time never runs
/// backwards inside it even if the driver's clock does (clamping).
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    last: Instant,
}

impl Clock {
    /// Accepts a `now` from the driver and returns the clamped time.
    pub fn advance(&mut self, now: Instant) -> Instant {
        if now > self.last {
            self.last = now;
        }
        self.last
    }

    /// The latest time seen.
    pub fn now(&self) -> Instant {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_clamps_time_that_goes_backwards() {
        let mut c = Clock::default();
        assert_eq!(
            c.advance(Instant::from_millis(10)),
            Instant::from_millis(10)
        );
        assert_eq!(c.advance(Instant::from_millis(5)), Instant::from_millis(10));
        assert_eq!(
            c.advance(Instant::from_millis(11)),
            Instant::from_millis(11)
        );
    }

    #[test]
    fn add_saturates() {
        let far = Instant::from_nanos(u64::MAX - 1) + Duration::from_secs(5);
        assert_eq!(far.as_nanos(), u64::MAX);
    }

    #[test]
    fn browser_millis_convert() {
        assert_eq!(Instant::from_millis_f64(1.5).as_nanos(), 1_500_000);
        assert_eq!(Instant::from_millis_f64(-3.0), Instant::ZERO);
        assert_eq!(Instant::from_millis_f64(f64::NAN), Instant::ZERO);
    }
}
