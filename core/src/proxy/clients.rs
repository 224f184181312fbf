//! The proxy's downstream clients: their decoders, sessions and reply
//! slots. Replies are sent in request order, so each request takes a slot
//! when it arrives and only a finished head of the queue is sent.

use super::{AnnotatedReply, ClientId, ClientKind, Lane, ProxyEvent, Source};
use crate::codec::{Decoder, Dialect, Limits};
use crate::command::table::Spec;
use crate::command::Command;
use crate::db::Hasher;
use crate::reply::Proto;
use crate::reply::Reply;
use crate::session::Session;
use crate::stats::CommandStats;
use crate::time::Instant;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};

/// Names one request of one client: the client and the sequence number of
/// its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waiter {
    pub client: ClientId,
    pub seq: u64,
}

#[derive(Debug)]
struct Slot {
    dialect: Dialect,
    /// The command, for its statistics (none for what did not parse).
    spec: Option<&'static Spec>,
    received_at: Instant,
    done: Option<(Reply, Source, Instant)>,
    /// The upstream lane the request went to, while it is in flight.
    lane: Option<Lane>,
    /// Its reply went straight to the output as it arrived (a large reply
    /// passed through): there is nothing to encode, and whether it was an
    /// error.
    streamed: Option<bool>,
}

/// How a chunk of a passed-through reply was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Streamed {
    /// Appended to the client's output.
    Written,
    /// It took the client's output over its limit: the client is cut off,
    /// its output dropped.
    Cut,
    /// The client is gone (or was cut off before).
    Gone,
}

/// Client input held back behind a rejection (see `Client::deferred`).
#[derive(Debug)]
pub(super) enum Deferred {
    Input(Bytes),
    Reject(String),
}

#[derive(Debug)]
pub(super) struct Client {
    pub kind: ClientKind,
    pub decoder: Decoder,
    pub session: Session,
    /// Replies in request order; only a finished head can be sent.
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    head_seq: u64,
    pub out: BytesMut,
    messages: VecDeque<AnnotatedReply>,
    /// A fatal protocol error: close once the output is sent.
    pub failed: bool,
    /// Already announced with [`ProxyEvent::ClientReady`] and not drained.
    notified: bool,
    /// Processing stopped at the pending-reply limit with input left: the
    /// driver resumes it when replies free slots.
    pub throttled: bool,
    /// Input that arrived behind a rejected message while earlier input was
    /// still undecoded: it waits here so that replies keep arrival order.
    pub deferred: VecDeque<Deferred>,
    /// The client has sent a RESP command: its inline commands get RESP
    /// replies too, as Redis gives.
    pub spoke_resp: bool,
    /// Requests in flight on each upstream lane (main, bulk).
    pub in_flight: [usize; 2],
    /// A request held back until the client's requests on the other lane
    /// are answered, so that its requests keep their order at the server.
    pub parked: Option<(Command, Dialect)>,
    /// Cut off for holding more output than its limit.
    pub cut: bool,
    /// The oldest bulk epoch a value may be read from the cache by this
    /// client (0: any): after it read the whole keyspace on the bulk lane,
    /// an entry stored from a request sent before that read's answer may
    /// be older than a value the read showed it.
    pub min_epoch: u64,
    /// Its dedicated upstream connection, once pinned (see `tunnel.rs`),
    /// and the dialect of its last request, which what arrives is written
    /// in.
    pub tunnel: Option<super::tunnel::Tunnel>,
    pub tunnel_dialect: Dialect,
    /// A transaction being queued at the proxy, with
    /// [`ProxyConfig::batch_transactions`](super::ProxyConfig).
    pub tx: Option<Batch>,
}

/// A client's transaction while it is queued (`MULTI` … `EXEC`).
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub cmds: Vec<Command>,
    /// A command was refused as it was queued: `EXEC` aborts.
    pub failed: bool,
    /// The hash slot of its keys so far, in front of a cluster.
    pub slot: Option<u16>,
}

impl Client {
    /// Whether the client asked to be closed, or broke the protocol.
    pub fn closing(&self) -> bool {
        self.failed || self.session.closing
    }

    /// Requests received and not yet answered.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// Whether a request arriving now could be answered straight into the
    /// output, with no reply queued ahead of it.
    pub fn nothing_queued(&self) -> bool {
        self.kind == ClientKind::Stream && self.slots.is_empty()
    }

    /// Takes a slot for a request (of command `spec`, if it parsed)
    /// received at `now`.
    pub fn push_slot(
        &mut self,
        id: ClientId,
        dialect: Dialect,
        spec: Option<&'static Spec>,
        now: Instant,
    ) -> Waiter {
        let seq = self.head_seq + self.slots.len() as u64;
        self.slots.push_back(Slot {
            dialect,
            spec,
            received_at: now,
            done: None,
            lane: None,
            streamed: None,
        });
        Waiter { client: id, seq }
    }

    /// Queues a RESP3 push (an invalidation) behind every reply owed: it
    /// answers no request, and a reply read before the change it reports
    /// must reach the client before it does, or the client would keep
    /// that value as current (see the module docs of [`proxy`](super),
    /// "Tracking").
    pub fn push_message(&mut self, id: ClientId, reply: Reply, now: Instant) {
        let _ = self.push_slot(id, Dialect::Resp, None, now);
        if let Some(slot) = self.slots.back_mut() {
            slot.done = Some((reply, Source::Proxy, now));
        }
    }

    /// Whether anything is left to hand to the driver.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.messages.is_empty()
    }

    /// Whether a request for `lane` must wait: the client has requests in
    /// flight on the other lane, which the server could answer after it.
    pub fn must_wait_for(&self, lane: Lane) -> bool {
        self.in_flight[lane.other().index()] > 0
    }

    /// Whether a reply can be written straight from the wire into the
    /// output: its slot is the next to send, and the client reads RESP2 as
    /// the server writes it.
    fn takes_raw(&self, seq: u64) -> bool {
        self.kind == ClientKind::Stream
            && seq == self.head_seq
            && self.session.proto == Proto::Resp2
            && self
                .slots
                .front()
                .is_some_and(|s| s.dialect == Dialect::Resp)
    }
}

/// The client whose session this is: sessions number clients from 1, as
/// Redis does.
pub(super) fn id_of(session: &Session) -> ClientId {
    ClientId(session.id.saturating_sub(1))
}

/// The clients of one proxy.
#[derive(Debug)]
pub(super) struct Clients {
    /// Seeded like the other maps: std's default hasher would draw its keys
    /// from the OS's random source, which the core never reads.
    map: HashMap<ClientId, Client, Hasher>,
    next: u64,
    /// Clients removed since start.
    removed: u64,
    /// Counts the bulk lane's answers (see `Client::min_epoch`); the proxy
    /// counts it up before it completes one.
    pub bulk_epoch: u64,
}

impl Clients {
    pub fn new(hash_seed: u64) -> Self {
        Clients {
            map: HashMap::with_hasher(Hasher::with_seed(hash_seed)),
            next: 0,
            removed: 0,
            bulk_epoch: 0,
        }
    }

    pub fn add(&mut self, kind: ClientKind, limits: Limits, authenticated: bool) -> ClientId {
        let id = ClientId(self.next);
        self.next += 1;
        self.map.insert(
            id,
            Client {
                kind,
                decoder: Decoder::new(limits),
                // Client ids start at 1, as Redis's do.
                session: Session::new(id.0 + 1, authenticated),
                slots: VecDeque::new(),
                head_seq: 0,
                out: BytesMut::new(),
                messages: VecDeque::new(),
                failed: false,
                notified: false,
                throttled: false,
                deferred: VecDeque::new(),
                spoke_resp: false,
                in_flight: [0, 0],
                parked: None,
                cut: false,
                min_epoch: 0,
                tunnel: None,
                tunnel_dialect: Dialect::Resp,
                tx: None,
            },
        );
        id
    }

    pub fn remove(&mut self, id: ClientId) {
        if self.map.remove(&id).is_some() {
            self.removed += 1;
        }
    }

    /// Clients removed since start.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    pub fn get(&self, id: ClientId) -> Option<&Client> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        self.map.get_mut(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Records a finished reply; returns whether it finished the head of
    /// the client's queue (so output can move).
    pub fn complete(&mut self, waiter: Waiter, reply: Reply, source: Source, now: Instant) -> bool {
        let Some(client) = self.map.get_mut(&waiter.client) else {
            return false;
        };
        let Some(idx) = waiter.seq.checked_sub(client.head_seq) else {
            return false;
        };
        if let Some(slot) = client.slots.get_mut(idx as usize) {
            if let Some(lane) = slot.lane.take() {
                client.in_flight[lane.index()] -= 1;
                if lane == Lane::Bulk {
                    client.min_epoch = self.bulk_epoch;
                }
            }
            slot.done = Some((reply, source, now));
        }
        idx == 0
    }

    /// The request of `waiter` went to `lane`.
    pub fn on_lane(&mut self, waiter: Waiter, lane: Lane) {
        let Some(client) = self.map.get_mut(&waiter.client) else {
            return;
        };
        let Some(idx) = waiter.seq.checked_sub(client.head_seq) else {
            return;
        };
        if let Some(slot) = client.slots.get_mut(idx as usize) {
            if slot.lane.is_none() && slot.done.is_none() {
                slot.lane = Some(lane);
                client.in_flight[lane.index()] += 1;
            }
        }
    }

    /// Whether the reply of `waiter` can be passed through as it arrives
    /// (see `Client::takes_raw`).
    pub fn takes_raw(&self, waiter: Waiter) -> bool {
        self.map
            .get(&waiter.client)
            .is_some_and(|c| !c.cut && c.takes_raw(waiter.seq))
    }

    /// Appends a chunk of the reply of `waiter`, which
    /// [`Clients::takes_raw`], to the client's output; over `limit` bytes
    /// of output (0: none) the client is cut off instead.
    pub fn stream(&mut self, waiter: Waiter, bytes: &[u8], limit: usize) -> Streamed {
        let Some(client) = self.map.get_mut(&waiter.client) else {
            return Streamed::Gone;
        };
        if client.cut || waiter.seq != client.head_seq {
            return Streamed::Gone;
        }
        if let Some(slot) = client.slots.front_mut() {
            slot.streamed
                .get_or_insert_with(|| bytes.first() == Some(&b'-'));
        }
        if limit > 0 && client.out.len() + bytes.len() > limit {
            self.cut(waiter.client);
            return Streamed::Cut;
        }
        client.out.extend_from_slice(bytes);
        Streamed::Written
    }

    /// Moves finished replies at the head of a client's queue to its
    /// output, and announces the client if it has something for the driver.
    /// Each reply's latency, counted in `stats`, runs from its request's
    /// arrival until it could be sent: until it was ready and so was every
    /// reply ahead of it.
    pub fn flush(
        &mut self,
        id: ClientId,
        events: &mut VecDeque<ProxyEvent>,
        stats: &mut CommandStats,
    ) {
        let Some(client) = self.map.get_mut(&id) else {
            return;
        };
        let mut moved = false;
        let mut sendable_at = Instant::ZERO;
        while client.slots.front().is_some_and(|s| s.done.is_some()) {
            let Some(slot) = client.slots.pop_front() else {
                break;
            };
            let Some((reply, source, ready_at)) = slot.done else {
                break;
            };
            client.head_seq += 1;
            moved = true;
            sendable_at = sendable_at.max(ready_at);
            let error = slot.streamed.unwrap_or_else(|| reply.is_error());
            if let Some(spec) = slot.spec {
                stats.record(spec, error, sendable_at - slot.received_at);
            }
            if slot.streamed.is_some() || client.cut {
                // Already in the output, or never to go.
                continue;
            }
            match client.kind {
                ClientKind::Stream => {
                    reply.encode_as(slot.dialect, client.session.proto, &mut client.out)
                }
                ClientKind::Messages => client.messages.push_back(AnnotatedReply {
                    reply,
                    source,
                    received_at: slot.received_at,
                    ready_at,
                }),
            }
        }
        // Output written straight by the cache-hit fast path counts too.
        let pending = moved || client.closing() || !client.out.is_empty();
        if pending && !client.notified {
            client.notified = true;
            events.push_back(ProxyEvent::ClientReady(id));
        }
    }

    /// Cuts the client off for its output: it is closed, and nothing more
    /// goes to it. Whether it was there to cut.
    pub fn cut(&mut self, id: ClientId) -> bool {
        let Some(client) = self.map.get_mut(&id) else {
            return false;
        };
        let first = !client.cut;
        client.cut = true;
        client.failed = true;
        client.out = BytesMut::new();
        first
    }

    /// Tells the driver the client's output grew: every time, not once
    /// until it is drained, since a driver stuck writing to a client that
    /// does not read holds it to its output limit by what it holds now.
    pub fn announce_growth(&mut self, id: ClientId, events: &mut VecDeque<ProxyEvent>) {
        if let Some(client) = self.map.get_mut(&id) {
            client.notified = true;
            events.push_back(ProxyEvent::ClientReady(id));
        }
    }

    /// Encoded output for a byte-stream client.
    pub fn poll_transmit(&mut self, id: ClientId) -> Option<BytesMut> {
        let client = self.map.get_mut(&id)?;
        client.notified = false;
        (!client.out.is_empty()).then(|| client.out.split())
    }

    /// The next reply for a message client.
    pub fn poll_reply(&mut self, id: ClientId) -> Option<AnnotatedReply> {
        let client = self.map.get_mut(&id)?;
        client.notified = false;
        client.messages.pop_front()
    }
}
