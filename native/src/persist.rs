//! Durability for `kv server`: the append-only log on disk.
//!
//! The format and the bookkeeping of which writes are stored live in
//! [`kv_core::aof`]; this module owns the files and the threads:
//!
//! - [`open`] locks the data directory, replays `appendonly.kv` into the
//!   [`Server`] (cutting a torn or damaged tail, refusing damage before the
//!   tail unless `--repair`), and starts the writer thread.
//! - The **writer thread** owns the log file. The event loop hands it the
//!   records of each batch of commands ([`Log::flush`]); it writes everything
//!   queued in one system call and, under `--fsync always`, syncs once for
//!   the whole group before reporting the records stored (group commit).
//!   Under `everysec` it reports them once written and syncs once a second;
//!   under `no` it never syncs (but at shutdown). Replies wait for that
//!   report either way, so a crash of the process never loses an
//!   acknowledged write; only a crash of the machine can, within the policy.
//! - **Rewrites** (compaction) snapshot the store on the event loop (cheap:
//!   keys and values are reference-counted), write it to `appendonly.kv.tmp`
//!   on a thread of their own while new records keep going to the old log and
//!   to a tail buffer, then the writer appends the tail, syncs, renames over
//!   the old log and syncs the directory. Until that rename the old log is
//!   complete, so a crash at any point loses nothing; a leftover temp file is
//!   deleted at the next start.
//! - A **failing disk** (write or sync error) fails every write not yet
//!   stored (their replies become errors and the store rolls them back, see
//!   [`kv_core::aof::Journal`]), further writes are refused, and once a second
//!   the driver tries to recover by rewriting the log from the store.
//!
//! The event loop's side ([`Log`]) runs a task ([`Log::drive`]) that turns
//! the writer's reports into [`Server`] calls and wakes the connections
//! whose replies were held.

use bytes::{Bytes, BytesMut};
use kv_core::aof::{self, CorruptKind, LogDecoder, LogStatus};
use kv_core::store::Entry;
use kv_core::Server;
use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc as tokio_mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

/// The log's file name inside the data directory.
pub const LOG_FILE: &str = "appendonly.kv";
/// The file a rewrite writes before renaming it over [`LOG_FILE`].
pub const TMP_FILE: &str = "appendonly.kv.tmp";
/// Held locked (`flock`) while a server uses the directory, so that two
/// servers never append to one log.
pub const LOCK_FILE: &str = "kv.lock";

/// How long the driver waits after a failure before trying to recover, and
/// between attempts.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long after a failed compaction the next one may start: the old log
/// is still fine, and retrying at once would only fail the same way.
const REWRITE_BACKOFF: Duration = Duration::from_secs(5);
/// The `everysec` interval.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// The rewrite thread writes the snapshot in chunks of about this size.
const REWRITE_CHUNK: usize = 1 << 20;
/// The rewrite thread copies the tail until less than this is left for the
/// writer thread's final step, which holds up the acknowledgements.
const TAIL_HANDOFF: usize = 64 * 1024;
/// The replay reads the log in chunks of this size.
const READ_CHUNK: usize = 1 << 20;

/// When the log is synced to disk (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// Before replying to a write: nothing acknowledged is ever lost.
    Always,
    /// Once a second: a machine crash loses at most about a second.
    Everysec,
    /// Never explicitly; the OS flushes when it likes.
    No,
}

impl FsyncPolicy {
    /// The name used on the command line and in `INFO`.
    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Everysec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}

/// Settings of the log.
#[derive(Debug, Clone)]
pub struct PersistOptions {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// When to sync.
    pub fsync: FsyncPolicy,
    /// Start even if the log is damaged before its tail, truncating it at
    /// the damage.
    pub repair: bool,
    /// No automatic rewrite while the log is smaller than this.
    pub rewrite_min_size: u64,
    /// Rewrite once the log has grown by this percentage over its size after
    /// the last rewrite (0: never automatically).
    pub rewrite_percentage: u64,
}

impl PersistOptions {
    /// Default settings for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PersistOptions {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Everysec,
            repair: false,
            rewrite_min_size: 64 << 20,
            rewrite_percentage: 100,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }
}

/// Why the log could not be opened.
#[derive(Debug, Error)]
pub enum PersistError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process holds the data directory.
    #[error("the data directory {} is in use by another kv process", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The log file is not a log of this format at all.
    #[error("{} is not a kv append-only log of a version this build reads ({kind}); move it away or choose another --data-dir", path.display())]
    NotALog {
        /// The log file.
        path: PathBuf,
        /// What is wrong with its header.
        kind: CorruptKind,
    },
    /// Damage before the tail: valid records follow it.
    #[error(
        "{} is corrupt at byte offset {offset} ({kind}), and valid records follow (the next at byte offset {next}); \
         nothing was changed. Start with --repair to truncate the log at byte offset {offset}, \
         dropping {dropped} bytes (at least {records} records)", path.display()
    )]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong there.
        kind: CorruptKind,
        /// Where the first valid record after the damage starts.
        next: u64,
        /// Bytes `--repair` would drop.
        dropped: u64,
        /// Valid records `--repair` would drop.
        records: u64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the log writer thread: {0}")]
    Thread(io::Error),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PersistError {
    let path = path.to_path_buf();
    move |source| PersistError::Io {
        action,
        path,
        source,
    }
}

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

/// Locks the data directory, replays the log into `server`, turns the
/// server's log on and starts the writer thread.
pub fn open(options: &PersistOptions, server: &mut Server) -> Result<Log, PersistError> {
    let dir = &options.data_dir;
    fs::create_dir_all(dir).map_err(io_err("create the data directory", dir))?;
    let lock = lock_dir(dir)?;
    let tmp = dir.join(TMP_FILE);
    if tmp.exists() {
        // A rewrite that did not finish: the log itself is complete without it.
        warn!(path = %tmp.display(), "removing the temp file of an unfinished log rewrite");
        fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
    }
    let started = Instant::now();
    let replayed = replay(options, server)?;
    info!(
        path = %options.log_path().display(),
        records = replayed.records,
        keys = server.store().len(),
        bytes = replayed.size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        fsync = options.fsync.name(),
        "log loaded"
    );
    let path = options.log_path();
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    server.enable_log(LogStatus {
        fsync: options.fsync.name().to_string(),
        size: replayed.size,
        base_size: replayed.size,
        ..LogStatus::default()
    });
    Log::start(options.clone(), file, replayed.size, lock)
}

/// Takes the directory's lock, or fails if another process holds it.
fn lock_dir(dir: &Path) -> Result<File, PersistError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; the lock is released when
        // the file is closed, or by the kernel when the process dies.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                PersistError::Locked {
                    path: dir.to_path_buf(),
                }
            } else {
                PersistError::Io {
                    action: "lock",
                    path,
                    source: e,
                }
            });
        }
    }
    Ok(file)
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
                Ok(Some(record)) => server.apply_record(&record),
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

/// Makes renames and new files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Messages to the writer thread.
enum ToWriter {
    /// Records to append; `upto` is the LSN of the last one. `epoch` counts
    /// the failures the sender had seen: records sent before the sender
    /// learnt of a failure are dropped (they were rolled back).
    Append { data: Bytes, upto: u64, epoch: u64 },
    /// Start a rewrite from this snapshot of the store.
    Rewrite { snapshot: Vec<Entry>, epoch: u64 },
    /// From the rewrite thread: the snapshot (and most of the tail) is in
    /// the temp file.
    SnapshotWritten { id: u64, result: io::Result<File> },
    /// Sync and stop.
    Stop,
}

/// Reports of the writer thread.
#[derive(Debug)]
enum Event {
    /// Records up to `upto` are stored; the log is `size` bytes.
    Stored { upto: u64, size: u64 },
    /// Writing or syncing failed; nothing more is stored until a rewrite
    /// succeeds.
    Failed { error: String, fsync: bool },
    /// A rewrite replaced the log, now `size` bytes.
    RewriteDone { size: u64 },
    /// A rewrite failed; the old log is still in use.
    RewriteFailed { error: String },
}

/// A rewrite in progress, as the writer thread sees it.
struct Rewrite {
    id: u64,
    /// Records appended since the snapshot, for the new file.
    tail: Arc<Mutex<Vec<Bytes>>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The writer thread's state: the only owner of the log file.
struct Writer {
    dir: PathBuf,
    path: PathBuf,
    tmp_path: PathBuf,
    file: File,
    /// Bytes of the log known written in full.
    size: u64,
    policy: FsyncPolicy,
    /// Failures so far.
    epoch: u64,
    failed: bool,
    /// Written but not yet synced (`everysec`).
    dirty: bool,
    last_sync: Instant,
    rewrite: Option<Rewrite>,
    rewrite_ids: u64,
    inbox: mpsc::Receiver<ToWriter>,
    /// For the rewrite thread to report back through the inbox, in order
    /// with the appends.
    inbox_tx: mpsc::Sender<ToWriter>,
    events: tokio_mpsc::UnboundedSender<Event>,
    /// A message taken off the inbox while gathering a group of appends.
    peeked: Option<ToWriter>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let msg = match self.peeked.take() {
                Some(m) => m,
                None => match self.sync_due() {
                    Some(due) => {
                        let wait = due.saturating_duration_since(Instant::now());
                        match self.inbox.recv_timeout(wait) {
                            Ok(m) => m,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                self.sync_if_due();
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    None => match self.inbox.recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                },
            };
            match msg {
                ToWriter::Append { data, upto, epoch } => self.append_group(data, upto, epoch),
                ToWriter::Rewrite { snapshot, epoch } => self.start_rewrite(snapshot, epoch),
                ToWriter::SnapshotWritten { id, result } => self.finish_rewrite(id, result),
                ToWriter::Stop => break,
            }
            self.sync_if_due();
        }
        self.abort_rewrite();
        if !self.failed && self.policy != FsyncPolicy::Always {
            if let Err(e) = self.file.sync_data() {
                error!(path = %self.path.display(), "cannot sync the log at shutdown: {e}");
            }
        }
        debug!("log writer stopped");
    }

    /// When the next `everysec` sync is due, if one is.
    fn sync_due(&self) -> Option<Instant> {
        (self.policy == FsyncPolicy::Everysec && self.dirty && !self.failed)
            .then(|| self.last_sync + SYNC_INTERVAL)
    }

    fn sync_if_due(&mut self) {
        if self.sync_due().is_some_and(|due| Instant::now() >= due) {
            self.last_sync = Instant::now();
            self.dirty = false;
            if let Err(e) = self.file.sync_data() {
                self.fail("fsync", &e, None);
            }
        }
    }

    /// Appends `data` and every other append already queued behind it, in
    /// one write and (under `always`) one sync.
    fn append_group(&mut self, data: Bytes, upto: u64, epoch: u64) {
        let mut chunks = Vec::new();
        let mut last = 0;
        let mut take = |chunks: &mut Vec<Bytes>, data: Bytes, upto: u64, epoch: u64| {
            // Sent before the sender knew of a failure: rolled back already.
            if epoch == self.epoch {
                chunks.push(data);
                last = upto;
            }
        };
        take(&mut chunks, data, upto, epoch);
        loop {
            match self.inbox.try_recv() {
                Ok(ToWriter::Append { data, upto, epoch }) => take(&mut chunks, data, upto, epoch),
                Ok(other) => {
                    self.peeked = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if chunks.is_empty() {
            return;
        }
        if self.failed {
            // Cannot happen: the server refuses writes until a rewrite has
            // recovered the log. Fail them rather than leave them hanging.
            let e = io::Error::other("the log is not recovered yet");
            self.fail("write", &e, None);
            return;
        }
        let before = self.size;
        if let Err(e) = write_all_chunks(&mut self.file, &chunks) {
            self.fail("write", &e, Some(before));
            return;
        }
        self.size += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        match self.policy {
            FsyncPolicy::Always => {
                if let Err(e) = self.file.sync_data() {
                    self.fail("fsync", &e, Some(before));
                    return;
                }
            }
            // Synced by `sync_if_due` once a second has passed since the
            // last sync (at once if the log was idle for longer).
            FsyncPolicy::Everysec => self.dirty = true,
            FsyncPolicy::No => {}
        }
        if let Some(rw) = &self.rewrite {
            rw.tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(chunks);
        }
        let _ = self.events.send(Event::Stored {
            upto: last,
            size: self.size,
        });
    }

    /// Writing or syncing failed. Cuts what the failed group wrote (if it is
    /// known: those writes are reported failed, so a restart must not replay
    /// them), drops any rewrite, and reports.
    fn fail(&mut self, what: &'static str, e: &io::Error, cut_to: Option<u64>) {
        error!(path = %self.path.display(), "log {what} failed: {e}; refusing writes until the log is rewritten");
        if let Some(len) = cut_to {
            if let Err(e) = self.file.set_len(len) {
                warn!(path = %self.path.display(), "cannot cut the failed writes off the log: {e}");
            }
            self.size = len;
        }
        self.failed = true;
        self.dirty = false;
        self.epoch += 1;
        self.abort_rewrite();
        let _ = self.events.send(Event::Failed {
            error: format!("{what} failed: {e}"),
            fsync: what == "fsync",
        });
    }

    fn start_rewrite(&mut self, snapshot: Vec<Entry>, epoch: u64) {
        if epoch != self.epoch {
            // Asked for before a failure; the driver knows it was dropped.
            return;
        }
        self.abort_rewrite();
        self.rewrite_ids += 1;
        let id = self.rewrite_ids;
        let tail = Arc::new(Mutex::new(Vec::new()));
        let cancel = Arc::new(AtomicBool::new(false));
        let (tmp, tail2, cancel2, inbox) = (
            self.tmp_path.clone(),
            tail.clone(),
            cancel.clone(),
            self.inbox_tx.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("kv-rewrite".into())
            .spawn(move || {
                let result = write_snapshot(&tmp, snapshot, &tail2, &cancel2);
                let _ = inbox.send(ToWriter::SnapshotWritten { id, result });
            });
        match thread {
            Ok(thread) => {
                info!(path = %self.path.display(), "log rewrite started");
                self.rewrite = Some(Rewrite {
                    id,
                    tail,
                    cancel,
                    thread: Some(thread),
                });
            }
            Err(e) => {
                let _ = self.events.send(Event::RewriteFailed {
                    error: format!("cannot start the rewrite thread: {e}"),
                });
            }
        }
    }

    /// The rewrite thread is done: append the rest of the tail, sync, and
    /// switch the log over with an atomic rename.
    fn finish_rewrite(&mut self, id: u64, result: io::Result<File>) {
        let Some(mut rw) = self.rewrite.take_if(|rw| rw.id == id) else {
            return; // aborted; its temp file is already gone
        };
        if let Some(t) = rw.thread.take() {
            let _ = t.join();
        }
        let tail = std::mem::take(&mut *rw.tail.lock().unwrap_or_else(|p| p.into_inner()));
        let prepared = result.and_then(|mut tmp| {
            write_all_chunks(&mut tmp, &tail)?;
            tmp.sync_data()?;
            let size = tmp.metadata()?.len();
            Ok((tmp, size))
        });
        let (tmp, size) = match prepared {
            Ok(ok) => ok,
            Err(e) => {
                let _ = fs::remove_file(&self.tmp_path);
                warn!(path = %self.tmp_path.display(), "log rewrite failed: {e}");
                let _ = self.events.send(Event::RewriteFailed {
                    error: e.to_string(),
                });
                return;
            }
        };
        if let Err(e) = fs::rename(&self.tmp_path, &self.path) {
            let _ = fs::remove_file(&self.tmp_path);
            warn!(path = %self.path.display(), "log rewrite failed: cannot rename: {e}");
            let _ = self.events.send(Event::RewriteFailed {
                error: format!("rename: {e}"),
            });
            return;
        }
        // The new file is the log now, whatever happens next.
        self.file = tmp;
        self.size = size;
        self.dirty = false;
        self.last_sync = Instant::now();
        let was_failed = self.failed;
        self.failed = false;
        // Until the directory is synced, a machine crash could bring the old
        // name back: records acknowledged from now on must not depend on it.
        if let Err(e) = sync_dir(&self.dir) {
            self.fail("fsync", &e, None);
            return;
        }
        info!(path = %self.path.display(), size, recovered = was_failed, "log rewritten");
        let _ = self.events.send(Event::RewriteDone { size });
    }

    fn abort_rewrite(&mut self) {
        if let Some(mut rw) = self.rewrite.take() {
            rw.cancel.store(true, Ordering::Relaxed);
            if let Some(t) = rw.thread.take() {
                let _ = t.join();
            }
            let _ = fs::remove_file(&self.tmp_path);
            debug!("log rewrite aborted");
        }
    }
}

/// The rewrite thread: the snapshot into a new temp file, then as much of
/// the tail as keeps coming, synced.
fn write_snapshot(
    tmp: &Path,
    snapshot: Vec<Entry>,
    tail: &Mutex<Vec<Bytes>>,
    cancel: &AtomicBool,
) -> io::Result<File> {
    let cancelled = || io::Error::new(io::ErrorKind::Interrupted, "rewrite cancelled");
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new().append(true).create_new(true).open(tmp)?;
    let mut buf = BytesMut::with_capacity(REWRITE_CHUNK + 4096);
    buf.extend_from_slice(&aof::file_header());
    for entry in snapshot {
        aof::encode_put(entry.key(), entry.value(), &mut buf);
        if buf.len() >= REWRITE_CHUNK {
            file.write_all(&buf)?;
            buf.clear();
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
        }
    }
    file.write_all(&buf)?;
    loop {
        let chunks = std::mem::take(&mut *tail.lock().unwrap_or_else(|p| p.into_inner()));
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        write_all_chunks(&mut file, &chunks)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        if bytes < TAIL_HANDOFF {
            break;
        }
    }
    file.sync_data()?;
    Ok(file)
}

/// Writes every chunk, in as few system calls as the OS allows.
fn write_all_chunks(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The event loop's state of the log.
#[derive(Debug, Default)]
struct DriverState {
    /// Failures seen (see [`ToWriter::Append`]).
    epoch: u64,
    rewriting: bool,
    failed: bool,
    /// When to try to recover from a failure.
    retry_at: Option<tokio::time::Instant>,
    /// No automatic rewrite before this, after one failed.
    rewrite_backoff: Option<tokio::time::Instant>,
}

/// The log, as the event loop sees it: hands records to the writer thread
/// and turns its reports into [`Server`] calls.
#[derive(Debug)]
pub struct Log {
    options: PersistOptions,
    to_writer: mpsc::Sender<ToWriter>,
    events: RefCell<Option<tokio_mpsc::UnboundedReceiver<Event>>>,
    state: RefCell<DriverState>,
    /// Bumped after every report, to wake the connections with held replies.
    wake: watch::Sender<u64>,
    /// Set by [`Log::request_flush`] until the driver task flushes.
    flush_wanted: Cell<bool>,
    flush_notify: Notify,
    writer: RefCell<Option<JoinHandle<()>>>,
    /// Keeps the data directory locked while open.
    _lock: File,
}

impl std::fmt::Debug for ToWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToWriter::Append { upto, .. } => write!(f, "Append(..{upto})"),
            ToWriter::Rewrite { snapshot, .. } => write!(f, "Rewrite({} keys)", snapshot.len()),
            ToWriter::SnapshotWritten { id, .. } => write!(f, "SnapshotWritten({id})"),
            ToWriter::Stop => write!(f, "Stop"),
        }
    }
}

impl Log {
    fn start(
        options: PersistOptions,
        file: File,
        size: u64,
        lock: File,
    ) -> Result<Log, PersistError> {
        let (to_writer, inbox) = mpsc::channel();
        let (events_tx, events) = tokio_mpsc::unbounded_channel();
        let writer = Writer {
            dir: options.data_dir.clone(),
            path: options.log_path(),
            tmp_path: options.data_dir.join(TMP_FILE),
            file,
            size,
            policy: options.fsync,
            epoch: 0,
            failed: false,
            dirty: false,
            last_sync: Instant::now(),
            rewrite: None,
            rewrite_ids: 0,
            inbox,
            inbox_tx: to_writer.clone(),
            events: events_tx,
            peeked: None,
        };
        let thread = std::thread::Builder::new()
            .name("kv-log".into())
            .spawn(move || writer.run())
            .map_err(PersistError::Thread)?;
        Ok(Log {
            options,
            to_writer,
            events: RefCell::new(Some(events)),
            state: RefCell::new(DriverState::default()),
            wake: watch::channel(0).0,
            flush_wanted: Cell::new(false),
            flush_notify: Notify::new(),
            writer: RefCell::new(Some(thread)),
            _lock: lock,
        })
    }

    /// The settings in force.
    pub fn options(&self) -> &PersistOptions {
        &self.options
    }

    /// A receiver that changes whenever replies may have been released.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Asks the driver task to [`Log::flush`] soon. Connections call this
    /// after each batch of commands that wrote something: the driver task
    /// runs after the other tasks already woken, so the records of all the
    /// connections served in one turn of the event loop go to the writer as
    /// one group (one hand-over, one write, one sync).
    pub fn request_flush(&self) {
        if !self.flush_wanted.replace(true) {
            self.flush_notify.notify_one();
        }
    }

    /// Hands the records the server produced since the last call to the
    /// writer thread, which groups whatever has queued up while it was
    /// busy.
    pub fn flush(&self, server: &mut Server) {
        self.flush_wanted.set(false);
        let Some((data, upto)) = server.take_log_records() else {
            return;
        };
        let epoch = self.state.borrow().epoch;
        if self
            .to_writer
            .send(ToWriter::Append { data, upto, epoch })
            .is_err()
        {
            // The writer thread is gone (it panicked): nothing can be stored.
            server.log_failed("the log writer stopped");
            self.wake.send_modify(|n| *n += 1);
        }
    }

    /// Processes the writer's reports until it stops: releases or fails held
    /// replies, starts rewrites when the log has grown enough, and retries a
    /// failed log. Run it as a task next to the connections.
    pub async fn drive(&self, server: &RefCell<Server>) {
        let Some(mut events) = self.events.borrow_mut().take() else {
            return;
        };
        loop {
            let retry_at = self.state.borrow().retry_at;
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.handle(event, &mut server.borrow_mut()),
                    None => break,
                },
                _ = self.flush_notify.notified() => {
                    self.flush(&mut server.borrow_mut());
                    continue;
                }
                _ = sleep_until(retry_at) => {
                    self.state.borrow_mut().retry_at = None;
                    let mut server = server.borrow_mut();
                    info!("trying to recover the log by rewriting it");
                    self.start_rewrite(&mut server);
                }
            }
            self.wake.send_modify(|n| *n += 1);
        }
        // The writer is gone. After [`Log::stop`] everything was reported
        // already; if it died, fail what it never reported rather than
        // leave those replies waiting forever.
        let mut server = server.borrow_mut();
        let unreported = server
            .journal()
            .is_some_and(|j| j.outcome(j.last_lsn()) == aof::WriteOutcome::Pending);
        if unreported {
            error!("the log writer stopped; failing the writes it did not store");
            server.log_failed("the log writer stopped");
            self.wake.send_modify(|n| *n += 1);
        }
    }

    fn handle(&self, event: Event, server: &mut Server) {
        let now = tokio::time::Instant::now();
        match event {
            Event::Stored { upto, size } => {
                server.log_stored(upto);
                if let Some(s) = server.log_status_mut() {
                    s.size = size;
                }
                self.maybe_rewrite(server, now);
            }
            Event::Failed { error, fsync } => {
                server.log_failed(&error);
                if let Some(s) = server.log_status_mut() {
                    if fsync {
                        s.last_fsync_error = Some(error);
                    } else {
                        s.last_write_error = Some(error);
                    }
                    s.rewrite_in_progress = false;
                }
                let mut st = self.state.borrow_mut();
                st.epoch += 1;
                st.failed = true;
                st.rewriting = false;
                st.retry_at = Some(now + RETRY_AFTER);
            }
            Event::RewriteDone { size } => {
                let mut st = self.state.borrow_mut();
                st.rewriting = false;
                if st.failed {
                    st.failed = false;
                    st.retry_at = None;
                    server.log_recovered();
                    info!("the log works again; accepting writes");
                }
                if let Some(s) = server.log_status_mut() {
                    s.rewrite_in_progress = false;
                    s.rewrites += 1;
                    s.last_rewrite = Some(unix_now());
                    s.size = size;
                    s.base_size = size;
                }
            }
            Event::RewriteFailed { error } => {
                if let Some(s) = server.log_status_mut() {
                    s.rewrite_in_progress = false;
                    s.last_rewrite_error = Some(error);
                }
                let mut st = self.state.borrow_mut();
                st.rewriting = false;
                if st.failed {
                    st.retry_at = Some(now + RETRY_AFTER);
                } else {
                    st.rewrite_backoff = Some(now + REWRITE_BACKOFF);
                }
            }
        }
    }

    /// Starts a rewrite if the log has grown past the thresholds.
    fn maybe_rewrite(&self, server: &mut Server, now: tokio::time::Instant) {
        let st = self.state.borrow();
        if st.rewriting
            || st.failed
            || self.options.rewrite_percentage == 0
            || st.rewrite_backoff.is_some_and(|t| now < t)
        {
            return;
        }
        drop(st);
        let Some(status) = server.journal().map(|j| j.status()) else {
            return;
        };
        let base = status.base_size.max(1);
        let grown = status.size.saturating_sub(base).saturating_mul(100) / base;
        if status.size >= self.options.rewrite_min_size && grown >= self.options.rewrite_percentage
        {
            debug!(
                size = status.size,
                base = status.base_size,
                "log grew by {grown}%"
            );
            self.start_rewrite(server);
        }
    }

    /// Snapshots the store and asks the writer for a rewrite. Records not
    /// yet handed over go first: they are in the snapshot, so they belong to
    /// the old log only, not to the new file's tail.
    pub fn start_rewrite(&self, server: &mut Server) {
        if self.state.borrow().rewriting {
            return;
        }
        self.flush(server);
        let snapshot: Vec<Entry> = server.store().entries().collect();
        let epoch = self.state.borrow().epoch;
        if self
            .to_writer
            .send(ToWriter::Rewrite { snapshot, epoch })
            .is_ok()
        {
            self.state.borrow_mut().rewriting = true;
            if let Some(s) = server.log_status_mut() {
                s.rewrite_in_progress = true;
            }
        }
    }

    /// Syncs the log and stops the writer thread (also done on drop). Blocks
    /// until the writer is done: call it when no connection is left.
    pub fn stop(&self) {
        if let Some(thread) = self.writer.borrow_mut().take() {
            let _ = self.to_writer.send(ToWriter::Stop);
            if thread.join().is_err() {
                error!("the log writer thread panicked");
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::aof::Record;
    use kv_core::ServerConfig;

    /// A fresh directory under the system's temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kv-persist-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn put(k: &str, v: &str) -> Record {
        Record::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    fn write_log(dir: &Path, records: &[Record]) -> Vec<u64> {
        let mut out = BytesMut::from(&aof::file_header()[..]);
        let mut starts = Vec::new();
        for r in records {
            starts.push(out.len() as u64);
            r.encode(&mut out);
        }
        fs::write(dir.join(LOG_FILE), &out).unwrap();
        starts
    }

    fn server() -> Server {
        Server::new(ServerConfig::default())
    }

    fn keys(s: &Server) -> Vec<String> {
        s.store()
            .dump()
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect()
    }

    #[test]
    fn creates_a_log_and_cuts_a_torn_tail() {
        let dir = temp_dir("torn");
        let opts = PersistOptions::new(&dir);
        let mut s = server();
        let r = replay(&opts, &mut s).unwrap();
        assert_eq!(r.size, aof::FILE_HEADER_LEN as u64);
        assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), aof::file_header());

        write_log(&dir, &[put("a", "1"), put("b", "2")]);
        let mut bytes = fs::read(dir.join(LOG_FILE)).unwrap();
        let full = bytes.len() as u64;
        bytes.extend_from_slice(&[7, 0, 0]); // half a record header
        fs::write(dir.join(LOG_FILE), &bytes).unwrap();
        let mut s = server();
        let r = replay(&opts, &mut s).unwrap();
        assert_eq!(r.dropped_bytes, 3);
        assert_eq!(r.size, full);
        assert_eq!(keys(&s), ["a=1", "b=2"]);
        assert_eq!(fs::metadata(dir.join(LOG_FILE)).unwrap().len(), full);
    }

    #[test]
    fn damage_before_the_tail_stops_the_start_unless_repair() {
        let dir = temp_dir("mid");
        let starts = write_log(&dir, &[put("a", "1"), put("b", "2"), put("c", "3")]);
        let mut bytes = fs::read(dir.join(LOG_FILE)).unwrap();
        bytes[starts[1] as usize + 14] ^= 0xff; // inside the body of "b"
        fs::write(dir.join(LOG_FILE), &bytes).unwrap();
        let mut opts = PersistOptions::new(&dir);
        let e = replay(&opts, &mut server()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("byte offset {}", starts[1])),
            "{text}"
        );
        assert!(text.contains("--repair"), "{text}");
        assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), bytes, "untouched");

        opts.repair = true;
        let mut s = server();
        let r = replay(&opts, &mut s).unwrap();
        assert_eq!(keys(&s), ["a=1"]);
        assert_eq!(r.dropped_records, 1);
        assert_eq!(r.size, starts[1]);
    }

    #[test]
    fn a_damaged_last_record_is_cut_and_a_foreign_file_refused() {
        let dir = temp_dir("last");
        let starts = write_log(&dir, &[put("a", "1"), put("b", "2")]);
        let mut bytes = fs::read(dir.join(LOG_FILE)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(dir.join(LOG_FILE), &bytes).unwrap();
        let mut s = server();
        let r = replay(&PersistOptions::new(&dir), &mut s).unwrap();
        assert_eq!(keys(&s), ["a=1"]);
        assert_eq!(r.size, starts[1]);

        fs::write(dir.join(LOG_FILE), b"*2\r\n$6\r\nSELECT\r\n").unwrap();
        let e = replay(&PersistOptions::new(&dir), &mut server()).unwrap_err();
        assert!(matches!(e, PersistError::NotALog { .. }), "{e}");
    }

    #[test]
    fn a_second_process_cannot_take_the_directory() {
        let dir = temp_dir("lock");
        let _held = lock_dir(&dir).unwrap();
        // flock locks belong to the open file description: a second open
        // conflicts even within one process.
        assert!(matches!(lock_dir(&dir), Err(PersistError::Locked { .. })));
    }
}
