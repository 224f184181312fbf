//! Exponential backoff between reconnection attempts, as small sans-IO
//! machines: [`Backoff`] (when to try again), and [`Reconnect`], the
//! policy of the proxy's upstream link, which the native upstream task and
//! the simulation both follow.

use crate::time::Instant;
use std::time::Duration;

/// First wait before reconnecting the proxy's upstream link.
pub const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts of the upstream link.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// An upstream connection closed while idle after living at least this long
/// is replaced at once; one closed sooner is replaced after the backoff, so
/// that a server which accepts and closes at once is not hammered.
pub const IDLE_CLOSE_MIN_AGE: Duration = Duration::from_secs(1);

/// What to do about a lost upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The server closed a connection with nothing in flight, most likely
    /// for idling: make a new one at this time without telling the proxy,
    /// so requests arriving meanwhile queue instead of failing. If the
    /// server is really gone, the attempt fails and takes the usual path.
    Replace(Instant),
    /// A failure: tell the proxy ([`Proxy::handle_upstream_lost`](crate::Proxy::handle_upstream_lost)),
    /// and try again at this time.
    Retry(Instant),
}

/// When the proxy's driver (re)connects upstream.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    connected_at: Option<Instant>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect::new()
    }
}

impl Reconnect {
    /// The policy with kv's waits ([`RECONNECT_MIN`] to [`RECONNECT_MAX`]).
    pub fn new() -> Self {
        Reconnect {
            backoff: Backoff::new(RECONNECT_MIN, RECONNECT_MAX),
            connected_at: None,
        }
    }

    /// How long a connection attempt may take, for a proxy whose requests
    /// time out after `request_timeout`.
    pub fn connect_timeout(request_timeout: Duration) -> Duration {
        request_timeout.max(Duration::from_millis(100))
    }

    /// A connection was made: the next failure waits the least again.
    pub fn handle_connected(&mut self, now: Instant) {
        self.backoff.handle_success();
        self.connected_at = Some(now);
    }

    /// An attempt to connect failed: returns when to try again.
    pub fn handle_failed(&mut self, now: Instant) -> Instant {
        self.connected_at = None;
        self.backoff.handle_failure(now)
    }

    /// The connection was lost; `idle` says whether the proxy had nothing
    /// in flight on it.
    pub fn handle_lost(&mut self, now: Instant, idle: bool) -> Lost {
        let lived = self.connected_at.take().map_or(Duration::ZERO, |t| now - t);
        match (idle, lived >= IDLE_CLOSE_MIN_AGE) {
            (true, true) => Lost::Replace(now),
            (true, false) => Lost::Replace(self.backoff.handle_failure(now)),
            (false, _) => Lost::Retry(self.backoff.handle_failure(now)),
        }
    }

    /// The proxy asked for the connection to be reset: returns when to make
    /// a new one.
    pub fn handle_reset(&mut self, now: Instant) -> Instant {
        // Backed off like a failed attempt: a server that makes the proxy
        // reset again and again is not hammered.
        self.handle_failed(now)
    }

    /// Failures since the last connection (for logging: the first of a
    /// series is news, the retries are not).
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }
}

/// When to try again after failures: `min`, then doubling up to `max`;
/// a success starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff that first waits `min` and never more than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            failures: 0,
        }
    }

    /// An attempt failed at `now`: returns when to try again.
    pub fn handle_failure(&mut self, now: Instant) -> Instant {
        let at = now + self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        at
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn handle_success(&mut self) {
        self.next = self.min;
        self.failures = 0;
    }

    /// Failures since the last success (for logging: the first of a series
    /// is news, the retries are not).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_closed_after_a_while_is_replaced_at_once() {
        let t = Instant::from_millis;
        let mut r = Reconnect::new();
        r.handle_connected(t(0));
        // Young: replaced after the backoff (not reported as a failure).
        assert_eq!(r.handle_lost(t(999), true), Lost::Replace(t(1_049)));
        r.handle_connected(t(2_000));
        assert_eq!(r.handle_lost(t(3_000), true), Lost::Replace(t(3_000)));
        r.handle_connected(t(4_000));
        // Requests were in flight: a failure, however old the connection.
        assert_eq!(r.handle_lost(t(9_000), false), Lost::Retry(t(9_050)));
        assert_eq!(r.handle_failed(t(9_050)), t(9_150));
        assert_eq!(r.failures(), 2);
        assert_eq!(r.handle_reset(t(9_150)), t(9_350));
    }

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(2_000));
        let t0 = Instant::from_millis(1_000);
        assert_eq!(b.handle_failure(t0), t0 + ms(50));
        assert_eq!(b.handle_failure(t0), t0 + ms(100));
        for _ in 0..10 {
            b.handle_failure(t0);
        }
        assert_eq!(b.handle_failure(t0), t0 + ms(2_000));
        assert_eq!(b.failures(), 13);
        b.handle_success();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.handle_failure(t0), t0 + ms(50));
    }
}
