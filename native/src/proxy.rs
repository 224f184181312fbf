//! The proxy driver: moves bytes between client sockets, one upstream
//! connection and one [`kv_core::Proxy`]. All protocol and cache logic lives
//! in the core.
//!
//! # Tasks (all on one thread)
//! - one per client ([`ClientKind::Stream`]): reads requests, feeds them to
//!   the proxy, writes what the proxy has for it; also woken by its
//!   [`Notify`] when replies from upstream complete its output;
//! - the upstream task: connects (and reconnects with backoff), writes the
//!   proxy's upstream bytes and feeds back the replies;
//! - the timer task: sleeps until [`Proxy::poll_timeout`] and calls
//!   [`Proxy::handle_timeout`].
//!
//! They share a [`ProxyHandle`], which also does the drain the core asks for
//! after every input (its module docs give the order): events wake client
//! tasks or reset the upstream connection, pending upstream bytes wake the
//! upstream task, and an earlier deadline wakes the timer. A WebSocket bridge
//! can join as one more kind of client ([`ClientKind::Messages`]): it gets
//! the handle from [`start`], runs next to [`serve_stream_clients`], and uses
//! [`ProxyHandle::add_client`], [`ProxyHandle::feed_client`],
//! [`ProxyHandle::take_reply`] and [`ProxyHandle::remove_client`] as the TCP
//! client tasks here do with their bytes.

use crate::net::{self, AcceptHooks, ReadOutcome};
use crate::shutdown::Shutdown;
use crate::time::{Clock, IdleTimer};
use bytes::BytesMut;
use kv_core::{
    AnnotatedReply, CacheConfig, ClientId, ClientKind, Limits, Proxy, ProxyConfig, ProxyEvent,
    ProxyStats,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Room made in the upstream receive buffer before each read: replies for
/// many clients arrive together.
const UPSTREAM_READ_CHUNK: usize = 64 * 1024;
/// First delay before reconnecting to the upstream server.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// An upstream connection closed while idle after living at least this long
/// is replaced at once; one closed sooner is taken as a failing server.
const IDLE_CLOSE_MIN_AGE: Duration = Duration::from_secs(1);

/// Settings of the proxy driver.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The server to forward to.
    pub upstream: SocketAddr,
    /// Most concurrent client connections; the next ones are refused.
    pub max_clients: usize,
    /// Close clients that send nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// The core's settings (limits, cache, request timeout, hash seed).
    pub proxy: ProxyConfig,
    /// The browser console and WebSocket bridge, if served.
    pub http: Option<crate::bridge::HttpOptions>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            upstream: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_clients: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            proxy: ProxyConfig {
                limits: Limits::default(),
                cache: CacheConfig::default(),
                ..ProxyConfig::default()
            },
            http: None,
        }
    }
}

/// The proxy machine and the wake-ups of the tasks that drive it.
struct Inner {
    proxy: RefCell<Proxy>,
    clock: Clock,
    /// Each client task's wake-up, for [`ProxyEvent::ClientReady`].
    clients: RefCell<HashMap<ClientId, Rc<Notify>>>,
    /// Wakes the upstream writer: requests are queued.
    upstream_ready: Notify,
    /// Wakes the upstream task to drop its connection.
    upstream_reset: Notify,
    /// Set with `upstream_reset`; cleared when a new connection is made, as
    /// a reset asked while no connection is up has nothing left to reset.
    reset_requested: Cell<bool>,
    /// Wakes the timer task: the deadline may have moved earlier.
    timer_wake: Notify,
    /// The deadline the timer task sleeps until (`None`: no deadline).
    timer_armed: Cell<Option<kv_core::Instant>>,
    /// Signalled when no request awaits the upstream server, for clients
    /// that stopped reading and wait to have been answered.
    upstream_drained: Notify,
    /// How many wait on `upstream_drained`; only then is it signalled.
    drain_waiters: Cell<usize>,
    /// The core's request timeout: by then every request has an outcome.
    request_timeout: Duration,
}

/// Shared access to a running proxy, for every kind of client driver.
///
/// Cloning is cheap (an `Rc`). Every method borrows the machine only for its
/// own duration, so none may be called while another is running (which
/// single-threaded code cannot do anyway).
#[derive(Clone)]
pub struct ProxyHandle {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle").finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// A proxy with no clients and no upstream connection yet.
    pub fn new(config: ProxyConfig, clock: Clock) -> Self {
        let request_timeout = config.request_timeout;
        ProxyHandle {
            inner: Rc::new(Inner {
                proxy: RefCell::new(Proxy::new(config, clock.now())),
                clock,
                clients: RefCell::new(HashMap::new()),
                upstream_ready: Notify::new(),
                upstream_reset: Notify::new(),
                reset_requested: Cell::new(false),
                timer_wake: Notify::new(),
                timer_armed: Cell::new(None),
                upstream_drained: Notify::new(),
                drain_waiters: Cell::new(0),
                request_timeout,
            }),
        }
    }

    /// The clock the proxy runs on.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Registers a client. The returned [`Notify`] is signalled whenever the
    /// client has output to take ([`ProxyHandle::take_output`] or
    /// [`ProxyHandle::take_reply`]) or must be closed.
    pub fn add_client(&self, kind: ClientKind) -> (ClientId, Rc<Notify>) {
        let now = self.inner.clock.now();
        let id = self.inner.proxy.borrow_mut().add_client(kind, now);
        let notify = Rc::new(Notify::new());
        self.inner.clients.borrow_mut().insert(id, notify.clone());
        (id, notify)
    }

    /// Forgets a client; replies still owed to it are dropped.
    pub fn remove_client(&self, id: ClientId) {
        self.inner.clients.borrow_mut().remove(&id);
        self.inner.proxy.borrow_mut().remove_client(id);
    }

    /// Feeds bytes received from a client (empty to resume processing after
    /// [`ProxyHandle::client_wants_input`] turned true again). The caller
    /// should take the client's output right after: its own wake-up is not
    /// signalled for output this call produced.
    pub fn feed_client(&self, id: ClientId, data: &[u8]) {
        let now = self.inner.clock.now();
        let queued_upstream = {
            let mut proxy = self.inner.proxy.borrow_mut();
            let before = proxy.upstream_in_flight();
            proxy.handle_client_input(id, data, now);
            proxy.upstream_in_flight() > before
        };
        self.drain(Some(id), queued_upstream);
    }

    /// Encoded output for a [`ClientKind::Stream`] client.
    pub fn take_output(&self, id: ClientId) -> Option<BytesMut> {
        self.inner.proxy.borrow_mut().poll_client_transmit(id)
    }

    /// The next reply for a [`ClientKind::Messages`] client.
    pub fn take_reply(&self, id: ClientId) -> Option<AnnotatedReply> {
        self.inner.proxy.borrow_mut().poll_client_reply(id)
    }

    /// Whether the proxy wants more input from this client (false while it
    /// owes too many replies: stop reading, which throttles the client).
    pub fn client_wants_input(&self, id: ClientId) -> bool {
        self.inner.proxy.borrow().client_wants_input(id)
    }

    /// Whether the client should be closed now (after `QUIT` or a fatal
    /// protocol error, once its output was taken).
    pub fn client_should_close(&self, id: ClientId) -> bool {
        self.inner.proxy.borrow().client_should_close(id)
    }

    /// Answers, in order with its other replies, input the transport
    /// refused (a WebSocket message too large or not one command).
    pub fn reject_input(&self, id: ClientId, message: &str) {
        let now = self.inner.clock.now();
        self.inner
            .proxy
            .borrow_mut()
            .reject_client_input(id, message, now);
        self.drain(Some(id), false);
    }

    /// The input limits clients are held to.
    pub fn limits(&self) -> Limits {
        self.inner.proxy.borrow().config().limits
    }

    /// Whether the client stopped in the middle of a command.
    pub fn client_is_mid_command(&self, id: ClientId) -> bool {
        self.inner.proxy.borrow().client_is_mid_command(id)
    }

    /// Updates the proxy's counters (the connection counters are the
    /// driver's to keep).
    pub fn update_stats(&self, f: impl FnOnce(&mut ProxyStats)) {
        f(self.inner.proxy.borrow_mut().stats_mut());
    }

    /// Whether no request awaits the upstream server: at shutdown, a client
    /// whose output is drained has then received every reply it is owed.
    pub fn upstream_idle(&self) -> bool {
        self.inner.proxy.borrow().upstream_in_flight() == 0
    }

    /// Completes once no request awaits the upstream server. A client that
    /// stopped reading (it half-closed, or the proxy shuts down) and whose
    /// output is drained has then received every reply it is owed.
    ///
    /// The core does not say how many replies one client is still owed, so
    /// this waits for all clients' requests; [`ProxyHandle::settle_time`]
    /// bounds the wait.
    pub async fn upstream_idle_wait(&self) {
        if self.upstream_idle() {
            return;
        }
        let inner = &*self.inner;
        // Created before any await, so no signal can slip in between the
        // check above and the registration.
        let notified = inner.upstream_drained.notified();
        inner.drain_waiters.set(inner.drain_waiters.get() + 1);
        struct Waiting<'a>(&'a Cell<usize>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get().saturating_sub(1));
            }
        }
        let _waiting = Waiting(&inner.drain_waiters);
        notified.await;
    }

    /// How long after its last request a client has surely got an outcome
    /// for each one: the request timeout, plus slack for the timer.
    pub fn settle_time(&self) -> Duration {
        self.inner.request_timeout + Duration::from_millis(100)
    }

    /// Bytes to write upstream, if connected.
    fn take_upstream_output(&self) -> Option<BytesMut> {
        self.inner.proxy.borrow_mut().poll_upstream_transmit()
    }

    fn upstream_input(&self, data: &[u8]) {
        let now = self.inner.clock.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_upstream_input(data, now);
        self.drain(None, false);
    }

    fn upstream_connecting(&self) {
        let now = self.inner.clock.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_upstream_connecting(now);
    }

    fn upstream_connected(&self) {
        let now = self.inner.clock.now();
        self.inner.reset_requested.set(false);
        self.inner.proxy.borrow_mut().handle_upstream_connected(now);
        // Requests queued while connecting can go out now.
        self.inner.upstream_ready.notify_one();
        self.drain(None, false);
    }

    fn upstream_lost(&self) {
        let now = self.inner.clock.now();
        self.inner.proxy.borrow_mut().handle_upstream_lost(now);
        self.drain(None, false);
    }

    fn timeout(&self, now: kv_core::Instant) {
        self.inner.proxy.borrow_mut().handle_timeout(now);
        self.drain(None, false);
    }

    /// Acts on what the proxy asks for after an input: wake the clients
    /// with output (except `caller`, which takes its output itself), reset
    /// the upstream connection, wake the upstream writer if requests were
    /// queued, and wake the timer if the next deadline moved earlier.
    fn drain(&self, caller: Option<ClientId>, queued_upstream: bool) {
        let inner = &*self.inner;
        let mut proxy = inner.proxy.borrow_mut();
        while let Some(event) = proxy.poll_event() {
            match event {
                ProxyEvent::ClientReady(id) => {
                    if Some(id) != caller {
                        if let Some(n) = inner.clients.borrow().get(&id) {
                            n.notify_one();
                        }
                    }
                }
                ProxyEvent::ResetUpstream => {
                    inner.reset_requested.set(true);
                    inner.upstream_reset.notify_one();
                }
            }
        }
        if queued_upstream {
            inner.upstream_ready.notify_one();
        }
        if let Some(next) = proxy.poll_timeout() {
            if inner.timer_armed.get().is_none_or(|armed| next < armed) {
                inner.timer_armed.set(Some(next));
                inner.timer_wake.notify_one();
            }
        }
        if inner.drain_waiters.get() > 0 && proxy.upstream_in_flight() == 0 {
            inner.upstream_drained.notify_waiters();
        }
    }
}

impl AcceptHooks for ProxyHandle {
    fn rejected(&self) {
        self.update_stats(|s| s.connections_rejected += 1);
    }
}

/// Serves on `listener` until `shutdown`, then drains the clients. Must run
/// inside a `LocalSet`; the upstream and timer tasks it spawns end when the
/// `LocalSet` is dropped.
///
/// With `http`, the bridge serves on that already-bound listener alongside.
pub async fn run(
    listener: TcpListener,
    http: Option<(TcpListener, crate::bridge::HttpOptions)>,
    options: ProxyOptions,
    shutdown: Shutdown,
) {
    let handle = start(&options);
    match http {
        Some((http_listener, http_options)) => {
            tokio::join!(
                serve_stream_clients(&handle, listener, &options, shutdown.clone()),
                crate::bridge::serve(handle.clone(), http_listener, http_options, shutdown),
            );
        }
        None => serve_stream_clients(&handle, listener, &options, shutdown).await,
    }
}

/// Creates the proxy and spawns its upstream and timer tasks on the current
/// `LocalSet`. Client drivers then join through the returned handle: the TCP
/// one with [`serve_stream_clients`], a WebSocket bridge with
/// [`ClientKind::Messages`] clients of its own.
pub fn start(options: &ProxyOptions) -> ProxyHandle {
    let handle = ProxyHandle::new(options.proxy.clone(), Clock::new());
    tokio::task::spawn_local(upstream_task(handle.clone(), options.upstream));
    tokio::task::spawn_local(timer_task(handle.clone()));
    handle
}

/// Accepts TCP clients ([`ClientKind::Stream`]) on `listener` until
/// `shutdown`, then lets them finish (within the grace period).
pub async fn serve_stream_clients(
    handle: &ProxyHandle,
    listener: TcpListener,
    options: &ProxyOptions,
    shutdown: Shutdown,
) {
    let idle_timeout = options.idle_timeout;
    net::accept_loop(
        listener,
        options.max_clients,
        shutdown,
        handle,
        |stream, peer, shutdown| serve_client(handle.clone(), stream, peer, idle_timeout, shutdown),
    )
    .await;
}

/// Why a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed (after every reply owed was written), or the
    /// socket failed.
    Closed,
    /// `QUIT` or a fatal protocol error.
    Finished,
    /// Nothing received for the idle timeout.
    TimedOut,
    /// Shutdown, after every reply owed was written.
    Shutdown,
}

/// Whether a client connection still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// The client closed its sending side (`printf … | nc`): its requests
    /// are still answered, until the given time at the latest.
    HalfClosed(tokio::time::Instant),
    /// Shutting down: what was received is answered (within the grace
    /// period the accept loop allows).
    Draining,
}

/// Removes the client from the proxy however its task ends (including an
/// abort at the end of the grace period).
struct Registration {
    handle: ProxyHandle,
    id: ClientId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.handle.remove_client(self.id);
    }
}

async fn serve_client(
    handle: ProxyHandle,
    mut stream: TcpStream,
    peer: SocketAddr,
    idle_timeout: Option<Duration>,
    mut shutdown: Shutdown,
) {
    let (id, notify) = handle.add_client(ClientKind::Stream);
    let reg = Registration {
        handle: handle.clone(),
        id,
    };
    handle.update_stats(|s| s.connections_total += 1);
    debug!(%peer, client = id.0, "client accepted");
    let mut idle = IdleTimer::new(idle_timeout);
    // The proxy stopped taking this client's input; it must be resumed with
    // an empty feed once it wants input again.
    let mut throttled = false;
    let mut phase = if shutdown.is_requested() {
        Phase::Draining
    } else {
        Phase::Open
    };
    let end = 'conn: loop {
        while let Some(out) = handle.take_output(id) {
            let write = tokio::select! {
                biased;
                w = stream.write_all(&out) => w.map_err(|e| Some(e.to_string())),
                // A client that stopped reading its replies: its output
                // cannot drain, so it is cut off like an idle client.
                _ = idle.expired() => Err(None),
            };
            match write {
                Ok(()) => {}
                Err(None) => {
                    debug!(%peer, "write stalled for the idle timeout");
                    break 'conn End::TimedOut;
                }
                Err(Some(e)) => {
                    debug!(%peer, "write failed: {e}");
                    break 'conn End::Closed;
                }
            }
            idle.touch();
        }
        if handle.client_should_close(id) {
            break End::Finished;
        }
        let wants = handle.client_wants_input(id);
        if throttled && wants {
            // Requests already received but held back: process them (also
            // when no longer reading: they were received).
            throttled = false;
            handle.feed_client(id, b"");
            continue;
        }
        if !wants {
            // Waiting on replies is not idling.
            throttled = true;
            idle.touch();
        }
        if phase != Phase::Draining && shutdown.is_requested() {
            // Checked here as well as in the select below, where a client
            // that keeps sending would always win the race.
            phase = Phase::Draining;
        }
        if phase != Phase::Open && handle.upstream_idle() {
            break if phase == Phase::Draining {
                End::Shutdown
            } else {
                End::Closed
            };
        }
        let reading = phase == Phase::Open && wants;
        let settle_by = match phase {
            Phase::HalfClosed(t) => Some(t),
            _ => None,
        };
        tokio::select! {
            biased;
            _ = notify.notified() => {}
            ready = stream.readable(), if reading => {
                let read = ready.and_then(|()| {
                    net::read_ready(&stream, |data| handle.feed_client(id, data))
                });
                match read {
                    Ok(ReadOutcome::Data(_)) => {
                        idle.touch();
                        throttled = !handle.client_wants_input(id);
                    }
                    Ok(ReadOutcome::NotReady) => {}
                    Ok(ReadOutcome::Closed) => {
                        phase = Phase::HalfClosed(tokio::time::Instant::now() + handle.settle_time());
                    }
                    Err(e) => {
                        debug!(%peer, "read failed: {e}");
                        break End::Closed;
                    }
                }
            }
            _ = shutdown.requested(), if phase != Phase::Draining => phase = Phase::Draining,
            _ = idle.expired(), if reading => break End::TimedOut,
            _ = handle.upstream_idle_wait(), if phase != Phase::Open => {}
            _ = sleep_until_opt(settle_by), if settle_by.is_some() => break End::Closed,
        }
    };
    if end == End::TimedOut {
        handle.update_stats(|s| s.connections_timed_out += 1);
        debug!(%peer, mid_command = handle.client_is_mid_command(id), "client timed out");
    }
    drop(reg);
    if matches!(end, End::Finished | End::Shutdown) {
        net::close_gently(&mut stream).await;
    }
    debug!(%peer, ?end, "client closed");
}

/// Sleeps until `t`, or forever if there is none.
async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Why an upstream connection ended.
enum UpstreamEnd {
    /// The proxy asked for a reset; it has already failed what was in flight.
    Reset,
    /// The connection failed or was closed by the server.
    Lost(String),
}

/// Owns the upstream connection: connects, reconnects with exponential
/// backoff, writes queued requests and feeds replies back. Runs forever.
async fn upstream_task(handle: ProxyHandle, addr: SocketAddr) {
    let connect_timeout = handle
        .inner
        .proxy
        .borrow()
        .config()
        .request_timeout
        .max(Duration::from_millis(100));
    let mut backoff = BACKOFF_MIN;
    // Log the first failure of a series at warn level, the retries at debug.
    let mut failing = false;
    loop {
        handle.upstream_connecting();
        let connected = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connection timed out".to_string()),
        };
        match connected {
            Ok(stream) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!("cannot set TCP_NODELAY upstream: {e}");
                }
                if failing {
                    info!(%addr, "upstream reconnected");
                } else {
                    debug!(%addr, "upstream connected");
                }
                backoff = BACKOFF_MIN;
                handle.upstream_connected();
                let since = tokio::time::Instant::now();
                match run_upstream(&handle, stream).await {
                    UpstreamEnd::Reset => {
                        warn!(%addr, "upstream connection reset (request timed out or bad reply)");
                    }
                    UpstreamEnd::Lost(reason)
                        if handle.upstream_idle() && since.elapsed() >= IDLE_CLOSE_MIN_AGE =>
                    {
                        // The server closed a connection with nothing in
                        // flight, most likely for idling. Reconnect at once
                        // without declaring the upstream down, so requests
                        // arriving meanwhile queue instead of failing; if
                        // the server is really gone, the attempt fails and
                        // takes the usual path.
                        debug!(%addr, "upstream closed an idle connection ({reason}); reconnecting");
                        continue;
                    }
                    UpstreamEnd::Lost(reason) => {
                        warn!(%addr, "upstream connection lost: {reason}");
                        handle.upstream_lost();
                    }
                }
                // The loss was just logged; retries are logged quietly.
                failing = true;
            }
            Err(reason) => {
                if failing {
                    debug!(%addr, "cannot connect upstream: {reason}");
                } else {
                    warn!(%addr, "cannot connect upstream: {reason}");
                    failing = true;
                }
                handle.upstream_lost();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Drives one upstream connection until it fails or a reset is asked for.
/// Reading and writing run concurrently: writing only while not reading could
/// deadlock with a server that stops reading while its replies are not read.
async fn run_upstream(handle: &ProxyHandle, mut stream: TcpStream) -> UpstreamEnd {
    let (mut rd, mut wr) = stream.split();
    let reader = async {
        let mut buf = BytesMut::with_capacity(UPSTREAM_READ_CHUNK);
        loop {
            buf.reserve(UPSTREAM_READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return UpstreamEnd::Lost("closed by the server".to_string()),
                Ok(_) => {
                    handle.upstream_input(&buf);
                    buf.clear();
                }
                Err(e) => return UpstreamEnd::Lost(e.to_string()),
            }
        }
    };
    let writer = async {
        loop {
            while let Some(out) = handle.take_upstream_output() {
                if let Err(e) = wr.write_all(&out).await {
                    return UpstreamEnd::Lost(e.to_string());
                }
            }
            handle.inner.upstream_ready.notified().await;
        }
    };
    let reset = async {
        loop {
            if handle.inner.reset_requested.get() {
                return UpstreamEnd::Reset;
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

/// Sleeps until the proxy's next deadline and lets it handle timeouts.
/// Runs forever.
async fn timer_task(handle: ProxyHandle) {
    let inner = &*handle.inner;
    loop {
        let now = inner.clock.now();
        let next = inner.proxy.borrow().poll_timeout();
        match next {
            Some(deadline) if deadline <= now => {
                handle.timeout(now);
                if inner
                    .proxy
                    .borrow()
                    .poll_timeout()
                    .is_some_and(|d| d <= now)
                {
                    // The core guarantees progress, but never spin if it
                    // did not make any.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Some(deadline) => {
                inner.timer_armed.set(Some(deadline));
                tokio::select! {
                    _ = tokio::time::sleep_until(inner.clock.to_tokio(deadline)) => {}
                    _ = inner.timer_wake.notified() => {}
                }
            }
            None => {
                inner.timer_armed.set(None);
                inner.timer_wake.notified().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{self, ServerOptions};
    use crate::shutdown::{self, ShutdownTrigger};
    use tokio::task::LocalSet;

    async fn start_server() -> (SocketAddr, ShutdownTrigger) {
        let listener = net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = shutdown::channel();
        tokio::task::spawn_local(server::run(listener, ServerOptions::default(), shutdown));
        (addr, trigger)
    }

    async fn start_proxy(
        upstream: SocketAddr,
        request_timeout: Duration,
    ) -> (SocketAddr, ShutdownTrigger) {
        let listener = net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = shutdown::channel();
        let options = ProxyOptions {
            upstream,
            proxy: ProxyConfig {
                request_timeout,
                ..ProxyConfig::default()
            },
            ..ProxyOptions::default()
        };
        tokio::task::spawn_local(run(listener, None, options, shutdown));
        (addr, trigger)
    }

    /// Sends `input`, closes the sending side, and reads until the proxy
    /// closes.
    async fn exchange(addr: SocketAddr, input: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(input).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the proxy answers and closes")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn forwards_and_answers_a_half_closed_client() {
        LocalSet::new()
            .run_until(async {
                let (server, _stop) = start_server().await;
                let (proxy, _stop_proxy) = start_proxy(server, Duration::from_secs(5)).await;
                assert_eq!(
                    exchange(proxy, b"PUT name Derek Moss\r\nGET name\r\nGET nobody\r\n").await,
                    "OK\r\n\"Derek Moss\"\r\n(nil)\r\n"
                );
                // RESP clients get RESP.
                assert_eq!(
                    exchange(proxy, b"*2\r\n$3\r\nGET\r\n$4\r\nname\r\n").await,
                    "$10\r\nDerek Moss\r\n"
                );
            })
            .await;
    }

    #[tokio::test]
    async fn fails_fast_while_the_server_is_down_and_recovers() {
        LocalSet::new()
            .run_until(async {
                // A port with nothing behind it, for now.
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let upstream = SocketAddr::from(([127, 0, 0, 1], port));
                let (proxy, _stop_proxy) = start_proxy(upstream, Duration::from_secs(5)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let started = tokio::time::Instant::now();
                let reply = exchange(proxy, b"GET k\r\n").await;
                assert!(reply.starts_with("(error) ERR upstream"), "{reply}");
                assert!(started.elapsed() < Duration::from_secs(1));
                // The server comes up on that port; the proxy reconnects
                // within the longest backoff.
                let listener = net::bind(upstream).unwrap();
                let (_stop, shutdown) = shutdown::channel();
                tokio::task::spawn_local(server::run(listener, ServerOptions::default(), shutdown));
                tokio::time::sleep(BACKOFF_MAX + Duration::from_millis(300)).await;
                assert_eq!(exchange(proxy, b"GET k\r\n").await, "(nil)\r\n");
            })
            .await;
    }

    #[tokio::test]
    async fn times_out_a_silent_upstream_and_reconnects() {
        LocalSet::new()
            .run_until(async {
                // Accepts connections and never answers.
                let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let upstream = silent.local_addr().unwrap();
                let accepted = Rc::new(Cell::new(0));
                let count = accepted.clone();
                tokio::task::spawn_local(async move {
                    let mut held = Vec::new();
                    while let Ok((s, _)) = silent.accept().await {
                        count.set(count.get() + 1);
                        held.push(s);
                    }
                });
                let (proxy, _stop_proxy) = start_proxy(upstream, Duration::from_millis(300)).await;
                let started = tokio::time::Instant::now();
                assert_eq!(
                    exchange(proxy, b"GET k\r\n").await,
                    "(error) ERR upstream timed out\r\n"
                );
                let took = started.elapsed();
                assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2));
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(accepted.get() >= 2, "the proxy reconnected after the reset");
            })
            .await;
    }
}
