//! The proxy's TTL cache, on an injected clock.
//!
//! An entry is fresh while `now < stored_at + ttl`: at exactly one TTL it is
//! stale. Entries are bounded by count and by bytes, evicted roughly least
//! recently used first, and purged when they expire ([`TtlCache::poll_timeout`]
//! says when the next one does) so that dead entries do not hold memory.
//!
//! A hit is the proxy's hot path, so it writes nothing but one flag: the
//! entry's key and value share one allocation, and recency is kept the
//! CLOCK way (a hit marks the entry; eviction gives a marked entry a second
//! chance) instead of relinking a list on every hit, which would touch two
//! more entries' memory each time. The profile that prompted this is in
//! `BENCHMARKS.md`.

use crate::db::Hasher;
use crate::time::Instant;
use bytes::Bytes;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::time::Duration;

/// Cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an entry is served after it was stored.
    pub ttl: Duration,
    /// Most entries held.
    pub max_entries: usize,
    /// Most bytes held, counting keys, values and [`ENTRY_OVERHEAD`] each.
    pub max_bytes: usize,
    /// Whether a missing key is cached too (negative caching).
    pub negative: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            max_entries: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            negative: true,
        }
    }
}

/// Bytes charged per entry on top of its key and value, roughly what its
/// index slot, its node with the two lists' links, and its allocation cost.
pub const ENTRY_OVERHEAD: usize = 80;

/// Cache counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing fresh.
    pub misses: u64,
    /// Entries dropped because their TTL passed.
    pub expirations: u64,
    /// Entries dropped to stay within the capacity.
    pub evictions: u64,
    /// Entries dropped because their key changed upstream (a write, a
    /// flush, a lost write's unknown outcome).
    pub invalidations: u64,
}

/// What a lookup found, borrowed from the cache (see [`TtlCache::lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<V> {
    /// A fresh entry: the value (`None` for a cached "missing") and its age.
    Hit {
        /// The cached value, or `None` if the key was cached as missing.
        value: Option<V>,
        /// How long ago the entry was stored.
        age: Duration,
    },
    /// Nothing fresh.
    Miss,
}

impl<V> Lookup<V> {
    /// The same outcome with the value mapped (say, copied out of the cache).
    pub fn map<W>(self, f: impl FnOnce(V) -> W) -> Lookup<W> {
        match self {
            Lookup::Hit { value, age } => Lookup::Hit {
                value: value.map(f),
                age,
            },
            Lookup::Miss => Lookup::Miss,
        }
    }
}

/// "No node": the end of a list.
const NIL: u32 = u32::MAX;

/// One cached entry, linked into two lists: eviction order and age (for
/// expiry). With one TTL for every entry, the age list is also expiry
/// order, and rewriting a key moves it to the young end: no stale records
/// and no scans.
#[derive(Debug)]
struct Node {
    /// `[key length: u32][key][value]`, one allocation; empty in a free slot.
    data: Box<[u8]>,
    stored_at: Instant,
    /// The epoch of the request whose reply stored it (see
    /// [`TtlCache::insert_at`]).
    epoch: u64,
    /// The key is cached as missing (`data` then holds no value bytes).
    missing: bool,
    /// Hit since the eviction hand last passed (the CLOCK bit).
    referenced: bool,
    evict: Links,
    age: Links,
}

impl Node {
    fn pack(key: &[u8], value: Option<&[u8]>) -> Box<[u8]> {
        // Keys are bounded far below 4 GiB by the codec's limits.
        let klen = u32::try_from(key.len()).expect("key shorter than 4 GiB");
        let value = value.unwrap_or_default();
        let mut buf = Vec::with_capacity(4 + key.len() + value.len());
        buf.extend_from_slice(&klen.to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        buf.into_boxed_slice()
    }

    fn key_len(&self) -> usize {
        let mut n = [0u8; 4];
        n.copy_from_slice(&self.data[..4]);
        u32::from_le_bytes(n) as usize
    }

    fn key(&self) -> &[u8] {
        &self.data[4..4 + self.key_len()]
    }

    fn value(&self) -> Option<&[u8]> {
        (!self.missing).then(|| &self.data[4 + self.key_len()..])
    }

    /// Bytes charged for this entry.
    fn charge(&self) -> usize {
        self.data.len() - 4 + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

impl Links {
    const NONE: Links = Links {
        prev: NIL,
        next: NIL,
    };
}

/// Head (oldest) and tail (newest) of one intrusive list.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// Which of a node's two link pairs a list uses.
#[derive(Clone, Copy)]
enum Which {
    Evict,
    Age,
}

/// A bounded cache whose entries expire after a TTL, evicting entries not
/// used lately first (CLOCK, an approximation of LRU).
#[derive(Debug)]
pub struct TtlCache {
    /// Slot indices into `nodes`, hashed by key.
    index: HashTable<u32>,
    nodes: Vec<Node>,
    /// Free slots of `nodes`.
    free: Vec<u32>,
    /// Eviction order: entries in the order they were stored or last given
    /// a second chance; the head is the next candidate.
    evict: List,
    age: List,
    len: usize,
    hasher: Hasher,
    bytes: usize,
    config: CacheConfig,
    stats: CacheStats,
}

impl TtlCache {
    /// An empty cache; `hash_seed` keys its hash function.
    pub fn new(config: CacheConfig, hash_seed: u64) -> Self {
        TtlCache {
            index: HashTable::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            evict: List::EMPTY,
            age: List::EMPTY,
            len: 0,
            hasher: Hasher::with_seed(hash_seed),
            bytes: 0,
            config,
            stats: CacheStats::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Entries held (fresh or not yet purged).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes charged against [`CacheConfig::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                nodes[i as usize].key() == key
            })
            .copied()
    }

    fn links(&mut self, i: u32, which: Which) -> &mut Links {
        let node = &mut self.nodes[i as usize];
        match which {
            Which::Evict => &mut node.evict,
            Which::Age => &mut node.age,
        }
    }

    fn list(&mut self, which: Which) -> &mut List {
        match which {
            Which::Evict => &mut self.evict,
            Which::Age => &mut self.age,
        }
    }

    fn unlink(&mut self, i: u32, which: Which) {
        let Links { prev, next } = *self.links(i, which);
        if prev == NIL {
            self.list(which).head = next;
        } else {
            self.links(prev, which).next = next;
        }
        if next == NIL {
            self.list(which).tail = prev;
        } else {
            self.links(next, which).prev = prev;
        }
        *self.links(i, which) = Links::NONE;
    }

    fn push_back(&mut self, i: u32, which: Which) {
        let tail = self.list(which).tail;
        *self.links(i, which) = Links {
            prev: tail,
            next: NIL,
        };
        if tail == NIL {
            self.list(which).head = i;
        } else {
            self.links(tail, which).next = i;
        }
        self.list(which).tail = i;
    }

    /// Looks a key up, counting a hit or a miss; a hit marks the entry as
    /// recently used. The value is borrowed: copy it out with
    /// [`Lookup::map`] if it must outlive the next change to the cache.
    pub fn lookup(&mut self, key: &[u8], now: Instant) -> Lookup<&[u8]> {
        let Some(i) = self.find(key) else {
            self.stats.misses += 1;
            return Lookup::Miss;
        };
        let ttl = self.config.ttl;
        if now < self.nodes[i as usize].stored_at + ttl {
            self.stats.hits += 1;
            let node = &mut self.nodes[i as usize];
            node.referenced = true;
            Lookup::Hit {
                value: node.value(),
                age: now - node.stored_at,
            }
        } else {
            // Stale, and the purge has not come round to it yet.
            self.remove_slot(i);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            Lookup::Miss
        }
    }

    /// Like [`TtlCache::lookup`], with the value copied out.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Lookup<Bytes> {
        self.lookup(key, now).map(Bytes::copy_from_slice)
    }

    /// The epoch the entry of `key` was stored with, fresh or not.
    pub fn epoch_of(&self, key: &[u8]) -> Option<u64> {
        self.find(key).map(|i| self.nodes[i as usize].epoch)
    }

    /// Stores a value (`None`: the key is missing upstream) as of `now`.
    ///
    /// Key and value are copied: they usually arrive as slices of a
    /// connection's receive buffer, which they would otherwise keep alive
    /// uncounted by [`CacheConfig::max_bytes`].
    pub fn insert(&mut self, key: &[u8], value: Option<&[u8]>, now: Instant) {
        self.insert_at(key, value, now, 0);
    }

    /// Whether the settings let nothing be cached (a zero lifetime, no
    /// room).
    pub fn disabled(&self) -> bool {
        self.config.ttl.is_zero() || self.config.max_entries == 0 || self.config.max_bytes == 0
    }

    /// [`TtlCache::insert`], noting the `epoch` of the request the value
    /// came from: an epoch is a number its user counts up, to tell
    /// entries that come from requests sent before some event from those
    /// sent after it ([`TtlCache::epoch_of`]).
    pub fn insert_at(&mut self, key: &[u8], value: Option<&[u8]>, now: Instant, epoch: u64) {
        if value.is_none() && !self.config.negative {
            self.remove(key);
            return;
        }
        let size = key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD;
        if size > self.config.max_bytes || self.config.max_entries == 0 || self.config.ttl.is_zero()
        {
            self.remove(key);
            return;
        }
        let data = Node::pack(key, value);
        if let Some(i) = self.find(key) {
            let node = &mut self.nodes[i as usize];
            let old = node.charge();
            node.data = data;
            node.missing = value.is_none();
            node.stored_at = now;
            node.epoch = epoch;
            self.bytes = self.bytes - old + size;
            // A rewrite is a use, and restarts the entry's life.
            self.nodes[i as usize].referenced = true;
            self.unlink(i, Which::Age);
            self.push_back(i, Which::Age);
        } else {
            // Room is made first: a new entry joins the list unmarked, so if
            // it were in the list while the hand gave every marked entry a
            // second chance, it would be the one evicted.
            while self.len + 1 > self.config.max_entries
                || self.bytes + size > self.config.max_bytes
            {
                if !self.evict_one() {
                    break;
                }
            }
            let node = Node {
                data,
                stored_at: now,
                epoch,
                missing: value.is_none(),
                referenced: false,
                evict: Links::NONE,
                age: Links::NONE,
            };
            let i = match self.free.pop() {
                Some(i) => {
                    self.nodes[i as usize] = node;
                    i
                }
                None => {
                    self.nodes.push(node);
                    u32::try_from(self.nodes.len() - 1).expect("fewer than 4 G entries")
                }
            };
            let (nodes, hasher) = (&self.nodes, &self.hasher);
            self.index.insert_unique(hasher.hash_one(key), i, |&j| {
                hasher.hash_one(nodes[j as usize].key())
            });
            self.push_back(i, Which::Evict);
            self.push_back(i, Which::Age);
            self.len += 1;
            self.bytes += size;
        }
        // A rewrite may have grown the entry; it is marked, so the others go
        // first.
        while self.len > self.config.max_entries || self.bytes > self.config.max_bytes {
            if !self.evict_one() {
                break;
            }
        }
    }

    /// Evicts the first entry in eviction order that was not used since
    /// it was last considered; the used ones it passes are marked unused and
    /// moved to the back (their second chance). Each mark is cleared once,
    /// so eviction costs O(1) amortized over the hits that set the marks.
    fn evict_one(&mut self) -> bool {
        loop {
            let victim = self.evict.head;
            if victim == NIL {
                return false;
            }
            let node = &mut self.nodes[victim as usize];
            if node.referenced {
                node.referenced = false;
                self.unlink(victim, Which::Evict);
                self.push_back(victim, Which::Evict);
            } else {
                self.remove_slot(victim);
                self.stats.evictions += 1;
                return true;
            }
        }
    }

    /// Drops every entry (the upstream was flushed).
    pub fn clear(&mut self) {
        self.stats.invalidations += self.len as u64;
        self.index.clear();
        self.nodes.clear();
        self.free.clear();
        self.evict = List::EMPTY;
        self.age = List::EMPTY;
        self.len = 0;
        self.bytes = 0;
    }

    /// Drops a key (invalidation); whether it was held.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.find(key) {
            Some(i) => {
                self.remove_slot(i);
                self.stats.invalidations += 1;
                true
            }
            None => false,
        }
    }

    fn remove_slot(&mut self, i: u32) {
        self.unlink(i, Which::Evict);
        self.unlink(i, Which::Age);
        let hash = self.hasher.hash_one(self.nodes[i as usize].key());
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let node = &mut self.nodes[i as usize];
        self.bytes -= node.charge();
        // Release the key and value now; the slot itself is reused.
        node.data = Box::default();
        node.missing = false;
        node.referenced = false;
        self.free.push(i);
        self.len -= 1;
    }

    /// When the next entry expires, so the driver can wake to purge it.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.age.head != NIL)
            .then(|| self.nodes[self.age.head as usize].stored_at + self.config.ttl)
    }

    /// Purges entries whose TTL has passed by `now`. Safe to call at any
    /// time, early or late.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(at) = self.poll_timeout() {
            if at > now {
                break;
            }
            self.remove_slot(self.age.head);
            self.stats.expirations += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// A cache holding at most `n` entries, with `a` and `b` stored at 0.
    fn holding_a_and_b(n: usize) -> TtlCache {
        let config = CacheConfig {
            max_entries: n,
            ..CacheConfig::default()
        };
        let mut c = TtlCache::new(config, 1);
        c.insert(b"a", Some(&b"1"[..]), t(0));
        c.insert(b"b", Some(&b"2"[..]), t(0));
        c
    }

    fn value_at(c: &mut TtlCache, key: &str, now: Instant) -> Option<Option<Bytes>> {
        match c.get(key.as_bytes(), now) {
            Lookup::Hit { value, .. } => Some(value),
            Lookup::Miss => None,
        }
    }

    #[test]
    fn fresh_until_just_before_the_ttl_stale_at_it() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b"k", Some(&b"v"[..]), t(1_000));
        assert_eq!(
            c.get(b"k", t(1_000 + 59_999)),
            Lookup::Hit {
                value: Some(b("v")),
                age: Duration::from_millis(59_999)
            }
        );
        assert_eq!(c.get(b"k", t(1_000 + 60_000)), Lookup::Miss);
        assert_eq!(
            c.stats(),
            &CacheStats {
                hits: 1,
                misses: 1,
                expirations: 1,
                evictions: 0,
                invalidations: 0,
            }
        );
        assert!(c.is_empty());
    }

    #[test]
    fn invalidations_count_what_writes_and_flushes_drop() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        for k in [&b"a"[..], b"b", b"c"] {
            c.insert(k, Some(&b"v"[..]), t(0));
        }
        assert!(c.remove(b"a"));
        assert!(!c.remove(b"a"), "gone already: not counted again");
        c.clear();
        assert_eq!(c.stats().invalidations, 3);
    }

    #[test]
    fn nanosecond_boundary() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b"k", Some(&b"v"[..]), Instant::ZERO);
        let ttl_ns = 60_000_000_000;
        assert!(matches!(
            c.get(b"k", Instant::from_nanos(ttl_ns - 1)),
            Lookup::Hit { .. }
        ));
        assert_eq!(c.get(b"k", Instant::from_nanos(ttl_ns)), Lookup::Miss);
    }

    #[test]
    fn purge_on_timeout_without_lookups() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b"a", Some(&b"1"[..]), t(0));
        c.insert(b"b", Some(&b"2"[..]), t(10_000));
        assert_eq!(c.poll_timeout(), Some(t(60_000)));
        c.handle_timeout(t(59_999));
        assert_eq!(c.len(), 2);
        c.handle_timeout(t(60_000));
        assert_eq!(c.len(), 1);
        assert_eq!(c.poll_timeout(), Some(t(70_000)));
        c.handle_timeout(t(70_000));
        assert!(c.is_empty());
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.stats().expirations, 2);
    }

    #[test]
    fn a_refreshed_entry_is_not_purged_by_its_old_record() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b"k", Some(&b"old"[..]), t(0));
        c.insert(b"k", Some(&b"new"[..]), t(30_000));
        c.handle_timeout(t(60_000));
        assert_eq!(value_at(&mut c, "k", t(89_999)), Some(Some(b("new"))));
        c.handle_timeout(t(90_000));
        assert!(c.is_empty());
    }

    #[test]
    fn lru_eviction_by_count_and_by_bytes() {
        let mut c = holding_a_and_b(2);
        assert!(value_at(&mut c, "a", t(1)).is_some()); // a is now most recent
        c.insert(b"c", Some(&b"3"[..]), t(2));
        assert_eq!(value_at(&mut c, "b", t(3)), None);
        assert!(value_at(&mut c, "a", t(3)).is_some());
        assert!(value_at(&mut c, "c", t(3)).is_some());
        assert_eq!(c.stats().evictions, 1);

        let per = 1 + 10 + ENTRY_OVERHEAD;
        let config = CacheConfig {
            max_bytes: 2 * per,
            ..CacheConfig::default()
        };
        let mut c = TtlCache::new(config, 1);
        for k in ["x", "y", "z"] {
            c.insert(k.as_bytes(), Some(&[0u8; 10][..]), t(0));
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 2 * per);
        assert_eq!(value_at(&mut c, "x", t(1)), None);
        // A value larger than the whole cache is not cached at all.
        c.insert(b"huge", Some(&vec![0u8; 4 * per]), t(1));
        assert_eq!(value_at(&mut c, "huge", t(1)), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_new_entry_is_not_the_one_evicted_to_make_room_for_it() {
        let mut c = holding_a_and_b(2);
        // Both marked: the hand clears them both before it evicts.
        assert!(value_at(&mut c, "a", t(1)).is_some());
        assert!(value_at(&mut c, "b", t(1)).is_some());
        c.insert(b"c", Some(&b"3"[..]), t(2));
        assert_eq!(value_at(&mut c, "c", t(3)), Some(Some(b("3"))));
        assert_eq!(value_at(&mut c, "a", t(3)), None);
        assert_eq!((c.len(), c.stats().evictions), (2, 1));
    }

    #[test]
    fn keys_in_use_survive_a_stream_of_one_off_keys() {
        let config = CacheConfig {
            max_entries: 4,
            ..CacheConfig::default()
        };
        let mut c = TtlCache::new(config, 1);
        c.insert(b"hot", Some(&b"1"[..]), t(0));
        for i in 0..1_000u64 {
            assert!(value_at(&mut c, "hot", t(i)).is_some(), "lost at {i}");
            c.insert(format!("cold{i}").as_bytes(), Some(&b"x"[..]), t(i));
            assert_eq!(c.len(), 4.min(i as usize + 2));
        }
        // Unused, it goes the way of the others within one round.
        for i in 0..4u64 {
            c.insert(format!("new{i}").as_bytes(), Some(&b"x"[..]), t(1_000));
        }
        assert_eq!(value_at(&mut c, "hot", t(1_000)), None);
        assert_eq!(c.stats().evictions, 1_000 + 4 - 3);
    }

    #[test]
    fn negative_caching_and_its_switch() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b"gone", None, t(0));
        assert_eq!(value_at(&mut c, "gone", t(1)), Some(None));
        let mut c = TtlCache::new(
            CacheConfig {
                negative: false,
                ..CacheConfig::default()
            },
            1,
        );
        c.insert(b"gone", None, t(0));
        assert_eq!(value_at(&mut c, "gone", t(1)), None);
    }

    #[test]
    fn rewrites_reuse_one_slot() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        for i in 0..100_000u64 {
            c.insert(b"hot", Some(&b"v"[..]), t(i));
        }
        assert_eq!((c.len(), c.nodes.len()), (1, 1));
        assert_eq!(c.poll_timeout(), Some(t(99_999 + 60_000)));
    }

    #[test]
    fn slots_are_reused_after_removal_and_lists_stay_consistent() {
        let mut c = TtlCache::new(
            CacheConfig {
                max_entries: 3,
                ..CacheConfig::default()
            },
            1,
        );
        for round in 0..50u64 {
            for k in ["a", "b", "c", "d", "e"] {
                c.insert(k.as_bytes(), Some(k.as_bytes()), t(round * 10));
            }
            c.remove(b"d");
            assert!(c.len() <= 3);
            assert!(c.nodes.len() <= 4);
        }
        // "c" and "e" survive (LRU), expiring in insertion order.
        assert_eq!(value_at(&mut c, "e", t(500)), Some(Some(b("e"))));
        c.handle_timeout(t(490 + 60_000));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}
