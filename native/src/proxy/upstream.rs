//! The proxy's upstream task: owns the connection to the server, makes and
//! remakes it as the core's [`Reconnect`] policy says, writes the proxy's
//! requests and feeds back the replies.
//!
//! A failure is logged when it is news (the first of a series, or a new
//! cause) and a recovery once; retries with the same cause are only
//! debug lines, so a refused password does not flood the log.

use super::ProxyHandle;
use bytes::BytesMut;
use kv_core::backoff::Lost;
use kv_core::{Lane, Reconnect, UpstreamError, UpstreamServer, UpstreamTracking};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// Room made in the upstream receive buffer before each read: replies for
/// many clients arrive together.
const READ_CHUNK: usize = 64 * 1024;

/// Why an upstream connection ended.
enum End {
    /// The proxy asked for a reset; it has already failed what was in flight.
    Reset,
    /// The connection failed or was closed by the server.
    Lost(String),
}

/// An upstream error as a log line says it: without the reply's code word.
fn cause_of(e: &UpstreamError) -> String {
    let text = e.to_string();
    text.strip_prefix("ERR ").unwrap_or(&text).to_owned()
}

/// Logs a failure at `warn` if it is news, else at `debug`.
fn report_failure(reconnect: &mut Reconnect, cause: &str) {
    if reconnect.note_failure(cause) {
        warn!("{cause}; retrying with backoff");
    } else {
        debug!("again: {cause}");
    }
}

/// Logs what the server answered on tracking, when it is news: a warning
/// for a refusal (or another cause of one), a line when it tracks again.
fn report_tracking(handle: &ProxyHandle, lane: Lane, last: &mut Option<UpstreamTracking>) {
    let Some(now) = handle.tracking_news(lane, last.as_ref()) else {
        return;
    };
    match &now {
        UpstreamTracking::Fallback(why) => warn!(
            "upstream refused client tracking ({why}); caching by --cache-ttl only on this connection"
        ),
        _ => info!("upstream tracks what the proxy reads: cached keys are dropped as they change"),
    }
    *last = Some(now);
}

/// Logs which server the proxy is in front of, when it is news: what
/// works through the proxy depends on it (kv's own commands need kv).
fn report_server(handle: &ProxyHandle, last: &mut Option<UpstreamServer>) {
    let Some(now) = handle.server_news(last.as_ref()) else {
        return;
    };
    match &now {
        UpstreamServer::Kv { version } => info!("upstream is kv {version}"),
        other => info!(
            "upstream is {} {} (not kv: kv's own commands, such as DUMP of every pair, are refused)",
            other.name(),
            other.version()
        ),
    }
    *last = Some(now);
}

/// Runs the lane's connection forever.
pub(super) async fn run(handle: ProxyHandle, addr: SocketAddr, lane: Lane) {
    let epoch = handle.epoch();
    let connect_timeout = Reconnect::connect_timeout(handle.request_timeout());
    let mut reconnect = Reconnect::new(handle.reconnect_seed());
    let mut tracking = None;
    let mut server = None;
    loop {
        if lane == Lane::Bulk {
            // The bulk lane connects once the server has accepted the main
            // lane: a server that refuses the proxy (its password, its
            // client cap) is tried by one connection, at the backoff's pace.
            while !handle.upstream_verified(Lane::Main) {
                handle.wake(lane).main_verified.notified().await;
            }
        }
        handle.handle_upstream_connecting(lane);
        let connected = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connection timed out".to_string()),
        };
        let retry_at = match connected {
            Ok(stream) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!("cannot set TCP_NODELAY upstream: {e}");
                }
                debug!("upstream connected");
                reconnect.handle_connected(epoch.now());
                handle.handle_upstream_connected(lane);
                if lane == Lane::Main && handle.upstream_verified(lane) {
                    // No handshake to wait for.
                    handle.wake(Lane::Bulk).main_verified.notify_one();
                }
                let mut news = News {
                    tracking: &mut tracking,
                    server: &mut server,
                };
                let end = connection(&handle, stream, &mut reconnect, &mut news, lane).await;
                // Whatever comes next, what was cached through a tracked
                // connection goes now: its invalidations stopped with it.
                handle.handle_upstream_closed(lane);
                // With no handshake, a connection that ends without a
                // refusal counts as accepted (idle ones are closed unread).
                if handle.upstream_verified(lane) {
                    reconnect.handle_verified();
                }
                // A refusal the proxy saw on the connection is the real
                // cause, whichever way the connection then ended.
                let refusal = handle
                    .upstream_fault(lane)
                    .filter(UpstreamError::is_refusal);
                match end {
                    End::Reset => {
                        let cause = handle.upstream_fault(lane).map_or_else(
                            || "upstream connection reset".to_owned(),
                            |e| format!("{}; connection reset", cause_of(&e)),
                        );
                        report_failure(&mut reconnect, &cause);
                        reconnect.handle_reset(epoch.now())
                    }
                    End::Lost(reason) => {
                        match reconnect.handle_lost(epoch.now(), handle.upstream_idle()) {
                            Lost::Replace(at) => {
                                match &refusal {
                                    Some(e) => report_failure(&mut reconnect, &cause_of(e)),
                                    None => debug!(
                                        "upstream closed an idle connection ({reason}); replacing it"
                                    ),
                                }
                                at
                            }
                            Lost::Retry(at) => {
                                let cause = refusal.as_ref().map_or_else(
                                    || format!("upstream connection lost: {reason}"),
                                    cause_of,
                                );
                                report_failure(&mut reconnect, &cause);
                                handle.handle_upstream_lost(lane);
                                at
                            }
                        }
                    }
                }
            }
            Err(reason) => {
                report_failure(
                    &mut reconnect,
                    &format!("cannot connect upstream: {reason}"),
                );
                handle.handle_upstream_lost(lane);
                reconnect.handle_failed(epoch.now())
            }
        };
        tokio::time::sleep_until(epoch.to_tokio(retry_at)).await;
    }
}

/// What the lane last logged about its server, so that each connection
/// logs only what changed.
struct News<'a> {
    tracking: &'a mut Option<UpstreamTracking>,
    server: &'a mut Option<UpstreamServer>,
}

/// Drives one upstream connection until it fails or a reset is asked for.
/// Reading and writing run concurrently: writing only while not reading could
/// deadlock with a server that stops reading while its replies are not read.
async fn connection(
    handle: &ProxyHandle,
    mut stream: TcpStream,
    reconnect: &mut Reconnect,
    news: &mut News<'_>,
    lane: Lane,
) -> End {
    let (mut rd, mut wr) = stream.split();
    let reader = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut verified = false;
        loop {
            while !handle.upstream_wants_input(lane) {
                handle.wake(lane).readable.notified().await;
            }
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return End::Lost("closed by the server".to_string()),
                Ok(_) => {
                    handle.handle_upstream_input(lane, &buf);
                    buf.clear();
                    report_tracking(handle, lane, news.tracking);
                    if lane == Lane::Main {
                        report_server(handle, news.server);
                    }
                    // Only a server that answered properly ends the backoff:
                    // one that accepts and then refuses is still failing.
                    if !verified && handle.upstream_verified(lane) {
                        verified = true;
                        if lane == Lane::Main {
                            handle.wake(Lane::Bulk).main_verified.notify_one();
                        }
                        reconnect.handle_verified();
                        if reconnect.note_recovered() {
                            info!("upstream connection works again");
                        }
                    }
                    if lane == Lane::Bulk {
                        // A large reply arrives as fast as the server writes
                        // it: the clients (and the main lane) go between
                        // two of its reads.
                        crate::runtime::let_others_run().await;
                    }
                }
                Err(e) => return End::Lost(e.to_string()),
            }
        }
    };
    let writer = async {
        loop {
            while let Some(out) = handle.poll_upstream_transmit(lane) {
                if let Err(e) = wr.write_all(&out).await {
                    return End::Lost(e.to_string());
                }
            }
            handle.wake(lane).ready.notified().await;
        }
    };
    let reset = async {
        loop {
            if handle.wake(lane).reset_requested.get() {
                return End::Reset;
            }
            handle.wake(lane).reset.notified().await;
        }
    };
    tokio::select! {
        end = reset => end,
        end = reader => end,
        end = writer => end,
    }
}
