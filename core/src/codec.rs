//! Incremental request decoder for both dialects on one connection.
//!
//! Like Redis, the dialect is chosen per command by its first byte: `*` starts
//! a RESP2 array of bulk strings; anything else is an *inline* line ended by
//! `\n` (optionally preceded by `\r`), as typed into `telnet`.
//!
//! Malformed input is met as Redis 7.0 meets it (`processMultibulkBuffer`
//! and `processInlineBuffer`): the same error texts ([`DecodeError`]), each
//! closing the connection after the reply; `*0`, a negative `*` count and
//! blank lines ignored without a reply; header lines read up to their `\r`,
//! and the byte after it, like the two after a bulk string's payload,
//! skipped unchecked. Where Redis's outcome depends on how reads happened
//! to cut the input (a long line that arrives whole is accepted, the same
//! line in small reads is not), the decoder takes the strict reading so
//! that the outcome never depends on the cut.
//!
//! The decoder owns the connection's unparsed bytes. Completed arguments are
//! split off the buffer as soon as they are whole and the position of the
//! last line-end scan is remembered, so no byte is scanned twice however the
//! input is split (h11's lesson). Every way the buffer could grow is capped by
//! [`Limits`], and nothing is allocated ahead from a length the peer
//! declares beyond [`RESERVE_AHEAD`].

use crate::command::{is_blank, Command};
pub use crate::errors::DecodeError;
use bytes::{Buf, Bytes, BytesMut};
use std::borrow::Cow;

/// Size limits for one connection's input. A request over one of them is
/// refused with a fatal [`DecodeError`] as soon as it is seen, or for keys and
/// values, with a [`CommandError`](crate::CommandError) once the command is
/// known; the decoder never holds much more than the largest of them.
///
/// The defaults are Redis's: its `proto-max-bulk-len` (512 MiB) for a bulk
/// string, whether key or value, its inline and header line limit (64 KiB),
/// and 1024 × 1024 array elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest inline line, in bytes, without its line ending; also the
    /// longest `*` or `$` header line, as in Redis, where one constant
    /// (`PROTO_INLINE_MAX_SIZE`) bounds both.
    pub max_line: usize,
    /// Longest key, in bytes.
    pub max_key: usize,
    /// Longest value, in bytes.
    pub max_value: usize,
    /// Most elements in one RESP array (command name included), and most
    /// words in one inline command.
    pub max_args: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_key: 512 * 1024 * 1024,
            max_value: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
        }
    }
}

impl Limits {
    /// The longest bulk string the decoder will buffer: a bulk string can be
    /// a key or a value, and which one is only known once the command is.
    /// A longer `$` length is refused before any of its payload arrives.
    pub fn max_bulk(&self) -> usize {
        self.max_key.max(self.max_value)
    }
}

/// The most the decoder reserves ahead for a bulk string's payload. A
/// declared length is only a claim: reserving all of it at once would let
/// a peer make the process allocate half a gigabyte per connection with a
/// dozen bytes. Past this, the buffer grows as bytes actually arrive (by
/// doubling, so still in amortised linear time).
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Which dialect a command arrived in; its reply is written in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Human-readable lines, for `telnet`.
    Inline,
    /// RESP2, for `redis-cli`, `redis-benchmark` and Redis client libraries.
    Resp,
}

/// One complete request as it came off the wire, before it is understood as a
/// [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An inline line with its line ending removed, telnet negotiation
    /// skipped and backspaces applied. Never blank, and its quotes are
    /// balanced as [`Command::from_inline`]
    /// splits it.
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
    /// Whether the connection must be closed after replying. Every decode
    /// error is, as in Redis: once framing is in doubt there is no telling
    /// where the next command starts. (Spelled out per variant so that a
    /// new one has to be decided on.)
    pub fn is_fatal(&self) -> bool {
        match self {
            DecodeError::InvalidMultibulkLength
            | DecodeError::ExpectedBulk { .. }
            | DecodeError::InvalidBulkLength
            | DecodeError::MultibulkCountTooBig
            | DecodeError::BulkCountTooBig
            | DecodeError::InlineTooBig
            | DecodeError::UnbalancedQuotes
            | DecodeError::CrossProtocol => true,
        }
    }

    /// The dialect the error reply should be written in. Redis's protocol
    /// errors go out in RESP, byte for byte as Redis sends them, even after
    /// an inline line: the peer may be a RESP client whose stream went
    /// wrong, and only RESP can be read by both it and a person.
    pub fn dialect(&self) -> Dialect {
        match self {
            DecodeError::CrossProtocol => Dialect::Inline,
            _ => Dialect::Resp,
        }
    }
}

#[derive(Debug)]
enum State {
    /// Between commands.
    Start,
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
    /// Where the search for the end of the current line (an inline line's
    /// `\n`, a header's `\r`) resumes.
    scan: usize,
    limits: Limits,
    /// The arguments vector of a finished command, given back with
    /// [`Decoder::recycle`] to hold the next one's: a pipeline of commands
    /// allocates one vector, not one each.
    spare: Vec<Bytes>,
    /// Commands (and refused requests) read so far: a connection's
    /// progress, which tells a client that keeps sending commands from one
    /// that drips a single command forever.
    read: u64,
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
            read: 0,
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
        !self.buf.is_empty() || matches!(self.state, State::Array(_))
    }

    /// Requests read so far (commands and refused requests alike).
    pub fn requests_read(&self) -> u64 {
        self.read
    }

    /// Whether a fatal error has been returned.
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Decodes the next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let result = self.decode();
        if !matches!(result, Ok(None)) {
            self.read += 1;
        }
        if let Err(e) = &result {
            if e.is_fatal() {
                self.state = State::Failed;
                self.buf = BytesMut::new();
                self.scan = 0;
            }
        }
        result
    }

    fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        loop {
            match &mut self.state {
                State::Failed => return Ok(None),
                State::Start => {
                    let Some(&first) = self.buf.first() else {
                        return Ok(None);
                    };
                    if first == b'*' {
                        let Some(line) = self.take_header(DecodeError::MultibulkCountTooBig)?
                        else {
                            return Ok(None);
                        };
                        let n = parse_length(&line[1..])
                            .filter(|&n| {
                                n <= i64::try_from(self.limits.max_args).unwrap_or(i64::MAX)
                            })
                            .ok_or(DecodeError::InvalidMultibulkLength)?;
                        // Like Redis, `*0` and any negative count are
                        // accepted and ignored, without a reply.
                        let Ok(n @ 1..) = usize::try_from(n) else {
                            continue;
                        };
                        // Room for 16 arguments at most: the count is the
                        // peer's claim, the arguments are what arrives.
                        // (`with_capacity` allocates directly; `reserve` on
                        // an empty vector takes the general growth path,
                        // which showed up per request in profiles.)
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
                        });
                    } else if let Some(frame) = self.decode_inline()? {
                        return Ok(Some(frame));
                    } else if self.buf.is_empty() || self.scan == self.buf.len() {
                        return Ok(None);
                    }
                }
                State::Array(st) if st.remaining == 0 => {
                    let State::Array(st) = std::mem::replace(&mut self.state, State::Start) else {
                        unreachable!("matched above")
                    };
                    return Ok(Some(Frame::Array(st.args)));
                }
                State::Array(st) => match st.pending_bulk {
                    None => {
                        let Some(&first) = self.buf.first() else {
                            return Ok(None);
                        };
                        // Redis reads the whole line before looking at its
                        // first byte, so a line too long is reported as such
                        // whatever it starts with.
                        let max_line = self.limits.max_line;
                        let Some(line) = take_header(
                            &mut self.buf,
                            &mut self.scan,
                            max_line,
                            DecodeError::BulkCountTooBig,
                        )?
                        else {
                            return Ok(None);
                        };
                        if first != b'$' {
                            return Err(DecodeError::ExpectedBulk { got: first });
                        }
                        let len = parse_length(&line[1..])
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|&n| n <= self.limits.max_bulk())
                            .ok_or(DecodeError::InvalidBulkLength)?;
                        st.pending_bulk = Some(len);
                    }
                    Some(len) => {
                        // The payload and the two bytes after it.
                        let whole = len + 2;
                        if self.buf.len() < whole {
                            self.buf
                                .reserve((whole - self.buf.len()).min(RESERVE_AHEAD));
                            return Ok(None);
                        }
                        st.args.push(self.buf.split_to(len).freeze());
                        // Not checked to be CRLF, as Redis does not: it skips
                        // two bytes whatever they are, and so does kv, so that
                        // a client that miscounts gets the replies it would
                        // get from Redis.
                        self.buf.advance(2);
                        st.pending_bulk = None;
                        st.remaining -= 1;
                    }
                },
            }
        }
    }

    /// Takes the `*` or `$` line at the start of the buffer, if complete.
    fn take_header(&mut self, too_big: DecodeError) -> Result<Option<BytesMut>, DecodeError> {
        take_header(&mut self.buf, &mut self.scan, self.limits.max_line, too_big)
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
                    return Err(DecodeError::InlineTooBig);
                }
                let cleaned = match clean_telnet(&line) {
                    Cow::Borrowed(_) => line.freeze(),
                    Cow::Owned(v) => Bytes::from(v),
                };
                // A line of blanks splits into no words, which Redis
                // skips without a reply.
                if cleaned.iter().all(|&b| is_blank(b)) {
                    return Ok(None);
                }
                Command::check_inline(&cleaned)?;
                if is_http_line(&cleaned) {
                    return Err(DecodeError::CrossProtocol);
                }
                Ok(Some(Frame::Inline(cleaned)))
            }
            None => {
                self.scan = self.buf.len();
                // `max + 1` leaves room for the `\r` of a line of exactly
                // `max`, so that a line is refused for what it holds,
                // however it is cut.
                if self.buf.len() > max + 1 {
                    return Err(DecodeError::InlineTooBig);
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

/// Takes a `*` or `$` header line off `buf` if complete, returning it
/// without its line ending; `scan` is where the search for its end resumes.
///
/// As in Redis, the line ends at its first `\r`, which must be followed by
/// one more byte, taken as the `\n` without looking at it. A line whose `\r`
/// lies past `max` bytes is refused with `too_big`: Redis refuses it once
/// more than `max` bytes are buffered without a `\r`, and checking where the
/// `\r` lies gives that same answer however the input is cut.
fn take_header(
    buf: &mut BytesMut,
    scan: &mut usize,
    max: usize,
    too_big: DecodeError,
) -> Result<Option<BytesMut>, DecodeError> {
    let Some(cr) = memchr::memchr(b'\r', &buf[*scan..]).map(|i| *scan + i) else {
        *scan = buf.len();
        if buf.len() > max {
            return Err(too_big);
        }
        return Ok(None);
    };
    if cr > max {
        return Err(too_big);
    }
    if cr + 1 >= buf.len() {
        *scan = cr;
        return Ok(None);
    }
    *scan = 0;
    let line = buf.split_to(cr);
    buf.advance(2);
    Ok(Some(line))
}

/// Parses a length as Redis's `string2ll` does: `0`, or an optional `-` and
/// digits not starting with `0`, in at most 20 bytes and within `i64`. So
/// `+1`, ` 1`, `01` and `-0` are not lengths.
fn parse_length(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    if digits == b"0" {
        return Some(0);
    }
    let magnitude = digits.strip_prefix(b"-").unwrap_or(digits);
    if !matches!(magnitude.first(), Some(b'1'..=b'9')) {
        return None;
    }
    parse_int(digits)
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

    /// Feeds `input` whole, then split at every point, and checks that
    /// both decode to `expected`.
    fn at_every_split(limits: Limits, input: &[u8], expected: &[Result<Frame, DecodeError>]) {
        assert_eq!(frames(limits, input), expected, "whole: {input:?}");
        for cut in 0..=input.len() {
            let mut d = Decoder::new(limits);
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                d.feed(part);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => got.push(Ok(f)),
                        Ok(None) => break,
                        Err(e) => {
                            got.push(Err(e));
                            break;
                        }
                    }
                }
                if d.has_failed() {
                    break;
                }
            }
            assert_eq!(got, expected, "cut at {cut}: {input:?}");
        }
    }

    fn array(args: &[&str]) -> Result<Frame, DecodeError> {
        Ok(Frame::Array(
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
        ))
    }

    #[test]
    fn over_long_inline_line_is_fatal() {
        let limits = Limits {
            max_line: 8,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.feed(b"0123456789abcdef");
        assert_eq!(d.next_frame(), Err(DecodeError::InlineTooBig));
        assert!(d.has_failed());
        assert_eq!(d.buffered(), 0);
        d.feed(b"\nPING\n");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 0);
        // A long line that arrives whole with its newline is refused too.
        at_every_split(
            limits,
            b"012345678\nPING\n",
            &[Err(DecodeError::InlineTooBig)],
        );
        // Exactly at the limit, with either line ending, is fine.
        at_every_split(
            limits,
            b"PING 123\r\nPING\n",
            &[inline("PING 123"), inline("PING")],
        );
        at_every_split(limits, b"PING 123\n", &[inline("PING 123")]);
        // The default is Redis's 64 KiB.
        let mut line = vec![b'a'; 64 * 1024];
        line.extend_from_slice(b"\r\n");
        assert_eq!(frames(Limits::default(), &line).len(), 1);
        let mut d = Decoder::new(Limits::default());
        d.feed(&vec![b'a'; 64 * 1024 + 2]);
        assert_eq!(d.next_frame(), Err(DecodeError::InlineTooBig));
    }

    #[test]
    fn blank_lines_are_skipped_without_a_reply() {
        at_every_split(
            Limits::default(),
            b"\r\n\n \t\x0b\x0c\r\n\r\r\nPING\r\n",
            &[inline("PING")],
        );
        // What telnet negotiation leaves of a line can be nothing at all.
        at_every_split(
            Limits::default(),
            b"\xff\xfb\x01\r\nPING\n",
            &[inline("PING")],
        );
    }

    #[test]
    fn unbalanced_quotes_are_fatal() {
        at_every_split(
            Limits::default(),
            b"set \"\"\"test-key\"\"\" test-value\r\nping\r\n",
            &[Err(DecodeError::UnbalancedQuotes)],
        );
        for bad in [
            &b"GET \"k\n"[..],
            b"GET 'k\n",
            b"GET \"a\"b\n",
            b"GET 'a'b\n",
            b"GET \"a\\\"\n",
            b"\"GET k\n",
            b"FROB \"x\n",
            b"PUT \"k v\n",
            b"PUT k \"v\n",
            b"PUT k \"v\"x\n",
            b"PUT k \"a\" \"b\n",
            b"PUT k \"a\" b\"\n",
        ] {
            assert_eq!(
                frames(Limits::default(), bad),
                [Err(DecodeError::UnbalancedQuotes)],
                "{bad:?}"
            );
        }
        // Balanced, or not quotes to Redis: passed on as they are, for
        // `Command::from_inline` to split.
        for good in [
            "GET \"a b\"",
            "GET 'a b'",
            "GET \"a\" ",
            "GET a\"b c\"",
            "PUT k it's fine",
            "PUT k \"a\" b",
            "ECHO \"\\\"\"",
        ] {
            at_every_split(
                Limits::default(),
                format!("{good}\n").as_bytes(),
                &[inline(good)],
            );
        }
    }

    #[test]
    fn multibulk_lengths_as_redis_reads_them() {
        // Zero and negative counts are ignored, without a reply.
        at_every_split(
            Limits::default(),
            b"*0\r\n*-1\r\n*-10\r\nPING\n",
            &[inline("PING")],
        );
        for bad in [
            &b"*x\r\n"[..],
            b"*\r\n",
            b"*-\r\n",
            b"*+1\r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
            b"*3000000000\r\n",
            b"*99999999999999999999\r\n",
            b"*1\n$4\r\nPING\r\n",
        ] {
            at_every_split(
                Limits::default(),
                bad,
                &[Err(DecodeError::InvalidMultibulkLength)],
            );
        }
        // Redis's limit of elements is the default one.
        at_every_split(
            Limits::default(),
            b"*1048577\r\n",
            &[Err(DecodeError::InvalidMultibulkLength)],
        );
        let mut d = Decoder::new(Limits::default());
        d.feed(b"*1048576\r\n");
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.is_mid_command());
        let limits = Limits {
            max_args: 2,
            ..Limits::default()
        };
        at_every_split(
            limits,
            b"*3\r\n",
            &[Err(DecodeError::InvalidMultibulkLength)],
        );
        at_every_split(
            limits,
            b"*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n",
            &[array(&["ECHO", "x"])],
        );
    }

    #[test]
    fn bulk_lengths_as_redis_reads_them() {
        for bad in [
            &b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n"[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$+1\r\n",
        ] {
            at_every_split(
                Limits::default(),
                bad,
                &[Err(DecodeError::InvalidBulkLength)],
            );
        }
        // `$0` is an empty argument.
        at_every_split(
            Limits::default(),
            b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
            &[array(&["ECHO", ""])],
        );
    }

    #[test]
    fn non_bulk_elements_name_the_byte_found() {
        at_every_split(
            Limits::default(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
            &[Err(DecodeError::ExpectedBulk { got: b'f' })],
        );
        at_every_split(
            Limits::default(),
            b"*1\r\n:5\r\n",
            &[Err(DecodeError::ExpectedBulk { got: b':' })],
        );
        // The line is read whole first, as Redis does, so an element is
        // judged only once its line has ended...
        let mut d = Decoder::new(Limits::default());
        d.feed(b"*1\r\nfoo");
        assert_eq!(d.next_frame(), Ok(None));
        d.feed(b"\r\n");
        assert_eq!(d.next_frame(), Err(DecodeError::ExpectedBulk { got: b'f' }));
        // ... even an empty one.
        at_every_split(
            Limits::default(),
            b"*1\r\n\r\n",
            &[Err(DecodeError::ExpectedBulk { got: b'\r' })],
        );
    }

    #[test]
    fn header_lines_over_the_line_limit_are_fatal() {
        let limits = Limits {
            max_line: 8,
            ..Limits::default()
        };
        // Up to `max_line` bytes before the `\r`, as in Redis.
        at_every_split(
            limits,
            b"*0000001\r\n",
            &[Err(DecodeError::InvalidMultibulkLength)],
        );
        at_every_split(
            limits,
            b"*00000001\r\n",
            &[Err(DecodeError::MultibulkCountTooBig)],
        );
        at_every_split(
            limits,
            b"*1\r\n$0000001\r\n",
            &[Err(DecodeError::InvalidBulkLength)],
        );
        at_every_split(
            limits,
            b"*1\r\n$00000001\r\n",
            &[Err(DecodeError::BulkCountTooBig)],
        );
        // Length is judged before the first byte, as in Redis.
        at_every_split(
            limits,
            b"*1\r\nfoooooooo",
            &[Err(DecodeError::BulkCountTooBig)],
        );
        // The protocol desync of Redis's test suite: no `\r` ever comes.
        for start in [&b"*\x00"[..], b"*1\r\n\x00"] {
            let mut d = Decoder::new(Limits::default());
            d.feed(start);
            let mut got = Ok(None);
            for _ in 0..100 {
                d.feed(&[b'A'; 1024]);
                got = d.next_frame();
                if got.is_err() {
                    break;
                }
                assert!(d.buffered() <= 64 * 1024);
            }
            assert!(
                matches!(
                    got,
                    Err(DecodeError::MultibulkCountTooBig | DecodeError::BulkCountTooBig)
                ),
                "{got:?}"
            );
        }
    }

    #[test]
    fn bytes_after_a_cr_or_a_payload_are_not_checked() {
        // As in Redis: the byte after a header's `\r` and the two after a
        // payload are skipped whatever they are. A miscounted payload then
        // leaves its tail to be read as the next command, as Redis would.
        at_every_split(
            Limits::default(),
            b"*1\rX$4\r\nPINGxy*1\r\n$4\r\nPING\r\n",
            &[array(&["PING"]), array(&["PING"])],
        );
        at_every_split(
            Limits::default(),
            b"*1\r\n$1\r\nab\r\nPING\r\n",
            &[array(&["a"]), inline("PING")],
        );
    }

    #[test]
    fn large_values_are_taken_and_memory_follows_the_bytes() {
        // 4 MiB and 100 MiB values work with the default limits.
        for len in [4 << 20, 100 << 20] {
            let mut d = Decoder::new(Limits::default());
            d.feed(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n").as_bytes());
            assert_eq!(d.next_frame(), Ok(None));
            // Nothing is reserved from the declared length beyond a little.
            assert!(d.buffer_mut().capacity() <= 2 * RESERVE_AHEAD, "{len}");
            let chunk = vec![b'v'; 1 << 20];
            for _ in 0..len >> 20 {
                d.feed(&chunk);
                assert_eq!(d.next_frame(), Ok(None));
            }
            d.feed(b"\r\n");
            let Ok(Some(Frame::Array(args))) = d.next_frame() else {
                panic!("a {len}-byte value")
            };
            assert_eq!(args[2].len(), len);
        }
        // One over the limit is refused as soon as its length is read.
        let limits = Limits {
            max_key: 4,
            max_value: 8,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9\r\n");
        assert_eq!(d.next_frame(), Err(DecodeError::InvalidBulkLength));
        assert!(d.has_failed());
        at_every_split(
            limits,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8\r\n01234567\r\n",
            &[array(&["SET", "k", "01234567"])],
        );
        // So is one over Redis's 512 MiB by default.
        let mut d = Decoder::new(Limits::default());
        d.feed(b"*1\r\n$536870913\r\n");
        assert_eq!(d.next_frame(), Err(DecodeError::InvalidBulkLength));
        let mut d = Decoder::new(Limits::default());
        d.feed(b"*1\r\n$536870912\r\n");
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.buffer_mut().capacity() <= 2 * RESERVE_AHEAD);
    }

    #[test]
    fn malformed_resp_is_fatal_after_earlier_commands() {
        let got = frames(Limits::default(), b"PING\n*1\r\n+OK\r\nPING\n");
        assert_eq!(
            got,
            [inline("PING"), Err(DecodeError::ExpectedBulk { got: b'+' })]
        );
        let mut d = Decoder::new(Limits::default());
        d.feed(b"*x\r\n");
        assert!(d.next_frame().is_err());
        d.feed(b"PING\n");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn every_decode_error_is_fatal_and_answered_in_resp() {
        for e in [
            DecodeError::InvalidMultibulkLength,
            DecodeError::ExpectedBulk { got: b'x' },
            DecodeError::InvalidBulkLength,
            DecodeError::MultibulkCountTooBig,
            DecodeError::BulkCountTooBig,
            DecodeError::InlineTooBig,
            DecodeError::UnbalancedQuotes,
        ] {
            assert!(e.is_fatal());
            assert_eq!(e.dialect(), Dialect::Resp);
        }
        assert!(DecodeError::CrossProtocol.is_fatal());
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

    #[test]
    fn lengths_follow_redis_string2ll() {
        for (text, n) in [
            (&b"0"[..], 0),
            (b"7", 7),
            (b"-1", -1),
            (b"1048576", 1 << 20),
            (b"9223372036854775807", i64::MAX),
            (b"-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse_length(text), Some(n), "{text:?}");
        }
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1x",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"000000000000000000001",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
