//! Steps 2 to 4: throughput and latency, measured with `redis-benchmark`.
//!
//! Every case is calibrated first, so that its runs last about the same
//! time on every target, and then run once per round, the targets of a test
//! back to back in an order that changes each round.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::load::{get_all, load};
use super::processes::Processes;
use super::report;
use super::resp::{info_number, Conn, NullServer};
use super::{Case, Options, Sample, Target, Workload, KEYSPACE, PIPELINES, VALUE_LEN};
use crate::cmd::Cmd;

/// Parallel connections of `redis-benchmark` (`-c`).
const CLIENTS: u32 = 50;

/// Below this rate a `redis-benchmark` run is taken to hang and is killed
/// (with 30 s to spare): in memory, anything slower is broken, not slow.
pub(super) const SLOWEST_RPS: u64 = 2_000;

/// Proxy cache counters over the measured GETs.
#[derive(Debug, Clone, Copy)]
pub struct CacheCounts {
    /// GETs answered from the cache.
    pub hits: u64,
    /// GETs forwarded upstream.
    pub misses: u64,
}

impl CacheCounts {
    /// The proxy's counters at `addr` now, from its `INFO`.
    pub(super) fn read(addr: SocketAddr) -> Result<CacheCounts> {
        // A connection per look: one kept open across the rounds would be
        // closed by the proxy's idle timeout.
        let info = Conn::connect(addr, Instant::now() + Duration::from_secs(10))?.info(None)?;
        Ok(CacheCounts {
            hits: info_number(&info, "cache_hits")?,
            misses: info_number(&info, "cache_misses")?,
        })
    }

    /// The proxy's counters at `addr` counted since `self` was read.
    pub(super) fn since_then(self, addr: SocketAddr) -> Result<CacheCounts> {
        let now = CacheCounts::read(addr)?;
        Ok(CacheCounts {
            hits: now.hits.saturating_sub(self.hits),
            misses: now.misses.saturating_sub(self.misses),
        })
    }
}

/// What is read around a measured run of a proxy's part: the proxy's CPU
/// seconds (none for a server measured directly), the servers' CPU
/// seconds and the commands they have run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reading {
    pub proxy_cpu: Option<f64>,
    pub redis_cpu: f64,
    pub commands: u64,
}

/// Adds what the run of `case` cost between `before` and `after` to its
/// entry in `costs`, less the `info_reads` commands that read the count
/// before the run (one `INFO` per server).
pub(super) fn add_run_cost(
    costs: &mut [report::ProxyCost],
    case: &Case,
    before: Reading,
    after: Reading,
    info_reads: u64,
) -> Result<()> {
    let cost = costs
        .iter_mut()
        .find(|c| (c.target, c.workload, c.pipeline) == (case.target, case.workload, case.pipeline))
        .context("a run of a case that has no costs")?;
    cost.requests += case.requests;
    if let (Some(after), Some(before)) = (after.proxy_cpu, before.proxy_cpu) {
        *cost.proxy_cpu.get_or_insert(0.0) += after - before;
    }
    cost.redis_cpu += after.redis_cpu - before.redis_cpu;
    cost.redis_commands += (after.commands - before.commands).saturating_sub(info_reads);
    Ok(())
}

/// What [`throughput`] measured.
pub(super) struct Throughput {
    /// Every case of every target, with its samples.
    pub(super) cases: Vec<Case>,
    /// What the proxy's cache did over the measured GETs, if the proxy ran.
    pub(super) proxy_cache: Option<CacheCounts>,
    /// How Redis, kv server and kv proxy were started.
    pub(super) servers: Vec<String>,
}

/// Starts the targets `workloads` need, prepares their data, and runs every
/// case `options.rounds` times, interleaved. GET and SET run on all four
/// targets, the other workloads on Redis and kv server; nothing runs for
/// no workloads.
pub(super) fn throughput(
    kv: &Path,
    server_args: &[String],
    workloads: &[Workload],
    options: &Options,
    out: &Path,
) -> Result<Throughput> {
    if workloads.is_empty() {
        return Ok(Throughput {
            cases: Vec::new(),
            proxy_cache: None,
            servers: Vec::new(),
        });
    }
    let with_proxy = workloads.iter().any(|w| w.targets().len() > 2);
    let mut procs = Processes::default();
    let redis = procs.redis(out, "redis")?;
    let server = procs.kv(kv, server_args, out, "kv-server")?;
    let mut servers = vec![redis.command.clone(), server.command.clone()];
    let deadline = Instant::now() + Duration::from_secs(120);
    // The proxy and the null server, with the cache counters before the
    // runs.
    let mut proxy = None;
    if with_proxy {
        let proxy_args = [
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &server.addr.to_string(),
            // Long enough that the warmed keys stay cached for the whole run.
            "--cache-ttl",
            "600s",
        ]
        .map(String::from);
        let service = procs.kv(kv, &proxy_args, out, "kv-proxy")?;
        servers.push(service.command.clone());
        eprintln!("xtask bench: loading {KEYSPACE} keys into redis and, through the proxy, kv");
        load(redis.addr, 0..KEYSPACE, deadline)?;
        // SETs through the proxy reach the kv server and, once acknowledged,
        // are written through to the cache; the GET pass then checks every
        // key and leaves any the write-through missed cached.
        load(service.addr, 0..KEYSPACE, deadline)?;
        get_all(service.addr, 0..KEYSPACE, deadline)?;
        // A connection per look: one kept open across the rounds would be
        // closed by the proxy's idle timeout.
        let info = Conn::connect(service.addr, deadline)?.info(None)?;
        let cached = info_number(&info, "cache_entries")?;
        ensure!(
            cached >= KEYSPACE,
            "the proxy cached only {cached} of {KEYSPACE} keys: its GETs would not all be hits"
        );
        let before = CacheCounts {
            hits: info_number(&info, "cache_hits")?,
            misses: info_number(&info, "cache_misses")?,
        };
        // The second proxy, with metrics served and scraped; warmed alike.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("no free port for the proxy's metrics")?;
        let mut scraped_args = proxy_args.to_vec();
        scraped_args.extend(["--metrics".to_owned(), metrics.to_string()]);
        let scraped = procs.kv(kv, &scraped_args, out, "kv-proxy-metrics")?;
        servers.push(scraped.command.clone());
        get_all(scraped.addr, 0..KEYSPACE, deadline)?;
        let scraper = Scraper::start(metrics);
        proxy = Some((service, before, NullServer::start()?, scraped, scraper));
    } else {
        eprintln!("xtask bench: loading {KEYSPACE} keys into redis and kv");
        load(redis.addr, 0..KEYSPACE, deadline)?;
        load(server.addr, 0..KEYSPACE, deadline)?;
        get_all(server.addr, 0..KEYSPACE, deadline)?;
    }

    let addr = |target| match (target, &proxy) {
        (Target::Redis, _) => Ok(redis.addr),
        (Target::KvServer, _) => Ok(server.addr),
        (Target::KvProxy, Some((service, ..))) => Ok(service.addr),
        (Target::Null, Some((_, _, null, ..))) => Ok(null.addr()),
        (Target::KvProxyMetrics, Some((.., scraped, _))) => Ok(scraped.addr),
        (target, _) => bail!("{target:?} was not started"),
    };

    let plan = workloads.iter().map(|&w| (w, w.targets()));
    let mut cases = calibrate_all(plan, addr, options)?;
    measure_rounds(&mut cases, addr, SLOWEST_RPS, options, "")?;

    if let Some((.., scraper)) = &mut proxy {
        let scrapes = scraper.stop()?;
        eprintln!("xtask bench: the second proxy's /metrics was scraped {scrapes} times");
    }
    let proxy_cache = match &proxy {
        Some((service, before, ..)) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            let info = Conn::connect(service.addr, deadline)?.info(None)?;
            Some(CacheCounts {
                hits: info_number(&info, "cache_hits")?.saturating_sub(before.hits),
                misses: info_number(&info, "cache_misses")?.saturating_sub(before.misses),
            })
        }
        None => None,
    };
    drop(proxy);
    drop(procs);
    Ok(Throughput {
        cases,
        proxy_cache,
        servers,
    })
}

/// Scrapes `/metrics` once a second, as Prometheus does, until stopped.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Scraper {
    fn start(addr: SocketAddr) -> Scraper {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !flag.load(Ordering::Relaxed) {
                let body = kv_tests::http_get(addr, "/metrics").body_text();
                ensure!(
                    body.contains("kv_cache_hits_total"),
                    "/metrics at {addr} has no cache counters:\n{body}"
                );
                scrapes += 1;
                // A scrape interval, not a wait for a condition.
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(scrapes)
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops scraping; how many scrapes there were.
    fn stop(&mut self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the metrics scraper panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How a case's `-n` is found.
#[derive(Debug, Clone, Copy)]
pub(super) struct Calibration {
    /// Requests of the calibration run.
    pub(super) warm_up: u64,
    /// The fewest requests a measured run may have.
    pub(super) floor: u64,
    /// Below this rate a run is taken to hang (see [`SLOWEST_RPS`]).
    pub(super) slowest_rps: u64,
}

/// Calibration doubles as warm-up: one short run, whose rate sets `-n` so
/// that the measured runs of the case last about `run_seconds`.
/// Calibrates a case for every workload, pipeline and target of `plan`,
/// in that order, each at the usual warm-up (more at pipeline 16, which
/// gets through requests faster).
pub(super) fn calibrate_all<'t>(
    plan: impl IntoIterator<Item = (Workload, &'t [Target])>,
    addr: impl Fn(Target) -> Result<SocketAddr>,
    options: &Options,
) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (workload, targets) in plan {
        for pipeline in PIPELINES {
            for &target in targets {
                let warm_up = if pipeline == 1 { 10_000 } else { 100_000 };
                let calibration = Calibration {
                    warm_up,
                    floor: warm_up,
                    slowest_rps: SLOWEST_RPS,
                };
                cases.push(calibrate(
                    addr(target)?,
                    target,
                    workload,
                    pipeline,
                    calibration,
                    options,
                )?);
            }
        }
    }
    Ok(cases)
}

pub(super) fn calibrate(
    addr: SocketAddr,
    target: Target,
    workload: Workload,
    pipeline: u32,
    calibration: Calibration,
    options: &Options,
) -> Result<Case> {
    let sample = redis_benchmark(
        addr,
        target.cluster_client(),
        workload,
        pipeline,
        calibration.warm_up,
        calibration.slowest_rps,
    )?;
    Ok(Case {
        target,
        workload,
        pipeline,
        requests: requests_for(sample.rps, options.run_seconds(), calibration.floor),
        samples: Vec::new(),
    })
}

/// Requests for a run of about `seconds` at `rps`, at least `floor`, in
/// whole thousands.
pub(super) fn requests_for(rps: f64, seconds: f64, floor: u64) -> u64 {
    ((rps * seconds) as u64)
        .clamp(floor, 50_000_000)
        .div_ceil(1000)
        * 1000
}

/// Runs every case once per round, `options.rounds` times. Cases are
/// stored test by test (the same workload and pipeline depth), and a test's
/// targets run back to back, so each round pairs them on the same test.
/// Their order changes each round ([`order`]): a target that always ran
/// first, or always right after the same other one, would carry whatever
/// that left behind (sockets being torn down, caches and CPU state), which
/// no number of rounds averages out.
/// `what` prefixes the progress lines.
pub(super) fn measure_rounds(
    cases: &mut [Case],
    addr: impl Fn(Target) -> Result<SocketAddr>,
    slowest_rps: u64,
    options: &Options,
    what: &str,
) -> Result<()> {
    measure_rounds_observed(cases, addr, slowest_rps, options, what, |_, _| Ok(()))
}

/// Where a run is when [`measure_rounds_observed`] calls its observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Right before `redis-benchmark` starts.
    Before,
    /// Right after it ended (the sample is not in the case yet).
    After,
}

/// [`measure_rounds`], calling `observe` with the case right before and
/// right after each run: what a run cost beyond its req/s (CPU time,
/// counters) is read there, so that nothing else falls between.
pub(super) fn measure_rounds_observed(
    cases: &mut [Case],
    addr: impl Fn(Target) -> Result<SocketAddr>,
    slowest_rps: u64,
    options: &Options,
    what: &str,
    mut observe: impl FnMut(&Case, Stage) -> Result<()>,
) -> Result<()> {
    for round in 1..=options.rounds {
        for group in test_groups(cases) {
            for i in order(group.len(), round - 1) {
                let case = &mut cases[group.start + i];
                let addr = addr(case.target)?;
                observe(case, Stage::Before)?;
                let sample = redis_benchmark(
                    addr,
                    case.target.cluster_client(),
                    case.workload,
                    case.pipeline,
                    case.requests,
                    slowest_rps,
                )?;
                observe(case, Stage::After)?;
                eprintln!(
                    "xtask bench: {what}round {round}/{}: {} {} P{}: {:.0} req/s, p50 {} ms, p99 {} ms",
                    options.rounds,
                    report::label(case.target, case.workload),
                    case.workload.test(),
                    case.pipeline,
                    sample.rps,
                    sample.p50_ms.map_or("?".into(), |v| format!("{v:.3}")),
                    sample.p99_ms.map_or("?".into(), |v| format!("{v:.3}")),
                );
                case.samples.push(sample);
            }
        }
    }
    Ok(())
}

/// The index ranges of consecutive cases of the same test.
pub(super) fn test_groups(cases: &[Case]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < cases.len() {
        let test = (cases[start].workload, cases[start].pipeline);
        let len = cases[start..]
            .iter()
            .take_while(|c| (c.workload, c.pipeline) == test)
            .count();
        groups.push(start..start + len);
        start += len;
    }
    groups
}

/// The order of `len` targets in round `round` (from 0): the rows of a
/// balanced Latin square (Williams design). Over `len` rounds (`2 * len`
/// for an odd `len`), each target runs once in each place and once right
/// after each other target.
pub(super) fn order(len: usize, round: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    // First row 0, 1, len-1, 2, len-2, …; the others shift it by one.
    let first = (0..len).map(|i| match i {
        0 => 0,
        i if i % 2 == 1 => i.div_ceil(2),
        i => len - i / 2,
    });
    let rows = if len % 2 == 0 { len } else { 2 * len };
    let row = round % rows;
    let shifted: Vec<usize> = first.map(|c| (c + row) % len).collect();
    if row < len {
        shifted
    } else {
        // Odd sizes need the mirror images too.
        shifted.into_iter().rev().collect()
    }
}

/// One `redis-benchmark` run against `addr`, killed if it runs slower than
/// `slowest_rps` (plus 30 s). With `cluster`, `addr` is a node of a Redis
/// Cluster and `redis-benchmark` its client: `--cluster` sends each request
/// straight to its slot's master.
pub(super) fn redis_benchmark(
    addr: SocketAddr,
    cluster: bool,
    workload: Workload,
    pipeline: u32,
    requests: u64,
    slowest_rps: u64,
) -> Result<Sample> {
    let mut cmd = Cmd::new("redis-benchmark").args([
        "-h",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
    ]);
    if cluster {
        // Cluster mode would otherwise start a thread per master: one event
        // loop, as against every other target, keeps the load generator the
        // same, and only the path of the requests differs.
        cmd = cmd.args(["--cluster", "--threads", "1"]);
    }
    let cmd = cmd
        .args(["-c", &CLIENTS.to_string()])
        .args(["-P", &pipeline.to_string(), "-d", &VALUE_LEN.to_string()])
        .args(["-r", &KEYSPACE.to_string(), "-n", &requests.to_string()])
        .arg("--csv")
        // Last: a custom command takes the rest of the line.
        .args(workload.args());
    let timeout = Duration::from_secs(30 + requests / slowest_rps);
    let output = cmd.output_within(timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_csv(&stdout, &workload.csv_name())
        .with_context(|| format!("reading the output of `{cmd}`"))
}

/// Reads the row of `test` from `redis-benchmark --csv` output.
///
/// Recent versions print a header (`"test","rps","avg_latency_ms",…`) and
/// the columns are found by name; older ones print only `"TEST","rps"`
/// rows, which give no latencies.
fn parse_csv(output: &str, test: &str) -> Result<Sample> {
    let rows: Vec<Vec<String>> = output
        .split(['\n', '\r'])
        .filter(|l| l.contains(','))
        .map(|l| {
            l.split(',')
                .map(|f| f.trim().trim_matches('"').to_owned())
                .collect()
        })
        .collect();
    let header = rows.iter().find(|r| r[0].eq_ignore_ascii_case("test"));
    let column = |name: &str| header.and_then(|h| h.iter().position(|c| c == name));
    let row = rows
        .iter()
        .find(|r| r[0].eq_ignore_ascii_case(test))
        .with_context(|| format!("no {test} row in: {output:?}"))?;
    let field = |i: Option<usize>| i.and_then(|i| row.get(i)).and_then(|v| v.parse().ok());
    let rps = field(column("rps").or(Some(1)))
        .with_context(|| format!("no requests per second in the {test} row: {row:?}"))?;
    Ok(Sample {
        rps,
        p50_ms: field(column("p50_latency_ms")),
        p99_ms: field(column("p99_latency_ms")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_requests() {
        assert_eq!(requests_for(41_234.0, 3.0, 10_000), 124_000);
        assert_eq!(requests_for(900.0, 1.0, 1_000), 1_000);
        assert_eq!(requests_for(1e9, 3.0, 1_000), 50_000_000);
    }

    #[test]
    fn parses_csv_with_header() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                   \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"54495.91\",\"0.607\",\"0.176\",\"0.599\",\"0.871\",\"0.991\",\"9.623\"\n\
                   \"GET\",\"55309.73\",\"0.594\",\"0.176\",\"0.591\",\"0.855\",\"1.007\",\"2.431\"\n";
        let s = parse_csv(out, "GET").unwrap();
        assert_eq!(s.rps, 55309.73);
        assert_eq!(s.p50_ms, Some(0.591));
        assert_eq!(s.p99_ms, Some(1.007));
    }

    #[test]
    fn finds_the_rows_of_mset_and_a_custom_mget() {
        let keys = ["key:__rand_int__"; 10].join(" ");
        let out = format!(
            "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
             \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
             \"INCR\",\"221238.94\",\"3.122\",\"0.576\",\"2.791\",\"5.111\",\"11.631\",\"12.631\"\n\
             \"MSET (10 keys)\",\"42229.73\",\"18.425\",\"1.040\",\"13.911\",\"41.695\",\"88.127\",\"110.591\"\n\
             \"mget {keys}\",\"61919.50\",\"12.098\",\"1.024\",\"10.863\",\"21.663\",\"25.743\",\"26.511\"\n"
        );
        assert_eq!(
            parse_csv(&out, &Workload::Incr.csv_name()).unwrap().rps,
            221238.94
        );
        assert_eq!(
            parse_csv(&out, &Workload::Mset.csv_name()).unwrap().rps,
            42229.73
        );
        let mget = parse_csv(&out, &Workload::Mget.csv_name()).unwrap();
        assert_eq!((mget.rps, mget.p99_ms), (61919.50, Some(25.743)));
        assert_eq!(Workload::Mget.args().len(), 11);
        assert_eq!(Workload::Mset.args(), ["-t", "mset"]);
    }

    #[test]
    fn parses_old_csv_without_latencies() {
        let s = parse_csv("\"GET\",\"12345.00\"\r\n", "GET").unwrap();
        assert_eq!(s.rps, 12345.0);
        assert_eq!(s.p50_ms, None);
        assert!(parse_csv("WARNING: nothing\n", "GET").is_err());
    }

    #[test]
    fn each_target_takes_each_place_and_follows_each_other_once() {
        let case = |target, workload, pipeline| Case {
            target,
            workload,
            pipeline,
            requests: 1,
            samples: Vec::new(),
        };
        let cases = [
            case(Target::Redis, Workload::Get, 1),
            case(Target::KvServer, Workload::Get, 1),
            case(Target::KvProxy, Workload::Get, 1),
            case(Target::Redis, Workload::Get, 16),
            case(Target::KvServer, Workload::Get, 16),
            case(Target::Redis, Workload::Set, 16),
        ];
        assert_eq!(test_groups(&cases), vec![0..3, 3..5, 5..6]);
        assert_eq!(order(1, 5), vec![0]);
        assert_eq!(order(2, 0), vec![0, 1]);
        assert_eq!(order(2, 1), vec![1, 0]);
        for len in 2..=6 {
            let rows = if len % 2 == 0 { len } else { 2 * len };
            let orders: Vec<Vec<usize>> = (0..rows).map(|r| order(len, r)).collect();
            let mut places = vec![vec![0; len]; len];
            let mut follows = vec![vec![0; len]; len];
            for o in &orders {
                let mut sorted = o.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..len).collect::<Vec<_>>(), "{o:?}");
                for (place, &t) in o.iter().enumerate() {
                    places[t][place] += 1;
                }
                for w in o.windows(2) {
                    follows[w[1]][w[0]] += 1;
                }
            }
            let per = rows / len;
            for t in 0..len {
                assert!(places[t].iter().all(|&n| n == per), "len {len}: {places:?}");
                for before in 0..len {
                    let expected = if before == t { 0 } else { per };
                    assert_eq!(follows[t][before], expected, "len {len}: {follows:?}");
                }
            }
        }
    }
}
