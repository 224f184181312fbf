//! Keyspace notifications (`notify-keyspace-events`), with Redis's
//! semantics: a change to a key is published on `__keyspace@0__:<key>`
//! (the event as the message) and `__keyevent@0__:<event>` (the key as
//! the message), for the classes the configuration selects.
//!
//! Events come from the database layer's signals, as invalidations do;
//! the command that caused a write names the event (its spec's
//! [`notify`](crate::command::table::Spec::notify): `set`, `incrby`,
//! `append` …), and the rest follow from the change: `del`, `expire`,
//! `persist`, `expired`, `evicted`, `new`, `rename_from`/`rename_to`.
//! Only strings are stored, so the list, set, hash, sorted-set and stream
//! classes are accepted and never raised; key-miss events (`m`) are not
//! carried out, and refused.

use super::Server;
use crate::command::table::Spec;
use crate::db::KeyChange;
use bytes::{BufMut, Bytes, BytesMut};

/// The classes of events, as Redis's flags.
pub mod class {
    /// `K`: `__keyspace@…` channels.
    pub const KEYSPACE: u32 = 1 << 0;
    /// `E`: `__keyevent@…` channels.
    pub const KEYEVENT: u32 = 1 << 1;
    /// `g`: generic (`del`, `expire`, `rename_*` …).
    pub const GENERIC: u32 = 1 << 2;
    /// `$`: string commands.
    pub const STRING: u32 = 1 << 3;
    /// `x`: expired keys.
    pub const EXPIRED: u32 = 1 << 8;
    /// `e`: evicted keys.
    pub const EVICTED: u32 = 1 << 9;
    /// `n`: new keys.
    pub const NEW: u32 = 1 << 14;
}

/// Each flag letter with its bit, in the order Redis writes them.
const LETTERS: &[(u8, u32)] = &[
    (b'g', class::GENERIC),
    (b'$', class::STRING),
    (b'l', 1 << 4),
    (b's', 1 << 5),
    (b'h', 1 << 6),
    (b'z', 1 << 7),
    (b'x', class::EXPIRED),
    (b'e', class::EVICTED),
    (b't', 1 << 10),
    (b'd', 1 << 13),
    (b'n', class::NEW),
];

/// `A`: every class but key misses and new keys.
const ALL: u32 = class::GENERIC
    | class::STRING
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | class::EXPIRED
    | class::EVICTED
    | (1 << 10)
    | (1 << 13);

/// The flags a configuration string sets, or `None` for a letter Redis
/// does not know or kv does not carry out.
pub fn parse_flags(s: &[u8]) -> Option<u32> {
    let mut flags = 0;
    for &c in s {
        flags |= match c {
            b'A' => ALL,
            b'K' => class::KEYSPACE,
            b'E' => class::KEYEVENT,
            _ => LETTERS.iter().find(|(l, _)| *l == c)?.1,
        };
    }
    Some(flags)
}

/// The configuration string of `flags`, as `CONFIG GET` shows it.
pub fn flags_string(flags: u32) -> String {
    let mut s = String::new();
    if flags & ALL == ALL {
        s.push('A');
    } else {
        for &(letter, bit) in LETTERS {
            if flags & bit != 0 {
                s.push(letter as char);
            }
        }
    }
    if flags & class::KEYSPACE != 0 {
        s.push('K');
    }
    if flags & class::KEYEVENT != 0 {
        s.push('E');
    }
    s
}

/// The events a change raises, with their classes, in order.
fn events(change: KeyChange, spec: Option<&Spec>) -> impl Iterator<Item = (u32, &'static str)> {
    let command = spec.map_or("set", |s| s.notify);
    // A moved key keeps its deadline: no `expire` of its own.
    let moves = matches!(command, "rename_to" | "copy_to");
    let [first, second] = match change {
        KeyChange::Written { new } => {
            let class = if moves { class::GENERIC } else { class::STRING };
            [new.then_some((class::NEW, "new")), Some((class, command))]
        }
        KeyChange::Deadline { .. } if moves => [None, None],
        KeyChange::Deadline { persist: true } => [Some((class::GENERIC, "persist")), None],
        KeyChange::Deadline { persist: false } => [Some((class::GENERIC, "expire")), None],
        KeyChange::Removed if command == "rename_to" => {
            [Some((class::GENERIC, "rename_from")), None]
        }
        KeyChange::Removed => [Some((class::GENERIC, "del")), None],
        KeyChange::Expired => [Some((class::EXPIRED, "expired")), None],
        KeyChange::Evicted => [Some((class::EVICTED, "evicted")), None],
        KeyChange::Restored => [None, None],
    };
    first.into_iter().chain(second)
}

fn channel(prefix: &[u8], name: &[u8]) -> Bytes {
    let mut c = BytesMut::with_capacity(prefix.len() + name.len());
    c.put_slice(prefix);
    c.put_slice(name);
    c.freeze()
}

impl Server {
    /// Publishes the keyspace events of `key`'s change, caused by a command
    /// of `spec` (`None`: expiry or eviction).
    pub(super) fn notify_change(&mut self, key: &Bytes, change: KeyChange, spec: Option<&Spec>) {
        let flags = self.notify_flags;
        for (class, event) in events(change, spec) {
            if flags & class == 0 {
                continue;
            }
            let event = Bytes::from_static(event.as_bytes());
            if flags & class::KEYSPACE != 0 {
                self.publish(channel(b"__keyspace@0__:", key), event.clone());
            }
            if flags & class::KEYEVENT != 0 {
                self.publish(channel(b"__keyevent@0__:", &event), key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_and_write_as_redis_writes_them() {
        let f = |s: &str| flags_string(parse_flags(s.as_bytes()).unwrap());
        assert_eq!(f("gKE"), "gKE");
        assert_eq!(f("$lshzxeKE"), "$lshzxeKE");
        assert_eq!(f("KA"), "AK");
        assert_eq!(f("EA"), "AE");
        assert_eq!(f(""), "");
        assert_eq!(parse_flags(b"Km"), None, "key misses are not raised");
        assert_eq!(parse_flags(b"Q"), None);
    }

    #[test]
    fn changes_raise_redis_events() {
        let list = |c, s| events(c, s).map(|(_, e)| e).collect::<Vec<_>>();
        assert_eq!(list(KeyChange::Written { new: true }, None), ["new", "set"]);
        assert_eq!(list(KeyChange::Removed, None), ["del"]);
        assert_eq!(
            list(KeyChange::Deadline { persist: true }, None),
            ["persist"]
        );
        assert_eq!(list(KeyChange::Expired, None), ["expired"]);
        assert!(list(KeyChange::Restored, None).is_empty());
    }
}
