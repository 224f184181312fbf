//! `cargo xtask bench`: kv side by side with Redis, on this machine.
//!
//! 1. Installs Redis if missing (the `system` part of setup), builds the
//!    release `kv`, and runs the codec micro-benchmarks in `--quick` mode.
//! 2. Starts, on free loopback ports: Debian's `redis-server` with
//!    persistence off, `kv server`, `kv proxy` in front of that server, and
//!    the in-process null server (see [`resp::NullServer`]).
//! 3. Loads the 100,000 keys `redis-benchmark -r 100000` uses into every
//!    real server, and warms the proxy's cache with them.
//! 4. Drives each target with `redis-benchmark` (GET and SET, pipeline 1
//!    and 16), and Redis and kv server with INCR, MSET and MGET of 10 keys
//!    too, interleaved and repeated, and keeps the medians.
//! 5. Loads 1,000,000 keys into fresh Redis and kv servers and compares the
//!    memory each needs per key; then again with fresh servers, every key
//!    with a TTL (`SET … EX`).
//! 6. Durable writes: for each fsync policy (`always`, `everysec`, `no`),
//!    Redis with `appendonly yes` and that `appendfsync`, and `kv server`
//!    with that `--fsync`, each on a fresh data directory, driven with SETs
//!    (pipeline 1 and 16) the same interleaved way as in step 4.
//! 7. SETs with tracking proxies: a kv server (and a Redis) with two
//!    `kv proxy --tracking on` in front that have read every key, against
//!    the same with two `--tracking off` proxies, interleaved; then the
//!    memory each server's tracking table needs per key, and
//!    `PUBLISH` to 1,000 subscribers on Redis and kv server, interleaved.
//! 8. Proxies side by side: one Redis, and in front of it `kv proxy` with
//!    its cache off, a `kv proxy` that has every key cached, and twemproxy
//!    (`nutcracker`), driven with GET and SET (pipeline 1 and 16) the same
//!    interleaved way, Redis directly too; skipped, saying so, where
//!    twemproxy is not installed.
//! 9. A Redis Cluster of 3 masters (`kv_tests::RedisCluster`), driven with
//!    GET and SET (pipeline 1 and 16) the same interleaved way by
//!    `redis-benchmark --cluster`, a client that sends each request to its
//!    slot's master, and through `kv proxy --upstream-cluster` with its
//!    cache off, and with GET through a second one that has every key
//!    cached; skipped, saying so, where Redis's tools are not installed.
//! 10. Writes `artifacts/bench/report.md`, `chart.svg` and
//!     `durable-chart.svg`, and the same tables and the first chart into
//!     `BENCHMARKS.md` and `docs/bench-chart.svg`.
//!
//! `--only PART` (repeatable, see [`Part`]) runs some of these; such a run
//! writes only `artifacts/bench/`, since `BENCHMARKS.md` would lose the
//! parts left out.
//!
//! Every process started is killed, and every data directory created is
//! removed, when the phase that started it ends, whether it succeeded or not
//! ([`processes::Processes`]); and every wait has a deadline.
//!
//! This module holds what every phase shares: the [`Options`], the
//! [`Target`]s and [`Workload`]s, the [`Case`]s and [`Sample`]s they
//! produce, and [`run`], which strings the phases together. Each phase, and
//! each piece of machinery under them, has a module of its own:
//!
//! - [`codec`] (step 1) and [`machine`](mod@machine): the criterion
//!   figures and the machine's description, for the report;
//! - [`processes`]: the servers started, and their clean-up;
//! - [`load`]: what the servers start with: `kv server`'s arguments and the
//!   keys loaded into them;
//! - [`measure`] (steps 2 to 4): `redis-benchmark` runs, calibrated and
//!   interleaved;
//! - [`memory`](mod@memory) (step 5, and the tracking table's share of
//!   step 7) and [`durable`](mod@durable) (step 6);
//! - [`tracking`](mod@tracking) and [`pubsub`](mod@pubsub) (step 7);
//! - [`proxies`](mod@proxies) (step 8); [`cluster`](mod@cluster) (step 9);
//! - [`report`] (step 10); [`resp`]: the RESP client and the null server.

mod cluster;
mod codec;
mod durable;
mod load;
mod machine;
mod measure;
mod memory;
mod processes;
mod proxies;
mod pubsub;
mod report;
mod resp;
mod tracking;

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cmd::Cmd;
use cluster::cluster;
use codec::codec_benchmarks;
use durable::durable;
use load::kv_server_args;
use machine::{load_average, machine};
use measure::{throughput, Throughput};
use memory::{memory, tracking_memory};
use proxies::proxies;
use pubsub::pubsub;
use report::Report;
use tracking::tracking;

/// Where the report, the chart and the logs of the servers go.
const ARTIFACTS: &str = "artifacts/bench";

/// Keys `redis-benchmark -r` draws from, and so the keys loaded and warmed
/// before the runs: every GET finds a 64-byte value, on every target.
const KEYSPACE: u64 = 100_000;

/// Value size for the runs (`redis-benchmark -d`) and for the memory test.
const VALUE_LEN: usize = 64;

/// The TTL of every key in the second memory comparison (`SET … EX`): far
/// longer than the benchmark, so that none expires while it is measured.
const MEMORY_TTL_SECONDS: u64 = 100_000;

/// Pipeline depths measured (`redis-benchmark -P`).
const PIPELINES: [u32; 2] = [1, 16];

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many times every measurement is repeated; the report shows the
    /// median.
    pub rounds: usize,
    /// Short runs for a smoke test: about a second each instead of three.
    pub quick: bool,
    /// The parts to run (all of them unless `--only` names some). Only a
    /// run of every part rewrites `BENCHMARKS.md`.
    pub parts: Vec<Part>,
    /// The command line that started this run, for the report.
    pub command_line: String,
}

impl Options {
    /// Whether `part` is to run.
    pub fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }

    /// Whether every part runs, so that the report is complete.
    pub fn complete(&self) -> bool {
        PARTS.iter().all(|&p| self.runs(p))
    }

    /// Roughly how long one `redis-benchmark` run should last.
    fn run_seconds(&self) -> f64 {
        if self.quick {
            1.0
        } else {
            3.0
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Debian's redis-server.
    Redis,
    /// `kv server`.
    KvServer,
    /// `kv proxy` in front of `kv server`: GETs are cache hits, SETs are
    /// forwarded.
    KvProxy,
    /// The same, a second proxy with `--metrics`, scraped once a second for
    /// the whole run as Prometheus would: what serving metrics costs.
    KvProxyMetrics,
    /// The null server: the ceiling of machine and load generator.
    Null,
    /// `kv server` with two `kv proxy --tracking on` in front of it that
    /// have read every key: a SET of a key they read sends each of them an
    /// invalidation.
    KvServerTracked,
    /// `kv server` with two `kv proxy --tracking off` in front of it that
    /// have read every key: nothing is tracked.
    KvServerUntracked,
    /// Redis with two tracking proxies in front, as [`Target::KvServerTracked`].
    RedisTracked,
    /// Redis with two `--tracking off` proxies in front.
    RedisUntracked,
    /// `kv proxy --cache-ttl 0` in front of Redis: every request forwarded.
    KvProxyUncached,
    /// `kv proxy` in front of Redis that has every key cached.
    KvProxyCached,
    /// twemproxy (`nutcracker`) in front of Redis.
    Twemproxy,
    /// A Redis Cluster, driven by `redis-benchmark --cluster`: each request
    /// goes straight to its slot's master.
    ClusterDirect,
    /// `kv proxy --upstream-cluster --cache-ttl 0` in front of the cluster:
    /// every request routed to its slot's master by the proxy.
    ClusterProxyUncached,
    /// `kv proxy --upstream-cluster` that has every key cached.
    ClusterProxyCached,
}

impl Target {
    /// Whether `redis-benchmark` drives it as a Redis Cluster's client
    /// (`--cluster`) rather than as one server's.
    fn cluster_client(self) -> bool {
        self == Target::ClusterDirect
    }
}

/// The order targets run in within a round: Redis and kv alternate.
const TARGETS: [Target; 4] = [
    Target::Redis,
    Target::KvServer,
    Target::KvProxy,
    Target::Null,
];

/// What the load generator sends: one `redis-benchmark` test, on the keys
/// `-r` draws from, with 64-byte values where it writes any. A case is one
/// target under one workload at one pipeline depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// `-t get`.
    Get,
    /// `-t set`.
    Set,
    /// `-t incr`: `INCR counter:__rand_int__`.
    Incr,
    /// `-t mset`: `MSET` of 10 `key:__rand_int__` keys.
    Mset,
    /// `MGET` of 10 `key:__rand_int__` keys, a custom command (Redis 7.0's
    /// `redis-benchmark` has no MGET test).
    Mget,
}

/// The workloads of the `get-set` part, measured on every target.
const GET_SET: [Workload; 2] = [Workload::Get, Workload::Set];

/// The workloads of the `commands` part, measured on Redis and kv server.
const COMMANDS: [Workload; 3] = [Workload::Incr, Workload::Mset, Workload::Mget];

/// Keys per `MSET` and `MGET` (`redis-benchmark`'s MSET test has 10).
const MULTI_KEYS: usize = 10;

impl Workload {
    /// The command's name in the report and the progress lines.
    fn test(self) -> &'static str {
        match self {
            Workload::Get => "GET",
            Workload::Set => "SET",
            Workload::Incr => "INCR",
            Workload::Mset => "MSET (10 keys)",
            Workload::Mget => "MGET (10 keys)",
        }
    }

    /// The targets it is measured on: GET and SET on all of them (the
    /// scraped proxy for cache hits only), the other commands on the two
    /// servers.
    fn targets(self) -> &'static [Target] {
        match self {
            Workload::Get => &[
                Target::Redis,
                Target::KvServer,
                Target::KvProxy,
                Target::KvProxyMetrics,
                Target::Null,
            ],
            Workload::Set => &TARGETS,
            _ => &[Target::Redis, Target::KvServer],
        }
    }

    /// The `redis-benchmark` arguments that select it: `-t TEST`, or the
    /// custom command, which goes last on the command line.
    fn args(self) -> Vec<String> {
        match self {
            Workload::Get => vec!["-t".into(), "get".into()],
            Workload::Set => vec!["-t".into(), "set".into()],
            Workload::Incr => vec!["-t".into(), "incr".into()],
            Workload::Mset => vec!["-t".into(), "mset".into()],
            Workload::Mget => std::iter::once("mget".to_owned())
                .chain(std::iter::repeat_n(
                    "key:__rand_int__".to_owned(),
                    MULTI_KEYS,
                ))
                .collect(),
        }
    }

    /// The first field of its row in `redis-benchmark --csv`: the test's
    /// name, or a custom command's words.
    fn csv_name(self) -> String {
        match self {
            Workload::Mget => self.args().join(" "),
            Workload::Mset => "MSET (10 keys)".into(),
            other => other.test().into(),
        }
    }
}

/// The parts of `cargo xtask bench`, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Part {
    /// The codec micro-benchmarks.
    Codec,
    /// GET and SET on Redis, kv server, kv proxy and the null server.
    GetSet,
    /// INCR, MSET and MGET of 10 keys on Redis and kv server.
    Commands,
    /// Memory of 1,000,000 keys without a TTL.
    Memory,
    /// Memory of 1,000,000 keys that each have a TTL.
    MemoryTtl,
    /// Durable writes under each fsync policy.
    Durable,
    /// SET on servers with two tracking proxies in front, against the same
    /// without tracking.
    Tracking,
    /// Bytes per key and per key–client pair of the tracking table.
    TrackingMemory,
    /// PUBLISH to 1,000 subscribers.
    Pubsub,
    /// GET and SET through kv proxy and twemproxy in front of one Redis.
    Proxies,
    /// GET and SET through kv proxy in front of a 3-master Redis Cluster,
    /// beside `redis-benchmark --cluster` driving the cluster directly.
    Cluster,
}

/// Every part, in the order they run.
pub const PARTS: [Part; 11] = [
    Part::Codec,
    Part::GetSet,
    Part::Commands,
    Part::Memory,
    Part::MemoryTtl,
    Part::Durable,
    Part::Tracking,
    Part::TrackingMemory,
    Part::Pubsub,
    Part::Proxies,
    Part::Cluster,
];

/// One run's figures, as `redis-benchmark --csv` reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, in milliseconds (absent from old versions' CSV).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// Every sample of one target × workload × pipeline depth.
#[derive(Debug, Clone)]
pub struct Case {
    /// What was measured.
    pub target: Target,
    /// Under which workload.
    pub workload: Workload,
    /// At which pipeline depth.
    pub pipeline: u32,
    /// Requests per run (`-n`), calibrated so that a run lasts a few seconds.
    pub requests: u64,
    /// One sample per round.
    pub samples: Vec<Sample>,
}

impl Case {
    /// Median requests per second over the rounds.
    pub fn rps(&self) -> f64 {
        median(self.samples.iter().map(|s| s.rps)).unwrap_or(0.0)
    }

    /// Median p50 latency over the rounds, in ms.
    pub fn p50(&self) -> Option<f64> {
        median(self.samples.iter().filter_map(|s| s.p50_ms))
    }

    /// Median p99 latency over the rounds, in ms.
    pub fn p99(&self) -> Option<f64> {
        median(self.samples.iter().filter_map(|s| s.p99_ms))
    }
}

/// The median, or `None` for no values.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Runs the whole benchmark and writes its report.
pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    crate::setup::system_packages()?;
    // The binary cargo reports building, wherever its target directory is
    // (the end-to-end tests run the same one).
    eprintln!(
        "$ cargo build --release -p kv-native --bin kv --message-format=json-render-diagnostics"
    );
    let kv = kv_tests::build_kv().context("could not build kv")?;
    let out = PathBuf::from(ARTIFACTS);
    fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("could not create {}", out.display()))?;

    // First, while nothing else runs: the micro-benchmarks need a quiet CPU.
    let codec = if options.runs(Part::Codec) {
        codec_benchmarks(&out)?
    } else {
        Vec::new()
    };
    let machine = machine();
    let server_args = kv_server_args(&kv)?;
    let workloads: Vec<Workload> = [
        (Part::GetSet, &GET_SET[..]),
        (Part::Commands, &COMMANDS[..]),
    ]
    .into_iter()
    .filter(|&(part, _)| options.runs(part))
    .flat_map(|(_, w)| w.iter().copied())
    .collect();
    let load_before = load_average();
    let Throughput {
        cases,
        proxy_cache,
        servers,
    } = throughput(&kv, &server_args, &workloads, options, &out)?;
    let load_after = load_average();
    let plain = if options.runs(Part::Memory) {
        Some(memory(&kv, &server_args, &out, None)?)
    } else {
        None
    };
    let memory_ttl = if options.runs(Part::MemoryTtl) {
        Some(memory(&kv, &server_args, &out, Some(MEMORY_TTL_SECONDS))?)
    } else {
        None
    };
    let durable = if options.runs(Part::Durable) {
        durable(&kv, options, &out)?
    } else {
        Vec::new()
    };
    let tracking = if options.runs(Part::Tracking) {
        Some(tracking(&kv, &server_args, options, &out)?)
    } else {
        None
    };
    let tracking_memory = if options.runs(Part::TrackingMemory) {
        Some(tracking_memory(&kv, &server_args, &out)?)
    } else {
        None
    };
    let pubsub = if options.runs(Part::Pubsub) {
        Some(pubsub(&kv, &server_args, options, &out)?)
    } else {
        None
    };
    let proxies = if options.runs(Part::Proxies) {
        Some(proxies(&kv, options, &out)?)
    } else {
        None
    };
    let cluster = if options.runs(Part::Cluster) {
        Some(cluster(&kv, options, &out)?)
    } else {
        None
    };

    let report = Report {
        options: options.clone(),
        date: Cmd::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .read()
            .map(|d| d.trim().to_owned())
            .unwrap_or_default(),
        machine,
        load: (load_before, load_after),
        servers,
        cases,
        proxy_cache,
        memory: plain,
        memory_ttl,
        durable,
        tracking,
        tracking_memory,
        pubsub,
        proxies,
        cluster,
        codec,
    };
    report::write(&report, &out)?;
    eprintln!(
        "xtask bench: done in {:.0} s; see {ARTIFACTS}/report.md{}",
        started.elapsed().as_secs_f64(),
        if options.complete() {
            " and BENCHMARKS.md"
        } else {
            " (BENCHMARKS.md is left as it was: not every part ran)"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
