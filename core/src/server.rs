//! The server state machine: the store, the commands applied to it, and the
//! per-connection session that turns bytes into replies.

use crate::codec::{Decoder, Limits};
use crate::command::Command;
use crate::reply::Reply;
use crate::store::Store;
use bytes::{Bytes, BytesMut};

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Input limits applied to every connection.
    pub limits: Limits,
    /// Seed for the store's hash function; the driver passes a random one.
    pub hash_seed: u64,
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
#[derive(Debug)]
pub struct Server {
    store: Store,
    stats: ServerStats,
    config: ServerConfig,
}

impl Server {
    /// An empty server.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            store: Store::new(config.hash_seed),
            stats: ServerStats::default(),
            config,
        }
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
                Some(v) => Reply::Bulk(v.clone()),
                None => Reply::Nil,
            },
            Command::Put { key, value } => {
                self.store.put(&key, &value);
                Reply::ok()
            }
            Command::Del { keys } => {
                Reply::Integer(keys.iter().filter(|k| self.store.remove(k)).count() as i64)
            }
            Command::Dump => Reply::Pairs(self.store.dump()),
            Command::Info => Reply::Text(self.info()),
            other => local_reply(other, "server"),
        };
        if reply.is_error() {
            self.stats.errors += 1;
        }
        reply
    }

    fn info(&self) -> String {
        let s = &self.stats;
        format!(
            "# Server\nrole:server\n# Keyspace\nkeys:{}\ndata_bytes:{}\n# Stats\ncommands:{}\nerrors:{}\nconnections_total:{}\nconnections_current:{}\nconnections_rejected:{}\nconnections_timed_out:{}\n",
            self.store.len(),
            self.store.data_bytes(),
            s.commands,
            s.errors,
            s.connections_total,
            s.connections_current,
            s.connections_rejected,
            s.connections_timed_out,
        )
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
        Command::ConfigGet { parameter } => {
            // redis-benchmark reads these two on start; report what is true
            // of us (no RDB snapshots) rather than an error.
            let known: &[(&[u8], &[u8])] = &[(b"save", b""), (b"appendonly", b"no")];
            let items = known
                .iter()
                .filter(|(name, _)| parameter.eq_ignore_ascii_case(name) || &parameter[..] == b"*")
                .flat_map(|(n, v)| {
                    [
                        Reply::Bulk(Bytes::from_static(n)),
                        Reply::Bulk(Bytes::from_static(v)),
                    ]
                })
                .collect();
            Reply::Array(items)
        }
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
#[derive(Debug)]
pub struct ServerConnection {
    decoder: Decoder,
    out: BytesMut,
    close: bool,
    backlog: bool,
}

impl ServerConnection {
    /// A session for a new connection.
    pub fn new(limits: Limits) -> Self {
        ServerConnection {
            decoder: Decoder::new(limits),
            out: BytesMut::new(),
            close: false,
            backlog: false,
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

    /// Executes every complete command buffered, until the output reaches
    /// [`OUTPUT_HIGH_WATER`] or the connection must close.
    pub fn process(&mut self, server: &mut Server) {
        self.backlog = false;
        while !self.close {
            if self.out.len() >= OUTPUT_HIGH_WATER {
                self.backlog = true;
                return;
            }
            let (reply, dialect) = match self.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    let dialect = frame.dialect();
                    match Command::from_frame(frame, self.decoder.limits()) {
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
            reply.encode(dialect, &mut self.out);
        }
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
    /// (after `QUIT` or a fatal protocol error).
    pub fn should_close(&self) -> bool {
        self.close
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
