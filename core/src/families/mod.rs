//! The command families, as Redis's and Dragonfly's: each module registers
//! its commands' [`Spec`](crate::command::table::Spec)s (one const per
//! command, next to its handler) in a `COMMANDS` list, which the
//! [`Table`](crate::command::table::Table) gathers.
//!
//! - [`string`]: GET, SET (alias PUT) and the rest of Redis's strings;
//! - [`keyspace`]: DEL, EXISTS, SCAN, the EXPIRE family, DUMP …;
//! - [`transaction`]: MULTI, EXEC, DISCARD, WATCH, UNWATCH;
//! - [`connection`]: PING, ECHO, QUIT, HELLO, AUTH, SELECT, CLIENT;
//! - [`server`]: INFO, CONFIG, COMMAND, HELP;
//! - [`pubsub`]: SUBSCRIBE, PUBLISH, PUBSUB ….
//!
//! Adding a command is one `Spec` in its family's list and one handler:
//! parsing, the dispatch checks, the proxy's routing, `COMMAND` and `HELP`
//! all follow from the spec.

pub mod connection;
pub mod keyspace;
pub mod parse;
pub mod pubsub;
pub mod server;
pub mod string;
pub mod transaction;
