//! The proxy when its upstream server dies and comes back: quick errors for
//! what it cannot answer, cached answers for what it can, and recovery once
//! the server is back on the same address.

use kv_tests::{start_proxy, start_server, wait_until, Conn, KvProcess};
use std::time::{Duration, Instant};

#[test]
fn proxy_errors_fast_serves_cache_and_recovers_when_server_restarts() {
    let mut server = start_server(&[]);
    let server_addr = server.server_addr();
    let proxy = start_proxy(
        server_addr,
        &["--request-timeout", "1s", "--cache-ttl", "60s"],
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
