//! Replaying the log at start: every whole record into the server, a torn
//! or damaged tail cut off, damage before the tail refused unless
//! `--repair`, which skips the damaged ranges, keeps every valid record
//! after them and writes the log anew without them.

use super::{io_err, sync_dir, PersistError, PersistOptions, TMP_FILE};
use kv_core::aof::{self, CorruptKind, LogDecoder, Resync, Skipped};
use kv_core::Server;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;
use tracing::warn;

/// The replay reads the log in chunks of this size.
const READ_CHUNK: usize = 1 << 20;

/// What a start found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records applied.
    pub records: u64,
    /// Bytes of the log kept.
    pub size: u64,
    /// Bytes dropped: a torn or damaged tail, and with `--repair` the
    /// damaged ranges before it.
    pub dropped_bytes: u64,
    /// Records lost to damage, at least this many: one per damaged range
    /// (and damaged tail); a range may have held more, whose headers were
    /// damaged too.
    pub dropped_records: u64,
    /// The byte ranges `--repair` skipped before the tail (in file offsets
    /// of the log as it was).
    pub skipped: Vec<Range<u64>>,
    /// Valid records after the first damaged range, kept by `--repair`.
    pub kept_after_damage: u64,
}

/// Replays the log into `server`, creating it if missing and cutting off a
/// torn or damaged tail; with `repair`, skipping damage before the tail too
/// and rewriting the log without it.
pub fn replay(options: &PersistOptions, server: &mut Server) -> Result<Replayed, PersistError> {
    let path = options.log_path();
    let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_log(&options.data_dir, &path)?;
            return Ok(Replayed {
                size: aof::FILE_HEADER_LEN as u64,
                ..Replayed::default()
            });
        }
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    let len = file.metadata().map_err(io_err("read", &path))?.len();
    let mut decoder = LogDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut after_damage = 0u64;
    // Where a damaged tail starts, once a resync found nothing after it.
    let mut damaged_tail = None;
    'read: loop {
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let at_eof = n == 0;
        decoder.feed(&chunk[..n]);
        loop {
            if let Some(damage) = decoder.damage().cloned() {
                if matches!(
                    damage.kind,
                    CorruptKind::BadMagic | CorruptKind::FormatVersion(_)
                ) {
                    return Err(PersistError::NotALog {
                        path,
                        kind: damage.kind,
                    });
                }
                match decoder.resync(at_eof) {
                    Resync::Found(s) => skipped.push(s),
                    Resync::NeedMore => break,
                    Resync::NotFound => {
                        damaged_tail = Some(damage);
                        break 'read;
                    }
                }
            }
            match decoder.next_record() {
                // Without --repair, what follows damage is only counted:
                // the start fails anyway.
                Ok(Some(effect)) if skipped.is_empty() => server.replay(&effect),
                Ok(Some(effect)) => {
                    after_damage += 1;
                    if options.repair {
                        server.replay(&effect);
                    }
                }
                Ok(None) => break,
                Err(_) => {} // resynced at the top of the loop
            }
        }
        if at_eof {
            break;
        }
    }
    let records = decoder.records();
    // Where the log's valid part ends: a damaged tail, or a torn one (the
    // file ends inside a record or the header: a write the crash
    // interrupted; nothing after it can be valid).
    let torn = decoder.pending() > 0 || decoder.offset() == 0;
    let (cut, tail_records) = match &damaged_tail {
        Some(d) => (d.offset, 1),
        None if torn => (decoder.offset(), 0),
        None => (len, 0),
    };
    let skipped_bytes: u64 = skipped.iter().map(Skipped::len).sum();
    if let (Some(first), false) = (skipped.first(), options.repair) {
        return Err(PersistError::Corrupt {
            path,
            offset: first.start,
            kind: first.kind.clone(),
            next: first.end,
            ranges: skipped.len(),
            dropped: skipped_bytes + (len - cut),
            records: after_damage,
        });
    }
    match &damaged_tail {
        Some(d) => warn!(
            path = %path.display(),
            offset = d.offset,
            "the log's last record is damaged ({}); dropped {} bytes at byte offset {}",
            d.kind, len - d.offset, d.offset
        ),
        None if cut < len => warn!(
            path = %path.display(),
            offset = cut,
            "the log ends with an incomplete record (an interrupted write); dropped {} bytes at byte offset {cut}",
            len - cut
        ),
        None => {}
    }
    if skipped.is_empty() {
        let size = if cut < len || cut < aof::FILE_HEADER_LEN as u64 {
            truncate(&mut file, &path, cut, &options.data_dir)?
        } else {
            len
        };
        return Ok(Replayed {
            records,
            size,
            dropped_bytes: len - cut,
            dropped_records: tail_records,
            ..Replayed::default()
        });
    }
    for s in &skipped {
        warn!(
            path = %path.display(),
            offset = s.start,
            "--repair: skipped damaged bytes {}..{} ({} bytes, {}); the record(s) there are lost",
            s.start, s.end, s.len(), s.kind
        );
    }
    let kept = kept_ranges(&skipped, cut);
    let size = rewrite_without(&mut file, &path, &options.data_dir, &kept)?;
    warn!(
        path = %path.display(),
        "--repair: skipped {} damaged range(s), {} bytes in all (at least {} records lost); kept {after_damage} valid records after the damage; rewrote the log without the damage ({size} bytes)",
        skipped.len(), skipped_bytes + (len - cut), skipped.len() as u64 + tail_records
    );
    Ok(Replayed {
        records,
        size,
        dropped_bytes: skipped_bytes + (len - cut),
        dropped_records: skipped.len() as u64 + tail_records,
        skipped: skipped.iter().map(|s| s.start..s.end).collect(),
        kept_after_damage: after_damage,
    })
}

/// The byte ranges of the records to keep: between the file header and
/// `cut`, all but the `skipped` ones (in file order).
fn kept_ranges(skipped: &[Skipped], cut: u64) -> Vec<Range<u64>> {
    let mut kept = Vec::with_capacity(skipped.len() + 1);
    let mut from = aof::FILE_HEADER_LEN as u64;
    for s in skipped {
        kept.push(from..s.start);
        from = s.end;
    }
    kept.push(from..cut);
    kept.retain(|r| !r.is_empty());
    kept
}

/// Writes the file header and the `kept` ranges of `file` to the temp file,
/// syncs it and renames it over the log: until the rename the damaged log
/// is whole, so a crash here only repeats the repair at the next start (the
/// temp file is removed then). Returns the new size.
fn rewrite_without(
    file: &mut File,
    path: &Path,
    dir: &Path,
    kept: &[Range<u64>],
) -> Result<u64, PersistError> {
    let tmp = dir.join(TMP_FILE);
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let mut out = BufWriter::with_capacity(READ_CHUNK, out);
    let mut size = aof::FILE_HEADER_LEN as u64;
    out.write_all(&aof::file_header())
        .map_err(io_err("write", &tmp))?;
    for r in kept {
        file.seek(SeekFrom::Start(r.start))
            .map_err(io_err("read", path))?;
        let n = io::copy(&mut (&mut *file).take(r.end - r.start), &mut out)
            .map_err(io_err("copy the valid records to", &tmp))?;
        if n != r.end - r.start {
            let short = io::Error::new(io::ErrorKind::UnexpectedEof, "the log shrank");
            return Err(io_err("read", path)(short));
        }
        size += n;
    }
    let out = out
        .into_inner()
        .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    out.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename the repaired log over", path))?;
    sync_dir(dir).map_err(io_err("sync", dir))?;
    Ok(size)
}

/// Cuts the log at `len` and syncs it; a log cut to nothing gets its header
/// back. Returns the new size.
fn truncate(file: &mut File, path: &Path, len: u64, dir: &Path) -> Result<u64, PersistError> {
    if len < aof::FILE_HEADER_LEN as u64 {
        drop(fs::remove_file(path));
        create_log(dir, path)?;
        return Ok(aof::FILE_HEADER_LEN as u64);
    }
    file.set_len(len)
        .and_then(|_| file.sync_all())
        .map_err(io_err("truncate", path))?;
    Ok(len)
}

/// Creates an empty log (just the header), durably: the file's data, then
/// its directory entry.
fn create_log(dir: &Path, path: &Path) -> Result<(), PersistError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(&aof::file_header())
        .and_then(|_| f.sync_all())
        .map_err(io_err("write", path))?;
    sync_dir(dir).map_err(io_err("sync", dir))
}
