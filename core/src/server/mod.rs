//! The server state machine: the database, the commands applied to it, and
//! the per-connection session ([`ServerConnection`]) that turns bytes into
//! replies.
//!
//! [`Server::run`] is the server's one dispatch step: the table's checks
//! ([`admit`]), the memory bound ([`memory`]), the handler, and the log
//! records of the command's effects.

mod clients;
mod conn;
mod mail;
pub mod memory;
pub mod notify;
pub mod pubsub;
pub mod tracking;
mod tx;

pub use clients::{ClientEntry, ClientFacts, Clients};
pub use conn::{reply_dialect, InlineReplies, ServerConnection, OUTPUT_HIGH_WATER};
pub use mail::{Mailbox, Posted};
pub use memory::MaxMemory;
pub use pubsub::PubSubOp;
pub use tx::{encode_transaction, Transaction, TxOp, MAX_QUEUED};

use crate::aof::{self, Journal, LogStatus, WriteOutcome};
use crate::auth::Password;
use crate::codec::Limits;
use crate::command::table::{Flags, Handler};
use crate::command::{admit, Command};
use crate::conn::OutputLimit;
use crate::db::{Db, DumpStream, Effect};
use crate::errors::{CommandError, ExecError};
use crate::reply::{Proto, Reply, ReplyOut};
use crate::session::{HostFacts, KillFilter, Local, Node, Role, Session, TrackingRequest};
use crate::stats::CommandStats;
use crate::time::Instant;
use bytes::Bytes;

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Input limits applied to every connection.
    pub limits: Limits,
    /// Seed for the store's hash function; the driver passes a random one.
    pub hash_seed: u64,
    /// Password connections must give with `AUTH` (none: no authentication).
    pub password: Option<Password>,
    /// How inline commands are answered.
    pub inline_replies: InlineReplies,
    /// The memory bound (`maxmemory` and its policy); changed at run
    /// time by `CONFIG SET`.
    pub maxmemory: MaxMemory,
    /// How much output a client may hold: the bound of its mailbox (see
    /// [`mail`]); the driver applies the rest. Zero: none.
    pub output_limit: OutputLimit,
    /// The same for a client with subscriptions (Redis's `pubsub` class).
    pub pubsub_output_limit: OutputLimit,
}

/// What publish/subscribe and tracking hold and have sent, for the
/// metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Channels with subscribers.
    pub channels: usize,
    /// Patterns with subscribers.
    pub patterns: usize,
    /// Connections with subscriptions.
    pub subscribers: usize,
    /// Published messages delivered (one per recipient).
    pub messages_delivered: u64,
    /// Connections with tracking on.
    pub tracking_clients: usize,
    /// Keys in the tracking table.
    pub tracked_keys: usize,
    /// Invalidation messages sent.
    pub invalidations_sent: u64,
    /// Bytes of messages waiting for their connections.
    pub mail_bytes: usize,
}

/// Redis's limits for subscribers: 32 MiB, or 8 MiB for a minute.
pub const PUBSUB_OUTPUT_LIMIT: OutputLimit = OutputLimit {
    hard: 32 << 20,
    soft: 8 << 20,
    soft_for: std::time::Duration::from_secs(60),
};

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
    /// Clients disconnected for holding more output than their limit
    /// allows (Redis's `client_output_buffer_limit_disconnections`).
    pub output_limit_disconnections: u64,
    /// Commands refused before they ran (unknown, wrong arity, no auth,
    /// a transaction's queuing errors): Redis's `rejected_calls`.
    pub rejected: u64,
}

/// The database and the commands that act on it. One instance is shared by
/// all connections of a server.
///
/// With the log enabled ([`Server::enable_log`]), every effect of a write
/// also produces a record, which the driver takes with
/// [`Server::take_log_records`] and reports stored with
/// [`Server::log_stored`]; the connection holds the write's reply (and every
/// later one) until then. See [`Journal`].
#[derive(Debug)]
pub struct Server {
    db: Db,
    stats: ServerStats,
    config: ServerConfig,
    journal: Option<Journal>,
    /// The id the next connection's session gets (`CLIENT ID`).
    next_session: u64,
    host: HostFacts,
    clients: Clients,
    commands: CommandStats,
    /// The driver's clock, for timing commands (see [`Server::set_stopwatch`]).
    stopwatch: Option<fn() -> Instant>,
    /// Streamed replies whose client went away, their snapshots released
    /// a step at a time by [`Server::handle_timeout`].
    abandoned: Vec<DumpStream>,
    /// Used memory, as the driver last read it (see [`memory`]).
    meter: memory::Meter,
    /// Channels, patterns and their subscribers.
    pubsub: pubsub::PubSub,
    /// Who may have cached what (`CLIENT TRACKING`).
    tracking: tracking::Tracking,
    /// Messages for connections: published ones and invalidations.
    mail: mail::Mailboxes,
    /// The keyspace events published (`notify-keyspace-events`; see
    /// [`notify`]).
    notify_flags: u32,
}

impl Server {
    /// An empty server.
    pub fn new(config: ServerConfig) -> Self {
        let hash_seed = config.hash_seed;
        let mut db = Db::new(hash_seed);
        db.set_policy(config.maxmemory.policy);
        Server {
            db,
            stats: ServerStats::default(),
            config,
            journal: None,
            next_session: 1,
            host: HostFacts::default(),
            clients: Clients::default(),
            commands: CommandStats::default(),
            stopwatch: None,
            abandoned: Vec::new(),
            meter: memory::Meter::default(),
            pubsub: pubsub::PubSub::default(),
            tracking: tracking::Tracking::new(hash_seed),
            mail: mail::Mailboxes::default(),
            notify_flags: 0,
        }
    }

    /// Hands in the driver's clock, read before and after each command to
    /// time it for `INFO commandstats` and the metrics, as Redis times its
    /// commands. It decides nothing: expiry runs on [`Server::set_time`],
    /// and without a stopwatch (tests, the simulation) every command takes
    /// zero time.
    pub fn set_stopwatch(&mut self, now: fn() -> Instant) {
        self.stopwatch = Some(now);
    }

    /// The stopwatch's reading, or the epoch without one.
    #[inline]
    pub(crate) fn stopwatch(&self) -> Instant {
        self.stopwatch.map_or(Instant::ZERO, |now| now())
    }

    /// The process facts `INFO` shows.
    pub fn host(&self) -> &HostFacts {
        &self.host
    }

    /// Keys removed because their deadline passed.
    pub fn expired_keys(&self) -> u64 {
        self.db.expired_keys()
    }

    /// What each command has done.
    pub fn command_stats(&self) -> &CommandStats {
        &self.commands
    }

    /// The unix time in milliseconds, from the driver: key deadlines are
    /// compared with it until the next call. Drivers call it before each
    /// batch of input; tests move it as they please.
    pub fn set_time(&mut self, now_ms: u64) {
        self.db.set_time(now_ms);
    }

    /// The unix time in milliseconds the driver last gave.
    pub fn now(&self) -> u64 {
        self.db.now()
    }

    /// When active expiry, eviction or releasing an abandoned reply next
    /// has work (unix milliseconds): the driver calls
    /// [`Server::handle_timeout`] then. Immediately again after a call that
    /// used its whole budget, while eviction is under way, and while an
    /// abandoned reply is being released.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.evicting() || !self.abandoned.is_empty() || self.tracking.over_limit() {
            return Some(self.db.now());
        }
        self.db.next_deadline()
    }

    /// Active expiry: sets the time and removes up to
    /// [`EXPIRE_BUDGET`] keys whose deadline has passed, logging their
    /// removal; how many it removed. Then goes on with an eviction that
    /// used its budget before a command (see [`memory`]), and releases a
    /// step's worth of a reply abandoned by its client.
    pub fn handle_timeout(&mut self, now_ms: u64) -> usize {
        if let Some(stream) = self.abandoned.last_mut() {
            if stream.release_step() {
                self.abandoned.pop();
            }
        }
        self.db.set_time(now_ms);
        let n = self.db.expire_due();
        self.evict_due();
        if let Some(journal) = &mut self.journal {
            self.db.take_changes().for_each(|c| journal.record(c));
        }
        self.signal_changes(None, None);
        self.make_tracking_room();
        n
    }

    /// How many distinct keys are watched (by `WATCH`) now.
    pub fn watched_keys(&self) -> usize {
        self.db.watched_keys()
    }

    /// The process facts `INFO` shows, for the driver to refresh.
    pub fn host_mut(&mut self) -> &mut HostFacts {
        &mut self.host
    }

    /// Forgets what a closed connection's session held on the server (its
    /// watched keys). Drivers call it when a connection ends.
    pub fn end_session(&mut self, session: &mut Session) {
        tx::end(&mut self.db, session);
        self.clients.remove(session.id);
        self.pubsub.remove_client(session.id);
        if session.tracking {
            self.tracking.disable(session.id);
            self.update_signaling();
        }
        self.mail.remove(session.id);
    }

    /// The connections that have mail (published messages, invalidations)
    /// since the last call: the driver wakes them. Sends the broadcast
    /// invalidations collected since the last call first, as Redis sends
    /// them before it sleeps.
    pub fn take_woken(&mut self) -> Vec<u64> {
        self.broadcast_invalidations();
        self.mail.take_woken()
    }

    /// The mail waiting for connection `id`, taken (its connection moves it
    /// into its output).
    pub fn take_mail(&mut self, id: u64) -> Option<Mailbox> {
        self.mail.take(id)
    }

    /// Bytes of mail waiting for connection `id`.
    pub fn mail_bytes(&self, id: u64) -> usize {
        self.mail.bytes(id)
    }

    /// Whether connection `id` has subscriptions (the driver holds it to
    /// the subscribers' output limit, and does not time it out for idling,
    /// as Redis does not).
    pub fn is_subscriber(&self, id: u64) -> bool {
        self.pubsub.is_subscriber(id)
    }

    /// What publish/subscribe and tracking hold and have sent.
    pub fn push_stats(&self) -> PushStats {
        PushStats {
            channels: self.pubsub.channel_count(),
            patterns: self.pubsub.pattern_count(),
            subscribers: self.pubsub.subscriber_count(),
            messages_delivered: self.pubsub.delivered,
            tracking_clients: self.tracking.client_count(),
            tracked_keys: self.tracking.key_count(),
            invalidations_sent: self.tracking.sent,
            mail_bytes: self.mail.total_bytes(),
        }
    }

    /// What `CLIENT LIST` shows of a client's subscriptions and tracking.
    fn client_facts(&self, id: u64) -> ClientFacts {
        let (sub, psub) = self.pubsub.counts(id);
        let mut flags = String::new();
        if sub + psub > 0 {
            flags.push('P');
        }
        let redir = match self.tracking.mode_letters(id) {
            Some((letters, redirect)) => {
                flags.push_str(&letters);
                redirect
            }
            None => -1,
        };
        if flags.is_empty() {
            flags.push('N');
        }
        ClientFacts {
            flags,
            sub,
            psub,
            redir,
        }
    }

    /// A publish/subscribe message for `id`, in its protocol's form.
    pub(crate) fn deliver(&mut self, id: u64, items: Vec<Reply>) {
        let proto = self.clients.proto_of(id).unwrap_or(Proto::Resp2);
        self.deliver_reply(id, pubsub::message(proto, items));
    }

    /// Leaves `message` in the mailbox of `id`; over its output limit the
    /// client is disconnected, as Redis disconnects a subscriber that does
    /// not read.
    pub(crate) fn deliver_reply(&mut self, id: u64, message: Reply) {
        if self.clients.is_killed(id) {
            // Being closed: it reads nothing more.
            return;
        }
        let limit = if self.pubsub.is_subscriber(id) {
            self.config.pubsub_output_limit.hard
        } else {
            self.config.output_limit.hard
        };
        if self.mail.post(id, message, limit) == Posted::Overflowed
            && self.clients.kill(|c, _| c == id) > 0
        {
            self.stats.output_limit_disconnections += 1;
        }
    }

    /// Takes a streamed reply whose client went away: its snapshot is
    /// released a step at a time (a million references dropped at once
    /// would stall every client).
    pub fn abandon(&mut self, stream: DumpStream) {
        self.abandoned.push(stream);
    }

    /// A session for a new connection: numbered, and authenticated unless
    /// the server has a password.
    pub fn new_session(&mut self) -> Session {
        self.new_client(String::new(), String::new())
    }

    /// A session for a new connection from `addr` to `laddr`, listed by
    /// `CLIENT LIST` until [`Server::end_session`].
    pub fn new_client(&mut self, addr: String, laddr: String) -> Session {
        let id = self.next_session;
        self.next_session += 1;
        self.clients.add(id, addr, laddr, self.db.now());
        Session::new(id, self.config.password.is_none())
    }

    /// The clients, for the driver (kills to carry out).
    pub fn clients_mut(&mut self) -> &mut Clients {
        &mut self.clients
    }

    /// Turns the log on: from now on writes produce records. Effects
    /// replayed before (with [`Server::replay`]) are not logged again.
    pub fn enable_log(&mut self, status: LogStatus) {
        self.journal = Some(Journal::new(status));
        self.db.record_changes();
    }

    /// The log's state, if the log is on.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The log facts shown by `INFO`, for the driver to update.
    pub fn log_status_mut(&mut self) -> Option<&mut LogStatus> {
        self.journal.as_mut().map(Journal::status_mut)
    }

    /// Applies an effect replayed from the log at start. Not counted as a
    /// command, and not logged again.
    pub fn replay(&mut self, effect: &Effect) {
        self.db.replay(effect);
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
            self.db.undo(undo.change);
        }
        self.signal_changes(None, None);
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

    /// The store under the database, read-only (snapshots, tests).
    pub fn store(&self) -> &crate::db::Store {
        self.db.store()
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The counters, for the driver's connection bookkeeping.
    pub fn stats_mut(&mut self) -> &mut ServerStats {
        &mut self.stats
    }

    /// Runs one command for a connection and writes its reply to `out`: the
    /// table's checks, the handler, and the log records of what it changed.
    /// Counts the command; error replies are counted by the caller, which
    /// sees them in `out`.
    pub fn run(&mut self, session: &mut Session, cmd: &Command, out: &mut dyn ReplyOut) {
        self.run_checked(session, cmd, out);
        if session.tracking {
            if cmd.spec().name != "client|caching" {
                self.tracking.end_command(session.id);
            }
            if self.tracking.over_limit() {
                self.make_tracking_room();
            }
        }
    }

    fn run_checked(&mut self, session: &mut Session, cmd: &Command, out: &mut dyn ReplyOut) {
        self.stats.commands += 1;
        let refusing = self.journal.as_ref().and_then(Journal::refusing);
        if let Err(reply) = admit(cmd, session, refusing) {
            self.stats.rejected += 1;
            self.commands.rejected(cmd.spec());
            tx::flag_error(session);
            out.reply(reply);
            return;
        }
        if self.config.maxmemory.bytes != 0 {
            let checked = self.check_memory(session, cmd);
            if self.db.has_signals() {
                // Evicted before the command ran: the invalidations go out
                // ahead of its reply, as Redis sends them.
                self.signal_changes(None, None);
                if let Some(mail) = self.mail.take(session.id) {
                    mail.items.into_iter().for_each(|m| out.reply(m));
                }
            }
            if let Err(reply) = checked {
                self.stats.rejected += 1;
                self.commands.rejected(cmd.spec());
                tx::flag_error(session);
                out.reply(reply);
                return;
            }
        }
        if session.subscriptions > 0
            && session.proto == Proto::Resp2
            && !cmd.spec().flags.contains(Flags::SUBSCRIBED_OK)
        {
            self.stats.rejected += 1;
            self.commands.rejected(cmd.spec());
            tx::flag_error(session);
            out.reply(Reply::error(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                cmd.spec().name
            )));
            return;
        }
        if tx::queues(session, cmd) {
            out.reply(tx::queue(session, cmd));
            return;
        }
        self.execute_admitted(session, cmd, out);
    }

    /// A command that could not be parsed (unknown, wrong arity …): counted
    /// as rejected, and it aborts the connection's transaction if one is
    /// being queued, as in Redis.
    pub fn rejected(&mut self, session: &mut Session) {
        self.stats.commands += 1;
        self.stats.rejected += 1;
        tx::flag_error(session);
    }

    /// Runs an admitted command (or a queued one, at `EXEC`).
    pub(crate) fn execute_admitted(
        &mut self,
        session: &mut Session,
        cmd: &Command,
        out: &mut dyn ReplyOut,
    ) {
        match cmd.spec().handler {
            Handler::Tx(op) => tx::run(self, session, op, cmd, out),
            Handler::PubSub(op) => pubsub::run(self, session, op, cmd, out),
            Handler::Data(handler) => {
                if self.journal.is_some()
                    && cmd.spec().flags.contains(Flags::WRITE)
                    && too_large_for_log(cmd)
                {
                    out.reply(ExecError::TooLargeForLog.into());
                    return;
                }
                // What eviction changed before the command is no change of
                // this client's (NOLOOP does not hide it).
                self.signal_changes(None, None);
                handler(&mut self.db, cmd, out);
                if let Some(journal) = &mut self.journal {
                    self.db.take_changes().for_each(|c| journal.record(c));
                }
                self.signal_changes(Some(session.id), Some(cmd.spec()));
                // Remembered after the command's own invalidations (a read
                // may remove an expired key), as Redis does.
                let spec = cmd.spec();
                if session.tracking && spec.flags.contains(Flags::READONLY) && !spec.keys.is_none()
                {
                    let args = cmd.args();
                    self.tracking.remember(
                        session.id,
                        spec.keys.positions(args.len()).map(|i| &args[i]),
                    );
                }
            }
            Handler::Local(handler) => {
                let reply = handler(
                    &mut Local {
                        session,
                        node: &mut *self,
                    },
                    cmd,
                );
                // Connection commands are what change what CLIENT LIST
                // shows of a session (names, protocol): refreshed here,
                // not per data command.
                self.clients.refresh(session);
                out.set_proto(session.proto);
                out.set_muted(session.reply.muted());
                out.reply(reply);
            }
            // Parsing goes down to a subcommand; a container's arity refuses
            // the bare name.
            Handler::Container => out.reply(
                CommandError::WrongArity {
                    command: cmd.spec().name,
                }
                .into(),
            ),
        }
    }

    /// Runs a command as an authenticated connection of its own and returns
    /// the reply (for tools and tests that act on the server directly).
    #[must_use]
    pub fn execute(&mut self, cmd: Command) -> Reply {
        let mut session = Session::new(0, true);
        let mut reply = None;
        self.run(&mut session, &cmd, &mut reply);
        let reply = reply.unwrap_or(Reply::Nil);
        if reply.is_error() {
            self.stats.errors += 1;
        }
        reply
    }
}

/// Whether a write's arguments could make a record over the log format's
/// limit (a value of 4 GiB; only reachable with huge `--max-value`).
fn too_large_for_log(cmd: &Command) -> bool {
    let total: usize = cmd.args()[1..].iter().map(|a| a.len()).sum();
    aof::put_len(0, total) - aof::RECORD_HEADER_LEN > aof::MAX_BODY_LEN
}

impl Node for Server {
    fn role(&self) -> Role {
        Role::Server
    }

    fn info(&self, sections: &crate::session::InfoSections) -> String {
        use std::fmt::Write;
        let s = &self.stats;
        let h = &self.host;
        let store = self.db.store();
        let mut info = String::new();
        if sections.wants("server") {
            crate::session::server_section(&mut info, Role::Server, h);
        }
        if sections.wants("clients") {
            let _ = write!(
                info,
                "# Clients\nconnected_clients:{}\nblocked_clients:0\ntracking_clients:{}\npubsub_clients:{}\n",
                s.connections_current,
                self.tracking.client_count(),
                self.pubsub.subscriber_count(),
            );
        }
        if sections.wants("memory") {
            self.info_memory(&mut info);
        }
        if sections.wants("persistence") {
            info.push_str("# Persistence\nloading:0\nrdb_bgsave_in_progress:0\n");
            match &self.journal {
                Some(j) => j.info(&mut info),
                None => info.push_str("aof_enabled:0\naof_rewrite_in_progress:0\n"),
            }
        }
        if sections.wants("stats") {
            let _ = write!(
                info,
                "# Stats\ntotal_connections_received:{}\ntotal_commands_processed:{}\nrejected_connections:{}\nexpired_keys:{}\nevicted_keys:{}\ntotal_error_replies:{}\ntotal_forks:0\nconnections_timed_out:{}\nclient_output_buffer_limit_disconnections:{}\n",
                s.connections_total,
                s.commands,
                s.connections_rejected,
                self.db.expired_keys(),
                self.db.evicted_keys(),
                s.errors,
                s.connections_timed_out,
                s.output_limit_disconnections,
            );
            let t = &self.tracking;
            let _ = write!(
                info,
                "pubsub_channels:{}\npubsub_patterns:{}\npubsub_messages_delivered:{}\ntracking_total_keys:{}\ntracking_total_items:{}\ntracking_total_prefixes:{}\ntracking_invalidations_sent:{}\nmail_pending_bytes:{}\n",
                self.pubsub.channel_count(),
                self.pubsub.pattern_count(),
                self.pubsub.delivered,
                t.key_count(),
                t.item_count(),
                t.prefix_count(),
                t.sent,
                self.mail.total_bytes(),
            );
        }
        crate::session::replication_and_cpu(&mut info, sections, h);
        if sections.wants_extra("commandstats") {
            self.commands.info(&mut info);
        }
        if sections.wants("keyspace") {
            info.push_str("# Keyspace\n");
            if !store.is_empty() {
                let _ = writeln!(
                    info,
                    "db0:keys={},expires={},avg_ttl=0",
                    store.len(),
                    store.volatile()
                );
            }
        }
        info
    }

    fn password(&self) -> Option<&Password> {
        self.config.password.as_ref()
    }

    fn client_list(&self, current: &Session) -> Result<String, String> {
        Ok(self
            .clients
            .lines(self.db.now(), current, &|id| self.client_facts(id)))
    }

    fn client_info(&self, current: &Session) -> String {
        self.clients
            .line_of(current, self.db.now(), &self.client_facts(current.id))
    }

    fn client_kill(&mut self, filter: &KillFilter, current: &Session) -> Result<usize, String> {
        Ok(self
            .clients
            .kill(|id, e| filter.matches(id, &e.addr, &e.laddr, current.id)))
    }

    fn config(&self) -> Vec<(&'static str, String)> {
        // No RDB snapshots; an append-only log if it is on.
        let aof = if self.journal.is_some() { "yes" } else { "no" };
        let fsync = self
            .journal
            .as_ref()
            .map_or_else(|| "no".to_string(), |j| j.status().fsync.clone());
        let limits = &self.config.limits;
        vec![
            ("save", String::new()),
            ("appendonly", aof.to_string()),
            ("appendfsync", fsync),
            ("databases", "1".to_string()),
            ("maxmemory", self.config.maxmemory.bytes.to_string()),
            (
                "maxmemory-policy",
                self.config.maxmemory.policy.name().to_string(),
            ),
            (
                "maxmemory-samples",
                self.config.maxmemory.samples.to_string(),
            ),
            ("proto-max-bulk-len", limits.max_value.to_string()),
            ("client-query-buffer-limit", limits.max_bulk().to_string()),
            (
                "tracking-table-max-keys",
                self.tracking.max_keys.to_string(),
            ),
            (
                "notify-keyspace-events",
                notify::flags_string(self.notify_flags),
            ),
        ]
    }

    fn config_set(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        if name.eq_ignore_ascii_case("notify-keyspace-events") {
            return match notify::parse_flags(value) {
                Some(flags) => {
                    self.notify_flags = flags;
                    self.update_signaling();
                    Ok(())
                }
                None => Err(format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'."
                )),
            };
        }
        if name.eq_ignore_ascii_case("tracking-table-max-keys") {
            return match crate::families::parse::int(value).and_then(|n| usize::try_from(n).ok()) {
                Some(n) => {
                    // Lowered, the table shrinks on the timer.
                    self.tracking.max_keys = n;
                    Ok(())
                }
                None => Err(format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - argument couldn't be parsed into an integer"
                )),
            };
        }
        match self.set_memory_param(name, value) {
            Some(result) => result,
            None => crate::session::default_config_set(&Node::config(self), name, value),
        }
    }

    fn tracking(&mut self, session: &mut Session, request: TrackingRequest) -> Reply {
        self.tracking_request(session, request)
    }
}
