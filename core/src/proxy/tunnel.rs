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
//! The connection is the driver's to open and carry bytes on
//! ([`ClientStatus::tunnel`](super::ClientStatus::tunnel)); the proxy says
//! what to send and takes what arrives. The handshake (the upstream
//! password, and `HELLO 3` for a RESP3 client) goes first; its replies are
//! the proxy's, not the client's.
//!
//! [`ProxyConfig::max_dedicated`]: super::ProxyConfig::max_dedicated

use crate::codec::Dialect;
use crate::reply::{Proto, Reply, ReplyDecoder, ReplyLimits};
use bytes::BytesMut;

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
    decoder: ReplyDecoder,
    /// Replies of the handshake still to come (dropped: they are the
    /// proxy's).
    handshake: usize,
    /// The first error the handshake got, if any.
    pub refused: Option<Reply>,
}

impl Tunnel {
    /// A connection to open, whose handshake is `handshake` (encoded
    /// requests) with `replies` replies to take.
    pub fn new(handshake: BytesMut, replies: usize) -> Tunnel {
        Tunnel {
            state: TunnelState::Wanted,
            out: handshake,
            decoder: ReplyDecoder::new(ReplyLimits::default()),
            handshake: replies,
            refused: None,
        }
    }

    /// Takes bytes from the server and writes what they hold for the client
    /// into `out` (in `dialect` and `proto`); an error if they are not RESP.
    pub fn take_input(
        &mut self,
        data: &[u8],
        dialect: Dialect,
        proto: Proto,
        out: &mut BytesMut,
    ) -> Result<(), crate::reply::ReplyDecodeError> {
        self.decoder.feed(data);
        while let Some(reply) = self.decoder.next_reply()? {
            if self.handshake > 0 {
                self.handshake -= 1;
                if reply.is_error() && self.refused.is_none() {
                    self.refused = Some(reply);
                }
                continue;
            }
            reply.encode_as(dialect, proto, out);
        }
        Ok(())
    }
}
