//! The WebSocket bridge's message format, shared by the proxy (which encodes
//! it) and the browser console (which decodes it).
//!
//! # Browser → proxy
//! One command per message: a **text** message is one inline line (no line
//! break inside), a **binary** message is RESP2 bytes. Either way the proxy
//! treats the socket as one more downstream client, so it gets the same
//! cache, coalescing and limits as a TCP client.
//!
//! # Proxy → browser
//! One **text** message per reply, in request order, a JSON object:
//!
//! ```json
//! {"reply":{"type":"bulk","value":"Derek Moss"},
//!  "display":"\"Derek Moss\"",
//!  "source":"cache","age_ms":1520.5,"proxy_us":14}
//! ```
//!
//! - `reply`: the reply as data, its `type` one of `status`, `error`,
//!   `integer`, `bulk`, `nil`, `array` (`items`), `pairs` (`pairs`: `[[k, v]…]`),
//!   `text`. A `bulk` value that is not UTF-8 is sent as hex with
//!   `"binary":true`. A RESP3 reply is sent in its RESP2 shape (a map as a
//!   flat array, a double as a `bulk` string, a boolean as an integer, a
//!   verbatim string as `text`); `display` shows its real form.
//! - `display`: the reply exactly as telnet would show it (one or more lines).
//! - `source`: `cache` (then `age_ms` is the entry's age), `server`, or
//!   `proxy` (answered by the proxy itself: `PING`, `INFO`, errors).
//! - `proxy_us`: time the request spent inside the proxy.
//!
//! Telnet and RESP replies are unchanged by any of this.
//!
//! # Message rules
//! [`inbound_text`] and [`inbound_binary`] decide what a browser message
//! becomes: input for the proxy, or a refusal answered in its place (an
//! error reply, in order with the others; the socket carries on). A
//! message over [`max_message`] is not even buffered: the socket layer
//! closes the connection.

use crate::codec::Limits;
use crate::proxy::{AnnotatedReply, Source};
use crate::reply::Reply;
use crate::stats::Histogram;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What one browser message becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Bytes for the client's decoder (a binary message's own, uncopied).
    Input(Cow<'a, [u8]>),
    /// Refused: the proxy answers this reason as an error reply in the
    /// message's place ([`Proxy::reject_client_input`](crate::Proxy::reject_client_input)).
    Refused(String),
}

/// The longest command a browser may send: the socket layer buffers a
/// whole message before it is understood, so this is kept well below the
/// TCP port's limits (which are Redis's 512 MB), while a multi-megabyte
/// value still fits.
pub const MAX_BROWSER_COMMAND: usize = 16 * 1024 * 1024;

/// The longest binary message that can hold one command: a key, a value,
/// and room for the RESP framing, up to [`MAX_BROWSER_COMMAND`].
pub fn max_binary(limits: &Limits) -> usize {
    (limits.max_key + limits.max_value + 1024).min(MAX_BROWSER_COMMAND)
}

/// The longest message the socket layer buffers. Messages up to it that
/// break the rules get an error reply; longer ones close the socket, since
/// their content was never held.
pub fn max_message(limits: &Limits) -> usize {
    (2 * 1024 * 1024).max(max_binary(limits) + 64 * 1024)
}

/// A text message: one inline line, no line break inside.
pub fn inbound_text(text: &str, limits: &Limits) -> Inbound<'static> {
    if text.len() > limits.max_line {
        Inbound::Refused(format!(
            "message too long ({} bytes, limit {})",
            text.len(),
            limits.max_line
        ))
    } else if text.contains(['\r', '\n']) {
        Inbound::Refused("one command per message".to_owned())
    } else {
        let mut line = Vec::with_capacity(text.len() + 1);
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        Inbound::Input(Cow::Owned(line))
    }
}

/// A binary message: RESP bytes of one command.
pub fn inbound_binary<'a>(data: &'a [u8], limits: &Limits) -> Inbound<'a> {
    let max = max_binary(limits);
    if data.len() > max {
        Inbound::Refused(format!(
            "message too long ({} bytes, limit {max})",
            data.len()
        ))
    } else {
        Inbound::Input(Cow::Borrowed(data))
    }
}

/// One reply as carried to the browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeReply {
    /// The reply as data.
    pub reply: WireReply,
    /// The reply in the inline (telnet) format.
    pub display: String,
    /// Where it came from.
    pub source: WireSource,
    /// The cache entry's age in milliseconds, for cache hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<f64>,
    /// Microseconds the request spent in the proxy.
    pub proxy_us: u64,
}

/// Where a reply came from, as named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireSource {
    /// The proxy's cache.
    Cache,
    /// The upstream server.
    Server,
    /// The proxy itself.
    Proxy,
}

/// A [`Reply`] as JSON data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WireReply {
    /// A status such as `OK`.
    Status {
        /// The status text.
        value: String,
    },
    /// An error.
    Error {
        /// The error text, code word first.
        value: String,
    },
    /// A number.
    Integer {
        /// The number.
        value: i64,
    },
    /// A value.
    Bulk {
        /// The value; hex digits when `binary`.
        value: String,
        /// Whether the value was not UTF-8 and is sent as hex.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
    },
    /// A missing key.
    Nil,
    /// A list.
    Array {
        /// The elements.
        items: Vec<WireReply>,
    },
    /// Key/value pairs (`DUMP`).
    Pairs {
        /// The pairs, sorted by key as the server sent them.
        pairs: Vec<(WireReply, WireReply)>,
    },
    /// Multi-line text (`INFO`, `HELP`).
    Text {
        /// The text.
        value: String,
    },
    /// Out-of-band data that answers no request (a tracking client's
    /// invalidation): kept apart, so the page does not pair it with one.
    Push {
        /// The elements.
        items: Vec<WireReply>,
    },
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bulk(b: &[u8]) -> WireReply {
    match std::str::from_utf8(b) {
        Ok(s) => WireReply::Bulk {
            value: s.to_owned(),
            binary: false,
        },
        Err(_) => WireReply::Bulk {
            value: b.iter().map(|x| format!("{x:02x}")).collect(),
            binary: true,
        },
    }
}

impl From<&Reply> for WireReply {
    fn from(r: &Reply) -> Self {
        match r {
            Reply::Status(s) => WireReply::Status { value: text(s) },
            Reply::Error(s) => WireReply::Error { value: text(s) },
            Reply::Integer(n) => WireReply::Integer { value: *n },
            Reply::Bulk(b) => bulk(b),
            Reply::Nil => WireReply::Nil,
            Reply::Array(items) => WireReply::Array {
                items: items.iter().map(WireReply::from).collect(),
            },
            Reply::Pairs(pairs) => WireReply::Pairs {
                pairs: pairs.iter().map(|(k, v)| (bulk(k), bulk(v))).collect(),
            },
            Reply::Text(t) => WireReply::Text { value: t.clone() },
            // The RESP3 types travel in their RESP2 shape; the message's
            // `display` keeps their real form.
            Reply::NilArray => WireReply::Nil,
            Reply::Map(entries) => WireReply::Array {
                items: entries
                    .iter()
                    .flat_map(|(k, v)| [WireReply::from(k), WireReply::from(v)])
                    .collect(),
            },
            Reply::Set(items) => WireReply::Array {
                items: items.iter().map(WireReply::from).collect(),
            },
            Reply::Push(items) => WireReply::Push {
                items: items.iter().map(WireReply::from).collect(),
            },
            Reply::Boolean(b) => WireReply::Integer {
                value: i64::from(*b),
            },
            Reply::Double(d) => bulk(crate::reply::DoubleText::new(*d).as_bytes()),
            Reply::BigNumber(n) => bulk(n),
            Reply::Verbatim { text, .. } => WireReply::Text {
                value: self::text(text),
            },
        }
    }
}

impl WireReply {
    /// Back to a [`Reply`]; hex-encoded binary values are decoded.
    pub fn to_reply(&self) -> Reply {
        match self {
            WireReply::Status { value } => Reply::Status(Bytes::from(value.clone())),
            WireReply::Error { value } => Reply::Error(Bytes::from(value.clone())),
            WireReply::Integer { value } => Reply::Integer(*value),
            WireReply::Bulk { .. } => Reply::Bulk(self.bytes()),
            WireReply::Nil => Reply::Nil,
            WireReply::Array { items } => {
                Reply::Array(items.iter().map(WireReply::to_reply).collect())
            }
            WireReply::Pairs { pairs } => {
                Reply::Pairs(pairs.iter().map(|(k, v)| (k.bytes(), v.bytes())).collect())
            }
            WireReply::Text { value } => Reply::Text(value.clone()),
            WireReply::Push { items } => {
                Reply::Push(items.iter().map(WireReply::to_reply).collect())
            }
        }
    }

    fn bytes(&self) -> Bytes {
        match self {
            WireReply::Bulk {
                value,
                binary: false,
            } => Bytes::from(value.clone()),
            WireReply::Bulk {
                value,
                binary: true,
            } => Bytes::from(
                (0..value.len() / 2)
                    .filter_map(|i| u8::from_str_radix(value.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect::<Vec<u8>>(),
            ),
            other => Bytes::from(format!("{other:?}")),
        }
    }
}

impl BridgeReply {
    /// Builds the message for a reply the proxy produced.
    pub fn from_annotated(a: &AnnotatedReply) -> Self {
        let mut display = BytesMut::new();
        a.reply.encode_inline(&mut display);
        let display = text(&display)
            .trim_end_matches("\r\n")
            .replace("\r\n", "\n");
        let (source, age_ms) = match a.source {
            Source::Cache { age } => (WireSource::Cache, Some(age.as_secs_f64() * 1000.0)),
            Source::Upstream => (WireSource::Server, None),
            Source::Proxy => (WireSource::Proxy, None),
        };
        BridgeReply {
            reply: WireReply::from(&a.reply),
            display,
            source,
            age_ms,
            proxy_us: (a.ready_at - a.received_at).as_micros() as u64,
        }
    }

    /// The JSON text of the message.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses a message received from the proxy.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// What the proxy's charts need, sent once a second to the sockets that
/// ask for it (`/ws?stats=1`) as `{"stats":{…}}`. Counters are totals
/// since the proxy started: the console charts the difference between two
/// messages, so a lost or late one costs a point, not a wrong one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxySnapshot {
    /// When it was taken, in milliseconds of the proxy's clock.
    pub at_ms: f64,
    /// Requests received from clients.
    pub requests: u64,
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads the cache could not answer.
    pub misses: u64,
    /// Entries in the cache now.
    pub entries: u64,
    /// Bytes charged to them.
    pub bytes: u64,
    /// The upstream connection's state: `up`, `connecting` or `down`.
    pub upstream: String,
    /// Every request's latency at the proxy.
    pub latency: Histogram,
}

#[derive(Serialize, Deserialize)]
struct StatsMessage<T> {
    stats: T,
}

impl ProxySnapshot {
    /// The JSON text of the message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&StatsMessage { stats: self })
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// A message from the proxy to the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// The reply to the oldest request not yet answered.
    Reply(BridgeReply),
    /// The proxy's figures, for the charts.
    Stats(ProxySnapshot),
}

impl Outbound {
    /// Parses a message received from the proxy.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        // Replies far outnumber stats, and a reply's JSON starts with its
        // `reply` key: stats are tried only when the text says so.
        if s.trim_start().starts_with("{\"stats\"") {
            let m: StatsMessage<ProxySnapshot> = serde_json::from_str(s)?;
            return Ok(Outbound::Stats(m.stats));
        }
        BridgeReply::from_json(s).map(Outbound::Reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_replies_are_told_apart() {
        let mut latency = Histogram::default();
        latency.record(std::time::Duration::from_micros(30));
        let snap = ProxySnapshot {
            at_ms: 1500.5,
            requests: 7,
            hits: 3,
            misses: 1,
            entries: 2,
            bytes: 160,
            upstream: "up".into(),
            latency,
        };
        let json = snap.to_json();
        assert!(json.starts_with("{\"stats\":{"), "{json}");
        assert_eq!(Outbound::from_json(&json).unwrap(), Outbound::Stats(snap));
        let reply = BridgeReply::from_json(
            r#"{"reply":{"type":"nil"},"display":"(nil)","source":"server","proxy_us":3}"#,
        )
        .unwrap();
        assert_eq!(
            Outbound::from_json(&reply.to_json()).unwrap(),
            Outbound::Reply(reply)
        );
        assert!(Outbound::from_json("{\"stats\":{}}").is_err());
    }
    use crate::time::Instant;
    use std::time::Duration;

    #[test]
    fn messages_are_one_command_within_the_limits() {
        let limits = Limits {
            max_line: 12,
            ..Limits::default()
        };
        assert_eq!(
            inbound_text("GET k", &limits),
            Inbound::Input(Cow::Borrowed(b"GET k\n"))
        );
        assert_eq!(
            inbound_text("GET k\nGET j", &limits),
            Inbound::Refused("one command per message".into())
        );
        assert_eq!(
            inbound_text("GET longer-key", &limits),
            Inbound::Refused("message too long (14 bytes, limit 12)".into())
        );
        let max = max_binary(&limits);
        assert!(matches!(
            inbound_binary(&vec![0; max], &limits),
            Inbound::Input(_)
        ));
        assert!(matches!(
            inbound_binary(&vec![0; max + 1], &limits),
            Inbound::Refused(_)
        ));
        assert!(max_message(&limits) > max);
    }

    #[test]
    fn cache_hit_message_round_trips() {
        let a = AnnotatedReply {
            reply: Reply::Bulk(Bytes::from_static(b"Derek Moss")),
            source: Source::Cache {
                age: Duration::from_millis(1500),
            },
            received_at: Instant::from_millis(10),
            ready_at: Instant::from_nanos(10_000_000 + 14_000),
        };
        let m = BridgeReply::from_annotated(&a);
        let json = m.to_json();
        assert_eq!(
            json,
            r#"{"reply":{"type":"bulk","value":"Derek Moss"},"display":"\"Derek Moss\"","source":"cache","age_ms":1500.0,"proxy_us":14}"#
        );
        let back = BridgeReply::from_json(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.reply.to_reply(), a.reply);
    }

    #[test]
    fn every_reply_kind_round_trips() {
        let replies = [
            Reply::ok(),
            Reply::Error(Bytes::from_static(b"ERR x")),
            Reply::Integer(-2),
            Reply::Bulk(Bytes::from_static(b"\xff\x00a")),
            Reply::Nil,
            Reply::Array(vec![Reply::Nil, Reply::Integer(1)]),
            Reply::Pairs(vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))]),
            Reply::Text("a:1\nb:2".into()),
            Reply::Push(vec![
                Reply::Bulk(Bytes::from_static(b"invalidate")),
                Reply::Array(vec![Reply::Bulk(Bytes::from_static(b"k"))]),
            ]),
        ];
        for r in replies {
            let a = AnnotatedReply {
                reply: r.clone(),
                source: Source::Upstream,
                received_at: Instant::ZERO,
                ready_at: Instant::ZERO,
            };
            let back = BridgeReply::from_json(&BridgeReply::from_annotated(&a).to_json()).unwrap();
            assert_eq!(back.reply.to_reply(), r);
            assert_eq!(back.source, WireSource::Server);
            assert_eq!(back.age_ms, None);
        }
    }
}
