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

mod replay;
mod rewrite;
mod writer;

pub use replay::replay;

use crate::runtime::clock::Epoch;
use kv_core::aof::{self, CorruptKind, LogStatus, Upkeep, UpkeepConfig};
use kv_core::db::Slot;
use kv_core::Server;
use rewrite::Rewrite;
use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc as tokio_mpsc, watch, Notify};
use tracing::{debug, error, info, warn};
use writer::{Event, ToWriter, Writer};

/// The log's file name inside the data directory.
pub const LOG_FILE: &str = "appendonly.kv";
/// The file a rewrite writes before renaming it over [`LOG_FILE`].
pub const TMP_FILE: &str = "appendonly.kv.tmp";
/// Held locked (`flock`) while a server uses the directory, so that two
/// servers never append to one log.
pub const LOCK_FILE: &str = "kv.lock";

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
    /// Start even if the log is damaged before its tail: skip the damaged
    /// ranges, keep the valid records after them, rewrite the log.
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
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause: said in the message, so not a `source` as well, which
        /// would have it said twice by whoever prints the chain.
        error: io::Error,
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
         nothing was changed. Start with --repair to skip the damage ({ranges} damaged range(s), {dropped} bytes) \
         and keep the {records} valid records after it", path.display()
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
        /// Damaged ranges `--repair` would skip.
        ranges: usize,
        /// Bytes `--repair` would drop (the damaged ranges and any damaged
        /// or torn tail).
        dropped: u64,
        /// Valid records after the damage, which `--repair` keeps.
        records: u64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the log writer thread: {0}")]
    Thread(io::Error),
}

pub(super) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PersistError {
    let path = path.to_path_buf();
    move |error| PersistError::Io {
        action,
        path,
        error,
    }
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
                    error: e,
                }
            });
        }
    }
    Ok(file)
}

/// Makes renames and new files in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The log, as the event loop sees it: hands records to the writer thread
/// and turns its reports into [`Server`] calls; when to rewrite is the
/// core's [`Upkeep`].
#[derive(Debug)]
pub struct Log {
    to_writer: mpsc::Sender<ToWriter>,
    events: RefCell<Option<tokio_mpsc::UnboundedReceiver<Event>>>,
    /// Failures seen (see [`ToWriter::Append`]).
    failures: Cell<u64>,
    upkeep: RefCell<Upkeep>,
    epoch: Epoch,
    /// Bumped after every report, to wake the connections with held replies.
    wake: watch::Sender<u64>,
    /// Set by [`Log::request_flush`] until the driver task flushes.
    flush_wanted: Cell<bool>,
    flush_notify: Notify,
    writer: RefCell<Option<JoinHandle<()>>>,
    /// Keeps the data directory locked while open.
    _lock: File,
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
            failures: 0,
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
        let upkeep = Upkeep::new(UpkeepConfig {
            rewrite_min_size: options.rewrite_min_size,
            rewrite_percentage: options.rewrite_percentage,
        });
        Ok(Log {
            to_writer,
            events: RefCell::new(Some(events)),
            failures: Cell::new(0),
            upkeep: RefCell::new(upkeep),
            epoch: Epoch::new(),
            wake: watch::channel(0).0,
            flush_wanted: Cell::new(false),
            flush_notify: Notify::new(),
            writer: RefCell::new(Some(thread)),
            _lock: lock,
        })
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
        let failures = self.failures.get();
        if self
            .to_writer
            .send(ToWriter::Append {
                data,
                upto,
                failures,
            })
            .is_err()
        {
            // The writer thread is gone (it panicked): nothing can be stored.
            server.log_failed("the log writer stopped");
            self.wake.send_modify(|n| *n += 1);
        }
    }

    /// Processes the writer's reports until it stops: releases or fails held
    /// replies, and starts the rewrites the core's [`Upkeep`] asks for
    /// (compaction, and recovery of a failed log). Run it as a task next to
    /// the connections.
    pub async fn drive(&self, server: &RefCell<Server>) {
        let Some(mut events) = self.events.borrow_mut().take() else {
            return;
        };
        loop {
            let retry_at = self.upkeep.borrow().poll_timeout();
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.handle(event, &mut server.borrow_mut()),
                    None => break,
                },
                _ = self.flush_notify.notified() => {
                    self.flush(&mut server.borrow_mut());
                    continue;
                }
                _ = sleep_until(retry_at.map(|t| self.epoch.to_tokio(t))) => {
                    self.upkeep.borrow_mut().handle_timeout(self.epoch.now());
                    info!("trying to recover the log by rewriting it");
                }
            }
            if self.upkeep.borrow_mut().poll_rewrite() {
                self.send_rewrite(&mut server.borrow_mut());
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
        let now = self.epoch.now();
        let mut upkeep = self.upkeep.borrow_mut();
        match event {
            Event::Stored { upto, size } => {
                server.log_stored(upto);
                if let Some(s) = server.log_status_mut() {
                    s.size = size;
                    if let Some(grown) = upkeep.handle_stored(s, now) {
                        debug!(size = s.size, base = s.base_size, "log grew by {grown}%");
                    }
                }
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
                self.failures.set(self.failures.get() + 1);
                upkeep.handle_failed(now);
            }
            Event::RewriteDone { size } => {
                if upkeep.handle_rewrite_done() {
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
                upkeep.handle_rewrite_failed(now);
            }
        }
    }

    /// Snapshots the store and asks the writer for a rewrite. Records not
    /// yet handed over go first: they are in the snapshot, so they belong to
    /// the old log only, not to the new file's tail.
    fn send_rewrite(&self, server: &mut Server) {
        self.flush(server);
        let snapshot: Vec<Slot> = server.store().slots().collect();
        let failures = self.failures.get();
        if self
            .to_writer
            .send(ToWriter::Rewrite { snapshot, failures })
            .is_ok()
        {
            if let Some(s) = server.log_status_mut() {
                s.rewrite_in_progress = true;
            }
        } else {
            self.upkeep.borrow_mut().handle_rewrite_refused();
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
    use bytes::{Bytes, BytesMut};
    use kv_core::{Effect, ServerConfig};
    use std::sync::atomic::Ordering;

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

    fn put(k: &str, v: &str) -> Effect {
        Effect::Set {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            deadline: None,
        }
    }

    fn write_log(dir: &Path, records: &[Effect]) -> Vec<u64> {
        let mut out = BytesMut::from(&aof::file_header()[..]);
        let mut starts = Vec::new();
        for r in records {
            starts.push(out.len() as u64);
            aof::encode(r, &mut out);
        }
        fs::write(dir.join(LOG_FILE), &out).unwrap();
        starts
    }

    fn server() -> Server {
        Server::new(ServerConfig::default())
    }

    fn keys(s: &Server) -> Vec<String> {
        s.store()
            .dump(0)
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

    /// Deadlines are absolute in the log: a key whose deadline passed
    /// while the server was down is not loaded, one still in the future
    /// keeps its deadline, and an `EXPIRE` record replays as one.
    #[test]
    fn replay_drops_keys_that_expired_while_the_server_was_down() {
        let dir = temp_dir("expired");
        let at = |k: &str, d: u64| Effect::Set {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
            deadline: Some(d),
        };
        write_log(
            &dir,
            &[
                at("gone", 1_000),
                at("due-now", 2_000),
                at("later", 3_000),
                put("persisted", "v"),
                Effect::Expire {
                    key: Bytes::from_static(b"persisted"),
                    deadline: Some(1_500),
                },
            ],
        );
        let mut s = server();
        s.set_time(2_000);
        replay(&PersistOptions::new(&dir), &mut s).unwrap();
        assert_eq!(keys(&s), ["later=v"]);
        assert_eq!(
            s.store().slot(b"later").and_then(|slot| slot.deadline),
            Some(3_000)
        );
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
        assert_eq!(keys(&s), ["a=1", "c=3"]);
        assert_eq!(r.dropped_records, 1);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0], starts[1]..starts[2]);
        assert_eq!(r.dropped_bytes, starts[2] - starts[1]);
        assert_eq!(r.kept_after_damage, 1);
        assert_eq!(r.size, bytes.len() as u64 - r.dropped_bytes);

        // The log was rewritten without the damage: a start without
        // --repair finds it clean and the same data.
        let mut again = server();
        let r2 = replay(&PersistOptions::new(&dir), &mut again).unwrap();
        assert_eq!(keys(&again), ["a=1", "c=3"]);
        assert_eq!(
            (r2.size, r2.dropped_bytes, r2.skipped.len()),
            (r.size, 0, 0)
        );
        assert!(!dir.join(TMP_FILE).exists());
    }

    /// Several damaged ranges and a damaged tail in one log: each range is
    /// skipped, the records between them kept in order (a later record of
    /// a key wins, as it did), the tail cut.
    #[test]
    fn repair_keeps_the_records_between_damaged_ranges() {
        let dir = temp_dir("ranges");
        let recs: Vec<Effect> = (0..20)
            .map(|i| put(&format!("k{}", i % 7), &format!("v{i}")))
            .collect();
        let starts = write_log(&dir, &recs);
        let mut bytes = fs::read(dir.join(LOG_FILE)).unwrap();
        bytes[starts[0] as usize] ^= 1; // a header
        for b in &mut bytes[starts[5] as usize + 1..starts[8] as usize + 3] {
            *b = 0; // three records
        }
        let last = bytes.len() - 2;
        bytes[last] ^= 4; // the tail
        fs::write(dir.join(LOG_FILE), &bytes).unwrap();
        let e = replay(&PersistOptions::new(&dir), &mut server()).unwrap_err();
        assert!(
            e.to_string().contains("byte offset 8 "),
            "the first damage is named: {e}"
        );
        let mut opts = PersistOptions::new(&dir);
        opts.repair = true;
        let mut s = server();
        let r = replay(&opts, &mut s).unwrap();
        assert_eq!(
            r.skipped,
            [starts[0]..starts[1], starts[5]..starts[9]],
            "{r:?}"
        );
        assert_eq!(r.kept_after_damage, 14);
        assert_eq!(r.dropped_records, 3);
        // What an undamaged replay of the kept records gives.
        let mut want = server();
        for (i, rec) in recs.iter().enumerate() {
            if !(i == 0 || (5..9).contains(&i) || i == 19) {
                want.replay(rec);
            }
        }
        assert_eq!(keys(&s), keys(&want));
        let mut again = server();
        replay(&PersistOptions::new(&dir), &mut again).unwrap();
        assert_eq!(keys(&again), keys(&want));
        println!("kept {:?}; skipped {:?}", keys(&s), r.skipped);
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
