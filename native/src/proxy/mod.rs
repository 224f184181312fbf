//! The proxy driver: moves bytes between client sockets, one upstream
//! connection and one [`kv_core::Proxy`]. All protocol and cache logic lives
//! in the core.
//!
//! # Tasks (all on one thread)
//! - one per client, running the shared [connection loop](crate::conn):
//!   TCP clients ([`tcp`]) and WebSocket clients of the browser console
//!   ([`ws`]), each woken by its [`Notify`] when replies complete;
//! - the upstream task ([`upstream`]): connects (and reconnects as the
//!   core's [`Reconnect`](kv_core::Reconnect) says), writes the proxy's
//!   upstream bytes and feeds back the replies;
//! - the timer task ([`timer`]): sleeps until [`Proxy::poll_timeout`] and
//!   calls [`Proxy::handle_timeout`].
//!
//! They share a [`ProxyHandle`], which speaks the core's verbs and does the
//! drain the core asks for after every input (its module docs give the
//! order): events wake client tasks or reset the upstream connection,
//! pending upstream bytes wake the upstream task, and an earlier deadline
//! wakes the timer.

mod cluster;
mod tcp;
mod timer;
mod upstream;
pub(crate) mod ws;

use crate::runtime::clock::Epoch;
use crate::runtime::net::AcceptHooks;
use crate::runtime::shutdown::Shutdown;
use bytes::BytesMut;
use kv_core::{
    AnnotatedReply, CacheConfig, ClientId, ClientKind, ClientStatus, Lane, Limits, Proxy,
    ProxyConfig, ProxyEvent, ProxyStats,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Settings of the proxy driver.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The server to forward to.
    pub upstream: SocketAddr,
    /// A Redis Cluster to forward to instead, by some of its nodes'
    /// addresses (`host:port`).
    pub upstream_cluster: Option<Vec<String>>,
    /// Most concurrent client connections; the next ones are refused.
    pub max_clients: usize,
    /// Close clients that send nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How much output may be held for one client.
    pub output_limit: kv_core::OutputLimit,
    /// The core's settings (limits, cache, request timeout, hash seed).
    pub proxy: ProxyConfig,
    /// The browser console and WebSocket bridge, if served.
    pub http: Option<ws::HttpOptions>,
    /// Where `/metrics` is served on its own listener, if anywhere (it is
    /// also served on the console's).
    pub metrics: Option<SocketAddr>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            upstream: SocketAddr::from(([127, 0, 0, 1], 7070)),
            upstream_cluster: None,
            max_clients: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            output_limit: kv_core::OutputLimit::DEFAULT,
            proxy: ProxyConfig {
                limits: Limits::default(),
                cache: CacheConfig::default(),
                ..ProxyConfig::default()
            },
            http: None,
            metrics: None,
        }
    }
}

/// The wake-ups of one lane's upstream task.
#[derive(Default)]
struct LaneWake {
    /// Wakes the upstream writer: requests are queued.
    ready: Notify,
    /// Wakes the upstream task to drop its connection.
    reset: Notify,
    /// Set with `reset`; cleared when a new connection is made, as a reset
    /// asked while no connection is up has nothing left to reset.
    reset_requested: Cell<bool>,
    /// Wakes the upstream reader: the lane is to be read again.
    readable: Notify,
    /// Wakes the lane's task waiting for the main lane to be accepted.
    main_verified: Notify,
}

/// The proxy machine and the wake-ups of the tasks that drive it.
struct Inner {
    proxy: RefCell<Proxy>,
    epoch: Epoch,
    /// Each client task's wake-up, for [`ProxyEvent::ClientReady`].
    clients: RefCell<HashMap<ClientId, Rc<Notify>>>,
    /// Per lane ([`Lane::ALL`] order), the wake-ups of its upstream task.
    lanes: [LaneWake; 2],
    /// Wakes the timer task: the deadline may have moved earlier.
    timer_wake: Notify,
    /// The deadline the timer task sleeps until (`None`: no deadline).
    timer_armed: Cell<Option<kv_core::Instant>>,
}

/// Shared access to a running proxy, for every kind of client driver, with
/// the core's verbs (`handle_*` for inputs, `poll_*` for outputs).
///
/// Cloning is cheap (an `Rc`). Every method borrows the machine only for its
/// own duration, so none may be called while another is running (which
/// single-threaded code cannot do anyway).
#[derive(Clone)]
pub(crate) struct ProxyHandle {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle").finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// A proxy with no clients and no upstream connection yet.
    fn new(config: ProxyConfig, epoch: Epoch) -> Self {
        ProxyHandle {
            inner: Rc::new(Inner {
                proxy: RefCell::new(Proxy::new(config, epoch.now())),
                epoch,
                clients: RefCell::new(HashMap::new()),
                lanes: Default::default(),
                timer_wake: Notify::new(),
                timer_armed: Cell::new(None),
            }),
        }
    }

    /// The figures the console charts.
    pub fn snapshot(&self) -> kv_core::bridge::ProxySnapshot {
        self.inner.proxy.borrow().snapshot(self.inner.epoch.now())
    }

    /// The proxy's state in the Prometheus text format.
    pub fn metrics(&self) -> String {
        crate::metrics::Scrape::of_proxy(&self.inner.proxy.borrow()).render()
    }

    /// The epoch the proxy's time counts from.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch
    }

    /// Registers a client. The returned [`Notify`] is signalled whenever the
    /// client has output to take ([`ProxyHandle::poll_client_transmit`] or
    /// [`ProxyHandle::poll_client_reply`]) or must be closed.
    pub fn add_client(&self, kind: ClientKind) -> (ClientId, Rc<Notify>) {
        let now = self.inner.epoch.now();
        let id = {
            let mut proxy = self.inner.proxy.borrow_mut();
            proxy.stats_mut().connections_total += 1;
            proxy.add_client(kind, now)
        };
        let notify = Rc::new(Notify::new());
        self.inner.clients.borrow_mut().insert(id, notify.clone());
        (id, notify)
    }

    /// Forgets a client; replies still owed to it are dropped.
    pub fn remove_client(&self, id: ClientId) {
        self.inner.clients.borrow_mut().remove(&id);
        self.inner.proxy.borrow_mut().remove_client(id);
        // The client may have been the one the bulk lane waited for.
        self.drain_if_events(Some(id));
    }

    /// Feeds bytes received from a client. The caller takes the client's
    /// output right after: its own wake-up is not signalled for output this
    /// call produced.
    pub fn handle_client_input(&self, id: ClientId, data: &[u8]) {
        let now = self.inner.epoch.now();
        let queued_upstream = {
            let mut proxy = self.inner.proxy.borrow_mut();
            let before = proxy.upstream_in_flight();
            proxy.handle_client_input(id, data, now);
            proxy.upstream_in_flight() > before
        };
        self.drain(Some(id), queued_upstream);
    }

    /// Processes what a throttled client sent before it was throttled (see
    /// [`ClientStatus::resumable`]); like input, the caller takes the output.
    pub fn handle_client_resume(&self, id: ClientId) {
        let now = self.inner.epoch.now();
        let queued_upstream = {
            let mut proxy = self.inner.proxy.borrow_mut();
            let before = proxy.upstream_in_flight();
            proxy.handle_client_resume(id, now);
            proxy.upstream_in_flight() > before
        };
        self.drain(Some(id), queued_upstream);
    }

    /// Answers, in order with its other replies, input the transport
    /// refused (a WebSocket message too large or not one command).
    pub fn reject_client_input(&self, id: ClientId, why: &str) {
        let now = self.inner.epoch.now();
        self.inner
            .proxy
            .borrow_mut()
            .reject_client_input(id, why, now);
        self.drain(Some(id), false);
    }

    /// Encoded output for a [`ClientKind::Stream`] client.
    pub fn poll_client_transmit(&self, id: ClientId) -> Option<BytesMut> {
        let out = self.inner.proxy.borrow_mut().poll_client_transmit(id);
        // Taking its output may let the bulk lane be read again.
        self.drain_if_events(Some(id));
        out
    }

    /// See [`Proxy::handle_tunnel_connected`].
    pub fn handle_tunnel_connected(&self, id: ClientId) {
        let now = self.inner.epoch.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_tunnel_connected(id, now);
    }

    /// See [`Proxy::poll_tunnel_transmit`].
    pub fn poll_tunnel_transmit(&self, id: ClientId) -> Option<BytesMut> {
        self.inner.proxy.borrow_mut().poll_tunnel_transmit(id)
    }

    /// See [`Proxy::tunnel_wants_input`].
    pub fn tunnel_wants_input(&self, id: ClientId) -> bool {
        self.inner.proxy.borrow().tunnel_wants_input(id)
    }

    /// Bytes from the client's dedicated connection; like input, the
    /// caller takes the output.
    pub fn handle_tunnel_input(&self, id: ClientId, data: &[u8]) {
        let now = self.inner.epoch.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_tunnel_input(id, data, now);
        self.drain(Some(id), false);
    }

    /// The client's dedicated connection closed or could not be opened.
    pub fn handle_tunnel_closed(&self, id: ClientId) {
        let now = self.inner.epoch.now();
        self.inner.proxy.borrow_mut().handle_tunnel_closed(id, now);
        self.drain(Some(id), false);
    }

    /// [`ProxyHandle::drain`], if the proxy has events for the driver.
    fn drain_if_events(&self, caller: Option<ClientId>) {
        if self.inner.proxy.borrow().has_events() {
            self.drain(caller, false);
        }
    }

    /// The next reply for a [`ClientKind::Messages`] client.
    pub fn poll_client_reply(&self, id: ClientId) -> Option<AnnotatedReply> {
        self.inner.proxy.borrow_mut().poll_client_reply(id)
    }

    /// What the connection loop asks about a client after each step.
    pub fn client_status(&self, id: ClientId) -> ClientStatus {
        self.inner.proxy.borrow().client_status(id)
    }

    /// The input limits clients are held to.
    pub fn limits(&self) -> Limits {
        self.inner.proxy.borrow().config().limits
    }

    /// Whether the client stopped in the middle of a command.
    pub fn client_is_mid_command(&self, id: ClientId) -> bool {
        self.inner.proxy.borrow().client_is_mid_command(id)
    }

    /// Whether the client is mid-command, and how many requests it has sent.
    pub fn client_progress(&self, id: ClientId) -> (bool, u64) {
        let proxy = self.inner.proxy.borrow();
        (
            proxy.client_is_mid_command(id),
            proxy.client_requests_read(id),
        )
    }

    /// Updates the proxy's counters (the connection counters are the
    /// driver's to keep).
    pub fn update_stats(&self, f: impl FnOnce(&mut ProxyStats)) {
        f(self.inner.proxy.borrow_mut().stats_mut());
    }

    /// Whether no request awaits the upstream server.
    fn upstream_idle(&self) -> bool {
        self.inner.proxy.borrow().upstream_in_flight() == 0
    }

    fn wake(&self, lane: Lane) -> &LaneWake {
        &self.inner.lanes[usize::from(lane == Lane::Bulk)]
    }

    fn request_timeout(&self) -> Duration {
        self.inner.proxy.borrow().config().request_timeout
    }

    /// The proxy's hash seed (the driver's random one).
    fn hash_seed(&self) -> u64 {
        self.inner.proxy.borrow().config().hash_seed
    }

    /// The seed of the upstream task's reconnection jitter: derived from
    /// the proxy's random hash seed, as the core reads no random source.
    fn reconnect_seed(&self) -> u64 {
        // Mixed so the jitter and the hash functions do not share a stream.
        self.inner.proxy.borrow().config().hash_seed ^ 0x7265_636f_6e6e_6563
    }

    /// See [`Proxy::upstream_verified`].
    fn upstream_verified(&self, lane: Lane) -> bool {
        self.inner.proxy.borrow().upstream_verified(lane)
    }

    /// See [`Proxy::set_cluster_facts`].
    fn set_cluster_facts(&self, facts: kv_core::cluster::ClusterFacts) {
        self.inner.proxy.borrow_mut().set_cluster_facts(facts);
    }

    /// See [`Proxy::upstream_fault`].
    fn upstream_fault(&self, lane: Lane) -> Option<kv_core::UpstreamError> {
        self.inner.proxy.borrow().upstream_fault(lane).cloned()
    }

    /// See [`Proxy::upstream_wants_input`].
    fn upstream_wants_input(&self, lane: Lane) -> bool {
        self.inner.proxy.borrow().upstream_wants_input(lane)
    }

    fn poll_upstream_transmit(&self, lane: Lane) -> Option<BytesMut> {
        self.inner.proxy.borrow_mut().poll_upstream_transmit(lane)
    }

    fn handle_upstream_input(&self, lane: Lane, data: &[u8]) {
        let now = self.inner.epoch.now();
        let queued_upstream = {
            let mut proxy = self.inner.proxy.borrow_mut();
            let before = proxy.stats().upstream_requests;
            proxy.handle_upstream_input(lane, data, now);
            // A reply may have given the bulk lane its next turn.
            proxy.stats().upstream_requests > before
        };
        self.drain(None, queued_upstream);
    }

    fn handle_upstream_connecting(&self, lane: Lane) {
        let now = self.inner.epoch.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_upstream_connecting(lane, now);
    }

    fn handle_upstream_connected(&self, lane: Lane) {
        let now = self.inner.epoch.now();
        self.wake(lane).reset_requested.set(false);
        self.inner
            .proxy
            .borrow_mut()
            .handle_upstream_connected(lane, now);
        // Requests queued while connecting can go out now.
        self.wake(lane).ready.notify_one();
        self.drain(None, false);
    }

    /// See [`Proxy::handle_upstream_closed`].
    fn handle_upstream_closed(&self, lane: Lane) {
        let now = self.inner.epoch.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_upstream_closed(lane, now);
        self.drain(None, false);
    }

    /// What the server last answered on tracking for the lane's
    /// connection, if it answered and that differs from `last`.
    fn tracking_news(
        &self,
        lane: Lane,
        last: Option<&kv_core::UpstreamTracking>,
    ) -> Option<kv_core::UpstreamTracking> {
        use kv_core::UpstreamTracking as T;
        let proxy = self.inner.proxy.borrow();
        let now = proxy.upstream_tracking(lane);
        (matches!(now, T::On | T::Fallback(_)) && Some(now) != last).then(|| now.clone())
    }

    /// Which server the main lane's connection says this is, if it said
    /// and that differs from `last`.
    fn server_news(
        &self,
        last: Option<&kv_core::UpstreamServer>,
    ) -> Option<kv_core::UpstreamServer> {
        let proxy = self.inner.proxy.borrow();
        let now = proxy.upstream_server();
        (*now != kv_core::UpstreamServer::Unknown && Some(now) != last).then(|| now.clone())
    }

    fn handle_upstream_lost(&self, lane: Lane) {
        let now = self.inner.epoch.now();
        self.inner
            .proxy
            .borrow_mut()
            .handle_upstream_lost(lane, now);
        self.drain(None, false);
    }

    fn handle_timeout(&self, now: kv_core::Instant) {
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
                ProxyEvent::ResetUpstream(lane) => {
                    let wake = &inner.lanes[usize::from(lane == Lane::Bulk)];
                    wake.reset_requested.set(true);
                    wake.reset.notify_one();
                }
                ProxyEvent::UpstreamReadable(lane) => {
                    inner.lanes[usize::from(lane == Lane::Bulk)]
                        .readable
                        .notify_one();
                }
            }
        }
        if queued_upstream {
            for wake in &inner.lanes {
                wake.ready.notify_one();
            }
        }
        if let Some(next) = proxy.poll_timeout() {
            if inner.timer_armed.get().is_none_or(|armed| next < armed) {
                inner.timer_armed.set(Some(next));
                inner.timer_wake.notify_one();
            }
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
/// With `http`, the console and its WebSocket are served on that
/// already-bound listener alongside.
pub async fn run(
    listener: TcpListener,
    http: Option<(TcpListener, ws::HttpOptions)>,
    metrics: Option<TcpListener>,
    options: ProxyOptions,
    shutdown: Shutdown,
) {
    let handle = start(&options);
    let port = listener.local_addr().map_or(0, |a| a.port());
    let facts = tokio::task::spawn_local(refresh_host_facts(handle.clone(), port));
    let scrapes = metrics.map(|l| {
        let handle = handle.clone();
        let render = Rc::new(move || handle.metrics());
        tokio::task::spawn_local(crate::metrics::serve(l, render, shutdown.clone()))
    });
    let clients = tcp::serve(&handle, listener, &options, shutdown.clone());
    match http {
        Some((http_listener, http_options)) => {
            tokio::join!(
                clients,
                ws::serve(handle.clone(), http_listener, http_options, shutdown),
            );
        }
        None => clients.await,
    }
    facts.abort();
    if let Some(scrapes) = scrapes {
        scrapes.abort();
    }
}

/// Keeps the process facts `INFO` shows fresh (once a second: they are
/// for people and monitoring, not for the request path).
async fn refresh_host_facts(handle: ProxyHandle, port: u16) {
    let started = std::time::Instant::now();
    let mut trim = crate::runtime::host::Trim::default();
    loop {
        crate::runtime::host::refresh(handle.inner.proxy.borrow_mut().host_mut(), started, port);
        trim.closed(handle.inner.proxy.borrow().clients_removed());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Creates the proxy and spawns its upstream and timer tasks on the current
/// `LocalSet`. Client drivers then join through the returned handle.
fn start(options: &ProxyOptions) -> ProxyHandle {
    let mut config = options.proxy.clone();
    if options.upstream_cluster.is_some() {
        config.upstream_cluster = true;
        // A dedicated connection goes to one server, and through a cluster
        // there is none to name: such commands are refused.
        config.max_dedicated = 0;
    }
    let handle = ProxyHandle::new(config, Epoch::new());
    for lane in Lane::ALL {
        if let Some(seeds) = &options.upstream_cluster {
            let span = tracing::info_span!("cluster", seeds = %seeds.join(","), lane = lane.name());
            tokio::task::spawn_local(tracing::Instrument::instrument(
                cluster::run(handle.clone(), seeds.clone(), lane),
                span,
            ));
            continue;
        }
        let span = tracing::info_span!("upstream", addr = %options.upstream, lane = lane.name());
        tokio::task::spawn_local(tracing::Instrument::instrument(
            upstream::run(handle.clone(), options.upstream, lane),
            span,
        ));
    }
    tokio::task::spawn_local(timer::run(handle.clone()));
    handle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::net;
    use crate::runtime::shutdown::{self, ShutdownTrigger};
    use crate::server::{self, ServerOptions};
    use kv_core::backoff::RECONNECT_MAX;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
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
        tokio::task::spawn_local(run(listener, None, None, options, shutdown));
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
                tokio::time::sleep(RECONNECT_MAX + Duration::from_millis(300)).await;
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
