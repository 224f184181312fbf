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
//! - [`command`] and [`reply`]: requests and replies as values, and their
//!   encodings.
//! - [`server`]: the store and the per-connection session.
//! - [`aof`]: the append-only log's format, its replay decoder, and the
//!   journal that holds replies until their writes are stored.
//! - [`cache`]: the TTL cache, evicting by CLOCK (approximately LRU).
//! - [`proxy`]: the caching proxy.
//! - [`client`]: the request/reply client used by the CLI and the browser.
//! - [`time`]: the core's own [`Instant`].

#![warn(missing_docs)]

pub mod aof;
pub mod auth;
pub mod bridge;
pub mod cache;
pub mod client;
pub mod codec;
pub mod command;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod store;
pub mod time;

pub use cache::{CacheConfig, CacheStats, Lookup, TtlCache};
pub use client::{Client, ClientConfig, ClientError, ClientEvent, Failure, RequestId};
pub use codec::{DecodeError, Decoder, Dialect, Frame, Limits};
pub use command::{Command, CommandError};
pub use proxy::{
    AnnotatedReply, ClientId, ClientKind, Proxy, ProxyConfig, ProxyEvent, ProxyStats, Source,
    UpstreamState,
};
pub use reply::{Reply, ReplyDecodeError, ReplyDecoder, ReplyLimits};
pub use server::{Server, ServerConfig, ServerConnection, ServerStats};
pub use store::Store;
pub use time::{Clock, Instant};
