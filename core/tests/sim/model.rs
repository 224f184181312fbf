//! The oracle: every key's history at the server, and the read checks.
//!
//! Every `PUT` value is unique (`k<key>:v<seq>`, with a global write
//! sequence number), so a value read names the exact write it came from.
//! The driver decodes, alongside each server connection, the same bytes the
//! server executes, so the model sees the server's apply order: a key's
//! *versions* are numbered by their position in that order, and "older"
//! means "earlier position". A `DEL` that finds the key makes a new
//! (missing) version; a missing value read may match any missing version.
//!
//! Deadlines are part of a version: a key set with `PX`, or given a new
//! deadline by `PEXPIRE` or `PERSIST`, starts a new version (with the same
//! value for the latter two). A version with a deadline ends exactly at
//! it, as the server's clock counts: present strictly before, absent at
//! and after. The server's clock is the simulated one, in whole unix
//! milliseconds from [`EPOCH_MS`].
//!
//! The model is also an exact replica of the server for the commands the
//! simulation sends: [`Model::execute`] gives the reply the server must
//! give to each command in its apply order, transactions included (each
//! connection's `MULTI` queue and `WATCH`ed keys are a [`TxState`]), so
//! every reply the server sends is checked as it leaves the server.
//!
//! It also knows what the server owes each tracking connection (`HELLO 3`,
//! `CLIENT TRACKING ON`: the proxies' main lanes), by Redis's rule: a key
//! that a read-only command named on the connection is remembered for it,
//! and its next change (a write, a removal, a new deadline, expiry) owes
//! the connection one invalidation and forgets the key until it is read
//! again. Each invalidation is owed with the position of the change that
//! caused it, so that when one reaches a proxy the checker knows which
//! version the proxy can no longer serve anything older than. The model
//! owes an expiry's invalidation from the deadline on, the server sends it
//! when it removes the key (later, or on the access that finds it
//! expired): so the model may owe one before the server sends it, never
//! after, and the position it gives is never newer than the server's state
//! when the push goes out.

use bytes::Bytes;
use kv_core::{Command, ExecError, Instant, Reply};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

/// The unix time, in milliseconds, of the simulated clock's zero.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// The server's clock at simulated time `t`: whole unix milliseconds.
pub fn unix_ms(t: Instant) -> u64 {
    EPOCH_MS + t.as_nanos() / 1_000_000
}

/// The simulated instant at which the server's clock reads `ms`.
pub fn instant_of(ms: u64) -> Instant {
    Instant::from_millis(ms.saturating_sub(EPOCH_MS))
}

/// A counter key, touched by `INCR` (in transactions) only.
pub fn counter_name(n: usize) -> Bytes {
    Bytes::from(format!("n{n}"))
}

/// A key the model knows: a value key (`k<i>`, holding `k<i>:v<seq>`
/// values) or a counter (`n<i>`, holding integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Val(usize),
    Ctr(usize),
}

impl Key {
    pub fn text(self) -> String {
        match self {
            Key::Val(k) => format!("k{k}"),
            Key::Ctr(n) => format!("n{n}"),
        }
    }
}

pub fn key_name(k: usize) -> Bytes {
    Bytes::from(format!("k{k}"))
}

pub fn value_bytes(key: usize, seq: u64) -> Bytes {
    Bytes::from(format!("k{key}:v{seq}"))
}

/// The key and write sequence number a value was made with.
pub fn parse_value(b: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (k, seq) = s.strip_prefix('k')?.split_once(":v")?;
    Some((k.parse().ok()?, seq.parse().ok()?))
}

pub fn fmt_t(t: Instant) -> String {
    format!("{:.6}s", t.as_nanos() as f64 / 1e9)
}

pub fn fmt_value(v: Option<u64>) -> String {
    v.map_or_else(|| "(nil)".to_string(), |seq| format!("v{seq}"))
}

pub fn minus(t: Instant, d: Duration) -> Instant {
    Instant::from_nanos(t.as_nanos().saturating_sub(d.as_nanos() as u64))
}

/// One value a key held at the server, from `start` until `end` (`None`:
/// still current), with the deadline it had meanwhile.
#[derive(Debug, Clone)]
pub struct Version {
    pub value: Option<u64>,
    pub start: Instant,
    pub end: Option<Instant>,
    /// When the key expires (unix ms); `None`: never.
    pub deadline: Option<u64>,
    /// It ended at its deadline (rather than by a write).
    pub expired: bool,
    /// Rolled back by a restart that restored older state.
    pub lost: bool,
}

#[derive(Debug)]
pub struct KeyHistory {
    pub versions: Vec<Version>,
    /// Every `DEL` that named the key: (apply clock, resulting position).
    dels: Vec<(u64, usize)>,
    /// Every `PEXPIRE` or `PERSIST` that changed the key's deadline:
    /// (apply clock, resulting position).
    expires: Vec<(u64, usize)>,
    /// The newest position some client saw acknowledged: what must survive
    /// a server restart.
    pub acked: usize,
    /// Bumped by every change of the key (write, removal, deadline,
    /// expiry): what `WATCH` compares.
    changes: u64,
}

/// A counter key: only its value and its changes.
#[derive(Debug, Default)]
pub struct Counter {
    pub value: Option<i64>,
    changes: u64,
}

/// A connection's state, as the server keeps it: its transaction, and
/// what tracking needs to know of it.
#[derive(Debug, Default)]
pub struct TxState {
    /// The connection's number in the model (its tracker's, if it tracks).
    pub conn: u64,
    /// The commands queued since `MULTI`; `None`: not in `MULTI`.
    queue: Option<Vec<Command>>,
    /// Keys watched: the key's change count then, and whether it existed.
    watched: Vec<(Key, u64, bool)>,
    /// The connection said `HELLO 3`: invalidations reach it as pushes.
    resp3: bool,
    /// The proxy whose main lane this is, if it is one: what the server
    /// owes its connections is kept per proxy (see [`Model::owed`]).
    pub group: Option<usize>,
}

impl TxState {
    /// The state of a new connection, number `conn` in the model.
    pub fn new(conn: u64) -> Self {
        TxState {
            conn,
            ..TxState::default()
        }
    }
}

/// What the server owes one tracking connection.
#[derive(Debug)]
struct Tracker {
    /// Per value key: read since its last invalidation (remembered).
    reading: Vec<bool>,
    /// Per value key: the positions of the changes whose invalidations the
    /// server owes the connection, oldest first.
    due: Vec<VecDeque<usize>>,
    /// Its proxy ([`TxState::group`]).
    group: Option<usize>,
}

/// Why a read is not explained by the history.
#[derive(Debug)]
pub enum ReadError {
    /// The value was never written to this key (or never applied).
    Unknown(String),
    /// The value was not current at any time the request could have seen.
    Stale(String),
    /// The value is older than one this session already saw.
    BelowFloor { got: usize },
    /// The value was current in the window, but its key had expired with
    /// it before the read was sent.
    Expired { pos: usize },
}

#[derive(Debug)]
pub struct Model {
    pub keys: Vec<KeyHistory>,
    pub counters: Vec<Counter>,
    /// Writes applied so far: the server's apply clock.
    pub applied: u64,
    /// Where each `PUT` value was first applied: (key, position).
    puts: HashMap<u64, (usize, usize)>,
    /// Keys that reached their deadline.
    pub expired: u64,
    /// Transactions run and aborted by a watched key at the server.
    pub execs: u64,
    pub exec_aborts: u64,
    /// Tracking connections, by their number ([`TxState::conn`]).
    trackers: HashMap<u64, Tracker>,
    /// Per proxy, per value key: the positions of every change whose
    /// invalidation one of the proxy's connections was owed, rising.
    owed: HashMap<usize, Vec<Vec<usize>>>,
}

fn status(s: &'static str) -> Reply {
    Reply::Status(Bytes::from_static(s.as_bytes()))
}

impl Model {
    pub fn new(keys: usize, counters: usize, now: Instant) -> Self {
        Model {
            keys: (0..keys)
                .map(|_| KeyHistory {
                    versions: vec![Version {
                        value: None,
                        start: now,
                        end: None,
                        deadline: None,
                        expired: false,
                        lost: false,
                    }],
                    dels: Vec::new(),
                    expires: Vec::new(),
                    acked: 0,
                    changes: 0,
                })
                .collect(),
            counters: (0..counters).map(|_| Counter::default()).collect(),
            applied: 0,
            puts: HashMap::new(),
            expired: 0,
            execs: 0,
            exec_aborts: 0,
            trackers: HashMap::new(),
            owed: HashMap::new(),
        }
    }

    /// Key `key` changed (its version `pos` began): every tracking
    /// connection that read it since its last invalidation is owed one,
    /// and forgets it.
    fn changed(&mut self, key: usize, pos: usize) {
        let keys = self.keys.len();
        for t in self.trackers.values_mut() {
            if std::mem::take(&mut t.reading[key]) {
                t.due[key].push_back(pos);
                if let Some(g) = t.group {
                    let owed =
                        &mut self.owed.entry(g).or_insert_with(|| vec![Vec::new(); keys])[key];
                    if owed.last() != Some(&pos) {
                        owed.push(pos);
                    }
                }
            }
        }
    }

    /// Whether one of proxy `group`'s connections was ever owed the
    /// invalidation of the change that began version `pos` of `key`.
    pub fn owed(&self, group: usize, key: usize, pos: usize) -> bool {
        self.owed
            .get(&group)
            .is_some_and(|o| o[key].binary_search(&pos).is_ok())
    }

    /// Connection `conn` read `key`: remembered, if it tracks.
    fn remember(&mut self, conn: u64, key: Key) {
        if let (Some(t), Key::Val(k)) = (self.trackers.get_mut(&conn), key) {
            t.reading[k] = true;
        }
    }

    /// The connection ended (or turned tracking off): the server owes it
    /// nothing more.
    pub fn untrack(&mut self, conn: u64) {
        self.trackers.remove(&conn);
    }

    /// The server sent `conn` an invalidation of value key `key`: the
    /// position of the change it was owed for, oldest first; `None` if the
    /// model owes none (the server sent one it should not have).
    pub fn take_due(&mut self, conn: u64, key: usize) -> Option<usize> {
        self.trackers.get_mut(&conn)?.due[key].pop_front()
    }

    pub fn current(&self, key: usize) -> Option<u64> {
        self.keys[key].versions.last().and_then(|v| v.value)
    }

    /// The current deadline of `key` (unix ms), if it has one.
    pub fn deadline(&self, key: usize) -> Option<u64> {
        self.keys[key]
            .versions
            .last()
            .filter(|v| v.value.is_some())
            .and_then(|v| v.deadline)
    }

    /// Parses a key name the simulation uses.
    pub fn key(&self, b: &[u8]) -> Option<Key> {
        let (kind, n) = b.split_first()?;
        let n: usize = std::str::from_utf8(n).ok()?.parse().ok()?;
        match kind {
            b'k' if n < self.keys.len() => Some(Key::Val(n)),
            b'n' if n < self.counters.len() => Some(Key::Ctr(n)),
            _ => None,
        }
    }

    fn push(
        &mut self,
        key: usize,
        value: Option<u64>,
        deadline: Option<u64>,
        now: Instant,
    ) -> usize {
        let h = &mut self.keys[key];
        if let Some(last) = h.versions.last_mut() {
            last.end = Some(now);
        }
        h.versions.push(Version {
            value,
            start: now,
            end: None,
            deadline: value.and(deadline),
            expired: false,
            lost: false,
        });
        h.changes += 1;
        let pos = h.versions.len() - 1;
        self.changed(key, pos);
        pos
    }

    /// Every key whose deadline is not after `now` expires, at its
    /// deadline. Called before anything is applied or checked at `now`;
    /// the server removes such keys whenever it likes, but no command can
    /// see them from their deadline on.
    pub fn expire_until(&mut self, now: Instant) {
        for key in 0..self.keys.len() {
            let h = &mut self.keys[key];
            let Some(last) = h.versions.last_mut() else {
                continue;
            };
            let Some(at) = last.deadline.map(instant_of).filter(|at| *at <= now) else {
                continue;
            };
            if last.value.is_none() {
                continue;
            }
            last.end = Some(at);
            last.expired = true;
            h.versions.push(Version {
                value: None,
                start: at,
                end: None,
                deadline: None,
                expired: false,
                lost: false,
            });
            h.changes += 1;
            self.expired += 1;
            let pos = h.versions.len() - 1;
            self.changed(key, pos);
        }
    }

    /// The server executed `SET k v<seq>` (with a deadline, given `PX`).
    /// A value applied twice means a request was executed twice (a retry
    /// or a duplicated byte range).
    pub fn apply_put(
        &mut self,
        key: usize,
        seq: u64,
        deadline: Option<u64>,
        now: Instant,
    ) -> Result<(), String> {
        self.applied += 1;
        let pos = self.push(key, Some(seq), deadline, now);
        if let Some((k, p)) = self.puts.insert(seq, (key, pos)) {
            return Err(format!(
                "write v{seq} was applied twice (to k{k} at position {p}, then to k{key})"
            ));
        }
        Ok(())
    }

    /// The server executed a `DEL` naming `key`; whether it existed.
    pub fn apply_del(&mut self, key: usize, now: Instant) -> bool {
        self.applied += 1;
        let existed = self.current(key).is_some();
        let pos = if existed {
            self.push(key, None, None, now)
        } else {
            self.keys[key].versions.len() - 1
        };
        let applied = self.applied;
        self.keys[key].dels.push((applied, pos));
        existed
    }

    /// The key keeps its value with a new deadline (`None`: never).
    fn apply_deadline(&mut self, key: usize, deadline: Option<u64>, now: Instant) {
        self.applied += 1;
        let value = self.current(key);
        let pos = self.push(key, value, deadline, now);
        let applied = self.applied;
        self.keys[key].expires.push((applied, pos));
    }

    /// The server came back from a restart holding `value` (with
    /// `deadline`) for `key`, an older value than the model's: the
    /// versions after the newest one holding it are lost, and the restored
    /// value becomes a new version so that the run can go on.
    pub fn lose(&mut self, key: usize, value: Option<u64>, deadline: Option<u64>, now: Instant) {
        let h = &mut self.keys[key];
        let keep = h
            .versions
            .iter()
            .rposition(|v| v.value == value)
            .unwrap_or(0);
        for v in &mut h.versions[keep + 1..] {
            v.lost = true;
        }
        self.applied += 1;
        self.push(key, value, deadline, now);
    }

    /// The server came back holding `value` for counter `n`.
    pub fn reset_counter(&mut self, n: usize, value: Option<i64>) {
        let c = &mut self.counters[n];
        if c.value != value {
            c.value = value;
            c.changes += 1;
        }
    }

    pub fn is_lost(&self, key: usize, pos: usize) -> bool {
        self.keys[key].versions[pos].lost
    }

    /// Position of an applied `PUT`.
    pub fn put_position(&self, seq: u64) -> Option<(usize, usize)> {
        self.puts.get(&seq).copied()
    }

    /// The earliest position a `DEL` of `key` issued when the apply clock
    /// read `since` can have produced: a lower bound on the acknowledged
    /// `DEL`'s own (unknown) position, so floors built on it never claim
    /// more than the client saw.
    pub fn del_position(&self, key: usize, since: u64) -> Option<usize> {
        earliest(&self.keys[key].dels, since)
    }

    /// The same for a `PEXPIRE` or `PERSIST` that answered 1.
    pub fn expire_position(&self, key: usize, since: u64) -> Option<usize> {
        earliest(&self.keys[key].expires, since)
    }

    fn live(&self, key: Key) -> bool {
        match key {
            Key::Val(k) => self.current(k).is_some(),
            Key::Ctr(n) => self.counters[n].value.is_some(),
        }
    }

    fn changes(&self, key: Key) -> u64 {
        match key {
            Key::Val(k) => self.keys[k].changes,
            Key::Ctr(n) => self.counters[n].changes,
        }
    }

    fn value_reply(&self, key: Key) -> Reply {
        match key {
            Key::Val(k) => self
                .current(k)
                .map_or(Reply::Nil, |seq| Reply::Bulk(value_bytes(k, seq))),
            Key::Ctr(n) => self.counters[n]
                .value
                .map_or(Reply::Nil, |v| Reply::Bulk(Bytes::from(v.to_string()))),
        }
    }

    /// Executes a command as the server does at `now` (after
    /// [`Model::expire_until`]) for a connection whose transaction state
    /// is `tx`: the reply the server must give, or why the command is not
    /// one the simulation sends (requests were mixed up).
    pub fn execute(
        &mut self,
        tx: &mut TxState,
        cmd: &Command,
        now: Instant,
    ) -> Result<Reply, String> {
        let name = cmd.name();
        let tx_command = matches!(name, "multi" | "exec" | "discard" | "watch" | "unwatch");
        if !tx_command {
            if let Some(queue) = tx.queue.as_mut() {
                queue.push(cmd.clone());
                return Ok(status("QUEUED"));
            }
            return match name {
                "hello" => self.hello(tx, cmd),
                "client|tracking" => self.client_tracking(tx, cmd),
                _ => self.apply(cmd, tx.conn, now),
            };
        }
        Ok(match name {
            "multi" if tx.queue.is_some() => ExecError::NestedMulti.into(),
            "multi" => {
                tx.queue = Some(Vec::new());
                Reply::ok()
            }
            "exec" => {
                let Some(queue) = tx.queue.take() else {
                    return Ok(ExecError::ExecWithoutMulti.into());
                };
                let changed = tx.watched.drain(..).any(|(key, changes, live)| {
                    self.changes(key) != changes || (live && !self.live(key))
                });
                self.execs += 1;
                if changed {
                    self.exec_aborts += 1;
                    return Ok(Reply::NilArray);
                }
                let mut replies = Vec::with_capacity(queue.len());
                for cmd in &queue {
                    replies.push(self.apply(cmd, tx.conn, now)?);
                }
                Reply::Array(replies)
            }
            "discard" if tx.queue.is_none() => ExecError::DiscardWithoutMulti.into(),
            "discard" => {
                tx.queue = None;
                tx.watched.clear();
                Reply::ok()
            }
            "watch" if tx.queue.is_some() => ExecError::WatchInMulti.into(),
            "watch" => {
                for arg in &cmd.args()[1..] {
                    let key = self.key_arg(arg)?;
                    if !tx.watched.iter().any(|(k, _, _)| *k == key) {
                        tx.watched.push((key, self.changes(key), self.live(key)));
                    }
                }
                Reply::ok()
            }
            _ => {
                tx.watched.clear();
                Reply::ok()
            }
        })
    }

    /// `HELLO 3`, the first half of a proxy's tracking handshake. Its
    /// reply (the server's facts, its connection number) is not the
    /// model's to predict: an empty map stands for "a map", which is what
    /// the driver checks the server's against.
    fn hello(&mut self, tx: &mut TxState, cmd: &Command) -> Result<Reply, String> {
        match cmd.args() {
            [_, v] if &v[..] == b"3" => {
                tx.resp3 = true;
                Ok(Reply::Map(Vec::new()))
            }
            other => Err(format!("HELLO with {:?}", &other[1..])),
        }
    }

    /// `CLIENT TRACKING ON`, the second half: from now on the server owes
    /// the connection invalidations (as pushes: it said `HELLO 3`, which
    /// is the only way the simulation turns tracking on).
    fn client_tracking(&mut self, tx: &mut TxState, cmd: &Command) -> Result<Reply, String> {
        match cmd.args() {
            [_, _, on] if on.eq_ignore_ascii_case(b"on") && tx.resp3 => {
                let keys = self.keys.len();
                let group = tx.group;
                self.trackers.entry(tx.conn).or_insert_with(|| Tracker {
                    reading: vec![false; keys],
                    due: vec![VecDeque::new(); keys],
                    group,
                });
                Ok(Reply::ok())
            }
            other => Err(format!(
                "CLIENT TRACKING with {:?} (RESP3: {})",
                &other[2..],
                tx.resp3
            )),
        }
    }

    fn key_arg(&self, arg: &[u8]) -> Result<Key, String> {
        self.key(arg)
            .ok_or_else(|| format!("a command named the unknown key {arg:?}"))
    }

    fn val_arg(&self, arg: &[u8]) -> Result<usize, String> {
        match self.key_arg(arg)? {
            Key::Val(k) => Ok(k),
            Key::Ctr(n) => Err(format!("a value command named the counter n{n}")),
        }
    }

    /// A `SET`'s value for key `k`: it must be one of `k`'s.
    fn value_arg(&self, k: usize, value: &[u8]) -> Result<u64, String> {
        match parse_value(value) {
            Some((vk, seq)) if vk == k => Ok(seq),
            Some((vk, _)) => Err(format!(
                "a value of k{vk} was written to k{k}: requests were mixed up"
            )),
            None => Err(format!("unexpected write k{k} = {value:?}")),
        }
    }

    /// Runs a data command for connection `conn`. The reads (`GET`,
    /// `MGET`, `PTTL`: the read-only commands with keys the simulation
    /// sends) are remembered for it if it tracks, after the command ran,
    /// as the server remembers them.
    fn apply(&mut self, cmd: &Command, conn: u64, now: Instant) -> Result<Reply, String> {
        let t = unix_ms(now);
        let args = cmd.args();
        Ok(match cmd.name() {
            "get" => {
                let key = self.key_arg(cmd.arg(1))?;
                self.remember(conn, key);
                self.value_reply(key)
            }
            "mget" => {
                let mut values = Vec::with_capacity(args.len() - 1);
                for arg in &args[1..] {
                    let key = self.key_arg(arg)?;
                    self.remember(conn, key);
                    values.push(self.value_reply(key));
                }
                Reply::Array(values)
            }
            "set" => {
                let k = self.val_arg(cmd.arg(1))?;
                let seq = self.value_arg(k, cmd.arg(2))?;
                let deadline = match &args[3..] {
                    [] => None,
                    [px, ms] if px.eq_ignore_ascii_case(b"px") => {
                        let ms = std::str::from_utf8(ms)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .filter(|ms| *ms > 0)
                            .ok_or_else(|| format!("SET with PX {ms:?}"))?;
                        Some(t + ms)
                    }
                    other => return Err(format!("SET with options {other:?}")),
                };
                self.apply_put(k, seq, deadline, now)?;
                Reply::ok()
            }
            "mset" => {
                for pair in args[1..].chunks(2) {
                    let [key, value] = pair else {
                        return Err("MSET with an odd number of arguments".into());
                    };
                    let k = self.val_arg(key)?;
                    let seq = self.value_arg(k, value)?;
                    self.apply_put(k, seq, None, now)?;
                }
                Reply::ok()
            }
            "del" => {
                let mut n = 0;
                for arg in &args[1..] {
                    let found = match self.key_arg(arg)? {
                        Key::Val(k) => self.apply_del(k, now),
                        Key::Ctr(c) => {
                            let c = &mut self.counters[c];
                            let found = c.value.take().is_some();
                            if found {
                                c.changes += 1;
                            }
                            found
                        }
                    };
                    n += i64::from(found);
                }
                Reply::Integer(n)
            }
            "pexpire" => {
                let k = self.val_arg(cmd.arg(1))?;
                let ms: i64 = std::str::from_utf8(cmd.arg(2))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("PEXPIRE of {:?}", cmd.arg(2)))?;
                if args.len() > 3 {
                    return Err("PEXPIRE with options".into());
                }
                if self.current(k).is_none() {
                    return Ok(Reply::Integer(0));
                }
                let at = t as i64 + ms;
                if at <= t as i64 {
                    self.apply_del(k, now);
                } else {
                    self.apply_deadline(k, Some(at as u64), now);
                }
                Reply::Integer(1)
            }
            "persist" => {
                let k = self.val_arg(cmd.arg(1))?;
                if self.deadline(k).is_none() {
                    return Ok(Reply::Integer(0));
                }
                self.apply_deadline(k, None, now);
                Reply::Integer(1)
            }
            "pttl" => {
                let key = self.key_arg(cmd.arg(1))?;
                self.remember(conn, key);
                Reply::Integer(match key {
                    Key::Val(k) if self.current(k).is_none() => -2,
                    Key::Val(k) => self.deadline(k).map_or(-1, |d| d.saturating_sub(t) as i64),
                    Key::Ctr(n) => self.counters[n].value.map_or(-2, |_| -1),
                })
            }
            "incr" => match self.key_arg(cmd.arg(1))? {
                Key::Ctr(n) => {
                    let c = &mut self.counters[n];
                    let v = c.value.unwrap_or(0) + 1;
                    c.value = Some(v);
                    c.changes += 1;
                    Reply::Integer(v)
                }
                Key::Val(k) if self.current(k).is_some() => ExecError::NotInteger.into(),
                Key::Val(k) => return Err(format!("INCR of the missing value key k{k}")),
            },
            "ping" => match args {
                [_] => status("PONG"),
                [_, token] => Reply::Bulk(token.clone()),
                _ => return Err("PING with arguments".into()),
            },
            "dump" => {
                let mut pairs: Vec<(Bytes, Bytes)> = (0..self.keys.len())
                    .filter_map(|k| {
                        self.current(k)
                            .map(|seq| (key_name(k), value_bytes(k, seq)))
                    })
                    .chain((0..self.counters.len()).filter_map(|n| {
                        let v = self.counters[n].value?;
                        Some((counter_name(n), Bytes::from(v.to_string())))
                    }))
                    .collect();
                pairs.sort();
                // As the wire has it (RESP2): a flat array.
                Reply::Array(
                    pairs
                        .into_iter()
                        .flat_map(|(k, v)| [Reply::Bulk(k), Reply::Bulk(v)])
                        .collect(),
                )
            }
            other => {
                return Err(format!(
                    "the server was sent {other:?}, which the simulation never sends"
                ))
            }
        })
    }

    /// Whether version `pos` ended with its key expiring, not later than
    /// `t`. A version that ended otherwise (overwritten, deleted, or given
    /// another deadline: a write another client may make without a proxy
    /// knowing) did not expire: reading it later is staleness, which the
    /// read windows bound.
    fn expired_by(&self, key: usize, pos: usize, t: Instant) -> bool {
        let v = &self.keys[key].versions[pos];
        v.expired && v.end.is_some_and(|end| end <= t)
    }

    /// Checks that a read of `value` from `key` is explained by the
    /// history: it was the key's value at some time in `[lo, hi]`, at a
    /// position no older than `floor`, and (a value, not a nil) the
    /// version had not expired by `sent`, when the read was sent: a read
    /// concurrent with a deadline passing may see either, a read sent after
    /// it may not see the value, whatever cache or shared read it came
    /// from. Returns the oldest such position (the weakest claim, so later
    /// checks never over-constrain).
    pub fn check_read(
        &self,
        key: usize,
        value: Option<u64>,
        window: (Instant, Instant),
        floor: usize,
        sent: Instant,
    ) -> Result<usize, ReadError> {
        let (lo, hi) = window;
        if let Some(seq) = value {
            match self.puts.get(&seq) {
                None => {
                    return Err(ReadError::Unknown(format!(
                        "v{seq} was never applied at the server"
                    )))
                }
                Some((k, _)) if *k != key => {
                    return Err(ReadError::Unknown(format!(
                        "v{seq} was written to k{k}, not k{key}"
                    )))
                }
                Some(_) => {}
            }
        }
        let versions = &self.keys[key].versions;
        let mut in_window = None;
        let mut above = None;
        let mut best = None;
        // Versions are in time order: scan back from the newest and stop
        // at the first that ended before the window opened.
        for pos in (0..versions.len()).rev() {
            let v = &versions[pos];
            if v.end.is_some_and(|end| end < lo) {
                break;
            }
            if v.start > hi || v.value != value {
                continue;
            }
            in_window = Some(pos);
            if pos >= floor {
                above = Some(pos);
                if value.is_none() || !self.expired_by(key, pos, sent) {
                    best = Some(pos);
                }
            }
        }
        match (best, above, in_window) {
            (Some(pos), _, _) => Ok(pos),
            (None, Some(pos), _) => Err(ReadError::Expired { pos }),
            (None, None, Some(pos)) => Err(ReadError::BelowFloor { got: pos }),
            (None, None, None) => Err(ReadError::Stale(format!(
                "{} of k{key} was not current at any time in [{}, {}]",
                fmt_value(value),
                fmt_t(lo),
                fmt_t(hi)
            ))),
        }
    }

    /// Records that a client saw a write to `key` at `pos` acknowledged.
    pub fn acknowledge(&mut self, key: usize, pos: usize) {
        let h = &mut self.keys[key];
        h.acked = h.acked.max(pos);
    }

    /// The versions of `key` around `pos`, for failure reports.
    pub fn describe(&self, key: usize, around: usize) -> String {
        let versions = &self.keys[key].versions;
        let from = around.saturating_sub(3);
        let to = (around + 3).min(versions.len() - 1);
        let mut s = format!("k{key} history (position: value, current from .. to):");
        for (pos, v) in versions.iter().enumerate().take(to + 1).skip(from) {
            let _ = write!(
                s,
                "\n      {pos}: {} {} .. {}",
                fmt_value(v.value),
                fmt_t(v.start),
                v.end.map_or_else(|| "now".to_string(), fmt_t)
            );
            if let Some(d) = v.deadline {
                let _ = write!(s, " (deadline {}", fmt_t(instant_of(d)));
                s.push_str(if v.expired { ", expired)" } else { ")" });
            }
        }
        s
    }
}

/// The earliest position among `marks` applied after `since`.
fn earliest(marks: &[(u64, usize)], since: u64) -> Option<usize> {
    let first = marks.partition_point(|(applied, _)| *applied <= since);
    marks[first..].iter().map(|(_, pos)| *pos).min()
}
