//! `GET /metrics`: the server's and the proxy's state in the Prometheus
//! text format, read from the core's counters at each scrape.
//!
//! The core keeps the counts (it must, for `INFO`), so nothing here is on
//! the request path: a scrape takes a snapshot of them into a [`Scrape`]
//! and `prometheus-client` writes it out, which keeps the format's rules
//! (names, escaping, `_total`, histogram buckets) out of this code. The
//! same numbers appear in `INFO` under Redis's names; the metric names are
//! Prometheus's conventions.

use crate::http;
use kv_core::cache::CacheStats;
use kv_core::session::HostFacts;
use kv_core::stats::{CommandStat, CommandStats, Histogram, LATENCY_BOUNDS_US};
use kv_core::{Proxy, ProxyStats, Server, UpstreamState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Scrapes served at once on a `--metrics` listener; more wait in the
/// listen queue (a scraper polls every few seconds, so this is generous).
const MAX_SCRAPERS: usize = 16;

/// One sample's value.
#[derive(Debug)]
enum Value {
    Counter(u64),
    /// A counter of seconds.
    Seconds(f64),
    Gauge(i64),
    Histogram(Histogram),
}

/// A family with a sample per command: name, help, type, and the value.
type PerCommand = (
    &'static str,
    &'static str,
    MetricType,
    fn(&CommandStat) -> Value,
);

/// One metric family: its samples, each with its labels.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

/// A snapshot of what a node reports, ready to be written out.
#[derive(Debug, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn family(&mut self, name: &'static str, help: &'static str, kind: MetricType) -> &mut Family {
        self.families.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }

    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.family(name, help, MetricType::Counter)
            .samples
            .push((Vec::new(), Value::Counter(v)));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, v: i64) {
        self.family(name, help, MetricType::Gauge)
            .samples
            .push((Vec::new(), Value::Gauge(v)));
    }

    /// What both nodes report: the process, connections and commands.
    fn common(&mut self, role: &str, host: &HostFacts, commands: &CommandStats) {
        self.family("kv_build", "The kv version and its role", MetricType::Info)
            .samples
            .push((
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("redis_version", kv_core::session::REDIS_VERSION.to_owned()),
                    ("role", role.to_owned()),
                ],
                Value::Gauge(1),
            ));
        self.gauge(
            "kv_uptime_seconds",
            "Seconds since the process started",
            to_i64(host.uptime_secs),
        );
        self.gauge(
            "kv_memory_rss_bytes",
            "Resident set size of the process",
            to_i64(host.rss_bytes),
        );
        self.family(
            "kv_cpu_seconds",
            "CPU time spent, by mode",
            MetricType::Counter,
        )
        .samples
        .extend([
            (
                vec![("mode", "user".to_owned())],
                Value::Seconds(host.used_cpu_user),
            ),
            (
                vec![("mode", "system".to_owned())],
                Value::Seconds(host.used_cpu_sys),
            ),
        ]);
        let latency_help = match role {
            "proxy" => "Time from a request's arrival at the proxy until its reply could be sent, by command",
            _ => "Time the server took to run a command, by command",
        };
        let per_command: [PerCommand; 4] = [
            (
                "kv_commands",
                "Commands run, by command (refusals not included)",
                MetricType::Counter,
                |s| Value::Counter(s.calls),
            ),
            (
                "kv_command_failures",
                "Commands that answered an error, by command",
                MetricType::Counter,
                |s| Value::Counter(s.failed),
            ),
            (
                "kv_command_rejections",
                "Commands refused before they ran (arity, authentication, transactions), by command",
                MetricType::Counter,
                |s| Value::Counter(s.rejected),
            ),
            (
                "kv_command_duration_seconds",
                latency_help,
                MetricType::Histogram,
                |s| Value::Histogram(s.latency.clone()),
            ),
        ];
        let stats: Vec<_> = commands.iter().collect();
        for (name, help, kind, value) in per_command {
            self.family(name, help, kind).samples.extend(
                stats
                    .iter()
                    .map(|(command, s)| (vec![("command", (*command).to_owned())], value(s))),
            );
        }
    }

    /// The connection gauges and counters: open now, and accepted,
    /// rejected, timed out and cut off at the output limit since start.
    fn connections(
        &mut self,
        current: u64,
        [total, rejected, timed_out, output_limited]: [u64; 4],
    ) {
        self.gauge(
            "kv_connections",
            "Client connections open now",
            to_i64(current),
        );
        self.counter(
            "kv_connections_accepted",
            "Client connections accepted since start",
            total,
        );
        self.counter(
            "kv_connections_rejected",
            "Client connections refused at the client cap",
            rejected,
        );
        self.counter(
            "kv_connections_timed_out",
            "Client connections closed for idling or stalling",
            timed_out,
        );
        self.counter(
            "kv_connections_output_limited",
            "Client connections cut off for holding more output than their limit",
            output_limited,
        );
    }

    /// The server's metrics.
    pub fn of_server(server: &Server) -> Scrape {
        let mut m = Scrape::default();
        let s = server.stats();
        m.common("server", server.host(), server.command_stats());
        m.connections(
            s.connections_current,
            [
                s.connections_total,
                s.connections_rejected,
                s.connections_timed_out,
                s.output_limit_disconnections,
            ],
        );
        m.counter("kv_error_replies", "Error replies sent", s.errors);
        let store = server.store();
        m.gauge("kv_keys", "Keys in the store", to_i64(store.len()));
        m.gauge(
            "kv_keys_with_expiry",
            "Keys with a deadline",
            to_i64(store.volatile()),
        );
        m.gauge(
            "kv_dataset_bytes",
            "Bytes of keys and values in the store",
            to_i64(store.data_bytes()),
        );
        m.counter(
            "kv_expired_keys",
            "Keys removed because their deadline passed",
            server.expired_keys(),
        );
        m.counter(
            "kv_evicted_keys",
            "Keys removed to keep memory under --maxmemory",
            server.evicted_keys(),
        );
        m.gauge(
            "kv_memory_used_bytes",
            "Used memory as --maxmemory counts it (the allocator's count of allocated bytes)",
            to_i64(server.used_memory()),
        );
        let p = server.push_stats();
        m.gauge(
            "kv_pubsub_channels",
            "Channels with subscribers",
            to_i64(p.channels),
        );
        m.gauge(
            "kv_pubsub_patterns",
            "Patterns with subscribers",
            to_i64(p.patterns),
        );
        m.gauge(
            "kv_pubsub_subscribers",
            "Connections with subscriptions",
            to_i64(p.subscribers),
        );
        m.counter(
            "kv_pubsub_messages_delivered",
            "Published messages delivered, one per recipient",
            p.messages_delivered,
        );
        m.gauge(
            "kv_tracking_clients",
            "Connections with CLIENT TRACKING on",
            to_i64(p.tracking_clients),
        );
        m.gauge(
            "kv_tracking_keys",
            "Keys in the tracking table",
            to_i64(p.tracked_keys),
        );
        m.counter(
            "kv_tracking_invalidations_sent",
            "Invalidation messages sent to tracking clients",
            p.invalidations_sent,
        );
        m.gauge(
            "kv_mail_pending_bytes",
            "Bytes of messages and invalidations waiting for their connections",
            to_i64(p.mail_bytes),
        );
        m.gauge(
            "kv_maxmemory_bytes",
            "The memory bound (0: none)",
            to_i64(server.maxmemory().bytes),
        );
        let journal = server.journal();
        m.gauge(
            "kv_persistence_enabled",
            "1 if writes go to the append-only log",
            i64::from(u8::from(journal.is_some())),
        );
        if let Some(j) = journal {
            let st = j.status();
            m.gauge(
                "kv_log_size_bytes",
                "Bytes in the append-only log",
                to_i64(st.size),
            );
            m.gauge(
                "kv_log_healthy",
                "1 if the log's last write and fsync succeeded",
                i64::from(u8::from(
                    st.last_write_error.is_none() && st.last_fsync_error.is_none(),
                )),
            );
            m.gauge(
                "kv_log_rewrite_in_progress",
                "1 while the log is being rewritten",
                i64::from(u8::from(st.rewrite_in_progress)),
            );
            m.counter("kv_log_rewrites", "Completed log rewrites", st.rewrites);
        }
        m
    }

    /// The proxy's metrics.
    pub fn of_proxy(proxy: &Proxy) -> Scrape {
        let mut m = Scrape::default();
        let s: &ProxyStats = proxy.stats();
        m.common("proxy", proxy.host(), proxy.command_stats());
        m.connections(
            proxy.client_count() as u64,
            [
                s.connections_total,
                s.connections_rejected,
                s.connections_timed_out,
                s.output_limit_disconnections,
            ],
        );
        m.counter("kv_error_replies", "Error replies sent", s.errors);
        m.counter("kv_requests", "Requests received from clients", s.requests);
        let c: &CacheStats = proxy.cache_stats();
        m.counter("kv_cache_hits", "Reads answered from the cache", c.hits);
        m.counter(
            "kv_cache_misses",
            "Reads the cache could not answer",
            c.misses,
        );
        m.counter(
            "kv_cache_expirations",
            "Cache entries dropped because their TTL passed",
            c.expirations,
        );
        m.counter(
            "kv_cache_evictions",
            "Cache entries dropped to stay within the cache's bounds",
            c.evictions,
        );
        m.counter(
            "kv_cache_invalidations",
            "Cache entries dropped because a write changed their key",
            c.invalidations,
        );
        m.gauge(
            "kv_cache_entries",
            "Entries in the cache",
            to_i64(proxy.cache_len()),
        );
        m.counter(
            "kv_tracking_invalidations_received",
            "Invalidation pushes received from the upstream server",
            s.tracking_invalidations_received,
        );
        m.counter(
            "kv_tracking_keys_invalidated",
            "Cache entries dropped by the upstream's invalidations",
            s.tracking_keys_invalidated,
        );
        m.counter(
            "kv_tracking_flushes",
            "Times the whole cache was dropped (null invalidations, lost tracked connections)",
            s.tracking_flushes,
        );
        m.gauge(
            "kv_tracking_fallback",
            "1 while the upstream refuses tracking and the cache relies on its TTL alone",
            i64::from(u8::from(proxy.tracking_refused().is_some())),
        );
        m.gauge(
            "kv_cache_bytes",
            "Bytes charged to the cache's entries",
            to_i64(proxy.cache_bytes()),
        );
        let state = m.family(
            "kv_upstream_state",
            "1 for the upstream connection's current state",
            MetricType::Gauge,
        );
        for st in [
            UpstreamState::Up,
            UpstreamState::Connecting,
            UpstreamState::Down,
        ] {
            state.samples.push((
                vec![("state", st.name().to_owned())],
                Value::Gauge(i64::from(u8::from(proxy.upstream_state() == st))),
            ));
        }
        m.counter(
            "kv_upstream_requests",
            "Requests sent to the upstream server",
            s.upstream_requests,
        );
        m.gauge(
            "kv_upstream_in_flight",
            "Upstream requests awaiting their reply",
            to_i64(proxy.upstream_in_flight()),
        );
        m.counter(
            "kv_upstream_timeouts",
            "Upstream requests that timed out",
            s.upstream_timeouts,
        );
        m.counter(
            "kv_upstream_resets",
            "Times the upstream connection was lost or reset",
            s.upstream_resets,
        );
        m.counter(
            "kv_coalesced_reads",
            "Reads that joined an identical upstream read in flight",
            s.coalesced,
        );
        m
    }

    /// The snapshot in the Prometheus text format.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail, and the collector never fails.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

fn encode_value(value: &Value, encoder: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match value {
        Value::Counter(v) => encoder.encode_counter(v, None::<&Exemplar<NoLabelSet, u64>>),
        Value::Seconds(v) => encoder.encode_counter(v, None::<&Exemplar<NoLabelSet, f64>>),
        Value::Gauge(v) => encoder.encode_gauge(v),
        Value::Histogram(h) => {
            // Per bucket, in seconds: the encoder makes them cumulative.
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::INFINITY])
                .enumerate()
                .map(|(i, le)| (le, h.buckets.get(i).copied().unwrap_or(0)))
                .collect();
            let count = h.count();
            encoder.encode_histogram::<NoLabelSet>(h.sum_nanos as f64 / 1e9, count, &buckets, None)
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.samples {
                if f.kind == MetricType::Info {
                    metric.encode_info(labels)?;
                } else if labels.is_empty() {
                    encode_value(value, &mut metric)?;
                } else {
                    encode_value(value, &mut metric.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Answers `GET /metrics` with `render()`'s text; anything else gets 404.
pub(crate) async fn answer(
    stream: &mut TcpStream,
    path: &str,
    with_body: bool,
    render: impl FnOnce() -> String,
) {
    if path == "/metrics" {
        let body = render();
        http::respond(stream, "200 OK", CONTENT_TYPE, body.as_bytes(), with_body).await;
    } else {
        http::respond(
            stream,
            "404 Not Found",
            "text/plain",
            b"not found: try /metrics\n",
            with_body,
        )
        .await;
    }
}

/// Serves `/metrics` alone on `listener` (`--metrics ADDR`, or the
/// server's `--http`) until `shutdown`, with `render` taking the snapshot.
pub(crate) async fn serve(
    listener: TcpListener,
    render: Rc<dyn Fn() -> String>,
    mut shutdown: crate::runtime::shutdown::Shutdown,
) {
    let busy = Rc::new(Cell::new(0usize));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.requested() => return,
            a = listener.accept(), if busy.get() < MAX_SCRAPERS => a,
        };
        let (mut stream, peer): (TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        busy.set(busy.get() + 1);
        let (busy, render) = (busy.clone(), render.clone());
        tokio::task::spawn_local(async move {
            match http::read_get(&mut stream).await {
                Some((head, _)) => {
                    let path = head.path.split('?').next().unwrap_or("/");
                    answer(&mut stream, path, head.method == "GET", || render()).await;
                }
                None => debug!(%peer, "metrics client answered or gone"),
            }
            busy.set(busy.get() - 1);
        });
    }
}

/// A count as a gauge's value (counts never come near `i64::MAX`).
fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::{Limits, ServerConfig, ServerConnection};

    #[test]
    fn a_server_scrape_is_prometheus_text_with_every_command_it_ran() {
        let mut server = Server::new(ServerConfig::default());
        let mut conn = ServerConnection::new(Limits::default());
        conn.handle_input(&mut server, b"SET k v\r\nGET k\r\nGET k\r\nINCR k\r\n");
        let text = Scrape::of_server(&server).render();
        for line in [
            "# TYPE kv_keys gauge\nkv_keys 1\n",
            "kv_commands_total{command=\"get\"} 2\n",
            "kv_command_failures_total{command=\"incr\"} 1\n",
            "kv_command_duration_seconds_count{command=\"set\"} 1\n",
            "kv_command_duration_seconds_bucket{command=\"get\",le=\"+Inf\"} 2\n",
            "kv_persistence_enabled 0\n",
            "# TYPE kv_evicted_keys_total counter\nkv_evicted_keys_total 0\n",
            "kv_maxmemory_bytes 0\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        assert!(text.contains("kv_build_info{version=\""), "{text}");
    }
}
