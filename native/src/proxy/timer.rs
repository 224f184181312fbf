//! The proxy's timer task: sleeps until [`Proxy::poll_timeout`](kv_core::Proxy::poll_timeout)
//! and lets the proxy handle what is due.

use super::ProxyHandle;
use std::time::Duration;

/// Runs forever; woken early when a new deadline comes before the one it
/// sleeps until.
pub(super) async fn run(handle: ProxyHandle) {
    let inner = &*handle.inner;
    let epoch = inner.epoch;
    loop {
        let now = epoch.now();
        let next = inner.proxy.borrow().poll_timeout();
        match next {
            Some(deadline) if deadline <= now => {
                handle.handle_timeout(now);
                if inner
                    .proxy
                    .borrow()
                    .poll_timeout()
                    .is_some_and(|d| d <= now)
                {
                    // The core guarantees progress, but never spin if it
                    // did not make any.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Some(deadline) => {
                inner.timer_armed.set(Some(deadline));
                tokio::select! {
                    _ = tokio::time::sleep_until(epoch.to_tokio(deadline)) => {}
                    _ = inner.timer_wake.notified() => {}
                }
            }
            None => {
                inner.timer_armed.set(None);
                inner.timer_wake.notified().await;
            }
        }
    }
}
