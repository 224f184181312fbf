//! The server's side of the log: which writes are stored, how to undo the
//! ones that are not, and the log's status for `INFO`.

use super::encode;
use crate::db::Change;
use crate::errors::ExecError;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// Facts about the log that `INFO` reports and only the driver knows (sizes,
/// errors, times). The driver keeps them up to date through
/// [`Server::log_status_mut`](crate::Server::log_status_mut).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStatus {
    /// The fsync policy, as named on the command line.
    pub fsync: String,
    /// Bytes in the log file.
    pub size: u64,
    /// Size of the log right after the last rewrite (or at start): the base
    /// the growth that triggers the next rewrite is measured from.
    pub base_size: u64,
    /// Whether a rewrite is running.
    pub rewrite_in_progress: bool,
    /// Completed rewrites since start.
    pub rewrites: u64,
    /// When the last rewrite completed, in Unix seconds (`None`: never).
    pub last_rewrite: Option<u64>,
    /// The last error writing the log, if any.
    pub last_write_error: Option<String>,
    /// The last error syncing the log to disk, if any.
    pub last_fsync_error: Option<String>,
    /// The last error of a rewrite, if any (the old log stays in use).
    pub last_rewrite_error: Option<String>,
}

/// How a logged write stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Not yet reported stored: its reply must wait.
    Pending,
    /// Stored as the fsync policy requires: its reply may go.
    Stored,
    /// Not stored (and rolled back): its reply is this error instead.
    Failed(Bytes),
}

/// How a write is undone if its record fails to reach the log.
#[derive(Debug, Clone)]
pub(crate) struct Undo {
    pub(crate) lsn: u64,
    /// The change, with what it replaced.
    pub(crate) change: Change,
}

/// Failure ranges remembered for connections that have not collected their
/// outcome yet. Ranges only accumulate while the disk keeps failing and
/// recovering (one retry a second at most) and a connection stays blocked on
/// a slow socket all that time; past this many, the oldest are forgotten.
const MAX_FAILED_RANGES: usize = 1024;

/// The server's side of the log: records encoded but not yet taken by the
/// driver, the sequence numbers (LSNs, one per record) that tell which
/// writes are stored, how to undo the ones that are not, and the status
/// shown by `INFO`.
///
/// Writes are applied to the store at once, as in Redis, so that later
/// commands see them; only their replies wait. When the driver reports a
/// failure, every write not yet stored is rolled back, its reply becomes an
/// error, and further writes are refused until the driver reports recovery:
/// an acknowledged write is always in the log, and a failed one is not in
/// memory either.
#[derive(Debug, Default)]
pub struct Journal {
    out: BytesMut,
    /// LSN of the newest record encoded.
    last_lsn: u64,
    /// Every record up to this LSN is stored (unless in a failed range).
    stored_lsn: u64,
    /// Inclusive LSN ranges that failed, with the error reply for them.
    failed: VecDeque<(u64, u64, Bytes)>,
    undo: VecDeque<Undo>,
    /// While set, writes are refused: the log failed with this error.
    refusing: Option<String>,
    status: LogStatus,
}

impl Journal {
    /// A journal with nothing logged yet.
    pub fn new(status: LogStatus) -> Self {
        Journal {
            status,
            ..Journal::default()
        }
    }

    /// LSN of the newest record encoded (0: none yet).
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// Every record up to this LSN has been reported stored.
    pub fn stored_lsn(&self) -> u64 {
        self.stored_lsn
    }

    /// Whether records are encoded but not yet taken by the driver.
    pub fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Why writes are refused, while the log is failed.
    pub fn refusing(&self) -> Option<&str> {
        self.refusing.as_deref()
    }

    /// The status shown by `INFO`.
    pub fn status(&self) -> &LogStatus {
        &self.status
    }

    pub(crate) fn status_mut(&mut self) -> &mut LogStatus {
        &mut self.status
    }

    /// Logs one change, remembering what it replaced to undo it.
    pub(crate) fn record(&mut self, change: Change) {
        encode(&change.effect, &mut self.out);
        self.last_lsn += 1;
        // The key is usually a slice of the connection's receive buffer;
        // holding it pins that buffer only until the record is stored.
        self.undo.push_back(Undo {
            lsn: self.last_lsn,
            change,
        });
    }

    /// Takes the records encoded since the last call, with the LSN of the
    /// last one.
    pub fn take(&mut self) -> Option<(Bytes, u64)> {
        (!self.out.is_empty()).then(|| (self.out.split().freeze(), self.last_lsn))
    }

    /// Every record up to `upto` is stored.
    pub(crate) fn stored(&mut self, upto: u64) {
        self.stored_lsn = self.stored_lsn.max(upto);
        while self.undo.front().is_some_and(|u| u.lsn <= self.stored_lsn) {
            self.undo.pop_front();
        }
    }

    /// The log failed with `error`: every write not yet stored fails. Returns
    /// their undo entries, oldest first, for the server to roll back.
    pub(crate) fn fail(&mut self, error: &str) -> VecDeque<Undo> {
        let reply = Bytes::from(ExecError::PersistenceFailed(error.to_owned()).to_string());
        if self.last_lsn > self.stored_lsn {
            if self.failed.len() >= MAX_FAILED_RANGES {
                self.failed.pop_front();
            }
            self.failed
                .push_back((self.stored_lsn + 1, self.last_lsn, reply.clone()));
        }
        // Records not yet taken will never be written.
        self.out.clear();
        self.refusing = Some(error.to_owned());
        std::mem::take(&mut self.undo)
    }

    /// The log works again: writes are accepted.
    pub(crate) fn recovered(&mut self) {
        self.refusing = None;
    }

    /// How the write whose last record has LSN `lsn` stands.
    pub fn outcome(&self, lsn: u64) -> WriteOutcome {
        if let Some((_, _, e)) = self
            .failed
            .iter()
            .rev()
            .find(|(from, to, _)| (*from..=*to).contains(&lsn))
        {
            return WriteOutcome::Failed(e.clone());
        }
        if lsn <= self.stored_lsn {
            WriteOutcome::Stored
        } else {
            WriteOutcome::Pending
        }
    }

    /// The `# Persistence` lines of `INFO`.
    pub(crate) fn info(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.status;
        let or_none = |e: &Option<String>| e.clone().unwrap_or_else(|| "none".to_string());
        let _ = write!(
            out,
            "aof_enabled:1\naof_fsync:{}\naof_status:{}\naof_size:{}\naof_base_size:{}\naof_rewrite_in_progress:{}\naof_rewrites:{}\naof_last_rewrite:{}\naof_pending_records:{}\naof_last_write_error:{}\naof_last_fsync_error:{}\naof_last_rewrite_error:{}\n",
            s.fsync,
            if self.refusing.is_some() { "failed" } else { "ok" },
            s.size,
            s.base_size,
            u8::from(s.rewrite_in_progress),
            s.rewrites,
            s.last_rewrite.map_or_else(|| "never".to_string(), |t| t.to_string()),
            self.last_lsn - self.stored_lsn,
            or_none(&s.last_write_error),
            or_none(&s.last_fsync_error),
            or_none(&s.last_rewrite_error),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::put_len;
    use super::*;
    use crate::db::{Effect, Slot, Store};

    fn slot(key: &[u8], value: &str) -> Slot {
        let mut s = Store::new(0);
        s.put(key, value.as_bytes(), None);
        s.take(key).unwrap()
    }

    fn set(key: &Bytes, value: &'static str, before: Option<&str>) -> Change {
        Change {
            effect: Effect::Set {
                key: key.clone(),
                value: Bytes::from_static(value.as_bytes()),
                deadline: None,
            },
            before: before.map(|b| slot(key, b)),
            flushed: Vec::new(),
        }
    }

    #[test]
    fn journal_tracks_outcomes_and_failures() {
        let mut j = Journal::new(LogStatus::default());
        let k = Bytes::from_static(b"k");
        j.record(set(&k, "1", None));
        j.record(set(&k, "2", Some("1")));
        let (bytes, upto) = j.take().unwrap();
        assert_eq!(upto, 2);
        assert_eq!(bytes.len(), 2 * put_len(1, 1));
        assert_eq!(j.outcome(1), WriteOutcome::Pending);
        j.stored(1);
        assert_eq!(j.outcome(1), WriteOutcome::Stored);
        j.record(Change {
            effect: Effect::Del { key: k.clone() },
            before: Some(slot(&k, "2")),
            flushed: Vec::new(),
        });
        let undo = j.fail("disk full");
        assert_eq!(undo.iter().map(|u| u.lsn).collect::<Vec<_>>(), [2, 3]);
        assert!(matches!(j.outcome(2), WriteOutcome::Failed(_)));
        assert!(matches!(j.outcome(3), WriteOutcome::Failed(_)));
        assert!(!j.has_pending());
        assert!(j.refusing().is_some());
        j.recovered();
        j.record(set(&k, "4", None));
        j.stored(4);
        assert_eq!(j.outcome(4), WriteOutcome::Stored);
        assert!(matches!(j.outcome(3), WriteOutcome::Failed(_)));
    }
}
