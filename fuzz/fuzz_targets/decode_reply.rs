//! Arbitrary bytes into the RESP `ReplyDecoder` (the proxy's upstream side
//! and every client), with small limits, cut into chunks the input chooses.
//!
//! Asserts that decoding never panics, does not depend on how the bytes
//! were cut, buffers a bounded amount while waiting for more, and that every
//! reply re-encodes (in RESP3, which has every type) to bytes that decode
//! back to it.

#![no_main]

use bytes::BytesMut;
use kv_core::{Proto, Reply, ReplyDecodeError, ReplyDecoder, ReplyLimits};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// The longest line the decoder waits for (hard-coded in reply.rs).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Arbitrary)]
struct Input {
    max_bulk: u8,
    max_array: u8,
    max_depth: u8,
    cuts: Vec<u8>,
    data: Vec<u8>,
}

type Decoded = Vec<Result<Reply, ReplyDecodeError>>;

/// Decodes until more input is needed or an error (after which a driver
/// resets the connection, so decoding stops for good).
fn drain(d: &mut ReplyDecoder, bound: usize, out: &mut Decoded) -> bool {
    loop {
        match d.next_reply() {
            Ok(Some(r)) => out.push(Ok(r)),
            Ok(None) => {
                assert!(
                    d.buffered() <= bound,
                    "{} bytes buffered, bound {bound}",
                    d.buffered()
                );
                return true;
            }
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        }
    }
}

/// Whether the reply survives re-encoding: status and error lines cannot
/// carry a line break (the encoder replaces one with a space; a blob error
/// can hold one), and RESP3 writes a nil array (`*-1`) as a plain nil.
fn encodable(r: &Reply) -> bool {
    match r {
        Reply::Status(s) | Reply::Error(s) => !s.iter().any(|&b| b == b'\r' || b == b'\n'),
        Reply::NilArray => false,
        Reply::Array(items) | Reply::Set(items) | Reply::Push(items) => items.iter().all(encodable),
        Reply::Map(entries) => entries.iter().all(|(k, v)| encodable(k) && encodable(v)),
        _ => true,
    }
}

fuzz_target!(|input: Input| {
    let limits = ReplyLimits {
        max_bulk: usize::from(input.max_bulk % 64),
        max_array: usize::from(input.max_array % 8),
        max_depth: 1 + usize::from(input.max_depth % 4),
    };
    // A line waiting for its end, or a bulk string with its header waiting
    // for its data.
    let bound = MAX_LINE.max(limits.max_bulk + 2 + 24);

    let mut chunked = Vec::new();
    let mut d = ReplyDecoder::new(limits);
    let mut cuts = input.cuts.iter().cycle();
    let mut rest = &input.data[..];
    while !rest.is_empty() {
        let n = cuts
            .next()
            .map_or(rest.len(), |&c| usize::from(c).max(1))
            .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.feed(chunk);
        if !drain(&mut d, bound, &mut chunked) {
            break;
        }
    }

    let mut whole = Vec::new();
    let mut w = ReplyDecoder::new(limits);
    w.feed(&input.data);
    drain(&mut w, bound, &mut whole);
    assert_eq!(chunked, whole, "the decoding depends on how input is cut");

    for r in whole.into_iter().flatten().filter(encodable) {
        let mut out = BytesMut::new();
        r.encode_proto(Proto::Resp3, &mut out);
        let mut again = ReplyDecoder::new(limits);
        again.feed(&out);
        assert_eq!(again.next_reply(), Ok(Some(r)));
        assert_eq!(again.buffered(), 0);
    }
});
