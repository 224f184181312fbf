//! Publish/subscribe at the server, with Redis's semantics: `SUBSCRIBE`,
//! `UNSUBSCRIBE`, `PSUBSCRIBE`, `PUNSUBSCRIBE`, `PUBLISH` and `PUBSUB`.
//!
//! Each (un)subscription is confirmed by a message of its own, counting
//! the connection's subscriptions after it: a push in RESP3, an array in
//! RESP2, where a subscribed connection may run only the subscription
//! commands, `PING` and `QUIT` (see [`Server::run`]). A published message
//! goes to every subscriber of its channel and of every matching pattern
//! (once per match, as Redis sends it) through their mailboxes
//! ([`mail`](super::mail)).

use super::Server;
use crate::command::Command;
use crate::errors::CommandError;
use crate::glob;
use crate::reply::{Proto, Reply, ReplyOut};
use crate::session::Session;
use bytes::Bytes;
use std::collections::HashMap;

/// What a publish/subscribe command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubOp {
    /// `SUBSCRIBE channel …`.
    Subscribe,
    /// `UNSUBSCRIBE [channel …]` (none: every channel).
    Unsubscribe,
    /// `PSUBSCRIBE pattern …`.
    PSubscribe,
    /// `PUNSUBSCRIBE [pattern …]` (none: every pattern).
    PUnsubscribe,
    /// `PUBLISH channel message`.
    Publish,
    /// `PUBSUB CHANNELS [pattern]`.
    Channels,
    /// `PUBSUB NUMSUB [channel …]`.
    NumSub,
    /// `PUBSUB NUMPAT`.
    NumPat,
}

/// One connection's subscriptions, in the order they were made.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
}

impl Subscriptions {
    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }
}

/// The channels and patterns, and who listens to each.
#[derive(Debug, Default)]
pub struct PubSub {
    /// Each channel's subscribers, in the order they subscribed.
    channels: HashMap<Bytes, Vec<u64>>,
    /// Each pattern's subscribers.
    patterns: HashMap<Bytes, Vec<u64>>,
    /// What each connection subscribed to.
    clients: HashMap<u64, Subscriptions>,
    /// Messages delivered (one per recipient).
    pub delivered: u64,
}

/// Which of the two namespaces an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel,
    Pattern,
}

impl PubSub {
    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Patterns with at least one subscriber.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Connections with at least one subscription.
    pub fn subscriber_count(&self) -> usize {
        self.clients.len()
    }

    /// How many channels and patterns `id` is subscribed to.
    pub fn subscriptions(&self, id: u64) -> usize {
        self.clients.get(&id).map_or(0, Subscriptions::count)
    }

    /// How many channels and patterns `id` is subscribed to, apart.
    pub fn counts(&self, id: u64) -> (usize, usize) {
        self.clients
            .get(&id)
            .map_or((0, 0), |s| (s.channels.len(), s.patterns.len()))
    }

    /// Whether `id` has a subscription (Redis's `CLIENT_PUBSUB`).
    pub fn is_subscriber(&self, id: u64) -> bool {
        !self.clients.is_empty() && self.clients.contains_key(&id)
    }

    fn table(&mut self, kind: Kind) -> &mut HashMap<Bytes, Vec<u64>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
        }
    }

    /// Subscribes `id`; whether it was not subscribed already.
    fn subscribe(&mut self, id: u64, kind: Kind, name: &Bytes) -> bool {
        let subs = self.clients.entry(id).or_default();
        let list = match kind {
            Kind::Channel => &mut subs.channels,
            Kind::Pattern => &mut subs.patterns,
        };
        if list.contains(name) {
            return false;
        }
        // The name is a slice of the request's buffer: copied, so a
        // subscription does not keep the whole buffer alive.
        let name = Bytes::copy_from_slice(name);
        list.push(name.clone());
        self.table(kind).entry(name).or_default().push(id);
        true
    }

    /// Unsubscribes `id`; whether it was subscribed.
    fn unsubscribe(&mut self, id: u64, kind: Kind, name: &[u8]) -> bool {
        let Some(subs) = self.clients.get_mut(&id) else {
            return false;
        };
        let list = match kind {
            Kind::Channel => &mut subs.channels,
            Kind::Pattern => &mut subs.patterns,
        };
        let Some(at) = list.iter().position(|n| n.as_ref() == name) else {
            return false;
        };
        list.remove(at);
        if subs.count() == 0 {
            self.clients.remove(&id);
        }
        let table = self.table(kind);
        if let Some(ids) = table.get_mut(name) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                table.remove(name);
            }
        }
        true
    }

    /// What `id` is subscribed to in `kind`, in order.
    fn names(&self, id: u64, kind: Kind) -> Vec<Bytes> {
        self.clients.get(&id).map_or_else(Vec::new, |s| match kind {
            Kind::Channel => s.channels.clone(),
            Kind::Pattern => s.patterns.clone(),
        })
    }

    /// Drops every subscription of a connection that closed.
    pub fn remove_client(&mut self, id: u64) {
        for kind in [Kind::Channel, Kind::Pattern] {
            for name in self.names(id, kind) {
                self.unsubscribe(id, kind, &name);
            }
        }
    }

    /// The messages `PUBLISH channel payload` sends: each recipient with
    /// the message's parts.
    fn recipients(&self, channel: &Bytes, payload: &Bytes) -> Vec<(u64, Vec<Reply>)> {
        let mut out = Vec::new();
        if let Some(ids) = self.channels.get(channel) {
            for &id in ids {
                out.push((
                    id,
                    vec![
                        Reply::Bulk(Bytes::from_static(b"message")),
                        Reply::Bulk(channel.clone()),
                        Reply::Bulk(payload.clone()),
                    ],
                ));
            }
        }
        for (pattern, ids) in &self.patterns {
            if glob::matches(pattern, channel, false) {
                for &id in ids {
                    out.push((
                        id,
                        vec![
                            Reply::Bulk(Bytes::from_static(b"pmessage")),
                            Reply::Bulk(pattern.clone()),
                            Reply::Bulk(channel.clone()),
                            Reply::Bulk(payload.clone()),
                        ],
                    ));
                }
            }
        }
        out
    }
}

/// A message of the publish/subscribe protocol in `proto`'s form: a push
/// in RESP3, an array in RESP2.
pub fn message(proto: Proto, items: Vec<Reply>) -> Reply {
    match proto {
        Proto::Resp3 => Reply::Push(items),
        Proto::Resp2 => Reply::Array(items),
    }
}

impl Server {
    /// Sends `payload` to the subscribers of `channel` and of the patterns
    /// it matches; how many messages went.
    pub(super) fn publish(&mut self, channel: Bytes, payload: Bytes) -> usize {
        if self.pubsub.clients.is_empty() {
            return 0;
        }
        let recipients = self.pubsub.recipients(&channel, &payload);
        let n = recipients.len();
        for (id, items) in recipients {
            self.deliver(id, items);
        }
        self.pubsub.delivered += n as u64;
        n
    }
}

/// Runs a publish/subscribe command for `session`.
pub(super) fn run(
    server: &mut Server,
    session: &mut Session,
    op: PubSubOp,
    cmd: &Command,
    out: &mut dyn ReplyOut,
) {
    let args = &cmd.args()[1..];
    match op {
        PubSubOp::Subscribe => subscribe(server, session, Kind::Channel, args),
        PubSubOp::PSubscribe => subscribe(server, session, Kind::Pattern, args),
        PubSubOp::Unsubscribe => unsubscribe(server, session, Kind::Channel, args),
        PubSubOp::PUnsubscribe => unsubscribe(server, session, Kind::Pattern, args),
        PubSubOp::Publish => {
            let (channel, payload) = (cmd.arg(1), cmd.arg(2));
            // Copied once: every recipient's message shares them, and they
            // may wait in mailboxes long after the request's buffer is
            // reused.
            let channel = Bytes::copy_from_slice(channel);
            let payload = Bytes::copy_from_slice(payload);
            let n = server.publish(channel, payload);
            out.reply(Reply::Integer(n as i64));
        }
        PubSubOp::Channels => {
            let pattern = match args.len() {
                1 => None,
                2 => Some(&args[1]),
                _ => {
                    return out.reply(
                        CommandError::WrongArity {
                            command: "pubsub|channels",
                        }
                        .into(),
                    )
                }
            };
            let mut names: Vec<&Bytes> = server
                .pubsub
                .channels
                .keys()
                .filter(|c| pattern.is_none_or(|p| glob::matches(p, c, false)))
                .collect();
            names.sort();
            out.reply(Reply::Array(
                names.into_iter().cloned().map(Reply::Bulk).collect(),
            ));
        }
        PubSubOp::NumSub => {
            let mut items = Vec::with_capacity(2 * (args.len() - 1));
            for channel in &args[1..] {
                let n = server.pubsub.channels.get(channel).map_or(0, Vec::len);
                items.push(Reply::Bulk(channel.clone()));
                items.push(Reply::Integer(n as i64));
            }
            out.reply(Reply::Array(items));
        }
        PubSubOp::NumPat => out.reply(Reply::Integer(server.pubsub.pattern_count() as i64)),
    }
}

fn confirmation(kind: Kind, on: bool) -> &'static [u8] {
    match (kind, on) {
        (Kind::Channel, true) => b"subscribe",
        (Kind::Channel, false) => b"unsubscribe",
        (Kind::Pattern, true) => b"psubscribe",
        (Kind::Pattern, false) => b"punsubscribe",
    }
}

/// Confirms an (un)subscription. Like every message of the protocol it
/// goes through the mailbox, whatever `CLIENT REPLY` says (Redis sends it
/// as a push in RESP2 too), right after the command.
fn confirm(server: &mut Server, session: &Session, kind: Kind, on: bool, name: Option<Bytes>) {
    let items = vec![
        Reply::Bulk(Bytes::from_static(confirmation(kind, on))),
        name.map_or(Reply::Nil, Reply::Bulk),
        Reply::Integer(session.subscriptions as i64),
    ];
    server.deliver_reply(session.id, message(session.proto, items));
}

fn subscribe(server: &mut Server, session: &mut Session, kind: Kind, names: &[Bytes]) {
    for name in names {
        server.pubsub.subscribe(session.id, kind, name);
        session.subscriptions = server.pubsub.subscriptions(session.id);
        confirm(server, session, kind, true, Some(name.clone()));
    }
}

fn unsubscribe(server: &mut Server, session: &mut Session, kind: Kind, names: &[Bytes]) {
    let all;
    let names = if names.is_empty() {
        all = server.pubsub.names(session.id, kind);
        if all.is_empty() {
            // Nothing to leave: one confirmation all the same, naming no
            // channel, as Redis answers.
            session.subscriptions = server.pubsub.subscriptions(session.id);
            return confirm(server, session, kind, false, None);
        }
        &all[..]
    } else {
        names
    };
    for name in names {
        server.pubsub.unsubscribe(session.id, kind, name);
        session.subscriptions = server.pubsub.subscriptions(session.id);
        confirm(server, session, kind, false, Some(name.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_counted_and_dropped_with_the_client() {
        let mut p = PubSub::default();
        let ch = Bytes::from_static(b"news");
        assert!(p.subscribe(1, Kind::Channel, &ch));
        assert!(!p.subscribe(1, Kind::Channel, &ch), "once per name");
        assert!(p.subscribe(1, Kind::Pattern, &Bytes::from_static(b"n*")));
        assert!(p.subscribe(2, Kind::Channel, &ch));
        assert_eq!(p.subscriptions(1), 2);
        let got = p.recipients(&ch, &Bytes::from_static(b"hi"));
        // Two channel subscribers, and client 1 again by its pattern.
        assert_eq!(
            got.iter().map(|(id, m)| (*id, m.len())).collect::<Vec<_>>(),
            vec![(1, 3), (2, 3), (1, 4)]
        );
        p.remove_client(1);
        assert_eq!(p.subscriptions(1), 0);
        assert_eq!((p.channel_count(), p.pattern_count()), (1, 0));
        assert!(!p.is_subscriber(1) && p.is_subscriber(2));
        assert!(p.unsubscribe(2, Kind::Channel, b"news"));
        assert_eq!(p.channel_count(), 0);
        assert!(p.clients.is_empty());
    }
}
