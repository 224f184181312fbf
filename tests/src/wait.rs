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
pub fn wait_for<T>(timeout: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll_for(timeout, probe)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting until {what}"))
}

/// [`wait_for`], returning `None` once `timeout` has passed instead of
/// panicking, for a caller whose message describes what it sees at the
/// deadline. `probe` is called at least once, the last time at the
/// deadline.
pub(crate) fn poll_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}
