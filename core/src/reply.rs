//! Replies: their encoding in both dialects, and an incremental decoder for
//! RESP2 replies (used by the proxy's upstream side and by clients).
//!
//! # Inline (telnet) reply format
//!
//! Every reply is one line, or a header line announcing how many lines
//! follow, so a reader always knows where a reply ends:
//!
//! | reply            | inline form                       |
//! |------------------|-----------------------------------|
//! | status           | `OK`, `PONG`                      |
//! | error            | `(error) ERR unknown command 'x'` |
//! | integer          | `(integer) 1`                     |
//! | value            | `"Derek Moss"` (always quoted)    |
//! | missing key      | `(nil)`                           |
//! | DUMP pairs       | `(3 pairs)` then `"key" "value"`  |
//! | text (INFO/HELP) | `(5 lines)` then the lines        |
//! | array            | `(2 items)` then `1) …` lines     |
//!
//! Values are quoted with `\"`, `\\`, `\n`, `\r`, `\t` and `\xNN` escapes, so
//! a stored value can never look like `(nil)` or break the line framing.

use crate::codec::parse_int;
use crate::command::put_decimal;
use crate::Dialect;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The protocol a connection's replies are in (`HELLO 2|3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proto {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// A reply to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A short status such as `OK` or `PONG`.
    Status(Bytes),
    /// An error, its text starting with a code word such as `ERR`.
    Error(Bytes),
    /// A number.
    Integer(i64),
    /// A value.
    Bulk(Bytes),
    /// A missing key.
    Nil,
    /// The null array (`EXEC` after a watched key changed).
    NilArray,
    /// A list of replies.
    Array(Vec<Reply>),
    /// Key/value pairs, as `DUMP` returns them. In RESP it is a flat array
    /// `key, value, key, value …`.
    Pairs(Vec<(Bytes, Bytes)>),
    /// Multi-line human text (`INFO`, `HELP`); a bulk string in RESP.
    Text(String),
}

impl Reply {
    /// The `OK` status.
    pub fn ok() -> Reply {
        Reply::Status(Bytes::from_static(b"OK"))
    }

    /// An error reply from any displayable error whose text starts with its
    /// code word.
    pub fn error(e: impl std::fmt::Display) -> Reply {
        Reply::Error(Bytes::from(e.to_string()))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply in `dialect`.
    pub fn encode(&self, dialect: Dialect, out: &mut BytesMut) {
        match dialect {
            Dialect::Resp => self.encode_resp(out),
            Dialect::Inline => self.encode_inline(out),
        }
    }

    /// Appends the RESP2 encoding.
    pub fn encode_resp(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Integer(n) => {
                out.put_u8(b':');
                put_decimal(out, *n);
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', items.len());
                for r in items {
                    r.encode_resp(out);
                }
            }
            Reply::Pairs(pairs) => {
                header(out, b'*', pairs.len() * 2);
                for (k, v) in pairs {
                    bulk(out, k);
                    bulk(out, v);
                }
            }
            Reply::Text(t) => {
                // Redis's INFO uses CRLF inside the bulk string.
                let t = t.replace('\n', "\r\n");
                bulk(out, t.as_bytes());
            }
        }
    }

    /// Appends the human-readable inline encoding (see the module docs).
    pub fn encode_inline(&self, out: &mut BytesMut) {
        match self {
            Reply::Array(items) if !items.is_empty() => {
                counted(out, items.len(), "item", "items");
                for (i, r) in items.iter().enumerate() {
                    put_decimal(out, i as i64 + 1);
                    out.put_slice(b") ");
                    r.encode_inline_one_line(out);
                    out.put_slice(b"\r\n");
                }
            }
            Reply::Pairs(pairs) => {
                counted(out, pairs.len(), "pair", "pairs");
                for (k, v) in pairs {
                    quote(out, k);
                    out.put_u8(b' ');
                    quote(out, v);
                    out.put_slice(b"\r\n");
                }
            }
            Reply::Text(t) => {
                let lines: Vec<&str> = t.lines().collect();
                counted(out, lines.len(), "line", "lines");
                for l in lines {
                    out.put_slice(l.as_bytes());
                    out.put_slice(b"\r\n");
                }
            }
            _ => {
                self.encode_inline_one_line(out);
                out.put_slice(b"\r\n");
            }
        }
    }

    fn encode_inline_one_line(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => out.put_slice(&escape_control(s)),
            Reply::Error(s) => {
                out.put_slice(b"(error) ");
                out.put_slice(&escape_control(s));
            }
            Reply::Integer(n) => {
                out.put_slice(b"(integer) ");
                put_decimal(out, *n);
            }
            Reply::Bulk(b) => quote(out, b),
            Reply::Nil | Reply::NilArray => out.put_slice(b"(nil)"),
            Reply::Array(items) if items.is_empty() => out.put_slice(b"(empty array)"),
            Reply::Array(items) => {
                out.put_u8(b'[');
                for (i, r) in items.iter().enumerate() {
                    if i > 0 {
                        out.put_slice(b", ");
                    }
                    r.encode_inline_one_line(out);
                }
                out.put_u8(b']');
            }
            Reply::Pairs(pairs) => {
                out.put_u8(b'{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.put_slice(b", ");
                    }
                    quote(out, k);
                    out.put_slice(b": ");
                    quote(out, v);
                }
                out.put_u8(b'}');
            }
            Reply::Text(t) => quote(out, t.as_bytes()),
        }
    }
}

/// Where a handler writes its reply: straight into a connection's output
/// at the server, or into a value where one is wanted.
pub trait ReplyOut {
    /// Writes a reply.
    fn reply(&mut self, reply: Reply);

    /// Writes a value borrowed from the store (`None`: nil) without building
    /// a [`Reply`]: the hot path of every read.
    fn value(&mut self, value: Option<&[u8]>);
}

/// Encodes replies in one dialect into a buffer, counting the errors.
#[derive(Debug)]
pub struct ReplyEncoder<'a> {
    /// The dialect of the request being answered.
    pub dialect: Dialect,
    /// Where the encoded reply goes.
    pub out: &'a mut BytesMut,
    /// Error replies written.
    pub errors: u64,
}

impl<'a> ReplyEncoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(dialect: Dialect, out: &'a mut BytesMut) -> Self {
        ReplyEncoder {
            dialect,
            out,
            errors: 0,
        }
    }
}

impl ReplyOut for ReplyEncoder<'_> {
    fn reply(&mut self, reply: Reply) {
        if reply.is_error() {
            self.errors += 1;
        }
        reply.encode(self.dialect, self.out);
    }

    fn value(&mut self, value: Option<&[u8]>) {
        encode_value(self.dialect, value, self.out);
    }
}

/// Keeps the last reply written, as a value.
impl ReplyOut for Option<Reply> {
    fn reply(&mut self, reply: Reply) {
        *self = Some(reply);
    }

    fn value(&mut self, value: Option<&[u8]>) {
        *self = Some(value.map_or(Reply::Nil, |v| Reply::Bulk(Bytes::copy_from_slice(v))));
    }
}

/// Appends the reply to a `GET` straight from the stored bytes: the same
/// encoding as [`Reply::Bulk`] (or [`Reply::Nil`]) without building one.
pub fn encode_value(dialect: Dialect, value: Option<&[u8]>, out: &mut BytesMut) {
    match (dialect, value) {
        (Dialect::Resp, Some(v)) => bulk(out, v),
        (Dialect::Resp, None) => out.put_slice(b"$-1\r\n"),
        (Dialect::Inline, Some(v)) => {
            quote(out, v);
            out.put_slice(b"\r\n");
        }
        (Dialect::Inline, None) => out.put_slice(b"(nil)\r\n"),
    }
}

fn line(out: &mut BytesMut, prefix: u8, s: &[u8]) {
    out.put_u8(prefix);
    // A status or error line must not contain a line break, or the RESP
    // framing breaks; we never make one, but upstream text is replayed here.
    if s.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.put_slice(
            &s.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                .collect::<Vec<_>>(),
        );
    } else {
        out.put_slice(s);
    }
    out.put_slice(b"\r\n");
}

pub(crate) fn header(out: &mut BytesMut, prefix: u8, n: usize) {
    out.put_u8(prefix);
    put_decimal(out, n as i64);
    out.put_slice(b"\r\n");
}

pub(crate) fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(b.len() + 16);
    header(out, b'$', b.len());
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

fn counted(out: &mut BytesMut, n: usize, one: &str, many: &str) {
    if n == 0 {
        out.put_slice(b"(empty)\r\n");
        return;
    }
    out.put_u8(b'(');
    put_decimal(out, n as i64);
    out.put_u8(b' ');
    out.put_slice(if n == 1 { one } else { many }.as_bytes());
    out.put_slice(b")\r\n");
}

fn escape_control(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if s.iter().any(|b| b.is_ascii_control()) {
        let mut out = BytesMut::new();
        for &b in s {
            escape_byte(&mut out, b, false);
        }
        std::borrow::Cow::Owned(out.to_vec())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Writes `s` between double quotes with escapes, as `redis-cli` does.
/// Valid UTF-8 text is kept readable; other bytes become `\xNN`.
pub fn quote(out: &mut BytesMut, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.put_u8(b'"');
    let mut rest = s;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                put_escaped_text(out, text);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                put_escaped_text(out, std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for &b in &bad[..n] {
                    escape_byte(out, b, true);
                }
                rest = &bad[n..];
            }
        }
    }
    out.put_u8(b'"');
}

fn put_escaped_text(out: &mut BytesMut, text: &str) {
    for c in text.chars() {
        if c.is_ascii() {
            escape_byte(out, c as u8, true);
        } else {
            let mut buf = [0u8; 4];
            out.put_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

fn escape_byte(out: &mut BytesMut, b: u8, quoted: bool) {
    match b {
        b'"' if quoted => out.put_slice(b"\\\""),
        b'\\' if quoted => out.put_slice(b"\\\\"),
        b'\n' => out.put_slice(b"\\n"),
        b'\r' => out.put_slice(b"\\r"),
        b'\t' => out.put_slice(b"\\t"),
        0x20..=0x7E => out.put_u8(b),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

/// A RESP reply stream that cannot be decoded: the peer is not speaking
/// RESP2 (or is not the server we think), so the connection must be reset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyDecodeError {
    /// Bytes that are not RESP2.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// A bulk string or array over the configured limit.
    #[error("reply too large ({len}, limit {limit})")]
    TooLarge {
        /// The announced size.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

/// Limits for decoding replies, so a broken or hostile peer cannot make us
/// buffer without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Largest bulk string.
    pub max_bulk: usize,
    /// Most elements in one array.
    pub max_array: usize,
    /// Deepest nesting of arrays.
    pub max_depth: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            max_bulk: 64 * 1024 * 1024,
            max_array: 64 * 1024 * 1024,
            max_depth: 8,
        }
    }
}

/// Incremental RESP2 reply decoder.
///
/// Completed elements are moved out of the buffer as soon as they are whole,
/// with arrays under construction kept on a stack, so a large `DUMP` reply
/// arriving in many reads is decoded in linear time.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    buf: BytesMut,
    stack: Vec<(usize, Vec<Reply>)>,
    limits: ReplyLimits,
}

impl ReplyDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ReplyLimits) -> Self {
        ReplyDecoder {
            buf: BytesMut::new(),
            stack: Vec::new(),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, for drivers that read into it directly.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forgets everything buffered, e.g. after the connection was replaced.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.stack.clear();
    }

    /// Decodes the next complete reply, if the buffer holds one.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyDecodeError> {
        loop {
            // Close arrays that are complete, innermost first.
            while let Some((remaining, _)) = self.stack.last() {
                if *remaining > 0 {
                    break;
                }
                let (_, items) = self.stack.pop().unwrap_or_default();
                if let Some(done) = self.push(Reply::Array(items)) {
                    return Ok(Some(done));
                }
            }
            let Some(element) = self.next_element()? else {
                return Ok(None);
            };
            match element {
                Element::ArrayStart(n) => {
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(ReplyDecodeError::Malformed("arrays nested too deeply"));
                    }
                    self.stack.push((n, Vec::with_capacity(n.min(1024))));
                }
                Element::Value(r) => {
                    if let Some(done) = self.push(r) {
                        return Ok(Some(done));
                    }
                }
            }
        }
    }

    /// Adds a finished value to the innermost open array, or returns it if
    /// it is a whole reply.
    fn push(&mut self, r: Reply) -> Option<Reply> {
        match self.stack.last_mut() {
            Some((remaining, items)) => {
                items.push(r);
                *remaining -= 1;
                None
            }
            None => Some(r),
        }
    }

    fn next_element(&mut self) -> Result<Option<Element>, ReplyDecodeError> {
        // Status, error and header lines are short; bulk payloads are not
        // lines. The same bound applies whether or not the newline has
        // arrived yet, so the outcome does not depend on how input is split.
        const MAX_LINE: usize = 64 * 1024;
        let window = &self.buf[..self.buf.len().min(MAX_LINE + 2)];
        let Some(nl) = memchr::memchr(b'\n', window) else {
            if self.buf.len() > MAX_LINE + 1 {
                return Err(ReplyDecodeError::Malformed("line too long"));
            }
            return Ok(None);
        };
        if nl == 0 || self.buf[nl - 1] != b'\r' {
            return Err(ReplyDecodeError::Malformed("line not ended by CRLF"));
        }
        let body_end = nl - 1;
        let kind = self.buf[0];
        let element = match kind {
            b'+' | b'-' => {
                let text = Bytes::copy_from_slice(&self.buf[1..body_end]);
                self.buf.advance(nl + 1);
                Element::Value(if kind == b'+' {
                    Reply::Status(text)
                } else {
                    Reply::Error(text)
                })
            }
            b':' => {
                let n = parse_int(&self.buf[1..body_end])
                    .ok_or(ReplyDecodeError::Malformed("bad integer"))?;
                self.buf.advance(nl + 1);
                Element::Value(Reply::Integer(n))
            }
            b'$' => {
                let n = parse_int(&self.buf[1..body_end])
                    .ok_or(ReplyDecodeError::Malformed("bad bulk length"))?;
                if n < 0 {
                    self.buf.advance(nl + 1);
                    Element::Value(Reply::Nil)
                } else {
                    let n = n as usize;
                    if n > self.limits.max_bulk {
                        return Err(ReplyDecodeError::TooLarge {
                            len: n,
                            limit: self.limits.max_bulk,
                        });
                    }
                    let total = nl + 1 + n + 2;
                    if self.buf.len() < total {
                        self.buf.reserve(total - self.buf.len());
                        return Ok(None);
                    }
                    if &self.buf[total - 2..total] != b"\r\n" {
                        return Err(ReplyDecodeError::Malformed("bulk string not ended by CRLF"));
                    }
                    self.buf.advance(nl + 1);
                    let data = self.buf.split_to(n).freeze();
                    self.buf.advance(2);
                    Element::Value(Reply::Bulk(data))
                }
            }
            b'*' => {
                let n = parse_int(&self.buf[1..body_end])
                    .ok_or(ReplyDecodeError::Malformed("bad array length"))?;
                self.buf.advance(nl + 1);
                if n < 0 {
                    Element::Value(Reply::Nil)
                } else if n as usize > self.limits.max_array {
                    return Err(ReplyDecodeError::TooLarge {
                        len: n as usize,
                        limit: self.limits.max_array,
                    });
                } else if n == 0 {
                    Element::Value(Reply::Array(Vec::new()))
                } else {
                    Element::ArrayStart(n as usize)
                }
            }
            _ => return Err(ReplyDecodeError::Malformed("unknown reply type")),
        };
        Ok(Some(element))
    }
}

enum Element {
    ArrayStart(usize),
    Value(Reply),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(r: &Reply) -> String {
        let mut out = BytesMut::new();
        r.encode_inline(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn inline_replies_are_unambiguous() {
        assert_eq!(
            inline(&Reply::Bulk(Bytes::from_static(b"Derek Moss"))),
            "\"Derek Moss\"\r\n"
        );
        assert_eq!(inline(&Reply::Nil), "(nil)\r\n");
        // A value that spells "(nil)" still reads as a value.
        assert_eq!(
            inline(&Reply::Bulk(Bytes::from_static(b"(nil)"))),
            "\"(nil)\"\r\n"
        );
        assert_eq!(
            inline(&Reply::Bulk(Bytes::from_static(
                b"a\"b\\\r\n\xff\x01 \xc3\xa9"
            ))),
            "\"a\\\"b\\\\\\r\\n\\xff\\x01 é\"\r\n"
        );
        assert_eq!(
            inline(&Reply::Pairs(vec![(
                Bytes::from_static(b"age"),
                Bytes::from_static(b"18")
            )])),
            "(1 pair)\r\n\"age\" \"18\"\r\n"
        );
        assert_eq!(inline(&Reply::Pairs(vec![])), "(empty)\r\n");
        assert_eq!(inline(&Reply::Integer(-3)), "(integer) -3\r\n");
        assert_eq!(
            inline(&Reply::Error(Bytes::from_static(b"ERR x"))),
            "(error) ERR x\r\n"
        );
        assert_eq!(
            inline(&Reply::Text("a:1\nb:2\n".into())),
            "(2 lines)\r\na:1\r\nb:2\r\n"
        );
    }

    #[test]
    fn resp_replies_decode_in_any_split() {
        let replies = vec![
            Reply::ok(),
            Reply::Error(Bytes::from_static(b"ERR nope")),
            Reply::Integer(42),
            Reply::Bulk(Bytes::from_static(b"a\r\nb")),
            Reply::Nil,
            Reply::Array(vec![
                Reply::Integer(1),
                Reply::Array(vec![]),
                Reply::Array(vec![Reply::Nil]),
            ]),
        ];
        let mut wire = BytesMut::new();
        for r in &replies {
            r.encode_resp(&mut wire);
        }
        for split in 0..wire.len() {
            let mut d = ReplyDecoder::default();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                d.feed(chunk);
                while let Some(r) = d.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, replies, "split at {split}");
        }
    }

    #[test]
    fn pairs_decode_as_a_flat_array() {
        let mut wire = BytesMut::new();
        Reply::Pairs(vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))])
            .encode_resp(&mut wire);
        let mut d = ReplyDecoder::default();
        d.feed(&wire);
        assert_eq!(
            d.next_reply(),
            Ok(Some(Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"k")),
                Reply::Bulk(Bytes::from_static(b"v"))
            ])))
        );
    }

    #[test]
    fn garbage_replies_are_errors() {
        for bad in [&b"?x\r\n"[..], b"+OK\n", b":abc\r\n", b"$3\r\nabcd\r\n"] {
            let mut d = ReplyDecoder::default();
            d.feed(bad);
            assert!(d.next_reply().is_err(), "{bad:?}");
        }
        let mut d = ReplyDecoder::new(ReplyLimits {
            max_bulk: 2,
            ..ReplyLimits::default()
        });
        d.feed(b"$3\r\n");
        assert_eq!(
            d.next_reply(),
            Err(ReplyDecodeError::TooLarge { len: 3, limit: 2 })
        );
    }
}
