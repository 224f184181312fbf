//! Step 5: what a key costs in memory, kv against Redis, without a TTL and
//! with one; and (step 7) what the tracking table costs per key it
//! remembers.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::load::{get_all, key, load, load_expiring};
use super::processes::Processes;
use super::report::{Memory, TrackedMemory};
use super::resp::{info_field, info_number, Conn};
use super::tracking::{proxy_args, PROXIES};
use super::{KEYSPACE, VALUE_LEN};

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

/// `used_memory`, `tracking_total_keys` and `tracking_total_items`, read
/// on one connection kept open throughout (a new one would allocate its
/// own buffers in the server between two readings).
fn tracking_reading(conn: &mut Conn) -> Result<(u64, u64, u64)> {
    // kv reads its allocator's count at most once per millisecond of its
    // clock: the next millisecond's reading comes after every read before.
    std::thread::sleep(Duration::from_millis(5));
    let used = info_number(&conn.info(Some("memory"))?, "used_memory")?;
    let stats = conn.info(Some("stats"))?;
    Ok((
        used,
        info_number(&stats, "tracking_total_keys")?,
        info_number(&stats, "tracking_total_items")?,
    ))
}

/// Loads [`KEYSPACE`] keys into a fresh Redis and kv server, and measures
/// what each server's `used_memory` grows by while one tracking proxy, then
/// a second one, reads every key: the first read of a key adds it to the
/// tracking table with one client, the second adds only a client.
pub(super) fn tracking_memory(
    kv: &Path,
    server_args: &[String],
    out: &Path,
) -> Result<Vec<TrackedMemory>> {
    let mut procs = Processes::default();
    let mut measured = Vec::new();
    for server_name in ["redis", "kv server"] {
        let name = format!("{}-tracking-memory", server_name.replace(' ', "-"));
        let redis = server_name == "redis";
        let server = if redis {
            procs.redis(out, &name)?
        } else {
            procs.kv(kv, server_args, out, &name)?
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        eprintln!("xtask bench: tracking table memory, {server_name}");
        load(server.addr, 0..KEYSPACE, deadline)?;
        let mut conn = Conn::connect(server.addr, deadline)?;
        if !redis {
            // With a memory bound (this one is never reached) kv reads its
            // allocator before every batch of input, once per millisecond,
            // instead of every 100 ms: `INFO` is then current.
            conn.command(&[b"CONFIG", b"SET", b"maxmemory", b"1099511627776"])?;
        }
        let mut proxies = Vec::new();
        for i in 1..=PROXIES {
            let proxy = procs.kv(
                kv,
                &proxy_args(server.addr, true),
                out,
                &format!("{name}-proxy-{i}"),
            )?;
            // The proxy's tracked connection, and what the server holds for
            // it, exist before the first reading: one read of a key that is
            // not loaded (tracked too, which the counts below take out).
            Conn::connect(proxy.addr, deadline)?.command(&[b"GET", b"bench:connect"])?;
            proxies.push(proxy);
        }
        let before = tracking_reading(&mut conn)?;
        get_all(proxies[0].addr, 0..KEYSPACE, deadline)?;
        let first = tracking_reading(&mut conn)?;
        get_all(proxies[1].addr, 0..KEYSPACE, deadline)?;
        let second = tracking_reading(&mut conn)?;
        let keys = first.1 - before.1;
        let items = (first.2 - before.2, second.2 - first.2);
        ensure!(
            keys == KEYSPACE && items == (KEYSPACE, KEYSPACE) && second.1 == first.1,
            "{server_name}: tracking_total_keys went {} → {} → {}, tracking_total_items {} → {} → {}, \
             while two proxies read {KEYSPACE} keys",
            before.1,
            first.1,
            second.1,
            before.2,
            first.2,
            second.2
        );
        measured.push(TrackedMemory {
            server: server_name,
            keys,
            first_reader: first.0.saturating_sub(before.0),
            second_reader: second.0.saturating_sub(first.0),
        });
    }
    drop(procs);
    Ok(measured)
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
