//! The facts about the process that the core cannot read for itself (it
//! reads no OS counters) and `INFO` shows: CPU time, resident memory,
//! uptime, the allocator.

use kv_core::session::HostFacts;
use std::time::Instant;

/// Refreshes `facts` from the OS.
pub fn refresh(facts: &mut HostFacts, started: Instant, tcp_port: u16) {
    facts.process_id = std::process::id();
    facts.tcp_port = tcp_port;
    facts.uptime_secs = started.elapsed().as_secs();
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        facts.used_cpu_user = secs(usage.ru_utime);
        facts.used_cpu_sys = secs(usage.ru_stime);
    }
    facts.rss_bytes = rss_bytes().unwrap_or(facts.rss_bytes);
    facts.allocator = super::memory::allocator_name();
}

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Gives freed memory back to the OS after many clients have gone.
///
/// The allocator keeps the pages of closed connections (buffers,
/// sessions) for reuse, returning them only over its decay time (jemalloc's
/// 10 s), so the process's RSS would stay near its peak for a while after
/// a burst of connections. Purging every arena walks them all, so it is
/// done from the housekeeping tick, and only once enough connections have
/// closed since the last purge.
#[derive(Debug, Default)]
pub struct Trim {
    closed_at_last: u64,
}

/// Connections that must have closed since the last trim for another.
const TRIM_AFTER: u64 = 64;

impl Trim {
    /// Called with the number of connections closed since start.
    pub fn closed(&mut self, closed: u64) {
        if closed.saturating_sub(self.closed_at_last) >= TRIM_AFTER {
            tracing::debug!(closed, "giving freed memory back to the OS");
            super::memory::purge();
            self.closed_at_last = closed;
        }
    }
}
