//! When the log is rewritten: once it has grown enough over its size after
//! the last rewrite (compaction), and, after a failure, once a second to
//! recover (a rewrite from the store is how a failed log comes back).
//!
//! A sans-IO machine like the others: the driver reports what the writer
//! thread said, asks [`Upkeep::poll_rewrite`] whether to start a rewrite,
//! and sleeps until [`Upkeep::poll_timeout`].

use super::LogStatus;
use crate::time::Instant;
use std::time::Duration;

/// How long after a failure the first recovery attempt starts, and how long
/// between attempts.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long after a failed compaction the next may start: the old log is
/// still fine, and retrying at once would only fail the same way.
pub const REWRITE_BACKOFF: Duration = Duration::from_secs(5);

/// The thresholds of automatic rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpkeepConfig {
    /// No automatic rewrite while the log is smaller than this.
    pub rewrite_min_size: u64,
    /// Rewrite once the log has grown by this percentage over its size after
    /// the last rewrite (0: never automatically).
    pub rewrite_percentage: u64,
}

/// The rewrite schedule of one log.
#[derive(Debug, Clone)]
pub struct Upkeep {
    config: UpkeepConfig,
    rewriting: bool,
    failed: bool,
    /// A rewrite should start at the next [`Upkeep::poll_rewrite`].
    wanted: bool,
    /// When to try to recover from a failure.
    retry_at: Option<Instant>,
    /// No automatic rewrite before this, after one failed.
    backoff_until: Option<Instant>,
}

impl Upkeep {
    /// A schedule with nothing to do yet.
    pub fn new(config: UpkeepConfig) -> Self {
        Upkeep {
            config,
            rewriting: false,
            failed: false,
            wanted: false,
            retry_at: None,
            backoff_until: None,
        }
    }

    /// Whether the log is failed (writes refused until a rewrite succeeds).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Records were stored; the log now stands as `status` says. Returns
    /// the growth in percent when it calls for a rewrite.
    pub fn handle_stored(&mut self, status: &LogStatus, now: Instant) -> Option<u64> {
        if self.rewriting
            || self.failed
            || self.config.rewrite_percentage == 0
            || self.backoff_until.is_some_and(|t| now < t)
        {
            return None;
        }
        let base = status.base_size.max(1);
        let grown = status.size.saturating_sub(base).saturating_mul(100) / base;
        let due =
            status.size >= self.config.rewrite_min_size && grown >= self.config.rewrite_percentage;
        self.wanted |= due;
        due.then_some(grown)
    }

    /// Writing or syncing failed: recovery is tried after [`RETRY_AFTER`].
    pub fn handle_failed(&mut self, now: Instant) {
        self.failed = true;
        self.rewriting = false;
        self.wanted = false;
        self.retry_at = Some(now + RETRY_AFTER);
    }

    /// A rewrite replaced the log. Returns whether it recovered a failed
    /// log.
    pub fn handle_rewrite_done(&mut self) -> bool {
        self.rewriting = false;
        self.retry_at = None;
        std::mem::take(&mut self.failed)
    }

    /// A rewrite failed; the old log is still in use (or, if the log was
    /// failed, recovery is tried again after [`RETRY_AFTER`]).
    pub fn handle_rewrite_failed(&mut self, now: Instant) {
        self.rewriting = false;
        if self.failed {
            self.retry_at = Some(now + RETRY_AFTER);
        } else {
            self.backoff_until = Some(now + REWRITE_BACKOFF);
        }
    }

    /// The writer could not be asked for the rewrite (it is gone).
    pub fn handle_rewrite_refused(&mut self) {
        self.rewriting = false;
    }

    /// Whether to start a rewrite now (it then counts as running).
    #[must_use]
    pub fn poll_rewrite(&mut self) -> bool {
        if self.rewriting || !std::mem::take(&mut self.wanted) {
            return false;
        }
        self.rewriting = true;
        true
    }

    /// When the next recovery attempt is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// A due recovery attempt becomes a wanted rewrite.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.wanted = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(size: u64, base: u64) -> LogStatus {
        LogStatus {
            size,
            base_size: base,
            ..LogStatus::default()
        }
    }

    fn upkeep() -> Upkeep {
        Upkeep::new(UpkeepConfig {
            rewrite_min_size: 1000,
            rewrite_percentage: 100,
        })
    }

    #[test]
    fn rewrites_once_grown_past_both_thresholds() {
        let mut u = upkeep();
        let t = Instant::from_millis(0);
        assert_eq!(u.handle_stored(&status(1999, 1000), t), None);
        assert!(!u.poll_rewrite());
        assert_eq!(
            u.handle_stored(&status(900, 100), t),
            None,
            "under the minimum"
        );
        assert_eq!(u.handle_stored(&status(2000, 1000), t), Some(100));
        assert!(u.poll_rewrite());
        assert!(!u.poll_rewrite(), "one at a time");
        assert_eq!(u.handle_stored(&status(9000, 1000), t), None, "running");
        assert!(!u.handle_rewrite_done());
    }

    #[test]
    fn a_failed_compaction_waits_its_backoff() {
        let mut u = upkeep();
        let t = Instant::from_millis;
        u.handle_stored(&status(2000, 1000), t(0));
        assert!(u.poll_rewrite());
        u.handle_rewrite_failed(t(10));
        assert_eq!(u.handle_stored(&status(3000, 1000), t(5_009)), None);
        assert_eq!(u.handle_stored(&status(3000, 1000), t(5_010)), Some(200));
    }

    #[test]
    fn a_failed_log_is_retried_every_second_until_a_rewrite_recovers_it() {
        let mut u = upkeep();
        let t = Instant::from_millis;
        u.handle_failed(t(0));
        assert!(u.is_failed());
        assert_eq!(u.poll_timeout(), Some(t(1_000)));
        u.handle_timeout(t(999));
        assert!(!u.poll_rewrite());
        u.handle_timeout(t(1_000));
        assert!(u.poll_rewrite());
        u.handle_rewrite_failed(t(1_200));
        assert_eq!(u.poll_timeout(), Some(t(2_200)));
        u.handle_timeout(t(2_200));
        assert!(u.poll_rewrite());
        assert!(u.handle_rewrite_done(), "recovered");
        assert!(!u.is_failed());
        assert_eq!(u.poll_timeout(), None);
    }
}
