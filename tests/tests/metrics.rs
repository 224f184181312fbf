//! `GET /metrics` as Prometheus scrapes it: scraped again and again while
//! `redis-benchmark` loads the proxy, every scrape parsed as the Prometheus
//! text format (every line a comment or a sample of a declared metric), its
//! counters never going back, and, once the load is over, its figures the
//! same as `INFO`'s at the proxy and at the server.

use kv_tests::{free_port, http_get, info_field, require_tool, run_tool, start_stack, Conn};
use prometheus_parse::{LineInfo, Scrape, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Fetches and checks one scrape: 200, the Prometheus content type, and
/// text a Prometheus parser reads without skipping a line.
fn scrape(addr: SocketAddr) -> Scrape {
    let response = http_get(addr, "/metrics");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.body_text();
    let mut typed = Vec::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Type { metric_name, .. } => typed.push(metric_name),
            LineInfo::Doc { .. } | LineInfo::Empty => {}
            LineInfo::Sample { metric_name, .. } => assert!(
                typed.iter().any(|t| {
                    let base = t.strip_suffix("_bucket").unwrap_or(t);
                    metric_name == t || metric_name.starts_with(base)
                }),
                "sample {metric_name} before its TYPE line: {line:?}"
            ),
            LineInfo::Ignored => panic!("not Prometheus text: {line:?}\n{text}"),
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse /metrics")
}

/// The value of an unlabelled counter or gauge, or of the sample whose
/// `command` label is `command`.
fn value(s: &Scrape, metric: &str, command: Option<&str>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && x.labels.get("command") == command)
        .find_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {metric} (command {command:?}) in the scrape"))
}

/// Every counter's value, by metric and labels, to compare two scrapes.
fn counters(s: &Scrape) -> HashMap<String, f64> {
    s.samples
        .iter()
        .filter_map(|x| match x.value {
            Value::Counter(v) => Some((format!("{}{:?}", x.metric, x.labels), v)),
            _ => None,
        })
        .collect()
}

fn info(addr: SocketAddr) -> String {
    let mut conn = Conn::connect(addr);
    conn.cmd("INFO everything")
}

fn cmdstat(info: &str, command: &str) -> u64 {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        .unwrap_or_else(|| panic!("no cmdstat_{command} in INFO:\n{info}"));
    line.split(',')
        .find_map(|f| f.strip_prefix("calls="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no calls= in {line}"))
}

#[test]
fn metrics_parse_during_a_benchmark_and_agree_with_info() {
    let Some(bench) = require_tool("redis-benchmark") else {
        return;
    };
    let server_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (server, proxy) = start_stack(
        &["--in-memory", "--metrics", &server_metrics.to_string()],
        &["--http", "127.0.0.1:0"],
    );
    let console = proxy.console_addr();
    let port = proxy.proxy_addr().port().to_string();
    let load = std::thread::spawn(move || {
        run_tool(
            &bench,
            [
                "-p", &port, "-t", "set,get", "-n", "200000", "-r", "1000", "-P", "16", "-c", "8",
                "-q",
            ],
            Duration::from_secs(120),
        )
    });
    let mut scrapes = 0;
    let mut last = counters(&scrape(console));
    while !load.is_finished() {
        let now = counters(&scrape(console));
        for (name, v) in &now {
            let before = last.get(name).copied().unwrap_or(0.0);
            assert!(*v >= before, "{name} went back from {before} to {v}");
        }
        last = now;
        scrapes += 1;
        // One scrape at a time, as a scraper polls; no sleep needed: each
        // round trip paces the next.
    }
    let out = load.join().expect("the benchmark thread");
    assert_eq!(out.code(), Some(0), "redis-benchmark failed: {out:?}");
    println!("{scrapes} scrapes of the proxy's /metrics during the benchmark, each parsed");

    // Nothing runs now: the metrics first, then INFO (which counts itself,
    // so only what INFO does not change is compared).
    let p = scrape(console);
    let pinfo = info(proxy.proxy_addr());
    for (metric, field) in [
        ("kv_cache_hits_total", "cache_hits"),
        ("kv_cache_misses_total", "cache_misses"),
        ("kv_upstream_requests_total", "upstream_requests"),
        ("kv_cache_entries", "cache_entries"),
    ] {
        let m = value(&p, metric, None);
        assert_eq!(
            Some(m as u64),
            info_field(&pinfo, field),
            "{metric} against INFO {field}"
        );
    }
    for command in ["get", "set"] {
        let m = value(&p, "kv_commands_total", Some(command)) as u64;
        assert_eq!(m, cmdstat(&pinfo, command), "proxy's {command} calls");
        assert!(m >= 200_000, "the benchmark's {command}s: {m}");
    }
    let hits = value(&p, "kv_cache_hits_total", None);
    assert!(hits > 0.0, "GETs of 1,000 keys hit the cache");
    println!(
        "proxy: {} GETs, {hits} hits, {} upstream requests; /metrics and INFO agree",
        value(&p, "kv_commands_total", Some("get")),
        value(&p, "kv_upstream_requests_total", None)
    );

    let s = scrape(server_metrics);
    let sinfo = info(server.server_addr());
    assert_eq!(
        value(&s, "kv_commands_total", Some("set")) as u64,
        cmdstat(&sinfo, "set"),
        "server's set calls"
    );
    assert_eq!(
        Some(value(&s, "kv_keys", None) as u64),
        sinfo
            .lines()
            .find_map(|l| l.strip_prefix("db0:keys="))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.parse().ok()),
        "server's keys against INFO keyspace"
    );
    let histogram_count = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "kv_command_duration_seconds" && x.labels.get("command") == Some("set")
        })
        .map(|x| match &x.value {
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            other => panic!("not a histogram: {other:?}"),
        })
        .expect("the server's SET latency histogram");
    assert_eq!(
        histogram_count as u64,
        cmdstat(&sinfo, "set"),
        "every SET timed once"
    );
}
