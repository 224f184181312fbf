//! Listener helpers shared by the server and the proxy: binding, the accept
//! loop with its client cap, and the graceful drain at shutdown.

use super::shutdown::{Shutdown, GRACE_PERIOD};
use kv_core::errors::MAX_CLIENTS_REPLY;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Pending connections the kernel may queue before we accept them. The
/// default of `std` (128) overflows when hundreds of clients connect at once,
/// as benchmarks do; Redis uses 511.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket. Must be called inside a Tokio runtime.
///
/// `SO_REUSEADDR` is set so that a restarted server can take its port back
/// while connections of the previous run linger in `TIME_WAIT`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit, so that thousands
/// of concurrent connections do not run out of descriptors (the usual soft
/// limit is 1024). Failure is logged, not fatal.
pub fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => debug!(limit, "open file limit"),
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }
}

/// Counts live connections; the count drops when the guard of a connection
/// is dropped, however its task ends (finished, failed or aborted).
#[derive(Debug)]
struct ActiveGuard(Rc<Cell<usize>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// What the accept loop reports to its service, for the `INFO` counters.
pub trait AcceptHooks {
    /// A connection was refused because `max_clients` were connected.
    fn rejected(&self);

    /// What a refused connection is told before it is closed: Redis's
    /// error line, unless the listener speaks another protocol.
    fn refusal(&self) -> &'static [u8] {
        MAX_CLIENTS_REPLY
    }
}

/// Accepts connections until shutdown and runs `handle` for each on the
/// current `LocalSet`; then stops accepting and gives the connections
/// [`GRACE_PERIOD`] to finish before aborting them.
///
/// A connection past `max_clients` is answered with [`MAX_CLIENTS_REPLY`]
/// and closed. Every accepted socket gets `TCP_NODELAY`: replies are small
/// and a client waits for each one, so Nagle's algorithm would only add
/// latency.
pub async fn accept_loop<H, F, Fut>(
    listener: TcpListener,
    max_clients: usize,
    mut shutdown: Shutdown,
    hooks: &H,
    mut handle: F,
) where
    H: AcceptHooks + ?Sized,
    F: FnMut(TcpStream, SocketAddr, Shutdown) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let active = Rc::new(Cell::new(0usize));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!("connection task panicked: {e}");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    if active.get() >= max_clients {
                        hooks.rejected();
                        debug!(%peer, "connection rejected: max clients reached");
                        tokio::task::spawn_local(reject(stream, hooks.refusal()));
                        continue;
                    }
                    active.set(active.get() + 1);
                    let guard = ActiveGuard(active.clone());
                    let conn = handle(stream, peer, shutdown.clone());
                    tasks.spawn_local(async move {
                        let _guard = guard;
                        conn.await;
                    });
                }
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: accepting
                    // again at once would fail the same way, so pause a
                    // little instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    if !tasks.is_empty() {
        debug!(connections = tasks.len(), "draining connections");
        let drained = tokio::time::timeout(GRACE_PERIOD, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = tasks.len(),
                "connections still busy after the grace period; closing them"
            );
            tasks.shutdown().await;
        }
    }
}

/// How long a closing connection may take to say goodbye (its last write,
/// the peer's close) before it is simply dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Tells a client over the cap why it is refused, then closes gently.
async fn reject(mut stream: TcpStream, refusal: &'static [u8]) {
    let written = tokio::time::timeout(CLOSE_GRACE, stream.write_all(refusal)).await;
    if matches!(written, Ok(Ok(()))) {
        close_gently(&mut stream).await;
    }
}

/// Closes the write side, then waits (a second at most) for the client to
/// close, discarding what it still sends. Closing a socket with unread input
/// makes the kernel send a reset, which can destroy the last replies before
/// the client reads them; this gives it the time to.
pub async fn close_gently(stream: &mut TcpStream) {
    // Boxed: only a closing connection should pay for the timer's room,
    // not every connection's task for its whole life.
    let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
        stream.shutdown().await?;
        loop {
            stream.readable().await?;
            if let ReadOutcome::Closed = read_ready(stream, |_| {})? {
                return io::Result::Ok(());
            }
        }
    }))
    .await;
}

/// Size of each service thread's read buffer: enough for a deep pipeline of
/// small commands, or a good slice of a large value, in one system call.
pub const READ_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// One read buffer per service thread, shared by its connections: a
    /// buffer of their own, reserved while they wait for input, would cost
    /// every idle connection its full size. The connections of a thread
    /// run one at a time, and none holds the buffer across an `await`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice());
}

/// What one non-blocking read of a socket found.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Bytes were handed over.
    Data,
    /// The peer closed its side.
    Closed,
    /// Nothing to read after all (the readiness was stale): wait again.
    NotReady,
}

/// Whether a short read proves the socket drained. True where mio waits
/// with epoll or kqueue, which report new data whatever was read before;
/// elsewhere (Windows) the registration is re-armed only by a read that
/// fails with `WouldBlock`, so the readiness must not be cleared without one.
/// The same condition as Tokio's own `read`.
const SHORT_READ_DRAINS: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
));

/// Reads what `stream` has ready into the thread's shared buffer and hands
/// the bytes to `consume`, which must copy what it keeps. Call it once
/// [`TcpStream::readable`] completes.
///
/// A read that leaves room in the buffer has drained the socket, so the
/// readiness is cleared then, as Tokio's own `read` does: otherwise the next
/// wait would return at once and cost a read that finds nothing, one extra
/// system call per request. The clear happens inside `try_io`, which only
/// clears the readiness it saw before the read, so data that arrives
/// during the read still wakes the connection.
pub fn read_ready(stream: &TcpStream, consume: impl FnOnce(&[u8])) -> io::Result<ReadOutcome> {
    SCRATCH.with_borrow_mut(|buf| {
        let mut got = 0;
        let read = stream.try_io(Interest::READABLE, || {
            got = stream.try_read(buf)?;
            if SHORT_READ_DRAINS && got > 0 && got < buf.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match read {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ if got > 0 => {
                consume(&buf[..got]);
                Ok(ReadOutcome::Data)
            }
            Ok(()) => Ok(ReadOutcome::Closed),
            Err(_) => Ok(ReadOutcome::NotReady),
        }
    })
}
