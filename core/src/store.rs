//! The key/value store itself.

use bytes::Bytes;
use std::collections::HashMap;

/// The map's hasher, seeded by the driver: the core reads no random source,
/// yet keys chosen by a peer must not be able to force hash collisions.
pub type Hasher = foldhash::fast::FixedState;

/// Keys and values are arbitrary bytes.
#[derive(Debug)]
pub struct Store {
    map: HashMap<Bytes, Bytes, Hasher>,
    /// Bytes held in keys and values, for `INFO`.
    data_bytes: usize,
}

impl Store {
    /// An empty store whose hash function is keyed by `hash_seed` (pass a
    /// random number in production, a constant in tests).
    pub fn new(hash_seed: u64) -> Self {
        Store {
            map: HashMap::with_hasher(Hasher::with_seed(hash_seed)),
            data_bytes: 0,
        }
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Stores a value, replacing any previous one.
    ///
    /// Key and value are copied into allocations of their own: decoded
    /// arguments are slices of a connection's receive buffer, and keeping
    /// them would pin that whole buffer in memory for as long as the key lives.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.replace(key, value);
    }

    /// Like [`Store::put`], and returns the value it replaced (with one
    /// lookup: the log keeps it to undo the write).
    pub fn replace(&mut self, key: &[u8], value: &[u8]) -> Option<Bytes> {
        let value = Bytes::copy_from_slice(value);
        self.data_bytes += value.len();
        if let Some(old) = self.map.get_mut(key) {
            self.data_bytes -= old.len();
            Some(std::mem::replace(old, value))
        } else {
            self.data_bytes += key.len();
            self.map.insert(Bytes::copy_from_slice(key), value);
            None
        }
    }

    /// Removes a key; whether it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.take(key).is_some()
    }

    /// Removes a key and returns its value, if it existed.
    pub fn take(&mut self, key: &[u8]) -> Option<Bytes> {
        let (k, v) = self.map.remove_entry(key)?;
        self.data_bytes -= k.len() + v.len();
        Some(v)
    }

    /// Every pair, in no particular order (cheap: keys and values are
    /// reference-counted, nothing is copied).
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.map.iter()
    }

    /// Every pair, sorted by key.
    pub fn dump(&self) -> Vec<(Bytes, Bytes)> {
        let mut pairs: Vec<(Bytes, Bytes)> = self
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pairs
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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
        s.put(b"b", b"22");
        assert_eq!(s.get(b"b").map(|v| &v[..]), Some(&b"22"[..]));
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
        assert_eq!(s.len(), 1);
        assert_eq!(s.data_bytes(), 3);
    }
}
