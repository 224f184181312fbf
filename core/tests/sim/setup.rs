//! What one simulation run is made of: the parameters a seed is replayed
//! with, and the world those parameters and the seed describe.

use super::rng::Rng;
use kv_core::{CacheConfig, ConnConfig, ProxyConfig};
use std::fmt::Write as _;
use std::time::Duration;

/// Fault kinds, as bits of [`Params::faults`]. Shrinking turns them off one
/// at a time to find which ones a failure needs.
pub const FAULTS: &[(u32, &str)] = &[
    (CLIENT_DROP, "client-drop"),
    (UPSTREAM_DROP, "upstream-drop"),
    (PROXY_RESTART, "proxy-restart"),
    (SERVER_RESTART, "server-restart"),
    (CLOCK_JUMP, "clock-jump"),
    (GHOST, "ghost"),
    (LATENCY_SPIKE, "latency-spike"),
    (SLOW_READER, "slow-reader"),
    (CONGESTION, "congestion"),
];
/// Client connections (to a proxy or to the server) drop.
pub const CLIENT_DROP: u32 = 1;
/// Proxy-to-server connections drop.
pub const UPSTREAM_DROP: u32 = 2;
/// A proxy restarts with an empty cache; its clients' connections drop.
pub const PROXY_RESTART: u32 = 4;
/// The server restarts: every connection to it drops.
pub const SERVER_RESTART: u32 = 8;
/// The clock jumps past TTLs and timeouts, sometimes with late wake-ups.
pub const CLOCK_JUMP: u32 = 16;
/// Bytes written on a connection that then drops may still be read by the
/// peer, even after the sender reconnected.
pub const GHOST: u32 = 32;
/// Latency rises above the request timeouts for a while.
pub const LATENCY_SPIKE: u32 = 64;
/// A client stops reading its replies for a while (the connection
/// policies' stalled-output cut-off is for it).
pub const SLOW_READER: u32 = 128;
/// One direction of one connection delivers nothing for a while (a
/// congested path), while every other goes on: what one connection carries
/// is delayed against the others, never reordered within it.
pub const CONGESTION: u32 = 256;
pub const ALL_FAULTS: u32 = 511;

/// Bugs that can be planted to show that the checker catches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The network swaps two replies queued for a message client.
    ReorderReplies,
    /// The driver forgets `Proxy::handle_upstream_lost` when the upstream
    /// connection dies and just reconnects: a contract violation of the
    /// real `Proxy`'s API, after which replies on the new connection are
    /// paired with requests sent on the old one.
    SkipUpstreamLost,
    /// A server restart restores the store from a snapshot taken at the
    /// previous restart, losing acknowledged writes.
    StaleRestart,
    /// One proxy (the first client's that uses one) does not act on
    /// invalidations: the driver strips the `invalidate` pushes from the
    /// bytes it hands that proxy (the checker counts them as delivered).
    InvalidationIgnored,
    /// A reply is cached after its invalidation: the network moves an
    /// invalidation push ahead of the reply queued before it on the same
    /// connection, so a value read before the change arrives after the push
    /// that should have dropped it.
    CacheAfterInvalidation,
    /// The tracked connection is lost while idle and the driver replaces it
    /// without telling the proxy (neither `handle_upstream_closed` nor
    /// `handle_upstream_connected`), sending the tracking handshake itself
    /// and swallowing its replies: the proxy keeps a cache that nothing on
    /// the new connection tracks.
    NoFlushOnReconnect,
}

impl Bug {
    pub const ALL: [Bug; 6] = [
        Bug::ReorderReplies,
        Bug::SkipUpstreamLost,
        Bug::StaleRestart,
        Bug::InvalidationIgnored,
        Bug::CacheAfterInvalidation,
        Bug::NoFlushOnReconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::ReorderReplies => "reorder-replies",
            Bug::SkipUpstreamLost => "skip-upstream-lost",
            Bug::StaleRestart => "stale-restart",
            Bug::InvalidationIgnored => "invalidation-ignored",
            Bug::CacheAfterInvalidation => "cache-after-invalidation",
            Bug::NoFlushOnReconnect => "no-flush-on-reconnect",
        }
    }

    /// Whether the bug is one of tracking's: a seed planting it runs with
    /// tracking on, whatever it would draw.
    pub fn needs_tracking(self) -> bool {
        matches!(
            self,
            Bug::InvalidationIgnored | Bug::CacheAfterInvalidation | Bug::NoFlushOnReconnect
        )
    }

    pub fn parse(s: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == s)
    }
}

/// Everything a run depends on. The same parameters always give the same
/// run: they are what a failure report prints for replaying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub seed: u64,
    pub steps: u64,
    /// Keep only the first this many of the seed's clients.
    pub clients: Option<usize>,
    /// Keep only the first this many of the seed's proxies.
    pub proxies: Option<usize>,
    /// Enabled fault kinds (bits of [`FAULTS`]).
    pub faults: u32,
    pub bug: Option<Bug>,
}

impl Params {
    pub fn new(seed: u64, steps: u64) -> Self {
        Params {
            seed,
            steps,
            clients: None,
            proxies: None,
            faults: ALL_FAULTS,
            bug: None,
        }
    }

    pub fn has(&self, fault: u32) -> bool {
        self.faults & fault != 0
    }

    pub fn faults_text(&self) -> String {
        if self.faults == ALL_FAULTS {
            return "all".into();
        }
        let names: Vec<&str> = FAULTS
            .iter()
            .filter(|(bit, _)| self.faults & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }

    /// Environment assignments that replay this run.
    pub fn env_text(&self) -> String {
        let mut s = format!("SIM_SEED={} SIM_STEPS={}", self.seed, self.steps);
        if let Some(n) = self.clients {
            let _ = write!(s, " SIM_CLIENTS={n}");
        }
        if let Some(n) = self.proxies {
            let _ = write!(s, " SIM_PROXIES={n}");
        }
        if self.faults != ALL_FAULTS {
            let _ = write!(s, " SIM_FAULTS={}", self.faults_text());
        }
        if let Some(bug) = self.bug {
            let _ = write!(s, " SIM_BUG={}", bug.name());
        }
        s
    }

    pub fn replay_command(&self) -> String {
        format!(
            "{} cargo test -p kv-core --test sim -- replay --exact --nocapture",
            self.env_text()
        )
    }

    /// Reads `SIM_*` variables through `var`; `None` without `SIM_SEED`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Params>, String> {
        let Some(seed) = var("SIM_SEED") else {
            return Ok(None);
        };
        let num = |name: &str, text: String| {
            text.trim()
                .parse::<u64>()
                .map_err(|e| format!("{name}={text}: {e}"))
        };
        let mut p = Params::new(num("SIM_SEED", seed)?, 3000);
        if let Some(v) = var("SIM_STEPS") {
            p.steps = num("SIM_STEPS", v)?;
        }
        if let Some(v) = var("SIM_CLIENTS") {
            p.clients = Some(num("SIM_CLIENTS", v)? as usize);
        }
        if let Some(v) = var("SIM_PROXIES") {
            p.proxies = Some(num("SIM_PROXIES", v)? as usize);
        }
        if let Some(v) = var("SIM_FAULTS") {
            p.faults = match v.trim() {
                "all" => ALL_FAULTS,
                "none" | "" => 0,
                list => list.split(',').try_fold(0, |acc, name| {
                    FAULTS
                        .iter()
                        .find(|(_, n)| *n == name.trim())
                        .map(|(bit, _)| acc | bit)
                        .ok_or_else(|| format!("SIM_FAULTS: unknown fault kind {name:?}"))
                })?,
            };
        }
        if let Some(v) = var("SIM_BUG") {
            p.bug =
                Some(Bug::parse(v.trim()).ok_or_else(|| format!("SIM_BUG: unknown bug {v:?}"))?);
        }
        Ok(Some(p))
    }

    /// Parses the `VAR=value` words of a replay command.
    pub fn from_command(command: &str) -> Result<Params, String> {
        let words: Vec<(&str, &str)> = command
            .split_whitespace()
            .take_while(|w| *w != "cargo")
            .filter_map(|w| w.split_once('='))
            .collect();
        Params::from_vars(|name| {
            words
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })?
        .ok_or_else(|| format!("no SIM_SEED in {command:?}"))
    }
}

/// The cache TTL of proxies that track: long against everything else in a
/// run, so that a stale value served is the invalidations' failure, not
/// something the TTL excuses.
pub const TRACKING_TTL: Duration = Duration::from_secs(60);

/// How a client reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A `kv_core::Client` speaking RESP to a proxy (`ClientKind::Stream`).
    Stream,
    /// Inline text to a proxy, annotated replies back
    /// (`ClientKind::Messages`, as the WebSocket bridge does).
    Messages,
    /// A `kv_core::Client` speaking RESP straight to the server: a writer
    /// that no proxy sees, so caches go stale for real.
    Direct,
}

/// The world a seed describes, drawn from its own random stream so that
/// the overrides in [`Params`] do not change anything else.
#[derive(Debug, Clone)]
pub struct Setup {
    pub proxies: usize,
    /// The proxies keep their caches coherent by the server's
    /// invalidations (`ProxyConfig::tracking`), with a cache TTL of
    /// [`TRACKING_TTL`], so that what they serve is fresh because of the
    /// invalidations, not the TTL. Off, they cache by TTL alone.
    pub tracking: bool,
    /// Each client's transport and proxy.
    pub clients: Vec<(Via, usize)>,
    pub keys: usize,
    /// Counter keys (`n<i>`), for `INCR` in transactions.
    pub counters: usize,
    /// The times to live (ms) that `SET … PX` and `PEXPIRE` give: around
    /// the cache's TTL and the latencies, where a cached value and its
    /// key's deadline race, and a few others.
    pub px: Vec<u64>,
    pub proxy: ProxyConfig,
    pub client_timeout: Duration,
    /// Per mille of requests that are `GET`s on top of the usual mix.
    pub extra_reads: u64,
    /// Most requests a simulated client keeps in flight.
    pub max_in_flight: usize,
    /// Most one-way latency outside latency spikes.
    pub latency: Duration,
    /// Chance, per mille, that a fault the step drew really happens: some
    /// seeds are calm, some are storms.
    pub fault_rate: u64,
    /// The connection policy of the proxy's and the server's client
    /// connections (the core's, as the native drivers use it).
    pub conn: ConnConfig,
    /// Bytes a connection holds on their way to a reader before the writer
    /// counts as blocked (the socket buffers): past it, the connection
    /// policy's stalled-output timer runs.
    pub window: usize,
}

impl Setup {
    pub fn new(p: &Params) -> Setup {
        let mut r = Rng::fork(p.seed, 1);
        let proxies = r.range(1, 3) as usize;
        let n = r.range(2, 7) as usize;
        let clients: Vec<(Via, usize)> = (0..n)
            .map(|_| {
                let via = match r.below(20) {
                    0..=8 => Via::Stream,
                    9..=16 => Via::Messages,
                    _ => Via::Direct,
                };
                (via, r.index(proxies))
            })
            .collect();
        let keys = r.range(1, 4) as usize;
        let ms = Duration::from_millis;
        let ttl = r.pick(&[ms(0), ms(20), ms(100), ms(500), ms(2_000), ms(10_000)]);
        let request_timeout = r.pick(&[ms(50), ms(200), ms(1_000), ms(3_000)]);
        let client_timeout = request_timeout * r.pick(&[1u32, 2, 4]) / 2 + ms(r.below(50));
        // (Ten one-way latencies are added below, once the latency is
        // drawn: a client that cannot wait one round trip never succeeds.)
        let proxy = ProxyConfig {
            cache: CacheConfig {
                ttl,
                max_entries: r.pick(&[1, 2, 1_000]),
                negative: r.chance(700),
                ..CacheConfig::default()
            },
            request_timeout,
            max_pending_per_client: r.pick(&[1, 2, 4, 1_024]),
            max_upstream_in_flight: r.pick(&[2, 16, 100_000, 100_000]),
            hash_seed: r.next_u64(),
            ..ProxyConfig::default()
        };
        let max_in_flight = r.pick(&[1, 2, 4, 16]);
        let latency = r.pick(&[Duration::from_micros(100), ms(2), ms(20)]);
        let fault_rate = r.pick(&[20, 100, 400]);
        let client_timeout = client_timeout + latency * 10;
        // Drawn last, so the rest of each seed's world stays as it was.
        let conn = ConnConfig::for_proxy_client(
            r.pick(&[None, Some(ms(200)), Some(ms(1_000)), Some(ms(5_000))]),
            request_timeout,
            kv_core::OutputLimit::DEFAULT,
        );
        let window = r.pick(&[64, 256, 4_096, 1 << 20]);
        // Most seeds track, as `kv proxy` does by default; the rest keep
        // the TTL-only mode (`--tracking off`) covered.
        let tracking = r.chance(750) || p.bug.is_some_and(Bug::needs_tracking);
        // Some seeds read more: a key is then read twice through a proxy
        // between writes often enough for caches to serve it, and stale
        // entries to show.
        let extra_reads = r.pick(&[0, 300, 600, 800]);
        let mut proxy = proxy;
        if tracking {
            proxy.tracking = true;
            proxy.cache.ttl = TRACKING_TTL;
        }
        let ttl = proxy.cache.ttl;
        let mut clients = clients;
        let mut proxies = proxies;
        if tracking {
            // Invalidations are about other nodes' writes: at least two
            // proxies (direct clients write too), and the first clients
            // spread over them, so that each serves someone.
            proxies = proxies.max(2);
            for (i, c) in clients.iter_mut().take(proxies).enumerate() {
                c.1 = i;
            }
        }

        let proxies = p.proxies.map_or(proxies, |n| n.clamp(1, proxies));
        if let Some(n) = p.clients {
            clients.truncate(n.max(1));
        }
        for c in &mut clients {
            c.1 %= proxies;
        }
        // Not drawn: the rest of each seed's world stays as it was.
        let ttl_ms = ttl.as_millis() as u64;
        let lat_ms = latency.as_millis() as u64;
        let mut px = vec![1, 3, 10, 50, 250, 1_000];
        if ttl_ms > 0 {
            px.extend([
                ttl_ms / 2 + 1,
                ttl_ms,
                ttl_ms + 1,
                ttl_ms + lat_ms / 2 + 1,
                ttl_ms + lat_ms + 1,
                ttl_ms + 2 * lat_ms + 2,
            ]);
        }
        Setup {
            proxies,
            tracking,
            clients,
            keys,
            counters: 2,
            px,
            proxy,
            client_timeout,
            extra_reads,
            max_in_flight,
            latency,
            fault_rate,
            conn,
            window,
        }
    }

    /// The longest time to live the simulation gives a key (ms).
    pub fn max_px(&self) -> u64 {
        self.px.iter().copied().max().unwrap_or(0)
    }

    pub fn describe(&self) -> String {
        let clients: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, (via, p))| match via {
                Via::Stream => format!("c{i} stream@p{p}"),
                Via::Messages => format!("c{i} messages@p{p}"),
                Via::Direct => format!("c{i} direct"),
            })
            .collect();
        let c = &self.proxy.cache;
        format!(
            "{} prox{}{}, {} key{}; clients: {}; cache ttl {:?}, {} entries, negative {}; \
             proxy request timeout {:?}, max pending {}, max upstream {}; \
             client timeout {:?}, in flight {}, extra reads {}/1000; latency <= {:?}; \
             fault rate {}/1000; \
             idle timeout {:?}, window {} bytes; PX {:?} ms",
            self.proxies,
            if self.proxies == 1 { "y" } else { "ies" },
            if self.tracking {
                " (tracking)"
            } else {
                " (TTL only)"
            },
            self.keys,
            if self.keys == 1 { "" } else { "s" },
            clients.join(", "),
            c.ttl,
            c.max_entries,
            if c.negative { "on" } else { "off" },
            self.proxy.request_timeout,
            self.proxy.max_pending_per_client,
            self.proxy.max_upstream_in_flight,
            self.client_timeout,
            self.max_in_flight,
            self.extra_reads,
            self.latency,
            self.fault_rate,
            self.conn.idle_timeout,
            self.window,
            self.px,
        )
    }
}
