//! Dedicated upstream connections through the proxy: a client that
//! subscribes or starts a transaction gets a connection of its own to the
//! server, so pub/sub and `MULTI`/`EXEC`/`WATCH` work through the proxy as
//! they do at the server; their number is bounded, with a clear error past
//! the bound; a pinned client's writes leave the cache.

use kv_tests::{info_field, start_proxy, start_server, wait_until, Conn, Value};
use std::time::Duration;

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| bulk(s)).collect())
}

fn call(c: &mut Conn, args: &[&str]) -> Value {
    c.call_resp2(args)
}

/// `INFO proxy`'s `field`.
fn proxy_info(c: &mut Conn, field: &str) -> u64 {
    match call(c, &["INFO", "proxy"]) {
        Value::Bulk(text) => info_field(&String::from_utf8_lossy(&text), field)
            .unwrap_or_else(|| panic!("INFO proxy has no {field}")),
        other => panic!("INFO answered {other:?}"),
    }
}

#[test]
fn pub_sub_and_transactions_work_through_the_proxy() {
    let server = start_server(&["--in-memory"]);
    let proxy = start_proxy(server.server_addr(), &[]);
    let mut subscriber = Conn::connect(proxy.addr());
    let mut other = Conn::connect(proxy.addr());

    // RESP2 subscribed mode, as the server has it.
    assert_eq!(
        call(&mut subscriber, &["SUBSCRIBE", "news"]),
        Value::Array(vec![bulk("subscribe"), bulk("news"), Value::Integer(1)])
    );
    assert_eq!(
        call(&mut other, &["PUBLISH", "news", "hello"]),
        Value::Integer(1)
    );
    assert_eq!(
        subscriber.read_value(),
        strings(&["message", "news", "hello"])
    );
    assert_eq!(call(&mut subscriber, &["PING"]), strings(&["pong", ""]));
    let refused = call(&mut subscriber, &["GET", "k"]);
    assert!(
        matches!(&refused, Value::Error(e) if e.contains("only (P|S)SUBSCRIBE")),
        "{refused:?}"
    );

    // A transaction, and a WATCH another client makes fail.
    let mut tx = Conn::connect(proxy.addr());
    assert_eq!(
        call(&mut other, &["SET", "n", "1"]),
        Value::Status("OK".into())
    );
    assert_eq!(call(&mut tx, &["WATCH", "n"]), Value::Status("OK".into()));
    assert_eq!(call(&mut other, &["INCR", "n"]), Value::Integer(2));
    assert_eq!(call(&mut tx, &["MULTI"]), Value::Status("OK".into()));
    assert_eq!(
        call(&mut tx, &["INCR", "n"]),
        Value::Status("QUEUED".into())
    );
    assert_eq!(
        call(&mut tx, &["EXEC"]),
        Value::Nil,
        "the watched key changed"
    );
    assert_eq!(call(&mut tx, &["MULTI"]), Value::Status("OK".into()));
    assert_eq!(
        call(&mut tx, &["INCR", "n"]),
        Value::Status("QUEUED".into())
    );
    assert_eq!(
        call(&mut tx, &["EXEC"]),
        Value::Array(vec![Value::Integer(3)])
    );
    // The transactions are over: that client is back on the shared pipe;
    // the subscriber keeps its connection.
    wait_until(
        Duration::from_secs(5),
        "the transaction's connection is given back",
        || proxy_info(&mut other, "dedicated_connections") == 1,
    );
    assert_eq!(proxy_info(&mut other, "dedicated_connections_released"), 2);
    assert_eq!(call(&mut tx, &["GET", "n"]), bulk("3"));

    // A telnet client keeps its readable replies on its own connection.
    let mut telnet = Conn::connect(proxy.addr());
    assert_eq!(telnet.cmd("MULTI"), "OK");
    assert_eq!(telnet.cmd("INCR n"), "QUEUED");
    assert_eq!(telnet.cmd("EXEC"), "(1 item)\n1) (integer) 4");

    drop((subscriber, tx, telnet));
    wait_until(
        Duration::from_secs(5),
        "the dedicated connections are given back",
        || proxy_info(&mut other, "dedicated_connections") == 0,
    );
}

#[test]
fn dedicated_connections_are_bounded_and_a_pinned_clients_writes_leave_the_cache() {
    let server = start_server(&["--in-memory"]);
    // Without tracking, only the proxy itself can drop what its pinned
    // client changes.
    let proxy = start_proxy(
        server.server_addr(),
        &[
            "--max-dedicated",
            "1",
            "--tracking",
            "off",
            "--cache-ttl",
            "60s",
        ],
    );
    let mut reader = Conn::connect(proxy.addr());
    assert_eq!(
        call(&mut reader, &["SET", "k", "old"]),
        Value::Status("OK".into())
    );
    assert_eq!(call(&mut reader, &["GET", "k"]), bulk("old"));

    let mut first = Conn::connect(proxy.addr());
    assert_eq!(call(&mut first, &["MULTI"]), Value::Status("OK".into()));
    let mut second = Conn::connect(proxy.addr());
    let refused = call(&mut second, &["SUBSCRIBE", "c"]);
    assert!(
        matches!(&refused, Value::Error(e) if e.contains("1 dedicated upstream connections")),
        "{refused:?}"
    );
    assert_eq!(
        call(&mut second, &["PING"]),
        Value::Status("PONG".into()),
        "it carries on"
    );
    assert_eq!(proxy_info(&mut reader, "dedicated_connections_refused"), 1);

    assert_eq!(
        call(&mut first, &["SET", "k", "new"]),
        Value::Status("QUEUED".into())
    );
    assert_eq!(
        call(&mut first, &["EXEC"]),
        Value::Array(vec![Value::Status("OK".into())])
    );
    assert_eq!(
        call(&mut reader, &["GET", "k"]),
        bulk("new"),
        "not the cached value"
    );

    drop(first);
    wait_until(
        Duration::from_secs(5),
        "the dedicated connection is given back",
        || proxy_info(&mut reader, "dedicated_connections") == 0,
    );
    assert_eq!(
        call(&mut second, &["SUBSCRIBE", "c"]),
        Value::Array(vec![bulk("subscribe"), bulk("c"), Value::Integer(1)])
    );
}
