//! The upstream pipe: one ordered connection to the server, the requests in
//! flight on it, and the proxy's own handshake on each new connection.
//!
//! Replies are paired with requests by order alone: the handshake's first,
//! then the requests in the order they were written. [`Upstream::next_reply`]
//! is the one place a decoded frame is classified, so that a RESP3 push
//! (which answers no request) can be told from a reply there; a push is
//! handed on as it comes, between the replies it arrived between, since
//! the proxy's cache relies on that order (see the module docs of
//! [`proxy`](super), "Tracking").
//!
//! # The handshake
//! On each new connection the proxy sends, ahead of any request and
//! without waiting for their answers: `AUTH <password>` (or
//! `AUTH <user> <password>`) if it has one for the server, then, on a lane
//! that tracks, `HELLO 3` and `CLIENT TRACKING ON`. `HELLO`'s answer also
//! says which server this is ([`UpstreamServer`]). Only a refused `AUTH`
//! (or the server's client-cap line) refuses the proxy. A refused
//! `HELLO 3` or `CLIENT TRACKING ON`
//! (a server too old for them, or one that does not track) leaves the
//! connection working without tracking: in RESP2 if `HELLO 3` was refused,
//! and then whatever the `CLIENT TRACKING ON` behind it answers does not
//! matter, as a RESP2 connection gets no invalidations without a redirect.
//!
//! When to reconnect is the driver's to decide, by
//! [`Reconnect`](crate::backoff::Reconnect).

use super::clients::Waiter;
use super::framer::Framer;
use super::{ProxyConfig, UpstreamServer, UpstreamState, UpstreamTracking};
use crate::auth::Password;
use crate::command::{encode_resp_args, Command};
use crate::errors::{quote_server_line, UpstreamError};
use crate::reply::{Reply, ReplyDecoder, ReplyLimits};
use crate::time::Instant;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;

/// What the proxy does with a request's reply.
#[derive(Debug)]
pub(super) enum Job {
    /// A cacheable read (`GET`) whose reply may fill the cache and that
    /// later reads of the key may join.
    Fill { cmd: Command },
    /// A forwarded command.
    Forward { cmd: Command, write: bool },
    /// A client's transaction, answered by the proxy as it was queued and
    /// sent whole at its `EXEC`: `MULTI`, these, `EXEC`; the reply is
    /// `EXEC`'s.
    Tx { cmds: Vec<Command> },
}

impl Job {
    /// How many replies the job's requests get (`MULTI` … `EXEC` for a
    /// fill or a transaction), if more than one.
    fn batch(&self) -> Option<usize> {
        match self {
            Job::Fill { .. } => Some(4),
            Job::Tx { cmds } => Some(cmds.len() + 2),
            Job::Forward { .. } => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct InFlight {
    pub job: Job,
    pub waiters: Vec<Waiter>,
    pub deadline: Instant,
    /// When it was queued: no later than the server ran it.
    pub sent_at: Instant,
    /// For a fill: the key's time to live in milliseconds, as the `PTTL`
    /// sent right behind the `GET` said (-1: none, -2: no key).
    pub ttl_ms: Option<i64>,
    /// The proxy's bulk epoch when it was sent (see `Proxy::bulk_epoch`).
    pub epoch: u64,
}

/// What the proxy authenticates with on each connection it opens to the
/// server: its password, and the user to give it for, if any.
#[derive(Debug, Clone, Copy)]
pub(super) struct Credentials<'a> {
    pub user: Option<&'a Bytes>,
    pub password: &'a Password,
}

impl<'a> Credentials<'a> {
    /// The configured ones; none without a password (a user alone is
    /// refused by the driver at startup, as `AUTH` needs a password).
    pub fn of(config: &'a ProxyConfig) -> Option<Credentials<'a>> {
        config
            .upstream_password
            .as_ref()
            .map(|password| Credentials {
                user: config.upstream_user.as_ref(),
                password,
            })
    }

    /// Appends the `AUTH` that gives them (one reply).
    pub fn encode(&self, out: &mut BytesMut) {
        let auth = Bytes::from_static(b"AUTH");
        let password = self.password.expose().clone();
        match self.user {
            Some(user) => encode_resp_args(&[auth, user.clone(), password], out),
            None => encode_resp_args(&[auth, password], out),
        }
    }
}

/// What a request of the handshake asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `AUTH [user] <password>`.
    Auth,
    /// `HELLO 3`.
    Hello,
    /// `CLIENT TRACKING ON`.
    Tracking,
}

/// A request the proxy makes of its own on a new connection.
#[derive(Debug, Clone, Copy)]
struct Handshake {
    step: Step,
    deadline: Instant,
}

/// What came off the pipe.
#[derive(Debug)]
pub(super) enum Incoming {
    /// The reply to request `seq`.
    Reply(u64, InFlight, Reply),
    /// A request of the handshake was answered, and did not refuse the
    /// proxy.
    Ready,
    /// The answer on tracking came: [`Upstream::tracking`] is no longer
    /// pending (once per connection that asked for it).
    TrackingSettled,
    /// A RESP3 push (say, `invalidate`): out-of-band data that answers no
    /// request, in its place among the replies.
    Push(Vec<Reply>),
    /// The pipe can no longer be trusted.
    Fault(UpstreamError),
    /// The next piece of a large reply to the oldest request, as it came
    /// off the wire (a pass-through lane's only): `last` holds the request
    /// once the reply is complete.
    Chunk {
        bytes: Bytes,
        last: Option<InFlight>,
    },
}

/// A reply this long that is not complete yet goes on as chunks: below
/// it, replies are decoded whole.
const STREAM_FROM: usize = 16 * 1024;

/// A pass-through lane's input: replies are framed, not decoded, and the
/// large ones handed on a read at a time (see `framer.rs`).
#[derive(Debug, Default)]
struct Raw {
    buf: BytesMut,
    framer: Framer,
    /// The reply at the front is being handed on in chunks.
    streaming: bool,
}

/// The upstream connection, as the proxy sees it.
#[derive(Debug)]
pub(super) struct Upstream {
    state: UpstreamState,
    request_timeout: Duration,
    out: BytesMut,
    decoder: ReplyDecoder,
    handshake: VecDeque<Handshake>,
    /// Bytes at the front of `out` that are the current connection's
    /// handshake, not written yet.
    handshake_unsent: usize,
    /// Requests sent (or queued to send), in pipe order.
    in_flight: VecDeque<InFlight>,
    /// Sequence number of `in_flight[0]`.
    head_seq: u64,
    /// How many replies of the fill at the head were read (a fill is four
    /// requests: `MULTI`, `GET`, `PTTL`, `EXEC`), and the first error among
    /// them, if any.
    fill_read: usize,
    fill_error: Option<Reply>,
    /// Whether the server accepted the proxy on this connection: it
    /// answered the handshake, or there is none to answer.
    verified: bool,
    /// Whether any reply came on this connection.
    answered: bool,
    /// What went wrong on this connection, if anything did.
    fault: Option<UpstreamError>,
    /// What requests fail with while the state is `Down`.
    down_cause: UpstreamError,
    /// A pass-through lane's framing (`None`: replies are decoded).
    raw: Option<Raw>,
    /// Whether the server tracks the keys read on this connection.
    tracking: UpstreamTracking,
    /// The user the handshake's `AUTH` gives, for the refusal's words.
    user: Option<Bytes>,
    /// Which server answered this connection's `HELLO`.
    server: UpstreamServer,
}

impl Upstream {
    /// A pipe waiting for its first connection.
    pub fn new(request_timeout: Duration) -> Self {
        Upstream {
            state: UpstreamState::Connecting,
            request_timeout,
            out: BytesMut::new(),
            decoder: ReplyDecoder::new(ReplyLimits::default()),
            handshake: VecDeque::new(),
            handshake_unsent: 0,
            in_flight: VecDeque::new(),
            head_seq: 0,
            fill_read: 0,
            fill_error: None,
            verified: false,
            answered: false,
            fault: None,
            down_cause: UpstreamError::Unavailable,
            raw: None,
            tracking: UpstreamTracking::Off,
            user: None,
            server: UpstreamServer::Unknown,
        }
    }

    /// A pipe whose large replies are handed on as [`Incoming::Chunk`]s
    /// as they arrive, never held whole.
    pub fn pass_through(request_timeout: Duration) -> Self {
        Upstream {
            raw: Some(Raw::default()),
            ..Upstream::new(request_timeout)
        }
    }

    /// The waiter of the oldest request in flight.
    pub fn head_waiter(&self) -> Option<Waiter> {
        self.in_flight
            .front()
            .and_then(|r| r.waiters.first().copied())
    }

    /// The reply to the oldest request is coming: its deadline starts
    /// again, as a large reply takes as long as it takes to arrive.
    pub fn handle_progress(&mut self, now: Instant) {
        if let Some(req) = self.in_flight.front_mut() {
            req.deadline = now + self.request_timeout;
        }
    }

    /// Whether the server answered properly on the current connection and
    /// did not then refuse the proxy.
    pub fn verified(&self) -> bool {
        self.verified && !self.fault.as_ref().is_some_and(UpstreamError::is_refusal)
    }

    /// What went wrong on the current (or last) connection.
    pub fn fault(&self) -> Option<&UpstreamError> {
        self.fault.as_ref()
    }

    /// Records what went wrong on the current connection.
    pub fn set_fault(&mut self, fault: UpstreamError) {
        self.fault = Some(fault);
    }

    /// What requests fail with until the next attempt, once `Down`.
    pub fn set_down_cause(&mut self, cause: UpstreamError) {
        self.down_cause = cause;
    }

    pub fn state(&self) -> UpstreamState {
        self.state
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Why a new request cannot be queued now, if it cannot.
    pub fn refusal(&self, max_in_flight: usize) -> Option<UpstreamError> {
        if self.state == UpstreamState::Down {
            Some(self.down_cause.clone())
        } else if self.in_flight.len() >= max_in_flight {
            Some(UpstreamError::Overloaded)
        } else {
            None
        }
    }

    /// Queues a request for `waiter`; returns its sequence number.
    pub fn push(&mut self, job: Job, waiter: Waiter, now: Instant) -> u64 {
        match &job {
            Job::Fill { cmd } => {
                // The value and the key's time to live, read together in a
                // transaction: a value is cached only where the cache's
                // lifetime cannot outlast the key's own, and another
                // client's write between a GET and a PTTL sent apart would
                // pair one value with another's deadline.
                crate::families::keyspace::encode_value_and_ttl_query(cmd, &mut self.out);
            }
            Job::Forward { cmd, .. } => cmd.encode_resp(&mut self.out),
            Job::Tx { cmds } => crate::server::encode_transaction(cmds, &mut self.out),
        }
        let seq = self.head_seq + self.in_flight.len() as u64;
        self.in_flight.push_back(InFlight {
            job,
            waiters: vec![waiter],
            deadline: now + self.request_timeout,
            sent_at: now,
            ttl_ms: None,
            epoch: 0,
        });
        seq
    }

    pub fn get(&self, seq: u64) -> Option<&InFlight> {
        let idx = seq.checked_sub(self.head_seq)?;
        self.in_flight.get(usize::try_from(idx).ok()?)
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut InFlight> {
        let idx = seq.checked_sub(self.head_seq)?;
        self.in_flight.get_mut(usize::try_from(idx).ok()?)
    }

    pub fn is_live(&self, seq: u64) -> bool {
        seq.checked_sub(self.head_seq)
            .and_then(|i| usize::try_from(i).ok())
            .is_some_and(|i| i < self.in_flight.len())
    }

    /// Bytes to write, once connected.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        (self.state == UpstreamState::Up && !self.out.is_empty()).then(|| {
            self.handshake_unsent = 0;
            self.out.split()
        })
    }

    /// Whether the server tracks the keys read on this connection.
    pub fn tracking(&self) -> &UpstreamTracking {
        &self.tracking
    }

    /// The connection whose reads the server tracked is gone (or going):
    /// whether it was one. Tracking is pending again, until the next
    /// connection's handshake says.
    pub fn tracking_lost(&mut self) -> bool {
        if self.tracking == UpstreamTracking::On {
            self.tracking = UpstreamTracking::Pending;
            return true;
        }
        false
    }

    /// Which server this connection's `HELLO` was answered by; unknown
    /// until then, and on a connection that sends none.
    pub fn server(&self) -> &UpstreamServer {
        &self.server
    }

    /// The driver connected: the handshake (see the module docs) goes
    /// ahead of what was queued; with `track`, it asks the server to
    /// track what is read on the connection.
    pub fn handle_connected(&mut self, auth: Option<Credentials<'_>>, track: bool, now: Instant) {
        self.state = UpstreamState::Up;
        // The connection this one replaces may have ended with its
        // handshake unanswered, without the proxy being told (the driver
        // replaces an idle connection without a word, see
        // `Lost::Replace`, and the handshake is no request in flight): its
        // answers will never come, and what of it was not written yet is
        // not to be. Left, the old handshake would take the first answers
        // of this one's, and this one's the replies of the first requests.
        self.handshake.clear();
        let _ = self
            .out
            .split_to(std::mem::take(&mut self.handshake_unsent));
        self.decoder.reset();
        if let Some(raw) = &mut self.raw {
            *raw = Raw::default();
        }
        self.verified = auth.is_none();
        self.answered = false;
        self.fault = None;
        self.user = auth.and_then(|a| a.user.cloned());
        self.server = UpstreamServer::Unknown;
        self.tracking = if track {
            UpstreamTracking::Pending
        } else {
            UpstreamTracking::Off
        };
        let mut out = BytesMut::new();
        let deadline = now + self.request_timeout;
        if let Some(auth) = auth {
            auth.encode(&mut out);
            self.handshake.push_back(Handshake {
                step: Step::Auth,
                deadline,
            });
        }
        if track {
            crate::families::connection::encode_tracking_handshake(&mut out);
            for step in [Step::Hello, Step::Tracking] {
                self.handshake.push_back(Handshake { step, deadline });
            }
        }
        if !out.is_empty() {
            self.handshake_unsent = out.len();
            out.unsplit(std::mem::take(&mut self.out));
            self.out = out;
        }
    }

    /// The driver is reconnecting: requests queue again instead of failing.
    pub fn handle_connecting(&mut self) {
        if self.state != UpstreamState::Up {
            self.state = UpstreamState::Connecting;
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        match &mut self.raw {
            Some(raw) => raw.buf.extend_from_slice(data),
            None => self.decoder.feed(data),
        }
    }

    /// The next thing the received bytes say, if they are complete (or,
    /// on a pass-through lane, the next piece of a large reply).
    pub fn next_reply(&mut self) -> Option<Incoming> {
        if self.raw.is_some() {
            return self.next_raw();
        }
        self.next_decoded()
    }

    /// A pass-through lane's next reply: one shorter than [`STREAM_FROM`]
    /// bytes is decoded as on any lane; a longer one goes on as chunks of
    /// what has arrived.
    fn next_raw(&mut self) -> Option<Incoming> {
        let raw = self.raw.as_mut()?;
        if raw.buf.is_empty() {
            return None;
        }
        let done = match raw.framer.scan(&raw.buf) {
            Ok(done) => done,
            Err(_) => return Some(Incoming::Fault(UpstreamError::Malformed)),
        };
        let n = raw.framer.scanned();
        if !raw.streaming {
            if n < STREAM_FROM {
                if !done {
                    return None;
                }
                let whole = raw.buf.split_to(n);
                raw.framer.consumed();
                self.decoder.feed(&whole);
                return self.next_decoded();
            }
            // Only a request's reply is large: not the handshake's, nor
            // something the server sends unasked.
            if !self.handshake.is_empty() || self.in_flight.is_empty() {
                return Some(Incoming::Fault(UpstreamError::Malformed));
            }
            raw.streaming = true;
        }
        if n == 0 {
            return None;
        }
        let bytes = raw.buf.split_to(n).freeze();
        raw.framer.consumed();
        self.answered = true;
        if !done {
            return Some(Incoming::Chunk { bytes, last: None });
        }
        raw.streaming = false;
        let req = self.in_flight.pop_front()?;
        self.head_seq += 1;
        Some(Incoming::Chunk {
            bytes,
            last: Some(req),
        })
    }

    /// The next decoded reply, classified.
    fn next_decoded(&mut self) -> Option<Incoming> {
        let reply = match self.decoder.next_reply() {
            Ok(Some(reply)) => reply,
            Ok(None) => return None,
            Err(_) => return Some(Incoming::Fault(UpstreamError::Malformed)),
        };
        // Pushes first: one may come between any two replies, the fill's
        // four included, and answers no request.
        if let Reply::Push(items) = reply {
            return Some(Incoming::Push(items));
        }
        if let Some(handshake) = self.handshake.pop_front() {
            return Some(self.handshake_answered(handshake.step, reply));
        }
        let batch = match (self.in_flight.front(), &reply) {
            // A server at its client cap says so unasked and closes.
            (None, Reply::Error(line)) => {
                return Some(Incoming::Fault(UpstreamError::refusal(line, false)))
            }
            (None, _) => return Some(Incoming::Fault(UpstreamError::Unasked)),
            // With no handshake, the cap's line arrives where the first
            // request's reply would: it answers no request, and no command
            // replies with it.
            (Some(_), Reply::Error(line))
                if !self.answered && UpstreamError::is_client_limit_line(line) =>
            {
                return Some(Incoming::Fault(UpstreamError::refusal(line, false)));
            }
            (Some(req), _) => req.job.batch(),
        };
        let fill = batch;
        self.answered = true;
        let is_fill = matches!(
            self.in_flight.front().map(|r| &r.job),
            Some(Job::Fill { .. })
        );
        let (reply, ttl_ms) = if let Some(batch) = fill {
            // MULTI's OK and each QUEUED come first; EXEC's array holds a
            // fill's value and time to live, or a transaction's replies.
            self.fill_read += 1;
            if self.fill_read < batch {
                if reply.is_error() && self.fill_error.is_none() {
                    self.fill_error = Some(reply);
                }
                return self.next_decoded();
            }
            self.fill_read = 0;
            let queue_error = self.fill_error.take();
            if !is_fill {
                // The client was told QUEUED by the proxy: an EXECABORT
                // says which command the server refused, and why.
                match (queue_error, reply) {
                    (Some(Reply::Error(why)), Reply::Error(abort))
                        if abort.starts_with(b"EXECABORT") =>
                    {
                        let why = String::from_utf8_lossy(&why);
                        let text = format!(
                            "EXECABORT Transaction discarded because of previous errors: {why}"
                        );
                        (Reply::Error(Bytes::from(text)), None)
                    }
                    (_, reply) => (reply, None),
                }
            } else {
                match (queue_error, reply) {
                    (Some(error), _) => (error, None),
                    (None, Reply::Array(mut pair)) if pair.len() == 2 => {
                        let ttl = match pair.pop() {
                            Some(Reply::Integer(t)) => Some(t),
                            _ => None,
                        };
                        (pair.pop().unwrap_or(Reply::Nil), ttl)
                    }
                    (None, other) => (other, None),
                }
            }
        } else {
            (reply, None)
        };
        let mut req = self.in_flight.pop_front()?;
        req.ttl_ms = ttl_ms;
        let seq = self.head_seq;
        self.head_seq += 1;
        Some(Incoming::Reply(seq, req, reply))
    }

    /// What the answer to one request of the handshake means.
    fn handshake_answered(&mut self, step: Step, reply: Reply) -> Incoming {
        if step == Step::Hello {
            self.server = UpstreamServer::from_hello(&reply);
        }
        let refused = match reply {
            Reply::Error(line) => {
                if step == Step::Auth {
                    return Incoming::Fault(UpstreamError::auth_refusal(
                        &line,
                        self.user.as_deref(),
                    ));
                }
                // The client-cap line comes where the first answer would.
                if !self.answered && UpstreamError::is_client_limit_line(&line) {
                    return Incoming::Fault(UpstreamError::refusal(&line, false));
                }
                Some(line)
            }
            _ => None,
        };
        self.answered = true;
        if step == Step::Auth {
            self.verified = true;
            return Incoming::Ready;
        }
        if self.tracking != UpstreamTracking::Pending {
            // Settled already (`HELLO 3` was refused), or never asked.
            return Incoming::Ready;
        }
        self.tracking = match (refused, step) {
            (Some(line), _) => {
                let asked = if step == Step::Hello {
                    "HELLO 3"
                } else {
                    "CLIENT TRACKING ON"
                };
                UpstreamTracking::Fallback(format!("{asked}: {}", quote_server_line(&line)))
            }
            (None, Step::Tracking) => UpstreamTracking::On,
            // `HELLO 3` accepted: the answer on tracking is next.
            (None, _) => return Incoming::Ready,
        };
        Incoming::TrackingSettled
    }

    /// The pipe failed: hands back every request in flight, which will
    /// never be answered, and whether a live link was lost (for the reset
    /// counter). `state` is what the pipe becomes: `Down` after a loss
    /// (requests fail at once), `Connecting` after a reset (they queue).
    pub fn fail(&mut self, state: UpstreamState) -> (Vec<InFlight>, bool) {
        let counted = !self.in_flight.is_empty() || self.state == UpstreamState::Up;
        self.out.clear();
        self.handshake_unsent = 0;
        self.decoder.reset();
        if let Some(raw) = &mut self.raw {
            *raw = Raw::default();
        }
        self.handshake.clear();
        self.fill_read = 0;
        self.fill_error = None;
        self.head_seq += self.in_flight.len() as u64;
        self.state = state;
        (self.in_flight.drain(..).collect(), counted)
    }

    /// The next deadline: the handshake's while it is outstanding (the
    /// requests behind it wait for it, and fail with it if it times out),
    /// else the oldest request's.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.handshake
            .front()
            .map(|h| h.deadline)
            .or_else(|| self.in_flight.front().map(|r| r.deadline))
    }
}
