//! The key/value store itself.
//!
//! Each pair lives in one allocation, `[position: u32][key length: u32]
//! [key][value]`, behind a reference-counted handle ([`Entry`]), and the
//! hash table holds the entries themselves: a lookup goes from the table's
//! bucket straight to the entry, where the key is compared and the value
//! read, two dependent loads and no more (the table used to hold positions
//! into a vector of entries, a third).
//!
//! Keys also have positions, `0..len()`, dense, kept in `order` (a 32-bit
//! hash per position, from which its table hash is derived) and in each
//! entry's header. They are what gives the keyspace commands their
//! guarantees cheaply:
//!
//! - `SCAN` walks the positions from the end down. A removal moves the last
//!   key into the hole, and the last key is always on the walked side of
//!   the cursor or beyond it, so a key present for a whole iteration is
//!   returned at least once however the table grows or shrinks;
//! - `RANDOMKEY` is one position;
//! - the reference count makes a snapshot of the whole store (for log
//!   compaction) a matter of counters.
//!
//! A position's key is found through the table by its hash: its candidates
//! are compared by the position in their header. An entry's header is
//! rewritten in place while the store holds the only reference, and the
//! entry copied first otherwise (a snapshot shares it), so what a snapshot
//! holds never changes.
//!
//! Deadlines (unix milliseconds) are kept by position in a vector allocated
//! once a key gets one (a store without deadlines pays nothing for them),
//! flagged in the entry's header so that a lookup of a key without one
//! does not touch it; and they are kept in a heap ordered by deadline, so
//! active expiry finds the next key due without a scan. The heap is lazy: a
//! deadline that was changed or removed stays in it until it comes up (and
//! is then ignored), and the heap is rebuilt when stale items outnumber
//! live ones, so it never holds more than about twice the number of keys
//! with a deadline.
//!
//! Access metadata for the LRU and LFU eviction policies ([`Access`]) is
//! kept by position too, one word per key, allocated only while a policy
//! needs it: a store without one pays a branch per lookup and nothing
//! else. A removal moves the last key's word into the hole with the key,
//! as it moves its deadline.

use super::access::{Access, AccessMode};
use super::dump::{lock, Snapshot};
use bytes::Bytes;
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, Weak};

/// The map's hasher, seeded by the driver: the core reads no random source,
/// yet keys chosen by a peer must not be able to force hash collisions.
pub type Hasher = foldhash::fast::FixedState;

/// Bytes of an entry before its key: its position and its key length.
const HEADER: usize = 8;

/// What a key costs beyond its bytes, for [`Store::footprint`]: the
/// reference counts and header of its allocation. The table's slot and
/// the position vectors are left out: they do not shrink when a key is
/// removed, so counting them would make an eviction look as if it freed
/// more than it does.
pub const ENTRY_OVERHEAD: usize = 16 + HEADER;

/// The bit of the key-length word that says the key has a deadline (keys
/// are bounded far below 2 GiB by the codec's limits, so it is free).
const VOLATILE: u32 = 1 << 31;

/// One stored pair, cheap to clone (a reference count).
#[derive(Clone)]
pub struct Entry(Arc<[u8]>);

/// Pairs compare by key and value: the header is the store's bookkeeping.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.value() == other.value()
    }
}

impl Eq for Entry {}

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
        Self::build(key, value, 0, false)
    }

    fn build(key: &[u8], value: &[u8], pos: u32, volatile: bool) -> Self {
        let klen = u32::try_from(key.len())
            .ok()
            .filter(|&n| n < VOLATILE)
            .expect("key shorter than 2 GiB");
        let meta = klen | if volatile { VOLATILE } else { 0 };
        let len = HEADER + key.len() + value.len();
        let mut arc = Arc::<[u8]>::new_uninit_slice(len);
        let dst = Arc::get_mut(&mut arc)
            .expect("a new allocation is not shared")
            .as_mut_ptr()
            .cast::<u8>();
        // SAFETY: `dst` points to `len` bytes of the new allocation, which
        // nothing else references; the four copies fill all of them,
        // without overlap, from slices that do not alias it. After that,
        // every byte is initialized, as `assume_init` requires.
        unsafe {
            std::ptr::copy_nonoverlapping(pos.to_le_bytes().as_ptr(), dst, 4);
            std::ptr::copy_nonoverlapping(meta.to_le_bytes().as_ptr(), dst.add(4), 4);
            std::ptr::copy_nonoverlapping(key.as_ptr(), dst.add(HEADER), key.len());
            std::ptr::copy_nonoverlapping(value.as_ptr(), dst.add(HEADER + key.len()), value.len());
            Entry(arc.assume_init())
        }
    }

    /// Overwrites the value in place, when the allocation is this handle's
    /// alone (no snapshot shares it) and the new value has the old one's
    /// length (a counter, mostly); whether it could.
    fn overwrite_in_place(&mut self, value: &[u8]) -> bool {
        let at = HEADER + self.key_len();
        match Arc::get_mut(&mut self.0) {
            Some(buf) if buf.len() == at + value.len() => {
                buf[at..].copy_from_slice(value);
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn word(&self, at: usize) -> u32 {
        let mut n = [0u8; 4];
        n.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(n)
    }

    /// Its position in the store holding it (meaningless elsewhere).
    #[inline]
    fn pos(&self) -> usize {
        self.word(0) as usize
    }

    /// Whether the store holding it keeps a deadline for it.
    #[inline]
    fn volatile(&self) -> bool {
        self.word(4) & VOLATILE != 0
    }

    #[inline]
    fn key_len(&self) -> usize {
        (self.word(4) & !VOLATILE) as usize
    }

    /// Records the entry's position and whether it has a deadline: in place
    /// when no one else holds it, else in a copy, since a snapshot's
    /// entries must not change under it (that copy is the rare case: only
    /// while a snapshot is out).
    fn set_header(&mut self, pos: usize, volatile: bool) {
        let pos = u32::try_from(pos).expect("fewer than 4 billion keys");
        let meta = self.word(4) & !VOLATILE | if volatile { VOLATILE } else { 0 };
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&pos.to_le_bytes());
        header[4..].copy_from_slice(&meta.to_le_bytes());
        if self.0[..HEADER] == header {
            return;
        }
        if Arc::get_mut(&mut self.0).is_none() {
            self.0 = Arc::from(&self.0[..]);
        }
        let buf = Arc::get_mut(&mut self.0).expect("a fresh copy is not shared");
        buf[..HEADER].copy_from_slice(&header);
    }

    /// The key.
    #[inline]
    pub fn key(&self) -> &[u8] {
        &self.0[HEADER..HEADER + self.key_len()]
    }

    /// The value.
    #[inline]
    pub fn value(&self) -> &[u8] {
        &self.0[HEADER + self.key_len()..]
    }

    fn data_len(&self) -> usize {
        self.0.len() - HEADER
    }

    /// Whether another handle shares the allocation (a snapshot being
    /// written out holds one): removing the key from the store then frees
    /// nothing until that handle goes.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    /// What the entry adds to [`Store::footprint`].
    pub fn footprint(&self) -> usize {
        self.data_len() + ENTRY_OVERHEAD
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

    #[test]
    fn headers_change_in_place_or_in_a_copy_never_under_a_snapshot() {
        let mut e = Entry::new(b"key", b"value");
        e.set_header(7, true);
        assert_eq!((e.pos(), e.volatile(), e.key()), (7, true, &b"key"[..]));
        let snapshot = e.clone();
        e.set_header(3, false);
        assert_eq!((e.pos(), e.volatile()), (3, false));
        assert_eq!((snapshot.pos(), snapshot.volatile()), (7, true));
        assert_eq!(snapshot, e, "pairs compare by key and value alone");
        assert!(
            e.overwrite_in_place(b"VALUE"),
            "the copy is the store's own"
        );
        assert_eq!(
            (snapshot.value(), e.value()),
            (&b"value"[..], &b"VALUE"[..])
        );
    }
}

/// An entry and its deadline: what a key holds, owned (a snapshot of it,
/// or what a write replaced).
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

/// What a key holds, borrowed from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef<'a> {
    /// The pair.
    pub entry: &'a Entry,
    /// When the key expires, in unix milliseconds; `None`: never.
    pub deadline: Option<u64>,
}

impl SlotRef<'_> {
    /// Whether the key has expired at `now` (unix milliseconds): a key is
    /// gone at its deadline, not after it.
    pub fn expired(&self, now: u64) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// The slot, owned: a reference count, not a copy.
    pub fn to_slot(&self) -> Slot {
        Slot {
            entry: self.entry.clone(),
            deadline: self.deadline,
        }
    }
}

/// Where a key is in the store's table, from [`Store::find`] or
/// [`Store::found_at`]: a handle for reading and writing the key without
/// looking it up again, valid until the store next changes (any write may
/// move keys in the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found(usize);

/// The table hash of a key from its 32-bit hash: a multiplication by an odd
/// constant keeps the low bits (the bucket) as uniform as the hash's and
/// mixes every bit into the top ones (hashbrown's 7-bit tag).
#[inline]
fn spread(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Keys and values are arbitrary bytes.
#[derive(Debug)]
pub struct Store {
    /// The entries, by the hash of their keys.
    index: HashTable<Entry>,
    /// By position: each key's 32-bit hash (its table hash is derived from
    /// it), to find a position's entry and to rehash without reading keys.
    order: Vec<u32>,
    /// By position: each key's deadline, read only for entries flagged as
    /// having one. Empty until a key first gets a deadline, and then as
    /// long as `order` until the store is cleared (freeing it when the last
    /// deadline goes would make one key's EXPIRE and PERSIST, repeated,
    /// cost a vector each).
    deadline_at: Vec<u64>,
    hasher: Hasher,
    /// Bytes held in keys and values, for `INFO`.
    data_bytes: usize,
    /// Keys with a deadline.
    volatile: usize,
    /// Deadlines and the 32-bit hashes of their keys, soonest first; lazy
    /// (see the module docs).
    deadlines: BinaryHeap<Reverse<(u64, u32)>>,
    /// Counts writes: a snapshot taken at one generation is what the store
    /// still holds while the generation is the same (and no deadline in it
    /// has passed), so concurrent `DUMP`s can share one.
    generation: u64,
    /// `DUMP` snapshots being collected, told about every write before it
    /// happens (see `dump.rs`); empty but for the time that takes.
    watchers: Vec<Weak<Mutex<Snapshot>>>,
    /// By position: each key's access word, while an eviction policy
    /// needs them (see the module docs).
    access: Option<Box<Access>>,
}

impl Store {
    /// An empty store whose hash function is keyed by `hash_seed` (pass a
    /// random number in production, a constant in tests).
    pub fn new(hash_seed: u64) -> Self {
        Store {
            index: HashTable::new(),
            order: Vec::new(),
            deadline_at: Vec::new(),
            hasher: Hasher::with_seed(hash_seed),
            data_bytes: 0,
            volatile: 0,
            deadlines: BinaryHeap::new(),
            generation: 0,
            watchers: Vec::new(),
            access: None,
        }
    }

    /// The hash function, for other maps of keys chosen by peers.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Tells `snapshot` about every write from now on, until it has
    /// collected what it needs.
    pub(crate) fn watch_writes(&mut self, snapshot: Weak<Mutex<Snapshot>>) {
        self.watchers.push(snapshot);
    }

    /// The snapshots still collecting, forgetting the others.
    fn live_watchers(&mut self) -> Vec<Arc<Mutex<Snapshot>>> {
        let mut live = Vec::new();
        self.watchers.retain(|w| match w.upgrade() {
            Some(s) if lock(&s).is_collecting() => {
                live.push(s);
                true
            }
            _ => false,
        });
        live
    }

    /// Before a write of `key`: snapshots being collected get what it holds
    /// now. Costs a branch when there are none.
    #[inline]
    fn before_write(&mut self, key: &[u8]) {
        if !self.watchers.is_empty() {
            self.tell_watchers(key);
        }
    }

    #[cold]
    fn tell_watchers(&mut self, key: &[u8]) {
        let current = self.slot(key).map(|s| (s.entry.pos(), s.to_slot()));
        for w in self.live_watchers() {
            lock(&w).before_write(key, current.as_ref().map(|(p, s)| (*p, s)));
        }
    }

    /// The key of the entry at `at`, copied, if snapshots are watching
    /// (to tell them before a write through a handle).
    fn watched_key(&self, at: Found) -> Option<Vec<u8>> {
        if self.watchers.is_empty() {
            return None;
        }
        self.index.get_bucket(at.0).map(|e| e.key().to_vec())
    }

    /// The number of writes so far (see the field's docs).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The 32-bit hash of a key (half the bytes of a full one in `order`
    /// and the heap; the table, at most 4 billion keys, needs no more).
    #[inline]
    fn tag(&self, key: &[u8]) -> u32 {
        let h = self.hasher.hash_one(key);
        (h ^ (h >> 32)) as u32
    }

    #[inline]
    fn slot_ref<'a>(&'a self, entry: &'a Entry) -> SlotRef<'a> {
        SlotRef {
            entry,
            deadline: entry.volatile().then(|| self.deadline_at[entry.pos()]),
        }
    }

    /// Where `key` is, expired or not.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<Found> {
        self.index
            .find_bucket_index(spread(self.tag(key)), |e| e.key() == key)
            .map(Found)
    }

    /// What the key found at `at` holds; `None` for a handle outdated by
    /// a write.
    #[inline]
    pub fn found(&self, at: Found) -> Option<SlotRef<'_>> {
        self.index.get_bucket(at.0).map(|e| self.slot_ref(e))
    }

    /// Where the key at position `i` (`0..len()`) is, for cursors and
    /// sampling.
    pub fn found_at(&self, i: usize) -> Option<Found> {
        let tag = *self.order.get(i)?;
        self.index
            .find_bucket_index(spread(tag), |e| e.pos() == i)
            .map(Found)
    }

    /// The position of `key` (`0..len()`).
    pub fn position(&self, key: &[u8]) -> Option<usize> {
        self.index
            .find(spread(self.tag(key)), |e| e.key() == key)
            .map(Entry::pos)
    }

    /// What `key` holds, expired or not.
    #[inline]
    pub fn slot(&self, key: &[u8]) -> Option<SlotRef<'_>> {
        self.index
            .find(spread(self.tag(key)), |e| e.key() == key)
            .map(|e| self.slot_ref(e))
    }

    /// The value stored under `key`, expired or not.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.slot(key).map(|s| s.entry.value())
    }

    /// What the key at position `i` (`0..len()`) holds, for cursors and
    /// sampling.
    pub fn at(&self, i: usize) -> Option<SlotRef<'_>> {
        self.found_at(i).and_then(|f| self.found(f))
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
        let Slot {
            mut entry,
            deadline,
        } = slot;
        self.before_write(entry.key());
        let tag = self.tag(entry.key());
        let hash = spread(tag);
        self.generation += 1;
        self.data_bytes += entry.data_len();
        let held = self.index.find_mut(hash, |e| e.key() == entry.key());
        let (pos, old) = match held {
            Some(held) => {
                let pos = held.pos();
                entry.set_header(pos, deadline.is_some());
                let old = std::mem::replace(held, entry);
                let old_deadline = old.volatile().then(|| self.deadline_at[pos]);
                let old = Slot {
                    entry: old,
                    deadline: old_deadline,
                };
                self.forget(&old);
                if let Some(a) = &mut self.access {
                    a.words[pos] = a.touched(a.words[pos]);
                }
                (pos, Some(old))
            }
            None => {
                let pos = self.order.len();
                entry.set_header(pos, deadline.is_some());
                self.order.push(tag);
                if !self.deadline_at.is_empty() {
                    self.deadline_at.push(0);
                }
                if let Some(a) = &mut self.access {
                    let fresh = a.fresh();
                    a.words.push(fresh);
                }
                let order = &self.order;
                self.index
                    .insert_unique(hash, entry, |e| spread(order[e.pos()]));
                (pos, None)
            }
        };
        if let Some(d) = deadline {
            self.volatile += 1;
            self.keep_deadline(pos, d, tag);
        }
        old
    }

    /// Records the deadline of the key at position `pos`, whose entry is
    /// flagged as having one.
    fn keep_deadline(&mut self, pos: usize, deadline: u64, tag: u32) {
        if self.deadline_at.is_empty() {
            self.deadline_at = vec![0; self.order.len()];
        }
        self.deadline_at[pos] = deadline;
        self.deadlines.push(Reverse((deadline, tag)));
        self.compact_deadlines();
    }

    /// Takes a slot's bytes and deadline off the counters.
    fn forget(&mut self, old: &Slot) {
        self.data_bytes -= old.entry.data_len();
        if old.deadline.is_some() {
            self.volatile -= 1;
        }
    }

    /// Replaces the value of the key found at `at` in its own allocation
    /// if it can (see [`Entry`]); whether it did. Nothing of the old value
    /// is left to undo with, so only for writes nobody records.
    pub fn overwrite_in_place(&mut self, at: Found, value: &[u8]) -> bool {
        if !self.watchers.is_empty() {
            // A snapshot may need the old value: written anew instead.
            return false;
        }
        self.generation += 1;
        self.index
            .get_bucket_mut(at.0)
            .is_some_and(|e| e.overwrite_in_place(value))
    }

    /// Replaces the value of the key found at `at`, keeping its key and
    /// deadline; what it held before.
    ///
    /// # Panics
    ///
    /// If `at` is outdated.
    pub fn replace_value(&mut self, at: Found, value: &[u8]) -> Slot {
        if let Some(key) = self.watched_key(at) {
            self.tell_watchers(&key);
        }
        let held = self
            .index
            .get_bucket_mut(at.0)
            .expect("a handle from the last lookup");
        let (pos, volatile) = (held.pos(), held.volatile());
        self.generation += 1;
        let pos32 = u32::try_from(pos).expect("fewer than 4 billion keys");
        let entry = Entry::build(held.key(), value, pos32, volatile);
        let old = std::mem::replace(held, entry);
        self.data_bytes = self.data_bytes - old.data_len() + held.data_len();
        Slot {
            deadline: volatile.then(|| self.deadline_at[pos]),
            entry: old,
        }
    }

    /// Sets or clears the deadline of the key found at `at`; the old one.
    pub fn set_deadline(&mut self, at: Found, deadline: Option<u64>) -> Option<u64> {
        if let Some(key) = self.watched_key(at) {
            self.tell_watchers(&key);
        }
        let held = self.index.get_bucket_mut(at.0)?;
        self.generation += 1;
        let pos = held.pos();
        let old = held.volatile().then(|| self.deadline_at[pos]);
        held.set_header(pos, deadline.is_some());
        match (old, deadline) {
            (None, Some(_)) => self.volatile += 1,
            (Some(_), None) => self.volatile -= 1,
            _ => {}
        }
        if let Some(d) = deadline {
            self.keep_deadline(pos, d, self.order[pos]);
        }
        old
    }

    /// Removes a key; whether it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.take(key).is_some()
    }

    /// Removes a key and returns its slot, if it existed.
    pub fn take(&mut self, key: &[u8]) -> Option<Slot> {
        let at = self.find(key)?;
        Some(self.take_at(at))
    }

    /// Removes the key found at `at`, moving the last position's key into
    /// its position.
    ///
    /// # Panics
    ///
    /// If `at` is outdated.
    pub fn take_at(&mut self, at: Found) -> Slot {
        if let Some(key) = self.watched_key(at) {
            self.tell_watchers(&key);
        }
        let Ok(held) = self.index.get_bucket_entry(at.0) else {
            panic!("a handle from the last lookup");
        };
        let (entry, _) = held.remove();
        self.generation += 1;
        let pos = entry.pos();
        let deadline = entry.volatile().then(|| self.deadline_at[pos]);
        let last = self.order.len() - 1;
        if pos != last && !self.watchers.is_empty() {
            if let Some(moved) = self.at(last).map(|s| s.to_slot()) {
                for w in self.live_watchers() {
                    lock(&w).before_move(last, pos, moved.clone());
                }
            }
        }
        if pos != last {
            let tag = self.order[last];
            if let Some(moved) = self.index.find_mut(spread(tag), |e| e.pos() == last) {
                let volatile = moved.volatile();
                moved.set_header(pos, volatile);
            }
        }
        self.order.swap_remove(pos);
        if !self.deadline_at.is_empty() {
            self.deadline_at.swap_remove(pos);
        }
        if let Some(a) = &mut self.access {
            a.words.swap_remove(pos);
        }
        let old = Slot { entry, deadline };
        self.forget(&old);
        old
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        // Snapshots being collected take what is left now: the walk cannot
        // go on over an empty store.
        for w in self.live_watchers() {
            lock(&w).collect_all(self);
        }
        self.watchers.clear();
        self.generation += 1;
        self.index = HashTable::new();
        self.order = Vec::new();
        self.deadline_at = Vec::new();
        self.deadlines = BinaryHeap::new();
        self.data_bytes = 0;
        self.volatile = 0;
        if let Some(a) = &mut self.access {
            a.words = Vec::new();
        }
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
            let Some(&Reverse((d, tag))) = self.deadlines.peek() else {
                return;
            };
            if d > now {
                return;
            }
            self.deadlines.pop();
            // Another key with this hash and this deadline would do as
            // well: it is due too, and its own item is still in the heap.
            let (order, deadline_at) = (&self.order, &self.deadline_at);
            let due = self.index.find_bucket_index(spread(tag), |e| {
                e.volatile() && deadline_at[e.pos()] == d && order[e.pos()] == tag
            });
            if let Some(i) = due {
                gone(self.take_at(Found(i)));
            }
        }
    }

    /// Rebuilds the deadline heap when stale items outnumber live ones, so
    /// that changing deadlines cannot grow it without bound.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() <= 64 || self.deadlines.len() <= 2 * self.volatile {
            return;
        }
        let (order, deadline_at) = (&self.order, &self.deadline_at);
        let live: Vec<Reverse<(u64, u32)>> = self
            .index
            .iter()
            .filter(|e| e.volatile())
            .map(|e| Reverse((deadline_at[e.pos()], order[e.pos()])))
            .collect();
        self.deadlines = BinaryHeap::from(live);
    }

    /// Every pair, in no particular order, expired or not.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.index.iter().map(|e| (e.key(), e.value()))
    }

    /// Every slot, borrowed, in no particular order.
    pub fn iter_slots(&self) -> impl Iterator<Item = SlotRef<'_>> {
        self.index.iter().map(|e| self.slot_ref(e))
    }

    /// Every slot, in no particular order: a snapshot that costs a
    /// reference count per key, not a copy.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.iter_slots().map(|s| s.to_slot())
    }

    /// Every pair not expired at `now`, sorted by key.
    pub fn dump(&self, now: u64) -> Vec<(Bytes, Bytes)> {
        let mut live: Vec<&Entry> = self
            .iter_slots()
            .filter(|s| !s.expired(now))
            .map(|s| s.entry)
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
        self.order.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Number of keys with a deadline.
    pub fn volatile(&self) -> usize {
        self.volatile
    }

    /// Bytes held in keys and values (not counting overhead).
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// What the keys are estimated to hold in the allocator: their bytes
    /// and [`ENTRY_OVERHEAD`] each, rounding to the allocator's size
    /// classes left out. The memory bound counts the store's growth and
    /// an eviction's gain with it between two readings of the allocator.
    pub fn footprint(&self) -> u64 {
        (self.data_bytes + self.order.len() * ENTRY_OVERHEAD) as u64
    }

    /// Starts keeping access words of `mode`, every key's as if written at
    /// `now_ms` (nothing is known of earlier accesses); switches to another
    /// mode the same way; or, with `None`, stops and frees them. Keeping
    /// the mode there is changes nothing. `seed` seeds the LFU counters'
    /// random increments.
    pub fn track_access(&mut self, mode: Option<AccessMode>, now_ms: u64, seed: u64) {
        match mode {
            None => self.access = None,
            Some(m) if self.access.as_ref().is_some_and(|a| a.mode() == m) => {}
            Some(m) => {
                let access = Access::new(m, self.order.len(), now_ms, seed);
                self.access = Some(Box::new(access));
            }
        }
    }

    /// The access metadata, if kept.
    pub fn access(&self) -> Option<&Access> {
        self.access.as_deref()
    }

    /// The driver's unix time in milliseconds, for the access words.
    #[inline]
    pub fn set_access_time(&mut self, now_ms: u64) {
        if let Some(a) = &mut self.access {
            a.set_time(now_ms);
        }
    }

    /// Records an access to the key found at `at` (nothing unless access
    /// words are kept).
    #[inline]
    pub fn touch(&mut self, at: Found) {
        if let Some(a) = &mut self.access {
            if let Some(e) = self.index.get_bucket(at.0) {
                let pos = e.pos();
                a.words[pos] = a.touched(a.words[pos]);
            }
        }
    }

    /// The access word of the key at position `pos`, if kept.
    pub fn access_word(&self, pos: usize) -> Option<u32> {
        self.access.as_ref()?.words.get(pos).copied()
    }

    /// The position (`0..len()`) of the key found at `at`.
    pub fn position_at(&self, at: Found) -> Option<usize> {
        self.index.get_bucket(at.0).map(Entry::pos)
    }

    /// How many items the deadline heap holds: the keys with a deadline,
    /// and stale items (the heap is lazy; at most about half are stale).
    pub fn deadline_items(&self) -> usize {
        self.deadlines.len()
    }

    /// The key of the deadline heap's item `i` (`0..deadline_items()`, in
    /// no particular order), for sampling keys with a deadline; `None` if
    /// the item is stale.
    pub fn deadline_item(&self, i: usize) -> Option<Found> {
        let &Reverse((d, tag)) = self.deadlines.as_slice().get(i)?;
        self.find_deadline(d, tag)
    }

    /// The key with the soonest deadline, exactly (the heap's top); stale
    /// items met on the way are dropped, as active expiry drops them.
    pub fn soonest_volatile(&mut self) -> Option<Found> {
        while let Some(&Reverse((d, tag))) = self.deadlines.peek() {
            if let Some(f) = self.find_deadline(d, tag) {
                return Some(f);
            }
            self.deadlines.pop();
        }
        None
    }

    /// A key whose hash is `tag` with the deadline `d`, if there is one
    /// (another key with both would do as well: see [`Store::expire_due`]).
    fn find_deadline(&self, d: u64, tag: u32) -> Option<Found> {
        let (order, deadline_at) = (&self.order, &self.deadline_at);
        self.index
            .find_bucket_index(spread(tag), |e| {
                e.volatile() && deadline_at[e.pos()] == d && order[e.pos()] == tag
            })
            .map(Found)
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
        let i = s.find(b"k").unwrap();
        assert_eq!(s.set_deadline(i, Some(1000)), Some(10));
        s.expire_due(10, 10, |_| panic!("the old deadline is stale"));
        assert!(s.get(b"k").is_some());
        s.put(b"k", b"2", None);
        s.expire_due(5000, 10, |_| panic!("no deadline any more"));
        assert_eq!(s.next_deadline(), None);
        // Many changes of one key's deadline keep the heap small.
        s.put(b"k", b"3", Some(1));
        for d in 0..10_000 {
            let i = s.find(b"k").unwrap();
            s.set_deadline(i, Some(d + 2));
        }
        assert!(s.deadlines.len() <= 130, "{}", s.deadlines.len());
    }

    /// Every key at the position its header says, found by key and by
    /// position, with the deadline and value a plain map gives.
    fn check(s: &Store, model: &std::collections::HashMap<Vec<u8>, (Vec<u8>, Option<u64>)>) {
        assert_eq!(s.len(), model.len());
        assert_eq!(
            s.volatile(),
            model.values().filter(|(_, d)| d.is_some()).count()
        );
        for (k, (v, d)) in model {
            let slot = s.slot(k).expect("present");
            assert_eq!((slot.entry.value(), slot.deadline), (&v[..], *d));
            let p = s.position(k).unwrap();
            assert_eq!(s.at(p).unwrap().entry.key(), &k[..]);
        }
        let mut seen: Vec<&[u8]> = (0..s.len()).map(|p| s.at(p).unwrap().entry.key()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), model.len(), "each position holds its own key");
    }

    #[test]
    fn positions_and_deadlines_follow_every_write_and_snapshots_keep_theirs() {
        let mut s = Store::new(11);
        let mut model = std::collections::HashMap::new();
        let mut snapshot: Vec<Slot> = Vec::new();
        let mut snapshot_model = Vec::new();
        let mut x = 1u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = format!("k{}", x % 300).into_bytes();
            match x >> 60 {
                0..=5 => {
                    let d = (x % 3 == 0).then_some(1_000 + x % 500);
                    let v = step.to_string().into_bytes();
                    s.put(&k, &v, d);
                    model.insert(k, (v, d));
                }
                6..=9 => {
                    assert_eq!(s.remove(&k), model.remove(&k).is_some());
                }
                10..=11 => {
                    if let Some(f) = s.find(&k) {
                        let d = (x % 2 == 0).then_some(2_000 + x % 500);
                        let old = s.set_deadline(f, d);
                        let m = model.get_mut(&k).unwrap();
                        assert_eq!(old, m.1);
                        m.1 = d;
                    }
                }
                12 => {
                    if let Some(f) = s.find(&k) {
                        let before = s.replace_value(f, b"new");
                        let m = model.get_mut(&k).unwrap();
                        assert_eq!((before.entry.value(), before.deadline), (&m.0[..], m.1));
                        m.0 = b"new".to_vec();
                    }
                }
                13 => {
                    let now = 1_000 + x % 700;
                    s.expire_due(now, 5, |gone| {
                        let m = model.remove(gone.entry.key()).expect("a present key");
                        assert!(m.1.is_some_and(|d| d <= now), "only due keys");
                    });
                }
                _ => {
                    // A snapshot held across the writes that follow.
                    snapshot = s.slots().collect();
                    snapshot_model = snapshot
                        .iter()
                        .map(|s| (s.entry.key().to_vec(), s.entry.value().to_vec(), s.deadline))
                        .collect();
                }
            }
            if step % 500 == 0 {
                check(&s, &model);
            }
        }
        check(&s, &model);
        let now: Vec<_> = snapshot
            .iter()
            .map(|s| (s.entry.key().to_vec(), s.entry.value().to_vec(), s.deadline))
            .collect();
        assert_eq!(now, snapshot_model);
    }

    #[test]
    fn access_words_move_with_their_keys_and_cost_nothing_until_asked_for() {
        let mut s = Store::new(5);
        s.put(b"before", b"v", None);
        assert!(s.access().is_none() && s.access_word(0).is_none());
        s.track_access(Some(AccessMode::Lru), 1_000, 1);
        let mut model = std::collections::HashMap::new();
        model.insert(b"before".to_vec(), 1_000u64);
        let (mut x, mut now) = (7u64, 1_000u64);
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += 10;
            s.set_access_time(now);
            let k = format!("k{}", x % 200).into_bytes();
            match x >> 61 {
                0..=2 => {
                    s.put(&k, b"v", (x % 5 == 0).then_some(u64::MAX));
                    model.insert(k, now);
                }
                3 | 4 => {
                    assert_eq!(s.remove(&k), model.remove(&k).is_some());
                }
                _ => {
                    if let Some(f) = s.find(&k) {
                        s.touch(f);
                        model.insert(k, now);
                    }
                }
            }
            if step % 1000 == 0 || step == 19_999 {
                let a = s.access().unwrap();
                for (k, at) in &model {
                    let w = s.access_word(s.position(k).unwrap()).unwrap();
                    assert_eq!(a.idle_ms(w), now - at, "{}", String::from_utf8_lossy(k));
                }
            }
        }
        s.clear();
        s.put(b"k", b"v", None);
        assert_eq!(s.access().unwrap().idle_ms(s.access_word(0).unwrap()), 0);
        s.track_access(None, now, 1);
        assert!(s.access().is_none());
    }

    #[test]
    fn deadline_items_sample_keys_with_a_deadline_and_the_soonest_is_exact() {
        let mut s = Store::new(9);
        for i in 0..50u64 {
            let d = (i % 2 == 0).then_some(10_000 - i);
            s.put(format!("k{i}").as_bytes(), b"v", d);
        }
        // A stale item: k0's deadline changed.
        let f = s.find(b"k0").unwrap();
        s.set_deadline(f, Some(20_000));
        let mut seen = std::collections::HashSet::new();
        for i in 0..s.deadline_items() {
            if let Some(f) = s.deadline_item(i) {
                let slot = s.found(f).unwrap();
                assert!(slot.deadline.is_some());
                seen.insert(slot.entry.key().to_vec());
            }
        }
        assert_eq!(seen.len(), 25, "every key with a deadline, once");
        let soonest = s.soonest_volatile().unwrap();
        assert_eq!(s.found(soonest).unwrap().entry.key(), b"k48");
        s.take_at(soonest);
        let next = s.soonest_volatile().unwrap();
        assert_eq!(s.found(next).unwrap().entry.key(), b"k46");
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
