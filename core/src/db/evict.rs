//! Eviction: which key goes when memory is over its bound, by Redis's
//! `maxmemory-policy`.
//!
//! - `allkeys-random`, `volatile-random`: any key, any key with a
//!   deadline;
//! - `volatile-ttl`: the key with the soonest deadline, exactly (the
//!   store's deadline heap has it at the top; Redis approximates it by
//!   sampling);
//! - `*-lru`, `*-lfu`: Redis's approximation. Each eviction samples
//!   `maxmemory-samples` keys (all of them when there are no more) into a
//!   pool of the [`POOL_SIZE`] best candidates kept across evictions,
//!   scored by idle time or inverse frequency ([`Access::score`]), and
//!   evicts the best one still there. Scores are those of when a key
//!   entered the pool, as in Redis; a key removed since is skipped.
//!
//! Keys with a deadline are sampled from the deadline heap, so the
//! `volatile-*` policies never consider a key without one, and find none
//! to evict when no key has one.
//!
//! [`Access::score`]: super::access::Access::score

use super::{splitmix, AccessMode, Db, Effect, Found};
use bytes::Bytes;

/// What is evicted when memory is over `maxmemory` (Redis's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Nothing: commands that would grow memory are refused.
    #[default]
    NoEviction,
    /// The least recently used key.
    AllKeysLru,
    /// The least frequently used key.
    AllKeysLfu,
    /// Any key.
    AllKeysRandom,
    /// The least recently used key with a deadline.
    VolatileLru,
    /// The least frequently used key with a deadline.
    VolatileLfu,
    /// Any key with a deadline.
    VolatileRandom,
    /// The key whose deadline is soonest.
    VolatileTtl,
}

impl Policy {
    /// Every policy, in the order Redis lists them (in `CONFIG SET`'s
    /// error, among others).
    pub const ALL: [Policy; 8] = [
        Policy::VolatileLru,
        Policy::VolatileLfu,
        Policy::VolatileRandom,
        Policy::VolatileTtl,
        Policy::AllKeysLru,
        Policy::AllKeysLfu,
        Policy::AllKeysRandom,
        Policy::NoEviction,
    ];

    /// Redis's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::NoEviction => "noeviction",
            Policy::AllKeysLru => "allkeys-lru",
            Policy::AllKeysLfu => "allkeys-lfu",
            Policy::AllKeysRandom => "allkeys-random",
            Policy::VolatileLru => "volatile-lru",
            Policy::VolatileLfu => "volatile-lfu",
            Policy::VolatileRandom => "volatile-random",
            Policy::VolatileTtl => "volatile-ttl",
        }
    }

    /// The policy of a name, any case, as Redis reads it.
    pub fn parse(name: &[u8]) -> Option<Policy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The access metadata the policy needs the store to keep, if any.
    pub fn access_mode(self) -> Option<AccessMode> {
        match self {
            Policy::AllKeysLru | Policy::VolatileLru => Some(AccessMode::Lru),
            Policy::AllKeysLfu | Policy::VolatileLfu => Some(AccessMode::Lfu),
            _ => None,
        }
    }

    /// Whether only keys with a deadline may be evicted.
    pub fn volatile_only(self) -> bool {
        matches!(
            self,
            Policy::VolatileLru
                | Policy::VolatileLfu
                | Policy::VolatileRandom
                | Policy::VolatileTtl
        )
    }
}

/// What one eviction removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// What the key counted for in the store's
    /// [`footprint`](super::Store::footprint).
    pub footprint: u64,
    /// A snapshot shares the key's allocation: the eviction frees nothing
    /// until the snapshot is written out.
    pub shared: bool,
}

/// Candidates kept across evictions (Redis's `EVPOOL_SIZE`).
pub const POOL_SIZE: usize = 16;

/// Draws tried for a key with a deadline before falling back to the
/// soonest one (a draw can hit a stale item of the lazy deadline heap).
const VOLATILE_TRIES: usize = 16;

/// Pool fillings tried before falling back to any key: a filling adds
/// keys that exist, so the first nearly always finds one.
const POOL_ROUNDS: usize = 4;

/// Key buffers longer than this are not kept for reuse: a pool must not
/// pin a huge key's allocation.
const SPARE_KEY_BYTES: usize = 256;

/// A key that may be evicted, with its score when it was sampled (higher
/// is evicted first).
#[derive(Debug)]
struct Candidate {
    score: u64,
    key: Vec<u8>,
}

/// The eviction pool and the generator eviction draws from.
#[derive(Debug)]
pub(super) struct Evictor {
    /// Sorted by score, ascending: the best candidate last.
    pool: Vec<Candidate>,
    /// Key buffers of candidates gone, for the next ones.
    spare: Vec<Vec<u8>>,
    rng: u64,
}

impl Evictor {
    pub(super) fn new(seed: u64) -> Evictor {
        Evictor {
            pool: Vec::new(),
            spare: Vec::new(),
            rng: seed ^ 0xbb67_ae85_84ca_a73b,
        }
    }

    fn draw(&mut self, below: usize) -> usize {
        (splitmix(&mut self.rng) % below as u64) as usize
    }

    /// Forgets the candidates (their scores mean nothing under another
    /// policy).
    fn clear(&mut self) {
        while let Some(c) = self.pool.pop() {
            self.recycle(c.key);
        }
    }

    fn recycle(&mut self, mut key: Vec<u8>) {
        if key.capacity() <= SPARE_KEY_BYTES && self.spare.len() < POOL_SIZE {
            key.clear();
            self.spare.push(key);
        }
    }

    /// Adds a sampled key if it is better than the worst candidate or
    /// there is room (Redis's `evictionPoolPopulate`).
    fn offer(&mut self, score: u64, key: &[u8]) {
        if self.pool.iter().any(|c| c.key == key) {
            return;
        }
        if self.pool.len() == POOL_SIZE {
            if score <= self.pool[0].score {
                return;
            }
            let worst = self.pool.remove(0);
            self.recycle(worst.key);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(key);
        let at = self.pool.partition_point(|c| c.score <= score);
        self.pool.insert(at, Candidate { score, key: buf });
    }
}

impl Db {
    /// Keys removed to bring memory under its bound so far.
    pub fn evicted_keys(&self) -> u64 {
        self.evicted
    }

    /// Prepares for `policy`: the store keeps the access words it needs
    /// (starting them now for every key) and frees those it does not.
    pub fn set_policy(&mut self, policy: Policy) {
        let mode = policy.access_mode();
        if self.store.access().map(|a| a.mode()) != mode {
            self.evictor.clear();
        }
        self.store.track_access(mode, self.now, self.seed);
    }

    /// Evicts one key by `policy`, sampling `samples` keys for the LRU and
    /// LFU policies; `None` if the policy finds no key it may evict. The
    /// removal is recorded (and watchers told) as a deletion.
    pub fn evict_one(&mut self, policy: Policy, samples: usize) -> Option<Evicted> {
        let at = match policy {
            Policy::NoEviction => None,
            Policy::AllKeysRandom => {
                let n = self.store.len();
                (n > 0)
                    .then(|| self.evictor.draw(n))
                    .and_then(|p| self.store.found_at(p))
            }
            Policy::VolatileRandom => self.random_volatile(),
            Policy::VolatileTtl => self.store.soonest_volatile(),
            Policy::AllKeysLru | Policy::AllKeysLfu => self.best_candidate(false, samples),
            Policy::VolatileLru | Policy::VolatileLfu => self.best_candidate(true, samples),
        }?;
        Some(self.evict_at(at))
    }

    fn evict_at(&mut self, at: Found) -> Evicted {
        let gone = self.store.take_at(at);
        self.evicted += 1;
        let evicted = Evicted {
            footprint: gone.entry.footprint() as u64,
            shared: gone.entry.is_shared(),
        };
        if self.observed() {
            let key = Bytes::copy_from_slice(gone.entry.key());
            self.record(Effect::Del { key }, Some(gone));
        }
        evicted
    }

    fn random_volatile(&mut self) -> Option<Found> {
        let items = self.store.deadline_items();
        if self.store.volatile() == 0 || items == 0 {
            return None;
        }
        for _ in 0..VOLATILE_TRIES {
            let i = self.evictor.draw(items);
            if let Some(f) = self.store.deadline_item(i) {
                return Some(f);
            }
        }
        self.store.soonest_volatile()
    }

    /// The best candidate of the pool that still exists (and still has a
    /// deadline, for a `volatile` policy), after adding `samples` sampled
    /// keys to the pool.
    fn best_candidate(&mut self, volatile: bool, samples: usize) -> Option<Found> {
        for _ in 0..POOL_ROUNDS {
            let keys = if volatile {
                self.store.volatile()
            } else {
                self.store.len()
            };
            if keys == 0 {
                return None;
            }
            self.populate(volatile, samples.max(1));
            while let Some(best) = self.evictor.pool.pop() {
                let found = self.store.find(&best.key).filter(|&f| {
                    !volatile || self.store.found(f).is_some_and(|s| s.deadline.is_some())
                });
                self.evictor.recycle(best.key);
                if found.is_some() {
                    return found;
                }
            }
        }
        // Only ghosts, round after round: cannot happen while sampled keys
        // exist, but eviction must not fail for it.
        if volatile {
            self.store.soonest_volatile()
        } else {
            self.store.found_at(0)
        }
    }

    /// Samples `samples` keys into the pool: every key (or every deadline
    /// item) when there are no more than that, else random draws.
    fn populate(&mut self, volatile: bool, samples: usize) {
        let items = if volatile {
            self.store.deadline_items()
        } else {
            self.store.len()
        };
        let every = items <= samples;
        for i in 0..samples.min(items) {
            let i = if every { i } else { self.evictor.draw(items) };
            let found = if volatile {
                self.store.deadline_item(i)
            } else {
                self.store.found_at(i)
            };
            let Some(f) = found else { continue };
            let (Some(pos), Some(slot)) = (self.store.position_at(f), self.store.found(f)) else {
                continue;
            };
            let score = match (self.store.access(), self.store.access_word(pos)) {
                (Some(a), Some(w)) => a.score(w),
                _ => 0,
            };
            self.evictor.offer(score, slot.entry.key());
        }
    }
}
