//! The proxy's TTL cache: stale reads within the TTL, fresh ones after it,
//! read-your-writes through the proxy, and the hit/miss counters.

use kv_tests::{info_field, start_stack, wait_for, Conn};
use std::time::{Duration, Instant};

#[test]
fn proxy_serves_cached_value_until_ttl_then_fresh_value() {
    // The TTL alone: with tracking, the server's invalidation would end
    // the stale reads at once (tests/tests/tracking.rs).
    let (server, proxy) = start_stack(&[], &["--cache-ttl", "2s", "--tracking", "off"]);
    let mut via_proxy = Conn::connect(proxy.proxy_addr());
    let mut direct = Conn::connect(server.server_addr());

    assert_eq!(via_proxy.cmd("PUT k v1"), "OK");
    let first_cached_read = Instant::now();
    assert_eq!(via_proxy.cmd("GET k"), "\"v1\"");

    // Change the value behind the proxy's back.
    assert_eq!(direct.cmd("PUT k v2"), "OK");
    assert_eq!(direct.cmd("GET k"), "\"v2\"");

    // Still the cached value.
    assert_eq!(
        via_proxy.cmd("GET k"),
        "\"v1\"",
        "stale read from the cache"
    );

    // Poll until the fresh value shows; every reply is one of the two.
    let changed_after = wait_for(
        Duration::from_secs(10),
        "GET k through the proxy returns the fresh \"v2\" (--cache-ttl 2s)",
        || match via_proxy.cmd("GET k").as_str() {
            "\"v2\"" => Some(first_cached_read.elapsed()),
            "\"v1\"" => None,
            other => panic!("unexpected reply to GET k through the proxy: {other:?}"),
        },
    );
    assert!(
        changed_after >= Duration::from_millis(1500),
        "the cached value changed {changed_after:?} after the first cached read; with --cache-ttl 2s it must hold for ~2 s"
    );

    // Read-your-writes: a PUT through the proxy is seen at once.
    assert_eq!(via_proxy.cmd("PUT k v3"), "OK");
    assert_eq!(via_proxy.cmd("GET k"), "\"v3\"");
    assert_eq!(direct.cmd("GET k"), "\"v3\"");

    let info = via_proxy.cmd("INFO");
    assert!(info.starts_with('('), "INFO reply header: {info}");
    let hits = info_field(&info, "cache_hits")
        .unwrap_or_else(|| panic!("no cache_hits in proxy INFO:\n{info}"));
    let misses = info_field(&info, "cache_misses")
        .unwrap_or_else(|| panic!("no cache_misses in proxy INFO:\n{info}"));
    assert!(hits >= 1, "cache_hits = {hits}, expected >= 1\n{info}");
    assert!(
        misses >= 1,
        "cache_misses = {misses}, expected >= 1\n{info}"
    );
}

#[test]
fn proxy_put_then_get_reads_own_write_immediately() {
    let (_server, proxy) = start_stack(&[], &["--cache-ttl", "2s"]);
    let mut conn = Conn::connect(proxy.proxy_addr());
    for i in 0..20 {
        assert_eq!(conn.cmd(&format!("PUT rw value{i}")), "OK");
        assert_eq!(conn.cmd("GET rw"), format!("\"value{i}\""));
    }
    // DEL through the proxy is seen at once as well.
    assert_eq!(conn.cmd("DEL rw"), "(integer) 1");
    assert_eq!(conn.cmd("GET rw"), "(nil)");
}
