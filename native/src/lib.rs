//! `kv-native`: the Tokio drivers of the kv store, and the `kv` binary's
//! commands.
//!
//! The protocol, the store, the cache and the proxy's rules all live in
//! `kv-core`, as sans-IO state machines. This crate only moves bytes and
//! time between sockets and those machines:
//!
//! - [`server`]: one task per connection around [`kv_core::ServerConnection`].
//! - [`proxy`]: client tasks, an upstream task and a timer task around one
//!   [`kv_core::Proxy`], shared through a [`proxy::ProxyHandle`].
//! - [`persist`]: the server's append-only log: replay at start, the
//!   writer thread (group commit, fsync policies) and rewrites.
//! - [`cli`]: the `kv cli` client around [`kv_core::Client`].
//! - [`app`]: `kv server`, `kv proxy` and `kv up`: threads, announcements,
//!   signals.
//! - [`service`], [`net`], [`shutdown`], [`time`]: shared plumbing.
//! - [`args`]: the command line.
//!
//! Each service runs on its own thread with a single-threaded runtime, like
//! Redis: its machine sits in an `Rc<RefCell<…>>`, borrowed only between
//! awaits, and needs no lock.

#![warn(missing_docs)]

pub mod app;
pub mod args;
pub mod bridge;
pub mod cli;
pub mod net;
pub mod persist;
pub mod proxy;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod time;
