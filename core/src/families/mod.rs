//! The command families, as Redis's and Dragonfly's: each module registers
//! its commands' [`Spec`](crate::command::table::Spec)s (one const per
//! command, next to its handler) in a `COMMANDS` list, which the
//! [`Table`](crate::command::table::Table) gathers.
//!
//! - [`string`]: GET, SET (alias PUT);
//! - [`keyspace`]: DEL, EXISTS, DUMP;
//! - [`connection`]: PING, ECHO, QUIT, HELLO, AUTH, SELECT, CLIENT;
//! - [`server`]: INFO, CONFIG, COMMAND, HELP.
//!
//! Adding a command is one `Spec` in its family's list and one handler:
//! parsing, the dispatch checks, the proxy's routing, `COMMAND` and `HELP`
//! all follow from the spec.

pub mod connection;
pub mod keyspace;
pub mod server;
pub mod string;
