//! A Redis Cluster seen as one ordered pipe: the machine that sits where
//! the proxy's upstream connection would be, and routes what comes down
//! it to the cluster's masters.
//!
//! The proxy (or any client machine) writes requests to it as it would to
//! one server ([`Cluster::handle_proxy_input`]) and reads the replies back
//! in the same order ([`Cluster::poll_proxy_transmit`]). In between, each
//! request goes to the master serving its keys' hash slot, on one
//! connection per master, which the driver opens, feeds and closes as
//! [`Cluster::poll_event`] and the `*_node_*` verbs say.
//!
//! # Routing
//! - A command whose keys share one slot goes to that slot's master. One
//!   whose keys do not gets Redis's `CROSSSLOT` error, except the
//!   commands that mean the same split by slot: `MGET` (the values are put
//!   back in the order asked), `MSET` (`OK` once every part is), and
//!   `DEL`, `UNLINK`, `EXISTS`, `TOUCH` (the counts are added up).
//! - A transaction (`MULTI` … `EXEC`) is held until its `EXEC` and sent
//!   whole to the master of its keys' one slot; keys in several slots make
//!   each queued command a `CROSSSLOT` error and the `EXEC` an `EXECABORT`.
//! - The connection's own state (`AUTH`, `HELLO`, `CLIENT TRACKING`,
//!   `CLIENT SETNAME`, `SELECT`) is sent to every master, and to each one
//!   the pipe connects to later, before anything else: the answer is the
//!   first master's.
//! - Commands of the whole keyspace go to every master and their replies
//!   are merged: `DBSIZE` adds up, `KEYS` concatenates, `FLUSHALL` and
//!   `FLUSHDB` are `OK` once all are, and `SCAN` walks the masters one
//!   after the other, the master's place in the high 16 bits of the
//!   cursor. kv's `DUMP` of every pair is refused: a Redis Cluster has
//!   none. Other keyless commands (`PING`, `INFO`, `PUBLISH` …) go to one
//!   master.
//!
//! # A cluster that changes
//! - `MOVED` records the slot's new master, sends the request there and
//!   asks for the slot map again; `ASK` sends that one request to the
//!   node named, after `ASKING`. At most [`ClusterConfig::max_redirects`]
//!   redirects per request.
//! - `TRYAGAIN` and `CLUSTERDOWN`, a request for a slot no master serves,
//!   and one for a master whose connection is down wait and are tried
//!   again every [`ClusterConfig::retry_every`], the map being read again
//!   meanwhile, until [`ClusterConfig::request_timeout`]: a failover or a
//!   resharding under way costs latency, not errors, if it ends in time.
//! - A lost connection fails the writes that were in flight on it (they
//!   may or may not have run), and sends its reads again.
//! - The map is read again every [`ClusterConfig::refresh_every`].
//!
//! # Order, and invalidations
//! Each master's connection is ordered, and a key's requests all go to
//! its slot's master, so what was written before a read of the same key
//! is seen by it, as on one server. Replies go back in request order.
//!
//! An invalidation push from a master (client tracking, which the
//! connection state above turns on at every master) is passed on behind
//! every reply that master sent before it, so that a value read before a
//! change reaches the proxy before the change's invalidation, as on one
//! connection. When a tracking master's connection is lost, its
//! invalidations are lost with it, so the pipe passes on an invalidation
//! of every key read through that connection (it keeps them, dropping
//! those the master invalidates), behind that master's replies: what was
//! cached through other masters stays.

mod map;
mod slot;

pub use map::{MapError, Redirect, SlotMap};
pub use slot::{hash_tag, key_slot, SLOTS};

use crate::codec::{Decoder, Limits};
use crate::command::{encode_resp_args, table::Flags, Command};
use crate::db::Hasher;
use crate::reply::{Proto, Reply, ReplyDecoder, ReplyLimits};
use crate::time::Instant;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

/// Settings of the cluster pipe.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How long a request may wait for its master, redirects and retries
    /// included, before it is answered with the last error it got. Make
    /// it shorter than whatever times out the pipe's own user.
    pub request_timeout: Duration,
    /// How often the slot map is read again when nothing asks for it.
    pub refresh_every: Duration,
    /// How long a request waits before it is tried again after
    /// `TRYAGAIN`, `CLUSTERDOWN` or a master that cannot be reached, and
    /// how soon a lost master is reconnected.
    pub retry_every: Duration,
    /// Most redirects (`MOVED`, `ASK`) one request follows.
    pub max_redirects: u8,
    /// Limits on the requests the pipe reads.
    pub limits: Limits,
    /// Limits on the replies the masters send.
    pub reply_limits: ReplyLimits,
    /// Seed for hash functions; the driver passes a random one.
    pub hash_seed: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            request_timeout: Duration::from_secs(4),
            refresh_every: Duration::from_secs(10),
            retry_every: Duration::from_millis(100),
            max_redirects: 5,
            limits: Limits::default(),
            reply_limits: ReplyLimits::default(),
            hash_seed: 0,
        }
    }
}

/// One connection of the pipe's, to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Open a connection to the node at this address (`host:port`), then
    /// call [`Cluster::handle_node_connected`] or, if it fails,
    /// [`Cluster::handle_node_lost`].
    Connect(NodeId, String),
    /// Drop the node's connection: it can no longer be trusted (an
    /// unreadable reply, a refused `AUTH`). It is asked for again later,
    /// with [`ClusterEvent::Connect`], if still needed.
    Close(NodeId),
}

/// Counters for `INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// `MOVED` redirects followed.
    pub moved: u64,
    /// `ASK` redirects followed.
    pub asked: u64,
    /// Requests tried again (`TRYAGAIN`, `CLUSTERDOWN`, a master down).
    pub retries: u64,
    /// Times the slot map was read.
    pub map_reads: u64,
    /// Requests split across slots.
    pub split: u64,
    /// Requests refused with `CROSSSLOT`.
    pub crossslot: u64,
    /// Node connections lost.
    pub nodes_lost: u64,
    /// Keys invalidated because the node they were read through was lost.
    pub keys_invalidated_on_loss: u64,
}

/// What `INFO` shows of a cluster pipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Masters in the slot map.
    pub masters: usize,
    /// Slots with a master.
    pub slots_served: usize,
    /// Node connections up.
    pub nodes_up: usize,
    /// Why the map could not be read last time, if it could not.
    pub map_error: Option<String>,
    /// The counters.
    pub stats: ClusterStats,
}

/// Redis's reply to keys in more than one slot.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// What a node's reply answers.
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// Command `cmd` of part `part` of request `req`.
    Part { req: u64, part: u16, cmd: u32 },
    /// The `ASKING` ahead of a redirected part.
    Asking,
    /// A command of the connection's state, replayed.
    Preamble { auth: bool },
    /// `CLUSTER SHARDS`, or with `slots` `CLUSTER SLOTS`.
    Discover { slots: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    /// Asked for; the driver is connecting.
    Connecting,
    Up,
    /// Lost; to be connected again at the time given, if still needed.
    Down(Instant),
}

#[derive(Debug)]
struct Node {
    addr: String,
    state: NodeState,
    out: BytesMut,
    decoder: ReplyDecoder,
    /// What each reply to come answers, in order.
    sent: VecDeque<Sent>,
    /// Parts for the node while it is not up, sent once it is.
    waiting: VecDeque<(u64, u16)>,
    /// The request the node's last reply answered, for where its pushes go.
    last_answered: Option<u64>,
    /// With tracking, the keys read on this connection and not
    /// invalidated since: what the node would invalidate, and so what to
    /// invalidate if the connection is lost.
    read: HashSet<Bytes, Hasher>,
}

/// Where a part goes.
#[derive(Debug, Clone)]
enum Target {
    /// The master of this slot.
    Slot(u16),
    /// The master with this place among the sorted masters.
    Master(usize),
    /// Any master (or a seed, before the map is known).
    Any,
    /// This node, after `ASKING`.
    Ask(String),
}

#[derive(Debug)]
struct Part {
    cmds: Vec<Vec<Bytes>>,
    /// The keys its read-only commands read (the node tracks them).
    reads: Vec<Bytes>,
    target: Target,
    replies: Vec<Reply>,
    done: bool,
    /// Every command only reads: safe to send again.
    readonly: bool,
    redirects: u8,
    /// Waiting to be tried again, from then.
    retry_at: Option<Instant>,
    /// The last retryable error, answered if time runs out.
    last_error: Option<Reply>,
}

#[derive(Debug)]
enum Merge {
    /// One part of one command: its reply.
    One,
    /// One part of several commands (a transaction): each reply.
    Each,
    /// `MGET` split: per original key, its part and place there.
    Values(Vec<(u16, u32)>),
    /// Integer replies added up.
    Sum,
    /// `OK` once every part is.
    AllOk,
    /// Arrays concatenated.
    Concat,
    /// `SCAN` on the master with this place among `masters` masters.
    Scan { master: usize, masters: usize },
    /// Answered by the pipe itself, one reply per command.
    Local(Vec<Reply>),
}

#[derive(Debug)]
struct Request {
    parts: Vec<Part>,
    merge: Merge,
    deadline: Instant,
    /// Pushes to pass on right after this request's replies.
    pushes: Vec<Reply>,
    /// A `HELLO` switching the pipe's protocol once answered.
    hello: Option<Proto>,
}

impl Request {
    fn complete(&self) -> bool {
        self.parts.iter().all(|p| p.done)
    }
}

/// The cluster pipe. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    seeds: Vec<String>,
    next_seed: usize,
    nodes: Vec<Node>,
    by_addr: BTreeMap<String, NodeId>,
    map: Option<SlotMap>,
    /// Requests in the order they came, from `head` on.
    requests: VecDeque<Request>,
    head: u64,
    /// Parts waiting for the map, or to be tried again.
    parked: Vec<(u64, u16)>,
    decoder: Decoder,
    /// A transaction being read: its commands so far.
    tx: Option<Vec<Command>>,
    out: BytesMut,
    proto: Proto,
    /// The connection's state, replayed first on every node.
    preamble: Vec<Vec<Bytes>>,
    tracking: bool,
    events: VecDeque<ClusterEvent>,
    /// A map read is in flight, on this node.
    discovering: Option<NodeId>,
    refresh_at: Instant,
    /// Why the map could not be read last time, or a node refused the
    /// pipe's `AUTH`; cleared when a map is read.
    map_error: Option<String>,
    /// The cluster answered `CLUSTER SHARDS` as unknown (Redis 6): the
    /// map is read with `CLUSTER SLOTS`.
    no_shards: bool,
    stats: ClusterStats,
}

fn args_of(cmd: &Command) -> Vec<Bytes> {
    cmd.args().to_vec()
}

fn error(text: impl Into<String>) -> Reply {
    Reply::Error(Bytes::from(text.into()))
}

/// Whether an error means "try again soon": a resharding or a failover
/// is under way.
fn retryable(e: &[u8]) -> bool {
    e.starts_with(b"TRYAGAIN") || e.starts_with(b"CLUSTERDOWN") || e.starts_with(b"LOADING")
}

impl Cluster {
    /// A pipe to the cluster that `seeds` (`host:port` each) belong to; it
    /// asks at once to connect to the first seed, to read the slot map.
    pub fn new(seeds: Vec<String>, config: ClusterConfig, now: Instant) -> Self {
        let mut cluster = Cluster {
            decoder: Decoder::new(config.limits),
            config,
            seeds,
            next_seed: 0,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            map: None,
            requests: VecDeque::new(),
            head: 0,
            parked: Vec::new(),
            tx: None,
            out: BytesMut::new(),
            proto: Proto::Resp2,
            preamble: Vec::new(),
            tracking: false,
            events: VecDeque::new(),
            discovering: None,
            refresh_at: now,
            map_error: None,
            no_shards: false,
            stats: ClusterStats::default(),
        };
        cluster.refresh(now);
        cluster
    }

    /// The slot map, once read.
    pub fn slot_map(&self) -> Option<&SlotMap> {
        self.map.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// What `INFO` shows.
    pub fn facts(&self) -> ClusterFacts {
        ClusterFacts {
            masters: self.map.as_ref().map_or(0, |m| m.masters().len()),
            slots_served: self.map.as_ref().map_or(0, SlotMap::served),
            nodes_up: self.nodes_up(),
            map_error: self.map_error.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Node connections up now.
    pub fn nodes_up(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .count()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<ClusterEvent> {
        self.events.pop_front()
    }

    fn node(&mut self, addr: &str) -> NodeId {
        if let Some(id) = self.by_addr.get(addr) {
            return *id;
        }
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            addr: addr.to_owned(),
            state: NodeState::Connecting,
            out: BytesMut::new(),
            decoder: ReplyDecoder::new(self.config.reply_limits),
            sent: VecDeque::new(),
            waiting: VecDeque::new(),
            last_answered: None,
            read: HashSet::with_hasher(Hasher::with_seed(self.config.hash_seed)),
        });
        self.by_addr.insert(addr.to_owned(), id);
        self.events
            .push_back(ClusterEvent::Connect(id, addr.to_owned()));
        id
    }

    /// Makes sure the node is up or being connected, if it is down and its
    /// time to retry has come.
    fn wake_node(&mut self, id: NodeId, now: Instant) {
        let node = &mut self.nodes[id.0 as usize];
        if let NodeState::Down(at) = node.state {
            if at <= now {
                node.state = NodeState::Connecting;
                let addr = node.addr.clone();
                self.events.push_back(ClusterEvent::Connect(id, addr));
            }
        }
    }

    // ---- the proxy's side ----

    /// Requests written to the pipe, as to a server.
    pub fn handle_proxy_input(&mut self, data: &[u8], now: Instant) {
        self.decoder.feed(data);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    // Only a well-formed request stream comes down the
                    // pipe; one that is not cannot be paired any further.
                    self.local(vec![Reply::from(e)], now);
                    if self.decoder.has_failed() {
                        self.decoder = Decoder::new(self.config.limits);
                    }
                    continue;
                }
            };
            let limits = *self.decoder.limits();
            match Command::from_frame(frame, &limits) {
                Ok(cmd) => self.request(cmd, now),
                Err(e) => self.local(vec![Reply::from(e)], now),
            }
        }
        self.emit();
    }

    /// Replies (and pushes) to hand back, in order.
    pub fn poll_proxy_transmit(&mut self) -> Option<BytesMut> {
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split())
    }

    /// The pipe's user dropped its side (a reset): what it asked is
    /// forgotten (the replies still to come are dropped), and so is the
    /// connection state it set, which it sets again. Node connections stay.
    pub fn reset_proxy(&mut self) {
        self.head += self.requests.len() as u64;
        self.requests.clear();
        self.parked.clear();
        for node in &mut self.nodes {
            node.waiting.clear();
            // The pipe's user empties its cache on a new start.
            node.read.clear();
        }
        self.decoder = Decoder::new(self.config.limits);
        self.tx = None;
        self.out.clear();
        self.proto = Proto::Resp2;
        self.preamble.clear();
        self.tracking = false;
    }

    fn push_request(&mut self, request: Request, now: Instant) -> u64 {
        let seq = self.head + self.requests.len() as u64;
        let parts = request.parts.len() as u16;
        self.requests.push_back(request);
        for part in 0..parts {
            self.dispatch(seq, part, now);
        }
        seq
    }

    fn local(&mut self, replies: Vec<Reply>, now: Instant) {
        let request = Request {
            parts: Vec::new(),
            merge: Merge::Local(replies),
            deadline: now,
            pushes: Vec::new(),
            hello: None,
        };
        self.push_request(request, now);
    }

    fn part(cmds: Vec<Vec<Bytes>>, target: Target, readonly: bool) -> Part {
        Part {
            cmds,
            reads: Vec::new(),
            target,
            replies: Vec::new(),
            done: false,
            readonly,
            redirects: 0,
            retry_at: None,
            last_error: None,
        }
    }

    fn single(&mut self, parts: Vec<Part>, merge: Merge, now: Instant) {
        let request = Request {
            parts,
            merge,
            deadline: now + self.config.request_timeout,
            pushes: Vec::new(),
            hello: None,
        };
        self.push_request(request, now);
    }

    fn request(&mut self, cmd: Command, now: Instant) {
        let name = cmd.spec().name;
        if let Some(tx) = &mut self.tx {
            let end = matches!(name, "exec" | "discard");
            tx.push(cmd);
            if end {
                let tx = self.tx.take().unwrap_or_default();
                self.transaction(tx, now);
            }
            return;
        }
        if name == "multi" {
            self.tx = Some(vec![cmd]);
            return;
        }
        let readonly = cmd.spec().flags.contains(Flags::READONLY);
        if cmd.keys().next().is_none() {
            return self.keyless(cmd, readonly, now);
        }
        let slots: Vec<u16> = cmd.keys().map(|k| key_slot(k)).collect();
        let first = slots[0];
        if slots.iter().all(|s| *s == first) {
            let mut part = Self::part(vec![args_of(&cmd)], Target::Slot(first), readonly);
            if readonly && self.tracking {
                part.reads = cmd.keys().cloned().collect();
            }
            return self.single(vec![part], Merge::One, now);
        }
        let step = cmd.spec().keys.step.max(1);
        let merge = match name {
            "mget" => Merge::Values(Vec::new()),
            "mset" => Merge::AllOk,
            "del" | "unlink" | "exists" | "touch" => Merge::Sum,
            _ => {
                self.stats.crossslot += 1;
                return self.local(vec![error(CROSSSLOT)], now);
            }
        };
        self.stats.split += 1;
        // One part per slot, its keys (with their values, for MSET) in the
        // order asked.
        let first_key = cmd.spec().keys.first;
        let mut parts: Vec<(u16, Vec<Bytes>)> = Vec::new();
        let mut places = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            let at = first_key + i * step;
            let index = match parts.iter().position(|(s, _)| s == slot) {
                Some(p) => p,
                None => {
                    parts.push((*slot, vec![cmd.arg(0).clone()]));
                    parts.len() - 1
                }
            };
            let Some(group) = cmd.args().get(at..at + step) else {
                // `MSET k v k`: a key without its value.
                let name = cmd.spec().name;
                let e = format!("ERR wrong number of arguments for '{name}' command");
                return self.local(vec![error(e)], now);
            };
            let args = &mut parts[index].1;
            places.push((index as u16, ((args.len() - 1) / step) as u32));
            args.extend(group.iter().cloned());
        }
        let merge = match merge {
            Merge::Values(_) => Merge::Values(places),
            other => other,
        };
        let tracked = readonly && self.tracking;
        let parts = parts
            .into_iter()
            .map(|(slot, args)| {
                let reads = if tracked {
                    args.iter().skip(1).step_by(step).cloned().collect()
                } else {
                    Vec::new()
                };
                Part {
                    reads,
                    ..Self::part(vec![args], Target::Slot(slot), readonly)
                }
            })
            .collect();
        self.single(parts, merge, now)
    }

    fn keyless(&mut self, cmd: Command, readonly: bool, now: Instant) {
        let name = cmd.spec().name;
        let masters = self.map.as_ref().map_or(0, |m| m.masters().len());
        let args = args_of(&cmd);
        match name {
            "auth" | "hello" | "client|tracking" | "client|setname" | "select" => {
                self.preamble_command(cmd, now)
            }
            "dump" => self.local(
                vec![error(
                    "ERR kv's DUMP of every pair is not available through a Redis Cluster: use SCAN, or KEYS, which the proxy runs on every master",
                )],
                now,
            ),
            "dbsize" | "keys" | "flushall" | "flushdb" if masters > 0 => {
                let merge = match name {
                    "dbsize" => Merge::Sum,
                    "keys" => Merge::Concat,
                    _ => Merge::AllOk,
                };
                let parts = (0..masters)
                    .map(|m| Self::part(vec![args.clone()], Target::Master(m), readonly))
                    .collect();
                self.single(parts, merge, now)
            }
            "scan" if masters > 0 => self.scan(args, masters, now),
            _ => {
                let part = Self::part(vec![args], Target::Any, readonly);
                self.single(vec![part], Merge::One, now)
            }
        }
    }

    fn scan(&mut self, mut args: Vec<Bytes>, masters: usize, now: Instant) {
        let cursor: Option<u64> = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|c| c.parse().ok());
        let Some(cursor) = cursor else {
            return self.local(vec![error("ERR invalid cursor")], now);
        };
        let master = (cursor >> 48) as usize;
        if master >= masters {
            return self.local(vec![error("ERR invalid cursor")], now);
        }
        args[1] = Bytes::from((cursor & ((1 << 48) - 1)).to_string());
        let part = Self::part(vec![args], Target::Master(master), true);
        self.single(vec![part], Merge::Scan { master, masters }, now)
    }

    fn preamble_command(&mut self, cmd: Command, now: Instant) {
        let args = args_of(&cmd);
        let hello = crate::families::connection::hello_switches_to(&cmd);
        if cmd.spec().name == "client|tracking" {
            self.tracking = args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
        }
        // The newest of each kind is what a new connection needs.
        let name = cmd.spec().name;
        self.preamble
            .retain(|old| Command::build(old).map_or(true, |old| old.spec().name != name));
        self.preamble.push(args.clone());
        // Every other node known now gets it too; the one that answers
        // gets it as the request.
        let answering = self.any_node(now);
        let auth = name == "auth";
        for i in 0..self.nodes.len() {
            let id = NodeId(i as u32);
            if Some(id) != answering && self.nodes[i].state == NodeState::Up {
                encode_resp_args(&args, &mut self.nodes[i].out);
                self.nodes[i].sent.push_back(Sent::Preamble { auth });
            }
        }
        let part = Self::part(vec![args], Target::Any, true);
        let request = Request {
            parts: vec![part],
            merge: Merge::One,
            deadline: now + self.config.request_timeout,
            pushes: Vec::new(),
            hello,
        };
        self.push_request(request, now);
    }

    fn transaction(&mut self, tx: Vec<Command>, now: Instant) {
        let slots: Vec<u16> = tx
            .iter()
            .flat_map(|c| c.keys().map(|k| key_slot(k)))
            .collect();
        let one_slot = slots.first().map(|s| slots.iter().all(|o| o == s));
        if one_slot == Some(false) {
            self.stats.crossslot += 1;
            let n = tx.len();
            let replies = (0..n)
                .map(|i| match i {
                    0 => Reply::ok(),
                    _ if i + 1 == n => {
                        if tx[i].spec().name == "discard" {
                            Reply::ok()
                        } else {
                            error("EXECABORT Transaction discarded because of previous errors.")
                        }
                    }
                    _ => error(CROSSSLOT),
                })
                .collect();
            return self.local(replies, now);
        }
        let readonly = tx.iter().all(|c| {
            c.spec().flags.contains(Flags::READONLY)
                || matches!(c.spec().name, "multi" | "exec" | "discard")
        });
        let target = slots.first().map_or(Target::Any, |s| Target::Slot(*s));
        let cmds = tx.iter().map(args_of).collect();
        let mut part = Self::part(cmds, target, readonly);
        if self.tracking {
            part.reads = tx
                .iter()
                .filter(|c| c.spec().flags.contains(Flags::READONLY))
                .flat_map(|c| c.keys().cloned())
                .collect();
        }
        self.single(vec![part], Merge::Each, now)
    }

    // ---- routing ----

    /// A node to send a keyless request to: the first master, or before
    /// the map is known, the seed being asked.
    fn any_node(&mut self, now: Instant) -> Option<NodeId> {
        if let Some(addr) = self.map.as_ref().and_then(|m| m.masters().first().cloned()) {
            return Some(self.node(&addr));
        }
        let id = self.discovering.or_else(|| {
            let seed = self
                .seeds
                .get(self.next_seed % self.seeds.len().max(1))?
                .clone();
            Some(self.node(&seed))
        })?;
        self.wake_node(id, now);
        Some(id)
    }

    fn target_node(&mut self, target: &Target, now: Instant) -> Option<NodeId> {
        let addr = match target {
            Target::Slot(slot) => self.map.as_ref()?.owner(*slot)?.to_owned(),
            Target::Master(i) => self.map.as_ref()?.masters().get(*i)?.clone(),
            Target::Ask(addr) => addr.clone(),
            Target::Any => return self.any_node(now),
        };
        let id = self.node(&addr);
        self.wake_node(id, now);
        Some(id)
    }

    /// Sends a part to its node, or parks it until it can be.
    fn dispatch(&mut self, seq: u64, part: u16, now: Instant) {
        let Some(request) = self.request_mut(seq) else {
            return;
        };
        let p = &mut request.parts[usize::from(part)];
        p.retry_at = None;
        p.replies.clear();
        let target = p.target.clone();
        let Some(id) = self.target_node(&target, now) else {
            self.park(seq, part, now);
            return;
        };
        let node = &mut self.nodes[id.0 as usize];
        if node.state != NodeState::Up {
            node.waiting.push_back((seq, part));
            return;
        }
        self.send_part(id, seq, part);
    }

    fn send_part(&mut self, id: NodeId, seq: u64, part: u16) {
        let index = (seq - self.head) as usize;
        let Some(request) = self.requests.get(index) else {
            return;
        };
        let p = &request.parts[usize::from(part)];
        let node = &mut self.nodes[id.0 as usize];
        if matches!(p.target, Target::Ask(_)) {
            encode_resp_args(&[Bytes::from_static(b"ASKING")], &mut node.out);
            node.sent.push_back(Sent::Asking);
        }
        for (cmd, args) in p.cmds.iter().enumerate() {
            encode_resp_args(args, &mut node.out);
            node.sent.push_back(Sent::Part {
                req: seq,
                part,
                cmd: cmd as u32,
            });
        }
    }

    /// Parks a part, to be tried again shortly (the map is read again
    /// meanwhile).
    fn park(&mut self, seq: u64, part: u16, now: Instant) {
        let retry = self.config.retry_every;
        if let Some(request) = self.request_mut(seq) {
            request.parts[usize::from(part)].retry_at = Some(now + retry);
            self.parked.push((seq, part));
            self.stats.retries += 1;
        }
        self.want_refresh(now);
    }

    fn request_mut(&mut self, seq: u64) -> Option<&mut Request> {
        let index = seq.checked_sub(self.head)? as usize;
        self.requests.get_mut(index)
    }

    // ---- the slot map ----

    fn want_refresh(&mut self, now: Instant) {
        if self.discovering.is_none() {
            self.refresh_at = self.refresh_at.min(now);
        }
    }

    /// Reads the map from a node that is up (a master, else a seed).
    fn refresh(&mut self, now: Instant) {
        if self.discovering.is_some() {
            return;
        }
        self.refresh_at = now + self.config.refresh_every;
        let up = self
            .nodes
            .iter()
            .position(|n| n.state == NodeState::Up)
            .map(|i| NodeId(i as u32));
        let id = match up {
            Some(id) => id,
            None => {
                let Some(seed) = self
                    .seeds
                    .get(self.next_seed % self.seeds.len().max(1))
                    .cloned()
                else {
                    return;
                };
                self.next_seed += 1;
                let id = self.node(&seed);
                self.wake_node(id, now);
                id
            }
        };
        self.discovering = Some(id);
        self.stats.map_reads += 1;
        if self.nodes[id.0 as usize].state == NodeState::Up {
            self.send_discover(id, self.no_shards);
        }
    }

    fn send_discover(&mut self, id: NodeId, slots: bool) {
        let node = &mut self.nodes[id.0 as usize];
        let args: &[&'static [u8]] = if slots {
            &[b"CLUSTER", b"SLOTS"]
        } else {
            &[b"CLUSTER", b"SHARDS"]
        };
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::from_static(a)).collect();
        encode_resp_args(&args, &mut node.out);
        node.sent.push_back(Sent::Discover { slots });
    }

    fn discovered(&mut self, id: NodeId, slots: bool, reply: Reply, now: Instant) {
        let addr = self.nodes[id.0 as usize].addr.clone();
        let read = if slots {
            SlotMap::from_slots(&reply, &addr)
        } else {
            SlotMap::from_shards(&reply, &addr)
        };
        match read {
            Err(MapError::Refused(e)) if !slots && e.to_ascii_lowercase().contains("unknown") => {
                // Older than Redis 7: no SHARDS.
                self.no_shards = true;
                self.send_discover(id, true);
            }
            Err(e) => {
                self.map_error = Some(e.to_string());
                self.discovering = None;
                // Try elsewhere, soon.
                self.next_seed += 1;
                self.refresh_at = now + self.config.retry_every;
            }
            Ok(map) => {
                self.discovering = None;
                self.map_error = None;
                self.map = Some(map);
                // Parts waiting for an owner go now.
                let parked = std::mem::take(&mut self.parked);
                for (seq, part) in parked {
                    self.dispatch(seq, part, now);
                }
                self.reroute_waiting(now);
            }
        }
    }

    /// Parts waiting for a node that is not up whose slot has another
    /// master now go to it.
    fn reroute_waiting(&mut self, now: Instant) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].state == NodeState::Up || self.nodes[i].waiting.is_empty() {
                continue;
            }
            let waiting = std::mem::take(&mut self.nodes[i].waiting);
            for (seq, part) in waiting {
                self.dispatch(seq, part, now);
            }
        }
    }

    // ---- the nodes' side ----

    /// The driver connected the node: its connection state goes first,
    /// then what waited for it.
    pub fn handle_node_connected(&mut self, id: NodeId, now: Instant) {
        let Some(node) = self.nodes.get_mut(id.0 as usize) else {
            return;
        };
        node.state = NodeState::Up;
        node.out.clear();
        node.sent.clear();
        node.decoder.reset();
        node.last_answered = None;
        // A command of the connection's state that waits here as a request
        // is sent as that, once.
        let requests = &self.requests;
        let head = self.head;
        let waiting_as_request = |args: &Vec<Bytes>| {
            node.waiting.iter().any(|(seq, part)| {
                seq.checked_sub(head)
                    .and_then(|i| requests.get(i as usize))
                    .is_some_and(|r| r.parts[usize::from(*part)].cmds.first() == Some(args))
            })
        };
        let mut preamble = BytesMut::new();
        let mut preamble_sent = Vec::new();
        for args in &self.preamble {
            if waiting_as_request(args) {
                continue;
            }
            encode_resp_args(args, &mut preamble);
            let auth = args[0].eq_ignore_ascii_case(b"auth");
            preamble_sent.push(Sent::Preamble { auth });
        }
        node.out = preamble;
        node.sent.extend(preamble_sent);
        // What waited goes first: the connection's state may be among it
        // (`AUTH` before the map is read).
        let waiting = std::mem::take(&mut self.nodes[id.0 as usize].waiting);
        for (seq, part) in waiting {
            self.dispatch(seq, part, now);
        }
        if self.discovering == Some(id) {
            self.send_discover(id, self.no_shards);
        }
    }

    /// Whether [`Cluster::poll_node_transmit`] has bytes for the node.
    pub fn node_has_output(&self, id: NodeId) -> bool {
        self.nodes
            .get(id.0 as usize)
            .is_some_and(|n| n.state == NodeState::Up && !n.out.is_empty())
    }

    /// Bytes for the node's connection.
    pub fn poll_node_transmit(&mut self, id: NodeId) -> Option<BytesMut> {
        let node = self.nodes.get_mut(id.0 as usize)?;
        if node.out.is_empty() || node.state != NodeState::Up {
            return None;
        }
        Some(node.out.split())
    }

    /// The node's connection failed or could not be made: what was in
    /// flight on it is sent again (reads) or failed (writes), and it is
    /// connected again after [`ClusterConfig::retry_every`] if still needed.
    pub fn handle_node_lost(&mut self, id: NodeId, reason: &str, now: Instant) {
        let Some(node) = self.nodes.get_mut(id.0 as usize) else {
            return;
        };
        let was_up = node.state == NodeState::Up;
        node.state = NodeState::Down(now + self.config.retry_every);
        node.out.clear();
        node.decoder.reset();
        let sent = std::mem::take(&mut node.sent);
        let waiting = std::mem::take(&mut node.waiting);
        let addr = node.addr.clone();
        let last = node.last_answered.take();
        let read: Vec<Bytes> = node.read.drain().collect();
        if was_up {
            self.stats.nodes_lost += 1;
        }
        if self.tracking && !read.is_empty() {
            // Its invalidations are lost with it: what was read through it
            // may change unseen, and only that.
            self.stats.keys_invalidated_on_loss += read.len() as u64;
            for keys in read.chunks(1024) {
                let keys = keys.iter().cloned().map(Reply::Bulk).collect();
                let push = Reply::Push(vec![
                    Reply::Bulk(Bytes::from_static(b"invalidate")),
                    Reply::Array(keys),
                ]);
                self.place_push(last, push);
            }
        }
        if self.discovering == Some(id) {
            self.discovering = None;
            self.next_seed += 1;
            self.refresh_at = now;
        }
        let mut seen = Vec::new();
        for s in sent {
            if let Sent::Part { req, part, .. } = s {
                if !seen.contains(&(req, part)) {
                    seen.push((req, part));
                }
            }
        }
        for (req, part) in seen {
            let Some(request) = self.request_mut(req) else {
                continue;
            };
            let p = &mut request.parts[usize::from(part)];
            if p.done {
                continue;
            }
            if p.readonly {
                p.last_error = Some(error(format!("ERR upstream node {addr} lost: {reason}")));
                self.park(req, part, now);
            } else {
                let n = p.cmds.len();
                p.replies = (0..n)
                    .map(|_| {
                        error(format!(
                            "ERR upstream node {addr} lost ({reason}): the write may or may not have been applied"
                        ))
                    })
                    .collect();
                p.done = true;
            }
        }
        for (seq, part) in waiting {
            self.park(seq, part, now);
        }
        self.want_refresh(now);
        self.emit();
    }

    /// Bytes the node sent.
    pub fn handle_node_input(&mut self, id: NodeId, data: &[u8], now: Instant) {
        let Some(node) = self.nodes.get_mut(id.0 as usize) else {
            return;
        };
        node.decoder.feed(data);
        loop {
            let node = &mut self.nodes[id.0 as usize];
            let reply = match node.decoder.next_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(_) => {
                    self.handle_node_lost(id, "unreadable reply", now);
                    self.events.push_back(ClusterEvent::Close(id));
                    return;
                }
            };
            if let Reply::Push(items) = &reply {
                match crate::proxy::parse_invalidation(items) {
                    Some(Some(keys)) => {
                        for key in keys {
                            node.read.remove(&key);
                        }
                    }
                    Some(None) => node.read.clear(),
                    None => {}
                }
                let last = node.last_answered;
                self.place_push(last, reply);
                continue;
            }
            let Some(sent) = node.sent.pop_front() else {
                continue;
            };
            match sent {
                Sent::Asking | Sent::Preamble { auth: false } => {}
                Sent::Preamble { auth: true } => {
                    if let Reply::Error(e) = &reply {
                        let why = String::from_utf8_lossy(e).into_owned();
                        self.map_error = Some(why.clone());
                        self.handle_node_lost(id, &why, now);
                        self.events.push_back(ClusterEvent::Close(id));
                        return;
                    }
                }
                Sent::Discover { slots } => self.discovered(id, slots, reply, now),
                Sent::Part { req, part, cmd } => {
                    self.nodes[id.0 as usize].last_answered = Some(req);
                    self.answered(id, req, part, cmd, reply, now);
                }
            }
        }
        self.emit();
    }

    /// Where a push goes: right behind the replies of the request the node
    /// last answered, or at once if those are passed on already.
    fn place_push(&mut self, last: Option<u64>, push: Reply) {
        if let Some(request) = last.and_then(|seq| self.request_mut(seq)) {
            request.pushes.push(push);
            return;
        }
        push.encode_proto(Proto::Resp3, &mut self.out);
    }

    fn answered(&mut self, id: NodeId, seq: u64, part: u16, cmd: u32, reply: Reply, now: Instant) {
        let max_redirects = self.config.max_redirects;
        let Some(request) = self.request_mut(seq) else {
            return;
        };
        let p = &mut request.parts[usize::from(part)];
        if p.done {
            return;
        }
        p.replies.push(reply);
        if (cmd as usize) + 1 < p.cmds.len() {
            return;
        }
        // The part is answered whole: a redirect or a retryable error in
        // any of its replies (a transaction's queued command included)
        // sends it again.
        let mut redirect = None;
        let mut retry = None;
        for r in &p.replies {
            if let Reply::Error(e) = r {
                if let Some(found) = Redirect::parse(e) {
                    redirect = Some(found);
                    break;
                }
                if retryable(e) {
                    retry = Some(r.clone());
                }
            }
        }
        match (redirect, retry) {
            (Some(redirect), _) if p.redirects < max_redirects => {
                p.redirects += 1;
                match redirect {
                    Redirect::Moved(slot, addr) => {
                        p.target = Target::Slot(slot);
                        self.stats.moved += 1;
                        if let Some(map) = &mut self.map {
                            map.set_owner(slot, &addr);
                        }
                        self.want_refresh(now);
                    }
                    Redirect::Ask(_, addr) => {
                        p.target = Target::Ask(addr);
                        self.stats.asked += 1;
                    }
                }
                self.dispatch(seq, part, now);
            }
            (None, Some(last)) => {
                p.last_error = Some(last);
                self.park(seq, part, now);
            }
            _ => {
                p.done = true;
                let reads = std::mem::take(&mut p.reads);
                // Copied: the request's buffers are not to be pinned.
                let read = &mut self.nodes[id.0 as usize].read;
                read.extend(reads.iter().map(|k| Bytes::copy_from_slice(k)));
            }
        }
    }

    // ---- time ----

    /// When [`Cluster::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let parked = self
            .parked
            .iter()
            .filter_map(|(seq, part)| {
                let index = seq.checked_sub(self.head)? as usize;
                self.requests.get(index)?.parts[usize::from(*part)].retry_at
            })
            .min();
        // Deadlines grow with arrival, and answered requests at the front
        // are passed on at once: the front's is the earliest.
        let deadline = self.requests.front().map(|r| r.deadline);
        let down = self
            .nodes
            .iter()
            .filter(|n| !n.waiting.is_empty())
            .filter_map(|n| match n.state {
                NodeState::Down(at) => Some(at),
                _ => None,
            })
            .min();
        [Some(self.refresh_at), parked, deadline, down]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retries what is due, fails what ran out of time, reads the map when
    /// due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.refresh_at <= now {
            self.refresh(now);
        }
        let parked = std::mem::take(&mut self.parked);
        for (seq, part) in parked {
            let due = self
                .request_mut(seq)
                .and_then(|r| r.parts[usize::from(part)].retry_at)
                .is_some_and(|at| at <= now);
            if due {
                self.dispatch(seq, part, now);
            } else if self.request_mut(seq).is_some() {
                self.parked.push((seq, part));
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].waiting.is_empty() {
                self.wake_node(NodeId(i as u32), now);
            }
        }
        let timeout = self.config.request_timeout;
        for request in &mut self.requests {
            if request.deadline > now {
                break;
            }
            for p in &mut request.parts {
                if p.done {
                    continue;
                }
                let why = p.last_error.take().unwrap_or_else(|| {
                    error(format!(
                        "ERR no reply from the cluster within {} ms",
                        timeout.as_millis()
                    ))
                });
                p.replies = vec![why; p.cmds.len()];
                p.done = true;
                p.retry_at = None;
            }
        }
        self.emit();
    }

    // ---- replies ----

    /// Passes on the replies of the requests at the front that are
    /// answered.
    fn emit(&mut self) {
        while self.requests.front().is_some_and(Request::complete) {
            let Some(request) = self.requests.pop_front() else {
                break;
            };
            self.head += 1;
            let replies = merge(request.parts, request.merge);
            if let (Some(proto), Some(first)) = (request.hello, replies.first()) {
                if !first.is_error() {
                    self.proto = proto;
                }
            }
            for reply in &replies {
                reply.encode_proto(self.proto, &mut self.out);
            }
            for push in &request.pushes {
                push.encode_proto(Proto::Resp3, &mut self.out);
            }
        }
    }
}

/// What a request's parts' replies make together.
fn merge(parts: Vec<Part>, how: Merge) -> Vec<Reply> {
    let mut replies: Vec<Vec<Reply>> = parts.into_iter().map(|p| p.replies).collect();
    let first_error = replies.iter().flatten().find(|r| r.is_error()).cloned();
    let mut one = |i: usize| {
        replies
            .get_mut(i)
            .and_then(|r| r.pop())
            .unwrap_or(Reply::Nil)
    };
    match how {
        Merge::Local(replies) => replies,
        Merge::One => vec![one(0)],
        Merge::Each => replies.into_iter().next().unwrap_or_default(),
        _ if first_error.is_some() => vec![first_error.unwrap_or(Reply::Nil)],
        Merge::Values(places) => {
            let mut arrays: Vec<Vec<Reply>> = replies
                .into_iter()
                .map(|mut r| match r.pop() {
                    Some(Reply::Array(values)) => values,
                    _ => Vec::new(),
                })
                .collect();
            let values = places
                .iter()
                .map(|(part, at)| {
                    arrays
                        .get_mut(usize::from(*part))
                        .and_then(|a| a.get_mut(*at as usize))
                        .map_or(Reply::Nil, |v| std::mem::replace(v, Reply::Nil))
                })
                .collect();
            vec![Reply::Array(values)]
        }
        Merge::Sum => {
            let sum = replies
                .iter()
                .flatten()
                .map(|r| match r {
                    Reply::Integer(n) => *n,
                    _ => 0,
                })
                .sum();
            vec![Reply::Integer(sum)]
        }
        Merge::AllOk => vec![Reply::ok()],
        Merge::Concat => {
            let all = replies
                .into_iter()
                .flatten()
                .flat_map(|r| match r {
                    Reply::Array(items) | Reply::Set(items) => items,
                    _ => Vec::new(),
                })
                .collect();
            vec![Reply::Array(all)]
        }
        Merge::Scan { master, masters } => {
            let reply = one(0);
            let Reply::Array(mut pair) = reply else {
                return vec![reply];
            };
            let keys = pair.pop().unwrap_or(Reply::Array(Vec::new()));
            let inner: u64 = pair
                .pop()
                .and_then(|c| match c {
                    Reply::Bulk(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
                    _ => None,
                })
                .unwrap_or(0);
            let next = if inner >= 1 << 48 {
                return vec![error("ERR a master's SCAN cursor is too large to merge")];
            } else if inner != 0 {
                ((master as u64) << 48) | inner
            } else if master + 1 < masters {
                ((master as u64) + 1) << 48
            } else {
                0
            };
            vec![Reply::Array(vec![
                Reply::Bulk(Bytes::from(next.to_string())),
                keys,
            ])]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:7001";
    const B: &str = "127.0.0.1:7002";

    fn t(ms: u64) -> Instant {
        Instant::from_duration(Duration::from_millis(ms))
    }

    fn resp(args: &[&str]) -> Vec<u8> {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let mut out = BytesMut::new();
        encode_resp_args(&args, &mut out);
        out.to_vec()
    }

    fn sent(c: &mut Cluster, id: u32) -> String {
        c.poll_node_transmit(NodeId(id))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn replies(c: &mut Cluster) -> String {
        c.poll_proxy_transmit()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `CLUSTER SLOTS` for A serving slots 0..=8191 and B the rest.
    fn two_masters() -> Vec<u8> {
        let range = |a: u16, b: u16, port: u16| {
            format!("*3\r\n:{a}\r\n:{b}\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n")
        };
        format!("*2\r\n{}{}", range(0, 8191, 7001), range(8192, 16383, 7002)).into_bytes()
    }

    /// A pipe that has read the map from A (by `CLUSTER SLOTS`, A refusing
    /// `SHARDS` as a Redis 6 would) and connected to both masters.
    fn mapped() -> Cluster {
        let mut c = Cluster::new(vec![A.into()], ClusterConfig::default(), t(0));
        assert_eq!(
            c.poll_event(),
            Some(ClusterEvent::Connect(NodeId(0), A.into()))
        );
        c.handle_node_connected(NodeId(0), t(1));
        assert!(sent(&mut c, 0).contains("SHARDS"));
        c.handle_node_input(NodeId(0), b"-ERR unknown subcommand 'SHARDS'\r\n", t(2));
        assert!(sent(&mut c, 0).contains("SLOTS"));
        c.handle_node_input(NodeId(0), &two_masters(), t(3));
        assert_eq!(c.slot_map().map(SlotMap::served), Some(SLOTS));
        // `foo` is in slot 12182: B's, connected on first use.
        c.handle_proxy_input(&resp(&["GET", "foo"]), t(4));
        assert_eq!(
            c.poll_event(),
            Some(ClusterEvent::Connect(NodeId(1), B.into()))
        );
        c.handle_node_connected(NodeId(1), t(5));
        assert_eq!(sent(&mut c, 1), "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n");
        c.handle_node_input(NodeId(1), b"$1\r\n1\r\n", t(6));
        assert_eq!(replies(&mut c), "$1\r\n1\r\n");
        c
    }

    #[test]
    fn a_key_goes_to_its_slots_master_once_the_map_is_read() {
        let mut c = mapped();
        // `bar` is in slot 5061: A's.
        c.handle_proxy_input(&resp(&["SET", "bar", "v"]), t(10));
        assert_eq!(
            sent(&mut c, 0),
            "*3\r\n$3\r\nSET\r\n$3\r\nbar\r\n$1\r\nv\r\n"
        );
        assert_eq!(sent(&mut c, 1), "");
    }

    #[test]
    fn replies_come_back_in_request_order_whichever_master_answers_first() {
        let mut c = mapped();
        c.handle_proxy_input(
            &[resp(&["GET", "foo"]), resp(&["GET", "bar"])].concat(),
            t(10),
        );
        c.handle_node_input(NodeId(0), b"$3\r\nBAR\r\n", t(11));
        assert_eq!(replies(&mut c), "", "held behind foo's");
        c.handle_node_input(NodeId(1), b"$3\r\nFOO\r\n", t(12));
        assert_eq!(replies(&mut c), "$3\r\nFOO\r\n$3\r\nBAR\r\n");
    }

    #[test]
    fn a_split_command_missing_a_value_is_refused_without_sending() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["MSET", "foo", "1", "bar"]), t(10));
        assert_eq!(
            replies(&mut c),
            "-ERR wrong number of arguments for 'mset' command\r\n"
        );
        assert_eq!(sent(&mut c, 0) + &sent(&mut c, 1), "");
    }

    #[test]
    fn mget_across_slots_is_split_and_put_back_in_order() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["MGET", "foo", "bar", "foo{x}"]), t(10));
        assert_eq!(
            sent(&mut c, 0),
            String::from_utf8(resp(&["MGET", "bar"])).unwrap()
        );
        let b = sent(&mut c, 1);
        // foo and foo{x} (slot of "x": 16287) are both B's, in two slots.
        assert_eq!(
            b,
            String::from_utf8([resp(&["MGET", "foo"]), resp(&["MGET", "foo{x}"])].concat())
                .unwrap()
        );
        c.handle_node_input(NodeId(1), b"*1\r\n$1\r\nf\r\n*1\r\n$-1\r\n", t(11));
        c.handle_node_input(NodeId(0), b"*1\r\n$1\r\nb\r\n", t(12));
        assert_eq!(replies(&mut c), "*3\r\n$1\r\nf\r\n$1\r\nb\r\n$-1\r\n");
        assert_eq!(c.stats().split, 1);
    }

    #[test]
    fn del_across_slots_adds_up_and_other_multi_key_commands_are_crossslot() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["DEL", "foo", "bar"]), t(10));
        c.handle_node_input(NodeId(0), b":1\r\n", t(11));
        c.handle_node_input(NodeId(1), b":1\r\n", t(11));
        assert_eq!(replies(&mut c), ":2\r\n");
        c.handle_proxy_input(&resp(&["MSETNX", "foo", "1", "bar", "2"]), t(12));
        assert_eq!(replies(&mut c), format!("-{CROSSSLOT}\r\n"));
        // With one hash tag, one slot: sent whole.
        c.handle_proxy_input(&resp(&["MSETNX", "{u}a", "1", "{u}b", "2"]), t(13));
        assert!(sent(&mut c, 0).contains("MSETNX") || sent(&mut c, 1).contains("MSETNX"));
    }

    #[test]
    fn a_transaction_goes_whole_to_its_slots_master_or_is_crossslot() {
        let mut c = mapped();
        let tx = [
            resp(&["MULTI"]),
            resp(&["GET", "bar"]),
            resp(&["PTTL", "bar"]),
            resp(&["EXEC"]),
        ]
        .concat();
        c.handle_proxy_input(&tx, t(10));
        assert_eq!(sent(&mut c, 0), String::from_utf8(tx).unwrap());
        c.handle_node_input(
            NodeId(0),
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\nv\r\n:-1\r\n",
            t(11),
        );
        assert_eq!(
            replies(&mut c),
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\nv\r\n:-1\r\n"
        );
        let cross = [
            resp(&["MULTI"]),
            resp(&["SET", "foo", "1"]),
            resp(&["SET", "bar", "1"]),
            resp(&["EXEC"]),
        ]
        .concat();
        c.handle_proxy_input(&cross, t(12));
        assert_eq!(
            replies(&mut c),
            format!("+OK\r\n-{CROSSSLOT}\r\n-{CROSSSLOT}\r\n-EXECABORT Transaction discarded because of previous errors.\r\n")
        );
    }

    #[test]
    fn moved_records_the_new_master_and_sends_the_request_there() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["GET", "bar"]), t(10));
        let _ = sent(&mut c, 0);
        c.handle_node_input(NodeId(0), b"-MOVED 5061 127.0.0.1:7002\r\n", t(11));
        assert_eq!(
            sent(&mut c, 1),
            String::from_utf8(resp(&["GET", "bar"])).unwrap()
        );
        c.handle_node_input(NodeId(1), b"$1\r\nv\r\n", t(12));
        assert_eq!(replies(&mut c), "$1\r\nv\r\n");
        assert_eq!(c.slot_map().and_then(|m| m.owner(5061)), Some(B));
        assert_eq!(c.stats().moved, 1);
    }

    #[test]
    fn ask_sends_one_request_after_asking_and_the_next_by_the_map() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["GET", "bar"]), t(10));
        let _ = sent(&mut c, 0);
        c.handle_node_input(NodeId(0), b"-ASK 5061 127.0.0.1:7002\r\n", t(11));
        assert_eq!(
            sent(&mut c, 1),
            String::from_utf8([resp(&["ASKING"]), resp(&["GET", "bar"])].concat()).unwrap()
        );
        c.handle_node_input(NodeId(1), b"+OK\r\n$1\r\nv\r\n", t(12));
        assert_eq!(replies(&mut c), "$1\r\nv\r\n");
        c.handle_proxy_input(&resp(&["GET", "bar"]), t(13));
        assert_eq!(
            sent(&mut c, 0),
            String::from_utf8(resp(&["GET", "bar"])).unwrap()
        );
    }

    #[test]
    fn tryagain_waits_and_retries_until_the_deadline_then_answers_the_error() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["GET", "bar"]), t(10));
        let _ = sent(&mut c, 0);
        c.handle_node_input(
            NodeId(0),
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            t(11),
        );
        assert_eq!(sent(&mut c, 0), "");
        let at = c.poll_timeout().unwrap();
        assert!(at <= t(111));
        c.handle_timeout(t(111));
        // The map is read again first (by SLOTS: SHARDS was refused).
        let again = sent(&mut c, 0);
        assert!(
            again.find("SLOTS").unwrap() < again.find("GET").unwrap(),
            "{again}"
        );
        c.handle_node_input(NodeId(0), &two_masters(), t(112));
        c.handle_node_input(NodeId(0), b"$1\r\nv\r\n", t(112));
        assert_eq!(replies(&mut c), "$1\r\nv\r\n");
    }

    #[test]
    fn a_lost_master_fails_its_writes_and_retries_its_reads() {
        let mut c = Cluster::new(vec![A.into()], ClusterConfig::default(), t(0));
        let _ = c.poll_event();
        c.handle_proxy_input(
            &[resp(&["HELLO", "3"]), resp(&["CLIENT", "TRACKING", "ON"])].concat(),
            t(0),
        );
        c.handle_node_connected(NodeId(0), t(1));
        // The connection state first, then the map.
        let first = sent(&mut c, 0);
        assert!(first.find("HELLO").unwrap() < first.find("SHARDS").unwrap());
        c.handle_node_input(NodeId(0), b"%1\r\n+server\r\n+redis\r\n+OK\r\n", t(2));
        c.handle_node_input(NodeId(0), b"-ERR unknown subcommand\r\n", t(2));
        let _ = sent(&mut c, 0);
        c.handle_node_input(NodeId(0), &two_masters(), t(3));
        assert_eq!(replies(&mut c), "%1\r\n+server\r\n+redis\r\n+OK\r\n");
        c.handle_proxy_input(
            &[resp(&["SET", "bar", "1"]), resp(&["GET", "bar"])].concat(),
            t(4),
        );
        let _ = sent(&mut c, 0);
        c.handle_node_lost(NodeId(0), "connection reset", t(5));
        let out = replies(&mut c);
        assert!(out.contains("may or may not have been applied"), "{out}");
        assert!(
            !out.contains("invalidate"),
            "nothing was read through A: {out}"
        );
        // The read waits for A to come back, and is answered then.
        c.handle_timeout(t(200));
        assert_eq!(
            c.poll_event(),
            Some(ClusterEvent::Connect(NodeId(0), A.into()))
        );
        c.handle_node_connected(NodeId(0), t(201));
        let again = sent(&mut c, 0);
        assert!(
            again.contains("HELLO") && again.contains("TRACKING") && again.contains("GET"),
            "{again}"
        );
    }

    #[test]
    fn a_lost_master_invalidates_what_was_read_through_it_and_nothing_else() {
        let mut c = Cluster::new(vec![A.into()], ClusterConfig::default(), t(0));
        let _ = c.poll_event();
        c.handle_proxy_input(
            &[resp(&["HELLO", "3"]), resp(&["CLIENT", "TRACKING", "ON"])].concat(),
            t(0),
        );
        c.handle_node_connected(NodeId(0), t(1));
        let _ = sent(&mut c, 0);
        c.handle_node_input(NodeId(0), b"%0\r\n+OK\r\n-ERR unknown subcommand\r\n", t(2));
        let _ = sent(&mut c, 0);
        c.handle_node_input(NodeId(0), &two_masters(), t(3));
        // bar and bar2 read through A (bar2 then invalidated by A), foo through B.
        c.handle_proxy_input(
            &[
                resp(&["GET", "bar"]),
                resp(&["GET", "foo"]),
                resp(&["MGET", "bar2"]),
            ]
            .concat(),
            t(4),
        );
        let _ = c.poll_event();
        c.handle_node_connected(NodeId(1), t(5));
        c.handle_node_input(NodeId(0), b"$1\r\na\r\n*1\r\n$1\r\nb\r\n", t(6));
        assert!(
            sent(&mut c, 1).starts_with("*2\r\n$5\r\nHELLO"),
            "B's state first"
        );
        c.handle_node_input(NodeId(1), b"%0\r\n+OK\r\n$1\r\nf\r\n", t(6));
        c.handle_node_input(
            NodeId(0),
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$4\r\nbar2\r\n",
            t(7),
        );
        let _ = replies(&mut c);
        c.handle_node_lost(NodeId(0), "connection reset", t(8));
        assert_eq!(
            replies(&mut c),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nbar\r\n"
        );
        assert_eq!(c.stats().keys_invalidated_on_loss, 1);
        c.handle_node_lost(NodeId(1), "connection reset", t(9));
        assert_eq!(
            replies(&mut c),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n"
        );
    }

    #[test]
    fn a_push_follows_the_replies_its_master_sent_before_it() {
        let mut c = mapped();
        c.handle_proxy_input(
            &[resp(&["GET", "foo"]), resp(&["GET", "bar"])].concat(),
            t(10),
        );
        // A answers bar, then invalidates it; foo (B's) is still owed.
        c.handle_node_input(
            NodeId(0),
            b"$1\r\nv\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nbar\r\n",
            t(11),
        );
        assert_eq!(replies(&mut c), "");
        c.handle_node_input(NodeId(1), b"$1\r\nf\r\n", t(12));
        assert_eq!(
            replies(&mut c),
            "$1\r\nf\r\n$1\r\nv\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nbar\r\n"
        );
    }

    #[test]
    fn keyspace_commands_run_on_every_master_and_merge() {
        let mut c = mapped();
        c.handle_proxy_input(&resp(&["DBSIZE"]), t(10));
        assert_eq!(c.poll_event(), None);
        assert!(sent(&mut c, 0).contains("DBSIZE") && sent(&mut c, 1).contains("DBSIZE"));
        c.handle_node_input(NodeId(0), b":3\r\n", t(11));
        c.handle_node_input(NodeId(1), b":4\r\n", t(11));
        assert_eq!(replies(&mut c), ":7\r\n");
        c.handle_proxy_input(&resp(&["SCAN", "0"]), t(12));
        assert!(sent(&mut c, 0).contains("SCAN"));
        c.handle_node_input(NodeId(0), b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\na\r\n", t(13));
        let next = (1u64 << 48).to_string();
        assert_eq!(
            replies(&mut c),
            format!("*2\r\n${}\r\n{next}\r\n*1\r\n$1\r\na\r\n", next.len())
        );
        c.handle_proxy_input(&resp(&["SCAN", &next]), t(14));
        assert_eq!(
            sent(&mut c, 1),
            String::from_utf8(resp(&["SCAN", "0"])).unwrap()
        );
        c.handle_proxy_input(&resp(&["DUMP"]), t(15));
        c.handle_node_input(NodeId(1), b"*2\r\n$1\r\n0\r\n*0\r\n", t(16));
        let out = replies(&mut c);
        assert!(
            out.starts_with("*2\r\n$1\r\n0\r\n*0\r\n-ERR kv's DUMP"),
            "{out}"
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Node input that may be anything: well-formed replies of every shape
    /// (redirects, pushes, errors with odd words, arrays) and plain bytes.
    fn node_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"+OK\r\n".to_vec()),
            Just(b"$1\r\nv\r\n".to_vec()),
            Just(b":3\r\n".to_vec()),
            Just(b"*1\r\n$1\r\nx\r\n".to_vec()),
            Just(b"-MOVED 5061 127.0.0.1:7002\r\n".to_vec()),
            Just(b"-ASK 12182 127.0.0.1:7001\r\n".to_vec()),
            Just(b"-MOVED 99999 nowhere\r\n".to_vec()),
            Just(b"-TRYAGAIN later\r\n".to_vec()),
            Just(b"-CLUSTERDOWN The cluster is down\r\n".to_vec()),
            Just(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nbar\r\n".to_vec()),
            Just(b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec()),
            Just(
                b"*2\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n*1\r\n:5\r\n"
                    .to_vec()
            ),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    fn request() -> impl Strategy<Value = Vec<&'static str>> {
        prop_oneof![
            Just(vec!["GET", "foo"]),
            Just(vec!["SET", "bar", "1"]),
            Just(vec!["MGET", "foo", "bar", "x"]),
            Just(vec!["MSET", "foo", "1", "bar"]),
            Just(vec!["DEL", "a", "b", "c"]),
            Just(vec!["DBSIZE"]),
            Just(vec!["SCAN", "281474976710656"]),
            Just(vec!["SCAN", "99999999999999999999"]),
            Just(vec!["MULTI"]),
            Just(vec!["EXEC"]),
            Just(vec!["HELLO", "3"]),
            Just(vec!["CLIENT", "TRACKING", "ON"]),
            Just(vec!["PING"]),
        ]
    }

    proptest! {
        /// Whatever the nodes send, and whenever connections come and go,
        /// the pipe neither panics nor answers more requests than it was
        /// asked; and once every node is lost for good and time runs out,
        /// every request is answered.
        #[test]
        fn the_pipe_survives_any_node_input(
            steps in proptest::collection::vec((request(), 0u32..3, node_bytes(), any::<bool>()), 1..40)
        ) {
            let seeds = vec!["127.0.0.1:7001".to_owned(), "127.0.0.1:7002".to_owned()];
            let mut c = Cluster::new(seeds, ClusterConfig::default(), Instant::from_duration(Duration::ZERO));
            let mut asked = 0usize;
            let mut now = Duration::ZERO;
            for (req, node, bytes, lose) in &steps {
                now += Duration::from_millis(30);
                let at = Instant::from_duration(now);
                let args: Vec<Bytes> = req.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
                let mut out = BytesMut::new();
                encode_resp_args(&args, &mut out);
                c.handle_proxy_input(&out, at);
                asked += 1;
                while let Some(ClusterEvent::Connect(id, _) | ClusterEvent::Close(id)) = c.poll_event() {
                    c.handle_node_connected(id, at);
                }
                let id = NodeId(*node);
                let _ = c.poll_node_transmit(id);
                c.handle_node_input(id, bytes, at);
                if *lose {
                    c.handle_node_lost(id, "gone", at);
                }
                c.handle_timeout(at);
            }
            // Everything lost, time past every deadline.
            for i in 0..c.nodes.len() {
                c.handle_node_lost(NodeId(i as u32), "gone", Instant::from_duration(now));
            }
            now += Duration::from_secs(60);
            c.handle_timeout(Instant::from_duration(now));
            let mut d = crate::reply::ReplyDecoder::new(ReplyLimits::default());
            while let Some(b) = c.poll_proxy_transmit() {
                d.feed(&b);
            }
            let mut replies = 0usize;
            while let Ok(Some(r)) = d.next_reply() {
                if !matches!(r, Reply::Push(_)) {
                    replies += 1;
                }
            }
            // A transaction's commands are answered when it ends: one
            // still open at the end is owed its replies.
            let open_tx = c.tx.as_ref().map_or(0, Vec::len);
            prop_assert_eq!(replies + open_tx, asked);
        }
    }
}
