//! The writer thread: the only owner of the log file. It appends what the
//! event loop hands it in groups (one write, and under `--fsync always` one
//! sync, per group), syncs once a second under `everysec`, and reports back.

use super::{FsyncPolicy, Rewrite};
use bytes::Bytes;
use kv_core::db::Slot;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{debug, error, warn};

/// The `everysec` interval.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Messages to the writer thread.
pub(super) enum ToWriter {
    /// Records to append; `upto` is the LSN of the last one. `failures` counts
    /// the failures the sender had seen: records sent before the sender
    /// learnt of a failure are dropped (they were rolled back).
    Append {
        data: Bytes,
        upto: u64,
        failures: u64,
    },
    /// Start a rewrite from this snapshot of the store.
    Rewrite { snapshot: Vec<Slot>, failures: u64 },
    /// From the rewrite thread: the snapshot (and most of the tail) is in
    /// the temp file.
    SnapshotWritten { id: u64, result: io::Result<File> },
    /// Sync and stop.
    Stop,
}

/// Reports of the writer thread.
#[derive(Debug)]
pub(super) enum Event {
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

/// The writer thread's state: the only owner of the log file.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) tmp_path: PathBuf,
    pub(super) file: File,
    /// Bytes of the log known written in full.
    pub(super) size: u64,
    pub(super) policy: FsyncPolicy,
    /// Failures so far.
    pub(super) failures: u64,
    pub(super) failed: bool,
    /// Written but not yet synced (`everysec`).
    pub(super) dirty: bool,
    pub(super) last_sync: Instant,
    pub(super) rewrite: Option<Rewrite>,
    pub(super) rewrite_ids: u64,
    pub(super) inbox: mpsc::Receiver<ToWriter>,
    /// For the rewrite thread to report back through the inbox, in order
    /// with the appends.
    pub(super) inbox_tx: mpsc::Sender<ToWriter>,
    pub(super) events: tokio_mpsc::UnboundedSender<Event>,
    /// A message taken off the inbox while gathering a group of appends.
    pub(super) peeked: Option<ToWriter>,
}

impl Writer {
    pub(super) fn run(mut self) {
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
                ToWriter::Append {
                    data,
                    upto,
                    failures,
                } => self.append_group(data, upto, failures),
                ToWriter::Rewrite { snapshot, failures } => self.start_rewrite(snapshot, failures),
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
    fn append_group(&mut self, data: Bytes, upto: u64, failures: u64) {
        let mut chunks = Vec::new();
        let mut last = 0;
        let mut take = |chunks: &mut Vec<Bytes>, data: Bytes, upto: u64, failures: u64| {
            // Sent before the sender knew of a failure: rolled back already.
            if failures == self.failures {
                chunks.push(data);
                last = upto;
            }
        };
        take(&mut chunks, data, upto, failures);
        loop {
            match self.inbox.try_recv() {
                Ok(ToWriter::Append {
                    data,
                    upto,
                    failures,
                }) => take(&mut chunks, data, upto, failures),
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
    pub(super) fn fail(&mut self, what: &'static str, e: &io::Error, cut_to: Option<u64>) {
        error!(path = %self.path.display(), "log {what} failed: {e}; refusing writes until the log is rewritten");
        if let Some(len) = cut_to {
            if let Err(e) = self.file.set_len(len) {
                warn!(path = %self.path.display(), "cannot cut the failed writes off the log: {e}");
            }
            self.size = len;
        }
        self.failed = true;
        self.dirty = false;
        self.failures += 1;
        self.abort_rewrite();
        let _ = self.events.send(Event::Failed {
            error: format!("{what} failed: {e}"),
            fsync: what == "fsync",
        });
    }
}

/// Writes every chunk, in as few system calls as the OS allows.
pub(super) fn write_all_chunks(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
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
