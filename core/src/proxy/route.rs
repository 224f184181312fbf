//! Routing: where each command is answered, decided from the table's
//! handler, flags and key positions alone, and the per-key state the
//! consistency rules (module docs of [`proxy`](super)) need.

use crate::command::table::{Cache, Flags, Handler, LocalHandler, Spec};
use crate::db::Hasher;
use bytes::Bytes;
use std::collections::HashMap;

/// Where a command is answered.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    /// By the proxy itself (connection and server commands).
    Local(LocalHandler),
    /// From the cache if it holds the key fresh, else upstream; the reply
    /// fills the cache (`GET`).
    CachedRead,
    /// Refused with an error naming the limitation: the command needs
    /// state on a connection of its own upstream (transactions, watched
    /// keys), and the proxy's upstream pipe is shared.
    Refused,
    /// Upstream, in order; its keys bypass the cache until it is answered
    /// (reads behind a forwarded command go upstream too).
    Forward {
        /// Whether it may change the keyspace.
        write: bool,
    },
}

/// The route of a command, from its spec alone.
pub(super) fn route(spec: &Spec) -> Route {
    if spec.flags.contains(Flags::CONN_STATE) {
        return Route::Refused;
    }
    match spec.handler {
        Handler::Tx(_) => Route::Refused,
        // PUBLISH and PUBSUB need no state of the connection's (the
        // subscriptions, which do, are refused above): forwarded on the
        // main lane, whose pipelining PUBLISH needs (the bulk lane has one
        // request in flight).
        Handler::PubSub(_) => Route::Forward { write: true },
        Handler::Local(handler) => Route::Local(handler),
        Handler::Data(_) if matches!(spec.cache, Cache::Value) => Route::CachedRead,
        // A container never reaches routing (parsing resolves subcommands);
        // forwarding it lets the upstream explain.
        Handler::Data(_) | Handler::Container => Route::Forward {
            write: !spec.flags.contains(Flags::READONLY),
        },
    }
}

/// Where a `GET` is answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GetRoute {
    /// Joins the upstream `GET` with this sequence number.
    Join(u64),
    /// The cache, if it holds the key fresh; upstream otherwise.
    Cache,
    /// A new upstream `GET`.
    Upstream,
}

/// Forwarded commands in flight that name a key.
#[derive(Debug, Clone, Copy, Default)]
struct InFlightKey {
    reads: u32,
    writes: u32,
}

/// The per-key state of the consistency rules.
#[derive(Debug)]
pub(super) struct KeyState {
    /// Keys with a `GET` in flight that later `GET`s may join.
    coalesce: HashMap<Bytes, u64, Hasher>,
    /// Keys named by forwarded commands in flight.
    in_flight: HashMap<Bytes, InFlightKey, Hasher>,
}

impl KeyState {
    pub fn new(hash_seed: u64) -> Self {
        KeyState {
            coalesce: HashMap::with_hasher(Hasher::with_seed(hash_seed)),
            in_flight: HashMap::with_hasher(Hasher::with_seed(hash_seed)),
        }
    }

    /// Where a `GET` of `key` is answered from, short of the cache lookup
    /// itself; `live(seq)` says whether an upstream request is in flight.
    pub fn get_route(&self, key: &[u8], live: impl Fn(u64) -> bool) -> GetRoute {
        // A GET already in flight for this key was sent after every write
        // to it, so its answer is at least as new as anything cached: join
        // it rather than read the cache, or a client could read a newer
        // value, then an older one. (The emptiness checks spare hashing the
        // key when nothing is in flight.)
        if !self.coalesce.is_empty() {
            if let Some(&seq) = self.coalesce.get(key) {
                if live(seq) {
                    return GetRoute::Join(seq);
                }
            }
        }
        // Behind a forwarded command on the key, the cache may be older than
        // what that command sees: go upstream, behind it.
        if self.in_flight.is_empty() || !self.in_flight.contains_key(key) {
            GetRoute::Cache
        } else {
            GetRoute::Upstream
        }
    }

    /// Later `GET`s of `key` may join the upstream `GET` `seq`.
    pub fn coalesce(&mut self, key: Bytes, seq: u64) {
        self.coalesce.insert(key, seq);
    }

    /// The upstream `GET` `seq` of `key` was answered.
    pub fn end_get(&mut self, key: &[u8], seq: u64) {
        if self.coalesce.get(key) == Some(&seq) {
            self.coalesce.remove(key);
        }
    }

    /// A forwarded command naming `key` goes upstream, and stops later
    /// `GET`s from joining one sent before it: a write may change what
    /// they read, and a read (`MGET`) may see newer state than the older
    /// `GET` will, so a client joining it could read backwards.
    pub fn begin(&mut self, key: &Bytes, write: bool) {
        let k = self.in_flight.entry(key.clone()).or_default();
        if write {
            k.writes += 1;
        } else {
            k.reads += 1;
        }
        self.coalesce.remove(key);
    }

    /// A forwarded command naming `key` got its reply (or never will).
    pub fn end(&mut self, key: &[u8], write: bool) {
        if let Some(k) = self.in_flight.get_mut(key) {
            if write {
                k.writes = k.writes.saturating_sub(1);
            } else {
                k.reads = k.reads.saturating_sub(1);
            }
            if k.reads == 0 && k.writes == 0 {
                self.in_flight.remove(key);
            }
        }
    }

    /// Whether a write naming `key` is in flight: a reply that arrives
    /// meanwhile may be older than the write and must not fill the cache.
    pub fn writing(&self, key: &[u8]) -> bool {
        !self.in_flight.is_empty() && self.in_flight.get(key).is_some_and(|k| k.writes > 0)
    }

    /// The upstream connection is gone: no `GET` can be joined.
    pub fn forget_gets(&mut self) {
        self.coalesce.clear();
    }
}
