//! `kv-core`: the sans-IO heart of the kv store.
//!
//! Everything here is a pure state machine: bytes and time go in through
//! `handle_*` methods, bytes and events come out through `poll_*` methods.
//! Nothing opens a socket, spawns a task, reads a clock or draws a random
//! number, so the same code runs under Tokio, in a browser tab (wasm32),
//! and in tests that jump the clock by hours in microseconds.
//!
//! - [`codec`]: the request decoder for both dialects (inline for telnet,
//!   RESP2 for Redis tools), with limits on everything a peer can grow.
//! - [`command`]: the command table (what each command is), parsing, and
//!   the one dispatch step; [`families`]: the commands themselves, by
//!   family, each spec next to its handler.
//! - [`db`]: the database layer, whose writes report their effects, and
//!   the store under it.
//! - [`reply`]: replies as values and their encodings; [`errors`]: every
//!   error text that goes on the wire.
//! - [`server`]: the server and its client connections; [`session`]: the
//!   connection state both nodes keep.
//! - [`aof`]: the append-only log's format, its replay decoder, and the
//!   journal that holds replies until their writes are stored.
//! - [`cache`]: the TTL cache, evicting by CLOCK (approximately LRU).
//! - [`proxy`]: the caching proxy.
//! - [`conn`]: the timing policy of a client connection (idle, stalled
//!   output, half-close, shutdown); [`backoff`]: reconnection backoff.
//! - [`client`]: the request/reply client used by the CLI and the browser;
//!   [`bridge`]: the browser's WebSocket message format and rules.
//! - [`time`]: the core's own [`Instant`].

#![warn(missing_docs)]

pub mod aof;
pub mod auth;
pub mod backoff;
pub mod bridge;
pub mod cache;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod command;
pub mod conn;
pub mod db;
pub mod errors;
pub mod families;
pub mod glob;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod session;
pub mod stats;
pub mod time;

pub use backoff::{Backoff, Reconnect};
pub use cache::{CacheConfig, CacheStats, Lookup, TtlCache};
pub use client::{Client, ClientConfig, ClientError, ClientEvent, Failure, RequestId};
pub use codec::{Decoder, Dialect, Frame, Limits};
pub use command::Command;
pub use conn::{ConnConfig, ConnPolicy, End, OutputLimit, Owed, Stall};
pub use db::{Db, Effect};
pub use errors::{CommandError, DecodeError, ExecError, UpstreamError};
pub use proxy::{
    AnnotatedReply, ClientId, ClientKind, ClientStatus, Lane, Proxy, ProxyConfig, ProxyEvent,
    ProxyStats, Source, TunnelState, UpstreamServer, UpstreamState, UpstreamTracking,
};
pub use reply::{Proto, Reply, ReplyDecodeError, ReplyDecoder, ReplyLimits};
pub use server::{Server, ServerConfig, ServerConnection, ServerStats};
pub use session::Session;
pub use time::{Clock, Instant};
