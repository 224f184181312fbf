//! `--requirepass` on the server and the proxy: unauthenticated clients may
//! only run AUTH, PING, QUIT and HELP; the proxy authenticates to its
//! upstream; `kv cli --password` and `redis-cli -a` work.

use kv_tests::{require_tool, run_kv, run_tool, start_proxy, start_server, Conn};
use std::time::Duration;

const NOAUTH: &str = "(error) NOAUTH Authentication required.";
const WRONGPASS: &str = "(error) WRONGPASS invalid username-password pair or user is disabled.";

#[test]
fn server_and_proxy_require_auth_and_the_proxy_authenticates_upstream() {
    let server = start_server(&["--in-memory", "--requirepass", "server-pw"]);
    let proxy = start_proxy(
        server.server_addr(),
        &[
            "--requirepass",
            "proxy-pw",
            "--upstream-password",
            "server-pw",
        ],
    );
    for (addr, password) in [
        (server.server_addr(), "server-pw"),
        (proxy.addr(), "proxy-pw"),
    ] {
        let mut c = Conn::connect(addr);
        assert_eq!(c.cmd("GET name"), NOAUTH);
        assert_eq!(c.cmd("PUT name Derek Moss"), NOAUTH);
        assert_eq!(c.cmd("PING"), "PONG");
        assert_eq!(c.cmd("AUTH wrong"), WRONGPASS);
        assert_eq!(c.cmd("DUMP"), NOAUTH);
        assert_eq!(
            c.resp(&[b"AUTH", password.as_bytes()]),
            vec!["+OK".to_string()]
        );
        // Having spoken RESP, the connection's inline commands get RESP
        // replies, as Redis gives.
        assert_eq!(c.cmd("PUT name Derek Moss"), "+OK");
        assert_eq!(
            c.resp(&[b"GET", b"name"]),
            vec!["$10".to_string(), "Derek Moss".to_string()]
        );
        // Authentication belongs to one connection only.
        let mut other = Conn::connect(addr);
        assert_eq!(other.cmd("GET name"), NOAUTH);
    }
    // Through the proxy the value came from the server, which the proxy
    // reached with its own password: an uncached key proves the round trip.
    let mut direct = Conn::connect(server.server_addr());
    assert_eq!(direct.cmd("AUTH server-pw"), "OK");
    assert_eq!(direct.cmd("PUT fresh from-server"), "OK");
    let mut via_proxy = Conn::connect(proxy.addr());
    assert_eq!(via_proxy.cmd("AUTH proxy-pw"), "OK");
    assert_eq!(via_proxy.cmd("GET fresh"), "\"from-server\"");
}

#[test]
fn a_proxy_with_the_wrong_upstream_password_reports_it() {
    let server = start_server(&["--in-memory", "--requirepass", "server-pw"]);
    let proxy = start_proxy(
        server.server_addr(),
        &["--upstream-password", "nope", "--request-timeout", "2s"],
    );
    let mut c = Conn::connect(proxy.addr());
    let reply = c.cmd("GET k");
    assert!(reply.starts_with("(error) ERR upstream"), "{reply}");
}

#[test]
fn cli_and_redis_cli_authenticate() {
    let server = start_server(&["--in-memory", "--requirepass", "s3cret"]);
    let addr = server.server_addr().to_string();
    let t = Duration::from_secs(20);
    let out = run_kv(
        [
            "cli",
            "--connect",
            &addr,
            "--password",
            "s3cret",
            "PUT",
            "k",
            "v",
        ],
        t,
    );
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "OK\n"),
        "{}",
        out.stderr
    );
    let out = run_kv(["cli", "--connect", &addr, "GET", "k"], t);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(1), "(error) NOAUTH Authentication required.\n")
    );
    let out = run_kv(
        ["cli", "--connect", &addr, "--password", "bad", "GET", "k"],
        t,
    );
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("authentication failed: WRONGPASS"),
        "{}",
        out.stderr
    );
    let Some(redis_cli) = require_tool("redis-cli") else {
        return;
    };
    let port = server.server_addr().port().to_string();
    let out = run_tool(
        &redis_cli,
        [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--no-auth-warning",
            "-a",
            "s3cret",
            "GET",
            "k",
        ],
        t,
    );
    assert_eq!(out.stdout.trim(), "v", "{}", out.stderr);
}
