//! `kv proxy` in front of a real Redis 7 (`redis-server`), whose default
//! user is off and whose one user, `alice`, the proxy authenticates as
//! (`--upstream-user`): every connection the proxy opens (its two lanes,
//! and the dedicated ones of transactions and subscribers) does so, a
//! wrong password is named to the clients, RESP2, RESP3 and telnet
//! clients work through it, and kv's own `DUMP` of every pair, which
//! Redis lacks, gets an error that says so and what to use instead.

use kv_tests::{
    info_field, run_kv, start_proxy, start_redis_server, wait_until, Conn, KvProcess, RedisServer,
    Value,
};
use std::time::Duration;

/// How long the proxy may take to connect its lanes and hear from Redis.
const SETTLE: Duration = Duration::from_secs(10);

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Status("OK".into())
}

fn call(c: &mut Conn, args: &[&str]) -> Value {
    c.call_resp2(args)
}

/// A `redis-server` whose default user is off and whose user `alice`
/// (password `secret`) may run anything on any key and channel; `None`
/// when the tool is missing and skipping is allowed.
fn acl_redis() -> Option<RedisServer> {
    start_redis_server(&[
        "--user", "alice", "on", ">secret", "~*", "&*", "+@all", "--user", "default", "off",
    ])
}

/// A connection straight to Redis, authenticated as `alice`.
fn direct(redis: &RedisServer) -> Conn {
    let mut c = Conn::connect(redis.addr());
    assert_eq!(call(&mut c, &["AUTH", "alice", "secret"]), ok());
    c
}

/// The text of a bulk reply.
fn text(v: Value) -> String {
    v.text()
        .unwrap_or_else(|| panic!("not a bulk string: {v:?}"))
}

/// `INFO section` through `c`, as text.
fn info(c: &mut Conn, section: &str) -> String {
    text(call(c, &["INFO", section]))
}

/// The line `field:value` of an `INFO` text, its value.
fn info_text(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// A proxy in front of `redis` as `alice`, once its main lane is tracked
/// and has said which server this is.
fn alices_proxy(redis: &RedisServer) -> KvProcess {
    let proxy = start_proxy(
        redis.addr(),
        &[
            "--upstream-user",
            "alice",
            "--upstream-password",
            "secret",
            "--cache-ttl",
            "60s",
        ],
    );
    let mut c = Conn::connect(proxy.addr());
    wait_until(SETTLE, "the proxy's main lane is tracked by Redis", || {
        let info = info(&mut c, "everything");
        info.contains("upstream_main_tracking:on") && info.contains("upstream_server:redis")
    });
    proxy
}

/// Redis's own version, as its `INFO` says it.
fn redis_version(direct: &mut Conn) -> String {
    info_text(&info(direct, "server"), "redis_version").expect("INFO server has redis_version")
}

#[test]
fn an_acl_user_authenticates_every_lane_and_reads_are_cached() {
    let Some(redis) = acl_redis() else {
        return;
    };
    let mut direct = direct(&redis);
    let proxy = alices_proxy(&redis);
    let mut c = Conn::connect(proxy.addr());
    assert_eq!(call(&mut c, &["SET", "k", "v1"]), ok());
    assert_eq!(call(&mut c, &["GET", "k"]), bulk("v1"));
    let hits = |c: &mut Conn| info_field(&info(c, "proxy"), "cache_hits").expect("cache_hits");
    let before = hits(&mut c);
    assert_eq!(call(&mut c, &["GET", "k"]), bulk("v1"));
    assert_eq!(hits(&mut c), before + 1, "the second GET was a cache hit");
    // Redis sees the proxy's two lanes as alice's; a bulk read (the lane
    // connects once the main lane is accepted) went over the second.
    assert_eq!(
        call(&mut c, &["SCAN", "0"]),
        Value::Array(vec![bulk("0"), Value::Array(vec![bulk("k")])])
    );
    let alices = |direct: &mut Conn| {
        let list = text(call(direct, &["CLIENT", "LIST"]));
        list.lines()
            .filter(|l| l.contains(" user=alice ") && !l.contains("cmd=client|list"))
            .count()
    };
    wait_until(SETTLE, "both lanes are alice's at Redis", || {
        alices(&mut direct) == 2
    });
    // The write reached Redis, and Redis's change reaches the cache.
    assert_eq!(call(&mut direct, &["GET", "k"]), bulk("v1"));
    assert_eq!(call(&mut direct, &["SET", "k", "v2"]), ok());
    wait_until(SETTLE, "Redis's invalidation reaches the proxy", || {
        call(&mut c, &["GET", "k"]) == bulk("v2")
    });
    let proxy_info = info(&mut c, "proxy");
    assert_eq!(
        info_text(&proxy_info, "upstream_server_version"),
        Some(redis_version(&mut direct)),
        "{proxy_info}"
    );
}

#[test]
fn a_wrong_password_for_the_user_is_named_to_clients() {
    let Some(redis) = acl_redis() else {
        return;
    };
    let proxy = start_proxy(
        redis.addr(),
        &[
            "--upstream-user",
            "alice",
            "--upstream-password",
            "wrong",
            "--request-timeout",
            "2s",
        ],
    );
    let mut c = Conn::connect(proxy.addr());
    let expected = "ERR upstream refused the proxy's user 'alice' with its password \
                    (WRONGPASS invalid username-password pair or user is disabled.)";
    for args in [&["GET", "k"][..], &["SET", "k", "v"]] {
        assert_eq!(
            call(&mut c, args),
            Value::Error(expected.into()),
            "{args:?}"
        );
    }
    // The connection carries on: the proxy answers what it answers itself.
    assert_eq!(call(&mut c, &["PING"]), Value::Status("PONG".into()));
    // A dedicated connection is refused the same way, and closed.
    let mut tx = Conn::connect(proxy.addr());
    assert_eq!(call(&mut tx, &["MULTI"]), Value::Error(expected.into()));
    tx.expect_closed();
}

#[test]
fn a_user_without_a_password_is_refused_at_startup() {
    let out = run_kv(
        [
            "proxy",
            "--upstream-user",
            "alice",
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--upstream-user needs the user's password: give --upstream-password"),
        "{}",
        out.stderr
    );
}

#[test]
fn resp2_and_resp3_clients_work_through_the_proxy() {
    let Some(redis) = acl_redis() else {
        return;
    };
    let proxy = alices_proxy(&redis);
    // RESP2.
    let mut two = Conn::connect(proxy.addr());
    assert_eq!(call(&mut two, &["SET", "n", "41"]), ok());
    assert_eq!(call(&mut two, &["INCR", "n"]), Value::Integer(42));
    assert_eq!(
        call(&mut two, &["MGET", "n", "missing"]),
        Value::Array(vec![bulk("42"), Value::Nil])
    );
    assert_eq!(call(&mut two, &["GET", "missing"]), Value::Nil);
    // RESP3: the proxy's HELLO is a map, and nil is RESP3's.
    let mut three = Conn::connect(proxy.addr());
    let (_, hello) = three.call(&[b"HELLO", b"3"]);
    let Value::Map(fields) = &hello else {
        panic!("HELLO 3 answered {hello:?}")
    };
    assert!(
        fields.contains(&(bulk("proto"), Value::Integer(3))),
        "{hello:?}"
    );
    assert_eq!(three.call(&[b"GET", b"n"]), (vec![], bulk("42")));
    assert_eq!(three.call(&[b"SET", b"s", b"three"]), (vec![], ok()));
    assert_eq!(three.call(&[b"GET", b"s"]), (vec![], bulk("three")));
    three.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n");
    assert_eq!(three.read_line(), "_", "RESP3's null");
    // A map that Redis itself sends, through a transaction's own
    // connection (which says HELLO 3 for its RESP3 client).
    assert_eq!(three.call(&[b"MULTI"]), (vec![], ok()));
    let queued = (vec![], Value::Status("QUEUED".into()));
    assert_eq!(three.call(&[b"CONFIG", b"GET", b"maxmemory"]), queued);
    assert_eq!(
        three.call(&[b"EXEC"]),
        (
            vec![],
            Value::Array(vec![Value::Map(vec![(bulk("maxmemory"), bulk("0"))])])
        )
    );
    // RESP3 tracking through the proxy: a change is pushed.
    assert_eq!(three.call(&[b"CLIENT", b"TRACKING", b"ON"]), (vec![], ok()));
    assert_eq!(three.call(&[b"GET", b"s"]), (vec![], bulk("three")));
    assert_eq!(call(&mut two, &["SET", "s", "changed"]), ok());
    assert_eq!(
        three.read_value(),
        Value::Push(vec![bulk("invalidate"), Value::Array(vec![bulk("s")])])
    );
}

#[test]
fn kvs_own_dump_gets_a_clear_error_and_the_connection_carries_on() {
    let Some(redis) = acl_redis() else {
        return;
    };
    let version = redis_version(&mut direct(&redis));
    let proxy = alices_proxy(&redis);
    let expected = format!(
        "ERR the upstream server (redis {version}) has no DUMP of every pair; it is a kv \
         server command. Use SCAN (or KEYS) for the keys, then MGET for their values"
    );
    // The seed transcript over telnet, up to its DUMP (kv's PUT is
    // Redis's SET).
    let mut telnet = Conn::connect(proxy.addr());
    assert_eq!(telnet.cmd("PUT name Derek Moss"), "OK");
    assert_eq!(telnet.cmd("put age 18"), "OK");
    assert_eq!(telnet.cmd("GET name"), "\"Derek Moss\"");
    assert_eq!(telnet.cmd("Put gender M"), "OK");
    assert_eq!(telnet.cmd("dump"), format!("(error) {expected}"));
    assert_eq!(telnet.cmd("GET age"), "\"18\"", "the connection carries on");
    // Over RESP, and what the error advises works.
    let mut c = Conn::connect(proxy.addr());
    assert_eq!(call(&mut c, &["DUMP"]), Value::Error(expected));
    let Value::Array(mut keys) = call(&mut c, &["KEYS", "*"]) else {
        panic!("KEYS did not answer an array")
    };
    keys.sort_by_key(|k| k.text());
    assert_eq!(keys, vec![bulk("age"), bulk("gender"), bulk("name")]);
    assert_eq!(
        call(&mut c, &["MGET", "age", "gender", "name"]),
        Value::Array(vec![bulk("18"), bulk("M"), bulk("Derek Moss")])
    );
}

#[test]
fn transactions_and_pub_sub_work_through_the_proxy() {
    let Some(redis) = acl_redis() else {
        return;
    };
    let proxy = alices_proxy(&redis);
    let mut tx = Conn::connect(proxy.addr());
    let queued = Value::Status("QUEUED".into());
    assert_eq!(call(&mut tx, &["MULTI"]), ok());
    assert_eq!(call(&mut tx, &["SET", "counter", "10"]), queued);
    assert_eq!(call(&mut tx, &["INCR", "counter"]), queued);
    assert_eq!(
        call(&mut tx, &["EXEC"]),
        Value::Array(vec![ok(), Value::Integer(11)])
    );
    // Given back to the shared pipe once the transaction is over.
    wait_until(SETTLE, "the transaction's connection is given back", || {
        info_field(&info(&mut tx, "proxy"), "dedicated_connections_released") == Some(1)
    });
    assert_eq!(call(&mut tx, &["GET", "counter"]), bulk("11"));

    let mut subscriber = Conn::connect(proxy.addr());
    assert_eq!(
        call(&mut subscriber, &["SUBSCRIBE", "news"]),
        Value::Array(vec![bulk("subscribe"), bulk("news"), Value::Integer(1)])
    );
    let mut publisher = Conn::connect(proxy.addr());
    assert_eq!(
        call(&mut publisher, &["PUBLISH", "news", "hello"]),
        Value::Integer(1)
    );
    assert_eq!(
        subscriber.read_value(),
        Value::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
    // Redis's own subscribed-mode rules hold.
    let refused = call(&mut subscriber, &["GET", "k"]);
    assert!(
        matches!(&refused, Value::Error(e) if e.contains("only (P|S)SUBSCRIBE")),
        "{refused:?}"
    );
}
