//! The seed transcript typed into telnet, played through the proxy (a
//! `kv server` with a `kv proxy` in front of it) over a raw TCP socket.

use kv_tests::{play_seed_transcript, start_stack, Conn, SEED_TRANSCRIPT};

#[test]
fn seed_transcript_through_proxy_line_by_line() {
    let (_server, proxy) = start_stack(&[], &[]);
    let mut conn = Conn::connect(proxy.proxy_addr());
    play_seed_transcript(&mut conn);
    // The connection carries on after the transcript.
    assert_eq!(conn.cmd("get nobody"), "(nil)");
}

#[test]
fn seed_transcript_through_proxy_one_byte_per_write() {
    let (_server, proxy) = start_stack(&[], &[]);
    let mut conn = Conn::connect(proxy.proxy_addr());
    for (line, expected) in SEED_TRANSCRIPT {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        conn.send_bytewise(&bytes);
        let reply = conn.read_reply().join("\n");
        assert_eq!(&reply, expected, "reply to {line:?} sent byte by byte");
    }
}

#[test]
fn seed_transcript_with_telnet_negotiation_and_backspace() {
    let (_server, proxy) = start_stack(&[], &[]);
    let mut conn = Conn::connect(proxy.proxy_addr());
    // What telnet sends first: IAC DO SUPPRESS-GO-AHEAD, IAC WILL TERMINAL-TYPE.
    conn.send(b"\xff\xfd\x03\xff\xfb\x18PUT name Derek Moss\r\n");
    assert_eq!(conn.read_reply().join("\n"), "OK");
    assert_eq!(conn.cmd("put age 18"), "OK");
    // A typo corrected with backspace: `GEX`, BS, `T name`.
    conn.send(b"GEX\x08T name\r\n");
    assert_eq!(conn.read_reply().join("\n"), "\"Derek Moss\"");
    assert_eq!(conn.cmd("Put gender M"), "OK");
    assert_eq!(
        conn.cmd("dump"),
        "(3 pairs)\n\"age\" \"18\"\n\"gender\" \"M\"\n\"name\" \"Derek Moss\"",
        "reply to \"dump\" after telnet negotiation and a backspace correction"
    );
}
