//! The allocator: jemalloc is the `kv` binary's global allocator
//! (`main.rs`), and its count of allocated bytes (`stats.allocated`) is the
//! used memory the server's bound (`--maxmemory`) counts and `INFO` shows.
//!
//! A reading advances jemalloc's statistics epoch, which merges the
//! counters of every arena: about 19 µs measured here (two arenas in use,
//! release build), far too much for every batch of input. So the server
//! reads it at most once per millisecond of its clock ([`Meter`]), at
//! most 2% of a core when busy, and only while it has a bound to keep;
//! between two readings the core adds its own estimate of what the store
//! grew or shrank by, which misses only what is allocated elsewhere
//! (buffers) for under a millisecond. Without a bound, the housekeeping
//! tick's reading (every 100 ms) keeps `INFO` current enough.
//!
//! In a binary whose global allocator is not jemalloc (this crate's unit
//! tests) nothing is allocated through it: readings are `None`, and the
//! core falls back on its own estimate alone.

use kv_core::Server;
use std::cell::Cell;
use std::sync::OnceLock;
use tikv_jemalloc_ctl::{epoch, epoch_mib, stats};

/// Reads jemalloc's count of allocated bytes through cached MIBs (a name
/// lookup on every reading would cost more than the reading).
pub(crate) struct Allocated {
    epoch: epoch_mib,
    allocated: stats::allocated_mib,
}

impl Allocated {
    /// The reader; `None` if jemalloc's statistics are unavailable.
    pub(crate) fn new() -> Option<Allocated> {
        Some(Allocated {
            epoch: epoch::mib().ok()?,
            allocated: stats::allocated::mib().ok()?,
        })
    }

    /// Bytes allocated now; `None` if jemalloc is not the allocator in
    /// use (it has allocated nothing).
    pub(crate) fn read(&self) -> Option<u64> {
        self.epoch.advance().ok()?;
        let bytes = self.allocated.read().ok()?;
        (bytes > 0).then_some(bytes as u64)
    }
}

/// Rations the server's readings: at most one per millisecond of its
/// clock, or sooner once the data grew or shrank by [`DATA_STEP`], and
/// only while a bound is set.
pub(crate) struct Meter {
    reader: Option<Allocated>,
    /// The server's time (unix ms) of the last reading.
    last_ms: Cell<u64>,
    /// The store's data bytes at the last reading.
    last_data: Cell<usize>,
}

/// A change of the data this large is read at once: one big write is
/// enough to cross the bound, and the next command must see it (as
/// Redis's does), not the one a millisecond later.
const DATA_STEP: usize = 64 * 1024;

impl Meter {
    /// A meter that has not read yet.
    pub(crate) fn new() -> Meter {
        Meter {
            reader: Allocated::new(),
            last_ms: Cell::new(u64::MAX),
            last_data: Cell::new(0),
        }
    }

    /// Before a batch of input (the server's time just set): hands the
    /// allocator's count to `server` if it keeps a bound and its clock
    /// has moved on since the last reading.
    pub(crate) fn refresh(&self, server: &mut Server) {
        if server.maxmemory().bytes == 0 {
            return;
        }
        let now = server.now();
        let data = server.store().data_bytes();
        if now != self.last_ms.get() || data.abs_diff(self.last_data.get()) >= DATA_STEP {
            self.last_ms.set(now);
            self.last_data.set(data);
            self.read_into(server);
        }
    }

    /// Hands the allocator's count to `server` now, whatever the bound.
    pub(crate) fn read_into(&self, server: &mut Server) {
        if let Some(bytes) = self.reader.as_ref().and_then(Allocated::read) {
            server.set_used_memory(bytes);
        }
    }
}

/// `INFO`'s `mem_allocator`: `jemalloc-5.3.0` when jemalloc serves the
/// process, empty (the system's allocator) otherwise.
pub(crate) fn allocator_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let active = Allocated::new().and_then(|a| a.read()).is_some();
        match tikv_jemalloc_ctl::version::read() {
            // "5.3.0-1-g<commit>": the release is what Redis shows.
            Ok(v) if active => format!("jemalloc-{}", v.split('-').next().unwrap_or(v)),
            _ => String::new(),
        }
    })
}

/// Hands the free pages of every arena back to the OS at once, instead of
/// over jemalloc's decay time (10 s): what `malloc_trim` does for glibc.
pub(crate) fn purge() {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` is a void control: it
    // reads and writes nothing (hence the null pointers and zero length)
    // and only releases pages no allocation uses.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
