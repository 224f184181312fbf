//! The proxy's TTL cache, on an injected clock.
//!
//! An entry is fresh while `now < stored_at + ttl`: at exactly one TTL it is
//! stale. Entries are bounded by count and by bytes, evicted least recently
//! used first, and purged when they expire ([`TtlCache::poll_timeout`] says
//! when the next one does) so that dead entries do not hold memory.

use crate::store::Hasher;
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
/// index slot, its node with the two lists' links, and the allocations cost.
pub const ENTRY_OVERHEAD: usize = 96;

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
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh entry: the value (`None` for a cached "missing") and its age.
    Hit {
        /// The cached value, or `None` if the key was cached as missing.
        value: Option<Bytes>,
        /// How long ago the entry was stored.
        age: Duration,
    },
    /// Nothing fresh.
    Miss,
}

/// "No node": the end of a list.
const NIL: u32 = u32::MAX;

/// One cached entry, linked into two lists: recency (for LRU eviction) and
/// age (for expiry). With one TTL for every entry, the age list is also
/// expiry order, and rewriting a key moves it to the young end: no stale
/// records, no scans, every operation O(1).
#[derive(Debug)]
struct Node {
    key: Bytes,
    value: Option<Bytes>,
    stored_at: Instant,
    lru: Links,
    age: Links,
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
    Lru,
    Age,
}

/// A bounded LRU cache whose entries expire after a TTL.
#[derive(Debug)]
pub struct TtlCache {
    /// Slot indices into `nodes`, hashed by key.
    index: HashTable<u32>,
    nodes: Vec<Node>,
    /// Free slots of `nodes`.
    free: Vec<u32>,
    lru: List,
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
            lru: List::EMPTY,
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

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.index
            .find(self.hash(key), |&i| nodes[i as usize].key[..] == *key)
            .copied()
    }

    fn links(&mut self, i: u32, which: Which) -> &mut Links {
        let node = &mut self.nodes[i as usize];
        match which {
            Which::Lru => &mut node.lru,
            Which::Age => &mut node.age,
        }
    }

    fn list(&mut self, which: Which) -> &mut List {
        match which {
            Which::Lru => &mut self.lru,
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

    /// Looks a key up, counting a hit or a miss; a hit makes the entry the
    /// most recently used.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Lookup {
        let Some(i) = self.find(key) else {
            self.stats.misses += 1;
            return Lookup::Miss;
        };
        let node = &self.nodes[i as usize];
        if now < node.stored_at + self.config.ttl {
            let hit = Lookup::Hit {
                value: node.value.clone(),
                age: now - node.stored_at,
            };
            self.unlink(i, Which::Lru);
            self.push_back(i, Which::Lru);
            self.stats.hits += 1;
            hit
        } else {
            // Stale, and the purge has not come round to it yet.
            self.remove_slot(i);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            Lookup::Miss
        }
    }

    /// Stores a value (`None`: the key is missing upstream) as of `now`.
    ///
    /// Key and value are copied: they usually arrive as slices of a
    /// connection's receive buffer, which they would otherwise keep alive
    /// uncounted by [`CacheConfig::max_bytes`].
    pub fn insert(&mut self, key: Bytes, value: Option<Bytes>, now: Instant) {
        if value.is_none() && !self.config.negative {
            self.remove(&key);
            return;
        }
        let size = charge(&key, value.as_ref());
        if size > self.config.max_bytes || self.config.max_entries == 0 || self.config.ttl.is_zero()
        {
            self.remove(&key);
            return;
        }
        let value = value.map(|v| Bytes::copy_from_slice(&v));
        if let Some(i) = self.find(&key) {
            let node = &mut self.nodes[i as usize];
            let old = charge(&node.key, node.value.as_ref());
            node.value = value;
            node.stored_at = now;
            self.bytes = self.bytes - old + size;
            self.unlink(i, Which::Lru);
            self.push_back(i, Which::Lru);
            self.unlink(i, Which::Age);
            self.push_back(i, Which::Age);
        } else {
            let node = Node {
                key: Bytes::copy_from_slice(&key),
                value,
                stored_at: now,
                lru: Links::NONE,
                age: Links::NONE,
            };
            let i = match self.free.pop() {
                Some(i) => {
                    self.nodes[i as usize] = node;
                    i
                }
                None => {
                    self.nodes.push(node);
                    (self.nodes.len() - 1) as u32
                }
            };
            let (nodes, hasher) = (&self.nodes, &self.hasher);
            self.index
                .insert_unique(hasher.hash_one(&key[..]), i, |&j| {
                    hasher.hash_one(&nodes[j as usize].key[..])
                });
            self.push_back(i, Which::Lru);
            self.push_back(i, Which::Age);
            self.len += 1;
            self.bytes += size;
        }
        while self.len > self.config.max_entries || self.bytes > self.config.max_bytes {
            let victim = self.lru.head;
            if victim == NIL {
                break;
            }
            self.remove_slot(victim);
            self.stats.evictions += 1;
        }
    }

    /// Drops a key (invalidation); whether it was held.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.find(key) {
            Some(i) => {
                self.remove_slot(i);
                true
            }
            None => false,
        }
    }

    fn remove_slot(&mut self, i: u32) {
        self.unlink(i, Which::Lru);
        self.unlink(i, Which::Age);
        let hash = self.hash(&self.nodes[i as usize].key);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let node = &mut self.nodes[i as usize];
        self.bytes -= charge(&node.key, node.value.as_ref());
        // Release the key and value now; the slot itself is reused.
        node.key = Bytes::new();
        node.value = None;
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

fn charge(key: &[u8], value: Option<&Bytes>) -> usize {
    key.len() + value.map_or(0, |v| v.len()) + ENTRY_OVERHEAD
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

    fn value_at(c: &mut TtlCache, key: &str, now: Instant) -> Option<Option<Bytes>> {
        match c.get(key.as_bytes(), now) {
            Lookup::Hit { value, .. } => Some(value),
            Lookup::Miss => None,
        }
    }

    #[test]
    fn fresh_until_just_before_the_ttl_stale_at_it() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b("k"), Some(b("v")), t(1_000));
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
                evictions: 0
            }
        );
        assert!(c.is_empty());
    }

    #[test]
    fn nanosecond_boundary() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b("k"), Some(b("v")), Instant::ZERO);
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
        c.insert(b("a"), Some(b("1")), t(0));
        c.insert(b("b"), Some(b("2")), t(10_000));
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
        c.insert(b("k"), Some(b("old")), t(0));
        c.insert(b("k"), Some(b("new")), t(30_000));
        c.handle_timeout(t(60_000));
        assert_eq!(value_at(&mut c, "k", t(89_999)), Some(Some(b("new"))));
        c.handle_timeout(t(90_000));
        assert!(c.is_empty());
    }

    #[test]
    fn lru_eviction_by_count_and_by_bytes() {
        let config = CacheConfig {
            max_entries: 2,
            ..CacheConfig::default()
        };
        let mut c = TtlCache::new(config, 1);
        c.insert(b("a"), Some(b("1")), t(0));
        c.insert(b("b"), Some(b("2")), t(0));
        assert!(value_at(&mut c, "a", t(1)).is_some()); // a is now most recent
        c.insert(b("c"), Some(b("3")), t(2));
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
            c.insert(b(k), Some(Bytes::from(vec![0u8; 10])), t(0));
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 2 * per);
        assert_eq!(value_at(&mut c, "x", t(1)), None);
        // A value larger than the whole cache is not cached at all.
        c.insert(b("huge"), Some(Bytes::from(vec![0u8; 4 * per])), t(1));
        assert_eq!(value_at(&mut c, "huge", t(1)), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn negative_caching_and_its_switch() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        c.insert(b("gone"), None, t(0));
        assert_eq!(value_at(&mut c, "gone", t(1)), Some(None));
        let mut c = TtlCache::new(
            CacheConfig {
                negative: false,
                ..CacheConfig::default()
            },
            1,
        );
        c.insert(b("gone"), None, t(0));
        assert_eq!(value_at(&mut c, "gone", t(1)), None);
    }

    #[test]
    fn rewrites_reuse_one_slot() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        for i in 0..100_000u64 {
            c.insert(b("hot"), Some(b("v")), t(i));
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
                c.insert(b(k), Some(b(k)), t(round * 10));
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
