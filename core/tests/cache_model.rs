//! The proxy's TTL cache against a model: a map of what was last stored
//! under each key, and when. Whatever the operations and however the clock
//! jumps, the cache never answers with a value other than the last one
//! stored, nor with a stale one, stays within its bounds, and, while it has
//! evicted nothing, answers every key the model holds fresh.

use kv_core::cache::ENTRY_OVERHEAD;
use kv_core::{CacheConfig, Instant, Lookup, TtlCache};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

const TTL_MS: u64 = 1_000;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        key: u8,
        value: Option<Vec<u8>>,
    },
    Lookup {
        key: u8,
    },
    Remove {
        key: u8,
    },
    /// Moves the clock on, and purges what expired.
    Advance {
        ms: u64,
        purge: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..12;
    prop_oneof![
        4 => (key.clone(), proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..40)))
            .prop_map(|(key, value)| Op::Insert { key, value }),
        4 => key.clone().prop_map(|key| Op::Lookup { key }),
        1 => key.prop_map(|key| Op::Remove { key }),
        2 => (prop_oneof![0u64..5, 990u64..1_010, 0u64..3_000], any::<bool>())
            .prop_map(|(ms, purge)| Op::Advance { ms, purge }),
    ]
}

fn key_bytes(key: u8) -> Vec<u8> {
    // Lengths vary with the key, so the byte bound is reached unevenly.
    vec![b'k'; 1 + usize::from(key)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_cache_agrees_with_its_model(
        max_entries in prop_oneof![1usize..4, Just(1_000)],
        max_bytes in prop_oneof![Just(usize::MAX), 100usize..400],
        negative in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let config = CacheConfig {
            ttl: Duration::from_millis(TTL_MS),
            max_entries,
            max_bytes,
            negative,
        };
        let mut cache = TtlCache::new(config, 3);
        // key -> (value, stored at)
        let mut model: HashMap<u8, (Option<Vec<u8>>, u64)> = HashMap::new();
        let mut now_ms = 0u64;
        let now = |ms: u64| Instant::from_millis(ms);
        for op in ops {
            match op {
                Op::Insert { key, value } => {
                    cache.insert(&key_bytes(key), value.as_deref(), now(now_ms));
                    // An entry larger than the whole cache is not stored,
                    // and the key's older value is dropped.
                    let charge = key_bytes(key).len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
                    if charge > max_bytes || (value.is_none() && !negative) {
                        model.remove(&key);
                    } else {
                        model.insert(key, (value, now_ms));
                    }
                }
                Op::Remove { key } => {
                    cache.remove(&key_bytes(key));
                    model.remove(&key);
                }
                Op::Advance { ms, purge } => {
                    now_ms += ms;
                    if purge {
                        cache.handle_timeout(now(now_ms));
                        if let Some(next) = cache.poll_timeout() {
                            prop_assert!(next > now(now_ms), "purged up to {now_ms} ms, next expiry {next:?}");
                        }
                    }
                }
                Op::Lookup { key } => {
                    let fresh = model
                        .get(&key)
                        .filter(|(_, at)| now_ms < at + TTL_MS)
                        .cloned();
                    match (cache.lookup(&key_bytes(key), now(now_ms)), fresh) {
                        (Lookup::Hit { value, age }, Some((expected, at))) => {
                            prop_assert_eq!(value.map(<[u8]>::to_vec), expected);
                            prop_assert_eq!(age, Duration::from_millis(now_ms - at));
                        }
                        (Lookup::Hit { value, .. }, None) => {
                            prop_assert!(false, "key {} answered with {:?}, but it is stale or gone", key, value);
                        }
                        (Lookup::Miss, Some(_)) => prop_assert!(
                            cache.stats().evictions > 0,
                            "key {} is fresh and nothing was evicted, yet it missed", key
                        ),
                        (Lookup::Miss, None) => {}
                    }
                }
            }
            prop_assert!(cache.len() <= max_entries);
            prop_assert!(cache.bytes() <= max_bytes);
            prop_assert!(cache.len() <= model.len());
            if cache.is_empty() {
                prop_assert_eq!(cache.bytes(), 0);
            }
        }
    }
}
