//! Per-key access metadata for the LRU and LFU eviction policies: one
//! 32-bit word per store position, as Redis keeps 24 bits in each object.
//!
//! - **LRU**: the word is the time of the last access, in ticks of
//!   [`LRU_TICK_MS`] (wrapping). Idle time is the difference from now,
//!   wrapping too, so it is right for any idle time under 2³² ticks
//!   (about 497 days); a key idle longer looks young again, as it does in
//!   Redis after 194 days.
//! - **LFU**: the top 24 bits are the minute of the last decrement (unix
//!   minutes, wrapping every 31 years), the low 8 bits a logarithmic
//!   access counter, as in Redis: a new key starts at [`LFU_INIT`], an
//!   access increments the counter with a probability that falls as it
//!   grows ([`LFU_LOG_FACTOR`]), and each [`LFU_DECAY_MINUTES`] the key was
//!   not accessed take one off it. Like Redis, the elapsed time is counted
//!   in whole minutes of the clock, so the first decrement comes at the
//!   next minute boundary, not a full minute after the access.
//!
//! Time is the driver's (set with [`Access::set_time`]); the probabilistic
//! increment draws from a generator seeded by the server's configuration,
//! as the core reads no random source.

/// Which metadata the words hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// Last access time, for the `*-lru` policies.
    Lru,
    /// Logarithmic access frequency, for the `*-lfu` policies.
    Lfu,
}

/// The LRU clock's resolution: finer than Redis's second, so that keys
/// written in one burst still have an order.
pub const LRU_TICK_MS: u64 = 10;

/// A new key's LFU counter: high enough that a key is not evicted before
/// it had a chance to be read (Redis's `LFU_INIT_VAL`).
pub const LFU_INIT: u32 = 5;

/// Redis's default `lfu-log-factor`: about a million accesses take the
/// counter to 255.
pub const LFU_LOG_FACTOR: u32 = 10;

/// Redis's default `lfu-decay-time`, in minutes.
pub const LFU_DECAY_MINUTES: u32 = 1;

const MINUTE_BITS: u32 = 24;
const MINUTE_MASK: u32 = (1 << MINUTE_BITS) - 1;

/// The words, by position, and what they need to be kept.
#[derive(Debug, Clone)]
pub struct Access {
    mode: AccessMode,
    /// One per store position; the store moves them with its keys.
    pub(super) words: Vec<u32>,
    now_ms: u64,
    rng: u64,
}

impl Access {
    /// Metadata of `mode` for `len` keys, each as if just written at
    /// `now_ms` (nothing is known of what came before).
    pub fn new(mode: AccessMode, len: usize, now_ms: u64, seed: u64) -> Access {
        let mut a = Access {
            mode,
            words: Vec::new(),
            now_ms,
            rng: seed ^ 0x6a09_e667_f3bc_c909,
        };
        a.words = vec![a.fresh(); len];
        a
    }

    /// What is kept.
    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// The driver's unix time in milliseconds.
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn lru_clock(&self) -> u32 {
        (self.now_ms / LRU_TICK_MS) as u32
    }

    fn minutes(&self) -> u32 {
        (self.now_ms / 60_000) as u32 & MINUTE_MASK
    }

    /// The word of a key written now for the first time.
    pub fn fresh(&self) -> u32 {
        match self.mode {
            AccessMode::Lru => self.lru_clock(),
            AccessMode::Lfu => self.minutes() << 8 | LFU_INIT,
        }
    }

    /// The word of a key with `word` accessed now.
    pub fn touched(&mut self, word: u32) -> u32 {
        match self.mode {
            AccessMode::Lru => self.lru_clock(),
            AccessMode::Lfu => {
                let counter = self.log_increment(self.frequency(word));
                self.minutes() << 8 | counter
            }
        }
    }

    /// The LFU counter of `word` after the decay due by now (Redis's
    /// `LFUDecrAndReturn`): what `OBJECT FREQ` shows.
    pub fn frequency(&self, word: u32) -> u32 {
        let counter = word & 0xff;
        let elapsed = self.minutes().wrapping_sub(word >> 8) & MINUTE_MASK;
        counter.saturating_sub(elapsed / LFU_DECAY_MINUTES)
    }

    /// Milliseconds since the access `word` records (LRU), to the tick.
    pub fn idle_ms(&self, word: u32) -> u64 {
        u64::from(self.lru_clock().wrapping_sub(word)) * LRU_TICK_MS
    }

    /// How good a candidate for eviction the key with `word` is: higher
    /// is evicted first (idle time for LRU, inverse frequency for LFU).
    pub fn score(&self, word: u32) -> u64 {
        match self.mode {
            AccessMode::Lru => self.idle_ms(word),
            AccessMode::Lfu => u64::from(255 - self.frequency(word)),
        }
    }

    /// Redis's `LFULogIncr`: +1 with probability 1 / ((c - init) ·
    /// factor + 1), saturating at 255.
    fn log_increment(&mut self, counter: u32) -> u32 {
        if counter >= 255 {
            return 255;
        }
        let base = u64::from(counter.saturating_sub(LFU_INIT));
        let odds = base * u64::from(LFU_LOG_FACTOR) + 1;
        if super::splitmix(&mut self.rng) % odds == 0 {
            counter + 1
        } else {
            counter
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_idle_time_counts_from_the_last_access_across_the_wrap() {
        let mut a = Access::new(AccessMode::Lru, 0, 1_000, 1);
        let w = a.fresh();
        a.set_time(1_250);
        assert_eq!(a.idle_ms(w), 250);
        let w = a.touched(w);
        a.set_time(1_259);
        assert_eq!(a.idle_ms(w), 0, "within one tick");
        // Across the wrap of the 32-bit tick counter.
        let wrap = (u64::from(u32::MAX) + 1) * LRU_TICK_MS;
        a.set_time(wrap - 50);
        let w = a.fresh();
        a.set_time(wrap + 70);
        assert_eq!(a.idle_ms(w), 120);
        assert!(a.score(w) > a.score(a.fresh()));
    }

    #[test]
    fn lfu_counters_start_at_init_grow_logarithmically_and_saturate() {
        let mut a = Access::new(AccessMode::Lfu, 0, 0, 7);
        let mut w = a.fresh();
        assert_eq!(a.frequency(w), LFU_INIT);
        // Below and at the initial value every access counts.
        let low = a.minutes() << 8 | 2;
        let once = a.touched(low);
        assert_eq!(a.frequency(once), 3);
        for _ in 0..1_000 {
            w = a.touched(w);
        }
        // 1 / ((c - 5) * 10 + 1): about sqrt(2 * 1000 / 10) = 14 above init.
        let f = a.frequency(w);
        assert!((12..=25).contains(&f), "after 1,000 accesses: {f}");
        let top = a.minutes() << 8 | 255;
        assert_eq!(a.touched(top) & 0xff, 255);
        assert!(a.score(a.fresh()) > a.score(w), "rarer is evicted first");
    }

    #[test]
    fn lfu_decays_by_one_per_minute_of_the_clock_from_the_boundary() {
        // Accessed one millisecond before a minute boundary.
        let mut a = Access::new(AccessMode::Lfu, 0, 10 * 60_000 - 1, 3);
        let w = a.minutes() << 8 | 20;
        assert_eq!(a.frequency(w), 20);
        a.set_time(10 * 60_000);
        assert_eq!(a.frequency(w), 19, "the boundary counts as a minute");
        a.set_time(11 * 60_000 - 1);
        assert_eq!(a.frequency(w), 19);
        a.set_time(11 * 60_000);
        assert_eq!(a.frequency(w), 18);
        a.set_time(60 * 60_000);
        assert_eq!(a.frequency(w), 0, "never below zero");
        // An access restarts the decay from now.
        let nine = a.minutes() << 8 | 9;
        let w = a.touched(nine);
        assert!(a.frequency(w) >= 9);
        a.set_time(60 * 60_000 + 59_999);
        assert!(a.frequency(w) >= 9);
    }
}
