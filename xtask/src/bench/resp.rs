//! Just enough RESP for the benchmark, on std sockets: a counter of complete
//! values in a byte stream, the null server built on it, and a small
//! pipelining client to load keys and read `INFO`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Counts complete top-level RESP values in a byte stream that arrives in
/// arbitrary pieces: requests (`*N` arrays of `$` bulk strings, or inline
/// lines) as well as replies (`+`, `-`, `:`, `$`, and flat `*` arrays).
///
/// Bulk payloads are skipped by their declared length, never scanned: a
/// value may contain `*`, `$` or newlines, and looking at it would also
/// cost the time the null server exists to leave out.
#[derive(Debug, Default)]
pub struct RespCounter {
    /// Where in a value the last piece ended.
    state: State,
    /// Elements still to come in the current array; 0 at top level.
    pending: u64,
    /// Error replies (`-…`) seen so far.
    errors: u64,
}

/// Where [`RespCounter`] is in the stream: values arrive split anywhere,
/// even in the middle of a header.
#[derive(Debug, Default)]
enum State {
    /// At the first byte of a value, or of an array element.
    #[default]
    Start,
    /// In the digits of a `*N` or `$N` header.
    Number {
        kind: u8,
        value: u64,
        negative: bool,
        digits: u8,
    },
    /// In a line whose content does not matter (`+OK`, `-ERR …`, `:1`, an
    /// inline command), until its `\n`.
    Line,
    /// Skipping this many bytes: a bulk payload and its CRLF.
    Skip(u64),
}

impl RespCounter {
    /// Consumes `data` and returns how many values it completed.
    ///
    /// Fails on input that is not RESP as this counter knows it (nested
    /// arrays, garbage in a header); the stream cannot be followed after that.
    pub fn feed(&mut self, data: &[u8]) -> Result<u64, &'static str> {
        let mut done = 0;
        let mut i = 0;
        while i < data.len() {
            match &mut self.state {
                State::Skip(left) => {
                    let n = (*left).min((data.len() - i) as u64);
                    i += n as usize;
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Start;
                        done += self.element_done();
                    }
                    continue;
                }
                State::Start => {
                    let b = data[i];
                    self.state = match b {
                        b'*' if self.pending > 0 => return Err("nested arrays are not supported"),
                        b'*' | b'$' => State::Number {
                            kind: b,
                            value: 0,
                            negative: false,
                            digits: 0,
                        },
                        b'-' => {
                            self.errors += 1;
                            State::Line
                        }
                        b'+' | b':' => State::Line,
                        // Blank lines between inline commands are ignored,
                        // as Redis does.
                        b'\r' | b'\n' if self.pending == 0 => State::Start,
                        _ if self.pending == 0 => State::Line, // an inline command
                        _ => return Err("expected a bulk string in an array"),
                    };
                }
                State::Line => {
                    if data[i] == b'\n' {
                        self.state = State::Start;
                        done += self.element_done();
                    }
                }
                State::Number {
                    kind,
                    value,
                    negative,
                    digits,
                } => match data[i] {
                    d @ b'0'..=b'9' => {
                        // 18 digits cannot overflow a u64; nobody sends more.
                        if *digits >= 18 {
                            return Err("header number too long");
                        }
                        *value = *value * 10 + u64::from(d - b'0');
                        *digits += 1;
                    }
                    b'-' if *digits == 0 && !*negative => *negative = true,
                    b'\r' => {}
                    b'\n' => {
                        let (kind, value, negative) = (*kind, *value, *negative);
                        self.state = State::Start;
                        if kind == b'$' && !negative {
                            self.state = State::Skip(value + 2);
                        } else if kind == b'*' && !negative && value > 0 {
                            self.pending = value;
                        } else {
                            // `$-1` (nil), `*0` and `*-1` are whole values.
                            done += self.element_done();
                        }
                    }
                    _ => return Err("bad character in a header"),
                },
            }
            i += 1;
        }
        Ok(done)
    }

    /// Error replies seen so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Bookkeeping for one finished element; returns 1 if that finished a
    /// top-level value.
    fn element_done(&mut self) -> u64 {
        if self.pending > 0 {
            self.pending -= 1;
            u64::from(self.pending == 0)
        } else {
            1
        }
    }
}

/// The null server: answers every command with `+OK` and stores nothing, a
/// thread per connection. Whatever req/s `redis-benchmark` reaches against
/// it is the ceiling that this machine, its loopback and the load generator
/// allow, so real servers can be shown as a fraction of it.
///
/// Stops accepting when dropped; connection threads end when their client
/// disconnects (or after a minute of silence).
pub struct NullServer {
    /// Where it listens.
    addr: SocketAddr,
    /// Set on drop; the threads poll it.
    stop: Arc<AtomicBool>,
    /// The accepting thread, joined on drop so that the port is closed
    /// once the server is gone.
    acceptor: Option<JoinHandle<()>>,
}

impl NullServer {
    /// Listens on a free loopback port.
    pub fn start() -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("null server: could not bind a port")?;
        let addr = listener.local_addr()?;
        // Non-blocking so that the accept loop can notice `stop`.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("null-accept".into())
                .spawn(move || accept_loop(&listener, &stop))?
        };
        eprintln!("xtask bench: null server listening on {addr}");
        Ok(NullServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NullServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.acceptor.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `stop`, each served on a thread of its own
/// ([`null_connection`]).
fn accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = Arc::clone(stop);
                let _ = std::thread::Builder::new()
                    .name("null-conn".into())
                    .spawn(move || {
                        let _ = null_connection(stream, &stop);
                    });
            }
            // Only connection setup waits on this poll, never a request.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Serves one null-server connection: one `+OK` per complete command, all
/// of a read's replies in one write, as a pipelining server does.
fn null_connection(mut stream: TcpStream, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    // Bounds the thread's life when a client goes silent without closing.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut counter = RespCounter::default();
    let mut input = vec![0u8; 64 * 1024];
    let mut output = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let n = stream.read(&mut input)?;
        if n == 0 {
            break;
        }
        let commands = counter
            .feed(&input[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        output.clear();
        for _ in 0..commands {
            output.extend_from_slice(b"+OK\r\n");
        }
        stream.write_all(&output)?;
    }
    Ok(())
}

/// A blocking RESP connection for the set-up work around the measurements
/// (loading keys, reading `INFO`), not for the measurements themselves.
pub struct Conn {
    /// The connection, with read and write timeouts set.
    stream: TcpStream,
    /// The server's address, for the error messages.
    addr: SocketAddr,
}

impl Conn {
    /// Connects, retrying until `deadline` while the server starts up.
    pub fn connect(addr: SocketAddr, deadline: Instant) -> Result<Self> {
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    // No single read or write may hang the benchmark.
                    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
                    return Ok(Conn { stream, addr });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("could not connect to {addr}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends `count` pipelined commands already encoded in `requests` and
    /// reads their replies, failing if any is an error. Returns the replies'
    /// raw bytes.
    pub fn pipeline(&mut self, requests: &[u8], count: u64) -> Result<Vec<u8>> {
        // Replies (and so the server's reading) could stall on a full socket
        // buffer if a huge batch were written before reading; the callers'
        // batches of about 100 KB are far below loopback buffer sizes.
        self.stream
            .write_all(requests)
            .with_context(|| format!("writing to {}", self.addr))?;
        let mut counter = RespCounter::default();
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0;
        while seen < count {
            let n = self
                .stream
                .read(&mut buf)
                .with_context(|| format!("reading from {}", self.addr))?;
            if n == 0 {
                bail!("{} closed the connection", self.addr);
            }
            seen += counter
                .feed(&buf[..n])
                .map_err(|e| anyhow::anyhow!("unreadable reply from {}: {e}", self.addr))?;
            replies.extend_from_slice(&buf[..n]);
        }
        if seen > count {
            bail!("{} sent {seen} replies to {count} commands", self.addr);
        }
        if counter.errors() > 0 {
            let text = String::from_utf8_lossy(&replies);
            let first = text.lines().find(|l| l.starts_with('-')).unwrap_or("");
            bail!(
                "{} answered {} of {count} commands with an error, e.g. {first}",
                self.addr,
                counter.errors()
            );
        }
        Ok(replies)
    }

    /// Sends one command and returns its reply's text: the payload of a bulk
    /// string, or the line of a simple reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<String> {
        let mut request = Vec::new();
        encode(&mut request, args);
        let reply = self.pipeline(&request, 1)?;
        let text = String::from_utf8_lossy(&reply);
        Ok(match text.split_once("\r\n") {
            Some((header, rest)) if header.starts_with('$') => {
                let len: usize = header[1..].parse().unwrap_or(0);
                rest.get(..len).unwrap_or(rest).to_owned()
            }
            Some((line, _)) => line.get(1..).unwrap_or("").to_owned(),
            None => text.into_owned(),
        })
    }

    /// `INFO [section]` as `field:value` pairs.
    pub fn info(&mut self, section: Option<&str>) -> Result<Vec<(String, String)>> {
        let text = match section {
            Some(s) => self.command(&[b"INFO", s.as_bytes()])?,
            None => self.command(&[b"INFO"])?,
        };
        Ok(text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

/// The number in `field` of an `INFO` answer.
pub fn info_number(info: &[(String, String)], field: &str) -> Result<u64> {
    info.iter()
        .find(|(k, _)| k == field)
        .with_context(|| format!("INFO has no {field} field"))?
        .1
        .trim()
        .parse()
        .with_context(|| format!("INFO field {field} is not a number"))
}

/// The value of `field` in an `INFO` answer.
pub fn info_field<'a>(info: &'a [(String, String)], field: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == field).map(|(_, v)| v.trim())
}

/// Appends `args` as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one split at a time and returns the total count.
    fn count_split(input: &[u8], at: usize) -> u64 {
        let mut c = RespCounter::default();
        let (a, b) = input.split_at(at);
        c.feed(a).unwrap() + c.feed(b).unwrap()
    }

    #[test]
    fn counts_pipelined_requests_however_split() {
        let mut input = Vec::new();
        encode(&mut input, &[b"SET", b"key:000000000001", &[b'*'; 64]]);
        encode(&mut input, &[b"GET", b"key:000000000001"]);
        // A payload full of RESP markers must be skipped, not parsed.
        encode(&mut input, &[b"SET", b"k", b"*2\r\n$3\r\nGET\r\n"]);
        input.extend_from_slice(b"PING\r\n\r\n");
        for at in 0..=input.len() {
            assert_eq!(count_split(&input, at), 4, "split at {at}");
        }
    }

    #[test]
    fn counts_replies_and_errors() {
        let input = b"+OK\r\n$3\r\nabc\r\n$-1\r\n:12\r\n-ERR no\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n";
        for at in 0..=input.len() {
            assert_eq!(count_split(input, at), 7, "split at {at}");
        }
        let mut c = RespCounter::default();
        c.feed(input).unwrap();
        assert_eq!(c.errors(), 1);
    }

    #[test]
    fn rejects_what_it_cannot_follow() {
        assert!(RespCounter::default().feed(b"*1\r\n*1\r\n").is_err());
        assert!(RespCounter::default().feed(b"$x\r\n").is_err());
        assert!(RespCounter::default().feed(b"*1\r\nGET\r\n").is_err());
        assert!(RespCounter::default()
            .feed(b"$1234567890123456789\r\n")
            .is_err());
    }

    #[test]
    fn finds_info_fields() {
        let info = vec![
            ("aof_enabled".to_owned(), "1".to_owned()),
            ("aof_fsync".to_owned(), "always\r".to_owned()),
        ];
        assert_eq!(info_field(&info, "aof_fsync"), Some("always"));
        assert_eq!(info_field(&info, "aof_status"), None);
    }

    #[test]
    fn null_server_answers_one_ok_per_command() {
        let server = NullServer::start().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conn = Conn::connect(server.addr(), deadline).unwrap();
        let mut batch = Vec::new();
        for i in 0..100 {
            encode(&mut batch, &[b"SET", format!("k{i}").as_bytes(), b"v"]);
        }
        let replies = conn.pipeline(&batch, 100).unwrap();
        assert_eq!(replies, b"+OK\r\n".repeat(100));
        assert_eq!(conn.command(&[b"GET", b"k1"]).unwrap(), "OK");
    }
}
