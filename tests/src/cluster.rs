//! A local Redis Cluster for the proxy's end-to-end tests: real
//! `redis-server` nodes on free ports, joined by `redis-cli --cluster
//! create`, resharded with `redis-cli --cluster reshard`, a master killed to
//! make its replica take over, and every process killed when dropped.
//!
//! Every change waits, with a deadline, until each live node says the same
//! thing: `cluster_state:ok`, all 16384 slots served, the same slot map and
//! replication in `CLUSTER NODES`, each replica's link to its master up. A
//! test that starts its proxy after one of these calls returns thus sees a
//! settled cluster; one that runs load during a change (a [`ReshardJob`],
//! [`RedisCluster::kill_master`]) sees it move.

use crate::conn::{Conn, Value};
use crate::process::{run_tool, scratch_dir, try_free_port, STARTUP_TIMEOUT};
use crate::tools::require_tool;
use crate::wait::poll_for;
use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The nodes' `cluster-node-timeout`: how long a node must be unreachable
/// before the others may count it as failed. Short, so that a failover
/// takes seconds (the timeout, then gossip and an election), yet well
/// above the stalls of a busy test machine, which would fail a node over
/// spuriously.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// How long the nodes get to agree after `redis-cli --cluster create` or a
/// reshard.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`RedisCluster::kill_master`] waits for a replica to take over:
/// the node timeout and an election take a few seconds; a loaded machine
/// may stretch them.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a `redis-cli --cluster` command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// One `redis-server` of the cluster.
struct Node {
    child: Child,
    addr: SocketAddr,
    /// Its working directory (`nodes.conf`, `redis.log`).
    dir: PathBuf,
    /// Whether it was killed on purpose (and reaped).
    killed: bool,
}

/// A running Redis Cluster of `redis-server` processes on 127.0.0.1.
///
/// Dropping it kills (SIGKILL) and reaps every node and removes their
/// directories.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    cli: PathBuf,
    /// Names the log files of successive reshards.
    reshards: AtomicUsize,
}

/// What one node holds, as a node's `CLUSTER NODES` says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// A master serving these inclusive slot ranges (maybe none).
    Master(Vec<(u16, u16)>),
    /// A replica of the node with this id.
    Replica(String),
    /// Flagged `fail` or `fail?`: it holds nothing that is served.
    Failed,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeEntry {
    id: String,
    addr: SocketAddr,
    role: Role,
}

/// A node's view of the cluster: its `CLUSTER NODES`, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    entries: Vec<NodeEntry>,
    /// Whether a slot is being migrated to or from this node (it stays
    /// its old master's until the migration ends).
    migrating: bool,
}

impl View {
    fn entry(&self, addr: SocketAddr) -> Option<&NodeEntry> {
        self.entries.iter().find(|e| e.addr == addr)
    }

    fn by_id(&self, id: &str) -> Option<&NodeEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    fn masters(&self) -> impl Iterator<Item = &NodeEntry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.role, Role::Master(_)))
    }

    fn replicas_of<'v>(&'v self, master_id: &'v str) -> impl Iterator<Item = &'v NodeEntry> {
        self.entries
            .iter()
            .filter(move |e| matches!(&e.role, Role::Replica(m) if m == master_id))
    }

    fn owner(&self, slot: u16) -> Option<&NodeEntry> {
        self.entries.iter().find(|e| match &e.role {
            Role::Master(slots) => slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)),
            _ => false,
        })
    }

    fn slots_of(&self, addr: SocketAddr) -> Vec<(u16, u16)> {
        match self.entry(addr) {
            Some(NodeEntry {
                role: Role::Master(slots),
                ..
            }) => slots.clone(),
            _ => Vec::new(),
        }
    }
}

/// Parses `CLUSTER NODES`. A node still in the handshake or without an
/// address is an error: the view is not usable yet.
fn parse_nodes(text: &str) -> Result<View, String> {
    let mut entries = Vec::new();
    let mut migrating = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line {line:?}"));
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        if flags.iter().any(|f| matches!(*f, "handshake" | "noaddr")) {
            return Err(format!("node not joined yet: {line:?}"));
        }
        // `ip:port@cport[,hostname]`
        let addr_text = fields[1].split(['@', ',']).next().unwrap_or_default();
        let addr: SocketAddr = addr_text
            .parse()
            .map_err(|e| format!("bad address in {line:?}: {e}"))?;
        let role = if flags.iter().any(|f| matches!(*f, "fail" | "fail?")) {
            Role::Failed
        } else if flags.contains(&"master") {
            let mut slots = Vec::new();
            for token in &fields[8..] {
                // `[slot->-id]`, `[slot-<-id]`
                if token.starts_with('[') {
                    migrating = true;
                    continue;
                }
                let (lo, hi) = token.split_once('-').unwrap_or((token, token));
                let parse = |s: &str| {
                    s.parse::<u16>()
                        .map_err(|e| format!("bad slot {token:?} in {line:?}: {e}"))
                };
                slots.push((parse(lo)?, parse(hi)?));
            }
            Role::Master(slots)
        } else if flags.contains(&"slave") {
            Role::Replica(fields[3].to_owned())
        } else {
            return Err(format!("neither master nor replica: {line:?}"));
        };
        entries.push(NodeEntry {
            id: fields[0].to_owned(),
            addr,
            role,
        });
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(View { entries, migrating })
}

/// The value of `key` in `key:value` lines (`INFO`, `CLUSTER INFO`).
fn field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then_some(v.trim())
    })
}

/// Sends one command to `addr` on a new connection; an error reply or a
/// node that cannot be reached is an `Err`.
fn query(addr: SocketAddr, args: &[&[u8]]) -> Result<Value, String> {
    let mut conn = Conn::try_connect(addr).map_err(|e| format!("{addr}: cannot connect: {e}"))?;
    match conn.call(args).1 {
        Value::Error(e) => Err(format!("{addr}: {e}")),
        value => Ok(value),
    }
}

/// [`query`] for a command answering text (a bulk string).
fn query_text(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    match query(addr, &args)? {
        Value::Bulk(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(format!("{addr}: {args:?} answered {other:?}")),
    }
}

/// The last lines of a node's log, for a message about it.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, makes them a
    /// cluster of `masters` masters each with `replicas_per_master`
    /// replicas (`redis-cli --cluster create`), and waits until every node
    /// agrees that all slots are served. `None` when `redis-server` or
    /// `redis-cli` is missing and [`require_tool`] allows skipping.
    ///
    /// # Panics
    ///
    /// If `masters` is under 3 (Redis' minimum), or the cluster does not
    /// come up in time; the message says what was missing.
    pub fn start(masters: usize, replicas_per_master: usize) -> Option<RedisCluster> {
        let server = require_tool("redis-server")?;
        let cli = require_tool("redis-cli")?;
        assert!(
            masters >= 3,
            "redis-cli creates clusters of 3 masters or more, not {masters}"
        );
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir: scratch_dir("redis-cluster"),
            cli,
            reshards: AtomicUsize::new(0),
        };
        let total = masters * (1 + replicas_per_master);
        let mut ports = HashSet::new();
        for i in 0..total {
            let node = cluster.start_node(&server, i, &mut ports);
            cluster.nodes.push(node);
        }

        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.nodes.iter().map(|n| n.addr.to_string()));
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas_per_master.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let out = run_tool(&cluster.cli, &args, CLI_TIMEOUT);
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            out.stdout,
            out.stderr
        );

        cluster.settle(SETTLE_TIMEOUT, "the new cluster settles", |view| {
            let shape: Vec<usize> = view
                .masters()
                .map(|m| view.replicas_of(&m.id).count())
                .collect();
            if shape == vec![replicas_per_master; masters] {
                Ok(())
            } else {
                Err(format!(
                    "replicas per master {shape:?}, not {masters} x {replicas_per_master}"
                ))
            }
        });
        Some(cluster)
    }

    /// Starts node number `i` on ports not in `taken` (adding them), and
    /// waits until it answers. A port another process bound first makes
    /// redis-server exit: it is tried again on other ports, twice.
    fn start_node(&self, program: &Path, i: usize, taken: &mut HashSet<u16>) -> Node {
        let mut fresh_port = || loop {
            let port = try_free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
            if taken.insert(port) {
                return port;
            }
        };
        let mut last = String::new();
        for _ in 0..3 {
            let (port, bus_port) = (fresh_port(), fresh_port());
            let dir = self.dir.join(format!("node-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let log = File::create(dir.join("redis.log"))
                .unwrap_or_else(|e| panic!("cannot create a log in {}: {e}", dir.display()));
            let node_timeout = NODE_TIMEOUT.as_millis().to_string();
            let child = Command::new(program)
                .args(["--port", &port.to_string()])
                // Left to itself the bus port is the port + 10000, which
                // may be taken or beyond 65535.
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--bind", "127.0.0.1", "--daemonize", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &node_timeout])
                .args(["--save", "", "--appendonly", "no"])
                // A master waits 5 s by default for more replicas before a
                // full sync, which would hold every start up.
                .args(["--repl-diskless-sync-delay", "0"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("log file handle")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
            let mut node = Node {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir,
                killed: false,
            };
            // The process id tells our node from another process that took
            // the port meanwhile and answers there.
            let pid = node.child.id().to_string();
            let up = poll_for(STARTUP_TIMEOUT, || {
                if let Ok(Some(status)) = node.child.try_wait() {
                    return Some(Err(status));
                }
                let info = query_text(node.addr, &["INFO", "server"]).ok()?;
                (field(&info, "process_id") == Some(pid.as_str())).then_some(Ok(()))
            });
            match up {
                Some(Ok(())) => return node,
                Some(Err(status)) => {
                    last = format!(
                        "{status} on port {port} (bus {bus_port}):\n{}",
                        log_tail(&node.dir)
                    );
                }
                None => panic!(
                    "redis-server on {} did not answer within {STARTUP_TIMEOUT:?}:\n{}",
                    node.addr,
                    log_tail(&node.dir)
                ),
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Every running node's address (those killed by
    /// [`kill_master`](Self::kill_master) left out), masters and replicas,
    /// in the order they were started.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        self.live().map(|n| n.addr).collect()
    }

    /// The process ids of the running nodes, in the order of
    /// [`nodes`](Self::nodes).
    pub fn pids(&self) -> Vec<u32> {
        self.live().map(|n| n.child.id()).collect()
    }

    /// The directory holding each node's directory (`node-N/`, with its
    /// `nodes.conf` and `redis.log`), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The running nodes, comma-separated (`ADDR,ADDR,…`), as
    /// `kv proxy --upstream-cluster` takes its seeds.
    pub fn seeds(&self) -> String {
        let addrs: Vec<String> = self.nodes().iter().map(SocketAddr::to_string).collect();
        addrs.join(",")
    }

    /// The masters now (a failover changes them), as the first running
    /// node sees them, sorted by address.
    pub fn masters(&self) -> Vec<SocketAddr> {
        let mut masters: Vec<SocketAddr> = self.view().masters().map(|m| m.addr).collect();
        masters.sort();
        masters
    }

    /// A working replica of the master at `master` (the first by node id
    /// if it has several), or `None` if it has none.
    ///
    /// # Panics
    ///
    /// If `master` is not a master.
    pub fn replica_of(&self, master: SocketAddr) -> Option<SocketAddr> {
        let view = self.view();
        let id = &self.master_entry(&view, master).id;
        let replica = view.replicas_of(id).next().map(|r| r.addr);
        replica
    }

    /// The master serving hash slot `slot`, as the first running node sees
    /// it (during a reshard, a slot is its old master's until it has moved).
    ///
    /// # Panics
    ///
    /// If the slot is out of range or served by no master.
    pub fn master_for_slot(&self, slot: u16) -> SocketAddr {
        let view = self.view();
        let owner = view.owner(slot).map(|m| m.addr);
        owner.unwrap_or_else(|| panic!("no master serves slot {slot}: {view:?}"))
    }

    /// The hash slots `master` serves, ascending, as the first running node
    /// sees it (none for a replica).
    pub fn slots_of(&self, master: SocketAddr) -> Vec<u16> {
        self.view()
            .slots_of(master)
            .into_iter()
            .flat_map(|(lo, hi)| lo..=hi)
            .collect()
    }

    /// The hash slot of `key` (hash tags included), as Redis computes it
    /// (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: impl AsRef<[u8]>) -> u16 {
        let addr = self.first_live();
        match query(addr, &[b"CLUSTER", b"KEYSLOT", key.as_ref()]) {
            Ok(Value::Integer(slot)) => u16::try_from(slot).expect("a slot fits in u16"),
            other => panic!("CLUSTER KEYSLOT on {addr} answered {other:?}"),
        }
    }

    /// The node id of the node at `addr` (`CLUSTER MYID`).
    ///
    /// # Panics
    ///
    /// If it cannot be asked.
    pub fn node_id(&self, addr: SocketAddr) -> String {
        query_text(addr, &["CLUSTER", "MYID"]).unwrap_or_else(|e| panic!("CLUSTER MYID: {e}"))
    }

    /// Moves `slots` hash slots (and their keys) from the master
    /// `from_master` to the master `to_master` with `redis-cli --cluster
    /// reshard`, and returns once every node agrees on the new slot map.
    ///
    /// # Panics
    ///
    /// As [`ReshardJob::wait`].
    pub fn reshard(&self, from_master: SocketAddr, to_master: SocketAddr, slots: usize) {
        self.start_reshard(from_master, to_master, slots).wait();
    }

    /// Starts what [`reshard`](Self::reshard) does and returns at once, for
    /// a test that runs load meanwhile; [`ReshardJob::wait`] finishes it.
    ///
    /// # Panics
    ///
    /// If either address is not a master, or they are the same.
    pub fn start_reshard(
        &self,
        from_master: SocketAddr,
        to_master: SocketAddr,
        slots: usize,
    ) -> ReshardJob<'_> {
        assert_ne!(from_master, to_master, "a reshard between two masters");
        let view = self.view();
        let from = self.master_entry(&view, from_master).id.clone();
        let to = self.master_entry(&view, to_master).id.clone();
        let args = vec![
            "--cluster".to_owned(),
            "reshard".to_owned(),
            to_master.to_string(),
            "--cluster-from".to_owned(),
            from,
            "--cluster-to".to_owned(),
            to,
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ];
        let n = self.reshards.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.join(format!("reshard-{n}.log"));
        // A file, not a pipe: redis-cli prints a line per slot and per key
        // moved, and nothing would read a pipe while the test runs load.
        let out =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = Command::new(&self.cli)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log file handle")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.cli.display()));
        ReshardJob {
            cluster: self,
            child,
            status: None,
            args,
            log,
        }
    }

    /// Kills (SIGKILL) the master at `addr` and waits until one of its
    /// replicas has taken over its slots and every other node agrees, the
    /// cluster serving all slots again; returns the new master's address.
    /// The killed node stays in the cluster as failed, and out of
    /// [`nodes`](Self::nodes).
    ///
    /// # Panics
    ///
    /// If `addr` is not a master with a replica, or no replica takes over
    /// within 30 s.
    pub fn kill_master(&mut self, addr: SocketAddr) -> SocketAddr {
        self.kill_master_then(addr, || {})
    }

    /// [`RedisCluster::kill_master`], calling `killed` as soon as the
    /// process is gone, before waiting for the failover (a test's load
    /// held until then runs through the failover, with nothing written
    /// between the test's last check and the kill).
    pub fn kill_master_then(&mut self, addr: SocketAddr, killed: impl FnOnce()) -> SocketAddr {
        let view = self.view();
        let master = self.master_entry(&view, addr).clone();
        let candidates: Vec<SocketAddr> = view.replicas_of(&master.id).map(|r| r.addr).collect();
        assert!(
            !candidates.is_empty(),
            "master {addr} has no replica to take over"
        );
        let Role::Master(slots) = master.role else {
            unreachable!("master_entry returns masters")
        };

        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.addr == addr && !n.killed)
            .unwrap_or_else(|| panic!("{addr} is not a running node of this cluster"));
        let _ = node.child.kill();
        let _ = node.child.wait();
        node.killed = true;
        killed();

        self.settle(
            FAILOVER_TIMEOUT,
            &format!("a replica of {addr} takes over"),
            |view| {
                match view.by_id(&master.id).map(|e| &e.role) {
                    Some(Role::Failed) => {}
                    other => return Err(format!("{addr} is {other:?}, not failed")),
                }
                candidates
                    .iter()
                    .find(|&&c| view.slots_of(c) == slots)
                    .map(|_| ())
                    .ok_or_else(|| {
                        format!("no replica of {addr} ({candidates:?}) serves its slots")
                    })
            },
        )
        .masters()
        .find(|m| candidates.contains(&m.addr))
        .expect("settle checked that a candidate took over")
        .addr
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.killed)
    }

    fn first_live(&self) -> SocketAddr {
        self.live().next().expect("a running node").addr
    }

    /// The first running node's view of the cluster.
    fn view(&self) -> View {
        let addr = self.first_live();
        query_text(addr, &["CLUSTER", "NODES"])
            .and_then(|text| parse_nodes(&text))
            .unwrap_or_else(|e| panic!("CLUSTER NODES: {e}"))
    }

    fn master_entry<'v>(&self, view: &'v View, addr: SocketAddr) -> &'v NodeEntry {
        match view.entry(addr) {
            Some(
                e @ NodeEntry {
                    role: Role::Master(_),
                    ..
                },
            ) => e,
            other => panic!("{addr} is not a master: {other:?}"),
        }
    }

    /// Whether the cluster has settled: every running node serves all
    /// slots (`cluster_state:ok`), knows every node, has the same view
    /// (no slot half migrated), is in the replication role the view gives
    /// it and, if a replica, has its link to its master up; and `check`
    /// accepts that view. The view, or what is not settled yet.
    fn settled(&self, check: &impl Fn(&View) -> Result<(), String>) -> Result<View, String> {
        let mut agreed: Option<(SocketAddr, View)> = None;
        for node in self.live() {
            let addr = node.addr;
            let info = query_text(addr, &["CLUSTER", "INFO"])?;
            let expect = |key: &str, want: &str| match field(&info, key) {
                Some(v) if v == want => Ok(()),
                got => Err(format!("{addr}: {key} is {got:?}, not {want}")),
            };
            expect("cluster_state", "ok")?;
            expect("cluster_slots_ok", &SLOTS.to_string())?;
            expect("cluster_known_nodes", &self.nodes.len().to_string())?;
            let view = parse_nodes(&query_text(addr, &["CLUSTER", "NODES"])?)
                .map_err(|e| format!("{addr}: {e}"))?;
            if view.migrating {
                return Err(format!("{addr}: a slot is being migrated: {view:?}"));
            }
            match &agreed {
                None => agreed = Some((addr, view.clone())),
                Some((first, seen)) if *seen != view => {
                    return Err(format!("{addr} sees {view:?}, {first} sees {seen:?}"))
                }
                Some(_) => {}
            }
            let replication = query_text(addr, &["INFO", "replication"])?;
            let role = field(&replication, "role");
            match view.entry(addr).map(|e| &e.role) {
                Some(Role::Master(_)) if role == Some("master") => {}
                Some(Role::Replica(_)) if role == Some("slave") => {
                    let link = field(&replication, "master_link_status");
                    if link != Some("up") {
                        return Err(format!("{addr}: master_link_status is {link:?}"));
                    }
                }
                cluster_role => {
                    return Err(format!(
                        "{addr}: replication role {role:?}, cluster role {cluster_role:?}"
                    ))
                }
            }
        }
        let (_, view) = agreed.expect("a running node");
        check(&view)?;
        Ok(view)
    }

    /// Polls [`settled`](Self::settled) until it holds.
    ///
    /// # Panics
    ///
    /// If `timeout` passes first, with what was not settled then.
    fn settle(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&View) -> Result<(), String>,
    ) -> View {
        let mut last = String::new();
        let settled = poll_for(timeout, || match self.settled(&check) {
            Ok(view) => Some(view),
            Err(e) => {
                last = e;
                None
            }
        });
        settled.unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting until {what}: {last}\nnode logs in {}",
                self.dir.display()
            )
        })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| !n.killed) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-cli --cluster reshard` under way, from
/// [`RedisCluster::start_reshard`]. Dropping it before it is finished
/// kills redis-cli, leaving slots half migrated.
pub struct ReshardJob<'c> {
    cluster: &'c RedisCluster,
    child: Child,
    status: Option<ExitStatus>,
    args: Vec<String>,
    log: PathBuf,
}

impl ReshardJob<'_> {
    /// Whether redis-cli has exited (the nodes may not agree yet).
    pub fn is_finished(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// Waits until redis-cli has exited and every node agrees on the new
    /// slot map.
    ///
    /// # Panics
    ///
    /// If redis-cli fails or runs over 2 minutes, or the nodes do not
    /// agree within 30 s after; the message carries redis-cli's output.
    pub fn wait(mut self) {
        let finished = poll_for(CLI_TIMEOUT, || self.is_finished().then_some(()));
        let output = || std::fs::read_to_string(&self.log).unwrap_or_default();
        match (finished, self.status) {
            (Some(()), Some(status)) if status.success() => {}
            (_, status) => panic!(
                "redis-cli {:?}: {}\n--- output ---\n{}",
                self.args,
                status.map_or("did not finish within 2 minutes".to_owned(), |s| s
                    .to_string()),
                output()
            ),
        }
        self.cluster.settle(
            SETTLE_TIMEOUT,
            "the nodes agree after a reshard",
            |_| Ok(()),
        );
    }
}

impl Drop for ReshardJob<'_> {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
aaa 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 6000
bbb 127.0.0.1:7002@17002,host master - 0 0 2 connected 5461-5999 6001-16383
ccc 127.0.0.1:7003@17003 slave aaa 0 0 1 connected
ddd 127.0.0.1:7004@17004 master,fail - 0 0 3 disconnected
";
        let view = parse_nodes(text).unwrap();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(view.slots_of(addr(7001)), vec![(0, 5460), (6000, 6000)]);
        assert_eq!(view.slots_of(addr(7002)), vec![(5461, 5999), (6001, 16383)]);
        assert_eq!(
            view.replicas_of("aaa").map(|e| e.addr).collect::<Vec<_>>(),
            vec![addr(7003)]
        );
        assert_eq!(view.by_id("ddd").unwrap().role, Role::Failed);
        assert_eq!(view.masters().count(), 2);

        assert!(!view.migrating);
        assert_eq!(view.owner(6000).map(|e| e.addr), Some(addr(7001)));
        assert_eq!(view.owner(6001).map(|e| e.addr), Some(addr(7002)));

        let migrating =
            "aaa 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5460->-bbb]";
        let migrating = parse_nodes(migrating).unwrap();
        assert!(migrating.migrating);
        assert_eq!(migrating.slots_of(addr(7001)), vec![(0, 5460)]);
        let joining = "aaa :0@0 myself,master,noaddr - 0 0 0 connected";
        assert!(parse_nodes(joining).is_err());
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(field(info, "cluster_state"), Some("ok"));
        assert_eq!(field(info, "cluster_slots_ok"), Some("16384"));
        assert_eq!(field(info, "cluster_size"), None);
    }
}
