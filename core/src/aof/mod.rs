//! The append-only log (AOF): its on-disk format, an incremental decoder for
//! replaying it, and the [`Journal`] that tracks which writes are stored.
//!
//! Like everything in the core this is pure: the driver owns the files, the
//! threads and the clock. It feeds file bytes to a [`LogDecoder`] at start,
//! takes encoded records from the [`Server`](crate::Server) after each batch
//! of commands, and reports back when they are on disk (or failed to get
//! there), which releases (or fails) the replies held by the connections.
//!
//! # File format (version 1)
//!
//! All integers are little-endian.
//!
//! ```text
//! file   = header record*
//! header = "KV-AOF" (6 bytes) | format version u16 (= 1)
//! record = body length u32 | CRC32 of body u32 | CRC32 of the previous 8 bytes u32 | body
//! body   = record version u8 (= 1) | type u8 | payload
//!   type 1, PUT: key length u32 | key | value (the rest of the body)
//!   type 2, DEL: key (the whole rest of the body)
//!   type 3, PUT with deadline: deadline u64 | key length u32 | key | value
//!   type 4, EXPIRE: deadline u64 (0: none, as PERSIST) | key
//!   type 5, FLUSH: nothing (every key removed)
//! ```
//!
//! Deadlines are absolute, in unix milliseconds, as Redis's AOF turns a
//! relative `EXPIRE` into `PEXPIREAT`: replaying a log later must not
//! give its keys their time to live again. Replay drops what has expired.
//!
//! The checksum of the record header (its length and body checksum) lets the
//! decoder tell a damaged length from a record cut short by a crash: without
//! it, a flipped bit that inflates a length would look like a torn tail and
//! everything after it would be dropped quietly. It also makes scanning for
//! the next valid record after damage cheap ([`find_record`]), which is how
//! the driver tells a damaged tail (nothing valid follows: cut it off) from
//! damage in the middle of the file (stop and ask for `--repair`). CRC32
//! detects every error burst of up to 32 bits, so any single damaged byte is
//! always reported, never misread.
//!
//! How the driver reads the end of a replay:
//!
//! - the file ends inside a record (or the header) with nothing damaged
//!   before: a write interrupted by a crash; cut it off;
//! - damage ([`Corruption`]): scan for a valid record after it, from the end
//!   of the damaged record when its header is intact
//!   ([`Corruption::known_len`]: a record's own body cannot fool the scan),
//!   else from the next byte. None found: a damaged tail, cut it off. One
//!   found: damage in the middle, which stops the start without `--repair`.
//!
//! `--repair` resynchronises there ([`LogDecoder::resync`]) and goes on, so
//! one damaged byte costs the record it hit, not the rest of the file. A
//! resync takes the first offset where a whole record verifies: its header
//! checksum, its body checksum (64 bits of checksum together), a body that
//! lies inside the file and fields that decode. Random damage passes all of
//! that by chance at about one offset in 2^64. What it cannot tell apart is
//! a *real* record stored inside a damaged record: a value that is itself
//! log bytes, reached by scanning a record whose header is damaged (an
//! intact header lets the scan skip its body). The records in a damaged
//! range are lost; every valid record after it is kept, in order.

mod journal;
mod upkeep;

pub use journal::{Journal, LogStatus, WriteOutcome};
pub use upkeep::{Upkeep, UpkeepConfig, RETRY_AFTER, REWRITE_BACKOFF};

use crate::db::Effect;
use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

/// The first six bytes of a log file.
pub const MAGIC: [u8; 6] = *b"KV-AOF";
/// The file format version written after [`MAGIC`].
pub const FORMAT_VERSION: u16 = 1;
/// Length of the file header: [`MAGIC`] and the format version.
pub const FILE_HEADER_LEN: usize = 8;
/// Length of a record header: body length, body CRC, header CRC.
pub const RECORD_HEADER_LEN: usize = 12;
/// The record version written in every body.
pub const RECORD_VERSION: u8 = 1;
/// The longest body a record can have (its length is a `u32`).
pub const MAX_BODY_LEN: usize = u32::MAX as usize;

const TYPE_PUT: u8 = 1;
const TYPE_DEL: u8 = 2;
const TYPE_PUT_DEADLINE: u8 = 3;
const TYPE_EXPIRE: u8 = 4;
const TYPE_FLUSH: u8 = 5;
/// Record version, type and key length.
const PUT_FIXED: usize = 6;
/// Record version and type.
const DEL_FIXED: usize = 2;
/// Record version, type, deadline and key length.
const PUTX_FIXED: usize = 14;
/// Record version, type and deadline.
const EXPIRE_FIXED: usize = 10;

/// The file header of a new log.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..6].copy_from_slice(&MAGIC);
    h[6..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Appends the record of one [`Effect`] to `out`: a `PUT` for a set, a
/// `DEL` for a removal. A record is an effect, written down.
///
/// # Panics
///
/// If the body would exceed [`MAX_BODY_LEN`]; see [`encode_put`].
pub fn encode(effect: &Effect, out: &mut BytesMut) {
    match effect {
        Effect::Set {
            key,
            value,
            deadline: None,
        } => encode_put(key, value, out),
        Effect::Set {
            key,
            value,
            deadline,
        } => encode_slot(key, value, *deadline, out),
        Effect::Expire { key, deadline } => {
            let start = begin(out, TYPE_EXPIRE, EXPIRE_FIXED + key.len());
            out.put_u64_le(deadline.unwrap_or(0));
            out.put_slice(key);
            seal(out, start);
        }
        Effect::Del { key } => encode_del(key, out),
        Effect::Flush => {
            let start = begin(out, TYPE_FLUSH, DEL_FIXED);
            seal(out, start);
        }
    }
}

/// Appends the record that stores `key` with `value` and its deadline (a
/// `PUT`, or a `PUT` with deadline): what a key holds, written down.
pub fn encode_slot(key: &[u8], value: &[u8], deadline: Option<u64>, out: &mut BytesMut) {
    let Some(d) = deadline else {
        return encode_put(key, value, out);
    };
    let start = begin(out, TYPE_PUT_DEADLINE, PUTX_FIXED + key.len() + value.len());
    out.put_u64_le(d);
    out.put_u32_le(key.len() as u32);
    out.put_slice(key);
    out.put_slice(value);
    seal(out, start);
}

/// Starts a record of `body_len` bytes of type `kind`: reserves its header
/// and writes the version and type; returns where it starts, for [`seal`].
fn begin(out: &mut BytesMut, kind: u8, body_len: usize) -> usize {
    assert!(body_len <= MAX_BODY_LEN, "record too large for the log");
    out.reserve(RECORD_HEADER_LEN + body_len);
    let start = out.len();
    out.put_bytes(0, RECORD_HEADER_LEN);
    out.put_u8(RECORD_VERSION);
    out.put_u8(kind);
    start
}

/// The encoded length of a `PUT` record.
pub fn put_len(key: usize, value: usize) -> usize {
    RECORD_HEADER_LEN + PUT_FIXED + key + value
}

/// Appends a `PUT` record to `out`: one copy of key and value, straight into
/// the (reused) output buffer.
///
/// # Panics
///
/// If the body would exceed [`MAX_BODY_LEN`] (4 GiB); the
/// [`Server`](crate::Server) refuses such writes before they get here.
pub fn encode_put(key: &[u8], value: &[u8], out: &mut BytesMut) {
    let start = begin(out, TYPE_PUT, PUT_FIXED + key.len() + value.len());
    out.put_u32_le(key.len() as u32);
    out.put_slice(key);
    out.put_slice(value);
    seal(out, start);
}

/// Appends a `DEL` record to `out`.
///
/// # Panics
///
/// If the key is over [`MAX_BODY_LEN`].
pub fn encode_del(key: &[u8], out: &mut BytesMut) {
    let start = begin(out, TYPE_DEL, DEL_FIXED + key.len());
    out.put_slice(key);
    seal(out, start);
}

/// Fills in the header of the record that starts at `start` and runs to the
/// end of `out`.
fn seal(out: &mut BytesMut, start: usize) {
    let body_start = start + RECORD_HEADER_LEN;
    let body_len = (out.len() - body_start) as u32;
    let body_crc = crc32fast::hash(&out[body_start..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
}

/// What is wrong with damaged log bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CorruptKind {
    /// The file does not start with [`MAGIC`]: not a kv log at all.
    #[error("not a kv append-only file (bad magic)")]
    BadMagic,
    /// A file format this build does not know.
    #[error("unsupported log format version {0}")]
    FormatVersion(u16),
    /// The record header (length, body checksum) is damaged.
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    /// The record body is damaged.
    #[error("record checksum mismatch")]
    BodyChecksum,
    /// A record version this build does not know.
    #[error("unsupported record version {0}")]
    RecordVersion(u8),
    /// A record type this build does not know.
    #[error("unknown record type {0}")]
    RecordType(u8),
    /// A record whose checksums match but whose fields do not fit together
    /// (written by a broken encoder).
    #[error("malformed record")]
    Malformed,
}

/// Damage found in a log, at a byte offset from the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("corrupt log at byte offset {offset}: {kind}")]
pub struct Corruption {
    /// Offset of the damaged record (0 for the file header).
    pub offset: u64,
    /// What is wrong.
    pub kind: CorruptKind,
    /// The damaged record's whole length, when its header is intact (only
    /// the body is damaged): the next record, if any, starts right after.
    /// `None` when the header itself cannot be trusted.
    pub known_len: Option<u64>,
}

/// Where a body's key and value lie, once checked.
enum Layout {
    Put { key_end: usize },
    PutDeadline { key_end: usize },
    Expire,
    Del,
    Flush,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(n)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the record at the start of `bytes`: `Ok(Some(len))` if a whole,
/// valid record of `len` bytes is there, `Ok(None)` if the bytes end before
/// the record does, or what is wrong with it.
pub fn check_record(bytes: &[u8]) -> Result<Option<usize>, CorruptKind> {
    check(bytes)
        .map(|r| r.map(|(len, _)| len))
        .map_err(|(kind, _)| kind)
}

/// What is wrong with a record, and its length if its header is intact.
type Damage = (CorruptKind, Option<usize>);

/// Like [`check_record`], with the layout of a valid body, and with the
/// record's length alongside an error when the header is intact.
fn check(bytes: &[u8]) -> Result<Option<(usize, Layout)>, Damage> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Ok(None);
    }
    if crc32fast::hash(&bytes[..8]) != u32_at(bytes, 8) {
        return Err((CorruptKind::HeaderChecksum, None));
    }
    let len = RECORD_HEADER_LEN + u32_at(bytes, 0) as usize;
    let Some(body) = bytes.get(RECORD_HEADER_LEN..len) else {
        return Ok(None);
    };
    if crc32fast::hash(body) != u32_at(bytes, 4) {
        return Err((CorruptKind::BodyChecksum, Some(len)));
    }
    match check_body(body) {
        Ok(layout) => Ok(Some((len, layout))),
        Err(kind) => Err((kind, Some(len))),
    }
}

/// Checks the fields of a body whose checksum matched.
fn check_body(body: &[u8]) -> Result<Layout, CorruptKind> {
    if body.len() < DEL_FIXED {
        return Err(CorruptKind::Malformed);
    }
    if body[0] != RECORD_VERSION {
        return Err(CorruptKind::RecordVersion(body[0]));
    }
    match body[1] {
        TYPE_PUT => {
            if body.len() < PUT_FIXED {
                return Err(CorruptKind::Malformed);
            }
            let key_end = PUT_FIXED
                .checked_add(u32_at(body, 2) as usize)
                .filter(|&end| end <= body.len())
                .ok_or(CorruptKind::Malformed)?;
            Ok(Layout::Put { key_end })
        }
        TYPE_PUT_DEADLINE => {
            if body.len() < PUTX_FIXED {
                return Err(CorruptKind::Malformed);
            }
            let key_end = PUTX_FIXED
                .checked_add(u32_at(body, 10) as usize)
                .filter(|&end| end <= body.len())
                .ok_or(CorruptKind::Malformed)?;
            Ok(Layout::PutDeadline { key_end })
        }
        TYPE_EXPIRE if body.len() >= EXPIRE_FIXED => Ok(Layout::Expire),
        TYPE_FLUSH if body.len() == DEL_FIXED => Ok(Layout::Flush),
        TYPE_EXPIRE | TYPE_FLUSH => Err(CorruptKind::Malformed),
        TYPE_DEL => Ok(Layout::Del),
        other => Err(CorruptKind::RecordType(other)),
    }
}

/// The first position in `bytes` where a whole, valid record starts, if any.
///
/// Used after damage is found, to tell a damaged tail (nothing valid
/// follows) from damage in the middle. The header checksum rejects almost
/// every wrong position after hashing 8 bytes, so a scan costs little more
/// than reading the bytes.
pub fn find_record(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&at| matches!(check(&bytes[at..]), Ok(Some(_))))
}

/// Damaged bytes that [`LogDecoder::resync`] skipped: no valid record
/// starts anywhere in `start..end` (but inside the body of a record whose
/// header was intact, which the scan skips as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// File offset of the first damaged byte's record.
    pub start: u64,
    /// File offset of the next valid record.
    pub end: u64,
    /// What was wrong at `start`.
    pub kind: CorruptKind,
}

impl Skipped {
    /// Bytes skipped.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether nothing was skipped (never, for a range from a resync).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What [`LogDecoder::resync`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resync {
    /// A valid record starts at the end of the skipped range; decoding goes
    /// on from there.
    Found(Skipped),
    /// The buffered bytes end before the scan could decide: feed more.
    NeedMore,
    /// No valid record follows the damage (only at the end of the file): a
    /// damaged tail, everything from [`Corruption::offset`] on.
    NotFound,
}

/// Replays a log incrementally: feed it file bytes in chunks of any size and
/// take whole records out.
///
/// [`LogDecoder::next_record`] returns a record, `Ok(None)` when the buffered bytes
/// end before the next record does (read more; at the end of the file this is
/// a torn tail of [`LogDecoder::pending`] bytes), or the damage found at a
/// byte offset. After damage it keeps returning the same error.
#[derive(Debug, Default)]
pub struct LogDecoder {
    buf: BytesMut,
    /// File offset of `buf[0]`: the end of the last whole record.
    offset: u64,
    header_done: bool,
    records: u64,
    damage: Option<Corruption>,
    /// Where, in `buf`, a resync goes on scanning after damage.
    scan: usize,
}

impl LogDecoder {
    /// A decoder at the start of a file.
    pub fn new() -> Self {
        LogDecoder::default()
    }

    /// Appends file bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read file bytes into directly.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The file offset just past the last whole record returned (or past
    /// the file header): where a torn tail should be cut. After damage it
    /// moves on with [`LogDecoder::resync`]'s scan; the damage keeps its own
    /// offset ([`LogDecoder::damage`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes buffered past [`LogDecoder::offset`], not yet a whole record.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Records returned so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next whole record, `Ok(None)` if more bytes are needed, or the
    /// damage at [`LogDecoder::offset`].
    pub fn next_record(&mut self) -> Result<Option<Effect>, Corruption> {
        if let Some(d) = &self.damage {
            return Err(d.clone());
        }
        if !self.header_done {
            let n = self.buf.len().min(MAGIC.len());
            if self.buf[..n] != MAGIC[..n] {
                return Err(self.damaged(CorruptKind::BadMagic, None));
            }
            if self.buf.len() < FILE_HEADER_LEN {
                return Ok(None);
            }
            let version = u16::from_le_bytes([self.buf[6], self.buf[7]]);
            if version != FORMAT_VERSION {
                return Err(self.damaged(CorruptKind::FormatVersion(version), None));
            }
            self.buf.advance(FILE_HEADER_LEN);
            self.offset = FILE_HEADER_LEN as u64;
            self.header_done = true;
        }
        match check(&self.buf) {
            Ok(None) => Ok(None),
            Err((kind, len)) => Err(self.damaged(kind, len)),
            Ok(Some((len, layout))) => {
                let mut rec = self.buf.split_to(len).freeze();
                self.offset += len as u64;
                self.records += 1;
                rec.advance(RECORD_HEADER_LEN);
                Ok(Some(match layout {
                    Layout::Put { key_end } => Effect::Set {
                        key: rec.slice(PUT_FIXED..key_end),
                        value: rec.slice(key_end..),
                        deadline: None,
                    },
                    Layout::PutDeadline { key_end } => Effect::Set {
                        key: rec.slice(PUTX_FIXED..key_end),
                        value: rec.slice(key_end..),
                        deadline: Some(u64_at(&rec, 2)),
                    },
                    Layout::Expire => Effect::Expire {
                        key: rec.slice(EXPIRE_FIXED..),
                        deadline: Some(u64_at(&rec, 2)).filter(|&d| d != 0),
                    },
                    Layout::Del => Effect::Del {
                        key: rec.slice(DEL_FIXED..),
                    },
                    Layout::Flush => Effect::Flush,
                }))
            }
        }
    }

    /// The damage the decoder stopped at, if it did.
    pub fn damage(&self) -> Option<&Corruption> {
        self.damage.as_ref()
    }

    /// After damage, skips to the next offset where a whole, valid record
    /// starts (see the module docs for why that is trustworthy), so that
    /// [`LogDecoder::next_record`] goes on from there.
    ///
    /// The scan starts after the damaged record when its header is intact
    /// ([`Corruption::known_len`]), else at the next byte. An offset whose
    /// record would end past the buffered bytes is undecided until more
    /// come: without `at_eof` that returns [`Resync::NeedMore`] (the bytes
    /// already ruled out are let go, so a long damaged stretch is not held
    /// in memory); with `at_eof` it is not a record. Damage to the file
    /// header cannot be skipped: [`Resync::NotFound`]. Without damage,
    /// [`Resync::NeedMore`].
    pub fn resync(&mut self, at_eof: bool) -> Resync {
        let Some(damage) = &self.damage else {
            return Resync::NeedMore;
        };
        if !self.header_done {
            return Resync::NotFound;
        }
        let mut at = self.scan;
        while at < self.buf.len() {
            match check(&self.buf[at..]) {
                Ok(Some(_)) => {
                    let skipped = Skipped {
                        start: damage.offset,
                        end: self.offset + at as u64,
                        kind: damage.kind.clone(),
                    };
                    self.buf.advance(at);
                    self.offset = skipped.end;
                    self.damage = None;
                    self.scan = 0;
                    return Resync::Found(skipped);
                }
                Ok(None) if !at_eof => {
                    self.buf.advance(at);
                    self.offset += at as u64;
                    self.scan = 0;
                    return Resync::NeedMore;
                }
                _ => at += 1,
            }
        }
        let ruled_out = at.min(self.buf.len());
        self.buf.advance(ruled_out);
        self.offset += ruled_out as u64;
        self.scan = at - ruled_out;
        if at_eof {
            Resync::NotFound
        } else {
            Resync::NeedMore
        }
    }

    fn damaged(&mut self, kind: CorruptKind, known_len: Option<usize>) -> Corruption {
        let c = Corruption {
            offset: self.offset,
            kind,
            known_len: known_len.map(|n| n as u64),
        };
        // A body whose header verified is skipped whole: scanning inside it
        // could resync on records stored in its value.
        self.scan = known_len.unwrap_or(1);
        self.damage = Some(c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    fn log(records: &[Effect]) -> BytesMut {
        let mut out = BytesMut::from(&file_header()[..]);
        for r in records {
            encode(r, &mut out);
        }
        out
    }

    fn put(k: &str, v: &str) -> Effect {
        Effect::Set {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            deadline: None,
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let mut out = BytesMut::new();
        encode_put(b"k", b"vv", &mut out);
        assert_eq!(out.len(), put_len(1, 2));
        assert_eq!(&out[..4], &9u32.to_le_bytes());
        assert_eq!(&out[12..], b"\x01\x01\x01\x00\x00\x00kvv");
        assert_eq!(&file_header(), b"KV-AOF\x01\x00");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let records = vec![
            put("a", "1"),
            Effect::Del {
                key: Bytes::from_static(b"a"),
            },
            put("", ""),
            Effect::Set {
                key: Bytes::from_static(b"t"),
                value: Bytes::from_static(b"v"),
                deadline: Some(1_700_000_000_123),
            },
            Effect::Expire {
                key: Bytes::from_static(b"t"),
                deadline: Some(1_700_000_000_999),
            },
            Effect::Expire {
                key: Bytes::from_static(b"t"),
                deadline: None,
            },
            Effect::Flush,
        ];
        let bytes = log(&records);
        let mut d = LogDecoder::new();
        let mut got = Vec::new();
        for b in bytes.iter() {
            d.feed(&[*b]);
            while let Some(r) = d.next_record().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, records);
        assert_eq!(d.offset(), bytes.len() as u64);
        assert_eq!(d.pending(), 0);
        assert_eq!(d.records(), 7);
    }

    #[test]
    fn damage_is_reported_at_the_record() {
        let bytes = log(&[put("a", "1"), put("b", "2")]);
        let second = FILE_HEADER_LEN + put_len(1, 1);
        let mut bad = bytes.to_vec();
        bad[second + 2] ^= 0x40; // the length of the second record
        let mut d = LogDecoder::new();
        d.feed(&bad);
        assert_eq!(d.next_record(), Ok(Some(put("a", "1"))));
        let e = d.next_record().unwrap_err();
        assert_eq!(e.offset, second as u64);
        assert_eq!(e.kind, CorruptKind::HeaderChecksum);
        assert!(e.to_string().contains("offset"));
        assert_eq!(d.next_record().unwrap_err(), e);

        let mut d = LogDecoder::new();
        d.feed(b"REDIS0011");
        assert_eq!(d.next_record().unwrap_err().kind, CorruptKind::BadMagic);
        let mut d = LogDecoder::new();
        d.feed(b"KV-AOF\x02\x00");
        assert_eq!(
            d.next_record().unwrap_err().kind,
            CorruptKind::FormatVersion(2)
        );
    }

    /// Decodes `bytes` fed in chunks of `chunk` bytes, resyncing after
    /// every damage: the records, the skipped ranges, and the damaged tail
    /// (its offset) if nothing valid followed the last damage.
    fn repair(bytes: &[u8], chunk: usize) -> (Vec<Effect>, Vec<Skipped>, Option<u64>) {
        let mut d = LogDecoder::new();
        let (mut got, mut skipped) = (Vec::new(), Vec::new());
        let mut chunks = bytes.chunks(chunk).peekable();
        loop {
            let at_eof = chunks.peek().is_none();
            if let Some(c) = chunks.next() {
                d.feed(c);
            }
            loop {
                if d.damage().is_some() {
                    match d.resync(at_eof) {
                        Resync::Found(s) => skipped.push(s),
                        Resync::NeedMore => break,
                        Resync::NotFound => {
                            let tail = d.damage().unwrap().offset;
                            return (got, skipped, Some(tail));
                        }
                    }
                }
                match d.next_record() {
                    Ok(Some(r)) => got.push(r),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            if at_eof {
                assert_eq!(d.pending(), 0, "no torn tail in these logs");
                return (got, skipped, None);
            }
        }
    }

    fn records(n: usize) -> Vec<Effect> {
        (0..n)
            .map(|i| put(&format!("key{i}"), &format!("value-{i}")))
            .collect()
    }

    /// Where each record of `log` starts, and its end.
    fn starts(records: &[Effect]) -> Vec<usize> {
        let mut out = BytesMut::from(&file_header()[..]);
        let mut at = vec![out.len()];
        for r in records {
            encode(r, &mut out);
            at.push(out.len());
        }
        at
    }

    /// One flipped bit anywhere after the file header costs exactly the
    /// record it hit, fed whole or byte by byte; in the last record it is a
    /// damaged tail.
    #[test]
    fn resync_after_a_flipped_byte_keeps_every_other_record() {
        let recs = records(6);
        let clean = log(&recs);
        let at = starts(&recs);
        let mut checked = 0;
        for pos in FILE_HEADER_LEN..clean.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = clean.to_vec();
                bad[pos] ^= bit;
                let hit = at.iter().rposition(|&s| s <= pos).unwrap();
                for chunk in [bad.len(), 7, 1] {
                    let (got, skipped, tail) = repair(&bad, chunk);
                    let mut want = recs.clone();
                    want.remove(hit);
                    assert_eq!(got, want, "flip at {pos}, chunks of {chunk}");
                    if hit == recs.len() - 1 {
                        assert_eq!(skipped, [], "flip at {pos}");
                        assert_eq!(tail, Some(at[hit] as u64), "flip at {pos}");
                    } else {
                        assert_eq!(tail, None, "flip at {pos}");
                        assert_eq!(skipped.len(), 1, "flip at {pos}");
                        let s = &skipped[0];
                        assert_eq!((s.start, s.end), (at[hit] as u64, at[hit + 1] as u64));
                    }
                    checked += 1;
                }
            }
        }
        println!("{checked} damaged logs decoded, each losing only the record hit");
    }

    #[test]
    fn resync_over_damage_spanning_several_records() {
        let recs = records(10);
        let at = starts(&recs);
        let mut bad = log(&recs).to_vec();
        // From inside record 2 to inside record 5: records 2..=5 are hit.
        for b in &mut bad[at[2] + 3..at[5] + 5] {
            *b = 0xA5;
        }
        // And a second, separate range in record 8.
        bad[at[8]] ^= 0x10;
        let (got, skipped, tail) = repair(&bad, 64);
        let kept: Vec<Effect> = [0, 1, 6, 7, 9].iter().map(|&i| recs[i].clone()).collect();
        assert_eq!(got, kept);
        assert_eq!(tail, None);
        let ranges: Vec<(u64, u64)> = skipped.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(
            ranges,
            [(at[2] as u64, at[6] as u64), (at[8] as u64, at[9] as u64)]
        );
        assert_eq!(skipped[0].kind, CorruptKind::HeaderChecksum);
        println!("skipped {ranges:?}, kept {} of 10", got.len());
    }

    /// Garbage holding a record header whose own checksum verifies (but
    /// whose body does not) is not taken for a record; nor is a whole
    /// record stored as a value when its record's header is intact.
    #[test]
    fn resync_is_not_fooled_by_header_looking_garbage() {
        let recs = records(3);
        let clean = log(&recs);
        let at = starts(&recs);
        // A header that verifies, announcing a 20-byte body of garbage.
        let mut fake = BytesMut::new();
        encode_put(b"fake", b"0123456789", &mut fake);
        let mut fake = fake.to_vec();
        let n = fake.len();
        fake[n - 1] ^= 0xff; // its body no longer verifies
        let mut bad = clean[..at[1]].to_vec();
        bad.extend_from_slice(&[0xEE; 5]);
        bad.extend_from_slice(&fake);
        bad.extend_from_slice(&[0u8; 13]);
        bad.extend_from_slice(&clean[at[1]..]);
        let (got, skipped, tail) = repair(&bad, 16);
        assert_eq!(got, recs);
        assert_eq!(tail, None);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].len(), 5 + n as u64 + 13);

        // A value that is itself log bytes, in a record whose body is
        // damaged: the whole record is skipped, the inner one not applied.
        let inner = log(&[put("inner", "x")]);
        let mut outer = BytesMut::from(&file_header()[..]);
        encode_put(b"outer", &inner[FILE_HEADER_LEN..], &mut outer);
        encode(&recs[0], &mut outer);
        let mut bad = outer.to_vec();
        bad[FILE_HEADER_LEN + RECORD_HEADER_LEN + 7] ^= 1; // in "outer"
        let (got, skipped, _) = repair(&bad, 1);
        assert_eq!(got, [recs[0].clone()]);
        assert_eq!(skipped[0].kind, CorruptKind::BodyChecksum);
    }

    #[test]
    fn find_record_skips_garbage() {
        let rec = log(&[put("key", "value")]);
        let mut bytes = vec![0u8; 40];
        bytes.extend_from_slice(&rec[FILE_HEADER_LEN..]);
        assert_eq!(find_record(&bytes), Some(40));
        assert_eq!(find_record(&bytes[41..]), None);
        assert_eq!(find_record(&rec[FILE_HEADER_LEN..rec.len() - 1]), None);
    }
}
