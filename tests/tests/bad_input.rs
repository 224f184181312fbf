//! Hostile and broken input, against both the server and the proxy: each
//! bad connection gets an error (or is closed) and every other connection,
//! and the process, carry on.

use kv_tests::{start_proxy, start_server, start_stack, Conn, KvProcess, XorShift};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Runs `check` against a fresh server, then against a proxy in front of a
/// fresh server.
fn against_server_and_proxy(check: impl Fn(SocketAddr, &str)) {
    let (server, proxy) = start_stack(&[], &[]);
    check(server.server_addr(), "server");
    check(proxy.proxy_addr(), "proxy");
}

#[test]
fn line_over_64_kib_gets_redis_protocol_error_then_close() {
    against_server_and_proxy(|addr, what| {
        let mut conn = Conn::connect(addr);
        // The connection may close before all of it is written.
        let _ = conn.try_send(&vec![b'a'; 100 * 1024]);
        assert_eq!(
            conn.read_line(),
            "-ERR Protocol error: too big inline request",
            "reply to a 100 KiB line at the {what}"
        );
        conn.expect_closed();
        let mut newcomer = Conn::connect(addr);
        assert_eq!(newcomer.cmd("PING"), "PONG", "at the {what}");
    });
}

#[test]
fn random_binary_garbage_is_rejected_and_other_clients_are_unaffected() {
    against_server_and_proxy(|addr, what| {
        let mut bystander = Conn::connect(addr);
        assert_eq!(bystander.cmd("PING"), "PONG");

        let mut attacker = Conn::connect(addr);
        let garbage = XorShift::new(0x5EED_CAFE_F00D_0001).bytes(64 * 1024);
        // The server may close the connection part-way (a RESP protocol
        // error); a failed write then is expected.
        let _ = attacker.try_send(&garbage);
        attacker.shutdown_write();
        let received = attacker.expect_closed();
        let text = String::from_utf8_lossy(&received);
        // Only complete lines are judged: a reset may cut the last one.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        for line in complete.split('\n').map(|l| l.trim_end_matches('\r')) {
            assert!(
                line.starts_with("(error) ") || line.starts_with("-ERR") || line.starts_with('-'),
                "a reply to garbage at the {what} that is not an error: {line:?}\nall: {text:?}"
            );
        }

        assert_eq!(
            bystander.cmd("PUT still fine"),
            "OK",
            "bystander at the {what}"
        );
        assert_eq!(
            bystander.cmd("GET still"),
            "\"fine\"",
            "bystander at the {what}"
        );
        let mut newcomer = Conn::connect(addr);
        assert_eq!(
            newcomer.cmd("GET still"),
            "\"fine\"",
            "new client at the {what}"
        );
    });
}

#[test]
fn unknown_command_gets_an_error_and_the_connection_carries_on() {
    against_server_and_proxy(|addr, what| {
        let mut conn = Conn::connect(addr);
        assert_eq!(
            conn.cmd("FROB"),
            "(error) ERR unknown command 'FROB'",
            "at the {what}"
        );
        assert_eq!(
            conn.cmd("FROB with args"),
            "(error) ERR unknown command 'FROB'",
            "at the {what}"
        );
        assert_eq!(conn.cmd("PING"), "PONG", "at the {what}");
        assert_eq!(conn.cmd("PUT k v"), "OK", "at the {what}");
        assert_eq!(conn.cmd("GET k"), "\"v\"", "at the {what}");
    });
}

#[test]
fn client_disconnecting_mid_command_does_not_disturb_others() {
    against_server_and_proxy(|addr, what| {
        let mut other = Conn::connect(addr);
        assert_eq!(other.cmd("PING"), "PONG");
        {
            let mut half = Conn::connect(addr);
            half.send(b"PUT half");
        } // disconnects without a newline
        assert_eq!(other.cmd("PUT whole yes"), "OK", "at the {what}");
        assert_eq!(other.cmd("GET whole"), "\"yes\"", "at the {what}");
        assert_eq!(other.cmd("GET half"), "(nil)", "at the {what}");
        let mut newcomer = Conn::connect(addr);
        assert_eq!(newcomer.cmd("GET whole"), "\"yes\"", "at the {what}");
    });
}

#[test]
fn malformed_resp_gets_protocol_error_then_close() {
    against_server_and_proxy(|addr, what| {
        let mut conn = Conn::connect(addr);
        conn.send(b"*1\r\n:5\r\n");
        assert_eq!(
            conn.read_line(),
            "-ERR Protocol error: expected '$', got ':'",
            "at the {what}"
        );
        let rest = conn.expect_closed();
        assert!(
            rest.is_empty(),
            "bytes after the protocol error at the {what}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        let mut newcomer = Conn::connect(addr);
        assert_eq!(newcomer.cmd("PING"), "PONG", "at the {what}");
    });
}

/// Connects a client that stalls mid-command, and checks it is closed after
/// roughly the idle timeout (1 s) while an idle-but-active client still works.
fn check_stalled_client_is_closed(process: &KvProcess, addr: SocketAddr, what: &str) {
    let mut stalled = Conn::connect(addr);
    let start = Instant::now();
    stalled.send(b"PUT stalled");
    let rest = stalled.expect_closed_within(Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "the {what} closed a stalled client after {took:?}, before its --idle-timeout 1s"
    );
    assert!(
        rest.is_empty() || String::from_utf8_lossy(&rest).contains("ERR"),
        "the {what} sent a non-error before closing a stalled client: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let mut newcomer = Conn::connect(addr);
    assert_eq!(
        newcomer.cmd("PING"),
        "PONG",
        "at the {what} ({:?})",
        process.args()
    );
}

#[test]
fn idle_timeout_closes_a_client_stalled_mid_command() {
    let server = start_server(&["--idle-timeout", "1s"]);
    check_stalled_client_is_closed(&server, server.server_addr(), "server");

    let proxy = start_proxy(server.server_addr(), &["--idle-timeout", "1s"]);
    check_stalled_client_is_closed(&proxy, proxy.proxy_addr(), "proxy");
}

/// A client that drips one command a byte at a time, each byte well within
/// the idle timeout of the last, is cut off once the command has taken the
/// idle timeout (2 s) since its first byte, at the server and the proxy;
/// others carry on.
fn check_dripping_client_is_cut_off(addr: SocketAddr, what: &str) {
    use std::io::Write;
    let mut dripping = Conn::connect(addr);
    let mut writer = dripping.stream().try_clone().expect("clone the socket");
    let start = Instant::now();
    let drip = std::thread::spawn(move || {
        // The drip's pace is the point of the test, not a wait: a byte
        // every 300 ms for at most 10 s, until the peer closes.
        for b in b"PUT dripping "
            .iter()
            .chain(std::iter::repeat(&b'x'))
            .take(33)
        {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let rest = dripping.expect_closed_within(Duration::from_secs(8));
    let took = start.elapsed();
    println!("the {what} cut off a client dripping one command after {took:?} (--idle-timeout 2s)");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "the {what} closed the dripping client after {took:?}"
    );
    assert!(
        rest.is_empty() || String::from_utf8_lossy(&rest).contains("ERR"),
        "the {what} sent a non-error before closing: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let _ = drip.join();
    let mut other = Conn::connect(addr);
    assert_eq!(other.cmd("PING"), "PONG", "at the {what}");
}

#[test]
fn a_command_dripped_byte_by_byte_is_cut_off_at_the_idle_timeout_of_its_start() {
    let server = start_server(&["--idle-timeout", "2s"]);
    check_dripping_client_is_cut_off(server.server_addr(), "server");
    let proxy = start_proxy(server.server_addr(), &["--idle-timeout", "2s"]);
    check_dripping_client_is_cut_off(proxy.proxy_addr(), "proxy");
}
