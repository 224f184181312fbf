//! The browser console's HTTP side without a browser: the origin rules of
//! the WebSocket handshake at `/ws`, commands and replies over the socket
//! (the JSON format of `kv_core::bridge`), and the static files at `/`.

use kv_tests::{http_get, start_proxy, Conn, HttpResponse, KvProcess, IO_TIMEOUT};
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// The sample handshake of RFC 6455 section 1.3: this key must be answered
/// with this accept value, whoever computes it.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// `kv up` with every port (the console's too) chosen by the OS.
fn start_up() -> KvProcess {
    KvProcess::spawn([
        "up",
        "--server-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
}

/// Sends a hand-written WebSocket upgrade request for `/ws` to `addr` with
/// the given `Host` (and `Origin`, if any), and reads the response head.
fn handshake(addr: SocketAddr, host: &str, origin: Option<&str>) -> HttpResponse {
    let mut request = format!(
        "GET /ws HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    let mut conn = Conn::connect(addr);
    conn.send(request.as_bytes());
    conn.read_http_head()
}

fn assert_refused(response: &HttpResponse, what: &str) {
    assert_eq!(
        response.status, 403,
        "{what}: expected 403 Forbidden, got {response:?}"
    );
}

fn assert_accepted(response: &HttpResponse, what: &str) {
    assert_eq!(
        response.status, 101,
        "{what}: expected 101 Switching Protocols, got {response:?}"
    );
    assert!(
        response
            .header("Upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{what}: Upgrade header: {response:?}"
    );
    assert_eq!(
        response.header("Sec-WebSocket-Accept"),
        Some(RFC_ACCEPT),
        "{what}: Sec-WebSocket-Accept for the key {RFC_KEY}: {response:?}"
    );
}

#[test]
fn the_websocket_only_accepts_pages_of_allowed_origins() {
    let up = start_up();
    let console = up.console_addr();
    let host = console.to_string();
    let port = console.port();

    assert_refused(
        &handshake(console, &host, Some("http://evil.example")),
        "a page of another site",
    );
    assert_accepted(
        &handshake(console, &host, Some(&format!("http://{console}"))),
        "the console's own origin",
    );
    // DNS rebinding: evil.example resolves to 127.0.0.1, so the browser
    // sends its name as both Host and Origin, which then agree.
    let evil = format!("evil.example:{port}");
    assert_refused(
        &handshake(console, &evil, Some(&format!("http://{evil}"))),
        "a DNS-rebinding page (Host and Origin both evil.example)",
    );
    // An origin that is only allowed elsewhere stays refused here.
    assert_refused(
        &handshake(console, &host, Some("http://dev.example:3000")),
        "an origin not given with --allow-origin",
    );

    // A lone proxy with an extra allowed origin (e.g. a dev server).
    let proxy = start_proxy(
        up.server_addr(),
        &[
            "--http",
            "127.0.0.1:0",
            "--allow-origin",
            "http://dev.example:3000",
        ],
    );
    let console = proxy.console_addr();
    let host = console.to_string();
    assert_accepted(
        &handshake(console, &host, Some("http://dev.example:3000")),
        "kv proxy --allow-origin http://dev.example:3000, that origin",
    );
    assert_accepted(
        &handshake(console, &host, Some(&format!("http://{console}"))),
        "kv proxy --allow-origin ..., the console's own origin",
    );
    assert_refused(
        &handshake(console, &host, Some("http://dev.example:3001")),
        "kv proxy --allow-origin http://dev.example:3000, another port",
    );
    assert_refused(
        &handshake(console, &host, Some("http://evil.example")),
        "kv proxy --allow-origin ..., a page of another site",
    );
}

/// Opens the console's WebSocket as its own page would (same origin).
fn ws_connect(console: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect_timeout(&console, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {console}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = format!("ws://{console}/ws")
        .into_client_request()
        .expect("a valid ws:// URL");
    request.headers_mut().insert(
        "Origin",
        format!("http://{console}").parse().expect("a valid header"),
    );
    let (ws, response) = tungstenite::client(request, stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake with {console} failed: {e}"));
    assert_eq!(response.status().as_u16(), 101, "{response:?}");
    ws
}

/// Sends `message` and returns the JSON of the reply message.
fn request(ws: &mut WebSocket<TcpStream>, message: Message) -> Value {
    let what = match &message {
        Message::Text(t) if t.len() > 80 => format!("a text message of {} bytes", t.len()),
        Message::Text(t) => format!("text {:?}", t.as_str()),
        Message::Binary(b) => format!("binary {:?}", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    };
    ws.send(message)
        .unwrap_or_else(|e| panic!("sending {what}: {e}"));
    loop {
        match ws.read() {
            Ok(Message::Text(json)) => {
                let value: Value = serde_json::from_str(json.as_str())
                    .unwrap_or_else(|e| panic!("reply to {what} is not JSON ({e}): {json}"));
                assert!(
                    value["proxy_us"].is_u64(),
                    "reply to {what} has no proxy_us: {value}"
                );
                assert!(
                    value["display"].is_string(),
                    "reply to {what} has no display: {value}"
                );
                return value;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("reply to {what}: expected a text message, got {other:?}"),
            Err(e) => panic!("waiting for the reply to {what}: {e}"),
        }
    }
}

fn text(line: &str) -> Message {
    Message::text(line)
}

fn assert_bulk(reply: &Value, value: &str, what: &str) {
    assert_eq!(reply["reply"]["type"], "bulk", "{what}: {reply}");
    assert_eq!(reply["reply"]["value"], value, "{what}: {reply}");
    assert_eq!(reply["display"], format!("\"{value}\""), "{what}: {reply}");
}

fn assert_error(reply: &Value, needle: &str, what: &str) {
    assert_eq!(reply["reply"]["type"], "error", "{what}: {reply}");
    let value = reply["reply"]["value"].as_str().unwrap_or_default();
    assert!(
        value.contains(needle),
        "{what}: the error should say {needle:?}: {reply}"
    );
    assert_eq!(
        reply["source"], "proxy",
        "{what}: an error of the proxy's own: {reply}"
    );
}

#[test]
fn commands_and_replies_travel_over_the_websocket() {
    let up = start_up();
    let mut ws = ws_connect(up.console_addr());

    let put = request(&mut ws, text("PUT name Derek Moss"));
    assert_eq!(put["reply"]["type"], "status", "PUT: {put}");
    assert_eq!(put["reply"]["value"], "OK", "PUT: {put}");
    assert_eq!(put["display"], "OK", "PUT: {put}");
    assert_eq!(put["source"], "server", "PUT: {put}");
    assert!(put.get("age_ms").is_none(), "PUT: {put}");

    // Writes go through the cache, so even the first GET may be a hit; the
    // second one must be.
    let first = request(&mut ws, text("GET name"));
    assert_bulk(&first, "Derek Moss", "first GET name");
    assert!(
        first["source"] == "cache" || first["source"] == "server",
        "first GET name: {first}"
    );
    let second = request(&mut ws, text("GET name"));
    assert_bulk(&second, "Derek Moss", "second GET name");
    assert_eq!(second["source"], "cache", "second GET name: {second}");
    assert!(
        second["age_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "second GET name: a cache hit carries age_ms: {second}"
    );

    // One command per message.
    let two = request(&mut ws, text("GET name\nGET name"));
    assert_error(&two, "one command per message", "two lines in one message");
    let after = request(&mut ws, text("GET name"));
    assert_bulk(&after, "Derek Moss", "GET name after the two-line message");

    // Far over the line limit, but under the socket's own message limit.
    let long = format!("GET {}", "k".repeat(200 * 1024));
    let too_long = request(&mut ws, text(&long));
    assert_error(&too_long, "too long", "a 200 KiB text message");
    let after = request(&mut ws, text("GET name"));
    assert_bulk(&after, "Derek Moss", "GET name after the 200 KiB message");

    // A binary message is RESP.
    let resp = request(
        &mut ws,
        Message::binary(b"*2\r\n$3\r\nGET\r\n$4\r\nname\r\n".to_vec()),
    );
    assert_bulk(&resp, "Derek Moss", "RESP GET name in a binary message");

    ws.close(None).expect("close the WebSocket");
}

#[test]
fn the_console_page_is_served_and_nothing_outside_www() {
    let up = start_up();
    let console = up.console_addr();

    let page = http_get(console, "/");
    assert_eq!(page.status, 200, "GET /: {page:?}");
    assert!(
        page.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/html")),
        "GET /: {page:?}"
    );
    assert!(
        page.body_text().contains("id=\"command\""),
        "GET / is the console page:\n{}",
        page.body_text()
    );

    for path in ["/../Cargo.toml", "/.git/config"] {
        let response = http_get(console, path);
        assert_eq!(
            response.status,
            404,
            "GET {path}: {response:?}\n{}",
            response.body_text()
        );
    }
}
