//! Incremental request decoder for both dialects on one connection.
//!
//! Like Redis, the dialect is chosen per command by its first byte: `*` starts
//! a RESP2 array of bulk strings; anything else is an *inline* line ended by
//! `\n` (optionally preceded by `\r`), as typed into `telnet`.
//!
//! The decoder owns the connection's unparsed bytes. Completed arguments are
//! split off the buffer as soon as they are whole and the position of the
//! last newline scan is remembered, so no byte is scanned twice however the
//! input is split (h11's lesson). Every way the buffer could grow is capped by
//! [`Limits`].

pub use crate::errors::DecodeError;
use bytes::{Buf, Bytes, BytesMut};
use std::borrow::Cow;

/// Size limits for one connection's input. Each is enforced with an error
/// reply, and the decoder never holds much more than the largest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest inline line, in bytes, without its line ending.
    pub max_line: usize,
    /// Longest key, in bytes.
    pub max_key: usize,
    /// Longest value, in bytes.
    pub max_value: usize,
    /// Most elements in one RESP array (command name included).
    pub max_args: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_key: 16 * 1024,
            max_value: 1024 * 1024,
            max_args: 1024,
        }
    }
}

impl Limits {
    /// The longest bulk string the decoder will buffer: a bulk string can be
    /// a key or a value, and which one is only known once the command is.
    pub fn max_bulk(&self) -> usize {
        self.max_key.max(self.max_value)
    }
}

/// Which dialect a command arrived in; its reply is written in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Human-readable lines, for `telnet`.
    Inline,
    /// RESP2, for `redis-cli`, `redis-benchmark` and Redis client libraries.
    Resp,
}

/// One complete request as it came off the wire, before it is understood as a
/// [`Command`](crate::Command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An inline line with its line ending removed, telnet negotiation
    /// skipped and backspaces applied. Never empty.
    Inline(Bytes),
    /// A RESP2 array of bulk strings. Never empty.
    Array(Vec<Bytes>),
}

impl Frame {
    /// The dialect this frame arrived in.
    pub fn dialect(&self) -> Dialect {
        match self {
            Frame::Inline(_) => Dialect::Inline,
            Frame::Array(_) => Dialect::Resp,
        }
    }
}

impl DecodeError {
    /// Whether the connection must be closed after replying: once RESP
    /// framing is lost there is no way to find the next command.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DecodeError::TooManyArgs { .. } | DecodeError::Protocol(_) | DecodeError::CrossProtocol
        )
    }

    /// The dialect the error reply should be written in.
    pub fn dialect(&self) -> Dialect {
        match self {
            DecodeError::LineTooLong { .. } | DecodeError::CrossProtocol => Dialect::Inline,
            _ => Dialect::Resp,
        }
    }
}

/// RESP header lines (`*3`, `$5`) are tiny; anything longer is garbage.
const MAX_HEADER: usize = 32;

#[derive(Debug)]
enum State {
    /// Between commands.
    Start,
    /// Skipping the rest of an over-long inline line.
    DiscardLine,
    /// Inside a RESP array.
    Array(ArrayState),
    /// Framing lost: the connection only awaits closing.
    Failed,
}

#[derive(Debug)]
struct ArrayState {
    remaining: usize,
    args: Vec<Bytes>,
    /// Length of the bulk string whose header has been read.
    pending_bulk: Option<usize>,
    /// Bytes still to skip of an over-long bulk string.
    discard: usize,
    /// Set when an argument was too long: the rest of the array is read and
    /// dropped, then this error is returned in place of the command.
    error: Option<DecodeError>,
}

/// Incremental decoder for one connection's requests.
///
/// Feed bytes with [`Decoder::feed`] (or read straight into
/// [`Decoder::buffer_mut`]), then call [`Decoder::next_frame`] until it
/// returns `Ok(None)`, which means "need more input", never an error.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    state: State,
    /// Where the search for the inline line's `\n` resumes.
    scan: usize,
    limits: Limits,
    /// The arguments vector of a finished command, given back with
    /// [`Decoder::recycle`] to hold the next one's: a pipeline of commands
    /// allocates one vector, not one each.
    spare: Vec<Bytes>,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            buf: BytesMut::new(),
            state: State::Start,
            scan: 0,
            limits,
            spare: Vec::new(),
        }
    }

    /// Gives back the arguments vector of a finished command, to hold the
    /// next command's. Kept only while more input is buffered (a pipeline
    /// is under way) and only if small, so that an idle connection holds
    /// no vector and a huge `DEL` leaves none behind.
    pub fn recycle(&mut self, mut args: Vec<Bytes>) {
        if !self.buf.is_empty() && args.capacity() <= 16 {
            args.clear();
            self.spare = args;
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends received bytes. Input after a fatal error is dropped.
    pub fn feed(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Failed) {
            self.buf.extend_from_slice(data);
        }
    }

    /// The receive buffer, for drivers that read into it directly to save a
    /// copy. Reserve before reading; what is appended is decoded next.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a command has begun but is not complete, e.g. a client that
    /// stalled in the middle of a line.
    pub fn is_mid_command(&self) -> bool {
        !self.buf.is_empty() || matches!(self.state, State::Array(_) | State::DiscardLine)
    }

    /// Whether a fatal error has been returned.
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Decodes the next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let result = self.decode();
        if let Err(e) = &result {
            if e.is_fatal() {
                self.state = State::Failed;
                self.buf = BytesMut::new();
            }
        }
        result
    }

    fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        loop {
            match &mut self.state {
                State::Failed => return Ok(None),
                State::DiscardLine => match memchr::memchr(b'\n', &self.buf) {
                    Some(i) => {
                        self.buf.advance(i + 1);
                        self.state = State::Start;
                    }
                    None => {
                        self.buf.clear();
                        return Ok(None);
                    }
                },
                State::Start => {
                    let Some(&first) = self.buf.first() else {
                        return Ok(None);
                    };
                    if first == b'*' {
                        let Some(n) = take_header(&mut self.buf, b'*')? else {
                            return Ok(None);
                        };
                        // Like Redis, `*0` and `*-1` are accepted and ignored.
                        if n <= 0 {
                            continue;
                        }
                        let n = n as usize;
                        if n > self.limits.max_args {
                            return Err(DecodeError::TooManyArgs {
                                len: n,
                                limit: self.limits.max_args,
                            });
                        }
                        // `with_capacity` allocates directly; `reserve` on an
                        // empty vector takes the general growth path, which
                        // showed up per request in profiles.
                        let args = if self.spare.capacity() == 0 {
                            Vec::with_capacity(n.min(16))
                        } else {
                            let mut args = std::mem::take(&mut self.spare);
                            args.reserve(n.min(16));
                            args
                        };
                        self.state = State::Array(ArrayState {
                            remaining: n,
                            args,
                            pending_bulk: None,
                            discard: 0,
                            error: None,
                        });
                    } else if let Some(frame) = self.decode_inline()? {
                        return Ok(Some(frame));
                    } else if self.buf.is_empty() || self.scan == self.buf.len() {
                        return Ok(None);
                    }
                }
                State::Array(st) => {
                    if st.remaining == 0 {
                        let State::Array(st) = std::mem::replace(&mut self.state, State::Start)
                        else {
                            unreachable!("matched above")
                        };
                        return match st.error {
                            Some(e) => Err(e),
                            None => Ok(Some(Frame::Array(st.args))),
                        };
                    }
                    if st.discard > 0 {
                        let n = st.discard.min(self.buf.len());
                        self.buf.advance(n);
                        st.discard -= n;
                        if st.discard > 0 {
                            return Ok(None);
                        }
                        st.remaining -= 1;
                        continue;
                    }
                    match st.pending_bulk {
                        None => {
                            let Some(&first) = self.buf.first() else {
                                return Ok(None);
                            };
                            if first != b'$' {
                                return Err(DecodeError::Protocol(
                                    "expected '$' for a bulk string",
                                ));
                            }
                            let Some(len) = take_header(&mut self.buf, b'$')? else {
                                return Ok(None);
                            };
                            if len < 0 {
                                return Err(DecodeError::Protocol("invalid bulk length"));
                            }
                            let len = len as usize;
                            let limit = self.limits.max_bulk();
                            if len > limit {
                                st.error = Some(DecodeError::BulkTooLong { len, limit });
                                st.args = Vec::new();
                                st.discard = len + 2;
                            } else {
                                st.pending_bulk = Some(len);
                            }
                        }
                        Some(len) => {
                            if self.buf.len() < len + 2 {
                                // Reserve once for the whole argument rather than
                                // growing the buffer read by read.
                                self.buf.reserve(len + 2 - self.buf.len());
                                return Ok(None);
                            }
                            if &self.buf[len..len + 2] != b"\r\n" {
                                return Err(DecodeError::Protocol("bulk string not ended by CRLF"));
                            }
                            let data = self.buf.split_to(len).freeze();
                            self.buf.advance(2);
                            if st.error.is_none() {
                                st.args.push(data);
                            }
                            st.pending_bulk = None;
                            st.remaining -= 1;
                        }
                    }
                }
            }
        }
    }

    /// Decodes one inline line if complete. Returns `Ok(None)` both when more
    /// input is needed and when a blank line was skipped (the caller loops).
    fn decode_inline(&mut self) -> Result<Option<Frame>, DecodeError> {
        let max = self.limits.max_line;
        match memchr::memchr(b'\n', &self.buf[self.scan..]) {
            Some(i) => {
                let end = self.scan + i;
                self.scan = 0;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > max {
                    return Err(DecodeError::LineTooLong { limit: max });
                }
                let cleaned = match clean_telnet(&line) {
                    Cow::Borrowed(_) => line.freeze(),
                    Cow::Owned(v) => Bytes::from(v),
                };
                if cleaned.iter().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
                if is_http_line(&cleaned) {
                    return Err(DecodeError::CrossProtocol);
                }
                Ok(Some(Frame::Inline(cleaned)))
            }
            None => {
                self.scan = self.buf.len();
                // `max + 1` leaves room for the `\r` of a line of exactly `max`.
                if self.buf.len() > max + 1 {
                    self.buf.clear();
                    self.scan = 0;
                    self.state = State::DiscardLine;
                    return Err(DecodeError::LineTooLong { limit: max });
                }
                Ok(None)
            }
        }
    }
}

/// Whether an inline line is part of an HTTP request: a `POST` request line
/// or a `Host:` header, as Redis checks. (`GET / HTTP/1.1` is answered as a
/// bad `GET` first; the `Host:` line that follows then closes the connection.)
fn is_http_line(line: &[u8]) -> bool {
    let word = line
        .split(|b| *b == b' ' || *b == b'\t')
        .next()
        .unwrap_or_default();
    word.eq_ignore_ascii_case(b"POST") || word.eq_ignore_ascii_case(b"Host:")
}

/// Reads a `<prefix><integer>\r\n` header if complete.
fn take_header(buf: &mut BytesMut, prefix: u8) -> Result<Option<i64>, DecodeError> {
    debug_assert_eq!(buf.first(), Some(&prefix));
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let Some(nl) = memchr::memchr(b'\n', window) else {
        if buf.len() >= MAX_HEADER {
            return Err(DecodeError::Protocol("header line too long"));
        }
        return Ok(None);
    };
    if nl < 2 || window[nl - 1] != b'\r' {
        return Err(DecodeError::Protocol("header not ended by CRLF"));
    }
    let n = parse_int(&window[1..nl - 1]).ok_or(match prefix {
        b'*' => DecodeError::Protocol("invalid multibulk length"),
        _ => DecodeError::Protocol("invalid bulk length"),
    })?;
    buf.advance(nl + 1);
    Ok(Some(n))
}

/// Parses a decimal integer with an optional leading `-`, rejecting anything
/// else (including `+`, spaces and overflow).
pub(crate) fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    // 19 digits hold every i64; longer is overflow whatever the digits.
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i128::from(d - b'0');
    }
    i64::try_from(if neg { -n } else { n }).ok()
}

const IAC: u8 = 0xFF;
const SB: u8 = 250;
const SE: u8 = 240;

/// Removes what a telnet client adds to a typed line: IAC negotiation
/// sequences, NUL padding, and characters erased with backspace or DEL (the
/// Windows client sends every keystroke, erasures included).
pub(crate) fn clean_telnet(line: &[u8]) -> Cow<'_, [u8]> {
    if !line.iter().any(|&b| matches!(b, IAC | 0x08 | 0x7F | 0)) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            IAC => match line.get(i + 1) {
                Some(&IAC) => {
                    out.push(IAC);
                    i += 2;
                }
                Some(251..=254) => i += 3,
                Some(&SB) => {
                    let rest = &line[i + 2..];
                    i = match rest.windows(2).position(|w| w == [IAC, SE]) {
                        Some(p) => i + 2 + p + 2,
                        None => line.len(),
                    };
                }
                Some(_) => i += 2,
                None => i += 1,
            },
            0x08 | 0x7F => {
                // Erase one whole UTF-8 character, not half of one.
                while let Some(b) = out.pop() {
                    if b & 0xC0 != 0x80 {
                        break;
                    }
                }
                i += 1;
            }
            0 => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(limits: Limits, input: &[u8]) -> Vec<Result<Frame, DecodeError>> {
        let mut d = Decoder::new(limits);
        d.feed(input);
        let mut out = Vec::new();
        loop {
            match d.next_frame() {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        break;
                    }
                }
            }
        }
        out
    }

    fn inline(s: &str) -> Result<Frame, DecodeError> {
        Ok(Frame::Inline(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn inline_lines_with_either_ending() {
        let got = frames(
            Limits::default(),
            b"PUT name Derek Moss\r\nget name\n\r\n  \nDUMP",
        );
        assert_eq!(got, vec![inline("PUT name Derek Moss"), inline("get name")]);
    }

    #[test]
    fn resp_array_and_pipelining() {
        let got = frames(
            Limits::default(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\nPING\r\n",
        );
        assert_eq!(
            got,
            vec![
                Ok(Frame::Array(vec![
                    Bytes::from_static(b"GET"),
                    Bytes::from_static(b"k")
                ])),
                Ok(Frame::Array(vec![Bytes::from_static(b"PING")])),
                inline("PING"),
            ]
        );
    }

    #[test]
    fn telnet_backspace_and_negotiation_are_cleaned() {
        let got = frames(
            Limits::default(),
            b"\xff\xfb\x01\xff\xfd\x03GEX\x08T k\xff\xfa\x18\x00xterm\xff\xf0\r\n",
        );
        assert_eq!(got, vec![inline("GET k")]);
        // Backspace over a multi-byte character removes it whole.
        assert_eq!(clean_telnet("aé\x7f".as_bytes()).as_ref(), b"a");
    }

    #[test]
    fn over_long_line_is_an_error_then_the_next_line_works() {
        let limits = Limits {
            max_line: 8,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.feed(b"0123456789abcdef");
        assert_eq!(d.next_frame(), Err(DecodeError::LineTooLong { limit: 8 }));
        assert_eq!(d.buffered(), 0);
        d.feed(b"still the same line\nPING\n");
        assert_eq!(
            d.next_frame(),
            Ok(Some(Frame::Inline(Bytes::from_static(b"PING"))))
        );
        // A long line that arrives whole with its newline is refused too.
        assert_eq!(
            frames(limits, b"0123456789\nPING\n"),
            vec![Err(DecodeError::LineTooLong { limit: 8 }), inline("PING")]
        );
        // Exactly at the limit, with CRLF split across reads, is fine.
        let mut d = Decoder::new(limits);
        d.feed(b"PING 123\r");
        assert_eq!(d.next_frame(), Ok(None));
        d.feed(b"\n");
        assert_eq!(
            d.next_frame(),
            Ok(Some(Frame::Inline(Bytes::from_static(b"PING 123"))))
        );
    }

    #[test]
    fn over_long_bulk_is_skipped_without_buffering() {
        let limits = Limits {
            max_key: 4,
            max_value: 4,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n01234");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 0);
        d.feed(b"56789\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::BulkTooLong { len: 10, limit: 4 })
        );
        assert_eq!(
            d.next_frame(),
            Ok(Some(Frame::Array(vec![Bytes::from_static(b"PING")])))
        );
    }

    #[test]
    fn malformed_resp_is_fatal_after_earlier_commands() {
        let got = frames(Limits::default(), b"PING\n*1\r\n+OK\r\nPING\n");
        assert_eq!(got[0], inline("PING"));
        assert!(matches!(&got[1], Err(e) if e.is_fatal()));
        assert_eq!(got.len(), 2);
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n$-5\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*99999999999\r\n",
            b"*1\n",
        ] {
            let got = frames(Limits::default(), bad);
            assert!(
                matches!(got.last(), Some(Err(e)) if e.is_fatal()),
                "{bad:?}: {got:?}"
            );
        }
        let got = frames(Limits::default(), b"*1025\r\n");
        assert_eq!(
            got,
            vec![Err(DecodeError::TooManyArgs {
                len: 1025,
                limit: 1024
            })]
        );
    }

    #[test]
    fn http_requests_close_the_connection() {
        let got = frames(
            Limits::default(),
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:7071\r\nPING\r\n",
        );
        assert_eq!(
            got,
            vec![inline("GET / HTTP/1.1"), Err(DecodeError::CrossProtocol)]
        );
        let got = frames(Limits::default(), b"POST /x HTTP/1.1\r\n");
        assert_eq!(got, vec![Err(DecodeError::CrossProtocol)]);
        // A key named like a header is fine as an argument.
        assert_eq!(
            frames(Limits::default(), b"GET Host:\r\n"),
            vec![inline("GET Host:")]
        );
    }

    #[test]
    fn empty_arrays_are_ignored() {
        assert_eq!(
            frames(Limits::default(), b"*0\r\n*-1\r\nPING\n"),
            vec![inline("PING")]
        );
    }

    #[test]
    fn parse_int_rejects_junk() {
        assert_eq!(parse_int(b"123"), Some(123));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1x",
            b"9223372036854775808",
            b"12345678901234567890",
        ] {
            assert_eq!(parse_int(bad), None);
        }
    }
}
