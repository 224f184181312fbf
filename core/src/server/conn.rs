//! One client connection to a [`Server`]: decodes requests, runs them, and
//! buffers the encoded replies, holding those that wait for the log.

use super::Server;
use crate::aof::WriteOutcome;
use crate::codec::{Decoder, Dialect, Limits};
use crate::command::Command;
use crate::db::DumpStream;
use crate::reply::{Proto, Reply, ReplyEncoder, ReplyOut};
use crate::session::Session;
use bytes::BytesMut;
use std::collections::VecDeque;

/// How much encoded output a connection may hold before it stops decoding
/// more input: a client that pipelines faster than it reads replies is
/// throttled instead of growing our memory.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// How much of a streamed reply (`DUMP`) one step writes: enough that the
/// socket is kept busy, small enough that other clients wait for no more
/// than a fraction of a millisecond between steps.
pub const STREAM_CHUNK: usize = 64 * 1024;

/// A reply going out a piece at a time, with the encoding it was asked in.
#[derive(Debug)]
struct Streaming {
    stream: DumpStream,
    dialect: Dialect,
    proto: Proto,
}

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
    /// A fatal protocol error: close once the output is written.
    failed: bool,
    backlog: bool,
    /// Replies that wait for the log, in order; empty unless `marks` is not.
    held: BytesMut,
    /// The write replies in `held`, oldest first.
    marks: VecDeque<Mark>,
    /// Bytes ever taken off the front of `held`: the origin of the offsets
    /// in `marks`, which stay valid as `held` is consumed.
    held_base: u64,
    /// Made on the first command, from the server's configuration.
    session: Option<Session>,
    /// The client has sent a RESP command: it is a Redis client, and its
    /// inline commands get RESP replies too, as Redis gives.
    spoke_resp: bool,
    /// The peer's and the local address, until the session is made.
    peer: Option<(String, String)>,
    /// A reply being written as the socket drains; requests after it wait.
    stream: Option<Streaming>,
    /// The session was forgotten on the server (see `end_session`).
    ended: bool,
}

/// How inline (telnet) commands are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InlineReplies {
    /// In kv's human-readable form, until the connection speaks RESP or
    /// `HELLO` (the seed's behaviour, for telnet).
    #[default]
    Human,
    /// In RESP, as Redis answers them (`--inline-replies resp`).
    Resp,
}

/// The dialect a reply is written in: a RESP request's is RESP; an inline
/// one's is human-readable unless the connection has spoken RESP or
/// `HELLO`, or the server answers inline commands in RESP.
pub fn reply_dialect(
    request: Dialect,
    spoke_resp: &mut bool,
    inline: InlineReplies,
    proto: Proto,
) -> Dialect {
    match request {
        Dialect::Resp => {
            *spoke_resp = true;
            Dialect::Resp
        }
        Dialect::Inline
            if *spoke_resp || inline == InlineReplies::Resp || proto != Proto::Resp2 =>
        {
            Dialect::Resp
        }
        Dialect::Inline => Dialect::Inline,
    }
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
            failed: false,
            backlog: false,
            held: BytesMut::new(),
            marks: VecDeque::new(),
            held_base: 0,
            session: None,
            spoke_resp: false,
            peer: None,
            stream: None,
            ended: false,
        }
    }

    /// The peer's address and the local one, as `CLIENT LIST` shows them.
    pub fn set_peer(&mut self, addr: String, laddr: String) {
        self.peer = Some((addr, laddr));
    }

    /// The connection is gone: forgets what its session held on the
    /// server (watched keys). Drivers call it once, when the connection
    /// ends.
    pub fn end(&mut self, server: &mut Server) {
        self.end_session(server);
        if let Some(s) = self.stream.take() {
            server.abandon(s.stream);
        }
    }

    /// Forgets the session on the server, once: at `QUIT` already, so that
    /// no message or invalidation is sent to a client that will read no
    /// more (a redirect to it is broken from then on, as in Redis).
    fn end_session(&mut self, server: &mut Server) {
        if self.ended {
            return;
        }
        if let Some(session) = &mut self.session {
            self.ended = true;
            server.end_session(session);
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

    fn closing(&self) -> bool {
        self.failed || self.session.as_ref().is_some_and(|s| s.closing)
    }

    /// Releases the held replies whose writes are stored (or failed), then
    /// executes every complete command buffered, until the output reaches
    /// [`OUTPUT_HIGH_WATER`] or the connection must close.
    pub fn process(&mut self, server: &mut Server) {
        self.release(server);
        self.backlog = false;
        if let Some(s) = &self.session {
            if server.clients.is_killed(s.id) {
                // CLIENT KILL: closed at once, as Redis closes it.
                self.failed = true;
                self.out.clear();
                if let Some(s) = self.stream.take() {
                    server.abandon(s.stream);
                }
                self.end_session(server);
                return;
            }
        }
        if !self.advance_stream(server) {
            self.backlog = true;
            return;
        }
        self.deliver_mail(server);
        while !self.closing() {
            if self.out.len() + self.held.len() >= OUTPUT_HIGH_WATER {
                self.backlog = true;
                return;
            }
            let lsn_before = server.log_lsn();
            // Behind a held reply, every reply is held too; otherwise it
            // goes to the output, and moves to the held buffer afterwards
            // if it turns out to wait for the log.
            let holding = !self.marks.is_empty();
            let target = if holding {
                &mut self.held
            } else {
                &mut self.out
            };
            let start = target.len();
            let (dialect, errors) = match self.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    let peer = &mut self.peer;
                    let session = self.session.get_or_insert_with(|| {
                        let (addr, laddr) = peer.take().unwrap_or_default();
                        server.new_client(addr, laddr)
                    });
                    let dialect = reply_dialect(
                        frame.dialect(),
                        &mut self.spoke_resp,
                        server.config.inline_replies,
                        session.proto,
                    );
                    let mut enc = ReplyEncoder::with_proto(dialect, session.proto, target);
                    enc.streamed = Some(None);
                    enc.muted = session.reply.muted();
                    match Command::from_frame(frame, self.decoder.limits()) {
                        Ok(cmd) => {
                            // A queued command runs, and is timed, as part
                            // of its EXEC; a refused one is counted as such
                            // by `run`, not as a call.
                            let queues = super::tx::queues(session, &cmd);
                            let (errors, rejected) = (enc.errors, server.stats.rejected);
                            let started = server.stopwatch();
                            server.run(session, &cmd, &mut enc);
                            if !queues && server.stats.rejected == rejected {
                                let took = server.stopwatch() - started;
                                server
                                    .commands
                                    .record(cmd.spec(), enc.errors > errors, took);
                            }
                            self.decoder.recycle(cmd.into_args());
                        }
                        Err(e) => {
                            server.rejected(session);
                            enc.reply(e.into());
                        }
                    }
                    session.reply = session.reply.next();
                    if let Some(Some(stream)) = enc.streamed.take() {
                        self.stream = Some(Streaming {
                            stream,
                            dialect,
                            proto: session.proto,
                        });
                    }
                    (dialect, enc.errors)
                }
                Err(e) => {
                    server.stats.commands += 1;
                    self.failed = e.is_fatal();
                    let proto = self.session.as_ref().map_or(Proto::Resp2, |s| s.proto);
                    let dialect = reply_dialect(
                        e.dialect(),
                        &mut self.spoke_resp,
                        server.config.inline_replies,
                        proto,
                    );
                    Reply::from(e).encode(dialect, target);
                    (dialect, 1)
                }
            };
            server.stats.errors += errors;
            let lsn = server.log_lsn();
            if lsn != lsn_before {
                // A logged write: its reply waits until the log has it.
                if !holding {
                    // Nothing is held, so `held` is empty and its base is
                    // where this reply starts.
                    self.held = self.out.split_off(start);
                }
                let len = self.held.len() - if holding { start } else { 0 };
                let end = self.held_base + self.held.len() as u64;
                self.marks.push_back(Mark {
                    lsn,
                    start: end - len as u64,
                    end,
                    dialect,
                });
            }
            if self.stream.is_some() {
                // Its first step comes on the next call, after what is in
                // the output now has gone.
                self.backlog = true;
                return;
            }
            // After the reply: what the command itself caused (its own
            // invalidations, its subscriptions' first messages) follows
            // the reply, as Redis sends it.
            self.deliver_mail(server);
        }
        if self.closing() {
            self.end_session(server);
        }
    }

    /// Moves the connection's mail (published messages, invalidations)
    /// into its output, behind every reply already there: in the held
    /// output if replies wait for the log, so that the order stays that
    /// of the events. Never in the middle of a streamed reply.
    fn deliver_mail(&mut self, server: &mut Server) {
        let Some(session) = &self.session else {
            return;
        };
        if self.stream.is_some() {
            return;
        }
        let Some(mail) = server.take_mail(session.id) else {
            return;
        };
        let resp = self.spoke_resp
            || session.proto != Proto::Resp2
            || server.config.inline_replies == InlineReplies::Resp;
        let dialect = if resp { Dialect::Resp } else { Dialect::Inline };
        let target = if self.marks.is_empty() {
            &mut self.out
        } else {
            &mut self.held
        };
        let mut enc = ReplyEncoder::with_proto(dialect, session.proto, target);
        for message in mail.items {
            enc.reply(message);
        }
    }

    /// The connection's number at the server, once its first command
    /// made its session.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Whether the connection has subscriptions: it waits for messages,
    /// and is held to the subscribers' output limit.
    pub fn is_subscribed(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.subscriptions > 0)
    }

    /// Whether the connection has tracking on: it waits for invalidations
    /// (a proxy's tracked connection is idle whenever its cache answers).
    pub fn is_tracking(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.tracking)
    }

    /// Writes the next piece of a streamed reply, once every reply before
    /// it is out of the held buffer; whether no stream is left.
    fn advance_stream(&mut self, server: &Server) -> bool {
        let Some(s) = &mut self.stream else {
            return true;
        };
        if !self.marks.is_empty() {
            return false;
        }
        if s.stream.step(
            server.store(),
            &mut self.out,
            STREAM_CHUNK,
            s.dialect,
            s.proto,
        ) {
            self.stream = None;
            return true;
        }
        false
    }

    /// Whether a streamed reply has work to do now (it is not waiting for
    /// earlier replies held for the log): the driver calls
    /// [`ServerConnection::process`] again, after yielding to others.
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some() && self.marks.is_empty()
    }

    /// The memory held for this client's replies, not yet handed to the
    /// driver: held for the log, or a streamed reply's snapshot (see
    /// [`DumpStream::held_bytes`]). For the output-buffer limit.
    pub fn held_bytes(&self) -> usize {
        self.out.len() + self.held.len() + self.stream.as_ref().map_or(0, |s| s.stream.held_bytes())
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

    /// Replies the client is still owed that are not in the output yet
    /// (held for the log): the connection may not close before they go.
    pub fn owed(&self) -> usize {
        self.marks.len() + usize::from(self.stream.is_some())
    }

    /// Encoded replies ready to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        (!self.out.is_empty()).then(|| self.out.split())
    }

    /// Everything the connection has to send, processing until nothing is
    /// left to do (input held back by the high-water mark, streamed
    /// replies): for callers that want the output at once (tests, tools),
    /// not for drivers, which write each piece as it comes.
    pub fn transmit_all(&mut self, server: &mut Server) -> BytesMut {
        let mut all = BytesMut::new();
        loop {
            if let Some(out) = self.poll_transmit() {
                all.unsplit(out);
            }
            if !self.has_backlog() {
                return all;
            }
            self.process(server);
        }
    }

    /// Whether input remains that [`ServerConnection::process`] left for
    /// after the output is written.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Whether the connection should be closed once its output is written
    /// (after `QUIT` or a fatal protocol error, and no reply is still held).
    pub fn should_close(&self) -> bool {
        self.closing() && self.marks.is_empty() && self.stream.is_none()
    }

    /// Whether the client is in the middle of a command (for the idle
    /// timeout that cuts off stalled clients).
    pub fn is_mid_command(&self) -> bool {
        self.decoder.is_mid_command()
    }

    /// Requests read so far on this connection.
    pub fn requests_read(&self) -> u64 {
        self.decoder.requests_read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aof::{self, LogStatus};
    use crate::db::Effect;
    use crate::server::ServerConfig;
    use bytes::Bytes;

    fn run(server: &mut Server, input: &[u8]) -> (String, bool) {
        let mut c = ServerConnection::new(server.config().limits);
        c.handle_input(server, input);
        let out = c.transmit_all(server);
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
            // Once a client has spoken RESP, its inline commands get RESP
            // replies too, as Redis gives.
            "+OK\r\n-ERR unknown command 'FOO'\r\n$1\r\nv\r\n:1\r\n"
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
            "PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
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
        let (out, _) = run(&mut s, b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nsave\r\n");
        assert_eq!(out, "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
        // COMMAND DOCS (redis-cli's hints) is generated from the table: a
        // map of every command to its documentation.
        let (out, _) = run(&mut s, b"*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n");
        let count = crate::command::table::Table::get().commands().len();
        assert!(
            out.starts_with(&format!("*{}\r\n$3\r\nget\r\n*", 2 * count)),
            "{out}"
        );
        let (out, _) = run(&mut s, b"*2\r\n$5\r\nHELLO\r\n$1\r\n4\r\n");
        assert!(out.starts_with("-NOPROTO"), "{out}");
    }

    #[test]
    fn hello_3_switches_the_connection_to_resp3_and_back() {
        let mut s = Server::new(ServerConfig::default());
        let mut c = ServerConnection::new(Limits::default());
        c.handle_input(&mut s, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
        let hello = take(&mut c);
        // The HELLO reply itself is a RESP3 map, as Redis sends it.
        assert!(
            hello.starts_with("%9\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"),
            "{hello}"
        );
        assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
        c.handle_input(&mut s, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nGET k\r\n");
        assert_eq!(take(&mut c), "_\r\n_\r\n", "RESP3 nulls, inline too");
        c.handle_input(
            &mut s,
            b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        );
        let out = take(&mut c);
        assert!(
            out.starts_with("*18\r\n") && out.ends_with("$-1\r\n"),
            "{out}"
        );
    }

    #[test]
    fn transactions_queue_run_and_abort_as_in_redis() {
        let mut s = Server::new(ServerConfig::default());
        let mut a = ServerConnection::new(Limits::default());
        let mut b = ServerConnection::new(Limits::default());
        let cmd = |args: &[&str]| {
            let mut out = BytesMut::new();
            let args: Vec<bytes::Bytes> = args
                .iter()
                .map(|a| bytes::Bytes::copy_from_slice(a.as_bytes()))
                .collect();
            crate::command::encode_resp_args(&args, &mut out);
            out
        };
        a.handle_input(&mut s, &cmd(&["MULTI"]));
        a.handle_input(&mut s, &cmd(&["INCR", "n"]));
        a.handle_input(&mut s, &cmd(&["INCR", "n"]));
        assert_eq!(take(&mut a), "+OK\r\n+QUEUED\r\n+QUEUED\r\n");
        a.handle_input(&mut s, &cmd(&["EXEC"]));
        assert_eq!(take(&mut a), "*2\r\n:1\r\n:2\r\n");
        // A queuing error aborts the transaction.
        a.handle_input(&mut s, &cmd(&["MULTI"]));
        a.handle_input(&mut s, &cmd(&["INCR"]));
        a.handle_input(&mut s, &cmd(&["EXEC"]));
        let out = take(&mut a);
        assert!(
            out.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
            "{out}"
        );
        // A watched key written by another client makes EXEC return null.
        a.handle_input(&mut s, &cmd(&["WATCH", "n"]));
        b.handle_input(&mut s, &cmd(&["SET", "n", "10"]));
        a.handle_input(&mut s, &cmd(&["MULTI"]));
        a.handle_input(&mut s, &cmd(&["INCR", "n"]));
        a.handle_input(&mut s, &cmd(&["EXEC"]));
        assert_eq!(take(&mut a), "+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n");
        assert_eq!(s.store().get(b"n"), Some(&b"10"[..]));
        // So does its expiry, on the server's clock.
        s.set_time(1_000);
        b.handle_input(&mut s, &cmd(&["SET", "t", "v", "PX", "100"]));
        a.handle_input(&mut s, &cmd(&["WATCH", "t"]));
        s.set_time(1_100);
        a.handle_input(&mut s, &cmd(&["MULTI"]));
        a.handle_input(&mut s, &cmd(&["GET", "t"]));
        a.handle_input(&mut s, &cmd(&["EXEC"]));
        assert_eq!(take(&mut a), "+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n");
        // A closed connection's watches are forgotten.
        a.handle_input(&mut s, &cmd(&["WATCH", "x", "y"]));
        a.end(&mut s);
        assert_eq!(s.watched_keys(), 0);
    }

    #[test]
    fn client_list_shows_every_client_and_kill_closes_one() {
        let mut s = Server::new(ServerConfig::default());
        let mut a = ServerConnection::new(Limits::default());
        let mut b = ServerConnection::new(Limits::default());
        a.set_peer("10.0.0.1:1000".into(), "127.0.0.1:7070".into());
        b.set_peer("10.0.0.2:2000".into(), "127.0.0.1:7070".into());
        a.handle_input(&mut s, b"CLIENT SETNAME alpha\r\n");
        b.handle_input(&mut s, b"CLIENT ID\r\n");
        assert_eq!(take(&mut a), "OK\r\n");
        assert_eq!(take(&mut b), "(integer) 2\r\n");
        b.handle_input(&mut s, b"CLIENT LIST\r\n");
        let list = take(&mut b);
        assert!(
            list.contains("id=1 addr=10.0.0.1:1000 laddr=127.0.0.1:7070"),
            "{list}"
        );
        assert!(list.contains("name=alpha"), "{list}");
        assert!(list.contains("id=2 addr=10.0.0.2:2000"), "{list}");
        b.handle_input(
            &mut s,
            b"CLIENT KILL ID 2\r\nCLIENT KILL ADDR 10.0.0.1:1000\r\n",
        );
        assert_eq!(
            take(&mut b),
            "(integer) 0\r\n(integer) 1\r\n",
            "SKIPME by default"
        );
        assert!(s.clients_mut().take_kill_signal());
        a.handle_input(&mut s, b"PING\r\n");
        assert!(a.should_close(), "killed: closed without a reply");
        assert_eq!(take(&mut a), "");
        a.end(&mut s);
        b.handle_input(&mut s, b"CLIENT KILL 10.0.0.1:1000\r\n");
        assert_eq!(take(&mut b), "(error) ERR No such client\r\n");
    }

    #[test]
    fn a_key_with_px_100_is_there_at_99_ms_and_gone_at_100() {
        let mut s = Server::new(ServerConfig::default());
        let mut c = ServerConnection::new(Limits::default());
        s.set_time(5_000);
        c.handle_input(&mut s, b"SET k v PX 100\r\nPTTL k\r\n");
        assert_eq!(take(&mut c), "OK\r\n(integer) 100\r\n");
        s.set_time(5_099);
        c.handle_input(&mut s, b"GET k\r\n");
        assert_eq!(take(&mut c), "\"v\"\r\n");
        s.set_time(5_100);
        c.handle_input(&mut s, b"GET k\r\nEXISTS k\r\n");
        assert_eq!(take(&mut c), "(nil)\r\n(integer) 0\r\n");
        // Active expiry removes what nobody reads, when the timer says.
        c.handle_input(&mut s, b"SET a 1 PX 10\r\nSET b 1\r\n");
        let _ = take(&mut c);
        // k's deadline is still queued (it was removed on access): one
        // early wake-up that finds nothing.
        assert_eq!(s.poll_timeout(), Some(5_100));
        assert_eq!(s.handle_timeout(5_100), 0);
        assert_eq!(s.poll_timeout(), Some(5_110));
        assert_eq!(s.handle_timeout(5_109), 0);
        assert_eq!(s.handle_timeout(5_110), 1);
        assert_eq!(s.store().len(), 1);
        let (info, _) = run(&mut s, b"INFO keyspace\r\n");
        assert!(info.contains("db0:keys=1,expires=0"), "{info}");
        let (info, _) = run(&mut s, b"INFO stats\r\n");
        assert!(info.contains("expired_keys:2"), "{info}");
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
             -ERR persistence failed: No space left on device\r\n\
             -ERR persistence failed: No space left on device\r\n$1\r\n2\r\n"
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
            "-ERR persistence failed: No space left on device\r\n$1\r\n1\r\n"
        );
        let (out, _) = run(&mut s, b"INFO\r\n");
        assert!(out.contains("aof_status:failed"), "{out}");
        s.log_recovered();
        c.handle_input(&mut s, b"PUT d 4\r\n");
        let (_, upto) = s.take_log_records().unwrap();
        s.log_stored(upto);
        c.process(&mut s);
        assert_eq!(take(&mut c), "+OK\r\n");
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
        s.replay(&Effect::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            deadline: None,
        });
        s.replay(&Effect::Del {
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
    fn a_dump_streams_over_several_steps_and_whole_inside_a_transaction() {
        let mut s = Server::new(ServerConfig::default());
        let mut c = ServerConnection::new(Limits::default());
        let n = 3 * crate::db::DUMP_RUN;
        let mut load = String::new();
        for i in 0..n {
            load.push_str(&format!("SET k{i:05} v\r\n"));
        }
        let _ = run(&mut s, load.as_bytes());
        c.handle_input(&mut s, b"*1\r\n$4\r\nDUMP\r\n*1\r\n$4\r\nPING\r\n");
        let mut steps = 0;
        let mut out = Vec::new();
        while c.has_backlog() {
            assert!(c.is_streaming() && c.owed() == 1, "the DUMP is owed");
            out.extend(c.poll_transmit().unwrap_or_default());
            c.process(&mut s);
            steps += 1;
        }
        out.extend(c.poll_transmit().unwrap_or_default());
        assert!(steps > 3, "{steps} steps");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&format!("*{}\r\n$6\r\nk00000\r\n$1\r\nv\r\n", 2 * n)));
        assert!(
            text.ends_with("$1\r\nv\r\n+PONG\r\n"),
            "PING answered after it"
        );
        let (tx, _) = run(&mut s, b"MULTI\r\nDUMP\r\nEXEC\r\n");
        assert!(
            tx.starts_with("OK\r\nQUEUED\r\n(1 item)\r\n1) {\"k00000\": \"v\", "),
            "{}",
            &tx[..80]
        );
        assert_eq!(tx.matches(": \"v\"").count(), n, "every pair, whole");
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

#[cfg(test)]
mod push_tests {
    //! Messages between connections: publish/subscribe and tracking, the
    //! way two clients of one server see them.
    use super::*;
    use crate::server::ServerConfig;

    struct Peer(ServerConnection);

    impl Peer {
        fn new(server: &Server) -> Peer {
            Peer(ServerConnection::new(server.config().limits))
        }

        /// Sends `input` and returns everything the connection has for the
        /// peer then (replies and delivered mail).
        fn send(&mut self, server: &mut Server, input: &str) -> String {
            self.0.handle_input(server, input.as_bytes());
            self.take(server)
        }

        /// What the driver does when woken: process, then write.
        fn take(&mut self, server: &mut Server) -> String {
            self.0.process(server);
            let out = self.0.transmit_all(server);
            String::from_utf8_lossy(&out).into_owned()
        }
    }

    #[test]
    fn published_messages_reach_subscribers_in_their_protocol() {
        let mut s = Server::new(ServerConfig::default());
        let (mut sub2, mut sub3, mut publisher) = (Peer::new(&s), Peer::new(&s), Peer::new(&s));
        assert_eq!(
            sub2.send(&mut s, "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n"),
            "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
        );
        sub3.send(&mut s, "HELLO 3\r\n");
        assert_eq!(
            sub3.send(&mut s, "PSUBSCRIBE n*\r\n"),
            ">3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n"
        );
        s.take_woken();
        assert_eq!(
            publisher.send(&mut s, "PUBLISH news hi\r\n"),
            "(integer) 2\r\n"
        );
        assert_eq!(s.take_woken().len(), 2, "both subscribers are woken");
        assert_eq!(
            sub2.take(&mut s),
            "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
        );
        assert_eq!(
            sub3.take(&mut s),
            ">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
        );
        // RESP2's subscribed mode: only the subscription commands and PING.
        assert_eq!(
            sub2.send(&mut s, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"),
            "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        );
        assert_eq!(
            sub2.send(&mut s, "*1\r\n$11\r\nUNSUBSCRIBE\r\n"),
            "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n"
        );
        assert_eq!(
            publisher.send(&mut s, "PUBLISH news again\r\n"),
            "(integer) 1\r\n"
        );
        assert_eq!(sub2.take(&mut s), "", "no longer subscribed");
    }

    #[test]
    fn a_subscriber_that_does_not_read_is_cut_off_at_its_limit() {
        let mut s = Server::new(ServerConfig {
            pubsub_output_limit: crate::conn::OutputLimit {
                hard: 10_000,
                ..Default::default()
            },
            ..ServerConfig::default()
        });
        let (mut sub, mut publisher) = (Peer::new(&s), Peer::new(&s));
        sub.send(&mut s, "SUBSCRIBE c\r\n");
        let big = "x".repeat(1000);
        for _ in 0..20 {
            publisher.send(&mut s, &format!("PUBLISH c {big}\r\n"));
        }
        assert!(s.mail_bytes(1) <= 10_000, "mail stays bounded");
        assert_eq!(s.stats().output_limit_disconnections, 1);
        assert_eq!(sub.take(&mut s), "", "killed: nothing more is sent");
        assert!(sub.0.should_close());
        assert_eq!(publisher.send(&mut s, "PUBLISH c x\r\n"), "(integer) 0\r\n");
    }

    #[test]
    fn tracking_invalidates_what_a_client_read_after_its_reply() {
        let mut s = Server::new(ServerConfig::default());
        let (mut reader, mut writer) = (Peer::new(&s), Peer::new(&s));
        reader.send(&mut s, "HELLO 3\r\n");
        assert_eq!(reader.send(&mut s, "CLIENT TRACKING on\r\n"), "+OK\r\n");
        writer.send(&mut s, "SET k v1\r\nSET other x\r\n");
        assert_eq!(reader.send(&mut s, "GET k\r\n"), "$2\r\nv1\r\n");
        writer.send(&mut s, "SET k v2\r\nSET other y\r\n");
        let invalidate = ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        assert_eq!(reader.take(&mut s), invalidate, "only the key it read");
        writer.send(&mut s, "SET k v3\r\n");
        assert_eq!(reader.take(&mut s), "", "once, until read again");
        // Its own write: after the reply, as Redis 7 sends it.
        reader.send(&mut s, "GET k\r\n");
        assert_eq!(
            reader.send(&mut s, "DEL k\r\n"),
            format!(":1\r\n{invalidate}")
        );
        // Expiry invalidates as well.
        reader.send(&mut s, "SET k v PX 100\r\nGET k\r\n");
        reader.take(&mut s);
        let set_at = s.now();
        s.handle_timeout(set_at + 99);
        assert_eq!(reader.take(&mut s), "", "99 ms: not expired yet");
        s.handle_timeout(set_at + 100);
        assert_eq!(reader.take(&mut s), invalidate, "100 ms: expired");
        // A flush: a null invalidation, to every tracking client.
        writer.send(&mut s, "FLUSHALL\r\n");
        assert_eq!(reader.take(&mut s), ">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert_eq!(reader.send(&mut s, "CLIENT TRACKING off\r\n"), "+OK\r\n");
        reader.send(&mut s, "GET k\r\n");
        writer.send(&mut s, "SET k again\r\n");
        assert_eq!(reader.take(&mut s), "", "tracking off");
    }

    #[test]
    fn redirected_invalidations_reach_a_resp2_subscriber_and_noloop_skips_own_writes() {
        let mut s = Server::new(ServerConfig::default());
        let (mut target, mut client) = (Peer::new(&s), Peer::new(&s));
        target.send(
            &mut s,
            "*2\r\n$9\r\nSUBSCRIBE\r\n$20\r\n__redis__:invalidate\r\n",
        );
        let id = target.0.session_id().unwrap();
        client.send(&mut s, "PING\r\n");
        assert_eq!(
            client.send(
                &mut s,
                &format!("CLIENT TRACKING on REDIRECT {id} NOLOOP\r\n")
            ),
            "OK\r\n"
        );
        client.send(&mut s, "GET a\r\nGET b\r\nSET a 1\r\n");
        assert_eq!(target.take(&mut s), "", "NOLOOP: its own write");
        let mut other = Peer::new(&s);
        other.send(&mut s, "SET b 2\r\n");
        assert_eq!(
            target.take(&mut s),
            "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nb\r\n"
        );
        assert_eq!(
            client.send(&mut s, "CLIENT GETREDIR\r\n"),
            format!("(integer) {id}\r\n")
        );
    }

    #[test]
    fn keyspace_events_follow_the_configured_classes() {
        let mut s = Server::new(ServerConfig::default());
        let (mut sub, mut client) = (Peer::new(&s), Peer::new(&s));
        client.send(&mut s, "CONFIG SET notify-keyspace-events KEA\r\n");
        sub.send(&mut s, "HELLO 3\r\nPSUBSCRIBE __key*\r\n");
        sub.take(&mut s);
        client.send(
            &mut s,
            "SET k 1 PX 100\r\nINCR k\r\nDEL k\r\nSET gone x PX 50\r\n",
        );
        let now = s.now();
        s.handle_timeout(now + 49);
        s.handle_timeout(now + 50);
        let out = sub.take(&mut s);
        let events: Vec<&str> = out
            .split(">4\r\n")
            .filter(|m| m.contains("__keyevent@0__:"))
            .map(|m| {
                m.split("__keyevent@0__:")
                    .nth(1)
                    .unwrap()
                    .split("\r\n")
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            events,
            ["set", "expire", "incrby", "del", "set", "expire", "expired"]
        );
        assert!(
            out.contains("$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n"),
            "{out}"
        );
        client.send(&mut s, "CONFIG SET notify-keyspace-events En\r\n");
        assert_eq!(
            client.send(&mut s, "CONFIG GET notify-keyspace-events\r\n"),
            "(1 entry)\r\n1# \"notify-keyspace-events\" => \"nE\"\r\n"
        );
        client.send(&mut s, "SET fresh 1\r\nSET fresh 2\r\n");
        let out = sub.take(&mut s);
        assert_eq!(
            out.matches("__keyevent@0__:new").count(),
            1,
            "only when created: {out}"
        );
    }

    #[test]
    fn the_tracking_table_is_bounded() {
        let mut s = Server::new(ServerConfig::default());
        let mut reader = Peer::new(&s);
        reader.send(
            &mut s,
            "HELLO 3\r\nCLIENT TRACKING on\r\nCONFIG SET tracking-table-max-keys 10\r\n",
        );
        reader.take(&mut s);
        let mut gets = String::new();
        for i in 0..20 {
            gets.push_str(&format!("GET k{i}\r\n"));
        }
        let out = reader.send(&mut s, &gets);
        assert_eq!(out.matches("invalidate").count(), 10, "{out}");
        assert_eq!(s.tracking.key_count(), 10);
    }
}
