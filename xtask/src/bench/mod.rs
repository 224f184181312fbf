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
//!    and 16), interleaved and repeated, and keeps the medians.
//! 5. Loads 1,000,000 keys into fresh Redis and kv servers and compares the
//!    memory each needs per key.
//! 6. Durable writes: for each fsync policy (`always`, `everysec`, `no`),
//!    Redis with `appendonly yes` and that `appendfsync`, and `kv server`
//!    with that `--fsync`, each on a fresh data directory, driven with SETs
//!    (pipeline 1 and 16) the same interleaved way as in step 4.
//! 7. Writes `artifacts/bench/report.md`, `chart.svg` and
//!    `durable-chart.svg`, and the same tables and the first chart into
//!    `BENCHMARKS.md` and `docs/bench-chart.svg`.
//!
//! Every process started is killed, and every data directory created is
//! removed, when the phase that started it ends, whether it succeeded or not
//! ([`Processes`]); and every wait has a deadline.

mod report;
mod resp;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::cmd::Cmd;
use report::{CodecFigure, Durable, Memory, Report};
use resp::{info_number, Conn, NullServer};

/// Where the report, the chart and the logs of the servers go.
const ARTIFACTS: &str = "artifacts/bench";

/// Keys `redis-benchmark -r` draws from, and so the keys loaded and warmed
/// before the runs: every GET finds a 64-byte value, on every target.
const KEYSPACE: u64 = 100_000;

/// Value size for the runs (`redis-benchmark -d`) and for the memory test.
const VALUE_LEN: usize = 64;

/// Parallel connections of `redis-benchmark` (`-c`).
const CLIENTS: u32 = 50;

/// Pipeline depths measured (`redis-benchmark -P`).
const PIPELINES: [u32; 2] = [1, 16];

/// Keys loaded for the memory comparison.
const MEMORY_KEYS: u64 = 1_000_000;

/// Commands per write when loading keys: large enough that loading is
/// bound by the server, small enough that replies never back up.
const LOAD_BATCH: u64 = 1000;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The fsync policies of the durable-writes comparison, as both
/// `kv server --fsync` and Redis's `appendfsync` name them.
const FSYNC_POLICIES: [&str; 3] = ["always", "everysec", "no"];

/// Below this rate a `redis-benchmark` run is taken to hang and is killed
/// (with 30 s to spare): in memory, anything slower is broken, not slow.
const SLOWEST_RPS: u64 = 2_000;

/// The same for writes that wait for a disk, which may be slow indeed.
const SLOWEST_DURABLE_RPS: u64 = 100;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many times every measurement is repeated; the report shows the
    /// median.
    pub rounds: usize,
    /// Short runs for a smoke test: about a second each instead of three.
    pub quick: bool,
    /// The command line that started this run, for the report.
    pub command_line: String,
}

impl Options {
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
    /// The null server: the ceiling of machine and load generator.
    Null,
}

/// The order targets run in within a round: Redis and kv alternate.
const TARGETS: [Target; 4] = [
    Target::Redis,
    Target::KvServer,
    Target::KvProxy,
    Target::Null,
];

/// A `redis-benchmark` test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// `-t get`.
    Get,
    /// `-t set`.
    Set,
}

impl Op {
    /// The name `redis-benchmark` uses for the test, in `-t` and in its CSV.
    fn test(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Set => "SET",
        }
    }
}

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

/// Every sample of one target × command × pipeline depth.
#[derive(Debug, Clone)]
pub struct Case {
    /// What was measured.
    pub target: Target,
    /// With which command.
    pub op: Op,
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
    Cmd::cargo()
        .args(["build", "--release", "-p", "kv-native"])
        .run()?;
    let kv = crate::target_dir().join("release").join("kv");
    ensure!(kv.is_file(), "the release build left no {}", kv.display());
    let out = PathBuf::from(ARTIFACTS);
    fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("could not create {}", out.display()))?;

    // First, while nothing else runs: the micro-benchmarks need a quiet CPU.
    let codec = codec_benchmarks(&out)?;
    let machine = machine();
    let server_args = kv_server_args(&kv)?;
    let load_before = load_average();
    let Throughput {
        cases,
        proxy_cache,
        servers,
    } = throughput(&kv, &server_args, options, &out)?;
    let load_after = load_average();
    let memory = memory(&kv, &server_args, &out)?;
    let durable = durable(&kv, options, &out)?;

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
        memory,
        durable,
        codec,
    };
    report::write(&report, &out)?;
    eprintln!(
        "xtask bench: done in {:.0} s; see {ARTIFACTS}/report.md and BENCHMARKS.md",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo bench -p kv-core --bench codec -- --quick`, then criterion's
/// JSON estimates turned into MB/s and commands/s per benchmark.
fn codec_benchmarks(out: &Path) -> Result<Vec<CodecFigure>> {
    let home = std::env::current_dir()?.join(out).join("criterion");
    // Only this run's estimates may end up in the report.
    if home.exists() {
        fs::remove_dir_all(&home)
            .with_context(|| format!("could not remove {}", home.display()))?;
    }
    Cmd::cargo()
        .args([
            "bench", "-p", "kv-core", "--bench", "codec", "--", "--quick",
        ])
        .env("CRITERION_HOME", &home)
        .run()?;
    let mut found = Vec::new();
    find_files(&home, "benchmark.json", &mut found)?;
    let mut figures: BTreeMap<(String, String), CodecFigure> = BTreeMap::new();
    for path in found {
        // Each benchmark's latest results sit in `…/new/`.
        if path.parent().and_then(Path::file_name) != Some("new".as_ref()) {
            continue;
        }
        let (id, figure) = codec_figure(&path)?;
        let entry = figures.entry(id.clone()).or_insert(CodecFigure {
            group: id.0,
            name: id.1,
            ns_per_batch: figure.ns_per_batch,
            mb_per_s: None,
            commands_per_s: None,
        });
        entry.mb_per_s = entry.mb_per_s.or(figure.mb_per_s);
        entry.commands_per_s = entry.commands_per_s.or(figure.commands_per_s);
    }
    ensure!(
        !figures.is_empty(),
        "criterion wrote no results under {}",
        home.display()
    );
    Ok(figures.into_values().collect())
}

/// Reads one criterion benchmark's `benchmark.json` and its `estimates.json`.
fn codec_figure(benchmark_json: &Path) -> Result<((String, String), CodecFigure)> {
    let read = |path: &Path| -> Result<serde_json::Value> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let bench = read(benchmark_json)?;
    let estimates = read(&benchmark_json.with_file_name("estimates.json"))?;
    let ns = estimates["median"]["point_estimate"]
        .as_f64()
        .context("estimates.json has no median")?;
    let id = (
        bench["group_id"].as_str().unwrap_or("?").to_owned(),
        bench["function_id"].as_str().unwrap_or("?").to_owned(),
    );
    let per_second = |n: &serde_json::Value| n.as_f64().map(|n| n / (ns * 1e-9));
    let throughput = &bench["throughput"];
    let figure = CodecFigure {
        group: id.0.clone(),
        name: id.1.clone(),
        ns_per_batch: ns,
        mb_per_s: per_second(&throughput["Bytes"]).map(|b| b / 1e6),
        commands_per_s: per_second(&throughput["Elements"]),
    };
    Ok((id, figure))
}

/// Every file called `name` under `dir`, recursively.
fn find_files(dir: &Path, name: &str, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            find_files(&path, name, found)?;
        } else if path.file_name() == Some(name.as_ref()) {
            found.push(path);
        }
    }
    Ok(())
}

/// The machine, as `label: value` lines for the report.
fn machine() -> Vec<(String, String)> {
    let proc_field = |file: &str, field: &str| {
        fs::read_to_string(file).ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    let run = |program: &str, args: &[&str]| {
        Cmd::new(program)
            .args(args)
            .read()
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let ram = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    vec![
        (
            "CPU".into(),
            proc_field("/proc/cpuinfo", "model name").unwrap_or("unknown".into()),
        ),
        ("nproc".into(), run("nproc", &[])),
        ("RAM".into(), ram),
        ("kernel".into(), run("uname", &["-sr"])),
        ("redis-server".into(), run("redis-server", &["--version"])),
        (
            "redis-benchmark".into(),
            run("redis-benchmark", &["--version"]),
        ),
        ("rustc".into(), run("rustc", &["--version"])),
    ]
}

/// The 1-minute load average: work of other programs on the machine shows
/// up here, and in the noise of the results.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A server process this benchmark started.
struct Service {
    addr: SocketAddr,
    pid: u32,
    /// The command line it was started with, for the report.
    command: String,
}

/// The processes started by one phase, and the data directories made for
/// them. Dropping it kills and reaps the processes, then removes the
/// directories, so that nothing outlives the benchmark, whether it fails or
/// not.
#[derive(Default)]
struct Processes {
    children: Vec<(String, Child)>,
    dirs: Vec<PathBuf>,
}

impl Processes {
    /// Starts `redis-server` on a free port, persistence off, logging to
    /// `logs/NAME.log`, and waits until it answers `PING`.
    fn redis(&mut self, out: &Path, name: &str) -> Result<Service> {
        let dir = out.join(name);
        fs::create_dir_all(&dir)?;
        self.redis_with(out, name, &dir, &["--appendonly", "no"])
    }

    /// Starts `redis-server` like [`Processes::redis`], but with the
    /// persistence settings `persistence` (RDB snapshots stay off) and its
    /// files in `dir`.
    fn redis_with(
        &mut self,
        out: &Path,
        name: &str,
        dir: &Path,
        persistence: &[&str],
    ) -> Result<Service> {
        let port = free_port()?;
        let log = log_file(out, name)?;
        let cmd = Cmd::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir);
        let command = cmd.to_string();
        let child = cmd.spawn(Stdio::from(log.try_clone()?), Stdio::from(log))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut conn = Conn::connect(addr, deadline)
            .with_context(|| format!("{name} did not start; see {}", log_path(out, name)))?;
        let pong = conn.command(&[b"PING"])?;
        ensure!(pong == "PONG", "{name} answered PING with {pong:?}");
        Ok(Service { addr, pid, command })
    }

    /// An empty directory at `path` (anything left there by an earlier run
    /// is removed first), removed again when `self` is dropped.
    fn fresh_dir(&mut self, path: PathBuf) -> Result<PathBuf> {
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("could not remove {}", path.display()))?;
        }
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        self.dirs.push(path.clone());
        Ok(path)
    }

    /// Starts `kv ARGS` (which must include `--listen 127.0.0.1:0`) and
    /// waits for the line announcing the address it listens on.
    fn kv(&mut self, kv: &Path, args: &[String], out: &Path, name: &str) -> Result<Service> {
        let log = log_file(out, name)?;
        let cmd = Cmd::new(kv).args(args);
        // The report names the binary as users run it.
        let command = cmd.to_string().replacen(&kv.display().to_string(), "kv", 1);
        let mut child = cmd.spawn(Stdio::piped(), Stdio::from(log))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        self.children.push((name.to_owned(), child));
        // The reader thread goes on draining stdout after the announcement,
        // so that the server can never block on a full pipe; it ends with
        // the process.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        eprintln!("xtask bench: {name} (pid {pid}) listening on {addr}");
                        return Ok(Service { addr, pid, command });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{name} did not announce its address within {START_TIMEOUT:?}; see {}",
                    log_path(out, name)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "{name} exited before listening; see {}",
                    log_path(out, name)
                ),
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            // SIGKILL: nothing of these servers' state is worth keeping, and
            // no shutdown path can then hang the benchmark.
            let _ = child.kill();
            match child.wait() {
                Ok(_) => eprintln!("xtask bench: stopped {name} (pid {})", child.id()),
                Err(e) => eprintln!("xtask bench: warning: could not reap {name}: {e}"),
            }
        }
        for dir in &self.dirs {
            // A Redis killed during a log rewrite leaves its forked rewriter
            // behind for a moment (it exits once it finds its parent gone),
            // which may still hold files here: one retry after it is gone.
            let removed = fs::remove_dir_all(dir).or_else(|_| {
                std::thread::sleep(Duration::from_secs(2));
                fs::remove_dir_all(dir)
            });
            match removed {
                Ok(()) => eprintln!("xtask bench: removed {}", dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!(
                    "xtask bench: warning: could not remove {}: {e}",
                    dir.display()
                ),
            }
        }
    }
}

/// The address in `kv server listening on ADDR` or
/// `kv proxy listening on ADDR (upstream ADDR)`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once(" listening on ")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

/// A loopback port nobody listens on right now. Redis must be told its port
/// (it cannot report one it picked), so there is a short window in which
/// another program could take it; starting Redis then fails loudly.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn log_path(out: &Path, name: &str) -> String {
    out.join("logs")
        .join(format!("{name}.log"))
        .display()
        .to_string()
}

fn log_file(out: &Path, name: &str) -> Result<fs::File> {
    let path = log_path(out, name);
    fs::File::create(&path).with_context(|| format!("could not create {path}"))
}

/// The key `redis-benchmark` makes of `__rand_int__` = `i`: `key:` and 12
/// digits, so every key is 16 bytes.
fn key(i: u64) -> String {
    format!("key:{i:012}")
}

/// A 64-byte value that differs per key (no server can share them).
fn value(i: u64) -> String {
    format!("{i:0>width$}", width = VALUE_LEN)
}

/// `SET key(i) value(i)` for every `i` in `keys`, pipelined in batches.
fn load(addr: SocketAddr, keys: std::ops::Range<u64>, deadline: Instant) -> Result<()> {
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
            resp::encode(
                &mut batch,
                &[b"SET", key(k).as_bytes(), value(k).as_bytes()],
            );
        }
        conn.pipeline(&batch, end - i)?;
        i = end;
    }
    Ok(())
}

/// `GET key(i)` for every `i` in `keys`, failing if any key is missing.
fn get_all(addr: SocketAddr, keys: std::ops::Range<u64>, deadline: Instant) -> Result<()> {
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
            resp::encode(&mut batch, &[b"GET", key(k).as_bytes()]);
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
fn kv_server_args(kv: &Path) -> Result<Vec<String>> {
    let help = Cmd::new(kv).args(["server", "--help"]).read()?;
    let mut args: Vec<String> = ["server", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .into();
    if help.contains("--in-memory") {
        args.push("--in-memory".into());
    }
    Ok(args)
}

/// Proxy cache counters over the measured GETs.
#[derive(Debug, Clone, Copy)]
pub struct CacheCounts {
    /// GETs answered from the cache.
    pub hits: u64,
    /// GETs forwarded upstream.
    pub misses: u64,
}

/// What [`throughput`] measured.
struct Throughput {
    cases: Vec<Case>,
    proxy_cache: CacheCounts,
    /// How Redis, kv server and kv proxy were started.
    servers: Vec<String>,
}

/// Starts the four targets, prepares their data, and runs every case
/// `options.rounds` times, interleaved.
fn throughput(
    kv: &Path,
    server_args: &[String],
    options: &Options,
    out: &Path,
) -> Result<Throughput> {
    let mut procs = Processes::default();
    let redis = procs.redis(out, "redis")?;
    let server = procs.kv(kv, server_args, out, "kv-server")?;
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
    let proxy = procs.kv(kv, &proxy_args, out, "kv-proxy")?;
    let null = NullServer::start()?;

    let deadline = Instant::now() + Duration::from_secs(120);
    eprintln!("xtask bench: loading {KEYSPACE} keys into redis and, through the proxy, kv");
    load(redis.addr, 0..KEYSPACE, deadline)?;
    // SETs through the proxy reach the kv server and, once acknowledged,
    // are written through to the cache; the GET pass then checks every key
    // and leaves any the write-through missed cached.
    load(proxy.addr, 0..KEYSPACE, deadline)?;
    get_all(proxy.addr, 0..KEYSPACE, deadline)?;
    // A connection per look: one kept open across the rounds would be
    // closed by the proxy's idle timeout.
    let info = Conn::connect(proxy.addr, deadline)?.info(None)?;
    let cached = info_number(&info, "cache_entries")?;
    ensure!(
        cached >= KEYSPACE,
        "the proxy cached only {cached} of {KEYSPACE} keys: its GETs would not all be hits"
    );
    let (hits0, misses0) = (
        info_number(&info, "cache_hits")?,
        info_number(&info, "cache_misses")?,
    );

    let addr = |target| match target {
        Target::Redis => redis.addr,
        Target::KvServer => server.addr,
        Target::KvProxy => proxy.addr,
        Target::Null => null.addr(),
    };

    let mut cases = Vec::new();
    for op in [Op::Get, Op::Set] {
        for pipeline in PIPELINES {
            for target in TARGETS {
                let warm_up = if pipeline == 1 { 10_000 } else { 100_000 };
                let calibration = Calibration {
                    warm_up,
                    floor: warm_up,
                    slowest_rps: SLOWEST_RPS,
                };
                cases.push(calibrate(
                    addr(target),
                    target,
                    op,
                    pipeline,
                    calibration,
                    options,
                )?);
            }
        }
    }
    measure_rounds(&mut cases, addr, SLOWEST_RPS, options, "")?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let info = Conn::connect(proxy.addr, deadline)?.info(None)?;
    let proxy_cache = CacheCounts {
        hits: info_number(&info, "cache_hits")?.saturating_sub(hits0),
        misses: info_number(&info, "cache_misses")?.saturating_sub(misses0),
    };
    let servers = vec![redis.command, server.command, proxy.command];
    drop(null);
    drop(procs);
    Ok(Throughput {
        cases,
        proxy_cache,
        servers,
    })
}

/// How a case's `-n` is found.
#[derive(Debug, Clone, Copy)]
struct Calibration {
    /// Requests of the calibration run.
    warm_up: u64,
    /// The fewest requests a measured run may have.
    floor: u64,
    /// Below this rate a run is taken to hang (see [`SLOWEST_RPS`]).
    slowest_rps: u64,
}

/// Calibration doubles as warm-up: one short run, whose rate sets `-n` so
/// that the measured runs of the case last about `run_seconds`.
fn calibrate(
    addr: SocketAddr,
    target: Target,
    op: Op,
    pipeline: u32,
    calibration: Calibration,
    options: &Options,
) -> Result<Case> {
    let sample = redis_benchmark(
        addr,
        op,
        pipeline,
        calibration.warm_up,
        calibration.slowest_rps,
    )?;
    Ok(Case {
        target,
        op,
        pipeline,
        requests: requests_for(sample.rps, options.run_seconds(), calibration.floor),
        samples: Vec::new(),
    })
}

/// Requests for a run of about `seconds` at `rps`, at least `floor`, in
/// whole thousands.
fn requests_for(rps: f64, seconds: f64, floor: u64) -> u64 {
    ((rps * seconds) as u64)
        .clamp(floor, 50_000_000)
        .div_ceil(1000)
        * 1000
}

/// Runs every case once per round, `options.rounds` times. Cases are
/// stored test by test (the same command and pipeline depth), and a test's
/// targets run back to back, so each round pairs them on the same test.
/// Their order changes each round ([`order`]): a target that always ran
/// first, or always right after the same other one, would carry whatever
/// that left behind (sockets being torn down, caches and CPU state), which
/// no number of rounds averages out.
/// `what` prefixes the progress lines.
fn measure_rounds(
    cases: &mut [Case],
    addr: impl Fn(Target) -> SocketAddr,
    slowest_rps: u64,
    options: &Options,
    what: &str,
) -> Result<()> {
    for round in 1..=options.rounds {
        for group in test_groups(cases) {
            for i in order(group.len(), round - 1) {
                let case = &mut cases[group.start + i];
                let sample = redis_benchmark(
                    addr(case.target),
                    case.op,
                    case.pipeline,
                    case.requests,
                    slowest_rps,
                )?;
                eprintln!(
                    "xtask bench: {what}round {round}/{}: {} {} P{}: {:.0} req/s, p50 {} ms, p99 {} ms",
                    options.rounds,
                    report::label(case.target, case.op),
                    case.op.test(),
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
fn test_groups(cases: &[Case]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < cases.len() {
        let test = (cases[start].op, cases[start].pipeline);
        let len = cases[start..]
            .iter()
            .take_while(|c| (c.op, c.pipeline) == test)
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
fn order(len: usize, round: usize) -> Vec<usize> {
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
/// `slowest_rps` (plus 30 s).
fn redis_benchmark(
    addr: SocketAddr,
    op: Op,
    pipeline: u32,
    requests: u64,
    slowest_rps: u64,
) -> Result<Sample> {
    let cmd = Cmd::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", op.test(), "-c", &CLIENTS.to_string()])
        .args(["-P", &pipeline.to_string(), "-d", &VALUE_LEN.to_string()])
        .args(["-r", &KEYSPACE.to_string(), "-n", &requests.to_string()])
        .arg("--csv");
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
    parse_csv(&stdout, op.test()).with_context(|| format!("reading the output of `{cmd}`"))
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
fn memory(kv: &Path, server_args: &[String], out: &Path) -> Result<Memory> {
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

/// The durable-writes comparison, one fsync policy after the other, each
/// with fresh servers on fresh, empty data directories.
fn durable(kv: &Path, options: &Options, out: &Path) -> Result<Vec<Durable>> {
    let help = Cmd::new(kv).args(["server", "--help"]).read()?;
    if !help.contains("--fsync") {
        eprintln!("xtask bench: skipping durable writes: this kv server has no --fsync");
        return Ok(Vec::new());
    }
    FSYNC_POLICIES
        .into_iter()
        .map(|policy| durable_policy(kv, policy, options, out))
        .collect()
}

/// SETs on Redis (`appendonly yes`, `appendfsync POLICY`) and on
/// `kv server --fsync POLICY`, interleaved over the rounds.
fn durable_policy(
    kv: &Path,
    policy: &'static str,
    options: &Options,
    out: &Path,
) -> Result<Durable> {
    eprintln!("xtask bench: durable writes, fsync {policy}");
    let mut procs = Processes::default();
    let redis_dir = procs.fresh_dir(out.join(format!("redis-aof-{policy}")))?;
    let kv_dir = procs.fresh_dir(out.join(format!("kv-data-{policy}")))?;
    let redis = procs.redis_with(
        out,
        &format!("redis-aof-{policy}"),
        &redis_dir,
        &["--appendonly", "yes", "--appendfsync", policy],
    )?;
    let mut kv_args: Vec<String> = ["server", "--listen", "127.0.0.1:0", "--fsync", policy]
        .map(String::from)
        .into();
    kv_args.push("--data-dir".into());
    kv_args.push(kv_dir.display().to_string());
    let server = procs.kv(kv, &kv_args, out, &format!("kv-server-{policy}"))?;

    // Both must really be logging, under the policy asked for.
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = Conn::connect(redis.addr, deadline)?.info(Some("persistence"))?;
    ensure!(
        info_field(&info, "aof_enabled") == Some("1"),
        "redis (appendfsync {policy}) runs without its append-only file"
    );
    let mut request = Vec::new();
    resp::encode(&mut request, &[b"CONFIG", b"GET", b"appendfsync"]);
    let reply = Conn::connect(redis.addr, deadline)?.pipeline(&request, 1)?;
    ensure!(
        String::from_utf8_lossy(&reply).contains(&format!("\r\n{policy}\r\n")),
        "redis reports appendfsync {:?}, not {policy}",
        String::from_utf8_lossy(&reply)
    );
    let info = Conn::connect(server.addr, deadline)?.info(None)?;
    ensure!(
        info_field(&info, "aof_enabled") == Some("1")
            && info_field(&info, "aof_fsync") == Some(policy),
        "kv server (--fsync {policy}) reports aof_enabled {:?}, aof_fsync {:?}",
        info_field(&info, "aof_enabled"),
        info_field(&info, "aof_fsync")
    );

    let addr = |target| match target {
        Target::KvServer => server.addr,
        _ => redis.addr,
    };
    let mut cases = Vec::new();
    for pipeline in PIPELINES {
        for target in [Target::Redis, Target::KvServer] {
            // Shorter than in memory: under `always` every batch of writes
            // waits for the disk.
            let calibration = Calibration {
                warm_up: if pipeline == 1 { 5_000 } else { 50_000 },
                floor: 1_000,
                slowest_rps: SLOWEST_DURABLE_RPS,
            };
            cases.push(calibrate(
                addr(target),
                target,
                Op::Set,
                pipeline,
                calibration,
                options,
            )?);
        }
    }
    measure_rounds(
        &mut cases,
        addr,
        SLOWEST_DURABLE_RPS,
        options,
        &format!("fsync {policy}: "),
    )?;

    // Redis rewrites its log in a forked child, which a kill of Redis would
    // leave running for a while: stop new rewrites and let any running one
    // finish before the servers are killed. (kv rewrites on a thread.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn = Conn::connect(redis.addr, deadline)?;
    conn.command(&[b"CONFIG", b"SET", b"auto-aof-rewrite-percentage", b"0"])?;
    let redis_info = loop {
        let info = conn.info(Some("persistence"))?;
        let busy = |field| info_field(&info, field).is_some_and(|v| v != "0");
        if !busy("aof_rewrite_in_progress") && !busy("aof_rewrite_scheduled") {
            break info;
        }
        ensure!(
            Instant::now() < deadline,
            "redis (appendfsync {policy}) is still rewriting its log"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for field in ["aof_last_write_status", "aof_last_bgrewrite_status"] {
        let status = info_field(&redis_info, field);
        ensure!(
            status.is_none_or(|v| v == "ok"),
            "redis (appendfsync {policy}) reports {field}:{}",
            status.unwrap_or("")
        );
    }
    let kv_info = Conn::connect(server.addr, deadline)?.info(None)?;
    ensure!(
        info_field(&kv_info, "aof_status") == Some("ok"),
        "kv server (--fsync {policy}) reports aof_status {:?}",
        info_field(&kv_info, "aof_status")
    );
    let rewrites = (
        info_number(&redis_info, "aof_rewrites").ok(),
        info_number(&kv_info, "aof_rewrites").ok(),
    );

    let kv_fs = filesystem(&kv_dir);
    let redis_fs = filesystem(&redis_dir);
    let filesystem = if kv_fs == redis_fs {
        kv_fs
    } else {
        format!("kv: {kv_fs}, Redis: {redis_fs}")
    };
    let durable = Durable {
        policy,
        filesystem,
        mount: mount(&kv_dir),
        servers: vec![redis.command, server.command],
        cases,
        rewrites,
    };
    drop(procs);
    Ok(durable)
}

/// The value of `field` in an `INFO` answer.
fn info_field<'a>(info: &'a [(String, String)], field: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == field).map(|(_, v)| v.trim())
}

/// The type of the filesystem holding `dir`, as `stat -f -c %T` names it
/// (which tells ext2, ext3 and ext4 apart by none of them).
fn filesystem(dir: &Path) -> String {
    Cmd::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .read()
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The type and options of the mount holding `dir`, as `findmnt` shows
/// them, when it can.
fn mount(dir: &Path) -> Option<String> {
    let text = Cmd::new("findmnt")
        .args(["-n", "-o", "FSTYPE,OPTIONS", "--target"])
        .arg(dir)
        .read()
        .ok()?;
    let (fstype, mount_options) = text.trim().split_once(char::is_whitespace)?;
    Some(format!("{fstype} {}", mount_options.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dirs_are_emptied_and_removed_with_the_guard() {
        let base = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let path = base.join("kv-data-always");
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("appendonly.kv"), b"left over").unwrap();
        let mut procs = Processes::default();
        let dir = procs.fresh_dir(path.clone()).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::write(dir.join("appendonly.kv"), b"written").unwrap();
        drop(procs);
        assert!(!path.exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn calibrated_requests() {
        assert_eq!(requests_for(41_234.0, 3.0, 10_000), 124_000);
        assert_eq!(requests_for(900.0, 1.0, 1_000), 1_000);
        assert_eq!(requests_for(1e9, 3.0, 1_000), 50_000_000);
    }

    #[test]
    fn finds_info_fields() {
        let info = vec![
            ("aof_enabled".to_owned(), "1".to_owned()),
            ("aof_fsync".to_owned(), "always\r".to_owned()),
        ];
        assert_eq!(info_field(&info, "aof_fsync"), Some("always"));
        assert_eq!(info_field(&info, "aof_status"), None);
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
    fn parses_old_csv_without_latencies() {
        let s = parse_csv("\"GET\",\"12345.00\"\r\n", "GET").unwrap();
        assert_eq!(s.rps, 12345.0);
        assert_eq!(s.p50_ms, None);
        assert!(parse_csv("WARNING: nothing\n", "GET").is_err());
    }

    #[test]
    fn each_target_takes_each_place_and_follows_each_other_once() {
        let case = |target, op, pipeline| Case {
            target,
            op,
            pipeline,
            requests: 1,
            samples: Vec::new(),
        };
        let cases = [
            case(Target::Redis, Op::Get, 1),
            case(Target::KvServer, Op::Get, 1),
            case(Target::KvProxy, Op::Get, 1),
            case(Target::Redis, Op::Get, 16),
            case(Target::KvServer, Op::Get, 16),
            case(Target::Redis, Op::Set, 16),
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

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn keys_are_those_of_redis_benchmark() {
        assert_eq!(key(18426), "key:000000018426");
        assert_eq!(key(0).len(), 16);
        assert_eq!(value(7).len(), VALUE_LEN);
    }

    #[test]
    fn reads_announced_addresses() {
        assert_eq!(
            listening_addr("kv server listening on 127.0.0.1:7070"),
            Some("127.0.0.1:7070".parse().unwrap())
        );
        assert_eq!(
            listening_addr("kv proxy listening on 127.0.0.1:1 (upstream 127.0.0.1:2)"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(listening_addr("starting"), None);
    }
}
