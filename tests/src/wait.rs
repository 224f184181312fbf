//! Waiting for an observable condition, with a deadline, instead of
//! sleeping and hoping.

use std::thread;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`wait_for`] poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL_INTERVAL`] until it returns true.
///
/// # Panics
///
/// If `timeout` passes first; the message names `what` was awaited.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || condition().then_some(()))
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value.
///
/// # Panics
///
/// If `timeout` passes first; the message names `what` was awaited.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}
