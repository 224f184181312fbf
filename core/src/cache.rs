//! The proxy's TTL cache, on an injected clock.
//!
//! An entry is fresh while `now < stored_at + ttl`: at exactly one TTL it is
//! stale. Entries are bounded by count and by bytes, evicted least recently
//! used first, and purged when they expire ([`TtlCache::poll_timeout`] says
//! when the next one does) so that dead entries do not hold memory.

use crate::store::Hasher;
use crate::time::Instant;
use bytes::Bytes;
use lru::LruCache;
use std::collections::VecDeque;
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

/// Bytes charged per entry on top of its key and value, roughly what the
/// map, the LRU links and the expiry queue cost.
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

#[derive(Debug)]
struct Entry {
    value: Option<Bytes>,
    stored_at: Instant,
    /// Tells an expiry record for this entry from one for an entry that
    /// has since been replaced under the same key.
    generation: u64,
}

/// A bounded LRU cache whose entries expire after a TTL.
#[derive(Debug)]
pub struct TtlCache {
    entries: LruCache<Bytes, Entry, Hasher>,
    /// Expiry records in expiry order. The TTL is the same for every entry,
    /// so insertion order is expiry order and a queue suffices.
    expiry: VecDeque<(Instant, Bytes, u64)>,
    bytes: usize,
    next_generation: u64,
    config: CacheConfig,
    stats: CacheStats,
}

impl TtlCache {
    /// An empty cache; `hash_seed` keys its hash function.
    pub fn new(config: CacheConfig, hash_seed: u64) -> Self {
        TtlCache {
            entries: LruCache::unbounded_with_hasher(Hasher::with_seed(hash_seed)),
            expiry: VecDeque::new(),
            bytes: 0,
            next_generation: 0,
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
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes charged against [`CacheConfig::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Looks a key up, counting a hit or a miss; a hit makes the entry the
    /// most recently used.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Lookup {
        let ttl = self.config.ttl;
        let found = match self.entries.get(key) {
            Some(e) if now < e.stored_at + ttl => Some(Lookup::Hit {
                value: e.value.clone(),
                age: now - e.stored_at,
            }),
            Some(_) => None,
            None => {
                self.stats.misses += 1;
                return Lookup::Miss;
            }
        };
        match found {
            Some(hit) => {
                self.stats.hits += 1;
                hit
            }
            None => {
                // Stale, and its expiry record has not been processed yet.
                self.remove_entry(key);
                self.stats.expirations += 1;
                self.stats.misses += 1;
                Lookup::Miss
            }
        }
    }

    /// Stores a value (`None`: the key is missing upstream) as of `now`.
    ///
    /// Key and value are copied: they usually arrive as slices of a
    /// connection's receive buffer, which they would otherwise keep alive
    /// uncounted by [`CacheConfig::max_bytes`].
    pub fn insert(&mut self, key: Bytes, value: Option<Bytes>, now: Instant) {
        let key = Bytes::copy_from_slice(&key);
        let value = value.map(|v| Bytes::copy_from_slice(&v));
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
        let generation = self.next_generation;
        self.next_generation += 1;
        self.expiry
            .push_back((now + self.config.ttl, key.clone(), generation));
        let entry = Entry {
            value,
            stored_at: now,
            generation,
        };
        if let Some((old_key, old)) = self.entries.push(key, entry) {
            // `push` hands back the entry it replaced.
            self.bytes -= charge(&old_key, old.value.as_ref());
        }
        self.bytes += size;
        while self.entries.len() > self.config.max_entries || self.bytes > self.config.max_bytes {
            let Some((k, e)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= charge(&k, e.value.as_ref());
            self.stats.evictions += 1;
        }
        self.compact_expiry_queue();
    }

    /// Drops a key (invalidation); whether it was held.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.remove_entry(key)
    }

    fn remove_entry(&mut self, key: &[u8]) -> bool {
        match self.entries.pop_entry(key) {
            Some((k, e)) => {
                self.bytes -= charge(&k, e.value.as_ref());
                true
            }
            None => false,
        }
    }

    /// When the next entry expires, so the driver can wake to purge it.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.front().map(|(at, _, _)| *at)
    }

    /// Purges entries whose TTL has passed by `now`. Safe to call at any
    /// time, early or late.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.expiry.front() {
            if *at > now {
                break;
            }
            let Some((_, key, generation)) = self.expiry.pop_front() else {
                break;
            };
            if self
                .entries
                .peek(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.remove_entry(&key);
                self.stats.expirations += 1;
            }
        }
    }

    /// Records for replaced or evicted entries stay queued until their time
    /// comes; when they outnumber live entries, drop them so the queue stays
    /// proportional to the cache.
    fn compact_expiry_queue(&mut self) {
        if self.expiry.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.expiry
                .retain(|(_, k, g)| entries.peek(k).is_some_and(|e| e.generation == *g));
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
    fn expiry_queue_stays_bounded_under_rewrites() {
        let mut c = TtlCache::new(CacheConfig::default(), 1);
        for i in 0..100_000u64 {
            c.insert(b("hot"), Some(b("v")), t(i));
        }
        assert!(c.expiry.len() <= 2 * c.len() + 1025);
    }
}
