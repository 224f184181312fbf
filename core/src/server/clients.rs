//! The server's list of its clients, for `CLIENT LIST`, `CLIENT INFO` and
//! `CLIENT KILL`: what each connection is (its address, names, protocol,
//! transaction state), refreshed whenever one of its connection commands
//! runs, and the kills the drivers must carry out.

use crate::session::Session;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

/// What the server knows of one client.
#[derive(Debug, Clone, Default)]
pub struct ClientEntry {
    /// The peer's address, as the driver gave it.
    pub addr: String,
    /// The local address it connected to.
    pub laddr: String,
    /// When it connected (unix ms).
    pub since_ms: u64,
    /// Its session as of its last connection command (without its
    /// transaction, whose sizes are kept instead).
    session: Option<Session>,
    /// Commands queued (-1: not in `MULTI`) and keys watched.
    multi: i64,
    watch: usize,
}

/// What other parts of the server know of a client, for its line: its
/// subscriptions and tracking.
#[derive(Debug, Clone, Default)]
pub struct ClientFacts {
    /// Redis's flags letters (`N` when none apply).
    pub flags: String,
    /// Channels subscribed to.
    pub sub: usize,
    /// Patterns subscribed to.
    pub psub: usize,
    /// The client tracking invalidations go to (-1: tracking off).
    pub redir: i64,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Clients {
    by_id: BTreeMap<u64, ClientEntry>,
    /// Killed, not yet closed by their connections.
    killed: HashSet<u64>,
    /// A kill happened since the driver last asked.
    kill_signal: bool,
}

impl Clients {
    pub(super) fn add(&mut self, id: u64, addr: String, laddr: String, now_ms: u64) {
        self.by_id.insert(
            id,
            ClientEntry {
                addr,
                laddr,
                since_ms: now_ms,
                session: None,
                multi: -1,
                watch: 0,
            },
        );
    }

    pub(super) fn remove(&mut self, id: u64) {
        self.by_id.remove(&id);
        self.killed.remove(&id);
    }

    /// Refreshes what the list shows of a session.
    pub(super) fn refresh(&mut self, session: &Session) {
        if let Some(e) = self.by_id.get_mut(&session.id) {
            (e.multi, e.watch) = tx_sizes(session);
            let mut copy = Session::new(session.id, session.authenticated);
            copy.proto = session.proto;
            if let Some(names) = session.names() {
                *copy.names_mut() = names.clone();
            }
            e.session = Some(copy);
        }
    }

    /// The protocol client `id` speaks (as of its last connection
    /// command), if it is connected.
    pub fn proto_of(&self, id: u64) -> Option<crate::reply::Proto> {
        let e = self.by_id.get(&id)?;
        Some(
            e.session
                .as_ref()
                .map_or(crate::reply::Proto::Resp2, |s| s.proto),
        )
    }

    /// How many clients there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Marks clients to be closed; how many matched.
    pub(super) fn kill(&mut self, matches: impl Fn(u64, &ClientEntry) -> bool) -> usize {
        let ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(id, e)| matches(**id, e))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.killed.insert(*id);
        }
        if !ids.is_empty() {
            self.kill_signal = true;
        }
        ids.len()
    }

    /// Whether the client was killed (and so must close now).
    pub fn is_killed(&self, id: u64) -> bool {
        !self.killed.is_empty() && self.killed.contains(&id)
    }

    /// Whether a kill happened since the last call: the driver wakes its
    /// connections so the killed ones close.
    pub fn take_kill_signal(&mut self) -> bool {
        std::mem::take(&mut self.kill_signal)
    }

    /// The client's entry.
    pub fn get(&self, id: u64) -> Option<&ClientEntry> {
        self.by_id.get(&id)
    }

    /// Every client's line, as `CLIENT LIST` shows them.
    pub fn lines(
        &self,
        now_ms: u64,
        current: &Session,
        facts: &dyn Fn(u64) -> ClientFacts,
    ) -> String {
        let mut out = String::new();
        for (&id, e) in &self.by_id {
            let session = if id == current.id {
                Some(current)
            } else {
                e.session.as_ref()
            };
            line(&mut out, id, e, session, now_ms, &facts(id));
            out.push('\n');
        }
        out
    }

    /// One client's line (`CLIENT INFO`).
    pub fn line_of(&self, session: &Session, now_ms: u64, facts: &ClientFacts) -> String {
        let mut out = String::new();
        let none = ClientEntry::default();
        let e = self.by_id.get(&session.id).unwrap_or(&none);
        line(&mut out, session.id, e, Some(session), now_ms, facts);
        out.push('\n');
        out
    }
}

/// Redis's fields, those kv has.
fn line(
    out: &mut String,
    id: u64,
    e: &ClientEntry,
    s: Option<&Session>,
    now_ms: u64,
    facts: &ClientFacts,
) {
    let names = s.and_then(Session::names);
    let text = |b: Option<&bytes::Bytes>| {
        b.map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let (multi, watch) = match s {
        Some(s) if s.tx.is_some() => tx_sizes(s),
        _ => (e.multi, e.watch),
    };
    let resp = s.map_or(2, |s| match s.proto {
        crate::reply::Proto::Resp2 => 2,
        crate::reply::Proto::Resp3 => 3,
    });
    let _ = write!(
        out,
        "id={id} addr={} laddr={} fd=-1 name={} age={} idle=0 flags={} db=0 sub={} psub={} ssub=0 multi={multi} watch={watch} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client user=default redir={} resp={resp} lib-name={} lib-ver={}",
        e.addr,
        e.laddr,
        text(names.and_then(|n| n.name.as_ref())),
        now_ms.saturating_sub(e.since_ms) / 1000,
        facts.flags,
        facts.sub,
        facts.psub,
        facts.redir,
        text(names.and_then(|n| n.lib_name.as_ref())),
        text(names.and_then(|n| n.lib_ver.as_ref())),
    );
}

/// Commands queued (-1: not in `MULTI`) and keys watched by a session.
fn tx_sizes(s: &Session) -> (i64, usize) {
    s.tx.as_ref()
        .map_or((-1, 0), |t| (t.queued_count(), t.watch_count()))
}
