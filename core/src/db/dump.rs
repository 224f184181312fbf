//! `DUMP` as a stream: every live pair, sorted by key, written a piece at a
//! time as the client's socket drains, so that a store of a million keys
//! never sits encoded in memory whole and no other client waits more than
//! one step behind it.
//!
//! The reply is the store as it was when the command ran, whatever is
//! written while it goes out, and no step does more than a bounded amount
//! of work. A reply goes through four phases, a step each time:
//!
//! 1. **Collecting** the snapshot: a step takes the entries of the next
//!    [`COLLECT`] positions (a reference count each, see [`Entry`]). Taking
//!    them all at once would stall everyone for tens of milliseconds per
//!    million keys, so the store tells the snapshot about every write
//!    meanwhile, copy-on-write: a write to a key whose position the walk
//!    has not reached yet first hands over what the key held when the
//!    command ran (nothing, for a new key), which the walk then uses
//!    instead; and a removal that moves a key the walk has not reached into
//!    a position it has passed hands that key over as it moves.
//! 2. **Sorting** one run of [`RUN`] entries per step.
//! 3. **Writing**: merging the sorted runs into up to a chunk of output per
//!    step, the header first (only now is the count known).
//! 4. **Releasing** the snapshot's references, [`COLLECT`] per step:
//!    dropping a million at once would be a stall of its own.
//!
//! `DUMP`s that see the same store (no write in between, no deadline
//! passed) share one snapshot, in whatever phase it is: forty clients
//! asking for the same million keys cost one snapshot, not forty.

use super::store::{Entry, Hasher, Slot, Store};
use crate::codec::Dialect;
use crate::reply::{pair, pairs_header, Proto};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// Entries sorted in one step: a run this long sorts in well under a
/// millisecond, and a million keys make some five hundred runs to merge.
pub const RUN: usize = 2048;

/// Positions walked, or references released, in one step (about a
/// millisecond's work: each is a table lookup and a reference count).
pub const COLLECT: usize = 4096;

/// A snapshot of the live entries of a store at one moment. See the module
/// docs for its phases.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// While collecting: positions below it have been walked.
    cursor: usize,
    collecting: bool,
    /// The unix time (ms) of the command: keys whose deadline is at or
    /// before it are not in the reply.
    now: u64,
    /// Keys written since the command whose position the walk had not
    /// reached, with what they held then (`None`: nothing).
    touched: HashMap<Box<[u8]>, Option<Slot>, Hasher>,
    entries: Vec<Entry>,
    /// `entries[..sorted]` are sorted runs of [`RUN`] (the last may be
    /// shorter).
    sorted: usize,
    /// The store's generation when the command ran.
    generation: u64,
}

impl Snapshot {
    /// Takes `slot` (what the walk found, or a key moving out of its
    /// reach) unless the key was written since the command or expired.
    fn take(&mut self, slot: Slot) {
        if !slot.expired(self.now) && !self.touched.contains_key(slot.entry.key()) {
            self.entries.push(slot.entry);
        }
    }

    /// Walks up to `budget` more positions of `store`; the last step adds
    /// what written keys held when the command ran.
    fn collect(&mut self, store: &Store, budget: usize) {
        let end = self.cursor.saturating_add(budget).min(store.len());
        for i in self.cursor..end {
            if let Some(slot) = store.at(i) {
                self.take(slot.to_slot());
            }
        }
        self.cursor = end;
        if end == store.len() {
            let now = self.now;
            let before = std::mem::take(&mut self.touched);
            self.entries.extend(
                before
                    .into_values()
                    .flatten()
                    .filter(|s| !s.expired(now))
                    .map(|s| s.entry),
            );
            self.collecting = false;
        }
    }

    /// The store is about to write `key`, which is at `current` (its
    /// position and what it holds) or absent.
    pub(crate) fn before_write(&mut self, key: &[u8], current: Option<(usize, &Slot)>) {
        match current {
            // The walk has it already.
            Some((pos, _)) if pos < self.cursor => {}
            _ => {
                if !self.touched.contains_key(key) {
                    self.touched
                        .insert(key.into(), current.map(|(_, slot)| slot.clone()));
                }
            }
        }
    }

    /// The store is about to move the key at position `from`, holding
    /// `slot`, to position `to` (a removal fills its hole with the last
    /// key).
    pub(crate) fn before_move(&mut self, from: usize, to: usize, slot: Slot) {
        if from >= self.cursor && to < self.cursor {
            self.take(slot);
        }
    }

    /// Whether the store must still tell it about writes.
    pub(crate) fn is_collecting(&self) -> bool {
        self.collecting
    }

    /// Everything left to collect, at once (the store is being cleared).
    pub(crate) fn collect_all(&mut self, store: &Store) {
        if self.collecting {
            self.collect(store, usize::MAX);
        }
    }

    fn is_sorted(&self) -> bool {
        self.sorted == self.entries.len()
    }

    /// Sorts the next run.
    fn sort_run(&mut self) {
        let end = (self.sorted + RUN).min(self.entries.len());
        self.entries[self.sorted..end].sort_unstable_by(|a, b| a.key().cmp(b.key()));
        self.sorted = end;
    }
}

/// The snapshot, for one step. The lock is never contended (one store,
/// one thread); a step that panicked left the snapshot no less valid, so a
/// poisoned lock is taken as it is.
pub(crate) fn lock(snapshot: &Mutex<Snapshot>) -> MutexGuard<'_, Snapshot> {
    snapshot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The snapshots of `DUMP`s, while some reply still holds them.
#[derive(Debug, Default)]
pub struct DumpCache {
    /// The last one taken, for the next `DUMP` to share.
    last: Weak<Mutex<Snapshot>>,
    /// Every one taken and maybe still held (to tell whether one is out).
    all: Vec<Weak<Mutex<Snapshot>>>,
}

impl DumpCache {
    /// Whether some reply still holds a snapshot, sharing the store's
    /// entries (evicting one then frees nothing).
    pub fn snapshot_out(&self) -> bool {
        self.all.iter().any(|w| w.strong_count() > 0)
    }

    /// A reply of the pairs live in `store` at `now`, sharing the last
    /// snapshot if it is of exactly that.
    pub fn stream(&mut self, store: &mut Store, now: u64) -> DumpStream {
        let shared = self.last.upgrade().filter(|s| {
            let s = lock(s);
            // With no deadline due by `now`, no key expired since the last
            // snapshot's moment either.
            s.generation == store.generation()
                && (s.now == now || store.next_deadline().is_none_or(|d| d > now))
        });
        let snapshot = shared.unwrap_or_else(|| {
            let snapshot = Arc::new(Mutex::new(Snapshot {
                cursor: 0,
                collecting: true,
                now,
                touched: HashMap::with_hasher(*store.hasher()),
                entries: Vec::new(),
                sorted: 0,
                generation: store.generation(),
            }));
            store.watch_writes(Arc::downgrade(&snapshot));
            self.last = Arc::downgrade(&snapshot);
            self.all.retain(|w| w.strong_count() > 0);
            self.all.push(Arc::downgrade(&snapshot));
            snapshot
        });
        DumpStream {
            snapshot: Some(snapshot),
            heads: None,
            released: false,
        }
    }
}

/// One client's `DUMP` reply in progress. See the module docs.
#[derive(Debug)]
pub struct DumpStream {
    /// `None` once released.
    snapshot: Option<Arc<Mutex<Snapshot>>>,
    /// The merge of the sorted runs, once every run is sorted: for each run
    /// not yet written out, its next entry and its end, as a binary heap
    /// ordered by the key of the next entry. Its header is written when it
    /// is made.
    heads: Option<Vec<(u32, u32)>>,
    /// Every pair is written: what is left is releasing the snapshot.
    released: bool,
}

impl DumpStream {
    /// Does one step of work (see the module docs), writing to `out`, in
    /// `dialect` and `proto`, until it holds `chunk` bytes if the step is
    /// one of writing. Whether the reply is complete.
    pub fn step(
        &mut self,
        store: &Store,
        out: &mut BytesMut,
        chunk: usize,
        dialect: Dialect,
        proto: Proto,
    ) -> bool {
        let Some(arc) = &self.snapshot else {
            return true;
        };
        if self.released {
            return self.release_step();
        }
        let mut snapshot = lock(arc);
        if snapshot.collecting {
            snapshot.collect(store, COLLECT);
            return false;
        }
        if !snapshot.is_sorted() {
            snapshot.sort_run();
            return false;
        }
        let entries = &snapshot.entries;
        let heads = self.heads.get_or_insert_with(|| {
            pairs_header(dialect, proto, entries.len(), out);
            merge_heads(entries)
        });
        while out.len() < chunk {
            let Some(i) = pop_next(heads, entries) else {
                break;
            };
            pair(dialect, entries[i].key(), entries[i].value(), out);
        }
        self.released = heads.is_empty();
        false
    }

    /// Releases a step's worth of the snapshot's references (only the last
    /// holder of a shared snapshot has any to release); whether it is all
    /// released. Also for a reply whose client went away.
    pub fn release_step(&mut self) -> bool {
        let Some(arc) = &self.snapshot else {
            return true;
        };
        if Arc::strong_count(arc) == 1 {
            let mut snapshot = lock(arc);
            if !snapshot.entries.is_empty() || !snapshot.touched.is_empty() {
                let keep = snapshot.entries.len().saturating_sub(COLLECT);
                snapshot.entries.truncate(keep);
                if keep == 0 {
                    snapshot.touched.clear();
                }
                return false;
            }
        }
        self.snapshot = None;
        true
    }

    /// Whether every pair has been written (what may be left is releasing
    /// the snapshot, which the client does not wait for).
    pub fn is_written(&self) -> bool {
        self.released || self.snapshot.is_none()
    }

    /// The memory this reply holds until it is complete (its snapshot's
    /// references, counted whole even when shared, so that a client's
    /// output limit bounds what it alone could keep alive).
    pub fn held_bytes(&self) -> usize {
        let Some(arc) = &self.snapshot else {
            return 0;
        };
        let snapshot = lock(arc);
        snapshot.entries.capacity() * std::mem::size_of::<Entry>()
            + snapshot.touched.len() * (std::mem::size_of::<Slot>() + 32)
            + self.heads.as_ref().map_or(0, |h| h.capacity() * 8)
    }

    /// The whole reply as pairs, at once: for replies that cannot go out a
    /// piece at a time (inside `EXEC`, or a caller that wants a value).
    pub fn into_pairs(mut self, store: &Store) -> Vec<(Bytes, Bytes)> {
        let Some(arc) = self.snapshot.take() else {
            return Vec::new();
        };
        let mut snapshot = lock(&arc);
        snapshot.collect_all(store);
        while !snapshot.is_sorted() {
            snapshot.sort_run();
        }
        let entries = &snapshot.entries;
        let heads = self.heads.get_or_insert_with(|| merge_heads(entries));
        let mut pairs = Vec::with_capacity(entries.len());
        while let Some(i) = pop_next(heads, entries) {
            let e = &entries[i];
            pairs.push((
                Bytes::copy_from_slice(e.key()),
                Bytes::copy_from_slice(e.value()),
            ));
        }
        pairs
    }
}

/// The heap of the sorted runs' heads.
fn merge_heads(entries: &[Entry]) -> Vec<(u32, u32)> {
    let len = u32::try_from(entries.len()).expect("fewer than 4 billion keys");
    let run = RUN as u32;
    let mut heads: Vec<(u32, u32)> = (0..len.div_ceil(run))
        .map(|r| (r * run, (r * run + run).min(len)))
        .collect();
    for i in (0..heads.len() / 2).rev() {
        sift_down(&mut heads, entries, i);
    }
    heads
}

/// The index of the next entry in key order, taken off the merge.
fn pop_next(heads: &mut Vec<(u32, u32)>, entries: &[Entry]) -> Option<usize> {
    let &(next, end) = heads.first()?;
    if next + 1 == end {
        let last = heads.pop().expect("the heap is not empty");
        if heads.is_empty() {
            return Some(next as usize);
        }
        heads[0] = last;
    } else {
        heads[0].0 = next + 1;
    }
    sift_down(heads, entries, 0);
    Some(next as usize)
}

/// Restores the heap order below `i` (by the key of each head's next
/// entry; keys are unique, so there are no ties).
fn sift_down(heads: &mut [(u32, u32)], entries: &[Entry], mut i: usize) {
    let key = |h: &(u32, u32)| entries[h.0 as usize].key();
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut least = i;
        if l < heads.len() && key(&heads[l]) < key(&heads[least]) {
            least = l;
        }
        if r < heads.len() && key(&heads[r]) < key(&heads[least]) {
            least = r;
        }
        if least == i {
            return;
        }
        heads.swap(i, least);
        i = least;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;

    fn store(n: usize) -> Store {
        let mut s = Store::new(7);
        // Keys inserted out of order, some with deadlines.
        for i in 0..n {
            let k = format!("k{:06}", (i * 7919) % n);
            let deadline = (i % 10 == 0).then_some(1_000 + i as u64);
            s.put(k.as_bytes(), format!("v{i}").as_bytes(), deadline);
        }
        s
    }

    /// Runs a stream to its end; the bytes and the number of steps.
    fn streamed(
        stream: &mut DumpStream,
        store: &Store,
        chunk: usize,
        dialect: Dialect,
        proto: Proto,
    ) -> (Vec<u8>, usize) {
        let mut all = Vec::new();
        let mut steps = 0;
        loop {
            let mut out = BytesMut::new();
            let done = stream.step(store, &mut out, chunk, dialect, proto);
            assert!(out.len() < chunk + 64, "a step writes about one chunk");
            all.extend_from_slice(&out);
            steps += 1;
            if done {
                return (all, steps);
            }
        }
    }

    fn resp(pairs: Vec<(Bytes, Bytes)>) -> Vec<u8> {
        let mut out = BytesMut::new();
        Reply::Pairs(pairs).encode_resp(&mut out);
        out.to_vec()
    }

    #[test]
    fn a_streamed_dump_encodes_exactly_as_the_whole_reply_in_every_dialect() {
        let mut s = store(3 * RUN + 17);
        let now = 1_500;
        let live = s.dump(now).len();
        let whole = Reply::Pairs(s.dump(now));
        for (dialect, proto) in [
            (Dialect::Resp, Proto::Resp2),
            (Dialect::Resp, Proto::Resp3),
            (Dialect::Inline, Proto::Resp2),
        ] {
            let mut expected = BytesMut::new();
            whole.encode_as(dialect, proto, &mut expected);
            let mut stream = DumpCache::default().stream(&mut s, now);
            let (got, steps) = streamed(&mut stream, &s, 4096, dialect, proto);
            assert_eq!(got, expected.to_vec(), "{dialect:?} {proto:?}");
            // Steps collecting COLLECT positions, sorting a run each, then
            // the output a chunk at a time, then releasing COLLECT
            // references each, and one to end.
            let collect = s.len().div_ceil(COLLECT);
            let runs = live.div_ceil(RUN);
            let release = live.div_ceil(COLLECT) + 1;
            let chunks = steps - collect - runs - release;
            assert!(chunks <= expected.len().div_ceil(4096), "{chunks}");
            assert!(chunks >= expected.len() / (4096 + 64), "{chunks}");
        }
        let mut empty = Store::new(0);
        let mut stream = DumpCache::default().stream(&mut empty, 0);
        let (got, _) = streamed(&mut stream, &empty, 100, Dialect::Inline, Proto::Resp2);
        assert_eq!(got, b"(empty)\r\n");
    }

    /// The reply is the store when the command ran, whatever is written
    /// while the snapshot is collected and after.
    #[test]
    fn writes_while_the_snapshot_is_collected_do_not_show_in_it() {
        let n = 3 * COLLECT + 100;
        let mut s = store(n);
        let now = 1_500;
        let expected = resp(s.dump(now));
        let mut stream = DumpCache::default().stream(&mut s, now);
        let mut out = BytesMut::new();
        // A third of the positions walked.
        assert!(!stream.step(&s, &mut out, 1 << 20, Dialect::Resp, Proto::Resp2));
        let key = |i: usize| format!("k{i:06}");
        let pos = |s: &Store, i: usize| s.position(key(i).as_bytes()).unwrap();
        // Keys on both sides of the walk: overwritten, given deadlines,
        // removed (moving the last key into the hole, across the walk),
        // and new keys, some removed again.
        let mut walked = 0;
        let mut ahead = 0;
        for i in 0..n {
            if pos(&s, i) < COLLECT {
                walked += 1;
            } else {
                ahead += 1;
            }
            match i % 7 {
                0 => {
                    s.put(key(i).as_bytes(), b"changed", None);
                }
                1 => {
                    let at = s.find(key(i).as_bytes()).unwrap();
                    s.set_deadline(at, Some(now + 1));
                }
                2 => {
                    s.remove(key(i).as_bytes());
                }
                3 => {
                    s.put(format!("new{i}").as_bytes(), b"x", None);
                    if i % 2 == 0 {
                        s.remove(format!("new{i}").as_bytes());
                    }
                }
                _ => {}
            }
        }
        assert!(walked > 1000 && ahead > 1000, "{walked} {ahead}");
        // Active expiry of a key that was live at `now`.
        s.expire_due(now + 1, usize::MAX, |_| {});
        let (rest, _) = streamed(&mut stream, &s, 1 << 20, Dialect::Resp, Proto::Resp2);
        out.extend_from_slice(&rest);
        assert_eq!(out.to_vec(), expected);
        // A clear mid-collection: what was left is taken at once.
        let expected = resp(s.dump(now + 1));
        let mut stream = DumpCache::default().stream(&mut s, now + 1);
        let mut out = BytesMut::new();
        stream.step(&s, &mut out, 1 << 20, Dialect::Resp, Proto::Resp2);
        s.clear();
        let (rest, _) = streamed(&mut stream, &s, 1 << 20, Dialect::Resp, Proto::Resp2);
        out.extend_from_slice(&rest);
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn dumps_of_an_unchanged_store_share_a_snapshot_until_a_write_or_a_deadline() {
        let mut s = store(100);
        let mut cache = DumpCache::default();
        let a = cache.stream(&mut s, 500);
        let b = cache.stream(&mut s, 999);
        let same = |x: &DumpStream, y: &DumpStream| {
            Arc::ptr_eq(x.snapshot.as_ref().unwrap(), y.snapshot.as_ref().unwrap())
        };
        assert!(same(&a, &b));
        // The soonest deadline is 1000 (key 0's): at 1000 the store no
        // longer holds that key.
        let c = cache.stream(&mut s, 1_000);
        assert!(!same(&a, &c));
        let d = cache.stream(&mut s, 1_000);
        assert!(same(&c, &d));
        s.put(b"x", b"y", None);
        let e = cache.stream(&mut s, 1_000);
        assert!(!same(&d, &e));
        assert_eq!(e.into_pairs(&s), s.dump(1_000));
        let without_x: Vec<_> = s
            .dump(500)
            .into_iter()
            .filter(|p| &p.0[..] != b"x")
            .collect();
        assert_eq!(a.into_pairs(&s), without_x);
        // Once no reply holds it, the snapshot is gone.
        drop((b, c, d));
        assert!(cache.last.upgrade().is_none());
    }

    #[test]
    fn only_the_last_holder_releases_the_snapshot_a_step_at_a_time() {
        let mut s = store(2 * COLLECT + 1);
        let mut cache = DumpCache::default();
        let mut a = cache.stream(&mut s, 0);
        let mut b = cache.stream(&mut s, 0);
        let (one, _) = streamed(&mut a, &s, 1 << 20, Dialect::Resp, Proto::Resp2);
        let mut steps = 0;
        let mut two = Vec::new();
        loop {
            let mut out = BytesMut::new();
            let done = b.step(&s, &mut out, 1 << 20, Dialect::Resp, Proto::Resp2);
            two.extend_from_slice(&out);
            steps += 1;
            if b.is_written() {
                break;
            }
            assert!(!done);
        }
        assert_eq!(one, two);
        let mut releases = 0;
        while !b.step(&s, &mut BytesMut::new(), 1, Dialect::Resp, Proto::Resp2) {
            releases += 1;
        }
        assert_eq!(releases, 3, "{steps}");
        assert_eq!(b.held_bytes(), 0);
    }
}
