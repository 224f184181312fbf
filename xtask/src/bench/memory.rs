//! Step 5: what a key costs in memory, kv against Redis, without a TTL and
//! with one.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::load::{key, load_expiring};
use super::processes::Processes;
use super::report::Memory;
use super::resp::{info_field, info_number, Conn};
use super::VALUE_LEN;

/// Keys loaded for the memory comparison.
const MEMORY_KEYS: u64 = 1_000_000;

/// The resident set size of process `pid`, in bytes.
fn vm_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no VmRSS line"))?;
    Ok(kb * 1024)
}

/// Keys and keys with a TTL, from the `db0:keys=N,expires=M,…` line of
/// `INFO keyspace` (no line: an empty database).
fn keyspace(info: &[(String, String)]) -> Result<(u64, u64)> {
    let Some(line) = info_field(info, "db0") else {
        return Ok((0, 0));
    };
    let count = |name: &str| -> Result<u64> {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in db0:{line}"))?
            .parse()
            .with_context(|| format!("{name} in db0:{line} is not a number"))
    };
    Ok((count("keys")?, count("expires")?))
}

/// Checks that the server at `conn` holds exactly the [`MEMORY_KEYS`] keys
/// loaded, each with a TTL if `ttl` is given (and then the first key's TTL
/// is near it), and none otherwise.
fn check_loaded(conn: &mut Conn, name: &str, ttl: Option<u64>) -> Result<()> {
    let (keys, expires) = keyspace(&conn.info(Some("keyspace"))?)?;
    let want = if ttl.is_some() { MEMORY_KEYS } else { 0 };
    ensure!(
        keys == MEMORY_KEYS && expires == want,
        "{name} holds {keys} keys, {expires} with a TTL; {MEMORY_KEYS} were loaded, {want} with one"
    );
    if let Some(ttl) = ttl {
        let left: u64 = conn
            .command(&[b"TTL", key(0).as_bytes()])?
            .parse()
            .with_context(|| format!("{name} answered TTL with no number"))?;
        ensure!(
            left > ttl / 2 && left <= ttl,
            "{name} gives {} a TTL of {left} s, not about {ttl} s",
            key(0)
        );
    }
    Ok(())
}

/// Loads [`MEMORY_KEYS`] keys into fresh Redis and kv servers, with
/// `SET … EX ttl` if `ttl` (in seconds) is given, and measures what they
/// cost.
pub(super) fn memory(
    kv: &Path,
    server_args: &[String],
    out: &Path,
    ttl: Option<u64>,
) -> Result<Memory> {
    let suffix = if ttl.is_some() {
        "memory-ttl"
    } else {
        "memory"
    };
    let mut procs = Processes::default();
    let redis = procs.redis(out, &format!("redis-{suffix}"))?;
    let server = procs.kv(kv, server_args, out, &format!("kv-server-{suffix}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    eprintln!(
        "xtask bench: loading {MEMORY_KEYS} keys{} into fresh redis and kv servers",
        ttl.map_or(String::new(), |t| format!(" with EX {t}"))
    );

    let mut conn = Conn::connect(redis.addr, deadline)?;
    let used = |conn: &mut Conn| info_number(&conn.info(Some("memory"))?, "used_memory");
    let (used0, redis_rss0) = (used(&mut conn)?, vm_rss(redis.pid)?);
    load_expiring(redis.addr, 0..MEMORY_KEYS, ttl, deadline)?;
    let (used1, redis_rss1) = (used(&mut conn)?, vm_rss(redis.pid)?);
    check_loaded(&mut conn, "redis", ttl)?;

    let kv_rss0 = vm_rss(server.pid)?;
    load_expiring(server.addr, 0..MEMORY_KEYS, ttl, deadline)?;
    let kv_rss1 = vm_rss(server.pid)?;
    check_loaded(&mut Conn::connect(server.addr, deadline)?, "kv", ttl)?;
    drop(procs);

    Ok(Memory {
        keys: MEMORY_KEYS,
        key_len: key(0).len(),
        value_len: VALUE_LEN,
        ttl,
        kv_rss: kv_rss1.saturating_sub(kv_rss0),
        redis_used_memory: used1.saturating_sub(used0),
        redis_rss: redis_rss1.saturating_sub(redis_rss0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keyspace_line() {
        let info = |line: &str| vec![("db0".to_owned(), line.to_owned())];
        assert_eq!(
            keyspace(&info("keys=1000000,expires=999,avg_ttl=0")).unwrap(),
            (1_000_000, 999)
        );
        assert_eq!(keyspace(&[]).unwrap(), (0, 0));
        assert!(keyspace(&info("keys=x,expires=0")).is_err());
    }
}
