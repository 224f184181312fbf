//! The simulated system and its driver: clients, proxies and the server,
//! wired through [`Pipe`]s, stepped by one seeded random stream, with the
//! invariants checked as every reply arrives and after every step.
//!
//! The driver plays the part of the native (Tokio) driver: it follows each
//! state machine's documented drain order, calls `handle_timeout` whenever
//! `poll_timeout` is due, and reports connection changes the way sockets
//! would. It sets the server's clock (unix milliseconds, from the simulated
//! clock) before every input the server reads, and runs the server's active
//! expiry by its `poll_timeout`, now and then late. It wakes the server
//! connections that got mail (`Server::take_woken`), tells a proxy when its
//! upstream connection ends (`handle_upstream_closed`, then
//! `handle_upstream_lost` unless the core's `Reconnect` says to replace an
//! idle one quietly), as the native driver does. Everything else (latency,
//! chunking, drops, congestion, restarts, clock jumps) is the network's and
//! the operator's doing, chosen by the random stream.
//!
//! # Following invalidations
//! The driver reads the server's output a frame at a time (it compares
//! each reply with the model's anyway), so it sees each invalidation push
//! leave the server and checks it against what the model owes the
//! connection, which also gives the change it tells of. It reads what each
//! proxy reads the same way, so it knows the moment a proxy has taken each
//! push (the proxy applies one as it reads it): from then on, the proxy's
//! reads of that key may not be older than the change (a [`Floor`]). The
//! planted tracking bugs act on these same bytes.

use super::model::{
    counter_name, fmt_t, fmt_value, instant_of, key_name, minus, parse_value, unix_ms, value_bytes,
    Key, Model, ReadError, TxState,
};
use super::net::Pipe;
use super::rng::Rng;
use super::setup::{
    Bug, Params, Setup, Via, CLIENT_DROP, CLOCK_JUMP, CONGESTION, GHOST, LATENCY_SPIKE,
    PROXY_RESTART, SERVER_RESTART, SLOW_READER, UPSTREAM_DROP,
};
use bytes::{Bytes, BytesMut};
use kv_core::backoff::Lost;
use kv_core::db::EXPIRE_BUDGET;
use kv_core::{
    AnnotatedReply, Client, ClientConfig, ClientEvent, ClientId, ClientKind, Command, ConnConfig,
    ConnPolicy, Decoder, End, Failure, Instant, Lane, Owed, Proxy, ProxyEvent, Reconnect, Reply,
    ReplyDecoder, ReplyLimits, RequestId, Server, ServerConfig, ServerConnection, Source, Stall,
    UpstreamState, UpstreamTracking,
};
use std::collections::VecDeque;
use std::time::Duration;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant: failures of the same kind count as "the same
    /// failure" when shrinking.
    pub kind: &'static str,
    pub message: String,
}

type Check = Result<(), Violation>;

fn violation<T>(kind: &'static str, message: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        kind,
        message: message.into(),
    })
}

/// Error replies a correct proxy may give: the upstream failed, or it is
/// saturated. Anything else means requests and replies got mixed up.
const ALLOWED_ERRORS: &[&str] = &[
    "ERR upstream connection lost",
    "ERR upstream timed out",
    "ERR upstream unavailable",
    "ERR proxy overloaded",
];

const FOREVER: Instant = Instant::from_nanos(u64::MAX);

/// What one annotated reply counts for against a connection's window.
const MESSAGE_BYTES: usize = 64;

/// The writer's side of a socket, as a driver sees it: a write that leaves
/// no more than the window on its way is done at once; past the window it
/// is blocked until the reader catches up.
fn note_writes(
    policy: &mut ConnPolicy,
    blocked: &mut bool,
    queued: usize,
    window: usize,
    now: Instant,
) {
    if queued > window {
        if !*blocked {
            *blocked = true;
            policy.handle_write_started(now);
        }
    } else if *blocked {
        *blocked = false;
        policy.handle_write_done(now);
    }
}

/// The server's end of one connection, with a second decoder reading the
/// same bytes so the model learns the order in which writes are applied,
/// and the connection policy the server's driver keeps for it.
#[derive(Debug)]
struct ServerSide {
    conn: ServerConnection,
    mirror: Decoder,
    /// The connection's state, as the model keeps it (its number there
    /// included).
    tx: TxState,
    /// Reads the server's output back, a frame at a time, to compare the
    /// replies with the model's and tag each invalidation.
    replies: Frames,
    policy: ConnPolicy,
    /// More than the window is on its way to the reader: the server's
    /// writes are blocked.
    blocked: bool,
}

/// One frame the server wrote on a connection: a reply, or (`invalidated`
/// set) an invalidation push, with the key and model position of each
/// change it tells of.
#[derive(Debug)]
struct Piece {
    bytes: Bytes,
    invalidated: Option<Vec<(usize, usize)>>,
}

/// Splits a byte stream of replies into whole frames, each with its bytes
/// and its decoded value.
#[derive(Debug)]
struct Frames {
    decoder: ReplyDecoder,
    /// The bytes since the end of the last whole frame: the decoder's
    /// unconsumed input is always a suffix of them.
    tail: BytesMut,
}

impl Frames {
    fn new() -> Self {
        Frames {
            decoder: ReplyDecoder::new(ReplyLimits::default()),
            tail: BytesMut::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.decoder.feed(data);
        self.tail.extend_from_slice(data);
    }

    fn next(&mut self) -> Result<Option<(Bytes, Reply)>, String> {
        match self.decoder.next_reply() {
            Ok(Some(reply)) => {
                let used = self.tail.len() - self.decoder.buffered();
                Ok(Some((self.tail.split_to(used).freeze(), reply)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// No part of a frame is waiting for the rest.
    fn is_clear(&self) -> bool {
        self.tail.is_empty()
    }
}

/// The keys of an `invalidate` push (`None`: not one).
fn invalidated_keys(reply: &Reply) -> Option<Vec<Bytes>> {
    let Reply::Push(items) = reply else {
        return None;
    };
    kv_core::proxy::parse_invalidation(items).flatten()
}

#[derive(Debug)]
struct UpLink {
    to_server: Pipe<Bytes>,
    to_proxy: Pipe<Bytes>,
    side: ServerSide,
    /// The invalidations on their way to the proxy, in order: the key and
    /// model position of each change each one tells of.
    pushes: VecDeque<Vec<(usize, usize)>>,
    /// Reads what the proxy has read of `to_proxy`, to know when it has
    /// taken each invalidation.
    seen: Frames,
    /// This link's latencies are this many times the usual: links to
    /// different proxies keep different paces.
    pace: u32,
    /// Replies the driver asked for itself and swallows (the planted
    /// no-flush-on-reconnect bug's handshake).
    swallow: usize,
}

/// Why a proxy may not serve a key's value older than a position to a
/// read issued after a point of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloorWhy {
    /// The proxy had taken the invalidation of the change at that
    /// position.
    Invalidated,
    /// The proxy's main lane had connected when the server held that
    /// position: nothing cached before may be served.
    Reconnected,
}

/// A proxy's floor for one key from a point of the run on: reads issued
/// after `tick` ([`World::tick`]) may not be older than `pos`.
#[derive(Debug, Clone, Copy)]
struct Floor {
    tick: u64,
    pos: usize,
    why: FloorWhy,
}

/// The driver's view of a proxy's upstream connection.
#[derive(Debug)]
enum Upstream {
    /// Lost; the next attempt starts at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// An attempt completes (or fails) at `done_at`.
    Connecting {
        done_at: Instant,
    },
    Up(Box<UpLink>),
}

#[derive(Debug)]
struct ProxyNode {
    /// `None` while restarting.
    proxy: Option<Proxy>,
    /// Bumped on every restart, so that a client's connection names the
    /// proxy process it was made to.
    incarnation: u64,
    back_at: Instant,
    upstream: Upstream,
    /// When the proxy's driver reconnects upstream: the core's policy.
    reconnect: Reconnect,
    /// When the current proxy process last connected upstream: nothing its
    /// cache held before may be served after (the server may have lost it).
    connected_at: Option<Instant>,
    /// The proxy's bulk lane at the server: connected and lost with the
    /// main lane's connection, and delivering at once (its replies come
    /// whole, or in chunks past the pass-through threshold).
    bulk: Option<ServerConnection>,
    /// Client connections: (proxy's id, client index).
    attached: Vec<(ClientId, usize)>,
    /// Per key, the floors the proxy's reads must keep (see [`Floor`]),
    /// newest last, their positions rising: kept across the proxy's
    /// restarts, as the server's history they stand on stays.
    floors: Vec<Vec<Floor>>,
    /// When the proxy's main-lane connections ended: with tracking, nothing
    /// cached on one may be served once it is gone.
    losses: Vec<Instant>,
    /// The connection being made replaces a lost one without the proxy
    /// being told (the planted no-flush-on-reconnect bug).
    transparent: bool,
}

impl ProxyNode {
    /// Reads issued from `tick` on may not be older than `pos`.
    fn raise_floor(&mut self, key: usize, tick: u64, pos: usize, why: FloorWhy) {
        let floors = &mut self.floors[key];
        if floors.last().is_none_or(|f| f.pos < pos) {
            floors.push(Floor { tick, pos, why });
        }
    }

    /// The floor of `key` for a read issued at `tick`, if any.
    fn floor(&self, key: usize, tick: u64) -> Option<Floor> {
        let floors = &self.floors[key];
        let n = floors.partition_point(|f| f.tick < tick);
        n.checked_sub(1).map(|i| floors[i])
    }
}

#[derive(Debug)]
enum Conn {
    Down {
        retry_at: Instant,
    },
    Proxy {
        incarnation: u64,
        id: ClientId,
        up: Pipe<Bytes>,
        down: Pipe<Bytes>,
        messages: Pipe<AnnotatedReply>,
        /// The proxy driver's connection policy for this client.
        policy: Box<ConnPolicy>,
        /// More than the window is on its way to the client: the proxy's
        /// writes are blocked.
        blocked: bool,
    },
    Direct {
        up: Pipe<Bytes>,
        down: Pipe<Bytes>,
        side: Box<ServerSide>,
    },
}

/// A command inside a transaction (through a proxy, where `MULTI` is
/// refused, it runs on its own).
#[derive(Debug, Clone, Copy)]
enum TxCmd {
    Get(usize),
    Set(usize, u64),
    Incr(usize),
}

impl TxCmd {
    /// The same command outside a transaction.
    fn plain(self) -> Intent {
        match self {
            TxCmd::Get(k) => Intent::Get(k),
            TxCmd::Set(k, seq) => Intent::Put(k, seq),
            TxCmd::Incr(n) => Intent::Incr(n),
        }
    }
}

#[derive(Debug, Clone)]
enum Intent {
    Get(usize),
    Put(usize, u64),
    /// `SET k v PX ms`.
    SetPx(usize, u64, u64),
    Del(Vec<usize>),
    Ping(u64),
    Pexpire(usize, u64),
    Persist(usize),
    Pttl(usize),
    Mget(Vec<usize>),
    Mset(Vec<(usize, u64)>),
    /// Every pair: through a proxy, on its bulk lane.
    Dump,
    Incr(usize),
    Watch(Vec<Key>),
    Multi,
    /// A command sent between `MULTI` and `EXEC`.
    Queued(TxCmd),
    /// `EXEC` of the commands queued since `MULTI`.
    Exec(Vec<TxCmd>),
    Discard,
}

impl Intent {
    /// The command's words; with `short`, values as `v<seq>`.
    fn words(&self, short: bool) -> Vec<String> {
        let value = |k: usize, seq: u64| {
            if short {
                format!("v{seq}")
            } else {
                format!("k{k}:v{seq}")
            }
        };
        let w = |s: &str| s.to_string();
        match self {
            Intent::Get(k) => vec![w("GET"), format!("k{k}")],
            Intent::Put(k, seq) => vec![w("PUT"), format!("k{k}"), value(*k, *seq)],
            Intent::SetPx(k, seq, ms) => vec![
                w("SET"),
                format!("k{k}"),
                value(*k, *seq),
                w("PX"),
                ms.to_string(),
            ],
            Intent::Del(keys) => std::iter::once(w("DEL"))
                .chain(keys.iter().map(|k| format!("k{k}")))
                .collect(),
            Intent::Ping(t) => vec![w("PING"), format!("t{t}")],
            Intent::Dump => vec![w("DUMP")],
            Intent::Pexpire(k, ms) => vec![w("PEXPIRE"), format!("k{k}"), ms.to_string()],
            Intent::Persist(k) => vec![w("PERSIST"), format!("k{k}")],
            Intent::Pttl(k) => vec![w("PTTL"), format!("k{k}")],
            Intent::Mget(keys) => std::iter::once(w("MGET"))
                .chain(keys.iter().map(|k| format!("k{k}")))
                .collect(),
            Intent::Mset(pairs) => std::iter::once(w("MSET"))
                .chain(
                    pairs
                        .iter()
                        .flat_map(|&(k, seq)| [format!("k{k}"), value(k, seq)]),
                )
                .collect(),
            Intent::Incr(n) => vec![w("INCR"), format!("n{n}")],
            Intent::Watch(keys) => std::iter::once(w("WATCH"))
                .chain(keys.iter().map(|k| k.text()))
                .collect(),
            Intent::Multi => vec![w("MULTI")],
            Intent::Queued(c) => c.plain().words(short),
            Intent::Exec(_) => vec![w("EXEC")],
            Intent::Discard => vec![w("DISCARD")],
        }
    }

    fn command(&self) -> Command {
        Command::build(&self.words(false)).expect("the simulation sends valid commands")
    }

    fn inline(&self) -> Bytes {
        Bytes::from(format!("{}\r\n", self.words(false).join(" ")))
    }

    fn text(&self) -> String {
        let text = self.words(true).join(" ");
        match self {
            Intent::Queued(_) => format!("(queued) {text}"),
            _ => text,
        }
    }

    /// A transaction command, which only a direct connection may use.
    fn is_tx(&self) -> bool {
        matches!(
            self,
            Intent::Watch(_) | Intent::Multi | Intent::Exec(_) | Intent::Discard
        )
    }
}

#[derive(Debug)]
struct Req {
    id: RequestId,
    intent: Intent,
    issued_at: Instant,
    /// The server's apply clock when the request was issued.
    issued_apply: u64,
    /// [`World::tick`] when it was issued: it reached its proxy after
    /// everything the proxy did before.
    issued_tick: u64,
    /// Issued after everything healed: must succeed.
    probe: bool,
    /// A probe read with no write anywhere and every cache expired (or,
    /// with tracking, every invalidation taken): must read exactly the
    /// server's current value.
    exact: bool,
}

/// Why a session may not read below a position.
#[derive(Debug, Clone, Copy)]
enum Why {
    Wrote(Option<u64>),
    Read(Option<u64>),
}

#[derive(Debug)]
struct ClientNode {
    via: Via,
    proxy: usize,
    client: Client,
    conn: Conn,
    /// Requests awaiting their outcome, in order.
    reqs: VecDeque<Req>,
    /// Per key: the newest position of a write this session saw
    /// acknowledged; its later reads may not be older.
    writes: Vec<(usize, Why)>,
    /// Per key: the newest position this session read.
    reads: Vec<(usize, Why)>,
    /// Per key: the newest position a bulk read (`DUMP`) through a proxy
    /// returned, and on which connection (`conn_gen`). It binds that
    /// connection's later reads only: a proxy keeps a client from reading
    /// a cache entry older than its bulk read by the client's own bulk
    /// epoch (the bulk lane touches no entry), which a new connection
    /// starts afresh. (A `GET` or `MGET` read binds every later read, as
    /// its reply replaces or drops the proxy's entry.)
    bulk_reads: Vec<(usize, Why, u64)>,
    /// The client reads none of its replies, and gives up on none of its
    /// requests, until then (a slow reader).
    reads_paused_until: Instant,
    /// Why the last probe failed, if it did. Allowed only when a
    /// connection policy cut a connection meanwhile (it may cut one the
    /// moment a probe is sent); the probe is then sent again.
    probe_failed: Option<String>,
    /// The rest of a transaction being sent (`WATCH`, `MULTI`, queued
    /// commands, `EXEC`), a request at a time as the client gets turns;
    /// only on the connection it started on (`script_conn`).
    script: VecDeque<Intent>,
    script_conn: u64,
    /// Counts the client's connections.
    conn_gen: u64,
}

/// Bytes that were in flight to the server on a connection that died:
/// the server still reads them, and its replies go nowhere.
#[derive(Debug)]
struct Zombie {
    pipe: Pipe<Bytes>,
    side: ServerSide,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests: u64,
    pub replies: u64,
    pub failed: u64,
    /// Cache hits checked against their age (message clients).
    pub cache_hits: u64,
    /// Cache hits at all proxies (most are invisible to stream clients).
    pub proxy_hits: u64,
    pub faults: u64,
    /// Keys that reached their deadline (in the model), and those the
    /// server's active expiry removed.
    pub expired: u64,
    pub active_expired: u64,
    /// `EXEC`s answered at the server, of them aborted by a watched key;
    /// transaction commands the proxies refused.
    pub execs: u64,
    pub exec_aborts: u64,
    pub tx_refused: u64,
    /// Invalidations the proxies took, and reads through a proxy that
    /// what it knew (an invalidation taken, a connection made) bound
    /// more tightly than their own session did.
    pub invalidations: u64,
    pub tracked_reads: u64,
}

#[derive(Clone, Copy)]
enum PipeRef {
    Up(usize),
    Down(usize),
    ToServer(usize),
    ToProxy(usize),
    Zombie(usize),
}

macro_rules! trace {
    ($w:expr, $($arg:tt)*) => {
        if $w.trace.is_some() {
            let line = format!("[{}] #{} {}", fmt_t($w.now), $w.step, format!($($arg)*));
            if let Some(t) = $w.trace.as_mut() {
                t.push(line);
            }
        }
    };
}

pub struct World {
    p: Params,
    pub setup: Setup,
    rng: Rng,
    pub now: Instant,
    /// The step being run; `steps + 1` while quiescing.
    pub step: u64,
    server: Server,
    server_back_at: Instant,
    /// When the server's driver runs active expiry that is due: sometimes
    /// late (a busy event loop), so that commands meet keys past their
    /// deadline still in the store.
    server_wake: Option<Instant>,
    /// What a stale restart restores (planted bug only).
    snapshot: Vec<(Bytes, Bytes)>,
    model: Model,
    proxies: Vec<ProxyNode>,
    clients: Vec<ClientNode>,
    zombies: Vec<Zombie>,
    next_seq: u64,
    next_token: u64,
    spike_until: Instant,
    /// Connections the connection policies cut (client connections and
    /// upstream links): what may fail a probe after healing.
    policy_cuts: u64,
    /// Faults off, everything reconnects: the run is winding down.
    healing: bool,
    pub stats: Stats,
    /// Human-readable log of every action; only kept when asked for,
    /// since formatting it costs more than the simulation itself.
    pub trace: Option<Vec<String>>,
    /// What the server ran in the last input, for the trace.
    ran: Vec<String>,
    /// Counts the events the tracking checks order: requests issued,
    /// invalidations taken by proxies, main lanes connected. Simulated
    /// time cannot order them, many happen at one instant.
    tick: u64,
    /// Numbers the server connections for the model.
    next_conn: u64,
    /// The proxy the planted invalidation-ignored bug makes deaf: the
    /// first client's that goes through one, so that it serves someone.
    deaf: Option<usize>,
}

impl World {
    pub fn new(p: Params, trace: bool) -> World {
        let setup = Setup::new(&p);
        let now = Instant::ZERO;
        let mut rng = Rng::fork(p.seed, 2);
        let proxies = (0..setup.proxies)
            .map(|_| ProxyNode {
                proxy: Some(Proxy::new(setup.proxy.clone(), now)),
                incarnation: 0,
                back_at: now,
                upstream: Upstream::Connecting {
                    done_at: now + Duration::from_micros(rng.below(1_000)),
                },
                reconnect: Reconnect::new(p.seed),
                connected_at: None,
                bulk: None,
                attached: Vec::new(),
                floors: vec![Vec::new(); setup.keys],
                losses: Vec::new(),
                transparent: false,
            })
            .collect();
        let client_config = ClientConfig {
            request_timeout: setup.client_timeout,
            max_in_flight: setup.max_in_flight,
        };
        let clients = setup
            .clients
            .iter()
            .map(|&(via, proxy)| ClientNode {
                via,
                proxy,
                client: Client::new(client_config.clone(), now),
                conn: Conn::Down { retry_at: now },
                reqs: VecDeque::new(),
                writes: vec![(0, Why::Wrote(None)); setup.keys],
                reads: vec![(0, Why::Read(None)); setup.keys],
                bulk_reads: vec![(0, Why::Read(None), 0); setup.keys],
                reads_paused_until: now,
                probe_failed: None,
                script: VecDeque::new(),
                script_conn: 0,
                conn_gen: 0,
            })
            .collect();
        let deaf = setup
            .clients
            .iter()
            .find(|(via, _)| *via != Via::Direct)
            .map(|&(_, pi)| pi);
        World {
            model: Model::new(setup.keys, setup.counters, now),
            setup,
            rng,
            now,
            step: 0,
            server: Server::new(ServerConfig {
                hash_seed: p.seed,
                ..ServerConfig::default()
            }),
            server_back_at: now,
            server_wake: None,
            snapshot: Vec::new(),
            proxies,
            clients,
            zombies: Vec::new(),
            next_seq: 0,
            next_token: 0,
            spike_until: now,
            policy_cuts: 0,
            healing: false,
            stats: Stats::default(),
            trace: trace.then(Vec::new),
            ran: Vec::new(),
            tick: 0,
            next_conn: 0,
            deaf,
            p,
        }
    }

    /// The next [`World::tick`].
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// A number for a new server connection.
    fn conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Runs every step, then heals the system and probes it.
    pub fn run(&mut self) -> Check {
        trace!(self, "setup: {}", self.setup.describe());
        self.fire_due()?;
        for step in 1..=self.p.steps {
            self.step = step;
            self.one_step()?;
        }
        self.step = self.p.steps + 1;
        self.quiesce()?;
        for node in &self.proxies {
            if let Some(p) = &node.proxy {
                self.stats.proxy_hits += p.cache_stats().hits;
            }
        }
        self.model.expire_until(self.now);
        self.stats.expired = self.model.expired;
        self.stats.execs = self.model.execs;
        self.stats.exec_aborts = self.model.exec_aborts;
        Ok(())
    }

    fn one_step(&mut self) -> Check {
        self.fire_due()?;
        let roll = self.rng.below(1000);
        let fault = |w: &mut World, kind: u32| {
            // Draw first, so the stream does not depend on the mask.
            let happens = w.rng.chance(w.setup.fault_rate);
            happens && w.p.has(kind) && !w.healing
        };
        match roll {
            0..=279 => self.act_request(1)?,
            280..=599 => self.act_deliver()?,
            600..=779 => self.act_tick()?,
            780..=799 if fault(self, CONGESTION) => self.act_congestion()?,
            800..=839 => {
                let n = self.rng.range(2, 6) as usize;
                self.act_request(n)?;
            }
            840..=864 if fault(self, CLOCK_JUMP) => self.act_jump()?,
            865..=899 if fault(self, CLIENT_DROP) => {
                let ci = self.rng.index(self.clients.len());
                if !matches!(self.clients[ci].conn, Conn::Down { .. }) {
                    self.stats.faults += 1;
                    trace!(self, "FAULT c{ci}: connection drops");
                    self.drop_client_conn(ci, true)?;
                }
            }
            900..=934 if fault(self, UPSTREAM_DROP) => {
                let pi = self.rng.index(self.proxies.len());
                if matches!(self.proxies[pi].upstream, Upstream::Up(_)) {
                    self.stats.faults += 1;
                    trace!(self, "FAULT p{pi}: upstream connection drops");
                    self.upstream_lost(pi, true)?;
                }
            }
            935..=954 if fault(self, PROXY_RESTART) => {
                let pi = self.rng.index(self.proxies.len());
                self.stats.faults += 1;
                self.restart_proxy(pi)?;
            }
            955..=969 if fault(self, SERVER_RESTART) => {
                self.stats.faults += 1;
                self.restart_server()?;
            }
            985..=994 if fault(self, SLOW_READER) => {
                let ci = self.rng.index(self.clients.len());
                self.stats.faults += 1;
                // Up to three idle timeouts (or a second): sometimes past the
                // cut-off for output the client does not take.
                let idle = self
                    .setup
                    .conn
                    .idle_timeout
                    .unwrap_or(Duration::from_millis(333));
                let d = Duration::from_nanos(self.rng.below(3 * idle.as_nanos() as u64 + 1));
                self.clients[ci].reads_paused_until = self.now + d;
                trace!(self, "FAULT c{ci} stops reading its replies for {d:?}");
            }
            970..=984 if fault(self, LATENCY_SPIKE) => {
                self.stats.faults += 1;
                let d = Duration::from_millis(self.rng.range(10, 500));
                self.spike_until = self.now + d;
                trace!(self, "FAULT latency spike for {d:?}");
            }
            _ => self.act_tick()?,
        }
        self.pump()?;
        self.fire_due()?;
        self.check_step()
    }

    // ----- actions -------------------------------------------------------

    fn latency(&mut self) -> Duration {
        let base = self.setup.latency.as_nanos() as u64;
        let mut d = Duration::from_nanos(self.rng.below(base + 1));
        if self.now < self.spike_until {
            // Up to twice the proxy's request timeout: some requests make
            // it, some time out at the proxy, some at the client.
            let rt = self.setup.proxy.request_timeout.as_nanos() as u64;
            d += Duration::from_nanos(self.rng.below(2 * rt));
        }
        d
    }

    /// When a simulated client tries its connection again: the test client's own
    /// choice, drawn at random so that reconnections interleave every way.
    fn client_retry_at(&mut self) -> Instant {
        self.now + Duration::from_micros(self.rng.below(300_000))
    }

    fn act_request(&mut self, n: usize) -> Check {
        // A random client among those that can send now.
        let len = self.clients.len();
        let first = self.rng.index(len);
        let Some(ci) = (0..len).map(|i| (first + i) % len).find(|&ci| {
            let c = &self.clients[ci];
            !matches!(c.conn, Conn::Down { .. }) && c.reqs.len() < self.setup.max_in_flight
        }) else {
            return self.act_tick();
        };
        for _ in 0..n {
            let c = &self.clients[ci];
            if matches!(c.conn, Conn::Down { .. }) || c.reqs.len() >= self.setup.max_in_flight {
                return Ok(());
            }
            let intent = match self.next_scripted(ci) {
                Some(intent) => intent,
                None => self.random_intent(ci),
            };
            self.issue(ci, intent, false, false)?;
        }
        Ok(())
    }

    /// The next request of the transaction client `ci` is sending, if it
    /// is sending one on its current connection (one that started on a
    /// connection since lost is dropped: the server forgot it).
    fn next_scripted(&mut self, ci: usize) -> Option<Intent> {
        let c = &mut self.clients[ci];
        if c.script_conn != c.conn_gen {
            c.script.clear();
        }
        c.script.pop_front()
    }

    fn random_key(&mut self) -> usize {
        self.rng.index(self.setup.keys)
    }

    /// `count` distinct value keys from a random one on.
    fn random_keys(&mut self, count: usize) -> Vec<usize> {
        let keys = self.setup.keys;
        let first = self.rng.index(keys);
        (0..count.min(keys)).map(|i| (first + i) % keys).collect()
    }

    fn new_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn random_px(&mut self) -> u64 {
        let i = self.rng.index(self.setup.px.len());
        self.setup.px[i]
    }

    fn random_intent(&mut self, ci: usize) -> Intent {
        let keys = self.setup.keys;
        if self.rng.chance(self.setup.extra_reads) {
            return Intent::Get(self.random_key());
        }
        match self.rng.below(1000) {
            0..=339 => Intent::Get(self.random_key()),
            340..=559 => {
                let seq = self.new_seq();
                Intent::Put(self.random_key(), seq)
            }
            560..=639 => {
                let (k, seq, ms) = (self.random_key(), self.new_seq(), self.random_px());
                Intent::SetPx(k, seq, ms)
            }
            640..=699 => {
                let first = self.random_key();
                let mut del = vec![first];
                if keys > 1 && self.rng.chance(400) {
                    del.push((first + 1 + self.rng.index(keys - 1)) % keys);
                }
                Intent::Del(del)
            }
            700..=749 => {
                let (k, ms) = (self.random_key(), self.random_px());
                Intent::Pexpire(k, ms)
            }
            750..=779 => Intent::Persist(self.random_key()),
            780..=819 => Intent::Pttl(self.random_key()),
            820..=879 => {
                let n = self.rng.range(1, 3) as usize;
                Intent::Mget(self.random_keys(n))
            }
            880..=929 => {
                let n = self.rng.range(1, 3) as usize;
                let pairs = self
                    .random_keys(n)
                    .into_iter()
                    .map(|k| (k, self.new_seq()))
                    .collect();
                Intent::Mset(pairs)
            }
            930..=949 => {
                self.next_token += 1;
                Intent::Ping(self.next_token)
            }
            950..=959 => Intent::Dump,
            // Transactions: mostly from direct clients, where they run; a
            // few through proxies, which must refuse them.
            _ if self.clients[ci].via == Via::Direct || self.rng.chance(250) => {
                self.start_script(ci)
            }
            _ => Intent::Get(self.random_key()),
        }
    }

    /// Makes client `ci`'s next requests a transaction and returns its
    /// first: sometimes `WATCH` of a key or two (and a `GET` of one, the
    /// usual optimistic read), `MULTI`, a few `SET`/`GET`/`INCR`, then
    /// `EXEC` (now and then `DISCARD`).
    fn start_script(&mut self, ci: usize) -> Intent {
        let mut script = VecDeque::new();
        if self.rng.chance(600) {
            let mut watched = Vec::new();
            for _ in 0..self.rng.range(1, 2) {
                let key = if self.rng.chance(600) {
                    Key::Val(self.random_key())
                } else {
                    Key::Ctr(self.rng.index(self.setup.counters))
                };
                if !watched.contains(&key) {
                    watched.push(key);
                }
            }
            if let Some(&Key::Val(k)) = watched.first() {
                if self.rng.chance(500) {
                    script.push_back(Intent::Get(k));
                }
            }
            script.push_front(Intent::Watch(watched));
        }
        script.push_back(Intent::Multi);
        let mut queued = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let cmd = match self.rng.below(10) {
                0..=3 => {
                    let (k, seq) = (self.random_key(), self.new_seq());
                    TxCmd::Set(k, seq)
                }
                4..=6 => TxCmd::Get(self.random_key()),
                _ => TxCmd::Incr(self.rng.index(self.setup.counters)),
            };
            queued.push(cmd);
            script.push_back(Intent::Queued(cmd));
        }
        script.push_back(if self.rng.chance(100) {
            Intent::Discard
        } else {
            Intent::Exec(queued)
        });
        let first = script.pop_front().expect("a transaction has requests");
        let c = &mut self.clients[ci];
        c.script = script;
        c.script_conn = c.conn_gen;
        first
    }

    fn issue(&mut self, ci: usize, intent: Intent, probe: bool, exact: bool) -> Check {
        let now = self.now;
        let lat = self.latency();
        let c = &mut self.clients[ci];
        let id = match c.via {
            Via::Stream | Via::Direct => c.client.send(&intent.command(), now),
            Via::Messages => c.client.track(now),
        };
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                return violation(
                    "driver",
                    format!("c{ci}: the client refused a request: {e}"),
                )
            }
        };
        let bytes = match c.via {
            Via::Messages => intent.inline(),
            _ => c
                .client
                .poll_transmit()
                .map(BytesMut::freeze)
                .unwrap_or_default(),
        };
        match &mut c.conn {
            Conn::Proxy { up, .. } | Conn::Direct { up, .. } => up.send(now + lat, bytes),
            Conn::Down { .. } => return violation("driver", "issued on a closed connection"),
        }
        let text = intent.text();
        self.tick += 1;
        c.reqs.push_back(Req {
            id,
            intent,
            issued_at: now,
            issued_apply: self.model.applied,
            issued_tick: self.tick,
            probe,
            exact,
        });
        self.stats.requests += 1;
        trace!(self, "c{ci} -> {text} (request {})", id.0);
        Ok(())
    }

    /// One direction of one connection stops delivering for up to one and
    /// a half request timeouts (past one, the proxy gives up on what it
    /// waits for on it), the others going on: a proxy may take an
    /// invalidation long after another proxy's write was acknowledged, or
    /// its clients' replies long after their requests were answered.
    fn act_congestion(&mut self) -> Check {
        let mut pipes = Vec::new();
        for (ci, c) in self.clients.iter().enumerate() {
            if !matches!(c.conn, Conn::Down { .. }) {
                pipes.extend([PipeRef::Up(ci), PipeRef::Down(ci)]);
            }
        }
        for (pi, p) in self.proxies.iter().enumerate() {
            if matches!(p.upstream, Upstream::Up(_)) {
                pipes.extend([PipeRef::ToServer(pi), PipeRef::ToProxy(pi)]);
            }
        }
        if pipes.is_empty() {
            return self.act_tick();
        }
        let pick = pipes[self.rng.index(pipes.len())];
        let rt = self.setup.proxy.request_timeout.as_nanos() as u64;
        let until = self.now + Duration::from_nanos(self.rng.below(rt * 3 / 2 + 1));
        self.stats.faults += 1;
        let what = match pick {
            PipeRef::Up(ci) | PipeRef::Down(ci) => {
                let (up, down, messages) = match &mut self.clients[ci].conn {
                    Conn::Proxy {
                        up, down, messages, ..
                    } => (up, down, Some(messages)),
                    Conn::Direct { up, down, .. } => (up, down, None),
                    Conn::Down { .. } => return Ok(()),
                };
                if let PipeRef::Up(_) = pick {
                    up.hold(until);
                    format!("c{ci}'s requests")
                } else {
                    down.hold(until);
                    if let Some(m) = messages {
                        m.hold(until);
                    }
                    format!("c{ci}'s replies")
                }
            }
            PipeRef::ToServer(pi) | PipeRef::ToProxy(pi) => {
                let Upstream::Up(link) = &mut self.proxies[pi].upstream else {
                    return Ok(());
                };
                if let PipeRef::ToServer(_) = pick {
                    link.to_server.hold(until);
                    format!("p{pi}'s requests upstream")
                } else {
                    link.to_proxy.hold(until);
                    format!("what the server sends p{pi}")
                }
            }
            PipeRef::Zombie(_) => return Ok(()),
        };
        trace!(self, "FAULT congestion: {what} held until {}", fmt_t(until));
        Ok(())
    }

    fn act_tick(&mut self) -> Check {
        let d = match self.rng.below(10) {
            0..=6 => Duration::from_micros(self.rng.below(2_000)),
            7..=8 => Duration::from_micros(self.rng.below(20_000)),
            _ => Duration::ZERO,
        };
        self.advance_to(self.now + d, true)
    }

    /// A large jump: to just before, at or just after a TTL or a timeout
    /// from now, or to the next timer exactly. Sometimes the driver wakes
    /// late and fires every timer only at the end of the jump.
    fn act_jump(&mut self) -> Check {
        let cfg = &self.setup.proxy;
        let tracking = self.setup.tracking;
        let base = match self.rng.below(5) {
            0 => cfg.cache.ttl,
            1 => cfg.request_timeout,
            2 => self.setup.client_timeout,
            // Past every cache entry's life: with tracking's long TTL that
            // would be minutes of timers firing for nothing new, so a few
            // request timeouts instead (the TTL's edge is the case above).
            3 if tracking => cfg.request_timeout * 3,
            3 => cfg.cache.ttl * 3 + cfg.request_timeout,
            _ => Duration::ZERO,
        };
        // Tracking's TTL is a minute: a driver that wakes for every timer
        // on the way costs more than it finds, so that jump wakes late.
        let long = tracking && base == cfg.cache.ttl;
        let target = if base.is_zero() {
            self.next_timer().unwrap_or(self.now)
        } else {
            self.now + base
        };
        let target = match self.rng.below(3) {
            0 => minus(target, Duration::from_nanos(1)),
            1 => target,
            _ => target + Duration::from_nanos(1),
        };
        let exact = self.rng.chance(700) && !long;
        trace!(
            self,
            "clock jumps to {}{}",
            fmt_t(target),
            if exact { "" } else { " (timers fire late)" }
        );
        self.advance_to(target, exact)
    }

    /// Whether the proxy's driver reads client `ci`'s connection now: not
    /// while the proxy throttles it (too many replies owed), nor once its
    /// connection policy stopped reading.
    fn proxy_reads(&self, ci: usize) -> bool {
        let c = &self.clients[ci];
        let Conn::Proxy { id, policy, .. } = &c.conn else {
            return false;
        };
        policy.wants_input()
            && self.proxies[c.proxy]
                .proxy
                .as_ref()
                .is_some_and(|p| p.client_wants_input(*id))
    }

    /// Pipes with something readable now. A throttled client's pipe is not:
    /// the proxy is not reading it.
    fn ready_pipes(&self) -> Vec<PipeRef> {
        let now = self.now;
        let mut out = Vec::new();
        for (ci, c) in self.clients.iter().enumerate() {
            match &c.conn {
                Conn::Proxy {
                    up, down, messages, ..
                } => {
                    if up.is_ready(now) && self.proxy_reads(ci) {
                        out.push(PipeRef::Up(ci));
                    }
                    if (down.is_ready(now) || messages.is_ready(now)) && c.reads_paused_until <= now
                    {
                        out.push(PipeRef::Down(ci));
                    }
                }
                Conn::Direct { up, down, side } => {
                    if up.is_ready(now) && side.policy.wants_input() {
                        out.push(PipeRef::Up(ci));
                    }
                    if down.is_ready(now) && c.reads_paused_until <= now {
                        out.push(PipeRef::Down(ci));
                    }
                }
                Conn::Down { .. } => {}
            }
        }
        for (pi, p) in self.proxies.iter().enumerate() {
            if let Upstream::Up(link) = &p.upstream {
                if link.to_server.is_ready(now) && link.side.policy.wants_input() {
                    out.push(PipeRef::ToServer(pi));
                }
                if link.to_proxy.is_ready(now) {
                    out.push(PipeRef::ToProxy(pi));
                }
            }
        }
        for (zi, z) in self.zombies.iter().enumerate() {
            if z.pipe.is_ready(now) {
                out.push(PipeRef::Zombie(zi));
            }
        }
        out
    }

    fn chunk(&mut self, ready: usize) -> usize {
        match self.rng.below(10) {
            0..=3 => ready,
            4..=6 => self.rng.range(1, ready.min(8) as u64) as usize,
            _ => self.rng.range(1, ready as u64) as usize,
        }
    }

    fn act_deliver(&mut self) -> Check {
        let ready = self.ready_pipes();
        if ready.is_empty() {
            // Nothing to read: time passes until something is.
            let next = self
                .next_event()
                .unwrap_or(self.now + Duration::from_millis(1));
            return self.advance_to(next, true);
        }
        let pick = ready[self.rng.index(ready.len())];
        self.deliver(pick, false)
    }

    /// Moves one chunk (or, with `all`, everything readable) along a pipe.
    fn deliver(&mut self, pick: PipeRef, all: bool) -> Check {
        let now = self.now;
        match pick {
            PipeRef::Up(ci) => {
                let n = match &self.clients[ci].conn {
                    Conn::Proxy { up, .. } | Conn::Direct { up, .. } => up.ready_bytes(now),
                    Conn::Down { .. } => 0,
                };
                let n = if all { n } else { self.chunk(n) };
                let pi = self.clients[ci].proxy;
                let lat = self.latency();
                let c = &mut self.clients[ci];
                let window = self.setup.window;
                match &mut c.conn {
                    Conn::Proxy { up, id, policy, .. } => {
                        let data = up.recv_bytes(now, n);
                        let id = *id;
                        policy.handle_input(now);
                        let Some(proxy) = self.proxies[pi].proxy.as_mut() else {
                            return violation("driver", "connected to a proxy that is down");
                        };
                        trace!(self, "c{ci} => p{pi}: {} bytes", data.len());
                        proxy.handle_client_input(id, &data, now);
                        self.pump_proxy(pi)?;
                    }
                    Conn::Direct { up, down, side } => {
                        let data = up.recv_bytes(now, n);
                        side.policy.handle_input(now);
                        let log = self.trace.is_some().then_some(&mut self.ran);
                        let out = side.feed(&mut self.server, &mut self.model, &data, now, log)?;
                        let out = joined(out);
                        if !out.is_empty() {
                            down.send(now + lat, out);
                        }
                        side.wrote(down.total_bytes(), window, now);
                        trace!(self, "c{ci} => server: {} bytes", data.len());
                        self.trace_ran(&format!("c{ci}"));
                    }
                    Conn::Down { .. } => {}
                }
            }
            PipeRef::Down(ci) => {
                if self.clients[ci].via == Via::Messages {
                    let reorder = self.p.bug == Some(Bug::ReorderReplies) && self.rng.chance(300);
                    let Conn::Proxy { messages, .. } = &mut self.clients[ci].conn else {
                        return Ok(());
                    };
                    if reorder && messages.ready_count(now) >= 2 {
                        messages.swap_front();
                    }
                    let Some(msg) = messages.recv(now) else {
                        return Ok(());
                    };
                    trace!(self, "c{ci} <= {} ({:?})", short(&msg.reply), msg.source);
                    self.clients[ci].client.handle_reply(msg.reply.clone(), now);
                    self.client_events(ci, Some(&msg))?;
                } else {
                    let ready = match &self.clients[ci].conn {
                        Conn::Proxy { down, .. } | Conn::Direct { down, .. } => {
                            down.ready_bytes(now)
                        }
                        Conn::Down { .. } => return Ok(()),
                    };
                    let n = if all { ready } else { self.chunk(ready) };
                    let data = match &mut self.clients[ci].conn {
                        Conn::Proxy { down, .. } | Conn::Direct { down, .. } => {
                            down.recv_bytes(now, n)
                        }
                        Conn::Down { .. } => return Ok(()),
                    };
                    trace!(self, "c{ci} <= {} bytes", data.len());
                    self.clients[ci].client.handle_input(&data, now);
                    self.client_events(ci, None)?;
                }
                self.client_read(ci);
                if self.clients[ci].client.is_broken() {
                    trace!(self, "c{ci}: connection broken; closing it");
                    self.drop_client_conn(ci, true)?;
                }
            }
            PipeRef::ToServer(pi) => {
                let ready = match &self.proxies[pi].upstream {
                    Upstream::Up(link) => link.to_server.ready_bytes(now),
                    _ => return Ok(()),
                };
                let n = if all { ready } else { self.chunk(ready) };
                let Upstream::Up(link) = &mut self.proxies[pi].upstream else {
                    return Ok(());
                };
                let data = link.to_server.recv_bytes(now, n);
                link.side.policy.handle_input(now);
                let log = self.trace.is_some().then_some(&mut self.ran);
                let out = link
                    .side
                    .feed(&mut self.server, &mut self.model, &data, now, log)?;
                trace!(self, "p{pi} => server: {} bytes", data.len());
                self.trace_ran(&format!("p{pi}"));
                self.send_to_proxy(pi, out);
            }
            PipeRef::ToProxy(pi) => self.deliver_to_proxy(pi, all)?,
            PipeRef::Zombie(zi) => {
                let ready = self.zombies[zi].pipe.ready_bytes(now);
                let n = if all { ready } else { self.chunk(ready) };
                let z = &mut self.zombies[zi];
                let data = z.pipe.recv_bytes(now, n);
                let log = self.trace.is_some().then_some(&mut self.ran);
                // Its replies (and invalidations) go nowhere.
                let _ = z
                    .side
                    .feed(&mut self.server, &mut self.model, &data, now, log)?;
                trace!(
                    self,
                    "dead connection => server: {} bytes (replies go nowhere)",
                    data.len()
                );
                self.trace_ran("dead connection");
                if self.zombies[zi].pipe.is_empty() {
                    let z = self.zombies.swap_remove(zi);
                    z.side.end(&mut self.server, &mut self.model);
                }
            }
        }
        Ok(())
    }

    /// Traces what the server just ran for `who`.
    fn trace_ran(&mut self, who: &str) {
        for line in std::mem::take(&mut self.ran) {
            trace!(self, "  server runs for {who}: {line}");
        }
    }

    /// One-way latency on proxy `pi`'s upstream link, at its pace (once
    /// healing, at the usual one).
    fn link_latency(&mut self, pi: usize) -> Duration {
        let lat = self.latency();
        match &self.proxies[pi].upstream {
            Upstream::Up(link) if !self.healing => lat * link.pace,
            _ => lat,
        }
    }

    /// How many times slower than usual a new upstream link is: at most
    /// as slow as lets a round trip on it take a quarter of the request
    /// timeout, so that its proxy still gets answers.
    fn draw_pace(&mut self) -> u32 {
        let pace = self.rng.pick(&[1, 1, 2, 5]);
        let rt = self.setup.proxy.request_timeout.as_nanos();
        let lat = self.setup.latency.as_nanos().max(1);
        let most = (rt / (8 * lat)).clamp(1, 5) as u32;
        pace.min(most)
    }

    /// What the server wrote on proxy `pi`'s main lane goes on its way:
    /// replies as one write, each invalidation as a write of its own (as
    /// the server's driver writes mail it was woken for), its tags queued
    /// for when the proxy takes it.
    fn send_to_proxy(&mut self, pi: usize, pieces: Vec<Piece>) {
        if pieces.is_empty() {
            return;
        }
        let (now, window) = (self.now, self.setup.window);
        let lat = self.link_latency(pi);
        let reorder = self.p.bug == Some(Bug::CacheAfterInvalidation);
        let Upstream::Up(link) = &mut self.proxies[pi].upstream else {
            return;
        };
        let mut replies = BytesMut::new();
        let mut moved = 0;
        for piece in pieces {
            match piece.invalidated {
                None if link.swallow > 0 => link.swallow -= 1,
                None => replies.extend_from_slice(&piece.bytes),
                Some(tags) => {
                    if !replies.is_empty() {
                        link.to_proxy.send(now + lat, replies.split().freeze());
                    }
                    link.to_proxy.send(now + lat, piece.bytes);
                    link.pushes.push_back(tags);
                    // The planted bug: the push overtakes the replies
                    // queued before it, unread.
                    while reorder && link.to_proxy.move_ahead(|b| b.first() != Some(&b'>')) {
                        moved += 1;
                    }
                }
            }
        }
        if !replies.is_empty() {
            link.to_proxy.send(now + lat, replies.freeze());
        }
        link.side.wrote(link.to_proxy.total_bytes(), window, now);
        if moved > 0 {
            trace!(
                self,
                "BUG: invalidations to p{pi} overtake replies queued before them ({moved} moves)"
            );
        }
    }

    /// A chunk of what the server wrote reaches proxy `pi`. The driver
    /// reads the same bytes a frame at a time, to learn when the proxy
    /// has taken each invalidation (it applies each as it reads it): the
    /// proxy's reads issued from then on are bound by it.
    fn deliver_to_proxy(&mut self, pi: usize, all: bool) -> Check {
        let now = self.now;
        let ready = match &self.proxies[pi].upstream {
            Upstream::Up(link) => link.to_proxy.ready_bytes(now),
            _ => return Ok(()),
        };
        let n = if all { ready } else { self.chunk(ready) };
        let strip = self.p.bug == Some(Bug::InvalidationIgnored) && Some(pi) == self.deaf;
        let Upstream::Up(link) = &mut self.proxies[pi].upstream else {
            return Ok(());
        };
        let data = link.to_proxy.recv_bytes(now, n);
        link.side
            .wrote(link.to_proxy.total_bytes(), self.setup.window, now);
        link.seen.feed(&data);
        let mut taken = Vec::new();
        // With the planted bug, the proxy is handed whole frames, the
        // invalidations left out.
        let mut kept = BytesMut::new();
        loop {
            let (bytes, reply) = match link.seen.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    return violation("driver", format!("p{pi} was sent garbage: {e}"));
                }
            };
            if invalidated_keys(&reply).is_some() {
                let Some(tags) = link.pushes.pop_front() else {
                    return violation(
                        "driver",
                        format!("p{pi} read an invalidation the server never sent"),
                    );
                };
                taken.push(tags);
                if strip {
                    continue;
                }
            }
            if strip {
                kept.extend_from_slice(&bytes);
            }
        }
        let data = if strip { kept.freeze() } else { data };
        trace!(self, "server => p{pi}: {} bytes", data.len());
        if let Some(proxy) = self.proxies[pi].proxy.as_mut() {
            proxy.handle_upstream_input(Lane::Main, &data, now);
        }
        for tags in taken {
            self.stats.invalidations += 1;
            let tick = self.tick();
            for (k, pos) in tags {
                trace!(
                    self,
                    "p{pi} takes the invalidation of k{k} (position {pos}){}",
                    if strip {
                        " (BUG: not handed to it)"
                    } else {
                        ""
                    }
                );
                self.proxies[pi].raise_floor(k, tick, pos, FloorWhy::Invalidated);
            }
        }
        self.pump_proxy(pi)
    }

    /// The server's driver wakes the connections that got mail (the
    /// invalidations another connection's command, or expiry, caused):
    /// each writes it out, behind what it wrote before.
    fn wake_server(&mut self) -> Check {
        let woken = self.server.take_woken();
        if woken.is_empty() {
            return Ok(());
        }
        let now = self.now;
        for id in woken {
            for pi in 0..self.proxies.len() {
                let Upstream::Up(link) = &mut self.proxies[pi].upstream else {
                    continue;
                };
                if link.side.conn.session_id() != Some(id) {
                    continue;
                }
                let log = self.trace.is_some().then_some(&mut self.ran);
                let out = link
                    .side
                    .feed(&mut self.server, &mut self.model, &[], now, log)?;
                trace!(self, "server wakes p{pi}'s connection for its mail");
                self.trace_ran(&format!("p{pi}"));
                self.send_to_proxy(pi, out);
            }
            // A dead connection's mail goes nowhere; the next bytes it
            // reads carry it out (and the model checks it then).
        }
        Ok(())
    }

    /// Client `ci` read from its connection: the writer at the other end
    /// may no longer be blocked.
    fn client_read(&mut self, ci: usize) {
        let (now, window) = (self.now, self.setup.window);
        match &mut self.clients[ci].conn {
            Conn::Proxy {
                down,
                messages,
                policy,
                blocked,
                ..
            } => {
                let queued = down.total_bytes() + messages.len() * MESSAGE_BYTES;
                note_writes(policy, blocked, queued, window, now);
            }
            Conn::Direct { down, side, .. } => side.wrote(down.total_bytes(), window, now),
            Conn::Down { .. } => {}
        }
    }

    /// Tells each connection policy what its session owes, and ends the
    /// connections the policy says are over: the driver's side of
    /// [`ConnPolicy`], at the proxy and at the server.
    fn check_conns(&mut self) -> Check {
        let now = self.now;
        for ci in 0..self.clients.len() {
            let pi = self.clients[ci].proxy;
            let (end, owed) = match &mut self.clients[ci].conn {
                Conn::Proxy {
                    id,
                    policy,
                    blocked,
                    ..
                } => {
                    let Some(proxy) = self.proxies[pi].proxy.as_ref() else {
                        continue;
                    };
                    // The same query the proxy's drivers make.
                    let status = proxy.client_status(*id);
                    policy.handle_owed(status.owed > 0, now);
                    let end = policy.poll_end(Owed {
                        output: *blocked,
                        ..status.owed()
                    });
                    (end, status.owed)
                }
                Conn::Direct { side, .. } => (side.poll_end(now), side.conn.owed()),
                Conn::Down { .. } => continue,
            };
            match end {
                None => {}
                Some(End::TimedOut(stall)) => {
                    if stall == Stall::Input && owed > 0 {
                        return violation(
                            "policy",
                            format!("c{ci} was cut off as idle while owed {owed} replies"),
                        );
                    }
                    trace!(self, "c{ci}: cut off by the connection policy ({stall:?} stalled)");
                    self.policy_cuts += 1;
                    self.drop_client_conn(ci, false)?;
                }
                Some(other) => {
                    return violation(
                        "policy",
                        format!("c{ci}: connection ended ({other:?}) though it only sent valid requests and never closed"),
                    )
                }
            }
        }
        for pi in 0..self.proxies.len() {
            let Upstream::Up(link) = &mut self.proxies[pi].upstream else {
                continue;
            };
            match link.side.poll_end(now) {
                None => {}
                Some(End::TimedOut(stall)) => {
                    trace!(
                        self,
                        "server cuts p{pi}'s upstream connection off ({stall:?} stalled)"
                    );
                    self.policy_cuts += 1;
                    self.upstream_lost(pi, false)?;
                }
                Some(other) => {
                    return violation(
                        "policy",
                        format!("p{pi}'s upstream connection ended ({other:?}) at the server"),
                    )
                }
            }
        }
        Ok(())
    }

    // ----- the driver's side of the state machines -------------------------

    /// Drains every proxy in the documented order, then lets the
    /// connection policies see the result.
    fn pump(&mut self) -> Check {
        self.wake_server()?;
        for pi in 0..self.proxies.len() {
            self.pump_proxy(pi)?;
        }
        // The bulk lanes' reads ran at the server meanwhile.
        self.wake_server()?;
        self.check_conns()
    }

    fn pump_proxy(&mut self, pi: usize) -> Check {
        for _ in 0..1_000 {
            let now = self.now;
            let Some(proxy) = self.proxies[pi].proxy.as_mut() else {
                return Ok(());
            };
            let mut progressed = false;
            let events: Vec<ProxyEvent> = std::iter::from_fn(|| proxy.poll_event()).collect();
            for ev in events {
                match ev {
                    ProxyEvent::ClientReady(id) => self.drain_client(pi, id)?,
                    ProxyEvent::ResetUpstream(_) => self.upstream_reset(pi)?,
                    // The bulk lane is delivered whole: never held back.
                    ProxyEvent::UpstreamReadable(_) => {}
                }
            }
            let lat = self.link_latency(pi);
            let node = &mut self.proxies[pi];
            let Some(proxy) = node.proxy.as_mut() else {
                return Ok(());
            };
            if let Some(conn) = node.bulk.as_mut() {
                if let Some(bytes) = proxy.poll_upstream_transmit(Lane::Bulk) {
                    // As before any input: the server's clock first.
                    self.server.set_time(unix_ms(now));
                    conn.handle_input(&mut self.server, &bytes);
                    let replies = conn.transmit_all(&mut self.server);
                    proxy.handle_upstream_input(Lane::Bulk, &replies, now);
                    progressed = true;
                }
            }
            match &mut node.upstream {
                Upstream::Up(link) => {
                    if let Some(bytes) = proxy.poll_upstream_transmit(Lane::Main) {
                        link.to_server.send(now + lat, bytes.freeze());
                        progressed = true;
                    }
                }
                // Told the connection is gone, the proxy must queue, not
                // transmit.
                _ if proxy.upstream_state() != UpstreamState::Up
                    && proxy.poll_upstream_transmit(Lane::Main).is_some() =>
                {
                    return violation(
                        "driver",
                        format!("p{pi} transmitted upstream while not connected"),
                    );
                }
                // An idle connection is being replaced without telling the
                // proxy: like the native writer, which runs only on a live
                // connection, the driver leaves what it queues in the proxy.
                _ => {}
            }
            // Clients the proxy stopped processing resume once replies
            // freed their slots: an explicit call, as the native driver does.
            for k in 0..self.proxies[pi].attached.len() {
                let (id, _) = self.proxies[pi].attached[k];
                let Some(proxy) = self.proxies[pi].proxy.as_mut() else {
                    return Ok(());
                };
                if proxy.client_resumable(id) {
                    proxy.handle_client_resume(id, now);
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
        violation("driver", format!("p{pi} never stops producing work"))
    }

    fn drain_client(&mut self, pi: usize, id: ClientId) -> Check {
        let now = self.now;
        let Some(&(_, ci)) = self.proxies[pi].attached.iter().find(|(c, _)| *c == id) else {
            // A client that is gone: nothing to send it.
            return Ok(());
        };
        let lat = self.latency();
        let Some(proxy) = self.proxies[pi].proxy.as_mut() else {
            return Ok(());
        };
        let Conn::Proxy { down, messages, .. } = &mut self.clients[ci].conn else {
            return violation(
                "driver",
                format!("p{pi} names c{ci}, which is not connected"),
            );
        };
        if let Some(bytes) = proxy.poll_client_transmit(id) {
            down.send(now + lat, bytes.freeze());
        }
        while let Some(reply) = proxy.poll_client_reply(id) {
            messages.send(now + lat, reply);
        }
        let queued = down.total_bytes() + messages.len() * MESSAGE_BYTES;
        let Conn::Proxy {
            policy, blocked, ..
        } = &mut self.clients[ci].conn
        else {
            return Ok(());
        };
        note_writes(policy, blocked, queued, self.setup.window, now);
        if proxy.client_should_close(id) {
            return violation(
                "reply",
                format!("p{pi} wants to close c{ci}, which sent only valid requests"),
            );
        }
        Ok(())
    }

    /// Handles what a client reported after input, a timeout or a drop,
    /// checking each outcome against the request it answers. `msg` is the
    /// annotated reply just handed to a message client, if any.
    fn client_events(&mut self, ci: usize, mut msg: Option<&AnnotatedReply>) -> Check {
        while let Some(ev) = self.clients[ci].client.poll_event() {
            let (id, outcome) = match ev {
                ClientEvent::Reply { id, reply, .. } => (id, Ok(reply)),
                ClientEvent::Failed { id, reason } => (id, Err(reason)),
            };
            let Some(req) = self.clients[ci].reqs.pop_front() else {
                return violation(
                    "exactly-once",
                    format!("c{ci}: an outcome for request {} that is not awaited", id.0),
                );
            };
            if req.id != id {
                return violation(
                    "exactly-once",
                    format!(
                        "c{ci}: outcome for request {} while {} ({}) is the oldest awaited",
                        id.0,
                        req.id.0,
                        req.intent.text()
                    ),
                );
            }
            match outcome {
                Ok(reply) => {
                    self.stats.replies += 1;
                    trace!(self, "c{ci}: {} = {}", req.intent.text(), short(&reply));
                    self.check_reply(ci, &req, reply, msg.take())?;
                }
                Err(reason) => {
                    self.stats.failed += 1;
                    trace!(self, "c{ci}: {} failed: {reason}", req.intent.text());
                    if let Failure::Protocol(e) = &reason {
                        return violation(
                            "reply",
                            format!("c{ci}: {} broke the protocol: {e}", req.intent.text()),
                        );
                    }
                    if req.probe && reason == Failure::Disconnected {
                        self.clients[ci].probe_failed = Some("its connection closed".into());
                    }
                    // Timed out: allowed only if a connection policy cut
                    // a connection meanwhile (the server may cut a proxy's
                    // idle upstream link as the probe leaves, and the
                    // proxy's reconnection wait can outlast a short client
                    // timeout), as `probe` checks.
                    if req.probe && reason == Failure::TimedOut {
                        self.clients[ci].probe_failed = Some("it timed out".into());
                    }
                }
            }
        }
        Ok(())
    }

    fn check_reply(
        &mut self,
        ci: usize,
        req: &Req,
        reply: Reply,
        msg: Option<&AnnotatedReply>,
    ) -> Check {
        let via = self.clients[ci].via;
        let what = format!(
            "c{ci} ({via:?}): {} (issued {})",
            req.intent.text(),
            fmt_t(req.issued_at)
        );
        if let (Via::Messages, Some(m)) = (via, msg) {
            let expected_proxy = reply.is_error() || matches!(req.intent, Intent::Ping(_));
            if expected_proxy != (m.source == Source::Proxy) {
                return violation(
                    "reply",
                    format!("{what}: {} came from {:?}", short(&reply), m.source),
                );
            }
        }
        if via != Via::Direct {
            // Through a proxy a transaction command is refused, whatever
            // the upstream's state; what was to be queued runs on its own.
            if req.intent.is_tx() {
                let name = req.intent.words(true)[0].clone();
                let refused = match &reply {
                    Reply::Error(e) => {
                        let text = String::from_utf8_lossy(e);
                        text.contains("is not available through the kv proxy")
                            && text.contains(&format!("'{name}'"))
                    }
                    _ => false,
                };
                if !refused {
                    return violation(
                        "reply",
                        format!("{what}: got {}, not the proxy's refusal", short(&reply)),
                    );
                }
                self.stats.tx_refused += 1;
                return Ok(());
            }
            if let Intent::Queued(c) = req.intent {
                let plain = Req {
                    id: req.id,
                    intent: c.plain(),
                    issued_at: req.issued_at,
                    issued_apply: req.issued_apply,
                    issued_tick: req.issued_tick,
                    probe: req.probe,
                    exact: req.exact,
                };
                return self.check_plain(ci, &plain, &what, reply, msg);
            }
        }
        self.check_plain(ci, req, &what, reply, msg)
    }

    fn check_plain(
        &mut self,
        ci: usize,
        req: &Req,
        what: &str,
        reply: Reply,
        msg: Option<&AnnotatedReply>,
    ) -> Check {
        let via = self.clients[ci].via;
        let is_status =
            |r: &Reply, s: &str| matches!(r, Reply::Status(b) if &b[..] == s.as_bytes());
        match (&req.intent, reply) {
            (_, Reply::Error(e)) => {
                let text = String::from_utf8_lossy(&e);
                let allowed = via != Via::Direct
                    && !matches!(req.intent, Intent::Ping(_))
                    && ALLOWED_ERRORS.iter().any(|p| text.starts_with(p));
                if !allowed {
                    return violation("reply", format!("{what}: unexpected error {text:?}"));
                }
                if req.probe {
                    self.clients[ci].probe_failed = Some(format!("{what} answered {text}"));
                }
                Ok(())
            }
            (Intent::Get(k), reply) => match self.read_value(*k, &reply) {
                Ok(value) => self.check_get(ci, req, *k, value, msg, false),
                Err(got) => violation("reply", format!("{what}: got {got}")),
            },
            // Every key is checked as a read from the server (the bulk lane
            // bypasses the cache): not older than what the client wrote or
            // read before, per key, whichever lane those went on.
            (Intent::Dump, reply) => {
                let pairs: Vec<(Bytes, Bytes)> = match reply {
                    Reply::Array(items) if items.len() % 2 == 0 => items
                        .chunks_exact(2)
                        .filter_map(|p| match (&p[0], &p[1]) {
                            (Reply::Bulk(k), Reply::Bulk(v)) => Some((k.clone(), v.clone())),
                            _ => None,
                        })
                        .collect(),
                    Reply::Pairs(pairs) => pairs,
                    other => return violation("reply", format!("{what}: got {}", short(&other))),
                };
                for k in 0..self.setup.keys {
                    let name = format!("k{k}");
                    let value = match pairs.iter().find(|(pk, _)| pk[..] == *name.as_bytes()) {
                        Some((_, v)) => match self.read_value(k, &Reply::Bulk(v.clone())) {
                            Ok(value) => value,
                            Err(got) => return violation("reply", format!("{what}: got {got}")),
                        },
                        None => None,
                    };
                    self.check_get(ci, req, k, value, msg, true)?;
                }
                Ok(())
            }
            (Intent::Mget(keys), Reply::Array(items)) if items.len() == keys.len() => {
                for (&k, item) in keys.iter().zip(&items) {
                    match self.read_value(k, item) {
                        // The proxy answers an MGET from its cache when every
                        // key is fresh there, so it is checked as a GET is.
                        Ok(value) => self.check_get(ci, req, k, value, msg, false)?,
                        Err(got) => return violation("reply", format!("{what}: got {got}")),
                    }
                }
                Ok(())
            }
            (Intent::Put(k, seq) | Intent::SetPx(k, seq, _), r) if is_status(&r, "OK") => {
                self.acked_put(ci, what, *k, *seq)
            }
            (Intent::Mset(pairs), r) if is_status(&r, "OK") => {
                for &(k, seq) in pairs {
                    self.acked_put(ci, what, k, seq)?;
                }
                Ok(())
            }
            (Intent::Del(keys), Reply::Integer(n)) if n >= 0 && n as usize <= keys.len() => {
                for &k in keys {
                    let Some(pos) = self.model.del_position(k, req.issued_apply) else {
                        return violation("reply", format!("{what}: acknowledged, never applied"));
                    };
                    self.raise_floor(ci, k, pos, Why::Wrote(None));
                    self.model.acknowledge(k, pos);
                }
                Ok(())
            }
            (Intent::Pexpire(k, _) | Intent::Persist(k), Reply::Integer(n)) if n == 0 || n == 1 => {
                if n == 1 {
                    // The key's new deadline binds the session's later
                    // reads as a write does.
                    let Some(pos) = self.model.expire_position(*k, req.issued_apply) else {
                        return violation("reply", format!("{what}: acknowledged, never applied"));
                    };
                    let value = self.model.keys[*k].versions[pos].value;
                    self.raise_floor(ci, *k, pos, Why::Wrote(value));
                }
                Ok(())
            }
            (Intent::Pttl(_), Reply::Integer(n)) if n >= -2 && n <= self.setup.max_px() as i64 => {
                Ok(())
            }
            (Intent::Incr(_), Reply::Integer(n)) if n > 0 => Ok(()),
            (Intent::Ping(t), Reply::Bulk(b)) if &b[..] == format!("t{t}").as_bytes() => Ok(()),
            // Direct connections: the transaction's own replies (the
            // server's are checked exactly against the model as they are
            // sent; here, that the client paired them right).
            (Intent::Watch(_) | Intent::Multi | Intent::Discard, r) if is_status(&r, "OK") => {
                Ok(())
            }
            (Intent::Queued(_), r) if is_status(&r, "QUEUED") => Ok(()),
            (Intent::Exec(_), Reply::NilArray) => Ok(()),
            (Intent::Exec(cmds), Reply::Array(items)) if items.len() == cmds.len() => {
                for (c, item) in cmds.iter().zip(&items) {
                    let fits = match (c, item) {
                        (TxCmd::Set(..), r) => is_status(r, "OK"),
                        (TxCmd::Get(k), r) => self.read_value(*k, r).is_ok(),
                        (TxCmd::Incr(_), Reply::Integer(n)) => *n > 0,
                        _ => false,
                    };
                    if !fits {
                        return violation(
                            "reply",
                            format!("{what}: {c:?} answered {} inside EXEC", short(item)),
                        );
                    }
                }
                Ok(())
            }
            (_, reply) => violation(
                "reply",
                format!(
                    "{what}: got {}: replies were paired with the wrong requests",
                    short(&reply)
                ),
            ),
        }
    }

    /// The value a read of `key` returned, or what was wrong with it.
    fn read_value(&self, key: usize, reply: &Reply) -> Result<Option<u64>, String> {
        match reply {
            Reply::Nil => Ok(None),
            Reply::Bulk(v) => match parse_value(v) {
                Some((vk, seq)) if vk == key => Ok(Some(seq)),
                _ => Err(format!(
                    "{:?}, a value of another key: replies were paired with the wrong requests",
                    String::from_utf8_lossy(v)
                )),
            },
            other => Err(format!(
                "{}: replies were paired with the wrong requests",
                short(other)
            )),
        }
    }

    /// A write of `v<seq>` to `key` was acknowledged.
    fn acked_put(&mut self, ci: usize, what: &str, k: usize, seq: u64) -> Check {
        let Some((pk, pos)) = self.model.put_position(seq) else {
            return violation("reply", format!("{what}: acknowledged, never applied"));
        };
        if pk != k {
            return violation("server", format!("{what}: applied to k{pk}"));
        }
        if self.model.keys[k].versions[pos].value != Some(seq) {
            return violation("server", format!("{what}: model position mismatch"));
        }
        if self.model.is_lost(k, pos) {
            return violation(
                "durability",
                format!(
                    "{what}: acknowledged, but the write was lost in a server \
                     restart\n    {}",
                    self.model.describe(k, pos)
                ),
            );
        }
        self.raise_floor(ci, k, pos, Why::Wrote(Some(seq)));
        self.model.acknowledge(k, pos);
        Ok(())
    }

    fn raise_floor(&mut self, ci: usize, key: usize, pos: usize, why: Why) {
        let c = &mut self.clients[ci];
        let f = match why {
            Why::Wrote(_) => &mut c.writes[key],
            Why::Read(_) => &mut c.reads[key],
        };
        if pos > f.0 {
            *f = (pos, why);
        }
    }

    /// Checks a value read against the server's history: the window of
    /// time in which the value must have been current depends on where it
    /// can have come from, and the session's floor must hold. `forwarded`:
    /// the read is one a proxy always forwards (`MGET`), so it ran at the
    /// server after it was sent.
    fn check_get(
        &mut self,
        ci: usize,
        req: &Req,
        key: usize,
        value: Option<u64>,
        msg: Option<&AnnotatedReply>,
        forwarded: bool,
    ) -> Check {
        self.model.expire_until(self.now);
        let c = &self.clients[ci];
        let ttl = self.setup.proxy.cache.ttl;
        let rt = self.setup.proxy.request_timeout;
        let what = format!(
            "c{ci} ({:?}): {} issued at {} read {} for k{key}",
            c.via,
            req.intent.text(),
            fmt_t(req.issued_at),
            fmt_value(value)
        );
        // Where the value came from, and so the earliest time it may have
        // been current at the server. A proxy's cache entry is younger than
        // the TTL, and the reply that filled it was on the wire for less
        // than the request timeout (the proxy gives up on a request after
        // that); an upstream reply, possibly a `GET` this request joined,
        // was executed less than a request timeout before it arrived.
        // (With tracking these windows still hold, the TTL being the
        // safety net, but they are a minute wide: what binds a tracking
        // proxy's reads is what it knew, the floors below.)
        let (lo, hi, from) = if req.exact {
            (req.issued_at, self.now, "a probe (exact)")
        } else if forwarded {
            (req.issued_at, self.now, "the server (forwarded)")
        } else {
            match (c.via, msg.map(|m| (m.source, m.ready_at))) {
                (Via::Direct, _) => (req.issued_at, self.now, "the server"),
                (Via::Messages, Some((Source::Cache { age }, ready_at))) => {
                    self.stats.cache_hits += 1;
                    if age >= ttl {
                        return violation(
                            "cache-age",
                            format!("{what} from the cache at age {age:?}, TTL {ttl:?}"),
                        );
                    }
                    let stored_at = minus(ready_at, age);
                    // With tracking, an entry is fresh only while the
                    // connection it was read on lives to say otherwise: one
                    // stored before that connection ended must not be
                    // served after. (Strictly after: at the same instant,
                    // the hit may have come first.)
                    let losses = &self.proxies[c.proxy].losses;
                    let after = losses.partition_point(|l| *l <= stored_at);
                    if self.setup.tracking && losses.get(after).is_some_and(|l| *l < ready_at) {
                        return violation(
                            "cache-after-loss",
                            format!(
                                "{what} from a cache entry stored at {} though p{}'s tracked \
                                 connection ended at {}",
                                fmt_t(stored_at),
                                c.proxy,
                                fmt_t(losses[after])
                            ),
                        );
                    }
                    // The server behind a reconnection may have restarted
                    // with less: an entry stored before it must not be
                    // served after it.
                    if let Some(at) = self.proxies[c.proxy].connected_at {
                        if stored_at < at && at <= ready_at {
                            return violation(
                                "cache-across-reconnect",
                                format!(
                                    "{what} from a cache entry stored at {} though p{} \
                                     reconnected upstream at {}",
                                    fmt_t(stored_at),
                                    c.proxy,
                                    fmt_t(at)
                                ),
                            );
                        }
                    }
                    (minus(minus(ready_at, age), rt), ready_at, "the cache")
                }
                (Via::Messages, Some((_, ready_at))) => (minus(ready_at, rt), ready_at, "upstream"),
                _ => (
                    minus(req.issued_at, ttl + rt),
                    self.now,
                    "cache or upstream",
                ),
            }
        };
        // Everything the session saw before this reply binds it: writes
        // acknowledged (the proxy sends a read behind a pending write to
        // its key) and reads, pipelined ones included (replies come in
        // order, so those are the requests issued before this one).
        let mut read = c.reads[key];
        let bulk = c.bulk_reads[key];
        if bulk.2 == c.conn_gen && bulk.0 > read.0 {
            read = (bulk.0, bulk.1);
        }
        let (session_floor, why) = if read.0 > c.writes[key].0 {
            read
        } else {
            c.writes[key]
        };
        // What the proxy knew binds it too, for every client of it: a read
        // issued after the proxy took the invalidation of a change, or
        // after its main lane connected anew, may not be older than that
        // change, or than what the server then held. This is what
        // tracking promises where the TTL windows above say little (the
        // cache TTL is long with tracking); it holds without tracking too
        // for reconnections, as the cache is emptied on connecting.
        let proxy_of = (c.via != Via::Direct).then_some(c.proxy);
        let proxy_floor = proxy_of.and_then(|pi| self.proxies[pi].floor(key, req.issued_tick));
        let floor = session_floor.max(proxy_floor.map_or(0, |f| f.pos));
        if floor > session_floor {
            self.stats.tracked_reads += 1;
        }
        // A value whose key had expired before the read was sent may not be
        // read from the cache: the proxy caches a value only for as long as
        // the key lives. A read answered upstream may have joined a `GET`
        // sent up to a request timeout earlier, and gets what that one read
        // (by design: one round trip of staleness, as for overwrites).
        let expired_by = match from {
            "the cache" | "the server" | "a probe (exact)" | "the server (forwarded)" => {
                req.issued_at
            }
            _ => minus(req.issued_at, rt),
        };
        let checked = self
            .model
            .check_read(key, value, (lo, hi), floor, expired_by);
        if let (Ok(_), true, Some(pi)) = (&checked, self.setup.tracking, proxy_of) {
            self.check_tracked(pi, req, key, value, (floor, hi), &what, from)?;
        }
        match checked {
            Ok(pos) => {
                let c = &mut self.clients[ci];
                if forwarded && c.via != Via::Direct {
                    let b = &mut c.bulk_reads[key];
                    if b.2 != c.conn_gen || pos > b.0 {
                        *b = (pos, Why::Read(value), c.conn_gen);
                    }
                } else {
                    self.raise_floor(ci, key, pos, Why::Read(value));
                }
                Ok(())
            }
            Err(ReadError::Unknown(m)) => violation("reply", format!("{what}: {m}")),
            Err(ReadError::Stale(m)) => violation(
                if req.exact && self.setup.tracking {
                    // A probe of a drained system: every invalidation has
                    // been taken, so no cache may be stale, TTL or not.
                    "coherence"
                } else if from == "the cache" {
                    "cache-staleness"
                } else {
                    "stale-read"
                },
                format!(
                    "{what} from {from}: {m}\n    {}",
                    self.model
                        .describe(key, self.model.keys[key].versions.len() - 1)
                ),
            ),
            Err(ReadError::Expired { pos }) => violation(
                "expired-read",
                format!(
                    "{what} from {from}: the value's key had expired at the server (position \
                     {pos}) before the read was sent\n    {}",
                    self.model.describe(key, pos)
                ),
            ),
            Err(ReadError::BelowFloor { got }) => {
                if let Some(f) = proxy_floor.filter(|f| got < f.pos) {
                    let value = fmt_value(self.model.keys[key].versions[f.pos].value);
                    let (kind, because) = match f.why {
                        FloorWhy::Invalidated => (
                            "invalidation",
                            format!(
                                "p{} had taken the invalidation of the change to {value} \
                                 (position {}) before the read was issued",
                                c.proxy, f.pos
                            ),
                        ),
                        FloorWhy::Reconnected => (
                            "reconnect",
                            format!(
                                "p{}'s main lane had connected anew, when the server held \
                                 {value} (position {}), before the read was issued",
                                c.proxy, f.pos
                            ),
                        ),
                    };
                    return violation(
                        kind,
                        format!(
                            "{what} (position {got}) from {from}, but {because}\n    {}",
                            self.model.describe(key, f.pos)
                        ),
                    );
                }
                let floor = session_floor;
                let (kind, because) = match why {
                    Why::Wrote(v) => (
                        "read-your-writes",
                        format!("it saw its own write of {} acknowledged", fmt_value(v)),
                    ),
                    Why::Read(v) => (
                        "monotonic-reads",
                        format!("it already read {}", fmt_value(v)),
                    ),
                };
                violation(
                    kind,
                    format!(
                        "{what} (position {got}) from {from}, but {because} (position \
                         {floor})\n    {}",
                        self.model.describe(key, floor)
                    ),
                )
            }
        }
    }

    /// With tracking, what a proxy serves was read on a connection the
    /// server tracks it for, until the next change of its key: so a value
    /// overwritten before the read was even issued was served from an
    /// entry whose invalidation one of the proxy's connections was owed
    /// (it may not have arrived yet: that is the staleness tracking
    /// allows). If none was, the proxy served what no connection tracked:
    /// an entry kept from a connection that is gone, or never read on one.
    /// Every version holding the value may be the one read (a new deadline
    /// keeps the value; missing is one value): the read is fine if one of
    /// them passes.
    #[allow(clippy::too_many_arguments)]
    fn check_tracked(
        &self,
        pi: usize,
        req: &Req,
        key: usize,
        value: Option<u64>,
        (floor, hi): (usize, Instant),
        what: &str,
        from: &str,
    ) -> Check {
        let versions = &self.model.keys[key].versions;
        let mut judged = None;
        // Below the floor, no version can be the one read.
        for q in (floor..versions.len()).rev() {
            if versions[q].value != value || versions[q].start > hi {
                continue;
            }
            let next = q + 1;
            if next >= versions.len()
                || versions[next].start >= req.issued_at
                || versions[next].lost
                || self.model.owed(pi, key, next)
            {
                return Ok(());
            }
            judged = Some(next);
        }
        let Some(next) = judged else {
            return Ok(());
        };
        violation(
            "untracked",
            format!(
                "{what} from {from} through p{pi}, though the change to {} (position {next}) \
                 had been made before the read was issued, and no connection of p{pi} was owed \
                 its invalidation: the value came from an entry no connection tracked\n    {}",
                fmt_value(versions[next].value),
                self.model.describe(key, next)
            ),
        )
    }

    // ----- connections -----------------------------------------------------

    /// The fraction of bytes in flight that still reach the peer after the
    /// connection died (drawn even when ghosts are off, to keep the random
    /// stream aligned across shrinking attempts).
    fn ghost_bytes(&mut self, in_flight: usize) -> usize {
        let n = if self.rng.chance(500) {
            0
        } else {
            self.rng.below(in_flight as u64 + 1) as usize
        };
        if self.p.has(GHOST) && !self.healing {
            n
        } else {
            0
        }
    }

    /// A client connection dies; with `ghosts`, bytes it had sent may still
    /// be read by the other end.
    fn drop_client_conn(&mut self, ci: usize, ghosts: bool) -> Check {
        let retry_at = self.client_retry_at();
        let now = self.now;
        let conn = std::mem::replace(&mut self.clients[ci].conn, Conn::Down { retry_at });
        match conn {
            Conn::Proxy {
                incarnation,
                id,
                mut up,
                ..
            } => {
                let pi = self.clients[ci].proxy;
                let keep = if ghosts {
                    self.ghost_bytes(up.total_bytes())
                } else {
                    0
                };
                let node = &mut self.proxies[pi];
                if let (Some(proxy), true) = (node.proxy.as_mut(), node.incarnation == incarnation)
                {
                    if keep > 0 {
                        up.truncate_bytes(keep);
                        let data = up.recv_bytes(FOREVER, usize::MAX);
                        trace!(self, "c{ci} => p{pi}: {} bytes after the drop", data.len());
                        proxy.handle_client_input(id, &data, now);
                    }
                    proxy.remove_client(id);
                    node.attached.retain(|(c, _)| *c != id);
                    self.pump_proxy(pi)?;
                }
            }
            Conn::Direct { mut up, side, .. } => {
                let keep = if ghosts {
                    self.ghost_bytes(up.total_bytes())
                } else {
                    0
                };
                if keep > 0 {
                    up.truncate_bytes(keep);
                    self.zombies.push(Zombie {
                        pipe: up,
                        side: *side,
                    });
                } else {
                    side.end(&mut self.server, &mut self.model);
                }
            }
            Conn::Down { .. } => return Ok(()),
        }
        self.clients[ci].client.handle_disconnected(now);
        self.client_events(ci, None)
    }

    fn reconnect_client(&mut self, ci: usize) -> Check {
        let now = self.now;
        let id = self.conn_id();
        let c = &self.clients[ci];
        let pi = c.proxy;
        let conn = match c.via {
            Via::Direct if now >= self.server_back_at => Conn::Direct {
                up: Pipe::default(),
                down: Pipe::default(),
                side: Box::new(ServerSide::new(&self.server, self.setup.conn, now, id)),
            },
            Via::Stream | Via::Messages => {
                let node = &mut self.proxies[pi];
                let Some(proxy) = node.proxy.as_mut() else {
                    self.clients[ci].conn = Conn::Down {
                        retry_at: self.client_retry_at(),
                    };
                    return Ok(());
                };
                let kind = if c.via == Via::Messages {
                    ClientKind::Messages
                } else {
                    ClientKind::Stream
                };
                let id = proxy.add_client(kind, now);
                node.attached.push((id, ci));
                Conn::Proxy {
                    incarnation: node.incarnation,
                    id,
                    up: Pipe::default(),
                    down: Pipe::default(),
                    messages: Pipe::default(),
                    policy: Box::new(ConnPolicy::new(self.setup.conn, now)),
                    blocked: false,
                }
            }
            Via::Direct => {
                self.clients[ci].conn = Conn::Down {
                    retry_at: self.client_retry_at(),
                };
                return Ok(());
            }
        };
        trace!(self, "c{ci} connects");
        let c = &mut self.clients[ci];
        c.conn = conn;
        c.conn_gen += 1;
        c.client.handle_reconnected(now);
        self.client_events(ci, None)
    }

    /// Turns a dead upstream link into a zombie: part of what the proxy had
    /// sent may still reach the server.
    fn bury(&mut self, link: UpLink) {
        let UpLink {
            mut to_server,
            side,
            ..
        } = link;
        let keep = self.ghost_bytes(to_server.total_bytes());
        if keep > 0 {
            to_server.truncate_bytes(keep);
            self.zombies.push(Zombie {
                pipe: to_server,
                side,
            });
        } else {
            side.end(&mut self.server, &mut self.model);
        }
    }

    /// The driver sees the upstream connection die (or fail to open), and
    /// does what the core's [`Reconnect`] policy says.
    /// The bulk lane goes with the main lane's connection.
    fn bulk_lost(&mut self, pi: usize) {
        let now = self.now;
        if let Some(mut conn) = self.proxies[pi].bulk.take() {
            conn.end(&mut self.server);
            if let Some(p) = self.proxies[pi].proxy.as_mut() {
                p.handle_upstream_lost(Lane::Bulk, now);
            }
        }
    }

    fn upstream_lost(&mut self, pi: usize, ghosts: bool) -> Check {
        self.bulk_lost(pi);
        let now = self.now;
        let connect_in = Duration::from_micros(self.rng.below(20_000));
        let was_up = matches!(self.proxies[pi].upstream, Upstream::Up(_));
        if was_up {
            self.proxies[pi].losses.push(now);
        }
        if was_up && self.p.bug == Some(Bug::NoFlushOnReconnect) && self.replaceable(pi) {
            // The planted bug: the proxy is told nothing, and its cache
            // outlives the connection that tracked it.
            let next = Upstream::Connecting {
                done_at: now + connect_in,
            };
            let old = std::mem::replace(&mut self.proxies[pi].upstream, next);
            self.proxies[pi].transparent = true;
            if let Upstream::Up(link) = old {
                if ghosts {
                    self.bury(*link);
                } else {
                    link.side.end(&mut self.server, &mut self.model);
                }
            }
            trace!(
                self,
                "BUG: p{pi}: idle upstream closed; replacing it without telling the proxy"
            );
            return self.pump_proxy(pi);
        }
        if was_up {
            // Whatever comes next, what was cached through a tracked
            // connection goes now: its invalidations ended with it (the
            // native driver says so on every connection's end).
            if let Some(proxy) = self.proxies[pi].proxy.as_mut() {
                proxy.handle_upstream_closed(Lane::Main, now);
            }
        }
        let node = &mut self.proxies[pi];
        let idle = node
            .proxy
            .as_ref()
            .is_none_or(|p| p.upstream_in_flight() == 0);
        if node
            .proxy
            .as_ref()
            .is_some_and(|p| p.upstream_verified(Lane::Main))
        {
            node.reconnect.handle_verified();
        }
        let decision = match node.upstream {
            Upstream::Up(_) => node.reconnect.handle_lost(now, idle),
            _ => Lost::Retry(node.reconnect.handle_failed(now)),
        };
        let next = match decision {
            Lost::Replace(at) if at <= now => Upstream::Connecting {
                done_at: now + connect_in,
            },
            Lost::Replace(retry_at) | Lost::Retry(retry_at) => Upstream::Down { retry_at },
        };
        let old = std::mem::replace(&mut self.proxies[pi].upstream, next);
        if let Upstream::Up(link) = old {
            if ghosts {
                self.bury(*link);
            } else {
                link.side.end(&mut self.server, &mut self.model);
            }
        }
        match decision {
            Lost::Replace(at) => {
                trace!(
                    self,
                    "p{pi}: idle upstream closed; replacing it at {}",
                    fmt_t(at)
                )
            }
            Lost::Retry(at) => {
                if self.p.bug != Some(Bug::SkipUpstreamLost) {
                    if let Some(proxy) = self.proxies[pi].proxy.as_mut() {
                        proxy.handle_upstream_lost(Lane::Main, now);
                    }
                }
                trace!(self, "p{pi}: upstream lost; retrying at {}", fmt_t(at));
            }
        }
        self.pump_proxy(pi)
    }

    /// Whether proxy `pi`'s tracked main lane can be swapped for another
    /// without the proxy noticing (the planted no-flush-on-reconnect bug):
    /// nothing in flight, no part of a frame read, the handshake answered.
    fn replaceable(&self, pi: usize) -> bool {
        let node = &self.proxies[pi];
        let Upstream::Up(link) = &node.upstream else {
            return false;
        };
        link.seen.is_clear()
            && link.swallow == 0
            && node.proxy.as_ref().is_some_and(|p| {
                p.upstream_in_flight() == 0
                    && p.upstream_state() == UpstreamState::Up
                    && *p.upstream_tracking(Lane::Main) == UpstreamTracking::On
            })
    }

    /// The proxy asked for a reset: drop the connection, and reconnect when
    /// the core's [`Reconnect`] policy says (the proxy queues meanwhile).
    fn upstream_reset(&mut self, pi: usize) -> Check {
        self.bulk_lost(pi);
        let now = self.now;
        let node = &mut self.proxies[pi];
        if node
            .proxy
            .as_ref()
            .is_some_and(|p| p.upstream_verified(Lane::Main))
        {
            node.reconnect.handle_verified();
        }
        let retry_at = node.reconnect.handle_reset(now);
        let old = std::mem::replace(&mut self.proxies[pi].upstream, Upstream::Down { retry_at });
        if let Upstream::Up(link) = old {
            self.proxies[pi].losses.push(now);
            self.bury(*link);
        }
        trace!(
            self,
            "p{pi}: upstream reset requested; reconnecting at {}",
            fmt_t(retry_at)
        );
        Ok(())
    }

    fn restart_proxy(&mut self, pi: usize) -> Check {
        let down_for = Duration::from_micros(self.rng.below(400_000));
        trace!(self, "FAULT p{pi} restarts (down for {down_for:?})");
        let attached = std::mem::take(&mut self.proxies[pi].attached);
        if let Some(mut conn) = self.proxies[pi].bulk.take() {
            conn.end(&mut self.server);
        }
        let node = &mut self.proxies[pi];
        if let Some(p) = node.proxy.take() {
            self.stats.proxy_hits += p.cache_stats().hits;
        }
        node.back_at = self.now + down_for;
        node.transparent = false;
        let old = std::mem::replace(&mut node.upstream, Upstream::Down { retry_at: FOREVER });
        if let Upstream::Up(link) = old {
            self.bury(*link);
        }
        for (_, ci) in attached {
            let retry_at = self.client_retry_at();
            self.clients[ci].conn = Conn::Down { retry_at };
            self.clients[ci].client.handle_disconnected(self.now);
            self.client_events(ci, None)?;
        }
        Ok(())
    }

    fn restart_server(&mut self) -> Check {
        let down_for = Duration::from_micros(self.rng.below(500_000));
        trace!(self, "FAULT server restarts (down for {down_for:?})");
        // The process dies: bytes in flight to it are gone.
        for z in std::mem::take(&mut self.zombies) {
            z.side.end(&mut self.server, &mut self.model);
        }
        for pi in 0..self.proxies.len() {
            if matches!(self.proxies[pi].upstream, Upstream::Up(_)) {
                self.upstream_lost(pi, false)?;
            }
        }
        for ci in 0..self.clients.len() {
            if matches!(self.clients[ci].conn, Conn::Direct { .. }) {
                self.drop_client_conn(ci, false)?;
            }
        }
        self.server_back_at = self.now + down_for;
        if self.p.bug == Some(Bug::StaleRestart) {
            // Restores the state of the previous restart, and keeps the
            // current one for the next.
            let old = std::mem::replace(&mut self.snapshot, self.server.store().dump(0));
            self.server = Server::new(self.server.config().clone());
            for (k, v) in old {
                let set = Command::build(&[&b"SET"[..], &k, &v]).expect("a valid SET");
                let _ = self.server.execute(set);
            }
        }
        self.check_durability()
    }

    /// After a restart, every key must still hold the newest write any
    /// client saw acknowledged, or something applied after it. (The server
    /// is kept in memory across restarts, so with no planted bug the store
    /// is exactly the model's; this is the check a persistent server's
    /// recovery would have to pass.)
    fn check_durability(&mut self) -> Check {
        self.model.expire_until(self.now);
        let t = unix_ms(self.now);
        for k in 0..self.setup.keys {
            let slot = self
                .server
                .store()
                .slot(&key_name(k))
                .filter(|s| !s.expired(t));
            let held = slot.map(|s| parse_value(s.entry.value()).map_or(u64::MAX, |(_, seq)| seq));
            let deadline = slot.and_then(|s| s.deadline);
            let h = &self.model.keys[k];
            let ok = h.versions[h.acked..].iter().any(|v| v.value == held);
            if !ok {
                return violation(
                    "durability",
                    format!(
                        "after the server restart k{k} holds {}, but position {} ({}) was \
                         acknowledged to a client: an acknowledged write was lost\n    {}",
                        fmt_value(held),
                        h.acked,
                        fmt_value(h.versions[h.acked].value),
                        self.model.describe(k, h.acked)
                    ),
                );
            }
            if held != self.model.current(k) || deadline != self.model.deadline(k) {
                trace!(self, "k{k} restored to {}", fmt_value(held));
                self.model.lose(k, held, deadline, self.now);
            }
        }
        for n in 0..self.setup.counters {
            let held = self
                .server
                .store()
                .slot(&counter_name(n))
                .filter(|s| !s.expired(t))
                .map(|s| {
                    std::str::from_utf8(s.entry.value())
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(i64::MIN)
                });
            self.model.reset_counter(n, held);
        }
        Ok(())
    }

    // ----- time ------------------------------------------------------------

    fn next_timer(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for node in &self.proxies {
            match &node.proxy {
                Some(p) => at(p.poll_timeout()),
                None => at(Some(node.back_at)),
            }
            match &node.upstream {
                Upstream::Down { retry_at } if node.proxy.is_some() => at(Some(*retry_at)),
                Upstream::Connecting { done_at } => at(Some(*done_at)),
                Upstream::Up(link) => at(link.side.policy.poll_timeout()),
                _ => {}
            }
        }
        // The server's active expiry, once the server is up.
        at(self.server.poll_timeout().map(|d| {
            let wake = self.server_wake.unwrap_or(Instant::ZERO);
            instant_of(d).max(self.server_back_at).max(wake)
        }));
        for c in &self.clients {
            // A slow reader gives up on no request while it is not reading:
            // it is the server's and proxy's stall cut-off that must end it.
            at(c.client.poll_timeout().map(|t| t.max(c.reads_paused_until)));
            match &c.conn {
                Conn::Down { retry_at } => at(Some(*retry_at)),
                Conn::Proxy { policy, .. } => at(policy.poll_timeout()),
                Conn::Direct { side, .. } => at(side.policy.poll_timeout()),
            }
        }
        t
    }

    fn next_event(&self) -> Option<Instant> {
        let mut t = self.next_timer();
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for (ci, c) in self.clients.iter().enumerate() {
            match &c.conn {
                Conn::Proxy {
                    up, down, messages, ..
                } => {
                    if self.proxy_reads(ci) {
                        at(up.next_ready());
                    }
                    let resume = c.reads_paused_until;
                    at(down.next_ready().map(|t| t.max(resume)));
                    at(messages.next_ready().map(|t| t.max(resume)));
                }
                Conn::Direct { up, down, side } => {
                    if side.policy.wants_input() {
                        at(up.next_ready());
                    }
                    at(down.next_ready().map(|t| t.max(c.reads_paused_until)));
                }
                Conn::Down { .. } => {}
            }
        }
        for p in &self.proxies {
            if let Upstream::Up(link) = &p.upstream {
                if link.side.policy.wants_input() {
                    at(link.to_server.next_ready());
                }
                at(link.to_proxy.next_ready());
            }
        }
        for z in &self.zombies {
            at(z.pipe.next_ready());
        }
        t
    }

    /// Moves the clock to `target`. With `exact`, every timer on the way
    /// fires at its own time, as an event loop would; without, they all
    /// fire at `target` (a driver that woke late).
    fn advance_to(&mut self, target: Instant, exact: bool) -> Check {
        if exact {
            while let Some(t) = self.next_timer().filter(|t| *t <= target) {
                if t > self.now {
                    self.now = t;
                }
                self.fire_due()?;
            }
        }
        self.now = self.now.max(target);
        self.fire_due()
    }

    /// The server's active expiry, when `poll_timeout` says it is due: as
    /// its driver does, `handle_timeout` again while it used its whole
    /// budget, after which nothing may be due.
    fn fire_server(&mut self, now: Instant) -> Result<bool, Violation> {
        let t = unix_ms(now);
        if now < self.server_back_at || self.server.poll_timeout().is_none_or(|d| d > t) {
            self.server_wake = None;
            return Ok(false);
        }
        let wake = match self.server_wake {
            Some(wake) => wake,
            None => {
                let late = if self.rng.chance(300) {
                    Duration::from_micros(self.rng.below(30_000))
                } else {
                    Duration::ZERO
                };
                *self.server_wake.insert(now + late)
            }
        };
        if now < wake {
            return Ok(false);
        }
        self.server_wake = None;
        for _ in 0..1_000 {
            let n = self.server.handle_timeout(t);
            self.stats.active_expired += n as u64;
            trace!(self, "server: active expiry removed {n} keys");
            if n > EXPIRE_BUDGET {
                return violation("timer", format!("handle_timeout removed {n} keys"));
            }
            if n < EXPIRE_BUDGET {
                self.model.expire_until(now);
                check_store(&self.server, &self.model, t)?;
                if let Some(d) = self.server.poll_timeout().filter(|d| *d <= t) {
                    return violation(
                        "timer",
                        format!(
                            "the server's poll_timeout is {d} after handle_timeout({t}) \
                             used less than its budget"
                        ),
                    );
                }
                return Ok(true);
            }
        }
        violation("timer", "the server's active expiry never ends")
    }

    /// Fires every timer due at `now`, until none is.
    fn fire_due(&mut self) -> Check {
        for _ in 0..100 {
            if !self.fire_once()? {
                return Ok(());
            }
            self.pump()?;
        }
        violation("timer", "timers keep firing without time passing")
    }

    fn fire_once(&mut self) -> Result<bool, Violation> {
        let now = self.now;
        let mut fired = self.fire_server(now)?;
        for pi in 0..self.proxies.len() {
            let node = &mut self.proxies[pi];
            match node.proxy.as_mut() {
                None if node.back_at <= now => {
                    node.proxy = Some(Proxy::new(self.setup.proxy.clone(), now));
                    node.reconnect = Reconnect::new(self.p.seed ^ node.incarnation);
                    node.connected_at = None;
                    node.incarnation += 1;
                    node.upstream = Upstream::Connecting {
                        done_at: now + Duration::from_micros(self.rng.below(20_000)),
                    };
                    trace!(self, "p{pi} is back (empty cache)");
                    fired = true;
                    continue;
                }
                None => continue,
                Some(proxy) => {
                    if proxy.poll_timeout().is_some_and(|t| t <= now) {
                        proxy.handle_timeout(now);
                        if let Some(t) = proxy.poll_timeout().filter(|t| *t <= now) {
                            return violation(
                                "timer",
                                format!(
                                    "p{pi}: poll_timeout is {} after handle_timeout({})",
                                    fmt_t(t),
                                    fmt_t(now)
                                ),
                            );
                        }
                        fired = true;
                        // Drain at once, as after any input: a reset it asks
                        // for concerns the connection of this moment.
                        self.pump_proxy(pi)?;
                    }
                }
            }
            match self.proxies[pi].upstream {
                Upstream::Down { retry_at } if retry_at <= now => {
                    let done_at = now + Duration::from_micros(self.rng.below(20_000));
                    self.proxies[pi].upstream = Upstream::Connecting { done_at };
                    if let Some(p) = self.proxies[pi].proxy.as_mut() {
                        p.handle_upstream_connecting(Lane::Main, now);
                    }
                    fired = true;
                    self.pump_proxy(pi)?;
                }
                Upstream::Up(ref mut link)
                    if link.side.policy.poll_timeout().is_some_and(|t| t <= now) =>
                {
                    link.side.policy.handle_timeout(now);
                    if link.side.policy.poll_timeout().is_some_and(|t| t <= now) {
                        return violation(
                            "timer",
                            format!("the server's policy for p{pi}'s link stays due"),
                        );
                    }
                    fired = true;
                }
                Upstream::Connecting { done_at } if done_at <= now => {
                    fired = true;
                    if now >= self.server_back_at {
                        self.upstream_connected(pi)?;
                    } else {
                        trace!(self, "p{pi}: upstream connection refused");
                        self.proxies[pi].transparent = false;
                        self.upstream_lost(pi, false)?;
                    }
                }
                _ => {}
            }
        }
        for ci in 0..self.clients.len() {
            let policy = match &mut self.clients[ci].conn {
                Conn::Proxy { policy, .. } => Some(&mut **policy),
                Conn::Direct { side, .. } => Some(&mut side.policy),
                Conn::Down { .. } => None,
            };
            if let Some(policy) = policy.filter(|p| p.poll_timeout().is_some_and(|t| t <= now)) {
                policy.handle_timeout(now);
                if policy.poll_timeout().is_some_and(|t| t <= now) {
                    return violation("timer", format!("c{ci}: the connection policy stays due"));
                }
                fired = true;
            }
            let c = &mut self.clients[ci];
            if c.reads_paused_until <= now && c.client.poll_timeout().is_some_and(|t| t <= now) {
                c.client.handle_timeout(now);
                if c.client.poll_timeout().is_some_and(|t| t <= now) {
                    return violation("timer", format!("c{ci}: poll_timeout stays due"));
                }
                fired = true;
                self.client_events(ci, None)?;
                if self.clients[ci].client.is_broken() {
                    trace!(self, "c{ci}: timed out; closing the connection");
                    self.drop_client_conn(ci, true)?;
                }
            }
            if let Conn::Down { retry_at } = self.clients[ci].conn {
                if retry_at <= now {
                    fired = true;
                    self.reconnect_client(ci)?;
                }
            }
        }
        Ok(fired)
    }

    /// Proxy `pi`'s upstream connection is made. From now on, whatever
    /// the proxy serves comes from what the server runs on it: reads
    /// issued after this may not be older than what the server holds now
    /// (the proxy empties its cache on connecting).
    fn upstream_connected(&mut self, pi: usize) -> Check {
        let now = self.now;
        let id = self.conn_id();
        let pace = self.draw_pace();
        let transparent = std::mem::take(&mut self.proxies[pi].transparent);
        let mut side = ServerSide::new(&self.server, self.setup.conn, now, id);
        side.tx.group = Some(pi);
        let mut link = UpLink {
            to_server: Pipe::default(),
            to_proxy: Pipe::default(),
            side,
            pushes: VecDeque::new(),
            seen: Frames::new(),
            pace,
            swallow: 0,
        };
        if transparent {
            // The planted no-flush-on-reconnect bug: the driver asks for
            // tracking itself, so that the proxy, told nothing, goes on as
            // on its old connection.
            let mut handshake = BytesMut::new();
            for words in [&["HELLO", "3"][..], &["CLIENT", "TRACKING", "ON"]] {
                Command::build(words)
                    .expect("a valid command")
                    .encode_resp(&mut handshake);
            }
            let lat = self.latency() * pace;
            link.to_server.send(now + lat, handshake.freeze());
            link.swallow = 2;
        }
        self.proxies[pi].upstream = Upstream::Up(Box::new(link));
        self.proxies[pi].reconnect.handle_connected(now);
        self.proxies[pi].connected_at = Some(now);
        if let Some(p) = self.proxies[pi].proxy.as_mut() {
            if !transparent {
                p.handle_upstream_connected(Lane::Main, now);
            }
            p.handle_upstream_connecting(Lane::Bulk, now);
            p.handle_upstream_connected(Lane::Bulk, now);
            let limits = self.server.config().limits;
            self.proxies[pi].bulk = Some(ServerConnection::new(limits));
        }
        self.model.expire_until(now);
        let tick = self.tick();
        for k in 0..self.setup.keys {
            let pos = self.model.keys[k].versions.len() - 1;
            self.proxies[pi].raise_floor(k, tick, pos, FloorWhy::Reconnected);
        }
        trace!(
            self,
            "p{pi}: upstream connected{}",
            if transparent {
                " (BUG: the proxy is not told)"
            } else {
                ""
            }
        );
        self.pump_proxy(pi)
    }

    // ----- checks and the end of the run ------------------------------------

    fn check_step(&self) -> Check {
        for (pi, node) in self.proxies.iter().enumerate() {
            if let Some(p) = &node.proxy {
                if p.client_count() != node.attached.len() {
                    return violation(
                        "driver",
                        format!(
                            "p{pi} has {} clients, the driver {}",
                            p.client_count(),
                            node.attached.len()
                        ),
                    );
                }
                // With tracking, nothing may stay cached while no
                // connection tracks it: from a loss to the next
                // connection the cache is empty.
                if self.setup.tracking
                    && !matches!(node.upstream, Upstream::Up(_))
                    && p.cache_len() > 0
                {
                    return violation(
                        "cache-after-loss",
                        format!(
                            "p{pi} holds {} cache entries while its main lane is not connected",
                            p.cache_len()
                        ),
                    );
                }
            }
        }
        for (ci, c) in self.clients.iter().enumerate() {
            if c.client.in_flight() != c.reqs.len() {
                return violation(
                    "exactly-once",
                    format!(
                        "c{ci}: the client awaits {} outcomes, the model {}",
                        c.client.in_flight(),
                        c.reqs.len()
                    ),
                );
            }
        }
        Ok(())
    }

    fn settled(&self) -> bool {
        self.zombies.is_empty()
            && self
                .proxies
                .iter()
                .all(|p| p.proxy.is_some() && matches!(p.upstream, Upstream::Up(_)))
            && self.clients.iter().all(|c| {
                c.reqs.is_empty()
                    && match &c.conn {
                        Conn::Proxy {
                            up, down, messages, ..
                        } => up.is_empty() && down.is_empty() && messages.is_empty(),
                        Conn::Direct { up, down, .. } => up.is_empty() && down.is_empty(),
                        Conn::Down { .. } => false,
                    }
            })
            && self.proxies.iter().all(|p| match &p.upstream {
                Upstream::Up(link) => link.to_server.is_empty() && link.to_proxy.is_empty(),
                _ => true,
            })
    }

    /// Delivers everything and lets every timer run until the system is
    /// idle, or fails if it never gets there.
    fn settle(&mut self, what: &str) -> Check {
        let deadline = self.now + Duration::from_secs(600);
        while !self.settled() {
            if self.now > deadline {
                return violation(
                    "liveness",
                    format!("the system did not settle ({what}) within 10 simulated minutes"),
                );
            }
            let ready = self.ready_pipes();
            if ready.is_empty() {
                let next = self
                    .next_event()
                    .unwrap_or(self.now + Duration::from_millis(1));
                self.advance_to(next, true)?;
            } else {
                // One at a time: delivering may remove a finished zombie and
                // so shift the others' indices.
                self.deliver(ready[0], true)?;
                self.pump()?;
                self.fire_due()?;
            }
            self.check_step()?;
        }
        Ok(())
    }

    /// The end of a run: faults stop, everything reconnects and drains,
    /// caches expire, and then every client must read exactly the server's
    /// current value of every key and its own fresh write.
    fn quiesce(&mut self) -> Check {
        trace!(self, "quiesce: faults off; draining");
        self.healing = true;
        self.spike_until = self.now;
        for c in &mut self.clients {
            c.reads_paused_until = self.now;
            match &mut c.conn {
                Conn::Proxy {
                    up, down, messages, ..
                } => {
                    up.release();
                    down.release();
                    messages.release();
                }
                Conn::Direct { up, down, .. } => {
                    up.release();
                    down.release();
                }
                Conn::Down { .. } => {}
            }
        }
        for p in &mut self.proxies {
            if let Upstream::Up(link) = &mut p.upstream {
                link.to_server.release();
                link.to_proxy.release();
            }
        }
        self.settle("draining")?;
        self.finish_scripts()?;
        // Without tracking, caches are only as fresh as their TTL: wait it
        // out. With tracking, the system is drained: every invalidation
        // has reached its proxy, so every cache is exact already, which
        // the probes check (as "coherence").
        if !self.setup.tracking {
            let cfg = &self.setup.proxy;
            let expire = cfg.cache.ttl + cfg.request_timeout + Duration::from_millis(1);
            self.advance_to(self.now + expire, true)?;
        }
        trace!(self, "quiesce: probing");
        // Reads first, while nothing writes: every cache is exact (expired,
        // or kept coherent), so each read must return exactly the server's
        // value.
        for ci in 0..self.clients.len() {
            for k in 0..self.setup.keys {
                self.probe(ci, |_| Intent::Get(k), true, "probe read")?;
            }
        }
        // Then each client writes and reads back: a direct writer makes
        // other proxies' caches stale again, so these reads get the usual
        // windows, but read-your-writes still pins them.
        for ci in 0..self.clients.len() {
            let k = ci % self.setup.keys;
            let put = |w: &mut World| {
                w.next_seq += 1;
                Intent::Put(k, w.next_seq)
            };
            self.probe(ci, put, false, "probe write")?;
            let seq = self.next_seq;
            if self.model.current(k) != Some(seq) {
                return violation(
                    "liveness",
                    format!("c{ci}: the probe write of v{seq} to k{k} is not the server's value"),
                );
            }
            self.probe(ci, |_| Intent::Get(k), false, "probe read-back")?;
        }
        Ok(())
    }

    /// Sends the rest of every transaction under way, so that no probe
    /// lands inside one.
    fn finish_scripts(&mut self) -> Check {
        for _ in 0..100 {
            let mut any = false;
            for ci in 0..self.clients.len() {
                while self.clients[ci].reqs.len() < self.setup.max_in_flight
                    && !matches!(self.clients[ci].conn, Conn::Down { .. })
                {
                    let Some(intent) = self.next_scripted(ci) else {
                        break;
                    };
                    any = true;
                    self.issue(ci, intent, false, false)?;
                }
            }
            if !any {
                return Ok(());
            }
            self.settle("finishing transactions")?;
        }
        violation("liveness", "transactions never finished after healing")
    }

    /// Sends one probe from client `ci` and lets the system settle; again
    /// if it failed because a connection policy cut a connection meanwhile
    /// (an idle connection may be cut the moment a probe leaves). Any other
    /// failure after healing is a liveness violation.
    fn probe(
        &mut self,
        ci: usize,
        intent: impl Fn(&mut World) -> Intent,
        exact: bool,
        what: &str,
    ) -> Check {
        for _ in 0..10 {
            self.clients[ci].probe_failed = None;
            self.settle(what)?;
            let cuts = self.policy_cuts;
            let intent = intent(self);
            self.issue(ci, intent, true, exact)?;
            self.settle(what)?;
            let Some(why) = self.clients[ci].probe_failed.take() else {
                return Ok(());
            };
            if self.policy_cuts == cuts {
                return violation(
                    "liveness",
                    format!("c{ci}: the {what} failed after the system healed: {why}"),
                );
            }
            trace!(
                self,
                "c{ci}: the {what} failed ({why}) as a connection policy cut a connection; sending it again"
            );
        }
        violation(
            "liveness",
            format!("c{ci}: the {what} failed ten times, each time as a connection was cut"),
        )
    }
}

impl ServerSide {
    /// The server's end of a new connection, number `id` in the model.
    fn new(server: &Server, policy: ConnConfig, now: Instant, id: u64) -> Self {
        let limits = server.config().limits;
        ServerSide {
            conn: ServerConnection::new(limits),
            mirror: Decoder::new(limits),
            tx: TxState::new(id),
            replies: Frames::new(),
            policy: ConnPolicy::new(policy, now),
            blocked: false,
        }
    }

    /// The connection ends: the server forgets its session (its tracking
    /// included), and so does the model.
    fn end(mut self, server: &mut Server, model: &mut Model) {
        self.conn.end(server);
        model.untrack(self.tx.conn);
    }

    /// `queued` bytes are on their way to the reader.
    fn wrote(&mut self, queued: usize, window: usize, now: Instant) {
        note_writes(&mut self.policy, &mut self.blocked, queued, window, now);
    }

    fn poll_end(&mut self, now: Instant) -> Option<End> {
        let owed = self.conn.owed();
        self.policy.handle_owed(owed > 0, now);
        self.policy.poll_end(Owed {
            replies: owed,
            output: self.blocked,
            finished: self.conn.should_close(),
        })
    }

    /// The server reads `data` at `now` (its clock set from the simulated
    /// one first, as a driver does before each input): the model executes
    /// the same commands in the same order, each reply the server sends
    /// must be the model's, each invalidation one the model owes the
    /// connection, and the store must agree with the model afterwards.
    /// With no data, the connection was woken for its mail. Returns what
    /// the server wrote, a frame at a time.
    fn feed(
        &mut self,
        server: &mut Server,
        model: &mut Model,
        data: &[u8],
        now: Instant,
        mut log: Option<&mut Vec<String>>,
    ) -> Result<Vec<Piece>, Violation> {
        let t = unix_ms(now);
        server.set_time(t);
        model.expire_until(now);
        let limits = *self.mirror.limits();
        self.mirror.feed(data);
        let mut expected = VecDeque::new();
        loop {
            let frame = match self.mirror.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return violation("server", format!("the server was sent garbage: {e}")),
            };
            let cmd = match Command::from_frame(frame, &limits) {
                Ok(cmd) => cmd,
                Err(e) => return violation("server", format!("the server was sent {e}")),
            };
            match model.execute(&mut self.tx, &cmd, now) {
                Ok(reply) => expected.push_back((cmd, reply)),
                Err(m) => return violation("server", m),
            }
        }
        self.conn.handle_input(server, data);
        let mut out = BytesMut::new();
        loop {
            while let Some(b) = self.conn.poll_transmit() {
                out.extend_from_slice(&b);
            }
            if !self.conn.has_backlog() {
                break;
            }
            self.conn.process(server);
        }
        if self.conn.should_close() {
            return violation(
                "server",
                "the server closed a connection: it was sent garbage",
            );
        }
        self.replies.feed(&out);
        let mut pieces = Vec::new();
        loop {
            let (bytes, got) = match self.replies.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return violation("server", format!("the server sent garbage: {e}")),
            };
            if let Reply::Push(_) = got {
                let Some(keys) = invalidated_keys(&got) else {
                    return violation("server", format!("the server pushed {got:?}"));
                };
                let mut invalidated = Vec::with_capacity(keys.len());
                for name in keys {
                    let pos = match model.key(&name) {
                        Some(Key::Val(k)) => model.take_due(self.tx.conn, k).map(|pos| (k, pos)),
                        _ => None,
                    };
                    let Some((k, pos)) = pos else {
                        return violation(
                            "tracking",
                            format!(
                                "the server invalidated {} for a connection it owed no \
                                 invalidation of it",
                                String::from_utf8_lossy(&name)
                            ),
                        );
                    };
                    if let Some(log) = log.as_mut() {
                        let value = model.keys[k].versions[pos].value;
                        log.push(format!(
                            "invalidates k{k} (changed to {} at position {pos})",
                            fmt_value(value)
                        ));
                    }
                    invalidated.push((k, pos));
                }
                pieces.push(Piece {
                    bytes,
                    invalidated: Some(invalidated),
                });
                continue;
            }
            pieces.push(Piece {
                bytes,
                invalidated: None,
            });
            let Some((cmd, want)) = expected.pop_front() else {
                return violation("server", format!("the server sent {} unasked", short(&got)));
            };
            let words = || -> String {
                let words: Vec<String> = cmd
                    .args()
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                words.join(" ")
            };
            if let Some(log) = log.as_mut() {
                log.push(format!("{} = {}", words(), short(&got)));
            }
            // `HELLO`'s facts are the server's own: only their shape is
            // the model's (see `Model::execute`).
            let hello = cmd.name() == "hello" && matches!(got, Reply::Map(_));
            if got != want && !hello {
                let keys: Vec<String> = cmd
                    .keys()
                    .filter_map(|k| match model.key(k) {
                        Some(Key::Val(k)) => {
                            Some(model.describe(k, model.keys[k].versions.len() - 1))
                        }
                        _ => None,
                    })
                    .collect();
                return violation(
                    "server",
                    format!(
                        "at {} (server clock {t}) the server answered {} to {}; the model \
                         expects {}\n    {}",
                        fmt_t(now),
                        short(&got),
                        words(),
                        short(&want),
                        keys.join("\n    ")
                    ),
                );
            }
        }
        if let Some((cmd, _)) = expected.front() {
            return violation(
                "server",
                format!("the server did not answer {:?}", cmd.name()),
            );
        }
        check_store(server, model, t)?;
        Ok(pieces)
    }
}

/// What the server wrote, as one chunk.
fn joined(pieces: Vec<Piece>) -> Bytes {
    match &pieces[..] {
        [] => Bytes::new(),
        [one] => one.bytes.clone(),
        _ => {
            let mut out = BytesMut::new();
            for p in pieces {
                out.extend_from_slice(&p.bytes);
            }
            out.freeze()
        }
    }
}

/// The store, as the server's clock `t` sees it, must equal the model:
/// every value with its deadline, every counter.
fn check_store(server: &Server, model: &Model, t: u64) -> Check {
    let live = |name: &Bytes| {
        server
            .store()
            .slot(name)
            .filter(|s| !s.expired(t))
            .map(|s| (Bytes::copy_from_slice(s.entry.value()), s.deadline))
    };
    for k in 0..model.keys.len() {
        let held = live(&key_name(k));
        let expected = model
            .current(k)
            .map(|seq| (value_bytes(k, seq), model.deadline(k)));
        if held != expected {
            return violation(
                "server",
                format!("k{k}: the store holds {held:?}, the model {expected:?}"),
            );
        }
    }
    for (n, c) in model.counters.iter().enumerate() {
        let held = live(&counter_name(n));
        let expected = c.value.map(|v| (Bytes::from(v.to_string()), None));
        if held != expected {
            return violation(
                "server",
                format!("n{n}: the store holds {held:?}, the model {expected:?}"),
            );
        }
    }
    Ok(())
}

/// A reply in a few words, for traces and messages.
fn short(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(b) => format!("{:?}", String::from_utf8_lossy(b)),
        Reply::Status(s) => String::from_utf8_lossy(s).into_owned(),
        Reply::Error(e) => format!("error {:?}", String::from_utf8_lossy(e)),
        Reply::Integer(n) => format!("(integer) {n}"),
        Reply::Nil => "(nil)".into(),
        Reply::NilArray => "(nil array)".into(),
        Reply::Array(items) => {
            let items: Vec<String> = items.iter().map(short).collect();
            format!("[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}
