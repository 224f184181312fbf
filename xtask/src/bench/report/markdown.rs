//! The report's text: the body shared by `report.md` and `BENCHMARKS.md`,
//! and its tables.

use std::fmt::Write as _;

use super::checks::checks;
use super::{
    find, label, paired, ratio, rps_of, thousands, ClusterComparison, CodecFigure, Durable, Memory,
    ProxyComparison, ProxyCost, PubSubCase, PubSubSample, Report, RunCosts,
};
use crate::bench::{
    median, Case, Part, Target, Workload, COMMANDS, GET_SET, KEYSPACE, MULTI_KEYS, PIPELINES,
};

/// `v` formatted by `f`, or `–` for a figure that is missing, so that a
/// table keeps its columns.
fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// The report's body: everything but its title, shared by `report.md` and
/// `BENCHMARKS.md`. `chart` is the chart's path relative to the document,
/// `durable_chart` the durable-writes chart's, if the document shows it.
pub(super) fn body(r: &Report, chart: &str, durable_chart: Option<&str>) -> String {
    let o = &r.options;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} with `{}`: {} round{} of every case, interleaved \
         (Redis, kv server, kv proxy and null back to back for each GET or SET test, \
         Redis and kv server for each of the other commands, in an order that changes \
         each round: over four rounds each target runs once in each place and once \
         right after each other target); the tables show medians.\n",
        r.date,
        o.command_line,
        o.rounds,
        if o.rounds == 1 { "" } else { "s" },
    );
    let _ = writeln!(s, "**Machine.**");
    for (k, v) in &r.machine {
        let _ = writeln!(s, "- {k}: `{v}`");
    }
    let _ = writeln!(
        s,
        "- load average (1 min) before / after the throughput runs: {} / {}",
        opt(r.load.0, |v| format!("{v:.2}")),
        opt(r.load.1, |v| format!("{v:.2}"))
    );
    let _ = writeln!(
        s,
        "\nOn this small machine `redis-benchmark` competes with the server for \
         the CPU, the same for every target. A load average well above 0 means other \
         programs were running too: their noise is what the interleaving and the \
         medians are for, and the spread column shows what is left of it.\n"
    );

    s.push_str(&get_set_section(r, chart));
    s.push_str(&commands_section(r));
    s.push_str(&memory_section(r));

    s.push_str(&durable_section(r, durable_chart));
    s.push_str(&tracking_section(r));
    s.push_str(&tracking_memory_section(r));
    s.push_str(&pubsub_section(r));
    s.push_str(&proxies_section(r));
    s.push_str(&cluster_section(r));

    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "Reported, never asserted: a miss is a finding, not a failure.\n"
    );
    let _ = writeln!(s, "| Target | Goal | Measured | Result |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    for check in checks(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            check.what,
            check.goal,
            opt(check.measured, |v| format!("{v:.2}")),
            check.verdict()
        );
    }

    let _ = writeln!(s, "\n## Codec micro-benchmarks\n");
    if o.runs(Part::Codec) {
        s.push_str(&codec_table(&r.codec));
    } else {
        let _ = writeln!(s, "{NOT_RUN}");
    }
    let _ = writeln!(s, "\nReproduce with `{}`.", o.command_line);
    s
}

/// The codec micro-benchmarks: how they ran, and their figures.
fn codec_table(figures: &[CodecFigure]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "`cargo bench -p kv-core --bench codec -- --quick` (criterion, median): batches of \
         1,000 pipelined `GET key:000123` or `SET key:000123 <64 bytes>`; `parse` is \
         `Decoder` + `Command::from_frame`, `encode_reply` is `Reply::encode` of the \
         matching replies (a 64-byte bulk value, or `OK`), `encode_command` is \
         `Command::encode_resp`, as clients send requests (the proxy forwards with \
         `encode_resp_args`). Time per command is the `bytes` run's. MB/s counts wire bytes \
         (10^6 bytes/s).\n"
    );
    let _ = writeln!(
        s,
        "| Benchmark | Case | Time per command | MB/s | Commands/s |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    let mut codec: Vec<&CodecFigure> = figures.iter().collect();
    // The server's request path first, then its replies, then the client's.
    let rank = |g: &str| {
        ["parse", "encode_reply", "encode_command"]
            .iter()
            .position(|&x| x == g)
    };
    codec.sort_by_key(|f| (rank(&f.group), f.name.starts_with("inline"), f.name.clone()));
    for f in codec {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} ns | {} | {} |",
            f.group,
            f.name,
            f.ns_per_batch / 1000.0,
            opt(f.mb_per_s, |v| format!("{v:.0}")),
            opt(f.commands_per_s, |v| format!("{:.1} M", v / 1e6)),
        );
    }
    s
}

/// What a section says of a part `--only` left out.
const NOT_RUN: &str = "Not measured in this run (`--only` left this part out).";

/// GET and SET on every target: how they were run, the chart, the table.
fn get_set_section(r: &Report, chart: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Throughput and latency\n");
    if !r.options.runs(Part::GetSet) {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    }
    let _ = writeln!(
        s,
        "`redis-benchmark -h 127.0.0.1 -p PORT -t get|set -c 50 -P 1|16 -d 64 -r 100000 \
         -n N --csv`, N calibrated per case so that a run lasts about {:.0} s. Every GET \
         finds a 64-byte value: the 100,000 keys are loaded first (into kv through the \
         proxy, which also caches them).\n",
        r.options.run_seconds()
    );
    let _ = writeln!(
        s,
        "The servers, on free loopback ports, persistence off on both sides:\n"
    );
    for command in &r.servers {
        let _ = writeln!(s, "    {command}");
    }
    let _ = writeln!(s, "\n![requests per second]({chart})\n");
    s.push_str(&throughput_table(&r.cases, &GET_SET));
    let _ = writeln!(
        s,
        "\n`spread` is half the range of the rounds' req/s, relative to the median. `vs Redis` \
         and `of null` are medians of per-round ratios: each round runs the targets back to \
         back, so pairing them cancels much of the noise that varies between rounds. \
         `of null` compares with the null server, which answers `+OK` to everything \
         from a thread per connection: at pipeline 16 that is the ceiling of this machine \
         and load generator, but at pipeline 1 it is not one, because every request wakes \
         one of 50 threads and those wake-ups cost more than an event loop's (Redis and kv \
         each serve all clients from one thread), so `of null` above 1 at pipeline 1 is \
         expected."
    );
    if let Some(c) = r.proxy_cache {
        let _ = writeln!(
            s,
            "\nProxy cache over the measured GETs: {} hits, {} misses ({:.2} % hits). \
             `kv proxy (forwarded)` SETs go to `kv server` and are written through to the \
             cache.",
            c.hits,
            c.misses,
            100.0 * c.hits as f64 / (c.hits + c.misses).max(1) as f64
        );
    }
    let _ = writeln!(s);
    s
}

/// INCR, MSET and MGET on Redis and kv server.
fn commands_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## INCR, MSET and MGET\n");
    if !r.options.runs(Part::Commands) {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    }
    let _ = writeln!(
        s,
        "Redis and kv server only (the same servers as GET and SET, in the same rounds): \
         `redis-benchmark -h 127.0.0.1 -p PORT -c 50 -P 1|16 -d 64 -r 100000 -n N --csv` \
         with `-t incr` (`INCR counter:__rand_int__`: 100,000 counters, each created by \
         its first INCR), `-t mset` (`MSET` of {MULTI_KEYS} `key:__rand_int__` keys with \
         64-byte values), or the custom command `mget key:__rand_int__ …` with the key \
         {MULTI_KEYS} times (Redis 7.0's `redis-benchmark` has no MGET test); each key is \
         drawn at random on its own, N calibrated as above. The 100,000 `key:` keys are \
         loaded first, so every MGET finds {MULTI_KEYS} 64-byte values. A request is one \
         command: an MSET or MGET request carries {MULTI_KEYS} keys.\n"
    );
    if !r.options.runs(Part::GetSet) {
        let _ = writeln!(
            s,
            "The servers, on free loopback ports, persistence off on both sides:\n"
        );
        for command in &r.servers {
            let _ = writeln!(s, "    {command}");
        }
        let _ = writeln!(s);
    }
    s.push_str(&throughput_table(&r.cases, &COMMANDS));
    let _ = writeln!(
        s,
        "\n`spread` and `vs Redis` as above. There is no null-server row: its `+OK` to \
         an MGET is far less work, and fewer bytes, than {MULTI_KEYS} values.\n"
    );
    s
}

/// Both memory comparisons in one table: keys without a TTL, then with.
fn memory_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Memory\n");
    let measured: Vec<&Memory> = [&r.memory, &r.memory_ttl].into_iter().flatten().collect();
    let Some(first) = measured.first() else {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    };
    let ttls: Vec<String> = measured
        .iter()
        .map(|m| match m.ttl {
            None => "without a TTL".into(),
            Some(t) => format!("each with a TTL (`SET key value EX {t}`)"),
        })
        .collect();
    let _ = writeln!(
        s,
        "{} keys of {} bytes with {}-byte values, loaded (pipelined, 1,000 SETs per batch) \
         into a fresh Redis and kv server for each set of keys: {}. Bytes per key are the \
         growth over the empty server divided by the number of keys.\n",
        thousands(first.keys as f64),
        first.key_len,
        first.value_len,
        ttls.join(", then ")
    );
    let _ = writeln!(s, "| Keys | Server | Measure | Bytes/key | vs Redis RSS |");
    let _ = writeln!(s, "|---|---|---|---:|---:|");
    for m in &measured {
        let keys = match m.ttl {
            None => "no TTL".to_owned(),
            Some(t) => format!("EX {t}"),
        };
        let redis_rss = m.per_key(m.redis_rss);
        for (server, measure, bytes) in [
            ("kv server", "RSS (VmRSS) delta", m.kv_rss),
            ("redis", "RSS (VmRSS) delta", m.redis_rss),
            (
                "redis",
                "`INFO memory` used_memory delta",
                m.redis_used_memory,
            ),
        ] {
            let per_key = m.per_key(bytes);
            let _ = writeln!(
                s,
                "| {keys} | {server} | {measure} | {per_key:.1} | {} |",
                opt(ratio(Some(per_key), Some(redis_rss)), |v| format!(
                    "{v:.2}×"
                ))
            );
        }
    }
    if let (Some(plain), Some(ttl)) = (&r.memory, &r.memory_ttl) {
        let more = |a: u64, b: u64| format!("{:+.1}", ttl.per_key(a) - plain.per_key(b));
        let _ = writeln!(
            s,
            "\nWhat the TTL adds per key (the `EX` rows minus the `no TTL` rows): kv {} bytes \
             (RSS), Redis {} bytes (RSS), {} bytes (used_memory).",
            more(ttl.kv_rss, plain.kv_rss),
            more(ttl.redis_rss, plain.redis_rss),
            more(ttl.redis_used_memory, plain.redis_used_memory),
        );
    }
    let _ = writeln!(
        s,
        "\nThe two measures differ: `used_memory` is what Redis's allocator handed out \
         (payloads plus Redis's own per-key structures and allocator size-class rounding), \
         while RSS is what the kernel has mapped for the process (the same plus allocator \
         free lists and fragmentation, and pages of whatever else the process touched). kv \
         has no allocator counter to ask, so it is measured by RSS; the Redis RSS line is \
         the apples-to-apples comparison, and the targets below use it.\n"
    );
    s
}

/// A table of `workloads`: one row per target × command × pipeline depth,
/// with an `of null` column if the null server ran any of them.
fn throughput_table(cases: &[Case], workloads: &[Workload]) -> String {
    let mut s = String::new();
    let with_null = cases
        .iter()
        .any(|c| c.target == Target::Null && workloads.contains(&c.workload));
    let _ = writeln!(
        s,
        "| Target | Command | Pipeline | req/s | spread | p50 ms | p99 ms | vs Redis |{}",
        if with_null { " of null |" } else { "" }
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|{}",
        if with_null { "---:|" } else { "" }
    );
    for &workload in workloads {
        for pipeline in PIPELINES {
            let redis = find(cases, Target::Redis, workload, pipeline);
            let null = find(cases, Target::Null, workload, pipeline);
            for &target in workload.targets() {
                let Some(case) = find(cases, target, workload, pipeline) else {
                    continue;
                };
                let rps = case.rps();
                let of_null = if with_null {
                    format!(
                        " {} |",
                        opt(paired(Some(case), null, rps_of), |v| format!("{v:.2}"))
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |{of_null}",
                    label(target, workload),
                    workload.test(),
                    pipeline,
                    thousands(rps),
                    spread(case).unwrap_or_else(|| "–".into()),
                    opt(case.p50(), |v| format!("{v:.3}")),
                    opt(case.p99(), |v| format!("{v:.3}")),
                    opt(paired(Some(case), redis, rps_of), |v| format!("{v:.2}×")),
                );
            }
        }
    }
    s
}

/// Half of max minus min of the rounds' req/s, relative to the median, as
/// `±N %`: how much to trust a difference between two figures. `None` for a
/// single round.
fn spread(case: &Case) -> Option<String> {
    let rps = case.rps();
    let (lo, hi) = case.samples.iter().fold((f64::MAX, 0.0f64), |(lo, hi), s| {
        (lo.min(s.rps), hi.max(s.rps))
    });
    (case.samples.len() > 1 && rps > 0.0).then(|| format!("±{:.0} %", 50.0 * (hi - lo) / rps))
}

/// The durable-writes section: how it was measured, and a table with Redis
/// and kv side by side per fsync policy and pipeline depth.
fn durable_section(r: &Report, chart: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Durable writes (SET, append-only log)\n");
    if !r.options.runs(Part::Durable) {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    }
    if r.durable.is_empty() {
        let _ = writeln!(
            s,
            "Not measured: this `kv server` has no `--fsync` (no append-only log).\n"
        );
        return s;
    }
    let _ = writeln!(
        s,
        "`redis-benchmark -h 127.0.0.1 -p PORT -t set -c 50 -P 1|16 -d 64 -r 100000 -n N \
         --csv`, N calibrated per case as above (but at least 1,000), against Redis with \
         `appendonly yes` and `appendfsync POLICY` and `kv server --fsync POLICY`, for each \
         policy a fresh pair of servers on fresh, empty data directories (removed \
         afterwards), run in turn Redis, kv for each pipeline depth in every round (kv \
         first every other round). Both \
         servers reply to a write only once it is in their log (written to the OS); \
         under `always` also synced to disk first, once per batch of writes from all \
         clients; under `everysec` the log is synced once a second in the background; \
         under `no` never (the OS flushes when it likes). Both rewrite (compact) their \
         logs as they grow, with their default thresholds.\n"
    );
    let mut filesystems: Vec<String> = Vec::new();
    for d in &r.durable {
        let fs = match &d.mount {
            Some(m) => format!("`{}` (`findmnt`: `{m}`)", d.filesystem),
            None => format!("`{}`", d.filesystem),
        };
        if !filesystems.contains(&fs) {
            filesystems.push(fs);
        }
    }
    let _ = writeln!(
        s,
        "Filesystem of the data directories (`stat -f -c %T`): {}. What a sync costs \
         depends on the disk under it, and, on a virtual machine, on the host's caching.\n",
        filesystems.join("; ")
    );
    let _ = writeln!(s, "The servers, on free loopback ports:\n");
    for d in &r.durable {
        for command in &d.servers {
            let _ = writeln!(s, "    {command}");
        }
    }
    if let Some(chart) = chart {
        let _ = writeln!(s, "\n![durable writes per second]({chart})");
    }
    let _ = writeln!(s);
    s.push_str(&durable_table(&r.durable));
    let rewrites: Vec<String> = r
        .durable
        .iter()
        .map(|d| {
            let n = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
            format!(
                "`{}` Redis {}, kv {}",
                d.policy,
                n(d.rewrites.0),
                n(d.rewrites.1)
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\n`kv / Redis` is the median of per-round ratios of req/s, as `vs Redis` above; \
         `spread` as above. Log rewrites during the runs (calibration included): {}.\n",
        rewrites.join("; ")
    );
    s
}

/// One row per fsync policy × pipeline depth: Redis and kv side by side.
fn durable_table(durable: &[Durable]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| fsync | Pipeline | Redis req/s | kv req/s | kv / Redis | Redis p50 ms | kv p50 ms \
         | Redis p99 ms | kv p99 ms |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for d in durable {
        for pipeline in PIPELINES {
            let redis = find(&d.cases, Target::Redis, Workload::Set, pipeline);
            let kv = find(&d.cases, Target::KvServer, Workload::Set, pipeline);
            let rps = |c: Option<&Case>| {
                c.map_or("–".into(), |c| match spread(c) {
                    Some(spread) => format!("{} {spread}", thousands(c.rps())),
                    None => thousands(c.rps()),
                })
            };
            let ms = |v: Option<f64>| opt(v, |v| format!("{v:.3}"));
            let _ = writeln!(
                s,
                "| {} | {pipeline} | {} | {} | {} | {} | {} | {} | {} |",
                d.policy,
                rps(redis),
                rps(kv),
                opt(paired(kv, redis, rps_of), |v| format!("{v:.2}×")),
                ms(redis.and_then(Case::p50)),
                ms(kv.and_then(Case::p50)),
                ms(redis.and_then(Case::p99)),
                ms(kv.and_then(Case::p99)),
            );
        }
    }
    s
}

/// SETs with tracking proxies: how they ran, and a table with each server
/// untracked and tracked side by side.
fn tracking_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## SET with tracking proxies\n");
    let Some(t) = &r.tracking else {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    };
    let _ = writeln!(
        s,
        "What client tracking costs writes. `redis-benchmark -h 127.0.0.1 -p PORT -t set -c 50 \
         -P 1|16 -d 64 -r 100000 -n N --csv` straight at the server, N calibrated as above, on \
         four servers started for this part, each with the {keys} keys loaded and two `kv proxy` \
         in front of it that have read every key: for kv server and for Redis, one whose proxies \
         run `--tracking on` (their upstream connection did `HELLO 3` and `CLIENT TRACKING ON`, \
         so the server remembers every key for both, and a SET of a key still remembered sends \
         each of them an `invalidate` push), and one whose proxies run `--tracking off` \
         (nothing is tracked; their caches keep the keys by `--cache-ttl 600s`). The four run \
         back to back for each pipeline depth, in an order that changes each round.\n",
        keys = thousands(KEYSPACE as f64),
    );
    let _ = writeln!(
        s,
        "A key is tracked only until it is invalidated: after the first SET of a key the \
         server forgets it until a proxy reads it again. So before every run (of either \
         kind, for the same history) every proxy reads every key again, which leaves the \
         tracked server remembering {keys} keys, {pairs} key–client pairs (checked each \
         time); and throughout, a background reader per proxy (eight in all) reads every key \
         in turn at {rate} GETs/s in pipelined batches of 50 (the slowest reached {reached}), \
         as the proxies' clients would, which re-reads part of what was invalidated (the \
         untracked proxies answer it from their caches). `redis-benchmark` draws keys at \
         random, so the longer a run, the more of its SETs write a key already invalidated; \
         the second table counts the invalidations really sent.\n",
        keys = thousands(KEYSPACE as f64),
        pairs = thousands((crate::bench::tracking::PROXIES * KEYSPACE) as f64),
        rate = thousands(crate::bench::tracking::READ_RATE as f64),
        reached = thousands(t.read_rate),
    );
    let _ = writeln!(s, "The servers and proxies, on free loopback ports:\n");
    for command in &t.servers {
        let _ = writeln!(s, "    {command}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| Server | Pipeline | untracked req/s | tracked req/s | tracked / untracked \
         | untracked p50 ms | tracked p50 ms | untracked p99 ms | tracked p99 ms |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut costs = String::new();
    let _ = writeln!(
        costs,
        "| Server | Pipeline | invalidations per SET | forwarded reads per SET \
         | server CPU µs/SET untracked | tracked | tracked / untracked \
         | proxies' CPU µs/SET untracked | tracked |"
    );
    let _ = writeln!(costs, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (server, untracked, tracked) in TRACKING_PAIRS {
        for pipeline in PIPELINES {
            let a = find(&t.cases, tracked, Workload::Set, pipeline);
            let b = find(&t.cases, untracked, Workload::Set, pipeline);
            if a.is_none() && b.is_none() {
                continue;
            }
            let ms = |v: Option<f64>| opt(v, |v| format!("{v:.3}"));
            let _ = writeln!(
                s,
                "| {server} | {pipeline} | {} | {} | {} | {} | {} | {} | {} |",
                rps_with_spread(b),
                rps_with_spread(a),
                opt(paired(a, b, rps_of), |v| format!("{v:.2}×")),
                ms(b.and_then(Case::p50)),
                ms(a.and_then(Case::p50)),
                ms(b.and_then(Case::p99)),
                ms(a.and_then(Case::p99)),
            );
            let cost = |target| {
                t.costs
                    .iter()
                    .find(|c| c.target == target && c.pipeline == pipeline)
            };
            let (ca, cb) = (cost(tracked), cost(untracked));
            let server_cpu = |c: Option<&RunCosts>| c.and_then(|c| c.micros_per_set(c.server_cpu));
            let proxies_cpu =
                |c: Option<&RunCosts>| c.and_then(|c| c.micros_per_set(c.proxies_cpu));
            let us = |v: Option<f64>| opt(v, |v| format!("{v:.2}"));
            let _ = writeln!(
                costs,
                "| {server} | {pipeline} | {} | {} | {} | {} | {} | {} | {} |",
                opt(ca.and_then(RunCosts::per_set), |v| format!("{v:.2}")),
                opt(ca.and_then(RunCosts::misses_per_set), |v| format!("{v:.3}")),
                us(server_cpu(cb)),
                us(server_cpu(ca)),
                opt(ratio(server_cpu(ca), server_cpu(cb)), |v| format!(
                    "{v:.2}×"
                )),
                us(proxies_cpu(cb)),
                us(proxies_cpu(ca)),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n`tracked / untracked` is the median of per-round ratios of req/s, as `vs Redis` \
         above; `spread` as above. The target is at least 0.90× for kv server.\n"
    );
    let _ = writeln!(
        s,
        "Where the difference goes, over the same measured runs: invalidations per SET are \
         the keys the two proxies were told to drop over the SETs sent (2.00 would be every \
         SET invalidating both); forwarded reads are the background readers' cache misses \
         at the tracked proxies (each a `MULTI`, `GET`, `PTTL`, `EXEC` at the server), per SET; CPU is user and system time from `/proc/PID/stat` (10 ms \
         ticks) over the runs, per SET sent, for the server and for its two proxies \
         together. On this machine the proxies run on the same two cores as the server and \
         `redis-benchmark`, so what they spend reading invalidations (and forwarding the \
         readers' misses to the server) is taken from those two.\n"
    );
    s.push_str(&costs);
    let _ = writeln!(s);
    s
}

/// The tracking section's rows: a server's name, its untracked and its
/// tracked target.
const TRACKING_PAIRS: [(&str, Target, Target); 2] = [
    (
        "kv server",
        Target::KvServerUntracked,
        Target::KvServerTracked,
    ),
    ("redis", Target::RedisUntracked, Target::RedisTracked),
];

/// `req/s ±spread` of a case, or `–`.
fn rps_with_spread(c: Option<&Case>) -> String {
    c.map_or("–".into(), |c| match spread(c) {
        Some(spread) => format!("{} {spread}", thousands(c.rps())),
        None => thousands(c.rps()),
    })
}

/// The tracking table's bytes per key and per key–client pair.
fn tracking_memory_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Memory of the tracking table\n");
    let Some(measured) = &r.tracking_memory else {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    };
    let _ = writeln!(
        s,
        "A fresh Redis and a fresh kv server, each with the {} keys loaded and two \
         `kv proxy --tracking on` in front of it (each proxy connected by one GET of a key not \
         loaded, so that its connection exists before the first reading). `used_memory` \
         (`INFO memory`: Redis's own count of allocated bytes; kv's is jemalloc's \
         `stats.allocated`, read fresh for `INFO`) is read on one connection kept open \
         throughout: before, after the first proxy read every key (each key enters the table \
         with one client), and after the second did (one more client per key). \
         `tracking_total_keys` and `tracking_total_items` are checked at each step. Bytes are \
         the growth divided by the number of keys read.\n",
        thousands(KEYSPACE as f64)
    );
    let _ = writeln!(
        s,
        "| Server | Keys | Bytes per tracked key (1 client) | vs Redis | Bytes per further client of a key | vs Redis |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    let redis = measured.iter().find(|m| m.server == "redis");
    for m in measured {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {:.1} | {} |",
            m.server,
            thousands(m.keys as f64),
            m.per_key(),
            opt(
                ratio(Some(m.per_key()), redis.map(|r| r.per_key())),
                |v| format!("{v:.2}×")
            ),
            m.per_pair(),
            opt(
                ratio(Some(m.per_pair()), redis.map(|r| r.per_pair())),
                |v| format!("{v:.2}×")
            ),
        );
    }
    let _ = writeln!(
        s,
        "\nThe growth includes whatever else the servers allocated meanwhile (buffers of the \
         proxies' connections for 1,000-GET batches), a few bytes per key at most.\n"
    );
    s
}

/// `PUBLISH` to 1,000 subscribers: how it ran, and a table of both servers.
fn pubsub_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## PUBLISH to 1,000 subscribers\n");
    let Some(p) = &r.pubsub else {
        let _ = writeln!(s, "{NOT_RUN}\n");
        return s;
    };
    let _ = writeln!(
        s,
        "{subs} connections subscribed to one channel on each of a fresh Redis and kv server, \
         and one publisher connection sending `PUBLISH bench:channel <{len} bytes>`: one at a \
         time (pipeline 1) or 16 per batch (a batch written once the previous one's replies \
         are in), M messages per run, calibrated so that a run lasts about {secs:.0} s, the \
         two servers back to back in an order that changes each round. The load tool is \
         `cargo xtask`'s own (`redis-benchmark` cannot subscribe): the subscribers are served \
         by one thread (a single-threaded tokio runtime), each counting the messages it \
         reads; the publisher checks that every reply counts {subs} receivers. \
         `deliveries/s` is M × {subs} over the time from the first `PUBLISH` written to the \
         last message read by the last subscriber; `PUBLISH/s` counts replies; latency runs \
         from a batch's write to the read that completed each reply, as `redis-benchmark` \
         counts it. Server, subscribers' thread and publisher share this machine's two cores, \
         the same for both servers; every subscriber stayed connected and received every \
         message (checked).\n",
        subs = thousands(p.subscribers as f64),
        len = p.message_len,
        secs = r.options.run_seconds(),
    );
    let _ = writeln!(s, "The servers, on free loopback ports:\n");
    for command in &p.servers {
        let _ = writeln!(s, "    {command}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| Server | Pipeline | Messages per run | deliveries/s | spread | vs Redis | PUBLISH/s | p50 ms | p99 ms |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let find = |target, pipeline| {
        p.cases
            .iter()
            .find(|c| c.target == target && c.pipeline == pipeline)
    };
    for pipeline in PIPELINES {
        let redis = find(Target::Redis, pipeline);
        for target in [Target::Redis, Target::KvServer] {
            let Some(c) = find(target, pipeline) else {
                continue;
            };
            let delivered = |x: &PubSubSample| x.delivered_per_s;
            let vs_redis =
                redis.and_then(|r| {
                    median(c.samples.iter().zip(&r.samples).filter_map(|(a, b)| {
                        ratio(Some(a.delivered_per_s), Some(b.delivered_per_s))
                    }))
                });
            let _ = writeln!(
                s,
                "| {} | {pipeline} | {} | {} | {} | {} | {} | {} | {} |",
                label(target, Workload::Set),
                thousands(c.messages as f64),
                opt(c.median(delivered), thousands),
                pubsub_spread(c).unwrap_or_else(|| "–".into()),
                opt(vs_redis, |v| format!("{v:.2}×")),
                opt(c.median(|x| x.published_per_s), thousands),
                opt(c.median(|x| x.p50_ms), |v| format!("{v:.3}")),
                opt(c.median(|x| x.p99_ms), |v| format!("{v:.3}")),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n`vs Redis` is the median of per-round ratios of deliveries/s; `spread` is half the \
         range of the rounds' deliveries/s, relative to the median.\n"
    );
    s
}

/// [`spread`] of a pub/sub case's deliveries per second.
fn pubsub_spread(c: &PubSubCase) -> Option<String> {
    let mid = c.median(|x| x.delivered_per_s)?;
    let (lo, hi) = c.samples.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| {
        (lo.min(x.delivered_per_s), hi.max(x.delivered_per_s))
    });
    (c.samples.len() > 1 && mid > 0.0).then(|| format!("±{:.0} %", 50.0 * (hi - lo) / mid))
}

/// kv proxy and twemproxy in front of one Redis: how they ran, a table
/// with kv, twemproxy and Redis side by side, and what each run cost.
fn proxies_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## kv proxy vs twemproxy\n");
    let p = match &r.proxies {
        None => {
            let _ = writeln!(s, "{NOT_RUN}\n");
            return s;
        }
        Some(ProxyComparison::Missing(why)) => {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return s;
        }
        Some(ProxyComparison::Measured(p)) => p,
    };
    let _ = writeln!(
        s,
        "Measured {date} (load average, 1 min, before / after this part: {before} / {after}). \
         One `redis-server` with persistence off and the {keys} keys loaded, and in front of \
         it, each with one connection to it: `kv proxy (cache off)`, `--cache-ttl 0`, which \
         turns its cache off, so that every request is forwarded; `kv proxy (cache hit)`, \
         which has read every key before the runs and answers GETs from its cache; and \
         twemproxy (`{version}`) with a pool of that one server. \
         `redis-benchmark -h 127.0.0.1 -p PORT -t get|set -c 50 -P 1|16 -d 64 -r 100000 -n N \
         --csv` against each of them and against Redis itself, N calibrated per case so that \
         a run lasts about {secs:.0} s: the same clients, keys and 64-byte values for every \
         peer, the peers of a test back to back in an order that changes each round, on the \
         same two cores as the load generator.\n",
        date = p.date,
        before = opt(p.load.0, |v| format!("{v:.2}")),
        after = opt(p.load.1, |v| format!("{v:.2}")),
        keys = thousands(KEYSPACE as f64),
        version = p.nutcracker,
        secs = r.options.run_seconds(),
    );
    let _ = writeln!(
        s,
        "With its cache off the proxy forwards each GET and SET as it is, one command for \
         Redis as through twemproxy (a caching proxy's miss is `MULTI`, `GET`, `PTTL`, \
         `EXEC`: the value and its time to live from one moment). Both kv proxies run `--tracking off`: with the cache off \
         there is nothing to invalidate, and the caching proxy would otherwise be told of \
         every SET measured through the other peers (they write values of the same length) \
         and miss its next GET of the key. Over the measured runs the caching proxy counted \
         {hits} cache hits and {misses} misses; the cache-off proxy {off_hits} hits.\n",
        hits = thousands(p.cached_cache.hits as f64),
        misses = thousands(p.cached_cache.misses as f64),
        off_hits = thousands(p.uncached_cache.hits as f64),
    );
    let _ = writeln!(
        s,
        "twemproxy's configuration:\n\n```yaml\n{}```\n",
        p.config
    );
    let _ = writeln!(s, "The peers, on free loopback ports:\n");
    for command in &p.servers {
        let _ = writeln!(s, "    {command}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| Command | Pipeline | kv proxy | kv req/s | twemproxy req/s | kv / twemproxy \
         | redis req/s | kv p50 ms | twemproxy p50 ms | redis p50 ms | kv p99 ms \
         | twemproxy p99 ms | redis p99 ms |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ms = |v: Option<f64>| opt(v, |v| format!("{v:.3}"));
    for workload in [Workload::Get, Workload::Set] {
        for pipeline in PIPELINES {
            let twemproxy = find(&p.cases, Target::Twemproxy, workload, pipeline);
            let redis = find(&p.cases, Target::Redis, workload, pipeline);
            for (kv, mode) in [
                (Target::KvProxyUncached, "cache off"),
                (Target::KvProxyCached, "cache hit"),
            ] {
                let Some(case) = find(&p.cases, kv, workload, pipeline) else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    "| {} | {pipeline} | {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    workload.test(),
                    rps_with_spread(Some(case)),
                    rps_with_spread(twemproxy),
                    opt(paired(Some(case), twemproxy, rps_of), |v| format!(
                        "{v:.2}×"
                    )),
                    rps_with_spread(redis),
                    ms(case.p50()),
                    ms(twemproxy.and_then(Case::p50)),
                    ms(redis.and_then(Case::p50)),
                    ms(case.p99()),
                    ms(twemproxy.and_then(Case::p99)),
                    ms(redis.and_then(Case::p99)),
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n`kv / twemproxy` is the median of per-round ratios of req/s, as `vs Redis` above; \
         `spread` as above. The targets: at least 1.00× with the cache off, 1.50× for cache \
         hits.\n"
    );
    let _ = writeln!(
        s,
        "Where the time goes, over the same measured runs: CPU is user and system time from \
         `/proc/PID/stat` (10 ms ticks) of the proxy and of Redis, per request sent; Redis's \
         commands are `total_commands_processed` from `INFO stats`, per request sent.\n"
    );
    let _ = writeln!(
        s,
        "| Target | Command | Pipeline | proxy CPU µs/request | Redis CPU µs/request \
         | Redis commands per request |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    let us = |v: Option<f64>| opt(v, |v| format!("{v:.2}"));
    for cost in &p.costs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            label(cost.target, cost.workload),
            cost.workload.test(),
            cost.pipeline,
            us(cost.proxy_cpu.and_then(|c| cost.micros_per_request(c))),
            us(cost.micros_per_request(cost.redis_cpu)),
            opt(ProxyCost::redis_commands_per_request(cost), |v| format!(
                "{v:.2}"
            )),
        );
    }
    let _ = writeln!(s);
    s
}

/// kv proxy in front of a Redis Cluster: how it ran, a table with the
/// direct cluster client and the two proxies side by side, and what each
/// run cost.
fn cluster_section(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## kv proxy in front of a Redis Cluster\n");
    let c = match &r.cluster {
        None => {
            let _ = writeln!(s, "{NOT_RUN}\n");
            return s;
        }
        Some(ClusterComparison::Missing(why)) => {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return s;
        }
        Some(ClusterComparison::Measured(c)) => c,
    };
    let _ = writeln!(
        s,
        "Measured {date} (load average, 1 min, before / after this part: {before} / {after}). \
         A local Redis Cluster of {masters} masters and no replicas (`kv_tests::RedisCluster`, \
         the end-to-end tests' fixture: a `redis-server --cluster-enabled yes --cluster-port \
         BUS` per node on free loopback ports, persistence off, joined by `redis-cli --cluster \
         create`), with `cluster-node-timeout` raised to {timeout} s for this part (with no \
         replica to take over, a master flagged as failed would take the cluster down, and a \
         stall of a busy machine is not a failure), reached three ways:\n",
        date = c.date,
        before = opt(c.load.0, |v| format!("{v:.2}")),
        after = opt(c.load.1, |v| format!("{v:.2}")),
        masters = c.masters,
        timeout = c.node_timeout_ms / 1000,
    );
    let _ = writeln!(
        s,
        "- `direct`: `redis-benchmark --cluster --threads 1 -h 127.0.0.1 -p PORT` with PORT a \
         master's, the direct cluster client: it reads the slot map and sends each request \
         straight to its slot's master (`--threads 1`: one event loop, as against every other \
         target; cluster mode would otherwise start a thread per master);\n\
         - `cache off`: `redis-benchmark -h 127.0.0.1 -p PORT` against `kv proxy \
         --upstream-cluster` with `--cache-ttl 0`, which turns its cache off: every request \
         is routed by the proxy to its slot's master over its cluster pipe and answered from \
         there;\n\
         - `cache hit` (GET only): the same against a second `kv proxy --upstream-cluster` \
         that has read every key before the runs and answers GETs from its cache.\n"
    );
    let prefixes: Vec<String> = c
        .direct_keys
        .iter()
        .map(|(_, prefix)| format!("`{prefix}`"))
        .collect();
    let _ = writeln!(
        s,
        "`-t get|set -c 50 -P 1|16 -d 64 -r 100000 -n N --csv` for all three, N calibrated per \
         case so that a run lasts about {secs:.0} s: the same clients, random numbers and \
         64-byte values for every peer, the peers of a test back to back in an order that \
         changes each round, on the same two cores as the load generator and the three \
         masters. The key names differ, as `redis-benchmark` makes them: in cluster mode each \
         client puts the hash tag of the first slot of its master in its keys, so the direct \
         client's keys are the {keys} numbers under one prefix per master, all in one slot of \
         it ({prefixes} and 12 digits, 21 bytes), loaded into each master; through the \
         proxies they are `key:` and 12 digits (16 bytes) across all 16,384 slots, loaded \
         through the cache-off proxy. \
         Either way each master serves about a third of the requests, and every GET finds a \
         64-byte value: the masters held {held} keys before the runs and after them \
         (checked). Both proxies run `--tracking off`, as in the section above: the caching \
         proxy would otherwise be told of every SET measured through the other one and miss \
         its next GET of the key. Over the measured runs the caching proxy counted {hits} \
         cache hits and {misses} misses; the cache-off proxy {off_hits} hits.\n",
        secs = r.options.run_seconds(),
        keys = thousands(KEYSPACE as f64),
        prefixes = prefixes.join(", "),
        held = thousands(c.keys as f64),
        hits = thousands(c.cached_cache.hits as f64),
        misses = thousands(c.cached_cache.misses as f64),
        off_hits = thousands(c.uncached_cache.hits as f64),
    );
    let _ = writeln!(s, "The proxies, on free loopback ports:\n");
    for command in &c.servers {
        let _ = writeln!(s, "    {command}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| Command | Pipeline | direct req/s | cache off req/s | cache off / direct \
         | cache hit req/s | cache hit / direct | direct p50 ms | cache off p50 ms \
         | cache hit p50 ms | direct p99 ms | cache off p99 ms | cache hit p99 ms |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ms = |v: Option<f64>| opt(v, |v| format!("{v:.3}"));
    let times = |v: Option<f64>| opt(v, |v| format!("{v:.2}×"));
    for workload in [Workload::Get, Workload::Set] {
        for pipeline in PIPELINES {
            let direct = find(&c.cases, Target::ClusterDirect, workload, pipeline);
            let off = find(&c.cases, Target::ClusterProxyUncached, workload, pipeline);
            let hit = find(&c.cases, Target::ClusterProxyCached, workload, pipeline);
            if direct.is_none() && off.is_none() && hit.is_none() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {pipeline} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                workload.test(),
                rps_with_spread(direct),
                rps_with_spread(off),
                times(paired(off, direct, rps_of)),
                rps_with_spread(hit),
                times(paired(hit, direct, rps_of)),
                ms(direct.and_then(Case::p50)),
                ms(off.and_then(Case::p50)),
                ms(hit.and_then(Case::p50)),
                ms(direct.and_then(Case::p99)),
                ms(off.and_then(Case::p99)),
                ms(hit.and_then(Case::p99)),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n`/ direct` is the median of per-round ratios of req/s, as `vs Redis` above; \
         `spread` as above. There is no target: the figures are reported side by side.\n"
    );
    let _ = writeln!(
        s,
        "Where the time goes, over the same measured runs: CPU is user and system time from \
         `/proc/PID/stat` (10 ms ticks) of the proxy and of the {masters} masters together, \
         per request sent; the masters' commands are their `total_commands_processed` from \
         `INFO stats`, added up, per request sent (the proxies' reads of the slot map, one \
         every 10 s each, are among them).\n",
        masters = c.masters,
    );
    let _ = writeln!(
        s,
        "| Target | Command | Pipeline | proxy CPU µs/request | masters' CPU µs/request \
         | masters' commands per request |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    let us = |v: Option<f64>| opt(v, |v| format!("{v:.2}"));
    for cost in &c.costs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            label(cost.target, cost.workload),
            cost.workload.test(),
            cost.pipeline,
            us(cost.proxy_cpu.and_then(|c| cost.micros_per_request(c))),
            us(cost.micros_per_request(cost.redis_cpu)),
            opt(ProxyCost::redis_commands_per_request(cost), |v| format!(
                "{v:.2}"
            )),
        );
    }
    let _ = writeln!(s);
    s
}
