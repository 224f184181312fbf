//! Step 9, kv proxy in front of a Redis Cluster, beside a direct cluster
//! client.
//!
//! A local cluster of 3 masters and no replicas ([`RedisCluster`], the
//! end-to-end tests' fixture), and three ways to reach it:
//!
//! - `redis-benchmark --cluster`, which reads the slot map and sends each
//!   request straight to its slot's master: what a cluster-aware client
//!   gets without a proxy;
//! - `kv proxy --upstream-cluster --cache-ttl 0`: the cache is off, so every
//!   request is routed by the proxy to its slot's master and answered from
//!   there;
//! - a second `kv proxy --upstream-cluster` that has read every key and
//!   answers GETs from its cache (`--tracking off`, for the reason the
//!   proxies part gives: the SETs measured through the other proxy would
//!   otherwise turn its next GETs of those keys into misses).
//!
//! GET (all three) and SET (the first two) at pipeline 1 and 16, with the
//! clients, values and interleaved rounds of every other part; around each
//! run the proxy's CPU time and the masters' CPU time and command counts
//! are read.
//!
//! `redis-benchmark --cluster` does not name its keys as it does for one
//! server: it puts a hash tag in them, `key:{TAG}:` and the 12 digits, and
//! every client uses the tag of the first slot of the master it is
//! connected to. So its 100,000 keys per master are loaded into that
//! master under that prefix, found from a first short run of its SETs, and
//! the proxies' `key:` keys through the proxy, across all the slots: every
//! GET of every peer finds a 64-byte value.
//!
//! Without `redis-server`, `redis-cli` or a `redis-benchmark` with
//! `--cluster`, this part is reported as skipped rather than failing the
//! benchmark.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kv_tests::{which, RedisCluster};

use super::load::{get_all, get_all_prefixed, load, load_prefixed};
use super::machine::load_average;
use super::measure::{
    add_run_cost, calibrate_all, measure_rounds_observed, redis_benchmark, CacheCounts, Reading,
    Stage, SLOWEST_RPS,
};
use super::processes::{cpu_seconds, Processes, Service};
use super::report::{ClusterComparison, ClusterRun, ProxyCost};
use super::resp::{info_number, Conn};
use super::{Case, Options, Target, Workload, KEYSPACE};
use crate::cmd::Cmd;

/// Masters of the cluster: Redis's minimum, and the issue's.
const MASTERS: usize = 3;

/// The nodes' `cluster-node-timeout` during this part, in milliseconds,
/// instead of the fixture's 1 s, which is short so that the tests' failovers
/// are quick. With no replica to take over, a master the others flag as
/// failed takes the whole cluster down; on a machine this loaded a stall
/// of a second is not a failure, and this part kills no node.
const NODE_TIMEOUT_MS: u64 = 60_000;

/// Requests of the first run of the direct client's SETs, which names its
/// keys (see the module's comment).
const NAMING_RUN: u64 = 10_000;

/// The targets of the GET tests, in the order their cases are stored.
const GET_TARGETS: [Target; 3] = [
    Target::ClusterDirect,
    Target::ClusterProxyUncached,
    Target::ClusterProxyCached,
];

/// The targets of the SET tests: a SET through the caching proxy is routed
/// like one through the other, so it would only repeat that row.
const SET_TARGETS: [Target; 2] = [Target::ClusterDirect, Target::ClusterProxyUncached];

/// `kv proxy` in front of the cluster reached through `seeds`, serving
/// cached values for `cache_ttl` (`0`: the cache is off), without tracking.
fn proxy_args(seeds: &str, cache_ttl: &str) -> Vec<String> {
    [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream-cluster",
        seeds,
        "--cache-ttl",
        cache_ttl,
        "--tracking",
        "off",
    ]
    .map(String::from)
    .into()
}

/// Why this part cannot run here, if it cannot.
fn missing() -> Option<String> {
    for tool in ["redis-server", "redis-cli", "redis-benchmark"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not on PATH; `cargo xtask setup --only system` installs Debian's \
                 Redis"
            ));
        }
    }
    // Cluster mode came with Redis 6's redis-benchmark.
    let help = Cmd::new("redis-benchmark").arg("--help").output();
    let text = help
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    (!text.contains("--cluster"))
        .then(|| "this `redis-benchmark` has no `--cluster` mode (Redis 6 or later has)".into())
}

/// The prefix of a key `redis-benchmark --cluster` wrote: `key:{06S}:` of
/// `key:{06S}:000000012345`; `None` for any other key.
fn direct_prefix(key: &str) -> Option<&str> {
    let split = key.len().checked_sub(12)?;
    let (prefix, digits) = (key.get(..split)?, key.get(split..)?);
    let tagged = prefix.strip_prefix("key:{")?.strip_suffix(':')?;
    (digits.bytes().all(|b| b.is_ascii_digit()) && tagged.contains('}')).then_some(prefix)
}

/// Starts the cluster; a panic of the fixture (a node that does not start,
/// a cluster that does not settle) becomes this part's error.
fn start_cluster() -> Result<RedisCluster> {
    let started = std::panic::catch_unwind(|| RedisCluster::start(MASTERS, 0));
    match started {
        Ok(Some(cluster)) => Ok(cluster),
        Ok(None) => bail!("the Redis Cluster fixture found no redis-server or redis-cli"),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            bail!("the local Redis Cluster did not start: {why}")
        }
    }
}

/// `INFO stats` field `field`, added up over `nodes`.
fn stats_sum(nodes: &[SocketAddr], field: &str) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sum = 0;
    for &node in nodes {
        let info = Conn::connect(node, deadline)?.info(Some("stats"))?;
        sum += info_number(&info, field)?;
    }
    Ok(sum)
}

/// Keys the masters hold together.
fn keys_held(masters: &[SocketAddr]) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sum = 0;
    for &master in masters {
        let n = Conn::connect(master, deadline)?.command(&[b"DBSIZE"])?;
        sum += n
            .parse::<u64>()
            .with_context(|| format!("DBSIZE of {master} answered {n:?}"))?;
    }
    Ok(sum)
}

/// CPU seconds `pids` have used together.
fn cpu_sum(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// Runs the part, or says why it cannot when Redis's tools are missing.
pub(super) fn cluster(kv: &Path, options: &Options, out: &Path) -> Result<ClusterComparison> {
    if let Some(why) = missing() {
        eprintln!("xtask bench: skip: cluster: {why}");
        return Ok(ClusterComparison::Missing(why));
    }
    eprintln!("xtask bench: kv proxy in front of a Redis Cluster of {MASTERS} masters");
    // This part's own time, as it may be shown apart from the run's.
    let date = Cmd::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .read()
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    let load_before = load_average();
    let cluster = start_cluster()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let masters = cluster.masters();
    ensure!(
        masters.len() == MASTERS,
        "the cluster has {} masters, not {MASTERS}",
        masters.len()
    );
    let timeout = NODE_TIMEOUT_MS.to_string();
    for node in cluster.nodes() {
        let ok = Conn::connect(node, deadline)?.command(&[
            b"CONFIG",
            b"SET",
            b"cluster-node-timeout",
            timeout.as_bytes(),
        ])?;
        ensure!(
            ok == "OK",
            "CONFIG SET cluster-node-timeout on {node}: {ok}"
        );
    }
    let pids = cluster.pids();
    eprintln!(
        "xtask bench: cluster of {MASTERS} masters at {} (pids {pids:?})",
        cluster.seeds()
    );

    // The direct client's first SETs, before anything else is written, so
    // that any key a master holds now is one of them.
    redis_benchmark(masters[0], true, Workload::Set, 1, NAMING_RUN, SLOWEST_RPS)
        .context("redis-benchmark --cluster does not work with this cluster")?;
    let mut direct_keys = Vec::new();
    for &master in &masters {
        let key = Conn::connect(master, deadline)?.command(&[b"RANDOMKEY"])?;
        let prefix = direct_prefix(&key).with_context(|| {
            format!("{master} holds {key:?}, not a key of redis-benchmark --cluster")
        })?;
        load_prefixed(master, prefix, 0..KEYSPACE, deadline)?;
        get_all_prefixed(master, prefix, 0..KEYSPACE, deadline)?;
        direct_keys.push((master.to_string(), prefix.to_owned()));
    }

    let mut procs = Processes::default();
    let seeds = cluster.seeds();
    let uncached = procs.kv(
        kv,
        &proxy_args(&seeds, "0"),
        out,
        "kv-proxy-cluster-uncached",
    )?;
    let cached = procs.kv(
        kv,
        &proxy_args(&seeds, "600s"),
        out,
        "kv-proxy-cluster-cached",
    )?;
    let servers = vec![uncached.command.clone(), cached.command.clone()];
    // Through the proxy, across all the slots; then the caching proxy reads
    // every key, which it keeps.
    load(uncached.addr, 0..KEYSPACE, deadline)?;
    get_all(cached.addr, 0..KEYSPACE, deadline)?;
    let info = Conn::connect(cached.addr, deadline)?.info(None)?;
    let entries = info_number(&info, "cache_entries")?;
    ensure!(
        entries >= KEYSPACE,
        "the caching proxy cached only {entries} of {KEYSPACE} keys: its GETs would not all \
         be hits"
    );
    let keys = keys_held(&masters)?;
    let expected = KEYSPACE * (1 + MASTERS as u64);
    ensure!(
        keys == expected,
        "the masters hold {keys} keys, not the {expected} loaded: some GETs would find none"
    );

    let peer = |target: Target| -> Result<&Service> {
        Ok(match target {
            Target::ClusterProxyUncached => &uncached,
            Target::ClusterProxyCached => &cached,
            other => bail!("{other:?} is not a proxy of the cluster part"),
        })
    };
    let addr = |target: Target| -> Result<SocketAddr> {
        match target {
            // Any node would do: redis-benchmark reads the slot map there.
            Target::ClusterDirect => Ok(masters[0]),
            other => Ok(peer(other)?.addr),
        }
    };

    let plan = [
        (Workload::Get, &GET_TARGETS[..]),
        (Workload::Set, &SET_TARGETS[..]),
    ];
    let mut cases = calibrate_all(plan, addr, options)?;

    let mut costs: Vec<ProxyCost> = cases.iter().map(ProxyCost::of).collect();
    let cache_before = [
        CacheCounts::read(uncached.addr)?,
        CacheCounts::read(cached.addr)?,
    ];
    // What was read right before the run under way: proxy CPU, the masters'
    // CPU, their command count.
    let mut started: Option<Reading> = None;
    let observe = |case: &Case, stage: Stage| -> Result<()> {
        let proxy_cpu = match case.target {
            Target::ClusterDirect => None,
            other => Some(cpu_seconds(peer(other)?.pid)?),
        };
        let now = Reading {
            proxy_cpu,
            redis_cpu: cpu_sum(&pids)?,
            commands: stats_sum(&masters, "total_commands_processed")?,
        };
        match stage {
            Stage::Before => started = Some(now),
            Stage::After => {
                let before = started.take().context("a run ended that never started")?;
                add_run_cost(&mut costs, case, before, now, MASTERS as u64)?;
            }
        }
        Ok(())
    };
    measure_rounds_observed(&mut cases, addr, SLOWEST_RPS, options, "cluster: ", observe)?;
    let uncached_cache = cache_before[0].since_then(uncached.addr)?;
    let cached_cache = cache_before[1].since_then(cached.addr)?;
    let after = keys_held(&masters)?;
    ensure!(
        after == keys,
        "the masters held {keys} keys before the runs and {after} after: a run wrote keys \
         that were not loaded, so its GETs did not all find a value"
    );
    let load_after = load_average();
    drop(procs);
    drop(cluster);
    Ok(ClusterComparison::Measured(ClusterRun {
        date,
        masters: MASTERS,
        node_timeout_ms: NODE_TIMEOUT_MS,
        direct_keys,
        servers,
        cases,
        costs,
        uncached_cache,
        cached_cache,
        keys,
        load: (load_before, load_after),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_prefix_of_the_direct_clients_keys() {
        assert_eq!(direct_prefix("key:{06S}:000000012345"), Some("key:{06S}:"));
        // A two-character tag is padded with a `}`.
        assert_eq!(direct_prefix("key:{8M}}:000000000857"), Some("key:{8M}}:"));
        assert_eq!(direct_prefix("key:000000012345"), None);
        assert_eq!(direct_prefix("key:{06S}:00000001234x"), None);
        assert_eq!(direct_prefix(""), None);
    }

    #[test]
    fn proxy_args_name_the_cluster_and_turn_tracking_off() {
        let args = proxy_args("127.0.0.1:7000,127.0.0.1:7001", "0");
        assert_eq!(
            args.join(" "),
            "proxy --listen 127.0.0.1:0 --upstream-cluster 127.0.0.1:7000,127.0.0.1:7001 \
             --cache-ttl 0 --tracking off"
        );
    }
}
