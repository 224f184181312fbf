//! The timing policy of one client connection, the same at the server and
//! at the proxy, over TCP and WebSocket alike: when an idle client is cut
//! off, when a client that takes none of its output is, how long a client
//! that closed its sending side gets for its last replies, and when a
//! connection ends at shutdown.
//!
//! [`ConnPolicy`] is a sans-IO machine like the others: the driver reports
//! what happened (`handle_*`), sleeps until [`ConnPolicy::poll_timeout`],
//! calls [`ConnPolicy::handle_timeout`], and asks [`ConnPolicy::poll_end`]
//! after every step whether the connection is over, telling it what the
//! session still owes the client. The native drivers and the simulation
//! drive this same code.

use crate::time::{Clock, Instant};
use std::time::Duration;

/// Settings of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// A client that sends nothing, or takes none of its output, for this
    /// long is cut off (`None`: never). Waiting for replies it is owed is
    /// not idling.
    pub idle_timeout: Option<Duration>,
    /// After the client closed its sending side, how long the replies it
    /// is still owed may take before the connection is closed anyway.
    pub half_close_wait: Duration,
    /// How much output may be held for the client.
    pub output_limit: OutputLimit,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            idle_timeout: Some(Duration::from_secs(300)),
            half_close_wait: Duration::from_secs(5),
            output_limit: OutputLimit::DEFAULT,
        }
    }
}

/// Redis's `client-output-buffer-limit` for one client: what is held for
/// it and not yet written (encoded replies, and what a streamed reply
/// keeps alive) may not exceed `hard` at any moment, nor exceed `soft`
/// for `soft_for` without a break. A client over either is disconnected.
/// Zero turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputLimit {
    /// Bytes never to exceed.
    pub hard: usize,
    /// Bytes not to exceed for longer than `soft_for`.
    pub soft: usize,
    /// How long output may stay over `soft`.
    pub soft_for: Duration,
}

impl OutputLimit {
    /// kv's default: a client may hold 256 MiB at most, and over 64 MiB
    /// for a minute (Redis's limits for replicas; its normal clients have
    /// none, which lets one unread reply take all of memory).
    pub const DEFAULT: OutputLimit = OutputLimit {
        hard: 256 << 20,
        soft: 64 << 20,
        soft_for: Duration::from_secs(60),
    };
}

impl ConnConfig {
    /// The policy of a proxy's byte-stream client: by the request timeout
    /// every request it sent has an outcome, so a half-closed client waits
    /// that long for its replies (and a little more, for the timer).
    pub fn for_proxy_client(
        idle_timeout: Option<Duration>,
        request_timeout: Duration,
        output_limit: OutputLimit,
    ) -> Self {
        ConnConfig {
            idle_timeout,
            half_close_wait: request_timeout + Duration::from_millis(100),
            output_limit,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed and was owed nothing more, the wait for its last
    /// replies ran out, or the socket failed.
    Closed,
    /// The session asked to close (`QUIT`, a fatal protocol error) and its
    /// last reply was written.
    Finished,
    /// The client was cut off: idle, or not taking its output.
    TimedOut(Stall),
    /// The client was cut off: more output was held for it than its
    /// [`OutputLimit`] allows.
    OutputLimit,
    /// The node is shutting down and the client was owed nothing more.
    Shutdown,
}

/// What a timed-out client stopped doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Sending: nothing arrived (or a command stopped halfway).
    Input,
    /// Reading: its output could not be written.
    Output,
}

/// What the session still owes the client, for [`ConnPolicy::poll_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owed {
    /// Replies not yet handed to the driver.
    pub replies: usize,
    /// Output handed to the driver but not yet written.
    pub output: bool,
    /// The session asked to be closed once its replies are written.
    pub finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// The client closed its sending side: its replies are still written,
    /// until this deadline at the latest.
    HalfClosed { until: Instant },
    /// Shutting down: what was received is answered; nothing more is read.
    Draining,
}

/// The timing policy of one connection. See the module docs.
#[derive(Debug, Clone)]
pub struct ConnPolicy {
    config: ConnConfig,
    clock: Clock,
    phase: Phase,
    /// The last input, written output, or end of a wait for the service.
    active_at: Instant,
    /// Replies are owed: the client waits for us, so it is not idle.
    waiting: bool,
    /// Output has been waiting for the client to take it since then.
    writing_since: Option<Instant>,
    timed_out: Option<Stall>,
    /// The wait for the last replies after a half-close ran out.
    half_close_expired: bool,
    /// Since when the client has been in the middle of one command (its
    /// first bytes are in, its end is not), and how many requests had been
    /// read then: a command must be complete within the idle timeout of its
    /// start, so that dripping a byte now and then keeps nobody's slot.
    command_since: Option<(Instant, u64)>,
    /// Since when more output than the soft limit has been held.
    over_soft_since: Option<Instant>,
    /// The output limit was exceeded: the connection is over.
    over_limit: bool,
    /// The client listens for messages (it has subscriptions): it is held
    /// to this output limit instead, and never idle.
    subscriber: Option<OutputLimit>,
}

impl ConnPolicy {
    /// The policy of a connection accepted at `now`.
    pub fn new(config: ConnConfig, now: Instant) -> Self {
        let mut clock = Clock::default();
        clock.advance(now);
        ConnPolicy {
            config: ConnConfig {
                idle_timeout: config.idle_timeout.filter(|d| !d.is_zero()),
                ..config
            },
            clock,
            phase: Phase::Open,
            active_at: now,
            waiting: false,
            writing_since: None,
            timed_out: None,
            half_close_expired: false,
            command_since: None,
            over_soft_since: None,
            over_limit: false,
            subscriber: None,
        }
    }

    /// Whether the client listens for messages (it has subscriptions), and
    /// the output limit it is then held to. A subscriber that sends nothing
    /// is waiting, not idle: Redis times out no subscriber.
    pub fn handle_subscriber(&mut self, limit: Option<OutputLimit>) {
        self.subscriber = limit;
    }

    fn output_limit(&self) -> OutputLimit {
        self.subscriber.unwrap_or(self.config.output_limit)
    }

    /// How much output is held for the client now (handed to the socket
    /// and not yet written, plus what the session holds): over the hard
    /// limit the connection ends at once; over the soft one, once it has
    /// stayed over for the soft limit's time.
    pub fn handle_output_held(&mut self, bytes: usize, now: Instant) {
        let now = self.clock.advance(now);
        let limit = self.output_limit();
        if limit.hard > 0 && bytes > limit.hard {
            self.over_limit = true;
        }
        if limit.soft > 0 && bytes > limit.soft {
            self.over_soft_since.get_or_insert(now);
        } else {
            self.over_soft_since = None;
        }
    }

    fn soft_limit_deadline(&self) -> Option<Instant> {
        Some(self.over_soft_since? + self.output_limit().soft_for)
    }

    /// Where the session's input stands after the last input was handled:
    /// whether it holds part of a command, and how many requests it has
    /// read. A partial command that is still the same one (no request read
    /// since) keeps the time it started.
    pub fn handle_progress(&mut self, mid_command: bool, requests_read: u64, now: Instant) {
        let now = self.clock.advance(now);
        self.command_since = match self.command_since {
            _ if !mid_command => None,
            Some((since, read)) if read == requests_read => Some((since, read)),
            _ => Some((now, requests_read)),
        };
    }

    /// Input arrived from the client.
    pub fn handle_input(&mut self, now: Instant) {
        self.active_at = self.clock.advance(now);
    }

    /// Whether the session owes the client replies (it is then waiting for
    /// us, not idling). Leaving a wait counts as activity: the idle time
    /// starts when the last reply went out.
    pub fn handle_owed(&mut self, owed: bool, now: Instant) {
        let now = self.clock.advance(now);
        if self.waiting && !owed {
            self.active_at = now;
        }
        self.waiting = owed;
    }

    /// Output was handed to the socket and is not all written yet.
    pub fn handle_write_started(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.writing_since.get_or_insert(now);
    }

    /// Everything handed to the socket was written.
    pub fn handle_write_done(&mut self, now: Instant) {
        self.active_at = self.clock.advance(now);
        self.writing_since = None;
    }

    /// The client closed its sending side (end of stream).
    pub fn handle_peer_closed(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        if self.phase == Phase::Open {
            self.phase = Phase::HalfClosed {
                until: now + self.config.half_close_wait,
            };
        }
    }

    /// The node is shutting down: stop reading, answer what was received.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.clock.advance(now);
        self.phase = Phase::Draining;
    }

    /// Whether the driver should read from the client (the session may
    /// still say no, to throttle it).
    pub fn wants_input(&self) -> bool {
        self.phase == Phase::Open && self.timed_out.is_none()
    }

    /// Whether shutdown has been reported.
    pub fn is_draining(&self) -> bool {
        self.phase == Phase::Draining
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.config.idle_timeout?;
        // A command in progress started before the last input arrived.
        let since = self.command_since.map_or(self.active_at, |(t, _)| t);
        (self.phase == Phase::Open
            && !self.waiting
            && self.subscriber.is_none()
            && self.writing_since.is_none())
        .then(|| since + idle)
    }

    fn write_deadline(&self) -> Option<Instant> {
        Some(self.writing_since? + self.config.idle_timeout?)
    }

    fn half_close_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::HalfClosed { until } if !self.half_close_expired => Some(until),
            _ => None,
        }
    }

    /// The earliest time [`ConnPolicy::handle_timeout`] has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.timed_out.is_some() || self.over_limit {
            return None;
        }
        [
            self.idle_deadline(),
            self.write_deadline(),
            self.half_close_deadline(),
            self.soft_limit_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires what is due. Safe to call early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        if self.timed_out.is_some() {
            return;
        }
        if self.soft_limit_deadline().is_some_and(|t| t <= now) {
            self.over_limit = true;
        }
        if self.write_deadline().is_some_and(|t| t <= now) {
            self.timed_out = Some(Stall::Output);
        } else if self.idle_deadline().is_some_and(|t| t <= now) {
            self.timed_out = Some(Stall::Input);
        } else if self.half_close_deadline().is_some_and(|t| t <= now) {
            self.half_close_expired = true;
        }
    }

    /// Whether the connection is over, given what the session still owes.
    #[must_use]
    pub fn poll_end(&self, owed: Owed) -> Option<End> {
        if self.over_limit {
            return Some(End::OutputLimit);
        }
        if let Some(stall) = self.timed_out {
            return Some(End::TimedOut(stall));
        }
        if self.half_close_expired {
            return Some(End::Closed);
        }
        let settled = owed.replies == 0 && !owed.output;
        if !settled {
            return None;
        }
        if owed.finished {
            return Some(End::Finished);
        }
        match self.phase {
            Phase::Open => None,
            Phase::HalfClosed { .. } => Some(End::Closed),
            Phase::Draining => Some(End::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn policy() -> ConnPolicy {
        ConnPolicy::new(
            ConnConfig {
                idle_timeout: Some(Duration::from_secs(10)),
                half_close_wait: Duration::from_secs(5),
                output_limit: OutputLimit::default(),
            },
            ms(0),
        )
    }

    #[test]
    fn a_subscriber_is_never_idle_and_is_held_to_its_own_limit() {
        let mut p = policy();
        p.handle_subscriber(Some(OutputLimit {
            hard: 100,
            soft: 10,
            soft_for: Duration::from_secs(60),
        }));
        assert_eq!(p.poll_timeout(), None, "no idle deadline");
        p.handle_timeout(ms(3_600_000));
        assert_eq!(p.poll_end(NOTHING), None, "an hour without input");
        p.handle_output_held(11, ms(3_600_000));
        p.handle_timeout(ms(3_659_999));
        assert_eq!(p.poll_end(NOTHING), None, "59.999 s over its soft limit");
        p.handle_timeout(ms(3_660_000));
        assert_eq!(p.poll_end(NOTHING), Some(End::OutputLimit), "60 s");
        // Back to a normal client: idle again, by the connection's rule.
        let mut p = policy();
        p.handle_subscriber(Some(OutputLimit::default()));
        p.handle_subscriber(None);
        assert_eq!(p.poll_timeout(), Some(ms(10_000)));
    }

    #[test]
    fn output_over_the_hard_limit_ends_at_once_and_over_the_soft_one_after_its_time() {
        let config = ConnConfig {
            output_limit: OutputLimit {
                hard: 1000,
                soft: 100,
                soft_for: Duration::from_secs(60),
            },
            ..ConnConfig::default()
        };
        let mut p = ConnPolicy::new(config, ms(0));
        p.handle_output_held(1000, ms(0));
        assert_eq!(p.poll_end(NOTHING), None, "at the hard limit, not over");
        assert_eq!(p.poll_timeout(), Some(ms(60_000)), "over the soft one");
        p.handle_output_held(500, ms(30_000));
        p.handle_timeout(ms(59_999));
        assert_eq!(p.poll_end(NOTHING), None, "59.999 s over the soft limit");
        p.handle_timeout(ms(60_000));
        assert_eq!(p.poll_end(NOTHING), Some(End::OutputLimit), "60 s");

        // Dropping to the soft limit starts the time anew.
        let mut p = ConnPolicy::new(config, ms(0));
        p.handle_output_held(101, ms(0));
        p.handle_output_held(100, ms(59_000));
        p.handle_output_held(101, ms(59_500));
        p.handle_timeout(ms(60_000));
        assert_eq!(p.poll_end(NOTHING), None);
        assert_eq!(p.poll_timeout(), Some(ms(119_500)));

        let mut p = ConnPolicy::new(config, ms(0));
        p.handle_output_held(1001, ms(5));
        assert_eq!(
            p.poll_end(NOTHING),
            Some(End::OutputLimit),
            "over the hard one"
        );
        assert_eq!(p.poll_timeout(), None);

        // Zero is no limit.
        let none = ConnConfig {
            output_limit: OutputLimit::default(),
            ..config
        };
        let mut p = ConnPolicy::new(none, ms(0));
        p.handle_output_held(usize::MAX, ms(0));
        p.handle_timeout(ms(u64::MAX / 2_000_000));
        assert_ne!(p.poll_end(NOTHING), Some(End::OutputLimit));
    }

    const NOTHING: Owed = Owed {
        replies: 0,
        output: false,
        finished: false,
    };

    #[test]
    fn a_command_dripped_byte_by_byte_is_cut_off_at_the_timeout_of_its_start() {
        let mut p = policy();
        // One byte every 2 s of the same command: the idle timer alone
        // would never fire.
        for s in (1..=9).step_by(2) {
            p.handle_input(ms(s * 1000));
            p.handle_progress(true, 0, ms(s * 1000));
        }
        assert_eq!(p.poll_timeout(), Some(ms(1000 + 10_000)));
        p.handle_timeout(ms(10_999));
        assert_eq!(p.poll_end(NOTHING), None, "at 9.999 s of its command");
        p.handle_timeout(ms(11_000));
        assert_eq!(
            p.poll_end(NOTHING),
            Some(End::TimedOut(Stall::Input)),
            "at 10 s"
        );

        // A client that keeps finishing commands, with a partial one after
        // each read, is not dripping: each new partial command starts anew.
        let mut p = policy();
        for s in 1..=30u64 {
            p.handle_input(ms(s * 1000));
            p.handle_progress(true, s, ms(s * 1000));
        }
        assert_eq!(p.poll_timeout(), Some(ms(30_000 + 10_000)));
        // The command completes: back to the plain idle rule.
        p.handle_input(ms(31_000));
        p.handle_progress(false, 31, ms(31_000));
        assert_eq!(p.poll_timeout(), Some(ms(41_000)));
    }

    #[test]
    fn idle_clients_are_cut_off_at_exactly_the_timeout() {
        let mut p = policy();
        p.handle_input(ms(2_000));
        assert_eq!(p.poll_timeout(), Some(ms(12_000)));
        p.handle_timeout(ms(11_999));
        assert_eq!(p.poll_end(NOTHING), None);
        p.handle_timeout(ms(12_000));
        assert_eq!(p.poll_end(NOTHING), Some(End::TimedOut(Stall::Input)));
        assert_eq!(p.poll_timeout(), None, "nothing more is due once ended");
    }

    #[test]
    fn waiting_for_replies_is_not_idling() {
        let mut p = policy();
        p.handle_owed(true, ms(1_000));
        assert_eq!(p.poll_timeout(), None);
        p.handle_timeout(ms(60_000));
        assert_eq!(p.poll_end(NOTHING), None);
        // The idle time starts when the last reply is no longer owed.
        p.handle_owed(false, ms(60_000));
        assert_eq!(p.poll_timeout(), Some(ms(70_000)));
    }

    #[test]
    fn a_client_that_takes_no_output_is_cut_off() {
        let mut p = policy();
        p.handle_write_started(ms(100));
        // Input keeps arriving, but the output does not drain.
        p.handle_input(ms(5_000));
        assert_eq!(p.poll_timeout(), Some(ms(10_100)));
        p.handle_timeout(ms(10_099));
        assert_eq!(p.poll_end(NOTHING), None);
        p.handle_timeout(ms(10_100));
        assert_eq!(p.poll_end(NOTHING), Some(End::TimedOut(Stall::Output)));
    }

    #[test]
    fn a_half_closed_client_gets_its_replies_within_the_wait() {
        let mut p = policy();
        p.handle_peer_closed(ms(1_000));
        assert!(!p.wants_input());
        let owed = Owed {
            replies: 1,
            ..NOTHING
        };
        assert_eq!(p.poll_end(owed), None);
        assert_eq!(p.poll_end(NOTHING), Some(End::Closed));
        assert_eq!(p.poll_timeout(), Some(ms(6_000)));
        p.handle_timeout(ms(5_999));
        assert_eq!(p.poll_end(owed), None);
        p.handle_timeout(ms(6_000));
        assert_eq!(p.poll_end(owed), Some(End::Closed));
    }

    #[test]
    fn a_half_closed_client_that_takes_no_output_is_closed_when_the_wait_ends() {
        let mut p = policy();
        p.handle_peer_closed(ms(1_000));
        // The last replies are on their way, and the client does not read.
        p.handle_write_started(ms(1_000));
        let writing = Owed {
            output: true,
            ..NOTHING
        };
        assert_eq!(p.poll_timeout(), Some(ms(6_000)));
        p.handle_timeout(ms(5_999));
        assert_eq!(p.poll_end(writing), None);
        p.handle_timeout(ms(6_000));
        assert_eq!(p.poll_end(writing), Some(End::Closed));
    }

    #[test]
    fn shutdown_and_quit_end_once_nothing_is_owed() {
        let mut p = policy();
        let finished = Owed {
            finished: true,
            output: true,
            ..NOTHING
        };
        assert_eq!(
            p.poll_end(finished),
            None,
            "the QUIT reply is not written yet"
        );
        assert_eq!(
            p.poll_end(Owed {
                output: false,
                ..finished
            }),
            Some(End::Finished)
        );
        p.handle_shutdown(ms(5));
        assert!(p.is_draining() && !p.wants_input());
        assert_eq!(
            p.poll_end(Owed {
                replies: 2,
                ..NOTHING
            }),
            None
        );
        assert_eq!(p.poll_end(NOTHING), Some(End::Shutdown));
    }

    #[test]
    fn a_zero_or_absent_timeout_never_fires() {
        for idle_timeout in [None, Some(Duration::ZERO)] {
            let mut p = ConnPolicy::new(
                ConnConfig {
                    idle_timeout,
                    ..ConnConfig::default()
                },
                ms(0),
            );
            p.handle_write_started(ms(0));
            assert_eq!(p.poll_timeout(), None);
            p.handle_timeout(ms(u64::MAX / 2_000_000));
            assert_eq!(p.poll_end(NOTHING), None);
        }
    }
}
