//! The memory bound: `maxmemory`, `maxmemory-policy` and
//! `maxmemory-samples`, with Redis's semantics.
//!
//! Before each command, when a bound is set and used memory is over it,
//! keys are evicted by the policy until it is not (Redis's
//! `performEvictions`), at most [`EVICT_BUDGET`] per call: past that the
//! command runs, and the server's timer goes on evicting
//! ([`Server::poll_timeout`] says it is due at once), so that a sudden
//! excess (a lowered bound) does not stall the clients. If memory stays
//! over because nothing may be evicted (`noeviction`, or a `volatile-*`
//! policy and no key with a deadline), a command flagged `DENYOOM` gets
//! Redis's `-OOM` error, and so does any command queued inside `MULTI`,
//! which would grow the transaction (an `EXEC` whose queue holds a
//! `DENYOOM` command aborts with it). Reads and deletions go on.
//!
//! **Used memory** is the allocator's count of allocated bytes, which only
//! the driver can read: it hands it in with [`Server::set_used_memory`]
//! before a batch of input (at most every millisecond or so), and between
//! two readings the core adds the store's own estimate of what changed
//! since ([`Store::footprint`]), so that a run of evictions knows when to
//! stop. Without a reading (tests, the simulation), used memory is the
//! store's footprint alone.
//!
//! An evicted key that a snapshot shares (a log rewrite is writing it
//! out) frees nothing until the snapshot has been written; counting it as
//! used would evict more keys that free nothing either, and so on until
//! the store were empty. So it is left out of used memory while the
//! rewrite runs, as Redis leaves out the memory a forked child shares.
//!
//! [`Store::footprint`]: crate::db::Store::footprint

use super::{tx, Server};
use crate::command::table::{Flags, Handler};
use crate::command::Command;
use crate::db::Policy;
use crate::errors::ExecError;
use crate::reply::Reply;
use crate::server::TxOp;
use crate::session::Session;

/// The memory bound's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxMemory {
    /// The bound in bytes; 0: none (the default).
    pub bytes: u64,
    /// What is evicted when memory is over it.
    pub policy: Policy,
    /// Keys sampled per eviction by the LRU and LFU policies
    /// ([`MAX_SAMPLES`] at most).
    pub samples: usize,
}

impl Default for MaxMemory {
    fn default() -> Self {
        MaxMemory {
            bytes: 0,
            policy: Policy::NoEviction,
            samples: 5,
        }
    }
}

/// The most keys an eviction may sample (`maxmemory-samples`), as Redis 8
/// bounds it: each eviction's work grows with it.
pub const MAX_SAMPLES: usize = 64;

/// The most keys evicted before one command: enough for any steady write
/// load, little enough (well under a millisecond) that no client waits
/// long behind a sudden excess, which the timer then works off.
pub const EVICT_BUDGET: usize = 200;

/// How memory stands: the driver's last reading and what the core knows
/// of the changes since.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// The allocator's bytes at the last reading.
    reading: u64,
    /// That reading without the bytes `held` then.
    base: u64,
    /// The store's footprint at the last reading.
    footprint_at: u64,
    /// Bytes of evicted keys a snapshot still holds (see the module docs).
    held: u64,
    /// Eviction stopped at its budget with memory still over the bound.
    pending: bool,
}

/// What eviction before a command achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Memory is within the bound (or there is none).
    Enough,
    /// Still over, but eviction is under way (the timer goes on).
    Evicting,
    /// Still over, and nothing may be evicted.
    Full,
}

impl Server {
    /// The allocator's count of allocated bytes, from the driver, read
    /// before a batch of input: what the memory bound and `INFO` count
    /// from, until the next reading.
    pub fn set_used_memory(&mut self, bytes: u64) {
        if !self.snapshot_out() {
            // The snapshot is gone, and with it what it held.
            self.meter.held = 0;
        }
        self.meter.reading = bytes;
        self.meter.base = bytes.saturating_sub(self.meter.held);
        self.meter.footprint_at = self.db.store().footprint();
    }

    /// Whether a snapshot of the store may be out, sharing its entries:
    /// while one is, evicted keys it shares stay left out of used memory.
    /// Every holder of a long-lived snapshot must be named here.
    fn snapshot_out(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|j| j.status().rewrite_in_progress)
            || self.db.dump_snapshot_out()
    }

    /// Used memory as the bound counts it: the last reading (without what
    /// snapshots hold of evicted keys) and the store's growth since.
    pub fn used_memory(&self) -> u64 {
        self.meter
            .base
            .saturating_add(self.db.store().footprint())
            .saturating_sub(self.meter.footprint_at)
    }

    /// The memory bound's settings in force.
    pub fn maxmemory(&self) -> &MaxMemory {
        &self.config.maxmemory
    }

    /// Keys evicted so far.
    pub fn evicted_keys(&self) -> u64 {
        self.db.evicted_keys()
    }

    /// Whether eviction stopped at its budget with memory still over: the
    /// timer is due at once.
    pub(super) fn evicting(&self) -> bool {
        self.meter.pending
    }

    /// The memory check before a command (called only with a bound set):
    /// evicts what the policy allows, then refuses the command with the
    /// reply to give if memory is still over and the command would grow
    /// it. A refused `EXEC` discards its transaction.
    pub(super) fn check_memory(
        &mut self,
        session: &mut Session,
        cmd: &Command,
    ) -> Result<(), Reply> {
        if self.make_room() != Room::Full {
            return Ok(());
        }
        let spec = cmd.spec();
        let exec = matches!(spec.handler, Handler::Tx(TxOp::Exec));
        let grows = spec.flags.contains(Flags::DENYOOM) || (exec && tx::queued_denyoom(session));
        // Queuing grows the transaction, whatever the command; ending it
        // does not.
        let queues = tx::in_multi(session)
            && !matches!(spec.handler, Handler::Tx(TxOp::Exec | TxOp::Discard))
            && spec.name != "quit";
        if !grows && !queues {
            return Ok(());
        }
        if exec {
            tx::end(&mut self.db, session);
            let why = ExecError::OutOfMemory.to_string();
            return Err(ExecError::ExecAbortBecause(why).into());
        }
        Err(ExecError::OutOfMemory.into())
    }

    /// Evicts keys until used memory is within the bound, nothing more may
    /// be evicted, or the budget is spent; logs the evictions.
    fn make_room(&mut self) -> Room {
        let MaxMemory {
            bytes: max,
            policy,
            samples,
        } = self.config.maxmemory;
        self.meter.pending = false;
        let mut evicted = 0;
        let room = loop {
            if max == 0 || self.used_memory() <= max {
                break Room::Enough;
            }
            if evicted == EVICT_BUDGET {
                self.meter.pending = true;
                break Room::Evicting;
            }
            match self.db.evict_one(policy, samples) {
                Some(gone) => {
                    if gone.shared {
                        self.meter.held += gone.footprint;
                    }
                    evicted += 1;
                }
                None => break Room::Full,
            }
        };
        if evicted > 0 {
            if let Some(journal) = &mut self.journal {
                self.db.take_changes().for_each(|c| journal.record(c));
            }
        }
        room
    }

    /// Eviction from the timer, after a call that used its budget.
    pub(super) fn evict_due(&mut self) {
        if self.meter.pending {
            self.make_room();
        }
    }

    /// `CONFIG SET` of a memory parameter; `None` if `name` is not one.
    pub(super) fn set_memory_param(
        &mut self,
        name: &str,
        value: &[u8],
    ) -> Option<Result<(), String>> {
        let refused = |why: &str| {
            Err(format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
            ))
        };
        let m = &mut self.config.maxmemory;
        Some(match name {
            "maxmemory" => match parse_memory(value) {
                Some(bytes) => {
                    m.bytes = bytes;
                    // As Redis, a lower bound is enforced at once: the
                    // timer evicts down to it.
                    self.meter.pending = bytes != 0;
                    Ok(())
                }
                None => refused("argument must be a memory value"),
            },
            "maxmemory-policy" => match Policy::parse(value) {
                Some(policy) => {
                    m.policy = policy;
                    self.db.set_policy(policy);
                    Ok(())
                }
                None => {
                    let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
                    refused(&format!(
                        "argument(s) must be one of the following: {}",
                        names.join(", ")
                    ))
                }
            },
            "maxmemory-samples" => match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
            {
                Some(n) if (1..=MAX_SAMPLES as i64).contains(&n) => {
                    m.samples = n as usize;
                    Ok(())
                }
                Some(_) => refused(&format!(
                    "argument must be between 1 and {MAX_SAMPLES} inclusive"
                )),
                None => refused("argument couldn't be parsed into an integer"),
            },
            _ => return None,
        })
    }

    /// `INFO`'s `# Memory` section.
    pub(super) fn info_memory(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.config.maxmemory;
        let used = self.used_memory();
        let rss = self.host.rss_bytes;
        let allocator = if self.host.allocator.is_empty() {
            "libc"
        } else {
            self.host.allocator
        };
        let _ = write!(
            out,
            "# Memory\nused_memory:{used}\nused_memory_human:{}\nused_memory_rss:{rss}\nused_memory_rss_human:{}\nused_memory_dataset:{}\nmaxmemory:{}\nmaxmemory_human:{}\nmaxmemory_policy:{}\nmem_allocator:{allocator}\nmem_not_counted_for_evict:0\nlazyfree_pending_objects:0\n",
            human_bytes(used),
            human_bytes(rss),
            self.db.store().data_bytes(),
            m.bytes,
            human_bytes(m.bytes),
            m.policy.name(),
        );
    }
}

/// A memory size as Redis reads one (`memtoull`): digits, then nothing or
/// `b` (bytes), `k`/`m`/`g` (powers of 1000) or `kb`/`mb`/`gb` (of 1024),
/// any case. `None` for anything else, or past `u64`.
pub fn parse_memory(value: &[u8]) -> Option<u64> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, unit) = value.split_at(digits);
    if number.is_empty() {
        return None;
    }
    let unit: u64 = match unit.to_ascii_lowercase().as_slice() {
        b"" | b"b" => 1,
        b"k" => 1000,
        b"kb" => 1024,
        b"m" => 1000 * 1000,
        b"mb" => 1024 * 1024,
        b"g" => 1000 * 1000 * 1000,
        b"gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    let n: u64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    n.checked_mul(unit)
}

/// Bytes as Redis shows them for people (`bytesToHuman`): `512B`,
/// `1.50K`, `100.00M`, `2.00G` …
pub fn human_bytes(n: u64) -> String {
    const UNITS: [char; 5] = ['K', 'M', 'G', 'T', 'P'];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut d = n as f64 / 1024.0;
    let mut unit = 0;
    while d >= 1024.0 && unit + 1 < UNITS.len() {
        d /= 1024.0;
        unit += 1;
    }
    format!("{d:.2}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aof::{self, LogDecoder, LogStatus};
    use crate::command::table::Table;
    use crate::db::{Effect, ENTRY_OVERHEAD};
    use crate::server::ServerConfig;
    use crate::session::Node;
    use bytes::Bytes;

    const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

    fn server(policy: Policy, bytes: u64, samples: usize) -> Server {
        Server::new(ServerConfig {
            hash_seed: 42,
            maxmemory: MaxMemory {
                bytes,
                policy,
                samples,
            },
            ..ServerConfig::default()
        })
    }

    fn run(s: &mut Server, args: &[&str]) -> Reply {
        s.execute(Command::build(args).unwrap())
    }

    fn run_in(s: &mut Server, session: &mut Session, args: &[&str]) -> Reply {
        let mut reply = None;
        s.run(session, &Command::build(args).unwrap(), &mut reply);
        reply.expect("a reply")
    }

    fn error_text(r: &Reply) -> String {
        match r {
            Reply::Error(e) => String::from_utf8_lossy(e).into_owned(),
            other => panic!("not an error: {other:?}"),
        }
    }

    /// What one key of `key_len + value_len` bytes counts for.
    fn footprint(key_len: usize, value_len: usize) -> u64 {
        (key_len + value_len + ENTRY_OVERHEAD) as u64
    }

    fn present(s: &Server, keys: impl IntoIterator<Item = String>) -> Vec<String> {
        keys.into_iter()
            .filter(|k| s.store().get(k.as_bytes()).is_some())
            .collect()
    }

    const V: &str = "0123456789012345678901234567890123456789"; // 40 bytes

    #[test]
    fn noeviction_refuses_every_growing_command_and_lets_reads_and_deletes_run() {
        // Room for ten keys of `kN` and a 40-byte value.
        let mut s = server(Policy::NoEviction, 10 * footprint(2, 40), 5);
        for i in 0..10 {
            assert_eq!(run(&mut s, &["SET", &format!("k{i}"), V]), Reply::ok());
        }
        // At the bound, not over it: one more write goes in, as in Redis
        // (the check is before the command).
        assert_eq!(run(&mut s, &["SET", "kx", V]), Reply::ok());
        let refused = run(&mut s, &["SET", "ky", V]);
        assert_eq!(error_text(&refused), OOM);
        // Every command that may grow memory is refused the same way…
        let growing: &[&[&str]] = &[
            &["SET", "k0", "v"],
            &["PUT", "k0", "v w"],
            &["SETNX", "n", "v"],
            &["SETEX", "n", "10", "v"],
            &["PSETEX", "n", "10", "v"],
            &["MSET", "n", "v"],
            &["MSETNX", "n", "v"],
            &["APPEND", "k0", "v"],
            &["INCR", "n"],
            &["DECR", "n"],
            &["INCRBY", "n", "1"],
            &["DECRBY", "n", "1"],
            &["INCRBYFLOAT", "n", "1"],
            &["GETSET", "k0", "v"],
            &["SETRANGE", "k0", "1", "v"],
            &["SETBIT", "n", "1", "1"],
            &["COPY", "k0", "n"],
        ];
        for args in growing {
            let spec = Table::get().lookup(args[0].as_bytes()).unwrap().1;
            assert!(
                spec.flags.contains(Flags::DENYOOM),
                "{} is DENYOOM",
                args[0]
            );
            assert_eq!(error_text(&run(&mut s, args)), OOM, "{args:?}");
        }
        assert!(s.store().get(b"n").is_none(), "nothing was written");
        // …while reads, deletions and the rest go on.
        assert_eq!(
            run(&mut s, &["GET", "k1"]),
            Reply::Bulk(Bytes::from_static(V.as_bytes()))
        );
        assert_eq!(run(&mut s, &["EXISTS", "k1"]), Reply::Integer(1));
        assert_eq!(run(&mut s, &["EXPIRE", "k1", "100"]), Reply::Integer(1));
        assert_eq!(
            run(&mut s, &["PING"]),
            Reply::Status(Bytes::from_static(b"PONG"))
        );
        assert_eq!(run(&mut s, &["DEL", "k1", "k2", "kx"]), Reply::Integer(3));
        assert_eq!(run(&mut s, &["SET", "k1", V]), Reply::ok(), "room again");
        assert_eq!(s.evicted_keys(), 0);
        assert_eq!(s.stats().rejected, 1 + growing.len() as u64);
        let info = s.info(&crate::session::InfoSections::parse(&[]));
        assert!(info.contains("maxmemory_policy:noeviction\n"), "{info}");
        assert!(
            info.contains(&format!("maxmemory:{}\n", 10 * footprint(2, 40))),
            "{info}"
        );
        assert!(info.contains("evicted_keys:0\n"), "{info}");
    }

    #[test]
    fn the_drivers_reading_is_what_counts_with_the_stores_changes_since() {
        let mut s = server(Policy::NoEviction, 1_000_000, 5);
        s.set_used_memory(999_990);
        assert_eq!(s.used_memory(), 999_990);
        assert_eq!(run(&mut s, &["SET", "key", V]), Reply::ok());
        assert_eq!(s.used_memory(), 999_990 + footprint(3, 40));
        assert_eq!(error_text(&run(&mut s, &["SET", "more", V])), OOM);
        assert!(run(&mut s, &["DEL", "key"]).eq(&Reply::Integer(1)));
        assert_eq!(s.used_memory(), 999_990);
        assert_eq!(run(&mut s, &["SET", "more", V]), Reply::ok());
        // A new reading replaces the estimate.
        s.set_used_memory(2_000_000);
        assert_eq!(error_text(&run(&mut s, &["SET", "more", V])), OOM);
        s.set_used_memory(10);
        assert_eq!(run(&mut s, &["SET", "more", V]), Reply::ok());
    }

    /// Ten keys written 100 ms apart, some read later: with as many
    /// samples as keys, LRU is exact.
    #[test]
    fn allkeys_lru_evicts_the_least_recently_touched_key_first() {
        let mut s = server(Policy::AllKeysLru, 10 * footprint(2, 40), 64);
        for i in 0..10 {
            s.set_time(1_000_000 + i * 100);
            assert_eq!(run(&mut s, &["SET", &format!("k{i}"), V]), Reply::ok());
        }
        // Reads (and TOUCH) are accesses; EXISTS and TTL are not.
        s.set_time(1_002_000);
        let _ = run(&mut s, &["GET", "k0"]);
        let _ = run(&mut s, &["TOUCH", "k3"]);
        let _ = run(&mut s, &["EXISTS", "k1"]);
        let _ = run(&mut s, &["TTL", "k2"]);
        s.set_time(1_003_000);
        let _ = run(&mut s, &["INCR", "n"]);
        // The INCR took memory over: each command from now evicts one key,
        // the least recently used, until it is not.
        let mut order = Vec::new();
        for i in 0..8 {
            s.set_time(1_004_000 + i);
            let before: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
            assert_eq!(run(&mut s, &["SET", &format!("new{i}"), V]), Reply::ok());
            let gone: Vec<String> = before
                .iter()
                .filter(|k| s.store().get(k.as_bytes()).is_none() && !order.contains(*k))
                .cloned()
                .collect();
            order.extend(gone);
        }
        assert_eq!(
            order[..7],
            ["k1", "k2", "k4", "k5", "k6", "k7", "k8"].map(String::from),
            "untouched keys first, oldest first; the read ones last"
        );
        assert!(s.evicted_keys() >= 8);
        let idle = run(&mut s, &["OBJECT", "IDLETIME", "k0"]);
        assert_eq!(idle, Reply::Integer(2), "read at 1,002,000, now 1,004,007");
    }

    /// With the default five samples LRU is approximate, but it must still
    /// prefer old keys by far.
    #[test]
    fn sampled_lru_mostly_evicts_the_older_keys() {
        let n = 2_000u64;
        let mut s = server(Policy::AllKeysLru, n * footprint(5, 40), 5);
        for i in 0..n {
            s.set_time(1_000_000 + i * 10);
            let _ = run(&mut s, &["SET", &format!("k{i:04}"), V]);
        }
        // Room for half of them: 1,000 evictions, over several commands.
        let _ = run(
            &mut s,
            &[
                "CONFIG",
                "SET",
                "maxmemory",
                &(n / 2 * footprint(5, 40)).to_string(),
            ],
        );
        while s.used_memory() > s.maxmemory().bytes {
            let _ = run(&mut s, &["PING"]);
        }
        let old_gone = (0..n / 2)
            .filter(|i| s.store().get(format!("k{i:04}").as_bytes()).is_none())
            .count();
        let young_gone = (n / 2..n)
            .filter(|i| s.store().get(format!("k{i:04}").as_bytes()).is_none())
            .count();
        assert_eq!(s.evicted_keys() as usize, old_gone + young_gone);
        assert!(
            old_gone >= 4 * young_gone,
            "older half lost {old_gone}, younger half {young_gone}"
        );
    }

    #[test]
    fn allkeys_lfu_keeps_the_keys_read_often_and_freq_decays_at_minute_boundaries() {
        let mut s = server(Policy::AllKeysLfu, 20 * footprint(3, 40), 64);
        s.set_time(60_000 * 1_000);
        for i in 0..20 {
            let _ = run(&mut s, &["SET", &format!("k{i:02}"), V]);
        }
        for _ in 0..50 {
            for i in 0..10 {
                let _ = run(&mut s, &["GET", &format!("k{i:02}")]);
            }
        }
        let Reply::Integer(hot) = run(&mut s, &["OBJECT", "FREQ", "k00"]) else {
            panic!("OBJECT FREQ answers under LFU")
        };
        assert!(hot > 5, "50 reads raised the counter: {hot}");
        assert_eq!(run(&mut s, &["OBJECT", "FREQ", "k15"]), Reply::Integer(5));
        for i in 0..10 {
            let _ = run(&mut s, &["SET", &format!("n{i}"), V]);
        }
        let _ = run(&mut s, &["PING"]);
        let hot_kept = present(&s, (0..10).map(|i| format!("k{i:02}")));
        assert_eq!(hot_kept.len(), 10, "every key read often stays");
        assert!(s.evicted_keys() >= 9);
        // One minute of the clock later (a boundary), one less.
        s.set_time(60_000 * 1_001);
        assert_eq!(
            run(&mut s, &["OBJECT", "FREQ", "k00"]),
            Reply::Integer(hot - 1)
        );
        s.set_time(60_000 * 1_002 - 1);
        assert_eq!(
            run(&mut s, &["OBJECT", "FREQ", "k00"]),
            Reply::Integer(hot - 1)
        );
        s.set_time(60_000 * 1_002);
        assert_eq!(
            run(&mut s, &["OBJECT", "FREQ", "k00"]),
            Reply::Integer(hot - 2)
        );
        assert!(error_text(&run(&mut s, &["OBJECT", "IDLETIME", "k00"]))
            .contains("LFU maxmemory policy is selected"));
    }

    #[test]
    fn volatile_ttl_evicts_the_soonest_deadline_first_and_never_a_persistent_key() {
        let mut s = server(Policy::VolatileTtl, 12 * footprint(2, 40), 5);
        s.set_time(1_000);
        for i in 0..6 {
            let _ = run(&mut s, &["SET", &format!("p{i}"), V]);
        }
        // Deadlines in an order unlike the keys'.
        for (i, ms) in [
            (0, 5_000),
            (1, 900),
            (2, 70_000),
            (3, 3_000),
            (4, 1_500),
            (5, 20_000),
        ] {
            let _ = run(&mut s, &["SET", &format!("v{i}"), V, "PX", &ms.to_string()]);
        }
        let mut order = Vec::new();
        for i in 0..6 {
            let _ = run(&mut s, &["SET", &format!("n{i}"), V]);
            let _ = run(&mut s, &["PING"]);
            for k in (0..6).map(|i| format!("v{i}")) {
                if s.store().get(k.as_bytes()).is_none() && !order.contains(&k) {
                    order.push(k);
                }
            }
        }
        assert_eq!(order, ["v1", "v4", "v3", "v0", "v5", "v2"]);
        assert_eq!(present(&s, (0..6).map(|i| format!("p{i}"))).len(), 6);
        // No key with a deadline is left: once over, nothing may be evicted.
        assert_eq!(run(&mut s, &["SET", "more", V]), Reply::ok());
        assert_eq!(error_text(&run(&mut s, &["SET", "more2", V])), OOM);
        assert_eq!(s.evicted_keys(), 6);
    }

    #[test]
    fn volatile_policies_never_evict_persistent_keys() {
        for policy in [
            Policy::VolatileLru,
            Policy::VolatileLfu,
            Policy::VolatileRandom,
            Policy::VolatileTtl,
        ] {
            let mut s = server(policy, 10 * footprint(2, 40), 5);
            for i in 0..11 {
                let _ = run(&mut s, &["SET", &format!("p{i}"), V]);
            }
            assert_eq!(
                error_text(&run(&mut s, &["SET", "x", V])),
                OOM,
                "{policy:?}"
            );
            assert_eq!(s.evicted_keys(), 0, "{policy:?}");
            // Keys with a deadline go, and only they: room for two of the
            // six, and the last write goes in at the bound.
            let _ = run(&mut s, &["DEL", "p10", "p9", "p8"]);
            for i in 0..6 {
                let _ = run(&mut s, &["SET", &format!("v{i}"), V, "EX", "100"]);
            }
            let _ = run(&mut s, &["PING"]);
            assert_eq!(
                present(&s, (0..8).map(|i| format!("p{i}"))).len(),
                8,
                "{policy:?}"
            );
            assert_eq!(s.evicted_keys(), 4, "{policy:?}");
            assert!(s.used_memory() <= s.maxmemory().bytes);
        }
    }

    #[test]
    fn allkeys_random_evicts_until_memory_is_within_the_bound() {
        let mut s = server(Policy::AllKeysRandom, 100 * footprint(4, 40), 5);
        for i in 0..300 {
            assert_eq!(run(&mut s, &["SET", &format!("k{i:03}"), V]), Reply::ok());
        }
        let _ = run(&mut s, &["PING"]);
        assert_eq!(s.store().len(), 100);
        assert_eq!(s.evicted_keys(), 200);
        let info = s.info(&crate::session::InfoSections::parse(&[Bytes::from_static(
            b"stats",
        )]));
        assert!(info.contains("evicted_keys:200\n"), "{info}");
    }

    #[test]
    fn a_large_excess_is_evicted_in_budgets_with_the_timer_going_on() {
        let mut s = server(Policy::AllKeysRandom, 0, 5);
        for i in 0..1_000 {
            let _ = run(&mut s, &["SET", &format!("k{i:03}"), V]);
        }
        s.set_time(5_000);
        assert_eq!(
            run(&mut s, &["CONFIG", "SET", "maxmemory", "1kb"]),
            Reply::ok()
        );
        // Setting a lower bound starts eviction at once, from the timer.
        assert_eq!(s.poll_timeout(), Some(5_000));
        s.handle_timeout(5_000);
        assert_eq!(s.evicted_keys(), EVICT_BUDGET as u64);
        assert_eq!(s.poll_timeout(), Some(5_000), "still over: due again");
        // A command goes through meanwhile (eviction is under way), and
        // evicts its budget too.
        assert_eq!(run(&mut s, &["SET", "new", V]), Reply::ok());
        assert_eq!(s.evicted_keys(), 2 * EVICT_BUDGET as u64);
        while s.poll_timeout().is_some() {
            s.handle_timeout(5_000);
        }
        assert!(s.used_memory() <= 1024);
        assert_eq!(s.store().len() as u64, 1_001 - s.evicted_keys());
    }

    #[test]
    fn inside_multi_a_full_memory_refuses_what_would_queue_and_exec_aborts() {
        let mut s = server(Policy::NoEviction, 2 * footprint(1, 40), 5);
        let mut c = s.new_session();
        for k in ["a", "b", "c"] {
            let _ = run_in(&mut s, &mut c, &["SET", k, V]);
        }
        assert_eq!(run_in(&mut s, &mut c, &["MULTI"]), Reply::ok());
        assert_eq!(error_text(&run_in(&mut s, &mut c, &["SET", "d", V])), OOM);
        // Queuing anything grows the transaction: refused too, as in Redis.
        assert_eq!(error_text(&run_in(&mut s, &mut c, &["GET", "a"])), OOM);
        assert_eq!(
            error_text(&run_in(&mut s, &mut c, &["EXEC"])),
            "EXECABORT Transaction discarded because of previous errors."
        );
        // DISCARD is never refused.
        assert_eq!(run_in(&mut s, &mut c, &["MULTI"]), Reply::ok());
        assert_eq!(run_in(&mut s, &mut c, &["DISCARD"]), Reply::ok());

        // Queued while there was room, executed once there is none: EXEC
        // itself is refused and the transaction discarded.
        let _ = run_in(&mut s, &mut c, &["DEL", "a", "b", "c"]);
        assert_eq!(run_in(&mut s, &mut c, &["MULTI"]), Reply::ok());
        assert_eq!(
            run_in(&mut s, &mut c, &["SET", "x", V]),
            Reply::Status(Bytes::from_static(b"QUEUED"))
        );
        s.set_used_memory(1 << 30);
        assert_eq!(
            error_text(&run_in(&mut s, &mut c, &["EXEC"])),
            format!("EXECABORT Transaction discarded because of: {OOM}")
        );
        assert_eq!(
            error_text(&run_in(&mut s, &mut c, &["EXEC"])),
            "ERR EXEC without MULTI",
            "the transaction is gone"
        );
        // A transaction of reads still runs when full.
        let mut d = s.new_session();
        s.set_used_memory(0);
        assert_eq!(run_in(&mut s, &mut d, &["MULTI"]), Reply::ok());
        let _ = run_in(&mut s, &mut d, &["GET", "x"]);
        s.set_used_memory(1 << 30);
        assert_eq!(
            run_in(&mut s, &mut d, &["EXEC"]),
            Reply::Array(vec![Reply::Nil])
        );
    }

    #[test]
    fn evictions_are_logged_as_deletions_and_break_watches() {
        let mut s = server(Policy::AllKeysLru, 5 * footprint(2, 40), 64);
        s.enable_log(LogStatus {
            fsync: "always".into(),
            ..LogStatus::default()
        });
        let mut watcher = s.new_session();
        for i in 0..5 {
            s.set_time(1_000 + i * 100);
            let _ = run(&mut s, &["SET", &format!("k{i}"), V]);
        }
        assert_eq!(run_in(&mut s, &mut watcher, &["WATCH", "k0"]), Reply::ok());
        let _ = s.take_log_records();
        s.set_time(2_000);
        let _ = run(&mut s, &["SET", "k5", V]);
        let _ = run(&mut s, &["GET", "k5"]);
        assert!(s.store().get(b"k0").is_none(), "the oldest key was evicted");
        let (records, _) = s.take_log_records().expect("records");
        let mut decoder = LogDecoder::new();
        decoder.feed(&aof::file_header());
        decoder.feed(&records);
        let mut effects = Vec::new();
        while let Some(e) = decoder.next_record().unwrap() {
            effects.push(e);
        }
        assert_eq!(
            effects,
            [
                Effect::Set {
                    key: Bytes::from_static(b"k5"),
                    value: Bytes::from_static(V.as_bytes()),
                    deadline: None
                },
                Effect::Del {
                    key: Bytes::from_static(b"k0")
                },
            ]
        );
        assert_eq!(run_in(&mut s, &mut watcher, &["MULTI"]), Reply::ok());
        let _ = run_in(&mut s, &mut watcher, &["GET", "k1"]);
        assert_eq!(run_in(&mut s, &mut watcher, &["EXEC"]), Reply::NilArray);
    }

    /// A rewrite's snapshot shares every entry: evicting one frees nothing
    /// until the snapshot is written out. The allocator's readings must not
    /// make eviction chase that memory (each eviction freeing nothing,
    /// the store would empty), and once the snapshot is gone the memory it
    /// held is counted again.
    #[test]
    fn evictions_during_a_rewrite_do_not_chase_what_the_snapshot_holds() {
        let per_key = footprint(3, 40);
        let mut s = server(Policy::AllKeysRandom, 90 * per_key, 5);
        s.enable_log(LogStatus::default());
        for i in 0..100 {
            let _ = run(&mut s, &["SET", &format!("k{i:02}"), V]);
        }
        let _ = s.take_log_records();
        let mut snapshot: Vec<_> = s.store().slots().collect();
        if let Some(st) = s.log_status_mut() {
            st.rewrite_in_progress = true;
        }
        // What the allocator would count: the store, and what only the
        // snapshot still holds.
        let real = |s: &Server, snapshot: &[crate::db::Slot]| {
            let held: u64 = snapshot
                .iter()
                .filter(|slot| !slot.entry.is_shared())
                .map(|slot| slot.entry.footprint() as u64)
                .sum();
            s.store().footprint() + held
        };
        for _ in 0..50 {
            let now = real(&s, &snapshot);
            s.set_used_memory(now);
            let _ = run(&mut s, &["PING"]);
        }
        assert_eq!(
            s.evicted_keys(),
            10,
            "only the excess, however many readings"
        );
        // The rewrite wrote it out: its memory is free, and counted again.
        snapshot.clear();
        if let Some(st) = s.log_status_mut() {
            st.rewrite_in_progress = false;
        }
        s.set_used_memory(real(&s, &snapshot));
        let _ = run(&mut s, &["PING"]);
        assert_eq!(s.evicted_keys(), 10);
        assert_eq!(s.used_memory(), 90 * per_key);
    }

    #[test]
    fn config_get_and_set_show_and_change_the_bound_as_redis() {
        let mut s = server(Policy::NoEviction, 0, 5);
        let get = |s: &mut Server, name: &str| match run(s, &["CONFIG", "GET", name]) {
            Reply::Map(items) => match &items[..] {
                [(_, Reply::Bulk(v))] => String::from_utf8_lossy(v).into_owned(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(get(&mut s, "maxmemory"), "0");
        assert_eq!(get(&mut s, "maxmemory-policy"), "noeviction");
        assert_eq!(get(&mut s, "maxmemory-samples"), "5");
        let set = |s: &mut Server, args: &[&str]| {
            let mut all = vec!["CONFIG", "SET"];
            all.extend_from_slice(args);
            run(s, &all)
        };
        assert_eq!(set(&mut s, &["maxmemory", "100mb"]), Reply::ok());
        assert_eq!(get(&mut s, "maxmemory"), "104857600");
        assert_eq!(set(&mut s, &["MAXMEMORY", "1g"]), Reply::ok());
        assert_eq!(get(&mut s, "maxmemory"), "1000000000");
        assert_eq!(
            set(&mut s, &["maxmemory-policy", "ALLKEYS-LRU"]),
            Reply::ok()
        );
        assert_eq!(get(&mut s, "maxmemory-policy"), "allkeys-lru");
        assert!(s.store().access().is_some(), "LRU keeps access words");
        assert_eq!(set(&mut s, &["maxmemory-samples", "10"]), Reply::ok());
        assert_eq!(get(&mut s, "maxmemory-samples"), "10");
        assert_eq!(
            error_text(&set(&mut s, &["maxmemory", "lots"])),
            "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument must be a memory value"
        );
        assert_eq!(
            error_text(&set(&mut s, &["maxmemory-policy", "lru"])),
            "ERR CONFIG SET failed (possibly related to argument 'maxmemory-policy') - argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, allkeys-lru, allkeys-lfu, allkeys-random, noeviction"
        );
        assert_eq!(
            error_text(&set(&mut s, &["maxmemory-samples", "0"])),
            "ERR CONFIG SET failed (possibly related to argument 'maxmemory-samples') - argument must be between 1 and 64 inclusive"
        );
        // All or nothing: a refused value undoes those set before it.
        assert!(set(&mut s, &["maxmemory", "5mb", "maxmemory-samples", "x"]).is_error());
        assert_eq!(get(&mut s, "maxmemory"), "1000000000");
        assert!(
            error_text(&set(&mut s, &["maxmemory", "1", "maxmemory", "2"]))
                .ends_with("duplicate parameter")
        );
        assert_eq!(
            set(&mut s, &["maxmemory-policy", "noeviction"]),
            Reply::ok()
        );
        assert!(s.store().access().is_none(), "the words are freed");
        let info = s.info(&crate::session::InfoSections::parse(&[Bytes::from_static(
            b"memory",
        )]));
        assert!(
            info.contains("maxmemory:1000000000\nmaxmemory_human:953.67M\n"),
            "{info}"
        );
    }

    #[test]
    fn memory_values_and_human_sizes_read_and_print_as_redis() {
        assert_eq!(parse_memory(b"100000"), Some(100_000));
        assert_eq!(parse_memory(b"0"), Some(0));
        assert_eq!(parse_memory(b"100mb"), Some(100 << 20));
        assert_eq!(parse_memory(b"100MB"), Some(100 << 20));
        assert_eq!(parse_memory(b"1gb"), Some(1 << 30));
        assert_eq!(parse_memory(b"1g"), Some(1_000_000_000));
        assert_eq!(parse_memory(b"2k"), Some(2_000));
        assert_eq!(parse_memory(b"2kb"), Some(2_048));
        assert_eq!(parse_memory(b"7b"), Some(7));
        for bad in [
            &b""[..],
            b"mb",
            b"-1",
            b"1.5mb",
            b"1tb",
            b"10 mb",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_memory(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.50K");
        assert_eq!(human_bytes(100 << 20), "100.00M");
        assert_eq!(human_bytes(3 << 30), "3.00G");
    }
}
