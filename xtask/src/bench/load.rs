//! What the servers start with: the arguments that make `kv server`
//! comparable with Redis, and the keys they are given before they are
//! measured, the same keys `redis-benchmark -r` touches, so that every GET
//! finds a value.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};

use super::resp::{self, Conn};
use super::VALUE_LEN;
use crate::cmd::Cmd;

/// Commands per write when loading keys: large enough that loading is
/// bound by the server, small enough that replies never back up.
const LOAD_BATCH: u64 = 1000;

/// The key `redis-benchmark` makes of `__rand_int__` = `i`: `key:` and 12
/// digits, so every key is 16 bytes.
pub(super) fn key(i: u64) -> String {
    prefixed(KEY_PREFIX, i)
}

/// What comes before the number in [`key`].
const KEY_PREFIX: &str = "key:";

/// `prefix` and `i` in 12 digits: the key `redis-benchmark` makes of
/// `__rand_int__` = `i` in a key that starts with `prefix`.
fn prefixed(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:012}")
}

/// A 64-byte value that differs per key (no server can share them).
fn value(i: u64) -> String {
    format!("{i:0>width$}", width = VALUE_LEN)
}

/// `SET key(i) value(i)` for every `i` in `keys`, pipelined in batches.
pub(super) fn load(addr: SocketAddr, keys: Range<u64>, deadline: Instant) -> Result<()> {
    load_expiring(addr, keys, None, deadline)
}

/// [`load`], with `EX ttl` on every SET when `ttl` (in seconds) is given.
pub(super) fn load_expiring(
    addr: SocketAddr,
    keys: Range<u64>,
    ttl: Option<u64>,
    deadline: Instant,
) -> Result<()> {
    load_keys(addr, KEY_PREFIX, keys, ttl, deadline)
}

/// [`load`] of the keys that start with `prefix` instead of `key:`, as
/// `redis-benchmark --cluster` names them (`key:{TAG}:` and 12 digits).
pub(super) fn load_prefixed(
    addr: SocketAddr,
    prefix: &str,
    keys: Range<u64>,
    deadline: Instant,
) -> Result<()> {
    load_keys(addr, prefix, keys, None, deadline)
}

fn load_keys(
    addr: SocketAddr,
    prefix: &str,
    keys: Range<u64>,
    ttl: Option<u64>,
    deadline: Instant,
) -> Result<()> {
    let ttl = ttl.map(|t| t.to_string());
    let mut conn = Conn::connect(addr, deadline)?;
    let mut batch = Vec::new();
    let mut i = keys.start;
    while i < keys.end {
        ensure!(
            Instant::now() < deadline,
            "loading keys into {addr} timed out"
        );
        let end = (i + LOAD_BATCH).min(keys.end);
        batch.clear();
        for k in i..end {
            let (key, value) = (prefixed(prefix, k), value(k));
            let mut args: Vec<&[u8]> = vec![b"SET", key.as_bytes(), value.as_bytes()];
            if let Some(ttl) = &ttl {
                args.extend([b"EX".as_slice(), ttl.as_bytes()]);
            }
            resp::encode(&mut batch, &args);
        }
        conn.pipeline(&batch, end - i)?;
        i = end;
    }
    Ok(())
}

/// `GET key(i)` for every `i` in `keys`, failing if any key is missing.
pub(super) fn get_all(addr: SocketAddr, keys: Range<u64>, deadline: Instant) -> Result<()> {
    get_all_prefixed(addr, KEY_PREFIX, keys, deadline)
}

/// [`get_all`] of the keys [`load_prefixed`] loads.
pub(super) fn get_all_prefixed(
    addr: SocketAddr,
    prefix: &str,
    keys: Range<u64>,
    deadline: Instant,
) -> Result<()> {
    let mut conn = Conn::connect(addr, deadline)?;
    let mut batch = Vec::new();
    let mut i = keys.start;
    while i < keys.end {
        ensure!(
            Instant::now() < deadline,
            "reading keys from {addr} timed out"
        );
        let end = (i + LOAD_BATCH).min(keys.end);
        batch.clear();
        for k in i..end {
            resp::encode(&mut batch, &[b"GET", prefixed(prefix, k).as_bytes()]);
        }
        let replies = conn.pipeline(&batch, end - i)?;
        // Values are digits only, so a nil reply cannot hide in one.
        ensure!(
            !replies.windows(5).any(|w| w == b"$-1\r\n"),
            "{addr} is missing keys it was just given"
        );
        i = end;
    }
    Ok(())
}

/// The arguments that start a `kv server` comparable with Redis run with
/// persistence off: `--in-memory` where the binary has a log to turn off
/// (older builds have none, and no such flag).
pub(super) fn kv_server_args(kv: &Path) -> Result<Vec<String>> {
    let help = Cmd::new(kv).args(["server", "--help"]).read()?;
    let mut args: Vec<String> = ["server", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .into();
    if help.contains("--in-memory") {
        args.push("--in-memory".into());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_those_of_redis_benchmark() {
        assert_eq!(key(18426), "key:000000018426");
        assert_eq!(key(0).len(), 16);
        assert_eq!(prefixed("key:{06S}:", 7), "key:{06S}:000000000007");
        assert_eq!(value(7).len(), VALUE_LEN);
    }
}
