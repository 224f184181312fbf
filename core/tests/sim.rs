//! Deterministic whole-system simulation: many clients, one or two proxies
//! and a server, all real `kv_core` state machines, wired through a
//! simulated network and stepped by one seeded random stream. No sockets,
//! no threads inside a run, no sleeps, no real time: a seed is a run, and
//! the same seed replays it exactly.
//!
//! Each step does one thing: a client sends requests; a chunk of bytes of
//! random size moves along one connection (each direction is a FIFO byte
//! stream with latency, see [`net`]); the clock moves a little; or a fault
//! happens: a connection drops (bytes already sent may still arrive, even
//! after the sender reconnected), a proxy restarts with an empty cache, the
//! server restarts, latency spikes past the timeouts, or the clock jumps to
//! just before, at or just after a TTL or a timeout, sometimes with the
//! driver waking late. Every timer fires when `poll_timeout` says it is
//! due. At the end, faults stop, everything drains and every client probes
//! the system.
//!
//! # Invariants
//! Checked as every outcome arrives and after every step (see [`world`]
//! and [`model`]):
//! - every request gets exactly one outcome, in order: a reply whose shape
//!   and content fit the request (values name their key; `PING` tokens are
//!   unique), or a failure because its connection dropped or timed out;
//! - values are explained by the server's history (the model mirrors the
//!   server's apply order): a read returns a value that was current while
//!   the request could see it, widened by one TTL plus one request timeout
//!   for what may have come from a cache. For message clients, which learn
//!   a reply's source, a cached value must be younger than the TTL and must
//!   have been current at the server at most one request timeout before
//!   the entry was stored (the proxy waits that long for the reply that
//!   fills it);
//! - through a proxy, a client never reads a value older (earlier in the
//!   server's apply order) than one it saw acknowledged (read-your-writes)
//!   or one it already read (monotonic reads), pipelined requests
//!   included: a reply binds every request issued after the one it answers;
//! - no acknowledged write is lost across a server restart. The server here
//!   is in memory, so a restart keeps the `Server` (as a durable store
//!   would) and drops every connection to it; the check is what a
//!   persistent server's recovery must pass, and it fires when the planted
//!   stale-restart bug restores old state;
//! - the server executes no write twice, its store always equals the model,
//!   timers stop being due once handled, and after healing every client
//!   reads the server's current values and its own fresh writes.
//!
//! # Running
//! - `fixed_seeds`: the CI run.
//! - `replay`: `SIM_SEED=… SIM_STEPS=… [SIM_CLIENTS SIM_PROXIES SIM_FAULTS
//!   SIM_BUG] cargo test -p kv-core --test sim -- replay --exact
//!   --nocapture` replays one run, as failure reports print it;
//!   `SIM_TRACE=all` prints its whole trace.
//! - `many`: `cargo xtask sim --seeds N [--steps M] [--start S]`.
//! - `planted_bug_is_found`: plants each [`setup::Bug`] and shows that the
//!   checker catches it, shrinks it and replays it.

#[path = "sim/model.rs"]
mod model;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/rng.rs"]
mod rng;
#[path = "sim/runner.rs"]
mod runner;
#[path = "sim/setup.rs"]
mod setup;
#[path = "sim/world.rs"]
mod world;

use runner::{explain, run, run_many};
use setup::{Bug, Params};

/// Seeds and steps of the CI run: enough for every fault to hit every
/// state many times, small enough for well under 30 s in a debug build.
const CI_SEEDS: u64 = 200;
const CI_STEPS: u64 = 3_000;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[test]
fn fixed_seeds() {
    let summary = run_many(&Params::new(0, CI_STEPS), 0, CI_SEEDS);
    println!("{}", summary.line());
    if let Some((p, f)) = summary.failure {
        panic!("{}", explain(&p, &f).report);
    }
    assert_eq!(summary.seeds, CI_SEEDS);
}

#[test]
fn replay() {
    let p = match Params::from_vars(env) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("replay: no SIM_SEED set; nothing to replay");
            return;
        }
        Err(e) => panic!("replay: {e}"),
    };
    let r = run(&p, true);
    if env("SIM_TRACE").as_deref() == Some("all") {
        for line in &r.trace {
            println!("{line}");
        }
    }
    match r.failure {
        Some(f) => panic!(
            "replay of {}: {} at step {}: {}\n(last trace lines:)\n{}",
            p.env_text(),
            f.kind,
            f.step,
            f.message,
            r.trace[r.trace.len().saturating_sub(40)..].join("\n")
        ),
        None => println!("replay: {} passes ({} steps)", p.env_text(), r.steps),
    }
}

/// Many seeds, for `cargo xtask sim` (best in release): `SIM_SEEDS`
/// seeds from `SIM_START` (default 0), `SIM_STEPS` steps each (default
/// 3000), optionally `SIM_FAULTS` and `SIM_BUG`. Without `SIM_SEEDS` it
/// does nothing, so that plain `cargo test` stays quick.
#[test]
fn many() {
    let Some(seeds) = env("SIM_SEEDS") else {
        println!("many: no SIM_SEEDS set; nothing to run");
        return;
    };
    let seeds: u64 = seeds.trim().parse().expect("SIM_SEEDS is a number");
    let start: u64 = env("SIM_START").map_or(0, |s| s.trim().parse().expect("SIM_START"));
    // Reuse the replay parser for the other variables.
    let template = Params::from_vars(|name| match name {
        "SIM_SEED" => Some("0".into()),
        _ => env(name),
    })
    .expect("SIM_* variables")
    .expect("SIM_SEED is set above");
    let summary = run_many(&template, start, seeds);
    println!("{}", summary.line());
    if let Some((p, f)) = summary.failure {
        panic!("{}", explain(&p, &f).report);
    }
}

/// Plants each bug and shows that the checker finds it within a few seeds,
/// reports the seed and a shrunk trace, and that the printed replay
/// command reproduces the same failure.
#[test]
fn planted_bug_is_found() {
    for bug in Bug::ALL {
        let template = Params {
            bug: Some(bug),
            ..Params::new(0, CI_STEPS)
        };
        let found = (0..50).find_map(|seed| {
            let p = Params {
                seed,
                ..template.clone()
            };
            run(&p, false).failure.map(|f| (p, f))
        });
        let Some((p, f)) = found else {
            panic!("planted bug {} was not found in 50 seeds", bug.name());
        };
        let e = explain(&p, &f);
        println!("planted bug {}: {}", bug.name(), e.report);
        assert!(e.report.contains(&format!("SIM_SEED={}", p.seed)));
        assert!(e.report.contains(&format!("SIM_BUG={}", bug.name())));
        assert!(e.report.contains("trace of the shrunk run"));
        assert!(e.shrunk.steps <= p.steps);
        assert!(!e.report.contains("WARNING"), "{}", e.report);
        let expected: &[&str] = match bug {
            Bug::ReorderReplies => &["reply", "monotonic-reads", "read-your-writes", "stale-read"],
            Bug::SkipUpstreamLost => &[
                "reply",
                "server",
                "stale-read",
                "cache-staleness",
                "monotonic-reads",
                "read-your-writes",
            ],
            Bug::StaleRestart => &["durability"],
        };
        assert!(
            expected.contains(&e.failure.kind.as_str()),
            "{}: unexpected kind {}",
            bug.name(),
            e.failure.kind
        );
        // The printed command replays the shrunk failure exactly.
        let command = e
            .report
            .lines()
            .find_map(|l| l.strip_prefix("replay: "))
            .expect("the report has a replay line");
        let replayed = Params::from_command(command).expect("the replay command parses");
        assert_eq!(replayed, e.shrunk);
        let again = run(&replayed, false).failure;
        assert_eq!(again.as_ref(), Some(&e.failure), "replay of {command}");
    }
}

/// The first finding of this simulation (seed 3),
/// reduced by hand, now fixed: two pipelined `GET`s of one key from one
/// client could read backwards in time. The first goes upstream because a write of the
/// client's is pending; the write's acknowledgement then fills the cache;
/// the second `GET` arrives and hits that entry; the first one's reply,
/// executed at the server after another writer's newer value, arrives last.
/// The client reads the newer value, then the older one.
///
/// The fix, in `Proxy::dispatch`: a `GET` for a key with an upstream `GET`
/// in flight joins it instead of reading the cache, since the cache can only
/// be older than what that `GET` will return.
#[test]
fn pipelined_reads_do_not_go_back_in_time() {
    use bytes::Bytes;
    use kv_core::{
        ClientKind, Command, Instant, Proxy, ProxyConfig, Reply, Server, ServerConfig,
        ServerConnection, Source,
    };

    let now = Instant::from_millis(1);
    let mut server = Server::new(ServerConfig::default());
    let mut conn = ServerConnection::new(server.config().limits);
    let mut proxy = Proxy::new(ProxyConfig::default(), now);
    proxy.handle_upstream_connected(now);
    let c = proxy.add_client(ClientKind::Messages, now);
    let mut to_server = |proxy: &mut Proxy, server: &mut Server| {
        let bytes = proxy.poll_upstream_transmit().expect("a request upstream");
        conn.handle_input(server, &bytes);
        conn.poll_transmit().expect("a reply").freeze()
    };

    // The client writes v1; the server applies it (its OK is still on the way).
    proxy.handle_client_input(c, b"PUT k v1\r\n", now);
    let ok = to_server(&mut proxy, &mut server);
    // Another writer (another proxy, or a direct client) writes v2.
    let _ = server.execute(Command::build(&["SET", "k", "v2"]).unwrap());
    // The client reads: a write to k is pending, so the GET goes upstream,
    // where it reads v2.
    proxy.handle_client_input(c, b"GET k\r\n", now);
    let v2 = to_server(&mut proxy, &mut server);
    // (With the PTTL the proxy sends beside it: no deadline.)
    assert_eq!(&v2[..], b"$2\r\nv2\r\n:-1\r\n");
    // The write's OK arrives first: the cache now holds v1.
    proxy.handle_upstream_input(&ok, now);
    // The client reads again: no write pending, v1 is fresh in the cache.
    proxy.handle_client_input(c, b"GET k\r\n", now);
    proxy.handle_upstream_input(&v2, now);

    let replies: Vec<(Reply, Source)> = std::iter::from_fn(|| proxy.poll_client_reply(c))
        .map(|r| (r.reply, r.source))
        .collect();
    assert_eq!(replies[0].0, Reply::ok());
    assert_eq!(
        replies[1],
        (Reply::Bulk(Bytes::from_static(b"v2")), Source::Upstream)
    );
    assert_eq!(
        replies[2].0,
        Reply::Bulk(Bytes::from_static(b"v2")),
        "the second read went back to v1 (from {:?}) after the first read v2",
        replies[2].1
    );
}

/// The second finding (seed 810, after the fix above), reduced by hand,
/// now fixed: the same backwards read, when a write refused at once came
/// between the two `GET`s. `begin_write` dropped the key's coalescing entry
/// before `send_upstream` refused the write (the proxy was at
/// `max_upstream_in_flight`), so the second `GET` could no longer join the
/// first one in flight and read the older value an earlier write's
/// acknowledgement had put in the cache. The fix: a write is marked only
/// once it is sent.
#[test]
fn refused_write_does_not_let_a_read_go_back_in_time() {
    use bytes::Bytes;
    use kv_core::{
        ClientKind, Command, Instant, Proxy, ProxyConfig, Reply, Server, ServerConfig,
        ServerConnection,
    };

    let now = Instant::from_millis(1);
    let mut server = Server::new(ServerConfig::default());
    let mut conn = ServerConnection::new(server.config().limits);
    let config = ProxyConfig {
        max_upstream_in_flight: 2,
        ..ProxyConfig::default()
    };
    let mut proxy = Proxy::new(config, now);
    proxy.handle_upstream_connected(now);
    let c = proxy.add_client(ClientKind::Messages, now);
    let mut to_server = |proxy: &mut Proxy, server: &mut Server| {
        let bytes = proxy.poll_upstream_transmit().expect("a request upstream");
        conn.handle_input(server, &bytes);
        conn.poll_transmit().expect("a reply").freeze()
    };

    // The client writes v1; the server applies it (its OK is on the way).
    proxy.handle_client_input(c, b"PUT k v1\r\n", now);
    let ok = to_server(&mut proxy, &mut server);
    // Another writer writes v2.
    let _ = server.execute(Command::build(&["SET", "k", "v2"]).unwrap());
    // The client reads behind its pending write: upstream, where it reads v2.
    proxy.handle_client_input(c, b"GET k\r\n", now);
    let v2 = to_server(&mut proxy, &mut server);
    // Two requests in flight: the next write is refused at once.
    proxy.handle_client_input(c, b"PUT k v3\r\n", now);
    // v1's OK arrives: the cache holds v1, the GET reading v2 is in flight.
    proxy.handle_upstream_input(&ok, now);
    proxy.handle_client_input(c, b"GET k\r\n", now);
    proxy.handle_upstream_input(&v2, now);

    let replies: Vec<Reply> = std::iter::from_fn(|| proxy.poll_client_reply(c))
        .map(|r| r.reply)
        .collect();
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(replies[1], Reply::Bulk(Bytes::from_static(b"v2")));
    assert!(replies[2].is_error(), "the refused write: {replies:?}");
    assert_eq!(
        replies[3],
        Reply::Bulk(Bytes::from_static(b"v2")),
        "the last read went back to v1 after reading v2: {replies:?}"
    );
}
