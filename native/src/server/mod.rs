//! The server driver: moves bytes between client sockets and one
//! [`kv_core::Server`]. All protocol logic lives in the core, and every
//! connection runs the shared [connection loop](crate::conn).
//!
//! One task per connection, all on one thread; the store is shared through
//! an `Rc<RefCell<…>>` and borrowed only between awaits.
//!
//! With persistence on, a connection whose batch of commands wrote something
//! asks the log to take the records ([`Log::request_flush`]); the core holds
//! the replies of writes (and everything after them on that connection)
//! until the log reports them stored, and a task running [`Log::drive`]
//! hands the records of the whole turn to the writer thread and wakes the
//! connections when they are stored. Connections without a pending write
//! are served meanwhile.

use crate::conn::{self, Conn, OutputProbe, Wake};
use crate::metrics::Scrape;
use crate::persist::{self, Log, PersistError, PersistOptions};
use crate::runtime::clock::{self, Epoch};
use crate::runtime::memory;
use crate::runtime::net::{self, AcceptHooks};
use crate::runtime::shutdown::Shutdown;
use bytes::BytesMut;
use kv_core::{
    ConnConfig, End, Limits, OutputLimit, Owed, Server, ServerConfig, ServerConnection, Stall,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, Instrument};

/// Settings of the server driver.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Most concurrent connections; the next ones are refused.
    pub max_clients: usize,
    /// Close connections that send nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How much output may be held for one client.
    pub output_limit: OutputLimit,
    /// Input limits per connection.
    pub limits: Limits,
    /// Seed for the store's hash function.
    pub hash_seed: u64,
    /// The append-only log (`None`: in memory only).
    pub persistence: Option<PersistOptions>,
    /// Password clients must give with `AUTH` (none: no authentication).
    pub password: Option<kv_core::auth::Password>,
    /// How inline commands are answered.
    pub inline_replies: kv_core::server::InlineReplies,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The memory bound (`--maxmemory` and its policy).
    pub maxmemory: kv_core::server::MaxMemory,
    /// How much output a subscriber may hold.
    pub pubsub_output_limit: OutputLimit,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_clients: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            output_limit: OutputLimit::DEFAULT,
            limits: Limits::default(),
            hash_seed: 0,
            persistence: None,
            password: None,
            inline_replies: kv_core::server::InlineReplies::Human,
            metrics: None,
            maxmemory: kv_core::server::MaxMemory::default(),
            pubsub_output_limit: kv_core::server::PUBSUB_OUTPUT_LIMIT,
        }
    }
}

/// A server ready to serve: its store loaded from the log, and the log open
/// for writing (if persistence is on).
#[derive(Debug)]
pub struct Prepared {
    server: Server,
    log: Option<Log>,
}

/// Builds the server and, with persistence on, replays the log into it and
/// opens the log. Done before listening, so that clients never see a
/// half-loaded store and a damaged log stops the start with its error.
pub fn prepare(options: &ServerOptions) -> Result<Prepared, PersistError> {
    let mut server = Server::new(ServerConfig {
        limits: options.limits,
        hash_seed: options.hash_seed,
        password: options.password.clone(),
        inline_replies: options.inline_replies,
        maxmemory: options.maxmemory,
        output_limit: options.output_limit,
        pubsub_output_limit: options.pubsub_output_limit,
    });
    server.set_stopwatch(clock::stopwatch);
    // Replay drops what has expired by now.
    server.set_time(clock::unix_millis());
    let log = match &options.persistence {
        Some(p) => Some(persist::open(p, &mut server)?),
        None => None,
    };
    Ok(Prepared { server, log })
}

/// The state shared by the connections of one server.
struct Shared {
    server: RefCell<Server>,
    log: Option<Log>,
    limits: Limits,
    policy: ConnConfig,
    epoch: Epoch,
    /// Bumped when CLIENT KILL marked clients: every connection looks
    /// whether it is one of them.
    kills: watch::Sender<u64>,
    /// Reads the allocator's count of used memory for the server.
    meter: memory::Meter,
    /// What wakes each connection when mail arrives for it, by session.
    mailmen: RefCell<HashMap<u64, Rc<Notify>>>,
    /// The output limit of subscribers.
    pubsub_limit: OutputLimit,
    /// When the expiry task plans to wake next (unix ms), and what wakes
    /// it sooner: a command that set an earlier deadline.
    expiry_at: Cell<u64>,
    expiry_wake: Notify,
}

impl Shared {
    /// Wakes the expiry task if the server has work before it planned to
    /// wake (a key set to expire in 5 ms expires then, not at the next
    /// housekeeping tick).
    fn schedule_expiry(&self, server: &Server) {
        if server
            .poll_timeout()
            .is_some_and(|due| due < self.expiry_at.get())
        {
            self.expiry_wake.notify_one();
        }
    }

    /// Wakes the connections that got mail (messages, invalidations).
    fn wake(&self, server: &mut Server) {
        let woken = server.take_woken();
        if woken.is_empty() {
            return;
        }
        let mailmen = self.mailmen.borrow();
        for id in woken {
            if let Some(news) = mailmen.get(&id) {
                news.notify_one();
            }
        }
    }
}

impl AcceptHooks for Shared {
    fn rejected(&self) {
        self.server.borrow_mut().stats_mut().connections_rejected += 1;
    }
}

/// Serves on `listener` until `shutdown`, then drains the connections.
/// Must run inside a `LocalSet`. Opens the log first if persistence is on
/// (and logs the error and returns if it cannot); [`prepare`] and
/// [`run_prepared`] do the two steps separately (as `kv server` does).
#[cfg(test)]
pub async fn run(listener: TcpListener, options: ServerOptions, shutdown: Shutdown) {
    match prepare(&options) {
        Ok(prepared) => run_prepared(listener, options, prepared, None, shutdown).await,
        Err(e) => tracing::error!("cannot start the server: {e}"),
    }
}

/// Serves a [`prepare`]d server on `listener` until `shutdown`, then drains
/// the connections and syncs and closes the log. Must run inside a
/// `LocalSet`.
pub async fn run_prepared(
    listener: TcpListener,
    options: ServerOptions,
    prepared: Prepared,
    metrics: Option<TcpListener>,
    shutdown: Shutdown,
) {
    let shared = Rc::new(Shared {
        server: RefCell::new(prepared.server),
        log: prepared.log,
        limits: options.limits,
        // The default half-close wait covers replies held for the log.
        policy: ConnConfig {
            idle_timeout: options.idle_timeout,
            output_limit: options.output_limit,
            ..ConnConfig::default()
        },
        epoch: Epoch::new(),
        kills: watch::channel(0).0,
        meter: memory::Meter::new(),
        mailmen: RefCell::new(HashMap::new()),
        pubsub_limit: options.pubsub_output_limit,
        expiry_at: Cell::new(0),
        expiry_wake: Notify::new(),
    });
    {
        // Before the first client: INFO is right from the start.
        let mut server = shared.server.borrow_mut();
        server.host_mut().allocator = memory::allocator_name();
        shared.meter.read_into(&mut server);
    }
    let driver = shared.log.is_some().then(|| {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            if let Some(log) = &shared.log {
                log.drive(&shared.server).await;
            }
        })
    });
    let port = listener.local_addr().map_or(0, |a| a.port());
    let expiry = tokio::task::spawn_local(expire_keys(shared.clone(), port));
    let scrapes = metrics.map(|l| {
        let shared = shared.clone();
        let render = Rc::new(move || Scrape::of_server(&shared.server.borrow()).render());
        tokio::task::spawn_local(crate::metrics::serve(l, render, shutdown.clone()))
    });
    let hooks = shared.clone();
    net::accept_loop(
        listener,
        options.max_clients,
        shutdown,
        &*hooks,
        |stream, peer, shutdown| {
            serve_connection(shared.clone(), stream, shutdown)
                .instrument(tracing::debug_span!("client", %peer))
        },
    )
    .await;
    if let Some(log) = &shared.log {
        // Every connection is gone: hand over what they wrote last (a
        // connection cut off at the end of the grace period may have left
        // records), sync, and stop the writer, which ends the driver task.
        log.flush(&mut shared.server.borrow_mut());
        log.stop();
    }
    expiry.abort();
    if let Some(scrapes) = scrapes {
        scrapes.abort();
    }
    if let Some(driver) = driver {
        let _ = driver.await;
    }
}

/// Active expiry: wakes when the next key is due (or at least every
/// [`HOUSEKEEPING`], to refresh the facts `INFO` shows and the reading of
/// used memory), removes what is due within the core's budget (and goes
/// on with an eviction a command left over its budget), and hands the
/// removals to the log. A call that used its whole budget goes again
/// after yielding, so clients are served in between.
async fn expire_keys(shared: Rc<Shared>, port: u16) {
    let started = std::time::Instant::now();
    let mut trim = crate::runtime::host::Trim::default();
    loop {
        let now = clock::unix_millis();
        let due = shared.server.borrow().poll_timeout();
        let wait = due.map_or(HOUSEKEEPING, |d| {
            Duration::from_millis(d.saturating_sub(now)).min(HOUSEKEEPING)
        });
        if wait.is_zero() {
            crate::runtime::let_others_run().await;
        } else {
            shared.expiry_at.set(now + wait.as_millis() as u64);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shared.expiry_wake.notified() => {}
            }
            shared.expiry_at.set(0);
        }
        let mut server = shared.server.borrow_mut();
        server.handle_timeout(clock::unix_millis());
        shared.wake(&mut server);
        if let Some(log) = &shared.log {
            if server.journal().is_some_and(|j| j.has_pending()) {
                log.request_flush();
            }
        }
        crate::runtime::host::refresh(server.host_mut(), started, port);
        shared.meter.read_into(&mut server);
        let s = server.stats();
        trim.closed(s.connections_total.saturating_sub(s.connections_current));
    }
}

/// How often the expiry task wakes at the least.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// One client of the server, as the connection loop drives it.
struct ServerClient {
    shared: Rc<Shared>,
    stream: TcpStream,
    conn: ServerConnection,
    /// Changes when the log stores (or fails) records; `None` without a log.
    released: Option<watch::Receiver<u64>>,
    /// Changes when clients were killed.
    kills: watch::Receiver<u64>,
    /// Notified when mail arrives for the connection.
    news: Rc<Notify>,
    /// The session's number, once the connection is registered for mail.
    registered: Option<u64>,
}

impl ServerClient {
    fn new(shared: Rc<Shared>, stream: TcpStream) -> Self {
        {
            let mut server = shared.server.borrow_mut();
            let stats = server.stats_mut();
            stats.connections_total += 1;
            stats.connections_current += 1;
        }
        let mut conn = ServerConnection::new(shared.limits);
        let addr = |a: io::Result<SocketAddr>| a.map_or_else(|_| String::new(), |a| a.to_string());
        conn.set_peer(addr(stream.peer_addr()), addr(stream.local_addr()));
        ServerClient {
            kills: shared.kills.subscribe(),
            conn,
            released: shared.log.as_ref().map(Log::subscribe),
            shared,
            stream,
            news: Rc::new(Notify::new()),
            registered: None,
        }
    }
}

/// Keeps `connections_current` right however the task ends.
impl Drop for ServerClient {
    fn drop(&mut self) {
        if let Some(id) = self.registered {
            self.shared.mailmen.borrow_mut().remove(&id);
        }
        if let Ok(mut server) = self.shared.server.try_borrow_mut() {
            self.conn.end(&mut server);
            let stats = server.stats_mut();
            stats.connections_current = stats.connections_current.saturating_sub(1);
        }
    }
}

impl Conn for ServerClient {
    type Output = BytesMut;

    /// Runs what was received (and releases replies the log stored), hands
    /// the records of the batch to the log before the replies go out, so
    /// the log works on them while this task writes.
    fn poll_output(&mut self) -> Option<BytesMut> {
        let mut server = self.shared.server.borrow_mut();
        server.set_time(clock::unix_millis());
        self.shared.meter.refresh(&mut server);
        self.conn.process(&mut server);
        if self.registered.is_none() {
            if let Some(id) = self.conn.session_id() {
                self.registered = Some(id);
                self.shared
                    .mailmen
                    .borrow_mut()
                    .insert(id, self.news.clone());
            }
        }
        self.shared.wake(&mut server);
        self.shared.schedule_expiry(&server);
        if server.clients_mut().take_kill_signal() {
            self.shared.kills.send_modify(|n| *n += 1);
        }
        if let Some(log) = &self.shared.log {
            if server.journal().is_some_and(|j| j.has_pending()) {
                log.request_flush();
            }
        }
        self.conn.poll_transmit()
    }

    async fn write(&mut self, output: BytesMut) -> io::Result<()> {
        self.stream.write_all(&output).await?;
        if self.conn.is_streaming() {
            // A streamed reply's next piece is ready as soon as this one is
            // written: the other clients go first.
            crate::runtime::let_others_run().await;
        }
        Ok(())
    }

    fn output_len(output: &BytesMut) -> usize {
        output.len()
    }

    fn held(&self) -> usize {
        let mail = self
            .registered
            .map_or(0, |id| self.shared.server.borrow().mail_bytes(id));
        self.conn.held_bytes() + mail
    }

    /// Mail keeps arriving while a write waits: a subscriber that stops
    /// reading is held to its limit meanwhile.
    fn output_probe(&self) -> Option<OutputProbe> {
        let id = self.registered?;
        let shared = self.shared.clone();
        Some(OutputProbe {
            news: self.news.clone(),
            held: Box::new(move || shared.server.borrow().mail_bytes(id)),
        })
    }

    /// Subscribers, and tracking clients (a proxy's tracked connection is
    /// quiet while its cache answers, and cutting it would empty that
    /// cache), wait for messages: never idle. Only subscribers are held
    /// to the pubsub class's limit.
    fn subscriber_limit(&self) -> Option<OutputLimit> {
        if self.conn.is_subscribed() {
            Some(self.shared.pubsub_limit)
        } else if self.conn.is_tracking() {
            Some(self.shared.policy.output_limit)
        } else {
            None
        }
    }

    async fn wait(&mut self, reading: bool) -> io::Result<Wake> {
        let waiting = self.conn.is_waiting();
        let streaming = self.conn.is_streaming();
        tokio::select! {
            biased;
            _ = log_progress(&mut self.released), if waiting => Ok(Wake::Session),
            // A streamed reply still sorting has work without output.
            () = crate::runtime::let_others_run(), if streaming => Ok(Wake::Session),
            Ok(()) = self.kills.changed() => Ok(Wake::Session),
            () = self.news.notified() => Ok(Wake::Session),
            ready = self.stream.readable(), if reading => {
                ready?;
                let conn = &mut self.conn;
                Ok(net::read_ready(&self.stream, |d| conn.read_buffer().extend_from_slice(d))?.into())
            }
            else => std::future::pending().await,
        }
    }

    /// Over the high-water mark, input waits until the output is written.
    fn wants_input(&self) -> bool {
        !self.conn.has_backlog()
    }

    fn owed(&self) -> Owed {
        Owed {
            replies: self.conn.owed(),
            output: false,
            finished: self.conn.should_close(),
        }
    }
    fn progress(&self) -> (bool, u64) {
        (self.conn.is_mid_command(), self.conn.requests_read())
    }

    async fn close(&mut self, end: End) {
        match end {
            End::TimedOut(stall) => {
                self.shared
                    .server
                    .borrow_mut()
                    .stats_mut()
                    .connections_timed_out += 1;
                let mid_command = stall == Stall::Input && self.conn.is_mid_command();
                debug!(?stall, mid_command, "connection timed out");
            }
            End::OutputLimit => {
                self.shared
                    .server
                    .borrow_mut()
                    .stats_mut()
                    .output_limit_disconnections += 1;
                debug!("client over its output-buffer limit: disconnected");
            }
            End::Finished | End::Shutdown => net::close_gently(&mut self.stream).await,
            End::Closed => {}
        }
    }
}

/// Completes when the log reports progress (never without a log).
async fn log_progress(released: &mut Option<watch::Receiver<u64>>) {
    match released {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn serve_connection(shared: Rc<Shared>, stream: TcpStream, shutdown: Shutdown) {
    debug!("connection accepted");
    let (policy, epoch) = (shared.policy, shared.epoch);
    let mut client = ServerClient::new(shared, stream);
    conn::drive(&mut client, policy, epoch, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::shutdown::{self, ShutdownTrigger};
    use kv_core::errors::MAX_CLIENTS_REPLY;
    use tokio::io::AsyncReadExt;
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
                    MAX_CLIENTS_REPLY
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
                assert!(text.contains("rejected_connections:1"), "{text}");
                assert!(text.contains("connections_timed_out:1"), "{text}");
            })
            .await;
    }

    #[tokio::test]
    async fn persists_across_restarts_and_compacts_the_log() {
        let dir = std::env::temp_dir().join(format!("kv-server-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = ServerOptions {
            persistence: Some(PersistOptions {
                fsync: persist::FsyncPolicy::Always,
                rewrite_min_size: 4096,
                rewrite_percentage: 50,
                ..PersistOptions::new(&dir)
            }),
            ..ServerOptions::default()
        };
        for round in 0..2 {
            LocalSet::new()
                .run_until(async {
                    let listener = net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                    let addr = listener.local_addr().unwrap();
                    let (trigger, shutdown) = shutdown::channel();
                    let server = tokio::task::spawn_local(run(listener, options.clone(), shutdown));
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    if round == 0 {
                        // The same 10 keys over and over: the log grows,
                        // the data does not, and rewrites shrink the log.
                        let mut batch = String::new();
                        for i in 0..2000 {
                            batch.push_str(&format!("PUT k{} value-{i}\r\n", i % 10));
                        }
                        batch.push_str("DEL k9\r\nPING\r\n");
                        s.write_all(batch.as_bytes()).await.unwrap();
                        let mut got = Vec::new();
                        while !got.ends_with(b"PONG\r\n") {
                            let n = s.read(&mut buf).await.unwrap();
                            assert!(n > 0);
                            got.extend_from_slice(&buf[..n]);
                        }
                        assert_eq!(
                            got,
                            b"OK\r\n"
                                .repeat(2000)
                                .into_iter()
                                .chain(b"(integer) 1\r\nPONG\r\n".iter().copied())
                                .collect::<Vec<u8>>()
                        );
                        // The rewrite runs in the background: wait for it.
                        loop {
                            s.write_all(b"INFO\r\n").await.unwrap();
                            let mut info = String::new();
                            while !info.contains("aof_last_rewrite_error:") {
                                let n = s.read(&mut buf).await.unwrap();
                                info.push_str(&String::from_utf8_lossy(&buf[..n]));
                            }
                            if !info.contains("aof_rewrites:0") {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    } else {
                        s.write_all(b"DUMP\r\nINFO\r\n").await.unwrap();
                        let mut got = String::new();
                        while !got.contains("aof_last_rewrite_error:") {
                            let n = s.read(&mut buf).await.unwrap();
                            assert!(n > 0);
                            got.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                        assert!(
                            got.starts_with("(9 pairs)\r\n\"k0\" \"value-1990\"\r\n"),
                            "{got}"
                        );
                        assert!(got.contains("\"k8\" \"value-1998\"\r\n"), "{got}");
                        assert!(!got.contains("k9"), "{got}");
                        assert!(got.contains("aof_enabled:1"), "{got}");
                    }
                    drop(s);
                    trigger.trigger();
                    server.await.unwrap();
                })
                .await;
            let size = std::fs::metadata(dir.join(persist::LOG_FILE))
                .unwrap()
                .len();
            // 2001 records of ~30 bytes without compaction.
            assert!(
                size < 20_000,
                "round {round}: the log was not compacted: {size} bytes"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
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
