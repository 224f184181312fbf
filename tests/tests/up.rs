//! `kv up` (server and proxy in one process), the one-shot `kv cli`,
//! graceful shutdown on SIGTERM, and the console built into the binary.

use kv_tests::{
    http_get, play_seed_transcript, run_kv, up_args, workspace_root, Conn, HttpResponse, KvProcess,
};
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn up_serves_the_seed_transcript_cli_reads_it_and_sigterm_stops_it() {
    // Every port free, the console's too: nothing depends on 7080.
    let mut up = KvProcess::spawn(up_args(&[]));
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

/// Sends `METHOD PATH` with `headers` and reads the response to its end:
/// the body is whatever comes before the server closes (none for HEAD and
/// 304, whatever their Content-Length says).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut conn = Conn::connect(addr);
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    conn.send(text.as_bytes());
    let mut response = conn.read_http_head();
    response.body = conn.expect_closed();
    response
}

#[test]
fn a_copied_kv_up_serves_the_console_built_into_it() {
    let www = workspace_root().join("www");
    assert!(
        www.join("pkg/kv_wasm_client_bg.wasm").is_file(),
        "{}/pkg is missing: run cargo xtask build-wasm",
        www.display()
    );
    // A copy alone in an empty directory, KV_WWW unset: nothing to read
    // the console from but the binary itself.
    let up = KvProcess::spawn_copied(up_args(&["--in-memory"]));
    let console = up.console_addr();

    for (path, file, content_type) in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/style.css", "style.css", "text/css; charset=utf-8"),
        (
            "/pkg/kv_wasm_client.js",
            "pkg/kv_wasm_client.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/pkg/kv_wasm_client_bg.wasm",
            "pkg/kv_wasm_client_bg.wasm",
            "application/wasm",
        ),
    ] {
        let want = std::fs::read(www.join(file)).expect("read the file in www/");
        let got = http_get(console, path);
        assert_eq!(got.status, 200, "GET {path}: {}", got.status_line);
        assert_eq!(
            got.header("Content-Type"),
            Some(content_type),
            "GET {path}: {:?}",
            got.headers
        );
        assert!(
            got.body == want,
            "GET {path}: {} bytes, not the {} of www/{file}",
            got.body.len(),
            want.len()
        );
        let etag = got
            .header("ETag")
            .unwrap_or_else(|| panic!("GET {path} has an ETag: {:?}", got.headers));

        let again = request(console, "GET", path, &[("If-None-Match", etag)]);
        assert_eq!(
            again.status, 304,
            "GET {path} revalidated: {:?}",
            again.headers
        );
        assert_eq!(again.header("ETag"), Some(etag), "{:?}", again.headers);
        assert!(again.body.is_empty(), "a 304 has no body");
        let changed = request(console, "GET", path, &[("If-None-Match", "\"stale\"")]);
        assert_eq!(changed.status, 200, "GET {path} with another ETag");
        assert!(changed.body == want, "GET {path} with another ETag");

        let head = request(console, "HEAD", path, &[]);
        assert_eq!(head.status, 200, "HEAD {path}: {:?}", head.headers);
        assert_eq!(
            head.header("Content-Length"),
            Some(want.len().to_string().as_str()),
            "HEAD {path}: {:?}",
            head.headers
        );
        assert_eq!(
            head.header("Content-Type"),
            Some(content_type),
            "HEAD {path}"
        );
        assert!(head.body.is_empty(), "HEAD {path} has no body");
    }

    for path in [
        "/../Cargo.toml",
        "/pkg/../../Cargo.toml",
        "/.gitignore",
        "/pkg/missing.js",
        "/kv",
    ] {
        let response = http_get(console, path);
        assert_eq!(
            response.status,
            404,
            "GET {path}: {response:?}\n{}",
            response.body_text()
        );
        assert_eq!(response.body_text(), "not found\n", "GET {path}");
    }
}
