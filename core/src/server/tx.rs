//! Transactions at the server: `MULTI`, `EXEC`, `DISCARD`, `WATCH` and
//! `UNWATCH`, with Redis's semantics.
//!
//! Commands sent after `MULTI` are checked as they arrive and queued
//! (`+QUEUED`); one that fails its checks (unknown, wrong arity, not
//! authenticated) aborts the transaction, and `EXEC` then answers
//! `EXECABORT`. `EXEC` runs the queue with nothing in between, since the
//! server runs one command at a time, and answers the array of replies.
//! A key `WATCH`ed before `MULTI` that changed since (written, removed,
//! given a deadline, flushed, or expired) makes `EXEC` answer null and run
//! nothing; the versions that tell are kept by the [`Db`].

use super::Server;
use crate::command::table::Flags;
use crate::command::{admit, Command};
use crate::db::{Db, Watched};
use crate::errors::ExecError;
use crate::reply::{Reply, ReplyOut};
use crate::session::Session;
use bytes::Bytes;

/// The most argument bytes one transaction may queue: past it the
/// transaction is aborted, so a client cannot grow the server's memory
/// without bound by never sending `EXEC`.
pub const MAX_QUEUED: usize = 512 * 1024 * 1024;

/// What a transaction command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOp {
    /// `MULTI`: start queuing.
    Multi,
    /// `EXEC`: run the queue.
    Exec,
    /// `DISCARD`: drop the queue.
    Discard,
    /// `WATCH key …`: make `EXEC` conditional on the keys.
    Watch,
    /// `UNWATCH`: forget the watched keys.
    Unwatch,
}

/// A connection's transaction state.
#[derive(Debug, Default, Clone)]
pub struct Transaction {
    /// The queued commands, while between `MULTI` and `EXEC`.
    queue: Option<Vec<Command>>,
    /// A queued command was refused: `EXEC` will abort.
    failed: bool,
    /// Argument bytes queued.
    queued_bytes: usize,
    /// The keys watched, as they were when watched.
    watched: Vec<Watched>,
}

impl Transaction {
    /// Whether `MULTI` is in progress.
    pub fn in_multi(&self) -> bool {
        self.queue.is_some()
    }

    /// Commands queued, or -1 outside `MULTI` (as `CLIENT LIST` shows).
    pub fn queued_count(&self) -> i64 {
        self.queue.as_ref().map_or(-1, |q| q.len() as i64)
    }

    /// Keys watched.
    pub fn watch_count(&self) -> usize {
        self.watched.len()
    }
}

/// Transaction state is compared by whether it is there, not its content
/// (commands hold their spec by reference).
impl PartialEq for Transaction {
    fn eq(&self, other: &Transaction) -> bool {
        self.in_multi() == other.in_multi() && self.watched == other.watched
    }
}

impl Eq for Transaction {}

/// Whether `MULTI` is in progress on the session.
pub(super) fn in_multi(session: &Session) -> bool {
    session.tx.as_ref().is_some_and(|t| t.in_multi())
}

/// Whether a queued command may grow memory (`DENYOOM`): then `EXEC` is
/// refused while memory is full, as Redis refuses it.
pub(super) fn queued_denyoom(session: &Session) -> bool {
    session
        .tx
        .as_ref()
        .and_then(|t| t.queue.as_ref())
        .is_some_and(|q| q.iter().any(|c| c.spec().flags.contains(Flags::DENYOOM)))
}

/// Whether `cmd` is to be queued rather than run: inside `MULTI`, every
/// command but the transaction commands and `QUIT`.
pub(super) fn queues(session: &Session, cmd: &Command) -> bool {
    in_multi(session) && !cmd.spec().flags.contains(Flags::IMMEDIATE)
}

/// Queues an admitted command; the reply to give now.
pub(super) fn queue(session: &mut Session, cmd: &Command) -> Reply {
    let Some(tx) = session.tx.as_mut() else {
        return Reply::ok();
    };
    if cmd.spec().flags.contains(Flags::NO_MULTI) {
        tx.failed = true;
        return ExecError::NotInMulti.into();
    }
    let bytes: usize = cmd.args().iter().map(Bytes::len).sum();
    tx.queued_bytes += bytes;
    if tx.queued_bytes > MAX_QUEUED {
        tx.failed = true;
        if let Some(q) = tx.queue.as_mut() {
            q.clear();
        }
        return ExecError::TransactionTooLarge(MAX_QUEUED).into();
    }
    if let Some(q) = tx.queue.as_mut() {
        q.push(cmd.clone());
    }
    Reply::Status(Bytes::from_static(b"QUEUED"))
}

/// A command was refused before it ran: inside `MULTI`, that aborts the
/// transaction.
pub(super) fn flag_error(session: &mut Session) {
    if let Some(tx) = session.tx.as_mut().filter(|t| t.in_multi()) {
        tx.failed = true;
    }
}

/// Forgets the session's transaction and watched keys.
pub(super) fn end(db: &mut Db, session: &mut Session) {
    if let Some(tx) = session.tx.take() {
        for w in &tx.watched {
            db.unwatch(w);
        }
    }
}

/// Runs a transaction command.
pub(super) fn run(
    server: &mut Server,
    session: &mut Session,
    op: TxOp,
    cmd: &Command,
    out: &mut dyn ReplyOut,
) {
    match op {
        TxOp::Multi => {
            if in_multi(session) {
                return out.reply(ExecError::NestedMulti.into());
            }
            let tx = session.tx.get_or_insert_with(Box::default);
            tx.queue = Some(Vec::new());
            tx.failed = false;
            tx.queued_bytes = 0;
            out.reply(Reply::ok());
        }
        TxOp::Discard => {
            if !in_multi(session) {
                return out.reply(ExecError::DiscardWithoutMulti.into());
            }
            end(&mut server.db, session);
            out.reply(Reply::ok());
        }
        TxOp::Watch => {
            if in_multi(session) {
                return out.reply(ExecError::WatchInMulti.into());
            }
            let tx = session.tx.get_or_insert_with(Box::default);
            for key in cmd.keys() {
                if !tx.watched.iter().any(|w| w.key() == key) {
                    tx.watched.push(server.db.watch(key));
                }
            }
            out.reply(Reply::ok());
        }
        TxOp::Unwatch => {
            if let Some(tx) = session.tx.as_mut() {
                for w in tx.watched.drain(..) {
                    server.db.unwatch(&w);
                }
            }
            out.reply(Reply::ok());
        }
        TxOp::Exec => exec(server, session, out),
    }
}

fn exec(server: &mut Server, session: &mut Session, out: &mut dyn ReplyOut) {
    // Outside MULTI, EXEC is an error that leaves the watched keys
    // watched, as in Redis.
    if !in_multi(session) {
        return out.reply(ExecError::ExecWithoutMulti.into());
    }
    let Some(mut tx) = session.tx.take() else {
        return out.reply(ExecError::ExecWithoutMulti.into());
    };
    let changed = tx.watched.iter().any(|w| server.db.changed_since(w));
    for w in &tx.watched {
        server.db.unwatch(w);
    }
    if tx.failed {
        return out.reply(ExecError::ExecAbort.into());
    }
    if changed {
        return out.reply(Reply::NilArray);
    }
    let queue = tx.queue.take().unwrap_or_default();
    let mut replies = Vec::with_capacity(queue.len());
    for cmd in &queue {
        let refusing = server.journal.as_ref().and_then(|j| j.refusing());
        let mut reply = None;
        match admit(cmd, session, refusing) {
            Err(e) => reply = Some(e),
            Ok(()) => server.execute_admitted(session, cmd, &mut reply),
        }
        let reply = reply.unwrap_or(Reply::Nil);
        if reply.is_error() {
            server.stats.errors += 1;
        }
        replies.push(reply);
    }
    out.reply(Reply::Array(replies));
}

/// Appends `cmds` as one transaction: `MULTI`, each, `EXEC`. Their
/// replies come back as `+OK`, one `+QUEUED` (or the error refusing it)
/// each, and `EXEC`'s (the proxy sends a client's transaction so, whole,
/// in front of a cluster).
pub fn encode_transaction(cmds: &[crate::command::Command], out: &mut bytes::BytesMut) {
    crate::command::encode_resp_args(&[bytes::Bytes::from_static(b"MULTI")], out);
    for cmd in cmds {
        cmd.encode_resp(out);
    }
    crate::command::encode_resp_args(&[bytes::Bytes::from_static(b"EXEC")], out);
}
