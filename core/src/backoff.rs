//! Exponential backoff between reconnection attempts, as small sans-IO
//! machines: [`Backoff`] (when to try again), and [`Reconnect`], the
//! policy of the proxy's upstream link, which the native upstream task and
//! the simulation both follow.
//!
//! The waits are jittered from a generator seeded by the caller: the core
//! reads no random source, and proxies restarted together against one
//! server do not retry in lockstep.

use crate::time::Instant;
use std::time::Duration;

/// First wait before reconnecting the proxy's upstream link.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait (before jitter) between reconnection attempts of the
/// upstream link.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How far, in percent either way, [`Reconnect`] moves each wait at random.
pub const RECONNECT_JITTER_PERCENT: u32 = 20;
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

/// When the proxy's driver (re)connects upstream, and what about it is news
/// worth a log line.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    connected_at: Option<Instant>,
    /// The cause of the failures in progress, as last reported: the same
    /// cause again is not news.
    failing: Option<String>,
}

impl Reconnect {
    /// The policy with kv's waits ([`RECONNECT_MIN`] doubling to
    /// [`RECONNECT_MAX`], each moved by up to [`RECONNECT_JITTER_PERCENT`]
    /// either way), the jitter drawn from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Reconnect::with_backoff(
            Backoff::new(RECONNECT_MIN, RECONNECT_MAX).with_jitter(RECONNECT_JITTER_PERCENT, seed),
        )
    }

    /// The policy with the given waits (tests use one without jitter).
    pub fn with_backoff(backoff: Backoff) -> Self {
        Reconnect {
            backoff,
            connected_at: None,
            failing: None,
        }
    }

    /// How long a connection attempt may take, for a proxy whose requests
    /// time out after `request_timeout`.
    pub fn connect_timeout(request_timeout: Duration) -> Duration {
        request_timeout.max(Duration::from_millis(100))
    }

    /// A connection was made. The backoff is not reset yet: a server that
    /// accepts and then refuses (wrong password, client cap) must not be
    /// retried at the shortest wait; see [`Reconnect::handle_verified`].
    pub fn handle_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The server answered the proxy properly on the current connection
    /// ([`Proxy::upstream_verified`](crate::Proxy::upstream_verified)): the
    /// next failure waits the least again.
    pub fn handle_verified(&mut self) {
        self.backoff.handle_success();
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

    /// Failures since the last verified connection.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// A failure with this cause happened: returns whether it is news (the
    /// first failure, or a cause other than the last one's), so that a
    /// driver logs once per change of state, not once per attempt.
    pub fn note_failure(&mut self, cause: &str) -> bool {
        if self.failing.as_deref() == Some(cause) {
            return false;
        }
        self.failing = Some(cause.to_owned());
        true
    }

    /// The link works again: returns whether that is news (failures were
    /// reported since it last worked).
    pub fn note_recovered(&mut self) -> bool {
        self.failing.take().is_some()
    }
}

/// When to try again after failures: `min`, then doubling up to `max`,
/// each wait optionally moved at random by a bounded share either way; a
/// success starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
    jitter_percent: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff that first waits `min` and never more than `max`, without
    /// jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            failures: 0,
            jitter_percent: 0,
            rng: SplitMix64(0),
        }
    }

    /// The same waits, each moved by up to `percent` (at most 100) of itself
    /// either way, drawn from a generator seeded with `seed`.
    pub fn with_jitter(mut self, percent: u32, seed: u64) -> Self {
        self.jitter_percent = percent.min(100);
        self.rng = SplitMix64(seed);
        self
    }

    /// An attempt failed at `now`: returns when to try again.
    pub fn handle_failure(&mut self, now: Instant) -> Instant {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        now + self.jittered(base)
    }

    /// `base` moved uniformly within ±`jitter_percent`, to the nanosecond.
    fn jittered(&mut self, base: Duration) -> Duration {
        if self.jitter_percent == 0 {
            return base;
        }
        let base_ns = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX / 4);
        let span = base_ns / 100 * u64::from(self.jitter_percent);
        // The modulo's bias is negligible next to a span of milliseconds.
        let offset = self.rng.next() % (2 * span + 1);
        Duration::from_nanos(base_ns - span + offset)
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

/// A small generator (splitmix64): jitter needs spread, not secrecy.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// kv's waits without the jitter, to check the schedule exactly.
    fn exact() -> Reconnect {
        Reconnect::with_backoff(Backoff::new(RECONNECT_MIN, RECONNECT_MAX))
    }

    #[test]
    fn an_idle_connection_closed_after_a_while_is_replaced_at_once() {
        let t = Instant::from_millis;
        let mut r = exact();
        r.handle_connected(t(0));
        r.handle_verified();
        // Young: replaced after the backoff (not reported as a failure).
        assert_eq!(r.handle_lost(t(999), true), Lost::Replace(t(1_099)));
        r.handle_connected(t(2_000));
        // Exactly the minimum age: old enough.
        assert_eq!(r.handle_lost(t(3_000), true), Lost::Replace(t(3_000)));
        r.handle_connected(t(4_000));
        // Requests were in flight: a failure, however old the connection.
        assert_eq!(r.handle_lost(t(9_000), false), Lost::Retry(t(9_200)));
        assert_eq!(r.handle_failed(t(9_200)), t(9_600));
        assert_eq!(r.failures(), 3);
        assert_eq!(r.handle_reset(t(9_600)), t(10_400));
    }

    #[test]
    fn schedule_doubles_from_100ms_to_the_5s_cap() {
        let mut r = exact();
        let t0 = Instant::from_millis(1_000);
        let waits: Vec<u64> = (0..9)
            .map(|_| (r.handle_failed(t0) - t0).as_millis() as u64)
            .collect();
        println!("waits without jitter (ms): {waits:?}");
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
    }

    #[test]
    fn a_connection_refused_after_connecting_does_not_reset_the_backoff() {
        let t = Instant::from_millis;
        let mut r = exact();
        assert_eq!(r.handle_failed(t(0)), t(100));
        // Connected, then the server refused the password: the reset waits
        // longer, as a failed attempt would.
        r.handle_connected(t(100));
        assert_eq!(r.handle_reset(t(101)), t(301));
        r.handle_connected(t(301));
        assert_eq!(r.handle_reset(t(302)), t(702));
        assert_eq!(r.failures(), 3);
        // Verified (the handshake was answered): the shortest wait again.
        r.handle_connected(t(702));
        r.handle_verified();
        assert_eq!(r.failures(), 0);
        assert_eq!(r.handle_reset(t(800)), t(900));
    }

    #[test]
    fn jitter_stays_within_20_percent_and_spreads() {
        let t0 = Instant::from_millis(0);
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for seed in 0..2_000 {
            let mut r = Reconnect::new(seed);
            let mut base = RECONNECT_MIN;
            for _ in 0..8 {
                let wait = r.handle_failed(t0) - t0;
                let ratio = wait.as_secs_f64() / base.as_secs_f64();
                assert!(
                    (0.8..=1.2).contains(&ratio),
                    "seed {seed}: wait {wait:?} for base {base:?} (ratio {ratio})"
                );
                lo = lo.min(ratio);
                hi = hi.max(ratio);
                base = (base * 2).min(RECONNECT_MAX);
            }
        }
        println!("jitter ratio seen over 16000 waits: {lo:.4} to {hi:.4}");
        assert!(lo < 0.81 && hi > 1.19, "jitter spans its range: {lo}..{hi}");
        // The same seed gives the same schedule; another seed another one.
        let run = |seed| {
            let mut r = Reconnect::new(seed);
            (0..5).map(|_| r.handle_failed(t0)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn a_repeated_cause_is_not_news_a_change_or_recovery_is() {
        let mut r = exact();
        assert!(!r.note_recovered(), "nothing failed yet");
        assert!(r.note_failure("refused password"));
        assert!(!r.note_failure("refused password"));
        assert!(!r.note_failure("refused password"));
        assert!(r.note_failure("client limit"));
        assert!(r.note_recovered());
        assert!(!r.note_recovered());
        assert!(r.note_failure("client limit"), "news again after recovery");
    }

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_success() {
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
