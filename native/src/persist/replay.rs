//! Replaying the log at start: every whole record into the server, a torn
//! or damaged tail cut off, damage before the tail refused unless
//! `--repair`.

use super::{io_err, sync_dir, PersistError, PersistOptions};
use kv_core::aof::{self, CorruptKind, LogDecoder};
use kv_core::Server;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
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
    /// Bytes cut off the end (torn or damaged tail, or `--repair`).
    pub dropped_bytes: u64,
    /// Valid records cut off by `--repair` (at least this many).
    pub dropped_records: u64,
}

/// Replays the log into `server`, creating it if missing and cutting off a
/// damaged tail (or, with `repair`, everything from the first damage).
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
    let damage = 'read: loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        decoder.feed(&chunk[..n]);
        loop {
            match decoder.next_record() {
                Ok(Some(effect)) => server.replay(&effect),
                Ok(None) => break,
                Err(c) => break 'read Some(c),
            }
        }
    };
    let records = decoder.records();
    let cut = decoder.offset();
    let Some(damage) = damage else {
        if decoder.pending() == 0 && cut > 0 {
            return Ok(Replayed {
                records,
                size: len,
                ..Replayed::default()
            });
        }
        // The file ends inside a record (or inside the header): a write the
        // crash interrupted. Nothing after it can be valid.
        let dropped = len - cut;
        if dropped > 0 {
            warn!(
                path = %path.display(),
                offset = cut,
                "the log ends with an incomplete record (an interrupted write); dropped {dropped} bytes at byte offset {cut}"
            );
        }
        let size = truncate(&mut file, &path, cut, &options.data_dir)?;
        return Ok(Replayed {
            records,
            size,
            dropped_bytes: dropped,
            ..Replayed::default()
        });
    };
    if matches!(
        damage.kind,
        CorruptKind::BadMagic | CorruptKind::FormatVersion(_)
    ) {
        return Err(PersistError::NotALog {
            path,
            kind: damage.kind,
        });
    }
    // Damage: is anything valid after it? When only the body is damaged its
    // length is trustworthy, so look after it; otherwise from the next byte.
    let resume = damage.offset + damage.known_len.unwrap_or(1);
    let rest = read_from(&mut file, &path, resume)?;
    let dropped = len - damage.offset;
    match aof::find_record(&rest) {
        None => {
            warn!(
                path = %path.display(),
                offset = damage.offset,
                "the log's last record is damaged ({}); dropped {dropped} bytes at byte offset {}",
                damage.kind, damage.offset
            );
            let size = truncate(&mut file, &path, damage.offset, &options.data_dir)?;
            Ok(Replayed {
                records,
                size,
                dropped_bytes: dropped,
                ..Replayed::default()
            })
        }
        Some(at) => {
            let lost = count_records(&rest[at..]);
            if !options.repair {
                return Err(PersistError::Corrupt {
                    path,
                    offset: damage.offset,
                    kind: damage.kind,
                    next: resume + at as u64,
                    dropped,
                    records: lost,
                });
            }
            warn!(
                path = %path.display(),
                offset = damage.offset,
                "--repair: the log is damaged at byte offset {} ({}); truncated it there, dropping {dropped} bytes and at least {lost} valid records after the damage",
                damage.offset, damage.kind
            );
            let size = truncate(&mut file, &path, damage.offset, &options.data_dir)?;
            Ok(Replayed {
                records,
                size,
                dropped_bytes: dropped,
                dropped_records: lost,
            })
        }
    }
}

/// Valid records in `bytes`, which starts with one, skipping any further
/// damage (for the count of what `--repair` drops).
fn count_records(mut bytes: &[u8]) -> u64 {
    let mut n = 0;
    while !bytes.is_empty() {
        match aof::check_record(bytes) {
            Ok(Some(len)) => {
                n += 1;
                bytes = &bytes[len..];
            }
            _ => match aof::find_record(&bytes[1..]) {
                Some(at) => bytes = &bytes[1 + at..],
                None => break,
            },
        }
    }
    n
}

fn read_from(file: &mut File, path: &Path, offset: u64) -> Result<Vec<u8>, PersistError> {
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_to_end(&mut rest))
        .map_err(io_err("read", path))?;
    Ok(rest)
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
