//! The console listener: serves the page (`www/`, built into the binary or
//! read from a folder) at `/` and a WebSocket at
//! `/ws` whose clients are [`ClientKind::Messages`] clients of the same
//! proxy as the TCP clients: same cache, coalescing and limits. Each runs
//! the shared [connection loop](crate::conn).
//!
//! The message format and its rules are [`kv_core::bridge`]'s. Only pages
//! of an allowed origin may open the socket (see
//! [`origin_allowed`](crate::http::origin_allowed)), so a page on another
//! site cannot drive a local proxy through the user's browser.

use super::ProxyHandle;
use crate::conn::{self, Conn, Wake};
use crate::http;
use crate::runtime::net;
use crate::runtime::shutdown::Shutdown;
use futures_util::{SinkExt, StreamExt};
use kv_core::bridge::{self, BridgeReply, Inbound};
use kv_core::{ClientId, ClientKind, ConnConfig, End, Limits, Owed, Stall};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, Instrument};

/// Settings of the console listener.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder served at `/` (the console page and its `pkg/`), read on
    /// every request; `None` serves the copy of `www/` built into the
    /// binary.
    pub www_dir: Option<PathBuf>,
    /// Origins allowed besides the page's own (e.g. `http://localhost:3000`).
    pub allowed_origins: Vec<String>,
    /// Most concurrent HTTP/WebSocket connections.
    pub max_clients: usize,
    /// Close WebSocket clients that send nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// How much output may be held for one WebSocket client.
    pub output_limit: kv_core::OutputLimit,
}

/// The folder named by `$KV_WWW`, the default for `--www`; without it the
/// console built into the binary is served, which needs no source tree.
pub fn default_www_dir() -> Option<PathBuf> {
    std::env::var_os("KV_WWW")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Serves HTTP and WebSocket clients on `listener` until `shutdown`.
pub(super) async fn serve(
    handle: ProxyHandle,
    listener: TcpListener,
    options: HttpOptions,
    shutdown: Shutdown,
) {
    let options = Rc::new(options);
    net::accept_loop(
        listener,
        options.max_clients,
        shutdown,
        &HttpHooks(&handle),
        |stream, peer, shutdown| {
            serve_conn(handle.clone(), stream, options.clone(), shutdown)
                .instrument(tracing::debug_span!("console", %peer, id = tracing::field::Empty))
        },
    )
    .await;
}

/// The console listener's side of the accept loop: a refusal over the
/// client cap is an HTTP response, not a RESP error line.
struct HttpHooks<'a>(&'a ProxyHandle);

impl net::AcceptHooks for HttpHooks<'_> {
    fn rejected(&self) {
        self.0.rejected();
    }

    fn refusal(&self) -> &'static [u8] {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n"
    }
}

async fn serve_conn(
    handle: ProxyHandle,
    mut stream: TcpStream,
    options: Rc<HttpOptions>,
    shutdown: Shutdown,
) {
    let Some((head, rest)) = http::read_get(&mut stream).await else {
        return;
    };
    let (path, query) = head.path.split_once('?').unwrap_or((&head.path, ""));
    let wants_stats = query.split('&').any(|q| q == "stats=1");
    let path = path.to_owned();
    if path == "/ws" {
        return websocket(handle, stream, &head, rest, &options, wants_stats, shutdown).await;
    }
    if path == "/metrics" {
        let with_body = head.method == "GET";
        return crate::metrics::answer(&mut stream, &path, with_body, || handle.metrics()).await;
    }
    http::serve_file(&mut stream, options.www_dir.as_deref(), &head, &path).await;
}

async fn websocket(
    handle: ProxyHandle,
    mut stream: TcpStream,
    head: &http::Head,
    rest: Vec<u8>,
    options: &HttpOptions,
    wants_stats: bool,
    shutdown: Shutdown,
) {
    let key = head.header("Sec-WebSocket-Key").map(str::to_owned);
    let is_upgrade = head.header_has_token("Connection", "upgrade")
        && head.header_has_token("Upgrade", "websocket")
        && head.header("Sec-WebSocket-Version") == Some("13");
    let (true, Some(key)) = (is_upgrade, key) else {
        return http::respond_text(
            &mut stream,
            "400 Bad Request",
            b"expected a WebSocket upgrade (version 13)\n",
        )
        .await;
    };
    let origin = head.header("Origin");
    if !http::origin_allowed(origin, head.header("Host"), &options.allowed_origins) {
        info!(
            origin = origin.unwrap_or(""),
            "WebSocket refused: origin not allowed"
        );
        return http::respond_text(&mut stream, "403 Forbidden", b"origin not allowed\n").await;
    }
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let limits = handle.limits();
    let max = bridge::max_message(&limits);
    // Small buffers: an idle console costs a few KB rather than the
    // library's 128 KiB read buffer, and a reply leaves as soon as it is
    // sent (the loop flushes after each). A big message still grows the
    // read buffer as far as `max`, and gives the memory back with it.
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    debug!("WebSocket client connected");
    let mut client = WsClient::new(handle, ws, limits, wants_stats);
    // Known only once the connection is a WebSocket (not a page request).
    tracing::Span::current().record("id", client.id.0);
    let policy = ConnConfig {
        idle_timeout: options.idle_timeout,
        output_limit: options.output_limit,
        // A WebSocket that closed cannot be written to: nothing to wait for.
        half_close_wait: Duration::ZERO,
    };
    let epoch = client.handle.epoch();
    conn::drive(&mut client, policy, epoch, shutdown).await;
}

/// One WebSocket client of the proxy.
struct WsClient {
    handle: ProxyHandle,
    id: ClientId,
    notify: Rc<Notify>,
    ws: WebSocketStream<TcpStream>,
    limits: Limits,
    /// For a socket that asked for the proxy's figures (`/ws?stats=1`):
    /// when to send the next, and whether it is due.
    stats: Option<tokio::time::Interval>,
    stats_due: bool,
}

/// The WebSocket read buffer each connection starts with.
const WS_READ_BUFFER: usize = 4 * 1024;

/// The close code for a WebSocket error, as RFC 6455 names them: 1009 for a
/// message over the limit, 1007 for text that is not UTF-8, 1002 for any
/// other breach of the protocol; `None` when the connection itself failed
/// (nothing can be sent then).
fn close_code(e: &WsError) -> Option<CloseCode> {
    match e {
        WsError::Capacity(_) => Some(CloseCode::Size),
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        _ => None,
    }
}

/// How often a socket that asked for them gets the proxy's figures.
const STATS_EVERY: Duration = Duration::from_secs(1);

impl WsClient {
    fn new(
        handle: ProxyHandle,
        ws: WebSocketStream<TcpStream>,
        limits: Limits,
        wants_stats: bool,
    ) -> Self {
        let (id, notify) = handle.add_client(ClientKind::Messages);
        let stats = wants_stats.then(|| {
            let mut every = tokio::time::interval(STATS_EVERY);
            // A socket that could not keep up gets the latest figures, not
            // a burst of old ones.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            every
        });
        WsClient {
            handle,
            id,
            notify,
            ws,
            limits,
            stats,
            stats_due: false,
        }
    }

    /// Closes the socket with the code of a WebSocket error, if it has one.
    async fn close_for(&mut self, e: &WsError) {
        let Some(code) = close_code(e) else { return };
        debug!(%e, code = u16::from(code), "closing the WebSocket");
        let reason: String = e.to_string().chars().take(120).collect();
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Bounded: a peer that broke the protocol may not take the close
        // frame either.
        let close = tokio::time::timeout(net::CLOSE_GRACE, self.ws.close(Some(frame)));
        let _ = Box::pin(close).await;
        // Then read what the peer is still sending (a large message's
        // rest): closing on unread input would reset the connection, and
        // the peer could lose the close frame with its code.
        net::close_gently(self.ws.get_mut()).await;
    }

    /// Hands one browser message to the proxy, or its refusal.
    fn handle_message(&mut self, inbound: Inbound<'_>) {
        match inbound {
            Inbound::Input(bytes) => self.handle.handle_client_input(self.id, &bytes),
            Inbound::Refused(why) => self.handle.reject_client_input(self.id, &why),
        }
    }
}

/// Completes at the interval's next tick; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Removes the client however the session ends.
impl Drop for WsClient {
    fn drop(&mut self) {
        self.handle.remove_client(self.id);
    }
}

impl Conn for WsClient {
    type Output = Message;

    fn poll_output(&mut self) -> Option<Message> {
        if std::mem::take(&mut self.stats_due) {
            return Some(Message::text(self.handle.snapshot().to_json()));
        }
        if self.handle.client_status(self.id).resumable {
            self.handle.handle_client_resume(self.id);
        }
        let reply = self.handle.poll_client_reply(self.id)?;
        Some(Message::text(BridgeReply::from_annotated(&reply).to_json()))
    }

    async fn write(&mut self, output: Message) -> io::Result<()> {
        self.ws.send(output).await.map_err(io::Error::other)
    }

    fn output_len(output: &Message) -> usize {
        output.len()
    }

    /// Replies go out one message at a time: nothing else is held.
    fn held(&self) -> usize {
        0
    }

    async fn wait(&mut self, reading: bool) -> io::Result<Wake> {
        tokio::select! {
            biased;
            _ = self.notify.notified() => Ok(Wake::Session),
            _ = tick(&mut self.stats) => {
                self.stats_due = true;
                Ok(Wake::Session)
            }
            msg = self.ws.next(), if reading => match msg {
                None | Some(Ok(Message::Close(_))) => Ok(Wake::Eof),
                Some(Err(e)) => {
                    self.close_for(&e).await;
                    Err(io::Error::other(e))
                }
                Some(Ok(Message::Text(text))) => {
                    self.handle_message(bridge::inbound_text(text.as_str(), &self.limits));
                    Ok(Wake::Input)
                }
                Some(Ok(Message::Binary(data))) => {
                    self.handle_message(bridge::inbound_binary(&data, &self.limits));
                    Ok(Wake::Input)
                }
                // Pings are answered by the socket layer on the next flush.
                Some(Ok(_)) => Ok(Wake::Input),
            },
        }
    }

    fn wants_input(&self) -> bool {
        self.handle.client_status(self.id).wants_input
    }

    fn owed(&self) -> Owed {
        self.handle.client_status(self.id).owed()
    }

    async fn close(&mut self, end: End) {
        if end == End::OutputLimit {
            self.handle
                .update_stats(|s| s.output_limit_disconnections += 1);
            debug!("WebSocket client over its output-buffer limit: disconnected");
            // Its closing frame would wait behind the output it holds.
            return;
        }
        if let End::TimedOut(stall) = end {
            self.handle.update_stats(|s| s.connections_timed_out += 1);
            if stall == Stall::Output {
                // The closing frame would wait behind output the browser
                // does not take.
                return;
            }
        }
        // Flushing the closing frame waits for the peer: bounded, so that a
        // peer that stops reading cannot keep the client's slot.
        let _ = Box::pin(tokio::time::timeout(net::CLOSE_GRACE, self.ws.close(None))).await;
    }
}
