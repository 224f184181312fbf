//! `kv up` (server and proxy in one process), the one-shot `kv cli`, and
//! graceful shutdown on SIGTERM.

use kv_tests::{play_seed_transcript, run_kv, Conn, KvProcess};
use std::time::Duration;

#[test]
fn up_serves_the_seed_transcript_cli_reads_it_and_sigterm_stops_it() {
    let mut up = KvProcess::spawn([
        "up",
        "--server-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
        // A free port too, so the test never depends on 7080 being free.
        "--http",
        "127.0.0.1:0",
    ]);
    let server = up.server_addr();
    let proxy = up.proxy_addr();
    assert_ne!(server, proxy);
    assert_eq!(
        up.listening().upstream.as_deref(),
        Some(server.to_string().as_str()),
        "the proxy line names the server as its upstream:\n{}",
        up.stdout_text()
    );

    let mut conn = Conn::connect(proxy);
    play_seed_transcript(&mut conn);
    drop(conn);

    let out = run_kv(
        ["cli", "--connect", &proxy.to_string(), "GET", "name"],
        Duration::from_secs(10),
    );
    assert_eq!(out.stdout, "\"Derek Moss\"\n", "kv cli GET name: {out:?}");
    assert_eq!(out.code(), Some(0), "kv cli GET name: {out:?}");

    // The server side of `kv up` has the data too.
    let out = run_kv(
        ["cli", "--connect", &server.to_string(), "GET", "age"],
        Duration::from_secs(10),
    );
    assert_eq!(
        out.stdout, "\"18\"\n",
        "kv cli GET age at the server: {out:?}"
    );
    assert_eq!(out.code(), Some(0), "kv cli GET age at the server: {out:?}");

    // An error reply: exit 1, the error printed.
    let out = run_kv(
        ["cli", "--connect", &proxy.to_string(), "FROB"],
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(1), "kv cli FROB: {out:?}");
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("(error) ERR unknown command 'FROB'"),
        "kv cli FROB: {out:?}"
    );

    up.sigterm();
    let status = up.wait_timeout(Duration::from_secs(5));
    let status = status.unwrap_or_else(|| {
        panic!(
            "kv up still running 5 s after SIGTERM\n--- stderr ---\n{}",
            up.stderr_text()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "kv up exit after SIGTERM: {status:?}\n--- stderr ---\n{}",
        up.stderr_text()
    );
}

#[test]
fn cli_exits_2_when_it_cannot_connect() {
    let out = run_kv(
        ["cli", "--connect", "127.0.0.1:1", "GET", "x"],
        Duration::from_secs(15),
    );
    assert_eq!(out.code(), Some(2), "kv cli --connect 127.0.0.1:1: {out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("cannot connect"),
        "kv cli --connect 127.0.0.1:1 should say `cannot connect`: {out:?}"
    );
}
