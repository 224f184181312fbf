//! Step 5: what a key costs in memory, kv against Redis.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::load::{key, load};
use super::processes::Processes;
use super::report::Memory;
use super::resp::{info_number, Conn};
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

/// Loads [`MEMORY_KEYS`] keys into fresh Redis and kv servers and measures
/// what they cost.
pub(super) fn memory(kv: &Path, server_args: &[String], out: &Path) -> Result<Memory> {
    let mut procs = Processes::default();
    let redis = procs.redis(out, "redis-memory")?;
    let server = procs.kv(kv, server_args, out, "kv-server-memory")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    eprintln!("xtask bench: loading {MEMORY_KEYS} keys into fresh redis and kv servers");

    let mut conn = Conn::connect(redis.addr, deadline)?;
    let used = |conn: &mut Conn| info_number(&conn.info(Some("memory"))?, "used_memory");
    let (used0, redis_rss0) = (used(&mut conn)?, vm_rss(redis.pid)?);
    load(redis.addr, 0..MEMORY_KEYS, deadline)?;
    let (used1, redis_rss1) = (used(&mut conn)?, vm_rss(redis.pid)?);
    let dbsize = conn.command(&[b"DBSIZE"])?;
    ensure!(
        dbsize == MEMORY_KEYS.to_string(),
        "redis holds {dbsize} keys, not {MEMORY_KEYS}"
    );

    let kv_rss0 = vm_rss(server.pid)?;
    load(server.addr, 0..MEMORY_KEYS, deadline)?;
    let kv_rss1 = vm_rss(server.pid)?;
    let keys = info_number(&Conn::connect(server.addr, deadline)?.info(None)?, "keys")?;
    ensure!(
        keys == MEMORY_KEYS,
        "kv holds {keys} keys, not {MEMORY_KEYS}"
    );
    drop(procs);

    Ok(Memory {
        keys: MEMORY_KEYS,
        key_len: key(0).len(),
        value_len: VALUE_LEN,
        kv_rss: kv_rss1.saturating_sub(kv_rss0),
        redis_used_memory: used1.saturating_sub(used0),
        redis_rss: redis_rss1.saturating_sub(redis_rss0),
    })
}
