//! The database layer between the command families and the [`Store`].
//!
//! Every write goes through [`Db`], which applies it to the store and
//! records its [`Effect`]: the key set to a value, or the key deleted. The
//! server turns those effects into log records (and, later, invalidation
//! messages); the proxy writes the effects an acknowledged reply implies
//! through to its cache. The log is derived from the effects alone, so a
//! new command that writes through `Db` is logged without another line of
//! code; writing through the proxy's cache takes the command's
//! `effects_of` (its table entry's `Cache::WriteThrough`), since the proxy
//! sees only the reply.

pub mod store;

pub use store::{Entry, Hasher, Store};

use bytes::Bytes;

/// A change to the keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `key` now holds `value`.
    Set {
        /// The key written.
        key: Bytes,
        /// Its new value.
        value: Bytes,
    },
    /// `key` was removed.
    Del {
        /// The key removed.
        key: Bytes,
    },
}

impl Effect {
    /// The key the effect is about.
    pub fn key(&self) -> &Bytes {
        match self {
            Effect::Set { key, .. } | Effect::Del { key } => key,
        }
    }
}

/// One effect of a command, with what the key held before (to undo it if
/// the log cannot store it).
#[derive(Debug, Clone)]
pub struct Change {
    /// What changed.
    pub effect: Effect,
    /// The key's entry before the change; `None` if it did not exist.
    pub before: Option<Entry>,
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
}

impl Db {
    /// An empty database whose hash function is keyed by `hash_seed`.
    pub fn new(hash_seed: u64) -> Db {
        Db {
            store: Store::new(hash_seed),
            changes: Vec::new(),
            recording: false,
        }
    }

    /// From now on, writes record their changes for [`Db::take_changes`]
    /// (the server turns this on with its log).
    pub fn record_changes(&mut self) {
        self.recording = true;
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.store.get(key)
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.store.get(key).is_some()
    }

    /// Sets `key` to `value`. The arguments are the command's own (slices of
    /// the receive buffer): the effect shares them until it is consumed.
    pub fn set(&mut self, key: &Bytes, value: &Bytes) {
        let before = self.store.put(key, value);
        if !self.recording {
            return;
        }
        self.changes.push(Change {
            effect: Effect::Set {
                key: key.clone(),
                value: value.clone(),
            },
            before,
        });
    }

    /// Removes `key`; whether it existed.
    pub fn del(&mut self, key: &Bytes) -> bool {
        let Some(before) = self.store.take(key) else {
            return false;
        };
        if !self.recording {
            return true;
        }
        self.changes.push(Change {
            effect: Effect::Del { key: key.clone() },
            before: Some(before),
        });
        true
    }

    /// Every pair, sorted by key.
    pub fn dump(&self) -> Vec<(Bytes, Bytes)> {
        self.store.dump()
    }

    /// The store, read-only (for snapshots and `INFO`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies an effect replayed from the log: not recorded again.
    pub fn replay(&mut self, effect: &Effect) {
        match effect {
            Effect::Set { key, value } => {
                self.store.put(key, value);
            }
            Effect::Del { key } => {
                self.store.remove(key);
            }
        }
    }

    /// Puts `key` back as it was before a change (to roll back a write the
    /// log failed to store): not recorded.
    pub fn undo(&mut self, key: &[u8], before: Option<Entry>) {
        match before {
            Some(entry) => self.store.restore(entry),
            None => {
                self.store.remove(key);
            }
        }
    }

    /// The changes made since the last call, oldest first.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, Change> {
        self.changes.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_recorded_until_asked_for() {
        let mut db = Db::new(1);
        db.set(&b("k"), &b("1"));
        assert!(db.del(&b("k")));
        assert_eq!(db.take_changes().count(), 0);
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn writes_report_their_effects_with_what_they_replaced() {
        let mut db = Db::new(1);
        db.record_changes();
        db.set(&b("k"), &b("1"));
        db.set(&b("k"), &b("2"));
        assert!(db.del(&b("k")));
        assert!(!db.del(&b("k")), "deleting a missing key changes nothing");
        let changes: Vec<Change> = db.take_changes().collect();
        let effects: Vec<&Effect> = changes.iter().map(|c| &c.effect).collect();
        assert_eq!(
            effects,
            [
                &Effect::Set {
                    key: b("k"),
                    value: b("1")
                },
                &Effect::Set {
                    key: b("k"),
                    value: b("2")
                },
                &Effect::Del { key: b("k") },
            ]
        );
        let before: Vec<Option<&[u8]>> = changes
            .iter()
            .map(|c| c.before.as_ref().map(Entry::value))
            .collect();
        assert_eq!(before, [None, Some(&b"1"[..]), Some(&b"2"[..])]);
        assert_eq!(db.take_changes().count(), 0);
    }

    #[test]
    fn replay_and_undo_are_not_changes() {
        let mut db = Db::new(1);
        db.record_changes();
        db.replay(&Effect::Set {
            key: b("a"),
            value: b("1"),
        });
        db.set(&b("a"), &b("2"));
        let change = db.take_changes().next().unwrap();
        db.undo(b"a", change.before);
        assert_eq!(db.get(b"a"), Some(&b"1"[..]));
        db.undo(b"a", None);
        assert!(!db.contains(b"a"));
        assert_eq!(db.take_changes().count(), 0);
    }
}
