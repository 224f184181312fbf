//! The proxy in front of a Redis Cluster (`--upstream-cluster`): a local
//! cluster of three masters with a replica each, from Debian's
//! `redis-server`, and one kv proxy in front of it, caching for a minute.
//!
//! One cluster serves every phase, in order (each takes seconds to set up):
//! 10,000 keys across the slots, multi-key commands split by slot, hash
//! tags, transactions, invalidation of a key written straight at its
//! master, a resharding of 1,000 slots under load, and a master killed
//! under load. Each phase prints what it measured.

use kv_tests::RedisCluster;
use kv_tests::{
    http_get, info_field, resp_command, start_proxy, up_args, wait_until, Conn, KvProcess, Value,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Status("OK".into())
}

fn call(c: &mut Conn, args: &[&str]) -> Value {
    c.call_resp2(args)
}

/// A proxy in front of the cluster, caching for a minute, once it has
/// read the slot map and the main lane is tracked.
fn cluster_proxy(cluster: &RedisCluster) -> KvProcess {
    let seeds = cluster.seeds();
    // `--upstream` is ignored with a cluster: any address will do.
    let proxy = start_proxy(
        "127.0.0.1:1".parse().unwrap(),
        &["--upstream-cluster", &seeds, "--cache-ttl", "60s"],
    );
    let mut c = Conn::connect(proxy.addr());
    wait_until(
        Duration::from_secs(10),
        "the proxy reads the cluster",
        || call(&mut c, &["SET", "probe", "1"]) == ok(),
    );
    wait_until(
        Duration::from_secs(10),
        "the main lane is tracked",
        || match call(&mut c, &["INFO", "tracking"]) {
            Value::Bulk(t) => String::from_utf8_lossy(&t).contains("upstream_main_tracking:on"),
            _ => false,
        },
    );
    proxy
}

/// Sends every command in one write and reads every reply.
fn pipeline(c: &mut Conn, commands: &[Vec<String>]) -> Vec<Value> {
    let mut out = Vec::new();
    for args in commands {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        out.extend(resp_command(&args));
    }
    c.send(&out);
    commands.iter().map(|_| c.read_value()).collect()
}

fn dbsize(addr: SocketAddr) -> i64 {
    match Conn::connect(addr).call_resp2(&["DBSIZE"]) {
        Value::Integer(n) => n,
        other => panic!("DBSIZE at {addr}: {other:?}"),
    }
}

#[test]
fn the_proxy_in_front_of_a_redis_cluster() {
    let Some(mut cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let proxy = cluster_proxy(&cluster);
    let mut c = Conn::connect(proxy.addr());
    assert_eq!(call(&mut c, &["DEL", "probe"]), Value::Integer(1));

    ten_thousand_keys(&cluster, &mut c);
    multi_key_commands(&mut c);
    hash_tags_and_transactions(&cluster, &mut c);
    a_write_at_the_master_invalidates_the_cached_key(&cluster, &mut c);
    kv_up_in_front_of_the_cluster(&cluster);
    resharding_under_load(&cluster, &proxy);
    failover_under_load(&mut cluster, &proxy);
}

/// `kv up --upstream-cluster` starts the proxy and the console, and no
/// server: what is written through it is in the cluster.
fn kv_up_in_front_of_the_cluster(cluster: &RedisCluster) {
    let seeds = cluster.seeds();
    let up = KvProcess::spawn(up_args(&["--upstream-cluster", &seeds]));
    assert!(
        !up.stdout_text().contains("kv server listening"),
        "no server of kv's: {}",
        up.stdout_text()
    );
    let mut c = Conn::connect(up.proxy_addr());
    wait_until(Duration::from_secs(10), "kv up reads the cluster", || {
        call(&mut c, &["SET", "up:key", "through kv up"]) == ok()
    });
    let master = cluster.master_for_slot(cluster.key_slot("up:key"));
    assert_eq!(
        Conn::connect(master).call_resp2(&["GET", "up:key"]),
        bulk("through kv up")
    );
    let page = http_get(up.console_addr(), "/");
    assert_eq!(page.status, 200, "the console is served");
    println!("kv up in front of the cluster: proxy and console, no server");
}

/// 10,000 keys written and read back through the proxy land on every
/// master, across the slots.
fn ten_thousand_keys(cluster: &RedisCluster, c: &mut Conn) {
    let started = Instant::now();
    let sets: Vec<Vec<String>> = (0..10_000)
        .map(|i| vec!["SET".into(), format!("key:{i}"), format!("value {i}")])
        .collect();
    assert!(pipeline(c, &sets).iter().all(|r| *r == ok()));
    let gets: Vec<Vec<String>> = (0..10_000)
        .map(|i| vec!["GET".into(), format!("key:{i}")])
        .collect();
    for (i, reply) in pipeline(c, &gets).into_iter().enumerate() {
        assert_eq!(reply, bulk(&format!("value {i}")), "key:{i}");
    }
    let masters = cluster.masters();
    let per_master: Vec<i64> = masters.iter().map(|m| dbsize(*m)).collect();
    assert_eq!(per_master.iter().sum::<i64>(), 10_000, "{per_master:?}");
    assert!(per_master.iter().all(|n| *n > 2_000), "{per_master:?}");
    // The slots, as a node computes them.
    let keyslots: Vec<Vec<String>> = (0..10_000)
        .map(|i| vec!["CLUSTER".into(), "KEYSLOT".into(), format!("key:{i}")])
        .collect();
    let mut slots: Vec<Value> = pipeline(&mut Conn::connect(masters[0]), &keyslots);
    slots.sort_by_key(|v| match v {
        Value::Integer(n) => *n,
        _ => -1,
    });
    slots.dedup();
    assert!(slots.len() > 7_000, "{} slots", slots.len());
    assert_eq!(call(c, &["DBSIZE"]), Value::Integer(10_000));
    println!(
        "10,000 keys over {} slots ({per_master:?} per master): written and read back in {:.2} s",
        slots.len(),
        started.elapsed().as_secs_f64()
    );
}

/// MGET, MSET, DEL, UNLINK, EXISTS and TOUCH across slots are split by
/// slot and their replies put together.
fn multi_key_commands(c: &mut Conn) {
    let keys: Vec<String> = (0..50).map(|i| format!("multi:{i}")).collect();
    let mut mset = vec!["MSET"];
    let values: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for (k, v) in keys.iter().zip(&values) {
        mset.push(k);
        mset.push(v);
    }
    assert_eq!(call(c, &mset), ok());
    let mut mget: Vec<&str> = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("multi:missing");
    let mut expected: Vec<Value> = values.iter().map(|v| bulk(v)).collect();
    expected.push(Value::Nil);
    assert_eq!(call(c, &mget), Value::Array(expected));
    let mut exists = vec!["EXISTS"];
    exists.extend(keys.iter().map(String::as_str));
    exists.push("multi:0");
    assert_eq!(call(c, &exists), Value::Integer(51));
    let mut touch = vec!["TOUCH"];
    touch.extend(keys[..10].iter().map(String::as_str));
    assert_eq!(call(c, &touch), Value::Integer(10));
    let mut del = vec!["DEL"];
    del.extend(keys[..25].iter().map(String::as_str));
    del.push("multi:missing");
    assert_eq!(call(c, &del), Value::Integer(25));
    let mut unlink = vec!["UNLINK"];
    unlink.extend(keys.iter().map(String::as_str));
    assert_eq!(call(c, &unlink), Value::Integer(25));
    // Not splittable: its keys must share a slot.
    assert_eq!(
        call(c, &["MSETNX", "multi:a", "1", "multi:b", "2"]),
        Value::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
    );
    println!(
        "multi-key commands split across slots: MSET/MGET of 50 keys, EXISTS, TOUCH, DEL, UNLINK"
    );
}

/// Keys with one hash tag share a slot, so commands that need one slot
/// work on them; a transaction in one slot runs, across slots it is
/// refused as a cluster node refuses it.
fn hash_tags_and_transactions(cluster: &RedisCluster, c: &mut Conn) {
    let slot = cluster.key_slot("user:1");
    for key in ["{user:1}:name", "{user:1}:mail", "{user:1}:email"] {
        assert_eq!(cluster.key_slot(key), slot, "{key}");
    }
    assert_eq!(
        call(
            c,
            &[
                "MSETNX",
                "{user:1}:name",
                "ada",
                "{user:1}:mail",
                "ada@example.org"
            ]
        ),
        Value::Integer(1)
    );
    assert_eq!(
        call(c, &["RENAME", "{user:1}:mail", "{user:1}:email"]),
        ok()
    );
    assert_eq!(
        call(c, &["MGET", "{user:1}:name", "{user:1}:email"]),
        Value::Array(vec![bulk("ada"), bulk("ada@example.org")])
    );
    let tx = |c: &mut Conn, commands: &[&[&str]]| -> Vec<Value> {
        let commands: Vec<Vec<String>> = commands
            .iter()
            .map(|a| a.iter().map(|s| s.to_string()).collect())
            .collect();
        pipeline(c, &commands)
    };
    let replies = tx(
        c,
        &[
            &["MULTI"],
            &["SET", "{acct}:a", "10"],
            &["INCRBY", "{acct}:a", "5"],
            &["GET", "{acct}:a"],
            &["EXEC"],
        ],
    );
    assert_eq!(
        replies,
        vec![
            ok(),
            Value::Status("QUEUED".into()),
            Value::Status("QUEUED".into()),
            Value::Status("QUEUED".into()),
            Value::Array(vec![ok(), Value::Integer(15), bulk("15")]),
        ]
    );
    let replies = tx(
        c,
        &[
            &["MULTI"],
            &["SET", "tx:a", "1"],
            &["SET", "tx:b", "1"],
            &["EXEC"],
        ],
    );
    assert_eq!(
        replies,
        vec![
            ok(),
            Value::Status("QUEUED".into()),
            Value::Error("CROSSSLOT Keys in request don't hash to the same slot".into()),
            Value::Error("EXECABORT Transaction discarded because of previous errors.".into()),
        ]
    );
    assert_eq!(call(c, &["EXISTS", "tx:a", "tx:b"]), Value::Integer(0));
    println!("hash tags: one slot; a transaction in one slot ran, one across slots was refused");
}

/// A key cached by the proxy is dropped when another client writes it
/// straight at its master: the master's invalidation reaches the proxy.
fn a_write_at_the_master_invalidates_the_cached_key(cluster: &RedisCluster, c: &mut Conn) {
    assert_eq!(call(c, &["SET", "cached", "old"]), ok());
    assert_eq!(call(c, &["GET", "cached"]), bulk("old"));
    let hits = info_field(&info(c), "cache_hits").unwrap_or(0);
    assert_eq!(call(c, &["GET", "cached"]), bulk("old"));
    assert_eq!(
        info_field(&info(c), "cache_hits"),
        Some(hits + 1),
        "served from the cache"
    );
    let master = cluster.master_for_slot(cluster.key_slot("cached"));
    let written = Instant::now();
    assert_eq!(
        Conn::connect(master).call_resp2(&["SET", "cached", "new"]),
        ok()
    );
    let mut seen = None;
    wait_until(
        Duration::from_secs(5),
        "the proxy reads the new value",
        || {
            let fresh = call(c, &["GET", "cached"]) == bulk("new");
            if fresh {
                seen = Some(written.elapsed());
            }
            fresh
        },
    );
    println!(
        "a write straight at the master reached the proxy's cache within {:.1} ms",
        seen.unwrap_or_default().as_secs_f64() * 1e3
    );
}

fn info(c: &mut Conn) -> String {
    match call(c, &["INFO"]) {
        Value::Bulk(t) => String::from_utf8_lossy(&t).into_owned(),
        other => panic!("INFO answered {other:?}"),
    }
}

/// What the loaders saw.
#[derive(Default)]
struct Seen {
    /// When each error came, since the load started, and what it said.
    errors: Vec<(Duration, String)>,
    /// A read that returned something other than the value its client had
    /// just written and had acknowledged.
    stale: Vec<String>,
    /// The longest a request took.
    slowest: Duration,
}

/// Clients that each write their own keys and read each back right
/// after, through the proxy, until stopped; the writes and reads are
/// counted, and every error and wrong read is kept.
struct Load {
    stop: Arc<AtomicBool>,
    /// While set, the loaders wait between two requests (and say so).
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicU64>,
    ops: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(proxy: SocketAddr, clients: usize, keys_each: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicU64::new(0));
        let ops = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        let threads = (0..clients)
            .map(|client| {
                let (stop, pause, paused, ops, seen) = (
                    stop.clone(),
                    pause.clone(),
                    paused.clone(),
                    ops.clone(),
                    seen.clone(),
                );
                std::thread::spawn(move || {
                    let mut c = Conn::connect(proxy);
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        for k in 0..keys_each {
                            if pause.load(Ordering::SeqCst) {
                                paused.fetch_add(1, Ordering::SeqCst);
                                while pause.load(Ordering::SeqCst) {
                                    std::thread::yield_now();
                                }
                                paused.fetch_sub(1, Ordering::SeqCst);
                            }
                            let key = format!("load:{client}:{k}");
                            let value = format!("{round}");
                            let sent = Instant::now();
                            let set = c.call_resp2(&["SET", &key, &value]);
                            let took = sent.elapsed();
                            ops.fetch_add(1, Ordering::Relaxed);
                            {
                                let mut seen = seen.lock().unwrap();
                                seen.slowest = seen.slowest.max(took);
                            }
                            if set != ok() {
                                seen.lock()
                                    .unwrap()
                                    .errors
                                    .push((started.elapsed(), format!("SET {key}: {set:?}")));
                                continue;
                            }
                            let get = c.call_resp2(&["GET", &key]);
                            ops.fetch_add(1, Ordering::Relaxed);
                            match get {
                                Value::Error(e) => seen
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .push((started.elapsed(), format!("GET {key}: {e}"))),
                                v if v == bulk(&value) => {}
                                v => seen
                                    .lock()
                                    .unwrap()
                                    .stale
                                    .push(format!("GET {key}: {v:?}, wrote {value}")),
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            pause,
            paused,
            ops,
            seen,
            threads,
            started,
        }
    }

    /// Holds every loader between two requests, until [`Load::resume`].
    fn hold(&self, clients: u64) {
        self.pause.store(true, Ordering::SeqCst);
        wait_until(Duration::from_secs(10), "every loader is held", || {
            self.paused.load(Ordering::SeqCst) == clients
        });
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    fn wait_for_ops(&self, more: u64) {
        let target = self.ops.load(Ordering::Relaxed) + more;
        wait_until(Duration::from_secs(30), "the load goes on", || {
            self.ops.load(Ordering::Relaxed) >= target
        });
    }

    fn stop(self) -> (Seen, u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a loader panicked");
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (
            seen,
            self.ops.load(Ordering::Relaxed),
            self.started.elapsed(),
        )
    }
}

/// 1,000 slots move from one master to another while clients write and
/// read through the proxy: no error, and every read sees the write before
/// it.
fn resharding_under_load(cluster: &RedisCluster, proxy: &KvProcess) {
    let masters = cluster.masters();
    let load = Load::start(proxy.addr(), 4, 200);
    load.wait_for_ops(2_000);
    let started = Instant::now();
    cluster.reshard(masters[0], masters[1], 1000);
    let took = started.elapsed();
    load.wait_for_ops(2_000);
    let (seen, ops, ran) = load.stop();
    assert!(seen.stale.is_empty(), "stale reads: {:?}", seen.stale);
    assert!(
        seen.errors.is_empty(),
        "errors during the resharding: {:?}",
        &seen.errors[..seen.errors.len().min(10)]
    );
    let moved = cluster.slots_of(masters[1]).len();
    assert!(moved >= 1000 + 5000, "{moved} slots at the target");
    let mut c = Conn::connect(proxy.addr());
    let stats = info(&mut c);
    println!(
        "resharding of 1,000 slots in {:.1} s under {ops} requests in {:.1} s: no error, no stale read ({} MOVED, {} ASK followed)",
        took.as_secs_f64(),
        ran.as_secs_f64(),
        info_field(&stats, "upstream_cluster_moved").unwrap_or(0),
        info_field(&stats, "upstream_cluster_asked").unwrap_or(0),
    );
}

/// A master is killed while clients write and read through the proxy:
/// its replica is promoted; errors come only within a bounded window,
/// and no acknowledged write is read back wrong.
fn failover_under_load(cluster: &mut RedisCluster, proxy: &KvProcess) {
    let clients = 4;
    let load = Load::start(proxy.addr(), clients, 200);
    load.wait_for_ops(2_000);
    let victim = cluster.masters()[2];
    // A key cached through a master that survives stays cached.
    let survivor_key = (0..)
        .map(|i| format!("survivor:{i}"))
        .find(|k| cluster.master_for_slot(cluster.key_slot(k)) != victim)
        .unwrap();
    let mut c = Conn::connect(proxy.addr());
    assert_eq!(call(&mut c, &["SET", &survivor_key, "kept"]), ok());
    assert_eq!(call(&mut c, &["GET", &survivor_key]), bulk("kept"));
    // Redis replicates asynchronously: a write acknowledged a moment
    // before the kill may not have reached the replica, and is lost by
    // Redis itself. The load is held from before the replica is caught
    // up until the master is gone, so what is checked is the proxy's
    // part; it runs through the whole failover.
    load.hold(clients as u64);
    assert!(matches!(
        Conn::connect(victim).call_resp2(&["WAIT", "1", "5000"]),
        Value::Integer(1)
    ));
    let killed_at = load.started.elapsed();
    let kill = Instant::now();
    let promoted = cluster.kill_master_then(victim, || load.resume());
    let failover = kill.elapsed();
    load.wait_for_ops(4_000);
    let (seen, ops, _) = load.stop();
    assert!(seen.stale.is_empty(), "wrong reads: {:?}", seen.stale);
    let window = match (seen.errors.first(), seen.errors.last()) {
        (Some(first), Some(last)) => {
            assert!(
                first.0 >= killed_at,
                "an error before the kill: {:?}",
                first
            );
            last.0 - first.0
        }
        _ => Duration::ZERO,
    };
    assert!(
        window < Duration::from_secs(15),
        "errors for {window:?}: {:?}",
        &seen.errors[..seen.errors.len().min(10)]
    );
    let hits = info_field(&info(&mut c), "cache_hits").unwrap_or(0);
    assert_eq!(call(&mut c, &["GET", &survivor_key]), bulk("kept"));
    assert_eq!(
        info_field(&info(&mut c), "cache_hits"),
        Some(hits + 1),
        "what was cached through another master was kept"
    );
    assert_eq!(call(&mut c, &["SET", "after", "failover"]), ok());
    assert_eq!(call(&mut c, &["GET", "after"]), bulk("failover"));
    println!(
        "master {victim} killed, {promoted} promoted in {:.1} s; {} errors within {:.2} s, the slowest write {:.2} s, no wrong read, {ops} requests",
        failover.as_secs_f64(),
        seen.errors.len(),
        window.as_secs_f64(),
        seen.slowest.as_secs_f64()
    );
}
