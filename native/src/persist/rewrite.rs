//! Rewrites (compaction): the snapshot goes to a temp file on a thread of
//! its own while new records keep going to the old log and to a tail
//! buffer; then the writer appends the tail, syncs, renames the temp file
//! over the log and syncs the directory.

use super::sync_dir;
use super::writer::{write_all_chunks, Event, ToWriter, Writer};
use bytes::{Bytes, BytesMut};
use kv_core::aof;
use kv_core::db::Slot;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tracing::{debug, info, warn};

/// The rewrite thread writes the snapshot in chunks of about this size.
const REWRITE_CHUNK: usize = 1 << 20;
/// The rewrite thread copies the tail until less than this is left for the
/// writer thread's final step, which holds up the acknowledgements.
const TAIL_HANDOFF: usize = 64 * 1024;

/// A rewrite in progress, as the writer thread sees it.
pub(super) struct Rewrite {
    pub(super) id: u64,
    /// Records appended since the snapshot, for the new file.
    pub(super) tail: Arc<Mutex<Vec<Bytes>>>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start_rewrite(&mut self, snapshot: Vec<Slot>, failures: u64) {
        if failures != self.failures {
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
    pub(super) fn finish_rewrite(&mut self, id: u64, result: io::Result<File>) {
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

    pub(super) fn abort_rewrite(&mut self) {
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
    snapshot: Vec<Slot>,
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
    for slot in snapshot {
        aof::encode_slot(
            slot.entry.key(),
            slot.entry.value(),
            slot.deadline,
            &mut buf,
        );
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
