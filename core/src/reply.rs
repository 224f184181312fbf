//! Replies: their encoding in both dialects and both RESP versions, and an
//! incremental decoder for RESP2 and RESP3 replies (used by the proxy's
//! upstream side and by clients).
//!
//! # RESP2 and RESP3
//!
//! A RESP connection speaks RESP2 until the client switches it with
//! `HELLO 3` ([`Proto`]). The RESP3-only types ([`Reply::Map`],
//! [`Reply::Set`], [`Reply::Double`], …) degrade in RESP2 exactly as Redis
//! 7 degrades them: a map becomes a flat `key, value, …` array, a set or a
//! push an array, a double a bulk string of the number (`%.17g`), a boolean
//! the integer 1 or 0, a verbatim string or a big number a bulk string.
//! Both nils become `_` in RESP3; in RESP2 a missing value is `$-1` and
//! [`Reply::NilArray`] (an aborted `EXEC`) is `*-1`.
//!
//! # Inline (telnet) reply format
//!
//! Every reply is one line, or a header line announcing how many lines
//! follow, so a reader always knows where a reply ends:
//!
//! | reply            | inline form                             |
//! |------------------|-----------------------------------------|
//! | status           | `OK`, `PONG`                            |
//! | error            | `(error) ERR unknown command 'x'`       |
//! | integer          | `(integer) 1`                           |
//! | value            | `"Derek Moss"` (always quoted)          |
//! | missing key      | `(nil)` (also a nil array)              |
//! | DUMP pairs       | `(3 pairs)` then `"key" "value"`        |
//! | text (INFO/HELP) | `(5 lines)` then the lines              |
//! | array, push      | `(2 items)` then `1) …` lines           |
//! | map              | `(2 entries)` then `1# "k" => …` lines  |
//! | set              | `(2 members)` then `1~ …` lines         |
//! | verbatim string  | `(5 lines)` then the lines, escaped     |
//! | double           | `(double) 1.5`                          |
//! | boolean          | `(true)`, `(false)`                     |
//! | big number       | `(big number) 1234567890123456789012`   |
//!
//! An empty array, map or set is one line, `(empty array)`,
//! `(empty hash)` or `(empty set)` as `redis-cli` shows them. Inside a
//! line (an element of an array, a map's key or value) an array is
//! `[a, b]`, a map or DUMP's pairs `{k: v, …}`, a set `{a, b}`, and text
//! is quoted.
//!
//! Values are quoted with `\"`, `\\`, `\n`, `\r`, `\t` and `\xNN` escapes, so
//! a stored value can never look like `(nil)` or break the line framing;
//! control characters in a verbatim string's lines are escaped the same way.

use crate::codec::parse_int;
use crate::command::put_decimal;
use crate::Dialect;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The RESP version a connection speaks (the inline dialect has no
/// versions). RESP2 until the client sends `HELLO 3`, as in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    /// RESP2: what every connection starts with.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply to one command.
///
/// Equality is equality of the encoding: two [`Reply::Double`]s are equal
/// when their bit patterns are (so `0.0 != -0.0`, which are written `0` and
/// `-0`), except that every NaN equals every other NaN (all are written
/// `nan`). That makes `Eq` lawful for a type holding an `f64`.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A short status such as `OK` or `PONG`.
    Status(Bytes),
    /// An error, its text starting with a code word such as `ERR`.
    Error(Bytes),
    /// A number.
    Integer(i64),
    /// A value.
    Bulk(Bytes),
    /// A missing key: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A list of replies.
    Array(Vec<Reply>),
    /// Key/value pairs, as `DUMP` returns them. In RESP2 it is a flat array
    /// `key, value, key, value …`; in RESP3 a map.
    Pairs(Vec<(Bytes, Bytes)>),
    /// Multi-line human text (`INFO`, `HELP`): a bulk string in RESP2, a
    /// verbatim string of format `txt` in RESP3 (as Redis sends `INFO`).
    /// Lines end with `\n` here and with CRLF on the wire.
    Text(String),
    /// A RESP3 map (`%`); a flat `key, value, …` array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A RESP3 set (`~`); an array in RESP2.
    Set(Vec<Reply>),
    /// A RESP3 double (`,`), written as C's `%.17g` writes it (as Redis 7.0
    /// does), `inf`, `-inf` or `nan`; a bulk string of the same text in
    /// RESP2.
    Double(f64),
    /// A RESP3 boolean (`#t`, `#f`); the integer 1 or 0 in RESP2.
    Boolean(bool),
    /// A RESP3 verbatim string (`=`): text with a three-byte format such as
    /// `txt` or `mkd`; a bulk string of the text in RESP2.
    Verbatim {
        /// The format, e.g. `*b"txt"`.
        format: [u8; 3],
        /// The text, without the `txt:` prefix.
        text: Bytes,
    },
    /// A RESP3 big number (`(`): its decimal digits, with an optional sign;
    /// a bulk string in RESP2.
    BigNumber(Bytes),
    /// A RESP3 push (`>`): out-of-band data such as a client-tracking
    /// invalidation, not the answer to a request; an array in RESP2.
    Push(Vec<Reply>),
    /// Redis's null array: what `EXEC` returns when a watched key changed.
    /// `*-1` in RESP2, `_` in RESP3.
    NilArray,
}

impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        use Reply as R;
        match (self, other) {
            (R::Status(a), R::Status(b))
            | (R::Error(a), R::Error(b))
            | (R::Bulk(a), R::Bulk(b))
            | (R::BigNumber(a), R::BigNumber(b)) => a == b,
            (R::Integer(a), R::Integer(b)) => a == b,
            (R::Nil, R::Nil) | (R::NilArray, R::NilArray) => true,
            (R::Array(a), R::Array(b)) | (R::Set(a), R::Set(b)) | (R::Push(a), R::Push(b)) => {
                a == b
            }
            (R::Pairs(a), R::Pairs(b)) => a == b,
            (R::Text(a), R::Text(b)) => a == b,
            (R::Map(a), R::Map(b)) => a == b,
            (R::Double(a), R::Double(b)) => {
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
            }
            (R::Boolean(a), R::Boolean(b)) => a == b,
            (
                R::Verbatim { format, text },
                R::Verbatim {
                    format: format_b,
                    text: text_b,
                },
            ) => format == format_b && text == text_b,
            _ => false,
        }
    }
}

impl Eq for Reply {}

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

    /// Appends the reply in `dialect`, RESP2 for [`Dialect::Resp`].
    pub fn encode(&self, dialect: Dialect, out: &mut BytesMut) {
        self.encode_as(dialect, Proto::Resp2, out);
    }

    /// Appends the reply in `dialect`, in `proto` for [`Dialect::Resp`]
    /// (the inline dialect has one form whatever the protocol).
    pub fn encode_as(&self, dialect: Dialect, proto: Proto, out: &mut BytesMut) {
        match dialect {
            Dialect::Resp => self.encode_proto(proto, out),
            Dialect::Inline => self.encode_inline(out),
        }
    }

    /// Appends the RESP2 encoding.
    pub fn encode_resp(&self, out: &mut BytesMut) {
        self.encode_proto(Proto::Resp2, out);
    }

    /// Appends the encoding in `proto`, byte for byte what Redis 7 writes
    /// (see the module docs for how RESP3 types degrade in RESP2).
    pub fn encode_proto(&self, proto: Proto, out: &mut BytesMut) {
        let resp3 = proto == Proto::Resp3;
        match self {
            Reply::Status(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Integer(n) => {
                out.put_u8(b':');
                put_decimal(out, *n);
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => list(out, proto, b'*', items),
            Reply::Set(items) => list(out, proto, if resp3 { b'~' } else { b'*' }, items),
            Reply::Push(items) => list(out, proto, if resp3 { b'>' } else { b'*' }, items),
            Reply::Map(entries) => {
                map_header(out, resp3, entries.len());
                for (k, v) in entries {
                    k.encode_proto(proto, out);
                    v.encode_proto(proto, out);
                }
            }
            Reply::Pairs(pairs) => {
                pairs_header(Dialect::Resp, proto, pairs.len(), out);
                for (k, v) in pairs {
                    pair(Dialect::Resp, k, v, out);
                }
            }
            Reply::Text(t) => {
                // Redis's INFO uses CRLF inside the string.
                let len = t.len() + memchr::memchr_iter(b'\n', t.as_bytes()).count();
                out.reserve(len + 24);
                if resp3 {
                    header(out, b'=', len + 4);
                    out.put_slice(b"txt:");
                } else {
                    header(out, b'$', len);
                }
                let mut lines = t.split('\n');
                if let Some(first) = lines.next() {
                    out.put_slice(first.as_bytes());
                }
                for l in lines {
                    out.put_slice(b"\r\n");
                    out.put_slice(l.as_bytes());
                }
                out.put_slice(b"\r\n");
            }
            Reply::Double(d) => {
                let text = DoubleText::new(*d);
                if resp3 {
                    out.put_u8(b',');
                    out.put_slice(text.as_bytes());
                    out.put_slice(b"\r\n");
                } else {
                    bulk(out, text.as_bytes());
                }
            }
            Reply::Boolean(b) => out.put_slice(match (resp3, b) {
                (true, true) => b"#t\r\n",
                (true, false) => b"#f\r\n",
                (false, true) => b":1\r\n",
                (false, false) => b":0\r\n",
            }),
            Reply::Verbatim { format, text } if resp3 => {
                out.reserve(text.len() + 16);
                header(out, b'=', text.len() + 4);
                out.put_slice(format);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim { text, .. } => bulk(out, text),
            Reply::BigNumber(n) if resp3 => line(out, b'(', n),
            Reply::BigNumber(n) => bulk(out, n),
        }
    }

    /// Appends the human-readable inline encoding (see the module docs).
    pub fn encode_inline(&self, out: &mut BytesMut) {
        match self {
            Reply::Array(items) | Reply::Push(items) if !items.is_empty() => {
                counted(out, items.len(), "item", "items");
                for (i, r) in items.iter().enumerate() {
                    put_decimal(out, i as i64 + 1);
                    out.put_slice(b") ");
                    r.encode_inline_one_line(out);
                    out.put_slice(b"\r\n");
                }
            }
            Reply::Set(items) if !items.is_empty() => {
                counted(out, items.len(), "member", "members");
                for (i, r) in items.iter().enumerate() {
                    put_decimal(out, i as i64 + 1);
                    out.put_slice(b"~ ");
                    r.encode_inline_one_line(out);
                    out.put_slice(b"\r\n");
                }
            }
            Reply::Map(entries) if !entries.is_empty() => {
                counted(out, entries.len(), "entry", "entries");
                for (i, (k, v)) in entries.iter().enumerate() {
                    put_decimal(out, i as i64 + 1);
                    out.put_slice(b"# ");
                    k.encode_inline_one_line(out);
                    out.put_slice(b" => ");
                    v.encode_inline_one_line(out);
                    out.put_slice(b"\r\n");
                }
            }
            Reply::Pairs(pairs) => {
                pairs_header(Dialect::Inline, Proto::Resp2, pairs.len(), out);
                for (k, v) in pairs {
                    pair(Dialect::Inline, k, v, out);
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
            Reply::Verbatim { text, .. } => {
                // Unlike our own text, a verbatim string comes from a peer:
                // a stray CR or control byte in it is escaped so it cannot
                // break the line count.
                let text = String::from_utf8_lossy(text);
                let lines: Vec<&str> = text.lines().collect();
                counted(out, lines.len(), "line", "lines");
                for l in lines {
                    put_text(out, l, false);
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
            Reply::Array(items) | Reply::Push(items) if items.is_empty() => {
                out.put_slice(b"(empty array)")
            }
            Reply::Array(items) | Reply::Push(items) => {
                out.put_u8(b'[');
                for (i, r) in items.iter().enumerate() {
                    if i > 0 {
                        out.put_slice(b", ");
                    }
                    r.encode_inline_one_line(out);
                }
                out.put_u8(b']');
            }
            Reply::Set(items) if items.is_empty() => out.put_slice(b"(empty set)"),
            Reply::Set(items) => {
                out.put_u8(b'{');
                for (i, r) in items.iter().enumerate() {
                    if i > 0 {
                        out.put_slice(b", ");
                    }
                    r.encode_inline_one_line(out);
                }
                out.put_u8(b'}');
            }
            Reply::Map(entries) if entries.is_empty() => out.put_slice(b"(empty hash)"),
            Reply::Map(entries) => {
                out.put_u8(b'{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.put_slice(b", ");
                    }
                    k.encode_inline_one_line(out);
                    out.put_slice(b": ");
                    v.encode_inline_one_line(out);
                }
                out.put_u8(b'}');
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
            Reply::Verbatim { text, .. } => quote(out, text),
            Reply::Double(d) => {
                out.put_slice(b"(double) ");
                out.put_slice(DoubleText::new(*d).as_bytes());
            }
            Reply::Boolean(true) => out.put_slice(b"(true)"),
            Reply::Boolean(false) => out.put_slice(b"(false)"),
            Reply::BigNumber(n) => {
                out.put_slice(b"(big number) ");
                out.put_slice(&escape_control(n));
            }
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

    /// Offers a reply that can go out a piece at a time (`DUMP`'s): a
    /// connection's output takes it and writes it as the socket drains;
    /// any other sink gives it back, for the handler to write whole.
    fn offer_stream(&mut self, stream: crate::db::DumpStream) -> Option<crate::db::DumpStream> {
        Some(stream)
    }

    /// The connection's protocol changed (`HELLO`): replies from now on,
    /// the `HELLO` reply itself included, are in `proto`.
    fn set_proto(&mut self, proto: Proto) {
        let _ = proto;
    }

    /// The connection's replies are dropped from now on (`CLIENT REPLY
    /// OFF|SKIP`), or no longer (`ON`), this command's included.
    fn set_muted(&mut self, muted: bool) {
        let _ = muted;
    }
}

/// Encodes replies in one dialect (and RESP version) into a buffer,
/// counting the errors.
#[derive(Debug)]
pub struct ReplyEncoder<'a> {
    /// The dialect of the request being answered.
    pub dialect: Dialect,
    /// The RESP version of the connection (ignored for inline requests).
    pub proto: Proto,
    /// Where the encoded reply goes.
    pub out: &'a mut BytesMut,
    /// Error replies written.
    pub errors: u64,
    /// Where a streamed reply is kept, if this output can send one a piece
    /// at a time (see [`ReplyOut::offer_stream`]); `None`: written whole.
    pub streamed: Option<Option<crate::db::DumpStream>>,
    /// `CLIENT REPLY OFF|SKIP`: replies are dropped; pushes still go, as
    /// Redis sends them.
    pub muted: bool,
}

impl<'a> ReplyEncoder<'a> {
    /// An encoder appending to `out`, in RESP2 for RESP requests.
    pub fn new(dialect: Dialect, out: &'a mut BytesMut) -> Self {
        Self::with_proto(dialect, Proto::Resp2, out)
    }

    /// An encoder appending to `out`, in `proto` for RESP requests.
    pub fn with_proto(dialect: Dialect, proto: Proto, out: &'a mut BytesMut) -> Self {
        ReplyEncoder {
            dialect,
            proto,
            out,
            errors: 0,
            streamed: None,
            muted: false,
        }
    }
}

impl ReplyOut for ReplyEncoder<'_> {
    fn reply(&mut self, reply: Reply) {
        if reply.is_error() {
            self.errors += 1;
        }
        if self.muted && !matches!(reply, Reply::Push(_)) {
            return;
        }
        reply.encode_as(self.dialect, self.proto, self.out);
    }

    fn value(&mut self, value: Option<&[u8]>) {
        if !self.muted {
            encode_value_proto(self.dialect, self.proto, value, self.out);
        }
    }

    fn offer_stream(&mut self, stream: crate::db::DumpStream) -> Option<crate::db::DumpStream> {
        if self.muted {
            // Taken, and dropped: nobody reads it.
            return None;
        }
        match &mut self.streamed {
            Some(slot) => {
                *slot = Some(stream);
                None
            }
            None => Some(stream),
        }
    }

    fn set_proto(&mut self, proto: Proto) {
        self.proto = proto;
    }

    fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
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
/// encoding as [`Reply::Bulk`] (or [`Reply::Nil`]) without building one,
/// in RESP2 for [`Dialect::Resp`].
pub fn encode_value(dialect: Dialect, value: Option<&[u8]>, out: &mut BytesMut) {
    encode_value_proto(dialect, Proto::Resp2, value, out);
}

/// [`encode_value`] in `proto`: only a missing value differs (`_` in
/// RESP3), so a hit costs no more than in RESP2.
pub fn encode_value_proto(
    dialect: Dialect,
    proto: Proto,
    value: Option<&[u8]>,
    out: &mut BytesMut,
) {
    match (dialect, value) {
        (Dialect::Resp, Some(v)) => bulk(out, v),
        (Dialect::Resp, None) => out.put_slice(match proto {
            Proto::Resp2 => b"$-1\r\n",
            Proto::Resp3 => b"_\r\n",
        }),
        (Dialect::Inline, Some(v)) => {
            quote(out, v);
            out.put_slice(b"\r\n");
        }
        (Dialect::Inline, None) => out.put_slice(b"(nil)\r\n"),
    }
}

/// An array, set or push: `prefix` and its elements.
fn list(out: &mut BytesMut, proto: Proto, prefix: u8, items: &[Reply]) {
    header(out, prefix, items.len());
    for r in items {
        r.encode_proto(proto, out);
    }
}

/// The header of `n` key/value pairs (`DUMP`'s reply), which
/// [`pair`] then writes one by one: a reply streamed as the socket drains
/// encodes exactly as one built whole.
pub(crate) fn pairs_header(dialect: Dialect, proto: Proto, n: usize, out: &mut BytesMut) {
    match dialect {
        Dialect::Resp => map_header(out, proto == Proto::Resp3, n),
        Dialect::Inline => counted(out, n, "pair", "pairs"),
    }
}

/// One key/value pair after a [`pairs_header`].
#[inline]
pub(crate) fn pair(dialect: Dialect, key: &[u8], value: &[u8], out: &mut BytesMut) {
    match dialect {
        Dialect::Resp => {
            bulk(out, key);
            bulk(out, value);
        }
        Dialect::Inline => {
            quote(out, key);
            out.put_u8(b' ');
            quote(out, value);
            out.put_slice(b"\r\n");
        }
    }
}

/// The header of `n` key/value pairs: a map in RESP3, a flat array of
/// `2n` elements in RESP2.
fn map_header(out: &mut BytesMut, resp3: bool, n: usize) {
    if resp3 {
        header(out, b'%', n);
    } else {
        header(out, b'*', 2 * n);
    }
}

/// A double as text, formatted on the stack (a reply's encoding allocates
/// nothing of its own).
///
/// Finite numbers are written as C's `printf("%.17g")` writes them, which
/// is what Redis 7.0 sends: 17 significant digits with trailing zeros
/// dropped, in positional notation when the decimal exponent is in
/// `-4..17` and as `d.ddde±XX` otherwise (`1.1000000000000001`, `0`, `-0`,
/// `1e+17`, `1.0000000000000001e-05`). Infinities are `inf` and `-inf`, as
/// Redis writes them on every platform, and every NaN is `nan` (the RESP3
/// spelling; C would write `-nan` for a negative one).
pub(crate) struct DoubleText {
    buf: [u8; 32],
    len: usize,
}

impl DoubleText {
    pub(crate) fn new(d: f64) -> Self {
        let mut t = DoubleText {
            buf: [0; 32],
            len: 0,
        };
        if d.is_nan() {
            t.push(b"nan");
        } else if d.is_infinite() {
            t.push(if d > 0.0 { b"inf" } else { b"-inf" });
        } else {
            t.finite(d);
        }
        t
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, s: &[u8]) {
        // At most 24 bytes are ever written (`-1.2345678901234567e-308`),
        // so this never truncates; the bound only keeps it panic-free.
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn finite(&mut self, d: f64) {
        // Rust's `{:.16e}` rounds exactly (half to even, like glibc) to 17
        // significant digits: `-1.2345678901234568e17`. `%.17g` uses the
        // same digits, then picks the notation by the exponent.
        let mut sci = DoubleText {
            buf: [0; 32],
            len: 0,
        };
        let _ = std::fmt::Write::write_fmt(&mut sci, format_args!("{:.16e}", d.abs()));
        let sci = sci.as_bytes();
        let e_at = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
        let mut digits = [b'0'; 17];
        let mut n = 0;
        for &b in sci[..e_at].iter().filter(|b| b.is_ascii_digit()) {
            if n < digits.len() {
                digits[n] = b;
                n += 1;
            }
        }
        let exp_text = sci.get(e_at + 1..).unwrap_or_default();
        let (exp_neg, exp_digits) = match exp_text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, exp_text),
        };
        let exp_abs = exp_digits
            .iter()
            .fold(0i32, |e, &b| e * 10 + i32::from(b.wrapping_sub(b'0')));
        let exp = if exp_neg { -exp_abs } else { exp_abs };
        // Significant digits after dropping trailing zeros (at least one).
        let mut sig = digits.len();
        while sig > 1 && digits[sig - 1] == b'0' {
            sig -= 1;
        }
        if d.is_sign_negative() {
            self.push(b"-");
        }
        if (-4..17).contains(&exp) {
            if exp >= 0 {
                let int_len = exp as usize + 1;
                self.push(&digits[..int_len]);
                if sig > int_len {
                    self.push(b".");
                    self.push(&digits[int_len..sig]);
                }
            } else {
                self.push(b"0.");
                for _ in 0..(-exp - 1) {
                    self.push(b"0");
                }
                self.push(&digits[..sig]);
            }
        } else {
            self.push(&digits[..1]);
            if sig > 1 {
                self.push(b".");
                self.push(&digits[1..sig]);
            }
            self.push(if exp < 0 { b"e-" } else { b"e+" });
            if exp_abs < 10 {
                self.push(b"0");
            }
            let mut buf = itoa::Buffer::new();
            self.push(buf.format(exp_abs).as_bytes());
        }
    }
}

impl std::fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
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
                put_text(out, text, true);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                put_text(out, std::str::from_utf8(good).unwrap_or_default(), true);
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

/// Writes `text` keeping non-ASCII characters readable and escaping control
/// characters (and, when `quoted`, `"` and `\`).
fn put_text(out: &mut BytesMut, text: &str, quoted: bool) {
    for c in text.chars() {
        if c.is_ascii() {
            escape_byte(out, c as u8, quoted);
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
/// RESP (or is not the server we think), so the connection must be reset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyDecodeError {
    /// Bytes that are not RESP2 or RESP3.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// A string or aggregate over the configured limit.
    #[error("reply too large ({len}, limit {limit})")]
    TooLarge {
        /// The announced size (elements, for an aggregate; twice the pairs
        /// for a map).
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

/// Limits for decoding replies, so a broken or hostile peer cannot make us
/// buffer without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Largest bulk string, blob error or verbatim string.
    pub max_bulk: usize,
    /// Most elements in one array, set, push, map or attribute (a map of
    /// `n` pairs has `2n` elements).
    pub max_array: usize,
    /// Deepest nesting of aggregates.
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

/// Incremental RESP2 and RESP3 reply decoder.
///
/// Completed elements are moved out of the buffer as soon as they are whole,
/// with aggregates under construction kept on a stack, so a large `DUMP`
/// reply arriving in many reads is decoded in linear time.
///
/// Every RESP3 type is decoded: `*-1` is [`Reply::NilArray`], `$-1` and `_`
/// are [`Reply::Nil`], a blob error (`!`) is a [`Reply::Error`]. Attributes
/// (`|`) are checked against the limits like a map, then dropped: they
/// annotate the reply that follows them, which is returned alone, so a
/// client's replies stay paired with its requests. Streamed strings and
/// aggregates (`$?`, `*?`), which Redis never sends, are malformed.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    buf: BytesMut,
    stack: Vec<Open>,
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
            // Close aggregates that are complete, innermost first.
            while self.stack.last().is_some_and(|open| open.remaining() == 0) {
                let Some(open) = self.stack.pop() else { break };
                if let Some(done) = open.close().and_then(|r| self.push(r)) {
                    return Ok(Some(done));
                }
            }
            let Some(element) = self.next_element()? else {
                return Ok(None);
            };
            match element {
                Element::Open(open) => {
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(ReplyDecodeError::Malformed("arrays nested too deeply"));
                    }
                    self.stack.push(open);
                }
                Element::Value(r) => {
                    if let Some(done) = self.push(r) {
                        return Ok(Some(done));
                    }
                }
                Element::Nothing => {}
            }
        }
    }

    /// Adds a finished value to the innermost open aggregate, or returns it
    /// if it is a whole reply.
    fn push(&mut self, r: Reply) -> Option<Reply> {
        let Some(open) = self.stack.last_mut() else {
            return Some(r);
        };
        match open {
            Open::List { items, .. } => items.push(r),
            Open::Map { pairs, key, .. } => match key.take() {
                None => *key = Some(r),
                Some(k) => pairs.push((k, r)),
            },
            Open::Attribute { .. } => {}
        }
        open.take_one();
        None
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
        // Empty when the line is a bare CRLF (then `kind` is the CR).
        let body = self.buf.get(1..body_end).unwrap_or_default();
        let element = match kind {
            b'+' | b'-' => {
                let text = Bytes::copy_from_slice(body);
                Element::Value(if kind == b'+' {
                    Reply::Status(text)
                } else {
                    Reply::Error(text)
                })
            }
            b':' => Element::Value(Reply::Integer(
                parse_int(body).ok_or(ReplyDecodeError::Malformed("bad integer"))?,
            )),
            b'_' if body.is_empty() => Element::Value(Reply::Nil),
            b'_' => return Err(ReplyDecodeError::Malformed("bad null")),
            b'#' => Element::Value(Reply::Boolean(match body {
                b"t" => true,
                b"f" => false,
                _ => return Err(ReplyDecodeError::Malformed("bad boolean")),
            })),
            b',' => Element::Value(Reply::Double(parse_double(body)?)),
            b'(' => {
                let digits = match body.split_first() {
                    Some((b'-' | b'+', rest)) => rest,
                    _ => body,
                };
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(ReplyDecodeError::Malformed("bad big number"));
                }
                Element::Value(Reply::BigNumber(Bytes::copy_from_slice(body)))
            }
            b'$' | b'!' | b'=' => return self.blob(kind, nl),
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n =
                    parse_int(body).ok_or(ReplyDecodeError::Malformed("bad aggregate length"))?;
                if n == -1 && kind == b'*' {
                    Element::Value(Reply::NilArray)
                } else {
                    let n = usize::try_from(n)
                        .map_err(|_| ReplyDecodeError::Malformed("bad aggregate length"))?;
                    // A map's (or attribute's) pairs are two elements each.
                    let per = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                    let elements = n.saturating_mul(per);
                    if elements > self.limits.max_array {
                        return Err(ReplyDecodeError::TooLarge {
                            len: elements,
                            limit: self.limits.max_array,
                        });
                    }
                    // Room for what is announced, up to a bound: a peer's
                    // count is no reason to allocate ahead of its data.
                    let cap = n.min(1024);
                    match (kind, n) {
                        (b'|', 0) => Element::Nothing,
                        (b'|', _) => Element::Open(Open::Attribute {
                            remaining: elements,
                        }),
                        (b'%', 0) => Element::Value(Reply::Map(Vec::new())),
                        (b'%', _) => Element::Open(Open::Map {
                            remaining: elements,
                            pairs: Vec::with_capacity(cap),
                            key: None,
                        }),
                        (_, 0) => Element::Value(ListKind::of(kind).reply(Vec::new())),
                        (_, _) => Element::Open(Open::List {
                            kind: ListKind::of(kind),
                            remaining: n,
                            items: Vec::with_capacity(cap),
                        }),
                    }
                }
            }
            _ => return Err(ReplyDecodeError::Malformed("unknown reply type")),
        };
        self.buf.advance(nl + 1);
        Ok(Some(element))
    }

    /// A length-prefixed element whose header line ends at `nl`: a bulk
    /// string (`$`), a blob error (`!`) or a verbatim string (`=`).
    fn blob(&mut self, kind: u8, nl: usize) -> Result<Option<Element>, ReplyDecodeError> {
        let n = parse_int(&self.buf[1..nl - 1])
            .ok_or(ReplyDecodeError::Malformed("bad bulk length"))?;
        if n == -1 && kind == b'$' {
            self.buf.advance(nl + 1);
            return Ok(Some(Element::Value(Reply::Nil)));
        }
        let n = usize::try_from(n).map_err(|_| ReplyDecodeError::Malformed("bad bulk length"))?;
        if n > self.limits.max_bulk {
            return Err(ReplyDecodeError::TooLarge {
                len: n,
                limit: self.limits.max_bulk,
            });
        }
        // Decided from the header alone, so the outcome does not depend on
        // how much of the payload has arrived.
        if kind == b'=' && n < 4 {
            return Err(ReplyDecodeError::Malformed(
                "verbatim string without a format",
            ));
        }
        let total = nl + 1 + n + 2;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        if &self.buf[total - 2..total] != b"\r\n" {
            return Err(ReplyDecodeError::Malformed("bulk string not ended by CRLF"));
        }
        if kind == b'=' && self.buf[nl + 4] != b':' {
            return Err(ReplyDecodeError::Malformed(
                "verbatim string without a format",
            ));
        }
        self.buf.advance(nl + 1);
        let data = self.buf.split_to(n).freeze();
        self.buf.advance(2);
        Ok(Some(Element::Value(match kind {
            b'$' => Reply::Bulk(data),
            b'!' => Reply::Error(data),
            _ => Reply::Verbatim {
                format: [data[0], data[1], data[2]],
                text: data.slice(4..),
            },
        })))
    }
}

/// A RESP3 double: digits with an optional sign, fraction and exponent, or
/// `inf`, `-inf`, `nan`. Every NaN becomes the one `f64::NAN`, so a decoded
/// reply re-encodes to bytes that decode to an equal one.
fn parse_double(body: &[u8]) -> Result<f64, ReplyDecodeError> {
    let bad = ReplyDecodeError::Malformed("bad double");
    // Rust's float syntax is a superset of RESP3's; a bound on the length
    // keeps a hostile number cheap to parse.
    if body.is_empty() || body.len() > 512 {
        return Err(bad);
    }
    let d: f64 = std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(bad)?;
    Ok(if d.is_nan() { f64::NAN } else { d })
}

/// An aggregate being decoded.
#[derive(Debug)]
enum Open {
    /// An array, set or push.
    List {
        kind: ListKind,
        /// Elements still to come.
        remaining: usize,
        items: Vec<Reply>,
    },
    /// A map.
    Map {
        /// Keys and values still to come.
        remaining: usize,
        pairs: Vec<(Reply, Reply)>,
        /// A key waiting for its value.
        key: Option<Reply>,
    },
    /// An attribute: its elements are decoded (so the framing is followed
    /// and the limits hold) and dropped.
    Attribute {
        /// Keys and values still to come.
        remaining: usize,
    },
}

impl Open {
    fn remaining(&self) -> usize {
        match self {
            Open::List { remaining, .. }
            | Open::Map { remaining, .. }
            | Open::Attribute { remaining } => *remaining,
        }
    }

    fn take_one(&mut self) {
        match self {
            Open::List { remaining, .. }
            | Open::Map { remaining, .. }
            | Open::Attribute { remaining } => *remaining = remaining.saturating_sub(1),
        }
    }

    /// The finished aggregate; `None` for an attribute, which is dropped.
    fn close(self) -> Option<Reply> {
        match self {
            Open::List { kind, items, .. } => Some(kind.reply(items)),
            Open::Map { pairs, .. } => Some(Reply::Map(pairs)),
            Open::Attribute { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ListKind {
    Array,
    Set,
    Push,
}

impl ListKind {
    fn of(prefix: u8) -> ListKind {
        match prefix {
            b'~' => ListKind::Set,
            b'>' => ListKind::Push,
            _ => ListKind::Array,
        }
    }

    fn reply(self, items: Vec<Reply>) -> Reply {
        match self {
            ListKind::Array => Reply::Array(items),
            ListKind::Set => Reply::Set(items),
            ListKind::Push => Reply::Push(items),
        }
    }
}

enum Element {
    Open(Open),
    Value(Reply),
    /// An empty attribute: nothing to add.
    Nothing,
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

    fn b(s: &'static str) -> Reply {
        Reply::Bulk(Bytes::from_static(s.as_bytes()))
    }

    fn wire(r: &Reply, proto: Proto) -> String {
        let mut out = BytesMut::new();
        r.encode_proto(proto, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Reply>, ReplyDecodeError> {
        let mut d = ReplyDecoder::default();
        d.feed(bytes);
        let mut got = Vec::new();
        while let Some(r) = d.next_reply()? {
            got.push(r);
        }
        Ok(got)
    }

    /// One of every RESP3 type, nested, as Redis sends them.
    fn resp3_replies() -> Vec<Reply> {
        vec![
            Reply::Nil,
            Reply::Boolean(true),
            Reply::Boolean(false),
            Reply::Double(1.5),
            Reply::Double(-0.0),
            Reply::Double(f64::INFINITY),
            Reply::Double(f64::NAN),
            Reply::Double(1e300),
            Reply::BigNumber(Bytes::from_static(b"-1234567890123456789012345678901")),
            Reply::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"# Server\r\nredis_version:7.0.15\r\n"),
            },
            Reply::Map(vec![
                (b("maxmemory"), b("0")),
                (
                    Reply::Integer(1),
                    Reply::Set(vec![b("a"), Reply::Boolean(true)]),
                ),
                (b("empty"), Reply::Map(vec![])),
            ]),
            Reply::Set(vec![]),
            Reply::Push(vec![b("invalidate"), Reply::Array(vec![b("k")])]),
            Reply::Array(vec![Reply::Nil, Reply::Push(vec![]), Reply::Double(0.1)]),
            Reply::Error(Bytes::from_static(b"ERR nope")),
        ]
    }

    #[test]
    fn resp3_replies_decode_in_any_split() {
        let replies = resp3_replies();
        let mut wire = BytesMut::new();
        for r in &replies {
            r.encode_proto(Proto::Resp3, &mut wire);
        }
        // An attribute before a reply, and one inside an aggregate, are
        // dropped; a blob error is an error.
        wire.extend_from_slice(b"|1\r\n+ttl\r\n:3\r\n:42\r\n");
        wire.extend_from_slice(b"*2\r\n:1\r\n|2\r\n+a\r\n%1\r\n+x\r\n+y\r\n+b\r\n_\r\n:2\r\n");
        wire.extend_from_slice(b"|0\r\n!6\r\nE x\r\ny\r\n");
        let mut expected = replies.clone();
        expected.push(Reply::Integer(42));
        expected.push(Reply::Array(vec![Reply::Integer(1), Reply::Integer(2)]));
        expected.push(Reply::Error(Bytes::from_static(b"E x\r\ny")));
        for split in 0..wire.len() {
            let mut d = ReplyDecoder::default();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                d.feed(chunk);
                while let Some(r) = d.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, expected, "split at {split}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn resp3_encoding_is_what_redis_writes() {
        let r3 = |r: &Reply| wire(r, Proto::Resp3);
        assert_eq!(r3(&Reply::Nil), "_\r\n");
        assert_eq!(r3(&Reply::NilArray), "_\r\n");
        assert_eq!(r3(&Reply::Boolean(true)), "#t\r\n");
        assert_eq!(r3(&Reply::Boolean(false)), "#f\r\n");
        assert_eq!(r3(&Reply::Double(1.1)), ",1.1000000000000001\r\n");
        assert_eq!(r3(&Reply::Double(f64::NEG_INFINITY)), ",-inf\r\n");
        assert_eq!(
            r3(&Reply::BigNumber(Bytes::from_static(b"123"))),
            "(123\r\n"
        );
        assert_eq!(
            r3(&Reply::Map(vec![(b("maxmemory"), b("0"))])),
            "%1\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n"
        );
        assert_eq!(r3(&Reply::Set(vec![])), "~0\r\n");
        assert_eq!(r3(&Reply::Push(vec![Reply::Integer(1)])), ">1\r\n:1\r\n");
        assert_eq!(
            r3(&Reply::Verbatim {
                format: *b"mkd",
                text: Bytes::from_static(b"hi")
            }),
            "=6\r\nmkd:hi\r\n"
        );
        // kv's own types: DUMP's pairs are a map, INFO's text is verbatim.
        assert_eq!(
            r3(&Reply::Pairs(vec![(
                Bytes::from_static(b"k"),
                Bytes::from_static(b"v")
            )])),
            "%1\r\n$1\r\nk\r\n$1\r\nv\r\n"
        );
        assert_eq!(
            r3(&Reply::Text("# Server\nx:1\n".into())),
            "=19\r\ntxt:# Server\r\nx:1\r\n\r\n"
        );
        // Everything else is written as in RESP2.
        for r in [
            Reply::ok(),
            Reply::Integer(-7),
            b("v"),
            Reply::Array(vec![]),
        ] {
            assert_eq!(r3(&r), wire(&r, Proto::Resp2));
        }
        assert_eq!(
            decode_all(r3(&Reply::Text("a\nb".into())).as_bytes()),
            Ok(vec![Reply::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"a\r\nb")
            }])
        );
    }

    #[test]
    fn resp3_types_degrade_in_resp2_as_redis_does() {
        let r2 = |r: &Reply| wire(r, Proto::Resp2);
        assert_eq!(r2(&Reply::Nil), "$-1\r\n");
        assert_eq!(r2(&Reply::NilArray), "*-1\r\n");
        assert_eq!(r2(&Reply::Boolean(true)), ":1\r\n");
        assert_eq!(r2(&Reply::Boolean(false)), ":0\r\n");
        assert_eq!(r2(&Reply::Double(1.1)), "$18\r\n1.1000000000000001\r\n");
        assert_eq!(r2(&Reply::Double(f64::INFINITY)), "$3\r\ninf\r\n");
        assert_eq!(r2(&Reply::Double(f64::NEG_INFINITY)), "$4\r\n-inf\r\n");
        assert_eq!(
            r2(&Reply::BigNumber(Bytes::from_static(b"123"))),
            "$3\r\n123\r\n"
        );
        assert_eq!(
            r2(&Reply::Map(vec![(b("k"), Reply::Boolean(true))])),
            "*2\r\n$1\r\nk\r\n:1\r\n"
        );
        assert_eq!(r2(&Reply::Set(vec![b("a")])), "*1\r\n$1\r\na\r\n");
        assert_eq!(r2(&Reply::Push(vec![])), "*0\r\n");
        assert_eq!(
            r2(&Reply::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"hi")
            }),
            "$2\r\nhi\r\n"
        );
        assert_eq!(r2(&Reply::Text("a\nb\n".into())), "$6\r\na\r\nb\r\n\r\n");
        // `*-1` and `$-1` stay apart when decoded.
        assert_eq!(
            decode_all(b"*-1\r\n$-1\r\n"),
            Ok(vec![Reply::NilArray, Reply::Nil])
        );
    }

    #[test]
    fn doubles_are_formatted_like_percent_17g() {
        for (d, text) in [
            (1.1, "1.1000000000000001"),
            (1e300, "1.0000000000000001e+300"),
            (0.0001, "0.0001"),
            (1e-5, "1.0000000000000001e-05"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1.5, "1.5"),
            (0.0, "0"),
            (-0.0, "-0"),
            (2.5e-300, "2.5e-300"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (2.71, "2.71"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "4.9406564584124654e-324"),
            (100.0, "100"),
            (-2.5, "-2.5"),
            (0.00015, "0.00014999999999999999"),
            (0.1, "0.10000000000000001"),
            (-1e-300, "-1e-300"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (-f64::NAN, "nan"),
        ] {
            assert_eq!(DoubleText::new(d).as_bytes(), text.as_bytes(), "{d:e}");
        }
        // Equality is equality of the encoding.
        assert_eq!(Reply::Double(f64::NAN), Reply::Double(-f64::NAN));
        assert_ne!(Reply::Double(0.0), Reply::Double(-0.0));
        assert_ne!(Reply::Double(1.0), Reply::Integer(1));
    }

    #[test]
    fn resp3_garbage_is_an_error() {
        for bad in [
            &b"_x\r\n"[..],
            b"#x\r\n",
            b"#\r\n",
            b",\r\n",
            b",1.5x\r\n",
            b", 1\r\n",
            b"(\r\n",
            b"(-\r\n",
            b"(12a\r\n",
            b"=3\r\nabc\r\n",
            b"=5\r\ntxtxy\r\n",
            b"%-1\r\n",
            b"~-1\r\n",
            b">-1\r\n",
            b"|-1\r\n",
            b"$-2\r\n",
            b"*-2\r\n",
            b"!-1\r\n",
            b"$?\r\n",
            b"*?\r\n",
            b"%1\r\n+k\r\n+v\r\n+extra\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A map of n pairs counts as 2n elements.
        let mut d = ReplyDecoder::new(ReplyLimits {
            max_array: 3,
            ..ReplyLimits::default()
        });
        d.feed(b"%2\r\n");
        assert_eq!(
            d.next_reply(),
            Err(ReplyDecodeError::TooLarge { len: 4, limit: 3 })
        );
        let mut d = ReplyDecoder::new(ReplyLimits {
            max_bulk: 5,
            ..ReplyLimits::default()
        });
        d.feed(b"=6\r\n");
        assert_eq!(
            d.next_reply(),
            Err(ReplyDecodeError::TooLarge { len: 6, limit: 5 })
        );
        // Maps, sets, pushes and attributes all count towards the depth.
        let mut d = ReplyDecoder::new(ReplyLimits {
            max_depth: 3,
            ..ReplyLimits::default()
        });
        d.feed(b"%1\r\n~1\r\n|1\r\n>1\r\n");
        assert!(d.next_reply().is_err());
        let mut d = ReplyDecoder::new(ReplyLimits {
            max_depth: 3,
            ..ReplyLimits::default()
        });
        d.feed(b"%1\r\n~1\r\n>1\r\n:1\r\n:2\r\n");
        assert!(d.next_reply().unwrap().is_some());
    }

    #[test]
    fn resp3_values_encode_per_proto() {
        let mut out = BytesMut::new();
        encode_value_proto(Dialect::Resp, Proto::Resp3, None, &mut out);
        encode_value_proto(Dialect::Resp, Proto::Resp3, Some(b"v"), &mut out);
        encode_value_proto(Dialect::Resp, Proto::Resp2, None, &mut out);
        encode_value_proto(Dialect::Inline, Proto::Resp3, None, &mut out);
        assert_eq!(&out[..], b"_\r\n$1\r\nv\r\n$-1\r\n(nil)\r\n");
        let mut out = BytesMut::new();
        let mut enc = ReplyEncoder::with_proto(Dialect::Resp, Proto::Resp3, &mut out);
        enc.value(None);
        enc.reply(Reply::Boolean(true));
        enc.reply(Reply::error("ERR x"));
        assert_eq!(enc.errors, 1);
        assert_eq!(&out[..], b"_\r\n#t\r\n-ERR x\r\n");
        let mut out = BytesMut::new();
        ReplyEncoder::new(Dialect::Resp, &mut out).value(None);
        assert_eq!(&out[..], b"$-1\r\n");
    }

    #[test]
    fn resp3_inline_forms_are_unambiguous() {
        assert_eq!(inline(&Reply::Boolean(true)), "(true)\r\n");
        assert_eq!(inline(&Reply::Boolean(false)), "(false)\r\n");
        assert_eq!(inline(&Reply::Double(1.5)), "(double) 1.5\r\n");
        assert_eq!(
            inline(&Reply::BigNumber(Bytes::from_static(b"123"))),
            "(big number) 123\r\n"
        );
        assert_eq!(inline(&Reply::NilArray), "(nil)\r\n");
        assert_eq!(
            inline(&Reply::Map(vec![
                (b("maxmemory"), b("0")),
                (b("proto"), Reply::Integer(3)),
                (b("modules"), Reply::Array(vec![])),
                (
                    b("m"),
                    Reply::Map(vec![(b("a"), Reply::Set(vec![b("x"), b("y")]))])
                ),
            ])),
            "(4 entries)\r\n\
             1# \"maxmemory\" => \"0\"\r\n\
             2# \"proto\" => (integer) 3\r\n\
             3# \"modules\" => (empty array)\r\n\
             4# \"m\" => {\"a\": {\"x\", \"y\"}}\r\n"
        );
        assert_eq!(inline(&Reply::Map(vec![])), "(empty hash)\r\n");
        assert_eq!(
            inline(&Reply::Set(vec![b("c"), Reply::Double(f64::INFINITY)])),
            "(2 members)\r\n1~ \"c\"\r\n2~ (double) inf\r\n"
        );
        assert_eq!(inline(&Reply::Set(vec![])), "(empty set)\r\n");
        assert_eq!(
            inline(&Reply::Push(vec![b("message"), Reply::Set(vec![])])),
            "(2 items)\r\n1) \"message\"\r\n2) (empty set)\r\n"
        );
        // A verbatim string shows as its lines; a stray CR or control byte
        // from the peer cannot add one.
        assert_eq!(
            inline(&Reply::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"# Server\r\nx:1\ry\x01\r\n")
            }),
            "(2 lines)\r\n# Server\r\nx:1\\ry\\x01\r\n"
        );
        assert_eq!(
            inline(&Reply::Array(vec![Reply::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"a\nb")
            }])),
            "(1 item)\r\n1) \"a\\nb\"\r\n"
        );
    }

    #[test]
    fn random_replies_never_panic_and_decode_alike_in_any_split() {
        // Whole elements mostly, so that much of the input is valid, and
        // fragments that break it.
        const TOKENS: &[&[u8]] = &[
            b"*2\r\n",
            b"*1\r\n",
            b"%1\r\n",
            b"%2\r\n",
            b"|1\r\n",
            b"~2\r\n",
            b">1\r\n",
            b"*0\r\n",
            b"%0\r\n",
            b"|0\r\n",
            b"*-1\r\n",
            b"$-1\r\n",
            b"$1\r\nx\r\n",
            b"=5\r\ntxt:x\r\n",
            b"!1\r\nE\r\n",
            b"(-12\r\n",
            b",1.5\r\n",
            b",-inf\r\n",
            b",nan\r\n",
            b"#t\r\n",
            b"_\r\n",
            b"+OK\r\n",
            b":1\r\n",
            b"\r\n",
            b"\r",
            b"\n",
            b"x",
            b"?",
            b"-1",
            b"$",
            b"=3",
            b"\xff",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let limits = ReplyLimits {
            max_bulk: 8,
            max_array: 4,
            max_depth: 3,
        };
        let decode = |chunks: &[&[u8]]| {
            let mut d = ReplyDecoder::new(limits);
            let mut got = Vec::new();
            for c in chunks {
                d.feed(c);
                loop {
                    match d.next_reply() {
                        Ok(Some(r)) => got.push(Ok(r)),
                        Ok(None) => break,
                        Err(e) => {
                            got.push(Err(e));
                            return got;
                        }
                    }
                }
            }
            got
        };
        let mut decoded = 0;
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..(next() % 16) {
                input.extend_from_slice(TOKENS[(next() % TOKENS.len() as u64) as usize]);
            }
            let whole = decode(&[&input]);
            for split in 0..input.len() {
                let (a, b) = input.split_at(split);
                assert_eq!(decode(&[a, b]), whole, "{input:?} split at {split}");
            }
            // What decodes re-encodes (RESP3, as it came) to an equal reply.
            for r in whole.into_iter().flatten() {
                decoded += 1;
                let mut out = BytesMut::new();
                r.encode_proto(Proto::Resp3, &mut out);
                let again = decode(&[&out]);
                if round_trips(&r) {
                    assert_eq!(again, vec![Ok(r)]);
                }
            }
        }
        // The token soup is valid often enough to exercise the encoder too.
        assert!(decoded > 1000, "{decoded} replies decoded");
    }

    /// Whether `r` re-encodes in RESP3 to itself: a nil array is written as
    /// a plain nil, and a line break in a status or error as a space.
    fn round_trips(r: &Reply) -> bool {
        match r {
            Reply::NilArray => false,
            Reply::Status(s) | Reply::Error(s) => !s.iter().any(|&b| b == b'\r' || b == b'\n'),
            Reply::Array(items) | Reply::Set(items) | Reply::Push(items) => {
                items.iter().all(round_trips)
            }
            Reply::Map(entries) => entries
                .iter()
                .all(|(k, v)| round_trips(k) && round_trips(v)),
            _ => true,
        }
    }
}
