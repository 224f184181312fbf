//! The Redis Cluster fixture ([`RedisCluster`]) that the proxy's cluster
//! tests stand on: 3 masters with a replica each come up serving all
//! slots; keys written to the masters that own them read back; a reshard
//! moves slots, with their keys, while keys are read through the
//! redirections; and killing a master makes its replica serve its slots
//! and keys. Dropping the cluster leaves no process or directory behind.
//!
//! One test, one cluster: six redis-servers are plenty for a 2-core
//! machine that runs the other tests alongside. The time of each phase is
//! printed, as it is what the proxy's cluster tests will cost.

use kv_tests::{require_tool, run_tool, Conn, RedisCluster, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

/// Reads `key` on `conn` and follows one redirection, as a cluster client
/// does: `MOVED` (the slot has moved) or `ASK` (its key is being migrated:
/// ask the target, just this once). Whether it was redirected is returned
/// with the reply.
fn get_following(conn: &mut Conn, key: &str) -> (Value, bool) {
    let reply = conn.call_resp2(&["GET", key]);
    let Value::Error(e) = &reply else {
        return (reply, false);
    };
    let words: Vec<&str> = e.split(' ').collect();
    let target: SocketAddr = match words[..] {
        ["MOVED" | "ASK", _slot, target] => target.parse().expect("a redirection's address"),
        _ => return (reply, false),
    };
    let mut there = Conn::connect(target);
    if words[0] == "ASK" {
        assert_eq!(
            there.call_resp2(&["ASKING"]),
            Value::Status("OK".into()),
            "ASKING on {target}"
        );
    }
    (there.call_resp2(&["GET", key]), true)
}

#[test]
fn cluster_starts_reshards_and_fails_over() {
    let Some(cli) = require_tool("redis-cli") else {
        return;
    };
    let started = Instant::now();
    let Some(mut cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let startup = started.elapsed();

    // The shape asked for: 3 masters, each with its own replica, serving
    // every slot once between them.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    assert_eq!(cluster.nodes().len(), 6);
    let seeds: Vec<SocketAddr> = cluster
        .seeds()
        .split(',')
        .map(|s| s.parse().expect("a seed address"))
        .collect();
    assert_eq!(seeds, cluster.nodes());
    let mut served = BTreeSet::new();
    for &m in &masters {
        for slot in cluster.slots_of(m) {
            assert!(served.insert(slot), "slot {slot} served twice");
        }
    }
    assert_eq!(served.len(), 16384);
    let replicas: BTreeSet<SocketAddr> = masters
        .iter()
        .map(|&m| {
            cluster
                .replica_of(m)
                .unwrap_or_else(|| panic!("{m} has no replica"))
        })
        .collect();
    assert_eq!(replicas.len(), 3, "each master has a replica of its own");
    assert!(replicas.iter().all(|r| !masters.contains(r)));
    // Values the Redis Cluster specification gives; a hash tag hashes alone.
    assert_eq!(cluster.key_slot("foo"), 12182);
    assert_eq!(
        cluster.key_slot("{user1000}.following"),
        cluster.key_slot("{user1000}.followers")
    );

    // Each key written to the master of its slot, which must accept it
    // (no MOVED): the fixture's slot map is the cluster's.
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    let slot_of: HashMap<&str, u16> = keys
        .iter()
        .map(|k| (k.as_str(), cluster.key_slot(k)))
        .collect();
    let mut conns: HashMap<SocketAddr, Conn> =
        masters.iter().map(|&m| (m, Conn::connect(m))).collect();
    for k in &keys {
        let master = cluster.master_for_slot(slot_of[k.as_str()]);
        let reply = conns
            .get_mut(&master)
            .unwrap()
            .call_resp2(&["SET", k, &value_of(k)]);
        assert_eq!(reply, Value::Status("OK".into()), "SET {k} on {master}");
    }
    for k in &keys {
        let master = cluster.master_for_slot(slot_of[k.as_str()]);
        let reply = conns.get_mut(&master).unwrap().call_resp2(&["GET", k]);
        assert_eq!(reply, bulk(&value_of(k)), "GET {k} on {master}");
    }

    // A reshard of 1000 slots, the keys read from their old master
    // meanwhile, following the redirections.
    let (from, to) = (masters[0], masters[1]);
    let from_before = cluster.slots_of(from);
    let to_before = cluster.slots_of(to);
    let old_keys: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| from_before.contains(&slot_of[k]))
        .collect();
    let started = Instant::now();
    let mut job = cluster.start_reshard(from, to, 1000);
    let (mut reads, mut redirected) = (0, 0);
    let mut on_from = Conn::connect(from);
    while !job.is_finished() {
        for k in &old_keys {
            let (reply, was_redirected) = get_following(&mut on_from, k);
            assert_eq!(reply, bulk(&value_of(k)), "GET {k} during the reshard");
            reads += 1;
            redirected += usize::from(was_redirected);
        }
        // The slot map is readable while slots are half migrated.
        let owner = cluster.master_for_slot(slot_of[old_keys[0]]);
        assert!(owner == from || owner == to, "slot owned by {owner}");
    }
    job.wait();
    let reshard = started.elapsed();

    let from_after = cluster.slots_of(from);
    let to_after = cluster.slots_of(to);
    let moved: Vec<u16> = from_before
        .iter()
        .copied()
        .filter(|s| !from_after.contains(s))
        .collect();
    assert_eq!(moved.len(), 1000, "slots moved off {from}");
    assert_eq!(from_after.len(), from_before.len() - 1000);
    assert_eq!(to_after.len(), to_before.len() + 1000);
    assert!(moved.iter().all(|s| to_after.contains(s)));
    assert!(moved.iter().all(|&s| cluster.master_for_slot(s) == to));
    let moved_keys: Vec<&str> = old_keys
        .iter()
        .copied()
        .filter(|k| moved.contains(&slot_of[k]))
        .collect();
    assert!(
        !moved_keys.is_empty(),
        "some of the keys were in moved slots"
    );
    for k in &moved_keys {
        let slot = slot_of[k];
        assert_eq!(
            Conn::connect(from).call_resp2(&["GET", k]),
            Value::Error(format!("MOVED {slot} {to}")),
            "GET {k} on its old master"
        );
        assert_eq!(
            Conn::connect(to).call_resp2(&["GET", k]),
            bulk(&value_of(k))
        );
    }
    // redis-cli -c follows the MOVED itself.
    let k = moved_keys[0];
    let out = run_tool(
        &cli,
        [
            "-c",
            "-h",
            "127.0.0.1",
            "-p",
            &from.port().to_string(),
            "GET",
            k,
        ],
        Duration::from_secs(10),
    );
    assert_eq!(
        out.stdout.trim(),
        value_of(k),
        "redis-cli -c GET {k}: {out:?}"
    );

    // The master that received the slots is killed: its replica must
    // serve them, with the keys written before and those migrated. WAIT
    // makes sure the replica had them all (the one replication stream
    // carries the migrated keys before this write).
    let replica = cluster.replica_of(to).expect("a replica");
    let mut c = Conn::connect(to);
    let marker = keys
        .iter()
        .find(|k| to_after.contains(&slot_of[k.as_str()]))
        .expect("a key on the master to kill");
    assert_eq!(
        c.call_resp2(&["SET", marker, "last write"]),
        Value::Status("OK".into())
    );
    assert_eq!(c.call_resp2(&["WAIT", "1", "1000"]), Value::Integer(1));
    let started = Instant::now();
    let promoted = cluster.kill_master(to);
    let failover = started.elapsed();

    assert_eq!(promoted, replica);
    let masters_now = cluster.masters();
    assert_eq!(
        masters_now.len(),
        3,
        "masters after the failover: {masters_now:?}"
    );
    assert!(masters_now.contains(&promoted) && !masters_now.contains(&to));
    assert_eq!(cluster.nodes().len(), 5);
    assert!(!cluster.nodes().contains(&to));
    assert_eq!(cluster.slots_of(promoted), to_after);
    assert_eq!(cluster.replica_of(promoted), None, "its master is dead");
    let mut on_promoted = 0;
    for k in &keys {
        let slot = slot_of[k.as_str()];
        let master = cluster.master_for_slot(slot);
        let expected = if k == marker {
            "last write".to_owned()
        } else {
            value_of(k)
        };
        assert_eq!(
            Conn::connect(master).call_resp2(&["GET", k]),
            bulk(&expected),
            "GET {k} (slot {slot}) on {master} after the failover"
        );
        on_promoted += usize::from(master == promoted);
    }
    assert!(
        on_promoted > moved_keys.len(),
        "keys of both kinds on {promoted}"
    );

    let pids = cluster.pids();
    let dir = cluster.dir().to_owned();
    assert!(dir.exists());
    drop(cluster);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "redis-server {pid} outlived the cluster"
        );
    }
    assert!(!dir.exists(), "{} outlived the cluster", dir.display());

    eprintln!(
        "cluster of 6 nodes: startup {startup:.2?}, reshard of 1000 slots {reshard:.2?} \
         ({reads} reads meanwhile, {redirected} redirected), failover {failover:.2?}"
    );
}
