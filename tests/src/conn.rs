//! A TCP client connection that never waits without a deadline, and the
//! wire helpers the scenarios share.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a [`Conn`] read waits for the bytes it needs.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a read on a [`Conn`] ended without the bytes it wanted.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (EOF).
    Eof,
    /// The deadline passed.
    Timeout,
    /// Another I/O error (e.g. connection reset).
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => write!(f, "connection closed by the peer (EOF)"),
            ReadError::Timeout => write!(f, "timed out"),
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// A TCP client connection whose every read waits with a deadline
/// ([`IO_TIMEOUT`] unless told otherwise).
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes received but not yet returned.
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (with `TCP_NODELAY`, so each `send` leaves at once).
    ///
    /// # Panics
    ///
    /// If the connection cannot be made within [`IO_TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
    }

    /// Connects to `addr`, returning the error instead of panicking.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            addr,
            buf: Vec::new(),
        })
    }

    /// The address it is connected to.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes`.
    ///
    /// # Panics
    ///
    /// On a write error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("write to {} failed: {e}", self.addr));
    }

    /// Writes all of `bytes`, returning the error instead of panicking.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `line` followed by `\r\n`, as telnet does.
    pub fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes);
    }

    /// Writes `bytes` one byte per write (each its own TCP segment, thanks
    /// to `TCP_NODELAY`), as a character-mode telnet does.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.send(std::slice::from_ref(b));
        }
    }

    /// Half-closes the connection: the peer sees EOF, and we can still read.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(ReadError::Io)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::Timeout)
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Reads one line (without its `\r\n` or `\n`), waiting up to `timeout`.
    pub fn try_read_line_within(&mut self, timeout: Duration) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.fill(deadline)?;
        }
    }

    /// Reads one line (without its line ending), waiting up to [`IO_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// On EOF, an error, or the deadline; the message shows any partial line.
    pub fn read_line(&mut self) -> String {
        match self.try_read_line_within(IO_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "reading a line from {}: {e}; unterminated bytes received: {:?}",
                self.addr,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads exactly `n` lines.
    pub fn expect_lines(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.read_line()).collect()
    }

    /// Reads lines until one contains `needle`; returns all of them (the
    /// matching one last).
    pub fn read_until_contains(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_read_line_within(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(e) => panic!(
                    "waiting for a line containing {needle:?} from {}: {e}; lines so far: {lines:?}",
                    self.addr
                ),
            }
        }
    }

    /// Reads one complete inline-format reply: a single line, or a header
    /// `(N pairs)` / `(N lines)` / `(N items)` followed by its `N` lines.
    pub fn read_reply(&mut self) -> Vec<String> {
        let first = self.read_line();
        let more = inline_header_count(&first).unwrap_or(0);
        let mut lines = vec![first];
        lines.extend(self.expect_lines(more));
        lines
    }

    /// Sends one inline command (adding `\r\n`) and returns its reply, the
    /// lines of a multi-line reply joined with `\n`.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_line(line);
        self.read_reply().join("\n")
    }

    /// Sends one RESP2 command made of `args` and returns the raw reply
    /// lines of a simple reply (status, error, integer: one line; bulk: two
    /// lines; nil: one line). Arrays are not supported.
    pub fn resp(&mut self, args: &[&[u8]]) -> Vec<String> {
        self.send(&resp_command(args));
        let first = self.read_line();
        match first.as_bytes().first() {
            Some(b'$') if first != "$-1" => vec![first.clone(), self.read_line()],
            _ => vec![first],
        }
    }

    /// Waits up to `timeout` for the peer to close the connection, returning
    /// whatever was received before the close (including lines not yet read).
    /// A connection reset counts as closed.
    ///
    /// # Panics
    ///
    /// If the connection is still open after `timeout`.
    pub fn expect_closed_within(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(_) => continue,
                Err(ReadError::Eof) | Err(ReadError::Io(_)) => {
                    return std::mem::take(&mut self.buf);
                }
                Err(ReadError::Timeout) => panic!(
                    "{}: connection still open after {timeout:?}; received: {:?}",
                    self.addr,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Waits up to [`IO_TIMEOUT`] for the peer to close the connection; see
    /// [`Conn::expect_closed_within`].
    pub fn expect_closed(&mut self) -> Vec<u8> {
        self.expect_closed_within(IO_TIMEOUT)
    }

    /// Reads exactly `n` bytes (after any buffered ones), waiting up to
    /// [`IO_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// On EOF, an error, or the deadline.
    pub fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.buf.len() < n {
            if let Err(e) = self.fill(deadline) {
                panic!(
                    "reading {n} bytes from {}: {e}; got {} bytes",
                    self.addr,
                    self.buf.len()
                );
            }
        }
        self.buf.drain(..n).collect()
    }
}

/// One RESP2 or RESP3 value, as [`Conn::read_value`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+…`.
    Status(String),
    /// `-…`.
    Error(String),
    /// `:…`.
    Integer(i64),
    /// `$…`, and `=…` (verbatim: its `txt:` prefix kept).
    Bulk(Vec<u8>),
    /// `$-1`, `*-1`, `_`.
    Nil,
    /// `*…`, and `~…` (sets).
    Array(Vec<Value>),
    /// `%…`: keys and values in order.
    Map(Vec<(Value, Value)>),
    /// `>…`: out of band, answering no request.
    Push(Vec<Value>),
    /// `,…`, `#…`, `(…`: their text.
    Other(String),
}

impl Value {
    /// A bulk string's text (lossily), or `None`.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

impl Conn {
    /// Reads one RESP2 or RESP3 value (waiting up to [`IO_TIMEOUT`] for
    /// each part).
    ///
    /// # Panics
    ///
    /// On EOF, an error, the deadline, or bytes that are not RESP.
    pub fn read_value(&mut self) -> Value {
        let line = self.read_line();
        let (kind, body) = line.split_at(1.min(line.len()));
        let count = |body: &str| -> i64 {
            body.parse()
                .unwrap_or_else(|_| panic!("not a RESP length: {line:?}"))
        };
        match kind {
            "+" => Value::Status(body.to_owned()),
            "-" => Value::Error(body.to_owned()),
            ":" => Value::Integer(count(body)),
            "_" => Value::Nil,
            "," | "#" | "(" => Value::Other(body.to_owned()),
            "$" | "=" => match count(body) {
                -1 => Value::Nil,
                n => {
                    let mut bytes = self.read_bytes(n as usize + 2);
                    bytes.truncate(n as usize);
                    Value::Bulk(bytes)
                }
            },
            "*" | "~" | ">" => match count(body) {
                -1 => Value::Nil,
                n => {
                    let items = (0..n).map(|_| self.read_value()).collect();
                    if kind == ">" {
                        Value::Push(items)
                    } else {
                        Value::Array(items)
                    }
                }
            },
            "%" => Value::Map(
                (0..count(body))
                    .map(|_| (self.read_value(), self.read_value()))
                    .collect(),
            ),
            _ => panic!("not RESP from {}: {line:?}", self.addr),
        }
    }

    /// Sends one RESP command made of the words `args` on a RESP2
    /// connection, which gets no pushes, and reads its reply.
    ///
    /// # Panics
    ///
    /// If a push comes before the reply.
    pub fn call_resp2(&mut self, args: &[&str]) -> Value {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (pushes, reply) = self.call(&args);
        assert!(
            pushes.is_empty(),
            "a RESP2 connection got pushes: {pushes:?}"
        );
        reply
    }

    /// Sends one RESP command made of `args` and reads its reply, setting
    /// aside the pushes that come before it (returned first).
    pub fn call(&mut self, args: &[&[u8]]) -> (Vec<Value>, Value) {
        self.send(&resp_command(args));
        let mut pushes = Vec::new();
        loop {
            match self.read_value() {
                Value::Push(items) => pushes.push(Value::Push(items)),
                reply => return (pushes, reply),
            }
        }
    }
}

/// The `N` of an inline multi-line reply header `(N pairs)`, `(N lines)`,
/// `(N items)` (also singular), or `None` for a one-line reply.
pub fn inline_header_count(line: &str) -> Option<usize> {
    let inner = line.strip_prefix('(')?.strip_suffix(')')?;
    let (n, word) = inner.split_once(' ')?;
    match word {
        "pair" | "pairs" | "line" | "lines" | "item" | "items" => n.parse().ok(),
        _ => None,
    }
}

/// Encodes a RESP2 command (an array of bulk strings).
pub fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses the `key:value` lines of an `INFO` reply (as returned by
/// [`Conn::cmd`]) into a lookup of numeric fields.
pub fn info_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k.trim() == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The lines a telnet user types for the seed transcript, and the exact
/// replies expected, in order. `DUMP`'s reply is its header and pair lines
/// joined with `\n`.
pub const SEED_TRANSCRIPT: &[(&str, &str)] = &[
    ("PUT name Derek Moss", "OK"),
    ("put age 18", "OK"),
    ("GET name", "\"Derek Moss\""),
    ("Put gender M", "OK"),
    (
        "dump",
        "(3 pairs)\n\"age\" \"18\"\n\"gender\" \"M\"\n\"name\" \"Derek Moss\"",
    ),
];

/// Plays [`SEED_TRANSCRIPT`] over `conn`, one line at a time as typed into
/// telnet (`\r\n` endings), asserting every reply exactly.
pub fn play_seed_transcript(conn: &mut Conn) {
    for (line, expected) in SEED_TRANSCRIPT {
        let reply = conn.cmd(line);
        assert_eq!(&reply, expected, "reply to {line:?} via {}", conn.peer());
    }
}
