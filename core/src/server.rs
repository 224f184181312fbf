//! The server state machine: the store, the commands applied to it, and the
//! per-connection session that turns bytes into replies.

use crate::aof::{self, Journal, LogStatus, Record, WriteOutcome};
use crate::codec::{Decoder, Dialect, Limits};
use crate::command::Command;
use crate::reply::Reply;
use crate::store::Store;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Input limits applied to every connection.
    pub limits: Limits,
    /// Seed for the store's hash function; the driver passes a random one.
    pub hash_seed: u64,
    /// Password connections must give with `AUTH` (none: no authentication).
    pub password: Option<crate::auth::Password>,
}

/// Counters reported by `INFO`. The connection counters are kept by the
/// driver, which is the one that sees connections come and go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Commands executed (errors included).
    pub commands: u64,
    /// Error replies sent.
    pub errors: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_current: u64,
    /// Connections refused by the client cap.
    pub connections_rejected: u64,
    /// Connections closed for idling or stalling mid-command.
    pub connections_timed_out: u64,
}

/// The store and the commands that act on it. One instance is shared by all
/// connections of a server.
///
/// With the log enabled ([`Server::enable_log`]), every `PUT` and every key
/// removed by `DEL` also produces a record, which the driver takes with
/// [`Server::take_log_records`] and reports stored with
/// [`Server::log_stored`]; the connection holds the write's reply (and every
/// later one) until then. See [`Journal`].
#[derive(Debug)]
pub struct Server {
    store: Store,
    stats: ServerStats,
    config: ServerConfig,
    journal: Option<Journal>,
}

impl Server {
    /// An empty server.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            store: Store::new(config.hash_seed),
            stats: ServerStats::default(),
            config,
            journal: None,
        }
    }

    /// Turns the log on: from now on writes produce records. Records replayed
    /// before (with [`Server::apply_record`]) are not logged again.
    pub fn enable_log(&mut self, status: LogStatus) {
        self.journal = Some(Journal::new(status));
    }

    /// The log's state, if the log is on.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The log facts shown by `INFO`, for the driver to update.
    pub fn log_status_mut(&mut self) -> Option<&mut LogStatus> {
        self.journal.as_mut().map(Journal::status_mut)
    }

    /// Applies a record replayed from the log at start. Not counted as a
    /// command, and not logged again.
    pub fn apply_record(&mut self, record: &Record) {
        match record {
            Record::Put { key, value } => self.store.put(key, value),
            Record::Del { key } => {
                self.store.remove(key);
            }
        }
    }

    /// LSN of the newest record produced (0 with the log off or before any
    /// write).
    pub fn log_lsn(&self) -> u64 {
        self.journal.as_ref().map_or(0, Journal::last_lsn)
    }

    /// The records produced since the last call, encoded back to back, with
    /// the LSN of the last one; `None` if there are none.
    pub fn take_log_records(&mut self) -> Option<(Bytes, u64)> {
        self.journal.as_mut()?.take()
    }

    /// The driver stored every record up to LSN `upto` (written, and synced
    /// if the fsync policy says so): their replies may go.
    pub fn log_stored(&mut self, upto: u64) {
        if let Some(j) = &mut self.journal {
            j.stored(upto);
        }
    }

    /// The log failed: every write not yet stored is rolled back and its
    /// reply becomes an error naming `error`; further writes are refused
    /// until [`Server::log_recovered`].
    pub fn log_failed(&mut self, error: &str) {
        let Some(j) = &mut self.journal else { return };
        // Newest first, so a key written twice gets its oldest value back.
        for undo in j.fail(error).into_iter().rev() {
            match undo.old {
                Some(old) => self.store.put(&undo.key, &old),
                None => {
                    self.store.remove(&undo.key);
                }
            }
        }
    }

    /// The log works again (the driver rewrote it from the store): writes
    /// are accepted again.
    pub fn log_recovered(&mut self) {
        if let Some(j) = &mut self.journal {
            j.recovered();
        }
    }

    /// How the write whose last record has LSN `lsn` stands.
    pub fn write_outcome(&self, lsn: u64) -> WriteOutcome {
        self.journal
            .as_ref()
            .map_or(WriteOutcome::Stored, |j| j.outcome(lsn))
    }

    /// The settings in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The store, read-only.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The counters, for the driver's connection bookkeeping.
    pub fn stats_mut(&mut self) -> &mut ServerStats {
        &mut self.stats
    }

    /// Counts an error reply that never reached [`Server::execute`] (a
    /// decoding or parsing error).
    pub fn record_error(&mut self) {
        self.stats.commands += 1;
        self.stats.errors += 1;
    }

    /// Applies a command and returns its reply.
    #[must_use]
    pub fn execute(&mut self, cmd: Command) -> Reply {
        self.stats.commands += 1;
        let reply = match cmd {
            Command::Get { key } => match self.store.get(&key) {
                Some(v) => Reply::Bulk(Bytes::copy_from_slice(v)),
                None => Reply::Nil,
            },
            Command::Put { key, value } => match &mut self.journal {
                None => {
                    self.store.put(&key, &value);
                    Reply::ok()
                }
                Some(j) => {
                    if let Some(e) = j.refusing() {
                        Reply::Error(e.clone())
                    } else if aof::put_len(key.len(), value.len()) - aof::RECORD_HEADER_LEN
                        > aof::MAX_BODY_LEN
                    {
                        Reply::Error(Bytes::from_static(b"ERR value too large for the log"))
                    } else {
                        let old = self.store.replace(&key, &value);
                        j.put(&key, &value, old);
                        Reply::ok()
                    }
                }
            },
            Command::Del { keys } => match &mut self.journal {
                None => Reply::Integer(keys.iter().filter(|k| self.store.remove(k)).count() as i64),
                Some(j) => match j.refusing() {
                    Some(e) => Reply::Error(e.clone()),
                    None => {
                        let mut removed = 0;
                        for key in &keys {
                            if let Some(old) = self.store.take(key) {
                                j.del(key, old);
                                removed += 1;
                            }
                        }
                        Reply::Integer(removed)
                    }
                },
            },
            Command::Dump => Reply::Pairs(self.store.dump()),
            Command::Info => Reply::Text(self.info()),
            Command::ConfigGet { parameter } => config_get(&parameter, self.journal.is_some()),
            other => local_reply(other, "server"),
        };
        if reply.is_error() {
            self.stats.errors += 1;
        }
        reply
    }

    fn info(&self) -> String {
        let s = &self.stats;
        let mut info = format!(
            "# Server\nrole:server\n# Keyspace\nkeys:{}\ndata_bytes:{}\n# Stats\ncommands:{}\nerrors:{}\nconnections_total:{}\nconnections_current:{}\nconnections_rejected:{}\nconnections_timed_out:{}\n# Persistence\n",
            self.store.len(),
            self.store.data_bytes(),
            s.commands,
            s.errors,
            s.connections_total,
            s.connections_current,
            s.connections_rejected,
            s.connections_timed_out,
        );
        match &self.journal {
            Some(j) => j.info(&mut info),
            None => info.push_str("aof_enabled:0\n"),
        }
        info
    }
}

/// The text of `HELP`.
pub const HELP: &str = "\
Commands (case-insensitive):
  PUT key value     store value (the rest of the line); SET is an alias
  GET key           the value, or (nil) if the key is missing
  DEL key [key ...] remove keys; replies with how many existed
  DUMP              every pair, sorted by key
  PING [message]    PONG
  INFO              counters
  HELP              this text
  QUIT              close the connection";

/// Replies to the commands that do not touch the store, the same way at the
/// server and at the proxy. `role` names the answering side in `HELLO`.
pub(crate) fn local_reply(cmd: Command, role: &str) -> Reply {
    match cmd {
        Command::Ping { message: None } => Reply::Status(Bytes::from_static(b"PONG")),
        Command::Ping { message: Some(m) } | Command::Echo { message: m } => Reply::Bulk(m),
        Command::Quit | Command::Client => Reply::ok(),
        Command::Help => Reply::Text(HELP.to_string()),
        Command::CommandInfo => Reply::Array(Vec::new()),
        Command::ConfigGet { parameter } => config_get(&parameter, false),
        Command::Select { db } if &db[..] == b"0" => Reply::ok(),
        Command::Select { .. } => Reply::Error(Bytes::from_static(b"ERR DB index is out of range")),
        Command::Hello { protover } => match protover.as_deref() {
            None | Some(b"2") => Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"server")),
                Reply::Bulk(Bytes::from_static(b"kv")),
                Reply::Bulk(Bytes::from_static(b"version")),
                Reply::Bulk(Bytes::from_static(env!("CARGO_PKG_VERSION").as_bytes())),
                Reply::Bulk(Bytes::from_static(b"proto")),
                Reply::Integer(2),
                Reply::Bulk(Bytes::from_static(b"role")),
                Reply::Bulk(Bytes::copy_from_slice(role.as_bytes())),
            ]),
            Some(_) => Reply::Error(Bytes::from_static(b"NOPROTO this server speaks RESP2 only")),
        },
        // Store commands never reach here; answer defensively all the same.
        other => Reply::Error(Bytes::from(format!(
            "ERR '{}' is not handled here",
            other.name()
        ))),
    }
}

/// `CONFIG GET`: redis-benchmark reads these two on start; report what is
/// true of us (no RDB snapshots; an append-only log if it is on) rather than
/// an error.
fn config_get(parameter: &[u8], appendonly: bool) -> Reply {
    let aof: &'static [u8] = if appendonly { b"yes" } else { b"no" };
    let known: [(&'static [u8], &'static [u8]); 2] = [(b"save", b""), (b"appendonly", aof)];
    let items = known
        .iter()
        .filter(|(name, _)| parameter.eq_ignore_ascii_case(name) || parameter == b"*")
        .flat_map(|(n, v)| {
            [
                Reply::Bulk(Bytes::from_static(n)),
                Reply::Bulk(Bytes::from_static(v)),
            ]
        })
        .collect();
    Reply::Array(items)
}

/// How much encoded output a connection may hold before it stops decoding
/// more input: a client that pipelines faster than it reads replies is
/// throttled instead of growing our memory.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// One client connection to a [`Server`]: decodes requests, executes them,
/// and buffers the encoded replies.
///
/// Drain order for the driver: after input, call [`ServerConnection::process`],
/// write out everything [`ServerConnection::poll_transmit`] returns, repeat
/// while [`ServerConnection::has_backlog`] says so, then close if
/// [`ServerConnection::should_close`].
///
/// With the server's log on, the reply to a write is held until its records
/// are stored, and so is every reply after it on this connection (replies
/// keep the order of the requests). While [`ServerConnection::is_waiting`],
/// call [`ServerConnection::process`] again whenever the driver reports
/// records stored or failed: it releases what it can.
#[derive(Debug)]
pub struct ServerConnection {
    decoder: Decoder,
    out: BytesMut,
    close: bool,
    backlog: bool,
    /// Replies that wait for the log, in order; empty unless `marks` is not.
    held: BytesMut,
    /// The write replies in `held`, oldest first.
    marks: VecDeque<Mark>,
    /// Bytes ever taken off the front of `held`: the origin of the offsets
    /// in `marks`, which stay valid as `held` is consumed.
    held_base: u64,
    /// Whether the connection may run every command; decided on its first
    /// command from the server's configuration.
    authenticated: Option<bool>,
}

/// A write's reply inside the held output.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// LSN of the write's last record.
    lsn: u64,
    /// The reply's bytes in `held`, as offsets from `held_base`.
    start: u64,
    end: u64,
    /// To encode an error reply instead if the write fails.
    dialect: Dialect,
}

impl ServerConnection {
    /// A session for a new connection.
    pub fn new(limits: Limits) -> Self {
        ServerConnection {
            decoder: Decoder::new(limits),
            out: BytesMut::new(),
            close: false,
            backlog: false,
            held: BytesMut::new(),
            marks: VecDeque::new(),
            held_base: 0,
            authenticated: None,
        }
    }

    /// The decoder's receive buffer, to read into directly.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        self.decoder.buffer_mut()
    }

    /// Appends received bytes and processes them.
    pub fn handle_input(&mut self, server: &mut Server, data: &[u8]) {
        self.decoder.feed(data);
        self.process(server);
    }

    /// Releases the held replies whose writes are stored (or failed), then
    /// executes every complete command buffered, until the output reaches
    /// [`OUTPUT_HIGH_WATER`] or the connection must close.
    pub fn process(&mut self, server: &mut Server) {
        self.release(server);
        self.backlog = false;
        while !self.close {
            if self.out.len() + self.held.len() >= OUTPUT_HIGH_WATER {
                self.backlog = true;
                return;
            }
            let lsn_before = server.log_lsn();
            let (reply, dialect) = match self.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    let dialect = frame.dialect();
                    let authenticated = *self
                        .authenticated
                        .get_or_insert(server.config().password.is_none());
                    match Command::from_frame(frame, self.decoder.limits()) {
                        Ok(cmd) if !authenticated && !cmd.allowed_before_auth() => {
                            server.record_error();
                            (crate::auth::noauth(), dialect)
                        }
                        Ok(Command::Get { key }) => {
                            // The hot path: the value goes from the store
                            // into the output with no allocation of its own.
                            server.stats.commands += 1;
                            let target = if self.marks.is_empty() {
                                &mut self.out
                            } else {
                                &mut self.held
                            };
                            crate::reply::encode_value(dialect, server.store.get(&key), target);
                            continue;
                        }
                        Ok(Command::Auth {
                            password,
                            other_user,
                        }) => {
                            server.stats.commands += 1;
                            let (reply, ok) = crate::auth::check(
                                server.config().password.as_ref(),
                                &password,
                                other_user,
                            );
                            self.authenticated = Some(ok);
                            if reply.is_error() {
                                server.stats.errors += 1;
                            }
                            (reply, dialect)
                        }
                        Ok(Command::Quit) => {
                            self.close = true;
                            (server.execute(Command::Quit), dialect)
                        }
                        Ok(cmd) => (server.execute(cmd), dialect),
                        Err(e) => {
                            server.record_error();
                            (Reply::error(e), dialect)
                        }
                    }
                }
                Err(e) => {
                    server.record_error();
                    self.close = e.is_fatal();
                    (Reply::error(&e), e.dialect())
                }
            };
            let lsn = server.log_lsn();
            if lsn != lsn_before {
                // A logged write: its reply waits until the log has it.
                let start = self.held_base + self.held.len() as u64;
                reply.encode(dialect, &mut self.held);
                let end = self.held_base + self.held.len() as u64;
                self.marks.push_back(Mark {
                    lsn,
                    start,
                    end,
                    dialect,
                });
            } else if self.marks.is_empty() {
                reply.encode(dialect, &mut self.out);
            } else {
                reply.encode(dialect, &mut self.held);
            }
        }
    }

    /// Moves the replies no longer waiting for the log to the output, in
    /// order, turning those of failed writes into errors.
    fn release(&mut self, server: &mut Server) {
        while let Some(mark) = self.marks.front().copied() {
            let outcome = server.write_outcome(mark.lsn);
            let start = (mark.start - self.held_base) as usize;
            let end = (mark.end - self.held_base) as usize;
            match outcome {
                WriteOutcome::Pending => break,
                WriteOutcome::Stored => {
                    self.out.unsplit(self.held.split_to(end));
                }
                WriteOutcome::Failed(error) => {
                    self.out.unsplit(self.held.split_to(start));
                    Reply::Error(error).encode(mark.dialect, &mut self.out);
                    let _ = self.held.split_to(end - start);
                    server.stats.errors += 1;
                }
            }
            self.held_base = mark.end;
            self.marks.pop_front();
        }
        // Replies between the last released write and the next held one go
        // too (they do not depend on the log).
        match self.marks.front() {
            Some(next) => {
                let n = (next.start - self.held_base) as usize;
                if n > 0 {
                    self.out.unsplit(self.held.split_to(n));
                    self.held_base = next.start;
                }
            }
            None if !self.held.is_empty() => {
                let n = self.held.len() as u64;
                self.out.unsplit(self.held.split());
                self.held_base += n;
            }
            None => {}
        }
    }

    /// Whether replies are held until the log stores a write of this
    /// connection.
    pub fn is_waiting(&self) -> bool {
        !self.marks.is_empty()
    }

    /// Encoded replies ready to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        (!self.out.is_empty()).then(|| self.out.split())
    }

    /// Whether input remains that [`ServerConnection::process`] left for
    /// after the output is written.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Whether the connection should be closed once its output is written
    /// (after `QUIT` or a fatal protocol error, and no reply is still held).
    pub fn should_close(&self) -> bool {
        self.close && self.marks.is_empty()
    }

    /// Whether the client is in the middle of a command (for the idle
    /// timeout that cuts off stalled clients).
    pub fn is_mid_command(&self) -> bool {
        self.decoder.is_mid_command()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &mut Server, input: &[u8]) -> (String, bool) {
        let mut c = ServerConnection::new(server.config().limits);
        c.handle_input(server, input);
        let out = c.poll_transmit().map(|b| b.to_vec()).unwrap_or_default();
        (String::from_utf8_lossy(&out).into_owned(), c.should_close())
    }

    #[test]
    fn seed_transcript_inline() {
        let mut s = Server::new(ServerConfig::default());
        let (out, close) = run(
            &mut s,
            b"PUT name Derek Moss\r\nput age 18\r\nGET name\r\nPut gender M\r\ndump\r\nget nobody\r\n",
        );
        assert_eq!(
            out,
            "OK\r\nOK\r\n\"Derek Moss\"\r\nOK\r\n(3 pairs)\r\n\"age\" \"18\"\r\n\"gender\" \"M\"\r\n\"name\" \"Derek Moss\"\r\n(nil)\r\n"
        );
        assert!(!close);
    }

    #[test]
    fn resp_and_errors_keep_the_connection() {
        let mut s = Server::new(ServerConfig::default());
        let (out, close) = run(&mut s, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nFOO\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n");
        assert_eq!(
            out,
            "+OK\r\n(error) ERR unknown command 'FOO'\r\n$1\r\nv\r\n:1\r\n"
        );
        assert!(!close);
        assert_eq!(s.stats().errors, 1);
        assert_eq!(s.stats().commands, 4);
    }

    #[test]
    fn fatal_errors_and_quit_close_after_replying() {
        let mut s = Server::new(ServerConfig::default());
        let (out, close) = run(&mut s, b"PING\r\n*1\r\n:1\r\nPING\r\n");
        assert_eq!(
            out,
            "PONG\r\n-ERR Protocol error: expected '$' for a bulk string\r\n"
        );
        assert!(close);
        let (out, close) = run(&mut s, b"QUIT\r\nPING\r\n");
        assert_eq!(out, "OK\r\n");
        assert!(close);
    }

    #[test]
    fn handshake_commands_of_redis_tools() {
        let mut s = Server::new(ServerConfig::default());
        let (out, _) = run(&mut s, b"*2\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n");
        assert_eq!(
            out,
            "-ERR wrong number of arguments for 'config|get' command\r\n"
        );
        let (out, _) = run(&mut s, b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nsave\r\n*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n");
        assert_eq!(out, "*2\r\n$4\r\nsave\r\n$0\r\n\r\n*0\r\n");
        let (out, _) = run(&mut s, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
        assert!(out.starts_with("-NOPROTO"));
    }

    fn logged() -> Server {
        let mut s = Server::new(ServerConfig::default());
        s.enable_log(LogStatus {
            fsync: "always".into(),
            ..LogStatus::default()
        });
        s
    }

    fn take(c: &mut ServerConnection) -> String {
        let out = c.poll_transmit().map(|b| b.to_vec()).unwrap_or_default();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn logged_writes_hold_their_replies_and_later_ones_until_stored() {
        let mut s = logged();
        let mut a = ServerConnection::new(Limits::default());
        let mut b = ServerConnection::new(Limits::default());
        a.handle_input(
            &mut s,
            b"GET k\r\nPUT k v\r\nGET k\r\nDEL k nope\r\nPING\r\n",
        );
        // The GET before the write goes at once; the rest waits.
        assert_eq!(take(&mut a), "(nil)\r\n");
        assert!(a.is_waiting());
        let (records, upto) = s.take_log_records().unwrap();
        assert_eq!(upto, 2);
        assert_eq!(records.len(), 2 * aof::RECORD_HEADER_LEN + 6 + 2 + 2 + 1);
        // Another connection reads the applied write without waiting.
        b.handle_input(&mut s, b"GET k\r\n");
        assert_eq!(take(&mut b), "(nil)\r\n");
        s.log_stored(1);
        a.process(&mut s);
        assert_eq!(take(&mut a), "OK\r\n\"v\"\r\n");
        assert!(a.is_waiting());
        s.log_stored(2);
        a.process(&mut s);
        assert_eq!(take(&mut a), "(integer) 1\r\nPONG\r\n");
        assert!(!a.is_waiting());
        assert!(s.take_log_records().is_none());
        let (out, _) = run(&mut s, b"INFO\r\n");
        assert!(out.contains("aof_enabled:1"), "{out}");
        assert!(out.contains("aof_pending_records:0"), "{out}");
    }

    #[test]
    fn a_failed_log_rolls_writes_back_and_refuses_more_until_recovered() {
        let mut s = logged();
        let mut c = ServerConnection::new(Limits::default());
        c.handle_input(&mut s, b"PUT a 1\r\nPUT b 1\r\n");
        let _ = s.take_log_records();
        s.log_stored(2);
        c.process(&mut s);
        assert_eq!(take(&mut c), "OK\r\nOK\r\n");
        c.handle_input(
            &mut s,
            b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n2\r\nDEL b\r\nPUT c 3\r\nGET a\r\n",
        );
        assert_eq!(take(&mut c), "");
        s.log_failed("No space left on device");
        c.process(&mut s);
        // The GET ran before the failure was known and saw the write, as any
        // reader may until a write is stored (Redis behaves the same).
        assert_eq!(
            take(&mut c),
            "-ERR persistence failed: No space left on device\r\n\
             (error) ERR persistence failed: No space left on device\r\n\
             (error) ERR persistence failed: No space left on device\r\n\"2\"\r\n"
        );
        // Rolled back: memory matches the log.
        assert_eq!(s.store().get(b"a"), Some(&b"1"[..]));
        assert_eq!(s.store().get(b"b"), Some(&b"1"[..]));
        assert!(s.store().get(b"c").is_none());
        assert!(s.take_log_records().is_none());
        // Refused while failed, reads still served.
        c.handle_input(&mut s, b"PUT d 4\r\nGET b\r\n");
        assert_eq!(
            take(&mut c),
            "(error) ERR persistence failed: No space left on device\r\n\"1\"\r\n"
        );
        let (out, _) = run(&mut s, b"INFO\r\n");
        assert!(out.contains("aof_status:failed"), "{out}");
        s.log_recovered();
        c.handle_input(&mut s, b"PUT d 4\r\n");
        let (_, upto) = s.take_log_records().unwrap();
        s.log_stored(upto);
        c.process(&mut s);
        assert_eq!(take(&mut c), "OK\r\n");
        assert_eq!(s.stats().errors, 4);
    }

    #[test]
    fn quit_waits_for_held_replies() {
        let mut s = logged();
        let mut c = ServerConnection::new(Limits::default());
        c.handle_input(&mut s, b"PUT k v\r\nQUIT\r\n");
        assert!(!c.should_close());
        assert_eq!(take(&mut c), "");
        let (_, upto) = s.take_log_records().unwrap();
        s.log_stored(upto);
        c.process(&mut s);
        assert_eq!(take(&mut c), "OK\r\nOK\r\n");
        assert!(c.should_close());
    }

    #[test]
    fn replayed_records_are_not_commands() {
        let mut s = logged();
        s.apply_record(&Record::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        });
        s.apply_record(&Record::Del {
            key: Bytes::from_static(b"gone"),
        });
        assert_eq!(s.stats().commands, 0);
        assert_eq!(s.log_lsn(), 0);
        assert_eq!(s.store().len(), 1);
        let (out, _) = run(
            &mut s,
            b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$10\r\nappendonly\r\n",
        );
        assert_eq!(out, "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n");
    }

    #[test]
    fn output_high_water_throttles_processing() {
        let mut s = Server::new(ServerConfig::default());
        let mut c = ServerConnection::new(Limits::default());
        let value = vec![b'x'; 60_000];
        let mut put = b"PUT big ".to_vec();
        put.extend_from_slice(&value);
        put.extend_from_slice(b"\n");
        c.handle_input(&mut s, &put);
        let _ = c.poll_transmit();
        let many = b"GET big\n".repeat(20);
        c.handle_input(&mut s, &many);
        assert!(c.has_backlog());
        let first = c.poll_transmit().unwrap();
        assert!(first.len() >= OUTPUT_HIGH_WATER && first.len() < OUTPUT_HIGH_WATER + 70_000);
        let mut total = first.len();
        while c.has_backlog() {
            c.process(&mut s);
            total += c.poll_transmit().map_or(0, |b| b.len());
        }
        assert_eq!(total, 20 * (60_000 + 4));
    }
}
