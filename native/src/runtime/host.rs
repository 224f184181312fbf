//! The facts about the process that the core cannot read for itself (it
//! reads no OS counters) and `INFO` shows: CPU time, resident memory,
//! uptime.

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
}

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
