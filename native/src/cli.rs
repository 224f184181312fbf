//! `kv cli`: sends commands through a [`kv_core::Client`] and prints the
//! replies in the human inline format.
//!
//! RESP3 replies (from a server the user switched with `HELLO 3`) are shown
//! as `redis-cli` 7 shows them, under the same count header as an array:
//! map entries as `1# "key" => "value"` lines, set members as `1~ …`,
//! `(double) 1.5`, `(true)`/`(false)`, `(big number) 123`, a verbatim
//! string as its lines, a push as an array, both nils as `(nil)`. A push
//! answers no command, so it is printed when it arrives, before the reply
//! being waited for.
//!
//! With a command on the command line it sends that one command and exits:
//! 0 for a reply, 1 for an error reply or an invalid command, 2 if the
//! connection cannot be made or the reply does not come. Without one it is an
//! interactive prompt like `redis-cli`, which keeps going (and reconnects on
//! the next command) when the connection fails.

use crate::args::CliArgs;
use crate::runtime::clock::Epoch;
use bytes::{Bytes, BytesMut};
use kv_core::{Client, ClientConfig, ClientEvent, Command, CommandError, Failure, Limits, Reply};
use rustyline::error::ReadlineError;
use std::io::{self, Write};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Exit status: a reply that is not an error.
pub const EXIT_OK: u8 = 0;
/// Exit status: an error reply, or a command refused before sending.
pub const EXIT_ERROR_REPLY: u8 = 1;
/// Exit status: no connection, or no reply in time.
pub const EXIT_UNREACHABLE: u8 = 2;

/// Limits for checking commands before they are sent. They are wide on
/// purpose: the server enforces its own (configurable) limits, and the CLI
/// should not refuse what the server would take; it only catches unknown
/// commands and wrong arities early.
const CLI_LIMITS: Limits = Limits {
    max_line: 1 << 30,
    max_key: 1 << 30,
    max_value: 1 << 30,
    max_args: 1 << 20,
};

/// What can go wrong in the CLI.
#[derive(Debug, Error)]
pub enum CliError {
    /// The connection could not be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The request got no reply.
    #[error("no reply from {addr}: {reason}")]
    Request {
        /// The address as given.
        addr: String,
        /// Why.
        reason: Failure,
    },
    /// The command is not valid; it was not sent.
    #[error("(error) {0}")]
    Invalid(#[from] CommandError),
    /// The server refused the password given with `--password`.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server refused `HELLO 3` (`--resp3`).
    #[error("the server does not speak RESP3: {0}")]
    Hello(String),
    /// The Tokio runtime or the line editor could not start.
    #[error("{0}")]
    Setup(String),
}

impl CliError {
    /// The exit status this error stands for.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Invalid(_) | CliError::Auth(_) => EXIT_ERROR_REPLY,
            _ => EXIT_UNREACHABLE,
        }
    }
}

/// Runs `kv cli`; returns the process exit status.
pub fn run(args: &CliArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let mut session = Session::new(args.connect.clone(), args.timeout);
    session.password = args.password.clone().map(Bytes::from);
    session.resp3 = args.resp3;
    if args.command.is_empty() {
        match interactive(&runtime, &mut session) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("{e}");
                e.exit_code()
            }
        }
    } else {
        one_shot(&runtime, &mut session, &args.command.join(" "))
    }
}

fn one_shot(runtime: &tokio::runtime::Runtime, session: &mut Session, line: &str) -> u8 {
    let cmd = match parse(line) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("{e}");
            return e.exit_code();
        }
    };
    match runtime.block_on(session.request(&cmd)) {
        Ok(reply) => {
            let code = if reply.is_error() {
                EXIT_ERROR_REPLY
            } else {
                EXIT_OK
            };
            print_reply(&cmd, reply);
            code
        }
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn interactive(runtime: &tokio::runtime::Runtime, session: &mut Session) -> Result<(), CliError> {
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| CliError::Setup(e.to_string()))?;
    let prompt = format!("{}> ", session.addr);
    // Say at once if nothing listens there, as redis-cli does, but carry on:
    // the next command tries again.
    if let Err(e) = runtime.block_on(session.ensure_connected()) {
        eprintln!("{e}");
    }
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(CliError::Setup(e.to_string())),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if line.eq_ignore_ascii_case("quit") || line.eq_ignore_ascii_case("exit") {
            return Ok(());
        }
        let cmd = match parse(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                eprintln!("{e}");
                continue;
            }
        };
        match runtime.block_on(session.request(&cmd)) {
            Ok(reply) => print_reply(&cmd, reply),
            Err(e) => eprintln!("{e}"),
        }
    }
}

/// Parses a line as the server would parse an inline request, so invalid
/// commands are caught before sending.
fn parse(line: &str) -> Result<Command, CliError> {
    Ok(Command::from_inline(
        Bytes::copy_from_slice(line.as_bytes()),
        &CLI_LIMITS,
    )?)
}

/// Prints a reply in the inline format, with the local line ending: CRLF
/// is for the wire, and escaping guarantees that every CRLF in the inline
/// form is a line break, never part of a value.
fn print_reply(cmd: &Command, reply: Reply) {
    let text = render(cmd, reply);
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(&text);
    let _ = stdout.flush();
}

/// The bytes [`print_reply`] prints (bytes, not text: a status from the
/// server need not be UTF-8, and is shown as it came).
fn render(cmd: &Command, reply: Reply) -> Vec<u8> {
    render_plain(&for_display(cmd, reply))
}

/// The inline form of `reply` with the local line ending.
fn render_plain(reply: &Reply) -> Vec<u8> {
    let mut wire = BytesMut::new();
    reply.encode_inline(&mut wire);
    let mut out = Vec::with_capacity(wire.len());
    for (i, &b) in wire.iter().enumerate() {
        if !(b == b'\r' && wire.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// Undoes what the RESP encoding loses, for display only: `DUMP` pairs come
/// back as a flat array (a map in RESP3) and `INFO`/`HELP` text as one bulk
/// string (a verbatim string in RESP3), while the inline format (what
/// telnet shows) has a form for each. The command's spec says which shape
/// it has.
fn for_display(cmd: &Command, reply: Reply) -> Reply {
    cmd.spec().shape.restore(reply)
}

/// A connection to the proxy or server, made on demand.
struct Session {
    addr: String,
    timeout: Duration,
    epoch: Epoch,
    conn: Option<Connection>,
    /// Sent with `AUTH` on every new connection.
    password: Option<Bytes>,
    /// `HELLO 3` on every new connection.
    resp3: bool,
}

struct Connection {
    stream: TcpStream,
    client: Client,
    buf: BytesMut,
}

impl Session {
    fn new(addr: String, timeout: Duration) -> Self {
        Session {
            addr,
            timeout,
            epoch: Epoch::new(),
            conn: None,
            password: None,
            resp3: false,
        }
    }

    /// Connects unless a live connection exists. A connection the server
    /// closed meanwhile (idle timeout, restart) is replaced.
    async fn ensure_connected(&mut self) -> Result<&mut Connection, CliError> {
        if self.conn.as_ref().is_some_and(|c| peer_closed(&c.stream)) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let connect_error = |reason: String| CliError::Connect {
                addr: self.addr.clone(),
                reason,
            };
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| connect_error("timed out".to_string()))?
                .map_err(|e| connect_error(e.to_string()))?;
            // One small request at a time: send it at once.
            let _ = stream.set_nodelay(true);
            let client = Client::new(
                ClientConfig {
                    request_timeout: self.timeout,
                    ..ClientConfig::default()
                },
                self.epoch.now(),
            );
            let mut conn = Connection {
                stream,
                client,
                buf: BytesMut::with_capacity(16 * 1024),
            };
            if let Some(password) = &self.password {
                let auth = Command::build(&[&b"AUTH"[..], password])
                    .map_err(|e| CliError::Auth(e.to_string()))?;
                match conn.exchange(&auth, self.epoch).await {
                    Ok(Reply::Error(e)) => {
                        return Err(CliError::Auth(String::from_utf8_lossy(&e).into_owned()))
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        return Err(CliError::Request {
                            addr: self.addr.clone(),
                            reason,
                        })
                    }
                }
            }
            if self.resp3 {
                let hello =
                    Command::build(&["HELLO", "3"]).map_err(|e| CliError::Auth(e.to_string()))?;
                match conn.exchange(&hello, self.epoch).await {
                    Ok(Reply::Error(e)) => {
                        return Err(CliError::Hello(String::from_utf8_lossy(&e).into_owned()))
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        return Err(CliError::Request {
                            addr: self.addr.clone(),
                            reason,
                        })
                    }
                }
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connection was just made"))
    }

    /// Sends one command and waits for its reply. On failure the connection
    /// is dropped, and the next request makes a new one.
    async fn request(&mut self, cmd: &Command) -> Result<Reply, CliError> {
        let epoch = self.epoch;
        let conn = self.ensure_connected().await?;
        let result = conn.exchange(cmd, epoch).await;
        result.map_err(|reason| {
            self.conn = None;
            CliError::Request {
                addr: self.addr.clone(),
                reason,
            }
        })
    }
}

impl Connection {
    async fn exchange(&mut self, cmd: &Command, epoch: Epoch) -> Result<Reply, Failure> {
        if self.client.send(cmd, epoch.now()).is_err() {
            return Err(Failure::Disconnected);
        }
        while let Some(out) = self.client.poll_transmit() {
            if self.stream.write_all(&out).await.is_err() {
                self.client.handle_disconnected(epoch.now());
            }
        }
        loop {
            // Out-of-band RESP3 pushes (e.g. client-tracking invalidations).
            while let Some(push) = self.client.poll_push() {
                let mut stdout = io::stdout().lock();
                let _ = stdout.write_all(&render_plain(&push));
                let _ = stdout.flush();
            }
            if let Some(event) = self.client.poll_event() {
                return match event {
                    ClientEvent::Reply { reply, .. } => Ok(reply),
                    ClientEvent::Failed { reason, .. } => Err(reason),
                };
            }
            let Some(deadline) = self.client.poll_timeout() else {
                // Nothing in flight and no outcome: cannot happen with one
                // request at a time, but do not wait forever if it does.
                return Err(Failure::Disconnected);
            };
            self.buf.reserve(16 * 1024);
            tokio::select! {
                read = self.stream.read_buf(&mut self.buf) => match read {
                    Ok(n) if n > 0 => {
                        self.client.handle_input(&self.buf, epoch.now());
                        self.buf.clear();
                    }
                    _ => self.client.handle_disconnected(epoch.now()),
                },
                _ = tokio::time::sleep_until(epoch.to_tokio(deadline)) => {
                    self.client.handle_timeout(epoch.now());
                }
            }
        }
    }
}

/// Whether the server has closed a connection we hold (or sent something
/// nobody asked for, which leaves it out of step just the same). Peeks on a
/// duplicate of the descriptor: Tokio's own readiness is only updated while
/// the runtime runs, which it does not while the prompt waits for typing.
#[cfg(unix)]
fn peer_closed(stream: &TcpStream) -> bool {
    use std::os::fd::AsFd;
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return false;
    };
    // The duplicate shares the original's non-blocking mode.
    let probe = std::net::TcpStream::from(fd);
    let mut byte = [0u8; 1];
    match probe.peek(&mut byte) {
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        Ok(_) => true,
    }
}

#[cfg(not(unix))]
fn peer_closed(_stream: &TcpStream) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Command {
        Command::build(words).unwrap()
    }

    fn inline(cmd: &Command, reply: Reply) -> String {
        String::from_utf8(render(cmd, reply)).unwrap()
    }

    #[test]
    fn invalid_commands_are_caught_before_sending() {
        assert!(matches!(parse("FROB x"), Err(CliError::Invalid(_))));
        assert!(matches!(parse("GET"), Err(CliError::Invalid(_))));
        assert_eq!(
            parse("PUT name Derek Moss").unwrap(),
            cmd(&["SET", "name", "Derek Moss"])
        );
        assert_eq!(
            parse("FROB x").unwrap_err().to_string(),
            "(error) ERR unknown command 'FROB'"
        );
        assert_eq!(parse("FROB").unwrap_err().exit_code(), EXIT_ERROR_REPLY);
    }

    #[test]
    fn dump_and_info_display_like_telnet() {
        // A value with a line break stays on one line, escaped.
        assert_eq!(
            inline(&cmd(&["DUMP"]), Reply::Bulk(Bytes::from_static(b"a\r\nb"))),
            "\"a\\r\\nb\"\n"
        );
        let flat = Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"age")),
            Reply::Bulk(Bytes::from_static(b"18")),
        ]);
        assert_eq!(
            inline(&cmd(&["DUMP"]), flat.clone()),
            "(1 pair)\n\"age\" \"18\"\n"
        );
        // Only DUMP replies are shown as pairs.
        assert!(inline(&cmd(&["HELP"]), flat).starts_with("(2 items)"));
        let info = Reply::Bulk(Bytes::from_static(b"# Proxy\r\nrole:proxy\r\n"));
        assert_eq!(
            inline(&cmd(&["INFO"]), info),
            "(2 lines)\n# Proxy\nrole:proxy\n"
        );
        assert_eq!(inline(&cmd(&["GET", "k"]), Reply::Nil), "(nil)\n");
    }

    #[test]
    fn resp3_replies_display_like_redis_cli() {
        let b = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
        // `CONFIG GET maxmemory` and `HELLO 3` from Redis in RESP3.
        assert_eq!(
            inline(
                &cmd(&["CONFIG", "GET", "maxmemory"]),
                Reply::Map(vec![(b("maxmemory"), b("0"))])
            ),
            "(1 entry)\n1# \"maxmemory\" => \"0\"\n"
        );
        assert_eq!(
            inline(
                &cmd(&["HELLO", "3"]),
                Reply::Map(vec![
                    (b("proto"), Reply::Integer(3)),
                    (b("modules"), Reply::Array(vec![])),
                ])
            ),
            "(2 entries)\n1# \"proto\" => (integer) 3\n2# \"modules\" => (empty array)\n"
        );
        let get = cmd(&["GET", "k"]);
        assert_eq!(
            inline(&get, Reply::Set(vec![b("c"), b("b")])),
            "(2 members)\n1~ \"c\"\n2~ \"b\"\n"
        );
        assert_eq!(inline(&get, Reply::Set(vec![])), "(empty set)\n");
        assert_eq!(inline(&get, Reply::Map(vec![])), "(empty hash)\n");
        assert_eq!(
            inline(&get, Reply::Double(1.1)),
            "(double) 1.1000000000000001\n"
        );
        assert_eq!(inline(&get, Reply::Boolean(true)), "(true)\n");
        assert_eq!(inline(&get, Reply::Boolean(false)), "(false)\n");
        assert_eq!(
            inline(&get, Reply::BigNumber(Bytes::from_static(b"123"))),
            "(big number) 123\n"
        );
        assert_eq!(inline(&get, Reply::Nil), "(nil)\n");
        assert_eq!(inline(&get, Reply::NilArray), "(nil)\n");
        assert_eq!(
            inline(&get, Reply::Push(vec![b("invalidate")])),
            "(1 item)\n1) \"invalidate\"\n"
        );
        // INFO's verbatim string and DUMP's map look as they do in RESP2.
        let info = Reply::Verbatim {
            format: *b"txt",
            text: Bytes::from_static(b"# Server\r\nredis_version:7.0.15\r\n"),
        };
        assert_eq!(
            inline(&cmd(&["INFO"]), info.clone()),
            "(2 lines)\n# Server\nredis_version:7.0.15\n"
        );
        assert_eq!(
            inline(&get, info),
            "(2 lines)\n# Server\nredis_version:7.0.15\n"
        );
        assert_eq!(
            inline(&cmd(&["DUMP"]), Reply::Map(vec![(b("age"), b("18"))])),
            "(1 pair)\n\"age\" \"18\"\n"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error() {
        // Bind and drop a listener to get a port that refuses connections.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let mut s = Session::new(addr.clone(), Duration::from_secs(2));
        let e = s.request(&cmd(&["DUMP"])).await.unwrap_err();
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        assert!(
            e.to_string()
                .starts_with(&format!("cannot connect to {addr}: ")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn request_and_reconnect_after_the_server_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            // First connection: answer one request, then close.
            for reply in [&b"$3\r\nabc\r\n"[..], b"-ERR nope\r\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(reply).await.unwrap();
            }
        });
        let mut s = Session::new(addr, Duration::from_secs(5));
        let get = cmd(&["GET", "k"]);
        assert_eq!(
            s.request(&get).await.unwrap(),
            Reply::Bulk(Bytes::from_static(b"abc"))
        );
        // Give the server's close time to arrive, then the next request must
        // notice it and reconnect instead of failing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            s.request(&get).await.unwrap(),
            Reply::Error(Bytes::from_static(b"ERR nope"))
        );
        server.await.unwrap();
    }
}
