//! Time for the core machines, and idle timers for connections.
//!
//! The core never reads a clock: it takes a [`kv_core::Instant`] with every
//! input. [`Clock`] maps Tokio's clock onto that type through one epoch fixed
//! at start, so both sides agree for the whole life of a machine, and so that
//! Tokio's paused test clock drives the core as well.

use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant as TokioInstant, Sleep};

/// Roughly thirty years: what "never" means when a core deadline does not fit
/// in Tokio's clock.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Translates between Tokio's clock and the core's [`kv_core::Instant`].
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: TokioInstant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            epoch: TokioInstant::now(),
        }
    }

    /// A clock with the given epoch (for tests).
    pub fn with_epoch(epoch: TokioInstant) -> Self {
        Clock { epoch }
    }

    /// The current time, in the core's terms.
    pub fn now(&self) -> kv_core::Instant {
        self.to_core(TokioInstant::now())
    }

    /// A Tokio instant in the core's terms; instants before the epoch map to
    /// the epoch.
    pub fn to_core(&self, t: TokioInstant) -> kv_core::Instant {
        kv_core::Instant::from_duration(t.saturating_duration_since(self.epoch))
    }

    /// A core instant in Tokio's terms, to sleep until it.
    pub fn to_tokio(&self, t: kv_core::Instant) -> TokioInstant {
        self.epoch
            .checked_add(t.since_epoch())
            .unwrap_or_else(|| self.epoch + FAR_FUTURE)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Closes connections that show no activity for a while.
///
/// Resetting a Tokio timer on every read would touch the timer wheel once per
/// request; instead the timer is armed once per period and, when it fires,
/// re-armed from the last recorded activity if there was any. A read costs
/// one clock read.
#[derive(Debug)]
pub struct IdleTimer {
    timeout: Option<Duration>,
    last: TokioInstant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// A timer that fires after `timeout` without [`IdleTimer::touch`];
    /// `None` (or zero) disables it.
    pub fn new(timeout: Option<Duration>) -> Self {
        let timeout = timeout.filter(|d| !d.is_zero());
        let last = TokioInstant::now();
        IdleTimer {
            timeout,
            last,
            sleep: timeout.map(|d| Box::pin(tokio::time::sleep_until(last + d))),
        }
    }

    /// Records activity now.
    pub fn touch(&mut self) {
        if self.timeout.is_some() {
            self.last = TokioInstant::now();
        }
    }

    /// Completes once the timeout has passed since the last activity; never
    /// completes if the timer is disabled. Cancel-safe.
    pub async fn expired(&mut self) {
        let (Some(timeout), Some(sleep)) = (self.timeout, self.sleep.as_mut()) else {
            return std::future::pending().await;
        };
        loop {
            sleep.as_mut().await;
            let deadline = self.last + timeout;
            if TokioInstant::now() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_round_trips() {
        let epoch = TokioInstant::now();
        let c = Clock::with_epoch(epoch);
        let t = epoch + Duration::from_millis(1500);
        let core = c.to_core(t);
        assert_eq!(core, kv_core::Instant::from_millis(1500));
        assert_eq!(c.to_tokio(core), t);
        // Before the epoch clamps to it.
        assert_eq!(
            c.to_core(epoch.checked_sub(Duration::from_secs(1)).unwrap_or(epoch)),
            kv_core::Instant::ZERO
        );
        // A deadline past Tokio's range maps to the far future, not a panic.
        let far = c.to_tokio(kv_core::Instant::from_nanos(u64::MAX));
        assert!(far > epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_fires_after_inactivity_only() {
        let mut idle = IdleTimer::new(Some(Duration::from_secs(10)));
        let start = TokioInstant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        idle.touch();
        idle.expired().await;
        // Fired 10 s after the touch at 6 s, not 10 s after the start.
        assert!(TokioInstant::now() - start >= Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_idle_timer_never_fires() {
        let mut idle = IdleTimer::new(Some(Duration::ZERO));
        let r = tokio::time::timeout(Duration::from_secs(3600), idle.expired()).await;
        assert!(r.is_err());
    }
}
