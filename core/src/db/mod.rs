//! The database layer between the command families and the [`Store`].
//!
//! Every write goes through [`Db`], which applies it to the store and
//! records its [`Effect`]: the key set to a value (with its deadline), its
//! deadline changed, the key deleted, or every key gone. The server turns
//! those effects into log records; the proxy writes the effects an
//! acknowledged reply implies through to its cache. The log is derived
//! from the effects alone, so a new command that writes through `Db` is
//! logged without another line of code.
//!
//! Time is the driver's: [`Db::set_time`] gives the unix time in
//! milliseconds before commands run, and every read treats a key past its
//! deadline as missing (and removes it, recording the removal) before it
//! is seen, so no command can observe an expired key. Active expiry
//! ([`Db::expire_due`]) removes the rest with bounded work per call.
//!
//! `WATCH` is kept here too, since every change of a key passes through
//! here: a watched key carries a version that each change of it bumps.
//!
//! So is eviction ([`evict`]): an evicted key is removed, logged and
//! signalled to its watchers as an expired one is, and every lookup
//! counts as an access for the LRU and LFU policies ([`access`]), except
//! those Redis makes without touching the key (`EXISTS`, `TTL`, `OBJECT`).

pub mod access;
mod dump;
pub mod evict;
pub mod store;

pub use access::AccessMode;
pub use dump::{DumpStream, COLLECT as DUMP_COLLECT, RUN as DUMP_RUN};
pub use evict::{Evicted, Policy};
pub use store::{Entry, Found, Hasher, Slot, SlotRef, Store, ENTRY_OVERHEAD};

use bytes::Bytes;
use std::collections::HashMap;

/// A change to the keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `key` now holds `value`, expiring at `deadline` (unix ms) if given.
    Set {
        /// The key written.
        key: Bytes,
        /// Its new value.
        value: Bytes,
        /// When it expires; `None`: never.
        deadline: Option<u64>,
    },
    /// `key` keeps its value and now expires at `deadline` (`None`: never).
    Expire {
        /// The key whose deadline changed.
        key: Bytes,
        /// The new deadline.
        deadline: Option<u64>,
    },
    /// `key` was removed.
    Del {
        /// The key removed.
        key: Bytes,
    },
    /// Every key was removed (`FLUSHALL`, `FLUSHDB`).
    Flush,
}

impl Effect {
    /// The key the effect is about (`None` for a flush).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Effect::Set { key, .. } | Effect::Expire { key, .. } | Effect::Del { key } => Some(key),
            Effect::Flush => None,
        }
    }
}

/// One effect of a command, with what the key held before (to undo it if
/// the log cannot store it).
#[derive(Debug, Clone)]
pub struct Change {
    /// What changed.
    pub effect: Effect,
    /// What the key held before the change; `None` if it did not exist.
    /// Empty for a flush, whose before is [`Change::flushed`].
    pub before: Option<Slot>,
    /// For a flush: every slot it removed.
    pub flushed: Vec<Slot>,
}

/// A key as `WATCH` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    key: Bytes,
    version: u64,
    /// It existed, unexpired, when watched: its expiry since then is a
    /// change, as Redis counts it.
    live: bool,
}

impl Watched {
    /// The watched key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }
}

/// The keyspace, as the command families see it.
#[derive(Debug)]
pub struct Db {
    store: Store,
    /// Changes made since [`Db::take_changes`] last ran, in order.
    changes: Vec<Change>,
    /// Whether anyone consumes the changes (the log): an in-memory server
    /// with nobody listening does not pay for recording them.
    recording: bool,
    /// The unix time in milliseconds, as the driver last said.
    now: u64,
    /// Keys removed because their deadline passed.
    expired: u64,
    /// Watched keys: how many watchers and the version of the last change.
    watched: HashMap<Bytes, (u32, u64)>,
    /// Counts changes to watched keys (the source of versions).
    version: u64,
    /// State of the generator `RANDOMKEY` draws from (seeded, as the core
    /// reads no random source).
    rng: u64,
    /// The snapshot of the last `DUMP`, for the next one to share.
    dumps: dump::DumpCache,
    /// Keys removed to bring memory under its bound.
    evicted: u64,
    /// The candidates and generator of eviction.
    evictor: evict::Evictor,
    /// Seeds what eviction and the access words draw (from the hash seed).
    seed: u64,
    /// Whether clients track keys (`CLIENT TRACKING`): every changed key is
    /// then signalled, for the server to send invalidations.
    signaling: bool,
    /// Keys changed since [`Db::take_signals`] last ran (`None`: every
    /// key, a flush), in order.
    signals: Vec<Option<Bytes>>,
}

/// How many expired keys one call of [`Db::expire_due`] removes at most:
/// small enough that no client waits long behind it.
pub const EXPIRE_BUDGET: usize = 200;

impl Db {
    /// An empty database whose hash function is keyed by `hash_seed`.
    pub fn new(hash_seed: u64) -> Db {
        Db {
            store: Store::new(hash_seed),
            changes: Vec::new(),
            recording: false,
            now: 0,
            expired: 0,
            watched: HashMap::new(),
            version: 0,
            rng: hash_seed ^ 0x9e37_79b9_7f4a_7c15,
            dumps: dump::DumpCache::default(),
            evicted: 0,
            evictor: evict::Evictor::new(hash_seed),
            seed: hash_seed,
            signaling: false,
            signals: Vec::new(),
        }
    }

    /// From now on, writes record their changes for [`Db::take_changes`]
    /// (the server turns this on with its log).
    pub fn record_changes(&mut self) {
        self.recording = true;
    }

    /// The driver's unix time, in milliseconds: what deadlines are
    /// compared with until the next call.
    pub fn set_time(&mut self, now_ms: u64) {
        self.now = now_ms;
        self.store.set_access_time(now_ms);
    }

    /// The time deadlines are compared with (unix milliseconds).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Keys removed by expiry so far.
    pub fn expired_keys(&self) -> u64 {
        self.expired
    }

    /// Whether anything is told of changes (the log, `WATCH`, tracking):
    /// if not, a write need not build its effect.
    #[inline]
    fn observed(&self) -> bool {
        self.recording || self.signaling || !self.watched.is_empty()
    }

    /// Turns the signals of changed keys on or off (see
    /// [`Db::take_signals`]); off drops those not taken.
    pub fn signal_changes(&mut self, on: bool) {
        self.signaling = on;
        if !on {
            self.signals.clear();
        }
    }

    /// The keys changed since the last call, oldest first (`None`: every
    /// key was removed), while signals are on. Every change is here
    /// whatever made it: a command, expiry, eviction, or the undo of a
    /// write the log could not store.
    pub fn take_signals(&mut self) -> std::vec::Drain<'_, Option<Bytes>> {
        self.signals.drain(..)
    }

    /// Whether signals wait to be taken.
    #[inline]
    pub fn has_signals(&self) -> bool {
        !self.signals.is_empty()
    }

    fn record(&mut self, effect: Effect, before: Option<Slot>) {
        if !self.watched.is_empty() {
            if let Some(key) = effect.key() {
                self.touch(key);
            }
        }
        if self.signaling {
            if let Some(key) = effect.key() {
                self.signals.push(Some(key.clone()));
            }
        }
        if self.recording {
            self.changes.push(Change {
                effect,
                before,
                flushed: Vec::new(),
            });
        }
    }

    fn touch(&mut self, key: &[u8]) {
        if let Some((_, v)) = self.watched.get_mut(key) {
            self.version += 1;
            *v = self.version;
        }
    }

    /// What `key` holds, unless it has expired (an expired key is removed
    /// here, and its removal recorded).
    #[inline]
    pub fn slot(&mut self, key: &[u8]) -> Option<SlotRef<'_>> {
        let at = self.live(key)?;
        self.store.found(at)
    }

    /// Where `key` is in the store, unless it has expired; an access to
    /// it.
    #[inline]
    fn live(&mut self, key: &[u8]) -> Option<Found> {
        let at = self.peek(key)?;
        self.store.touch(at);
        Some(at)
    }

    /// Where `key` is in the store, unless it has expired, without
    /// counting as an access (Redis's `LOOKUP_NOTOUCH`).
    #[inline]
    fn peek(&mut self, key: &[u8]) -> Option<Found> {
        let at = self.store.find(key)?;
        if self.store.found(at).is_some_and(|s| s.expired(self.now)) {
            self.expire_at(at);
            return None;
        }
        Some(at)
    }

    fn expire_at(&mut self, at: Found) {
        let gone = self.store.take_at(at);
        self.expired += 1;
        let key = Bytes::copy_from_slice(gone.entry.key());
        self.record(Effect::Del { key }, Some(gone));
    }

    /// The value of `key`, unless missing or expired.
    #[inline]
    pub fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        self.slot(key).map(|s| s.entry.value())
    }

    /// Whether `key` exists (and has not expired). Not an access.
    pub fn contains(&mut self, key: &[u8]) -> bool {
        self.peek(key).is_some()
    }

    /// Whether `key` exists, counting as an access (`TOUCH`).
    pub fn touch_key(&mut self, key: &[u8]) -> bool {
        self.live(key).is_some()
    }

    /// The deadline of `key`: `None` if missing, `Some(None)` if it never
    /// expires. Not an access.
    pub fn deadline(&mut self, key: &[u8]) -> Option<Option<u64>> {
        let at = self.peek(key)?;
        self.store.found(at).map(|s| s.deadline)
    }

    /// The access word of `key` (see [`access`]), unless it is missing;
    /// `Some(None)` if no access words are kept. Not an access.
    pub fn access_word(&mut self, key: &[u8]) -> Option<Option<u32>> {
        let at = self.peek(key)?;
        let pos = self.store.position_at(at)?;
        Some(self.store.access_word(pos))
    }

    /// Sets `key` to `value`, expiring at `deadline` (`None`: never, which
    /// clears any deadline it had, as `SET` does). The arguments are the
    /// command's own (slices of the receive buffer): the effect shares them
    /// until it is consumed.
    pub fn set(&mut self, key: &Bytes, value: &Bytes, deadline: Option<u64>) {
        if deadline.is_some_and(|d| d <= self.now) {
            // Already past: the write's outcome is a missing key.
            self.del(key);
            return;
        }
        let before = self.store.put(key, value, deadline);
        if self.observed() {
            let effect = Effect::Set {
                key: key.clone(),
                value: value.clone(),
                deadline,
            };
            self.record(effect, before);
        }
    }

    /// Sets `key` to `value`, keeping the deadline it has (`INCR`,
    /// `APPEND`, `SETRANGE`, `SET … KEEPTTL`).
    pub fn overwrite(&mut self, key: &Bytes, value: &[u8]) {
        match self.live(key) {
            Some(at) => self.overwrite_at(at, key, value),
            None => self.set(key, &Bytes::copy_from_slice(value), None),
        }
    }

    /// Where `key` is in the store, unless missing or expired: for a
    /// read-modify-write (`INCR`) that looks the key up once.
    #[inline]
    pub fn find(&mut self, key: &[u8]) -> Option<Found> {
        self.live(key)
    }

    /// The value of the key found at `at` (by [`Db::find`], with no write
    /// since).
    #[inline]
    pub fn value_at(&self, at: Found) -> &[u8] {
        self.store.found(at).map_or(&[][..], |s| s.entry.value())
    }

    /// Replaces the value of `key`, found at `at` (by [`Db::find`], with no
    /// write since), keeping its deadline.
    pub fn overwrite_at(&mut self, at: Found, key: &Bytes, value: &[u8]) {
        let observed = self.observed();
        if !observed && self.store.overwrite_in_place(at, value) {
            return;
        }
        let before = self.store.replace_value(at, value);
        if observed {
            let effect = Effect::Set {
                key: key.clone(),
                value: Bytes::copy_from_slice(value),
                deadline: before.deadline,
            };
            self.record(effect, Some(before));
        }
    }

    /// Gives `key` a new deadline (`None`: never). A deadline not after now
    /// removes the key, as Redis does. Whether the key existed.
    pub fn expire(&mut self, key: &Bytes, deadline: Option<u64>) -> bool {
        let Some(at) = self.live(key) else {
            return false;
        };
        if deadline.is_some_and(|d| d <= self.now) {
            let gone = self.store.take_at(at);
            self.record(Effect::Del { key: key.clone() }, Some(gone));
            return true;
        }
        // Shared only once its header has changed: cloned first, the entry
        // would have to be copied to flag the deadline.
        let old = self.store.set_deadline(at, deadline);
        let before = self.store.found(at).map(|s| Slot {
            entry: s.entry.clone(),
            deadline: old,
        });
        let effect = Effect::Expire {
            key: key.clone(),
            deadline,
        };
        self.record(effect, before);
        true
    }

    /// Removes `key`; whether it existed (unexpired).
    pub fn del(&mut self, key: &Bytes) -> bool {
        let Some(at) = self.live(key) else {
            return false;
        };
        let before = self.store.take_at(at);
        self.record(Effect::Del { key: key.clone() }, Some(before));
        true
    }

    /// Removes every key; how many there were.
    pub fn flush(&mut self) -> usize {
        let n = self.store.len();
        if !self.watched.is_empty() {
            // Only watched keys that existed are changed by a flush.
            let existing: Vec<Bytes> = self
                .watched
                .keys()
                .filter(|k| self.store.slot(k).is_some_and(|s| !s.expired(self.now)))
                .cloned()
                .collect();
            for k in existing {
                self.touch(&k);
            }
        }
        let flushed = if self.recording {
            self.store.slots().collect()
        } else {
            Vec::new()
        };
        self.store.clear();
        if self.signaling {
            self.signals.push(None);
        }
        if self.recording {
            self.changes.push(Change {
                effect: Effect::Flush,
                before: None,
                flushed,
            });
        }
        n
    }

    /// Removes up to [`EXPIRE_BUDGET`] keys whose deadline has passed;
    /// how many. Called by the server's timer.
    pub fn expire_due(&mut self) -> usize {
        let mut gone = Vec::new();
        let now = self.now;
        self.store
            .expire_due(now, EXPIRE_BUDGET, |slot| gone.push(slot));
        let n = gone.len();
        for slot in gone {
            self.expired += 1;
            let key = Bytes::copy_from_slice(slot.entry.key());
            self.record(Effect::Del { key }, Some(slot));
        }
        n
    }

    /// When active expiry next has something to do (unix ms).
    pub fn next_deadline(&self) -> Option<u64> {
        self.store.next_deadline()
    }

    /// Every live pair, sorted by key, as a reply to write a piece at a
    /// time (see [`DumpStream`]).
    pub fn dump(&mut self) -> DumpStream {
        self.dumps.stream(&mut self.store, self.now)
    }

    /// Whether a `DUMP` reply still holds a snapshot of the store.
    pub fn dump_snapshot_out(&self) -> bool {
        self.dumps.snapshot_out()
    }

    /// The store, read-only (for snapshots, cursors and `INFO`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Removes the key at store position `i` if it has expired (for
    /// commands that walk the store: `SCAN`, `KEYS`, `RANDOMKEY`);
    /// whether it had.
    pub fn expire_position(&mut self, i: usize) -> bool {
        let Some(at) = self.store.found_at(i) else {
            return false;
        };
        if self.store.found(at).is_some_and(|s| s.expired(self.now)) {
            self.expire_at(at);
            return true;
        }
        false
    }

    /// A random position in the store (splitmix64), or `None` if empty.
    pub fn random_position(&mut self) -> Option<usize> {
        let len = self.store.len();
        if len == 0 {
            return None;
        }
        Some((splitmix(&mut self.rng) % len as u64) as usize)
    }

    /// Applies an effect replayed from the log: not recorded again. A
    /// deadline already past at the replay's time drops the key.
    pub fn replay(&mut self, effect: &Effect) {
        match effect {
            Effect::Set {
                key,
                value,
                deadline,
            } => {
                if deadline.is_some_and(|d| d <= self.now) {
                    self.store.remove(key);
                } else {
                    self.store.put(key, value, *deadline);
                }
            }
            Effect::Expire { key, deadline } => {
                if deadline.is_some_and(|d| d <= self.now) {
                    self.store.remove(key);
                } else if let Some(at) = self.store.find(key) {
                    self.store.set_deadline(at, *deadline);
                }
            }
            Effect::Del { key } => {
                self.store.remove(key);
            }
            Effect::Flush => self.store.clear(),
        }
    }

    /// Puts a change back as it was before (to roll back a write the log
    /// failed to store): not recorded.
    pub fn undo(&mut self, change: Change) {
        if self.signaling {
            // A client may have read the value being taken back.
            self.signals.push(change.effect.key().cloned());
        }
        match change.effect {
            Effect::Flush => {
                for slot in change.flushed {
                    self.store.restore(slot);
                }
            }
            Effect::Set { key, .. } | Effect::Expire { key, .. } | Effect::Del { key } => {
                match change.before {
                    Some(slot) => self.store.restore(slot),
                    None => {
                        self.store.remove(&key);
                    }
                }
            }
        }
    }

    /// The changes made since the last call, oldest first.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, Change> {
        self.changes.drain(..)
    }

    /// Watches `key` for a transaction: what to give [`Db::changed_since`].
    pub fn watch(&mut self, key: &Bytes) -> Watched {
        let live = self.contains(key);
        let (n, version) = self.watched.entry(key.clone()).or_insert((0, 0));
        *n += 1;
        Watched {
            key: key.clone(),
            version: *version,
            live,
        }
    }

    /// How many distinct keys are watched.
    pub fn watched_keys(&self) -> usize {
        self.watched.len()
    }

    /// Stops watching a key watched with [`Db::watch`].
    pub fn unwatch(&mut self, w: &Watched) {
        if let Some((n, _)) = self.watched.get_mut(&w.key) {
            *n -= 1;
            if *n == 0 {
                self.watched.remove(&w.key);
            }
        }
    }

    /// Whether a watched key changed since it was watched: written,
    /// removed, given a deadline, or expired (if it was live then).
    pub fn changed_since(&mut self, w: &Watched) -> bool {
        let changed = self
            .watched
            .get(&w.key)
            .is_some_and(|&(_, v)| v != w.version);
        changed || (w.live && self.store.slot(&w.key).is_none_or(|s| s.expired(self.now)))
    }
}

/// The next number of the splitmix64 generator whose state is `state`:
/// what the core draws its random choices from, seeded by the driver.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn nothing_is_recorded_until_asked_for() {
        let mut db = Db::new(1);
        db.set(&b("k"), &b("1"), None);
        assert!(db.del(&b("k")));
        assert_eq!(db.take_changes().count(), 0);
    }

    #[test]
    fn writes_report_their_effects_with_what_they_replaced() {
        let mut db = Db::new(1);
        db.record_changes();
        db.set(&b("k"), &b("1"), None);
        db.set(&b("k"), &b("2"), Some(50));
        assert!(db.del(&b("k")));
        assert!(!db.del(&b("k")), "deleting a missing key changes nothing");
        let changes: Vec<Change> = db.take_changes().collect();
        let effects: Vec<&Effect> = changes.iter().map(|c| &c.effect).collect();
        assert_eq!(
            effects,
            [
                &Effect::Set {
                    key: b("k"),
                    value: b("1"),
                    deadline: None
                },
                &Effect::Set {
                    key: b("k"),
                    value: b("2"),
                    deadline: Some(50)
                },
                &Effect::Del { key: b("k") },
            ]
        );
        let before: Vec<Option<&[u8]>> = changes
            .iter()
            .map(|c| c.before.as_ref().map(|s| s.entry.value()))
            .collect();
        assert_eq!(before, [None, Some(&b"1"[..]), Some(&b"2"[..])]);
    }

    #[test]
    fn a_key_is_there_until_its_deadline_and_gone_at_it() {
        let mut db = Db::new(1);
        db.record_changes();
        db.set_time(1_000);
        db.set(&b("k"), &b("v"), Some(1_100));
        db.set_time(1_099);
        assert_eq!(db.get(b"k"), Some(&b"v"[..]));
        db.set_time(1_100);
        assert_eq!(db.get(b"k"), None);
        assert_eq!(db.expired_keys(), 1);
        let effects: Vec<Effect> = db.take_changes().map(|c| c.effect).collect();
        assert_eq!(effects.last(), Some(&Effect::Del { key: b("k") }));
        assert!(db.store().is_empty(), "removed on access");
    }

    #[test]
    fn active_expiry_removes_due_keys_within_its_budget() {
        let mut db = Db::new(1);
        db.set_time(0);
        for i in 0..(EXPIRE_BUDGET + 10) {
            db.set(&Bytes::from(i.to_string()), &b("v"), Some(100));
        }
        db.set(&b("later"), &b("v"), Some(200));
        db.set_time(99);
        assert_eq!(db.expire_due(), 0);
        db.set_time(100);
        assert_eq!(db.expire_due(), EXPIRE_BUDGET);
        assert_eq!(db.expire_due(), 10);
        assert_eq!(db.next_deadline(), Some(200));
        assert_eq!(db.store().len(), 1);
    }

    #[test]
    fn a_deadline_in_the_past_removes_the_key() {
        let mut db = Db::new(1);
        db.set_time(500);
        db.set(&b("k"), &b("v"), None);
        assert!(db.expire(&b("k"), Some(500)));
        assert!(!db.contains(b"k"));
        db.set(&b("k"), &b("v"), Some(400));
        assert!(!db.contains(b"k"));
    }

    #[test]
    fn watched_keys_change_with_writes_and_expiry() {
        let mut db = Db::new(1);
        db.set_time(0);
        db.set(&b("k"), &b("v"), Some(10));
        let w = db.watch(&b("k"));
        assert!(!db.changed_since(&w));
        db.set_time(10);
        assert!(db.changed_since(&w), "expired since it was watched");
        let missing = db.watch(&b("m"));
        db.flush();
        assert!(!db.changed_since(&missing), "a flush does not touch it");
        db.set(&b("m"), &b("1"), None);
        assert!(db.changed_since(&missing));
        db.unwatch(&w);
        db.unwatch(&missing);
        assert!(db.watched.is_empty());
    }

    #[test]
    fn replay_and_undo_are_not_changes() {
        let mut db = Db::new(1);
        db.record_changes();
        db.replay(&Effect::Set {
            key: b("a"),
            value: b("1"),
            deadline: None,
        });
        db.set(&b("a"), &b("2"), None);
        let change = db.take_changes().next().unwrap();
        db.undo(change);
        assert_eq!(db.get(b"a"), Some(&b"1"[..]));
        db.flush();
        let change = db.take_changes().next().unwrap();
        db.undo(change);
        assert_eq!(db.get(b"a"), Some(&b"1"[..]));
        assert_eq!(db.take_changes().count(), 0);
    }

    #[test]
    fn replay_drops_what_has_expired() {
        let mut db = Db::new(1);
        db.set_time(1_000);
        let set = |d| Effect::Set {
            key: b("k"),
            value: b("v"),
            deadline: Some(d),
        };
        db.replay(&set(999));
        assert!(db.store().is_empty());
        db.replay(&set(1_001));
        assert_eq!(db.store().len(), 1);
        db.replay(&Effect::Expire {
            key: b("k"),
            deadline: Some(1_000),
        });
        assert!(db.store().is_empty());
    }
}
