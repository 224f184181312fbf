//! Client-side caching for the proxy's own clients: which client read
//! which key, so that an invalidation the server sends the proxy reaches
//! every client that read the key through it.
//!
//! The server's invalidations are the one source: every key a client reads
//! through the main lane was read on the proxy's upstream connection too
//! (a cache hit comes from a fill that read it there, and with tracking
//! the cache holds nothing else), so the server tracks it for the proxy,
//! whichever client or node then changes it. As in Redis, a key is
//! forgotten for its readers once they are told, and tracked again on
//! their next read.
//!
//! The table is bounded by [`ProxyConfig::tracking_max_keys`] pairs of key
//! and reader; past it the keys tracked longest are invalidated for their
//! readers to make room, as Redis does past `tracking-table-max-keys`. A
//! client that goes away (or turns tracking off) leaves its pairs behind
//! until their key is invalidated or makes room; they are skipped then.
//!
//! [`ProxyConfig::tracking_max_keys`]: super::ProxyConfig::tracking_max_keys

use super::ClientId;
use crate::db::Hasher;
use crate::reply::Reply;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};

/// The clients that read one key, and when the key joined the table.
#[derive(Debug)]
struct Readers {
    /// Its place in [`Tracking::order`].
    since: u64,
    /// Few in the common case: a linear search beats a set.
    clients: Vec<ClientId>,
}

/// Whom to tell what: `None` is every key (a flush).
pub(super) type Notice = (ClientId, Option<Bytes>);

/// The proxy clients' tracking table.
#[derive(Debug)]
pub(super) struct Tracking {
    /// Clients with tracking on.
    on: HashSet<ClientId, Hasher>,
    keys: HashMap<Bytes, Readers, Hasher>,
    /// Keys in the order they joined the table, to make room with; an
    /// item whose key left (or joined again since) is skipped, and the
    /// queue is compacted when such items outnumber the live ones.
    order: VecDeque<(Bytes, u64)>,
    next_since: u64,
    /// Pairs of key and reader held.
    pairs: usize,
    max_pairs: usize,
    /// What to tell clients, for the proxy to take.
    notices: Vec<Notice>,
}

impl Tracking {
    pub fn new(max_pairs: usize, hash_seed: u64) -> Self {
        Tracking {
            on: HashSet::with_hasher(Hasher::with_seed(hash_seed)),
            keys: HashMap::with_hasher(Hasher::with_seed(hash_seed)),
            order: VecDeque::new(),
            next_since: 0,
            pairs: 0,
            max_pairs: max_pairs.max(1),
            notices: Vec::new(),
        }
    }

    /// Whether any client tracks: the hot path asks this before anything
    /// else.
    pub fn any(&self) -> bool {
        !self.on.is_empty()
    }

    pub fn is_on(&self, id: ClientId) -> bool {
        !self.on.is_empty() && self.on.contains(&id)
    }

    /// Clients with tracking on.
    pub fn clients(&self) -> usize {
        self.on.len()
    }

    /// Pairs of key and reader held.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Turns tracking on or off for a client (on again: no change).
    pub fn set(&mut self, id: ClientId, on: bool) {
        if on {
            self.on.insert(id);
        } else {
            self.on.remove(&id);
        }
    }

    /// The clients with tracking on, turned off.
    pub fn take_clients(&mut self) -> Vec<ClientId> {
        self.on.drain().collect()
    }

    /// Client `id` read `key` (if it tracks).
    pub fn remember(&mut self, id: ClientId, key: &Bytes) {
        if !self.is_on(id) {
            return;
        }
        match self.keys.get_mut(key) {
            Some(readers) if readers.clients.contains(&id) => return,
            Some(readers) => readers.clients.push(id),
            None => {
                let since = self.next_since;
                self.next_since += 1;
                self.keys.insert(
                    key.clone(),
                    Readers {
                        since,
                        clients: vec![id],
                    },
                );
                self.order.push_back((key.clone(), since));
            }
        }
        self.pairs += 1;
        while self.pairs > self.max_pairs && self.make_room() {}
        if self.order.len() > 2 * self.keys.len() + 64 {
            let keys = &self.keys;
            self.order
                .retain(|(k, since)| keys.get(k).is_some_and(|r| r.since == *since));
        }
    }

    /// Invalidates the key tracked longest; whether there was one.
    fn make_room(&mut self) -> bool {
        while let Some((key, since)) = self.order.pop_front() {
            if self.keys.get(&key).is_some_and(|r| r.since == since) {
                self.invalidate(&key);
                return true;
            }
        }
        false
    }

    /// `key` changed: its readers are to be told, and it is forgotten.
    pub fn invalidate(&mut self, key: &[u8]) {
        let Some((key, readers)) = self.keys.remove_entry(key) else {
            return;
        };
        self.pairs -= readers.clients.len();
        for id in readers.clients {
            if self.on.contains(&id) {
                self.notices.push((id, Some(key.clone())));
            }
        }
    }

    /// Every key may have changed: every tracking client is to be told.
    pub fn flush(&mut self) {
        self.keys.clear();
        self.order.clear();
        self.pairs = 0;
        self.notices.extend(self.on.iter().map(|&id| (id, None)));
    }

    /// What to tell clients since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }
}

/// The RESP3 push that tells a client `key` changed (`None`: every key).
pub(super) fn invalidation(key: Option<Bytes>) -> Reply {
    let keys = key.map_or(Reply::Nil, |k| Reply::Array(vec![Reply::Bulk(k)]));
    Reply::Push(vec![Reply::Bulk(Bytes::from_static(b"invalidate")), keys])
}

/// What a push says, if it is an invalidation: the keys, or `None` for
/// every key.
pub fn parse_invalidation(items: &[Reply]) -> Option<Option<Vec<Bytes>>> {
    let [Reply::Bulk(kind), keys] = items else {
        return None;
    };
    if !kind.eq_ignore_ascii_case(b"invalidate") {
        return None;
    }
    match keys {
        Reply::Nil | Reply::NilArray => Some(None),
        Reply::Array(keys) | Reply::Set(keys) => Some(Some(
            keys.iter()
                .filter_map(|k| match k {
                    Reply::Bulk(k) => Some(k.clone()),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn readers_are_told_once_and_the_key_is_tracked_again_on_the_next_read() {
        let mut t = Tracking::new(100, 1);
        let (a, b, c) = (ClientId(1), ClientId(2), ClientId(3));
        t.set(a, true);
        t.set(b, true);
        t.remember(a, &k("x"));
        t.remember(a, &k("x"));
        t.remember(b, &k("x"));
        t.remember(c, &k("x"));
        assert_eq!(t.pairs(), 2, "a twice is one pair; c does not track");
        t.invalidate(b"x");
        let mut told = t.take_notices();
        told.sort();
        assert_eq!(told, vec![(a, Some(k("x"))), (b, Some(k("x")))]);
        t.invalidate(b"x");
        assert!(t.take_notices().is_empty(), "forgotten once told");
        t.remember(a, &k("x"));
        t.invalidate(b"x");
        assert_eq!(t.take_notices(), vec![(a, Some(k("x")))]);
    }

    #[test]
    fn past_the_bound_the_oldest_keys_are_invalidated_to_make_room() {
        let mut t = Tracking::new(3, 1);
        let a = ClientId(1);
        t.set(a, true);
        for key in ["k1", "k2", "k3"] {
            t.remember(a, &k(key));
        }
        assert!(t.take_notices().is_empty());
        t.remember(a, &k("k4"));
        assert_eq!(t.take_notices(), vec![(a, Some(k("k1")))]);
        assert_eq!(t.pairs(), 3);
        // A key that left and came back is as young as its return.
        t.invalidate(b"k2");
        t.remember(a, &k("k2"));
        let _ = t.take_notices();
        t.remember(a, &k("k5"));
        assert_eq!(t.take_notices(), vec![(a, Some(k("k3")))]);
        // The queue does not grow with keys that come and go.
        for i in 0..10_000 {
            let key = k(&format!("churn{i}"));
            t.remember(a, &key);
            t.invalidate(&key);
        }
        assert!(t.order.len() <= 2 * t.keys.len() + 65, "{}", t.order.len());
    }

    #[test]
    fn a_flush_tells_every_tracking_client_and_departed_ones_are_skipped() {
        let mut t = Tracking::new(100, 1);
        let (a, b) = (ClientId(1), ClientId(2));
        t.set(a, true);
        t.set(b, true);
        t.remember(a, &k("x"));
        t.remember(b, &k("x"));
        t.set(b, false);
        t.invalidate(b"x");
        assert_eq!(t.take_notices(), vec![(a, Some(k("x")))]);
        t.flush();
        assert_eq!(t.take_notices(), vec![(a, None)]);
        assert_eq!(t.pairs(), 0);
    }

    #[test]
    fn invalidation_pushes_are_read_and_written_as_redis_sends_them() {
        let keys = Reply::Array(vec![Reply::Bulk(k("a")), Reply::Bulk(k("b"))]);
        let push = [Reply::Bulk(k("invalidate")), keys];
        assert_eq!(parse_invalidation(&push), Some(Some(vec![k("a"), k("b")])));
        let null = [Reply::Bulk(k("invalidate")), Reply::Nil];
        assert_eq!(parse_invalidation(&null), Some(None));
        let other = [Reply::Bulk(k("message")), Reply::Nil];
        assert_eq!(parse_invalidation(&other), None);
        let mut wire = bytes::BytesMut::new();
        invalidation(Some(k("a"))).encode_proto(crate::reply::Proto::Resp3, &mut wire);
        assert_eq!(&wire[..], b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n");
        wire.clear();
        invalidation(None).encode_proto(crate::reply::Proto::Resp3, &mut wire);
        assert_eq!(&wire[..], b">2\r\n$10\r\ninvalidate\r\n_\r\n");
    }
}
