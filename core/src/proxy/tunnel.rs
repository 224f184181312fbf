//! Dedicated upstream connections: a client whose commands need state on
//! a connection of their own at the server (a subscription, a transaction,
//! watched keys, `CLIENT REPLY`) gets one for as long as it stays
//! connected, bounded in number by [`ProxyConfig::max_dedicated`].
//!
//! From its first such command on, the client is *pinned*: every request
//! it sends goes, in order, to its own connection, and everything that
//! connection sends back (replies, published messages, the server's own
//! pushes) goes to the client in order, decoded and written again in the
//! client's dialect, so a telnet client keeps its readable replies. The
//! cache is bypassed for it; the keys of the writes it sends are dropped
//! from the cache at once, and with tracking the server's invalidations
//! drop them again once the writes are done (without tracking, another
//! client may read a value older than the write for up to the cache's TTL,
//! as with a write made at the server directly).
//!
//! A client pinned for a transaction alone is given back to the shared
//! pipe once the transaction is over: no `MULTI` open, no key watched, and
//! every request answered (each request of a transaction-only connection
//! has exactly one reply, the server's pushes aside). Anything else that
//! holds state at the server (a subscription, `CLIENT REPLY`, tracking, a
//! protocol switch) keeps the connection for as long as the client stays.
//!
//! The connection is the driver's to open and carry bytes on
//! ([`ClientStatus::tunnel`](super::ClientStatus::tunnel)); the proxy says
//! what to send and takes what arrives. The handshake (the proxy's `AUTH`
//! for the server, and `HELLO 3` for a RESP3 client) goes first; its
//! replies are the proxy's, not the client's. The client's requests wait
//! for the `AUTH`'s answer: refused, they are never sent (a server whose
//! `default` user is open would run them as that user, not the proxy's),
//! and each gets the refusal, in the server's words, before the client is
//! closed, as the shared lanes fail theirs.
//!
//! [`ProxyConfig::max_dedicated`]: super::ProxyConfig::max_dedicated

use super::upstream::Credentials;
use crate::codec::Dialect;
use crate::command::table::Handler;
use crate::command::Command;
use crate::errors::UpstreamError;
use crate::reply::{Proto, Reply, ReplyDecodeError, ReplyDecoder, ReplyLimits};
use crate::server::TxOp;
use bytes::{Bytes, BytesMut};

/// Where a dedicated connection stands, as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelState {
    /// The client has none.
    #[default]
    None,
    /// The driver is to connect it (and call
    /// [`Proxy::handle_tunnel_connected`](super::Proxy::handle_tunnel_connected)).
    Wanted,
    /// Connected: bytes flow both ways.
    Up,
}

/// A pinned client's dedicated connection.
#[derive(Debug)]
pub(super) struct Tunnel {
    pub state: TunnelState,
    /// Bytes for the server: the handshake, then the client's requests.
    pub out: BytesMut,
    /// The client's requests while the handshake's `AUTH` is unanswered.
    held: BytesMut,
    decoder: ReplyDecoder,
    /// Replies of the handshake still to come (dropped: they are the
    /// proxy's).
    handshake: usize,
    /// The handshake's first reply is the `AUTH`'s, given for this user
    /// (`Some(None)`: the default user).
    auth: Option<Option<Bytes>>,
    /// The server refused the proxy's `AUTH` here.
    refused: bool,
    /// Requests sent, and their replies received (pushes aside).
    sent: u64,
    received: u64,
    /// A `MULTI` is open; keys are watched.
    in_multi: bool,
    watching: bool,
    /// Something besides a transaction holds state on the connection: it
    /// stays the client's.
    sticky: bool,
}

/// Why what came on a dedicated connection ends it.
#[derive(Debug)]
pub(super) enum TunnelFault {
    /// Not RESP: nothing after it can be paired or trusted.
    Malformed,
    /// The server refused the proxy's `AUTH`: this many requests of the
    /// client's, never sent, were answered with the refusal.
    Refused(u64),
}

impl Tunnel {
    /// A connection to open, which authenticates with `auth` and speaks
    /// `proto`, the client's protocol.
    pub fn new(auth: Option<Credentials<'_>>, proto: Proto) -> Tunnel {
        let mut out = BytesMut::new();
        if let Some(auth) = &auth {
            auth.encode(&mut out);
        }
        if proto == Proto::Resp3 {
            crate::families::connection::encode_hello3(&mut out);
        }
        Tunnel {
            state: TunnelState::Wanted,
            out,
            held: BytesMut::new(),
            decoder: ReplyDecoder::new(ReplyLimits::default()),
            handshake: usize::from(auth.is_some()) + usize::from(proto == Proto::Resp3),
            auth: auth.map(|a| a.user.cloned()),
            refused: false,
            sent: 0,
            received: 0,
            in_multi: false,
            watching: false,
            sticky: false,
        }
    }

    /// Bytes the client has queued for the server, sent or held.
    pub fn queued(&self) -> usize {
        self.out.len() + self.held.len()
    }

    /// Queues the client's request for the server: after the `AUTH`'s
    /// answer, if that is still to come. Sent under its canonical name,
    /// as on the shared lanes (kv's `PUT` is `SET`).
    pub fn send(&mut self, cmd: &Command) {
        if self.auth.is_some() {
            cmd.encode_resp(&mut self.held);
        } else {
            cmd.encode_resp(&mut self.out);
        }
        self.sent(cmd);
    }

    /// Notes a request sent on the connection: what it does to the
    /// connection's state.
    fn sent(&mut self, cmd: &Command) {
        self.sent += 1;
        match cmd.spec().handler {
            Handler::Data(_) => {}
            Handler::Tx(TxOp::Multi) => self.in_multi = true,
            Handler::Tx(TxOp::Exec | TxOp::Discard) => {
                self.in_multi = false;
                self.watching = false;
            }
            Handler::Tx(TxOp::Watch) => self.watching = true,
            Handler::Tx(TxOp::Unwatch) => self.watching = false,
            // Subscriptions, connection settings (CLIENT REPLY, TRACKING,
            // HELLO …): state the server keeps for the connection.
            _ => self.sticky = true,
        }
    }

    /// Whether the client can go back to the shared pipe: its transaction
    /// is over and answered, and nothing else holds state here.
    pub fn releasable(&self) -> bool {
        !self.sticky
            && !self.in_multi
            && !self.watching
            && self.handshake == 0
            && self.sent == self.received
    }

    /// Takes bytes from the server and writes what they hold for the client
    /// into `out` (in `dialect` and `proto`); an error if they end the
    /// connection (see [`TunnelFault`]).
    pub fn take_input(
        &mut self,
        data: &[u8],
        dialect: Dialect,
        proto: Proto,
        out: &mut BytesMut,
    ) -> Result<(), TunnelFault> {
        if self.refused {
            return Ok(());
        }
        self.decoder.feed(data);
        while let Some(reply) = self
            .decoder
            .next_reply()
            .map_err(|_: ReplyDecodeError| TunnelFault::Malformed)?
        {
            if self.handshake > 0 {
                self.handshake -= 1;
                if let Some(user) = self.auth.take() {
                    if let Reply::Error(line) = &reply {
                        self.refused = true;
                        self.held.clear();
                        let refusal =
                            Reply::from(UpstreamError::auth_refusal(line, user.as_deref()));
                        for _ in 0..self.sent {
                            refusal.encode_as(dialect, proto, out);
                        }
                        return Err(TunnelFault::Refused(self.sent));
                    }
                    // Accepted: the client's requests may go.
                    let held = std::mem::take(&mut self.held);
                    self.out.unsplit(held);
                }
                continue;
            }
            if !matches!(reply, Reply::Push(_)) {
                self.received += 1;
            }
            reply.encode_as(dialect, proto, out);
        }
        Ok(())
    }
}
