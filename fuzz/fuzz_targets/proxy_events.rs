//! An arbitrary sequence of events into a `Proxy`, with a real `Server`
//! behind it: clients come and go and send commands (well-formed, in either
//! dialect, or raw bytes), the upstream connection opens, drops and carries
//! bytes in chunks of any size (or bytes no server would send), and the
//! clock moves. The driver follows the documented drain order after every
//! event and keeps the documented contract (a `ResetUpstream` drops the
//! connection; `handle_upstream_lost` before a new connection).
//!
//! Asserts that nothing panics and, where it can be checked:
//! - replies come in request order, one per request: `PING` tokens come
//!   back in order and nothing else looks like one (while every upstream
//!   byte came from the real server, so replies cannot be forged);
//! - no client gets a reply it did not ask for, and once the upstream is
//!   lost and every timer has run, every request has its reply;
//! - a reply from the cache is younger than the TTL;
//! - once `handle_timeout(now)` has run, `poll_timeout` is later than `now`.

#![no_main]

use bytes::{Bytes, BytesMut};
use kv_core::auth::Password;
use kv_core::{Lane, 
    CacheConfig, ClientId, ClientKind, Command, Instant, Proxy, ProxyConfig, ProxyEvent, Reply,
    ReplyDecoder, Server, ServerConfig, ServerConnection, Source,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Arbitrary)]
struct Input {
    ttl_ms: u8,
    request_timeout_ms: u8,
    max_pending: u8,
    max_upstream: u8,
    max_entries: u8,
    negative: bool,
    /// Clients must `AUTH` first.
    password: bool,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
enum Event {
    AddClient {
        messages: bool,
    },
    RemoveClient(u8),
    Send {
        client: u8,
        cmd: Cmd,
        inline: bool,
    },
    RawClientBytes {
        client: u8,
        data: Vec<u8>,
    },
    Reject {
        client: u8,
    },
    UpstreamConnect,
    UpstreamLost,
    /// Up to `n + 1` bytes from the proxy to the server.
    ToServer {
        n: u8,
    },
    /// Up to `n + 1` bytes of the server's replies to the proxy.
    ToProxy {
        n: u8,
    },
    /// Bytes no real server would send.
    RawUpstreamBytes(Vec<u8>),
    Advance {
        ms: u16,
    },
    Timeout,
}

#[derive(Debug, Arbitrary)]
enum Cmd {
    Get(u8),
    Put(u8, u8),
    Del(u8, u8),
    Ping(u16),
    Echo(u8),
    Dump,
    Info,
    Quit,
    Auth { right: bool },
}

impl Cmd {
    fn words(&self) -> Vec<String> {
        let key = |k: &u8| format!("k{}", k % 4);
        match self {
            Cmd::Get(k) => vec!["GET".into(), key(k)],
            Cmd::Put(k, v) => vec!["PUT".into(), key(k), format!("v{v}")],
            Cmd::Del(a, b) => vec!["DEL".into(), key(a), key(b)],
            Cmd::Ping(t) => vec!["PING".into(), format!("ping:{t}")],
            Cmd::Echo(m) => vec!["ECHO".into(), format!("echo:{m}")],
            Cmd::Dump => vec!["DUMP".into()],
            Cmd::Info => vec!["INFO".into()],
            Cmd::Quit => vec!["QUIT".into()],
            Cmd::Auth { right } => vec![
                "AUTH".into(),
                if *right { "secret" } else { "wrong" }.into(),
            ],
        }
    }

    fn command(&self) -> Command {
        Command::build(&self.words()).expect("the target sends valid commands")
    }

    fn inline(&self) -> Vec<u8> {
        format!("{}\r\n", self.words().join(" ")).into_bytes()
    }
}

/// What a request's reply must be.
#[derive(Debug)]
enum Expect {
    Ping(Bytes),
    Error,
    Other,
}

struct C {
    id: ClientId,
    messages: bool,
    /// Only well-formed commands were sent, so replies can be counted.
    clean: bool,
    /// Only RESP was sent (so a stream client's output is RESP to decode).
    resp: bool,
    quit: bool,
    expect: VecDeque<Expect>,
    decoder: ReplyDecoder,
}

struct Driver {
    proxy: Proxy,
    server: Server,
    /// The upstream connection as the server sees it, while there is one.
    link: Option<ServerConnection>,
    to_server: BytesMut,
    to_proxy: BytesMut,
    /// Every upstream byte so far came from the real server.
    upstream_clean: bool,
    clients: Vec<C>,
    now: Instant,
    ttl: Duration,
}

impl Driver {
    fn client(&mut self, i: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(i) % self.clients.len())
    }

    fn check(&mut self, ci: usize, reply: &Reply) {
        let c = &mut self.clients[ci];
        if !c.clean {
            return;
        }
        let expect = c
            .expect
            .pop_front()
            .unwrap_or_else(|| panic!("a reply nobody asked for: {reply:?}"));
        if !self.upstream_clean {
            return;
        }
        let is_token = matches!(reply, Reply::Bulk(b) if b.starts_with(b"ping:"));
        match expect {
            Expect::Ping(t) => assert_eq!(reply, &Reply::Bulk(t), "PING answered out of order"),
            Expect::Error => assert!(reply.is_error(), "rejected input answered {reply:?}"),
            Expect::Other => assert!(!is_token, "a PING token answered another request"),
        }
    }

    /// The documented drain order, until nothing moves.
    fn drain(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            while let Some(ev) = self.proxy.poll_event() {
                moved = true;
                match ev {
                    ProxyEvent::ClientReady(id) => {
                        let Some(ci) = self.clients.iter().position(|c| c.id == id) else {
                            continue;
                        };
                        self.take_output(ci);
                        if self.proxy.client_should_close(id) {
                            self.clients.remove(ci);
                            self.proxy.remove_client(id);
                        }
                    }
                    ProxyEvent::ResetUpstream(Lane::Main) => {
                        // The pipe cannot be trusted: drop it and reconnect
                        // (the proxy is already connecting).
                        self.link = None;
                        self.to_server.clear();
                        self.to_proxy.clear();
                        self.proxy.handle_upstream_connecting(Lane::Main, self.now);
                    }
                    // This target drives the main lane; bulk requests wait
                    // for a connection that never comes, and time out.
                    ProxyEvent::ResetUpstream(Lane::Bulk) => {
                        self.proxy.handle_upstream_connecting(Lane::Bulk, self.now);
                    }
                    ProxyEvent::UpstreamReadable(_) => {}
                }
            }
            if let Some(bytes) = self.proxy.poll_upstream_transmit(Lane::Main) {
                assert!(self.link.is_some(), "transmitting with no connection");
                self.to_server.extend_from_slice(&bytes);
            }
            for k in 0..self.clients.len() {
                let id = self.clients[k].id;
                if self.proxy.client_resumable(id) {
                    let before = self.proxy.stats().requests;
                    self.proxy.handle_client_resume(id, self.now);
                    moved |= self.proxy.stats().requests != before;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn take_output(&mut self, ci: usize) {
        let id = self.clients[ci].id;
        if self.clients[ci].messages {
            while let Some(a) = self.proxy.poll_client_reply(id) {
                if let Source::Cache { age } = a.source {
                    assert!(
                        age < self.ttl,
                        "cached reply of age {age:?}, TTL {:?}",
                        self.ttl
                    );
                }
                self.check(ci, &a.reply);
            }
        } else if let Some(bytes) = self.proxy.poll_client_transmit(id) {
            if !self.clients[ci].resp {
                return;
            }
            self.clients[ci].decoder.feed(&bytes);
            while let Some(r) = self.clients[ci]
                .decoder
                .next_reply()
                .expect("the proxy sent a malformed RESP reply")
            {
                self.check(ci, &r);
            }
        }
    }

    fn fire_timer(&mut self) {
        if self.proxy.poll_timeout().is_some_and(|t| t <= self.now) {
            self.proxy.handle_timeout(self.now);
            if let Some(t) = self.proxy.poll_timeout() {
                assert!(t > self.now, "poll_timeout still due after handle_timeout");
            }
        }
    }

    fn lose_upstream(&mut self) {
        self.link = None;
        self.to_server.clear();
        self.to_proxy.clear();
        self.proxy.handle_upstream_lost(Lane::Main, self.now);
    }

    fn event(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::AddClient { messages } => {
                if self.clients.len() < 8 {
                    let kind = if messages {
                        ClientKind::Messages
                    } else {
                        ClientKind::Stream
                    };
                    let id = self.proxy.add_client(kind, now);
                    self.clients.push(C {
                        id,
                        messages,
                        clean: true,
                        resp: true,
                        quit: false,
                        expect: VecDeque::new(),
                        decoder: ReplyDecoder::default(),
                    });
                }
            }
            Event::RemoveClient(i) => {
                if let Some(ci) = self.client(i) {
                    let c = self.clients.remove(ci);
                    self.proxy.remove_client(c.id);
                }
            }
            Event::Send {
                client,
                cmd,
                inline,
            } => {
                let Some(ci) = self.client(client) else {
                    return;
                };
                let c = &mut self.clients[ci];
                if c.quit {
                    return;
                }
                let bytes = if inline {
                    c.resp = false;
                    cmd.inline()
                } else {
                    let mut out = BytesMut::new();
                    cmd.command().encode_resp(&mut out);
                    out.to_vec()
                };
                c.expect.push_back(match &cmd {
                    Cmd::Ping(t) => Expect::Ping(Bytes::from(format!("ping:{t}"))),
                    _ => Expect::Other,
                });
                c.quit = matches!(cmd, Cmd::Quit);
                let id = c.id;
                self.proxy.handle_client_input(id, &bytes, now);
            }
            Event::RawClientBytes { client, data } => {
                let Some(ci) = self.client(client) else {
                    return;
                };
                let c = &mut self.clients[ci];
                c.clean = false;
                c.resp = false;
                let id = c.id;
                self.proxy.handle_client_input(id, &data, now);
            }
            Event::Reject { client } => {
                let Some(ci) = self.client(client) else {
                    return;
                };
                let c = &mut self.clients[ci];
                // Even while requests wait in the decoder (the client is
                // throttled), the rejection is answered after them; it used
                // to overtake them (see core/tests/fuzz_regressions.rs).
                if c.quit {
                    return;
                }
                // Answered inline: the stream output is no longer all RESP.
                c.resp = c.messages;
                c.expect.push_back(Expect::Error);
                let id = c.id;
                self.proxy
                    .reject_client_input(id, "rejected by the transport", now);
            }
            Event::UpstreamConnect => {
                if self.link.is_some() {
                    // A driver reconnecting drops the old connection first.
                    self.lose_upstream();
                }
                self.proxy.handle_upstream_connecting(Lane::Main, now);
                self.link = Some(ServerConnection::new(self.server.config().limits));
                self.proxy.handle_upstream_connected(Lane::Main, now);
            }
            Event::UpstreamLost => self.lose_upstream(),
            Event::ToServer { n } => {
                if let Some(link) = self.link.as_mut() {
                    let n = (usize::from(n) + 1).min(self.to_server.len());
                    let chunk = self.to_server.split_to(n);
                    link.handle_input(&mut self.server, &chunk);
                    loop {
                        while let Some(b) = link.poll_transmit() {
                            self.to_proxy.extend_from_slice(&b);
                        }
                        if !link.has_backlog() {
                            break;
                        }
                        link.process(&mut self.server);
                    }
                }
            }
            Event::ToProxy { n } => {
                let n = (usize::from(n) + 1).min(self.to_proxy.len());
                let chunk = self.to_proxy.split_to(n);
                self.proxy.handle_upstream_input(Lane::Main, &chunk, now);
            }
            Event::RawUpstreamBytes(data) => {
                if self.link.is_some() {
                    self.upstream_clean = false;
                    self.proxy.handle_upstream_input(Lane::Main, &data, now);
                }
            }
            Event::Advance { ms } => {
                self.now = now + Duration::from_millis(u64::from(ms));
                self.fire_timer();
            }
            Event::Timeout => {
                // Early or on time: both must be safe.
                self.proxy.handle_timeout(now);
                if let Some(t) = self.proxy.poll_timeout() {
                    assert!(t > now, "poll_timeout still due after handle_timeout");
                }
            }
        }
        self.drain();
    }
}

fuzz_target!(|input: Input| {
    let ttl = Duration::from_millis(u64::from(input.ttl_ms));
    let config = ProxyConfig {
        cache: CacheConfig {
            ttl,
            max_entries: 1 + usize::from(input.max_entries % 8),
            negative: input.negative,
            ..CacheConfig::default()
        },
        request_timeout: Duration::from_millis(1 + u64::from(input.request_timeout_ms)),
        max_pending_per_client: 1 + usize::from(input.max_pending % 8),
        max_upstream_in_flight: 1 + usize::from(input.max_upstream % 32),
        hash_seed: 1,
        password: input.password.then(|| Password::new("secret")),
        ..ProxyConfig::default()
    };
    let now = Instant::from_millis(1_000);
    let mut d = Driver {
        proxy: Proxy::new(config, now),
        server: Server::new(ServerConfig::default()),
        link: None,
        to_server: BytesMut::new(),
        to_proxy: BytesMut::new(),
        upstream_clean: true,
        clients: Vec::new(),
        now,
        ttl,
    };
    for ev in input.events.into_iter().take(512) {
        d.event(ev);
    }

    // The end: the upstream goes away and every timer runs; every request
    // of a well-behaved client must have been answered by then.
    d.lose_upstream();
    d.drain();
    d.now = d.now + Duration::from_secs(3_600);
    d.proxy.handle_timeout(d.now);
    d.drain();
    for c in &d.clients {
        // Replies are counted for message clients, and for stream clients
        // whose output stayed RESP.
        if c.clean && (c.messages || c.resp) {
            assert!(
                c.expect.is_empty(),
                "{} requests never answered: {:?}",
                c.expect.len(),
                c.expect
            );
        }
        if c.clean && c.resp && !c.messages {
            assert_eq!(c.decoder.buffered(), 0, "a partial reply");
        }
    }
});
