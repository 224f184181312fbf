//! The browser console's HTTP side without a browser: the origin rules of
//! the WebSocket handshake at `/ws`, commands and replies over the socket
//! (the JSON format of `kv_core::bridge`), and the static files at `/`.

use kv_tests::{
    http_get, info_field, start_proxy, start_stack, up_args, vm_rss_bytes, wait_until, Conn,
    HttpResponse, KvProcess, IO_TIMEOUT,
};
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
    KvProcess::spawn(up_args(&[]))
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

/// A proxy whose WebSocket messages may be at most 2 MiB (its keys and
/// values are small), with its console on an OS-chosen port.
fn small_proxy(extra: &[&str]) -> (KvProcess, SocketAddr) {
    let mut args = vec![
        "--max-key",
        "1k",
        "--max-value",
        "1k",
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    // No server behind it: these tests never reach one.
    let proxy = start_proxy("127.0.0.1:9".parse().unwrap(), &args);
    let console = proxy.console_addr();
    (proxy, console)
}

/// Reads until the close frame, and returns its code.
fn close_code_after(ws: &mut WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => panic!("closed without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame, but: {e}"),
        }
    }
}

/// A masked client frame written by hand, for what the client library
/// will not send: `first` is the FIN/RSV/opcode byte.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn websocket_errors_close_with_their_code() {
    use std::io::Write;
    let (_proxy, console) = small_proxy(&[]);

    let mut ws = ws_connect(console);
    ws.send(Message::Binary(vec![b'x'; 3 << 20].into()))
        .expect("send 3 MiB");
    assert_eq!(close_code_after(&mut ws), 1009, "a message over the limit");

    let mut ws = ws_connect(console);
    ws.get_mut()
        .write_all(&raw_frame(0x81, &[b'G', 0xff, 0xfe]))
        .expect("write a text frame that is not UTF-8");
    assert_eq!(close_code_after(&mut ws), 1007, "text that is not UTF-8");

    let mut ws = ws_connect(console);
    ws.get_mut()
        .write_all(&raw_frame(0xf1, b"PING"))
        .expect("write a frame with reserved bits set");
    assert_eq!(close_code_after(&mut ws), 1002, "a protocol error");

    // The listener carries on.
    assert_eq!(http_get(console, "/").status, 200);
}

#[test]
fn over_the_cap_the_console_answers_503_and_too_many_headers_431() {
    let (_proxy, console) = small_proxy(&["--max-clients", "1"]);
    let holder = Conn::connect(console);
    // The holder is counted once its connection is accepted: wait for the
    // refusal rather than guess when that is.
    let refused = kv_tests::wait_for(
        std::time::Duration::from_secs(10),
        "a second console connection is refused with 503",
        || {
            let r = http_get(console, "/");
            (r.status == 503).then_some(r)
        },
    );
    assert_eq!(refused.header("Retry-After"), Some("1"), "{refused:?}");
    assert_eq!(refused.body_text(), "too many connections\n");
    drop(holder);
    kv_tests::wait_until(
        std::time::Duration::from_secs(10),
        "the console serves again once the holder is gone",
        || http_get(console, "/").status == 200,
    );

    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        request.push_str(&format!("X-Header-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    // The previous connection may still count against the cap of one for
    // a moment after its response: asked again until it does not.
    let status = kv_tests::wait_for(
        std::time::Duration::from_secs(10),
        "a head of 100 header lines is answered other than 503",
        || {
            let mut conn = Conn::connect(console);
            conn.send(request.as_bytes());
            let status = conn.read_http_head().status;
            (status != 503).then_some(status)
        },
    );
    assert_eq!(status, 431, "100 header lines");
}

#[test]
fn a_thousand_idle_websockets_cost_little_and_give_it_back() {
    kv_tests::raise_fd_limit(4096);
    let (proxy, console) = small_proxy(&[]);
    // One connection first, so that what is allocated once is not counted.
    drop(ws_connect(console));
    let before = vm_rss_bytes(proxy.pid());
    let sockets: Vec<_> = (0..1000).map(|_| ws_connect(console)).collect();
    let open = vm_rss_bytes(proxy.pid());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "1,000 idle WebSockets: proxy RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB, {:.1} KiB each)",
        mib(before),
        mib(open),
        mib(open.saturating_sub(before)),
        open.saturating_sub(before) as f64 / 1000.0 / 1024.0
    );
    assert!(
        open.saturating_sub(before) <= 20 << 20,
        "1,000 idle WebSockets grew the proxy by {:.1} MiB",
        mib(open.saturating_sub(before))
    );
    drop(sockets);
    let grown = open.saturating_sub(before);
    let after = kv_tests::wait_for(
        std::time::Duration::from_secs(10),
        "the proxy's memory returns once the sockets close",
        || {
            let now = vm_rss_bytes(proxy.pid());
            (now <= before + grown / 4).then_some(now)
        },
    );
    println!("after they closed: {:.1} MiB", mib(after));
}

#[test]
fn a_reply_over_the_output_limit_cuts_the_websocket_client_off_and_is_counted() {
    let (server, proxy) = start_stack(
        &["--in-memory"],
        &[
            "--http",
            "127.0.0.1:0",
            "--client-output-buffer-limit",
            "64KiB 0 0",
        ],
    );
    let mut conn = Conn::connect(server.server_addr());
    let mut mset = vec![&b"MSET"[..]];
    let pairs: Vec<String> = (0..5000).map(|i| format!("key:{i:05}")).collect();
    for k in &pairs {
        mset.push(k.as_bytes());
        mset.push(b"a value of some twenty bytes");
    }
    assert_eq!(conn.resp(&mset), ["+OK"]);
    let console = proxy.console_addr();
    let mut ws = ws_connect(console);
    ws.send(text("DUMP")).expect("send DUMP");
    // Its reply, a message of some 250 KB, is more than 64 KiB: the
    // connection ends without it.
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => panic!("a reply of {} bytes got through", t.len()),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    let mut admin = Conn::connect(proxy.addr());
    wait_until(IO_TIMEOUT, "the cut-off counted", || {
        info_field(
            &admin.cmd("INFO stats"),
            "client_output_buffer_limit_disconnections",
        ) == Some(1)
    });
    // Small replies still go out, to this client's successor too.
    let mut ws = ws_connect(console);
    assert_bulk(
        &request(&mut ws, text("GET key:00042")),
        "a value of some twenty bytes",
        "a GET after the cut-off",
    );
}
