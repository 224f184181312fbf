//! Real Redis clients against the server and the proxy: `redis-cli` for
//! single commands and `redis-benchmark` for load.

use kv_tests::{require_tool, run_tool, start_stack, Output};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn redis_cli(cli: &Path, addr: SocketAddr, args: &[&str]) -> Output {
    let port = addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    let out = run_tool(cli, &all, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "redis-cli {all:?} failed: {out:?}");
    out
}

fn check_redis_cli(cli: &Path, addr: SocketAddr, what: &str) {
    let run = |args: &[&str]| redis_cli(cli, addr, args).stdout;
    // Output to a pipe is raw: no quotes, no type prefixes.
    assert_eq!(
        run(&["SET", "a", "b"]),
        "OK\n",
        "redis-cli SET a b at the {what}"
    );
    assert_eq!(run(&["GET", "a"]), "b\n", "redis-cli GET a at the {what}");
    // --no-raw: the formatting a person sees at a terminal.
    assert_eq!(
        run(&["--no-raw", "GET", "a"]),
        "\"b\"\n",
        "redis-cli --no-raw GET a at the {what}"
    );
    assert_eq!(
        run(&["--no-raw", "DEL", "a"]),
        "(integer) 1\n",
        "redis-cli --no-raw DEL a at the {what}"
    );
    assert_eq!(
        run(&["--no-raw", "GET", "a"]),
        "(nil)\n",
        "redis-cli --no-raw GET a after DEL at the {what}"
    );
    assert_eq!(
        run(&["DEL", "a"]),
        "0\n",
        "redis-cli DEL a again at the {what}"
    );
}

#[test]
fn redis_cli_set_get_del_against_server_and_proxy() {
    let Some(cli) = require_tool("redis-cli") else {
        return;
    };
    let (server, proxy) = start_stack(&[], &[]);
    check_redis_cli(&cli, server.server_addr(), "server");
    check_redis_cli(&cli, proxy.proxy_addr(), "proxy");
}

fn check_benchmark(bench: &Path, addr: SocketAddr, what: &str) {
    let port = addr.port().to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "get,set",
        "-q",
        "-n",
        "20000",
        "-c",
        "20",
    ];
    let out = run_tool(bench, args, Duration::from_secs(60));
    let context = format!(
        "redis-benchmark {args:?} against the {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout, out.stderr
    );
    assert_eq!(out.code(), Some(0), "exit status of {context}");
    let all = format!("{}\n{}", out.stdout, out.stderr);
    assert!(
        !all.contains("ERR") && !all.to_lowercase().contains("error"),
        "errors in the output of {context}"
    );
    // -q prints progress with `\r` and a final line per test.
    let lines: Vec<&str> = out.stdout.split(['\r', '\n']).collect();
    for test in ["SET", "GET"] {
        assert!(
            lines
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("{test}:"))
                    && l.contains("requests per second")),
            "no `{test}: ... requests per second` line in {context}"
        );
    }
}

#[test]
fn redis_benchmark_get_set_against_server_and_proxy() {
    let Some(bench) = require_tool("redis-benchmark") else {
        return;
    };
    let (server, proxy) = start_stack(&[], &[]);
    check_benchmark(&bench, server.server_addr(), "server");
    check_benchmark(&bench, proxy.proxy_addr(), "proxy");
}
