//! Property tests of the append-only log format: replaying any prefix of a
//! valid log gives exactly the state after its last whole record; damaged
//! bytes are always reported, never misread; and the log a server writes
//! replays to the server's state.

use bytes::{Bytes, BytesMut};
use kv_core::aof::{self, CorruptKind, LogDecoder, LogStatus};
use kv_core::Effect;
use kv_core::{Server, ServerConfig, ServerConnection};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeMap;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Records over a few keys, so that puts overwrite and deletes hit.
fn records() -> impl Strategy<Value = Vec<Effect>> {
    let key = prop::sample::select(vec!["a", "b", "c", "", "key with spaces", "\u{e9}"])
        .prop_map(|k| Bytes::from_static(k.as_bytes()));
    let record = prop_oneof![
        3 => (key.clone(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(key, v)| Effect::Set { key, value: Bytes::from(v), deadline: None }),
        1 => (key.clone(), 1u64..1000)
            .prop_map(|(key, d)| Effect::Expire { key, deadline: Some(d * 1_000_000_000_000) }),
        1 => Just(Effect::Flush),
        1 => key.prop_map(|key| Effect::Del { key }),
    ];
    prop::collection::vec(record, 0..24)
}

/// The log of `records`, and the offset where each record ends.
fn encode(records: &[Effect]) -> (Vec<u8>, Vec<usize>) {
    let mut out = BytesMut::from(&aof::file_header()[..]);
    let mut ends = Vec::new();
    for r in records {
        aof::encode(r, &mut out);
        ends.push(out.len());
    }
    (out.to_vec(), ends)
}

type Model = BTreeMap<Bytes, Bytes>;

fn apply(model: &mut Model, r: &Effect) {
    match r {
        Effect::Set { key, value, .. } => {
            model.insert(key.clone(), value.clone());
        }
        // Deadlines are far in the future: values stay.
        Effect::Expire { .. } => {}
        Effect::Del { key } => {
            model.remove(key);
        }
        Effect::Flush => model.clear(),
    }
}

fn state(server: &Server) -> Model {
    server.store().dump(0).into_iter().collect()
}

fn server() -> Server {
    Server::new(ServerConfig::default())
}

/// Feeds `bytes` to a decoder in chunks cut at `cuts`, replaying every
/// record into a server. Returns the server, the decoder and the first
/// damage met.
fn replay(bytes: &[u8], cuts: &[Index]) -> (Server, LogDecoder, Option<aof::Corruption>) {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    let mut s = server();
    let mut d = LogDecoder::new();
    for w in points.windows(2) {
        d.feed(&bytes[w[0]..w[1]]);
        loop {
            match d.next_record() {
                Ok(Some(r)) => s.replay(&r),
                Ok(None) => break,
                Err(e) => return (s, d, Some(e)),
            }
        }
    }
    (s, d, None)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_prefix_replays_to_the_state_after_its_last_whole_record(
        recs in records(),
        cut in any::<Index>(),
        chunks in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let (bytes, ends) = encode(&recs);
        let len = cut.index(bytes.len() + 1);
        let whole = ends.iter().take_while(|&&e| e <= len).count();
        let mut model = Model::new();
        for r in &recs[..whole] {
            apply(&mut model, r);
        }
        let (s, d, damage) = replay(&bytes[..len], &chunks);
        prop_assert_eq!(damage, None, "a prefix of a valid log is never damaged");
        prop_assert_eq!(state(&s), model);
        prop_assert_eq!(d.records(), whole as u64);
        // The decoder knows where to cut: right after the last whole record.
        let boundary = if whole > 0 {
            ends[whole - 1]
        } else if len >= aof::FILE_HEADER_LEN {
            aof::FILE_HEADER_LEN
        } else {
            0
        };
        prop_assert_eq!(d.offset(), boundary as u64);
        prop_assert_eq!(d.pending(), len - boundary);
    }

    #[test]
    fn a_damaged_byte_is_reported_at_its_record_and_never_misread(
        recs in records().prop_filter("some records", |r| !r.is_empty()),
        at in any::<Index>(),
        flip in 1u8..=255,
        chunks in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let (mut bytes, ends) = encode(&recs);
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        // The record holding byte i (none: the file header).
        let hit = ends.iter().position(|&e| e > i).filter(|_| i >= aof::FILE_HEADER_LEN);
        let (s, d, damage) = replay(&bytes, &chunks);
        let damage = damage.expect("a damaged byte is always detected");
        let (start, intact) = match hit {
            None => (0, 0),
            Some(j) => (if j == 0 { aof::FILE_HEADER_LEN } else { ends[j - 1] }, j),
        };
        prop_assert_eq!(damage.offset, start as u64);
        prop_assert!(damage.to_string().contains("offset"));
        let mut model = Model::new();
        for r in &recs[..intact] {
            apply(&mut model, r);
        }
        prop_assert_eq!(state(&s), model, "only the records before the damage are replayed");
        prop_assert_eq!(d.offset(), start as u64);
        if let Some(j) = hit {
            // Resynchronising: a damaged body is skipped exactly; after a
            // damaged header the scan lands no later than the next record.
            let next = ends[j];
            let from = start + damage.known_len.map_or(1, |n| n as usize);
            let found = aof::find_record(&bytes[from..]).map(|p| from + p);
            if damage.known_len.is_some() {
                prop_assert_eq!(from, next);
            }
            if j + 1 < recs.len() {
                prop_assert!(found.is_some_and(|p| p <= next), "{:?} vs {}", found, next);
            } else {
                prop_assert_eq!(found, None, "nothing valid follows the last record");
            }
            if matches!(damage.kind, CorruptKind::HeaderChecksum) {
                prop_assert_eq!(damage.known_len, None);
            }
        }
    }

    #[test]
    fn the_log_a_server_writes_replays_to_its_state(
        commands in prop::collection::vec(
            (0..4u8, prop::sample::select(vec!["a", "b", "c"]), "[a-z]{0,6}"),
            0..40,
        ),
        stored_every in 1usize..5,
    ) {
        let mut s = server();
        s.enable_log(LogStatus::default());
        let mut conn = ServerConnection::new(s.config().limits);
        let mut log = BytesMut::from(&aof::file_header()[..]);
        for (n, (op, key, value)) in commands.iter().enumerate() {
            let line = match op {
                0 | 1 => format!("PUT {key} {value}\r\n"),
                2 => format!("DEL {key} b\r\n"),
                _ => format!("GET {key}\r\n"),
            };
            conn.handle_input(&mut s, line.as_bytes());
            if n % stored_every == 0 {
                if let Some((records, upto)) = s.take_log_records() {
                    log.extend_from_slice(&records);
                    s.log_stored(upto);
                }
            }
        }
        if let Some((records, upto)) = s.take_log_records() {
            log.extend_from_slice(&records);
            s.log_stored(upto);
        }
        conn.process(&mut s);
        prop_assert!(!conn.is_waiting());
        let (replayed, _, damage) = replay(&log, &[]);
        prop_assert_eq!(damage, None);
        prop_assert_eq!(state(&replayed), state(&s));
        prop_assert_eq!(replayed.stats().commands, 0);
    }
}
