//! The plumbing every service shares: its thread and runtime ([`service`]),
//! graceful shutdown and signals ([`shutdown`]), the core's time on Tokio's
//! clock ([`clock`]), the process facts `INFO` shows ([`host`]), the
//! allocator and its count of used memory ([`memory`]), and listeners and
//! sockets ([`net`]).

pub(crate) mod clock;
pub(crate) mod host;
pub(crate) mod memory;
pub(crate) mod net;
pub(crate) mod service;
pub(crate) mod shutdown;

/// Lets every other task of the thread run, their sockets included, before
/// going on with long work done a step at a time (a streamed `DUMP`,
/// expiry or eviction past its budget).
///
/// `tokio::task::yield_now` is not enough: measured with a `DUMP` of
/// 500,000 keys to a fast reader, it let the task be run again before the
/// runtime looked at the other sockets often enough, and a `PING` on
/// another connection waited 7 to 160 ms (p50) behind it. Sleeping parks
/// the thread, so the runtime polls its sockets first; the price is up to
/// a timer tick (a millisecond) per step while nothing else is waiting.
pub(crate) async fn let_others_run() {
    tokio::time::sleep(std::time::Duration::from_micros(1)).await;
}
