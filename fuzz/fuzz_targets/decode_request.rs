//! Arbitrary bytes into the request `Decoder`, with small limits (so that
//! every limit is hit by small inputs) and cut into chunks the input also
//! chooses.
//!
//! Asserts that:
//! - decoding never panics, and after "need more input" the decoder buffers
//!   no more than the largest limit (plus a line ending): a peer cannot
//!   make it grow without bound;
//! - the frames and errors do not depend on how the bytes were cut;
//! - a fatal error stops the decoder for good;
//! - an inline frame's quotes balance as `Command::from_inline` splits it
//!   (the decoder refuses the others), so it never falls back to splitting
//!   on blanks alone;
//! - every frame goes through `Command::from_frame` without a panic, and a
//!   command, encoded as RESP, decodes back to itself;
//! - a command the proxy forwards upstream (`GET`, `SET`, `DEL`, `DUMP`)
//!   fits, once re-encoded as RESP, within the limits it was accepted under
//!   (the server's, in a deployment with one set of limits).

#![no_main]

use bytes::BytesMut;
use kv_core::{Command, DecodeError, Decoder, Frame, Limits};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    max_line: u8,
    max_key: u8,
    max_value: u8,
    max_args: u8,
    /// Chunk lengths, used in turn until the data runs out.
    cuts: Vec<u8>,
    data: Vec<u8>,
}

type Decoded = Vec<Result<Frame, DecodeError>>;

/// Decodes everything buffered, checking the buffering bound whenever the
/// decoder asks for more input.
fn drain(d: &mut Decoder, bound: usize, out: &mut Decoded) {
    loop {
        match d.next_frame() {
            Ok(Some(frame)) => out.push(Ok(frame)),
            Ok(None) => {
                assert!(
                    d.buffered() <= bound,
                    "{} bytes buffered, bound {bound}",
                    d.buffered()
                );
                return;
            }
            Err(e) => {
                let fatal = e.is_fatal();
                out.push(Err(e));
                if fatal {
                    assert!(d.has_failed());
                    assert_eq!(d.buffered(), 0);
                    return;
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_line: 1 + usize::from(input.max_line % 64),
        max_key: 1 + usize::from(input.max_key % 32),
        max_value: 1 + usize::from(input.max_value % 64),
        max_args: 1 + usize::from(input.max_args % 8),
    };
    // What may stay buffered while waiting: part of an inline line or of a
    // header line (either with its `\r`), or part of a bulk string (with
    // its `\r`).
    let bound = (limits.max_line + 1).max(limits.max_bulk() + 1);

    let mut chunked = Vec::new();
    let mut d = Decoder::new(limits);
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
        drain(&mut d, bound, &mut chunked);
    }

    let mut whole = Vec::new();
    let mut w = Decoder::new(limits);
    w.feed(&input.data);
    drain(&mut w, bound, &mut whole);
    assert_eq!(chunked, whole, "the decoding depends on how input is cut");

    for frame in whole.into_iter().flatten() {
        if let Frame::Inline(line) = &frame {
            assert_eq!(Command::check_inline(line), Ok(()), "{line:?}");
        }
        let Ok(cmd) = Command::from_frame(frame, &limits) else {
            continue;
        };
        // Encoding fidelity, whatever the argument count.
        let unlimited = Limits {
            max_args: usize::MAX,
            ..limits
        };
        assert_eq!(decode_one(&cmd, unlimited), Ok(cmd.clone()));
        // What the proxy forwards must pass the server's limits. (Inline
        // commands used to escape `max_args`: see
        // core/tests/fuzz_regressions.rs.)
        let forwarded = cmd.spec().is_data();
        if forwarded {
            assert_eq!(decode_one(&cmd, limits), Ok(cmd.clone()));
        }
    }
});

/// Encodes `cmd` as RESP and decodes it back under `limits`.
fn decode_one(cmd: &Command, limits: Limits) -> Result<Command, String> {
    let mut out = BytesMut::new();
    cmd.encode_resp(&mut out);
    let mut d = Decoder::new(limits);
    d.feed(&out);
    let frame = match d.next_frame() {
        Ok(Some(frame)) => frame,
        other => return Err(format!("{other:?}")),
    };
    assert_eq!(d.next_frame(), Ok(None), "one command encodes as one frame");
    assert_eq!(d.buffered(), 0);
    Command::from_frame(frame, &limits).map_err(|e| e.to_string())
}
