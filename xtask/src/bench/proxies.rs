//! Step 8, proxies side by side: `kv proxy` and twemproxy (`nutcracker`)
//! in front of the same Redis.
//!
//! One `redis-server` (persistence off) with the 100,000 keys loaded, and
//! in front of it three proxies, each with one connection to it:
//!
//! - `kv proxy --cache-ttl 0`: the cache is off, so every GET and SET is
//!   forwarded as it is;
//! - a second `kv proxy` that has read every key and answers GETs from its
//!   cache (`--tracking off`: the SETs measured through the other proxies
//!   change values of the same length, and an invalidation would turn the
//!   next GET of the key into a miss, which is not what this row is for);
//! - twemproxy with a pool of that one server.
//!
//! `redis-benchmark` drives each of them, and Redis directly for reference,
//! with GET (all four) and SET (all but the caching proxy) at pipeline 1
//! and 16: the same load generator, clients, keys and values as every other
//! part, the targets of a test back to back in an order that changes each
//! round. Around each run the CPU time of the proxy and of Redis and Redis's
//! command count are read, to say where a difference goes.
//!
//! Without `nutcracker` on `PATH` this part is reported as skipped rather
//! than failing the benchmark.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kv_tests::{try_free_port, which};

use super::load::{get_all, load};
use super::machine::load_average;
use super::measure::{
    add_run_cost, calibrate_all, measure_rounds_observed, CacheCounts, Reading, Stage, SLOWEST_RPS,
};
use super::processes::{cpu_seconds, Processes, Service};
use super::report::{ProxiesRun, ProxyComparison, ProxyCost};
use super::resp::{info_number, Conn};
use super::{Case, Options, Target, Workload, KEYSPACE};
use crate::cmd::Cmd;

/// The targets of the GET tests, in the order their cases are stored.
const GET_TARGETS: [Target; 4] = [
    Target::Redis,
    Target::KvProxyUncached,
    Target::KvProxyCached,
    Target::Twemproxy,
];

/// The targets of the SET tests: a SET through the caching proxy is
/// forwarded like one through the other, so it would only repeat that row.
const SET_TARGETS: [Target; 3] = [Target::Redis, Target::KvProxyUncached, Target::Twemproxy];

/// twemproxy's `timeout`, in milliseconds: kv proxy's default
/// `--request-timeout` (5 s), so neither gives up on a slow reply sooner.
const TIMEOUT_MS: u64 = 5_000;

/// The twemproxy configuration: one pool listening on `listen`, with the
/// one Redis `server` (weight 1) and one connection to it, as kv proxy has
/// one upstream connection for its clients' requests. A server is never
/// ejected: there is no other to go to. Hashing settings are twemproxy's
/// usual ones and make no difference with one server.
pub(super) fn nutcracker_config(listen: SocketAddr, server: SocketAddr) -> String {
    format!(
        "kv_bench:\n\
         \x20 listen: {listen}\n\
         \x20 redis: true\n\
         \x20 hash: fnv1a_64\n\
         \x20 distribution: ketama\n\
         \x20 timeout: {TIMEOUT_MS}\n\
         \x20 preconnect: true\n\
         \x20 auto_eject_hosts: false\n\
         \x20 server_connections: 1\n\
         \x20 servers:\n\
         \x20  - {server}:1\n"
    )
}

/// `kv proxy` in front of `upstream`, serving cached values for
/// `cache_ttl` (`0`: the cache is off), without tracking.
fn proxy_args(upstream: SocketAddr, cache_ttl: &str) -> Vec<String> {
    [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream.to_string(),
        "--cache-ttl",
        cache_ttl,
        "--tracking",
        "off",
    ]
    .map(String::from)
    .into()
}

/// The started peers, by target.
struct Peers {
    redis: Service,
    uncached: Service,
    cached: Service,
    twemproxy: Service,
}

impl Peers {
    /// Where `target` listens.
    fn addr(&self, target: Target) -> Result<SocketAddr> {
        Ok(self.service(target)?.addr)
    }

    fn service(&self, target: Target) -> Result<&Service> {
        Ok(match target {
            Target::Redis => &self.redis,
            Target::KvProxyUncached => &self.uncached,
            Target::KvProxyCached => &self.cached,
            Target::Twemproxy => &self.twemproxy,
            other => bail!("{other:?} is not one of the proxies' peers"),
        })
    }

    /// The proxy's process, if `target` is one.
    fn proxy_pid(&self, target: Target) -> Result<Option<u32>> {
        Ok((target != Target::Redis).then_some(self.service(target)?.pid))
    }
}

/// Commands Redis has run since it started.
fn redis_commands(addr: SocketAddr) -> Result<u64> {
    let info =
        Conn::connect(addr, Instant::now() + Duration::from_secs(10))?.info(Some("stats"))?;
    info_number(&info, "total_commands_processed")
}

/// The version `nutcracker -V` reports: `nutcracker-0.5.0`.
fn nutcracker_version() -> String {
    match Cmd::new("nutcracker").arg("-V").output() {
        Ok(o) => version_line(&format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The version in what `nutcracker -V` printed: its first line, `This is
/// nutcracker-0.5.0`, less the greeting (the second names the event
/// backend).
fn version_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("").trim();
    first.strip_prefix("This is ").unwrap_or(first).to_owned()
}

/// Runs the part, or says why it cannot when twemproxy is not installed.
pub(super) fn proxies(kv: &Path, options: &Options, out: &Path) -> Result<ProxyComparison> {
    if which("nutcracker").is_none() {
        let why = "twemproxy's `nutcracker` is not on PATH; `cargo xtask setup --only system` \
                   installs Debian's package";
        eprintln!("xtask bench: skip: proxies: {why}");
        return Ok(ProxyComparison::Missing(why.into()));
    }
    eprintln!("xtask bench: kv proxy and twemproxy in front of one Redis");
    // This part's own time, as it may be shown apart from the run's.
    let date = Cmd::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .read()
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    let load_before = load_average();
    let mut procs = Processes::default();
    let redis = procs.redis(out, "redis-proxies")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    load(redis.addr, 0..KEYSPACE, deadline)?;
    let uncached = procs.kv(kv, &proxy_args(redis.addr, "0"), out, "kv-proxy-uncached")?;
    let cached = procs.kv(kv, &proxy_args(redis.addr, "600s"), out, "kv-proxy-cached")?;

    let dir = procs.fresh_dir(
        std::env::temp_dir().join(format!("xtask-bench-nutcracker-{}", std::process::id())),
    )?;
    let listen = SocketAddr::from((
        [127, 0, 0, 1],
        try_free_port().context("could not find a free port")?,
    ));
    let config = nutcracker_config(listen, redis.addr);
    let config_path = dir.join("nutcracker.yml");
    fs::write(&config_path, &config)
        .with_context(|| format!("could not write {}", config_path.display()))?;
    let twemproxy = procs.nutcracker(out, "twemproxy", &config_path, listen)?;
    let servers = vec![
        redis.command.clone(),
        uncached.command.clone(),
        cached.command.clone(),
        twemproxy.command.clone(),
    ];
    let peers = Peers {
        redis,
        uncached,
        cached,
        twemproxy,
    };

    // Every peer serves every key; the caching proxy keeps them all.
    for target in GET_TARGETS {
        get_all(peers.addr(target)?, 0..KEYSPACE, deadline)?;
    }
    let info = Conn::connect(peers.cached.addr, deadline)?.info(None)?;
    let entries = info_number(&info, "cache_entries")?;
    ensure!(
        entries >= KEYSPACE,
        "the caching proxy cached only {entries} of {KEYSPACE} keys: its GETs would not all \
         be hits"
    );

    let plan = [
        (Workload::Get, &GET_TARGETS[..]),
        (Workload::Set, &SET_TARGETS[..]),
    ];
    let mut cases = calibrate_all(plan, |target| peers.addr(target), options)?;

    let mut costs: Vec<ProxyCost> = cases.iter().map(ProxyCost::of).collect();
    let cache_before = [
        CacheCounts::read(peers.uncached.addr)?,
        CacheCounts::read(peers.cached.addr)?,
    ];
    // What was read right before the run under way: proxy CPU, Redis CPU,
    // Redis's command count.
    let mut started: Option<Reading> = None;
    let observe = |case: &Case, stage: Stage| -> Result<()> {
        let proxy_cpu = match peers.proxy_pid(case.target)? {
            Some(pid) => Some(cpu_seconds(pid)?),
            None => None,
        };
        let now = Reading {
            proxy_cpu,
            redis_cpu: cpu_seconds(peers.redis.pid)?,
            commands: redis_commands(peers.redis.addr)?,
        };
        match stage {
            Stage::Before => started = Some(now),
            Stage::After => {
                let before = started.take().context("a run ended that never started")?;
                add_run_cost(&mut costs, case, before, now, 1)?;
            }
        }
        Ok(())
    };
    measure_rounds_observed(
        &mut cases,
        |target| peers.addr(target),
        SLOWEST_RPS,
        options,
        "proxies: ",
        observe,
    )?;
    let uncached_cache = cache_before[0].since_then(peers.uncached.addr)?;
    let cached_cache = cache_before[1].since_then(peers.cached.addr)?;
    let load_after = load_average();
    drop(peers);
    drop(procs);
    Ok(ProxyComparison::Measured(ProxiesRun {
        date,
        nutcracker: nutcracker_version(),
        servers,
        config,
        cases,
        costs,
        uncached_cache,
        cached_cache,
        load: (load_before, load_after),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nutcracker_config_has_one_pool_of_one_server() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 4000));
        let server = SocketAddr::from(([127, 0, 0, 1], 6000));
        let config = nutcracker_config(listen, server);
        assert!(config.starts_with("kv_bench:\n  listen: 127.0.0.1:4000\n  redis: true\n"));
        assert!(config.contains("  timeout: 5000\n"));
        assert!(
            config.ends_with("  servers:\n   - 127.0.0.1:6000:1\n"),
            "{config}"
        );
        // Every line but the pool's name is indented under it.
        assert!(config.lines().skip(1).all(|l| l.starts_with("  ")));
    }

    #[test]
    fn reads_the_version() {
        let printed = "This is nutcracker-0.5.0\nasync event backend: epoll\n\nUsage: …";
        assert_eq!(version_line(printed), "nutcracker-0.5.0");
        assert_eq!(version_line(""), "");
    }

    #[test]
    fn proxy_args_turn_the_cache_and_tracking_off() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 6000));
        let args = proxy_args(upstream, "0");
        assert_eq!(
            args.join(" "),
            "proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:6000 --cache-ttl 0 --tracking off"
        );
    }
}
