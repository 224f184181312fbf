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
