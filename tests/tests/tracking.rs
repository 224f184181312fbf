//! Server-assisted invalidation: one `redis-server` and two kv proxies
//! caching for a minute (`--cache-ttl 60s`). A change made through one
//! proxy, straight at the server, by a `DEL`, by an expiry or by a
//! `FLUSHALL` reaches the other proxy's cache as an invalidation, and its
//! next read is fresh, every time. The time from the change's
//! acknowledgement to the invalidation's arrival is printed (p50, p99).
//!
//! That a proxy has applied an invalidation is seen in its `INFO`
//! (`tracking_invalidations_received`), polled with a deadline.

use kv_tests::{info_field, start_proxy, start_redis_server, wait_until, Conn, KvProcess, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long one invalidation may take to arrive before the test fails.
const INVALIDATION_DEADLINE: Duration = Duration::from_secs(5);

fn call(c: &mut Conn, args: &[&str]) -> Value {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let (pushes, reply) = c.call(&args);
    assert!(
        pushes.is_empty(),
        "a RESP2 connection got pushes: {pushes:?}"
    );
    reply
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

fn invalidations(c: &mut Conn) -> u64 {
    let info = tracking_info(c);
    info_field(&info, "tracking_invalidations_received")
        .unwrap_or_else(|| panic!("no tracking_invalidations_received in\n{info}"))
}

/// Waits until the proxy behind `info` has received `want` invalidations,
/// polling without a pause (each poll is one round trip); when it had.
fn invalidated(info: &mut Conn, want: u64, what: &str) -> Instant {
    let deadline = Instant::now() + INVALIDATION_DEADLINE;
    loop {
        let seen = invalidations(info);
        if seen >= want {
            assert_eq!(seen, want, "more invalidations than changes ({what})");
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the proxy got {seen} of {want} invalidations within {INVALIDATION_DEADLINE:?} ({what})"
        );
    }
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

/// One round: `change` a key B read, wait until B is told, and check that
/// B now reads `fresh`; how long the invalidation took to reach B.
fn round(
    what: &str,
    key: &str,
    seen: &mut u64,
    change: impl FnOnce() -> Instant,
    fresh: Value,
    via_b: &mut Conn,
    b_info: &mut Conn,
) -> Duration {
    let acked = change();
    *seen += 1;
    let arrived = invalidated(b_info, *seen, what);
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
    let (a, b) = (tracking_proxy(redis.addr()), tracking_proxy(redis.addr()));
    let mut via_a = Conn::connect(a.addr());
    let mut via_b = Conn::connect(b.addr());
    let mut b_info = Conn::connect(b.addr());
    let mut direct = Conn::connect(redis.addr());
    let started = Instant::now();

    // Each proxy has two connections: the main lane in RESP3 and tracked,
    // the bulk lane in RESP2 and not.
    wait_until(
        Duration::from_secs(10),
        "both proxies' lanes are connected",
        || lanes(&mut direct) == (2, 2),
    );

    let mut seen = invalidations(&mut b_info);
    // A writes a key B read (and cached, as missing).
    let mut times = Vec::new();
    for i in 0..1_000 {
        let key = format!("a:{i}");
        assert_eq!(call(&mut via_b, &["GET", &key]), Value::Nil);
        let set = || {
            assert_eq!(call(&mut via_a, &["SET", &key, "v"]), ok());
            Instant::now()
        };
        let fresh = bulk("v");
        times.push(round(
            "SET through A",
            &key,
            &mut seen,
            set,
            fresh,
            &mut via_b,
            &mut b_info,
        ));
    }
    report("SET through the other proxy", times);

    // Straight at the server, over a value B cached.
    let mut times = Vec::new();
    for i in 0..300 {
        let key = format!("direct:{i}");
        assert_eq!(call(&mut direct, &["SET", &key, "old"]), ok());
        assert_eq!(call(&mut via_b, &["GET", &key]), bulk("old"));
        assert_eq!(call(&mut via_b, &["GET", &key]), bulk("old"), "cached");
        let set = || {
            assert_eq!(call(&mut direct, &["SET", &key, "new"]), ok());
            Instant::now()
        };
        let fresh = bulk("new");
        times.push(round(
            "SET at the server",
            &key,
            &mut seen,
            set,
            fresh,
            &mut via_b,
            &mut b_info,
        ));
    }
    report("SET straight at the server", times);

    // DEL through A.
    let mut times = Vec::new();
    for i in 0..300 {
        let key = format!("del:{i}");
        assert_eq!(call(&mut direct, &["SET", &key, "v"]), ok());
        assert_eq!(call(&mut via_b, &["GET", &key]), bulk("v"));
        let del = || {
            assert_eq!(call(&mut via_a, &["DEL", &key]), Value::Integer(1));
            Instant::now()
        };
        times.push(round(
            "DEL through A",
            &key,
            &mut seen,
            del,
            Value::Nil,
            &mut via_b,
            &mut b_info,
        ));
    }
    report("DEL through the other proxy", times);

    // An expiry: PEXPIRE itself changes the key (one invalidation); B
    // reads it again, which the server tracks, and the expiry is the
    // second. Timed from PEXPIRE's acknowledgement, so the 5 ms and the
    // server's expiry cycle are in it.
    let mut times = Vec::new();
    for i in 0..50 {
        let key = format!("expire:{i}");
        assert_eq!(call(&mut direct, &["SET", &key, "v"]), ok());
        assert_eq!(call(&mut via_b, &["GET", &key]), bulk("v"));
        assert_eq!(call(&mut via_a, &["PEXPIRE", &key, "5"]), Value::Integer(1));
        let acked = Instant::now();
        seen += 1;
        invalidated(&mut b_info, seen, "PEXPIRE");
        // Read before it expires, or found expired by this very read.
        match call(&mut via_b, &["GET", &key]) {
            Value::Nil => {}
            v => assert_eq!(v, bulk("v")),
        }
        seen += 1;
        times.push(invalidated(&mut b_info, seen, "the expiry") - acked);
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
        assert_eq!(call(&mut direct, &["SET", &key, "v"]), ok());
        assert_eq!(call(&mut via_b, &["GET", &key]), bulk("v"));
        let flush = || {
            assert_eq!(call(&mut via_a, &["FLUSHALL"]), ok());
            Instant::now()
        };
        times.push(round(
            "FLUSHALL through A",
            &key,
            &mut seen,
            flush,
            Value::Nil,
            &mut via_b,
            &mut b_info,
        ));
    }
    report("FLUSHALL through the other proxy", times);

    let info = tracking_info(&mut b_info);
    assert!(info.contains("tracking:on"), "{info}");
    assert_eq!(info_field(&info, "tracking_flushes"), Some(100), "{info}");
    eprintln!("all rounds in {:?}", started.elapsed());
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
