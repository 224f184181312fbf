//! Scenario tests of `kv_core::Proxy` wired in memory to a real
//! `kv_core::Server`, on a fake clock.
//!
//! The [`Harness`] plays the driver: it moves the proxy's upstream bytes into
//! a `ServerConnection`, the server's replies back into the proxy, and each
//! client's output into a per-client buffer. Replies can be *held* (the
//! server has executed the requests, but its replies have not reached the
//! proxy yet) to simulate requests in flight, and released one at a time.

use bytes::{Bytes, BytesMut};
use kv_core::{
    CacheConfig, ClientId, ClientKind, Command, Instant, Lane, Proxy, ProxyConfig, ProxyEvent,
    Reply, ReplyDecoder, Server, ServerConfig, ServerConnection, UpstreamState,
};
use std::collections::HashMap;
use std::time::Duration;

fn ms(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

struct Harness {
    proxy: Proxy,
    server: Server,
    /// The proxy's upstream connection, as seen from the server.
    conn: ServerConnection,
    /// Its bulk lane's connection (never held back).
    bulk: ServerConnection,
    /// The fake clock; every call into the proxy passes it.
    now: Instant,
    /// While set, the server's replies stay in `held` instead of reaching
    /// the proxy.
    holding: bool,
    held: BytesMut,
    clients: Vec<ClientId>,
    output: HashMap<ClientId, Vec<u8>>,
    /// Every event the proxy emitted other than `ClientReady`.
    events: Vec<ProxyEvent>,
    /// Whether pumping resumes clients whose held-back input can go on,
    /// as the drivers do (off: a test resumes them itself).
    auto_resume: bool,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(ProxyConfig::default())
    }

    fn with_config(config: ProxyConfig) -> Self {
        let now = Instant::ZERO;
        let server = Server::new(ServerConfig::default());
        let conn = ServerConnection::new(server.config().limits);
        let mut proxy = Proxy::new(config, now);
        proxy.handle_upstream_connected(Lane::Main, now);
        proxy.handle_upstream_connected(Lane::Bulk, now);
        Harness {
            proxy,
            bulk: ServerConnection::new(server.config().limits),
            server,
            conn,
            now,
            holding: false,
            held: BytesMut::new(),
            clients: Vec::new(),
            output: HashMap::new(),
            events: Vec::new(),
            auto_resume: false,
        }
    }

    /// Releases the four held replies of one upstream `GET` (it goes in a
    /// transaction with its `PTTL`).
    fn release_fill(&mut self) {
        for _ in 0..4 {
            self.release_one();
        }
    }

    /// Sets the fake clock (it may be set backwards on purpose).
    fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Writes straight into the server's store, bypassing the proxy.
    fn server_put(&mut self, key: &str, value: &str) {
        let reply = self
            .server
            .execute(Command::build(&["SET", key, value]).unwrap());
        assert_eq!(reply, Reply::ok());
    }

    fn client(&mut self) -> ClientId {
        let id = self.proxy.add_client(ClientKind::Stream, self.now);
        self.clients.push(id);
        self.output.insert(id, Vec::new());
        id
    }

    fn remove_client(&mut self, id: ClientId) {
        self.proxy.remove_client(id);
        self.clients.retain(|&c| c != id);
        self.pump();
    }

    /// Feeds client input at the current time, then pumps.
    fn send(&mut self, id: ClientId, input: &[u8]) {
        self.proxy.handle_client_input(id, input, self.now);
        self.pump();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.proxy.handle_timeout(now);
        self.pump();
    }

    /// Moves bytes around until nothing moves: proxy → server, server →
    /// proxy (unless holding), proxy → clients.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(event) = self.proxy.poll_event() {
                if !matches!(event, ProxyEvent::ClientReady(_)) {
                    self.events.push(event);
                }
            }
            for &id in &self.clients {
                if let Some(bytes) = self.proxy.poll_client_transmit(id) {
                    self.output.entry(id).or_default().extend_from_slice(&bytes);
                }
                // As the drivers do: input held back is processed once
                // there is room, or the reply a request waited for came.
                if self.auto_resume && self.proxy.client_resumable(id) {
                    self.proxy.handle_client_resume(id, self.now);
                    moved = true;
                }
            }
            if let Some(request) = self.proxy.poll_upstream_transmit(Lane::Main) {
                self.conn.handle_input(&mut self.server, &request);
                moved = true;
            }
            loop {
                while let Some(reply) = self.conn.poll_transmit() {
                    self.held.extend_from_slice(&reply);
                }
                if !self.conn.has_backlog() {
                    break;
                }
                self.conn.process(&mut self.server);
            }
            if !self.holding && !self.held.is_empty() {
                let replies = self.held.split();
                self.proxy
                    .handle_upstream_input(Lane::Main, &replies, self.now);
                moved = true;
            }
            if let Some(request) = self.proxy.poll_upstream_transmit(Lane::Bulk) {
                self.bulk.handle_input(&mut self.server, &request);
                let replies = self.bulk.transmit_all(&mut self.server);
                self.proxy
                    .handle_upstream_input(Lane::Bulk, &replies, self.now);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        // Drain what the last round produced.
        while let Some(event) = self.proxy.poll_event() {
            if !matches!(event, ProxyEvent::ClientReady(_)) {
                self.events.push(event);
            }
        }
        for &id in &self.clients {
            if let Some(bytes) = self.proxy.poll_client_transmit(id) {
                self.output.entry(id).or_default().extend_from_slice(&bytes);
            }
        }
    }

    /// From now on the server's replies are held back.
    fn hold(&mut self) {
        self.holding = true;
        self.pump();
    }

    /// Delivers every held reply and stops holding.
    fn release(&mut self) {
        self.holding = false;
        self.pump();
    }

    /// Delivers exactly one held reply and keeps holding the rest.
    fn release_one(&mut self) {
        assert!(self.holding);
        let mut d = ReplyDecoder::default();
        d.feed(&self.held);
        d.next_reply()
            .expect("the server sent a malformed reply")
            .expect("no complete reply is held");
        let len = self.held.len() - d.buffered();
        let one = self.held.split_to(len);
        self.proxy.handle_upstream_input(Lane::Main, &one, self.now);
        self.pump();
    }

    /// Replies the server produced that the proxy has not seen.
    fn held_replies(&self) -> usize {
        let mut d = ReplyDecoder::default();
        d.feed(&self.held);
        let mut n = 0;
        while d.next_reply().expect("malformed held reply").is_some() {
            n += 1;
        }
        n
    }

    /// The upstream connection drops: held replies are lost with it.
    fn lose_upstream(&mut self) {
        self.held.clear();
        self.conn = ServerConnection::new(self.server.config().limits);
        self.proxy.handle_upstream_lost(Lane::Main, self.now);
        self.pump();
    }

    /// A fresh upstream connection (after a loss or a reset).
    fn reconnect(&mut self) {
        self.held.clear();
        self.holding = false;
        self.conn = ServerConnection::new(self.server.config().limits);
        self.proxy.handle_upstream_connecting(Lane::Main, self.now);
        self.proxy.handle_upstream_connected(Lane::Main, self.now);
        self.pump();
    }

    /// Takes everything the client has received so far.
    fn take(&mut self, id: ClientId) -> String {
        let bytes = std::mem::take(self.output.get_mut(&id).expect("unknown client"));
        String::from_utf8(bytes).expect("inline replies here are UTF-8")
    }

    fn upstream_requests(&self) -> u64 {
        self.proxy.stats().upstream_requests
    }
}

#[test]
fn cache_hit_just_before_ttl_and_upstream_again_exactly_at_ttl() {
    let mut h = Harness::new();
    h.server_put("k", "v1");
    let a = h.client();

    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v1\"\r\n");
    assert_eq!(h.upstream_requests(), 1);
    assert_eq!(h.proxy.cache_stats().misses, 1);
    assert_eq!(h.proxy.cache_stats().hits, 0);

    // The server changes behind the proxy's back: only a request that goes
    // upstream can see it.
    h.server_put("k", "v2");

    h.set_now(ms(59_999));
    h.send(a, b"GET k\r\n");
    assert_eq!(
        h.take(a),
        "\"v1\"\r\n",
        "fresh at 59.999 s: served from cache"
    );
    assert_eq!(h.upstream_requests(), 1);
    assert_eq!(h.proxy.cache_stats().hits, 1);
    assert_eq!(h.proxy.cache_stats().misses, 1);

    h.set_now(ms(60_000));
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v2\"\r\n", "stale at exactly 60 s: upstream");
    assert_eq!(h.upstream_requests(), 2);
    assert_eq!(h.proxy.cache_stats().hits, 1);
    assert_eq!(h.proxy.cache_stats().misses, 2);
    assert_eq!(h.proxy.cache_stats().expirations, 1);
}

#[test]
fn timeout_purges_entry_at_its_expiry_and_is_safe_early_twice_and_backwards() {
    let mut h = Harness::new();
    h.server_put("k", "v");
    let a = h.client();
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n");
    assert_eq!(h.proxy.poll_timeout(), Some(ms(60_000)));

    // Early calls change nothing.
    h.handle_timeout(ms(0));
    h.handle_timeout(ms(30_000));
    h.handle_timeout(ms(59_999));
    assert_eq!(h.proxy.cache_stats().expirations, 0);
    assert_eq!(h.proxy.poll_timeout(), Some(ms(60_000)));
    // The entry is still there and still served.
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n");
    assert_eq!(h.upstream_requests(), 1);
    assert_eq!(h.proxy.cache_stats().hits, 1);

    // At the expiry it is purged, without any lookup.
    h.handle_timeout(ms(60_000));
    assert_eq!(h.proxy.cache_stats().expirations, 1);
    assert_eq!(h.proxy.poll_timeout(), None);

    // Twice is harmless.
    h.handle_timeout(ms(60_000));
    assert_eq!(h.proxy.cache_stats().expirations, 1);
    assert_eq!(h.proxy.poll_timeout(), None);

    // Time going backwards is clamped: nothing comes back to life.
    h.handle_timeout(ms(10_000));
    assert_eq!(h.proxy.cache_stats().expirations, 1);
    assert_eq!(h.proxy.poll_timeout(), None);
    h.server_put("k", "v2");
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v2\"\r\n", "purged entry must not be served");
    assert_eq!(h.upstream_requests(), 2);
    assert_eq!(h.proxy.cache_stats().misses, 2);
    // The refill happened at the clamped time (60 s), not at 10 s.
    assert_eq!(h.proxy.poll_timeout(), Some(ms(120_000)));
}

#[test]
fn timeout_with_an_earlier_now_uses_the_latest_time_seen() {
    let mut h = Harness::new();
    h.server_put("k", "v");
    let a = h.client();
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n");

    // Unrelated input at 60 s moves the proxy's clock past the expiry.
    h.set_now(ms(60_000));
    h.send(a, b"PING\r\n");
    assert_eq!(h.take(a), "PONG\r\n");
    assert_eq!(h.proxy.cache_stats().expirations, 0);

    // A driver whose clock went backwards: clamped to 60 s, so it purges.
    h.handle_timeout(ms(10_000));
    assert_eq!(h.proxy.cache_stats().expirations, 1);
    assert_eq!(h.proxy.poll_timeout(), None);

    // A lookup "at 10 s" does not see the entry either.
    h.server_put("k", "v2");
    h.set_now(ms(10_000));
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v2\"\r\n");
    assert_eq!(h.upstream_requests(), 2);
    assert_eq!(h.proxy.cache_stats().hits, 0);
}

#[test]
fn fifty_concurrent_misses_coalesce_into_one_upstream_get() {
    let mut h = Harness::new();
    h.server_put("k", "shared");
    let commands_before = h.server.stats().commands;
    let clients: Vec<ClientId> = (0..50).map(|_| h.client()).collect();

    h.hold();
    for &c in &clients {
        h.send(c, b"GET k\r\n");
    }
    assert_eq!(h.upstream_requests(), 1);
    assert_eq!(h.proxy.upstream_in_flight(), 1);
    // One GET, with the PTTL that tells whether its value may be cached,
    // in a transaction (MULTI, GET, PTTL, EXEC).
    assert_eq!(h.server.stats().commands - commands_before, 4);
    assert_eq!(h.proxy.stats().coalesced, 49);
    for &c in &clients {
        assert_eq!(h.take(c), "", "no reply before upstream answers");
    }

    h.release();
    for &c in &clients {
        assert_eq!(h.take(c), "\"shared\"\r\n");
    }
    assert_eq!(h.upstream_requests(), 1);
    assert_eq!(h.proxy.stats().coalesced, 49);
    assert_eq!(h.proxy.upstream_in_flight(), 0);
}

#[test]
fn write_acknowledged_after_racing_get_is_what_everyone_reads() {
    let mut h = Harness::new();
    h.server_put("k", "old");
    let a = h.client();
    let b = h.client();
    let c = h.client();

    h.hold();
    h.send(a, b"GET k\r\n"); // in flight, will be answered with "old"
    h.send(b, b"PUT k new\r\n");
    assert_eq!(h.upstream_requests(), 2);
    // The GET's four (MULTI, GET, PTTL, EXEC), and the PUT's.
    assert_eq!(h.held_replies(), 5);

    // The server is FIFO: the GET's reply ("old") comes first.
    h.release_fill();
    assert_eq!(h.take(a), "\"old\"\r\n");
    assert_eq!(h.take(b), "");

    // The write is still unacknowledged; a GET now must not be served the
    // value that the racing GET just brought back.
    h.send(c, b"GET k\r\n");
    assert_eq!(h.upstream_requests(), 3, "GET behind a write goes upstream");
    assert_eq!(h.take(c), "");

    h.release_one(); // PUT's OK
    assert_eq!(h.take(b), "OK\r\n");
    h.release_fill(); // C's GET, executed after the PUT
    assert_eq!(h.take(c), "\"new\"\r\n");
    h.release();

    // After the acknowledgement, everyone reads "new" from the cache.
    let hits_before = h.proxy.cache_stats().hits;
    for id in [a, b, c] {
        h.send(id, b"GET k\r\n");
        assert_eq!(h.take(id), "\"new\"\r\n");
    }
    assert_eq!(h.upstream_requests(), 3, "served from cache");
    assert_eq!(h.proxy.cache_stats().hits, hits_before + 3);
}

#[test]
fn racing_get_reply_does_not_overwrite_acknowledged_write_in_cache() {
    // Same race, but both replies arrive in one read.
    let mut h = Harness::new();
    h.server_put("k", "old");
    let a = h.client();
    let b = h.client();
    h.hold();
    h.send(a, b"GET k\r\n");
    h.send(b, b"PUT k new\r\n");
    h.release();
    assert_eq!(h.take(a), "\"old\"\r\n");
    assert_eq!(h.take(b), "OK\r\n");

    let d = h.client();
    h.send(d, b"GET k\r\n");
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(d), "\"new\"\r\n");
    assert_eq!(h.take(a), "\"new\"\r\n");
    assert_eq!(h.upstream_requests(), 2);
    assert_eq!(h.proxy.cache_stats().hits, 2);
}

#[test]
fn pipelined_put_then_get_reads_own_write_over_fresh_cached_value() {
    let mut h = Harness::new();
    h.server_put("k", "v1");
    let b = h.client();
    let other = h.client();
    h.send(b, b"GET k\r\n");
    assert_eq!(h.take(b), "\"v1\"\r\n");
    // "v1" is fresh in the cache.
    h.send(other, b"GET k\r\n");
    assert_eq!(h.take(other), "\"v1\"\r\n");
    assert_eq!(h.upstream_requests(), 1);

    h.hold();
    h.send(b, b"PUT k v2\r\nGET k\r\n");
    assert_eq!(h.upstream_requests(), 3, "the GET bypasses the cache");
    // Another client reading while the write is in flight is not served the
    // cached "v1" either: it queues behind the write.
    h.send(other, b"GET k\r\n");
    assert_eq!(h.take(b), "");
    assert_eq!(h.take(other), "");

    h.release();
    assert_eq!(h.take(b), "OK\r\n\"v2\"\r\n");
    assert_eq!(h.take(other), "\"v2\"\r\n");

    // And the cache now holds v2.
    let upstream = h.upstream_requests();
    h.send(other, b"GET k\r\n");
    assert_eq!(h.take(other), "\"v2\"\r\n");
    assert_eq!(h.upstream_requests(), upstream);

    // Without holding anything back too.
    h.send(b, b"PUT k v3\r\nGET k\r\n");
    assert_eq!(h.take(b), "OK\r\n\"v3\"\r\n");
}

#[test]
fn cache_hits_wait_behind_earlier_misses_in_request_order() {
    let mut h = Harness::new();
    h.server_put("cached", "cv");
    let a = h.client();
    h.send(a, b"GET cached\r\n");
    assert_eq!(h.take(a), "\"cv\"\r\n");
    assert_eq!(h.upstream_requests(), 1);

    h.hold();
    h.send(a, b"GET miss\r\nGET cached\r\nPUT x y\r\nGET cached\r\n");
    assert_eq!(h.upstream_requests(), 3, "GET miss and PUT x go upstream");
    assert_eq!(h.proxy.cache_stats().hits, 2, "both GET cached are hits");
    assert_eq!(h.take(a), "", "the hits wait for the miss before them");
    assert!(h.proxy.poll_client_transmit(a).is_none());

    h.release_fill(); // GET miss
    assert_eq!(h.take(a), "(nil)\r\n\"cv\"\r\n");
    h.release_one(); // PUT x y
    assert_eq!(h.take(a), "OK\r\n\"cv\"\r\n");
    assert_eq!(h.held_replies(), 0);
}

#[test]
fn pipelined_replies_are_byte_exact_in_request_order() {
    let mut h = Harness::new();
    h.server_put("cached", "cv");
    let a = h.client();
    h.send(a, b"GET cached\r\n");
    assert_eq!(h.take(a), "\"cv\"\r\n");

    h.send(a, b"GET miss\r\nGET cached\r\nPUT x y\r\nGET cached\r\n");
    assert_eq!(h.take(a), "(nil)\r\n\"cv\"\r\nOK\r\n\"cv\"\r\n");
}

#[test]
fn upstream_loss_fails_in_flight_requests_and_cache_still_serves() {
    let mut h = Harness::new();
    h.server_put("cached", "cv");
    h.server_put("w", "old");
    h.server_put("x", "xv");
    let inline = h.client();
    let resp = h.client();
    let writer = h.client();
    h.send(inline, b"GET cached\r\nGET w\r\n");
    assert_eq!(h.take(inline), "\"cv\"\r\n\"old\"\r\n");

    h.hold();
    h.send(inline, b"GET x\r\n");
    h.send(resp, b"*2\r\n$3\r\nGET\r\n$1\r\ny\r\n");
    h.send(writer, b"PUT w new\r\n");
    assert_eq!(h.proxy.upstream_in_flight(), 3);

    h.lose_upstream();
    assert_eq!(h.proxy.upstream_state(), UpstreamState::Down);
    assert_eq!(h.proxy.upstream_in_flight(), 0);
    let out = h.take(inline);
    assert!(out.starts_with("(error) ERR upstream"), "{out:?}");
    assert!(out.ends_with("\r\n") && out.matches("\r\n").count() == 1);
    let out = h.take(resp);
    assert!(out.starts_with("-ERR upstream"), "{out:?}");
    assert!(out.ends_with("\r\n") && out.matches("\r\n").count() == 1);
    let out = h.take(writer);
    assert!(out.starts_with("(error) ERR upstream"), "{out:?}");

    // While down: a fresh cached key is still served...
    let upstream = h.upstream_requests();
    h.send(inline, b"GET cached\r\n");
    assert_eq!(h.take(inline), "\"cv\"\r\n");
    // ...a key that is not cached fails at once...
    h.send(inline, b"GET x\r\n");
    let out = h.take(inline);
    assert!(out.starts_with("(error) ERR upstream"), "{out:?}");
    h.send(resp, b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n");
    let out = h.take(resp);
    assert!(out.starts_with("-ERR upstream"), "{out:?}");
    // ...and the key whose write was lost is no longer served from cache
    // (its value upstream is unknown).
    h.send(inline, b"GET w\r\n");
    let out = h.take(inline);
    assert!(out.starts_with("(error) ERR upstream"), "{out:?}");
    assert_eq!(h.upstream_requests(), upstream, "nothing sent while down");

    h.reconnect();
    assert_eq!(h.proxy.upstream_state(), UpstreamState::Up);
    h.send(inline, b"GET x\r\nGET w\r\nPUT z 1\r\nGET z\r\n");
    // The server did execute the lost PUT; only its reply was lost.
    assert_eq!(h.take(inline), "\"xv\"\r\n\"new\"\r\nOK\r\n\"1\"\r\n");
    h.send(resp, b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n");
    assert_eq!(h.take(resp), "$2\r\nxv\r\n");
}

#[test]
fn upstream_request_times_out_at_exactly_the_request_timeout() {
    let config = ProxyConfig {
        request_timeout: Duration::from_secs(5),
        ..ProxyConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.server_put("k", "v");
    let a = h.client();

    h.hold();
    h.send(a, b"GET k\r\n");
    assert_eq!(h.proxy.poll_timeout(), Some(ms(5_000)));

    h.handle_timeout(ms(4_999));
    assert_eq!(h.take(a), "");
    assert!(h.events.is_empty(), "{:?}", h.events);
    assert_eq!(h.proxy.upstream_in_flight(), 1);
    assert_eq!(h.proxy.poll_timeout(), Some(ms(5_000)));

    h.handle_timeout(ms(5_000));
    assert_eq!(h.take(a), "(error) ERR upstream timed out\r\n");
    assert_eq!(h.events, vec![ProxyEvent::ResetUpstream(Lane::Main)]);
    assert_eq!(h.proxy.stats().upstream_timeouts, 1);
    assert_eq!(h.proxy.upstream_in_flight(), 0);
    assert_eq!(h.proxy.poll_timeout(), None);

    // The driver resets the connection; requests work again.
    h.set_now(ms(5_001));
    h.reconnect();
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n");
    assert_eq!(h.proxy.stats().upstream_timeouts, 1);
}

#[test]
fn missing_key_is_cached_negatively() {
    let mut h = Harness::new();
    let a = h.client();
    h.send(a, b"GET nope\r\n");
    assert_eq!(h.take(a), "(nil)\r\n");
    assert_eq!(h.upstream_requests(), 1);
    h.send(a, b"GET nope\r\n");
    assert_eq!(h.take(a), "(nil)\r\n");
    assert_eq!(h.upstream_requests(), 1, "second GET is a cache hit");
    assert_eq!(h.proxy.cache_stats().hits, 1);
    assert_eq!(h.proxy.cache_stats().misses, 1);
}

#[test]
fn missing_key_is_not_cached_when_negative_caching_is_off() {
    let config = ProxyConfig {
        cache: CacheConfig {
            negative: false,
            ..CacheConfig::default()
        },
        ..ProxyConfig::default()
    };
    let mut h = Harness::with_config(config);
    let a = h.client();
    h.send(a, b"GET nope\r\n");
    assert_eq!(h.take(a), "(nil)\r\n");
    h.send(a, b"GET nope\r\n");
    assert_eq!(h.take(a), "(nil)\r\n");
    assert_eq!(h.upstream_requests(), 2);
    assert_eq!(h.proxy.cache_stats().hits, 0);
    assert_eq!(h.proxy.cache_stats().misses, 2);
    // Present keys are still cached.
    h.server_put("yes", "1");
    h.send(a, b"GET yes\r\nGET yes\r\n");
    assert_eq!(h.take(a), "\"1\"\r\n\"1\"\r\n");
    assert_eq!(h.upstream_requests(), 3);
}

#[test]
fn info_is_answered_by_the_proxy_with_cache_counters() {
    let mut h = Harness::new();
    h.server_put("a", "1");
    let c = h.client();
    // One request per input, so that each lookup sees the previous fill
    // (pipelined in one input, the misses would coalesce instead).
    for get in ["GET a", "GET a", "GET b", "GET a"] {
        h.send(c, format!("{get}\r\n").as_bytes());
    }
    assert_eq!(h.take(c), "\"1\"\r\n\"1\"\r\n(nil)\r\n\"1\"\r\n");
    assert_eq!(h.upstream_requests(), 2);
    let upstream = h.upstream_requests();
    let server_commands = h.server.stats().commands;

    h.send(c, b"INFO\r\n");
    assert_eq!(h.upstream_requests(), upstream, "INFO is not sent upstream");
    assert_eq!(h.server.stats().commands, server_commands);
    let out = h.take(c);
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert!(lines[0].starts_with('(') && lines[0].ends_with(" lines)"));
    assert!(lines.contains(&"role:proxy"), "{out}");
    assert!(lines.contains(&"cache_hits:2"), "{out}");
    assert!(lines.contains(&"cache_misses:2"), "{out}");
    assert!(lines.contains(&format!("upstream_requests:{upstream}").as_str()));

    // In RESP, INFO is one bulk string.
    h.send(c, b"*1\r\n$4\r\nINFO\r\n");
    let out = h.take(c);
    assert!(out.starts_with('$'), "{out}");
    assert!(out.contains("\r\ncache_hits:2\r\n"), "{out}");
    assert_eq!(h.upstream_requests(), upstream);
}

#[test]
fn per_client_backpressure_stops_reading_at_max_pending() {
    let config = ProxyConfig {
        max_pending_per_client: 4,
        ..ProxyConfig::default()
    };
    let mut h = Harness::with_config(config);
    for i in 0..10 {
        h.server_put(&format!("k{i}"), &format!("v{i}"));
    }
    let a = h.client();
    let input: String = (0..10).map(|i| format!("GET k{i}\r\n")).collect();

    h.hold();
    assert!(h.proxy.client_wants_input(a));
    h.send(a, input.as_bytes());
    assert!(!h.proxy.client_wants_input(a));
    assert_eq!(h.upstream_requests(), 4);
    assert_eq!(h.proxy.stats().requests, 4);
    // Feeding nothing while still full processes nothing.
    h.send(a, b"");
    assert_eq!(h.upstream_requests(), 4);

    let mut expected = String::new();
    for i in 0..10 {
        expected.push_str(&format!("\"v{i}\"\r\n"));
    }
    let mut got = String::new();
    let mut rounds = 0;
    while got.len() < expected.len() {
        rounds += 1;
        assert!(rounds <= 3, "10 requests at 4 per round take 3 rounds");
        let before = h.upstream_requests();
        h.release();
        got.push_str(&h.take(a));
        assert!(h.proxy.client_wants_input(a));
        h.hold();
        h.send(a, b"");
        assert!(h.upstream_requests() - before <= 4);
    }
    assert_eq!(got, expected);
    assert_eq!(h.upstream_requests(), 10);
    assert_eq!(h.proxy.stats().requests, 10);
    assert!(h.proxy.client_wants_input(a));
}

#[test]
fn removed_client_does_not_break_others_on_the_same_coalesced_get() {
    let mut h = Harness::new();
    h.server_put("k", "v");
    let first = h.client();
    let second = h.client();
    let third = h.client();

    h.hold();
    h.send(first, b"GET k\r\n"); // owns the upstream request
    h.send(second, b"GET k\r\n");
    h.send(third, b"GET k\r\n");
    assert_eq!(h.upstream_requests(), 1);
    h.remove_client(first);
    h.remove_client(third);
    assert_eq!(h.proxy.client_count(), 1);

    // A client arriving after the removals still joins the request.
    let late = h.client();
    h.send(late, b"GET k\r\n");
    assert_eq!(h.upstream_requests(), 1);
    assert_eq!(h.proxy.stats().coalesced, 3);

    h.release();
    assert_eq!(h.take(second), "\"v\"\r\n");
    assert_eq!(h.take(late), "\"v\"\r\n");
    assert_eq!(h.take(first), "");
    assert_eq!(h.take(third), "");
    assert_eq!(h.proxy.upstream_in_flight(), 0);
    assert!(h.events.is_empty(), "{:?}", h.events);

    // The pipe is still in step: later requests pair with their replies.
    h.server_put("other", "o");
    h.send(second, b"GET other\r\nGET k\r\n");
    assert_eq!(h.take(second), "\"o\"\r\n\"v\"\r\n");
}

#[test]
fn removed_sole_waiter_reply_is_dropped_and_the_pipe_stays_in_step() {
    let mut h = Harness::new();
    h.server_put("k", "v");
    h.server_put("j", "w");
    let gone = h.client();
    let stays = h.client();
    h.hold();
    h.send(gone, b"GET k\r\n");
    h.send(stays, b"GET j\r\n");
    h.remove_client(gone);
    h.release();
    assert_eq!(h.take(stays), "\"w\"\r\n");
    assert!(h.events.is_empty(), "{:?}", h.events);
    // The removed client's request still filled the cache.
    h.send(stays, b"GET k\r\n");
    assert_eq!(h.take(stays), "\"v\"\r\n");
    assert_eq!(h.upstream_requests(), 2);
}

#[test]
fn dump_through_the_proxy_keeps_pairs_in_both_dialects() {
    let mut h = Harness::new();
    let a = h.client();
    h.send(a, b"PUT name Derek Moss\r\nput age 18\r\nPut gender M\r\n");
    assert_eq!(h.take(a), "OK\r\nOK\r\nOK\r\n");
    h.send(a, b"dump\r\n");
    assert_eq!(
        h.take(a),
        "(3 pairs)\r\n\"age\" \"18\"\r\n\"gender\" \"M\"\r\n\"name\" \"Derek Moss\"\r\n"
    );
    h.send(a, b"*1\r\n$4\r\nDUMP\r\n");
    assert_eq!(
        h.take(a),
        "*6\r\n$3\r\nage\r\n$2\r\n18\r\n$6\r\ngender\r\n$1\r\nM\r\n$4\r\nname\r\n$10\r\nDerek Moss\r\n"
    );
}

#[test]
fn resp_get_through_the_proxy_gets_resp_replies() {
    let mut h = Harness::new();
    let a = h.client();
    h.send(a, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    assert_eq!(h.take(a), "$-1\r\n");

    h.send(a, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
    assert_eq!(h.take(a), "+OK\r\n");
    let upstream = h.upstream_requests();
    // Served from the write-through cache, still in RESP.
    h.send(a, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    assert_eq!(h.take(a), "$5\r\nhello\r\n");
    assert_eq!(h.upstream_requests(), upstream);

    // A value put straight on the server, fetched through the proxy.
    h.server_put("p", "a\r\nb");
    h.send(a, b"*2\r\n$3\r\nGET\r\n$1\r\np\r\n");
    assert_eq!(h.take(a), "$4\r\na\r\nb\r\n");
    // Once a client has spoken RESP, its inline commands are answered in
    // RESP too, as Redis answers them.
    h.send(a, b"GET p\r\n*2\r\n$3\r\nGET\r\n$1\r\nz\r\n");
    assert_eq!(h.take(a), "$4\r\na\r\nb\r\n$-1\r\n");
}

// ---------------------------------------------------------------------------
// A model-based property over random interleavings.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Get(usize, usize),
    Put(usize, usize),
    Del(usize, usize),
    Hold,
    ReleaseOne,
    ReleaseAll,
    Advance(u64),
    LoseUpstream,
    Reconnect,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let ck = || (0..3usize, 0..3usize);
    prop_oneof![
        6 => ck().prop_map(|(c, k)| Step::Get(c, k)),
        3 => ck().prop_map(|(c, k)| Step::Put(c, k)),
        1 => ck().prop_map(|(c, k)| Step::Del(c, k)),
        2 => Just(Step::Hold),
        3 => Just(Step::ReleaseOne),
        1 => Just(Step::ReleaseAll),
        2 => prop::sample::select(&[1u64, 1_000, 4_999, 5_000, 30_000, 60_000][..])
            .prop_map(Step::Advance),
        1 => Just(Step::LoseUpstream),
        1 => Just(Step::Reconnect),
    ]
}

/// Checks each client's new output lines against what it is owed, in order.
/// An `ERR upstream` error is always acceptable (loss, timeout, refusal);
/// any other reply must be exactly the expected one.
fn check_outputs(h: &mut Harness, clients: &[ClientId], owed: &mut [Vec<String>]) {
    for (i, &c) in clients.iter().enumerate() {
        let out = h.take(c);
        let lines: Vec<&str> = out.split_terminator("\r\n").collect();
        for line in lines {
            assert!(!owed[i].is_empty(), "client {i} got unexpected {line:?}");
            let expected = owed[i].remove(0);
            assert!(
                line == expected || line.starts_with("(error) ERR upstream"),
                "client {i}: got {line:?}, expected {expected:?}"
            );
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 256,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    /// With every write going through the proxy, a GET must return what the
    /// server's store holds when the GET is dispatched (the server executes
    /// requests as soon as they are transmitted here; only replies are
    /// held), whether it is answered from the cache, coalesced, or sent
    /// upstream — never an older value.
    #[test]
    fn random_interleavings_never_serve_a_stale_value(
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut h = Harness::new();
        let clients: Vec<ClientId> = (0..3).map(|_| h.client()).collect();
        let mut owed: Vec<Vec<String>> = vec![Vec::new(); 3];
        let mut next_value = 0u64;
        let key = |k: usize| format!("k{k}");
        let stored = |h: &Harness, k: &str| {
            h.server
                .store()
                .get(k.as_bytes())
                .map(|v| format!("\"{}\"", String::from_utf8_lossy(v)))
                .unwrap_or_else(|| "(nil)".to_string())
        };
        for s in steps {
            match s {
                Step::Get(c, k) => {
                    let k = key(k);
                    h.send(clients[c], format!("GET {k}\r\n").as_bytes());
                    owed[c].push(stored(&h, &k));
                }
                Step::Put(c, k) => {
                    next_value += 1;
                    h.send(clients[c], format!("PUT {} v{next_value}\r\n", key(k)).as_bytes());
                    owed[c].push("OK".to_string());
                }
                Step::Del(c, k) => {
                    let k = key(k);
                    let existed = h.server.store().get(k.as_bytes()).is_some();
                    h.send(clients[c], format!("DEL {k}\r\n").as_bytes());
                    owed[c].push(format!("(integer) {}", u8::from(existed)));
                }
                Step::Hold => h.hold(),
                Step::ReleaseOne => {
                    if h.holding && h.held_replies() > 0 {
                        h.release_one();
                    }
                }
                Step::ReleaseAll => h.release(),
                Step::Advance(d) => {
                    let now = Instant::from_nanos(h.now.as_nanos() + d * 1_000_000);
                    h.handle_timeout(now);
                    if h.events.contains(&ProxyEvent::ResetUpstream(Lane::Main)) {
                        h.events.clear();
                        h.reconnect();
                    }
                }
                Step::LoseUpstream => h.lose_upstream(),
                Step::Reconnect => {
                    if h.proxy.upstream_state() != UpstreamState::Up {
                        h.reconnect();
                    }
                }
            }
            proptest::prop_assert!(h.events.is_empty(), "{:?}", h.events);
            check_outputs(&mut h, &clients, &mut owed);
        }
        if h.proxy.upstream_state() != UpstreamState::Up {
            h.reconnect();
        }
        h.release();
        check_outputs(&mut h, &clients, &mut owed);
        for (i, o) in owed.iter().enumerate() {
            proptest::prop_assert!(o.is_empty(), "client {} still owed {:?}", i, o);
        }
        proptest::prop_assert_eq!(h.proxy.upstream_in_flight(), 0);
    }
}

#[test]
fn clients_must_authenticate_when_the_proxy_has_a_password() {
    let config = ProxyConfig {
        password: Some(kv_core::auth::Password::new(Bytes::from_static(b"s3cret"))),
        ..ProxyConfig::default()
    };
    let mut h = Harness::with_config(config);
    let a = h.client();
    h.send(a, b"GET k\r\nPING\r\nHELP\r\nAUTH wrong\r\nDUMP\r\n");
    let out = h.take(a);
    assert!(
        out.starts_with("(error) NOAUTH Authentication required.\r\nPONG\r\n("),
        "{out}"
    );
    assert!(
        out.ends_with("(error) WRONGPASS invalid username-password pair or user is disabled.\r\n(error) NOAUTH Authentication required.\r\n"),
        "{out}"
    );
    assert_eq!(h.upstream_requests(), 0);
    h.send(
        a,
        b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\nPUT k v\r\nGET k\r\n",
    );
    assert_eq!(h.take(a), "+OK\r\n+OK\r\n$1\r\nv\r\n");
    // Authentication is per connection.
    let b = h.client();
    h.send(b, b"GET k\r\nAUTH default s3cret\r\nGET k\r\n");
    assert_eq!(
        h.take(b),
        "(error) NOAUTH Authentication required.\r\nOK\r\n\"v\"\r\n"
    );
}

/// A key's own deadline at the server bounds what the proxy serves: with
/// the cache's 60 s lifetime, a key set with `PX 500` is read at 499 ms and
/// gone at 500 ms, through the proxy as at the server. (The proxy learns the
/// key's time to live with the `PTTL` it sends behind each `GET`, and does
/// not cache a value whose key dies sooner than the cache entry would.)
#[test]
fn a_key_with_px_500_is_gone_at_the_proxy_at_500_ms_despite_the_60_s_cache() {
    let mut h = Harness::new();
    let start = 1_700_000_000_000u64;
    let at = |h: &mut Harness, ms: u64| {
        h.set_now(Instant::from_millis(ms));
        h.server.set_time(start + ms);
    };
    at(&mut h, 0);
    let a = h.client();
    h.send(a, b"SET k v PX 500\r\nSET forever v\r\n");
    assert_eq!(h.take(a), "OK\r\nOK\r\n");
    h.send(a, b"GET k\r\nGET forever\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n\"v\"\r\n");
    at(&mut h, 499);
    h.send(a, b"GET k\r\nGET forever\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n\"v\"\r\n");
    // Both reads of `forever` came from the cache (written through by the
    // plain SET); no read of `k` did.
    assert_eq!(h.proxy.cache_stats().hits, 2);
    at(&mut h, 500);
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "(nil)\r\n");
    // A key whose deadline is beyond the cache's lifetime is cached.
    h.send(a, b"SET long v EX 3600\r\nGET long\r\n");
    assert_eq!(h.take(a), "OK\r\n\"v\"\r\n");
    h.send(a, b"GET long\r\n");
    assert_eq!(h.take(a), "\"v\"\r\n");
    assert_eq!(h.proxy.cache_stats().hits, 3);
}

/// An `MGET` whose keys are all fresh in the cache is answered from it; one
/// that is not goes upstream whole, in one request.
#[test]
fn mget_is_answered_from_the_cache_when_every_key_is_fresh() {
    let mut h = Harness::new();
    let a = h.client();
    h.send(a, b"PUT a 1\r\nPUT b 2\r\nGET missing\r\n");
    assert_eq!(h.take(a), "OK\r\nOK\r\n(nil)\r\n");
    let upstream = h.upstream_requests();
    h.send(a, b"MGET a b missing\r\n");
    assert_eq!(
        h.take(a),
        "(3 items)\r\n1) \"1\"\r\n2) \"2\"\r\n3) (nil)\r\n"
    );
    assert_eq!(h.upstream_requests(), upstream, "all from the cache");
    h.send(a, b"MGET a b c\r\n");
    assert_eq!(
        h.take(a),
        "(3 items)\r\n1) \"1\"\r\n2) \"2\"\r\n3) (nil)\r\n"
    );
    assert_eq!(h.upstream_requests(), upstream + 1, "one request upstream");
}

/// `n` keys `key:00000`…, written at the server directly.
fn many_keys(h: &mut Harness, n: usize) {
    for i in 0..n {
        h.server_put(&format!("key:{i:05}"), "a value");
    }
}

#[test]
fn a_large_dump_is_passed_through_on_the_bulk_lane_and_the_main_lane_carries_on() {
    let mut h = Harness::new();
    many_keys(&mut h, 2000);
    let resp = h.client();
    let resp3 = h.client();
    let telnet = h.client();
    // The main lane is held: the DUMPs do not wait for it.
    h.hold();
    h.send(resp, b"*1\r\n$4\r\nDUMP\r\n");
    let got = h.take(resp);
    assert!(
        got.starts_with("*4000\r\n$9\r\nkey:00000\r\n$7\r\na value\r\n"),
        "{}",
        &got[..40]
    );
    assert!(got.ends_with("$9\r\nkey:01999\r\n$7\r\na value\r\n"));
    assert_eq!(got.len(), 7 + 2000 * (15 + 13));
    // Other encodings are decoded and encoded anew.
    h.send(resp3, b"HELLO 3\r\n");
    let _ = h.take(resp3);
    h.send(resp3, b"*1\r\n$4\r\nDUMP\r\n");
    assert!(h.take(resp3).starts_with("%2000\r\n$9\r\nkey:00000\r\n"));
    h.send(telnet, b"DUMP\r\n");
    assert!(h
        .take(telnet)
        .starts_with("(2000 pairs)\r\n\"key:00000\" \"a value\"\r\n"));
    assert!(h.events.is_empty(), "{:?}", h.events);
    h.release();
}

#[test]
fn a_clients_bulk_read_waits_for_its_writes_and_its_writes_for_its_bulk_read() {
    let mut h = Harness::new();
    h.auto_resume = true;
    let a = h.client();
    h.hold();
    // Pipelined: the DUMP must see the PUT, and the GET after the DUMP must
    // not overtake it at the server.
    h.send(a, b"PUT k v\r\nDUMP\r\nDEL k\r\n");
    assert_eq!(
        h.take(a),
        "",
        "the PUT is held, and so is everything after it"
    );
    assert_eq!(
        h.upstream_requests(),
        1,
        "the DUMP waits for the PUT's reply"
    );
    h.release();
    assert_eq!(
        h.take(a),
        "OK\r\n(1 pair)\r\n\"k\" \"v\"\r\n(integer) 1\r\n"
    );
    assert_eq!(h.upstream_requests(), 3);
}

#[test]
fn bulk_reads_go_one_at_a_time_and_those_of_departed_clients_are_never_sent() {
    let mut h = Harness::new();
    many_keys(&mut h, 2000);
    // The bulk lane's connection is not up yet: its requests queue.
    h.proxy.handle_upstream_lost(Lane::Bulk, h.now);
    h.proxy.handle_upstream_connecting(Lane::Bulk, h.now);
    let gone: Vec<ClientId> = (0..40).map(|_| h.client()).collect();
    for &c in &gone {
        h.send(c, b"*1\r\n$4\r\nDUMP\r\n");
    }
    let stays = h.client();
    h.send(stays, b"*1\r\n$6\r\nDBSIZE\r\n");
    for c in gone {
        h.remove_client(c);
    }
    let before = h.upstream_requests();
    h.proxy.handle_upstream_connected(Lane::Bulk, h.now);
    h.pump();
    assert_eq!(h.take(stays), ":2000\r\n");
    assert_eq!(h.upstream_requests() - before, 1, "only the DBSIZE went");
}

#[test]
fn a_reply_passed_through_past_the_output_limit_cuts_the_client_off() {
    let mut h = Harness::with_config(ProxyConfig {
        output_limit: kv_core::OutputLimit {
            hard: 20_000,
            ..kv_core::OutputLimit::default()
        },
        ..ProxyConfig::default()
    });
    h.auto_resume = true;
    many_keys(&mut h, 2000);
    let greedy = h.client();
    let other = h.client();
    h.send(greedy, b"*1\r\n$4\r\nDUMP\r\n");
    assert_eq!(h.take(greedy), "", "cut off, its output dropped");
    assert!(h.proxy.client_status(greedy).cut);
    assert!(h.proxy.client_status(greedy).finished);
    assert_eq!(h.proxy.stats().output_limit_disconnections, 1);
    h.send(other, b"*1\r\n$6\r\nDBSIZE\r\nGET key:00001\r\n");
    assert_eq!(h.take(other), ":2000\r\n$7\r\na value\r\n");
}

#[test]
fn after_its_dump_a_client_reads_no_cache_entry_older_than_what_it_saw() {
    let mut h = Harness::new();
    h.auto_resume = true;
    h.server_put("k", "v1");
    let a = h.client();
    h.send(a, b"GET k\r\n");
    assert_eq!(h.take(a), "\"v1\"\r\n");
    // Written behind the proxy's back: its cache holds v1 for a TTL.
    h.server_put("k", "v2");
    h.send(a, b"DUMP\r\n");
    assert_eq!(h.take(a), "(1 pair)\r\n\"k\" \"v2\"\r\n");
    let before = h.upstream_requests();
    h.send(a, b"GET k\r\nGET k\r\n");
    assert_eq!(
        h.take(a),
        "\"v2\"\r\n\"v2\"\r\n",
        "not back to v1 after seeing v2"
    );
    assert_eq!(
        h.upstream_requests() - before,
        1,
        "once from the server, then the cache"
    );
    // Another client, which saw nothing newer, is served from the cache.
    let b = h.client();
    h.send(b, b"GET k\r\n");
    assert_eq!(h.take(b), "\"v2\"\r\n");
    assert_eq!(h.upstream_requests() - before, 1);
}
