//! Arbitrary bytes into a `ServerConnection` (small limits, chunks the
//! input chooses), driven as the native server drives it.
//!
//! Asserts that nothing panics, that the decoder stays bounded, that
//! nothing is answered after the connection asked to close, and, when every
//! request was RESP (so every reply is RESP too), that there is exactly one
//! reply per request, in order: the replies decode cleanly and there are as
//! many as the commands the server counted.

#![no_main]

use kv_core::{Decoder, Dialect, Limits, ReplyDecoder, Server, ServerConfig, ServerConnection};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    max_line: u8,
    max_key: u8,
    max_value: u8,
    max_args: u8,
    cuts: Vec<u8>,
    data: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_line: 1 + usize::from(input.max_line % 64),
        max_key: 1 + usize::from(input.max_key % 32),
        max_value: 1 + usize::from(input.max_value % 64),
        max_args: 1 + usize::from(input.max_args % 8),
    };
    let bound = (limits.max_line + 1).max(limits.max_bulk() + 1);
    let mut server = Server::new(ServerConfig {
        limits,
        hash_seed: 7,
        ..ServerConfig::default()
    });
    let mut conn = ServerConnection::new(limits);
    let mut out = Vec::new();
    let mut cuts = input.cuts.iter().cycle();
    let mut rest = &input.data[..];
    while !rest.is_empty() {
        let n = cuts
            .next()
            .map_or(rest.len(), |&c| usize::from(c).max(1))
            .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let closed = conn.should_close();
        let before = out.len();
        conn.handle_input(&mut server, chunk);
        loop {
            while let Some(b) = conn.poll_transmit() {
                out.extend_from_slice(&b);
            }
            if !conn.has_backlog() {
                break;
            }
            conn.process(&mut server);
        }
        if closed {
            assert_eq!(out.len(), before, "output after the connection closed");
        }
        assert!(conn.read_buffer().len() <= bound);
        assert_eq!(server.store().len(), server.store().dump(0).len());
    }

    // Which dialects were used, by decoding the same bytes on the side.
    let mut mirror = Decoder::new(limits);
    mirror.feed(&input.data);
    let mut all_resp = true;
    loop {
        match mirror.next_frame() {
            Ok(Some(frame)) => all_resp &= frame.dialect() == Dialect::Resp,
            Ok(None) => break,
            Err(e) => {
                all_resp &= e.dialect() == Dialect::Resp;
                if e.is_fatal() {
                    break;
                }
            }
        }
    }
    if all_resp {
        let mut replies = ReplyDecoder::default();
        replies.feed(&out);
        let mut n = 0u64;
        while let Some(_reply) = replies.next_reply().expect("RESP replies decode") {
            n += 1;
        }
        assert_eq!(replies.buffered(), 0, "a partial reply was sent");
        assert_eq!(n, server.stats().commands, "one reply per request");
    }
});
