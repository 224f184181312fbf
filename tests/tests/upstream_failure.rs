//! The proxy when its upstream server dies and comes back: quick errors for
//! what it cannot answer, cached answers for what it can, and recovery once
//! the server is back on the same address.

use kv_tests::{start_proxy, start_server, wait_for, wait_until, Conn, KvProcess};
use std::time::{Duration, Instant};

#[test]
fn proxy_errors_fast_serves_cache_and_recovers_when_server_restarts() {
    let mut server = start_server(&[]);
    let server_addr = server.server_addr();
    // By TTL alone: with tracking, nothing cached outlives the connection
    // (the next test).
    let proxy = start_proxy(
        server_addr,
        &[
            "--request-timeout",
            "1s",
            "--cache-ttl",
            "60s",
            "--tracking",
            "off",
        ],
    );
    let mut conn = Conn::connect(proxy.proxy_addr());

    assert_eq!(conn.cmd("PUT cached kept"), "OK");
    assert_eq!(conn.cmd("GET cached"), "\"kept\"");

    server.kill();

    // Uncached: the proxy must answer with an error, promptly.
    let start = Instant::now();
    conn.send_line("GET uncached");
    let reply = conn
        .try_read_line_within(Duration::from_secs(5))
        .unwrap_or_else(|e| {
            panic!("GET uncached through the proxy with the server dead: no reply within 5 s ({e})")
        });
    let took = start.elapsed();
    assert!(
        reply.starts_with("(error) ERR upstream "),
        "GET uncached with the server dead: expected `(error) ERR upstream ...`, got {reply:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Cached: still served.
    assert_eq!(
        conn.cmd("GET cached"),
        "\"kept\"",
        "a key cached before the server died is served from the cache"
    );

    // The server comes back on the same address.
    let restarted = KvProcess::spawn(["server", "--listen", &server_addr.to_string()]);
    assert_eq!(restarted.server_addr(), server_addr);

    wait_until(
        Duration::from_secs(15),
        "PUT/GET through the proxy work again after the server restarted",
        || conn.cmd("PUT after back") == "OK" && conn.cmd("GET after") == "\"back\"",
    );
    // And the write really reached the new server.
    let mut direct = Conn::connect(server_addr);
    assert_eq!(direct.cmd("GET after"), "\"back\"");
}

#[test]
fn with_tracking_nothing_cached_is_served_once_the_server_is_gone() {
    let mut server = start_server(&[]);
    let proxy = start_proxy(
        server.server_addr(),
        &["--request-timeout", "1s", "--cache-ttl", "60s"],
    );
    let mut conn = Conn::connect(proxy.proxy_addr());
    wait_until(
        Duration::from_secs(10),
        "the server tracks the proxy's reads",
        || {
            conn.cmd("INFO tracking")
                .contains("upstream_main_tracking:on")
        },
    );
    assert_eq!(conn.cmd("PUT cached kept"), "OK");
    assert_eq!(conn.cmd("GET cached"), "\"kept\"");
    assert_eq!(conn.cmd("GET cached"), "\"kept\"");
    assert!(info(proxy.proxy_addr(), "cache_hits") >= 1);
    server.kill();
    // Invalidations sent after the connection was lost would be lost too:
    // the cache went with it, and the read fails rather than guess.
    wait_until(
        Duration::from_secs(5),
        "the proxy saw the connection go",
        || info(proxy.proxy_addr(), "tracking_flushes") == 1,
    );
    let reply = conn.cmd("GET cached");
    assert!(reply.starts_with("(error) ERR upstream "), "{reply}");
    assert_eq!(info(proxy.proxy_addr(), "cache_entries"), 0);
}

/// `INFO`'s numeric field `key`, asked on a fresh connection.
fn info(addr: std::net::SocketAddr, key: &str) -> u64 {
    let text = Conn::connect(addr).cmd("INFO");
    kv_tests::info_field(&text, key).unwrap_or_else(|| panic!("INFO has no {key}: {text}"))
}

#[test]
fn a_server_restarted_empty_behind_the_proxy_is_not_served_from_the_old_cache() {
    let mut server = start_server(&["--in-memory"]);
    let server_addr = server.server_addr();
    let proxy = start_proxy(server_addr, &["--cache-ttl", "60s"]);
    let proxy_addr = proxy.proxy_addr();
    let mut conn = Conn::connect(proxy_addr);
    assert_eq!(conn.cmd("PUT lost old"), "OK");
    assert_eq!(conn.cmd("GET lost"), "\"old\"");
    assert_eq!(conn.cmd("GET lost"), "\"old\"", "now from the cache");
    assert!(
        info(proxy_addr, "cache_entries") >= 1,
        "the proxy caches the key"
    );
    let connections = info(proxy_addr, "upstream_connections");

    // The server comes back with nothing on the same port.
    server.kill();
    let restarted = KvProcess::spawn([
        "server",
        "--listen",
        &server_addr.to_string(),
        "--in-memory",
    ]);
    assert_eq!(restarted.server_addr(), server_addr);
    wait_until(
        Duration::from_secs(15),
        "the proxy reconnects to the restarted server",
        || info(proxy_addr, "upstream_connections") > connections,
    );
    let reply = conn.cmd("GET lost");
    println!(
        "first GET through the proxy after it reconnected: {reply} (cache entries now {})",
        info(proxy_addr, "cache_entries")
    );
    assert_eq!(reply, "(nil)", "the old value died with the server's data");
    assert_eq!(Conn::connect(server_addr).cmd("GET lost"), "(nil)");
}

#[test]
fn a_refused_upstream_password_is_retried_with_backoff_and_said_once() {
    let server = start_server(&["--in-memory", "--requirepass", "server-pw"]);
    let server_addr = server.server_addr();
    let proxy = start_proxy(
        server_addr,
        &["--upstream-password", "wrong-pw", "--request-timeout", "1s"],
    );
    let proxy_addr = proxy.proxy_addr();
    let mut direct = Conn::connect(server_addr);
    assert_eq!(direct.cmd("AUTH server-pw"), "OK");
    let accepted = |direct: &mut Conn| {
        kv_tests::info_field(&direct.cmd("INFO stats"), "total_connections_received")
            .expect("INFO stats has total_connections_received")
    };

    // The client is told the real cause, not "cannot reach the server".
    let mut conn = Conn::connect(proxy_addr);
    let reply = wait_for(Duration::from_secs(10), "a refusal reply", || {
        let r = conn.cmd("GET k");
        r.contains("password").then_some(r)
    });
    println!("client sees: {reply}");
    assert!(
        reply.starts_with("(error) ERR upstream refused the proxy's password (WRONGPASS"),
        "{reply}"
    );

    // Past the first few quick retries (100 ms doubling: 3.1 s in
    // total for six), attempts come at most once per second. The
    // rate needs a window of time: this one is a measurement, not a wait.
    wait_until(
        Duration::from_secs(15),
        "the first six attempts are made",
        || accepted(&mut direct) >= 7,
    );
    let before = accepted(&mut direct);
    let window = Duration::from_secs(5);
    let start = Instant::now();
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts = accepted(&mut direct) - before;
    let total = accepted(&mut direct) - 1;
    println!("attempts in a {window:?} window after the first six: {attempts} ({total} in all)");
    assert!(attempts <= 5, "{attempts} attempts in {window:?}");

    let log = proxy.stderr_text();
    let said = log.matches("refused the proxy's password").count();
    println!("the proxy logged the refusal {said} times over {total} attempts");
    assert!(said >= 1, "the refusal is logged:\n{log}");
    assert!(
        said <= 2 && (said as u64) < total,
        "logged once per change, not per attempt ({said} of {total}):\n{log}"
    );
}
