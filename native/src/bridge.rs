//! The HTTP/WebSocket bridge: serves the console page (`www/`) at `/` and a
//! WebSocket at `/ws` whose clients are [`ClientKind::Messages`] clients of
//! the same proxy as the TCP clients: same cache, coalescing and limits.
//!
//! The message format is [`kv_core::bridge`]'s. Only pages of an allowed
//! origin may open the socket (see [`origin_allowed`]), so a page on another
//! site cannot drive a local proxy through the user's browser.

use crate::net::{self, AcceptHooks};
use crate::proxy::ProxyHandle;
use crate::shutdown::Shutdown;
use crate::time::IdleTimer;
use futures_util::{SinkExt, StreamExt};
use kv_core::bridge::BridgeReply;
use kv_core::{ClientId, ClientKind};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

/// Largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client gets to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WebSocket message the socket layer buffers. Messages up to it
/// that break our own limits get an error reply; beyond it the socket is
/// closed, since its content was never held.
const MAX_WS_MESSAGE: usize = 2 * 1024 * 1024;

/// Settings of the bridge.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder served at `/` (the console page and its `pkg/`).
    pub www_dir: PathBuf,
    /// Origins allowed besides the page's own (e.g. `http://localhost:3000`).
    pub allowed_origins: Vec<String>,
    /// Most concurrent HTTP/WebSocket connections.
    pub max_clients: usize,
    /// Close WebSocket clients that send nothing for this long.
    pub idle_timeout: Option<Duration>,
}

/// The `www/` folder of the source tree, the default for `--www`.
pub fn default_www_dir() -> PathBuf {
    std::env::var_os("KV_WWW")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../www"))
}

struct Hooks(ProxyHandle);

impl AcceptHooks for Hooks {
    fn rejected(&self) {
        self.0.update_stats(|s| s.connections_rejected += 1);
    }
}

/// Serves HTTP and WebSocket clients on `listener` until `shutdown`.
pub async fn serve(
    handle: ProxyHandle,
    listener: TcpListener,
    options: HttpOptions,
    shutdown: Shutdown,
) {
    let options = Rc::new(options);
    let hooks = Hooks(handle.clone());
    net::accept_loop(
        listener,
        options.max_clients,
        shutdown,
        &hooks,
        |stream, peer, shutdown| {
            serve_conn(handle.clone(), stream, peer, options.clone(), shutdown)
        },
    )
    .await;
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

enum HeadError {
    TooLarge,
    Malformed,
    Closed,
}

/// Reads and parses the request head; returns it with any bytes read past it.
async fn read_head(stream: &mut TcpStream) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: req.path.unwrap_or_default().to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                return Ok((head, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if with_body {
        let _ = stream.write_all(body).await;
    }
    net::close_gently(stream).await;
}

async fn serve_conn(
    handle: ProxyHandle,
    mut stream: TcpStream,
    peer: SocketAddr,
    options: Rc<HttpOptions>,
    shutdown: Shutdown,
) {
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(x)) => x,
        Ok(Err(HeadError::TooLarge)) => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                true,
            )
            .await;
        }
        Ok(Err(HeadError::Malformed)) => {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"malformed request\n",
                true,
            )
            .await;
        }
        Ok(Err(HeadError::Closed)) | Err(_) => return,
    };
    let path = head.path.split('?').next().unwrap_or("/").to_owned();
    if head.method != "GET" && head.method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n",
            true,
        )
        .await;
    }
    if path == "/ws" {
        return websocket(handle, stream, peer, &head, rest, &options, shutdown).await;
    }
    let with_body = head.method == "GET";
    match static_file(&options.www_dir, &path) {
        Some((file, content_type)) => match tokio::fs::read(&file).await {
            Ok(body) => respond(&mut stream, "200 OK", content_type, &body, with_body).await,
            Err(_) => {
                let hint: &[u8] = if path.starts_with("/pkg/") {
                    b"not found: the wasm console is not built; run `cargo xtask build-wasm`\n"
                } else {
                    b"not found\n"
                };
                respond(&mut stream, "404 Not Found", "text/plain", hint, with_body).await
            }
        },
        None => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                with_body,
            )
            .await
        }
    }
}

/// Maps a URL path to a file under `www` and its content type. Only plain
/// names are served: no `..`, no hidden files, nothing outside `www`.
fn static_file(www: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let rel = path.strip_prefix('/')?;
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let plain = rel.split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if !plain {
        return None;
    }
    let content_type = match rel.rsplit('.').next()? {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    };
    Some((www.join(rel), content_type))
}

/// Whether a WebSocket handshake may proceed.
///
/// Requests without `Origin` come from programs, not pages, and are allowed.
/// A page's origin must be listed in `allowed`, or be the bridge's own
/// origin (`http://` + `Host`) with `Host` an IP address or `localhost`:
/// a same-origin check alone would let a DNS-rebinding attacker whose name
/// resolves to 127.0.0.1 pass as "same origin".
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = host else { return false };
    let same_origin = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host));
    same_origin && host_is_literal_or_localhost(host)
}

fn host_is_literal_or_localhost(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

async fn websocket(
    handle: ProxyHandle,
    mut stream: TcpStream,
    peer: SocketAddr,
    head: &Head,
    rest: Vec<u8>,
    options: &HttpOptions,
    shutdown: Shutdown,
) {
    let key = head.header("Sec-WebSocket-Key").map(str::to_owned);
    let is_upgrade = head.header_has_token("Connection", "upgrade")
        && head.header_has_token("Upgrade", "websocket")
        && head.header("Sec-WebSocket-Version") == Some("13");
    let (true, Some(key)) = (is_upgrade, key) else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"expected a WebSocket upgrade (version 13)\n",
            true,
        )
        .await;
    };
    let origin = head.header("Origin");
    if !origin_allowed(origin, head.header("Host"), &options.allowed_origins) {
        info!(%peer, origin = origin.unwrap_or(""), "WebSocket refused: origin not allowed");
        return respond(
            &mut stream,
            "403 Forbidden",
            "text/plain",
            b"origin not allowed\n",
            true,
        )
        .await;
    }
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE));
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    debug!(%peer, "WebSocket client connected");
    session(handle, ws, peer, options.idle_timeout, shutdown).await;
}

/// Removes the client however the session ends.
struct Registration(ProxyHandle, ClientId);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.remove_client(self.1);
    }
}

async fn session(
    handle: ProxyHandle,
    mut ws: WebSocketStream<TcpStream>,
    peer: SocketAddr,
    idle_timeout: Option<Duration>,
    mut shutdown: Shutdown,
) {
    let (id, notify) = handle.add_client(ClientKind::Messages);
    let _reg = Registration(handle.clone(), id);
    handle.update_stats(|s| s.connections_total += 1);
    let limits = handle.limits();
    // An inline line, or one RESP command with its framing.
    let max_binary = limits.max_key + limits.max_value + 1024;
    let mut idle = IdleTimer::new(idle_timeout);
    let mut throttled = false;
    let close: Option<CloseFrame> = loop {
        while let Some(reply) = handle.take_reply(id) {
            let json = BridgeReply::from_annotated(&reply).to_json();
            if ws.send(Message::text(json)).await.is_err() {
                return;
            }
        }
        if handle.client_should_close(id) {
            break None;
        }
        let wants = handle.client_wants_input(id);
        if throttled && wants {
            throttled = false;
            handle.feed_client(id, b"");
            continue;
        }
        if !wants {
            throttled = true;
            idle.touch();
        }
        tokio::select! {
            biased;
            _ = notify.notified() => {}
            _ = shutdown.requested() => break None,
            _ = idle.expired(), if wants => break None,
            msg = ws.next(), if wants => {
                idle.touch();
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(text))) => {
                        let text = text.as_str();
                        if text.len() > limits.max_line {
                            handle.reject_input(id, &format!("message too long ({} bytes, limit {})", text.len(), limits.max_line));
                        } else if text.contains(['\r', '\n']) {
                            handle.reject_input(id, "one command per message");
                        } else {
                            let mut line = Vec::with_capacity(text.len() + 1);
                            line.extend_from_slice(text.as_bytes());
                            line.push(b'\n');
                            handle.feed_client(id, &line);
                        }
                    }
                    Some(Ok(Message::Binary(data))) => {
                        if data.len() > max_binary {
                            handle.reject_input(id, &format!("message too long ({} bytes, limit {max_binary})", data.len()));
                        } else {
                            handle.feed_client(id, &data);
                        }
                    }
                    // Pings are answered by the socket layer on the next flush.
                    Some(Ok(_)) => {}
                }
                throttled = !handle.client_wants_input(id);
            }
        }
    };
    debug!(%peer, "WebSocket client closing");
    let _ = ws.close(close).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_on_a_literal_host_is_allowed() {
        assert!(origin_allowed(
            Some("http://127.0.0.1:7080"),
            Some("127.0.0.1:7080"),
            &[]
        ));
        assert!(origin_allowed(
            Some("http://localhost:7080"),
            Some("localhost:7080"),
            &[]
        ));
        assert!(origin_allowed(
            Some("http://[::1]:7080"),
            Some("[::1]:7080"),
            &[]
        ));
        assert!(origin_allowed(None, Some("127.0.0.1:7080"), &[]));
    }

    #[test]
    fn foreign_and_rebinding_origins_are_refused() {
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("127.0.0.1:7080"),
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://127.0.0.1:9999"),
            Some("127.0.0.1:7080"),
            &[]
        ));
        // DNS rebinding: the attacker's name resolves to us, so Host and Origin agree.
        assert!(!origin_allowed(
            Some("http://evil.example:7080"),
            Some("evil.example:7080"),
            &[]
        ));
        assert!(!origin_allowed(Some("null"), Some("127.0.0.1:7080"), &[]));
        let allowed = vec!["http://evil.example:7080".to_owned()];
        assert!(origin_allowed(
            Some("http://evil.example:7080"),
            Some("evil.example:7080"),
            &allowed
        ));
    }

    #[test]
    fn only_plain_files_under_www_are_served() {
        let www = Path::new("/w");
        assert_eq!(
            static_file(www, "/"),
            Some((PathBuf::from("/w/index.html"), "text/html; charset=utf-8"))
        );
        assert_eq!(
            static_file(www, "/pkg/kv_wasm_client_bg.wasm").map(|f| f.1),
            Some("application/wasm")
        );
        for bad in [
            "/../etc/passwd",
            "/pkg/../../x.js",
            "/.git/config",
            "//x.js",
            "/a\\b.js",
            "/x.sh",
            "/%2e%2e/x.js",
        ] {
            assert_eq!(static_file(www, bad), None, "{bad}");
        }
    }
}
