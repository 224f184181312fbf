//! The slot map: which master serves each hash slot, read from a node's
//! `CLUSTER SHARDS` reply (Redis 7) or `CLUSTER SLOTS` reply (older).

use super::slot::SLOTS;
use crate::reply::Reply;
use bytes::Bytes;

/// No master serves the slot (the cluster is down for it).
const UNSERVED: u16 = u16::MAX;

/// Which master serves each slot, by address (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Master addresses, sorted, each once.
    masters: Vec<String>,
    /// Per slot, an index into `masters`, or [`UNSERVED`].
    owners: Box<[u16]>,
    /// How many slots have a master.
    served: usize,
}

/// Why a reply could not be read as a slot map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The node answered with an error (`CLUSTER` unknown, cluster
    /// support disabled …): its words.
    #[error("{0}")]
    Refused(String),
    /// The reply is not shaped as the command's reply is.
    #[error("unreadable {0} reply")]
    Malformed(&'static str),
    /// The reply names no master at all.
    #[error("the cluster has no slots assigned")]
    Empty,
}

/// The reply's entries as pairs: a RESP3 map, or RESP2's flat array of
/// names and values.
fn pairs(reply: &Reply) -> Option<Vec<(&[u8], &Reply)>> {
    match reply {
        Reply::Map(entries) => entries
            .iter()
            .map(|(k, v)| text(k).map(|k| (k, v)))
            .collect(),
        Reply::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|kv| text(&kv[0]).map(|k| (k, &kv[1])))
            .collect(),
        _ => None,
    }
}

fn text(reply: &Reply) -> Option<&[u8]> {
    match reply {
        Reply::Bulk(b) | Reply::Status(b) => Some(b),
        Reply::Verbatim { text, .. } => Some(text),
        _ => None,
    }
}

fn integer(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(n) => Some(*n),
        other => std::str::from_utf8(text(other)?).ok()?.parse().ok(),
    }
}

fn items(reply: &Reply) -> Option<&[Reply]> {
    match reply {
        Reply::Array(items) | Reply::Set(items) => Some(items),
        _ => None,
    }
}

/// `host:port`, preferring what the node announces (`endpoint`, else
/// `ip`) and falling back to `asked`, the address the reply came from,
/// when it announces none (`?`, or empty: Redis's "unknown endpoint",
/// meaning "the address you asked").
fn address(host: Option<&[u8]>, port: i64, asked: &str) -> Option<String> {
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    let host = match host {
        Some(h) if !h.is_empty() && h != b"?" => String::from_utf8_lossy(h).into_owned(),
        _ => asked.rsplit_once(':')?.0.to_owned(),
    };
    Some(format!("{host}:{port}"))
}

impl SlotMap {
    fn build(ranges: Vec<(u16, u16, String)>) -> Result<SlotMap, MapError> {
        let mut masters: Vec<String> = ranges.iter().map(|(_, _, a)| a.clone()).collect();
        masters.sort();
        masters.dedup();
        if masters.is_empty() {
            return Err(MapError::Empty);
        }
        let mut owners = vec![UNSERVED; SLOTS].into_boxed_slice();
        for (start, end, addr) in ranges {
            let index = masters.binary_search(&addr).unwrap_or(0) as u16;
            for slot in start..=end {
                owners[usize::from(slot)] = index;
            }
        }
        let served = owners.iter().filter(|o| **o != UNSERVED).count();
        Ok(SlotMap {
            masters,
            owners,
            served,
        })
    }

    /// Reads a `CLUSTER SHARDS` reply that came from the node at `asked`.
    pub fn from_shards(reply: &Reply, asked: &str) -> Result<SlotMap, MapError> {
        const WHAT: &str = "CLUSTER SHARDS";
        if let Reply::Error(e) = reply {
            return Err(MapError::Refused(String::from_utf8_lossy(e).into_owned()));
        }
        let bad = || MapError::Malformed(WHAT);
        let mut ranges = Vec::new();
        for shard in items(reply).ok_or_else(bad)? {
            let fields = pairs(shard).ok_or_else(bad)?;
            let field = |name: &[u8]| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let slots = items(field(b"slots").ok_or_else(bad)?).ok_or_else(bad)?;
            if slots.is_empty() {
                continue;
            }
            let master = items(field(b"nodes").ok_or_else(bad)?)
                .ok_or_else(bad)?
                .iter()
                .filter_map(pairs)
                .find(|node| {
                    let get = |name: &[u8]| node.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
                    get(b"role").and_then(text) == Some(b"master")
                        && get(b"health").and_then(text) != Some(b"fail")
                });
            // A shard whose master failed and has no promoted replica yet
            // serves nothing: its slots stay unserved.
            let Some(master) = master else { continue };
            let get = |name: &[u8]| master.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let port = get(b"port")
                .or_else(|| get(b"tls-port"))
                .and_then(integer)
                .ok_or_else(bad)?;
            let host = get(b"endpoint")
                .and_then(text)
                .or(get(b"ip").and_then(text));
            let addr = address(host, port, asked).ok_or_else(bad)?;
            for pair in slots.chunks(2) {
                let [start, end] = pair else {
                    return Err(bad());
                };
                let (start, end) = (slot_number(start), slot_number(end));
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(bad());
                };
                ranges.push((start, end.max(start), addr.clone()));
            }
        }
        SlotMap::build(ranges)
    }

    /// Reads a `CLUSTER SLOTS` reply that came from the node at `asked`.
    pub fn from_slots(reply: &Reply, asked: &str) -> Result<SlotMap, MapError> {
        const WHAT: &str = "CLUSTER SLOTS";
        if let Reply::Error(e) = reply {
            return Err(MapError::Refused(String::from_utf8_lossy(e).into_owned()));
        }
        let bad = || MapError::Malformed(WHAT);
        let mut ranges = Vec::new();
        for range in items(reply).ok_or_else(bad)? {
            let range = items(range).ok_or_else(bad)?;
            let [start, end, master, ..] = range else {
                return Err(bad());
            };
            let (Some(start), Some(end)) = (slot_number(start), slot_number(end)) else {
                return Err(bad());
            };
            let master = items(master).ok_or_else(bad)?;
            let [host, port, ..] = master else {
                return Err(bad());
            };
            let host = match host {
                Reply::Nil => None,
                other => Some(text(other).ok_or_else(bad)?),
            };
            let addr = address(host, integer(port).ok_or_else(bad)?, asked).ok_or_else(bad)?;
            ranges.push((start, end.max(start), addr));
        }
        SlotMap::build(ranges)
    }

    /// The address of the master serving `slot`, if one does.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let index = *self.owners.get(usize::from(slot))?;
        self.masters.get(usize::from(index)).map(String::as_str)
    }

    /// Every master's address, sorted.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// How many slots have a master.
    pub fn served(&self) -> usize {
        self.served
    }

    /// Records what a `MOVED` redirect says: `slot` is served by `addr` now.
    pub fn set_owner(&mut self, slot: u16, addr: &str) {
        let Some(owner) = self.owners.get_mut(usize::from(slot)) else {
            return;
        };
        let index = match self.masters.iter().position(|m| m == addr) {
            Some(i) => i,
            None => {
                self.masters.push(addr.to_owned());
                self.masters.len() - 1
            }
        };
        if *owner == UNSERVED {
            self.served += 1;
        }
        *owner = index as u16;
    }
}

fn slot_number(reply: &Reply) -> Option<u16> {
    integer(reply)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| usize::from(*n) < SLOTS)
}

/// A redirect a node answers with instead of running the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED slot addr`: the slot is served by `addr` for good.
    Moved(u16, String),
    /// `ASK slot addr`: this one request goes to `addr`, after `ASKING`
    /// (the slot is being migrated there).
    Ask(u16, String),
}

impl Redirect {
    /// Reads an error reply's text as a redirect, if it is one.
    pub fn parse(error: &Bytes) -> Option<Redirect> {
        let text = std::str::from_utf8(error).ok()?;
        let mut words = text.split(' ');
        let kind = words.next()?;
        let slot = words
            .next()?
            .parse()
            .ok()
            .filter(|s| usize::from(*s) < SLOTS)?;
        let addr = words.next()?.to_owned();
        if words.next().is_some() || !addr.contains(':') {
            return None;
        }
        match kind {
            "MOVED" => Some(Redirect::Moved(slot, addr)),
            "ASK" => Some(Redirect::Ask(slot, addr)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn node(port: i64, role: &str, health: &str) -> Reply {
        Reply::Array(vec![
            bulk("id"),
            bulk("abc"),
            bulk("port"),
            Reply::Integer(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(ranges: &[(i64, i64)], nodes: Vec<Reply>) -> Reply {
        let slots = ranges
            .iter()
            .flat_map(|(a, b)| [Reply::Integer(*a), Reply::Integer(*b)])
            .collect();
        Reply::Array(vec![
            bulk("slots"),
            Reply::Array(slots),
            bulk("nodes"),
            Reply::Array(nodes),
        ])
    }

    #[test]
    fn shards_give_each_slot_its_master_and_skip_replicas_and_failed_masters() {
        let reply = Reply::Array(vec![
            shard(
                &[(0, 5460), (10923, 10923)],
                vec![
                    node(7001, "master", "online"),
                    node(7004, "replica", "online"),
                ],
            ),
            shard(&[(5461, 10922)], vec![node(7002, "master", "online")]),
            shard(
                &[(10924, 16383)],
                vec![
                    node(7003, "master", "fail"),
                    node(7006, "replica", "online"),
                ],
            ),
        ]);
        let map = SlotMap::from_shards(&reply, "127.0.0.1:7001").unwrap();
        assert_eq!(map.owner(0), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(10923), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(5461), Some("127.0.0.1:7002"));
        assert_eq!(map.owner(16383), None);
        assert_eq!(map.served(), 10923 + 1);
        assert_eq!(map.masters(), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    }

    #[test]
    fn resp3_maps_read_as_resp2_arrays_do() {
        let as_map = |r: Reply| match r {
            Reply::Array(items) => Reply::Map(
                items
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect(),
            ),
            other => other,
        };
        let node = as_map(node(7001, "master", "online"));
        let shard = as_map(shard(&[(0, 16383)], vec![node]));
        let map = SlotMap::from_shards(&Reply::Array(vec![shard]), "127.0.0.1:7001").unwrap();
        assert_eq!(map.served(), SLOTS);
    }

    #[test]
    fn cluster_slots_is_read_with_the_asked_host_for_an_unknown_endpoint() {
        let range = |a, b, host: Reply, port| {
            Reply::Array(vec![
                Reply::Integer(a),
                Reply::Integer(b),
                Reply::Array(vec![host, Reply::Integer(port), bulk("id")]),
            ])
        };
        let reply = Reply::Array(vec![
            range(0, 8191, bulk("10.0.0.1"), 6379),
            range(8192, 16383, bulk("?"), 6380),
        ]);
        let map = SlotMap::from_slots(&reply, "10.0.0.9:6379").unwrap();
        assert_eq!(map.owner(1), Some("10.0.0.1:6379"));
        assert_eq!(map.owner(9000), Some("10.0.0.9:6380"));
    }

    #[test]
    fn errors_and_odd_shapes_are_told_apart() {
        let refused = Reply::Error(Bytes::from_static(
            b"ERR This instance has cluster support disabled",
        ));
        assert_eq!(
            SlotMap::from_shards(&refused, "h:1"),
            Err(MapError::Refused(
                "ERR This instance has cluster support disabled".into()
            ))
        );
        assert_eq!(
            SlotMap::from_slots(&Reply::Integer(3), "h:1"),
            Err(MapError::Malformed("CLUSTER SLOTS"))
        );
        assert_eq!(
            SlotMap::from_slots(&Reply::Array(vec![]), "h:1"),
            Err(MapError::Empty)
        );
    }

    #[test]
    fn redirects_are_parsed_and_anything_else_is_not_one() {
        let parse = |s: &'static str| Redirect::parse(&Bytes::from_static(s.as_bytes()));
        assert_eq!(
            parse("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved(3999, "127.0.0.1:6381".into()))
        );
        assert_eq!(parse("ASK 1 h:2"), Some(Redirect::Ask(1, "h:2".into())));
        assert_eq!(parse("MOVED 16384 h:2"), None);
        assert_eq!(parse("ERR MOVED 1 h:2"), None);
        assert_eq!(parse("MOVED 1 h:2 extra"), None);
    }
}
