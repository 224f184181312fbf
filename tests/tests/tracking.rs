//! Server-assisted invalidation: one `redis-server` and two kv proxies
//! caching for a minute (`--cache-ttl 60s`). A change made through one
//! proxy, straight at the server, by a `DEL`, by an expiry or by a
//! `FLUSHALL` reaches the other proxy's cache as an invalidation, and its
//! next read is fresh, every time. The time from the change's
//! acknowledgement to the invalidation's arrival is printed (p50, p99).
//!
//! That the other proxy has applied an invalidation is seen by a RESP3
//! client tracking through it, which read the key there: the proxy sends
//! it the push as it applies the server's (a read with a deadline, no
//! polling); its `INFO` counters are checked against the changes at the end.

use kv_tests::{
    info_field, start_proxy, start_redis_server, start_server, wait_until, Conn, KvProcess, Value,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn call(c: &mut Conn, args: &[&str]) -> Value {
    c.call_resp2(args)
}

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Status("OK".into())
}

/// `INFO tracking` of a proxy, as text.
fn tracking_info(c: &mut Conn) -> String {
    match call(c, &["INFO", "tracking"]) {
        Value::Bulk(text) => String::from_utf8_lossy(&text).into_owned(),
        other => panic!("INFO answered {other:?}"),
    }
}

/// A RESP3 connection to `proxy` with tracking on.
fn tracking_client(proxy: SocketAddr) -> Conn {
    let mut c = Conn::connect(proxy);
    let (_, hello) = c.call(&[b"HELLO", b"3"]);
    assert!(matches!(hello, Value::Map(_)), "HELLO 3 answered {hello:?}");
    assert_eq!(c.call(&[b"CLIENT", b"TRACKING", b"ON"]), (vec![], ok()));
    c
}

/// What a tracking client is sent when `key` changed (`None`: every key).
fn invalidate(key: Option<&str>) -> Value {
    Value::Push(vec![
        bulk("invalidate"),
        key.map_or(Value::Nil, |k| Value::Array(vec![bulk(k)])),
    ])
}

/// Reads `key` through the tracking client, which must get no push first.
fn tracked_get(t: &mut Conn, key: &str) -> Value {
    let (pushes, reply) = t.call(&[b"GET", key.as_bytes()]);
    assert!(pushes.is_empty(), "GET {key}: unexpected {pushes:?}");
    reply
}

/// Waits (with the connection's deadline) for the next push to the
/// tracking client, which must be `expected`; when it came.
fn pushed(t: &mut Conn, expected: &Value, what: &str) -> Instant {
    let got = t.read_value();
    let at = Instant::now();
    assert_eq!(&got, expected, "{what}");
    at
}

/// A proxy in front of `upstream` caching for a minute, once the server
/// agreed to track its reads.
fn tracking_proxy(upstream: SocketAddr) -> KvProcess {
    let proxy = start_proxy(upstream, &["--cache-ttl", "60s"]);
    let mut c = Conn::connect(proxy.addr());
    wait_until(
        Duration::from_secs(10),
        "the proxy's main lane is tracked",
        || tracking_info(&mut c).contains("upstream_main_tracking:on"),
    );
    proxy
}

/// One round over `key`, which the tracking client `t` read through B:
/// `change` it, wait until `t` is told through B, and check that B now
/// serves `fresh`; how long the invalidation took to reach B.
fn round(
    what: &str,
    key: &str,
    change: impl FnOnce() -> Instant,
    told: Value,
    fresh: Value,
    t: &mut Conn,
    via_b: &mut Conn,
) -> Duration {
    let acked = change();
    let arrived = pushed(t, &told, what);
    assert_eq!(
        call(via_b, &["GET", key]),
        fresh,
        "{what}: {key} read through B"
    );
    arrived - acked
}

/// The server's connections other than `direct`'s own: how many are in
/// RESP3 and tracked, and how many in RESP2 and not.
fn lanes(direct: &mut Conn) -> (usize, usize) {
    let clients = match call(direct, &["CLIENT", "LIST"]) {
        Value::Bulk(text) => String::from_utf8_lossy(&text).into_owned(),
        other => panic!("CLIENT LIST answered {other:?}"),
    };
    let others = || clients.lines().filter(|l| !l.contains("cmd=client|list"));
    let tracked = others()
        .filter(|l| l.contains(" resp=3") && l.contains(" flags=t "))
        .count();
    let plain = others()
        .filter(|l| l.contains(" resp=2") && l.contains(" flags=N "))
        .count();
    (tracked, plain)
}

/// Prints the percentiles of `times` for `what`.
fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
    eprintln!(
        "{what}: change acknowledged -> invalidation at the other proxy: p50 {:?}, p99 {:?} ({} rounds)",
        at(50),
        at(99),
        times.len()
    );
}

#[test]
fn changes_reach_the_other_proxys_cache_as_invalidations() {
    // hz 100: the server looks for expired keys every 10 ms, not 100.
    let Some(redis) = start_redis_server(&["--hz", "100"]) else {
        return;
    };
    let mut direct = Conn::connect(redis.addr());
    let (a, b) = (tracking_proxy(redis.addr()), tracking_proxy(redis.addr()));
    // Each proxy has two connections: the main lane in RESP3 and tracked,
    // the bulk lane in RESP2 and not.
    wait_until(
        Duration::from_secs(10),
        "both proxies' lanes are connected",
        || lanes(&mut direct) == (2, 2),
    );
    changes_reach_the_other_proxy("redis-server", &a, &b, &mut direct);
}

#[test]
fn changes_reach_the_other_proxys_cache_as_invalidations_from_a_kv_server() {
    let server = start_server(&["--in-memory"]);
    let mut direct = Conn::connect(server.server_addr());
    let (a, b) = (
        tracking_proxy(server.server_addr()),
        tracking_proxy(server.server_addr()),
    );
    changes_reach_the_other_proxy("kv server", &a, &b, &mut direct);
}

/// The scenario of the module docs, through proxies `a` and `b` of one
/// server, which `direct` is connected to.
fn changes_reach_the_other_proxy(upstream: &str, a: &KvProcess, b: &KvProcess, direct: &mut Conn) {
    let mut via_a = Conn::connect(a.addr());
    let mut via_b = Conn::connect(b.addr());
    let mut t = tracking_client(b.addr());
    let started = Instant::now();
    let report = |what: &str, times| report(&format!("{upstream}: {what}"), times);

    // A writes a key B read (and cached, as missing).
    let mut times = Vec::new();
    for i in 0..1_000 {
        let key = format!("a:{i}");
        assert_eq!(tracked_get(&mut t, &key), Value::Nil);
        let set = || {
            assert_eq!(call(&mut via_a, &["SET", &key, "v"]), ok());
            Instant::now()
        };
        let told = invalidate(Some(&key));
        times.push(round(
            "SET through A",
            &key,
            set,
            told,
            bulk("v"),
            &mut t,
            &mut via_b,
        ));
    }
    report("SET through the other proxy", times);

    // Straight at the server, over a value B cached.
    let mut times = Vec::new();
    for i in 0..300 {
        let key = format!("direct:{i}");
        assert_eq!(call(direct, &["SET", &key, "old"]), ok());
        assert_eq!(tracked_get(&mut t, &key), bulk("old"));
        assert_eq!(call(&mut via_b, &["GET", &key]), bulk("old"), "cached");
        let set = || {
            assert_eq!(call(direct, &["SET", &key, "new"]), ok());
            Instant::now()
        };
        let told = invalidate(Some(&key));
        times.push(round(
            "SET at the server",
            &key,
            set,
            told,
            bulk("new"),
            &mut t,
            &mut via_b,
        ));
    }
    report("SET straight at the server", times);

    // DEL through A.
    let mut times = Vec::new();
    for i in 0..300 {
        let key = format!("del:{i}");
        assert_eq!(call(direct, &["SET", &key, "v"]), ok());
        assert_eq!(tracked_get(&mut t, &key), bulk("v"));
        let del = || {
            assert_eq!(call(&mut via_a, &["DEL", &key]), Value::Integer(1));
            Instant::now()
        };
        let told = invalidate(Some(&key));
        times.push(round(
            "DEL through A",
            &key,
            del,
            told,
            Value::Nil,
            &mut t,
            &mut via_b,
        ));
    }
    report("DEL through the other proxy", times);

    // An expiry: PEXPIRE itself changes the key (one invalidation); the
    // client reads it again, which tracks it again, and the expiry is the
    // second. Timed from PEXPIRE's acknowledgement, so the 5 ms and the
    // server's expiry cycle are in it.
    let mut times = Vec::new();
    for i in 0..50 {
        let key = format!("expire:{i}");
        assert_eq!(call(direct, &["SET", &key, "v"]), ok());
        assert_eq!(tracked_get(&mut t, &key), bulk("v"));
        assert_eq!(call(&mut via_a, &["PEXPIRE", &key, "5"]), Value::Integer(1));
        let acked = Instant::now();
        let told = invalidate(Some(&key));
        pushed(&mut t, &told, "PEXPIRE");
        // Read before it expires, or found expired by this very read (its
        // push then comes before the reply).
        let (pushes, reply) = t.call(&[b"GET", key.as_bytes()]);
        let arrived = match (pushes.as_slice(), reply) {
            ([], Value::Nil) => None,
            ([], v) => {
                assert_eq!(v, bulk("v"));
                Some(pushed(&mut t, &told, "the expiry"))
            }
            ([push], Value::Nil) if *push == told => Some(Instant::now()),
            other => panic!("GET {key} answered {other:?}"),
        };
        if let Some(arrived) = arrived {
            times.push(arrived - acked);
        }
        assert_eq!(
            call(&mut via_b, &["GET", &key]),
            Value::Nil,
            "{key} expired"
        );
    }
    report("PEXPIRE 5 firing (includes the 5 ms)", times);

    // FLUSHALL through A: a null invalidation, every entry dropped.
    let mut times = Vec::new();
    for i in 0..100 {
        let key = format!("flush:{i}");
        assert_eq!(call(direct, &["SET", &key, "v"]), ok());
        assert_eq!(tracked_get(&mut t, &key), bulk("v"));
        let flush = || {
            assert_eq!(call(&mut via_a, &["FLUSHALL"]), ok());
            Instant::now()
        };
        times.push(round(
            "FLUSHALL through A",
            &key,
            flush,
            invalidate(None),
            Value::Nil,
            &mut t,
            &mut via_b,
        ));
    }
    report("FLUSHALL through the other proxy", times);

    let info = tracking_info(&mut via_b);
    assert!(info.contains("tracking:on"), "{info}");
    assert_eq!(info_field(&info, "tracking_flushes"), Some(100), "{info}");
    assert_eq!(info_field(&info, "tracking_clients"), Some(1), "{info}");
    // One invalidation per change, two per expiry round (PEXPIRE, the
    // expiry), or one when the second read found the key expired (it was
    // not tracked when it went).
    let received = info_field(&info, "tracking_invalidations_received").unwrap_or(0);
    assert!((1_750..=1_800).contains(&received), "{info}");
    eprintln!("{upstream}: all rounds in {:?}", started.elapsed());
}

#[test]
fn a_server_that_refuses_tracking_leaves_the_proxy_caching_by_ttl() {
    // A server without CLIENT: CLIENT TRACKING ON is refused.
    let Some(redis) = start_redis_server(&["--rename-command", "CLIENT", ""]) else {
        return;
    };
    let proxy = start_proxy(redis.addr(), &["--cache-ttl", "60s"]);
    let mut c = Conn::connect(proxy.addr());
    wait_until(
        Duration::from_secs(10),
        "the proxy falls back to TTL-only caching",
        || tracking_info(&mut c).contains("tracking:fallback"),
    );
    let info = tracking_info(&mut c);
    assert!(
        info.contains("tracking_fallback_reason:CLIENT TRACKING ON: ERR unknown command 'CLIENT'"),
        "{info}"
    );
    wait_until(
        Duration::from_secs(10),
        "the proxy logs the fallback",
        || {
            proxy
                .stderr_text()
                .contains("upstream refused client tracking")
        },
    );
    // It works as with --tracking off: cached until the TTL, so a change
    // at the server is not seen.
    let mut direct = Conn::connect(redis.addr());
    assert_eq!(call(&mut c, &["SET", "k", "v1"]), ok());
    assert_eq!(call(&mut c, &["GET", "k"]), bulk("v1"));
    assert_eq!(call(&mut direct, &["SET", "k", "v2"]), ok());
    assert_eq!(call(&mut c, &["GET", "k"]), bulk("v1"), "cached by TTL");
}

#[test]
fn with_tracking_off_the_proxy_asks_nothing_of_the_server() {
    let Some(redis) = start_redis_server(&[]) else {
        return;
    };
    let proxy = start_proxy(redis.addr(), &["--tracking", "off"]);
    let mut c = Conn::connect(proxy.addr());
    assert_eq!(call(&mut c, &["SET", "k", "v1"]), ok());
    assert_eq!(call(&mut c, &["GET", "k"]), bulk("v1"));
    let info = tracking_info(&mut c);
    assert!(
        info.contains("tracking:off") && info.contains("upstream_main_tracking:off"),
        "{info}"
    );
    let mut direct = Conn::connect(redis.addr());
    wait_until(
        Duration::from_secs(10),
        "both lanes connect in RESP2, untracked",
        || lanes(&mut direct) == (0, 2),
    );
    assert_eq!(call(&mut direct, &["SET", "k", "v2"]), ok());
    assert_eq!(call(&mut c, &["GET", "k"]), bulk("v1"), "cached by TTL");
}

/// The server restarts on an empty data directory: what proxy B cached
/// before is never served again, neither while the server is away nor once
/// B has reconnected (the old value is gone from the server, and B's cache
/// was emptied when its tracked connection went).
#[test]
fn after_a_server_restart_on_an_empty_data_directory_no_old_value_is_served() {
    let dir = kv_tests::scratch_dir("tracking-restart");
    let mut server = kv_tests::start_server_on(&dir, &[]);
    let addr = server.server_addr();
    let b = tracking_proxy(addr);
    let mut via_b = Conn::connect(b.addr());
    let mut direct = Conn::connect(addr);
    assert_eq!(call(&mut direct, &["SET", "k", "old"]), ok());
    assert_eq!(call(&mut via_b, &["GET", "k"]), bulk("old"));
    assert_eq!(call(&mut via_b, &["GET", "k"]), bulk("old"), "cached");
    server.kill();
    std::fs::remove_dir_all(&dir).expect("the data directory is removed");
    // While the server is away: an error, never the cached value.
    let away = call(&mut via_b, &["GET", "k"]);
    assert!(
        matches!(away, Value::Error(_)),
        "with the server gone: {away:?}"
    );
    let addr_arg = addr.to_string();
    let dir_arg = dir.to_str().expect("utf-8 temp path").to_owned();
    let _server = KvProcess::spawn(["server", "--listen", &addr_arg, "--data-dir", &dir_arg]);
    let mut info = Conn::connect(b.addr());
    wait_until(
        Duration::from_secs(20),
        "proxy B is tracked again on the new server",
        || tracking_info(&mut info).contains("upstream_main_tracking:on"),
    );
    assert_eq!(
        call(&mut via_b, &["GET", "k"]),
        Value::Nil,
        "the new server's answer"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tracking connection waits for invalidations, as a subscriber waits for
/// messages: the server's idle timeout spares it (a proxy's tracked
/// connection is quiet while its cache answers, and losing it would empty
/// that cache), while an idle plain client is closed.
#[test]
fn the_servers_idle_timeout_spares_tracking_connections() {
    let server = start_server(&["--in-memory", "--idle-timeout", "1s"]);
    let mut tracking = Conn::connect(server.server_addr());
    let (_, hello) = tracking.call(&[b"HELLO", b"3"]);
    assert!(matches!(hello, Value::Map(_)), "HELLO 3 answered {hello:?}");
    assert_eq!(
        tracking.call(&[b"CLIENT", b"TRACKING", b"ON"]),
        (vec![], ok())
    );
    let mut plain = Conn::connect(server.server_addr());
    assert_eq!(call(&mut plain, &["PING"]), Value::Status("PONG".into()));
    plain.expect_closed_within(Duration::from_secs(10));
    assert_eq!(
        tracking.call(&[b"PING"]),
        (vec![], Value::Status("PONG".into())),
        "the tracking connection outlived the idle plain one"
    );
}
