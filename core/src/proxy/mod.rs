//! The caching proxy state machine: many downstream clients, one pipelined
//! upstream connection, and the [`TtlCache`] between them.
//!
//! It is split by job, in private modules: `clients` (slots and reply
//! order), `route` (where a command is answered, from the table alone, and
//! the per-key state of the rules below), `upstream` (the pipe), and `info`
//! (what `INFO` says). No command is named here: a command
//! added to the table is routed by its handler, flags and key positions.
//!
//! # Consistency rules
//! - A cacheable read (`GET`: the reply is its key's value) whose key is
//!   fresh in the cache is answered locally, unless a forwarded command
//!   naming that key is in flight upstream (then it goes upstream, behind
//!   it, so a client that just wrote never reads the old value, and one
//!   that just read a key upstream never reads an older value after).
//! - Concurrent misses for one key are coalesced into one upstream `GET`,
//!   but never onto a `GET` that was sent before a write to the same key.
//!   While such a `GET` is in flight, later `GET`s of the key join it even
//!   if the cache holds the key: its answer can only be newer, and serving
//!   the older cached value behind it would let a client read backwards.
//! - A `GET` reply fills the cache only if no write naming that key is in
//!   flight; since the upstream connection is one ordered pipe, a `GET`
//!   sent before a write is answered before that write, so its (older)
//!   value is never cached after the write is acknowledged.
//! - Every other data command is forwarded. When its reply arrives its
//!   keys leave the cache (a write changed them; a read saw a state the
//!   cache may be older than), and an acknowledged write whose spec says
//!   what it did ([`Cache::WriteThrough`]) writes those effects through.
//!   A lost write's keys leave the cache too: its effect is unknown.
//!
//! # Tracking
//! With [`ProxyConfig::tracking`], the main lane's connection asks the
//! server to track the keys read on it (`HELLO 3`, `CLIENT TRACKING ON`:
//! see `upstream.rs`), and the server sends an `invalidate` push when one
//! of them changes, whoever changed it, or a null one when every key may
//! have (`FLUSHALL`). Each push drops its keys from the cache (null: every
//! entry), so an entry is no longer only as fresh as its TTL, which stays
//! as a safety net.
//!
//! Why a fill may be cached however its reply and the push interleave: on
//! one ordered connection, the server sends a reply when it runs the
//! request, and a push when the key changes. A fill reply that arrives
//! after the invalidation of its key was computed after the write that
//! caused it, so it is fresh; one that arrives before it is dropped by it.
//! That holds only if pushes are applied in arrival order with the
//! replies, so `Upstream::next_reply` hands each push on in its place
//! and [`Proxy::handle_upstream_input`] applies it before the next reply,
//! never batched after the replies of the same read.
//!
//! What it relies on, and keeps true:
//! - Every cache entry was read on the current connection, so the server
//!   tracks it: the cache is emptied when a connection is made, and at
//!   once when the tracking one is lost or reset (invalidations sent
//!   meanwhile are lost), not at the next connect.
//! - No entry is written through from a write's effects: the server
//!   tracks reads only, so such an entry would never be invalidated. A
//!   write's keys just leave the cache.
//!
//! A server that refuses either request leaves that connection caching by
//! TTL alone, as with tracking off ([`UpstreamTracking::Fallback`]).
//!
//! The proxy's own RESP3 clients may turn tracking on too (`tracking.rs`):
//! the server's invalidations of the proxy's connection are fanned out to
//! the clients that read each key, queued behind the replies they owe
//! (`Client::push_message`) so that a value read before a change never
//! reaches its client after the change's invalidation.
//!
//! # Which server it is in front of
//! The main lane's `HELLO 3` answer says whether the server is kv or
//! another of the Redis protocol (Redis 6+: [`UpstreamServer`]); the bulk
//! lane and the dedicated connections, which send no `HELLO`, go by it. A
//! command of kv's own ([`KvOnly`](crate::command::table::KvOnly): the
//! `DUMP` of every pair) is answered at the proxy with an error that says
//! so and what to use instead when the server is known not to be kv; sent
//! before that is known, the server's refusal of it is replaced by the
//! same error.
//!
//! # Driving it
//! Inputs: [`Proxy::add_client`], [`Proxy::handle_client_input`],
//! [`Proxy::remove_client`], [`Proxy::handle_upstream_connected`],
//! [`Proxy::handle_upstream_input`], [`Proxy::handle_upstream_lost`],
//! [`Proxy::handle_upstream_closed`], [`Proxy::handle_timeout`]. After any of them, drain in this order:
//! [`Proxy::poll_event`] until `None` (it names clients with new output and
//! asks for upstream resets), each named client's
//! [`Proxy::poll_client_transmit`] / [`Proxy::poll_client_reply`], then
//! [`Proxy::poll_upstream_transmit`], and finally sleep until
//! [`Proxy::poll_timeout`]. Skipping a drain delays output but loses nothing.
//! When to (re)connect upstream is the driver's, by
//! [`Reconnect`](crate::backoff::Reconnect).
//!
//! A client that has [`ProxyConfig::max_pending_per_client`] replies owed
//! is not read ([`Proxy::client_wants_input`]). Once replies free its slots
//! ([`ProxyEvent::ClientReady`]), [`Proxy::client_resumable`] says whether
//! requests it sent before are still waiting in its input; the driver then
//! calls [`Proxy::handle_client_resume`].

mod clients;
mod framer;
mod info;
mod route;
mod tracking;
mod tunnel;

pub use tracking::parse_invalidation;
pub use tunnel::TunnelState;
mod upstream;

use crate::auth::Password;
use crate::cache::{CacheConfig, CacheStats, Lookup, TtlCache};
use crate::codec::{Dialect, Limits};
use crate::command::table::Cache;
use crate::command::table::Flags;
use crate::command::{admit, Command};
use crate::conn::{OutputLimit, Owed};
use crate::db::Effect;
use crate::errors::{rejected_message, ExecError, UpstreamError};
use crate::reply::{encode_value_proto, Reply};
use crate::server::{reply_dialect, InlineReplies};
use crate::session::{HostFacts, Local};
use crate::stats::CommandStats;
use crate::time::{Clock, Instant};
use bytes::{Bytes, BytesMut};
use clients::{Clients, Deferred, Streamed, Waiter};
use route::{route, GetRoute, KeyState, Route};
use std::collections::VecDeque;
use std::time::Duration;
use tracking::{invalidation, Tracking};
use upstream::{Credentials, InFlight, Incoming, Job, Upstream};

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
    /// The user that password is for (a Redis ACL user): with it, every
    /// connection the proxy opens sends `AUTH <user> <password>`, without
    /// it `AUTH <password>` (Redis's `default` user). Ignored without
    /// [`ProxyConfig::upstream_password`], which `kv proxy` refuses at
    /// startup.
    pub upstream_user: Option<Bytes>,
    /// How much output one client may hold. The proxy applies it to the
    /// replies it passes through: one that would take a client past the
    /// hard limit cuts the client off, and so does holding up the bulk
    /// lane (not taking the reply while it arrives) for the soft limit's
    /// time. The driver applies it to everything else.
    pub output_limit: OutputLimit,
    /// How inline commands are answered.
    pub inline_replies: InlineReplies,
    /// Whether the main lane asks the server to track what the proxy reads
    /// and tell it of changes (see the module docs, "Tracking"). Off here
    /// (the proxy then caches by TTL alone); `kv proxy` turns it on unless
    /// told `--tracking off`.
    pub tracking: bool,
    /// Most pairs of key and client the proxy's tracking clients may hold
    /// together; past it, the oldest keys are invalidated for their
    /// readers to make room (Redis's `tracking-table-max-keys`).
    pub tracking_max_keys: usize,
    /// Most dedicated upstream connections at once (see `tunnel.rs`): a
    /// client that needs connection state at the server (a subscription,
    /// a transaction) gets one of its own; past the bound its command is
    /// refused, naming the bound. 0: never (the command is refused, as
    /// the shared pipe cannot carry it). `kv proxy` allows 256.
    pub max_dedicated: usize,
    /// The upstream is a Redis Cluster, through the cluster pipe
    /// ([`crate::cluster`]). A client's transaction is then queued at the
    /// proxy (`MULTI` and each `QUEUED` answered here, a command whose
    /// keys are in another slot than the transaction's so far refused
    /// with `CROSSSLOT`, as a cluster node does) and sent whole at its
    /// `EXEC`, on the shared pipe, which sends it to the slot's master:
    /// no dedicated connection is needed. `WATCH` is refused.
    pub upstream_cluster: bool,
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
            upstream_user: None,
            output_limit: OutputLimit::default(),
            inline_replies: InlineReplies::Human,
            tracking: false,
            tracking_max_keys: 1_000_000,
            max_dedicated: 0,
            upstream_cluster: false,
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
    /// The lane's upstream connection must be dropped and reopened: a
    /// request timed out or the server sent something unreadable, so the
    /// pipe can no longer be trusted to pair replies with requests.
    ResetUpstream(Lane),
    /// The lane's connection is to be read again (see
    /// [`Proxy::upstream_wants_input`]).
    UpstreamReadable(Lane),
}

/// Output a client of the bulk lane may hold before the lane waits for it
/// to take some: one slow reader then costs a bounded amount of memory,
/// and holds up only other reads of the whole keyspace, for no longer
/// than its output limit's soft time.
pub const BULK_HIGH_WATER: usize = 1 << 20;

/// The proxy's upstream connections, each driven on its own by the driver.
///
/// Commands naming keys go on the main lane, one ordered pipe, which is
/// what the cache's consistency rules stand on (see the module docs).
/// Reads of the whole keyspace (`DUMP`, `KEYS`, `SCAN`, `DBSIZE` …) go on
/// the bulk lane: they touch no cache entry, their replies can be huge,
/// and on the main pipe one of them would hold up every request behind it
/// for as long as it takes to arrive. The bulk lane has one request in
/// flight at a time (the next is sent when its turn comes, so a request
/// whose client went away meanwhile is never sent), and its large replies
/// are passed through to their client as they arrive, or dropped as they
/// arrive if the client went away, never held whole.
///
/// A client's own requests keep their order at the server: one for a lane
/// waits while the client has requests in flight on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Commands that name keys, and writes.
    Main,
    /// Reads of the whole keyspace.
    Bulk,
}

impl Lane {
    /// Both lanes.
    pub const ALL: [Lane; 2] = [Lane::Main, Lane::Bulk];

    fn index(self) -> usize {
        match self {
            Lane::Main => 0,
            Lane::Bulk => 1,
        }
    }

    fn other(self) -> Lane {
        match self {
            Lane::Main => Lane::Bulk,
            Lane::Bulk => Lane::Main,
        }
    }

    /// The lane's name, as `INFO` and the logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Bulk => "bulk",
        }
    }
}

/// What becomes of the bulk reply coming in.
#[derive(Debug)]
enum BulkReply {
    /// Written into its client's output as it arrives.
    Pass,
    /// Gathered, to be decoded whole: its client wants another encoding
    /// than the wire's (RESP3, inline, the console's messages).
    Gather(BytesMut),
    /// Dropped as it arrives: its client is gone or cut off.
    Drop,
}

/// State of the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    /// Not connected yet, or reconnecting after a reset: requests are queued
    /// (and time out) until it is up.
    Connecting,
    /// Connected.
    Up,
    /// The last connection attempt failed: requests fail at once until the
    /// next attempt.
    Down,
}

impl UpstreamState {
    /// The state as `INFO` and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamState::Up => "up",
            UpstreamState::Connecting => "connecting",
            UpstreamState::Down => "down",
        }
    }
}

/// Whether the server tracks the keys read on one lane's connection, and
/// so invalidates what the proxy caches from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTracking {
    /// Not asked for: tracking is off, or this is the bulk lane.
    Off,
    /// Asked for, not answered yet (or no connection is up).
    Pending,
    /// The server tracks this connection's reads.
    On,
    /// The server refused (its answer is quoted): this connection caches
    /// by TTL only.
    Fallback(String),
}

impl UpstreamTracking {
    /// The state as `INFO` names it.
    pub fn name(&self) -> &'static str {
        match self {
            UpstreamTracking::Off => "off",
            UpstreamTracking::Pending => "pending",
            UpstreamTracking::On => "on",
            UpstreamTracking::Fallback(_) => "fallback",
        }
    }
}

/// Which server the proxy is in front of, as the main lane's `HELLO`
/// answer says (the lane that tracks sends one; the bulk lane and the
/// dedicated connections go to the same address and use what it learnt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamServer {
    /// No `HELLO` answered on the main lane's connection (yet): tracking
    /// is off, the connection is new, or the server refused it.
    Unknown,
    /// A kv server, with its version.
    Kv {
        /// kv's version.
        version: String,
    },
    /// Another server of the Redis protocol.
    Other {
        /// The name it gives (`redis`, `valkey` …).
        name: String,
        /// Its version.
        version: String,
    },
}

impl UpstreamServer {
    /// What a `HELLO` answer says: kv's carries a field Redis's lacks (both
    /// say `server: redis`, as client libraries expect).
    pub fn from_hello(reply: &Reply) -> UpstreamServer {
        let pairs: Vec<(&Reply, &Reply)> = match reply {
            Reply::Map(entries) => entries.iter().map(|(k, v)| (k, v)).collect(),
            // RESP2's flat array, in case a server answers in it.
            Reply::Array(items) => items
                .chunks_exact(2)
                .map(|pair| (&pair[0], &pair[1]))
                .collect(),
            _ => return UpstreamServer::Unknown,
        };
        let field = |name: &str| {
            pairs.iter().find_map(|(k, v)| match (k, v) {
                (Reply::Bulk(k) | Reply::Status(k), Reply::Bulk(v) | Reply::Status(v))
                    if k.eq_ignore_ascii_case(name.as_bytes()) =>
                {
                    Some(crate::errors::quote_server_line(v))
                }
                _ => None,
            })
        };
        if let Some(version) = field(crate::families::connection::KV_VERSION_FIELD) {
            return UpstreamServer::Kv { version };
        }
        match field("server") {
            Some(name) => UpstreamServer::Other {
                name,
                version: field("version").unwrap_or_default(),
            },
            None => UpstreamServer::Unknown,
        }
    }

    /// The server's name, as `INFO` says it: `kv`, `redis` …, or
    /// `unknown`.
    pub fn name(&self) -> &str {
        match self {
            UpstreamServer::Unknown => "unknown",
            UpstreamServer::Kv { .. } => "kv",
            UpstreamServer::Other { name, .. } => name,
        }
    }

    /// Its version (empty if unknown).
    pub fn version(&self) -> &str {
        match self {
            UpstreamServer::Unknown => "",
            UpstreamServer::Kv { version } | UpstreamServer::Other { version, .. } => version,
        }
    }

    /// Whether it is known not to be kv.
    pub fn is_other(&self) -> bool {
        matches!(self, UpstreamServer::Other { .. })
    }

    /// The error for one of kv's own commands sent to it (see
    /// [`KvOnly`](crate::command::table::KvOnly)).
    fn lacks(&self, kv_only: &crate::command::table::KvOnly) -> UpstreamError {
        let server = match self {
            UpstreamServer::Other { name, version } if !version.is_empty() => {
                format!("{name} {version}")
            }
            UpstreamServer::Other { name, .. } => name.clone(),
            _ => "not kv".to_owned(),
        };
        UpstreamError::NotKv {
            server,
            what: kv_only.what,
            instead: kv_only.instead,
        }
    }
}

/// Whether an upstream's error answer to one of kv's own commands says it
/// has no such command (or not with those arguments): Redis's words for
/// it, which kv never answers its own commands with.
fn says_unknown_command(reply: &Reply) -> bool {
    match reply {
        Reply::Error(line) => {
            line.starts_with(b"ERR unknown command")
                || line.starts_with(b"ERR wrong number of arguments")
        }
        _ => false,
    }
}

/// What a driver asks about one client after each step, in one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStatus {
    /// [`Proxy::client_wants_input`].
    pub wants_input: bool,
    /// [`Proxy::client_resumable`].
    pub resumable: bool,
    /// [`Proxy::client_owed`].
    pub owed: usize,
    /// [`Proxy::client_should_close`].
    pub finished: bool,
    /// Bytes of encoded output ready and not yet handed to the driver.
    pub held: usize,
    /// The proxy cut the client off for its output (and counted it).
    pub cut: bool,
    /// The client's dedicated upstream connection (see `tunnel.rs`): the
    /// driver opens it when [`TunnelState::Wanted`], then carries bytes
    /// with [`Proxy::poll_tunnel_transmit`] and
    /// [`Proxy::handle_tunnel_input`].
    pub tunnel: TunnelState,
}

impl ClientStatus {
    /// What the client is still owed, for [`ConnPolicy::poll_end`]: output
    /// already handed to the driver but not yet written is the driver's to
    /// add.
    ///
    /// [`ConnPolicy::poll_end`]: crate::conn::ConnPolicy::poll_end
    pub fn owed(&self) -> Owed {
        Owed {
            replies: self.owed,
            output: false,
            finished: self.finished,
        }
    }
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
    /// Upstream connections made (each one empties the cache).
    pub upstream_connections: u64,
    /// Error replies sent to clients.
    pub errors: u64,
    /// Requests refused before they ran (unknown, wrong arity, no auth):
    /// Redis's `rejected_calls`.
    pub rejected: u64,
    /// Connections accepted since start (kept by the driver).
    pub connections_total: u64,
    /// Connections refused by the client cap (kept by the driver).
    pub connections_rejected: u64,
    /// Connections closed for idling (kept by the driver).
    pub connections_timed_out: u64,
    /// Clients cut off for holding more output than their limit (kept by
    /// the driver).
    pub output_limit_disconnections: u64,
    /// Invalidation pushes received from the server.
    pub tracking_invalidations_received: u64,
    /// Cache entries those pushes dropped.
    pub tracking_keys_invalidated: u64,
    /// Times the whole cache was dropped for tracking: a null invalidation
    /// (the server was flushed), or the loss of the tracking connection.
    pub tracking_flushes: u64,
    /// Dedicated upstream connections open or being opened now.
    pub dedicated: u64,
    /// Dedicated upstream connections asked for since start.
    pub dedicated_opened: u64,
    /// Commands refused because every dedicated connection was taken.
    pub dedicated_refused: u64,
    /// Dedicated connections given back once their transaction was over.
    pub dedicated_released: u64,
}

/// The key whose value a cacheable read ([`Cache::Value`]) returns: its
/// one key, as the table places it (the table's tests check that such a
/// command has exactly one).
fn cache_key(cmd: &Command) -> &Bytes {
    cmd.arg(cmd.spec().keys.first)
}

/// The caching proxy. See the module docs for its rules and drain order.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    clock: Clock,
    cache: TtlCache,
    clients: Clients,
    upstream: Upstream,
    /// The bulk lane (see [`Lane`]), its requests waiting for their turn,
    /// and what becomes of the reply coming in.
    bulk: Upstream,
    bulk_queue: VecDeque<(Job, Waiter)>,
    bulk_reply: Option<BulkReply>,
    /// Since when the bulk lane has not been read because the client of
    /// the reply coming in holds [`BULK_HIGH_WATER`] of output.
    bulk_blocked_since: Option<Instant>,
    keys: KeyState,
    events: VecDeque<ProxyEvent>,
    stats: ProxyStats,
    /// Reused for the effects of each acknowledged write.
    effects: Vec<Effect>,
    /// The process facts `INFO` shows, refreshed by the driver.
    host: HostFacts,
    commands: CommandStats,
    /// The proxy's clients' tracking (see `tracking.rs`).
    tracking: Tracking,
    /// Why the server last refused to track the main lane's reads, until
    /// a connection where it accepts.
    tracking_refused: Option<String>,
    /// The main lane's cluster pipe, as the driver last said.
    cluster: Option<crate::cluster::ClusterFacts>,
}

impl Proxy {
    /// A proxy with no clients, waiting for its upstream connection.
    pub fn new(config: ProxyConfig, now: Instant) -> Self {
        let mut clock = Clock::default();
        clock.advance(now);
        Proxy {
            cache: TtlCache::new(config.cache.clone(), config.hash_seed),
            clients: Clients::new(config.hash_seed),
            upstream: Upstream::new(config.request_timeout),
            bulk: Upstream::pass_through(config.request_timeout),
            bulk_queue: VecDeque::new(),
            bulk_reply: None,
            bulk_blocked_since: None,
            keys: KeyState::new(config.hash_seed),
            tracking: Tracking::new(config.tracking_max_keys, config.hash_seed),
            config,
            clock,
            events: VecDeque::new(),
            stats: ProxyStats::default(),
            effects: Vec::new(),
            host: HostFacts::default(),
            commands: CommandStats::default(),
            tracking_refused: None,
            cluster: None,
        }
    }

    /// What `INFO` shows of the main lane's cluster pipe, kept by the
    /// driver that runs it.
    pub fn set_cluster_facts(&mut self, facts: crate::cluster::ClusterFacts) {
        self.cluster = Some(facts);
    }

    /// The settings in force.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Clients removed since start (closed connections).
    pub fn clients_removed(&self) -> u64 {
        self.clients.removed()
    }

    /// The process facts `INFO` shows.
    pub fn host(&self) -> &HostFacts {
        &self.host
    }

    /// Entries in the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Bytes charged to the cache's entries.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The figures the console charts, as of `now`.
    pub fn snapshot(&self, now: Instant) -> crate::bridge::ProxySnapshot {
        let c = self.cache.stats();
        crate::bridge::ProxySnapshot {
            at_ms: now.as_nanos() as f64 / 1e6,
            requests: self.stats.requests,
            hits: c.hits,
            misses: c.misses,
            entries: self.cache.len() as u64,
            bytes: self.cache.bytes() as u64,
            upstream: self.upstream.state().name().to_owned(),
            latency: self.commands.all_latency().clone(),
        }
    }

    /// What each command has done at the proxy.
    pub fn command_stats(&self) -> &CommandStats {
        &self.commands
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

    /// The main lane's upstream connection's state.
    pub fn upstream_state(&self) -> UpstreamState {
        self.upstream.state()
    }

    /// Which server the proxy is in front of, as far as the main lane's
    /// connection has said.
    pub fn upstream_server(&self) -> &UpstreamServer {
        self.upstream.server()
    }

    fn lane(&self, lane: Lane) -> &Upstream {
        match lane {
            Lane::Main => &self.upstream,
            Lane::Bulk => &self.bulk,
        }
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut Upstream {
        match lane {
            Lane::Main => &mut self.upstream,
            Lane::Bulk => &mut self.bulk,
        }
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Upstream requests awaiting replies (both lanes), and bulk ones
    /// waiting for their turn.
    pub fn upstream_in_flight(&self) -> usize {
        self.upstream.len() + self.bulk.len() + self.bulk_queue.len()
    }

    /// Registers a new downstream client.
    pub fn add_client(&mut self, kind: ClientKind, now: Instant) -> ClientId {
        self.clock.advance(now);
        self.clients
            .add(kind, self.config.limits, self.config.password.is_none())
    }

    /// Forgets a client that disconnected. Replies still owed to it are
    /// dropped when they arrive; shared upstream requests carry on.
    pub fn remove_client(&mut self, id: ClientId) {
        if self.holds_up_bulk(id) {
            self.unblock_bulk();
        }
        self.tracking.set(id, false);
        if self.clients.get(id).is_some_and(|c| c.tunnel.is_some()) {
            self.stats.dedicated -= 1;
        }
        self.clients.remove(id);
    }

    /// Everything a driver asks about a client after each step. A client
    /// that is gone is finished.
    pub fn client_status(&self, id: ClientId) -> ClientStatus {
        let Some(c) = self.clients.get(id) else {
            return ClientStatus {
                finished: true,
                ..ClientStatus::default()
            };
        };
        // A pinned client is not read while its connection's writes lag.
        let tunnel_room = c
            .tunnel
            .as_ref()
            .is_none_or(|t| t.queued() < BULK_HIGH_WATER);
        let room = !c.closing() && c.pending() < self.config.max_pending_per_client && tunnel_room;
        // A parked request waits for replies, not for room.
        let parked = c
            .parked
            .as_ref()
            .is_some_and(|(cmd, _)| c.must_wait(cmd, route(cmd.spec())));
        ClientStatus {
            wants_input: room,
            resumable: room && c.throttled && !parked,
            owed: c.pending() + usize::from(c.throttled),
            finished: c.closing() && c.pending() == 0 && !c.has_output(),
            held: c.out.len(),
            cut: c.cut,
            tunnel: c.tunnel.as_ref().map_or(TunnelState::None, |t| t.state),
        }
    }

    /// Whether the proxy wants more input from this client: false while it
    /// has [`ProxyConfig::max_pending_per_client`] replies outstanding or is
    /// closing, so a client that floods requests is throttled by TCP.
    pub fn client_wants_input(&self, id: ClientId) -> bool {
        self.client_status(id).wants_input
    }

    /// Whether requests the client sent before it was throttled wait in its
    /// input and there is room for them now: call
    /// [`Proxy::handle_client_resume`].
    pub fn client_resumable(&self, id: ClientId) -> bool {
        self.client_status(id).resumable
    }

    /// Processes the requests a throttled client sent before it was
    /// throttled, as far as its room allows.
    pub fn handle_client_resume(&mut self, id: ClientId, now: Instant) {
        let now = self.clock.advance(now);
        self.process_client(id, now);
    }

    /// Whether the client is in the middle of a command (for idle timeouts).
    pub fn client_is_mid_command(&self, id: ClientId) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| c.decoder.is_mid_command())
    }
    /// Requests read so far from the client (0 for an unknown client).
    pub fn client_requests_read(&self, id: ClientId) -> u64 {
        self.clients
            .get(id)
            .map_or(0, |c| c.decoder.requests_read())
    }

    /// How many replies the client is still owed that the driver has not
    /// been handed: requests waiting for their replies, plus one while
    /// received input waits for slots to free.
    pub fn client_owed(&self, id: ClientId) -> usize {
        self.client_status(id).owed
    }

    /// Whether the client should be closed now: it asked to (or broke the
    /// protocol) and everything owed to it has been handed out.
    pub fn client_should_close(&self, id: ClientId) -> bool {
        self.client_status(id).finished
    }

    /// Feeds bytes received from a client and processes every complete
    /// request, up to the pending-reply limit.
    pub fn handle_client_input(&mut self, id: ClientId, data: &[u8], now: Instant) {
        let now = self.clock.advance(now);
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        if client.deferred.is_empty() {
            client.decoder.feed(data);
        } else if !data.is_empty() {
            client
                .deferred
                .push_back(Deferred::Input(Bytes::copy_from_slice(data)));
        }
        self.process_client(id, now);
    }

    /// Answers, in order with the client's other replies, an input the
    /// transport refused before it reached the decoder (a WebSocket message
    /// that is too large or not one command). The client carries on.
    pub fn reject_client_input(&mut self, id: ClientId, message: &str, now: Instant) {
        let now = self.clock.advance(now);
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        // Queued behind whatever input is still undecoded, then processed
        // like input, so its reply takes its place in arrival order.
        client
            .deferred
            .push_back(Deferred::Reject(message.to_owned()));
        self.process_client(id, now);
    }

    /// Decodes and routes the client's buffered requests until it has
    /// nothing complete left, owes too many replies, or closes.
    fn process_client(&mut self, id: ClientId, now: Instant) {
        let client_count = self.clients.len();
        loop {
            let Some(client) = self.clients.get_mut(id) else {
                return;
            };
            if client.closing() {
                client.throttled = false;
                break;
            }
            if client.pending() >= self.config.max_pending_per_client {
                client.throttled = client.decoder.buffered() > 0 || !client.deferred.is_empty();
                break;
            }
            let limits = *client.decoder.limits();
            if let Some((cmd, _)) = &client.parked {
                if client.must_wait(cmd, route(cmd.spec())) {
                    client.throttled = true;
                    break;
                }
            }
            let parked = client.parked.take();
            let fresh = parked.is_none();
            let (dialect, request) = match parked {
                Some((cmd, dialect)) => (dialect, Ok(cmd)),
                None => match client.decoder.next_frame() {
                    Ok(None) => match client.deferred.pop_front() {
                        // Everything before the deferred items is decoded.
                        None => {
                            client.throttled = false;
                            break;
                        }
                        Some(Deferred::Input(bytes)) => {
                            client.decoder.feed(&bytes);
                            continue;
                        }
                        Some(Deferred::Reject(message)) => {
                            (Dialect::Inline, Err(rejected_message(&message)))
                        }
                    },
                    Ok(Some(frame)) => {
                        let dialect = reply_dialect(
                            frame.dialect(),
                            &mut client.spoke_resp,
                            self.config.inline_replies,
                            client.session.proto,
                        );
                        (
                            dialect,
                            Command::from_frame(frame, &limits).map_err(Reply::from),
                        )
                    }
                    Err(e) => {
                        if e.is_fatal() {
                            client.failed = true;
                        }
                        let dialect = reply_dialect(
                            e.dialect(),
                            &mut client.spoke_resp,
                            self.config.inline_replies,
                            client.session.proto,
                        );
                        (dialect, Err(Reply::from(e)))
                    }
                },
            };
            if fresh {
                self.stats.requests += 1;
            }
            let admitted = request.and_then(|cmd| match admit(&cmd, &client.session, None) {
                Ok(()) => Ok(cmd),
                Err(reply) => {
                    self.commands.rejected(cmd.spec());
                    Err(reply)
                }
            });
            let cmd = match admitted {
                Ok(cmd) => cmd,
                Err(reply) => {
                    self.stats.rejected += 1;
                    let waiter = client.push_slot(id, dialect, None, now);
                    self.complete(waiter, reply, Source::Proxy, now);
                    continue;
                }
            };
            let spec = Some(cmd.spec());
            let routed = match route(cmd.spec()) {
                // With no cache to fill, a read is forwarded as it is: the
                // fill's transaction (to read the key's time to live with
                // its value) would cost the server three more commands.
                Route::CachedRead if self.cache.disabled() => Route::Forward { write: false },
                routed => routed,
            };
            let cmd = match self.config.upstream_cluster && client.tunnel.is_none() {
                false => cmd,
                true => match batch_step(client, cmd) {
                    Batched::Pass(cmd) => cmd,
                    Batched::Answered(reply) => {
                        let waiter = client.push_slot(id, dialect, spec, now);
                        self.complete(waiter, reply, Source::Proxy, now);
                        continue;
                    }
                    Batched::Exec(cmd) => {
                        // Behind the client's requests on the bulk lane, as
                        // any forwarded request.
                        if client.must_wait_for(Lane::Main) {
                            client.parked = Some((cmd, dialect));
                            client.throttled = true;
                            break;
                        }
                        let batch = client.tx.take().unwrap_or_default();
                        let waiter = client.push_slot(id, dialect, spec, now);
                        self.commands.record(cmd.spec(), false, Duration::ZERO);
                        if batch.failed {
                            let reply = Reply::error(
                                "EXECABORT Transaction discarded because of previous errors.",
                            );
                            self.complete(waiter, reply, Source::Proxy, now);
                        } else {
                            self.send(Lane::Main, Job::Tx { cmds: batch.cmds }, waiter, now);
                        }
                        continue;
                    }
                },
            };
            if let Some(tunnel) = &mut client.tunnel {
                // Pinned: everything goes to its own connection, in order
                // (AUTH excepted: the client authenticates with the proxy,
                // which authenticated the connection itself).
                if !crate::families::connection::is_auth(&cmd) {
                    tunnel.send(&cmd);
                    client.tunnel_dialect = dialect;
                    if let Some(proto) = crate::families::connection::hello_switches_to(&cmd) {
                        // What comes back from now on is in that protocol.
                        client.session.proto = proto;
                    }
                    if cmd.spec().flags.contains(Flags::WRITE) {
                        for key in cmd.keys() {
                            self.cache.remove(key);
                        }
                    }
                    self.commands.record(cmd.spec(), false, Duration::ZERO);
                    self.events.push_back(ProxyEvent::ClientReady(id));
                    continue;
                }
            }
            if matches!(routed, Route::Refused)
                && self.config.max_dedicated > 0
                && client.kind == ClientKind::Stream
            {
                if client.pending() > 0 {
                    // Its replies so far come first: the new connection's
                    // would overtake them.
                    client.parked = Some((cmd, dialect));
                    client.throttled = true;
                    break;
                }
                if self.stats.dedicated >= self.config.max_dedicated as u64 {
                    self.stats.dedicated_refused += 1;
                    let waiter = client.push_slot(id, dialect, spec, now);
                    let reply = ExecError::DedicatedLimit(self.config.max_dedicated).into();
                    self.complete(waiter, reply, Source::Proxy, now);
                    continue;
                }
                let mut tunnel =
                    tunnel::Tunnel::new(Credentials::of(&self.config), client.session.proto);
                tunnel.send(&cmd);
                client.tunnel_dialect = dialect;
                client.tunnel = Some(tunnel);
                self.stats.dedicated += 1;
                self.stats.dedicated_opened += 1;
                // Its invalidations now come from the server directly, if
                // it asks there.
                self.tracking.set(id, false);
                self.commands.record(cmd.spec(), false, Duration::ZERO);
                self.events.push_back(ProxyEvent::ClientReady(id));
                continue;
            }
            if client.must_wait(&cmd, routed) {
                client.parked = Some((cmd, dialect));
                client.throttled = true;
                break;
            }
            // Remembered as it is routed: an invalidation that comes before
            // the reply is then queued behind it, which only costs the
            // client a value it could have kept.
            if self.tracking.any()
                && matches!(routed, Route::CachedRead | Route::Forward { write: false })
            {
                for key in cmd.keys() {
                    self.tracking.remember(id, key);
                }
            }
            match routed {
                Route::Local(handler) => {
                    let waiter = client.push_slot(id, dialect, spec, now);
                    let mut node = info::View {
                        config: &self.config,
                        cache: &self.cache,
                        stats: &self.stats,
                        upstream: self.upstream.state(),
                        upstream_server: self.upstream.server(),
                        upstream_in_flight: self.upstream.len(),
                        clients: client_count,
                        host: &self.host,
                        commands: &self.commands,
                        tracking: &mut self.tracking,
                        tracking_refused: self.tracking_refused.as_deref(),
                        lane_tracking: [self.upstream.tracking(), self.bulk.tracking()],
                        cluster: self.cluster.as_ref(),
                    };
                    let reply = handler(
                        &mut Local {
                            session: &mut client.session,
                            node: &mut node,
                        },
                        &cmd,
                    );
                    self.complete(waiter, reply, Source::Proxy, now);
                }
                Route::Refused => {
                    let waiter = client.push_slot(id, dialect, spec, now);
                    let name = cmd.spec().name.replace('|', " ").to_ascii_uppercase();
                    let reply = ExecError::NeedsDedicatedConnection(name).into();
                    self.complete(waiter, reply, Source::Proxy, now);
                }
                Route::CachedRead => {
                    let key = cache_key(&cmd);
                    let upstream = &self.upstream;
                    let get = self.keys.get_route(key, |seq| upstream.is_live(seq));
                    let get = older_than_seen(get, key, client.min_epoch, &self.cache, upstream);
                    if get == GetRoute::Cache && client.nothing_queued() {
                        // The hot path: a hit for a byte-stream client with
                        // nothing queued ahead of it is encoded straight into
                        // its output, with no slot and no `Reply` value; the
                        // value is borrowed from the cache and copied once.
                        if let Lookup::Hit { value, .. } = self.cache.lookup(key, now) {
                            encode_value_proto(
                                dialect,
                                client.session.proto,
                                value,
                                &mut client.out,
                            );
                            // Answered in the pass it arrived in: as the
                            // driver's clock sees it, it took no time.
                            self.commands.record(cmd.spec(), false, Duration::ZERO);
                            client.decoder.recycle(cmd.into_args());
                            continue;
                        }
                        let waiter = client.push_slot(id, dialect, spec, now);
                        self.get_upstream(waiter, cmd, now);
                        continue;
                    }
                    let waiter = client.push_slot(id, dialect, spec, now);
                    self.get_by_route(waiter, cmd, get, now);
                }
                Route::Forward { write } => {
                    let waiter = client.push_slot(id, dialect, spec, now);
                    let min_epoch = client.min_epoch;
                    if let (Some(kv_only), true) =
                        (&cmd.spec().kv_only, self.upstream.server().is_other())
                    {
                        // Known not to be kv: it would be refused there
                        // without a word of why, or run as another command.
                        let reply = self.upstream.server().lacks(kv_only).into();
                        self.complete(waiter, reply, Source::Proxy, now);
                        continue;
                    }
                    if let Some((reply, age)) = self.values_from_cache(&cmd, min_epoch, now) {
                        self.complete(waiter, reply, Source::Cache { age }, now);
                        continue;
                    }
                    let lane = request_lane(&cmd, routed).unwrap_or(Lane::Main);
                    self.send(lane, Job::Forward { cmd, write }, waiter, now);
                }
            }
        }
        self.flush(id);
    }

    /// A multi-key read (`MGET`, [`Cache::Values`]) answered from the cache
    /// when every key may be read from it (no upstream read or write of it
    /// in flight, as for `GET`) and is fresh there; with the oldest entry's
    /// age. Otherwise the whole read goes upstream, in one request.
    fn values_from_cache(
        &mut self,
        cmd: &Command,
        min_epoch: u64,
        now: Instant,
    ) -> Option<(Reply, Duration)> {
        if !matches!(cmd.spec().cache, Cache::Values) {
            return None;
        }
        let upstream = &self.upstream;
        if cmd.keys().any(|k| {
            let get = self.keys.get_route(k, |seq| upstream.is_live(seq));
            older_than_seen(get, k, min_epoch, &self.cache, upstream) != GetRoute::Cache
        }) {
            return None;
        }
        let mut values = Vec::with_capacity(cmd.args().len() - 1);
        let mut oldest = Duration::ZERO;
        for key in cmd.keys() {
            match self.cache.get(key, now) {
                Lookup::Hit { value, age } => {
                    oldest = oldest.max(age);
                    values.push(value.map_or(Reply::Nil, Reply::Bulk));
                }
                Lookup::Miss => return None,
            }
        }
        Some((Reply::Array(values), oldest))
    }

    /// Answers a cacheable read by its route.
    fn get_by_route(&mut self, waiter: Waiter, cmd: Command, route: GetRoute, now: Instant) {
        match route {
            GetRoute::Join(seq) => {
                if let Some(req) = self.upstream.get_mut(seq) {
                    req.waiters.push(waiter);
                    self.stats.coalesced += 1;
                    self.clients.on_lane(waiter, Lane::Main);
                }
            }
            GetRoute::Cache => match self.cache.get(cache_key(&cmd), now) {
                Lookup::Hit { value, age } => {
                    let reply = value.map_or(Reply::Nil, Reply::Bulk);
                    self.complete(waiter, reply, Source::Cache { age }, now);
                }
                Lookup::Miss => self.get_upstream(waiter, cmd, now),
            },
            GetRoute::Upstream => self.get_upstream(waiter, cmd, now),
        }
    }

    /// Sends a cacheable read upstream that later reads of the key may join.
    fn get_upstream(&mut self, waiter: Waiter, cmd: Command, now: Instant) {
        let key = cache_key(&cmd).clone();
        if let Some(seq) = self.send(Lane::Main, Job::Fill { cmd }, waiter, now) {
            self.keys.coalesce(key, seq);
        }
    }

    /// Queues a request on `lane`; returns its sequence number, or `None`
    /// if it was failed at once (upstream down or overloaded) or waits for
    /// its turn on the bulk lane.
    fn send(&mut self, lane: Lane, job: Job, waiter: Waiter, now: Instant) -> Option<u64> {
        let max = self.config.max_upstream_in_flight;
        let queued = self.bulk_queue.len();
        let refusal = match lane {
            Lane::Main => self.upstream.refusal(max),
            Lane::Bulk => self.bulk.refusal(max.saturating_sub(queued)),
        };
        if let Some(e) = refusal {
            // Refused before any bookkeeping: the cache and the coalescing
            // of GETs stay as they were.
            self.complete(waiter, e.into(), Source::Proxy, now);
            return None;
        }
        self.clients.on_lane(waiter, lane);
        if lane == Lane::Bulk {
            self.bulk_queue.push_back((job, waiter));
            self.pump_bulk(now);
            return None;
        }
        match &job {
            Job::Forward { cmd, write } => {
                for key in cmd.keys() {
                    self.keys.begin(key, *write);
                }
            }
            Job::Tx { cmds } => {
                for key in cmds.iter().flat_map(Command::keys) {
                    self.keys.begin(key, true);
                }
            }
            Job::Fill { .. } => {}
        }
        self.stats.upstream_requests += 1;
        let seq = self.upstream.push(job, waiter, now);
        if let Some(req) = self.upstream.get_mut(seq) {
            req.epoch = self.clients.bulk_epoch;
        }
        Some(seq)
    }

    /// Sends the next bulk request whose client is still there, if the
    /// lane has none in flight. Those of clients that went away are
    /// dropped unsent.
    fn pump_bulk(&mut self, now: Instant) {
        if self.bulk.len() > 0 || self.bulk.state() == UpstreamState::Down {
            return;
        }
        while let Some((job, waiter)) = self.bulk_queue.pop_front() {
            if self.clients.get(waiter.client).is_some_and(|c| !c.cut) {
                self.stats.upstream_requests += 1;
                self.bulk.push(job, waiter, now);
                return;
            }
        }
    }

    /// Records a finished reply for a waiter and sends what is now in order.
    fn complete(&mut self, waiter: Waiter, reply: Reply, source: Source, now: Instant) {
        if reply.is_error() {
            self.stats.errors += 1;
        }
        if self.clients.complete(waiter, reply, source, now) {
            self.flush(waiter.client);
        }
    }

    /// Moves a client's finished replies to its output.
    fn flush(&mut self, id: ClientId) {
        self.clients.flush(id, &mut self.events, &mut self.commands);
    }

    /// Whether [`Proxy::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next thing the driver must act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    /// Encoded output for a [`ClientKind::Stream`] client.
    #[must_use]
    pub fn poll_client_transmit(&mut self, id: ClientId) -> Option<BytesMut> {
        let out = self.clients.poll_transmit(id);
        if out.is_some() && self.holds_up_bulk(id) {
            self.unblock_bulk();
        }
        out
    }

    /// Whether the lane's connection is to be read now: the bulk lane is
    /// not, while the client of the reply coming in does not take it.
    pub fn upstream_wants_input(&self, lane: Lane) -> bool {
        lane == Lane::Main || self.bulk_blocked_since.is_none()
    }

    /// Whether client `id` is the one the bulk lane waits for.
    fn holds_up_bulk(&self, id: ClientId) -> bool {
        self.bulk_blocked_since.is_some() && self.bulk.head_waiter().is_some_and(|w| w.client == id)
    }

    fn unblock_bulk(&mut self) {
        self.bulk_blocked_since = None;
        self.events
            .push_back(ProxyEvent::UpstreamReadable(Lane::Bulk));
    }

    /// The next reply for a [`ClientKind::Messages`] client.
    #[must_use]
    pub fn poll_client_reply(&mut self, id: ClientId) -> Option<AnnotatedReply> {
        self.clients.poll_reply(id)
    }

    /// Bytes to write to the lane's upstream connection (only once it is
    /// up).
    #[must_use]
    pub fn poll_upstream_transmit(&mut self, lane: Lane) -> Option<BytesMut> {
        self.lane_mut(lane).poll_transmit()
    }

    /// The driver connected to the upstream server; the proxy's handshake
    /// and the requests queued meanwhile go out.
    ///
    /// The cache is emptied first: the server on the other end may have
    /// restarted with less (or other) data, or missed writes, since the
    /// entries were read, and nothing tells a blip from a restart with
    /// certainty. Requests queued meanwhile stay: they will be answered by
    /// this connection, so their coalescing holds.
    ///
    /// The bulk lane's connection touches no cache entry: its requests
    /// queued meanwhile go out, one at a time.
    pub fn handle_upstream_connected(&mut self, lane: Lane, now: Instant) {
        let now = self.clock.advance(now);
        if lane == Lane::Main {
            self.tracking_lost(now);
            self.cache.clear();
            self.stats.upstream_connections += 1;
        }
        let track = self.config.tracking && lane == Lane::Main;
        // The fields apart, not `lane_mut`: the credentials are borrowed
        // from the config meanwhile.
        let upstream = match lane {
            Lane::Main => &mut self.upstream,
            Lane::Bulk => &mut self.bulk,
        };
        upstream.handle_connected(Credentials::of(&self.config), track, now);
        if lane == Lane::Bulk {
            self.pump_bulk(now);
        }
    }

    /// The lane's connection ended, whichever way, and the driver will
    /// make another (it need not call this after a reset, which the proxy
    /// asked for, nor after [`Proxy::handle_upstream_lost`]; calling it
    /// again does nothing). With tracking, what is cached is dropped at
    /// once, and the proxy's tracking clients are told to drop everything:
    /// invalidations sent after the connection ended are lost, even for a
    /// connection that the server closed while idle.
    pub fn handle_upstream_closed(&mut self, lane: Lane, now: Instant) {
        let now = self.clock.advance(now);
        if lane == Lane::Main {
            self.tracking_lost(now);
        }
    }

    /// If the main lane's connection was tracked, its end empties the
    /// cache and flushes the tracking clients.
    fn tracking_lost(&mut self, now: Instant) {
        if self.upstream.tracking_lost() {
            self.stats.tracking_flushes += 1;
            self.cache.clear();
            self.tracking.flush();
            self.tell_tracking_clients(now);
        }
    }

    /// Queues the invalidations the tracking table has for clients.
    fn tell_tracking_clients(&mut self, now: Instant) {
        for (id, key) in self.tracking.take_notices() {
            // A client back in RESP2 has no channel for them, as in Redis.
            let Some(client) = self.clients.get_mut(id) else {
                continue;
            };
            if client.kind == ClientKind::Stream
                && client.session.proto != crate::reply::Proto::Resp3
            {
                continue;
            }
            client.push_message(id, invalidation(key), now);
            self.flush(id);
        }
    }

    /// An invalidation push on the main lane, applied in its place among
    /// the replies (see the module docs, "Tracking").
    fn handle_push(&mut self, lane: Lane, items: &[Reply], now: Instant) {
        // Only the tracked main lane asked for pushes; another kind
        // (pub/sub, a broken redirect) is no business of the cache's.
        if lane != Lane::Main || *self.upstream.tracking() != UpstreamTracking::On {
            return;
        }
        let Some(keys) = parse_invalidation(items) else {
            return;
        };
        self.stats.tracking_invalidations_received += 1;
        match keys {
            Some(keys) => {
                for key in keys {
                    if self.cache.remove(&key) {
                        self.stats.tracking_keys_invalidated += 1;
                    }
                    self.tracking.invalidate(&key);
                }
            }
            None => {
                self.stats.tracking_flushes += 1;
                self.stats.tracking_keys_invalidated += self.cache.len() as u64;
                self.cache.clear();
                self.tracking.flush();
            }
        }
        self.tell_tracking_clients(now);
    }

    /// The server answered on tracking for the main lane's connection.
    /// Refused, it leaves the proxy unable to tell its tracking clients of
    /// changes: they are told to drop everything and closed, so that they
    /// reconnect and learn it from `CLIENT TRACKING ON`'s refusal rather
    /// than keep values nobody will invalidate.
    fn tracking_settled(&mut self, now: Instant) {
        match self.upstream.tracking().clone() {
            UpstreamTracking::On => self.tracking_refused = None,
            UpstreamTracking::Fallback(why) => {
                self.tracking_refused = Some(why);
                for id in self.tracking.take_clients() {
                    let Some(client) = self.clients.get_mut(id) else {
                        continue;
                    };
                    client.push_message(id, invalidation(None), now);
                    client.session.tracking = false;
                    client.failed = true;
                    self.flush(id);
                }
            }
            UpstreamTracking::Off | UpstreamTracking::Pending => {}
        }
    }

    /// Whether the server tracks the reads of the lane's connection.
    pub fn upstream_tracking(&self, lane: Lane) -> &UpstreamTracking {
        self.lane(lane).tracking()
    }

    /// Why the server last refused to track the main lane, until a
    /// connection where it accepts; `None` if it did not (or tracking is
    /// off).
    pub fn tracking_refused(&self) -> Option<&str> {
        self.tracking_refused.as_deref()
    }

    /// The driver is reconnecting (after [`ProxyEvent::ResetUpstream`] or a
    /// loss): requests are queued again instead of refused.
    pub fn handle_upstream_connecting(&mut self, lane: Lane, now: Instant) {
        self.clock.advance(now);
        self.lane_mut(lane).handle_connecting();
    }

    /// The upstream connection failed or could not be made. Every request
    /// in flight gets an error; until the next
    /// [`Proxy::handle_upstream_connecting`], requests that need the server
    /// fail at once while fresh cache entries are still served.
    pub fn handle_upstream_lost(&mut self, lane: Lane, now: Instant) {
        let now = self.clock.advance(now);
        // A refusal seen on the connection stays the cause: it is why the
        // server closed.
        let cause = match self.lane(lane).fault() {
            Some(e) if e.is_refusal() => e.clone(),
            _ => UpstreamError::Unavailable,
        };
        self.fail_upstream(lane, UpstreamError::Lost, UpstreamState::Down, now);
        self.lane_mut(lane).set_down_cause(cause);
    }

    /// Whether the server answered the proxy properly on the current (or
    /// last) upstream connection and did not then refuse it: the driver's
    /// [`Reconnect::handle_verified`](crate::backoff::Reconnect::handle_verified)
    /// cue. A server that accepts and then refuses the password, or turns
    /// the proxy away at its client cap, never verifies.
    pub fn upstream_verified(&self, lane: Lane) -> bool {
        self.lane(lane).verified()
    }

    /// What went wrong on the current (or last) upstream connection, for
    /// the driver's log line; cleared by each new connection.
    pub fn upstream_fault(&self, lane: Lane) -> Option<&UpstreamError> {
        self.lane(lane).fault()
    }

    /// Gives up on the upstream connection: the driver drops it and
    /// reconnects. Requests queue meanwhile, unless the server refused the
    /// proxy: then they fail at once with the reason until the next
    /// attempt, which the backoff puts off.
    fn reset_upstream(&mut self, lane: Lane, error: UpstreamError, now: Instant) {
        self.lane_mut(lane).set_fault(error.clone());
        if error.is_refusal() {
            self.fail_upstream(lane, error.clone(), UpstreamState::Down, now);
            self.lane_mut(lane).set_down_cause(error);
        } else {
            self.fail_upstream(lane, error, UpstreamState::Connecting, now);
        }
        self.events.push_back(ProxyEvent::ResetUpstream(lane));
    }

    fn fail_upstream(
        &mut self,
        lane: Lane,
        error: UpstreamError,
        state: UpstreamState,
        now: Instant,
    ) {
        if lane == Lane::Main {
            self.tracking_lost(now);
        }
        let (failed, counted) = self.lane_mut(lane).fail(state);
        if counted {
            self.stats.upstream_resets += 1;
        }
        if lane == Lane::Bulk {
            // A client whose reply was half passed through cannot be told
            // where it ends: it is closed after what it got.
            if let (Some(BulkReply::Pass), Some(w)) = (
                self.bulk_reply.take(),
                failed.first().and_then(|r| r.waiters.first()),
            ) {
                if let Some(c) = self.clients.get_mut(w.client) {
                    c.failed = true;
                }
            }
            self.fail_requests(failed, error.clone(), now);
            if state == UpstreamState::Down {
                let queued: Vec<(Job, Waiter)> = self.bulk_queue.drain(..).collect();
                for (_, w) in queued {
                    self.complete(w, error.clone().into(), Source::Proxy, now);
                }
            }
            return;
        }
        self.fail_requests(failed, error, now);
    }

    /// Fails requests that will never be answered, undoing their
    /// bookkeeping: a lost write's effect upstream is unknown, so its keys
    /// leave the cache.
    fn fail_requests(&mut self, failed: Vec<InFlight>, error: UpstreamError, now: Instant) {
        self.keys.forget_gets();
        for req in failed {
            match &req.job {
                Job::Forward { cmd, write } => {
                    for key in cmd.keys() {
                        self.keys.end(key, *write);
                        if *write {
                            self.cache.remove(key);
                        }
                    }
                }
                Job::Tx { cmds } => {
                    for key in cmds.iter().flat_map(Command::keys) {
                        self.keys.end(key, true);
                        self.cache.remove(key);
                    }
                }
                Job::Fill { .. } => {}
            }
            for w in req.waiters {
                self.complete(w, error.clone().into(), Source::Proxy, now);
            }
        }
    }

    /// Feeds bytes received on the lane's upstream connection.
    pub fn handle_upstream_input(&mut self, lane: Lane, data: &[u8], now: Instant) {
        let now = self.clock.advance(now);
        self.lane_mut(lane).feed(data);
        while let Some(incoming) = self.lane_mut(lane).next_reply() {
            match incoming {
                Incoming::Reply(seq, req, reply) => {
                    if lane == Lane::Bulk {
                        self.clients.bulk_epoch += 1;
                    }
                    self.finish(seq, req, reply, now);
                    if lane == Lane::Bulk {
                        self.pump_bulk(now);
                    }
                }
                Incoming::Chunk { bytes, last } => self.bulk_chunk(bytes, last, now),
                Incoming::Push(items) => self.handle_push(lane, &items, now),
                Incoming::TrackingSettled => self.tracking_settled(now),
                Incoming::Ready => {}
                Incoming::Fault(e) => {
                    self.reset_upstream(lane, e, now);
                    break;
                }
            }
        }
    }

    /// A piece of a large bulk reply: passed through to its client,
    /// gathered for another encoding, or dropped, as the first piece
    /// decides; `last` is the request once the reply is complete.
    fn bulk_chunk(&mut self, bytes: Bytes, last: Option<InFlight>, now: Instant) {
        let waiter = match &last {
            Some(req) => req.waiters.first().copied(),
            None => {
                self.bulk.handle_progress(now);
                self.bulk.head_waiter()
            }
        };
        let Some(waiter) = waiter else { return };
        let clients = &self.clients;
        let mode = self.bulk_reply.get_or_insert_with(|| {
            if clients.takes_raw(waiter) {
                BulkReply::Pass
            } else if clients.get(waiter.client).is_some_and(|c| !c.cut) {
                BulkReply::Gather(BytesMut::new())
            } else {
                BulkReply::Drop
            }
        });
        match mode {
            BulkReply::Pass => {
                match self
                    .clients
                    .stream(waiter, &bytes, self.config.output_limit.hard)
                {
                    Streamed::Written => {
                        // A client that does not take the reply as fast as
                        // it comes holds the lane up: it is read no further
                        // until the client takes its output.
                        if self
                            .clients
                            .get(waiter.client)
                            .is_some_and(|c| c.out.len() >= BULK_HIGH_WATER)
                        {
                            self.bulk_blocked_since.get_or_insert(now);
                        }
                    }
                    Streamed::Cut => {
                        self.stats.output_limit_disconnections += 1;
                        *mode = BulkReply::Drop;
                    }
                    Streamed::Gone => *mode = BulkReply::Drop,
                }
                self.clients
                    .announce_growth(waiter.client, &mut self.events);
            }
            BulkReply::Gather(buf) => {
                if self.clients.get(waiter.client).is_some() {
                    buf.extend_from_slice(&bytes);
                } else {
                    *mode = BulkReply::Drop;
                }
            }
            BulkReply::Drop => {}
        }
        let Some(req) = last else { return };
        self.clients.bulk_epoch += 1;
        match self.bulk_reply.take() {
            // Its bytes are out already (or dropped, for a client cut off
            // or gone): the slot is done.
            Some(BulkReply::Pass | BulkReply::Drop) | None => {
                self.complete(waiter, Reply::Nil, Source::Upstream, now);
            }
            Some(BulkReply::Gather(buf)) => {
                let mut decoder =
                    crate::reply::ReplyDecoder::new(crate::reply::ReplyLimits::default());
                decoder.feed(&buf);
                let reply = match decoder.next_reply() {
                    Ok(Some(reply)) => reply,
                    _ => UpstreamError::Malformed.into(),
                };
                // A bulk request is a forwarded one: its sequence number
                // only matters to a fill.
                self.finish(0, req, reply, now);
            }
        }
        self.pump_bulk(now);
    }

    fn finish(&mut self, seq: u64, req: InFlight, mut reply: Reply, now: Instant) {
        match &req.job {
            Job::Fill { cmd } => {
                let key = cache_key(cmd);
                self.keys.end_get(key, seq);
                let sent_at = req.sent_at;
                if self.cacheable(&req, &reply, sent_at, now) && !self.keys.writing(key) {
                    match &reply {
                        Reply::Bulk(v) => self.cache.insert_at(key, Some(v), now, req.epoch),
                        Reply::Nil => self.cache.insert_at(key, None, now, req.epoch),
                        _ => {}
                    }
                } else {
                    // What the cache holds is older than this reply: gone.
                    self.cache.remove(key);
                }
                // A `GET` that joined this one gets the value it read, even
                // if the key's deadline passed between the two: like a value
                // overwritten meanwhile, that is one round trip of staleness
                // (asking again would reorder the client's requests).
            }
            Job::Forward { cmd, write } => {
                for key in cmd.keys() {
                    self.keys.end(key, *write);
                    self.cache.remove(key);
                }
                if let (false, Cache::WriteThrough(effects_of)) =
                    (reply.is_error(), cmd.spec().cache)
                {
                    // The server tracks what the proxy reads, not what it
                    // writes: an entry written through would never be
                    // invalidated.
                    let through = *self.upstream.tracking() != UpstreamTracking::On;
                    effects_of(cmd, &reply, &mut self.effects);
                    for effect in self.effects.drain(..) {
                        // A later write of the key is in flight: its outcome
                        // decides, not this one.
                        if effect.key().is_some_and(|k| self.keys.writing(k)) {
                            continue;
                        }
                        match effect {
                            Effect::Set {
                                key,
                                value,
                                deadline: None,
                            } if through => {
                                self.cache.insert_at(&key, Some(&value), now, req.epoch)
                            }
                            Effect::Del { key } if through => {
                                self.cache.insert_at(&key, None, now, req.epoch)
                            }
                            // Not written through with tracking (above);
                            // and as the cache keeps one lifetime for all
                            // entries, a key with its own deadline is not
                            // cached.
                            Effect::Set { key, .. }
                            | Effect::Expire { key, .. }
                            | Effect::Del { key } => {
                                self.cache.remove(&key);
                            }
                            Effect::Flush => self.cache.clear(),
                        }
                    }
                }
                reply = cmd.spec().shape.restore(reply);
                // Sent before the main lane's HELLO said which server
                // this is (or with none said): its refusal says it.
                if let Some(kv_only) = &cmd.spec().kv_only {
                    let server = self.upstream.server();
                    if says_unknown_command(&reply) && !matches!(server, UpstreamServer::Kv { .. })
                    {
                        reply = server.lacks(kv_only).into();
                    }
                }
            }
            Job::Tx { cmds } => {
                for key in cmds.iter().flat_map(Command::keys) {
                    self.keys.end(key, true);
                    self.cache.remove(key);
                }
                if let Reply::Array(replies) = &mut reply {
                    for (r, cmd) in replies.iter_mut().zip(cmds) {
                        *r = cmd.spec().shape.restore(std::mem::replace(r, Reply::Nil));
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

    /// Whether a fill's value may be cached: only where the cache entry
    /// cannot outlive the key at the server, as the `PTTL` sent behind the
    /// `GET` says. The `PTTL` counts from when the server ran it, which may
    /// be as early as `sent_at`, and the entry would live from `now`: the
    /// key must live longer than the cache's lifetime plus that transit
    /// (and a millisecond of the server's clock's rounding). A key that
    /// vanished between the `GET` and its `PTTL` (-2) may have expired in
    /// between: its value is not cached, though a missing key is.
    fn cacheable(&self, req: &InFlight, reply: &Reply, sent_at: Instant, now: Instant) -> bool {
        match req.ttl_ms {
            Some(-1) => true,
            Some(-2) => matches!(reply, Reply::Nil),
            Some(t) if t >= 0 => {
                let transit = now.saturating_duration_since(sent_at);
                let needed = self.cache.config().ttl + transit + Duration::from_millis(1);
                u128::from(t.unsigned_abs()) > needed.as_millis()
            }
            _ => false,
        }
    }

    /// The process facts `INFO` shows, for the driver to refresh.
    pub fn host_mut(&mut self) -> &mut HostFacts {
        &mut self.host
    }

    /// The earliest time [`Proxy::handle_timeout`] has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.upstream.poll_timeout(),
            self.bulk.poll_timeout(),
            self.cache.poll_timeout(),
            self.bulk_blocked_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the client holding up the bulk lane is cut off, if it still
    /// does then.
    fn bulk_blocked_deadline(&self) -> Option<Instant> {
        let limit = self.config.output_limit;
        (limit.soft > 0).then_some(())?;
        Some(self.bulk_blocked_since? + limit.soft_for)
    }

    /// Times out upstream requests, cuts off a client that held up the
    /// bulk lane too long, and purges expired cache entries. Safe to call
    /// early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.cache.handle_timeout(now);
        if self.bulk_blocked_deadline().is_some_and(|d| d <= now) {
            if let Some(w) = self.bulk.head_waiter() {
                if self.clients.cut(w.client) {
                    self.stats.output_limit_disconnections += 1;
                    self.clients.announce_growth(w.client, &mut self.events);
                }
            }
            self.bulk_reply = Some(BulkReply::Drop);
            self.unblock_bulk();
        }
        // The lane's reply stops arriving while it waits for its client:
        // that is not the server's delay.
        if self.bulk_blocked_since.is_some() {
            self.bulk.handle_progress(now);
        }
        for lane in Lane::ALL {
            if self.lane(lane).poll_timeout().is_some_and(|d| d <= now) {
                self.stats.upstream_timeouts += 1;
                self.reset_upstream(lane, UpstreamError::TimedOut, now);
            }
        }
    }
}

/// What becomes of a request in front of a cluster, where transactions
/// are queued at the proxy (see [`ProxyConfig::upstream_cluster`]).
enum Batched {
    /// Not part of a transaction: routed as any request.
    Pass(Command),
    /// Answered at once: `MULTI`'s `OK`, `QUEUED`, or why not.
    Answered(Reply),
    /// The `EXEC` of a transaction: it goes upstream whole.
    Exec(Command),
}

/// Queues `cmd` in the client's transaction, opens or closes one, or
/// passes it on, as a cluster node would answer each.
fn batch_step(client: &mut clients::Client, cmd: Command) -> Batched {
    use crate::command::table::Handler;
    use crate::server::TxOp;
    let op = match cmd.spec().handler {
        Handler::Tx(op) => Some(op),
        _ => None,
    };
    let Some(batch) = &mut client.tx else {
        return match op {
            Some(TxOp::Multi) => {
                client.tx = Some(clients::Batch::default());
                Batched::Answered(Reply::ok())
            }
            Some(TxOp::Exec | TxOp::Discard) => {
                let name = cmd.spec().name.to_ascii_uppercase();
                Batched::Answered(Reply::error(format!("ERR {name} without MULTI")))
            }
            Some(TxOp::Watch | TxOp::Unwatch) => Batched::Answered(
                ExecError::NeedsDedicatedConnection(cmd.spec().name.to_ascii_uppercase()).into(),
            ),
            None => Batched::Pass(cmd),
        };
    };
    let reply = match op {
        Some(TxOp::Exec) => return Batched::Exec(cmd),
        Some(TxOp::Discard) => {
            client.tx = None;
            return Batched::Answered(Reply::ok());
        }
        Some(TxOp::Multi) => {
            return Batched::Answered(Reply::error("ERR MULTI calls can not be nested"))
        }
        Some(TxOp::Watch) => Reply::error("ERR WATCH inside MULTI is not allowed"),
        _ if matches!(route(cmd.spec()), Route::Refused | Route::Local(_)) => {
            // Connection commands act on the proxy's session, not in the
            // transaction at the server.
            let name = cmd.spec().name.replace('|', " ").to_ascii_uppercase();
            ExecError::NeedsDedicatedConnection(name).into()
        }
        _ => {
            let slots: Vec<u16> = cmd.keys().map(|k| crate::cluster::key_slot(k)).collect();
            let first = batch.slot.or_else(|| slots.first().copied());
            if slots.iter().all(|s| Some(*s) == first) {
                batch.slot = first;
                batch.cmds.push(cmd);
                return Batched::Answered(Reply::Status(Bytes::from_static(b"QUEUED")));
            }
            Reply::error(crate::cluster::CROSSSLOT)
        }
    };
    batch.failed = true;
    Batched::Answered(reply)
}

/// The lane a request goes to if it may go upstream (see [`Lane`]); none
/// for one always answered at the proxy.
fn request_lane(cmd: &Command, route: Route) -> Option<Lane> {
    match route {
        Route::Local(_) | Route::Refused => None,
        Route::Forward { write: false } if cmd.keys().next().is_none() => Some(Lane::Bulk),
        Route::Forward { .. } | Route::CachedRead => Some(Lane::Main),
    }
}

impl clients::Client {
    /// Whether a request routed so must wait (see [`Lane`]); one that may
    /// pin the client to a connection of its own waits for every reply
    /// owed (see `tunnel.rs`).
    fn must_wait(&self, cmd: &Command, route: Route) -> bool {
        if matches!(route, Route::Refused) {
            return self.tunnel.is_none() && self.pending() > 0;
        }
        request_lane(cmd, route).is_some_and(|lane| self.must_wait_for(lane))
    }
}

impl Proxy {
    /// The driver connected the client's dedicated connection.
    pub fn handle_tunnel_connected(&mut self, id: ClientId, now: Instant) {
        self.clock.advance(now);
        if let Some(t) = self.clients.get_mut(id).and_then(|c| c.tunnel.as_mut()) {
            t.state = TunnelState::Up;
        }
    }

    /// What is to be written on the client's dedicated connection, once it
    /// is up.
    pub fn poll_tunnel_transmit(&mut self, id: ClientId) -> Option<BytesMut> {
        let t = self.clients.get_mut(id)?.tunnel.as_mut()?;
        (t.state == TunnelState::Up && !t.out.is_empty()).then(|| t.out.split())
    }

    /// Whether the driver should read the client's dedicated connection:
    /// not while the client holds a reply's worth of output it has not
    /// taken (TCP then holds the server back).
    pub fn tunnel_wants_input(&self, id: ClientId) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| !c.closing() && c.out.len() < BULK_HIGH_WATER)
    }

    /// Bytes from the client's dedicated connection: they go to the client
    /// in its dialect. Unreadable ones close both.
    pub fn handle_tunnel_input(&mut self, id: ClientId, data: &[u8], now: Instant) {
        self.clock.advance(now);
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let (dialect, proto) = (c.tunnel_dialect, c.session.proto);
        let Some(t) = c.tunnel.as_mut() else {
            return;
        };
        match t.take_input(data, dialect, proto, &mut c.out) {
            // Nothing after it can be paired or trusted, or nothing may be
            // sent on it: as if the connection broke.
            Err(fault) => {
                if let tunnel::TunnelFault::Refused(n) = fault {
                    self.stats.errors += n;
                }
                c.failed = true;
            }
            Ok(()) if t.releasable() => {
                // Its transaction is over: back to the shared pipe, and the
                // driver closes the connection (see `tunnel.rs`).
                c.tunnel = None;
                self.stats.dedicated -= 1;
                self.stats.dedicated_released += 1;
            }
            Ok(()) => {}
        }
        self.events.push_back(ProxyEvent::ClientReady(id));
    }

    /// The client's dedicated connection closed, or could not be opened:
    /// the client is closed once its output is written, as a client of the
    /// server would see its connection end.
    pub fn handle_tunnel_closed(&mut self, id: ClientId, now: Instant) {
        self.clock.advance(now);
        if let Some(c) = self.clients.get_mut(id) {
            if c.tunnel.is_some() {
                c.failed = true;
                self.events.push_back(ProxyEvent::ClientReady(id));
            }
        }
    }
}

/// A read's route for a client that has seen the store as of bulk epoch
/// `min_epoch`: a cache entry, or a `GET` in flight, from a request sent
/// before then may be older than what the client saw, so the read goes to
/// the server instead (once: the new fill is of the current epoch).
fn older_than_seen(
    get: GetRoute,
    key: &[u8],
    min_epoch: u64,
    cache: &TtlCache,
    upstream: &Upstream,
) -> GetRoute {
    if min_epoch == 0 {
        return get;
    }
    let stale = match get {
        GetRoute::Cache => cache.epoch_of(key).is_some_and(|e| e < min_epoch),
        GetRoute::Join(seq) => upstream.get(seq).is_none_or(|r| r.epoch < min_epoch),
        GetRoute::Upstream => false,
    };
    if stale {
        GetRoute::Upstream
    } else {
        get
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server sends back for one cached `GET` of `v` (the fill's
    /// `MULTI`, two `QUEUED`, and `EXEC`'s value and no time to live).
    const FILL_V: &[u8] = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\nv\r\n:-1\r\n";

    fn output(p: &mut Proxy, id: ClientId) -> String {
        let mut s = String::new();
        while let Some(b) = p.poll_client_transmit(id) {
            s.push_str(&String::from_utf8_lossy(&b));
        }
        s
    }

    #[test]
    fn a_subscription_pins_its_client_to_a_dedicated_connection_within_the_bound() {
        let t = Instant::from_millis;
        let config = ProxyConfig {
            max_dedicated: 1,
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        // A GET in flight first: the subscription waits for its reply.
        p.handle_client_input(
            c,
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n",
            t(1),
        );
        assert_eq!(p.client_status(c).tunnel, TunnelState::None);
        let _ = p.poll_upstream_transmit(Lane::Main);
        p.handle_upstream_input(Lane::Main, FILL_V, t(2));
        assert_eq!(output(&mut p, c), "$1\r\nv\r\n");
        p.handle_client_resume(c, t(2));
        assert_eq!(p.client_status(c).tunnel, TunnelState::Wanted);
        assert_eq!(p.poll_tunnel_transmit(c), None, "not before it is up");
        p.handle_tunnel_connected(c, t(3));
        let sent = p.poll_tunnel_transmit(c).unwrap();
        assert_eq!(&sent[..], b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n");
        // Whatever the server sends goes to the client, in order; what the
        // client sends next goes to its connection, the cache bypassed.
        p.handle_tunnel_input(c, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", t(4));
        assert_eq!(
            output(&mut p, c),
            "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
        );
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(5));
        assert_eq!(
            &p.poll_tunnel_transmit(c).unwrap()[..],
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(p.upstream_in_flight(), 0, "nothing on the shared pipe");
        // The bound: a second client is refused, and carries on.
        let d = p.add_client(ClientKind::Stream, t(6));
        p.handle_client_input(d, b"*1\r\n$5\r\nMULTI\r\n", t(6));
        assert!(output(&mut p, d).starts_with("-ERR the kv proxy's 1 dedicated"));
        assert_eq!(p.stats().dedicated_refused, 1);
        // The connection ends: so does the client, once its output is out.
        p.handle_tunnel_closed(c, t(7));
        assert!(p.client_should_close(c));
        p.remove_client(c);
        assert_eq!(p.stats().dedicated, 0);
    }

    #[test]
    fn with_the_cache_off_a_get_is_forwarded_as_it_is() {
        let t = Instant::from_millis;
        let config = ProxyConfig {
            cache: CacheConfig {
                ttl: Duration::ZERO,
                ..CacheConfig::default()
            },
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(1));
        let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
        assert_eq!(&sent[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        p.handle_upstream_input(Lane::Main, b"$1\r\nv\r\n", t(2));
        assert_eq!(output(&mut p, c), "$1\r\nv\r\n");
        assert_eq!(p.cache_len(), 0);
    }

    #[test]
    fn in_front_of_a_cluster_a_transaction_is_queued_here_and_sent_whole_at_exec() {
        let t = Instant::from_millis;
        let resp = |lines: &str| -> Vec<u8> {
            let mut out = BytesMut::new();
            for line in lines.lines() {
                let args: Vec<Bytes> = line
                    .split(' ')
                    .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                    .collect();
                crate::command::encode_resp_args(&args, &mut out);
            }
            out.to_vec()
        };
        let config = ProxyConfig {
            upstream_cluster: true,
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        let other = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, &resp("MULTI\nSET {u}a 1\nINCR {u}a"), t(1));
        assert_eq!(output(&mut p, c), "+OK\r\n+QUEUED\r\n+QUEUED\r\n");
        assert_eq!(
            p.poll_upstream_transmit(Lane::Main),
            None,
            "nothing sent yet"
        );
        // Another client's request goes on meanwhile, outside the
        // transaction.
        p.handle_client_input(other, &resp("SET b 2"), t(2));
        let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
        assert_eq!(&sent[..], b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n");
        p.handle_client_input(c, &resp("EXEC\n"), t(3));
        let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sent),
            "*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$4\r\n{u}a\r\n$1\r\n1\r\n\
             *2\r\n$4\r\nINCR\r\n$4\r\n{u}a\r\n*1\r\n$4\r\nEXEC\r\n"
        );
        p.handle_upstream_input(Lane::Main, b"+OK\r\n", t(4));
        assert_eq!(output(&mut p, other), "+OK\r\n");
        p.handle_upstream_input(
            Lane::Main,
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n",
            t(5),
        );
        assert_eq!(output(&mut p, c), "*2\r\n+OK\r\n:2\r\n");
        // Keys of two slots: refused as queued, and EXEC aborts unsent.
        p.handle_client_input(c, &resp("MULTI\nSET x 1\nSET y 1\nEXEC"), t(6));
        assert_eq!(
            output(&mut p, c),
            "+OK\r\n+QUEUED\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n\
             -EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(p.poll_upstream_transmit(Lane::Main), None);
        p.handle_client_input(c, &resp("EXEC\nWATCH x"), t(7));
        let out = output(&mut p, c);
        assert!(
            out.starts_with("-ERR EXEC without MULTI\r\n-ERR 'WATCH' is not available"),
            "{out}"
        );
    }

    #[test]
    fn a_client_pinned_for_a_transaction_goes_back_to_the_shared_pipe_after_it() {
        let t = Instant::from_millis;
        let config = ProxyConfig {
            max_dedicated: 4,
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(
            c,
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$4\r\nEXEC\r\n",
            t(1),
        );
        p.handle_tunnel_connected(c, t(1));
        let _ = p.poll_tunnel_transmit(c);
        // Two of the three replies: still pinned.
        p.handle_tunnel_input(c, b"+OK\r\n+QUEUED\r\n", t(2));
        assert_eq!(p.client_status(c).tunnel, TunnelState::Up);
        p.handle_tunnel_input(c, b"*1\r\n+OK\r\n", t(3));
        assert_eq!(output(&mut p, c), "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n");
        assert_eq!(p.client_status(c).tunnel, TunnelState::None, "given back");
        assert_eq!((p.stats().dedicated, p.stats().dedicated_released), (0, 1));
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(4));
        assert_eq!(p.upstream_in_flight(), 1, "on the shared pipe again");
    }

    #[test]
    fn a_new_upstream_connection_empties_the_cache() {
        let t = Instant::from_millis;
        let mut p = Proxy::new(ProxyConfig::default(), t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(1));
        let _ = p.poll_upstream_transmit(Lane::Main);
        p.handle_upstream_input(Lane::Main, FILL_V, t(2));
        assert_eq!(output(&mut p, c), "$1\r\nv\r\n");
        assert_eq!(p.cache_len(), 1);
        // Lost: still served while the server is away.
        p.handle_upstream_lost(Lane::Main, t(3));
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(4));
        assert_eq!(output(&mut p, c), "$1\r\nv\r\n");
        // Back: the server may be another one; nothing from before is served.
        p.handle_upstream_connecting(Lane::Main, t(5));
        p.handle_upstream_connected(Lane::Main, t(5));
        println!("cache entries after reconnecting: {}", p.cache_len());
        assert_eq!(p.cache_len(), 0);
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(6));
        assert_eq!(output(&mut p, c), "", "the GET went upstream");
        assert_eq!(p.upstream_in_flight(), 1);
        assert_eq!(p.stats().upstream_connections, 2);
    }

    #[test]
    fn a_refused_password_fails_requests_with_the_cause_and_is_not_verified() {
        let t = Instant::from_millis;
        let config = ProxyConfig {
            upstream_password: Some(Password::new(Bytes::from_static(b"wrong"))),
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        assert!(
            !p.upstream_verified(Lane::Main),
            "not before the AUTH is answered"
        );
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(1));
        p.handle_upstream_input(
            Lane::Main,
            format!("-{}\r\n", ExecError::WrongPass).as_bytes(),
            t(2),
        );
        let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
        assert!(
            events.contains(&ProxyEvent::ResetUpstream(Lane::Main)),
            "{events:?}"
        );
        let refused = UpstreamError::RefusedPassword(ExecError::WrongPass.to_string());
        assert_eq!(output(&mut p, c), format!("-{refused}\r\n"));
        assert_eq!(p.upstream_fault(Lane::Main), Some(&refused));
        assert!(!p.upstream_verified(Lane::Main));
        // Until the next attempt, requests fail at once with the cause.
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(3));
        let reply = output(&mut p, c);
        println!("a client's reply while refused: {reply:?}");
        assert_eq!(reply, format!("-{refused}\r\n"));
        // The right password on the next connection: verified.
        p.handle_upstream_connecting(Lane::Main, t(400));
        p.handle_upstream_connected(Lane::Main, t(400));
        p.handle_upstream_input(Lane::Main, b"+OK\r\n", t(401));
        assert!(p.upstream_verified(Lane::Main));
        assert_eq!(p.upstream_fault(Lane::Main), None);
    }

    #[test]
    fn a_client_cap_line_without_a_handshake_is_a_refusal() {
        let t = Instant::from_millis;
        let mut p = Proxy::new(ProxyConfig::default(), t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", t(1));
        p.handle_upstream_input(Lane::Main, crate::errors::MAX_CLIENTS_REPLY, t(2));
        let reply = output(&mut p, c);
        assert_eq!(
            reply,
            "-ERR upstream is at its client limit (ERR max number of clients reached)\r\n"
        );
        assert!(!p.upstream_verified(Lane::Main));
    }

    /// The handshake of a tracking main lane without a password.
    const TRACKING_HANDSHAKE: &[u8] =
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n";
    /// What Redis answers to it: HELLO's map (cut short), and OK.
    const TRACKING_ACCEPTED: &[u8] = b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n+OK\r\n";
    const GET_K: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    const TRACKING_ON: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n";

    /// What client `c` is answered to `CLIENT TRACKING ON`.
    fn client_tracking_on(p: &mut Proxy, c: ClientId) -> String {
        p.handle_client_input(c, TRACKING_ON, Instant::ZERO);
        output(p, c)
    }

    fn push_for(key: &str) -> Vec<u8> {
        format!(
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{key}\r\n",
            key.len()
        )
        .into_bytes()
    }

    /// What the server sends back for one cached `GET` of `value`.
    fn fill_of(value: &str) -> Vec<u8> {
        format!(
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n${}\r\n{value}\r\n:-1\r\n",
            value.len()
        )
        .into_bytes()
    }

    /// A proxy whose main lane the server agreed to track.
    fn tracked(t: impl Fn(u64) -> Instant) -> Proxy {
        let config = ProxyConfig {
            tracking: true,
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
        assert_eq!(&sent[..], TRACKING_HANDSHAKE);
        assert_eq!(p.upstream_tracking(Lane::Main), &UpstreamTracking::Pending);
        p.handle_upstream_input(Lane::Main, TRACKING_ACCEPTED, t(0));
        assert_eq!(p.upstream_tracking(Lane::Main), &UpstreamTracking::On);
        p
    }

    /// Reads `k` through `c` so that the proxy caches `value` for it.
    fn read_k_into_cache(p: &mut Proxy, c: ClientId, value: &str, now: Instant) {
        p.handle_client_input(c, GET_K, now);
        let _ = p.poll_upstream_transmit(Lane::Main);
        p.handle_upstream_input(Lane::Main, &fill_of(value), now);
    }

    fn info_of(p: &mut Proxy, c: ClientId, now: Instant) -> String {
        p.handle_client_input(c, b"INFO tracking\r\n", now);
        output(p, c)
    }

    #[test]
    fn an_invalidation_push_drops_a_cached_key() {
        let t = Instant::from_millis;
        let mut p = tracked(t);
        let c = p.add_client(ClientKind::Stream, t(0));
        read_k_into_cache(&mut p, c, "v", t(1));
        assert_eq!(output(&mut p, c), "$1\r\nv\r\n");
        p.handle_client_input(c, GET_K, t(2));
        assert_eq!(output(&mut p, c), "$1\r\nv\r\n", "served from the cache");
        p.handle_upstream_input(Lane::Main, &push_for("k"), t(3));
        assert_eq!(p.cache_len(), 0);
        assert_eq!(
            output(&mut p, c),
            "",
            "a client that does not track is told nothing"
        );
        p.handle_client_input(c, GET_K, t(4));
        assert_eq!(output(&mut p, c), "", "the next GET goes upstream");
        assert_eq!(p.upstream_in_flight(), 1);
        let s = p.stats();
        assert_eq!(
            (
                s.tracking_invalidations_received,
                s.tracking_keys_invalidated
            ),
            (1, 1)
        );
    }

    #[test]
    fn a_null_invalidation_drops_every_entry() {
        let t = Instant::from_millis;
        let mut p = tracked(t);
        let c = p.add_client(ClientKind::Stream, t(0));
        for key in ["a", "b", "c"] {
            p.handle_client_input(c, format!("GET {key}\r\n").as_bytes(), t(1));
            let _ = p.poll_upstream_transmit(Lane::Main);
            p.handle_upstream_input(Lane::Main, &fill_of(key), t(1));
        }
        assert_eq!(p.cache_len(), 3);
        p.handle_upstream_input(Lane::Main, b">2\r\n$10\r\ninvalidate\r\n_\r\n", t(2));
        assert_eq!(p.cache_len(), 0);
        let s = p.stats();
        assert_eq!(
            (
                s.tracking_invalidations_received,
                s.tracking_keys_invalidated,
                s.tracking_flushes
            ),
            (1, 3, 1)
        );
    }

    #[test]
    fn a_fill_after_its_keys_invalidation_is_cached_and_one_before_it_is_dropped() {
        let t = Instant::from_millis;
        let mut p = tracked(t);
        let c = p.add_client(ClientKind::Stream, t(0));
        // The push comes first: the server ran the GET after the write.
        p.handle_client_input(c, GET_K, t(1));
        let _ = p.poll_upstream_transmit(Lane::Main);
        let mut wire = push_for("k");
        wire.extend_from_slice(&fill_of("new"));
        p.handle_upstream_input(Lane::Main, &wire, t(2));
        assert_eq!(output(&mut p, c), "$3\r\nnew\r\n");
        assert_eq!(p.cache_len(), 1, "fresh: cached");
        p.handle_client_input(c, GET_K, t(3));
        assert_eq!(output(&mut p, c), "$3\r\nnew\r\n");
        // The reply comes first, in the same read as the push behind it:
        // the push still applies after it, not before.
        p.handle_upstream_input(Lane::Main, &push_for("k"), t(4));
        p.handle_client_input(c, GET_K, t(5));
        let _ = p.poll_upstream_transmit(Lane::Main);
        let mut wire = fill_of("old");
        wire.extend_from_slice(&push_for("k"));
        p.handle_upstream_input(Lane::Main, &wire, t(6));
        assert_eq!(output(&mut p, c), "$3\r\nold\r\n");
        assert_eq!(
            p.cache_len(),
            0,
            "older than the write: dropped by its push"
        );
        // The same with the push inside the fill's transaction replies.
        p.handle_client_input(c, GET_K, t(7));
        let _ = p.poll_upstream_transmit(Lane::Main);
        let mut wire = b"+OK\r\n+QUEUED\r\n".to_vec();
        wire.extend_from_slice(&push_for("k"));
        wire.extend_from_slice(b"+QUEUED\r\n*2\r\n$5\r\nnewer\r\n:-1\r\n");
        p.handle_upstream_input(Lane::Main, &wire, t(8));
        assert_eq!(output(&mut p, c), "$5\r\nnewer\r\n");
        assert_eq!(p.cache_len(), 1, "EXEC ran the GET after the write");
    }

    #[test]
    fn with_tracking_a_write_is_not_written_through() {
        let t = Instant::from_millis;
        let mut p = tracked(t);
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, b"SET k v\r\n", t(1));
        let _ = p.poll_upstream_transmit(Lane::Main);
        p.handle_upstream_input(Lane::Main, b"+OK\r\n", t(2));
        assert_eq!(output(&mut p, c), "OK\r\n");
        assert_eq!(
            p.cache_len(),
            0,
            "the server tracks no key the proxy only wrote"
        );
    }

    /// Found by the simulation: a connection replaced while idle (the
    /// driver tells the proxy nothing, `Lost::Replace`) with its handshake
    /// unanswered left the handshake behind, so the next connection's
    /// handshake took the first requests' replies, and the clients got
    /// the wrong ones (a `GET` answered `QUEUED`).
    #[test]
    fn a_replaced_connection_leaves_no_unanswered_handshake_behind() {
        let t = Instant::from_millis;
        for written in [true, false] {
            let config = ProxyConfig {
                tracking: true,
                ..ProxyConfig::default()
            };
            let mut p = Proxy::new(config, t(0));
            p.handle_upstream_connected(Lane::Main, t(0));
            if written {
                let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
                assert_eq!(&sent[..], TRACKING_HANDSHAKE);
            }
            // The connection ends unanswered, and is replaced; a request
            // queued meanwhile goes on the new one.
            p.handle_upstream_closed(Lane::Main, t(1));
            let c = p.add_client(ClientKind::Stream, t(1));
            p.handle_client_input(c, GET_K, t(1));
            p.handle_upstream_connected(Lane::Main, t(2));
            let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
            let rest = sent
                .strip_prefix(TRACKING_HANDSHAKE)
                .expect("the handshake first");
            assert!(
                rest.starts_with(b"*1\r\n$5\r\nMULTI"),
                "{rest:?} (written: {written})"
            );
            let mut answers = TRACKING_ACCEPTED.to_vec();
            answers.extend_from_slice(&fill_of("v"));
            p.handle_upstream_input(Lane::Main, &answers, t(3));
            assert_eq!(output(&mut p, c), "$1\r\nv\r\n", "written: {written}");
            assert_eq!(p.upstream_tracking(Lane::Main), &UpstreamTracking::On);
        }
    }

    #[test]
    fn losing_the_tracked_connection_empties_the_cache_at_once() {
        let t = Instant::from_millis;
        // Lost, reset (a timeout), or closed while idle: all the same.
        for end in ["lost", "reset", "closed"] {
            let mut p = tracked(t);
            let c = p.add_client(ClientKind::Stream, t(0));
            read_k_into_cache(&mut p, c, "v", t(1));
            assert_eq!(p.cache_len(), 1);
            match end {
                "lost" => p.handle_upstream_lost(Lane::Main, t(2)),
                "reset" => {
                    p.handle_client_input(c, b"GET other\r\n", t(2));
                    p.handle_timeout(t(2) + Duration::from_secs(5));
                }
                _ => p.handle_upstream_closed(Lane::Main, t(2)),
            }
            assert_eq!(p.cache_len(), 0, "{end}");
            assert_eq!(p.stats().tracking_flushes, 1, "{end}");
            assert_eq!(p.upstream_tracking(Lane::Main), &UpstreamTracking::Pending);
            p.handle_upstream_closed(Lane::Main, t(3));
            assert_eq!(p.stats().tracking_flushes, 1, "once per connection");
        }
        // Without tracking, as before: served while the server is away.
        let mut p = Proxy::new(ProxyConfig::default(), t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        read_k_into_cache(&mut p, c, "v", t(1));
        p.handle_upstream_lost(Lane::Main, t(2));
        p.handle_upstream_closed(Lane::Main, t(2));
        assert_eq!(p.cache_len(), 1);
        assert_eq!(p.upstream_tracking(Lane::Main), &UpstreamTracking::Off);
    }

    #[test]
    fn a_refused_tracking_falls_back_to_ttl_only_and_says_why() {
        let t = Instant::from_millis;
        let config = ProxyConfig {
            tracking: true,
            ..ProxyConfig::default()
        };
        // Today's kv server: HELLO 3 yes, CLIENT TRACKING no. An old
        // server: neither, and the connection stays in RESP2.
        let cases: [(&[u8], &str); 2] = [
            (
                b"%1\r\n$6\r\nserver\r\n$2\r\nkv\r\n-ERR unknown subcommand 'TRACKING'\r\n",
                "CLIENT TRACKING ON: ERR unknown subcommand 'TRACKING'",
            ),
            (
                b"-ERR unknown command 'HELLO'\r\n-ERR Unknown subcommand or wrong number of arguments for 'TRACKING'\r\n",
                "HELLO 3: ERR unknown command 'HELLO'",
            ),
        ];
        for (answer, why) in cases {
            let mut p = Proxy::new(config.clone(), t(0));
            p.handle_upstream_connected(Lane::Main, t(0));
            let c = p.add_client(ClientKind::Stream, t(0));
            p.handle_client_input(c, b"SET k v\r\n", t(1));
            let _ = p.poll_upstream_transmit(Lane::Main);
            let mut wire = answer.to_vec();
            wire.extend_from_slice(b"+OK\r\n");
            p.handle_upstream_input(Lane::Main, &wire, t(2));
            assert_eq!(
                p.upstream_tracking(Lane::Main),
                &UpstreamTracking::Fallback(why.to_owned())
            );
            assert_eq!(p.tracking_refused(), Some(why));
            assert!(p.upstream_verified(Lane::Main));
            // Working as with tracking off: the write went through, and
            // into the cache.
            assert_eq!(output(&mut p, c), "OK\r\n");
            assert_eq!(p.cache_len(), 1);
            p.handle_upstream_lost(Lane::Main, t(3));
            assert_eq!(p.cache_len(), 1, "TTL only: kept while the server is away");
            let info = info_of(&mut p, c, t(4));
            assert!(info.contains("tracking:fallback\r\n"), "{info}");
            assert!(
                info.contains(&format!("tracking_fallback_reason:{why}\r\n")),
                "{info}"
            );
            assert!(
                info.contains("upstream_main_tracking:fallback\r\n"),
                "{info}"
            );
            assert!(info.contains("upstream_bulk_tracking:off\r\n"), "{info}");
            // The next connection that accepts ends the fallback.
            p.handle_upstream_connecting(Lane::Main, t(5));
            p.handle_upstream_connected(Lane::Main, t(5));
            p.handle_upstream_input(Lane::Main, TRACKING_ACCEPTED, t(6));
            assert_eq!(p.tracking_refused(), None);
        }
    }

    #[test]
    fn replies_in_resp3_reach_each_client_in_its_own_protocol() {
        let t = Instant::from_millis;
        let mut p = tracked(t);
        let two = p.add_client(ClientKind::Stream, t(0));
        let three = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(three, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", t(0));
        let _ = output(&mut p, three);
        for c in [two, three] {
            p.handle_client_input(c, b"*2\r\n$4\r\nMGET\r\n$1\r\nx\r\n", t(1));
        }
        let _ = p.poll_upstream_transmit(Lane::Main);
        // RESP3's null, twice.
        p.handle_upstream_input(Lane::Main, b"*1\r\n_\r\n*1\r\n_\r\n", t(2));
        assert_eq!(output(&mut p, two), "*1\r\n$-1\r\n");
        assert_eq!(output(&mut p, three), "*1\r\n_\r\n");
    }

    #[test]
    fn a_tracking_client_gets_the_push_for_a_key_it_read_and_others_do_not() {
        let t = Instant::from_millis;
        let mut p = tracked(t);
        let hello3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
        let [tracking, other] = [0, 1].map(|_| {
            let c = p.add_client(ClientKind::Stream, t(0));
            p.handle_client_input(c, hello3, t(0));
            c
        });
        let _ = (output(&mut p, tracking), output(&mut p, other));
        assert_eq!(client_tracking_on(&mut p, tracking), "+OK\r\n");
        // One reads k from the server, the other from the cache.
        read_k_into_cache(&mut p, other, "v", t(1));
        p.handle_client_input(tracking, GET_K, t(1));
        assert_eq!(output(&mut p, tracking), "$1\r\nv\r\n");
        assert_eq!(output(&mut p, other), "$1\r\nv\r\n");
        let invalidate_k = ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        p.handle_upstream_input(Lane::Main, &push_for("k"), t(2));
        assert_eq!(output(&mut p, tracking), invalidate_k);
        assert_eq!(output(&mut p, other), "");
        // Told once: forgotten until read again.
        p.handle_upstream_input(Lane::Main, &push_for("k"), t(3));
        assert_eq!(output(&mut p, tracking), "");
        // A push comes behind the replies owed: the client reads the
        // value, then learns it changed, never the other way round.
        p.handle_client_input(tracking, GET_K, t(4));
        p.handle_client_input(tracking, b"*2\r\n$3\r\nGET\r\n$1\r\nj\r\n", t(4));
        let _ = p.poll_upstream_transmit(Lane::Main);
        p.handle_upstream_input(Lane::Main, &fill_of("v2"), t(5));
        assert_eq!(output(&mut p, tracking), "$2\r\nv2\r\n");
        let mut wire = push_for("k");
        wire.extend_from_slice(&fill_of("jv"));
        p.handle_upstream_input(Lane::Main, &wire, t(6));
        assert_eq!(
            output(&mut p, tracking),
            format!("$2\r\njv\r\n{invalidate_k}")
        );
        // The connection lost: every tracking client drops everything.
        p.handle_upstream_lost(Lane::Main, t(7));
        assert_eq!(output(&mut p, tracking), ">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert_eq!(output(&mut p, other), "");
        let info = info_of(&mut p, other, t(8));
        assert!(info.contains("tracking_clients:1\r\n"), "{info}");
    }

    #[test]
    fn client_tracking_is_refused_where_the_proxy_cannot_deliver_it() {
        let t = Instant::from_millis;
        let refused = |p: &mut Proxy, c| {
            let reply = client_tracking_on(p, c);
            assert!(reply.starts_with("-ERR "), "{reply}");
            reply
        };
        let mut p = tracked(t);
        let c = p.add_client(ClientKind::Stream, t(0));
        assert!(refused(&mut p, c).contains("needs RESP3"));
        p.handle_client_input(c, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", t(0));
        let _ = output(&mut p, c);
        p.handle_client_input(
            c,
            b"*4\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n$5\r\nBCAST\r\n",
            t(0),
        );
        assert_eq!(
            output(&mut p, c),
            "-ERR the kv proxy does not support CLIENT TRACKING BCAST yet\r\n"
        );
        p.handle_client_input(c, b"*2\r\n$6\r\nCLIENT\r\n$8\r\nGETREDIR\r\n", t(0));
        assert_eq!(output(&mut p, c), ":-1\r\n", "not tracking");
        assert_eq!(client_tracking_on(&mut p, c), "+OK\r\n");
        p.handle_client_input(c, b"*2\r\n$6\r\nCLIENT\r\n$8\r\nGETREDIR\r\n", t(0));
        assert_eq!(output(&mut p, c), ":0\r\n", "tracking, to itself");
        let mut p = Proxy::new(ProxyConfig::default(), t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        assert!(refused(&mut p, c).contains("--tracking off"));
        // The upstream refused: RESP3 clients that tracked are told to
        // drop everything and closed; new ones are refused.
        let config = ProxyConfig {
            tracking: true,
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", t(0));
        let _ = output(&mut p, c);
        assert_eq!(client_tracking_on(&mut p, c), "+OK\r\n");
        p.handle_upstream_connected(Lane::Main, t(1));
        p.handle_upstream_input(
            Lane::Main,
            b"%1\r\n$6\r\nserver\r\n$2\r\nkv\r\n-ERR unknown subcommand 'TRACKING'\r\n",
            t(2),
        );
        assert_eq!(output(&mut p, c), ">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert!(p.client_should_close(c));
        let d = p.add_client(ClientKind::Stream, t(3));
        p.handle_client_input(d, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", t(3));
        let _ = output(&mut p, d);
        let why = refused(&mut p, d);
        assert!(why.contains("upstream refused client tracking (CLIENT TRACKING ON: ERR unknown subcommand 'TRACKING')"), "{why}");
    }

    /// A proxy that gives the server `alice`'s password `secret`.
    fn alices(config: ProxyConfig) -> ProxyConfig {
        ProxyConfig {
            upstream_password: Some(Password::new(Bytes::from_static(b"secret"))),
            upstream_user: Some(Bytes::from_static(b"alice")),
            ..config
        }
    }

    /// `AUTH alice secret`, as the proxy sends it.
    const AUTH_ALICE: &[u8] = b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n";
    /// Redis's refusal of an ACL user's `AUTH`.
    const REDIS_WRONGPASS: &[u8] =
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";

    #[test]
    fn with_a_user_every_upstream_connection_authenticates_as_that_user() {
        let t = Instant::from_millis;
        let config = alices(ProxyConfig {
            tracking: true,
            max_dedicated: 1,
            ..ProxyConfig::default()
        });
        let mut p = Proxy::new(config, t(0));
        // The main lane: the AUTH, then the tracking handshake.
        p.handle_upstream_connected(Lane::Main, t(0));
        let sent = p.poll_upstream_transmit(Lane::Main).unwrap();
        assert_eq!(&sent[..], [AUTH_ALICE, TRACKING_HANDSHAKE].concat());
        p.handle_upstream_input(Lane::Main, b"+OK\r\n", t(1));
        assert!(p.upstream_verified(Lane::Main));
        // The bulk lane: the AUTH alone.
        p.handle_upstream_connected(Lane::Bulk, t(1));
        let sent = p.poll_upstream_transmit(Lane::Bulk).unwrap();
        assert_eq!(&sent[..], AUTH_ALICE);
        // A dedicated connection: the AUTH, and the client's HELLO 3.
        let c = p.add_client(ClientKind::Stream, t(1));
        p.handle_client_input(c, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", t(1));
        let _ = output(&mut p, c);
        p.handle_client_input(c, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n", t(2));
        p.handle_tunnel_connected(c, t(2));
        let sent = p.poll_tunnel_transmit(c).unwrap();
        assert_eq!(
            &sent[..],
            [AUTH_ALICE, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"].concat(),
            "the SUBSCRIBE waits for the AUTH's answer"
        );
        p.handle_tunnel_input(c, b"+OK\r\n", t(3));
        assert_eq!(
            &p.poll_tunnel_transmit(c).unwrap()[..],
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n"
        );
        // HELLO's answer is the proxy's; the subscription's the client's.
        p.handle_tunnel_input(
            c,
            b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n>3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
            t(4),
        );
        assert_eq!(
            output(&mut p, c),
            ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
        );
    }

    #[test]
    fn a_refused_user_fails_requests_naming_the_user_in_the_servers_words() {
        let t = Instant::from_millis;
        let config = alices(ProxyConfig {
            max_dedicated: 1,
            ..ProxyConfig::default()
        });
        let refused = UpstreamError::RefusedUser {
            user: "alice".into(),
            why: "WRONGPASS invalid username-password pair or user is disabled.".into(),
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        let c = p.add_client(ClientKind::Stream, t(0));
        p.handle_client_input(c, GET_K, t(1));
        p.handle_upstream_input(Lane::Main, REDIS_WRONGPASS, t(2));
        assert_eq!(output(&mut p, c), format!("-{refused}\r\n"));
        assert_eq!(p.upstream_fault(Lane::Main), Some(&refused));
        assert!(!p.upstream_verified(Lane::Main));
        // A dedicated connection refused: the client's requests are never
        // sent, each gets the refusal, and the client is closed.
        let d = p.add_client(ClientKind::Stream, t(3));
        p.handle_client_input(
            d,
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$4\r\nEXEC\r\n",
            t(3),
        );
        p.handle_tunnel_connected(d, t(3));
        assert_eq!(&p.poll_tunnel_transmit(d).unwrap()[..], AUTH_ALICE);
        p.handle_tunnel_input(d, REDIS_WRONGPASS, t(4));
        assert_eq!(p.poll_tunnel_transmit(d), None, "nothing more is sent");
        assert_eq!(output(&mut p, d), format!("-{refused}\r\n").repeat(3));
        assert!(p.client_should_close(d));
    }

    /// kv's own `HELLO 3` answer, as its server gives it.
    fn kv_hello() -> Reply {
        let mut server = crate::server::Server::new(crate::server::ServerConfig::default());
        let mut conn = crate::server::ServerConnection::new(Limits::default());
        conn.handle_input(&mut server, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
        let out = conn.transmit_all(&mut server);
        let mut decoder = crate::reply::ReplyDecoder::new(crate::reply::ReplyLimits::default());
        decoder.feed(&out);
        decoder.next_reply().unwrap().unwrap()
    }

    /// Redis 7.0.15's `HELLO 3` answer.
    const REDIS_HELLO: &[u8] = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";

    #[test]
    fn hello_tells_a_kv_server_from_redis() {
        let kv = UpstreamServer::from_hello(&kv_hello());
        assert_eq!(
            kv,
            UpstreamServer::Kv {
                version: env!("CARGO_PKG_VERSION").into()
            }
        );
        let mut decoder = crate::reply::ReplyDecoder::new(crate::reply::ReplyLimits::default());
        decoder.feed(REDIS_HELLO);
        let redis = UpstreamServer::from_hello(&decoder.next_reply().unwrap().unwrap());
        assert_eq!((redis.name(), redis.version()), ("redis", "7.0.15"));
        assert!(redis.is_other() && !kv.is_other());
        assert_eq!(
            UpstreamServer::from_hello(&Reply::error("ERR unknown command 'HELLO'")),
            UpstreamServer::Unknown
        );
    }

    /// A tracking proxy whose main lane was answered by `hello`.
    fn in_front_of(hello: &[u8], t: impl Fn(u64) -> Instant) -> Proxy {
        let config = ProxyConfig {
            tracking: true,
            ..ProxyConfig::default()
        };
        let mut p = Proxy::new(config, t(0));
        p.handle_upstream_connected(Lane::Main, t(0));
        p.handle_upstream_connected(Lane::Bulk, t(0));
        let _ = p.poll_upstream_transmit(Lane::Main);
        p.handle_upstream_input(Lane::Main, &[hello, b"+OK\r\n"].concat(), t(0));
        p
    }

    const DUMP: &[u8] = b"*1\r\n$4\r\nDUMP\r\n";
    const NOT_KV_DUMP: &str = "-ERR the upstream server (redis 7.0.15) has no DUMP of every pair; it is a kv server command. Use SCAN (or KEYS) for the keys, then MGET for their values\r\n";

    #[test]
    fn kvs_own_dump_is_refused_in_front_of_redis_saying_why() {
        let t = Instant::from_millis;
        let mut p = in_front_of(REDIS_HELLO, t);
        assert_eq!(p.upstream_server().name(), "redis");
        let c = p.add_client(ClientKind::Stream, t(1));
        p.handle_client_input(c, &[DUMP, b"*1\r\n$4\r\nPING\r\n"].concat(), t(1));
        assert_eq!(output(&mut p, c), format!("{NOT_KV_DUMP}+PONG\r\n"));
        assert_eq!(p.poll_upstream_transmit(Lane::Bulk), None, "not sent");
        p.handle_client_input(c, b"INFO proxy\r\n", t(2));
        let info = output(&mut p, c);
        assert!(
            info.contains("upstream_server:redis\r\nupstream_server_version:7.0.15\r\n"),
            "{info}"
        );
        // Before the server is known, Redis's refusal says it.
        let mut p = Proxy::new(ProxyConfig::default(), t(0));
        p.handle_upstream_connected(Lane::Bulk, t(0));
        let c = p.add_client(ClientKind::Stream, t(1));
        p.handle_client_input(c, DUMP, t(1));
        assert_eq!(&p.poll_upstream_transmit(Lane::Bulk).unwrap()[..], DUMP);
        p.handle_upstream_input(
            Lane::Bulk,
            b"-ERR wrong number of arguments for 'dump' command\r\n",
            t(2),
        );
        assert_eq!(
            output(&mut p, c),
            NOT_KV_DUMP.replace("redis 7.0.15", "not kv")
        );
    }

    #[test]
    fn kvs_own_dump_goes_to_a_kv_server() {
        let t = Instant::from_millis;
        let hello = {
            let mut out = BytesMut::new();
            kv_hello().encode_as(Dialect::Resp, crate::reply::Proto::Resp3, &mut out);
            out
        };
        let mut p = in_front_of(&hello, t);
        assert_eq!(p.upstream_server().name(), "kv");
        let c = p.add_client(ClientKind::Stream, t(1));
        p.handle_client_input(c, DUMP, t(1));
        assert_eq!(&p.poll_upstream_transmit(Lane::Bulk).unwrap()[..], DUMP);
        p.handle_upstream_input(Lane::Bulk, b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n", t(2));
        assert_eq!(output(&mut p, c), "*2\r\n$1\r\nk\r\n$1\r\nv\r\n");
        p.handle_client_input(c, b"INFO proxy\r\n", t(2));
        let info = output(&mut p, c);
        assert!(info.contains("upstream_server:kv\r\n"), "{info}");
    }
}
