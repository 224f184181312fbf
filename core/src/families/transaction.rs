//! The transaction family: MULTI, EXEC, DISCARD, WATCH and UNWATCH. The
//! server runs them with the connection's transaction state
//! (`server/tx.rs`); the proxy refuses them, as its upstream pipe is
//! shared.

use crate::command::table::{Arg, Flags, Group, Handler, KeyAccess, Keys, Spec};
use crate::server::TxOp;

/// The family's commands.
pub const COMMANDS: &[Spec] = &[MULTI, EXEC, DISCARD, WATCH, UNWATCH];

const TX: Flags = Flags::FAST
    .union(Flags::ANYTIME)
    .union(Flags::IMMEDIATE)
    .union(Flags::CONN_STATE);

const MULTI: Spec = Spec::new(
    "multi",
    1,
    TX.union(Flags::NO_MULTI),
    Group::Transactions,
    "Starts a transaction: commands are queued until EXEC.",
    Handler::Tx(TxOp::Multi),
)
.since("1.2.0");

const EXEC: Spec = Spec::new(
    "exec",
    1,
    Flags::ANYTIME
        .union(Flags::IMMEDIATE)
        .union(Flags::CONN_STATE),
    Group::Transactions,
    "Runs the queued commands; nil if a watched key changed.",
    Handler::Tx(TxOp::Exec),
)
.since("1.2.0")
.complexity("Depends on commands in the transaction");

const DISCARD: Spec = Spec::new(
    "discard",
    1,
    TX,
    Group::Transactions,
    "Drops the queued commands and the watched keys.",
    Handler::Tx(TxOp::Discard),
)
.since("2.0.0");

const WATCH: Spec = Spec::new(
    "watch",
    -2,
    TX.union(Flags::NO_MULTI),
    Group::Transactions,
    "Makes the next EXEC conditional on the keys not changing.",
    Handler::Tx(TxOp::Watch),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Read))
.args(&[Arg::key("key").multiple()])
.since("2.2.0");

const UNWATCH: Spec = Spec::new(
    "unwatch",
    1,
    // Queued inside MULTI, as in Redis.
    Flags::FAST.union(Flags::ANYTIME).union(Flags::CONN_STATE),
    Group::Transactions,
    "Forgets the watched keys.",
    Handler::Tx(TxOp::Unwatch),
)
.since("2.2.0");
