//! The proxy's upstream task: owns the connection to the server, makes and
//! remakes it as the core's [`Reconnect`] policy says, writes the proxy's
//! requests and feeds back the replies.

use super::ProxyHandle;
use bytes::BytesMut;
use kv_core::backoff::Lost;
use kv_core::Reconnect;
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

/// Runs forever.
pub(super) async fn run(handle: ProxyHandle, addr: SocketAddr) {
    let epoch = handle.epoch();
    let connect_timeout = Reconnect::connect_timeout(handle.request_timeout());
    let mut reconnect = Reconnect::new();
    loop {
        handle.handle_upstream_connecting();
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
                if reconnect.failures() > 0 {
                    info!("upstream reconnected");
                } else {
                    debug!("upstream connected");
                }
                reconnect.handle_connected(epoch.now());
                handle.handle_upstream_connected();
                match connection(&handle, stream).await {
                    End::Reset => {
                        warn!("upstream connection reset (request timed out or bad reply)");
                        reconnect.handle_reset(epoch.now())
                    }
                    End::Lost(reason) => {
                        match reconnect.handle_lost(epoch.now(), handle.upstream_idle()) {
                            Lost::Replace(at) => {
                                debug!(
                                    "upstream closed an idle connection ({reason}); replacing it"
                                );
                                at
                            }
                            Lost::Retry(at) => {
                                warn!("upstream connection lost: {reason}");
                                handle.handle_upstream_lost();
                                at
                            }
                        }
                    }
                }
            }
            Err(reason) => {
                // The first failure of a series is news; the retries are not.
                if reconnect.failures() > 0 {
                    debug!("cannot connect upstream: {reason}");
                } else {
                    warn!("cannot connect upstream: {reason}");
                }
                handle.handle_upstream_lost();
                reconnect.handle_failed(epoch.now())
            }
        };
        tokio::time::sleep_until(epoch.to_tokio(retry_at)).await;
    }
}

/// Drives one upstream connection until it fails or a reset is asked for.
/// Reading and writing run concurrently: writing only while not reading could
/// deadlock with a server that stops reading while its replies are not read.
async fn connection(handle: &ProxyHandle, mut stream: TcpStream) -> End {
    let (mut rd, mut wr) = stream.split();
    let reader = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return End::Lost("closed by the server".to_string()),
                Ok(_) => {
                    handle.handle_upstream_input(&buf);
                    buf.clear();
                }
                Err(e) => return End::Lost(e.to_string()),
            }
        }
    };
    let writer = async {
        loop {
            while let Some(out) = handle.poll_upstream_transmit() {
                if let Err(e) = wr.write_all(&out).await {
                    return End::Lost(e.to_string());
                }
            }
            handle.inner.upstream_ready.notified().await;
        }
    };
    let reset = async {
        loop {
            if handle.inner.reset_requested.get() {
                return End::Reset;
            }
            handle.inner.upstream_reset.notified().await;
        }
    };
    tokio::select! {
        end = reset => end,
        end = reader => end,
        end = writer => end,
    }
}
