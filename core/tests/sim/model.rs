//! The oracle: every key's history at the server, and the read checks.
//!
//! Every `PUT` value is unique (`k<key>:v<seq>`, with a global write
//! sequence number), so a value read names the exact write it came from.
//! The driver decodes, alongside each server connection, the same bytes the
//! server executes, so the model sees the server's apply order: a key's
//! *versions* are numbered by their position in that order, and "older"
//! means "earlier position". A `DEL` that finds the key makes a new
//! (missing) version; a missing value read may match any missing version.

use bytes::Bytes;
use kv_core::Instant;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

pub fn key_name(k: usize) -> Bytes {
    Bytes::from(format!("k{k}"))
}

pub fn parse_key(b: &[u8]) -> Option<usize> {
    std::str::from_utf8(b.strip_prefix(b"k")?)
        .ok()?
        .parse()
        .ok()
}

pub fn value_bytes(key: usize, seq: u64) -> Bytes {
    Bytes::from(format!("k{key}:v{seq}"))
}

/// The key and write sequence number a value was made with.
pub fn parse_value(b: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (k, seq) = s.strip_prefix('k')?.split_once(":v")?;
    Some((k.parse().ok()?, seq.parse().ok()?))
}

pub fn fmt_t(t: Instant) -> String {
    format!("{:.6}s", t.as_nanos() as f64 / 1e9)
}

pub fn fmt_value(v: Option<u64>) -> String {
    v.map_or_else(|| "(nil)".to_string(), |seq| format!("v{seq}"))
}

pub fn minus(t: Instant, d: Duration) -> Instant {
    Instant::from_nanos(t.as_nanos().saturating_sub(d.as_nanos() as u64))
}

/// One value a key held at the server, from `start` until `end` (`None`:
/// still current).
#[derive(Debug, Clone)]
pub struct Version {
    pub value: Option<u64>,
    pub start: Instant,
    pub end: Option<Instant>,
    /// Rolled back by a restart that restored older state.
    pub lost: bool,
}

#[derive(Debug)]
pub struct KeyHistory {
    pub versions: Vec<Version>,
    /// Every `DEL` that named the key: (apply clock, resulting position).
    dels: Vec<(u64, usize)>,
    /// The newest position some client saw acknowledged: what must survive
    /// a server restart.
    pub acked: usize,
}

/// Why a read is not explained by the history.
#[derive(Debug)]
pub enum ReadError {
    /// The value was never written to this key (or never applied).
    Unknown(String),
    /// The value was not current at any time the request could have seen.
    Stale(String),
    /// The value is older than one this session already saw.
    BelowFloor { got: usize },
}

#[derive(Debug)]
pub struct Model {
    pub keys: Vec<KeyHistory>,
    /// Writes applied so far: the server's apply clock.
    pub applied: u64,
    /// Where each `PUT` value was first applied: (key, position).
    puts: HashMap<u64, (usize, usize)>,
}

impl Model {
    pub fn new(keys: usize, now: Instant) -> Self {
        Model {
            keys: (0..keys)
                .map(|_| KeyHistory {
                    versions: vec![Version {
                        value: None,
                        start: now,
                        end: None,
                        lost: false,
                    }],
                    dels: Vec::new(),
                    acked: 0,
                })
                .collect(),
            applied: 0,
            puts: HashMap::new(),
        }
    }

    pub fn current(&self, key: usize) -> Option<u64> {
        self.keys[key].versions.last().and_then(|v| v.value)
    }

    fn push(&mut self, key: usize, value: Option<u64>, now: Instant) -> usize {
        let h = &mut self.keys[key];
        if let Some(last) = h.versions.last_mut() {
            last.end = Some(now);
        }
        h.versions.push(Version {
            value,
            start: now,
            end: None,
            lost: false,
        });
        h.versions.len() - 1
    }

    /// The server executed `SET k v<seq>`. A value applied twice means a
    /// request was executed twice (a retry or a duplicated byte range).
    pub fn apply_put(&mut self, key: usize, seq: u64, now: Instant) -> Result<(), String> {
        self.applied += 1;
        let pos = self.push(key, Some(seq), now);
        if let Some((k, p)) = self.puts.insert(seq, (key, pos)) {
            return Err(format!(
                "write v{seq} was applied twice (to k{k} at position {p}, then to k{key})"
            ));
        }
        Ok(())
    }

    /// The server executed a `DEL` naming `key`.
    pub fn apply_del(&mut self, key: usize, now: Instant) {
        self.applied += 1;
        let pos = if self.current(key).is_some() {
            self.push(key, None, now)
        } else {
            self.keys[key].versions.len() - 1
        };
        let applied = self.applied;
        self.keys[key].dels.push((applied, pos));
    }

    /// The server came back from a restart holding `value` for `key`, an
    /// older value than the model's: the versions after the newest one
    /// holding it are lost, and the restored value becomes a new version
    /// so that the run can go on.
    pub fn lose(&mut self, key: usize, value: Option<u64>, now: Instant) {
        let h = &mut self.keys[key];
        let keep = h
            .versions
            .iter()
            .rposition(|v| v.value == value)
            .unwrap_or(0);
        for v in &mut h.versions[keep + 1..] {
            v.lost = true;
        }
        self.applied += 1;
        self.push(key, value, now);
    }

    pub fn is_lost(&self, key: usize, pos: usize) -> bool {
        self.keys[key].versions[pos].lost
    }

    /// Position of an applied `PUT`.
    pub fn put_position(&self, seq: u64) -> Option<(usize, usize)> {
        self.puts.get(&seq).copied()
    }

    /// The earliest position a `DEL` of `key` issued when the apply clock
    /// read `since` can have produced: a lower bound on the acknowledged
    /// `DEL`'s own (unknown) position, so floors built on it never claim
    /// more than the client saw.
    pub fn del_position(&self, key: usize, since: u64) -> Option<usize> {
        let dels = &self.keys[key].dels;
        let first = dels.partition_point(|(applied, _)| *applied <= since);
        dels[first..].iter().map(|(_, pos)| *pos).min()
    }

    /// Checks that a read of `value` from `key` is explained by the
    /// history: it was the key's value at some time in `[lo, hi]`, at a
    /// position no older than `floor`. Returns the oldest such position
    /// (the weakest claim, so later checks never over-constrain).
    pub fn check_read(
        &self,
        key: usize,
        value: Option<u64>,
        lo: Instant,
        hi: Instant,
        floor: usize,
    ) -> Result<usize, ReadError> {
        if let Some(seq) = value {
            match self.puts.get(&seq) {
                None => {
                    return Err(ReadError::Unknown(format!(
                        "v{seq} was never applied at the server"
                    )))
                }
                Some((k, _)) if *k != key => {
                    return Err(ReadError::Unknown(format!(
                        "v{seq} was written to k{k}, not k{key}"
                    )))
                }
                Some(_) => {}
            }
        }
        let versions = &self.keys[key].versions;
        let mut in_window = None;
        let mut best = None;
        // Versions are in time order: scan back from the newest and stop
        // at the first that ended before the window opened.
        for pos in (0..versions.len()).rev() {
            let v = &versions[pos];
            if v.end.is_some_and(|end| end < lo) {
                break;
            }
            if v.start > hi || v.value != value {
                continue;
            }
            in_window = Some(pos);
            if pos >= floor {
                best = Some(pos);
            }
        }
        match (best, in_window) {
            (Some(pos), _) => Ok(pos),
            (None, Some(pos)) => Err(ReadError::BelowFloor { got: pos }),
            (None, None) => Err(ReadError::Stale(format!(
                "{} of k{key} was not current at any time in [{}, {}]",
                fmt_value(value),
                fmt_t(lo),
                fmt_t(hi)
            ))),
        }
    }

    /// Records that a client saw a write to `key` at `pos` acknowledged.
    pub fn acknowledge(&mut self, key: usize, pos: usize) {
        let h = &mut self.keys[key];
        h.acked = h.acked.max(pos);
    }

    /// The versions of `key` around `pos`, for failure reports.
    pub fn describe(&self, key: usize, around: usize) -> String {
        let versions = &self.keys[key].versions;
        let from = around.saturating_sub(3);
        let to = (around + 3).min(versions.len() - 1);
        let mut s = format!("k{key} history (position: value, current from .. to):");
        for (pos, v) in versions.iter().enumerate().take(to + 1).skip(from) {
            let _ = write!(
                s,
                "\n      {pos}: {} {} .. {}",
                fmt_value(v.value),
                fmt_t(v.start),
                v.end.map_or_else(|| "now".to_string(), fmt_t)
            );
        }
        s
    }
}
