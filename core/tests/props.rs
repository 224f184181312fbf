//! Property tests of the codecs and of `ServerConnection`: round trips,
//! split invariance, no panics and bounded buffering on arbitrary input.

use bytes::{Bytes, BytesMut};
use kv_core::command::encode_resp_args;
use kv_core::{
    DecodeError, Decoder, Frame, Limits, Reply, ReplyDecoder, Server, ServerConfig,
    ServerConnection,
};
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Regression files would be written next to this file; the seeds of
        // any failure are printed anyway.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Small limits, so that every limit is reached by small inputs.
const SMALL: Limits = Limits {
    max_line: 64,
    max_key: 32,
    max_value: 64,
    max_args: 8,
};

const COMMAND_NAMES: &[&str] = &[
    "GET", "get", "SET", "PUT", "put", "DEL", "DUMP", "PING", "ECHO", "INFO", "HELP", "QUIT",
    "HELLO", "COMMAND", "CONFIG", "CLIENT", "SELECT", "FROB",
];

/// 1..8 RESP arguments: a command name, then 0..7 arbitrary byte strings.
fn resp_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        prop::sample::select(COMMAND_NAMES),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
    )
        .prop_map(|(name, rest)| {
            let mut args = vec![name.as_bytes().to_vec()];
            args.extend(rest);
            args
        })
}

/// A line of printable ASCII words (no whitespace, control characters or
/// quotes, which the unit tests of the inline splitter cover) joined by
/// single spaces. A line may not start with `*`: that byte selects the RESP
/// dialect.
fn inline_line() -> impl Strategy<Value = String> {
    (
        "[!#-&(-)+-~][!#-&(-~]{0,11}",
        prop::collection::vec("[!#-&(-~]{1,12}", 0..5),
    )
        .prop_map(|(first, rest)| {
            let mut words = vec![first];
            words.extend(rest);
            words.join(" ")
        })
}

fn line_ending() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\r\n"), Just("\n")]
}

fn encode_args(args: &[Vec<u8>]) -> BytesMut {
    let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
    let mut out = BytesMut::new();
    encode_resp_args(&args, &mut out);
    out
}

/// One valid command in either dialect, encoded.
fn valid_command() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (inline_line(), line_ending()).prop_map(|(l, e)| format!("{l}{e}").into_bytes()),
        resp_args().prop_map(|a| encode_args(&a).to_vec()),
    ]
}

const TOKENS: &[&[u8]] = &[
    b"*",
    b"$",
    b"\r\n",
    b"\n",
    b"\r",
    b"*2\r\n",
    b"*1\r\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"*9\r\n",
    b"$3\r\n",
    b"$0\r\n",
    b"$-1\r\n",
    b"$99\r\n",
    b"$1000\r\n",
    b"-1",
    b"0",
    b"99999999999999999999",
    b"\xff\xfb\x01",
    b"\xff\xfa\x18",
    b"\xff\xf0",
    b"\x08",
    b"\x7f",
    b"\x00",
    b" ",
    b"GET k",
    b"PUT k v",
    b"QUIT",
    b"INFO",
];

/// Bytes that are mostly not valid commands, with enough protocol tokens
/// mixed in to reach every state of the decoder.
fn garbage_segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..80),
        2 => prop::sample::select(TOKENS)
        .prop_map(|t| t.to_vec()),
        2 => valid_command(),
        1 => (0usize..200).prop_map(|n| vec![b'x'; n]),
    ]
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(garbage_segment(), 0..24).prop_map(|s| s.concat())
}

/// Cuts `data` at the given points (reduced modulo its length).
fn chunks<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points {
        out.push(&data[start..p]);
        start = p;
    }
    out.push(&data[start..]);
    out
}

fn cut_points() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..24)
}

type Decoded = Vec<Result<Frame, DecodeError>>;

/// Drains `next_frame` until it needs input, carrying on past non-fatal
/// errors. Returns whether a fatal error was seen.
fn drain(d: &mut Decoder, out: &mut Decoded) -> bool {
    loop {
        match d.next_frame() {
            Ok(Some(f)) => out.push(Ok(f)),
            Ok(None) => return false,
            Err(e) => {
                let fatal = e.is_fatal();
                out.push(Err(e));
                if fatal {
                    return true;
                }
            }
        }
    }
}

fn decode_chunked(limits: Limits, chunks: &[&[u8]]) -> Decoded {
    let mut d = Decoder::new(limits);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c);
        if drain(&mut d, &mut out) {
            break;
        }
    }
    out
}

/// Reply trees: Status/Error without CR/LF, Integer, Bulk, Nil, and
/// arrays nested at most 3 deep.
fn reply() -> impl Strategy<Value = Reply> {
    let text = prop::collection::vec(
        any::<u8>().prop_filter("CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..24,
    )
    .prop_map(Bytes::from);
    let leaf = prop_oneof![
        text.clone().prop_map(Reply::Status),
        text.prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Integer),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| Reply::Bulk(Bytes::from(b))),
        Just(Reply::Nil),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Reply::Array)
    })
}

fn encode_replies(replies: &[Reply]) -> BytesMut {
    let mut wire = BytesMut::new();
    for r in replies {
        r.encode_resp(&mut wire);
    }
    wire
}

fn decode_replies(chunks: &[&[u8]]) -> Vec<Reply> {
    let mut d = ReplyDecoder::default();
    let mut got = Vec::new();
    for c in chunks {
        d.feed(c);
        while let Some(r) = d.next_reply().expect("valid RESP must decode") {
            got.push(r);
        }
    }
    assert_eq!(d.buffered(), 0, "everything was consumed");
    got
}

/// Feeds a fresh server connection, returning its whole output and whether
/// it wants to close.
fn serve(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut server = Server::new(ServerConfig {
        limits: SMALL,
        hash_seed: 7,
        password: None,
        ..ServerConfig::default()
    });
    let mut conn = ServerConnection::new(SMALL);
    let mut out = Vec::new();
    for c in chunks {
        conn.handle_input(&mut server, c);
        loop {
            while let Some(b) = conn.poll_transmit() {
                out.extend_from_slice(&b);
            }
            if !conn.has_backlog() {
                break;
            }
            conn.process(&mut server);
        }
    }
    (out, conn.should_close())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resp_request_round_trips(args in resp_args(), cuts in cut_points()) {
        let wire = encode_args(&args);
        let expected = Frame::Array(args.iter().map(|a| Bytes::copy_from_slice(a)).collect());
        // All at once...
        let mut d = Decoder::new(Limits::default());
        d.feed(&wire);
        prop_assert_eq!(d.next_frame(), Ok(Some(expected.clone())));
        prop_assert_eq!(d.next_frame(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
        prop_assert!(!d.is_mid_command());
        // ...and in pieces.
        let got = decode_chunked(Limits::default(), &chunks(&wire, &cuts));
        prop_assert_eq!(got, vec![Ok(expected)]);
    }

    #[test]
    fn inline_line_round_trips(line in inline_line(), ending in line_ending()) {
        let mut d = Decoder::new(Limits::default());
        d.feed(format!("{line}{ending}").as_bytes());
        prop_assert_eq!(
            d.next_frame(),
            Ok(Some(Frame::Inline(Bytes::copy_from_slice(line.as_bytes()))))
        );
        prop_assert_eq!(d.next_frame(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn valid_commands_decode_the_same_in_any_split(
        commands in prop::collection::vec(valid_command(), 1..12),
        cuts in cut_points(),
    ) {
        let wire = commands.concat();
        let whole = decode_chunked(Limits::default(), &[&wire]);
        prop_assert_eq!(whole.len(), commands.len());
        prop_assert!(whole.iter().all(|r| r.is_ok()));
        let split = decode_chunked(Limits::default(), &chunks(&wire, &cuts));
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn garbage_decodes_the_same_in_any_split(
        wire in garbage(),
        cuts in cut_points(),
        small in any::<bool>(),
    ) {
        let limits = if small { SMALL } else { Limits::default() };
        let whole = decode_chunked(limits, &[&wire]);
        let split = decode_chunked(limits, &chunks(&wire, &cuts));
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn decoder_never_panics_and_buffers_a_bounded_amount(
        wire in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..4096),
            garbage(),
        ],
        cuts in cut_points(),
    ) {
        // After `next_frame()` returned `Ok(None)` the buffer holds at most
        // one incomplete element:
        // - an inline line without its `\n`: at most `max_line + 1` bytes
        //   (the `+ 1` is room for a `\r`), past which it is refused;
        // - a RESP header line: at most `max_line + 1` bytes (up to its
        //   `\r`, past which it is refused, and that `\r`);
        // - a bulk string of announced length `len <= max_bulk` and its CRLF:
        //   at most `len + 1` bytes (longer ones are refused, not buffered).
        // So the bound does not depend on the chunk size at all; while a
        // chunk is being fed it is at most this plus the chunk.
        let bound = (SMALL.max_line + 1).max(SMALL.max_bulk() + 1);
        let mut d = Decoder::new(SMALL);
        let mut out = Vec::new();
        for c in chunks(&wire, &cuts) {
            let before = d.buffered();
            d.feed(c);
            prop_assert!(d.buffered() <= before + c.len());
            // Carry on past non-fatal errors; after a fatal one the decoder
            // must drop everything.
            drain(&mut d, &mut out);
            prop_assert!(
                d.buffered() <= bound,
                "buffered {} > bound {}", d.buffered(), bound
            );
            if d.has_failed() {
                prop_assert_eq!(d.buffered(), 0);
            }
        }
    }

    #[test]
    fn replies_round_trip_in_any_split(
        replies in prop::collection::vec(reply(), 1..5),
        cuts in cut_points(),
    ) {
        let wire = encode_replies(&replies);
        prop_assert_eq!(decode_replies(&[&wire]), replies.clone());
        prop_assert_eq!(decode_replies(&chunks(&wire, &cuts)), replies);
    }

    #[test]
    fn pairs_decode_as_flat_arrays_and_text_as_crlf_bulk(
        pairs in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..16), prop::collection::vec(any::<u8>(), 0..16)),
            0..6,
        ),
        text in any::<String>(),
        cuts in cut_points(),
    ) {
        let pairs: Vec<(Bytes, Bytes)> = pairs
            .into_iter()
            .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
            .collect();
        let flat = Reply::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [Reply::Bulk(k.clone()), Reply::Bulk(v.clone())])
                .collect(),
        );
        let crlf = Reply::Bulk(Bytes::from(text.replace('\n', "\r\n")));
        let wire = encode_replies(&[Reply::Pairs(pairs), Reply::Text(text)]);
        prop_assert_eq!(decode_replies(&chunks(&wire, &cuts)), vec![flat, crlf]);
    }

    #[test]
    fn inline_bulk_is_one_quoted_line(value in prop::collection::vec(any::<u8>(), 0..128)) {
        let mut out = BytesMut::new();
        Reply::Bulk(Bytes::from(value)).encode_inline(&mut out);
        prop_assert!(out.ends_with(b"\r\n"));
        let body = &out[..out.len() - 2];
        prop_assert!(!body.contains(&b'\r') && !body.contains(&b'\n'), "{:?}", out);
        prop_assert!(body.len() >= 2, "{:?}", out);
        prop_assert_eq!(body[0], b'"');
        prop_assert_eq!(body[body.len() - 1], b'"');
        prop_assert_ne!(&out[..], &b"(nil)\r\n"[..]);
    }

    #[test]
    fn server_connection_output_does_not_depend_on_the_split(
        wire in garbage(),
        cuts in cut_points(),
    ) {
        let whole = serve(&[&wire]);
        let split = serve(&chunks(&wire, &cuts));
        prop_assert_eq!(split, whole);
    }
}

/// The request dialects agree on what they decode: a RESP GET and an inline
/// GET become the same command on the server.
#[test]
fn dialects_reach_the_same_store() {
    let (out, close) = serve(&[b"PUT k v\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nGET k\n"]);
    // The inline GET after a RESP one is answered in RESP, as Redis does.
    assert_eq!(out, b"OK\r\n$1\r\nv\r\n$1\r\nv\r\n");
    assert!(!close);
}

// Integers of 19 digits (up to i64::MIN/MAX) must decode: a Redis upstream
// can send them.
#[test]
fn resp_integers_with_19_digits_round_trip() {
    for n in [
        1_000_000_000_000_000_000,
        -1_000_000_000_000_000_000,
        i64::MAX,
        i64::MIN,
    ] {
        let wire = encode_replies(&[Reply::Integer(n)]);
        let mut d = ReplyDecoder::default();
        d.feed(&wire);
        assert_eq!(d.next_reply(), Ok(Some(Reply::Integer(n))), "{n}");
    }
}

/// One write of [`dump_snapshot_is_the_store_when_the_command_ran`]: on a
/// key (an index into the store's keys), at a moment between two steps of
/// the streamed `DUMP`.
#[derive(Debug, Clone)]
enum SnapshotWrite {
    Set(Index, u8),
    SetPx(Index, u8),
    Del(Index),
    Persist(Index),
    New(u16),
    Flush,
}

fn snapshot_write() -> impl Strategy<Value = SnapshotWrite> {
    prop_oneof![
        20 => (any::<Index>(), any::<u8>()).prop_map(|(k, v)| SnapshotWrite::Set(k, v)),
        6 => (any::<Index>(), 1..5u8).prop_map(|(k, ms)| SnapshotWrite::SetPx(k, ms)),
        20 => any::<Index>().prop_map(SnapshotWrite::Del),
        3 => any::<Index>().prop_map(SnapshotWrite::Persist),
        6 => any::<u16>().prop_map(SnapshotWrite::New),
        1 => Just(SnapshotWrite::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..config() })]

    /// However writes, deadlines, active expiry and clears interleave with
    /// the steps of a streamed `DUMP` (its snapshot is collected a few
    /// thousand positions at a time, copy-on-write, so the store holds more
    /// keys than one step walks), its reply is the store as it was when
    /// the command ran.
    #[test]
    fn dump_snapshot_is_the_store_when_the_command_ran(
        n in kv_core::db::DUMP_COLLECT..3 * kv_core::db::DUMP_COLLECT,
        writes in prop::collection::vec((snapshot_write(), 0..8u8), 0..400),
    ) {
        let mut server = Server::new(ServerConfig::default());
        let run = |server: &mut Server, args: &[&str]| {
            let cmd = kv_core::Command::build(args).unwrap();
            let _ = server.execute(cmd);
        };
        server.set_time(1_000);
        let key = |i: usize| format!("k{i:05}");
        for i in 0..n {
            let v = i.to_string();
            if i % 5 == 0 {
                run(&mut server, &["SET", &key(i), &v, "PX", "2"]);
            } else {
                run(&mut server, &["SET", &key(i), &v]);
            }
        }
        server.set_time(1_001);
        let mut whole = ServerConnection::new(Limits::default());
        whole.handle_input(&mut server, b"*1\r\n$4\r\nDUMP\r\n");
        let expected = whole.transmit_all(&mut server);
        let mut c = ServerConnection::new(Limits::default());
        c.handle_input(&mut server, b"*1\r\n$4\r\nDUMP\r\n");
        let mut got = BytesMut::new();
        let mut now = 1_001;
        for (write, steps) in writes {
            match write {
                SnapshotWrite::Set(k, v) => run(&mut server, &["SET", &key(k.index(n)), &v.to_string()]),
                SnapshotWrite::SetPx(k, ms) => {
                    run(&mut server, &["SET", &key(k.index(n)), "x", "PX", &ms.to_string()]);
                }
                SnapshotWrite::Del(k) => run(&mut server, &["DEL", &key(k.index(n))]),
                SnapshotWrite::Persist(k) => run(&mut server, &["PERSIST", &key(k.index(n))]),
                SnapshotWrite::New(k) => run(&mut server, &["SET", &format!("new{k}"), "n"]),
                SnapshotWrite::Flush => run(&mut server, &["FLUSHALL"]),
            }
            now += 1;
            server.handle_timeout(now);
            // Now and then a step of the DUMP (or none), between writes.
            for _ in 0..steps / 6 {
                if let Some(out) = c.poll_transmit() {
                    got.unsplit(out);
                }
                c.process(&mut server);
            }
        }
        got.unsplit(c.transmit_all(&mut server));
        prop_assert_eq!(got, expected);
    }
}
