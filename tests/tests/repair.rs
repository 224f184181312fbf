//! `kv server --repair` against the real binary, on a log of a million
//! records that the server wrote itself: one flipped byte near the start
//! stops a plain start with an error naming the offset; `--repair` skips
//! the damaged record, keeps every other one, and rewrites the log so that
//! the next plain start is clean and gives the same data.

use kv_tests::{run_kv, scratch_dir, start_server_on, Conn};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const LOG: &str = "appendonly.kv";
const RECORDS: usize = 1_000_000;
/// Commands sent before reading their replies.
const BATCH: usize = 10_000;

fn key(i: usize) -> String {
    format!("key{i:07}")
}

fn value(i: usize) -> String {
    format!("v{}-{i}", i.wrapping_mul(2_654_435_761) % 1_000_003)
}

/// Reads raw reply bytes until `lines` whole lines have come, checking that
/// each is `OK` (the per-line reader of the harness is built for short
/// exchanges, not a million replies).
fn read_oks(stream: &mut std::net::TcpStream, lines: usize) {
    let mut seen = 0;
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while seen < lines {
        let n = stream.read(&mut chunk).expect("reading replies");
        assert!(
            n > 0,
            "the server closed the connection after {seen} replies"
        );
        pending.extend_from_slice(&chunk[..n]);
        let whole = pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        for line in pending[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            assert_eq!(line, b"OK\r", "reply {seen}");
            seen += 1;
        }
        pending.drain(..whole);
    }
    assert!(pending.is_empty(), "no reply beyond those asked for");
}

/// Writes `RECORDS` distinct keys with pipelined `PUT`s.
fn fill(addr: SocketAddr) {
    let conn = Conn::connect(addr);
    let mut stream = conn.stream().try_clone().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = String::with_capacity(BATCH * 40);
    for start in (0..RECORDS).step_by(BATCH) {
        req.clear();
        for i in start..(start + BATCH).min(RECORDS) {
            req.push_str(&format!("PUT {} {}\r\n", key(i), value(i)));
        }
        stream.write_all(req.as_bytes()).unwrap();
        read_oks(&mut stream, (start + BATCH).min(RECORDS) - start);
    }
}

/// Where each record starts (walking the length fields after the 8-byte
/// file header; 12-byte record headers whose first 4 bytes are the body
/// length).
fn record_offsets(log: &[u8]) -> Vec<usize> {
    let mut at = 8;
    let mut starts = Vec::new();
    while at + 12 <= log.len() {
        starts.push(at);
        at += 12 + u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
    }
    assert_eq!(at, log.len(), "the log ends on a record boundary");
    starts
}

fn dbsize(addr: SocketAddr) -> usize {
    let reply = Conn::connect(addr).cmd("DBSIZE");
    reply
        .strip_prefix("(integer) ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("DBSIZE: {reply:?}"))
}

/// `GET` of each key in `keys`, pipelined: the value, or `None`.
fn get_all(addr: SocketAddr, keys: &[usize]) -> HashMap<usize, Option<String>> {
    let mut conn = Conn::connect(addr);
    let mut out = HashMap::new();
    for batch in keys.chunks(500) {
        let req: String = batch
            .iter()
            .map(|&i| format!("GET {}\r\n", key(i)))
            .collect();
        conn.send(req.as_bytes());
        for &i in batch {
            let line = conn.read_line();
            let got = match line.as_str() {
                "(nil)" => None,
                quoted => Some(
                    quoted
                        .strip_prefix('"')
                        .and_then(|s| s.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("GET {}: {quoted:?}", key(i)))
                        .to_string(),
                ),
            };
            out.insert(i, got);
        }
    }
    out
}

#[test]
fn repair_of_one_flipped_byte_keeps_the_other_million_records() {
    let dir = scratch_dir("repair-million");
    // No automatic rewrite: the log must hold one record per write.
    let s = start_server_on(&dir, &["--fsync", "no", "--aof-rewrite-percentage", "0"]);
    let t = Instant::now();
    fill(s.server_addr());
    let fill_time = t.elapsed();
    assert_eq!(dbsize(s.server_addr()), RECORDS);
    s.stop_cleanly(Duration::from_secs(30));

    let path = dir.join(LOG);
    let mut log = fs::read(&path).unwrap();
    let starts = record_offsets(&log);
    assert_eq!(starts.len(), RECORDS, "one record per PUT");
    println!(
        "wrote {RECORDS} records ({} bytes) in {fill_time:.2?}",
        log.len()
    );
    // Offset 8: the first record's length field.
    log[8] ^= 0x01;
    fs::write(&path, &log).unwrap();

    // Without --repair: the start stops, names the offset, changes nothing.
    let dir_arg = dir.to_str().unwrap();
    let out = run_kv(
        ["server", "--listen", "127.0.0.1:0", "--data-dir", dir_arg],
        Duration::from_secs(60),
    );
    assert_ne!(out.code(), Some(0), "a damaged log must stop the start");
    assert!(
        out.stderr.contains("corrupt at byte offset 8 ") && out.stderr.contains("--repair"),
        "the error names the offset and the way out: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("listening on"), "{out:?}");
    assert!(
        fs::read(&path).unwrap() == log,
        "nothing changed without --repair"
    );
    println!("without --repair: {}", out.stderr.trim());

    let t = Instant::now();
    let s = start_server_on(&dir, &["--repair"]);
    let repair_time = t.elapsed();
    let kept = dbsize(s.server_addr());
    let stderr = s.stderr_text();
    let range = format!("skipped damaged bytes 8..{} ", starts[1]);
    assert!(
        stderr.contains(&range) && stderr.contains(&format!("kept {} valid records", RECORDS - 1)),
        "--repair says what it skipped and kept:\n{stderr}"
    );
    assert!(kept >= 999_990, "kept {kept}");
    assert_eq!(kept, RECORDS - 1, "only the damaged record is lost");
    let mut sample: Vec<usize> = (0..20).chain((0..RECORDS).step_by(997)).collect();
    sample.push(RECORDS - 1);
    let got = get_all(s.server_addr(), &sample);
    for &i in &sample {
        let want = (i != 0).then(|| value(i));
        assert_eq!(got[&i], want, "{}", key(i));
    }
    s.stop_cleanly(Duration::from_secs(30));
    let repaired = fs::metadata(&path).unwrap().len();
    let dropped = log.len() as u64 - repaired;
    assert_eq!(dropped, (starts[1] - starts[0]) as u64);

    let t = Instant::now();
    let s = start_server_on(&dir, &[]);
    let plain_time = t.elapsed();
    assert_eq!(dbsize(s.server_addr()), kept, "the repaired log is clean");
    let stderr = s.stderr_text();
    assert!(
        !stderr.contains("damaged") && !stderr.contains("dropped"),
        "{stderr}"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), repaired);
    s.stop_cleanly(Duration::from_secs(30));
    println!(
        "--repair: kept {kept} of {RECORDS} records, dropped {dropped} bytes (8..{}), \
         {} values checked; start with --repair {repair_time:.2?}, next plain start {plain_time:.2?}",
        starts[1],
        sample.len()
    );
    let _ = fs::remove_dir_all(&dir);
}
