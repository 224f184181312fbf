//! The key/value store itself.
//!
//! Each pair lives in one allocation, `[key length: u32][key][value]`,
//! behind a reference-counted handle ([`Entry`]). The entries sit in a
//! vector, each with its deadline, and a hash table maps keys to their
//! positions in it (the layout of an insertion-ordered map). The vector is
//! what gives the keyspace commands their guarantees cheaply:
//!
//! - `SCAN` walks the vector from the end down. A removal moves the last
//!   entry into the hole, and the last entry is always on the walked side of
//!   the cursor or beyond it, so a key present for a whole iteration is
//!   returned at least once however the table grows or shrinks;
//! - `RANDOMKEY` is one index;
//! - the reference count makes a snapshot of the whole store (for log
//!   compaction) a matter of counters.
//!
//! Deadlines (unix milliseconds) are kept beside each entry and in a heap
//! ordered by deadline, so active expiry finds the next key due without a
//! scan. The heap is lazy: a deadline that was changed or removed stays in
//! it until it comes up (and is then ignored), and the heap is rebuilt when
//! stale items outnumber live ones, so it never holds more than about
//! twice the number of keys with a deadline.

use bytes::Bytes;
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// The map's hasher, seeded by the driver: the core reads no random source,
/// yet keys chosen by a peer must not be able to force hash collisions.
pub type Hasher = foldhash::fast::FixedState;

/// One stored pair, cheap to clone (a reference count).
#[derive(Clone, PartialEq, Eq)]
pub struct Entry(Arc<[u8]>);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &Bytes::copy_from_slice(self.key()))
            .field("value_len", &self.value().len())
            .finish()
    }
}

impl Entry {
    /// A pair in one allocation, written in place: no intermediate buffer
    /// to copy from (this runs for every write).
    pub fn new(key: &[u8], value: &[u8]) -> Self {
        // Keys are bounded far below 4 GiB by the codec's limits.
        let klen = u32::try_from(key.len()).expect("key shorter than 4 GiB");
        let len = 4 + key.len() + value.len();
        let mut arc = Arc::<[u8]>::new_uninit_slice(len);
        let dst = Arc::get_mut(&mut arc)
            .expect("a new allocation is not shared")
            .as_mut_ptr()
            .cast::<u8>();
        // SAFETY: `dst` points to `len` bytes of the new allocation, which
        // nothing else references; the three copies fill all of them,
        // without overlap, from slices that do not alias it. After that,
        // every byte is initialized, as `assume_init` requires.
        unsafe {
            std::ptr::copy_nonoverlapping(klen.to_le_bytes().as_ptr(), dst, 4);
            std::ptr::copy_nonoverlapping(key.as_ptr(), dst.add(4), key.len());
            std::ptr::copy_nonoverlapping(value.as_ptr(), dst.add(4 + key.len()), value.len());
            Entry(arc.assume_init())
        }
    }

    /// Overwrites the value in place, when the allocation is this handle's
    /// alone (no snapshot shares it) and the new value has the old one's
    /// length (a counter, mostly); whether it could.
    fn overwrite_in_place(&mut self, value: &[u8]) -> bool {
        let at = 4 + self.key_len();
        match Arc::get_mut(&mut self.0) {
            Some(buf) if buf.len() == at + value.len() => {
                buf[at..].copy_from_slice(value);
                true
            }
            _ => false,
        }
    }

    fn key_len(&self) -> usize {
        let mut n = [0u8; 4];
        n.copy_from_slice(&self.0[..4]);
        u32::from_le_bytes(n) as usize
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.0[4..4 + self.key_len()]
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.0[4 + self.key_len()..]
    }

    fn data_len(&self) -> usize {
        self.0.len() - 4
    }
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    #[test]
    fn entries_hold_their_bytes_and_overwrite_in_place_only_when_unshared() {
        let mut e = Entry::new(b"key", b"12");
        assert_eq!((e.key(), e.value()), (&b"key"[..], &b"12"[..]));
        assert!(e.overwrite_in_place(b"13"));
        assert_eq!(e.value(), b"13");
        assert!(!e.overwrite_in_place(b"100"), "another length");
        let snapshot = e.clone();
        assert!(!e.overwrite_in_place(b"14"), "shared with a snapshot");
        assert_eq!(snapshot.value(), b"13");
        let empty = Entry::new(b"", b"");
        assert_eq!((empty.key(), empty.value()), (&b""[..], &b""[..]));
    }
}

/// An entry and its deadline: what a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The pair.
    pub entry: Entry,
    /// When the key expires, in unix milliseconds; `None`: never.
    pub deadline: Option<u64>,
}

impl Slot {
    /// Whether the key has expired at `now` (unix milliseconds): a key is
    /// gone at its deadline, not after it.
    pub fn expired(&self, now: u64) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// Keys and values are arbitrary bytes.
#[derive(Debug)]
pub struct Store {
    slots: Vec<Slot>,
    /// Positions in `slots`, by the hash of their keys.
    index: HashTable<u32>,
    hasher: Hasher,
    /// Bytes held in keys and values, for `INFO`.
    data_bytes: usize,
    /// Keys with a deadline.
    volatile: usize,
    /// Deadlines and the hashes of their keys, soonest first; lazy (see the
    /// module docs).
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Store {
    /// An empty store whose hash function is keyed by `hash_seed` (pass a
    /// random number in production, a constant in tests).
    pub fn new(hash_seed: u64) -> Self {
        Store {
            slots: Vec::new(),
            index: HashTable::new(),
            hasher: Hasher::with_seed(hash_seed),
            data_bytes: 0,
            volatile: 0,
            deadlines: BinaryHeap::new(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The position of `key` in the slots.
    #[inline]
    pub fn position(&self, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(self.hash(key), |&i| slots[i as usize].entry.key() == key)
            .map(|&i| i as usize)
    }

    /// What `key` holds, expired or not.
    #[inline]
    pub fn slot(&self, key: &[u8]) -> Option<&Slot> {
        self.position(key).map(|i| &self.slots[i])
    }

    /// The value stored under `key`, expired or not.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.slot(key).map(|s| s.entry.value())
    }

    /// The slot at position `i` (`0..len()`), for cursors and sampling.
    pub fn at(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }

    /// Stores a value with its deadline, replacing what the key held, and
    /// returns what it replaced (kept, as a reference count, to undo the
    /// write).
    ///
    /// Key and value are copied into the entry's own allocation: decoded
    /// arguments are slices of a connection's receive buffer, and keeping
    /// them would pin that whole buffer in memory for as long as the key lives.
    pub fn put(&mut self, key: &[u8], value: &[u8], deadline: Option<u64>) -> Option<Slot> {
        self.insert(Slot {
            entry: Entry::new(key, value),
            deadline,
        })
    }

    /// Puts a slot back as it was (to undo a write).
    pub fn restore(&mut self, slot: Slot) {
        self.insert(slot);
    }

    fn insert(&mut self, slot: Slot) -> Option<Slot> {
        let hash = self.hash(slot.entry.key());
        self.data_bytes += slot.entry.data_len();
        if let Some(d) = slot.deadline {
            self.volatile += 1;
            self.deadlines.push(Reverse((d, hash)));
        }
        let slots = &mut self.slots;
        let key = slot.entry.key();
        if let Some(&i) = self
            .index
            .find(hash, |&i| slots[i as usize].entry.key() == key)
        {
            let old = std::mem::replace(&mut slots[i as usize], slot);
            self.forget(&old);
            self.compact_deadlines();
            return Some(old);
        }
        let i = u32::try_from(slots.len()).expect("fewer than 4 billion keys");
        slots.push(slot);
        let hasher = &self.hasher;
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(slots[j as usize].entry.key()));
        self.compact_deadlines();
        None
    }

    /// Takes a slot's bytes and deadline off the counters.
    fn forget(&mut self, old: &Slot) {
        self.data_bytes -= old.entry.data_len();
        if old.deadline.is_some() {
            self.volatile -= 1;
        }
    }

    /// Replaces the value of the key at position `i` in its own allocation
    /// if it can (see [`Entry`]); whether it did. Nothing of the old value
    /// is left to undo with, so only for writes nobody records.
    pub fn overwrite_in_place(&mut self, i: usize, value: &[u8]) -> bool {
        self.slots
            .get_mut(i)
            .is_some_and(|s| s.entry.overwrite_in_place(value))
    }

    /// Replaces the value of the key at position `i`, keeping its key and
    /// deadline; what it held before.
    pub fn replace_value(&mut self, i: usize, value: &[u8]) -> Slot {
        let slot = &mut self.slots[i];
        let entry = Entry::new(slot.entry.key(), value);
        let old = std::mem::replace(&mut slot.entry, entry);
        self.data_bytes = self.data_bytes - old.data_len() + slot.entry.data_len();
        Slot {
            entry: old,
            deadline: slot.deadline,
        }
    }

    /// Sets or clears the deadline of the key at position `i`; the old one.
    pub fn set_deadline(&mut self, i: usize, deadline: Option<u64>) -> Option<u64> {
        let slot = self.slots.get_mut(i)?;
        let old = std::mem::replace(&mut slot.deadline, deadline);
        match (old, deadline) {
            (None, Some(_)) => self.volatile += 1,
            (Some(_), None) => self.volatile -= 1,
            _ => {}
        }
        if let Some(d) = deadline {
            let hash = self.hasher.hash_one(self.slots[i].entry.key());
            self.deadlines.push(Reverse((d, hash)));
            self.compact_deadlines();
        }
        old
    }

    /// Removes a key; whether it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.take(key).is_some()
    }

    /// Removes a key and returns its slot, if it existed.
    pub fn take(&mut self, key: &[u8]) -> Option<Slot> {
        let i = self.position(key)?;
        Some(self.take_at(i))
    }

    /// Removes the key at position `i`, moving the last slot into its place.
    pub fn take_at(&mut self, i: usize) -> Slot {
        let hash = self.hash(self.slots[i].entry.key());
        if let Ok(found) = self.index.find_entry(hash, |&j| j as usize == i) {
            found.remove();
        }
        let last = self.slots.len() - 1;
        if i != last {
            let moved_hash = self.hash(self.slots[last].entry.key());
            if let Some(j) = self.index.find_mut(moved_hash, |&j| j as usize == last) {
                *j = i as u32;
            }
        }
        let old = self.slots.swap_remove(i);
        self.forget(&old);
        old
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.slots = Vec::new();
        self.index = HashTable::new();
        self.deadlines = BinaryHeap::new();
        self.data_bytes = 0;
        self.volatile = 0;
    }

    /// The soonest deadline that may still be live (a stale one at worst,
    /// which makes for one early wake-up).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((d, _))| *d)
    }

    /// Removes up to `budget` keys whose deadline is at or before `now` and
    /// hands each to `gone`. Bounded work: stale heap items count against
    /// the budget too.
    pub fn expire_due(&mut self, now: u64, budget: usize, mut gone: impl FnMut(Slot)) {
        for _ in 0..budget {
            let Some(&Reverse((d, hash))) = self.deadlines.peek() else {
                return;
            };
            if d > now {
                return;
            }
            self.deadlines.pop();
            let due = self.index.iter_hash(hash).map(|&i| i as usize).find(|&i| {
                let s = &self.slots[i];
                s.deadline == Some(d) && self.hasher.hash_one(s.entry.key()) == hash
            });
            if let Some(i) = due {
                gone(self.take_at(i));
            }
        }
    }

    /// Rebuilds the deadline heap when stale items outnumber live ones, so
    /// that changing deadlines cannot grow it without bound.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() <= 64 || self.deadlines.len() <= 2 * self.volatile {
            return;
        }
        let hasher = &self.hasher;
        let live: Vec<Reverse<(u64, u64)>> = self
            .slots
            .iter()
            .filter_map(|s| {
                s.deadline
                    .map(|d| Reverse((d, hasher.hash_one(s.entry.key()))))
            })
            .collect();
        self.deadlines = BinaryHeap::from(live);
    }

    /// Every pair, in no particular order, expired or not.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.slots.iter().map(|s| (s.entry.key(), s.entry.value()))
    }

    /// Every slot, borrowed, in store order.
    pub fn iter_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Every slot, in no particular order: a snapshot that costs a
    /// reference count per key, not a copy.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.slots.iter().cloned()
    }

    /// Every pair not expired at `now`, sorted by key.
    pub fn dump(&self, now: u64) -> Vec<(Bytes, Bytes)> {
        let mut live: Vec<&Entry> = self
            .slots
            .iter()
            .filter(|s| !s.expired(now))
            .map(|s| &s.entry)
            .collect();
        live.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        live.into_iter()
            .map(|e| {
                (
                    Bytes::copy_from_slice(e.key()),
                    Bytes::copy_from_slice(e.value()),
                )
            })
            .collect()
    }

    /// Number of keys (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of keys with a deadline.
    pub fn volatile(&self) -> usize {
        self.volatile
    }

    /// Bytes held in keys and values (not counting overhead).
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &Store) -> Vec<&[u8]> {
        let mut k: Vec<&[u8]> = s.iter().map(|(k, _)| k).collect();
        k.sort();
        k
    }

    #[test]
    fn put_get_remove_dump() {
        let mut s = Store::new(7);
        s.put(b"b", b"2", None);
        s.put(b"a", b"1", None);
        let old = s.put(b"b", b"22", None).unwrap();
        assert_eq!(old.entry.value(), b"2");
        assert_eq!(s.get(b"b"), Some(&b"22"[..]));
        assert_eq!(s.data_bytes(), 5);
        assert_eq!(
            s.dump(0),
            vec![
                (Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                (Bytes::from_static(b"b"), Bytes::from_static(b"22"))
            ]
        );
        assert!(s.remove(b"a"));
        assert!(!s.remove(b"a"));
        assert_eq!(s.take(b"b").unwrap().entry.value(), b"22");
        assert!(s.is_empty());
        assert_eq!(s.data_bytes(), 0);
    }

    #[test]
    fn removal_keeps_every_position_in_the_index() {
        let mut s = Store::new(3);
        for i in 0..200u32 {
            s.put(&i.to_le_bytes(), b"v", None);
        }
        for i in (0..200u32).step_by(3) {
            assert!(s.remove(&i.to_le_bytes()));
        }
        for i in 0..200u32 {
            assert_eq!(s.get(&i.to_le_bytes()).is_some(), i % 3 != 0, "{i}");
        }
        for p in 0..s.len() {
            let key = s.at(p).unwrap().entry.key().to_vec();
            assert_eq!(s.position(&key), Some(p));
        }
    }

    #[test]
    fn deadlines_expire_in_order_within_the_budget() {
        let mut s = Store::new(1);
        s.put(b"a", b"1", Some(100));
        s.put(b"b", b"1", Some(50));
        s.put(b"c", b"1", None);
        assert_eq!((s.volatile(), s.next_deadline()), (2, Some(50)));
        let mut gone = Vec::new();
        s.expire_due(49, 10, |slot| gone.push(slot.entry.key().to_vec()));
        assert!(gone.is_empty());
        s.expire_due(100, 1, |slot| gone.push(slot.entry.key().to_vec()));
        assert_eq!(gone, [b"b".to_vec()]);
        s.expire_due(100, 10, |slot| gone.push(slot.entry.key().to_vec()));
        assert_eq!(gone, [b"b".to_vec(), b"a".to_vec()]);
        assert_eq!(keys(&s), [&b"c"[..]]);
        assert_eq!(s.volatile(), 0);
    }

    #[test]
    fn changed_deadlines_leave_stale_items_that_are_ignored() {
        let mut s = Store::new(1);
        s.put(b"k", b"1", Some(10));
        let i = s.position(b"k").unwrap();
        assert_eq!(s.set_deadline(i, Some(1000)), Some(10));
        s.expire_due(10, 10, |_| panic!("the old deadline is stale"));
        assert!(s.get(b"k").is_some());
        s.put(b"k", b"2", None);
        s.expire_due(5000, 10, |_| panic!("no deadline any more"));
        assert_eq!(s.next_deadline(), None);
        // Many changes of one key's deadline keep the heap small.
        s.put(b"k", b"3", Some(1));
        for d in 0..10_000 {
            let i = s.position(b"k").unwrap();
            s.set_deadline(i, Some(d + 2));
        }
        assert!(s.deadlines.len() <= 130, "{}", s.deadlines.len());
    }

    #[test]
    fn empty_keys_and_values_and_snapshots() {
        let mut s = Store::new(1);
        s.put(b"", b"", None);
        s.put(b"k", b"", None);
        assert_eq!(s.get(b""), Some(&b""[..]));
        let snapshot: Vec<Slot> = s.slots().collect();
        s.put(b"k", b"new", None);
        let mut old: Vec<(&[u8], &[u8])> = snapshot
            .iter()
            .map(|s| (s.entry.key(), s.entry.value()))
            .collect();
        old.sort();
        assert_eq!(old, vec![(&b""[..], &b""[..]), (&b"k"[..], &b""[..])]);
        assert_eq!(s.get(b"k"), Some(&b"new"[..]));
    }
}
