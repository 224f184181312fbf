//! Time for the core machines: their [`kv_core::Instant`]s on Tokio's
//! clock, and a timer that sleeps until a machine's `poll_timeout`.
//!
//! The core never reads a clock: it takes an instant with every input.
//! [`Epoch`] maps Tokio's clock onto that type through one epoch fixed at
//! start, so both sides agree for the whole life of a machine, and so that
//! Tokio's paused test clock drives the core as well.

use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant as TokioInstant, Sleep};

/// Roughly thirty years: what "never" means when a core deadline does not fit
/// in Tokio's clock.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The unix time in milliseconds: what the core's key deadlines are
/// measured in (they must survive restarts, so a monotonic clock will not
/// do). A clock set before 1970 reads as 0.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The monotonic clock the server times its commands with
/// ([`kv_core::Server::set_stopwatch`]): nanoseconds since its first
/// reading. The OS's clock rather than Tokio's: a command's run is real
/// time even under Tokio's paused test clock.
pub fn stopwatch() -> kv_core::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    kv_core::Instant::from_duration(START.get_or_init(std::time::Instant::now).elapsed())
}

/// Translates between Tokio's clock and the core's [`kv_core::Instant`].
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    epoch: TokioInstant,
}

impl Epoch {
    /// An epoch of now.
    pub fn new() -> Self {
        Epoch {
            epoch: TokioInstant::now(),
        }
    }

    /// The current time, in the core's terms.
    pub fn now(self) -> kv_core::Instant {
        self.to_core(TokioInstant::now())
    }

    /// A Tokio instant in the core's terms; instants before the epoch map to
    /// the epoch.
    pub fn to_core(self, t: TokioInstant) -> kv_core::Instant {
        kv_core::Instant::from_duration(t.saturating_duration_since(self.epoch))
    }

    /// A core instant in Tokio's terms, to sleep until it.
    pub fn to_tokio(self, t: kv_core::Instant) -> TokioInstant {
        self.epoch
            .checked_add(t.since_epoch())
            .unwrap_or_else(|| self.epoch + FAR_FUTURE)
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch::new()
    }
}

/// Sleeps until a machine's next deadline.
///
/// An idle deadline moves later with every request; resetting a Tokio timer
/// each time would touch the timer wheel once per request. So the sleep is
/// reset only when the deadline moves *earlier*. When it moves later the
/// sleep fires early, the machine's `handle_timeout` finds nothing due,
/// and the next wait arms the new deadline: one reset per period, not per
/// request. The sleep itself is made on first use, so a connection that
/// never has a deadline never pays for one.
#[derive(Debug, Default)]
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: Option<kv_core::Instant>,
}

impl Timer {
    /// A timer with nothing armed.
    pub fn new() -> Self {
        Timer::default()
    }

    /// Completes at `deadline` or, if it was armed earlier and not fired
    /// yet, at that earlier time; never without a deadline. Cancel-safe.
    pub async fn until(&mut self, epoch: &Epoch, deadline: Option<kv_core::Instant>) {
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        if self.armed.is_none_or(|armed| deadline < armed) {
            let at = epoch.to_tokio(deadline);
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = Some(deadline);
        }
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().await;
        }
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_round_trips() {
        let e = Epoch::new();
        let t = e.epoch + Duration::from_millis(1500);
        let core = e.to_core(t);
        assert_eq!(core, kv_core::Instant::from_millis(1500));
        assert_eq!(e.to_tokio(core), t);
        // Before the epoch clamps to it.
        assert_eq!(
            e.to_core(
                e.epoch
                    .checked_sub(Duration::from_secs(1))
                    .unwrap_or(e.epoch)
            ),
            kv_core::Instant::ZERO
        );
        // A deadline past Tokio's range maps to the far future, not a panic.
        let far = e.to_tokio(kv_core::Instant::from_nanos(u64::MAX));
        assert!(far > e.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_fires_the_earlier_arming_first() {
        let e = Epoch::new();
        let mut t = Timer::new();
        let start = TokioInstant::now();
        t.until(&e, Some(kv_core::Instant::from_millis(100))).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // Armed at 200 ms, then the deadline moves to 300 ms: it fires at 200
        // (the caller finds nothing due and waits again, now until 300).
        let wait = t.until(&e, Some(kv_core::Instant::from_millis(200)));
        let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
        t.until(&e, Some(kv_core::Instant::from_millis(300))).await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        t.until(&e, Some(kv_core::Instant::from_millis(300))).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        // An earlier deadline re-arms at once.
        let wait = t.until(&e, Some(kv_core::Instant::from_millis(900)));
        let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
        t.until(&e, Some(kv_core::Instant::from_millis(400))).await;
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_never_fires() {
        let mut t = Timer::new();
        let e = Epoch::new();
        let r = tokio::time::timeout(Duration::from_secs(3600), t.until(&e, None)).await;
        assert!(r.is_err());
    }
}
