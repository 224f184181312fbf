//! The server driver: moves bytes between client sockets and one
//! [`kv_core::Server`]. All protocol logic lives in the core.
//!
//! One task per connection, all on one thread; the store is shared through
//! an `Rc<RefCell<…>>` and borrowed only between awaits.

use crate::net::{self, AcceptHooks};
use crate::shutdown::Shutdown;
use crate::time::IdleTimer;
use kv_core::{Limits, Server, ServerConfig, ServerConnection};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// How much room is made in the receive buffer before each read: enough for
/// a deep pipeline of small commands in one system call.
pub const READ_CHUNK: usize = 16 * 1024;

/// Settings of the server driver.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Most concurrent connections; the next ones are refused.
    pub max_clients: usize,
    /// Close connections that send nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Input limits per connection.
    pub limits: Limits,
    /// Seed for the store's hash function.
    pub hash_seed: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_clients: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            limits: Limits::default(),
            hash_seed: 0,
        }
    }
}

/// The state shared by the connections of one server.
struct Shared {
    server: RefCell<Server>,
    limits: Limits,
    idle_timeout: Option<Duration>,
}

impl AcceptHooks for Shared {
    fn rejected(&self) {
        self.server.borrow_mut().stats_mut().connections_rejected += 1;
    }
}

/// Serves on `listener` until `shutdown`, then drains the connections.
/// Must run inside a `LocalSet`.
pub async fn run(listener: TcpListener, options: ServerOptions, shutdown: Shutdown) {
    let shared = Rc::new(Shared {
        server: RefCell::new(Server::new(ServerConfig {
            limits: options.limits,
            hash_seed: options.hash_seed,
        })),
        limits: options.limits,
        idle_timeout: options.idle_timeout,
    });
    let hooks = shared.clone();
    net::accept_loop(
        listener,
        options.max_clients,
        shutdown,
        &*hooks,
        |stream, peer, shutdown| serve_connection(shared.clone(), stream, peer, shutdown),
    )
    .await;
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed, or the socket failed.
    Closed,
    /// `QUIT` or a fatal protocol error.
    Finished,
    /// Nothing received for the idle timeout.
    TimedOut,
    /// The server is shutting down.
    Shutdown,
}

/// Keeps `connections_current` right however the task ends.
struct ConnectionCount(Rc<Shared>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        if let Ok(mut server) = self.0.server.try_borrow_mut() {
            let stats = server.stats_mut();
            stats.connections_current = stats.connections_current.saturating_sub(1);
        }
    }
}

async fn serve_connection(
    shared: Rc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: Shutdown,
) {
    {
        let mut server = shared.server.borrow_mut();
        let stats = server.stats_mut();
        stats.connections_total += 1;
        stats.connections_current += 1;
    }
    let _count = ConnectionCount(shared.clone());
    debug!(%peer, "connection accepted");
    let mut conn = ServerConnection::new(shared.limits);
    let mut idle = IdleTimer::new(shared.idle_timeout);
    let end = loop {
        // Checked here as well as in the select below, where a client that
        // keeps sending would always win the race against the request.
        if shutdown.is_requested() {
            break End::Shutdown;
        }
        conn.read_buffer().reserve(READ_CHUNK);
        tokio::select! {
            biased;
            read = stream.read_buf(conn.read_buffer()) => match read {
                Ok(0) => break End::Closed,
                Ok(_) => idle.touch(),
                Err(e) => {
                    debug!(%peer, "read failed: {e}");
                    break End::Closed;
                }
            },
            // Everything received so far has been answered (replies are
            // written before the next read), so there is nothing to drain.
            _ = shutdown.requested() => break End::Shutdown,
            _ = idle.expired() => break End::TimedOut,
        }
        // Replies to everything read, one write per batch; when the output
        // reached the core's high-water mark, the rest is processed after
        // the write.
        let written = loop {
            conn.process(&mut shared.server.borrow_mut());
            if let Some(out) = conn.poll_transmit() {
                let write = tokio::select! {
                    biased;
                    w = stream.write_all(&out) => w.map_err(|e| e.to_string()),
                    _ = idle.expired() => Err("write stalled".to_string()),
                };
                if let Err(e) = write {
                    debug!(%peer, "write failed: {e}");
                    break false;
                }
                idle.touch();
            }
            if !conn.has_backlog() {
                break true;
            }
        };
        if !written {
            break End::Closed;
        }
        if conn.should_close() {
            break End::Finished;
        }
    };
    if end == End::TimedOut {
        shared.server.borrow_mut().stats_mut().connections_timed_out += 1;
        debug!(%peer, mid_command = conn.is_mid_command(), "connection timed out");
    }
    if matches!(end, End::Finished | End::Shutdown) {
        net::close_gently(&mut stream).await;
    }
    debug!(%peer, ?end, "connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{self, ShutdownTrigger};
    use tokio::task::LocalSet;

    async fn start(options: ServerOptions) -> (SocketAddr, ShutdownTrigger) {
        let listener = net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = shutdown::channel();
        tokio::task::spawn_local(run(listener, options, shutdown));
        (addr, trigger)
    }

    async fn read_until_closed(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_a_telnet_transcript_and_closes_on_quit() {
        LocalSet::new()
            .run_until(async {
                let (addr, _stop) = start(ServerOptions::default()).await;
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(
                    b"PUT name Derek Moss\r\nput age 18\r\nGET name\r\nQUIT\r\nGET age\r\n",
                )
                .await
                .unwrap();
                assert_eq!(
                    read_until_closed(&mut s).await,
                    "OK\r\nOK\r\n\"Derek Moss\"\r\nOK\r\n"
                );
            })
            .await;
    }

    #[tokio::test]
    async fn refuses_clients_over_the_cap_and_closes_idle_ones() {
        LocalSet::new()
            .run_until(async {
                let (addr, _stop) = start(ServerOptions {
                    max_clients: 1,
                    idle_timeout: Some(Duration::from_millis(300)),
                    ..ServerOptions::default()
                })
                .await;
                let mut first = TcpStream::connect(addr).await.unwrap();
                first.write_all(b"PING\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = first.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], b"PONG\r\n");
                let mut second = TcpStream::connect(addr).await.unwrap();
                assert_eq!(
                    read_until_closed(&mut second).await.as_bytes(),
                    net::MAX_CLIENTS_REPLY
                );
                // Stalled in the middle of a line: closed all the same.
                first.write_all(b"GET na").await.unwrap();
                let started = tokio::time::Instant::now();
                assert_eq!(read_until_closed(&mut first).await, "");
                assert!(started.elapsed() >= Duration::from_millis(250));
                let mut third = TcpStream::connect(addr).await.unwrap();
                third.write_all(b"INFO\r\n").await.unwrap();
                let mut info = vec![0u8; 4096];
                let mut len = 0;
                while !String::from_utf8_lossy(&info[..len]).contains("connections_timed_out:") {
                    len += third.read(&mut info[len..]).await.unwrap();
                }
                let text = String::from_utf8_lossy(&info[..len]);
                assert!(text.contains("connections_rejected:1"), "{text}");
                assert!(text.contains("connections_timed_out:1"), "{text}");
            })
            .await;
    }

    #[tokio::test]
    async fn shutdown_closes_connections_after_their_replies() {
        LocalSet::new()
            .run_until(async {
                let listener = net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = listener.local_addr().unwrap();
                let (trigger, shutdown) = shutdown::channel();
                let server =
                    tokio::task::spawn_local(run(listener, ServerOptions::default(), shutdown));
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"PING\r\n").await.unwrap();
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], b"PONG\r\n");
                trigger.trigger();
                assert_eq!(read_until_closed(&mut s).await, "");
                tokio::time::timeout(Duration::from_secs(3), server)
                    .await
                    .expect("server stops within the grace period")
                    .unwrap();
                assert!(TcpStream::connect(addr).await.is_err());
            })
            .await;
    }
}
