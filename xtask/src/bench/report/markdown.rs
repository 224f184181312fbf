//! The report's text: the body shared by `report.md` and `BENCHMARKS.md`,
//! and its tables.

use std::fmt::Write as _;

use super::checks::checks;
use super::{find, label, paired, ratio, rps_of, thousands, CodecFigure, Durable, Report};
use crate::bench::{Case, Target, Workload, PIPELINES, TARGETS};

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
         (Redis, kv server, kv proxy and null back to back for each test, in an \
         order that changes each round: over four rounds each target runs once \
         in each place and once right after each other target); the tables show \
         medians.\n",
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

    let _ = writeln!(s, "## Throughput and latency\n");
    let _ = writeln!(
        s,
        "`redis-benchmark -h 127.0.0.1 -p PORT -t get|set -c 50 -P 1|16 -d 64 -r 100000 \
         -n N --csv`, N calibrated per case so that a run lasts about {:.0} s. Every GET \
         finds a 64-byte value: the 100,000 keys are loaded first (into kv through the \
         proxy, which also caches them).\n",
        o.run_seconds()
    );
    let _ = writeln!(
        s,
        "The servers, on free loopback ports, persistence off on both sides:\n"
    );
    for command in &r.servers {
        let _ = writeln!(s, "    {command}");
    }
    let _ = writeln!(s, "\n![requests per second]({chart})\n");
    s.push_str(&throughput_table(&r.cases));
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
    let c = r.proxy_cache;
    let _ = writeln!(
        s,
        "\nProxy cache over the measured GETs: {} hits, {} misses ({:.2} % hits). \
         `kv proxy (forwarded)` SETs go to `kv server` and are written through to the cache.\n",
        c.hits,
        c.misses,
        100.0 * c.hits as f64 / (c.hits + c.misses).max(1) as f64
    );

    let m = &r.memory;
    let _ = writeln!(s, "## Memory\n");
    let _ = writeln!(
        s,
        "{} keys of {} bytes with {}-byte values, loaded into fresh servers; bytes per key \
         are the growth over the empty server divided by the number of keys.\n",
        thousands(m.keys as f64),
        m.key_len,
        m.value_len
    );
    let _ = writeln!(s, "| Server | Measure | Bytes/key | vs Redis RSS |");
    let _ = writeln!(s, "|---|---|---:|---:|");
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
            "| {server} | {measure} | {per_key:.1} | {} |",
            opt(ratio(Some(per_key), Some(redis_rss)), |v| format!(
                "{v:.2}×"
            ))
        );
    }
    let _ = writeln!(
        s,
        "\nThe two measures differ: `used_memory` is what Redis's allocator handed out \
         (payloads plus Redis's own per-key structures and allocator size-class rounding), \
         while RSS is what the kernel has mapped for the process (the same plus allocator \
         free lists and fragmentation, and pages of whatever else the process touched). kv \
         has no allocator counter to ask, so it is measured by RSS; the Redis RSS line is \
         the apples-to-apples comparison, and the target below uses it.\n"
    );

    s.push_str(&durable_section(r, durable_chart));

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
    let mut codec: Vec<&CodecFigure> = r.codec.iter().collect();
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
    let _ = writeln!(s, "\nReproduce with `{}`.", o.command_line);
    s
}

/// The main table: one row per target × command × pipeline depth.
fn throughput_table(cases: &[Case]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| Target | Command | Pipeline | req/s | spread | p50 ms | p99 ms | vs Redis | of null |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for workload in [Workload::Get, Workload::Set] {
        for pipeline in PIPELINES {
            let redis = find(cases, Target::Redis, workload, pipeline);
            let null = find(cases, Target::Null, workload, pipeline);
            for target in TARGETS {
                let Some(case) = find(cases, target, workload, pipeline) else {
                    continue;
                };
                let rps = case.rps();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    label(target, workload),
                    workload.test(),
                    pipeline,
                    thousands(rps),
                    spread(case).unwrap_or_else(|| "–".into()),
                    opt(case.p50(), |v| format!("{v:.3}")),
                    opt(case.p99(), |v| format!("{v:.3}")),
                    opt(paired(Some(case), redis, rps_of), |v| format!("{v:.2}×")),
                    opt(paired(Some(case), null, rps_of), |v| format!("{v:.2}")),
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
