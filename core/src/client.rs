//! The client state machine, used by the `kv` CLI and the browser console:
//! it encodes commands, pairs replies with requests in order, and times
//! requests out.

use crate::command::Command;
use crate::reply::{Reply, ReplyDecodeError, ReplyDecoder, ReplyLimits};
use crate::time::{Clock, Instant};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::time::Duration;
use thiserror::Error;

/// Identifies one request of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a request may wait for its reply.
    pub request_timeout: Duration,
    /// Most requests awaiting replies at once.
    pub max_in_flight: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
        }
    }
}

/// Misuse of the client by its caller (as opposed to a peer's failure,
/// which arrives as a [`ClientEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// [`ClientConfig::max_in_flight`] requests already await replies.
    #[error("too many requests in flight (limit {0})")]
    TooManyInFlight(usize),
    /// The connection failed; call [`Client::handle_reconnected`] first.
    #[error("not connected")]
    NotConnected,
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A reply arrived.
    Reply {
        /// The request it answers.
        id: RequestId,
        /// The reply.
        reply: Reply,
        /// Time from sending to the reply.
        rtt: Duration,
    },
    /// The request failed without a reply.
    Failed {
        /// The request.
        id: RequestId,
        /// Why.
        reason: Failure,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Failure {
    /// No reply within the request timeout.
    #[error("timed out")]
    TimedOut,
    /// The connection closed.
    #[error("connection lost")]
    Disconnected,
    /// The peer sent something that is not a reply.
    #[error("protocol error: {0}")]
    Protocol(ReplyDecodeError),
}

#[derive(Debug)]
struct Pending {
    id: RequestId,
    sent_at: Instant,
}

/// A pipelined request/reply client, independent of its transport.
///
/// Stream transports feed bytes to [`Client::handle_input`]; message
/// transports that carry replies already decoded use
/// [`Client::handle_reply`]. Drain [`Client::poll_transmit`] and
/// [`Client::poll_event`] after every input, and call
/// [`Client::handle_timeout`] at [`Client::poll_timeout`].
///
/// A timeout or a protocol error breaks the connection: replies are paired
/// with requests by order only, so once one is missing none can be trusted.
/// Every request in flight then fails and the driver must reconnect.
///
/// A RESP3 push (`>`, e.g. a client-tracking invalidation) answers no
/// request, so it is not paired with one: it is queued apart, for
/// [`Client::poll_push`].
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    clock: Clock,
    out: BytesMut,
    decoder: ReplyDecoder,
    pending: VecDeque<Pending>,
    events: VecDeque<ClientEvent>,
    pushes: VecDeque<Reply>,
    next_id: u64,
    broken: bool,
}

impl Client {
    /// A client on a fresh connection.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut clock = Clock::default();
        clock.advance(now);
        Client {
            config,
            clock,
            out: BytesMut::new(),
            decoder: ReplyDecoder::new(ReplyLimits::default()),
            pending: VecDeque::new(),
            events: VecDeque::new(),
            pushes: VecDeque::new(),
            next_id: 0,
            broken: false,
        }
    }

    /// Queues a command, encoded as RESP2.
    pub fn send(&mut self, cmd: &Command, now: Instant) -> Result<RequestId, ClientError> {
        let id = self.track(now)?;
        cmd.encode_resp(&mut self.out);
        Ok(id)
    }

    /// Registers a request whose bytes the caller transmits itself (a
    /// message transport that sends commands as text).
    pub fn track(&mut self, now: Instant) -> Result<RequestId, ClientError> {
        let now = self.clock.advance(now);
        if self.broken {
            return Err(ClientError::NotConnected);
        }
        if self.pending.len() >= self.config.max_in_flight {
            return Err(ClientError::TooManyInFlight(self.config.max_in_flight));
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.pending.push_back(Pending { id, sent_at: now });
        Ok(id)
    }

    /// Requests awaiting replies.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether the connection is broken and must be replaced.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        (!self.out.is_empty()).then(|| self.out.split())
    }

    /// The next outcome of a request.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next RESP3 push received, oldest first. At most
    /// [`Client::MAX_PUSHES`] are kept: a caller that never asks for them
    /// loses the oldest rather than letting a peer grow memory without
    /// bound.
    #[must_use]
    pub fn poll_push(&mut self) -> Option<Reply> {
        self.pushes.pop_front()
    }

    /// How many undrained pushes [`Client::poll_push`] keeps.
    pub const MAX_PUSHES: usize = 1024;

    /// Feeds bytes received on a stream transport.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        let now = self.clock.advance(now);
        if self.broken {
            return;
        }
        self.decoder.feed(data);
        loop {
            match self.decoder.next_reply() {
                Ok(Some(reply)) => self.deliver(reply, now),
                Ok(None) => return,
                Err(e) => {
                    self.fail_all(Failure::Protocol(e));
                    return;
                }
            }
        }
    }

    /// Feeds a reply decoded by the transport.
    pub fn handle_reply(&mut self, reply: Reply, now: Instant) {
        let now = self.clock.advance(now);
        if !self.broken {
            self.deliver(reply, now);
        }
    }

    fn deliver(&mut self, reply: Reply, now: Instant) {
        if matches!(reply, Reply::Push(_)) {
            if self.pushes.len() >= Self::MAX_PUSHES {
                self.pushes.pop_front();
            }
            self.pushes.push_back(reply);
            return;
        }
        match self.pending.pop_front() {
            Some(p) => self.events.push_back(ClientEvent::Reply {
                id: p.id,
                reply,
                rtt: now - p.sent_at,
            }),
            None => self.fail_all(Failure::Protocol(ReplyDecodeError::Malformed(
                "a reply arrived with no request waiting",
            ))),
        }
    }

    /// The connection closed: every request in flight fails.
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.clock.advance(now);
        self.fail_all(Failure::Disconnected);
    }

    /// A new connection replaces a broken one.
    pub fn handle_reconnected(&mut self, now: Instant) {
        self.clock.advance(now);
        self.fail_all(Failure::Disconnected);
        self.broken = false;
        self.out.clear();
        self.decoder.reset();
    }

    fn fail_all(&mut self, reason: Failure) {
        self.broken = true;
        for p in self.pending.drain(..) {
            self.events.push_back(ClientEvent::Failed {
                id: p.id,
                reason: reason.clone(),
            });
        }
    }

    /// When the oldest request times out.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .front()
            .map(|p| p.sent_at + self.config.request_timeout)
    }

    /// Fails requests whose time is up (and so breaks the connection).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.fail_all(Failure::TimedOut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn dump() -> Command {
        Command::build(&["DUMP"]).unwrap()
    }

    #[test]
    fn replies_pair_in_order_with_rtt() {
        let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
        let a = c
            .send(
                &Command::build(&["GET", "a"]).unwrap(),
                Instant::from_millis(1),
            )
            .unwrap();
        let b = c.send(&dump(), Instant::from_millis(2)).unwrap();
        let sent = c.poll_transmit().unwrap();
        assert_eq!(
            &sent[..],
            b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nDUMP\r\n"
        );
        c.handle_input(b"$1\r\nx\r\n*0", Instant::from_millis(5));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Reply {
                id: a,
                reply: Reply::Bulk(Bytes::from_static(b"x")),
                rtt: Duration::from_millis(4)
            })
        );
        assert_eq!(c.poll_event(), None);
        c.handle_input(b"\r\n", Instant::from_millis(6));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Reply {
                id: b,
                reply: Reply::Array(vec![]),
                rtt: Duration::from_millis(4)
            })
        );
    }

    #[test]
    fn timeout_boundary_fails_everything_in_flight() {
        let config = ClientConfig {
            request_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        let mut c = Client::new(config, Instant::ZERO);
        let a = c.send(&dump(), Instant::ZERO).unwrap();
        let b = c.send(&dump(), Instant::from_millis(500)).unwrap();
        assert_eq!(c.poll_timeout(), Some(Instant::from_millis(2_000)));
        c.handle_timeout(Instant::from_millis(1_999));
        assert_eq!(c.poll_event(), None);
        c.handle_timeout(Instant::from_millis(2_000));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed {
                id: a,
                reason: Failure::TimedOut
            })
        );
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed {
                id: b,
                reason: Failure::TimedOut
            })
        );
        assert_eq!(
            c.send(&dump(), Instant::from_millis(2_001)),
            Err(ClientError::NotConnected)
        );
        c.handle_reconnected(Instant::from_millis(2_100));
        assert!(c.send(&dump(), Instant::from_millis(2_101)).is_ok());
    }

    #[test]
    fn pushes_are_not_replies() {
        let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
        let a = c.send(&dump(), Instant::ZERO).unwrap();
        // A push before the reply, then a RESP3 map answering DUMP.
        c.handle_input(
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n%1\r\n$1\r\nk\r\n$1\r\nv\r\n",
            Instant::from_millis(1),
        );
        assert_eq!(
            c.poll_push(),
            Some(Reply::Push(vec![
                Reply::Bulk(Bytes::from_static(b"invalidate")),
                Reply::Array(vec![Reply::Bulk(Bytes::from_static(b"k"))]),
            ]))
        );
        assert_eq!(c.poll_push(), None);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Reply {
                id: a,
                reply: Reply::Map(vec![(
                    Reply::Bulk(Bytes::from_static(b"k")),
                    Reply::Bulk(Bytes::from_static(b"v"))
                )]),
                rtt: Duration::from_millis(1)
            })
        );
        // With nothing in flight a push is no stray reply.
        c.handle_input(b">1\r\n+x\r\n", Instant::from_millis(2));
        assert!(!c.is_broken());
        assert!(c.poll_push().is_some());
    }

    #[test]
    fn in_flight_is_bounded_and_stray_replies_break_the_connection() {
        let config = ClientConfig {
            max_in_flight: 1,
            ..ClientConfig::default()
        };
        let mut c = Client::new(config, Instant::ZERO);
        c.send(&dump(), Instant::ZERO).unwrap();
        assert_eq!(
            c.send(&dump(), Instant::ZERO),
            Err(ClientError::TooManyInFlight(1))
        );
        c.handle_input(b"+OK\r\n+OK\r\n", Instant::ZERO);
        assert!(matches!(c.poll_event(), Some(ClientEvent::Reply { .. })));
        assert!(c.is_broken());
    }
}
