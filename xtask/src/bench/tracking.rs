//! Step 7, SETs with tracking proxies: what client tracking costs a
//! server's writes.
//!
//! Each server (kv, and Redis the same way) runs twice: once with two
//! `kv proxy --tracking on` in front of it and once with two
//! `kv proxy --tracking off`, every proxy having read every key, so the
//! tracked server remembers each key for both of its proxies and a SET of
//! such a key sends two invalidations. `redis-benchmark -t set` goes
//! straight at the server, tracked and untracked runs interleaved over the
//! rounds like every other case.
//!
//! A key is tracked until it is invalidated, so a run would soon write
//! only keys nobody tracks any more. Two things keep the table full: before
//! every run (tracked or not, so that both see the same history) every
//! proxy reads every key again, and during the runs a background reader
//! per proxy sweeps the keys at a fixed rate ([`READ_RATE`]), as the
//! proxies' clients would, re-reading what was invalidated. The proxies'
//! own counters say how many invalidations the SETs really sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};

use super::load::{get_all, key, load};
use super::measure::{calibrate, order, redis_benchmark, test_groups, Calibration, SLOWEST_RPS};
use super::processes::{cpu_seconds, Processes, Service};
use super::report::{self, RunCosts, TrackingSets};
use super::resp::{self, info_field, info_number, Conn};
use super::{Case, Options, Target, Workload, KEYSPACE, PIPELINES};

/// Tracking proxies in front of each tracked server: two, so that every
/// write has more than one cache to tell.
pub(super) const PROXIES: u64 = 2;

/// GETs per second each background reader sends through its proxy: enough
/// to re-read a few thousand invalidated keys per run, little enough that
/// eight readers together take a small share of two cores.
pub(super) const READ_RATE: u64 = 5_000;

/// GETs per pipelined batch of a background reader.
const READ_BATCH: u64 = 50;

/// The targets, in the order their cases are stored: Redis then kv, each
/// untracked then tracked ([`order`] varies the order they run in).
const TARGETS: [Target; 4] = [
    Target::RedisUntracked,
    Target::RedisTracked,
    Target::KvServerUntracked,
    Target::KvServerTracked,
];

/// One server with its two proxies.
struct Setup {
    target: Target,
    /// Whether the proxies track (`--tracking on`).
    tracked: bool,
    server: Service,
    proxies: Vec<Service>,
}

impl Setup {
    /// Starts the server and its proxies, loads every key into the server
    /// and has every proxy read every key.
    fn start(
        procs: &mut Processes,
        kv: &Path,
        server_args: &[String],
        out: &Path,
        target: Target,
    ) -> Result<Setup> {
        let (name, tracked) = match target {
            Target::RedisTracked => ("redis-tracked", true),
            Target::RedisUntracked => ("redis-untracked", false),
            Target::KvServerTracked => ("kv-server-tracked", true),
            Target::KvServerUntracked => ("kv-server-untracked", false),
            other => bail!("{other:?} is no tracking target"),
        };
        let server = if matches!(target, Target::RedisTracked | Target::RedisUntracked) {
            procs.redis(out, name)?
        } else {
            procs.kv(kv, server_args, out, name)?
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        load(server.addr, 0..KEYSPACE, deadline)?;
        let mut proxies = Vec::new();
        for i in 1..=PROXIES {
            let args = proxy_args(server.addr, tracked);
            proxies.push(procs.kv(kv, &args, out, &format!("{name}-proxy-{i}"))?);
        }
        let setup = Setup {
            target,
            tracked,
            server,
            proxies,
        };
        for proxy in &setup.proxies {
            get_all(proxy.addr, 0..KEYSPACE, deadline)?;
            let info = Conn::connect(proxy.addr, deadline)?.info(Some("tracking"))?;
            let want = if tracked { "on" } else { "off" };
            let upstream = info_field(&info, "upstream_main_tracking");
            ensure!(
                upstream == Some(want),
                "a proxy in front of {name} reports upstream_main_tracking {upstream:?}, not \
                 {want} (fallback reason: {:?})",
                info_field(&info, "tracking_fallback_reason")
            );
        }
        // Checks what the server tracks.
        setup.refresh(deadline)?;
        Ok(setup)
    }

    /// Every proxy reads every key, so that the tracked server tracks
    /// every key for both; checks that it does (and that the untracked one
    /// tracks nothing).
    fn refresh(&self, deadline: Instant) -> Result<()> {
        // A key whose invalidation the proxy has not read yet would be
        // answered from its cache, and so not tracked again.
        self.barrier(deadline)?;
        for proxy in &self.proxies {
            get_all(proxy.addr, 0..KEYSPACE, deadline)?;
        }
        let info = Conn::connect(self.server.addr, deadline)?.info(Some("stats"))?;
        let keys = info_number(&info, "tracking_total_keys")?;
        let items = info_number(&info, "tracking_total_items")?;
        let want = if self.tracked {
            (KEYSPACE, PROXIES * KEYSPACE)
        } else {
            (0, 0)
        };
        ensure!(
            (keys, items) == want,
            "{:?} tracks {keys} keys, {items} key–client pairs after every proxy read \
             every key; expected {want:?}",
            self.target
        );
        Ok(())
    }

    /// CPU seconds used so far by the server, and by its proxies together.
    fn cpu(&self) -> Result<(f64, f64)> {
        let mut proxies = 0.0;
        for proxy in &self.proxies {
            proxies += cpu_seconds(proxy.pid)?;
        }
        Ok((cpu_seconds(self.server.pid)?, proxies))
    }

    /// Returns once each proxy has read every invalidation the server sent
    /// it so far: a write through the proxy goes on its tracked
    /// connection, whose replies and pushes it reads in order. (Nobody
    /// reads the key written, so it is never tracked.)
    fn barrier(&self, deadline: Instant) -> Result<()> {
        for proxy in &self.proxies {
            Conn::connect(proxy.addr, deadline)?.command(&[b"SET", b"bench:barrier", b"1"])?;
        }
        Ok(())
    }

    /// Keys the server invalidated at its proxies so far, counting every
    /// invalidation sent before the call, and their cache misses (reads
    /// they forwarded), both proxies together.
    fn invalidated(&self, deadline: Instant) -> Result<(u64, u64)> {
        self.barrier(deadline)?;
        let (mut keys, mut misses) = (0, 0);
        for proxy in &self.proxies {
            let info = Conn::connect(proxy.addr, deadline)?.info(None)?;
            keys += info_number(&info, "tracking_keys_invalidated")?;
            misses += info_number(&info, "cache_misses")?;
        }
        Ok((keys, misses))
    }
}

/// `kv proxy` in front of `upstream`, tracking or not; the cache TTL long
/// enough that the untracked proxies keep every key for the whole phase.
pub(super) fn proxy_args(upstream: SocketAddr, tracking: bool) -> Vec<String> {
    [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream.to_string(),
        "--cache-ttl",
        "600s",
        "--tracking",
        if tracking { "on" } else { "off" },
    ]
    .map(String::from)
    .into()
}

/// Runs the SET cases on the four targets, interleaved, with the
/// background readers running throughout.
pub(super) fn tracking(
    kv: &Path,
    server_args: &[String],
    options: &Options,
    out: &Path,
) -> Result<TrackingSets> {
    eprintln!("xtask bench: SETs with tracking proxies");
    let mut procs = Processes::default();
    let mut setups = Vec::new();
    let mut servers = Vec::new();
    for target in TARGETS {
        let setup = Setup::start(&mut procs, kv, server_args, out, target)?;
        servers.push(setup.server.command.clone());
        servers.extend(setup.proxies.iter().map(|p| p.command.clone()));
        setups.push(setup);
    }
    let mut readers: Vec<Reader> = setups
        .iter()
        .flat_map(|s| &s.proxies)
        .enumerate()
        .map(|(i, proxy)| Reader::start(proxy.addr, i as u64 * KEYSPACE / 8))
        .collect();

    let mut cases = Vec::new();
    for pipeline in PIPELINES {
        for target in TARGETS {
            let warm_up = if pipeline == 1 { 10_000 } else { 100_000 };
            let calibration = Calibration {
                warm_up,
                floor: warm_up,
                slowest_rps: SLOWEST_RPS,
            };
            let addr = setups[index(&setups, target)?].server.addr;
            cases.push(calibrate(
                addr,
                target,
                Workload::Set,
                pipeline,
                calibration,
                options,
            )?);
        }
    }

    let mut costs: Vec<RunCosts> = cases
        .iter()
        .map(|c| RunCosts {
            target: c.target,
            pipeline: c.pipeline,
            sets: 0,
            invalidated: 0,
            misses: 0,
            server_cpu: 0.0,
            proxies_cpu: 0.0,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(24 * 3600);
    for round in 1..=options.rounds {
        for group in test_groups(&cases) {
            for i in order(group.len(), round - 1) {
                let c = group.start + i;
                let s = index(&setups, cases[c].target)?;
                let setup = &setups[s];
                for reader in &mut readers {
                    reader.check()?;
                }
                setup.refresh(deadline)?;
                let before = setup.invalidated(deadline)?;
                let cpu = setup.cpu()?;
                let case: &mut Case = &mut cases[c];
                let sample = redis_benchmark(
                    setup.server.addr,
                    false,
                    Workload::Set,
                    case.pipeline,
                    case.requests,
                    SLOWEST_RPS,
                )?;
                let cpu_after = setup.cpu()?;
                let cost = &mut costs[c];
                cost.server_cpu += cpu_after.0 - cpu.0;
                cost.proxies_cpu += cpu_after.1 - cpu.1;
                cost.sets += case.requests;
                let after = setup.invalidated(deadline)?;
                cost.invalidated += after.0 - before.0;
                cost.misses += after.1 - before.1;
                eprintln!(
                    "xtask bench: tracking: round {round}/{}: {} SET P{}: {:.0} req/s, p50 {} ms, p99 {} ms",
                    options.rounds,
                    report::label(case.target, Workload::Set),
                    case.pipeline,
                    sample.rps,
                    sample.p50_ms.map_or("?".into(), |v| format!("{v:.3}")),
                    sample.p99_ms.map_or("?".into(), |v| format!("{v:.3}")),
                );
                case.samples.push(sample);
            }
        }
    }
    let read_rate = readers
        .into_iter()
        .map(Reader::stop)
        .collect::<Result<Vec<f64>>>()?
        .into_iter()
        .fold(f64::MAX, f64::min);
    drop(procs);
    Ok(TrackingSets {
        servers,
        cases,
        costs,
        read_rate,
    })
}

/// Where `target`'s setup is in `setups`.
fn index(setups: &[Setup], target: Target) -> Result<usize> {
    setups
        .iter()
        .position(|s| s.target == target)
        .ok_or_else(|| anyhow!("{target:?} was not started"))
}

/// A client of one proxy that reads every key in turn, over and over, at
/// [`READ_RATE`] GETs per second, in pipelined batches, until stopped.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<f64>>>,
}

impl Reader {
    /// Starts reading through `addr` from key `first` on.
    fn start(addr: SocketAddr, first: u64) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || read_loop(addr, first, &flag));
        Reader {
            stop,
            thread: Some(thread),
        }
    }

    /// Fails if the reader has stopped on its own, with its error: the
    /// runs would otherwise go on without the load they claim.
    fn check(&mut self) -> Result<()> {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(e.context("a background reader failed")),
            Some(Ok(Ok(_))) => bail!("a background reader stopped before it was told to"),
            Some(Err(_)) => bail!("a background reader panicked"),
            None => bail!("a background reader was already stopped"),
        }
    }

    /// Stops reading; the GETs per second it reached.
    fn stop(mut self) -> Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("a background reader panicked"))?,
            None => bail!("the background reader was already stopped"),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The body of a [`Reader`]: the GETs per second it reached.
fn read_loop(addr: SocketAddr, first: u64, stop: &AtomicBool) -> Result<f64> {
    let mut conn = Conn::connect(addr, Instant::now() + Duration::from_secs(10))?;
    let started = Instant::now();
    let mut next = first % KEYSPACE;
    let mut sent = 0u64;
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        for _ in 0..READ_BATCH {
            resp::encode(&mut batch, &[b"GET", key(next).as_bytes()]);
            next = (next + 1) % KEYSPACE;
        }
        conn.pipeline(&batch, READ_BATCH)?;
        sent += READ_BATCH;
        // Pacing, not waiting for a condition: the reader is background
        // load at a fixed rate, and must not take what CPU it can get.
        let due = started + Duration::from_secs_f64(sent as f64 / READ_RATE as f64);
        if let Some(ahead) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(ahead);
        }
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}
