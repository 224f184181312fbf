//! Server-assisted client-side caching (`CLIENT TRACKING`), with Redis's
//! semantics.
//!
//! A tracking client's reads are remembered per key ([`Tracking::remember`],
//! after every read-only command with keys); when a key changes, each
//! client that read it since its last invalidation gets one, and the key is
//! forgotten until read again. What changed comes from the database layer's
//! signals ([`Db::take_signals`](crate::db::Db::take_signals)), never from
//! the commands: a write, a deletion, a deadline, expiry, eviction and the
//! undo of a write the log refused all invalidate alike, and a flush sends
//! every tracking client a null invalidation.
//!
//! In broadcast mode (`BCAST [PREFIX p …]`) nothing is remembered: every
//! change to a key under one of the client's prefixes is collected, and the
//! keys of a prefix go out as one message when the driver next asks for the
//! connections to wake ([`Server::take_woken`]), as Redis sends them before
//! it sleeps.
//!
//! Invalidations go to the client itself in RESP3 (a push), or to the
//! client it redirects to: a push if that one speaks RESP3, a message on
//! `__redis__:invalidate` if it is subscribed in RESP2. A redirect target
//! that is gone earns a `tracking-redir-broken` push instead.
//!
//! The table of remembered keys is bounded by `tracking-table-max-keys`
//! (Redis's default, 1,000,000): over it, keys are invalidated to make
//! room, a bounded number per command or timer step.

use super::Server;
use crate::command::table::Spec;
use crate::db::{Hasher, Signal};
use crate::reply::{Proto, Reply};
use crate::session::{TrackingOptions, TrackingRequest};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// Redis's default bound on the keys remembered.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// The channel RESP2 redirect targets get invalidations on.
pub const INVALIDATE_CHANNEL: &[u8] = b"__redis__:invalidate";

/// Keys invalidated at most per call to make room in the table: a client
/// lowering the bound to nothing does not stall everyone at once.
const EVICT_BUDGET: usize = 1000;

/// One tracking client's mode.
#[derive(Debug, Clone, Default)]
struct Client {
    /// The client its invalidations go to (0: itself).
    redirect: u64,
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    /// `CLIENT CACHING yes|no` was given for the next command.
    caching: bool,
    /// Its redirect target went away.
    broken: bool,
    /// Its broadcast prefixes, sorted.
    prefixes: Vec<Bytes>,
}

/// The keys changed under one broadcast prefix since the last broadcast.
#[derive(Debug, Default)]
struct Prefix {
    clients: Vec<u64>,
    /// Each key, with the client whose command changed it last (0: none),
    /// for `NOLOOP`.
    keys: BTreeMap<Bytes, u64>,
}

/// The tracking state of the server.
#[derive(Debug)]
pub struct Tracking {
    /// Who may hold each key in a cache.
    table: HashMap<Bytes, Vec<u64>, Hasher>,
    /// Key–client pairs in the table.
    items: usize,
    /// The bound on the table's keys (`tracking-table-max-keys`; 0: none).
    pub max_keys: usize,
    prefixes: BTreeMap<Bytes, Prefix>,
    clients: HashMap<u64, Client>,
    /// Invalidation messages sent.
    pub sent: u64,
}

impl Tracking {
    /// No tracking client yet; the table keyed by `hash_seed`.
    pub fn new(hash_seed: u64) -> Tracking {
        Tracking {
            table: HashMap::with_hasher(Hasher::with_seed(hash_seed)),
            items: 0,
            max_keys: DEFAULT_MAX_KEYS,
            prefixes: BTreeMap::new(),
            clients: HashMap::new(),
            sent: 0,
        }
    }

    /// Clients with tracking on.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Keys remembered (`tracking_total_keys`).
    pub fn key_count(&self) -> usize {
        self.table.len()
    }

    /// Key–client pairs remembered (`tracking_total_items`).
    pub fn item_count(&self) -> usize {
        self.items
    }

    /// Broadcast prefixes (`tracking_total_prefixes`).
    pub fn prefix_count(&self) -> usize {
        self.prefixes.len()
    }

    /// Whether `id` has tracking on.
    pub fn is_tracking(&self, id: u64) -> bool {
        !self.clients.is_empty() && self.clients.contains_key(&id)
    }

    /// For `CLIENT LIST`: Redis's flag letters of a tracking client (`t`,
    /// `R` for a broken redirect, `B` for broadcasting) and its redirect
    /// (0: none); `None` with tracking off.
    pub fn mode_letters(&self, id: u64) -> Option<(String, i64)> {
        let c = self.clients.get(&id)?;
        let mut letters = String::from("t");
        if c.broken {
            letters.push('R');
        }
        if c.bcast {
            letters.push('B');
        }
        Some((letters, c.redirect as i64))
    }

    /// Turns tracking on for `id` with `opts`, or explains (in Redis's
    /// words) why the options do not go together, or with its mode.
    fn enable(&mut self, id: u64, opts: &TrackingOptions) -> Result<(), String> {
        if !opts.bcast && !opts.prefixes.is_empty() {
            return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
        }
        let current = self.clients.get(&id);
        if current.is_some_and(|c| c.bcast != opts.bcast) {
            return Err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.".into());
        }
        if opts.bcast && (opts.optin || opts.optout) {
            return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
        }
        if opts.optin && opts.optout {
            return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
        }
        if current.is_some_and(|c| (opts.optin && c.optout) || (opts.optout && c.optin)) {
            return Err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.".into());
        }
        if opts.bcast {
            let held = current.map_or(&[][..], |c| &c.prefixes[..]);
            for (i, p) in opts.prefixes.iter().enumerate() {
                if let Some(old) = held.iter().find(|o| overlap(o, p)) {
                    return Err(format!(
                        "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(old)
                    ));
                }
                if let Some(other) = opts.prefixes[i + 1..].iter().find(|o| overlap(p, o)) {
                    return Err(format!(
                        "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        let client = self.clients.entry(id).or_default();
        client.redirect = opts.redirect.unwrap_or(0);
        client.broken = false;
        client.bcast = opts.bcast;
        client.optin = opts.optin;
        client.optout = opts.optout;
        client.noloop = opts.noloop;
        if opts.bcast {
            let empty = [Bytes::new()];
            let wanted = if opts.prefixes.is_empty() {
                &empty[..]
            } else {
                &opts.prefixes[..]
            };
            for p in wanted {
                if client.prefixes.contains(p) {
                    continue;
                }
                let p = Bytes::copy_from_slice(p);
                client.prefixes.push(p.clone());
                self.prefixes.entry(p).or_default().clients.push(id);
            }
            client.prefixes.sort();
        }
        Ok(())
    }

    /// Turns tracking off for `id`. Its remembered keys stay in the table
    /// until they change or make room, as in Redis: they are skipped then.
    pub fn disable(&mut self, id: u64) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        for p in &client.prefixes {
            if let Some(prefix) = self.prefixes.get_mut(p) {
                prefix.clients.retain(|&c| c != id);
                if prefix.clients.is_empty() {
                    self.prefixes.remove(p);
                }
            }
        }
        if self.clients.is_empty() {
            // Nobody left to tell: the whole table is moot.
            self.table.clear();
            self.items = 0;
        }
    }

    /// Remembers that `id` read `keys` (unless its OPTIN/OPTOUT mode and
    /// `CLIENT CACHING` say this command's keys are not cached).
    pub fn remember<'a>(&mut self, id: u64, keys: impl Iterator<Item = &'a Bytes>) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        if client.bcast || (client.optin && !client.caching) || (client.optout && client.caching) {
            return;
        }
        for key in keys {
            match self.table.get_mut(key.as_ref()) {
                Some(ids) => {
                    if !ids.contains(&id) {
                        ids.push(id);
                        self.items += 1;
                    }
                }
                None => {
                    // Copied: the argument is a slice of the request's
                    // buffer, which the table must not keep alive.
                    self.table.insert(Bytes::copy_from_slice(key), vec![id]);
                    self.items += 1;
                }
            }
        }
    }

    /// `CLIENT CACHING` applies to one command: cleared after every other.
    pub fn end_command(&mut self, id: u64) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.caching = false;
        }
    }

    /// Whether the table holds more keys than its bound.
    pub fn over_limit(&self) -> bool {
        self.max_keys > 0 && self.table.len() > self.max_keys
    }

    /// Forgets `key`: who may have cached it.
    fn take_key(&mut self, key: &[u8]) -> Option<Vec<u64>> {
        let ids = self.table.remove(key)?;
        self.items -= ids.len();
        Some(ids)
    }

    /// Some key to invalidate to make room, forgotten.
    fn take_any(&mut self) -> Option<(Bytes, Vec<u64>)> {
        let key = self.table.keys().next()?.clone();
        let ids = self.take_key(&key)?;
        Some((key, ids))
    }

    /// Collects `key` for every broadcast prefix it is under.
    fn collect_broadcast(&mut self, key: &Bytes, writer: u64) {
        for (p, prefix) in self.prefixes.range_mut(..=key.clone()) {
            if key.starts_with(p) {
                prefix.keys.insert(key.clone(), writer);
            }
        }
    }
}

/// Whether two broadcast prefixes overlap (one starts the other).
fn overlap(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

impl Server {
    /// `CLIENT TRACKING`, `CLIENT CACHING`, `CLIENT GETREDIR` and `CLIENT
    /// TRACKINGINFO` for the connection `id`.
    pub(super) fn tracking_request(
        &mut self,
        session: &mut crate::session::Session,
        request: TrackingRequest,
    ) -> Reply {
        let id = session.id;
        match request {
            TrackingRequest::On(opts) => {
                if let Some(target) = opts.redirect {
                    if self.clients.get(target).is_none() {
                        return Reply::error(
                            "ERR The client ID you want redirect to does not exist",
                        );
                    }
                }
                if let Err(e) = self.tracking.enable(id, &opts) {
                    return Reply::error(e);
                }
                session.tracking = true;
                self.update_signaling();
                Reply::ok()
            }
            TrackingRequest::Off => {
                self.tracking.disable(id);
                session.tracking = false;
                self.update_signaling();
                Reply::ok()
            }
            TrackingRequest::Caching(yes) => {
                let Some(c) = self.tracking.clients.get_mut(&id) else {
                    return Reply::error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
                };
                match (yes, c.optin, c.optout) {
                    (true, true, _) | (false, _, true) => {
                        c.caching = true;
                        Reply::ok()
                    }
                    (true, ..) => Reply::error(
                        "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                    ),
                    (false, ..) => Reply::error(
                        "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                    ),
                }
            }
            TrackingRequest::GetRedir => Reply::Integer(
                self.tracking
                    .clients
                    .get(&id)
                    .map_or(-1, |c| c.redirect as i64),
            ),
            TrackingRequest::Info => {
                let text = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
                let c = self.tracking.clients.get(&id);
                let mut flags = vec![text(if c.is_some() { "on" } else { "off" })];
                let mut prefixes = Vec::new();
                if let Some(c) = c {
                    for (on, name) in [
                        (c.bcast, "bcast"),
                        (c.optin, "optin"),
                        (c.optin && c.caching, "caching-yes"),
                        (c.optout, "optout"),
                        (c.optout && c.caching, "caching-no"),
                        (c.noloop, "noloop"),
                        (c.broken, "broken_redirect"),
                    ] {
                        if on {
                            flags.push(text(name));
                        }
                    }
                    prefixes = c.prefixes.iter().cloned().map(Reply::Bulk).collect();
                }
                Reply::Map(vec![
                    (text("flags"), Reply::Set(flags)),
                    (
                        text("redirect"),
                        Reply::Integer(c.map_or(-1, |c| c.redirect as i64)),
                    ),
                    (text("prefixes"), Reply::Array(prefixes)),
                ])
            }
        }
    }

    /// Sends the invalidations of what changed since the last call:
    /// `current` is the client whose command changed it (for `NOLOOP`),
    /// `None` for expiry and eviction.
    /// The command that caused them (`spec`) names their keyspace events.
    pub(super) fn signal_changes(&mut self, current: Option<u64>, spec: Option<&Spec>) {
        if !self.db.has_signals() {
            return;
        }
        let signals: Vec<Signal> = self.db.take_signals().collect();
        for signal in signals {
            match signal {
                Signal::Key(key, change) => {
                    if self.tracking.client_count() > 0 {
                        self.invalidate_key(&key, current);
                    }
                    if self.notify_flags != 0 {
                        self.notify_change(&key, change, spec);
                    }
                }
                Signal::Flush => self.invalidate_all(),
            }
        }
    }

    /// Whether the database signals its changes: while a client tracks, or
    /// keyspace events are on.
    pub(super) fn update_signaling(&mut self) {
        let on = self.tracking.client_count() > 0 || self.notify_flags != 0;
        self.db.signal_changes(on);
    }

    fn invalidate_key(&mut self, key: &Bytes, current: Option<u64>) {
        if !self.tracking.prefixes.is_empty() {
            self.tracking.collect_broadcast(key, current.unwrap_or(0));
        }
        let Some(ids) = self.tracking.take_key(key) else {
            return;
        };
        for target in ids {
            let Some(c) = self.tracking.clients.get(&target) else {
                continue;
            };
            // A client that switched to broadcasting gets only those.
            if c.bcast || (c.noloop && current == Some(target)) {
                continue;
            }
            self.send_invalidation(target, Reply::Array(vec![Reply::Bulk(key.clone())]));
        }
    }

    /// A flush: every tracking client gets a null invalidation, and the
    /// table is emptied.
    fn invalidate_all(&mut self) {
        let ids: Vec<u64> = self.tracking.clients.keys().copied().collect();
        for id in ids {
            self.send_invalidation(id, Reply::Nil);
        }
        self.tracking.table.clear();
        self.tracking.items = 0;
        for prefix in self.tracking.prefixes.values_mut() {
            prefix.keys.clear();
        }
    }

    /// Sends the broadcast clients the keys changed under their prefixes
    /// since the last call, one message per prefix.
    pub(super) fn broadcast_invalidations(&mut self) {
        if self.tracking.prefixes.is_empty() {
            return;
        }
        let mut batches = Vec::new();
        for prefix in self.tracking.prefixes.values_mut() {
            if !prefix.keys.is_empty() {
                batches.push((prefix.clients.clone(), std::mem::take(&mut prefix.keys)));
            }
        }
        for (clients, keys) in batches {
            for id in clients {
                let noloop = self.tracking.clients.get(&id).is_some_and(|c| c.noloop);
                let list: Vec<Reply> = keys
                    .iter()
                    .filter(|(_, &writer)| !(noloop && writer == id))
                    .map(|(k, _)| Reply::Bulk(k.clone()))
                    .collect();
                if !list.is_empty() {
                    self.send_invalidation(id, Reply::Array(list));
                }
            }
        }
    }

    /// Invalidates keys until the table is within its bound, or the step's
    /// budget is spent; whether it is within.
    pub(super) fn make_tracking_room(&mut self) -> bool {
        for _ in 0..EVICT_BUDGET {
            if !self.tracking.over_limit() {
                return true;
            }
            let Some((key, ids)) = self.tracking.take_any() else {
                return true;
            };
            for target in ids {
                if self.tracking.clients.get(&target).is_some_and(|c| !c.bcast) {
                    self.send_invalidation(target, Reply::Array(vec![Reply::Bulk(key.clone())]));
                }
            }
        }
        !self.tracking.over_limit()
    }

    /// Sends client `id` an invalidation of `keys` (an array of keys, or
    /// nil for all), where its mode says it goes.
    fn send_invalidation(&mut self, id: u64, keys: Reply) {
        let Some(c) = self.tracking.clients.get_mut(&id) else {
            return;
        };
        let own_proto = self.clients.proto_of(id).unwrap_or(Proto::Resp2);
        let (target, redirected) = if c.redirect == 0 {
            (id, false)
        } else if self.clients.get(c.redirect).is_some() {
            (c.redirect, true)
        } else {
            c.broken = true;
            let redirect = c.redirect as i64;
            if own_proto == Proto::Resp3 {
                self.deliver_reply(
                    id,
                    Reply::Push(vec![
                        Reply::Bulk(Bytes::from_static(b"tracking-redir-broken")),
                        Reply::Integer(redirect),
                    ]),
                );
            }
            return;
        };
        let proto = if redirected {
            self.clients.proto_of(target).unwrap_or(Proto::Resp2)
        } else {
            own_proto
        };
        let message = if proto == Proto::Resp3 {
            Reply::Push(vec![Reply::Bulk(Bytes::from_static(b"invalidate")), keys])
        } else if redirected && self.pubsub.is_subscriber(target) {
            Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"message")),
                Reply::Bulk(Bytes::from_static(INVALIDATE_CHANNEL)),
                keys,
            ])
        } else {
            // RESP2 has no pushes on the connection itself.
            return;
        };
        self.tracking.sent += 1;
        self.deliver_reply(target, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> TrackingOptions {
        TrackingOptions::default()
    }

    #[test]
    fn modes_are_checked_as_redis_checks_them() {
        let mut t = Tracking::new(0);
        let prefix = |p: &'static str| Bytes::from_static(p.as_bytes());
        let e = t
            .enable(
                1,
                &TrackingOptions {
                    prefixes: vec![prefix("a")],
                    ..opts()
                },
            )
            .unwrap_err();
        assert!(e.contains("requires BCAST"), "{e}");
        let bcast = TrackingOptions {
            bcast: true,
            prefixes: vec![prefix("ab"), prefix("a")],
            ..opts()
        };
        assert!(t
            .enable(1, &bcast)
            .unwrap_err()
            .contains("overlaps with another"));
        let bcast = TrackingOptions {
            bcast: true,
            prefixes: vec![prefix("ab")],
            ..opts()
        };
        t.enable(1, &bcast).unwrap();
        let more = TrackingOptions {
            bcast: true,
            prefixes: vec![prefix("abc")],
            ..opts()
        };
        assert!(t
            .enable(1, &more)
            .unwrap_err()
            .contains("existing prefix 'ab'"));
        assert!(t.enable(1, &opts()).unwrap_err().contains("switch BCAST"));
        t.disable(1);
        assert_eq!(t.prefix_count(), 0);
        let both = TrackingOptions {
            optin: true,
            optout: true,
            ..opts()
        };
        assert!(t.enable(2, &both).unwrap_err().contains("both OPTIN"));
    }

    #[test]
    fn remembers_each_reader_once_and_forgets_on_take() {
        let mut t = Tracking::new(0);
        t.enable(1, &opts()).unwrap();
        t.enable(
            2,
            &TrackingOptions {
                optin: true,
                ..opts()
            },
        )
        .unwrap();
        let k = Bytes::from_static(b"k");
        t.remember(1, [&k, &k].into_iter());
        t.remember(2, [&k].into_iter());
        assert_eq!(
            (t.key_count(), t.item_count()),
            (1, 1),
            "OPTIN without CACHING yes"
        );
        t.clients.get_mut(&2).unwrap().caching = true;
        t.remember(2, [&k].into_iter());
        assert_eq!(t.item_count(), 2);
        assert_eq!(t.take_key(b"k"), Some(vec![1, 2]));
        assert_eq!((t.key_count(), t.item_count()), (0, 0));
    }
}
