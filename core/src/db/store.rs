//! The key/value store itself.
//!
//! Each pair lives in one allocation, `[key length: u32][key][value]`,
//! behind a reference-counted thin handle ([`Entry`]), in a hash table of
//! those handles. One allocation and a 16-byte table slot per key is what
//! keeps the memory per key below Redis's; the reference count makes a
//! snapshot of the whole store (for log compaction) a matter of counters.

use bytes::Bytes;
use hashbrown::HashTable;
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
    fn new(key: &[u8], value: &[u8]) -> Self {
        // Keys are bounded far below 4 GiB by the codec's limits.
        let klen = u32::try_from(key.len()).expect("key shorter than 4 GiB");
        let mut buf = Vec::with_capacity(4 + key.len() + value.len());
        buf.extend_from_slice(&klen.to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Entry(Arc::from(buf))
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
}

/// Keys and values are arbitrary bytes.
#[derive(Debug)]
pub struct Store {
    table: HashTable<Entry>,
    hasher: Hasher,
    /// Bytes held in keys and values, for `INFO`.
    data_bytes: usize,
}

impl Store {
    /// An empty store whose hash function is keyed by `hash_seed` (pass a
    /// random number in production, a constant in tests).
    pub fn new(hash_seed: u64) -> Self {
        Store {
            table: HashTable::new(),
            hasher: Hasher::with_seed(hash_seed),
            data_bytes: 0,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.table
            .find(self.hash(key), |e| e.key() == key)
            .map(Entry::value)
    }

    /// Stores a value, replacing any previous one, and returns the entry it
    /// replaced (kept, as a reference count, to undo the write).
    ///
    /// Key and value are copied into the entry's own allocation: decoded
    /// arguments are slices of a connection's receive buffer, and keeping
    /// them would pin that whole buffer in memory for as long as the key lives.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Option<Entry> {
        self.insert(Entry::new(key, value))
    }

    /// Puts an entry back as it was (to undo a write).
    pub fn restore(&mut self, entry: Entry) {
        self.insert(entry);
    }

    fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let key = entry.key();
        let hash = self.hash(key);
        self.data_bytes += key.len() + entry.value().len();
        let hasher = &self.hasher;
        match self.table.find_entry(hash, |e| e.key() == key) {
            Ok(mut found) => {
                let old = std::mem::replace(found.get_mut(), entry);
                self.data_bytes -= old.key().len() + old.value().len();
                Some(old)
            }
            Err(_) => {
                self.table
                    .insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
                None
            }
        }
    }

    /// Removes a key; whether it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.take(key).is_some()
    }

    /// Removes a key and returns its entry, if it existed.
    pub fn take(&mut self, key: &[u8]) -> Option<Entry> {
        let hash = self.hash(key);
        let (entry, _) = self
            .table
            .find_entry(hash, |e| e.key() == key)
            .ok()?
            .remove();
        self.data_bytes -= entry.key().len() + entry.value().len();
        Some(entry)
    }

    /// Every pair, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.iter().map(|e| (e.key(), e.value()))
    }

    /// Every entry, in no particular order: a snapshot that costs a
    /// reference count per key, not a copy.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.table.iter().cloned()
    }

    /// Every pair, sorted by key.
    pub fn dump(&self) -> Vec<(Bytes, Bytes)> {
        let mut entries: Vec<&Entry> = self.table.iter().collect();
        entries.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        entries
            .into_iter()
            .map(|e| {
                (
                    Bytes::copy_from_slice(e.key()),
                    Bytes::copy_from_slice(e.value()),
                )
            })
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held in keys and values (not counting overhead).
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove_dump() {
        let mut s = Store::new(7);
        s.put(b"b", b"2");
        s.put(b"a", b"1");
        assert_eq!(
            s.put(b"b", b"22").map(|e| e.value().to_vec()),
            Some(b"2".to_vec())
        );
        assert_eq!(s.get(b"b"), Some(&b"22"[..]));
        assert_eq!(s.data_bytes(), 5);
        assert_eq!(
            s.dump(),
            vec![
                (Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                (Bytes::from_static(b"b"), Bytes::from_static(b"22"))
            ]
        );
        assert!(s.remove(b"a"));
        assert!(!s.remove(b"a"));
        assert_eq!(
            s.take(b"b").map(|e| e.value().to_vec()),
            Some(b"22".to_vec())
        );
        assert!(s.is_empty());
        assert_eq!(s.data_bytes(), 0);
    }

    #[test]
    fn empty_keys_and_values_and_snapshots() {
        let mut s = Store::new(1);
        s.put(b"", b"");
        s.put(b"k", b"");
        assert_eq!(s.get(b""), Some(&b""[..]));
        assert_eq!(s.get(b"k"), Some(&b""[..]));
        let snapshot: Vec<Entry> = s.entries().collect();
        s.put(b"k", b"new");
        // The snapshot keeps what was there when it was taken.
        let mut old: Vec<(&[u8], &[u8])> = snapshot.iter().map(|e| (e.key(), e.value())).collect();
        old.sort();
        assert_eq!(old, vec![(&b""[..], &b""[..]), (&b"k"[..], &b""[..])]);
        assert_eq!(s.get(b"k"), Some(&b"new"[..]));
    }
}
