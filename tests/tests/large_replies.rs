//! Large replies and the clients around them: a `DUMP` of 500,000 keys goes
//! out a piece at a time, so other clients are served while it does (at
//! the server and through the proxy); clients that ask for one and never
//! read it are cut off at their output-buffer limit and counted, with the
//! memory of the server and of the proxy bounded by that limit; and
//! `DUMP`s whose clients went away cost the proxy's other clients nothing.

use kv_tests::{
    info_field, proc_status_bytes, reset_peak_rss, start_server, start_stack, vm_rss_bytes,
    wait_until, Conn, IO_TIMEOUT,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

const KEYS: usize = 500_000;

/// The tests here measure how long clients wait: they run one at a time,
/// not beside each other on the machine's cores.
static ALONE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn key(i: usize) -> String {
    format!("key:{i:06}")
}

/// Stores [`KEYS`] keys with `MSET`s of a thousand pairs, pipelined.
fn load(addr: SocketAddr) {
    let mut conn = Conn::connect(addr);
    let batches = KEYS / 1000;
    let mut wire = Vec::new();
    for b in 0..batches {
        wire.extend_from_slice(format!("*{}\r\n$4\r\nMSET\r\n", 1 + 2 * 1000).as_bytes());
        for i in b * 1000..(b + 1) * 1000 {
            let (k, v) = (key(i), format!("value-{i}"));
            wire.extend_from_slice(
                format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()).as_bytes(),
            );
        }
    }
    conn.send(&wire);
    for _ in 0..batches {
        assert_eq!(conn.read_line(), "+OK");
    }
}

/// A client of `addr` that makes one request a millisecond until `stop`
/// (`one` sends request `i` and reads and checks its reply); for each,
/// when it was due and when its reply came. Latency is counted from when
/// a request was due, not when it went out, so a stall counts for every
/// request it held up.
fn paced<F>(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    mut one: F,
) -> thread::JoinHandle<Vec<(Instant, Instant)>>
where
    F: FnMut(usize, &mut TcpStream, &mut BufReader<TcpStream>) + Send + 'static,
{
    thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut replies = BufReader::new(stream.try_clone().unwrap());
        let mut samples = Vec::new();
        let mut due = Instant::now();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            if now < due {
                // Pacing of the test's own schedule, not a wait for the
                // system under test.
                thread::sleep(due - now);
            }
            one(i, &mut stream, &mut replies);
            samples.push((due, Instant::now()));
            due += Duration::from_millis(1);
        }
        samples
    })
}

/// Pings `addr` a millisecond apart until `stop` (see [`paced`]).
fn pinger(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(Instant, Instant)>> {
    let mut line = String::new();
    paced(addr, stop, move |_, requests, replies| {
        requests.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        line.clear();
        replies.read_line(&mut line).expect("a reply to PING");
        assert_eq!(line, "+PONG\r\n");
    })
}

/// Sends `DUMP` and reads its whole RESP reply, checking that it holds
/// every key once, in order, with its value; when it was sent and when its
/// last bytes arrived.
fn dump_and_check(addr: SocketAddr) -> (Instant, Instant) {
    // The reply expected, byte for byte: compared once it is all in, so
    // that checking it takes no CPU from what is measured meanwhile.
    let mut expected = format!("*{}\r\n", 2 * KEYS).into_bytes();
    for i in 0..KEYS {
        let (k, v) = (key(i), format!("value-{i}"));
        expected.extend_from_slice(
            format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()).as_bytes(),
        );
    }
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = vec![0u8; expected.len()];
    let sent = Instant::now();
    stream.write_all(b"*1\r\n$4\r\nDUMP\r\n").unwrap();
    stream.read_exact(&mut got).expect("the whole reply");
    let done = Instant::now();
    if got != expected {
        let at = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "the reply differs from every pair in key order at byte {at}: {:?}",
            String::from_utf8_lossy(&got[at.saturating_sub(40)..(at + 40).min(got.len())])
        );
    }
    (sent, done)
}

/// What the pings due while the `DUMP` went out say, printed: how many,
/// and how long they waited (p50, p99, max). Returns the longest wait.
fn report(
    what: &str,
    samples: &[(Instant, Instant)],
    (sent, done): (Instant, Instant),
) -> Duration {
    let mut latencies: Vec<Duration> = samples
        .iter()
        .filter(|(due, _)| *due >= sent && *due < done)
        .map(|(due, got)| *got - *due)
        .collect();
    latencies.sort();
    assert!(
        latencies.len() >= 20,
        "{what}: the DUMP went by too fast to judge"
    );
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let max = *latencies.last().expect("pings");
    println!(
        "{what}: DUMP of {KEYS} keys took {:?}; {} pings due meanwhile: PING p50 {:?}, \
         p99 {:?}, max {max:?}",
        done - sent,
        latencies.len(),
        pct(0.5),
        pct(0.99),
    );
    max
}

#[test]
fn other_clients_are_served_while_a_dump_of_500k_keys_goes_out() {
    let _alone = alone();
    let (server, proxy) = start_stack(&["--in-memory"], &[]);
    load(server.server_addr());
    for (what, addr) in [("server", server.server_addr()), ("proxy", proxy.addr())] {
        let stop = Arc::new(AtomicBool::new(false));
        let pings = pinger(addr, stop.clone());
        let window = dump_and_check(addr);
        stop.store(true, Ordering::Relaxed);
        let longest = report(what, &pings.join().unwrap(), window);
        let took = window.1 - window.0;
        // A DUMP done in one go holds every other client up for about all
        // of its time; one done a step at a time (at the server) or passed
        // through a read at a time (at the proxy), for a step. The bound is
        // relative, and loose, so that a slow or busy machine (the pinger
        // shares two cores with the reader and the servers) does not fail
        // it: the figures above are the measure.
        assert!(
            longest * 4 < took,
            "{what}: a PING waited {longest:?}, a quarter or more of the DUMP's {took:?}"
        );
    }
}

const CLIENTS: u64 = 20;
const HARD: u64 = 16 << 20;
const LIMIT: &str = "16MiB 4MiB 1";

#[test]
fn unread_dumps_are_cut_off_at_the_output_limit_and_counted() {
    let _alone = alone();
    let server = start_server(&["--in-memory", "--client-output-buffer-limit", LIMIT]);
    let addr = server.server_addr();
    load(addr);
    unread_dumps("server", addr, server.pid());
}

#[test]
fn unread_dumps_through_the_proxy_are_cut_off_at_its_output_limit_and_counted() {
    let _alone = alone();
    let (server, proxy) = start_stack(&["--in-memory"], &["--client-output-buffer-limit", LIMIT]);
    load(server.server_addr());
    unread_dumps("proxy", proxy.addr(), proxy.pid());
}

/// Twenty clients of `addr` (process `pid`) ask for a `DUMP` and read
/// none of it: each is cut off and counted, and the process's memory grows
/// by no more than one client's output limit, plus 10%.
fn unread_dumps(what: &str, addr: SocketAddr, pid: u32) {
    reset_peak_rss(pid);
    let before = vm_rss_bytes(pid);
    let started = Instant::now();
    let mut unread: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            (&s).write_all(b"*1\r\n$4\r\nDUMP\r\n").unwrap();
            s
        })
        .collect();
    let mut watcher = Conn::connect(addr);
    let cut = |watcher: &mut Conn| {
        info_field(
            &watcher.cmd("INFO stats"),
            "client_output_buffer_limit_disconnections",
        )
        .expect("the counter in INFO stats")
    };
    wait_until(Duration::from_secs(60), "every unread DUMP cut off", || {
        cut(&mut watcher) == CLIENTS
    });
    let took = started.elapsed();
    let peak = proc_status_bytes(pid, "VmHWM");
    let growth = peak.saturating_sub(before);
    println!(
        "{what}: {CLIENTS} unread DUMPs of {KEYS} keys: all cut off after {took:?}; peak RSS \
         {:.1} MiB, {:.1} MiB over the {:.1} MiB before (output limit {:.0} MiB per client)",
        peak as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        before as f64 / 1048576.0,
        HARD as f64 / 1048576.0,
    );
    assert!(
        growth <= HARD + HARD / 10,
        "{what}: memory grew by {growth} bytes, more than the output limit plus 10%"
    );
    // Each was closed: reading what it was sent so far ends at EOF (or a
    // reset, the unsent rest having been dropped).
    for s in &mut unread {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // Everyone else carries on.
    assert_eq!(watcher.cmd("DBSIZE"), format!("(integer) {KEYS}"));
    assert_eq!(watcher.cmd("PING"), "PONG");
}

#[test]
fn forty_abandoned_dumps_cost_the_proxys_other_clients_nothing() {
    let _alone = alone();
    let (server, proxy) = start_stack(&["--in-memory"], &[]);
    load(server.server_addr());
    let addr = proxy.addr();
    // A client reading keys it has not read before (so none is cached),
    // one every millisecond, timed from when each was due.
    let stop = Arc::new(AtomicBool::new(false));
    let mut line = String::new();
    let reader = paced(addr, stop.clone(), move |i, requests, replies| {
        let n = i * 7 % KEYS;
        let k = key(n);
        let get = format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len());
        requests.write_all(get.as_bytes()).unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
        assert!(line.starts_with('$'), "GET {k}: {line:?}");
        line.clear();
        replies.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), format!("value-{n}"));
    });
    let mut admin = Conn::connect(addr);
    let stat = |admin: &mut Conn, name: &str| {
        info_field(&admin.cmd("INFO stats"), name).unwrap_or_else(|| panic!("no {name}"))
    };
    let requests_before = stat(&mut admin, "upstream_requests");
    // Forty clients ask for a DUMP of the 500,000 keys and go away.
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"*1\r\n$4\r\nDUMP\r\n").unwrap();
    }
    // The reader carries on for three seconds of it.
    let started = Instant::now();
    wait_until(Duration::from_secs(10), "three seconds of reads", || {
        started.elapsed() >= Duration::from_secs(3)
    });
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = reader
        .join()
        .expect("every GET answered with its value")
        .into_iter()
        .map(|(due, got)| got - due)
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let dumps_sent =
        stat(&mut admin, "upstream_requests") - requests_before - latencies.len() as u64;
    println!(
        "40 abandoned DUMPs of {KEYS} keys: {} uncached GETs meanwhile, p50 {:?}, p99 {:?}, \
         max {:?}; {dumps_sent} DUMPs sent upstream; upstream resets {}, timeouts {}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
        stat(&mut admin, "upstream_resets"),
        stat(&mut admin, "upstream_timeouts"),
    );
    assert_eq!(stat(&mut admin, "upstream_resets"), 0, "no upstream reset");
    assert_eq!(stat(&mut admin, "upstream_timeouts"), 0);
    assert!(
        dumps_sent < 40,
        "the DUMPs of clients gone before their turn are not sent: {dumps_sent} were"
    );
}
