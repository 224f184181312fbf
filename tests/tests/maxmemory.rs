//! The memory bound (`--maxmemory`) against the real binary: writes past
//! it are refused (`noeviction`) or evict (`allkeys-lru`, which keeps what
//! is read), the process's memory follows the bound, and a process limited
//! to little more than the bound in address space (`ulimit -v`) neither
//! aborts nor stops answering however much is written.

use kv_tests::{
    info_field, proc_status_bytes, resp_command, start_server, wait_until, Conn, KvProcess,
};
use std::time::{Duration, Instant};

const OOM: &str = "-OOM command not allowed when used memory > 'maxmemory'.";
const MIB: u64 = 1 << 20;
/// Values of 1,000 bytes: a write is about a KiB of data.
const VALUE_LEN: usize = 1000;
/// Commands sent before their replies are read.
const BATCH: u64 = 500;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn info(conn: &mut Conn, key: &str) -> u64 {
    let text = conn.cmd("INFO");
    info_field(&text, key).unwrap_or_else(|| panic!("no {key} in INFO:\n{text}"))
}

fn info_text(conn: &mut Conn, key: &str) -> String {
    let text = conn.cmd("INFO");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in INFO:\n{text}"))
        .to_owned()
}

/// How a batch of writes was answered.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    ok: u64,
    oom: u64,
}

/// `SET {prefix}{i} <value>` for `i` in `from..from + n`, pipelined in
/// batches; every reply must be `+OK` or the OOM error.
fn write(conn: &mut Conn, prefix: &str, from: u64, n: u64) -> Written {
    let value = vec![b'v'; VALUE_LEN];
    let mut w = Written::default();
    let mut i = from;
    while i < from + n {
        let count = BATCH.min(from + n - i);
        let mut batch = Vec::new();
        for j in i..i + count {
            let key = format!("{prefix}{j}");
            batch.extend(resp_command(&[b"SET", key.as_bytes(), &value]));
        }
        conn.send(&batch);
        for _ in 0..count {
            match conn.read_line().as_str() {
                "+OK" => w.ok += 1,
                OOM => w.oom += 1,
                other => panic!("unexpected reply to SET: {other:?}"),
            }
        }
        i += count;
    }
    w
}

/// `GET` of every key named, pipelined; how many were there.
fn present(conn: &mut Conn, keys: &[String]) -> usize {
    let mut found = 0;
    for chunk in keys.chunks(BATCH as usize) {
        let mut batch = Vec::new();
        for k in chunk {
            batch.extend(resp_command(&[b"GET", k.as_bytes()]));
        }
        conn.send(&batch);
        for k in chunk {
            let header = conn.read_line();
            if header == "$-1" {
                continue;
            }
            assert_eq!(header, format!("${VALUE_LEN}"), "GET {k}");
            assert_eq!(conn.read_bytes(VALUE_LEN + 2).len(), VALUE_LEN + 2);
            found += 1;
        }
    }
    found
}

/// A server with `args`, a connection that writes and reads in RESP, and
/// one that asks `INFO` and `CONFIG` inline (and so gets kv's readable
/// replies: a connection that has spoken RESP gets RESP).
fn server_with(args: &[&str]) -> (KvProcess, Conn, Conn) {
    let mut all = vec!["--in-memory"];
    all.extend_from_slice(args);
    let server = start_server(&all);
    let data = Conn::connect(server.server_addr());
    let admin = Conn::connect(server.server_addr());
    (server, data, admin)
}

#[test]
fn noeviction_refuses_writes_past_the_bound_and_reads_go_on() {
    let (server, mut c, mut a) =
        server_with(&["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
    assert_eq!(info(&mut a, "maxmemory"), 100 * MIB);
    assert_eq!(info_text(&mut a, "maxmemory_policy"), "noeviction");
    assert_eq!(info_text(&mut a, "mem_allocator"), "jemalloc-5.3.0");
    // About twice as much as fits.
    let w = write(&mut c, "key:", 0, 200_000);
    let used = info(&mut a, "used_memory");
    let rss = proc_status_bytes(server.pid(), "VmRSS");
    println!(
        "noeviction at 100 MiB: {} writes accepted, {} refused with OOM; used_memory {:.1} MiB \
         ({}), RSS {:.1} MiB",
        w.ok,
        w.oom,
        mib(used),
        info_text(&mut a, "used_memory_human"),
        mib(rss)
    );
    assert!(w.oom > 0, "writes past the bound are refused");
    assert!(
        w.ok > 50_000,
        "a 100 MiB bound holds more than 50,000 KiB values: {}",
        w.ok
    );
    // Refused only once at the bound: read after the burst, used memory
    // may be a little under it again (the burst's buffers given back).
    assert!(
        used >= 99 * MIB,
        "refused only once over: {:.1} MiB",
        mib(used)
    );
    // Over by at most what one batch adds before its commands are checked.
    assert!(used < 102 * MIB, "used_memory {:.1} MiB", mib(used));
    assert!(rss < 130 * MIB, "RSS {:.1} MiB", mib(rss));
    assert_eq!(info(&mut a, "evicted_keys"), 0);
    // Reads go on, and so do deletions, which make room again.
    let first: Vec<String> = (0..1000).map(|i| format!("key:{i}")).collect();
    assert_eq!(present(&mut c, &first), 1000);
    assert_eq!(
        a.cmd("DBSIZE"),
        format!("(integer) {}", w.ok),
        "every accepted write is kept"
    );
    // A few MiB: more than the connections' buffers hold after the reads.
    let some: Vec<String> = (0..2000).map(|i| format!("key:{i}")).collect();
    assert_eq!(a.cmd(&format!("DEL {}", some.join(" "))), "(integer) 2000");
    let again = write(&mut c, "again:", 0, 1);
    assert_eq!(again.ok, 1, "a deletion made room");
    assert_eq!(a.cmd("PING"), "PONG");
}

#[test]
fn allkeys_lru_evicts_and_keeps_the_keys_being_read() {
    let (server, mut c, mut a) =
        server_with(&["--maxmemory", "40mb", "--maxmemory-policy", "allkeys-lru"]);
    let hot: Vec<String> = (0..1000).map(|i| format!("hot:{i}")).collect();
    assert_eq!(write(&mut c, "hot:", 0, 1000).ok, 1000);
    // Five times what fits, with the hot keys read after every 2,000
    // writes, so that they are always among the most recently used.
    let (rounds, per_round) = (100, 2_000);
    let mut refused = 0;
    let started = Instant::now();
    for r in 0..rounds {
        refused += write(&mut c, "cold:", r * per_round, per_round).oom;
        present(&mut c, &hot);
    }
    let evicted = info(&mut a, "evicted_keys");
    let used = info(&mut a, "used_memory");
    let rss = proc_status_bytes(server.pid(), "VmRSS");
    let hot_left = present(&mut c, &hot);
    let sample = |range: std::ops::Range<u64>| -> Vec<String> {
        range.step_by(20).map(|i| format!("cold:{i}")).collect()
    };
    let written = rounds * per_round;
    let oldest = sample(0..written / 2);
    let newest = sample(written - 20_000..written);
    let (old_left, new_left) = (present(&mut c, &oldest), present(&mut c, &newest));
    println!(
        "allkeys-lru at 40 MiB: {written} writes in {:?}, evicted_keys {evicted}, used_memory \
         {:.1} MiB, RSS {:.1} MiB; hot keys left {hot_left}/1000, oldest half of the cold keys \
         left {old_left}/{}, newest 20,000 left {new_left}/{}",
        started.elapsed(),
        mib(used),
        mib(rss),
        oldest.len(),
        newest.len()
    );
    assert_eq!(
        refused, 0,
        "with a policy that may evict, no write is refused"
    );
    assert!(evicted > written / 2, "evicted_keys {evicted}");
    assert!(used < 42 * MIB, "used_memory {:.1} MiB", mib(used));
    assert!(
        hot_left >= 950,
        "only {hot_left} of the 1,000 hot keys survived"
    );
    assert!(
        old_left * 100 <= oldest.len(),
        "{old_left} of {} of the oldest cold keys survived",
        oldest.len()
    );
    assert!(
        new_left * 10 >= newest.len() * 9,
        "{new_left} of the newest survived"
    );
    // CONFIG SET changes the bound at run time.
    assert_eq!(a.cmd("CONFIG SET maxmemory 20mb"), "OK");
    assert_eq!(info(&mut a, "maxmemory"), 20 * MIB);
    wait_until(
        Duration::from_secs(10),
        "used memory falls under a lowered bound",
        || info(&mut a, "used_memory") <= 21 * MIB,
    );
    assert_eq!(a.cmd("CONFIG SET maxmemory-policy noeviction"), "OK");
    assert_eq!(info_text(&mut a, "maxmemory_policy"), "noeviction");
    assert!(write(&mut c, "more:", 0, 40_000).oom > 0);
}

/// Sets the address-space limit (`ulimit -v`) of a running process.
fn limit_address_space(pid: u32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: prlimit reads the struct given and writes nothing (no old
    // limit asked for).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_AS,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn with_little_address_space_beyond_the_bound_nothing_aborts() {
    let bound = 64 * MIB;
    let (mut server, mut c, mut a) =
        server_with(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
    assert_eq!(a.cmd("PING"), "PONG");
    let baseline = proc_status_bytes(server.pid(), "VmSize");
    let margin = 32 * MIB;
    let limit = baseline + bound + margin;
    limit_address_space(server.pid(), limit);
    println!(
        "address space: baseline {:.1} MiB + bound {:.1} MiB + margin {:.1} MiB = limit {:.1} MiB",
        mib(baseline),
        mib(bound),
        mib(margin),
        mib(limit)
    );
    // Four times the bound: refused once full, and the process lives on.
    let w = write(&mut c, "a:", 0, 4 * bound / VALUE_LEN as u64);
    assert!(w.oom > 0 && w.ok > 0, "{w:?}");
    assert_eq!(a.cmd("PING"), "PONG");
    let size = proc_status_bytes(server.pid(), "VmSize");
    println!(
        "noeviction: {} writes accepted, {} refused; VmSize {:.1} MiB of the {:.1} MiB allowed",
        w.ok,
        w.oom,
        mib(size),
        mib(limit)
    );
    // Now evicting: another four times the bound all goes in.
    assert_eq!(a.cmd("CONFIG SET maxmemory-policy allkeys-lru"), "OK");
    let w = write(&mut c, "b:", 0, 4 * bound / VALUE_LEN as u64);
    assert_eq!(w.oom, 0, "{w:?}");
    assert_eq!(a.cmd("PING"), "PONG");
    let evicted = info(&mut a, "evicted_keys");
    let size = proc_status_bytes(server.pid(), "VmSize");
    println!(
        "allkeys-lru: {} writes accepted, evicted_keys {evicted}; VmSize {:.1} MiB, RSS {:.1} MiB",
        w.ok,
        mib(size),
        mib(proc_status_bytes(server.pid(), "VmRSS"))
    );
    assert!(evicted > 0);
    assert!(!server.has_exited(), "the server is still up");
}
