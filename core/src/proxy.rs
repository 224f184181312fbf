//! The caching proxy state machine: many downstream clients, one pipelined
//! upstream connection, and the [`TtlCache`] between them.
//!
//! # Consistency rules
//! - A `GET` whose key is fresh in the cache is answered locally, unless a
//!   write to that key is in flight upstream (then it goes upstream, behind
//!   the write, so a client that just wrote never reads the old value).
//! - Concurrent misses for one key are coalesced into one upstream `GET`,
//!   but never onto a `GET` that was sent before a write to the same key.
//!   While such a `GET` is in flight, later `GET`s of the key join it even
//!   if the cache holds the key: its answer can only be newer, and serving
//!   the older cached value behind it would let a client read backwards.
//! - A `GET` reply fills the cache only if no write to that key is in
//!   flight; since the upstream connection is one ordered pipe, a `GET`
//!   sent before a write is answered before that write, so its (older)
//!   value is never cached after the write is acknowledged.
//! - An acknowledged `PUT`/`DEL` writes its result through to the cache;
//!   a failed or lost write invalidates the key.
//!
//! # Driving it
//! Inputs: [`Proxy::add_client`], [`Proxy::handle_client_input`],
//! [`Proxy::remove_client`], [`Proxy::handle_upstream_connected`],
//! [`Proxy::handle_upstream_input`], [`Proxy::handle_upstream_lost`],
//! [`Proxy::handle_timeout`]. After any of them, drain in this order:
//! [`Proxy::poll_event`] until `None` (it names clients with new output and
//! asks for upstream resets), each named client's
//! [`Proxy::poll_client_transmit`] / [`Proxy::poll_client_reply`], then
//! [`Proxy::poll_upstream_transmit`], and finally sleep until
//! [`Proxy::poll_timeout`]. Skipping a drain delays output but loses nothing.

use crate::auth::{self, Password};
use crate::cache::{CacheConfig, CacheStats, Lookup, TtlCache};
use crate::codec::{Decoder, Dialect, Limits};
use crate::command::{encode_resp_args, Command};
use crate::reply::{Reply, ReplyDecoder, ReplyLimits};
use crate::server::local_reply;
use crate::store::Hasher;
use crate::time::{Clock, Instant};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Input limits for downstream clients.
    pub limits: Limits,
    /// The cache.
    pub cache: CacheConfig,
    /// How long an upstream request may take before its clients get an
    /// error and the upstream connection is reset.
    pub request_timeout: Duration,
    /// Most requests one client may have awaiting replies; past it the
    /// proxy stops reading that client ([`Proxy::client_wants_input`]).
    pub max_pending_per_client: usize,
    /// Most requests in flight upstream; past it requests fail at once
    /// rather than queue without bound.
    pub max_upstream_in_flight: usize,
    /// Seed for hash functions; the driver passes a random one.
    pub hash_seed: u64,
    /// Password clients must give with `AUTH` (none: no authentication).
    pub password: Option<Password>,
    /// Password the proxy gives the upstream server on every connection.
    pub upstream_password: Option<Password>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            limits: Limits::default(),
            cache: CacheConfig::default(),
            request_timeout: Duration::from_secs(5),
            max_pending_per_client: 1024,
            max_upstream_in_flight: 100_000,
            hash_seed: 0,
            password: None,
            upstream_password: None,
        }
    }
}

/// Identifies a downstream client of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Where a reply came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The proxy's cache, with the entry's age.
    Cache {
        /// How long ago the entry was stored.
        age: Duration,
    },
    /// The upstream server.
    Upstream,
    /// The proxy itself (`PING`, `INFO`, errors it detected …).
    Proxy,
}

/// A reply with its provenance, for clients that show it (the browser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotatedReply {
    /// The reply.
    pub reply: Reply,
    /// Where it came from.
    pub source: Source,
    /// When the request was received.
    pub received_at: Instant,
    /// When the reply was ready.
    pub ready_at: Instant,
}

/// How a client wants its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Encoded bytes in the dialect of each request (TCP clients).
    Stream,
    /// [`AnnotatedReply`] values (the WebSocket bridge).
    Messages,
}

/// Something the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyEvent {
    /// A client has output to send, or must be closed.
    ClientReady(ClientId),
    /// The upstream connection must be dropped and reopened: a request
    /// timed out or the server sent something unreadable, so the pipe can no
    /// longer be trusted to pair replies with requests.
    ResetUpstream,
}

/// State of the upstream connection as the driver reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    /// Not connected yet, or reconnecting after a reset: requests are queued
    /// (and time out) until it is up.
    Connecting,
    /// Connected.
    Up,
    /// The last connection attempt failed: requests fail at once.
    Down,
}

/// Counters reported by `INFO` at the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests received from clients.
    pub requests: u64,
    /// Requests sent upstream.
    pub upstream_requests: u64,
    /// Client `GET`s that joined an upstream `GET` already in flight.
    pub coalesced: u64,
    /// Upstream requests that timed out.
    pub upstream_timeouts: u64,
    /// Times the upstream connection was lost or reset.
    pub upstream_resets: u64,
    /// Error replies sent to clients.
    pub errors: u64,
    /// Connections accepted since start (kept by the driver).
    pub connections_total: u64,
    /// Connections refused by the client cap (kept by the driver).
    pub connections_rejected: u64,
    /// Connections closed for idling (kept by the driver).
    pub connections_timed_out: u64,
}

#[derive(Debug)]
struct Slot {
    dialect: Dialect,
    received_at: Instant,
    done: Option<(Reply, Source, Instant)>,
}

#[derive(Debug)]
struct ClientState {
    kind: ClientKind,
    decoder: Decoder,
    /// Replies in request order; only a finished head can be sent.
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    head_seq: u64,
    out: BytesMut,
    messages: VecDeque<AnnotatedReply>,
    /// Close once the output is sent (QUIT or a fatal protocol error).
    closing: bool,
    /// Already announced with [`ProxyEvent::ClientReady`] and not drained.
    notified: bool,
    /// Whether the client may run every command (always, without a password).
    authenticated: bool,
    /// Input that arrived behind a rejected message while earlier input was
    /// still undecoded: it waits here so that replies keep arrival order.
    deferred: VecDeque<Deferred>,
}

/// Client input held back behind a rejection (see `ClientState::deferred`).
#[derive(Debug)]
enum Deferred {
    Input(Bytes),
    Reject(String),
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    client: ClientId,
    seq: u64,
}

#[derive(Debug)]
enum Op {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Del {
        keys: Vec<Bytes>,
    },
    Dump,
    /// The proxy's own `AUTH` on a new upstream connection; no client waits.
    Auth,
}

#[derive(Debug)]
struct InFlight {
    op: Op,
    waiters: Vec<Waiter>,
    deadline: Instant,
}

/// Where a `GET` is answered from.
#[derive(Debug)]
enum GetRoute {
    /// Joins the upstream `GET` with this sequence number.
    Join(u64),
    /// The cache, if it holds the key fresh; upstream otherwise.
    Cache,
    /// A new upstream `GET`.
    Upstream,
}

/// Reads a flat `key, value, …` array of bulk strings as pairs.
fn flat_pairs(items: &[Reply]) -> Option<Vec<(Bytes, Bytes)>> {
    if items.len() % 2 != 0 {
        return None;
    }
    items
        .chunks_exact(2)
        .map(|kv| match kv {
            [Reply::Bulk(k), Reply::Bulk(v)] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

/// The caching proxy. See the module docs for its rules and drain order.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    clock: Clock,
    cache: TtlCache,
    /// Seeded like the other maps: std's default hasher would draw its keys
    /// from the OS's random source, which the core never reads.
    clients: HashMap<ClientId, ClientState, Hasher>,
    next_client: u64,
    events: VecDeque<ProxyEvent>,
    upstream: UpstreamState,
    upstream_out: BytesMut,
    upstream_in: ReplyDecoder,
    /// Requests sent (or queued to send) upstream, in pipe order.
    in_flight: VecDeque<InFlight>,
    /// Sequence number of `in_flight[0]`.
    in_flight_head: u64,
    /// Keys with a `GET` in flight that later `GET`s may join.
    coalesce: HashMap<Bytes, u64, Hasher>,
    /// Keys with writes in flight, and how many.
    pending_writes: HashMap<Bytes, u32, Hasher>,
    stats: ProxyStats,
}

impl Proxy {
    /// A proxy with no clients, waiting for its upstream connection.
    pub fn new(config: ProxyConfig, now: Instant) -> Self {
        let mut clock = Clock::default();
        clock.advance(now);
        Proxy {
            cache: TtlCache::new(config.cache.clone(), config.hash_seed),
            coalesce: HashMap::with_hasher(Hasher::with_seed(config.hash_seed)),
            pending_writes: HashMap::with_hasher(Hasher::with_seed(config.hash_seed)),
            clients: HashMap::with_hasher(Hasher::with_seed(config.hash_seed)),
            config,
            clock,

            next_client: 0,
            events: VecDeque::new(),
            upstream: UpstreamState::Connecting,
            upstream_out: BytesMut::new(),
            upstream_in: ReplyDecoder::new(ReplyLimits::default()),
            in_flight: VecDeque::new(),
            // Far from zero: an AUTH put ahead of queued requests takes the
            // number before the head (see `handle_upstream_connected`).
            in_flight_head: 1 << 40,
            stats: ProxyStats::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The proxy's counters.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    /// The proxy's counters, for the driver's connection bookkeeping.
    pub fn stats_mut(&mut self) -> &mut ProxyStats {
        &mut self.stats
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> &CacheStats {
        self.cache.stats()
    }

    /// The upstream connection's state.
    pub fn upstream_state(&self) -> UpstreamState {
        self.upstream
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Upstream requests awaiting replies.
    pub fn upstream_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Registers a new downstream client.
    pub fn add_client(&mut self, kind: ClientKind, now: Instant) -> ClientId {
        self.clock.advance(now);
        let id = ClientId(self.next_client);
        self.next_client += 1;
        self.clients.insert(
            id,
            ClientState {
                kind,
                decoder: Decoder::new(self.config.limits),
                slots: VecDeque::new(),
                head_seq: 0,
                out: BytesMut::new(),
                messages: VecDeque::new(),
                closing: false,
                notified: false,
                authenticated: self.config.password.is_none(),
                deferred: VecDeque::new(),
            },
        );
        id
    }

    /// Forgets a client that disconnected. Replies still owed to it are
    /// dropped when they arrive; shared upstream requests carry on.
    pub fn remove_client(&mut self, id: ClientId) {
        self.clients.remove(&id);
    }

    /// Whether the proxy wants more input from this client: false while it
    /// has [`ProxyConfig::max_pending_per_client`] replies outstanding or is
    /// closing, so a client that floods requests is throttled by TCP.
    pub fn client_wants_input(&self, id: ClientId) -> bool {
        self.clients
            .get(&id)
            .is_some_and(|c| !c.closing && c.slots.len() < self.config.max_pending_per_client)
    }

    /// Whether the client is in the middle of a command (for idle timeouts).
    pub fn client_is_mid_command(&self, id: ClientId) -> bool {
        self.clients
            .get(&id)
            .is_some_and(|c| c.decoder.is_mid_command())
    }

    /// Whether the client should be closed now: it asked to (or broke the
    /// protocol) and everything owed to it has been handed out.
    pub fn client_should_close(&self, id: ClientId) -> bool {
        self.clients.get(&id).is_none_or(|c| {
            c.closing && c.slots.is_empty() && c.out.is_empty() && c.messages.is_empty()
        })
    }

    /// Feeds bytes received from a client and processes every complete
    /// request, up to the pending-reply limit (call again with empty input
    /// once [`Proxy::client_wants_input`] turns true to resume).
    pub fn handle_client_input(&mut self, id: ClientId, data: &[u8], now: Instant) {
        let now = self.clock.advance(now);
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if client.deferred.is_empty() {
            client.decoder.feed(data);
        } else if !data.is_empty() {
            client
                .deferred
                .push_back(Deferred::Input(Bytes::copy_from_slice(data)));
        }
        loop {
            let Some(client) = self.clients.get_mut(&id) else {
                return;
            };
            if client.closing || client.slots.len() >= self.config.max_pending_per_client {
                break;
            }
            let frame = client.decoder.next_frame();
            let limits = *client.decoder.limits();
            let (dialect, request) = match frame {
                Ok(None) => match client.deferred.pop_front() {
                    // Everything before the deferred items is decoded.
                    None => break,
                    Some(Deferred::Input(bytes)) => {
                        client.decoder.feed(&bytes);
                        continue;
                    }
                    Some(Deferred::Reject(message)) => (
                        Dialect::Inline,
                        Err(Reply::Error(Bytes::from(format!("ERR {message}")))),
                    ),
                },
                Ok(Some(frame)) => {
                    let dialect = frame.dialect();
                    (
                        dialect,
                        Command::from_frame(frame, &limits).map_err(Reply::error),
                    )
                }
                Err(e) => {
                    if e.is_fatal() {
                        client.closing = true;
                    }
                    (e.dialect(), Err(Reply::error(&e)))
                }
            };
            self.stats.requests += 1;
            // The hot path: a cache hit for a byte-stream client with no
            // reply queued ahead of it is encoded straight into its output,
            // with no reply slot and no `Reply` value.
            let direct = client.kind == ClientKind::Stream && client.slots.is_empty();
            let mut route = match &request {
                Ok(Command::Get { key }) if client.authenticated => Some(self.route_get(key)),
                _ => None,
            };
            if let (true, Some(GetRoute::Cache), Ok(Command::Get { key })) =
                (direct, &route, &request)
            {
                // Disjoint fields: the value is borrowed from the cache and
                // copied once, into the client's output.
                match self.cache.lookup(key, now) {
                    Lookup::Hit { value, .. } => {
                        if let Some(client) = self.clients.get_mut(&id) {
                            crate::reply::encode_value(dialect, value, &mut client.out);
                        }
                        continue;
                    }
                    Lookup::Miss => route = Some(GetRoute::Upstream),
                }
            }
            let Some(client) = self.clients.get_mut(&id) else {
                return;
            };
            let seq = client.head_seq + client.slots.len() as u64;
            client.slots.push_back(Slot {
                dialect,
                received_at: now,
                done: None,
            });
            match (request, route) {
                (Ok(Command::Get { key }), Some(route)) => {
                    self.get_by_route(Waiter { client: id, seq }, key, route, now)
                }
                (Ok(cmd), _) => self.dispatch(id, seq, cmd, now),
                (Err(reply), _) => {
                    self.complete(Waiter { client: id, seq }, reply, Source::Proxy, now)
                }
            }
        }
        self.flush_client(id);
    }

    /// Answers, in order with the client's other replies, an input the
    /// transport refused before it reached the decoder (a WebSocket message
    /// that is too large or not one command). The client carries on.
    pub fn reject_client_input(&mut self, id: ClientId, message: &str, now: Instant) {
        let now = self.clock.advance(now);
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        // Queued behind whatever input is still undecoded, then processed
        // like input, so its reply takes its place in arrival order.
        client
            .deferred
            .push_back(Deferred::Reject(message.to_owned()));
        self.handle_client_input(id, b"", now);
    }

    fn dispatch(&mut self, client: ClientId, seq: u64, cmd: Command, now: Instant) {
        let waiter = Waiter { client, seq };
        let authenticated = self.clients.get(&client).is_some_and(|c| c.authenticated);
        if !authenticated && !cmd.allowed_before_auth() {
            self.complete(waiter, auth::noauth(), Source::Proxy, now);
            return;
        }
        match cmd {
            Command::Get { key } => {
                let route = self.route_get(&key);
                self.get_by_route(waiter, key, route, now);
            }
            Command::Put { key, value } => {
                self.send_upstream(Op::Put { key, value }, waiter, now);
            }
            Command::Del { keys } => {
                self.send_upstream(Op::Del { keys }, waiter, now);
            }
            Command::Dump => {
                self.send_upstream(Op::Dump, waiter, now);
            }
            Command::Info => {
                let info = self.info();
                self.complete(waiter, Reply::Text(info), Source::Proxy, now);
            }
            Command::Auth {
                password,
                other_user,
            } => {
                let (reply, ok) = auth::check(self.config.password.as_ref(), &password, other_user);
                if let Some(c) = self.clients.get_mut(&client) {
                    c.authenticated = ok;
                }
                self.complete(waiter, reply, Source::Proxy, now);
            }
            Command::Quit => {
                if let Some(c) = self.clients.get_mut(&client) {
                    c.closing = true;
                }
                self.complete(waiter, Reply::ok(), Source::Proxy, now);
            }
            other => {
                let reply = local_reply(other, "proxy");
                self.complete(waiter, reply, Source::Proxy, now);
            }
        }
    }

    /// Where a `GET` of `key` is answered from (see the consistency rules),
    /// short of the cache lookup itself, which the caller makes.
    fn route_get(&mut self, key: &[u8]) -> GetRoute {
        // A GET already in flight for this key was sent after every write
        // to it, so its answer is at least as new as anything cached: join
        // it rather than read the cache, or a client could read a newer
        // value, then an older one. (The emptiness checks spare hashing the
        // key when nothing is in flight.)
        if !self.coalesce.is_empty() {
            if let Some(&seq) = self.coalesce.get(key) {
                if self.in_flight_mut(seq).is_some() {
                    return GetRoute::Join(seq);
                }
            }
        }
        if self.pending_writes.is_empty() || !self.pending_writes.contains_key(key) {
            GetRoute::Cache
        } else {
            GetRoute::Upstream
        }
    }

    fn get_by_route(&mut self, waiter: Waiter, key: Bytes, route: GetRoute, now: Instant) {
        match route {
            GetRoute::Join(seq) => {
                if let Some(req) = self.in_flight_mut(seq) {
                    req.waiters.push(waiter);
                    self.stats.coalesced += 1;
                }
            }
            GetRoute::Cache => match self.cache.get(&key, now) {
                Lookup::Hit { value, age } => {
                    let reply = value.map_or(Reply::Nil, Reply::Bulk);
                    self.complete(waiter, reply, Source::Cache { age }, now);
                }
                Lookup::Miss => self.get_upstream(waiter, key, now),
            },
            GetRoute::Upstream => self.get_upstream(waiter, key, now),
        }
    }

    /// Sends a `GET` upstream that later `GET`s of the key may join.
    fn get_upstream(&mut self, waiter: Waiter, key: Bytes, now: Instant) {
        if let Some(seq) = self.send_upstream(Op::Get { key: key.clone() }, waiter, now) {
            self.coalesce.insert(key, seq);
        }
    }

    /// Marks keys as being written: later `GET`s bypass the cache and do not
    /// join a `GET` sent before the write.
    fn begin_write(&mut self, keys: &[Bytes]) {
        for k in keys {
            *self.pending_writes.entry(k.clone()).or_insert(0) += 1;
            self.coalesce.remove(k);
        }
    }

    fn end_write(&mut self, key: &Bytes) {
        if let Some(n) = self.pending_writes.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pending_writes.remove(key);
            }
        }
    }

    /// Queues a request upstream; returns its sequence number, or `None` if
    /// it was failed at once (upstream down or overloaded).
    fn send_upstream(&mut self, op: Op, waiter: Waiter, now: Instant) -> Option<u64> {
        let refusal = match self.upstream {
            UpstreamState::Down => Some("ERR upstream unavailable: cannot reach the server"),
            _ if self.in_flight.len() >= self.config.max_upstream_in_flight => {
                Some("ERR proxy overloaded: too many requests in flight upstream")
            }
            _ => None,
        };
        if let Some(msg) = refusal {
            // Refused before any bookkeeping: the cache and the coalescing
            // of GETs stay as they were.
            self.complete(
                waiter,
                Reply::Error(Bytes::from_static(msg.as_bytes())),
                Source::Proxy,
                now,
            );
            return None;
        }
        match &op {
            Op::Put { key, .. } => self.begin_write(std::slice::from_ref(key)),
            Op::Del { keys } => self.begin_write(keys),
            Op::Get { .. } | Op::Dump | Op::Auth => {}
        }
        match &op {
            Op::Get { key } => encode_resp_args(
                &[Bytes::from_static(b"GET"), key.clone()],
                &mut self.upstream_out,
            ),
            Op::Put { key, value } => encode_resp_args(
                &[Bytes::from_static(b"SET"), key.clone(), value.clone()],
                &mut self.upstream_out,
            ),
            Op::Del { keys } => {
                let mut args = Vec::with_capacity(keys.len() + 1);
                args.push(Bytes::from_static(b"DEL"));
                args.extend(keys.iter().cloned());
                encode_resp_args(&args, &mut self.upstream_out);
            }
            Op::Dump => encode_resp_args(&[Bytes::from_static(b"DUMP")], &mut self.upstream_out),
            Op::Auth => {}
        }
        self.stats.upstream_requests += 1;
        let seq = self.in_flight_head + self.in_flight.len() as u64;
        self.in_flight.push_back(InFlight {
            op,
            waiters: vec![waiter],
            deadline: now + self.config.request_timeout,
        });
        Some(seq)
    }

    fn in_flight_mut(&mut self, seq: u64) -> Option<&mut InFlight> {
        let idx = seq.checked_sub(self.in_flight_head)?;
        self.in_flight.get_mut(usize::try_from(idx).ok()?)
    }

    /// Undoes the bookkeeping of a write that will never be acknowledged:
    /// its effect upstream is unknown, so the cached value is dropped.
    fn abandon_op(&mut self, op: &Op) {
        match op {
            Op::Put { key, .. } => {
                self.end_write(key);
                self.cache.remove(key);
            }
            Op::Del { keys } => {
                for k in keys {
                    self.end_write(k);
                    self.cache.remove(k);
                }
            }
            Op::Get { .. } | Op::Dump | Op::Auth => {}
        }
    }

    /// Records a finished reply for a waiter and sends what is now in order.
    fn complete(&mut self, waiter: Waiter, reply: Reply, source: Source, now: Instant) {
        if reply.is_error() {
            self.stats.errors += 1;
        }
        let Some(client) = self.clients.get_mut(&waiter.client) else {
            return;
        };
        let Some(idx) = waiter.seq.checked_sub(client.head_seq) else {
            return;
        };
        if let Some(slot) = client.slots.get_mut(idx as usize) {
            slot.done = Some((reply, source, now));
        }
        if idx == 0 {
            self.flush_client(waiter.client);
        }
    }

    /// Moves finished replies at the head of a client's queue to its output.
    fn flush_client(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let mut moved = false;
        while client.slots.front().is_some_and(|s| s.done.is_some()) {
            let Some(slot) = client.slots.pop_front() else {
                break;
            };
            let Some((reply, source, ready_at)) = slot.done else {
                break;
            };
            client.head_seq += 1;
            moved = true;
            match client.kind {
                ClientKind::Stream => reply.encode(slot.dialect, &mut client.out),
                ClientKind::Messages => client.messages.push_back(AnnotatedReply {
                    reply,
                    source,
                    received_at: slot.received_at,
                    ready_at,
                }),
            }
        }
        // Output written straight by the cache-hit fast path counts too.
        let pending = moved || client.closing || !client.out.is_empty();
        if pending && !client.notified {
            client.notified = true;
            self.events.push_back(ProxyEvent::ClientReady(id));
        }
    }

    /// The next thing the driver must act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    /// Encoded output for a [`ClientKind::Stream`] client.
    #[must_use]
    pub fn poll_client_transmit(&mut self, id: ClientId) -> Option<BytesMut> {
        let client = self.clients.get_mut(&id)?;
        client.notified = false;
        (!client.out.is_empty()).then(|| client.out.split())
    }

    /// The next reply for a [`ClientKind::Messages`] client.
    #[must_use]
    pub fn poll_client_reply(&mut self, id: ClientId) -> Option<AnnotatedReply> {
        let client = self.clients.get_mut(&id)?;
        client.notified = false;
        client.messages.pop_front()
    }

    /// Bytes to write to the upstream connection (only once it is up).
    #[must_use]
    pub fn poll_upstream_transmit(&mut self) -> Option<BytesMut> {
        (self.upstream == UpstreamState::Up && !self.upstream_out.is_empty())
            .then(|| self.upstream_out.split())
    }

    /// The driver connected to the upstream server; queued requests go out.
    pub fn handle_upstream_connected(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.upstream = UpstreamState::Up;
        self.upstream_in.reset();
        if let Some(password) = &self.config.upstream_password {
            // AUTH must precede what was queued while connecting. Putting it
            // at the head with the head's number lowered keeps every other
            // request's sequence number (the coalescing map holds them).
            let mut out = BytesMut::new();
            encode_resp_args(
                &[Bytes::from_static(b"AUTH"), password.expose().clone()],
                &mut out,
            );
            out.extend_from_slice(&self.upstream_out);
            self.upstream_out = out;
            self.in_flight_head -= 1;
            self.in_flight.push_front(InFlight {
                op: Op::Auth,
                waiters: Vec::new(),
                deadline: now + self.config.request_timeout,
            });
        }
    }

    /// The upstream connection failed or could not be made. Every request
    /// in flight gets an error; until the next
    /// [`Proxy::handle_upstream_connected`], requests that need the server
    /// fail at once while fresh cache entries are still served.
    pub fn handle_upstream_lost(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.fail_upstream("ERR upstream connection lost", now);
        self.upstream = UpstreamState::Down;
    }

    /// The driver is reconnecting (after [`ProxyEvent::ResetUpstream`] or a
    /// loss): requests are queued again instead of refused.
    pub fn handle_upstream_connecting(&mut self, now: Instant) {
        self.clock.advance(now);
        if self.upstream != UpstreamState::Up {
            self.upstream = UpstreamState::Connecting;
        }
    }

    fn fail_upstream(&mut self, msg: &'static str, now: Instant) {
        if !self.in_flight.is_empty() || self.upstream == UpstreamState::Up {
            self.stats.upstream_resets += 1;
        }
        self.upstream_out.clear();
        self.upstream_in.reset();
        self.coalesce.clear();
        let failed: Vec<InFlight> = self.in_flight.drain(..).collect();
        self.in_flight_head += failed.len() as u64;
        for req in failed {
            self.abandon_op(&req.op);
            for w in req.waiters {
                self.complete(
                    w,
                    Reply::Error(Bytes::from_static(msg.as_bytes())),
                    Source::Proxy,
                    now,
                );
            }
        }
    }

    /// Feeds bytes received from the upstream server.
    pub fn handle_upstream_input(&mut self, data: &[u8], now: Instant) {
        let now = self.clock.advance(now);
        self.upstream_in.feed(data);
        loop {
            match self.upstream_in.next_reply() {
                Ok(Some(reply)) => {
                    let Some(req) = self.in_flight.pop_front() else {
                        self.reset_upstream("ERR upstream sent a reply nobody asked for", now);
                        return;
                    };
                    let seq = self.in_flight_head;
                    self.in_flight_head += 1;
                    self.finish(seq, req, reply, now);
                }
                Ok(None) => return,
                Err(_) => {
                    self.reset_upstream("ERR upstream sent a malformed reply", now);
                    return;
                }
            }
        }
    }

    fn finish(&mut self, seq: u64, req: InFlight, mut reply: Reply, now: Instant) {
        match &req.op {
            Op::Get { key } => {
                if self.coalesce.get(key) == Some(&seq) {
                    self.coalesce.remove(key);
                }
                if !self.pending_writes.contains_key(key) {
                    match &reply {
                        Reply::Bulk(v) => self.cache.insert(key, Some(v), now),
                        Reply::Nil => self.cache.insert(key, None, now),
                        _ => {}
                    }
                }
            }
            Op::Put { key, value } => {
                self.end_write(key);
                if matches!(reply, Reply::Status(_)) && !self.pending_writes.contains_key(key) {
                    self.cache.insert(key, Some(value), now);
                } else {
                    self.cache.remove(key);
                }
            }
            Op::Del { keys } => {
                for k in keys {
                    self.end_write(k);
                    if matches!(reply, Reply::Integer(_)) && !self.pending_writes.contains_key(k) {
                        self.cache.insert(k, None, now);
                    } else {
                        self.cache.remove(k);
                    }
                }
            }
            Op::Auth => {
                if reply.is_error() {
                    self.reset_upstream("ERR upstream refused the proxy's password", now);
                    return;
                }
            }
            Op::Dump => {
                // RESP has no pair type: the server's pairs arrive as a flat
                // array. Restore them so inline clients see `(N pairs)`.
                if let Reply::Array(items) = &reply {
                    if let Some(pairs) = flat_pairs(items) {
                        reply = Reply::Pairs(pairs);
                    }
                }
            }
        }
        // Clone for all but the last waiter: most requests have only one.
        if let Some((last, rest)) = req.waiters.split_last() {
            for w in rest {
                self.complete(*w, reply.clone(), Source::Upstream, now);
            }
            self.complete(*last, reply, Source::Upstream, now);
        }
    }

    fn reset_upstream(&mut self, msg: &'static str, now: Instant) {
        self.fail_upstream(msg, now);
        self.upstream = UpstreamState::Connecting;
        self.events.push_back(ProxyEvent::ResetUpstream);
    }

    /// The earliest time [`Proxy::handle_timeout`] has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let request = self.in_flight.front().map(|r| r.deadline);
        match (request, self.cache.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Times out upstream requests and purges expired cache entries. Safe to
    /// call early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.cache.handle_timeout(now);
        if self.in_flight.front().is_some_and(|r| r.deadline <= now) {
            self.stats.upstream_timeouts += 1;
            self.reset_upstream("ERR upstream timed out", now);
        }
    }

    fn info(&self) -> String {
        let c = self.cache.stats();
        let s = &self.stats;
        format!(
            "# Proxy\nrole:proxy\nupstream:{}\nupstream_in_flight:{}\nclients:{}\n# Cache\ncache_ttl_ms:{}\ncache_entries:{}\ncache_bytes:{}\ncache_hits:{}\ncache_misses:{}\ncache_expirations:{}\ncache_evictions:{}\n# Stats\nrequests:{}\nupstream_requests:{}\ncoalesced:{}\nupstream_timeouts:{}\nupstream_resets:{}\nerrors:{}\nconnections_total:{}\nconnections_rejected:{}\nconnections_timed_out:{}\n",
            match self.upstream {
                UpstreamState::Up => "up",
                UpstreamState::Connecting => "connecting",
                UpstreamState::Down => "down",
            },
            self.in_flight.len(),
            self.clients.len(),
            self.cache.config().ttl.as_millis(),
            self.cache.len(),
            self.cache.bytes(),
            c.hits,
            c.misses,
            c.expirations,
            c.evictions,
            s.requests,
            s.upstream_requests,
            s.coalesced,
            s.upstream_timeouts,
            s.upstream_resets,
            s.errors,
            s.connections_total,
            s.connections_rejected,
            s.connections_timed_out,
        )
    }
}
