//! Many concurrent clients through the proxy, and the server's
//! `--max-clients` limit.

use kv_tests::{info_field, raise_fd_limit, start_server, start_stack, wait_for, Conn};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

const THREADS: usize = 8;
const PER_THREAD: usize = 125;
const CLIENTS: usize = THREADS * PER_THREAD;

#[test]
fn thousand_concurrent_clients_through_proxy_each_read_their_own_writes() {
    // Our 1,000 sockets, and the proxy's 1,000 (it inherits this limit).
    raise_fd_limit(4096);
    let (_server, proxy) = start_stack(&[], &[]);
    let addr = proxy.proxy_addr();

    // Everyone opens all their connections, waits until all 1,000 are open,
    // does the work, and keeps them open until the count is checked. A
    // failing client thread records its failure instead of unwinding, so
    // the barriers never wait for a thread that is gone.
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let opened = Arc::new(Barrier::new(THREADS + 1));
    let done = Arc::new(Barrier::new(THREADS + 1));
    let release = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (opened, done, release) = (opened.clone(), done.clone(), release.clone());
            let failures = failures.clone();
            thread::spawn(move || {
                let record = |e: Box<dyn std::any::Any + Send>| {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".to_string());
                    failures.lock().unwrap().push(format!("thread {t}: {msg}"));
                };
                let ids: Vec<usize> = (t * PER_THREAD..(t + 1) * PER_THREAD).collect();
                let conns = catch_unwind(|| ids.iter().map(|_| Conn::connect(addr)).collect());
                let mut conns: Vec<Conn> = conns.unwrap_or_else(|e| {
                    record(e);
                    Vec::new()
                });
                opened.wait();
                let work = catch_unwind(AssertUnwindSafe(|| {
                    // Send everything first, then read every reply.
                    for (conn, i) in conns.iter_mut().zip(&ids) {
                        conn.send(format!("PUT key{i} value{i}\r\nGET key{i}\r\n").as_bytes());
                    }
                    for (conn, i) in conns.iter_mut().zip(&ids) {
                        assert_eq!(conn.read_line(), "OK", "PUT reply of client {i}");
                        assert_eq!(
                            conn.read_line(),
                            format!("\"value{i}\""),
                            "GET reply of client {i}"
                        );
                    }
                }));
                if let Err(e) = work {
                    record(e);
                }
                done.wait();
                release.wait();
                drop(conns);
            })
        })
        .collect();
    opened.wait();
    done.wait();
    let failed = failures.lock().unwrap().clone();
    if !failed.is_empty() {
        release.wait();
        for w in workers {
            let _ = w.join();
        }
        panic!(
            "{} client thread(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    // All 1,000 are still open: the proxy counts them (plus this one).
    let mut probe = Conn::connect(addr);
    let info = probe.cmd("INFO");
    let clients = info_field(&info, "clients")
        .unwrap_or_else(|| panic!("no clients field in proxy INFO:\n{info}"));
    assert!(
        clients > CLIENTS as u64,
        "proxy INFO clients:{clients} while {CLIENTS} clients and the probe are connected"
    );
    // Spot-check that the writes landed.
    assert_eq!(probe.cmd("GET key0"), "\"value0\"");
    assert_eq!(
        probe.cmd(&format!("GET key{}", CLIENTS - 1)),
        format!("\"value{}\"", CLIENTS - 1)
    );
    release.wait();
    for w in workers {
        w.join().expect("a client thread failed");
    }
}

#[test]
fn server_max_clients_rejects_the_extra_client_until_one_leaves() {
    let server = start_server(&["--max-clients", "5"]);
    let addr = server.server_addr();

    let mut conns: Vec<Conn> = (0..5).map(|_| Conn::connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.cmd("PING"), "PONG", "client {i} of 5");
    }

    let mut sixth = Conn::connect(addr);
    assert_eq!(sixth.read_line(), "-ERR max number of clients reached");
    let rest = sixth.expect_closed();
    assert!(rest.is_empty(), "bytes after the rejection: {rest:?}");

    // The five still work.
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.cmd(&format!("PUT c{i} v{i}")), "OK");
    }

    // Once one leaves, a new client gets in (as soon as the server noticed).
    drop(conns.remove(0));
    let mut newcomer = wait_for(
        Duration::from_secs(10),
        "a new client is accepted after one of the 5 left",
        || {
            let mut c = Conn::connect(addr);
            c.send_line("PING");
            match c.read_line().as_str() {
                "PONG" => Some(c),
                "-ERR max number of clients reached" => None,
                other => panic!("unexpected reply to PING: {other:?}"),
            }
        },
    );
    assert_eq!(newcomer.cmd("GET c1"), "\"v1\"");
    for c in conns.iter_mut() {
        assert_eq!(c.cmd("PING"), "PONG");
    }
}
